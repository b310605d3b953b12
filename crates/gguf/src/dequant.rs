//! Dequantization of GGUF block formats to f32, bit-exact with ggml's reference
//! `dequantize_row_*` functions.

use half::{bf16, f16};

use crate::{GgmlType, GgufError};

/// Decodes `data` (whole blocks of `ty`) into f32 values.
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Result<Vec<f32>, GgufError> {
    let block_bytes = ty.block_bytes();
    if data.len() % block_bytes != 0 {
        return Err(GgufError::PartialBlock { ty, len: data.len(), block_bytes });
    }
    let mut out = Vec::with_capacity(data.len() / block_bytes * ty.block_elements());
    let blocks = data.chunks_exact(block_bytes);
    match ty {
        GgmlType::F32 => out.extend(blocks.map(|b| f32::from_le_bytes(b.try_into().unwrap()))),
        GgmlType::F16 => out.extend(blocks.map(|b| f16_at(b, 0))),
        GgmlType::Bf16 => {
            out.extend(blocks.map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()))
        }
        GgmlType::Q4_0 => blocks.for_each(|b| q4_0(b, &mut out)),
        GgmlType::Q4_1 => blocks.for_each(|b| q4_1(b, &mut out)),
        GgmlType::Q5_0 => blocks.for_each(|b| q5(b, false, &mut out)),
        GgmlType::Q5_1 => blocks.for_each(|b| q5(b, true, &mut out)),
        GgmlType::Q8_0 => blocks.for_each(|b| q8_0(b, &mut out)),
        GgmlType::Q4K => blocks.for_each(|b| q4_k(b, &mut out)),
        GgmlType::Q6K => blocks.for_each(|b| q6_k(b, &mut out)),
        other => return Err(GgufError::UnsupportedType { tensor: String::new(), ty: other }),
    }
    Ok(out)
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// 32 values: f16 scale `d`, 16 bytes of nibbles; low nibbles are values 0..16, high 16..32.
fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|q| ((q & 0x0F) as i32 - 8) as f32 * d));
    out.extend(qs.iter().map(|q| ((q >> 4) as i32 - 8) as f32 * d));
}

/// Like Q4_0 with an f16 minimum `m`: value = q * d + m.
fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    out.extend(qs.iter().map(|q| (q & 0x0F) as f32 * d + m));
    out.extend(qs.iter().map(|q| (q >> 4) as f32 * d + m));
}

/// Q5_0 / Q5_1: four nibble bits in `qs`, the fifth bit of value j in bit j of `qh`.
fn q5(b: &[u8], with_min: bool, out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let (m, rest) = if with_min { (f16_at(b, 2), &b[4..]) } else { (0.0, &b[2..]) };
    let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let qs = &rest[4..20];
    let offset = if with_min { 0 } else { 16 };
    let value = |q: u8, high_bit: u32| {
        let q = (q as u32 | (high_bit << 4)) as i32 - offset;
        q as f32 * d + m
    };
    out.extend(qs.iter().enumerate().map(|(j, &q)| value(q & 0x0F, (qh >> j) & 1)));
    out.extend(qs.iter().enumerate().map(|(j, &q)| value(q >> 4, (qh >> (j + 16)) & 1)));
}

/// 32 values: f16 scale and 32 signed bytes.
fn q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K/Q5_K block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// 256 values in 8 sub-blocks of 32, each with a 6-bit scale and minimum.
fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        out.extend(q.iter().map(|&v| d1 * (v & 0x0F) as f32 - m1));
        out.extend(q.iter().map(|&v| d2 * (v >> 4) as f32 - m2));
    }
}

/// 256 values of 6 bits (low 4 in `ql`, high 2 in `qh`) with 16 signed 8-bit scales.
fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let scales = &b[192..208];
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &ql[64 * half..];
        let qh = &qh[32 * half..];
        let sc = &scales[8 * half..];
        let mut y = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |i: usize| d * sc[is + i] as i8 as f32;
            y[l] = s(0) * q1 as f32;
            y[l + 32] = s(2) * q2 as f32;
            y[l + 64] = s(4) * q3 as f32;
            y[l + 96] = s(6) * q4 as f32;
        }
        out.extend_from_slice(&y);
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
