//! Launching the hand-written WGSL kernels of `shaders/` on Burn's wgpu backend.
//!
//! Burn tensors on the wgpu device are cubecl tensors underneath: [`cube`] unwraps one into
//! its buffer handle, a kernel is launched on the same client (so it is ordered with Burn's
//! own work on the same queue), and [`from_cube`] wraps the output back into a tensor.
//!
//! Kernels are WGSL text with `{{NAME}}` placeholders filled in at first use (and
//! `{{ENABLE_SUBGROUPS}}`, the directive a browser needs for subgroup builtins); the compiled
//! pipeline is cached by a [`KernelId`] made of the kernel's name and its variant, so each
//! variant compiles once per process. Shapes travel in the `info` uniform, not in the text,
//! to keep the variants few. Every storage binding is declared `read_write` in the WGSL:
//! cubecl packs several tensors into one wgpu buffer, and wgpu tracks usage per buffer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::{DType, Shape, Tensor};
use bytemuck::Pod;
use burn_cubecl::cubecl::prelude::{
    AddressType, BufferIOAttr, CubeDim, ExecutionMode, KernelDefinition, KernelId, KernelMetadata, KernelSettings, Scope,
};
use burn_cubecl::cubecl::server::{Handle, KernelArguments, MetadataBindingInfo};
use burn_cubecl::cubecl::{CubeCount, CubeKernel, PrecompiledSource};
use burn_cubecl::cubecl::ir::{ElemType, UIntKind, metadata::Info};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{Cube, CubeDevice};

/// A WGSL kernel, its placeholders filled in.
struct WgslKernel {
    name: &'static str,
    source: Arc<str>,
    id: KernelId,
    workgroup: CubeDim,
}

impl KernelMetadata for WgslKernel {
    fn name(&self) -> &'static str {
        self.name
    }

    fn id(&self) -> KernelId {
        self.id.clone()
    }

    fn address_type(&self) -> ElemType {
        UIntKind::U32.into()
    }
}

impl CubeKernel for WgslKernel {
    // Only needed on a pipeline-cache miss, and unused for precompiled sources.
    fn define(&self) -> KernelDefinition {
        let settings = KernelSettings::new(self.workgroup.0, ExecutionMode::Checked, AddressType::U32);
        KernelDefinition { body: Scope::root(settings.clone()), settings, info: Info::default() }
    }

    fn source(&self) -> Option<PrecompiledSource> {
        Some(PrecompiledSource { source: self.source.to_string(), entrypoint_name: "main".into(), lang: "wgsl" })
    }
}

/// What the subgroup kernels' `{{ENABLE_SUBGROUPS}}` becomes: a browser's WGSL needs the
/// directive for subgroup builtins, and naga refuses it. The kernels reduce across the
/// subgroup after lanes whose rows or keys ran out skipped work, which the browser's
/// uniformity analysis cannot prove uniform (every lane still reaches the reduction).
const ENABLE_SUBGROUPS: &str =
    if cfg!(target_family = "wasm") { "enable subgroups;\ndiagnostic(off, subgroup_uniformity);" } else { "" };

/// A kernel's variant: a label and a number (e.g. the block format and the token tile).
/// Two templates with the same name and variant must produce the same text.
pub(crate) type Variant = (&'static str, u32);

/// A kernel template. `values` fills its `{{NAME}}` placeholders; it runs only the first
/// time a variant is launched, so launches on the hot path build no text.
pub(crate) struct Template<'a> {
    pub name: &'static str,
    pub source: &'static str,
    pub variant: Variant,
    pub values: &'a dyn Fn() -> Vec<(&'static str, String)>,
    pub workgroup: u32,
}

impl Template<'static> {
    /// A kernel without placeholders or variants, in workgroups of 64.
    pub(crate) fn plain(name: &'static str, source: &'static str) -> Self {
        Template { name, source, variant: ("", 0), values: &Vec::new, workgroup: 64 }
    }
}

impl Template<'_> {
    fn kernel(&self) -> WgslKernel {
        static SOURCES: OnceLock<Mutex<HashMap<(&'static str, Variant), Arc<str>>>> = OnceLock::new();
        let mut sources = SOURCES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        let source = sources
            .entry((self.name, self.variant))
            .or_insert_with(|| {
                let mut text = self.source.to_owned();
                for (key, value) in (self.values)() {
                    text = text.replace(&format!("{{{{{key}}}}}"), &value);
                }
                text.replace("{{ENABLE_SUBGROUPS}}", ENABLE_SUBGROUPS).into()
            })
            .clone();
        let workgroup = CubeDim::new_1d(self.workgroup);
        let id = KernelId::new::<WgslKernel>().info((self.name, self.variant)).cube_dim(workgroup.0);
        WgslKernel { name: self.name, source, id, workgroup }
    }
}

/// Most workgroups a dispatch may have along one dimension (WebGPU's default limit);
/// kernels with more work loop over it.
pub(crate) const MAX_WORKGROUPS: usize = 65_535;

/// A buffer argument of a launch.
pub(crate) enum Arg<'a> {
    Read(&'a Handle),
    Write(&'a Handle),
}

/// Launches `template` over `workgroups` with `args` bound in order and `info` as the
/// uniform after them. `info` is the kernel's own `#[repr(C)]` struct of 32-bit fields, in
/// the order of the WGSL `Info` struct it mirrors.
pub(crate) fn launch<I: Pod>(device: &CubeDevice, template: &Template, workgroups: [u32; 3], args: &[Arg], info: &I) {
    let client = device.client();
    let mut arguments = KernelArguments::new();
    for arg in args {
        arguments = match arg {
            Arg::Read(h) => arguments.with_buffer_io((*h).clone().binding(), BufferIOAttr::ReadOnly),
            Arg::Write(h) => arguments.with_buffer_io((*h).clone().binding(), BufferIOAttr::WriteOnly),
        };
    }
    // The uniform is read as 16-byte rows: pad, and pack two u32 per word, low half first.
    const { assert!(align_of::<I>() == 4, "info fields are 32-bit") };
    let mut words: Vec<u32> = bytemuck::cast_slice(std::slice::from_ref(info)).to_vec();
    words.resize(words.len().next_multiple_of(4).max(4), 0);
    let packed = words.chunks(2).map(|c| u64::from(c[0]) | u64::from(c[1]) << 32).collect();
    arguments = arguments.with_info(MetadataBindingInfo::custom(packed));
    let [x, y, z] = workgroups;
    client.launch(Box::new(template.kernel()), CubeCount::Static(x, y, z), arguments);
}

/// The cubecl tensor under a Burn float tensor, made contiguous.
pub(crate) fn cube<const D: usize>(tensor: Tensor<D>) -> CubeTensor {
    let tensor = tensor.try_into_primitive::<Cube>().unwrap_or_else(|_| panic!("tensor is not on a wgpu device"));
    into_contiguous(tensor)
}

/// A new f32 tensor of `shape` on `device`, for a kernel to write.
pub(crate) fn empty(device: &CubeDevice, shape: [usize; 2]) -> CubeTensor {
    let client = device.client();
    let handle = client.empty(shape.iter().product::<usize>() * 4);
    CubeTensor::new_contiguous(client, device.clone(), Shape::new(shape), handle, DType::F32)
}

pub(crate) fn from_cube<const D: usize>(tensor: CubeTensor) -> Tensor<D> {
    Tensor::from_primitive::<Cube>(tensor)
}

/// The cubecl device under a Burn device.
pub(crate) fn cube_device(device: &burn::tensor::Device) -> Option<CubeDevice> {
    match device.as_dispatch() {
        burn::backend::DispatchDevice::Cube(d) => Some(d.clone()),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Uploads `words` to `device` as a buffer that lives as long as the handle.
pub(crate) fn upload(device: &CubeDevice, words: Vec<u32>) -> Handle {
    // Handed over whole: a copy into bytes would hold a matrix twice while it loads.
    device.client().create(burn::tensor::Bytes::from_elems(words))
}
