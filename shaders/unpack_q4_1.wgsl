// Q4_1: 32 4-bit values q per block, value = d * q + m. quants: 4 words per block;
// scales: one word per block, f16 d in the low half and f16 m in the high half.
fn unpack(block: u32, k: u32, lo: ptr<function, vec4<f32>>, hi: ptr<function, vec4<f32>>) {
    let dm = unpack2x16float(scales[block]);
    let w = quants[block * 4u + k];
    *lo = dm.x * nibbles_lo(w) + dm.y;
    *hi = dm.x * nibbles_hi(w) + dm.y;
}
