//! A quantized matrix on the device and the launches of its kernels.

use burn::tensor::{Device, Tensor};
use burn_cubecl::CubeDevice;
use burn_cubecl::cubecl::server::Handle;
use bytemuck::{Pod, Zeroable};

use super::QuantFormat;
use super::wgsl::{matmul_bindings, subgroup_tile_code, tile_code, tiled_code};
use crate::ModelError;
use crate::kernel::{Arg, MAX_WORKGROUPS, Template, cube, cube_device, empty, from_cube, launch, upload};
use crate::device::max_binding_bytes;
use crate::many_tokens::{self, ManyTokens, TwoKernels};

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
                source: include_str!("../../../../shaders/matmul_quant.wgsl"),
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
            source: include_str!("../../../../shaders/matmul_quant_subgroup.wgsl"),
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
            source: include_str!("../../../../shaders/matmul_quant_tiled.wgsl"),
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

    pub fn uses_subgroups(&self) -> bool {
        self.subgroup_max_size.is_some()
    }

    /// The matrix expanded to f32 `[rows, cols]` on the device.
    pub fn dequantize(&self) -> Tensor<2> {
        let groups = self.rows * self.cols / 8;
        let template = Template {
            name: "dequantize",
            source: include_str!("../../../../shaders/dequantize.wgsl"),
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

impl TwoKernels for QuantMatrix {
    fn shape_key(&self) -> (&CubeDevice, &'static str, usize, usize) {
        (&self.device, self.format.name(), self.rows, self.cols)
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn multiply_with(&self, x: Tensor<2>, kernel: ManyTokens) -> Tensor<2> {
        QuantMatrix::multiply_with(self, x, None, kernel)
    }
}
