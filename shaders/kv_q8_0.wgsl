// KV cache rows of q8_0, llama.cpp's blocks of 32 values along a head (value = d * q, q a
// signed byte, d an f16), laid out as kv_blocks.wgsl says: 8 words of quants per block.

@group(0) @binding($BINDING) var<storage, read_write> $CACHE: array<u32>;

fn $NAME_quant_words() -> u32 {
    return info.kv_dim / 4u;
}

fn $NAME_levels4(row: u32, d: u32) -> vec4<f32> {
    return bytes_signed($CACHE[row + d / 4u]);
}

// ---- writes (kv_write.wgsl only: they read its inputs) ----

// Block `block` of the row from the f32 values at `x`, rounded as llama.cpp's
// quantize_row_q8_0; returns its scale.
fn $NAME_store_block(row: u32, x: u32, block: u32) -> f32 {
    var amax = 0.0;
    for (var j = 0u; j < 32u; j++) {
        amax = max(amax, abs($SRC[x + j]));
    }
    let d = amax / 127.0;
    let id = select(0.0, 1.0 / d, d != 0.0);
    for (var w = 0u; w < 8u; w++) {
        let at = x + 4u * w;
        let q = round(vec4<f32>($SRC[at], $SRC[at + 1u], $SRC[at + 2u], $SRC[at + 3u]) * id);
        $CACHE[row + block * 8u + w] = pack_signed_bytes(vec4<i32>(q));
    }
    return d;
}
