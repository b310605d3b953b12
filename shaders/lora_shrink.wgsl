// The first half of a batch's low-rank adapters: t[row, j] = scale * (A x[row])[j], with
// A the row's own adapter's (its slot in the stacked A matrices). One workgroup per
// (row, j); rows without an adapter here get zeros.

struct Info {
    rows: u32,
    inputs: u32,
    rank: u32,
    slots: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
// [slots, rank, inputs]
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
// Per row: its slot (past the stacks when it has none here), then its scale as bits.
@group(0) @binding(2) var<storage, read_write> adapters: array<u32>;
// [rows, rank]
@group(0) @binding(3) var<storage, read_write> t: array<f32>;
@group(0) @binding(4) var<uniform> info: Info;

const WORKGROUP: u32 = 64u;
var<workgroup> partial: array<f32, WORKGROUP>;

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    // Two-dimensional when rows * rank passes the per-dimension workgroup limit.
    let pair = wid.x + wid.y * groups.x;
    if (pair >= info.rows * info.rank) {
        return;
    }
    let row = pair / info.rank;
    let j = pair % info.rank;
    let slot = adapters[2u * row];
    var sum = 0.0;
    if (slot < info.slots) {
        let weights = (slot * info.rank + j) * info.inputs;
        let inputs = row * info.inputs;
        for (var i = lane; i < info.inputs; i += WORKGROUP) {
            sum += x[inputs + i] * a[weights + i];
        }
    }
    partial[lane] = sum;
    workgroupBarrier();
    for (var half = WORKGROUP / 2u; half > 0u; half >>= 1u) {
        if (lane < half) {
            partial[lane] += partial[lane + half];
        }
        workgroupBarrier();
    }
    if (lane == 0u) {
        t[pair] = select(0.0, partial[0] * bitcast<f32>(adapters[2u * row + 1u]), slot < info.slots);
    }
}
