// KV cache rows of q4_0, llama.cpp's blocks of 32 values along a head (value = d * (q - 8),
// q four bits, d an f16; value j in the low nibble of byte j, value j + 16 in its high
// one), laid out as kv_blocks.wgsl says: 4 words of quants per block.

@group(0) @binding($BINDING) var<storage, read_write> $CACHE: array<u32>;

fn $NAME_quant_words() -> u32 {
    return info.kv_dim / 8u;
}

fn $NAME_levels4(row: u32, d: u32) -> vec4<f32> {
    let j = d % 32u;
    let w = $CACHE[row + d / 32u * 4u + (j % 16u) / 4u];
    return select(nibbles_lo(w), nibbles_hi(w), j >= 16u) - 8.0;
}

// ---- writes (kv_write.wgsl only: they read its inputs) ----

// Block `block` of the row from the f32 values at `x`, rounded as llama.cpp's
// quantize_row_q4_0_ref; returns its scale.
fn $NAME_store_block(row: u32, x: u32, block: u32) -> f32 {
    // The value of largest magnitude, with its sign: it maps to quant 0.
    var top = 0.0;
    for (var j = 0u; j < 32u; j++) {
        let v = $SRC[x + j];
        if abs(v) > abs(top) {
            top = v;
        }
    }
    let d = top / -8.0;
    let id = select(0.0, 1.0 / d, d != 0.0);
    for (var w = 0u; w < 4u; w++) {
        let at = x + 4u * w;
        let lo = vec4<f32>($SRC[at], $SRC[at + 1u], $SRC[at + 2u], $SRC[at + 3u]) * id + 8.5;
        let hi = vec4<f32>($SRC[at + 16u], $SRC[at + 17u], $SRC[at + 18u], $SRC[at + 19u]) * id + 8.5;
        $CACHE[row + block * 4u + w] = pack_nibble_pairs(min(vec4<u32>(lo), vec4<u32>(15u)), min(vec4<u32>(hi), vec4<u32>(15u)));
    }
    return d;
}
