// Q5_0: 32 5-bit values q per block, value = d * (q - 16). quants: 5 words per block, the
// low four bits as Q4_0's nibbles, then `qh` (bit j: the fifth bit of value j);
// scales: the blocks' f16 d, two per word.
fn unpack(block: u32, k: u32, lo: ptr<function, vec4<f32>>, hi: ptr<function, vec4<f32>>) {
    let d = unpack2x16float(scales[block >> 1u])[block & 1u];
    let w = quants[block * 5u + k];
    let qh = quants[block * 5u + 4u];
    *lo = d * (nibbles_lo(w) + fifth_bits(qh, 4u * k) - 16.0);
    *hi = d * (nibbles_hi(w) + fifth_bits(qh, 16u + 4u * k) - 16.0);
}
