//! LoRA adapters as llama.cpp writes them in GGUF (`general.type = adapter`,
//! `adapter.type = lora`, `adapter.lora.alpha`, `blk.N.<matrix>.weight.lora_a` / `lora_b`),
//! and their place in a batch: a model holds up to a number of adapters in slots, each
//! projection stacks its slots' low-rank pairs, and every row of a step adds its own
//! adapter's `scale * B (A x)` after the base product, which runs once for all rows
//! (segmented by adapter index, as Punica and S-LoRA do).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use cinder_cpu::{LoraStack, RowAdapter};
use burn_cubecl::cubecl::server::Handle;
use cinder_gguf::synth::SynthRng;
use cinder_gguf::{GgmlType, GgufFile, GgufWriter, MetadataValue};

use crate::arch::LayerWeight;
use crate::kernel::{Arg, MAX_WORKGROUPS, Template, cube, empty, from_cube, launch, upload};
use crate::{ModelConfig, ModelError};

/// One adapted matrix's pair: `a` is `[rank, inputs]`, `b` is `[outputs, rank]` with the
/// adapter's `alpha / rank` folded in (llama.cpp's scale, before the user's).
#[derive(Debug, Clone)]
pub struct LowRank {
    pub rank: usize,
    pub inputs: usize,
    pub outputs: usize,
    a: Vec<f32>,
    b: Vec<f32>,
}

impl LowRank {
    /// `(B (A x))[rows]`: the pair's product for rows `rows` of the adapted matrix.
    pub fn product(&self, x: &[f32], rows: Range<usize>) -> Vec<f32> {
        let t: Vec<f32> = self.a.chunks_exact(self.inputs).map(|a| a.iter().zip(x).map(|(a, x)| a * x).sum()).collect();
        self.b[rows.start * self.rank..rows.end * self.rank].chunks_exact(self.rank).map(|b| b.iter().zip(&t).map(|(b, t)| b * t).sum()).collect()
    }
}

/// A LoRA adapter read from GGUF, checked against the model it adapts.
#[derive(Debug)]
pub struct LoraAdapter {
    /// The base model's architecture and shape, which the pairs were checked against.
    base: (String, usize, usize),
    pairs: BTreeMap<(usize, LayerWeight), LowRank>,
}

/// The matrices an adapter may adapt: a block's projections (llama.cpp also adapts the
/// token embedding and the output head, which are refused here).
pub const ADAPTABLE: [LayerWeight; 8] = [
    LayerWeight::Q,
    LayerWeight::K,
    LayerWeight::V,
    LayerWeight::Qkv,
    LayerWeight::AttnOut,
    LayerWeight::Gate,
    LayerWeight::Up,
    LayerWeight::Down,
];

impl LoraAdapter {
    /// Reads the adapter in `file` for the model `base` describes.
    pub fn from_gguf(file: &GgufFile, base: &ModelConfig) -> Result<Self, ModelError> {
        let refuse = |m: String| Err(ModelError::Adapter(m));
        let m = file.metadata();
        let text = |key: &str| m.get(key).and_then(MetadataValue::as_str);
        match text("general.type") {
            Some("adapter") => {}
            other => return refuse(format!("general.type is {other:?}, not \"adapter\": this is not an adapter file")),
        }
        match text("adapter.type") {
            Some("lora") => {}
            other => return refuse(format!("adapter.type is {other:?}; only \"lora\" adapters are supported")),
        }
        if let Some(arch) = text("general.architecture")
            && arch != base.arch.name
        {
            return refuse(format!("the adapter is for a {arch} model, and this model is {}", base.arch.name));
        }
        let alpha = m.get("adapter.lora.alpha").and_then(MetadataValue::as_f64).unwrap_or(0.0) as f32;
        // Every adaptable matrix of the base, by the names of its pair.
        let mut targets = BTreeMap::new();
        for layer in 0..base.n_layers {
            for (weight, shape) in base.layer_weights.iter().filter(|(w, _)| ADAPTABLE.contains(w)) {
                targets.insert(weight.name(layer), (layer, *weight, shape.clone()));
            }
        }
        let mut halves: BTreeMap<&str, [Option<&cinder_gguf::TensorInfo>; 2]> = BTreeMap::new();
        for info in file.tensors() {
            let (matrix, half) = match (info.name.strip_suffix(".lora_a"), info.name.strip_suffix(".lora_b")) {
                (Some(matrix), _) => (matrix, 0),
                (_, Some(matrix)) => (matrix, 1),
                _ => return refuse(format!("tensor {:?} is neither a lora_a nor a lora_b", info.name)),
            };
            if !targets.contains_key(matrix) {
                return refuse(format!("tensor {:?} adapts {matrix:?}, which this model has no adaptable matrix of (the token embedding and output head are not supported)", info.name));
            }
            halves.entry(matrix).or_default()[half] = Some(info);
        }
        if halves.is_empty() {
            return refuse("the file holds no lora_a / lora_b tensors".into());
        }
        let mut pairs = BTreeMap::new();
        for (matrix, [a, b]) in halves {
            let (Some(a), Some(b)) = (a, b) else { return refuse(format!("{matrix:?} has only one of lora_a and lora_b")) };
            let (layer, weight, shape) = &targets[matrix];
            let (inputs, outputs) = (shape[0], shape[1]);
            // ggml order: a is [inputs, rank], b is [rank, outputs].
            let rank = a.shape.get(1).copied().unwrap_or(0);
            if a.shape != [inputs, rank] || b.shape != [rank, outputs] || rank == 0 {
                return refuse(format!(
                    "{matrix:?}: lora_a is {:?} and lora_b {:?}; a {inputs}x{outputs} matrix needs [{inputs}, rank] and [rank, {outputs}]",
                    a.shape, b.shape
                ));
            }
            let (a_values, mut b_values) = (file.dequantize(a)?, file.dequantize(b)?);
            if let Some(bad) = [(a, &a_values), (b, &b_values)].into_iter().find(|(_, v)| v.iter().any(|v| !v.is_finite())) {
                return Err(ModelError::NonFinite(bad.0.name.clone()));
            }
            let scale = if alpha == 0.0 { 1.0 } else { alpha / rank as f32 };
            b_values.iter_mut().for_each(|v| *v *= scale);
            let (rank, inputs, outputs) = (rank as usize, inputs as usize, outputs as usize);
            pairs.insert((*layer, *weight), LowRank { rank, inputs, outputs, a: a_values, b: b_values });
        }
        Ok(Self { base: base_key(base), pairs })
    }

    /// The largest rank of its pairs.
    pub fn rank(&self) -> usize {
        self.pairs.values().map(|p| p.rank).max().unwrap_or(0)
    }

    /// How many matrices it adapts.
    pub fn matrices(&self) -> usize {
        self.pairs.len()
    }

    pub fn pair(&self, layer: usize, weight: LayerWeight) -> Option<&LowRank> {
        self.pairs.get(&(layer, weight))
    }

    /// An error unless it was read for a model of `config`'s architecture and shape.
    pub(crate) fn check_base(&self, config: &ModelConfig) -> Result<(), ModelError> {
        if self.base != base_key(config) {
            return Err(ModelError::Adapter(format!("the adapter was read for a {:?} model, not this {:?} one", self.base, base_key(config))));
        }
        Ok(())
    }
}

fn base_key(config: &ModelConfig) -> (String, usize, usize) {
    (config.arch.name.to_owned(), config.n_layers, config.hidden)
}

/// What an adapter's pair adapts in a projection: the base matrix, and the rows of it the
/// projection computes (one part of a fused matrix).
#[derive(Debug, Clone)]
pub(crate) struct LoraTarget {
    pub layer: usize,
    pub weight: LayerWeight,
    pub rows: Range<usize>,
}

impl LoraTarget {
    /// The pairs of the adapters in `slots` for this target, stacked (B transposed) and
    /// zero-padded to their largest rank; `None` where no adapter adapts it.
    pub(crate) fn stack(&self, slots: &[Option<Arc<LoraAdapter>>]) -> Option<LoraStack> {
        let pairs: Vec<Option<&LowRank>> = slots.iter().map(|s| s.as_ref().and_then(|a| a.pair(self.layer, self.weight))).collect();
        let first = pairs.iter().flatten().next()?;
        let rank = pairs.iter().flatten().map(|p| p.rank).max()?;
        let (inputs, outputs) = (first.inputs, self.rows.len());
        let mut a = vec![0f32; slots.len() * rank * inputs];
        let mut b = vec![0f32; slots.len() * rank * outputs];
        for (slot, pair) in pairs.iter().enumerate() {
            let Some(pair) = pair else { continue };
            a[slot * rank * inputs..][..pair.rank * inputs].copy_from_slice(&pair.a);
            // Transposed: rank j's column of this projection's rows.
            for (o, row) in self.rows.clone().enumerate() {
                for j in 0..pair.rank {
                    b[(slot * rank + j) * outputs + o] = pair.b[row * pair.rank + j];
                }
            }
        }
        Some(LoraStack { a, b, rank, inputs, outputs })
    }
}

/// A projection's stacked adapters on the device.
pub(crate) struct DeviceLora {
    a: Handle,
    b: Handle,
    rank: usize,
    inputs: usize,
    outputs: usize,
    slots: usize,
}

/// The adapters of a step's rows on the device: per row, its slot and its scale's bits.
pub(crate) struct DeviceLoraRows {
    handle: Handle,
    rows: usize,
}

/// lora_shrink.wgsl's and lora_expand.wgsl's `Info`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LoraInfo {
    rows: u32,
    /// The shrink's inputs, the expand's outputs.
    width: u32,
    rank: u32,
    slots: u32,
}

impl DeviceLora {
    pub(crate) fn upload(device: &burn_cubecl::CubeDevice, stack: LoraStack) -> Self {
        let words = |v: Vec<f32>| upload(device, bytemuck::cast_vec(v));
        let slots = stack.slots();
        Self { rank: stack.rank, inputs: stack.inputs, outputs: stack.outputs, slots, a: words(stack.a), b: words(stack.b) }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.slots * self.rank * (self.inputs + self.outputs) * 4
    }

    /// `y + scale_r * B_r (A_r x)` per row.
    pub(crate) fn add_to(&self, y: burn::tensor::Tensor<2>, x: burn::tensor::Tensor<2>, rows: &DeviceLoraRows) -> burn::tensor::Tensor<2> {
        let (x, y) = (cube(x), cube(y));
        let device = &x.device;
        let n = rows.rows;
        let t = empty(device, [n, self.rank]);
        let shrink = Template::plain("lora_shrink", include_str!("../../../shaders/lora_shrink.wgsl"));
        let pairs = n * self.rank;
        let across = pairs.min(MAX_WORKGROUPS);
        let info = LoraInfo { rows: n as u32, width: self.inputs as u32, rank: self.rank as u32, slots: self.slots as u32 };
        let args = [Arg::Read(&x.handle), Arg::Read(&self.a), Arg::Read(&rows.handle), Arg::Write(&t.handle)];
        launch(device, &shrink, [across as u32, pairs.div_ceil(across) as u32, 1], &args, &info);
        let out = empty(device, [n, self.outputs]);
        let expand = Template::plain("lora_expand", include_str!("../../../shaders/lora_expand.wgsl"));
        let info = LoraInfo { width: self.outputs as u32, ..info };
        let args = [Arg::Read(&y.handle), Arg::Read(&t.handle), Arg::Read(&self.b), Arg::Read(&rows.handle), Arg::Write(&out.handle)];
        let groups = (n * self.outputs).div_ceil(64).min(MAX_WORKGROUPS) as u32;
        launch(device, &expand, [groups, 1, 1], &args, &info);
        from_cube(out)
    }
}

impl DeviceLoraRows {
    pub(crate) fn upload(device: &burn_cubecl::CubeDevice, rows: &[Option<RowAdapter>]) -> Self {
        let words = rows.iter().flat_map(|r| r.map_or([u32::MAX, 0], |r| [r.slot, r.scale.to_bits()])).collect();
        Self { handle: upload(device, words), rows: rows.len() }
    }
}

/// A random LoRA adapter for `base` (deterministic in `seed`): pairs of `rank` for each
/// block's `targets` that the model has, stored as `ty` (f32, f16 or q8_0), with
/// `adapter.lora.alpha = alpha`. Values are spread so that the adapter visibly moves the
/// model's outputs without drowning them.
pub fn synthetic_adapter(base: &ModelConfig, targets: &[LayerWeight], rank: usize, alpha: f32, ty: GgmlType, seed: u64) -> Result<GgufWriter, ModelError> {
    let mut rng = SynthRng::new(seed);
    let mut writer = GgufWriter::new();
    writer
        .metadata("general.architecture", MetadataValue::String(base.arch.name.into()))
        .metadata("general.type", MetadataValue::String("adapter".into()))
        .metadata("adapter.type", MetadataValue::String("lora".into()))
        .metadata("adapter.lora.alpha", MetadataValue::F32(alpha));
    for layer in 0..base.n_layers {
        for (weight, shape) in base.layer_weights.iter().filter(|(w, _)| targets.contains(w) && ADAPTABLE.contains(w)) {
            let (inputs, outputs) = (shape[0], shape[1]);
            // A spreads x over the rank (x is about unit-scaled after a norm); B brings a
            // small share of it back.
            for (half, dims, spread) in [("lora_a", [inputs, rank as u64], 1.0 / (inputs as f32).sqrt()), ("lora_b", [rank as u64, outputs], 0.5 / rank as f32)] {
                let values: Vec<f32> = (0..dims[0] * dims[1]).map(|_| rng.uniform() * spread * 3f32.sqrt()).collect();
                let bytes = cinder_gguf::quantize(ty, &values)?;
                writer.tensor(format!("{}.{half}", weight.name(layer)), &dims, ty, bytes);
            }
        }
    }
    Ok(writer)
}
