// Q4_0: 32 4-bit values q per block, value = d * (q - 8). quants: 4 words per block;
// scales: the blocks' f16 d, two per word.
fn unpack(block: u32, k: u32, lo: ptr<function, vec4<f32>>, hi: ptr<function, vec4<f32>>) {
    let d = unpack2x16float(scales[block >> 1u])[block & 1u];
    let w = quants[block * 4u + k];
    *lo = d * (nibbles_lo(w) - 8.0);
    *hi = d * (nibbles_hi(w) - 8.0);
}
