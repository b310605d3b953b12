// KV cache rows of q8_0, llama.cpp's blocks of 32 values along a head (value = d * q, q a
// signed byte, d an f16): a slot's row is its kv_dim quants (8 words per block), then its
// blocks' scales two per word.

@group(0) @binding($BINDING) var<storage, read_write> $CACHE: array<u32>;

fn $NAME_row(slot: u32) -> u32 {
    return slot * (info.kv_dim / 4u + (info.kv_dim / 32u + 1u) / 2u);
}

fn $NAME4(slot: u32, d: u32) -> vec4<f32> {
    let row = $NAME_row(slot);
    let block = d / 32u;
    let scale = unpack2x16float($CACHE[row + info.kv_dim / 4u + block / 2u])[block % 2u];
    return scale * bytes_signed($CACHE[row + d / 4u]);
}

fn $NAME1(slot: u32, d: u32) -> f32 {
    return $NAME4(slot, d & ~3u)[d % 4u];
}

// ---- writes (kv_write.wgsl only: they read its inputs) ----

fn $NAME_units() -> u32 {
    return (info.kv_dim + 63u) / 64u;
}

// Store unit `unit` of a row: its blocks 2 * unit and 2 * unit + 1 (where the row has it),
// from the f32 row at `src`, rounded as llama.cpp's quantize_row_q8_0.
fn store_$NAME(slot: u32, src: u32, unit: u32) {
    let row = $NAME_row(slot);
    var scales = vec2<f32>(0.0);
    for (var i = 0u; i < 2u; i++) {
        let block = 2u * unit + i;
        if block >= info.kv_dim / 32u {
            break;
        }
        let x = src + block * 32u;
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
        scales[i] = d;
    }
    $CACHE[row + info.kv_dim / 4u + unit] = pack2x16float(scales);
}
