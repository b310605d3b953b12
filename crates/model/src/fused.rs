//! Fused elementwise and normalisation kernels: one dispatch where Burn's generic ops would
//! take several (RMSNorm alone is five), which matters most at batch 1, where every
//! dispatch moves little data.

use burn::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

use crate::arch::{Activation, RopeLayout};
use crate::kernel::{Arg, MAX_WORKGROUPS, Template, cube, empty, from_cube, launch};
use crate::paged::BatchBuffer;

/// rms_norm.wgsl's `Info`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RmsNormInfo {
    cols: u32,
    eps: f32,
}

/// gated.wgsl's `Info`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GatedInfo {
    len: u32,
}

/// rope.wgsl's `Info`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RopeInfo {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    /// 1 for half-split pairs (NEOX), 0 for adjacent ones.
    halves: u32,
}

/// RMSNorm of every row of `x` (`[tokens, cols]`), scaled by `weight` (`[1, cols]`).
pub fn rms_norm(x: Tensor<2>, weight: &Tensor<2>, eps: f32) -> Tensor<2> {
    let [tokens, cols] = x.dims();
    let (x, weight) = (cube(x), cube(weight.clone()));
    let y = empty(&x.device, [tokens, cols]);
    let kernel = Template::plain("rms_norm", include_str!("../../../shaders/rms_norm.wgsl"));
    let args = [Arg::Read(&x.handle), Arg::Read(&weight.handle), Arg::Write(&y.handle)];
    launch(&x.device, &kernel, [tokens as u32, 1, 1], &args, &RmsNormInfo { cols: cols as u32, eps });
    from_cube(y)
}

/// `act(gate) * up`, elementwise.
pub fn gated(gate: Tensor<2>, up: Tensor<2>, activation: Activation) -> Tensor<2> {
    let dims = gate.dims();
    assert_eq!(dims, up.dims(), "gate and up differ in shape");
    let (gate, up) = (cube(gate), cube(up));
    let y = empty(&gate.device, dims);
    let len = dims[0] * dims[1];
    let name = match activation {
        Activation::Silu => "silu",
        Activation::GeluTanh => "gelu_tanh",
    };
    let values = move || vec![("ACTIVATION", name.to_owned())];
    let kernel = Template {
        name: "gated",
        source: include_str!("../../../shaders/gated.wgsl"),
        variant: (name, 0),
        values: &values,
        workgroup: 64,
    };
    let args = [Arg::Read(&gate.handle), Arg::Read(&up.handle), Arg::Write(&y.handle)];
    let groups = len.div_ceil(64).min(MAX_WORKGROUPS) as u32;
    launch(&gate.device, &kernel, [groups, 1, 1], &args, &GatedInfo { len: len as u32 });
    from_cube(y)
}

/// RoPE on the pairs `layout` makes of `x` (`[tokens, heads, head_dim]`) at the batch's
/// positions, with angles from `cos` / `sin` (`[context, head_dim / 2]`).
pub(crate) fn rope(x: Tensor<3>, cos: &Tensor<2>, sin: &Tensor<2>, layout: RopeLayout, batch: &BatchBuffer) -> Tensor<3> {
    let [tokens, heads, head_dim] = x.dims();
    let x = cube(x);
    let (cos, sin) = (cube(cos.clone()), cube(sin.clone()));
    let y = empty(&x.device, [tokens, heads * head_dim]);
    let kernel = Template::plain("rope", include_str!("../../../shaders/rope.wgsl"));
    let args = [
        Arg::Read(&x.handle),
        Arg::Read(&cos.handle),
        Arg::Read(&sin.handle),
        Arg::Read(&batch.handle),
        Arg::Write(&y.handle),
    ];
    let groups = (tokens * heads * head_dim / 2).div_ceil(64).min(MAX_WORKGROUPS) as u32;
    let info = RopeInfo { tokens: tokens as u32, heads: heads as u32, head_dim: head_dim as u32, halves: u32::from(layout == RopeLayout::Halves) };
    launch(&x.device, &kernel, [groups, 1, 1], &args, &info);
    from_cube::<2>(y).reshape([tokens, heads, head_dim])
}
