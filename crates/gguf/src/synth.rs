//! Random tensor data written straight in a block format: random quants with scales chosen
//! for a target spread. Synthetic models at real sizes need billions of values, which
//! quantizing random floats would take minutes to produce; this runs at memory speed.

use std::io::Write;

use half::{bf16, f16};

use crate::GgmlType;

/// A small deterministic generator (xorshift64*): the bytes depend only on the seed.
pub struct SynthRng(u64);

impl SynthRng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A generator starting in exactly `state` (not zero), for streams whose start is fixed
    /// elsewhere (the tiny test models' norm weights).
    pub fn from_state(state: u64) -> Self {
        Self(state)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn fill(&mut self, bytes: &mut [u8]) {
        let mut chunks = bytes.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// The f16 fields of a block (byte offset, value) that make random quants spread with
/// standard deviation about `std`; every other byte of these formats is valid at random.
/// `None` for formats this does not write.
fn block_scales(ty: GgmlType, std: f32) -> Option<Vec<(usize, f32)>> {
    // Each factor is the standard deviation of the random quants times their scale field.
    Some(match ty {
        // d * (q - 8), q in 0..16.
        GgmlType::Q4_0 => vec![(0, std / 4.6)],
        // d * q + m: m centres the values.
        GgmlType::Q4_1 => vec![(0, std / 4.6), (2, -7.5 * std / 4.6)],
        GgmlType::Q5_0 => vec![(0, std / 9.2)],
        GgmlType::Q5_1 => vec![(0, std / 9.2), (2, -15.5 * std / 9.2)],
        // d * q, q any i8.
        GgmlType::Q8_0 => vec![(0, std / 74.0)],
        // d * sc * q - dmin * m, 6-bit sc and m, q in 0..16.
        GgmlType::Q4K => vec![(0, std / 223.0), (2, 7.5 * std / 223.0)],
        // d * sc * (q - 32), sc any i8, q in 0..64; d is the block's last field.
        GgmlType::Q6K => vec![(208, std / 1369.0)],
        _ => return None,
    })
}

/// Writes `elements` random values encoded as `ty`, spread with standard deviation about
/// `std` around `mean` (`mean` applies to the float formats only; quantized values centre
/// on zero). `elements` must be whole blocks.
pub fn write_random(ty: GgmlType, elements: u64, mean: f32, std: f32, rng: &mut SynthRng, out: &mut dyn Write) -> std::io::Result<()> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let bytes = ty.bytes_for(elements).ok_or_else(|| invalid(format!("{elements} values are not whole {} blocks", ty.name())))?;
    let block = ty.block_bytes();
    // About 1 MiB at a time, in whole blocks.
    let per_chunk = ((1 << 20) / block).max(1) * block;
    let mut buffer = vec![0u8; per_chunk];
    let mut left = bytes as usize;
    let scales = block_scales(ty, std);
    // Uniform values in [-1, 1) have a standard deviation of 1/sqrt(3).
    let float = |rng: &mut SynthRng| mean + rng.uniform() * std * 3f32.sqrt();
    while left > 0 {
        let chunk = &mut buffer[..left.min(per_chunk)];
        match (ty, &scales) {
            (GgmlType::F32, _) => chunk.chunks_exact_mut(4).for_each(|v| v.copy_from_slice(&float(rng).to_le_bytes())),
            (GgmlType::F16, _) => {
                chunk.chunks_exact_mut(2).for_each(|v| v.copy_from_slice(&f16::from_f32(float(rng)).to_le_bytes()))
            }
            (GgmlType::Bf16, _) => {
                chunk.chunks_exact_mut(2).for_each(|v| v.copy_from_slice(&bf16::from_f32(float(rng)).to_le_bytes()))
            }
            (_, Some(scales)) => {
                rng.fill(chunk);
                for b in chunk.chunks_exact_mut(block) {
                    for &(offset, value) in scales {
                        b[offset..offset + 2].copy_from_slice(&f16::from_f32(value).to_le_bytes());
                    }
                }
            }
            (other, None) => return Err(invalid(format!("cannot write random {} data", other.name()))),
        }
        out.write_all(chunk)?;
        left -= chunk.len();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dequantize;

    #[test]
    fn random_blocks_decode_to_finite_values_of_the_asked_spread() {
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K, GgmlType::F16, GgmlType::F32] {
            let n = 256 * 64;
            let mut bytes = Vec::new();
            write_random(ty, n, 0.0, 0.05, &mut SynthRng::new(3), &mut bytes).unwrap();
            assert_eq!(bytes.len() as u64, ty.bytes_for(n).unwrap());
            let values = dequantize(ty, &bytes).unwrap();
            assert!(values.iter().all(|v| v.is_finite()), "{ty:?}");
            let mean = values.iter().sum::<f32>() / n as f32;
            let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n as f32).sqrt();
            assert!((0.025..0.1).contains(&std), "{ty:?}: std {std}");
            let mut again = Vec::new();
            write_random(ty, n, 0.0, 0.05, &mut SynthRng::new(3), &mut again).unwrap();
            assert_eq!(bytes, again, "{ty:?}: the seed decides the bytes");
        }
    }
}
