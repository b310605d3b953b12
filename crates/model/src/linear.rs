//! A linear layer's matrix: quantized on the device where a kernel reads its format,
//! f32 otherwise, in parts where it does not fit one buffer binding.

use std::ops::Range;

use burn::tensor::{Device, Tensor, TensorData};
use cinder_gguf::{GgufFile, TensorInfo};

use crate::ModelError;
use crate::device::max_binding_bytes;
use crate::quant::{QuantFormat, QuantMatrix};

/// A linear layer without bias: `y = x W^T` for a GGUF matrix of `outputs` rows of `inputs`.
pub enum Linear {
    Quantized(QuantMatrix),
    /// `[inputs, outputs]` f32, for formats without a kernel.
    Dense(Tensor<2>),
    /// Consecutive row ranges of a matrix too big for one buffer binding (a large
    /// vocabulary's LM head), their outputs concatenated.
    Parts(Vec<Linear>),
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
