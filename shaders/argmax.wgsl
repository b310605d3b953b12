// The greedy token of each row of logits: the index of the largest of the row's first
// `limit` values, the lowest index among equals, as an f32 (exact below 2^24). One workgroup
// per row: each lane scans a strided share of the row, then a tree over workgroup memory
// picks the winner. NaN never wins; a row of NaN gives 0. (No infinity literal: WGSL
// refuses constant expressions that evaluate to one, so "nothing yet" is an index.)
//
// A decode step then reads back one number per sequence instead of the vocabulary's logits.

struct Info {
    cols: u32,
    limit: u32,
}

@group(0) @binding(0) var<storage, read_write> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> ids: array<f32>;
@group(0) @binding(2) var<uniform> info: Info;

const WORKGROUP: u32 = 64u;
const NONE: u32 = 0xffffffffu;

var<workgroup> best_value: array<f32, WORKGROUP>;
var<workgroup> best_index: array<u32, WORKGROUP>;

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let base = wg.x * info.cols;
    var value = 0.0;
    var index = NONE;
    for (var c = lane; c < info.limit; c += WORKGROUP) {
        let v = logits[base + c];
        // `v == v` is false for NaN.
        if ((index == NONE && v == v) || v > value) {
            value = v;
            index = c;
        }
    }
    best_value[lane] = value;
    best_index[lane] = index;
    workgroupBarrier();
    for (var stride = WORKGROUP / 2u; stride > 0u; stride >>= 1u) {
        if (lane < stride) {
            let v = best_value[lane + stride];
            let i = best_index[lane + stride];
            let mine = best_index[lane];
            if (i != NONE && (mine == NONE || v > best_value[lane] || (v == best_value[lane] && i < mine))) {
                best_value[lane] = v;
                best_index[lane] = i;
            }
        }
        workgroupBarrier();
    }
    if (lane == 0u) {
        ids[wg.x] = f32(select(best_index[0], 0u, best_index[0] == NONE));
    }
}
