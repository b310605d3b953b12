//! Weight matrices kept in their GGUF block format on the device.
//!
//! A [`Linear`] layer holds its matrix quantized when a kernel reads that format
//! (Q4_0, Q4_1, Q8_0: `shaders/matmul_quant.wgsl`), so device memory is about the file's
//! bytes and each product reads 4.5–8.5 bits per weight instead of 32. Other formats are
//! dequantized to an f32 tensor at load and multiplied by Burn.
//!
//! At load, blocks are split into two word arrays: the quantized values of each block
//! (whole words, so a lane reads aligned `u32`s) and the per-block f16 scales (two per word;
//! Q4_1's scale and offset share one word). GGUF's 18/20/34-byte blocks are not
//! word-aligned, so reading them in place would cost byte-by-byte extraction.

use burn::tensor::{Device, Tensor, TensorData};
use burn_cubecl::CubeDevice;
use burn_cubecl::cubecl::server::Handle;
use cinder_gguf::{GgmlType, GgufFile, TensorInfo};

use crate::ModelError;
use crate::kernel::{Arg, MAX_WORKGROUPS, Template, cube, cube_device, empty, from_cube, launch, upload};

/// A block format the matrix kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantFormat {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl QuantFormat {
    pub fn of(ty: GgmlType) -> Option<Self> {
        match ty {
            GgmlType::Q4_0 => Some(Self::Q4_0),
            GgmlType::Q4_1 => Some(Self::Q4_1),
            GgmlType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q8_0 => "q8_0",
        }
    }

    /// The WGSL `unpack` function for this format, with its helpers.
    fn unpack_source(self) -> String {
        let unpack = match self {
            Self::Q4_0 => include_str!("../../../shaders/unpack_q4_0.wgsl"),
            Self::Q4_1 => include_str!("../../../shaders/unpack_q4_1.wgsl"),
            Self::Q8_0 => include_str!("../../../shaders/unpack_q8_0.wgsl"),
        };
        format!("{}\n{unpack}", include_str!("../../../shaders/quant_common.wgsl"))
    }

    /// Splits GGUF blocks into (quantized value words, scale words).
    fn repack(self, data: &[u8]) -> (Vec<u32>, Vec<u32>) {
        let words = |bytes: &[u8]| -> Vec<u32> {
            bytes.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect()
        };
        let f16_at = |block: &[u8], at: usize| u32::from(u16::from_le_bytes([block[at], block[at + 1]]));
        let blocks = data.chunks_exact(self.block_bytes());
        let mut quants = Vec::with_capacity(blocks.len() * (self.block_bytes() - 2) / 4);
        let mut scales = Vec::with_capacity(blocks.len());
        match self {
            Self::Q4_1 => {
                for block in blocks {
                    scales.push(f16_at(block, 0) | f16_at(block, 2) << 16);
                    quants.extend(words(&block[4..]));
                }
            }
            Self::Q4_0 | Self::Q8_0 => {
                let mut d = Vec::with_capacity(blocks.len());
                for block in blocks {
                    d.push(f16_at(block, 0));
                    quants.extend(words(&block[2..]));
                }
                scales.extend(d.chunks(2).map(|pair| pair[0] | pair.get(1).copied().unwrap_or(0) << 16));
            }
        }
        (quants, scales)
    }
}

/// A `rows x cols` matrix in a block format on the device.
pub struct QuantMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    quants: Handle,
    scales: Handle,
    device: CubeDevice,
    bytes: usize,
}

/// Most tokens one invocation of the quantized kernel multiplies at once.
const MAX_TOKEN_TILE: usize = 8;
/// Above this many tokens, the matrix is expanded to f32 and multiplied by Burn's tiled
/// matmul, which reuses each weight across many more tokens than the quantized kernel.
const MAX_QUANTIZED_TOKENS: usize = 16;

/// The kernel's per-token lines for a tile of `tile` tokens (see matmul_quant.wgsl).
fn tile_code(tile: usize) -> Vec<(&'static str, String)> {
    let lines = |f: &dyn Fn(usize) -> String| (0..tile).map(f).collect::<Vec<_>>().join("\n");
    vec![
        ("TILE", tile.to_string()),
        ("TOKEN_ROWS", lines(&|t| format!("    let x{t} = min(first_token + {t}u, last) * x_row;"))),
        ("ACCUMULATORS", lines(&|t| format!("    var acc{t} = vec4<f32>(0.0);"))),
        ("ACCUMULATE", lines(&|t| format!("            acc{t} += lo * x[x{t} + xi] + hi * x[x{t} + xi + 4u];"))),
        (
            "STORE",
            lines(&|t| {
                format!(
                    "    if (first_token + {t}u < info.tokens) {{ y[(first_token + {t}u) * info.rows + row] = dot(acc{t}, vec4<f32>(1.0)); }}"
                )
            }),
        ),
    ]
}
const WORKGROUP: usize = 64;

impl QuantMatrix {
    /// Uploads GGUF blocks of a `rows x cols` matrix (row-major, `cols` a multiple of 32).
    pub fn upload(device: &Device, format: QuantFormat, data: &[u8], rows: usize, cols: usize) -> Result<Self, ModelError> {
        let device = cube_device(device).ok_or_else(|| ModelError::Device("quantized weights need a wgpu device".into()))?;
        if cols % 32 != 0 || data.len() != rows * cols / 32 * format.block_bytes() {
            return Err(ModelError::InvalidConfig(format!(
                "{} bytes do not hold a {rows} x {cols} {format:?} matrix",
                data.len()
            )));
        }
        let (quants, scales) = format.repack(data);
        let bytes = (quants.len() + scales.len()) * 4;
        Ok(Self { format, rows, cols, quants: upload(&device, &quants), scales: upload(&device, &scales), device, bytes })
    }

    /// `x` (`[tokens, cols]`) times the transposed matrix: `[tokens, rows]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [tokens, cols] = x.dims();
        assert_eq!(cols, self.cols, "input width does not match the matrix");
        if tokens > MAX_QUANTIZED_TOKENS {
            return x.matmul(self.dequantize().transpose());
        }
        let x = cube(x);
        let y = empty(&x.device, [tokens, self.rows]);
        let tile = tokens.next_power_of_two().min(MAX_TOKEN_TILE);
        let template = Template {
            name: "matmul_quant",
            source: include_str!("../../../shaders/matmul_quant.wgsl"),
            variant: (self.format.name(), tile as u32),
            values: &|| {
                let mut values = tile_code(tile);
                values.push(("UNPACK", self.format.unpack_source()));
                values
            },
            workgroup: WORKGROUP as u32,
        };
        let workgroups = [self.rows.div_ceil(WORKGROUP) as u32, tokens.div_ceil(tile) as u32, 1];
        let args = [Arg::Read(&self.quants), Arg::Read(&self.scales), Arg::Read(&x.handle), Arg::Write(&y.handle)];
        launch(&self.device, &template, workgroups, &args, &[self.rows as u32, self.cols as u32, tokens as u32]);
        from_cube(y)
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
        launch(&self.device, &template, workgroups, &args, &[groups as u32]);
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
}

impl Linear {
    pub fn load(file: &GgufFile, info: &TensorInfo, device: &Device) -> Result<Self, ModelError> {
        let (inputs, outputs) = (info.row_len() as usize, info.rows() as usize);
        if let Some(format) = QuantFormat::of(info.ty).filter(|_| inputs % 32 == 0) {
            return Ok(Self::Quantized(QuantMatrix::upload(device, format, file.tensor_data(info), outputs, inputs)?));
        }
        let values = file.dequantize(info)?;
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
        }
    }

    /// Bytes the weights take on the device.
    pub fn device_bytes(&self) -> usize {
        match self {
            Self::Quantized(m) => m.device_bytes(),
            Self::Dense(w) => w.shape().num_elements() * 4,
        }
    }
}
