// KV cache rows of q4_0, llama.cpp's blocks of 32 values along a head (value = d * (q - 8),
// q four bits, d an f16; value j in the low nibble of byte j, value j + 16 in its high
// one): a slot's row is its quants (4 words per block), then its blocks' scales two per word.

@group(0) @binding($BINDING) var<storage, read_write> $CACHE: array<u32>;

fn $NAME_row(slot: u32) -> u32 {
    return slot * (info.kv_dim / 8u + (info.kv_dim / 32u + 1u) / 2u);
}

fn $NAME4(slot: u32, d: u32) -> vec4<f32> {
    let row = $NAME_row(slot);
    let block = d / 32u;
    let scale = unpack2x16float($CACHE[row + info.kv_dim / 8u + block / 2u])[block % 2u];
    let j = d % 32u;
    let w = $CACHE[row + block * 4u + (j % 16u) / 4u];
    return scale * (select(nibbles_lo(w), nibbles_hi(w), j >= 16u) - 8.0);
}

fn $NAME1(slot: u32, d: u32) -> f32 {
    return $NAME4(slot, d & ~3u)[d % 4u];
}

// ---- writes (kv_write.wgsl only: they read its inputs) ----

fn $NAME_units() -> u32 {
    return (info.kv_dim + 63u) / 64u;
}

// Store unit `unit` of a row: its blocks 2 * unit and 2 * unit + 1 (where the row has it),
// from the f32 row at `src`, rounded as llama.cpp's quantize_row_q4_0_ref.
fn store_$NAME(slot: u32, src: u32, unit: u32) {
    let row = $NAME_row(slot);
    var scales = vec2<f32>(0.0);
    for (var i = 0u; i < 2u; i++) {
        let block = 2u * unit + i;
        if block >= info.kv_dim / 32u {
            break;
        }
        let x = src + block * 32u;
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
        scales[i] = d;
    }
    $CACHE[row + info.kv_dim / 8u + unit] = pack2x16float(scales);
}
