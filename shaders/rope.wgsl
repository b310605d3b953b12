// RoPE on adjacent pairs ("NORM" rope, llama.cpp's for the llama architecture): for token t
// at position positions[t], head h and pair i, rotate (x[2i], x[2i+1]) by the position's
// angle, read from the precomputed cos / sin tables ([context, head_dim / 2]). The
// positions are the first `tokens` words of the batch buffer.

struct Info {
    tokens: u32,
    heads: u32,
    head_dim: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<vec2<f32>>;
@group(0) @binding(1) var<storage, read_write> cos_table: array<f32>;
@group(0) @binding(2) var<storage, read_write> sin_table: array<f32>;
@group(0) @binding(3) var<storage, read_write> positions: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<vec2<f32>>;
@group(0) @binding(5) var<uniform> info: Info;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let half = info.head_dim / 2u;
    let pairs = info.tokens * info.heads * half;
    for (var p = gid.x; p < pairs; p += groups.x * 64u) {
        let i = p % half;
        let token = p / (info.heads * half);
        let angle = positions[token] * half + i;
        let c = cos_table[angle];
        let s = sin_table[angle];
        let v = x[p];
        y[p] = vec2<f32>(v.x * c - v.y * s, v.x * s + v.y * c);
    }
}
