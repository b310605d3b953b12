// flash_attention.wgsl's attention (same bindings, same Info) where the adapter has
// subgroups of one fixed size: each subgroup takes QUERIES consecutive queries of one head,
// and its lanes split the keys (lane l takes positions first + l, first + l + width, ...).
// Every lane keeps its own online softmax (maximum, sum, output) per query over its keys,
// and once all keys are seen the lanes' parts are merged with subgroupMax / subgroupAdd.
// Each key a lane loads serves all QUERIES queries: CPU-backed adapters (lavapipe) load
// memory lane by lane, so loads shared by many queries, and no cross-lane work per key,
// are what make attention fast there; one query per invocation loads every key once per query.
//
// The per-query and per-slot lines (the placeholders) are written out by the launcher, so
// every accumulator is its own variable.

// Subgroup builtins need the adapter's subgroup feature; a browser also needs the `enable`
// directive, which naga refuses (the launcher writes it on wasm only).
{{ENABLE_SUBGROUPS}}

{{BINDINGS}}

// head_dim / 4; queries per subgroup; subgroups per workgroup.
const HD4: u32 = {{HD4}}u;
const QUERIES: u32 = {{QUERIES}}u;
const SUBGROUPS: u32 = {{SUBGROUPS}}u;
const LOWEST: f32 = -3.0e38;

// Position `p`'s slot.
fn kv_slot(p: u32) -> u32 {
    return batch[info.table + p / info.block_size] * info.block_size + p % info.block_size;
}

fn soft_cap(s: f32) -> f32 {
    if info.softcap > 0.0 {
        // tanh saturates long before 15; clamping keeps drivers' tanh finite.
        return info.softcap * tanh(clamp(s / info.softcap, -15.0, 15.0));
    }
    return s;
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) width: u32,
) {
    let head = wid.x;
    let first_query = (wid.y * SUBGROUPS + lid / width) * QUERIES;
    if first_query >= info.len {
        return;
    }
    // Queries past the chunk's end compute its last one and write nothing.
    let last_query = min(first_query + QUERIES, info.len) - 1u;
    let row_width4 = info.heads * HD4;
    let kv_offset = (head / (info.heads / info.kv_heads)) * HD4 * 4u;
    let first_key = first_visible(info.start + first_query);
    let end_key = info.start + last_query + 1u;
{{QUERY_SETUP}}
    for (var p = first_key + lane; p < end_key; p += width) {
        let slot = kv_slot(p);
{{KEYS}}
{{SCORES}}
{{VALUES}}
    }
{{MERGE}}
}
