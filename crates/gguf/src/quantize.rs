//! Quantization of f32 values into the simple GGUF block formats, the same way ggml's
//! reference `quantize_row_*_ref` functions do. Used to write test models and fixtures.

use half::{bf16, f16};

use crate::{GgmlType, GgufError};

/// Encodes `values` as `ty`. The length must be a whole number of blocks.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>, GgufError> {
    let n = ty.block_elements();
    if values.len() % n != 0 {
        return Err(GgufError::PartialBlock { ty, len: values.len(), block_bytes: n });
    }
    let mut out = Vec::with_capacity(values.len() / n * ty.block_bytes());
    let blocks = values.chunks_exact(n);
    match ty {
        GgmlType::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
        GgmlType::F16 => values.iter().for_each(|v| out.extend(f16::from_f32(*v).to_bits().to_le_bytes())),
        GgmlType::Bf16 => {
            values.iter().for_each(|v| out.extend(bf16::from_f32(*v).to_bits().to_le_bytes()))
        }
        GgmlType::Q8_0 => blocks.for_each(|b| q8_0(b, &mut out)),
        GgmlType::Q4_0 => blocks.for_each(|b| q4_0(b, &mut out)),
        GgmlType::Q4_1 => blocks.for_each(|b| q4_1(b, &mut out)),
        other => return Err(GgufError::UnsupportedType { tensor: String::new(), ty: other }),
    }
    Ok(out)
}

fn push_f16(out: &mut Vec<u8>, v: f32) {
    out.extend(f16::from_f32(v).to_bits().to_le_bytes());
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 { 1.0 / d } else { 0.0 }
}

fn q8_0(block: &[f32], out: &mut Vec<u8>) {
    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    push_f16(out, d);
    out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
}

fn q4_0(block: &[f32], out: &mut Vec<u8>) {
    // ggml keeps the sign of the value with the largest magnitude so that it maps to -8.
    let max = block.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -8.0;
    let id = inverse(d);
    push_f16(out, d);
    let q = |v: f32| ((v * id + 8.5) as i32).min(15) as u8;
    out.extend((0..16).map(|j| q(block[j]) | (q(block[j + 16]) << 4)));
}

fn q4_1(block: &[f32], out: &mut Vec<u8>) {
    let min = block.iter().copied().fold(f32::INFINITY, f32::min);
    let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    push_f16(out, d);
    push_f16(out, min);
    let q = |v: f32| (((v - min) * id + 0.5) as i32).min(15) as u8;
    out.extend((0..16).map(|j| q(block[j]) | (q(block[j + 16]) << 4)));
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
        ] {
            let back = dequantize(ty, &quantize(ty, &values).unwrap()).unwrap();
            let worst = values.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= tolerance, "{ty}: max error {worst}");
        }
    }
}
