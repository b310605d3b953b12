// Expands a matrix in a GGUF block format (repacked as for matmul_quant.wgsl) into f32
// `[rows, cols]`, for prompt-sized products that a tiled f32 matmul does faster than the
// per-row quantized kernel. One invocation per group of 8 values (block, k).

struct Info {
    groups: u32,
}

@group(0) @binding(0) var<storage, read_write> quants: array<u32>;
@group(0) @binding(1) var<storage, read_write> scales: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> info: Info;

{{UNPACK}}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    for (var g = gid.x; g < info.groups; g += groups.x * 64u) {
        let block = g / 4u;
        let k = g % 4u;
        var lo: vec4<f32>;
        var hi: vec4<f32>;
        unpack(block, k, &lo, &hi);
        // Block values 4k..4k+3 and 16+4k..16+4k+3, as vec4 slots of the output row.
        y[block * 8u + k] = lo;
        y[block * 8u + 4u + k] = hi;
    }
}
