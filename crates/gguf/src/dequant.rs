//! Dequantization of GGUF tensors to f32: plain types converted, block formats decoded by
//! their definitions in [`crate::blocks`], bit-exact with ggml's `dequantize_row_*`.

use half::{bf16, f16};

use crate::blocks::{QuantBlock, WithBlock, blocks, with_block};
use crate::{GgmlType, GgufError};

/// Decodes `data` (whole blocks of `ty`) into f32 values.
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Result<Vec<f32>, GgufError> {
    let block_bytes = ty.block_bytes();
    if data.len() % block_bytes != 0 {
        return Err(GgufError::PartialBlock { ty, len: data.len(), block_bytes });
    }
    let mut out = Vec::with_capacity(data.len() / block_bytes * ty.block_elements());
    let values = data.chunks_exact(block_bytes);
    match ty {
        GgmlType::F32 => out.extend(values.map(|b| f32::from_le_bytes(b.try_into().unwrap()))),
        GgmlType::F16 => out.extend(values.map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())),
        GgmlType::Bf16 => out.extend(values.map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        _ => with_block(ty, Decode { data, out: &mut out }).ok_or(GgufError::UnsupportedType { tensor: String::new(), ty })?,
    }
    Ok(out)
}

/// Every block of `data` decoded onto `out`.
struct Decode<'a> {
    data: &'a [u8],
    out: &'a mut Vec<f32>,
}

impl WithBlock for Decode<'_> {
    type Output = ();

    fn run<B: QuantBlock>(self) {
        blocks::<B>(self.data).for_each(|block| block.decode(self.out));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block_by_hand() {
        let mut block = Vec::new();
        block.extend(f16::from_f32(0.5).to_bits().to_le_bytes());
        block.extend(f16::from_f32(-1.0).to_bits().to_le_bytes());
        block.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let values = dequantize(GgmlType::Q4_1, &block).unwrap();
        assert_eq!(values.len(), 32);
        assert_eq!(values[0], -1.0);
        assert_eq!(values[3], 0.5);
        assert_eq!(values[16], 6.5);
        assert_eq!(values[31], -1.0);
    }

    #[test]
    fn partial_blocks_and_unsupported_types_are_errors() {
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0; 35]),
            Err(GgufError::PartialBlock { block_bytes: 34, .. })
        ));
        let err = dequantize(GgmlType::Iq2Xxs, &[0; 66]).unwrap_err().to_string();
        assert!(err.contains("IQ2_XXS"), "{err}");
    }
}
