// KV cache rows of f32 (kv_code in paged.rs fills in $NAME, $CACHE, $SRC, $BINDING): slot
// s's kv_dim values from vec4 s * kv_dim / 4.

@group(0) @binding($BINDING) var<storage, read_write> $CACHE: array<vec4<f32>>;

fn $NAME4(slot: u32, d: u32) -> vec4<f32> {
    return $CACHE[(slot * info.kv_dim + d) / 4u];
}

fn $NAME1(slot: u32, d: u32) -> f32 {
    let at = slot * info.kv_dim + d;
    return $CACHE[at / 4u][at % 4u];
}

// ---- writes (kv_write.wgsl only: they read its inputs) ----

fn $NAME_units() -> u32 {
    return info.kv_dim / 4u;
}

// Store unit `unit` of a row: values 4 * unit.. of the f32 row at `src`.
fn store_$NAME(slot: u32, src: u32, unit: u32) {
    let x = src + 4u * unit;
    $CACHE[slot * info.kv_dim / 4u + unit] = vec4<f32>($SRC[x], $SRC[x + 1u], $SRC[x + 2u], $SRC[x + 3u]);
}
