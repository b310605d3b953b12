// Q4_K: super-blocks of 256 values, read as 8 sub-blocks of 32 (`block` counts sub-blocks).
// Value = d * sc * q - dmin * m, with the sub-block's 6-bit sc and m. quants: 4 words per
// sub-block, nibbles as Q4_0; scales: 5 words per super-block: d | dmin << 16, then the 8
// sc as bytes, then the 8 m as bytes.
fn unpack(block: u32, k: u32, lo: ptr<function, vec4<f32>>, hi: ptr<function, vec4<f32>>) {
    let at = (block >> 3u) * 5u;
    let j = block & 7u;
    let dm = unpack2x16float(scales[at]);
    let shift = (j & 3u) * 8u;
    let d = dm.x * f32((scales[at + 1u + (j >> 2u)] >> shift) & 63u);
    let m = dm.y * f32((scales[at + 3u + (j >> 2u)] >> shift) & 63u);
    let w = quants[block * 4u + k];
    *lo = d * nibbles_lo(w) - m;
    *hi = d * nibbles_hi(w) - m;
}
