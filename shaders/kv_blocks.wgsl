// What the quantized KV types (kv_q8_0.wgsl, kv_q4_0.wgsl) share: a slot's row is its
// quants ($NAME_quant_words() words), then its blocks' f16 scales two per word; each type
// gives its quants' values ($NAME_levels4) and how a block is stored ($NAME_store_block).

fn $NAME_row(slot: u32) -> u32 {
    return slot * ($NAME_quant_words() + (info.kv_dim / 32u + 1u) / 2u);
}

fn $NAME4(slot: u32, d: u32) -> vec4<f32> {
    let row = $NAME_row(slot);
    let block = d / 32u;
    let scale = unpack2x16float($CACHE[row + $NAME_quant_words() + block / 2u])[block % 2u];
    return scale * $NAME_levels4(row, d);
}

fn $NAME1(slot: u32, d: u32) -> f32 {
    return $NAME4(slot, d & ~3u)[d % 4u];
}

// ---- writes (kv_write.wgsl only: they read its inputs) ----

// A pair of blocks per store unit: their two scales share a word.
fn $NAME_units() -> u32 {
    return (info.kv_dim + 63u) / 64u;
}

// Store unit `unit` of a row: its blocks 2 * unit and 2 * unit + 1 (where the row has it),
// from the f32 row at `src`.
fn store_$NAME(slot: u32, src: u32, unit: u32) {
    let row = $NAME_row(slot);
    var scales = vec2<f32>(0.0);
    for (var i = 0u; i < 2u; i++) {
        let block = 2u * unit + i;
        if block >= info.kv_dim / 32u {
            break;
        }
        scales[i] = $NAME_store_block(row, src + block * 32u, block);
    }
    $CACHE[row + $NAME_quant_words() + unit] = pack2x16float(scales);
}
