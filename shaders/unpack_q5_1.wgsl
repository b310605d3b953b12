// Q5_1: 32 5-bit values q per block, value = d * q + m. quants: 5 words per block as Q5_0;
// scales: one word per block, f16 d in the low half and f16 m in the high half.
fn unpack(block: u32, k: u32, lo: ptr<function, vec4<f32>>, hi: ptr<function, vec4<f32>>) {
    let dm = unpack2x16float(scales[block]);
    let w = quants[block * 5u + k];
    let qh = quants[block * 5u + 4u];
    *lo = dm.x * (nibbles_lo(w) + fifth_bits(qh, 4u * k)) + dm.y;
    *hi = dm.x * (nibbles_hi(w) + fifth_bits(qh, 16u + 4u * k)) + dm.y;
}
