// Combines the splits of paged_attention.wgsl's split-over-keys attention: each (row, head)
// has `splits` records of `head_dim` unnormalised outputs, then their maximum score and
// their sum of weights. A split that saw no key has maximum LOWEST and weighs nothing.

struct Info {
    rows: u32,
    heads: u32,
    head_dim: u32,
    splits: u32,
}

@group(0) @binding(0) var<storage, read_write> partials: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> info: Info;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let hd = info.head_dim;
    let stride = hd + 2u;
    for (var e = gid.x; e < info.rows * info.heads * hd; e += groups.x * 64u) {
        let first = (e / hd) * info.splits * stride;
        let d = e % hd;
        var top = -3.0e38;
        for (var z = 0u; z < info.splits; z++) {
            top = max(top, partials[first + z * stride + hd]);
        }
        var sum = 0.0;
        var acc = 0.0;
        for (var z = 0u; z < info.splits; z++) {
            let at = first + z * stride;
            let w = exp(partials[at + hd] - top);
            sum += w * partials[at + hd + 1u];
            acc += w * partials[at + d];
        }
        out[e] = acc / sum;
    }
}
