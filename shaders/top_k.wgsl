// The K best logits of each row, best first: the largest values among the row's first
// `limit`, equal values in index order (as a CPU sort would rank them). One workgroup per
// row. Each lane keeps the K best of its strided share in a sorted private list; then K
// rounds merge the lists: every lane offers its best remaining entry, a tree over
// workgroup memory finds the best offer, and the lane it came from moves on. NaN is never
// kept. (No infinity literal: WGSL refuses constant expressions that evaluate to one, so
// an empty slot is marked by its index.)
//
// Output per row: K pairs (index as f32, exact below 2^24, or -1 for an empty slot; value).
// A step whose requests are greedy (K = 1) or sample among their top-k tokens then reads
// back 2K numbers per sequence instead of the vocabulary's logits.

struct Info {
    cols: u32,
    limit: u32,
}

@group(0) @binding(0) var<storage, read_write> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> best: array<f32>;
@group(0) @binding(2) var<uniform> info: Info;

const WORKGROUP: u32 = 64u;
const K: u32 = {{K}}u;
const NONE: u32 = 0xffffffffu;

var<workgroup> offer_value: array<f32, WORKGROUP>;
var<workgroup> offer_index: array<u32, WORKGROUP>;
var<workgroup> offer_lane: array<u32, WORKGROUP>;

// Whether entry a ranks before entry b: larger value, then lower index; empty slots last.
fn ranks_before(a_value: f32, a_index: u32, b_value: f32, b_index: u32) -> bool {
    return a_index != NONE && (b_index == NONE || a_value > b_value || (a_value == b_value && a_index < b_index));
}

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let base = wg.x * info.cols;
    var values: array<f32, K>;
    var indices: array<u32, K>;
    for (var j = 0u; j < K; j++) {
        indices[j] = NONE;
    }
    for (var c = lane; c < info.limit; c += WORKGROUP) {
        let v = logits[base + c];
        // A lane sees its columns in increasing order, so a value equal to a kept one ranks
        // after it: strict comparisons keep the index order. `v == v` is false for NaN.
        if (v == v && (indices[K - 1u] == NONE || v > values[K - 1u])) {
            var j = K - 1u;
            while (j > 0u && (indices[j - 1u] == NONE || v > values[j - 1u])) {
                values[j] = values[j - 1u];
                indices[j] = indices[j - 1u];
                j -= 1u;
            }
            values[j] = v;
            indices[j] = c;
        }
    }
    var next = 0u;
    for (var round = 0u; round < K; round++) {
        let slot = min(next, K - 1u);
        offer_value[lane] = values[slot];
        offer_index[lane] = select(NONE, indices[slot], next < K);
        offer_lane[lane] = lane;
        workgroupBarrier();
        for (var stride = WORKGROUP / 2u; stride > 0u; stride >>= 1u) {
            if (lane < stride) {
                let other = lane + stride;
                if (ranks_before(offer_value[other], offer_index[other], offer_value[lane], offer_index[lane])) {
                    offer_value[lane] = offer_value[other];
                    offer_index[lane] = offer_index[other];
                    offer_lane[lane] = offer_lane[other];
                }
            }
            workgroupBarrier();
        }
        let index = offer_index[0];
        if (index != NONE && offer_lane[0] == lane) {
            next += 1u;
        }
        if (lane == 0u) {
            let out = (wg.x * K + round) * 2u;
            best[out] = select(f32(index), -1.0, index == NONE);
            best[out + 1u] = offer_value[0];
        }
        // Everyone has read the winner before the next round's offers overwrite it.
        workgroupBarrier();
    }
}
