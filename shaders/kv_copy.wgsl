// Copies whole KV blocks (copy-on-write of a shared block): pairs holds (source, destination)
// block ids.

struct Info {
    pairs: u32,
    // Floats per block: block_size * kv_dim.
    block_len: u32,
}

@group(0) @binding(0) var<storage, read_write> pairs: array<vec2<u32>>;
@group(0) @binding(1) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(2) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(3) var<uniform> info: Info;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let len = info.pairs * info.block_len;
    for (var e = gid.x; e < len; e += groups.x * 64u) {
        let pair = pairs[e / info.block_len];
        let i = e % info.block_len;
        k_cache[pair.y * info.block_len + i] = k_cache[pair.x * info.block_len + i];
        v_cache[pair.y * info.block_len + i] = v_cache[pair.x * info.block_len + i];
    }
}
