//! The block formats the matrix kernels read, and how GGUF blocks are laid out for them.

use cinder_gguf::GgmlType;
use cinder_gguf::blocks::{BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0, F16, blocks};

/// A block format the matrix kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantFormat {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q6K,
}

/// Values per block as the kernels see it: K-quant super-blocks of 256 are read as eight
/// sub-blocks of 32, each a 32-value block of the other formats.
const BLOCK: usize = 32;

impl QuantFormat {
    pub fn of(ty: GgmlType) -> Option<Self> {
        match ty {
            GgmlType::Q4_0 => Some(Self::Q4_0),
            GgmlType::Q4_1 => Some(Self::Q4_1),
            GgmlType::Q5_0 => Some(Self::Q5_0),
            GgmlType::Q5_1 => Some(Self::Q5_1),
            GgmlType::Q8_0 => Some(Self::Q8_0),
            GgmlType::Q4K => Some(Self::Q4K),
            GgmlType::Q6K => Some(Self::Q6K),
            _ => None,
        }
    }

    pub fn ggml_type(self) -> GgmlType {
        match self {
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q4_1 => GgmlType::Q4_1,
            Self::Q5_0 => GgmlType::Q5_0,
            Self::Q5_1 => GgmlType::Q5_1,
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4K => GgmlType::Q4K,
            Self::Q6K => GgmlType::Q6K,
        }
    }

    /// Values per GGUF block: a matrix row must hold whole blocks.
    pub fn block_elements(self) -> usize {
        self.ggml_type().block_elements()
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4_k",
            Self::Q6K => "q6_k",
        }
    }

    /// The WGSL `unpack` function for this format, with its helpers.
    pub(super) fn unpack_source(self) -> String {
        let unpack = match self {
            Self::Q4_0 => include_str!("../../../../shaders/unpack_q4_0.wgsl"),
            Self::Q4_1 => include_str!("../../../../shaders/unpack_q4_1.wgsl"),
            Self::Q5_0 => include_str!("../../../../shaders/unpack_q5_0.wgsl"),
            Self::Q5_1 => include_str!("../../../../shaders/unpack_q5_1.wgsl"),
            Self::Q8_0 => include_str!("../../../../shaders/unpack_q8_0.wgsl"),
            Self::Q4K => include_str!("../../../../shaders/unpack_q4_k.wgsl"),
            Self::Q6K => include_str!("../../../../shaders/unpack_q6_k.wgsl"),
        };
        format!("{}\n{unpack}", include_str!("../../../../shaders/quant_common.wgsl"))
    }

    /// Splits GGUF blocks into (quantized value words, scale words), in the layout the
    /// format's `unpack` reads (see the unpack_*.wgsl files).
    pub(super) fn repack(self, data: &[u8]) -> (Vec<u32>, Vec<u32>) {
        let mut quants = Vec::with_capacity(data.len() / 4);
        let mut scales = Vec::with_capacity(data.len() / self.ggml_type().block_bytes());
        // Formats with one f16 scale per block keep two blocks' scales per word.
        let mut half_words = Vec::new();
        let pair = |low: F16, high: F16| u32::from(low.bits()) | u32::from(high.bits()) << 16;
        match self {
            Self::Q4_0 => blocks::<BlockQ4_0>(data).for_each(|b| {
                half_words.push(b.d);
                quants.extend(words(&b.qs));
            }),
            Self::Q4_1 => blocks::<BlockQ4_1>(data).for_each(|b| {
                scales.push(pair(b.d, b.m));
                quants.extend(words(&b.qs));
            }),
            Self::Q5_0 => blocks::<BlockQ5_0>(data).for_each(|b| {
                half_words.push(b.d);
                quants.extend(words(&b.qs).chain(words(&b.qh)));
            }),
            Self::Q5_1 => blocks::<BlockQ5_1>(data).for_each(|b| {
                scales.push(pair(b.d, b.m));
                quants.extend(words(&b.qs).chain(words(&b.qh)));
            }),
            Self::Q8_0 => blocks::<BlockQ8_0>(data).for_each(|b| {
                half_words.push(b.d);
                quants.extend(words(bytemuck::cast_slice(&b.qs)));
            }),
            Self::Q4K => blocks::<BlockQ4K>(data).for_each(|b| repack_q4_k(b, &mut quants, &mut scales)),
            Self::Q6K => blocks::<BlockQ6K>(data).for_each(|b| repack_q6_k(b, &mut quants, &mut scales)),
        }
        scales.extend(half_words.chunks(2).map(|two| pair(two[0], two.get(1).copied().unwrap_or_default())));
        (quants, scales)
    }
}

fn words(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
}

/// Packs 32 four-bit values as Q4_0 does: value `j` in the low nibble of byte `j`, value
/// `j + 16` in its high nibble.
fn nibble_words(values: &[u8]) -> impl Iterator<Item = u32> + '_ {
    (0..4).map(move |w| {
        (0..4).fold(0u32, |word, b| {
            let j = 4 * w + b;
            word | u32::from((values[j] & 0x0F) | (values[j + 16] & 0x0F) << 4) << (8 * b)
        })
    })
}

/// Q4_K into 4 nibble words per sub-block of 32, and per super-block 5 scale words:
/// `d | dmin << 16`, the 8 scales as bytes, the 8 minimums as bytes.
fn repack_q4_k(block: &BlockQ4K, quants: &mut Vec<u32>, scales: &mut Vec<u32>) {
    let (sc, mins): (Vec<u8>, Vec<u8>) = (0..8).map(|j| block.scale_min(j)).unzip();
    scales.push(u32::from(block.d.bits()) | u32::from(block.dmin.bits()) << 16);
    scales.extend(words(&sc).chain(words(&mins)));
    for pair in block.qs.chunks_exact(32) {
        let low: Vec<u8> = pair.iter().map(|q| q & 0x0F).collect();
        let high: Vec<u8> = pair.iter().map(|q| q >> 4).collect();
        quants.extend(nibble_words(&low).chain(nibble_words(&high)));
    }
}

/// Q6_K into 6 words per sub-block of 32 (4 nibble words, then 2 words of high bit pairs:
/// the pairs of values `4k..4k+3` at bits `16k..16k+8` and of `16+4k..16+4k+3` at
/// `16k+8..16k+16`), and per super-block 5 scale words: `d`, then the 16 scales as bytes.
fn repack_q6_k(block: &BlockQ6K, quants: &mut Vec<u32>, scales: &mut Vec<u32>) {
    for sub in block.quants().chunks_exact(BLOCK) {
        quants.extend(nibble_words(sub));
        let high = (0..4).fold(0u64, |bits, k| {
            (0..4).fold(bits, |bits, e| {
                bits | u64::from(sub[4 * k + e] >> 4) << (16 * k + 2 * e) | u64::from(sub[16 + 4 * k + e] >> 4) << (16 * k + 8 + 2 * e)
            })
        });
        quants.extend([high as u32, (high >> 32) as u32]);
    }
    scales.push(u32::from(block.d.bits()));
    scales.extend(words(bytemuck::cast_slice(&block.scales)));
}

