//! Which kernel multiplies a quantized matrix by many tokens (a prompt chunk) on this
//! adapter: the tiled kernel (`shaders/matmul_quant_tiled.wgsl`: workgroup-memory tiles,
//! each weight unpacked once per 64 tokens), or the row kernels (the subgroup kernel's
//! prompt tiles; without subgroups, the matrix expanded to f32 for Burn's matmul).
//!
//! Which is faster depends on the adapter, not on anything it reports: lavapipe runs
//! workgroup memory as scattered loads and a 512-token prompt's products take 1.8x longer
//! tiled than on the subgroup kernel, while GPUs are built for the tiled kernel. So natively
//! both are timed at a few token counts when a model loads, once per process, device and
//! block format, on the model's largest matrix of that format (timing every shape took
//! 1.6 s on lavapipe), and a product takes the faster one at the nearest measured count.
//! A browser cannot wait for its device, so it takes the tiled kernel, which also spares it
//! the expanded matrices.

use crate::quant::QuantMatrix;

/// A kernel for products of more than [`crate::quant::MAX_QUANTIZED_TOKENS`] tokens.
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

#[cfg(not(target_family = "wasm"))]
impl Calibration {
    /// The faster kernel at the measured count nearest to `tokens` on a log scale.
    fn choice(&self, tokens: usize) -> ManyTokens {
        let distance = |t: &&Timing| (tokens as f64 / t.tokens as f64).ln().abs();
        self.timings.iter().min_by(|a, b| distance(a).total_cmp(&distance(b))).map_or(ManyTokens::Rows, Timing::faster)
    }
}

#[cfg(not(target_family = "wasm"))]
mod native {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    use burn::tensor::Tensor;
    use burn_cubecl::CubeDevice;
    use burn_cubecl::cubecl::future::block_on;

    use super::{Calibration, ManyTokens, Timing};
    use crate::kernel::{empty, from_cube};
    use crate::quant::QuantMatrix;

    /// The token counts a format is timed at (prompt chunks are at most 512 tokens by
    /// default).
    const MEASURED: [usize; 3] = [32, 128, 512];

    type Key = (CubeDevice, &'static str);

    fn calibrations() -> &'static Mutex<HashMap<Key, Calibration>> {
        static CALIBRATIONS: OnceLock<Mutex<HashMap<Key, Calibration>>> = OnceLock::new();
        CALIBRATIONS.get_or_init(Default::default)
    }

    /// The calibration of `matrix`'s device and format, timed on `matrix` now if there is
    /// none yet.
    pub(super) fn calibrated<T>(matrix: &QuantMatrix, read: impl FnOnce(&Calibration) -> T) -> T {
        let (device, format, rows, cols) = matrix.shape_key();
        let mut all = calibrations().lock().unwrap_or_else(|e| e.into_inner());
        let calibration = all.entry((device.clone(), format)).or_insert_with(|| Calibration {
            format,
            rows,
            cols,
            timings: timings(matrix, device),
        });
        read(calibration)
    }

    /// The timings at each measured count, smallest first. Where one kernel was over twice
    /// as fast at every count so far, the larger counts are not timed (on SwiftShader
    /// without subgroups, the row kernels' 512 tokens took 2 s a run, ten times the tiled
    /// kernel's).
    fn timings(matrix: &QuantMatrix, device: &CubeDevice) -> Vec<Timing> {
        let mut timings: Vec<Timing> = Vec::new();
        for tokens in MEASURED {
            let decided = timings.len() >= 2
                && (timings.iter().all(|t| t.tiled_seconds * 2.0 < t.rows_seconds) || timings.iter().all(|t| t.rows_seconds * 2.0 < t.tiled_seconds));
            if decided {
                break;
            }
            timings.extend(time(matrix, device, tokens));
        }
        timings
    }

    pub(super) fn all() -> Vec<Calibration> {
        let mut list: Vec<Calibration> = calibrations().lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        list.sort_by_key(|c| (c.format, c.rows, c.cols));
        list
    }

    /// Both kernels on `tokens` zero rows (no denormals to slow a CPU adapter down): a run
    /// that compiles and warms up, then the best of up to three timed runs, fewer where one
    /// takes over 10 ms. None if the device fails.
    fn time(matrix: &QuantMatrix, device: &CubeDevice, tokens: usize) -> Option<Timing> {
        let x: Tensor<2> = from_cube::<2>(empty(device, [tokens, matrix.cols()])).zeros_like();
        let sync = || block_on(device.client().sync()).ok();
        let seconds = |kernel| {
            drop(matrix.multiply_with(x.clone(), None, kernel));
            sync()?;
            let mut best = Duration::MAX;
            let mut spent = Duration::ZERO;
            for _ in 0..3 {
                let start = Instant::now();
                drop(matrix.multiply_with(x.clone(), None, kernel));
                sync()?;
                best = best.min(start.elapsed());
                spent += start.elapsed();
                if spent > Duration::from_millis(10) {
                    break;
                }
            }
            Some(best.as_secs_f64())
        };
        Some(Timing { tokens, tiled_seconds: seconds(ManyTokens::Tiled)?, rows_seconds: seconds(ManyTokens::Rows)? })
    }
}

/// The kernel for `tokens` tokens times `matrix`.
pub(crate) fn choice(matrix: &QuantMatrix, tokens: usize) -> ManyTokens {
    #[cfg(not(target_family = "wasm"))]
    return native::calibrated(matrix, |c| c.choice(tokens));
    #[cfg(target_family = "wasm")]
    {
        let _ = (matrix, tokens);
        ManyTokens::Tiled
    }
}

/// Times the kernels on `matrix` now if its format was not yet on its device (a model does
/// this at load, largest matrix first, so no request waits for it).
pub(crate) fn calibrate(matrix: &QuantMatrix) {
    #[cfg(not(target_family = "wasm"))]
    native::calibrated(matrix, |_| ());
    #[cfg(target_family = "wasm")]
    let _ = matrix;
}

/// Every calibration taken in this process so far (`cinder bench` prints them).
pub fn calibrations() -> Vec<Calibration> {
    #[cfg(not(target_family = "wasm"))]
    return native::all();
    #[cfg(target_family = "wasm")]
    Vec::new()
}
