//! Quantization of f32 values into GGUF tensors, for test models and fixtures: plain types
//! converted, block formats encoded by their definitions in [`crate::blocks`].

use half::{bf16, f16};

use crate::blocks::{QuantBlock, WithBlock, with_block};
use crate::{GgmlType, GgufError};

/// Encodes `values` as `ty`. The length must be a whole number of blocks.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>, GgufError> {
    let n = ty.block_elements();
    if values.len() % n != 0 {
        return Err(GgufError::PartialBlock { ty, len: values.len(), block_bytes: n });
    }
    let mut out = Vec::with_capacity(values.len() / n * ty.block_bytes());
    match ty {
        GgmlType::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
        GgmlType::F16 => values.iter().for_each(|v| out.extend(f16::from_f32(*v).to_le_bytes())),
        GgmlType::Bf16 => values.iter().for_each(|v| out.extend(bf16::from_f32(*v).to_le_bytes())),
        _ => with_block(ty, Encode { values, out: &mut out }).ok_or(GgufError::UnsupportedType { tensor: String::new(), ty })?,
    }
    Ok(out)
}

/// `values` encoded block by block onto `out`.
struct Encode<'a> {
    values: &'a [f32],
    out: &'a mut Vec<u8>,
}

impl WithBlock for Encode<'_> {
    type Output = ();

    fn run<B: QuantBlock>(self) {
        for block in self.values.chunks_exact(B::VALUES) {
            self.out.extend_from_slice(bytemuck::bytes_of(&B::encode(block)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dequantize;

    #[test]
    fn quantize_then_dequantize_stays_close() {
        let values: Vec<f32> = (0..256).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        for (ty, tolerance) in [
            (GgmlType::F32, 0.0),
            (GgmlType::F16, 2e-3),
            (GgmlType::Bf16, 2e-2),
            (GgmlType::Q8_0, 0.02),
            (GgmlType::Q4_0, 0.4),
            (GgmlType::Q4_1, 0.2),
            (GgmlType::Q5_0, 0.2),
            (GgmlType::Q5_1, 0.1),
            (GgmlType::Q4K, 0.25),
            (GgmlType::Q6K, 0.06),
        ] {
            let back = dequantize(ty, &quantize(ty, &values).unwrap()).unwrap();
            let worst = values.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= tolerance, "{ty}: max error {worst}");
        }
    }
}
