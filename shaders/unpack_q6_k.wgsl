// Q6_K: super-blocks of 256 values, read as 8 sub-blocks of 32 (`block` counts sub-blocks).
// Value = d * sc * (q - 32) with 6-bit q and a signed 8-bit sc per 16 values. quants: 6 words
// per sub-block: the low four bits as Q4_0's nibbles, then two words of high bit pairs (for
// each k, 16 bits: values 4k..4k+3, then 16+4k..16+4k+3); scales: 5 words per super-block:
// f16 d, then the 16 sc as bytes.
fn unpack(block: u32, k: u32, lo: ptr<function, vec4<f32>>, hi: ptr<function, vec4<f32>>) {
    let at = (block >> 3u) * 5u;
    let j = block & 7u;
    let d = unpack2x16float(scales[at]).x;
    // The sub-block's two scales: values 0..16 then 16..32.
    let sc = scales[at + 1u + (j >> 1u)] >> ((j & 1u) * 16u);
    let s = d * vec2<f32>(bitcast<vec2<i32>>(vec2<u32>(sc << 24u, sc << 16u)) >> vec2<u32>(24u));
    let w = quants[block * 6u + k];
    let h = quants[block * 6u + 4u + (k >> 1u)] >> ((k & 1u) * 16u);
    let h_lo = vec4<f32>((vec4<u32>(h) >> vec4<u32>(0u, 2u, 4u, 6u)) & vec4<u32>(3u));
    let h_hi = vec4<f32>((vec4<u32>(h) >> vec4<u32>(8u, 10u, 12u, 14u)) & vec4<u32>(3u));
    *lo = s.x * (nibbles_lo(w) + 16.0 * h_lo - 32.0);
    *hi = s.y * (nibbles_hi(w) + 16.0 * h_hi - 32.0);
}
