// y[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * weight: one workgroup per token.

struct Info {
    cols: u32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> info: Info;

const WORKGROUP: u32 = 64u;
var<workgroup> partial: array<f32, WORKGROUP>;

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let base = wid.x * info.cols;
    var sum = 0.0;
    for (var c = lane; c < info.cols; c += WORKGROUP) {
        let v = x[base + c];
        sum += v * v;
    }
    partial[lane] = sum;
    workgroupBarrier();
    for (var half = WORKGROUP / 2u; half > 0u; half >>= 1u) {
        if (lane < half) {
            partial[lane] += partial[lane + half];
        }
        workgroupBarrier();
    }
    let scale = inverseSqrt(partial[0] / f32(info.cols) + info.eps);
    for (var c = lane; c < info.cols; c += WORKGROUP) {
        y[base + c] = x[base + c] * scale * weight[c];
    }
}
