// The second half of a batch's low-rank adapters: out[row, o] = y[row, o] +
// (B t[row])[o], with B the row's own adapter's (lora_shrink.wgsl wrote t, scaled). One
// invocation per output value; rows without an adapter here are copied.

struct Info {
    rows: u32,
    outputs: u32,
    rank: u32,
    slots: u32,
}

// [rows, outputs]: the base product.
@group(0) @binding(0) var<storage, read_write> y: array<f32>;
// [rows, rank]
@group(0) @binding(1) var<storage, read_write> t: array<f32>;
// [slots, rank, outputs]: B transposed, so neighbouring invocations read neighbouring words.
@group(0) @binding(2) var<storage, read_write> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> adapters: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> info: Info;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    // A grid-stride loop: the dispatch is capped at the per-dimension workgroup limit.
    for (var i = gid.x; i < info.rows * info.outputs; i += groups.x * 64u) {
        let row = i / info.outputs;
        let slot = adapters[2u * row];
        var sum = y[i];
        if (slot < info.slots) {
            let weights = slot * info.rank * info.outputs + i % info.outputs;
            for (var j = 0u; j < info.rank; j++) {
                sum += t[row * info.rank + j] * b[weights + j * info.outputs];
            }
        }
        out[i] = sum;
    }
}
