//! One definition per block format: each block layout cinder decodes is a `#[repr(C)]`
//! struct of its fields in file order, its size asserted against ggml's, with the decoding
//! and encoding of its values and its product with activations. Dequantization,
//! quantization, random synthesis, the device's repacking (`cinder-model`) and the CPU
//! kernels (`cinder-cpu`) all read blocks through these.

use bytemuck::{Pod, Zeroable};
use half::f16;

use crate::GgmlType;

/// An f16 stored little-endian, at any alignment.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct F16([u8; 2]);

impl F16 {
    pub fn new(value: f32) -> Self {
        Self(f16::from_f32(value).to_le_bytes())
    }

    #[inline]
    pub fn get(self) -> f32 {
        f16::from_le_bytes(self.0).to_f32_const()
    }

    pub fn bits(self) -> u16 {
        u16::from_le_bytes(self.0)
    }
}

/// A block format: its layout (the struct), its values and how random blocks get a spread.
pub trait QuantBlock: Pod {
    const TYPE: GgmlType;
    /// Values per block.
    const VALUES: usize;
    /// Appends the block's values in order, bit-exact with ggml's `dequantize_row_*`.
    fn decode(&self, out: &mut Vec<f32>);
    /// The block of `VALUES` values: ggml's `quantize_row_*_ref` for the 32-value formats;
    /// the K-quants fit each sub-block's scale from its range instead of ggml's iterative
    /// error search (valid blocks, a little less accurate).
    fn encode(values: &[f32]) -> Self;
    /// Sets the scale fields of a block of random bytes so that its values spread with a
    /// standard deviation of about `std` (each factor: the random quants' spread times the
    /// field). Every other byte of these formats is valid at random.
    fn spread(&mut self, std: f32);
    /// Hands the block's values to `f` 16 at a time, with the offset of the first in the
    /// block: fixed-length arrays that stay in registers, computed with fused multiply-adds
    /// (within an ulp of [`decode`](Self::decode)'s). The CPU kernels' products read blocks
    /// through this, so each format says once how its values are made.
    fn for_each_lanes(&self, f: &mut impl TakeLanes);
}

/// What takes a block's values, 16 at a time ([`QuantBlock::for_each_lanes`]). A trait
/// rather than a closure: its method can be `#[inline(always)]`, so that it compiles inside
/// the SIMD target of the kernel that calls it (a closure outside would call a software
/// fused multiply-add).
pub trait TakeLanes {
    /// The values `at..at + 16` of the block.
    fn take(&mut self, at: usize, values: &[f32; LANES]);
}

/// Values per call of [`TakeLanes::take`].
pub const LANES: usize = 16;

/// `a * b + c` in one fused operation where every 64-bit x86 kernel target and aarch64 have
/// one (a multiply and an add of their own otherwise: wasm's SIMD128 has none).
#[inline(always)]
fn fused(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    return a.mul_add(b, c);
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return a * b + c;
}

/// The lanes `scale * q(j) + offset`.
#[inline(always)]
fn lanes(scale: f32, offset: f32, q: impl Fn(usize) -> f32) -> [f32; LANES] {
    let mut values = [0f32; LANES];
    for (j, value) in values.iter_mut().enumerate() {
        *value = fused(scale, q(j), offset);
    }
    values
}

/// The lanes `scale * q(j)`: [`lanes`] without an offset, whose `+ 0.0` would still cost an
/// add per value (it is not `scale * q` for -0).
#[inline(always)]
fn scaled_lanes(scale: f32, q: impl Fn(usize) -> f32) -> [f32; LANES] {
    let mut values = [0f32; LANES];
    for (j, value) in values.iter_mut().enumerate() {
        *value = scale * q(j);
    }
    values
}

/// The fifth bits of a Q5 block's values `16 * half..16 * half + 16`, as 16 per lane.
#[inline(always)]
fn fifth_bits(qh: [u8; 4], half: usize) -> [u8; 16] {
    let bits = u32::from_le_bytes(qh) >> (16 * half);
    std::array::from_fn(|j| ((bits >> j) & 1) as u8 * 16)
}

/// Something to do with a block format's type, for [`with_block`].
pub trait WithBlock {
    type Output;
    fn run<B: QuantBlock>(self) -> Self::Output;
}

/// Runs `job` with `ty`'s block type; `None` for types without one here (they load as f32
/// where a plain conversion exists, or not at all).
pub fn with_block<J: WithBlock>(ty: GgmlType, job: J) -> Option<J::Output> {
    Some(match ty {
        GgmlType::Q4_0 => job.run::<BlockQ4_0>(),
        GgmlType::Q4_1 => job.run::<BlockQ4_1>(),
        GgmlType::Q5_0 => job.run::<BlockQ5_0>(),
        GgmlType::Q5_1 => job.run::<BlockQ5_1>(),
        GgmlType::Q8_0 => job.run::<BlockQ8_0>(),
        GgmlType::Q4K => job.run::<BlockQ4K>(),
        GgmlType::Q6K => job.run::<BlockQ6K>(),
        _ => return None,
    })
}

/// The blocks in `data`, which must be whole blocks of `B`.
#[inline]
pub fn blocks<B: QuantBlock>(data: &[u8]) -> impl Iterator<Item = &B> {
    data.chunks_exact(size_of::<B>()).map(bytemuck::from_bytes)
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 { 1.0 / d } else { 0.0 }
}

/// Rounds `v / step` to an integer in `0..=max` (0 when the step is 0).
fn level(v: f32, step: f32, max: i32) -> u8 {
    ((v * inverse(step)).round() as i32).clamp(0, max) as u8
}

/// The value of largest magnitude, with its sign (ggml maps it to the most negative quant).
fn signed_max(values: &[f32]) -> f32 {
    values.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

fn range(values: &[f32]) -> (f32, f32) {
    let min = values.iter().copied().fold(f32::INFINITY, f32::min);
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (min, max)
}

/// 32 four-bit values as the 32-value formats pack them: value `j` in the low nibble of
/// byte `j`, value `j + 16` in its high nibble.
fn pack_nibbles(q: impl Fn(usize) -> u8) -> [u8; 16] {
    std::array::from_fn(|j| (q(j) & 0x0F) | (q(j + 16) & 0x0F) << 4)
}

/// 32 values: f16 scale `d`, 16 bytes of nibbles; value = (q - 8) * d.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: F16,
    pub qs: [u8; 16],
}

impl QuantBlock for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const VALUES: usize = 32;

    #[inline]
    fn decode(&self, out: &mut Vec<f32>) {
        let d = self.d.get();
        out.extend(self.qs.iter().map(|q| ((q & 0x0F) as i32 - 8) as f32 * d));
        out.extend(self.qs.iter().map(|q| ((q >> 4) as i32 - 8) as f32 * d));
    }

    fn encode(values: &[f32]) -> Self {
        let d = signed_max(values) / -8.0;
        let id = inverse(d);
        Self { d: F16::new(d), qs: pack_nibbles(|j| ((values[j] * id + 8.5) as i32).min(15) as u8) }
    }

    fn spread(&mut self, std: f32) {
        self.d = F16::new(std / 4.6);
    }

    #[inline(always)]
    fn for_each_lanes(&self, f: &mut impl TakeLanes) {
        let d = self.d.get();
        f.take(0, &lanes(d, -8.0 * d, |j| f32::from(self.qs[j] & 0x0F)));
        f.take(16, &lanes(d, -8.0 * d, |j| f32::from(self.qs[j] >> 4)));
    }
}

/// Like Q4_0 with an f16 minimum `m`: value = q * d + m.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: F16,
    pub m: F16,
    pub qs: [u8; 16],
}

impl QuantBlock for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const VALUES: usize = 32;

    #[inline]
    fn decode(&self, out: &mut Vec<f32>) {
        let (d, m) = (self.d.get(), self.m.get());
        out.extend(self.qs.iter().map(|q| (q & 0x0F) as f32 * d + m));
        out.extend(self.qs.iter().map(|q| (q >> 4) as f32 * d + m));
    }

    fn encode(values: &[f32]) -> Self {
        let (min, max) = range(values);
        let d = (max - min) / 15.0;
        let id = inverse(d);
        Self { d: F16::new(d), m: F16::new(min), qs: pack_nibbles(|j| (((values[j] - min) * id + 0.5) as i32).min(15) as u8) }
    }

    fn spread(&mut self, std: f32) {
        // The minimum centres the values.
        (self.d, self.m) = (F16::new(std / 4.6), F16::new(-7.5 * std / 4.6));
    }

    #[inline(always)]
    fn for_each_lanes(&self, f: &mut impl TakeLanes) {
        let (d, m) = (self.d.get(), self.m.get());
        f.take(0, &lanes(d, m, |j| f32::from(self.qs[j] & 0x0F)));
        f.take(16, &lanes(d, m, |j| f32::from(self.qs[j] >> 4)));
    }
}

/// Five-bit values: the low four bits as the nibbles of Q4, the fifth bit of value `j` in
/// bit `j` of the little-endian `qh`.
#[inline]
fn q5_value(qh: [u8; 4], qs: &[u8; 16], j: usize) -> u32 {
    let nibble = if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 };
    u32::from(nibble) | ((u32::from_le_bytes(qh) >> j) & 1) << 4
}

fn pack_q5(q: impl Fn(usize) -> u8) -> ([u8; 4], [u8; 16]) {
    let qh = (0..32).fold(0u32, |qh, j| qh | u32::from(q(j) >> 4) << j);
    (qh.to_le_bytes(), pack_nibbles(q))
}

/// 32 five-bit values: f16 `d`; value = (q - 16) * d.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: F16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

impl QuantBlock for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const VALUES: usize = 32;

    #[inline]
    fn decode(&self, out: &mut Vec<f32>) {
        let d = self.d.get();
        out.extend((0..32).map(|j| (q5_value(self.qh, &self.qs, j) as i32 - 16) as f32 * d));
    }

    fn encode(values: &[f32]) -> Self {
        let d = signed_max(values) / -16.0;
        let id = inverse(d);
        let (qh, qs) = pack_q5(|j| ((values[j] * id + 16.5) as i32).clamp(0, 31) as u8);
        Self { d: F16::new(d), qh, qs }
    }

    fn spread(&mut self, std: f32) {
        self.d = F16::new(std / 9.2);
    }

    #[inline(always)]
    fn for_each_lanes(&self, f: &mut impl TakeLanes) {
        let d = self.d.get();
        let (low, high) = (fifth_bits(self.qh, 0), fifth_bits(self.qh, 1));
        f.take(0, &lanes(d, -16.0 * d, |j| f32::from((self.qs[j] & 0x0F) | low[j])));
        f.take(16, &lanes(d, -16.0 * d, |j| f32::from((self.qs[j] >> 4) | high[j])));
    }
}

/// 32 five-bit values: f16 `d` and minimum `m`; value = q * d + m.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: F16,
    pub m: F16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

impl QuantBlock for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const VALUES: usize = 32;

    #[inline]
    fn decode(&self, out: &mut Vec<f32>) {
        let (d, m) = (self.d.get(), self.m.get());
        out.extend((0..32).map(|j| q5_value(self.qh, &self.qs, j) as f32 * d + m));
    }

    fn encode(values: &[f32]) -> Self {
        let (min, max) = range(values);
        let d = (max - min) / 31.0;
        let id = inverse(d);
        let (qh, qs) = pack_q5(|j| (((values[j] - min) * id + 0.5) as i32).clamp(0, 31) as u8);
        Self { d: F16::new(d), m: F16::new(min), qh, qs }
    }

    fn spread(&mut self, std: f32) {
        (self.d, self.m) = (F16::new(std / 9.2), F16::new(-15.5 * std / 9.2));
    }

    #[inline(always)]
    fn for_each_lanes(&self, f: &mut impl TakeLanes) {
        let (d, m) = (self.d.get(), self.m.get());
        let (low, high) = (fifth_bits(self.qh, 0), fifth_bits(self.qh, 1));
        f.take(0, &lanes(d, m, |j| f32::from((self.qs[j] & 0x0F) | low[j])));
        f.take(16, &lanes(d, m, |j| f32::from((self.qs[j] >> 4) | high[j])));
    }
}

/// 32 values: f16 scale and 32 signed bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: F16,
    pub qs: [i8; 32],
}

impl QuantBlock for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const VALUES: usize = 32;

    #[inline]
    fn decode(&self, out: &mut Vec<f32>) {
        let d = self.d.get();
        out.extend(self.qs.iter().map(|&q| q as f32 * d));
    }

    fn encode(values: &[f32]) -> Self {
        let d = values.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        let id = inverse(d);
        Self { d: F16::new(d), qs: std::array::from_fn(|j| (values[j] * id).round() as i8) }
    }

    fn spread(&mut self, std: f32) {
        self.d = F16::new(std / 74.0);
    }

    #[inline(always)]
    fn for_each_lanes(&self, f: &mut impl TakeLanes) {
        let d = self.d.get();
        f.take(0, &scaled_lanes(d, |j| f32::from(self.qs[j])));
        f.take(16, &scaled_lanes(d, |j| f32::from(self.qs[j + 16])));
    }
}

/// 256 values in eight sub-blocks of 32, each `d * sc * q - dmin * m` with 6-bit `sc` and
/// `m` packed in `scales` and 4-bit `q`: 32 bytes per pair of sub-blocks, the first in the
/// low nibbles, the second in the high.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4K {
    pub d: F16,
    pub dmin: F16,
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}

impl BlockQ4K {
    /// The 6-bit scale and minimum of sub-block `j`.
    #[inline]
    pub fn scale_min(&self, j: usize) -> (u8, u8) {
        let q = &self.scales;
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
        }
    }
}

impl QuantBlock for BlockQ4K {
    const TYPE: GgmlType = GgmlType::Q4K;
    const VALUES: usize = 256;

    #[inline]
    fn decode(&self, out: &mut Vec<f32>) {
        let (d, dmin) = (self.d.get(), self.dmin.get());
        for (pair, q) in self.qs.chunks_exact(32).enumerate() {
            for (j, shift) in [(2 * pair, 0), (2 * pair + 1, 4)] {
                let (sc, m) = self.scale_min(j);
                let (scale, min) = (d * sc as f32, dmin * m as f32);
                out.extend(q.iter().map(|&v| scale * ((v >> shift) & 0x0F) as f32 - min));
            }
        }
    }

    fn encode(values: &[f32]) -> Self {
        let ranges: Vec<(f32, f32)> = values
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
        let q: Vec<u8> = (0..256).map(|i| level(values[i] + dmin * f32::from(mins[i / 32]), d * f32::from(sc[i / 32]), 15)).collect();
        let qs = std::array::from_fn(|b| q[64 * (b / 32) + b % 32] | (q[64 * (b / 32) + b % 32 + 32] << 4));
        Self { d: F16::new(d), dmin: F16::new(dmin), scales, qs }
    }

    fn spread(&mut self, std: f32) {
        (self.d, self.dmin) = (F16::new(std / 223.0), F16::new(7.5 * std / 223.0));
    }

    #[inline(always)]
    fn for_each_lanes(&self, f: &mut impl TakeLanes) {
        let (d, dmin) = (self.d.get(), self.dmin.get());
        // Sub-blocks 2p and 2p + 1 share 32 bytes: the low nibbles, then the high.
        for (pair, q) in self.qs.chunks_exact(32).enumerate() {
            for (sub, shift) in [(2 * pair, 0), (2 * pair + 1, 4)] {
                let (sc, m) = self.scale_min(sub);
                let (scale, min) = (d * f32::from(sc), -dmin * f32::from(m));
                f.take(32 * sub, &lanes(scale, min, |j| f32::from((q[j] >> shift) & 0x0F)));
                f.take(32 * sub + 16, &lanes(scale, min, |j| f32::from((q[j + 16] >> shift) & 0x0F)));
            }
        }
    }
}

/// 256 values in sixteen groups of 16, each `d * sc * (q - 32)` with signed 8-bit `sc` and
/// 6-bit `q`: the low four bits in `ql`, the high two in `qh`, interleaved as ggml does.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: F16,
}

impl BlockQ6K {
    /// The 256 six-bit quants in value order, as ggml's `dequantize_row_q6_K` walks them.
    #[inline]
    pub fn quants(&self) -> [u8; 256] {
        let mut q = [0u8; 256];
        for half in 0..2 {
            let (ql, qh, q) = (&self.ql[64 * half..], &self.qh[32 * half..], &mut q[128 * half..]);
            for l in 0..32 {
                q[l] = (ql[l] & 0x0F) | (qh[l] & 3) << 4;
                q[l + 32] = (ql[l + 32] & 0x0F) | (qh[l] >> 2 & 3) << 4;
                q[l + 64] = (ql[l] >> 4) | (qh[l] >> 4 & 3) << 4;
                q[l + 96] = (ql[l + 32] >> 4) | (qh[l] >> 6 & 3) << 4;
            }
        }
        q
    }
}

impl QuantBlock for BlockQ6K {
    const TYPE: GgmlType = GgmlType::Q6K;
    const VALUES: usize = 256;

    #[inline]
    fn decode(&self, out: &mut Vec<f32>) {
        let d = self.d.get();
        let q = self.quants();
        out.extend((0..256).map(|i| d * f32::from(self.scales[i / 16]) * (i32::from(q[i]) - 32) as f32));
    }

    fn encode(values: &[f32]) -> Self {
        let steps: Vec<f32> = values.chunks_exact(16).map(|g| g.iter().fold(0f32, |m, v| m.max(v.abs())) / 31.0).collect();
        let d = f16::from_f32(steps.iter().fold(0f32, |m, &s| m.max(s)) / 127.0).to_f32();
        let scales: [i8; 16] = std::array::from_fn(|g| level(steps[g], d, 127).max(1) as i8);
        let q: Vec<u8> = (0..256).map(|i| level(values[i] + 32.0 * d * f32::from(scales[i / 16]), d * f32::from(scales[i / 16]), 63)).collect();
        let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
        for (half, q) in q.chunks_exact(128).enumerate() {
            for l in 0..32 {
                ql[64 * half + l] = (q[l] & 0x0F) | ((q[l + 64] & 0x0F) << 4);
                ql[64 * half + l + 32] = (q[l + 32] & 0x0F) | ((q[l + 96] & 0x0F) << 4);
                qh[32 * half + l] = (q[l] >> 4) | ((q[l + 32] >> 4) << 2) | ((q[l + 64] >> 4) << 4) | ((q[l + 96] >> 4) << 6);
            }
        }
        Self { ql, qh, scales, d: F16::new(d) }
    }

    fn spread(&mut self, std: f32) {
        self.d = F16::new(std / 1369.0);
    }

    #[inline(always)]
    fn for_each_lanes(&self, f: &mut impl TakeLanes) {
        let d = self.d.get();
        let q = self.quants();
        for (group, q) in q.chunks_exact(16).enumerate() {
            let scale = d * f32::from(self.scales[group]);
            f.take(16 * group, &lanes(scale, -32.0 * scale, |j| f32::from(q[j])));
        }
    }
}

// The layouts are ggml's: a field out of place would shift every block after it.
const _: () = {
    assert!(size_of::<BlockQ4_0>() == 18);
    assert!(size_of::<BlockQ4_1>() == 20);
    assert!(size_of::<BlockQ5_0>() == 22);
    assert!(size_of::<BlockQ5_1>() == 24);
    assert!(size_of::<BlockQ8_0>() == 34);
    assert!(size_of::<BlockQ4K>() == 144);
    assert!(size_of::<BlockQ6K>() == 210);
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Every format: its size is its type's, and values round-trip through its one
    /// definition within the format's precision, and its lanes are its values.
    #[test]
    fn every_block_format_round_trips_through_its_definition_and_its_lanes_are_its_values() {
        struct RoundTrip;
        impl WithBlock for RoundTrip {
            type Output = (GgmlType, usize, f32);
            fn run<B: QuantBlock>(self) -> Self::Output {
                let values: Vec<f32> = (0..B::VALUES).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
                let block = B::encode(&values);
                let mut back = Vec::new();
                block.decode(&mut back);
                let from_bytes: &B = bytemuck::from_bytes(bytemuck::bytes_of(&block));
                let mut again = Vec::new();
                from_bytes.decode(&mut again);
                assert_eq!(back, again);
                // The lanes the CPU kernels multiply are the decoded values, within an ulp
                // (a fused multiply-add rounds once).
                struct Collect(Vec<f32>);
                impl TakeLanes for Collect {
                    fn take(&mut self, at: usize, values: &[f32; LANES]) {
                        self.0[at..at + LANES].copy_from_slice(values);
                    }
                }
                let mut lanes = Collect(vec![f32::NAN; B::VALUES]);
                block.for_each_lanes(&mut lanes);
                for (i, (lane, value)) in lanes.0.iter().zip(&back).enumerate() {
                    assert!((lane - value).abs() <= 2.0 * f32::EPSILON * value.abs().max(1e-3), "{} value {i}: lane {lane}, decoded {value}", B::TYPE);
                }
                let worst = values.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                (B::TYPE, size_of::<B>(), worst)
            }
        }
        let tolerance = |ty| match ty {
            GgmlType::Q8_0 => 0.02,
            GgmlType::Q4_0 => 0.4,
            GgmlType::Q4_1 | GgmlType::Q5_0 => 0.2,
            GgmlType::Q5_1 => 0.1,
            GgmlType::Q4K => 0.25,
            GgmlType::Q6K => 0.06,
            other => panic!("no tolerance for {other}"),
        };
        let types = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K];
        for ty in types {
            let (of, bytes, worst) = with_block(ty, RoundTrip).unwrap();
            assert_eq!((of, bytes), (ty, ty.block_bytes()));
            assert!(worst <= tolerance(ty), "{ty}: max error {worst}");
        }
        assert!(with_block(GgmlType::Q2K, RoundTrip).is_none());
    }
}
