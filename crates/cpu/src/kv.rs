//! What a KV cache stores per value ([`KvType`]) and its rows in host memory ([`KvRows`]):
//! one slot's `kv_dim` keys (or values) per row, encoded as the type says.

use std::fmt;
use std::str::FromStr;

use cinder_gguf::blocks::{BlockQ4_0, BlockQ8_0, LANES, QuantBlock, TakeLanes};
use half::f16;
use half::slice::HalfFloatSliceExt;
use serde::{Deserialize, Serialize};

/// The element type of cached keys or values, as llama.cpp's `--cache-type-k/-v`: the
/// quantized types are its blocks of 32 values along a head (an f16 scale each), so
/// their rounding is its rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum KvType {
    #[serde(rename = "f32")]
    F32,
    #[default]
    #[serde(rename = "f16")]
    F16,
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q4_0")]
    Q4_0,
}

impl KvType {
    pub const ALL: [KvType; 4] = [KvType::F32, KvType::F16, KvType::Q8_0, KvType::Q4_0];

    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }

    /// Its place in [`KvType::ALL`] (kernels are compiled per type).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Values per block: a head's width must be a multiple of it.
    pub fn block_values(self) -> usize {
        match self {
            KvType::F32 | KvType::F16 => 1,
            KvType::Q8_0 | KvType::Q4_0 => 32,
        }
    }

    /// Bytes one slot's row of `kv_dim` values takes: 4 or 2 per value, or 34 (q8_0) and
    /// 18 (q4_0) per 32 as llama.cpp's blocks, a row padded to whole 32-bit words (the
    /// device reads words; 2 bytes of padding where a row has an odd number of blocks).
    pub fn row_bytes(self, kv_dim: usize) -> usize {
        let bytes = match self {
            KvType::F32 => kv_dim * 4,
            KvType::F16 => kv_dim * 2,
            KvType::Q8_0 => kv_dim / 32 * size_of::<BlockQ8_0>(),
            KvType::Q4_0 => kv_dim / 32 * size_of::<BlockQ4_0>(),
        };
        bytes.next_multiple_of(4)
    }

    /// Whether heads of `head_dim` values can be stored in this type.
    pub fn check(self, head_dim: usize) -> Result<(), String> {
        if head_dim % self.block_values() != 0 {
            return Err(format!(
                "a KV cache of {self} stores blocks of {} values along a head, and this model's heads have {head_dim}",
                self.block_values()
            ));
        }
        Ok(())
    }

    /// Encodes `values` (a whole row, or whole blocks of one) into `out`.
    pub fn encode(self, values: &[f32], out: &mut [u8]) {
        match self {
            KvType::F32 => out[..values.len() * 4].copy_from_slice(bytemuck::cast_slice(values)),
            KvType::F16 => {
                let out: &mut [f16] = bytemuck::cast_slice_mut(&mut out[..values.len() * 2]);
                out.convert_from_f32_slice(values);
            }
            KvType::Q8_0 => encode_blocks::<BlockQ8_0>(values, out),
            KvType::Q4_0 => encode_blocks::<BlockQ4_0>(values, out),
        }
    }

    /// What a row of `values` (whole blocks) reads back as once stored: the values a cache
    /// of this type attends over.
    pub fn stored(self, values: &[f32]) -> Vec<f32> {
        let mut bytes = vec![0u8; self.row_bytes(values.len())];
        self.encode(values, &mut bytes);
        let mut out = vec![0f32; values.len()];
        KvRows { ty: self, bytes: &bytes, row_bytes: bytes.len() }.read(0, 0, &mut out).to_vec()
    }
}

fn encode_blocks<B: QuantBlock>(values: &[f32], out: &mut [u8]) {
    for (chunk, block) in values.chunks_exact(B::VALUES).zip(out.chunks_exact_mut(size_of::<B>())) {
        block.copy_from_slice(bytemuck::bytes_of(&B::encode(chunk)));
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        KvType::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| {
            let names: Vec<&str> = KvType::ALL.iter().map(|t| t.name()).collect();
            format!("unknown KV cache type `{s}`; one of {}", names.join(", "))
        })
    }
}

/// One layer's keys (or values) in host memory: slot `s` is the row at byte
/// `s * row_bytes`, `kv_dim` values encoded as `ty` ([`KvType::row_bytes`]).
#[derive(Clone, Copy)]
pub struct KvRows<'a> {
    pub ty: KvType,
    pub bytes: &'a [u8],
    pub row_bytes: usize,
}

impl<'a> KvRows<'a> {
    /// Values `first..first + out.len()` of slot `slot`'s row, `first` and the length whole
    /// blocks of the type: as stored (an f32 row), or decoded into `scratch`. Inlined into
    /// the attention's SIMD target, where q4_0's fused multiply-adds are instructions (a
    /// software `fmaf` call outside it took a third of the decode).
    #[inline(always)]
    pub fn read<'s>(&self, slot: usize, first: usize, scratch: &'s mut [f32]) -> &'s [f32]
    where
        'a: 's,
    {
        let row = &self.bytes[slot * self.row_bytes..];
        let n = scratch.len();
        match self.ty {
            KvType::F32 => bytemuck::cast_slice(&row[first * 4..(first + n) * 4]),
            KvType::F16 => {
                let halves: &[f16] = bytemuck::cast_slice(&row[first * 2..(first + n) * 2]);
                halves.convert_to_f32_slice(scratch);
                scratch
            }
            KvType::Q8_0 => decode_blocks::<BlockQ8_0>(row, first, scratch),
            KvType::Q4_0 => decode_blocks::<BlockQ4_0>(row, first, scratch),
        }
    }
}

#[inline(always)]
fn decode_blocks<'s, B: QuantBlock>(row: &[u8], first: usize, out: &'s mut [f32]) -> &'s [f32] {
    struct Into<'o>(&'o mut [f32]);
    impl TakeLanes for Into<'_> {
        #[inline(always)]
        fn take(&mut self, at: usize, values: &[f32; LANES]) {
            self.0[at..at + LANES].copy_from_slice(values);
        }
    }
    let start = first / B::VALUES * size_of::<B>();
    let blocks = out.len() / B::VALUES;
    let bytes = &row[start..start + blocks * size_of::<B>()];
    for (block, out) in cinder_gguf::blocks::blocks::<B>(bytes).zip(out.chunks_exact_mut(B::VALUES)) {
        block.for_each_lanes(&mut Into(out));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each type stores a row and reads back a head of it: exactly for f32, within f16's
    /// rounding, within half a quantization step for q8_0 and a whole one for q4_0 (the
    /// extreme opposite a block's largest value clips to the 16th level).
    #[test]
    fn every_type_reads_back_what_it_stored() {
        let kv_dim = 96;
        let values: Vec<f32> = (0..kv_dim).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
        for ty in KvType::ALL {
            let row_bytes = ty.row_bytes(kv_dim);
            let mut bytes = vec![0u8; 2 * row_bytes];
            ty.encode(&values, &mut bytes[row_bytes..]);
            let rows = KvRows { ty, bytes: &bytes, row_bytes };
            let mut scratch = [0f32; 32];
            let head = rows.read(1, 32, &mut scratch);
            let tolerance = match ty {
                KvType::F32 => 0.0,
                KvType::F16 => 1e-3,
                KvType::Q8_0 => 11.0 / 7.0 / 127.0 / 2.0,
                // and its f16 scale a little over the step.
                KvType::Q4_0 => 11.0 / 7.0 / 8.0 * 1.01,
            };
            for (got, want) in head.iter().zip(&values[32..64]) {
                assert!((got - want).abs() <= tolerance + 1e-6, "{ty}: {got} vs {want}");
            }
        }
        assert_eq!(KvType::Q8_0.row_bytes(96), 104, "three blocks of 34 bytes, padded to words");
        assert_eq!("q4_0".parse::<KvType>(), Ok(KvType::Q4_0));
        assert!("q5_1".parse::<KvType>().unwrap_err().contains("f32, f16, q8_0, q4_0"));
        assert!(KvType::Q8_0.check(80).unwrap_err().contains("blocks of 32"));
    }
}
