// Helpers for the block formats' `unpack` functions (unpack_<format>.wgsl), templated into
// the kernels that read quantized matrices together with one of them.

// Nibbles (or bytes) of a word as four values.
fn nibbles_lo(w: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u));
}

fn nibbles_hi(w: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(w) >> vec4<u32>(4u, 12u, 20u, 28u)) & vec4<u32>(15u));
}

fn bytes_signed(w: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(w) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

// Q5's fifth bits of values `first..first + 3` (bits of `qh`), worth 16 each.
fn fifth_bits(qh: u32, first: u32) -> vec4<f32> {
    return 16.0 * vec4<f32>((vec4<u32>(qh) >> (vec4<u32>(0u, 1u, 2u, 3u) + first)) & vec4<u32>(1u));
}

// Four signed bytes into a word, the first in the low byte (q8_0's packing).
fn pack_signed_bytes(q: vec4<i32>) -> u32 {
    let b = bitcast<vec4<u32>>(q) & vec4<u32>(255u);
    return b.x | (b.y << 8u) | (b.z << 16u) | (b.w << 24u);
}

// Four bytes of two nibbles each (lo, hi < 16), the first in the low byte (q4_0's packing).
fn pack_nibble_pairs(lo: vec4<u32>, hi: vec4<u32>) -> u32 {
    let b = lo | (hi << vec4<u32>(4u));
    return b.x | (b.y << 8u) | (b.z << 16u) | (b.w << 24u);
}
