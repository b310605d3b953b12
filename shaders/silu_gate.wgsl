// y = silu(gate) * up, elementwise: the SwiGLU feed-forward's activation.

struct Info {
    len: u32,
}

@group(0) @binding(0) var<storage, read_write> gate: array<f32>;
@group(0) @binding(1) var<storage, read_write> up: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> info: Info;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    // A grid-stride loop: the dispatch is capped at the per-dimension workgroup limit.
    for (var i = gid.x; i < info.len; i += groups.x * 64u) {
        let g = gate[i];
        y[i] = g / (1.0 + exp(-g)) * up[i];
    }
}
