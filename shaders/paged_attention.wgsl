// Attention of a batch of query rows over a paged KV cache: one workgroup per (query head,
// row). Rows are tokens of any sequences (decodes and short prompt chunks); row r sits at
// position pos[r] and attends to its sequence's positions 0..=pos[r], found through its
// block table. Keys are scored 64 at a time (one per invocation), then each invocation
// folds the tile into the output dimensions it owns with an online softmax, so one pass
// over the cache suffices and nothing of size `context` is stored. head_dim is a multiple
// of 4 (keys are read as vec4). With a `window`, a row attends to its last `window`
// positions only; with a `softcap`, scores become softcap * tanh(score / softcap).
//
// The batch buffer holds each row's position in its first words and, from word
// `table_starts`, where in the buffer the row's block table of this layer's group starts;
// this kernel reads the first `rows` rows. Keys and values are read through the KV code
// of the cache's types (`key4`, `value1`).
//
// Long contexts with few rows can be split over the keys (workgroup z of `splits` takes
// `split_keys` of a row's visible positions): each split then writes its unnormalised
// output, maximum and sum, and attention_merge.wgsl combines them; otherwise the output is
// written here. The launcher fills in the output's binding and store for either case.

struct Info {
    rows: u32,
    table_starts: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    block_size: u32,
    scale: f32,
    window: u32,
    softcap: f32,
    splits: u32,
    split_keys: u32,
    kv_dim: u32,
}

@group(0) @binding(0) var<storage, read_write> q: array<f32>;
@group(0) @binding(3) var<storage, read_write> batch: array<u32>;
{{OUTPUT}}
{{KV}}

const TILE: u32 = 64u;
// Output dimensions per invocation: ceil(head_dim / TILE).
const DIMS: u32 = {{DIMS}}u;
const MAX_HEAD_DIM: u32 = {{MAX_HEAD_DIM}}u;
const LOWEST: f32 = -3.0e38;

var<workgroup> q_tile: array<vec4<f32>, MAX_HEAD_DIM / 4u>;
var<workgroup> scores: array<f32, TILE>;
var<workgroup> slot_tile: array<u32, TILE>;
var<workgroup> context_len: u32;

@compute @workgroup_size(64)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let head = wid.x;
    let hd = info.head_dim;
    let kv_offset = (head / (info.heads / info.kv_heads)) * hd;
    for (var row = wid.y; row < info.rows; row += groups.y) {
        let q_base = row * info.heads * hd + head * hd;
        for (var d = lid; d < hd / 4u; d += TILE) {
            let at = q_base + 4u * d;
            q_tile[d] = vec4<f32>(q[at], q[at + 1u], q[at + 2u], q[at + 3u]) * info.scale;
        }
        if lid == 0u {
            context_len = batch[row] + 1u;
        }
        // A uniform copy, so the tile loop's barriers are reached by every invocation.
        let context = workgroupUniformLoad(&context_len);
        let table = batch[info.table_starts + row];
        var first = 0u;
        if info.window > 0u && context > info.window {
            first = context - info.window;
        }
        // This workgroup's split of the visible positions (empty past the row's context).
        let begin = min(first + wid.z * info.split_keys, context);
        let end = min(begin + info.split_keys, context);

        var m = LOWEST;
        var l = 0.0;
        var acc: array<f32, DIMS>;
        for (var t0 = begin; t0 < end; t0 += TILE) {
            let t = t0 + lid;
            var s = LOWEST;
            if t < end {
                let slot = batch[table + t / info.block_size] * info.block_size + t % info.block_size;
                slot_tile[lid] = slot;
                var dot4 = vec4<f32>(0.0);
                for (var d = 0u; d < hd / 4u; d++) {
                    dot4 += q_tile[d] * key4(slot, kv_offset + 4u * d);
                }
                s = dot4.x + dot4.y + dot4.z + dot4.w;
                if info.softcap > 0.0 {
                    // tanh saturates long before 15; clamping keeps drivers' tanh finite.
                    s = info.softcap * tanh(clamp(s / info.softcap, -15.0, 15.0));
                }
            }
            scores[lid] = s;
            workgroupBarrier();

            let n = min(TILE, end - t0);
            var tile_max = LOWEST;
            for (var j = 0u; j < n; j++) {
                tile_max = max(tile_max, scores[j]);
            }
            let m_new = max(m, tile_max);
            let correction = exp(m - m_new);
            l *= correction;
            for (var i = 0u; i < DIMS; i++) {
                acc[i] *= correction;
            }
            // Every invocation has read the scores: turn its own into a weight, once.
            workgroupBarrier();
            scores[lid] = exp(s - m_new);
            workgroupBarrier();
            for (var j = 0u; j < n; j++) {
                let p = scores[j];
                l += p;
                let slot = slot_tile[j];
                for (var i = 0u; i < DIMS; i++) {
                    let d = lid + i * TILE;
                    if d < hd {
                        acc[i] += p * value1(slot, kv_offset + d);
                    }
                }
            }
            m = m_new;
            // The next tile overwrites the scores.
            workgroupBarrier();
        }
{{STORE}}
    }
}
