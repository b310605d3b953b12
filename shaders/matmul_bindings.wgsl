// The bindings of the quantized matrix kernels (matmul_quant.wgsl and its subgroup
// variant): y = x W^T for `tokens` rows of x and a `rows x cols` W, plus `residual` (the
// residual stream, `[tokens, rows]`) where the launch adds one: the add happens as y is
// written instead of in a dispatch of its own. The launcher fills in the residual's binding
// and its add, or nothing.

struct Info {
    rows: u32,
    cols: u32,
    tokens: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read_write> quants: array<u32>;
@group(0) @binding(1) var<storage, read_write> scales: array<u32>;
@group(0) @binding(2) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
{{RESIDUAL_BINDING}}
@group(0) @binding({{INFO_BINDING}}) var<uniform> info: Info;

// Writes output `i`.
fn store(i: u32, value: f32) {
    y[i] = value{{RESIDUAL_ADD}};
}
