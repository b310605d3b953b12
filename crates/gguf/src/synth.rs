//! Random tensor data written straight in a block format: random quants with scales chosen
//! for a target spread. Synthetic models at real sizes need billions of values, which
//! quantizing random floats would take minutes to produce; this runs at memory speed.

use std::io::Write;

use half::{bf16, f16};

use crate::GgmlType;
use crate::blocks::{QuantBlock, WithBlock, with_block};

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

/// Random bytes as blocks of `B`, their scales set for a spread of `std`.
struct Spread<'a> {
    chunk: &'a mut [u8],
    std: f32,
}

impl WithBlock for Spread<'_> {
    type Output = ();

    fn run<B: QuantBlock>(self) {
        for block in self.chunk.chunks_exact_mut(size_of::<B>()) {
            bytemuck::from_bytes_mut::<B>(block).spread(self.std);
        }
    }
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
    // Uniform values in [-1, 1) have a standard deviation of 1/sqrt(3).
    let float = |rng: &mut SynthRng| mean + rng.uniform() * std * 3f32.sqrt();
    let unsupported = || invalid(format!("cannot write random {} data", ty.name()));
    while left > 0 {
        let chunk = &mut buffer[..left.min(per_chunk)];
        match ty {
            GgmlType::F32 => chunk.chunks_exact_mut(4).for_each(|v| v.copy_from_slice(&float(rng).to_le_bytes())),
            GgmlType::F16 => chunk.chunks_exact_mut(2).for_each(|v| v.copy_from_slice(&f16::from_f32(float(rng)).to_le_bytes())),
            GgmlType::Bf16 => chunk.chunks_exact_mut(2).for_each(|v| v.copy_from_slice(&bf16::from_f32(float(rng)).to_le_bytes())),
            _ => {
                rng.fill(chunk);
                with_block(ty, Spread { chunk, std }).ok_or_else(unsupported)?;
            }
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
