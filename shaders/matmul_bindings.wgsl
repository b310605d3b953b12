// The bindings of the quantized matrix kernels (matmul_quant.wgsl and its subgroup
// variant): y = x W^T for `tokens` rows of x and a `rows x cols` W.

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
@group(0) @binding(4) var<uniform> info: Info;
