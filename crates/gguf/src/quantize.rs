//! Quantization of f32 values into GGUF block formats. Used to write test models and
//! fixtures. The 32-value formats follow ggml's reference `quantize_row_*_ref` functions;
//! the K-quants (Q4_K, Q6_K) fit each sub-block's scale from its range instead of ggml's
//! iterative error search, so their blocks are valid but a little less accurate.

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
        GgmlType::Q5_0 => blocks.for_each(|b| q5_0(b, &mut out)),
        GgmlType::Q5_1 => blocks.for_each(|b| q5_1(b, &mut out)),
        GgmlType::Q4K => blocks.for_each(|b| q4_k(b, &mut out)),
        GgmlType::Q6K => blocks.for_each(|b| q6_k(b, &mut out)),
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

/// Five-bit values: the low four bits as Q4's nibbles, the fifth bit of value `j` in bit `j`
/// of a little-endian `u32`.
fn push_q5(out: &mut Vec<u8>, q: impl Fn(usize) -> u8) {
    let qh = (0..32).fold(0u32, |qh, j| qh | (u32::from(q(j) >> 4) << j));
    out.extend(qh.to_le_bytes());
    out.extend((0..16).map(|j| (q(j) & 0x0F) | ((q(j + 16) & 0x0F) << 4)));
}

fn q5_0(block: &[f32], out: &mut Vec<u8>) {
    let max = block.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -16.0;
    let id = inverse(d);
    push_f16(out, d);
    push_q5(out, |j| ((block[j] * id + 16.5) as i32).clamp(0, 31) as u8);
}

fn q5_1(block: &[f32], out: &mut Vec<u8>) {
    let min = block.iter().copied().fold(f32::INFINITY, f32::min);
    let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    push_f16(out, d);
    push_f16(out, min);
    push_q5(out, |j| (((block[j] - min) * id + 0.5) as i32).clamp(0, 31) as u8);
}

/// Rounds `v / step` to an integer in `0..=max` (0 when the step is 0).
fn level(v: f32, step: f32, max: i32) -> u8 {
    ((v * inverse(step)).round() as i32).clamp(0, max) as u8
}

/// 256 values: eight sub-blocks of 32, each `d * sc * q - dmin * m` with 6-bit `sc`, `m` and
/// 4-bit `q`; the sub-block scales and minimums are themselves quantized against the f16
/// super-block `d` and `dmin`.
fn q4_k(block: &[f32], out: &mut Vec<u8>) {
    let ranges: Vec<(f32, f32)> = block
        .chunks_exact(32)
        .map(|sub| {
            let min = sub.iter().copied().fold(0f32, f32::min);
            let max = sub.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            ((max - min) / 15.0, -min)
        })
        .collect();
    let d = f16::from_f32(ranges.iter().fold(0f32, |m, r| m.max(r.0)) / 63.0).to_f32();
    let dmin = f16::from_f32(ranges.iter().fold(0f32, |m, r| m.max(r.1)) / 63.0).to_f32();
    let sc: Vec<u8> = ranges.iter().map(|r| level(r.0, d, 63).max(1)).collect();
    let mins: Vec<u8> = ranges.iter().map(|r| level(r.1, dmin, 63)).collect();
    push_f16(out, d);
    push_f16(out, dmin);
    let mut scales = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            scales[j] = sc[j];
            scales[j + 4] = mins[j];
        } else {
            scales[j + 4] = (sc[j] & 0x0F) | ((mins[j] & 0x0F) << 4);
            scales[j - 4] |= (sc[j] >> 4) << 6;
            scales[j] |= (mins[j] >> 4) << 6;
        }
    }
    out.extend(scales);
    let q: Vec<u8> = block
        .iter()
        .enumerate()
        .map(|(i, &v)| level(v + dmin * f32::from(mins[i / 32]), d * f32::from(sc[i / 32]), 15))
        .collect();
    // 32 bytes per pair of sub-blocks: the first in the low nibbles, the second in the high.
    for pair in q.chunks_exact(64) {
        out.extend((0..32).map(|l| pair[l] | (pair[l + 32] << 4)));
    }
}

/// 256 values: sixteen groups of 16, each `d * sc * (q - 32)` with signed 8-bit `sc` and
/// 6-bit `q` (low four bits in `ql`, high two in `qh`).
fn q6_k(block: &[f32], out: &mut Vec<u8>) {
    let steps: Vec<f32> = block.chunks_exact(16).map(|g| g.iter().fold(0f32, |m, v| m.max(v.abs())) / 31.0).collect();
    let d = f16::from_f32(steps.iter().fold(0f32, |m, &s| m.max(s)) / 127.0).to_f32();
    let sc: Vec<i8> = steps.iter().map(|&s| level(s, d, 127).max(1) as i8).collect();
    let q: Vec<u8> = block
        .iter()
        .enumerate()
        .map(|(i, &v)| level(v + 32.0 * d * f32::from(sc[i / 16]), d * f32::from(sc[i / 16]), 63))
        .collect();
    let (mut ql, mut qh) = (Vec::with_capacity(128), Vec::with_capacity(64));
    for half in q.chunks_exact(128) {
        ql.extend((0..32).map(|l| (half[l] & 0x0F) | ((half[l + 64] & 0x0F) << 4)));
        ql.extend((0..32).map(|l| (half[l + 32] & 0x0F) | ((half[l + 96] & 0x0F) << 4)));
        qh.extend((0..32).map(|l| (half[l] >> 4) | ((half[l + 32] >> 4) << 2) | ((half[l + 64] >> 4) << 4) | ((half[l + 96] >> 4) << 6)));
    }
    out.extend(ql);
    out.extend(qh);
    out.extend(sc.iter().map(|&s| s as u8));
    push_f16(out, d);
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
