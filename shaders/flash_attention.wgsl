// Attention of one long prompt chunk's queries over its sequence's paged KV cache, without a
// score matrix in memory: one workgroup per (query head, 64 consecutive queries), one query
// per invocation. Keys and values stream through workgroup memory KEYS at a time, each tile
// loaded once for the workgroup's 64 queries; every invocation scores the tile against its
// own query and folds it into its output with an online softmax. Reads of the tile are the
// same address for every invocation (a broadcast on GPUs; lavapipe still loads them lane by
// lane, which is why it has the subgroup variant), its own query and accumulator stay in
// registers.
//
// Query i of the chunk is batch row first_row + i at position start + i; it sees positions
// up to its own, and with a `window` only its last `window` ones. Keys live in slot
// table[p / block_size] * block_size + p % block_size of the layer's pool, the block table
// at word `table` of the batch buffer. With a `softcap`, scores become
// softcap * tanh(score / softcap).

{{BINDINGS}}

const QUERIES: u32 = 64u;
// head_dim / 4, and keys per tile (the K and V tiles take 16 KiB, WebGPU's default limit).
const HD4: u32 = {{HD4}}u;
const KEYS: u32 = {{KEYS}}u;
const LOWEST: f32 = -3.0e38;

var<workgroup> k_tile: array<vec4<f32>, KEYS * HD4>;
var<workgroup> v_tile: array<vec4<f32>, KEYS * HD4>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let head = wid.x;
    let first_query = wid.y * QUERIES;
    let last_query = min(first_query + QUERIES, info.len) - 1u;
    // Invocations past the chunk's end compute its last query and write nothing.
    let i = min(first_query + lid, last_query);
    let position = info.start + i;
    let first_seen = first_visible(position);
    // The workgroup's keys: from the first its first query sees to its last query's own.
    let first_key = first_visible(info.start + first_query);
    let end_key = info.start + last_query + 1u;

    let kv_offset = (head / (info.heads / info.kv_heads)) * HD4 * 4u;
    let q_at = (info.first_row + i) * info.heads * HD4 + head * HD4;
    var query: array<vec4<f32>, HD4>;
    var acc: array<vec4<f32>, HD4>;
    for (var d = 0u; d < HD4; d++) {
        query[d] = q[q_at + d] * info.scale;
        acc[d] = vec4<f32>(0.0);
    }
    var m = LOWEST;
    var l = 0.0;
    var scores: array<f32, KEYS>;

    for (var t0 = first_key; t0 < end_key; t0 += KEYS) {
        for (var e = lid; e < KEYS * HD4; e += QUERIES) {
            let p = min(t0 + e / HD4, end_key - 1u);
            let slot = batch[info.table + p / info.block_size] * info.block_size + p % info.block_size;
            let d = kv_offset + 4u * (e % HD4);
            k_tile[e] = key4(slot, d);
            v_tile[e] = value4(slot, d);
        }
        workgroupBarrier();

        var tile_max = LOWEST;
        for (var j = 0u; j < KEYS; j++) {
            let p = t0 + j;
            var s = LOWEST;
            if p >= first_seen && p <= position {
                var dot4 = vec4<f32>(0.0);
                for (var d = 0u; d < HD4; d++) {
                    dot4 += query[d] * k_tile[j * HD4 + d];
                }
                s = dot4.x + dot4.y + dot4.z + dot4.w;
                if info.softcap > 0.0 {
                    // tanh saturates long before 15; clamping keeps drivers' tanh finite.
                    s = info.softcap * tanh(clamp(s / info.softcap, -15.0, 15.0));
                }
                tile_max = max(tile_max, s);
            }
            scores[j] = s;
        }
        let m_new = max(m, tile_max);
        let correction = exp(m - m_new);
        l *= correction;
        for (var d = 0u; d < HD4; d++) {
            acc[d] *= correction;
        }
        for (var j = 0u; j < KEYS; j++) {
            let p = t0 + j;
            // Hidden keys weigh nothing, even while the row has seen no key (m_new LOWEST).
            if p >= first_seen && p <= position {
                let w = exp(scores[j] - m_new);
                l += w;
                for (var d = 0u; d < HD4; d++) {
                    acc[d] += w * v_tile[j * HD4 + d];
                }
            }
        }
        m = m_new;
        // The next tile overwrites this one.
        workgroupBarrier();
    }
    if first_query + lid <= last_query {
        let out_at = (info.first_row + i) * info.heads * HD4 + head * HD4;
        for (var d = 0u; d < HD4; d++) {
            out[out_at + d] = acc[d] / l;
        }
    }
}
