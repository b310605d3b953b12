// y = act(gate) * up, elementwise: the gated feed-forward's activation, `{{ACTIVATION}}`
// being SiLU (SwiGLU) or GELU's tanh approximation (GeGLU).

struct Info {
    len: u32,
}

@group(0) @binding(0) var<storage, read_write> gate: array<f32>;
@group(0) @binding(1) var<storage, read_write> up: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> info: Info;

fn silu(g: f32) -> f32 {
    return g / (1.0 + exp(-g));
}

// 0.5 g (1 + tanh(sqrt(2 / pi) (g + 0.044715 g^3))); beyond |g| = 10 it is g or 0 (as in
// ggml), which also keeps tanh away from arguments where some drivers return NaN.
fn gelu_tanh(g: f32) -> f32 {
    if g >= 10.0 {
        return g;
    }
    if g <= -10.0 {
        return 0.0;
    }
    return 0.5 * g * (1.0 + tanh(0.7978845608028654 * g * (1.0 + 0.044715 * g * g)));
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    // A grid-stride loop: the dispatch is capped at the per-dimension workgroup limit.
    for (var i = gid.x; i < info.len; i += groups.x * 64u) {
        y[i] = {{ACTIVATION}}(gate[i]) * up[i];
    }
}
