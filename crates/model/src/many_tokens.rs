//! Which kernel multiplies a quantized matrix by many tokens (a prompt chunk) on this
//! adapter: the tiled kernel (`shaders/matmul_quant_tiled.wgsl`: workgroup-memory tiles,
//! each weight unpacked once per 64 tokens), or the row kernels (the subgroup kernel's
//! prompt tiles; without subgroups, the matrix expanded to f32 for Burn's matmul).
//!
//! Which is faster depends on the adapter, not on anything it reports: lavapipe runs
//! workgroup memory as scattered loads and a 512-token prompt's products take 1.8x longer
//! tiled than on the subgroup kernel, while GPUs are built for the tiled kernel. So both
//! are timed at a few token counts once a model is loaded, once per process, device
//! and block format, on the model's largest matrix of that format (timing every shape took
//! 1.6 s on lavapipe), and a product takes the faster one at the nearest measured count.
//! Natively the load blocks on it; the browser's engine awaits it while it warms up.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use burn::tensor::Tensor;
use burn_cubecl::CubeDevice;
use serde::Serialize;
use web_time::{Duration, Instant};

use crate::kernel::{empty, from_cube};

/// A matrix whose products by many tokens run on either kernel (a quantized matrix).
pub(crate) trait TwoKernels {
    /// The device, block format and shape: a choice is kept per device and format, and
    /// reports the shape it was timed on.
    fn shape_key(&self) -> (&CubeDevice, &'static str, usize, usize);
    fn cols(&self) -> usize;
    /// The product of `x` on `kernel`.
    fn multiply_with(&self, x: Tensor<2>, kernel: ManyTokens) -> Tensor<2>;
}

/// A kernel for products of more tokens than the row kernels' tiles take (16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManyTokens {
    Tiled,
    Rows,
}

/// Both kernels' time on one shape at one token count.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    pub tokens: usize,
    pub tiled_seconds: f64,
    pub rows_seconds: f64,
}

impl Timing {
    pub fn faster(&self) -> ManyTokens {
        if self.tiled_seconds < self.rows_seconds { ManyTokens::Tiled } else { ManyTokens::Rows }
    }
}

/// A block format's timings on one matrix, as [`calibrations`] lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    pub format: &'static str,
    pub rows: usize,
    pub cols: usize,
    pub timings: Vec<Timing>,
}

impl Calibration {
    /// The faster kernel at the measured count nearest to `tokens` on a log scale.
    fn choice(&self, tokens: usize) -> ManyTokens {
        let distance = |t: &&Timing| (tokens as f64 / t.tokens as f64).ln().abs();
        self.timings.iter().min_by(|a, b| distance(a).total_cmp(&distance(b))).map_or(ManyTokens::Rows, Timing::faster)
    }
}

/// The token counts a format is timed at (prompt chunks are at most 512 tokens by default).
const MEASURED: [usize; 3] = [32, 128, 512];

type Key = (CubeDevice, &'static str);

fn store() -> MutexGuard<'static, HashMap<Key, Calibration>> {
    static CALIBRATIONS: OnceLock<Mutex<HashMap<Key, Calibration>>> = OnceLock::new();
    CALIBRATIONS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

/// Times the kernels on `matrix` if its format was not yet timed on its device (a model does
/// this once loaded, largest matrix first, so no request waits for it). Natively a
/// product before that times them then; in a browser, which cannot block on its device, it
/// takes the tiled kernel.
pub(crate) async fn calibrate(matrix: &impl TwoKernels) {
    let (device, format, rows, cols) = matrix.shape_key();
    let key = (device.clone(), format);
    if store().contains_key(&key) {
        return;
    }
    let timings = timings(matrix, device).await;
    store().entry(key).or_insert(Calibration { format, rows, cols, timings });
}

/// The timings at each measured count, smallest first. Where one kernel was over twice as
/// fast at every count so far, the larger counts are not timed (on SwiftShader without
/// subgroups, the row kernels' 512 tokens took 2 s a run, ten times the tiled kernel's).
async fn timings(matrix: &impl TwoKernels, device: &CubeDevice) -> Vec<Timing> {
    let mut timings: Vec<Timing> = Vec::new();
    for tokens in MEASURED {
        let decided = timings.len() >= 2
            && (timings.iter().all(|t| t.tiled_seconds * 2.0 < t.rows_seconds) || timings.iter().all(|t| t.rows_seconds * 2.0 < t.tiled_seconds));
        if decided {
            break;
        }
        let Some(tiled_seconds) = seconds(matrix, device, tokens, ManyTokens::Tiled).await else { break };
        let Some(rows_seconds) = seconds(matrix, device, tokens, ManyTokens::Rows).await else { break };
        timings.push(Timing { tokens, tiled_seconds, rows_seconds });
    }
    timings
}

/// `kernel` on `tokens` zero rows (no denormals to slow a CPU adapter down): a run that
/// compiles and warms up, then the best of up to three timed runs, fewer where one takes
/// over 10 ms. None if the device fails.
async fn seconds(matrix: &impl TwoKernels, device: &CubeDevice, tokens: usize, kernel: ManyTokens) -> Option<f64> {
    let x: Tensor<2> = from_cube::<2>(empty(device, [tokens, matrix.cols()])).zeros_like();
    drop(matrix.multiply_with(x.clone(), kernel));
    device.client().sync().await.ok()?;
    let mut best = Duration::MAX;
    let mut spent = Duration::ZERO;
    for _ in 0..3 {
        let start = Instant::now();
        drop(matrix.multiply_with(x.clone(), kernel));
        device.client().sync().await.ok()?;
        best = best.min(start.elapsed());
        spent += start.elapsed();
        if spent > Duration::from_millis(10) {
            break;
        }
    }
    Some(best.as_secs_f64())
}

/// The kernel for `tokens` tokens times `matrix`.
pub(crate) fn choice(matrix: &impl TwoKernels, tokens: usize) -> ManyTokens {
    let (device, format, ..) = matrix.shape_key();
    if let Some(calibration) = store().get(&(device.clone(), format)) {
        return calibration.choice(tokens);
    }
    #[cfg(not(target_family = "wasm"))]
    {
        burn_cubecl::cubecl::future::block_on(calibrate(matrix));
        choice(matrix, tokens)
    }
    #[cfg(target_family = "wasm")]
    ManyTokens::Tiled
}

/// Every calibration taken in this process so far.
pub fn calibrations() -> Vec<Calibration> {
    let mut list: Vec<Calibration> = store().values().cloned().collect();
    list.sort_by_key(|c| (c.format, c.rows, c.cols));
    list
}

/// One timing of [`calibrations`] as `cinder bench` and the browser's engine info report it.
#[derive(Debug, Clone, Serialize)]
pub struct PromptKernelTiming {
    pub format: &'static str,
    pub rows: usize,
    pub cols: usize,
    pub tokens: usize,
    pub tiled_ms: f64,
    pub rows_ms: f64,
    /// The faster kernel: `tiled` or `rows`.
    pub kernel: &'static str,
}

/// Every timing of [`calibrations`], one per matrix and token count.
pub fn prompt_kernel_timings() -> Vec<PromptKernelTiming> {
    calibrations()
        .into_iter()
        .flat_map(|c| {
            c.timings.into_iter().map(move |t| PromptKernelTiming {
                format: c.format,
                rows: c.rows,
                cols: c.cols,
                tokens: t.tokens,
                tiled_ms: t.tiled_seconds * 1e3,
                rows_ms: t.rows_seconds * 1e3,
                kernel: match t.faster() {
                    ManyTokens::Tiled => "tiled",
                    ManyTokens::Rows => "rows",
                },
            })
        })
        .collect()
}
