// KV cache rows of f16, two per word (pack2x16float: no shader-f16 extension needed): slot
// s's kv_dim values from vec2 s * kv_dim / 4.

@group(0) @binding($BINDING) var<storage, read_write> $CACHE: array<vec2<u32>>;

fn $NAME4(slot: u32, d: u32) -> vec4<f32> {
    let w = $CACHE[(slot * info.kv_dim + d) / 4u];
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn $NAME1(slot: u32, d: u32) -> f32 {
    let at = slot * info.kv_dim + d;
    return unpack2x16float($CACHE[at / 4u][(at / 2u) % 2u])[at % 2u];
}

// ---- writes (kv_write.wgsl only: they read its inputs) ----

fn $NAME_units() -> u32 {
    return info.kv_dim / 4u;
}

// Store unit `unit` of a row: values 4 * unit.. of the f32 row at `src`.
fn store_$NAME(slot: u32, src: u32, unit: u32) {
    let x = src + 4u * unit;
    let lo = pack2x16float(vec2<f32>($SRC[x], $SRC[x + 1u]));
    let hi = pack2x16float(vec2<f32>($SRC[x + 2u], $SRC[x + 3u]));
    $CACHE[slot * info.kv_dim / 4u + unit] = vec2<u32>(lo, hi);
}
