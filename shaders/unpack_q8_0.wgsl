// Q8_0: 32 signed bytes q per block, value = d * q. quants: 8 words per block;
// scales: the blocks' f16 d, two per word.
fn unpack(block: u32, k: u32, lo: ptr<function, vec4<f32>>, hi: ptr<function, vec4<f32>>) {
    let d = unpack2x16float(scales[block >> 1u])[block & 1u];
    *lo = d * bytes_signed(quants[block * 8u + k]);
    *hi = d * bytes_signed(quants[block * 8u + 4u + k]);
}
