// RoPE at each row's position: for token t at position positions[t], head h and pair i,
// rotate the pair by the position's angle, read from the precomputed cos / sin tables
// ([context, head_dim / 2]). The pair is (x[2i], x[2i + 1]) (llama.cpp's NORM layout) or,
// with `halves` set, (x[i], x[i + head_dim / 2]) (NEOX). The positions are the first
// `tokens` words of the batch buffer.

struct Info {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    halves: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> cos_table: array<f32>;
@group(0) @binding(2) var<storage, read_write> sin_table: array<f32>;
@group(0) @binding(3) var<storage, read_write> positions: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<uniform> info: Info;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let half = info.head_dim / 2u;
    let pairs = info.tokens * info.heads * half;
    for (var p = gid.x; p < pairs; p += groups.x * 64u) {
        let i = p % half;
        let head_start = (p / half) * info.head_dim;
        let token = p / (info.heads * half);
        var a = head_start + 2u * i;
        var b = a + 1u;
        if info.halves != 0u {
            a = head_start + i;
            b = a + half;
        }
        let angle = positions[token] * half + i;
        let c = cos_table[angle];
        let s = sin_table[angle];
        let x0 = x[a];
        let x1 = x[b];
        y[a] = x0 * c - x1 * s;
        y[b] = x0 * s + x1 * c;
    }
}
