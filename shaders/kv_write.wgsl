// Writes a batch's new keys and values ([rows, kv_dim] each) into their cache slots, read
// from the batch buffer from word `slots` (the slots of this layer's group).

struct Info {
    rows: u32,
    kv_dim: u32,
    slots: u32,
}

@group(0) @binding(0) var<storage, read_write> k: array<f32>;
@group(0) @binding(1) var<storage, read_write> v: array<f32>;
@group(0) @binding(2) var<storage, read_write> batch: array<u32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(5) var<uniform> info: Info;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let len = info.rows * info.kv_dim;
    for (var e = gid.x; e < len; e += groups.x * 64u) {
        let row = e / info.kv_dim;
        let dst = batch[info.slots + row] * info.kv_dim + e % info.kv_dim;
        k_cache[dst] = k[e];
        v_cache[dst] = v[e];
    }
}
