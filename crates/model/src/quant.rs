//! Weight matrices kept in their GGUF block format on the device.
//!
//! A [`Linear`] layer holds its matrix quantized when a kernel reads that format
//! (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K: `shaders/matmul_quant.wgsl`), so device memory
//! is about the file's bytes and each product reads 4.5–8.5 bits per weight instead of 32.
//! Other formats are dequantized to an f32 tensor at load and multiplied by Burn.
//!
//! At load, blocks are split into two word arrays: the quantized values of each block
//! (whole words, so a lane reads aligned `u32`s) and the scales (two f16 per word; Q4_1's
//! scale and offset share one word; a K-quant super-block's scales take five words).
//! GGUF's 18/20/22/24/34/144/210-byte blocks are not word-aligned, so reading them in place
//! would cost byte-by-byte extraction. The kernels see every format as 32-value blocks;
//! the K-quants' unpack functions find their sub-block's scales in the super-block's words.

use std::ops::Range;

use burn::tensor::{Device, Tensor, TensorData};
use burn_cubecl::CubeDevice;
use burn_cubecl::cubecl::server::Handle;
use bytemuck::{Pod, Zeroable};
use cinder_gguf::blocks::{BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0, F16, blocks};
use cinder_gguf::{GgmlType, GgufFile, TensorInfo};

use crate::ModelError;
use crate::many_tokens::{self, ManyTokens};
use crate::kernel::{Arg, MAX_WORKGROUPS, Template, cube, cube_device, empty, from_cube, launch, upload};

/// A block format the matrix kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantFormat {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q6K,
}

/// Values per block as the kernels see it: K-quant super-blocks of 256 are read as eight
/// sub-blocks of 32, each a 32-value block of the other formats.
const BLOCK: usize = 32;

impl QuantFormat {
    pub fn of(ty: GgmlType) -> Option<Self> {
        match ty {
            GgmlType::Q4_0 => Some(Self::Q4_0),
            GgmlType::Q4_1 => Some(Self::Q4_1),
            GgmlType::Q5_0 => Some(Self::Q5_0),
            GgmlType::Q5_1 => Some(Self::Q5_1),
            GgmlType::Q8_0 => Some(Self::Q8_0),
            GgmlType::Q4K => Some(Self::Q4K),
            GgmlType::Q6K => Some(Self::Q6K),
            _ => None,
        }
    }

    pub fn ggml_type(self) -> GgmlType {
        match self {
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q4_1 => GgmlType::Q4_1,
            Self::Q5_0 => GgmlType::Q5_0,
            Self::Q5_1 => GgmlType::Q5_1,
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4K => GgmlType::Q4K,
            Self::Q6K => GgmlType::Q6K,
        }
    }

    /// Values per GGUF block: a matrix row must hold whole blocks.
    pub fn block_elements(self) -> usize {
        self.ggml_type().block_elements()
    }

    fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4_k",
            Self::Q6K => "q6_k",
        }
    }

    /// The WGSL `unpack` function for this format, with its helpers.
    fn unpack_source(self) -> String {
        let unpack = match self {
            Self::Q4_0 => include_str!("../../../shaders/unpack_q4_0.wgsl"),
            Self::Q4_1 => include_str!("../../../shaders/unpack_q4_1.wgsl"),
            Self::Q5_0 => include_str!("../../../shaders/unpack_q5_0.wgsl"),
            Self::Q5_1 => include_str!("../../../shaders/unpack_q5_1.wgsl"),
            Self::Q8_0 => include_str!("../../../shaders/unpack_q8_0.wgsl"),
            Self::Q4K => include_str!("../../../shaders/unpack_q4_k.wgsl"),
            Self::Q6K => include_str!("../../../shaders/unpack_q6_k.wgsl"),
        };
        format!("{}\n{unpack}", include_str!("../../../shaders/quant_common.wgsl"))
    }

    /// Splits GGUF blocks into (quantized value words, scale words), in the layout the
    /// format's `unpack` reads (see the unpack_*.wgsl files).
    fn repack(self, data: &[u8]) -> (Vec<u32>, Vec<u32>) {
        let mut quants = Vec::with_capacity(data.len() / 4);
        let mut scales = Vec::with_capacity(data.len() / self.ggml_type().block_bytes());
        // Formats with one f16 scale per block keep two blocks' scales per word.
        let mut half_words = Vec::new();
        let pair = |low: F16, high: F16| u32::from(low.bits()) | u32::from(high.bits()) << 16;
        match self {
            Self::Q4_0 => blocks::<BlockQ4_0>(data).for_each(|b| {
                half_words.push(b.d);
                quants.extend(words(&b.qs));
            }),
            Self::Q4_1 => blocks::<BlockQ4_1>(data).for_each(|b| {
                scales.push(pair(b.d, b.m));
                quants.extend(words(&b.qs));
            }),
            Self::Q5_0 => blocks::<BlockQ5_0>(data).for_each(|b| {
                half_words.push(b.d);
                quants.extend(words(&b.qs).chain(words(&b.qh)));
            }),
            Self::Q5_1 => blocks::<BlockQ5_1>(data).for_each(|b| {
                scales.push(pair(b.d, b.m));
                quants.extend(words(&b.qs).chain(words(&b.qh)));
            }),
            Self::Q8_0 => blocks::<BlockQ8_0>(data).for_each(|b| {
                half_words.push(b.d);
                quants.extend(words(bytemuck::cast_slice(&b.qs)));
            }),
            Self::Q4K => blocks::<BlockQ4K>(data).for_each(|b| repack_q4_k(b, &mut quants, &mut scales)),
            Self::Q6K => blocks::<BlockQ6K>(data).for_each(|b| repack_q6_k(b, &mut quants, &mut scales)),
        }
        scales.extend(half_words.chunks(2).map(|two| pair(two[0], two.get(1).copied().unwrap_or_default())));
        (quants, scales)
    }
}

fn words(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
}

/// Packs 32 four-bit values as Q4_0 does: value `j` in the low nibble of byte `j`, value
/// `j + 16` in its high nibble.
fn nibble_words(values: &[u8]) -> impl Iterator<Item = u32> + '_ {
    (0..4).map(move |w| {
        (0..4).fold(0u32, |word, b| {
            let j = 4 * w + b;
            word | u32::from((values[j] & 0x0F) | (values[j + 16] & 0x0F) << 4) << (8 * b)
        })
    })
}

/// Q4_K into 4 nibble words per sub-block of 32, and per super-block 5 scale words:
/// `d | dmin << 16`, the 8 scales as bytes, the 8 minimums as bytes.
fn repack_q4_k(block: &BlockQ4K, quants: &mut Vec<u32>, scales: &mut Vec<u32>) {
    let (sc, mins): (Vec<u8>, Vec<u8>) = (0..8).map(|j| block.scale_min(j)).unzip();
    scales.push(u32::from(block.d.bits()) | u32::from(block.dmin.bits()) << 16);
    scales.extend(words(&sc).chain(words(&mins)));
    for pair in block.qs.chunks_exact(32) {
        let low: Vec<u8> = pair.iter().map(|q| q & 0x0F).collect();
        let high: Vec<u8> = pair.iter().map(|q| q >> 4).collect();
        quants.extend(nibble_words(&low).chain(nibble_words(&high)));
    }
}

/// Q6_K into 6 words per sub-block of 32 (4 nibble words, then 2 words of high bit pairs:
/// the pairs of values `4k..4k+3` at bits `16k..16k+8` and of `16+4k..16+4k+3` at
/// `16k+8..16k+16`), and per super-block 5 scale words: `d`, then the 16 scales as bytes.
fn repack_q6_k(block: &BlockQ6K, quants: &mut Vec<u32>, scales: &mut Vec<u32>) {
    for sub in block.quants().chunks_exact(BLOCK) {
        quants.extend(nibble_words(sub));
        let high = (0..4).fold(0u64, |bits, k| {
            (0..4).fold(bits, |bits, e| {
                bits | u64::from(sub[4 * k + e] >> 4) << (16 * k + 2 * e) | u64::from(sub[16 + 4 * k + e] >> 4) << (16 * k + 8 + 2 * e)
            })
        });
        quants.extend([high as u32, (high >> 32) as u32]);
    }
    scales.push(u32::from(block.d.bits()));
    scales.extend(words(bytemuck::cast_slice(&block.scales)));
}

/// A `rows x cols` matrix in a block format on the device (a clone shares its blocks).
#[derive(Clone)]
pub struct QuantMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    quants: Handle,
    scales: Handle,
    device: CubeDevice,
    bytes: usize,
    /// Set where the adapter has subgroups (of at most this size): the product then runs on
    /// matmul_quant_subgroup.wgsl.
    subgroup_max_size: Option<usize>,
    max_binding: usize,
}

/// Most tokens one invocation of the quantized kernel multiplies at once.
const MAX_TOKEN_TILE: usize = 8;
/// From this many tokens on (prompts), the subgroup kernel takes tiles of 16 tokens x 32
/// rows per subgroup: on lavapipe a 512-token prompt's products ran in 3.9 s instead of
/// 4.3 s at 8 x 32 (8 x 64, 16 x 16, 16 x 48, 32 x 16 and 32 x 32 were slower; `cinder
/// bench --profile`).
const PROMPT_TOKENS: usize = 64;
const PROMPT_TOKEN_TILE: usize = 16;
const PROMPT_ROWS: usize = 32;
/// Above this many tokens, a product runs on the kernel [`many_tokens`] picks for the
/// adapter: the tiled kernel, or the row kernels as above (where the adapter lacks
/// subgroups, the matrix expanded to f32 and multiplied by Burn's tiled matmul).
pub(crate) const MAX_QUANTIZED_TOKENS: usize = 16;
/// The tiled kernel's invocations each own 8 tokens x 8 rows: a workgroup's tile is 64 x 64.
/// Smaller ones measured slower on lavapipe (a 512-token prompt's products: 7.8 s at 8 x 8,
/// 9.9 s at 4 x 8, 14.8 s at 4 x 4), and larger ones would not fit WebGPU's default 16 KiB
/// of workgroup memory.
const TILED_TOKENS_PER_INVOCATION: usize = 8;
const TILED_ROWS_PER_INVOCATION: usize = 8;

/// Rows per invocation of the row kernel without subgroups, for a tile of `tile` tokens: at
/// most 16 accumulators. Measured on SwiftShader (default model, 16-token decode / 16-token
/// prompt): 1 row 2.72 / 6.29 tok/s, 2 rows 3.03 / 10.2, 4 rows 3.25 / 8.1 (the old kernel,
/// one row with vec4 accumulators: 2.55-2.65 decode).
fn portable_rows(tile: usize) -> usize {
    (16 / tile).clamp(2, 4)
}

/// The row kernel's lines for `rows` rows per invocation and a tile of `tile` tokens (see
/// matmul_quant.wgsl).
fn tile_code(rows: usize, tile: usize) -> Vec<(&'static str, String)> {
    row_lines(rows, tile, &|r, t| {
        format!(
            "    if (first_row + {r}u < info.rows && first_token + {t}u < info.tokens) {{ store((first_token + {t}u) * info.rows + first_row + {r}u, acc{r}_{t}); }}"
        )
    })
}

/// `f(r, t)` for every row and token of a `rows x tile` block of outputs, one per line.
fn pairs(rows: usize, tile: usize, f: &dyn Fn(usize, usize) -> String) -> String {
    (0..rows).flat_map(|r| (0..tile).map(move |t| (r, t))).map(|(r, t)| f(r, t)).collect::<Vec<_>>().join("\n")
}

/// The lines the row kernels share: each token's input row, each row's first block, a
/// scalar accumulator per row and token, the inputs of one 8-value group loaded once, each
/// row's weights unpacked once and multiplied with every token's inputs, and `store(r, t)`
/// for each output.
fn row_lines(rows: usize, tile: usize, store: &dyn Fn(usize, usize) -> String) -> Vec<(&'static str, String)> {
    let each = |n: usize, f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<_>>().join("\n");
    let (outer, indent) = ("        ", "            ");
    vec![
        ("TILE", tile.to_string()),
        ("ROWS", rows.to_string()),
        ("TOKEN_ROWS", each(tile, &|t| format!("    let x{t} = min(first_token + {t}u, last) * x_row;"))),
        ("ROW_STARTS", each(rows, &|r| format!("{outer}let block{r} = min(first_row + {r}u, last_row) * blocks;"))),
        ("ACCUMULATORS", pairs(rows, tile, &|r, t| format!("{outer}var acc{r}_{t} = 0.0;"))),
        ("INPUTS", each(tile, &|t| format!("{indent}let lo{t} = x[x{t} + xi];\n{indent}let hi{t} = x[x{t} + xi + 4u];"))),
        (
            "ACCUMULATE",
            each(rows, &|r| {
                let mut code = format!("{indent}unpack(block{r} + b, k, &lo, &hi);");
                for t in 0..tile {
                    code += &format!("\n{indent}acc{r}_{t} += dot(lo, lo{t}) + dot(hi, hi{t});");
                }
                code
            }),
        ),
        ("STORE", pairs(rows, tile, store)),
    ]
}

/// The subgroup kernel's lines for `rows` rows per subgroup and a tile of `tile` tokens
/// (see matmul_quant_subgroup.wgsl). Its `rows x tile` accumulators are scalars: vec4 ones
/// hold four times the registers and measured 10-15% slower on lavapipe at 8-64 tokens.
fn subgroup_tile_code(rows: usize, tile: usize) -> Vec<(&'static str, String)> {
    row_lines(rows, tile, &|r, t| {
        format!(
            "        let sum{r}_{t} = subgroupAdd(acc{r}_{t});\n        if (lane == 0u && first_row + {r}u < info.rows && first_token + {t}u < info.tokens) {{ store((first_token + {t}u) * info.rows + first_row + {r}u, sum{r}_{t}); }}"
        )
    })
}

/// The tiled kernel's lines for TM tokens x TN rows per invocation (see
/// matmul_quant_tiled.wgsl).
fn tiled_code(tm: usize, tn: usize) -> Vec<(&'static str, String)> {
    let each = |n: usize, f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<_>>().join("\n");
    let products = [
        each(tm, &|i| format!("            let x{i} = x_tile[s * TOKENS + ty + {}u];", 8 * i)),
        each(tn, &|j| format!("            let w{j} = w_tile[s * ROWS + tx + {}u];", 8 * j)),
        pairs(tm, tn, &|i, j| format!("            acc{i}_{j} += dot(x{i}, w{j});")),
    ];
    vec![
        ("TM", tm.to_string()),
        ("TN", tn.to_string()),
        ("ACCUMULATORS", pairs(tm, tn, &|i, j| format!("    var acc{i}_{j} = 0.0;"))),
        ("PRODUCTS", products.join("\n")),
        (
            "STORE",
            pairs(tm, tn, &|i, j| {
                let (t, r) = (format!("first_token + ty + {}u", 8 * i), format!("first_row + tx + {}u", 8 * j));
                format!("    if ({t} < info.tokens && {r} < info.rows) {{ store(({t}) * info.rows + {r}, acc{i}_{j}); }}")
            }),
        ),
    ]
}

const WORKGROUP: usize = 64;

/// matmul_bindings.wgsl's `Info`, shared by the matrix kernels.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MatmulInfo {
    rows: u32,
    cols: u32,
    tokens: u32,
    _pad: u32,
}

/// dequantize.wgsl's `Info`: groups of 8 values to expand.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DequantizeInfo {
    groups: u32,
}

/// matmul_bindings.wgsl for a launch with or without a residual to add.
fn matmul_bindings(residual: bool) -> String {
    let (binding, info, add) = match residual {
        true => ("@group(0) @binding(4) var<storage, read_write> residual: array<f32>;", "5", " + residual[i]"),
        false => ("", "4", ""),
    };
    include_str!("../../../shaders/matmul_bindings.wgsl")
        .replace("{{RESIDUAL_BINDING}}", binding)
        .replace("{{INFO_BINDING}}", info)
        .replace("{{RESIDUAL_ADD}}", add)
}

/// One launch of a matrix kernel: its file, its tiling's variant number and placeholder
/// values (the block format's unpack and the bindings are added), and its grid.
struct MatrixKernel<'a> {
    name: &'static str,
    source: &'static str,
    variant: u32,
    code: &'a dyn Fn() -> Vec<(&'static str, String)>,
    workgroups: [u32; 3],
}

/// Added to a matrix kernel's variant number when it adds a residual.
const RESIDUAL_VARIANT: u32 = 1 << 24;

impl QuantMatrix {
    /// Uploads GGUF blocks of a `rows x cols` matrix (row-major, whole blocks per row).
    pub fn upload(burn_device: &Device, format: QuantFormat, data: &[u8], rows: usize, cols: usize) -> Result<Self, ModelError> {
        let device = cube_device(burn_device).ok_or_else(|| ModelError::Device("quantized weights need a wgpu device".into()))?;
        let ty = format.ggml_type();
        if cols % ty.block_elements() != 0 || data.len() != rows * cols / ty.block_elements() * ty.block_bytes() {
            return Err(ModelError::InvalidConfig(format!(
                "{} bytes do not hold a {rows} x {cols} {format:?} matrix",
                data.len()
            )));
        }
        let (quants, scales) = format.repack(data);
        let bytes = (quants.len() + scales.len()) * 4;
        let subgroup_max_size = crate::adapter_info(burn_device)
            .and_then(|a| a.subgroup_max_size)
            .map(|size| size as usize)
            .filter(|size| size.is_power_of_two() && *size <= WORKGROUP);
        let (quants, scales) = (upload(&device, quants), upload(&device, scales));
        // The runtime holds each upload's bytes until its queue runs them: running them per
        // matrix keeps a model's load from holding all its weights in host memory at once.
        device.client().flush().map_err(|e| ModelError::Device(format!("uploading a {rows} x {cols} {format:?} matrix: {e:?}")))?;
        let max_binding = max_binding_bytes(burn_device);
        Ok(Self { format, rows, cols, quants, scales, device, bytes, subgroup_max_size, max_binding })
    }

    /// `x` (`[tokens, cols]`) times the transposed matrix: `[tokens, rows]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.multiply(x, None)
    }

    /// `x` times the transposed matrix plus `residual` (`[tokens, rows]`), added by the
    /// kernel as it writes.
    pub fn forward_add(&self, x: Tensor<2>, residual: Tensor<2>) -> Tensor<2> {
        assert_eq!(residual.dims(), [x.dims()[0], self.rows], "the residual's shape does not match the product's");
        self.multiply(x, Some(residual))
    }

    fn multiply(&self, x: Tensor<2>, residual: Option<Tensor<2>>) -> Tensor<2> {
        let tokens = x.dims()[0];
        let kernel = if tokens > MAX_QUANTIZED_TOKENS { many_tokens::choice(self, tokens) } else { ManyTokens::Rows };
        self.multiply_with(x, residual, kernel)
    }

    /// The product on the kernel `kernel` names for more than [`MAX_QUANTIZED_TOKENS`]
    /// tokens (fewer always take the row kernels).
    pub(crate) fn multiply_with(&self, x: Tensor<2>, residual: Option<Tensor<2>>, kernel: ManyTokens) -> Tensor<2> {
        let [tokens, cols] = x.dims();
        assert_eq!(cols, self.cols, "input width does not match the matrix");
        if kernel == ManyTokens::Tiled && tokens > MAX_QUANTIZED_TOKENS {
            return self.tiled(x, residual);
        }
        // The expanded matrix must fit in one binding (a large LM head's does not).
        let expanded = tokens > MAX_QUANTIZED_TOKENS && self.subgroup_max_size.is_none() && self.rows * self.cols * 4 <= self.max_binding;
        let prompt_sized = tokens >= PROMPT_TOKENS && self.subgroup_max_size.is_some();
        // Only the quantized kernels fold the residual, and not into a prompt's tiles: those
        // store 512 outputs per subgroup, and reading the residual there cost more on
        // lavapipe (a 512-token prompt's products took 4.48 s instead of 4.05) than the
        // separate add it saves (28 ms). Decode steps, where dispatches count, fold it.
        if (expanded || prompt_sized) && let Some(residual) = residual {
            return self.multiply_with(x, None, kernel) + residual;
        }
        if expanded {
            return x.matmul(self.dequantize().transpose());
        }
        // A tile of exactly the tokens up to 8: a decode verifying a few draft tokens pays
        // for those rows only (on lavapipe 5 tokens took 120 ms in a tile of 8).
        let tile = if prompt_sized { PROMPT_TOKEN_TILE } else { tokens.min(MAX_TOKEN_TILE) };
        let Some(width) = self.subgroup_max_size else {
            let rows = portable_rows(tile);
            let kernel = MatrixKernel {
                name: "matmul_quant",
                source: include_str!("../../../shaders/matmul_quant.wgsl"),
                variant: (tile * 1000 + rows) as u32,
                code: &|| tile_code(rows, tile),
                workgroups: [self.rows.div_ceil(WORKGROUP * rows) as u32, tokens.div_ceil(tile) as u32, 1],
            };
            return self.launch(kernel, x, residual);
        };
        // Rows per subgroup, measured on lavapipe: more rows share each input load, at the
        // cost of accumulators (rows x tile of them).
        let rows_per_subgroup = if prompt_sized { PROMPT_ROWS } else { (8 * tile).clamp(8, 32) };
        let rows_per_workgroup = rows_per_subgroup * WORKGROUP / width;
        let kernel = MatrixKernel {
            name: "matmul_quant_subgroup",
            source: include_str!("../../../shaders/matmul_quant_subgroup.wgsl"),
            variant: (tile * 1000 + rows_per_subgroup) as u32,
            code: &|| subgroup_tile_code(rows_per_subgroup, tile),
            workgroups: [self.rows.div_ceil(rows_per_workgroup) as u32, tokens.div_ceil(tile) as u32, 1],
        };
        self.launch(kernel, x, residual)
    }

    /// matmul_quant_tiled.wgsl: tiles of 64 tokens x 64 rows, the residual added as it
    /// writes (each invocation stores 64 outputs, so the reads are spread thin).
    fn tiled(&self, x: Tensor<2>, residual: Option<Tensor<2>>) -> Tensor<2> {
        let (tile_tokens, tile_rows) = (8 * TILED_TOKENS_PER_INVOCATION, 8 * TILED_ROWS_PER_INVOCATION);
        let kernel = MatrixKernel {
            name: "matmul_quant_tiled",
            source: include_str!("../../../shaders/matmul_quant_tiled.wgsl"),
            variant: 0,
            code: &|| tiled_code(TILED_TOKENS_PER_INVOCATION, TILED_ROWS_PER_INVOCATION),
            workgroups: [self.rows.div_ceil(tile_rows) as u32, x.dims()[0].div_ceil(tile_tokens) as u32, 1],
        };
        self.launch(kernel, x, residual)
    }

    /// Launches one of the matrix kernels on `x`, adding `residual` as it writes if given.
    fn launch(&self, kernel: MatrixKernel, x: Tensor<2>, residual: Option<Tensor<2>>) -> Tensor<2> {
        let tokens = x.dims()[0];
        let x = cube(x);
        let y = empty(&x.device, [tokens, self.rows]);
        let residual = residual.map(cube);
        let mut args = vec![Arg::Read(&self.quants), Arg::Read(&self.scales), Arg::Read(&x.handle), Arg::Write(&y.handle)];
        args.extend(residual.as_ref().map(|r| Arg::Read(&r.handle)));
        let adds = if residual.is_some() { RESIDUAL_VARIANT } else { 0 };
        let template = Template {
            name: kernel.name,
            source: kernel.source,
            variant: (self.format.name(), kernel.variant + adds),
            values: &|| {
                let mut values = (kernel.code)();
                values.push(("UNPACK", self.format.unpack_source()));
                values.push(("BINDINGS", matmul_bindings(adds != 0)));
                values
            },
            workgroup: WORKGROUP as u32,
        };
        let info = MatmulInfo { rows: self.rows as u32, cols: self.cols as u32, tokens: tokens as u32, _pad: 0 };
        launch(&self.device, &template, kernel.workgroups, &args, &info);
        from_cube(y)
    }

    /// The same matrix multiplied by the kernel for adapters without subgroups.
    #[cfg(test)]
    pub(crate) fn without_subgroups(mut self) -> Self {
        self.subgroup_max_size = None;
        self
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Picks the kernel for prompt-sized products of this matrix's format (see
    /// [`many_tokens`]), timing them on this matrix if the format has no pick yet.
    pub async fn calibrate(&self) {
        many_tokens::calibrate(self).await;
    }

    /// The device, block format and shape: a kernel choice is kept per device and format,
    /// and reports the shape it was timed on.
    pub(crate) fn shape_key(&self) -> (&CubeDevice, &'static str, usize, usize) {
        (&self.device, self.format.name(), self.rows, self.cols)
    }

    pub fn uses_subgroups(&self) -> bool {
        self.subgroup_max_size.is_some()
    }

    /// The matrix expanded to f32 `[rows, cols]` on the device.
    pub fn dequantize(&self) -> Tensor<2> {
        let groups = self.rows * self.cols / 8;
        let template = Template {
            name: "dequantize",
            source: include_str!("../../../shaders/dequantize.wgsl"),
            variant: (self.format.name(), 0),
            values: &|| vec![("UNPACK", self.format.unpack_source())],
            workgroup: WORKGROUP as u32,
        };
        let y = empty(&self.device, [self.rows, self.cols]);
        let workgroups = [groups.div_ceil(WORKGROUP).min(MAX_WORKGROUPS) as u32, 1, 1];
        let args = [Arg::Read(&self.quants), Arg::Read(&self.scales), Arg::Write(&y.handle)];
        launch(&self.device, &template, workgroups, &args, &DequantizeInfo { groups: groups as u32 });
        from_cube(y)
    }

    pub fn device_bytes(&self) -> usize {
        self.bytes
    }
}

/// A linear layer without bias: `y = x W^T` for a GGUF matrix of `outputs` rows of `inputs`.
pub enum Linear {
    Quantized(QuantMatrix),
    /// `[inputs, outputs]` f32, for formats without a kernel.
    Dense(Tensor<2>),
    /// Consecutive row ranges of a matrix too big for one buffer binding (a large
    /// vocabulary's LM head), their outputs concatenated.
    Parts(Vec<Linear>),
}

/// The largest buffer a kernel binds on `device`: WebGPU's default (and lavapipe's limit)
/// where the adapter is unknown.
pub fn max_binding_bytes(device: &Device) -> usize {
    crate::adapter_info(device).map_or(128 << 20, |a| a.max_binding_bytes.min(usize::MAX as u64) as usize)
}

impl Linear {
    pub fn load(file: &GgufFile, info: &TensorInfo, device: &Device) -> Result<Self, ModelError> {
        Self::load_rows(file, info, 0..info.rows() as usize, device)
    }

    /// The matrix of rows `rows` of `info` (one part of a fused projection), in parts if
    /// it does not fit in one buffer binding.
    pub fn load_rows(file: &GgufFile, info: &TensorInfo, rows: Range<usize>, device: &Device) -> Result<Self, ModelError> {
        let inputs = info.row_len() as usize;
        let outputs = rows.len();
        if rows.end > info.rows() as usize {
            return Err(ModelError::InvalidConfig(format!("tensor {:?} has no rows {rows:?}", info.name)));
        }
        let format = QuantFormat::of(info.ty).filter(|f| inputs % f.block_elements() == 0);
        let row_bytes = info.ty.bytes_for(inputs as u64).expect("validated at parse") as usize;
        // Bytes a row takes on the device: repacked blocks (a little more than the file's),
        // or f32 values.
        let device_row_bytes = if format.is_some() { row_bytes + row_bytes / 8 } else { inputs * 4 };
        let limit = max_binding_bytes(device);
        if outputs * device_row_bytes > limit && outputs > 1 {
            let per_part = (limit / device_row_bytes).max(1);
            let parts = rows
                .clone()
                .step_by(per_part)
                .map(|start| Self::load_rows(file, info, start..(start + per_part).min(rows.end), device))
                .collect::<Result<_, _>>()?;
            return Ok(Self::Parts(parts));
        }
        if let Some(format) = format {
            let data = file.tensor_bytes(info, (rows.start * row_bytes) as u64..(rows.end * row_bytes) as u64);
            return Ok(Self::Quantized(QuantMatrix::upload(device, format, &data, outputs, inputs)?));
        }
        let values = file.dequantize_rows(info, rows.start as u64..rows.end as u64)?;
        let mut transposed = vec![0f32; values.len()];
        for (o, row) in values.chunks_exact(inputs).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                transposed[i * outputs + o] = v;
            }
        }
        Ok(Self::Dense(Tensor::from_data(TensorData::new(transposed, [inputs, outputs]), device)))
    }

    /// `[tokens, inputs]` to `[tokens, outputs]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Quantized(m) => m.forward(x),
            Self::Dense(w) => x.matmul(w.clone()),
            Self::Parts(parts) => Tensor::cat(parts.iter().map(|p| p.forward(x.clone())).collect(), 1),
        }
    }

    /// `forward(x) + residual`, the add folded into the matrix kernel where there is one.
    pub fn forward_add(&self, x: Tensor<2>, residual: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Quantized(m) => m.forward_add(x, residual),
            _ => self.forward(x) + residual,
        }
    }

    /// The quantized matrices of this layer.
    pub fn quantized(&self) -> Vec<&QuantMatrix> {
        match self {
            Self::Quantized(m) => vec![m],
            Self::Dense(_) => Vec::new(),
            Self::Parts(parts) => parts.iter().flat_map(Linear::quantized).collect(),
        }
    }

    /// Bytes the weights take on the device.
    pub fn device_bytes(&self) -> usize {
        match self {
            Self::Quantized(m) => m.device_bytes(),
            Self::Dense(w) => w.shape().num_elements() * 4,
            Self::Parts(parts) => parts.iter().map(Linear::device_bytes).sum(),
        }
    }
}
