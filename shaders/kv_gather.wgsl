// Gathers one sequence's keys and values, positions first..first + len, out of the paged
// cache into contiguous [len, kv_dim] buffers, for prompt chunks that attend with dense
// matmuls. Its block table starts at word `table` of the batch buffer.

struct Info {
    len: u32,
    kv_dim: u32,
    block_size: u32,
    table: u32,
    first: u32,
}

@group(0) @binding(0) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(1) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(2) var<storage, read_write> batch: array<u32>;
@group(0) @binding(3) var<storage, read_write> k: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<uniform> info: Info;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let total = info.len * info.kv_dim;
    for (var e = gid.x; e < total; e += groups.x * 64u) {
        let t = info.first + e / info.kv_dim;
        let slot = batch[info.table + t / info.block_size] * info.block_size + t % info.block_size;
        let src = slot * info.kv_dim + e % info.kv_dim;
        k[e] = k_cache[src];
        v[e] = v_cache[src];
    }
}
