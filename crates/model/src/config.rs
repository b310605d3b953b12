//! A model's shape and block variant, read and checked once from its GGUF file through its
//! architecture's description ([`crate::arch`]).

use cinder_cpu::KvType;
use cinder_gguf::{GgufFile, Metadata, MetadataValue};

use crate::{ModelError, Pooling};
use crate::arch::{
    Architecture, FfnLayout, FinalSoftcap, GlobalWeight, LayerWeight, QueryScale, WindowRule,
};
use crate::rope::Rope;

/// How one layer attends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerAttention {
    /// The layer attends to its last `window` positions only (itself included).
    pub window: Option<usize>,
    /// Index of its RoPE in [`ModelConfig::ropes`].
    pub rope: usize,
}

/// How the layers' keys and values share the paged KV pool: layers are split into groups of
/// `group_size`, each group with one block table per sequence (all layers of a group share
/// a window or the lack of one); a block of the pool holds `group_size` layers' keys and
/// values for `block_size` positions, whichever group it serves. Windowed groups can then
/// let go of blocks behind their window while full-attention groups keep theirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvLayout {
    /// Each group's sliding window (`None`: the whole sequence); full-attention groups first.
    pub groups: Vec<Option<usize>>,
    /// Each layer's group and its place in the group (which of the pool's `group_size`
    /// per-layer buffers it uses).
    pub layer_slots: Vec<(usize, usize)>,
    pub group_size: usize,
}

/// What the KV cache stores keys and values as (llama.cpp's `-ctk` / `-ctv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvTypes {
    pub keys: KvType,
    pub values: KvType,
}

impl KvTypes {
    /// Keys and values both of `ty`.
    pub fn both(ty: KvType) -> Self {
        Self { keys: ty, values: ty }
    }

    /// Bytes of one slot's keys and of its values in a layer.
    pub fn row_bytes(self, kv_dim: usize) -> (usize, usize) {
        (self.keys.row_bytes(kv_dim), self.values.row_bytes(kv_dim))
    }

    /// Kernels are compiled per pair of types: the pairs, and a number for each.
    pub(crate) const PAIRS: u32 = (KvType::ALL.len() * KvType::ALL.len()) as u32;

    pub(crate) fn code(self) -> u32 {
        (self.keys.index() * KvType::ALL.len() + self.values.index()) as u32
    }
}

impl std::fmt::Display for KvTypes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.keys == self.values {
            write!(f, "{}", self.keys)
        } else {
            write!(f, "{} keys, {} values", self.keys, self.values)
        }
    }
}

/// Everything the forward pass needs to know about a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: &'static Architecture,
    pub n_layers: usize,
    pub hidden: usize,
    pub ffn_hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// Width of one attention head (`attention.key_length`; not always hidden / heads).
    pub head_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rms_eps: f32,
    /// The tensors of every block, with their shapes in ggml order (`[inputs, outputs]`).
    pub layer_weights: Vec<(LayerWeight, Vec<u64>)>,
    /// Whether the LM head reuses the token embedding (no `output.weight` tensor).
    pub tied_embeddings: bool,
    pub output_bias: bool,
    pub layers: Vec<LayerAttention>,
    /// The distinct RoPEs of the layers: the global one first.
    pub ropes: Vec<Rope>,
    pub embedding_scale: f32,
    /// Scale of the query-key products.
    pub query_scale: f32,
    pub attention_softcap: Option<f32>,
    pub final_softcap: Option<f32>,
    /// What its KV caches store ([`ModelConfig::set_kv_types`]; f16 unless set).
    pub kv_types: KvTypes,
    /// How its embeddings pool (`pooling_type`), where the file says.
    pub pooling: Option<Pooling>,
}

/// Upper bound on any single dimension; larger values in a file are treated as corrupt.
const MAX_DIM: u64 = 1 << 20;

impl ModelConfig {
    /// The model in `file`, its tensors checked against the description.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ModelError> {
        // A missing embedding is reported by the shape check, after the metadata's problems.
        let vocab_size = file.tensor(GlobalWeight::TokenEmbedding.name()).map_or(0, |t| t.rows() as usize);
        let config = Self::from_metadata(file.metadata(), vocab_size, |name| file.tensor(name).is_ok())?;
        config.check_tensor_shapes(file)?;
        Ok(config)
    }

    /// The model that `m` describes, with `vocab_size` tokens; `present` says which of the
    /// optional tensors (fused projections, biases, a separate LM head, RoPE factors) the
    /// model has.
    pub fn from_metadata(m: &Metadata, vocab_size: usize, present: impl Fn(&str) -> bool) -> Result<Self, ModelError> {
        let name = m.get_str("general.architecture")?;
        let arch = Architecture::named(name)
            .ok_or_else(|| ModelError::UnsupportedArchitecture { name: name.to_owned(), supported: Architecture::supported() })?;
        let key = |k: &str| format!("{}.{k}", arch.name);
        let dim = |m: &Metadata, k: &str| m.get_usize_at_most(&key(k), MAX_DIM);
        let optional_dim = |k: &str| m.optional(&key(k), |m, k| m.get_usize_at_most(k, MAX_DIM));
        let optional_float = |k: &str| m.optional(&key(k), Metadata::get_f64).map(|v| v.map(|v| v as f32));

        let n_layers = dim(m, "block_count")?;
        let hidden = dim(m, "embedding_length")?;
        let ffn_hidden = dim(m, "feed_forward_length")?;
        let n_heads = dim(m, "attention.head_count")?;
        let n_kv_heads = optional_dim("attention.head_count_kv")?.unwrap_or(n_heads);
        let context_length = dim(m, "context_length")?;
        let rms_eps = m.get_f64(&key("attention.layer_norm_rms_epsilon"))? as f32;

        let invalid = |reason: String| Err(ModelError::InvalidConfig(reason));
        if n_layers == 0 || hidden == 0 || ffn_hidden == 0 || n_heads == 0 || n_kv_heads == 0 || context_length == 0 {
            return invalid("layer count, widths, head counts and context length must be positive".into());
        }
        if n_heads % n_kv_heads != 0 {
            return invalid(format!("{n_heads} heads cannot be grouped over {n_kv_heads} KV heads"));
        }
        let head_dim = match optional_dim("attention.key_length")? {
            Some(d) => d,
            None if hidden % n_heads == 0 => hidden / n_heads,
            None => return invalid(format!("embedding length {hidden} is not divisible by {n_heads} heads")),
        };
        if let Some(v) = optional_dim("attention.value_length")?.filter(|&v| v != head_dim) {
            return Err(ModelError::Unsupported(format!("value heads of {v} dimensions beside key heads of {head_dim}")));
        }
        if head_dim == 0 || head_dim % 2 != 0 {
            return invalid(format!("head dimension {head_dim} is not a positive even number; RoPE rotates pairs"));
        }
        if head_dim % 4 != 0 {
            return Err(ModelError::Unsupported(format!("head dimension {head_dim} (attention reads keys in fours)")));
        }
        if let Some(rot) = optional_dim("rope.dimension_count")?.filter(|&r| r != head_dim) {
            return Err(ModelError::Unsupported(format!("partial RoPE over {rot} of {head_dim} dimensions")));
        }
        if !(rms_eps > 0.0 && rms_eps.is_finite()) {
            return invalid(format!("rms epsilon {rms_eps} must be positive"));
        }

        let global_rope = Rope::from_metadata(m, arch.name, arch.rope, context_length, &present)?;
        let (layers, ropes) = layer_attention(m, arch, n_layers, global_rope, optional_dim("attention.sliding_window")?, optional_float("rope.freq_base_swa")?)?;

        let query_scale = match arch.query_scale {
            QueryScale::HiddenPerHeadAtLayerCounts(counts) if counts.contains(&n_layers) => (hidden / n_heads) as f32,
            _ => head_dim as f32,
        }
        .sqrt()
        .recip();
        let attention_softcap = arch.attention_softcap.map(|cap| Ok::<_, ModelError>(optional_float("attn_logit_softcapping")?.unwrap_or(cap))).transpose()?;
        let final_softcap = match arch.final_softcap {
            FinalSoftcap::Never => None,
            FinalSoftcap::FromFile(default) => optional_float("final_logit_softcapping")?.or(default).filter(|&c| c != 0.0),
        };
        if let Some(cap) = attention_softcap.into_iter().chain(final_softcap).find(|c| !(*c > 0.0 && c.is_finite())) {
            return invalid(format!("soft-capping value {cap} must be positive"));
        }

        let pooling = m.optional(&key("pooling_type"), Metadata::get_u64)?.map(Pooling::from_gguf).transpose()?;

        let has = |name: &str| present(name);
        let mut config = Self {
            arch,
            n_layers,
            hidden,
            ffn_hidden,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length,
            rms_eps,
            layer_weights: Vec::new(),
            tied_embeddings: !has(GlobalWeight::Output.name()),
            output_bias: has(GlobalWeight::OutputBias.name()),
            layers,
            ropes,
            embedding_scale: if arch.scale_embeddings { (hidden as f32).sqrt() } else { 1.0 },
            query_scale,
            attention_softcap,
            final_softcap,
            kv_types: KvTypes::default(),
            pooling,
        };
        // Layer 0 decides which optional tensors the blocks have; every layer must match.
        config.layer_weights = config.block_weights(has(&LayerWeight::Qkv.name(0)), |w| has(&w.name(0)));
        Ok(config)
    }

    /// Sets what the model's KV caches store (pools made after this use it), where its
    /// heads can be stored so.
    pub fn set_kv_types(&mut self, types: KvTypes) -> Result<(), ModelError> {
        for ty in [types.keys, types.values] {
            ty.check(self.head_dim).map_err(ModelError::Unsupported)?;
        }
        self.kv_types = types;
        Ok(())
    }

    /// Width of the query projection.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of the K and V projections.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// The layers grouped by window into groups of equal size (the greatest common divisor
    /// of the counts of each window's layers).
    pub fn kv_layout(&self) -> KvLayout {
        let mut kinds: Vec<(Option<usize>, Vec<usize>)> = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            match kinds.iter_mut().find(|(w, _)| *w == layer.window) {
                Some((_, layers)) => layers.push(l),
                None => kinds.push((layer.window, vec![l])),
            }
        }
        kinds.sort_by_key(|(w, _)| *w);
        let gcd = |mut a: usize, mut b: usize| {
            while b != 0 {
                (a, b) = (b, a % b);
            }
            a
        };
        let group_size = kinds.iter().fold(0, |g, (_, layers)| gcd(g, layers.len()));
        let mut layout = KvLayout { groups: Vec::new(), layer_slots: vec![(0, 0); self.n_layers], group_size };
        for (window, layers) in kinds {
            for members in layers.chunks(group_size) {
                for (slot, &l) in members.iter().enumerate() {
                    layout.layer_slots[l] = (layout.groups.len(), slot);
                }
                layout.groups.push(window);
            }
        }
        layout
    }

    /// The tensors of one block: fused or separate query/key/value projections, the biases
    /// `present` says the file has (among those the architecture reads), and the norms and
    /// feed-forward matrices of the architecture's variant.
    pub fn block_weights(&self, fused_qkv: bool, present: impl Fn(LayerWeight) -> bool) -> Vec<(LayerWeight, Vec<u64>)> {
        use LayerWeight::*;
        let (h, f, q, kv) = (self.hidden as u64, self.ffn_hidden as u64, self.q_dim() as u64, self.kv_dim() as u64);
        let hd = self.head_dim as u64;
        let mut out = vec![(AttnNorm, vec![h])];
        let projections: &[(LayerWeight, u64)] = if fused_qkv { &[(Qkv, q + 2 * kv)] } else { &[(Q, q), (K, kv), (V, kv)] };
        for &(w, width) in projections {
            out.push((w, vec![h, width]));
        }
        if self.arch.qk_norm {
            out.extend([(QNorm, vec![hd]), (KNorm, vec![hd])]);
        }
        out.push((AttnOut, vec![q, h]));
        if self.arch.post_norms {
            out.push((PostAttnNorm, vec![h]));
        }
        out.push((FfnNorm, vec![h]));
        match self.arch.ffn {
            FfnLayout::Separate => out.extend([(Gate, vec![h, f]), (Up, vec![h, f])]),
            FfnLayout::FusedGateUp => out.push((Up, vec![h, 2 * f])),
        }
        out.push((Down, vec![f, h]));
        if self.arch.post_norms {
            out.push((PostFfnNorm, vec![h]));
        }
        let biases: Vec<(LayerWeight, Vec<u64>)> = out
            .iter()
            .filter_map(|(w, shape)| w.bias().map(|b| (b, vec![shape[1]])))
            .filter(|(b, _)| self.arch.optional_biases.contains(b) && present(*b))
            .collect();
        out.extend(biases);
        out
    }

    /// Whether the blocks have `weight`.
    pub fn has(&self, weight: LayerWeight) -> bool {
        self.layer_weights.iter().any(|(w, _)| *w == weight)
    }

    /// Every tensor the forward pass reads, with the shape it must have (ggml order).
    pub fn expected_tensors(&self) -> Vec<(String, Vec<u64>)> {
        let (h, v) = (self.hidden as u64, self.vocab_size as u64);
        let mut out = vec![
            (GlobalWeight::TokenEmbedding.name().to_owned(), vec![h, v]),
            (GlobalWeight::OutputNorm.name().to_owned(), vec![h]),
        ];
        if !self.tied_embeddings {
            out.push((GlobalWeight::Output.name().to_owned(), vec![h, v]));
        }
        if self.output_bias {
            out.push((GlobalWeight::OutputBias.name().to_owned(), vec![v]));
        }
        for factors in self.ropes.iter().filter_map(|r| r.factors) {
            out.push((factors.name().to_owned(), vec![self.head_dim as u64 / 2]));
        }
        for l in 0..self.n_layers {
            out.extend(self.layer_weights.iter().map(|(w, shape)| (w.name(l), shape.clone())));
        }
        out
    }

    fn check_tensor_shapes(&self, file: &GgufFile) -> Result<(), ModelError> {
        for (name, shape) in self.expected_tensors() {
            let info = file.tensor(&name)?;
            if info.shape != shape {
                return Err(ModelError::InvalidConfig(format!(
                    "tensor {name:?} has shape {:?}, expected {shape:?} from the metadata",
                    info.shape
                )));
            }
        }
        Ok(())
    }
}

/// Each layer's window and RoPE under the architecture's [`WindowRule`].
fn layer_attention(
    m: &Metadata,
    arch: &Architecture,
    n_layers: usize,
    global: Rope,
    file_window: Option<usize>,
    local_base: Option<f32>,
) -> Result<(Vec<LayerAttention>, Vec<Rope>), ModelError> {
    let global_only = |n| (vec![LayerAttention { window: None, rope: 0 }; n], vec![global.clone()]);
    let window = |default: Option<usize>| file_window.or(default).filter(|&w| w > 0);
    match arch.window {
        WindowRule::Never => Ok(global_only(n_layers)),
        WindowRule::AllLayersIfSet => {
            let (mut layers, ropes) = global_only(n_layers);
            layers.iter_mut().for_each(|l| l.window = window(None));
            Ok((layers, ropes))
        }
        WindowRule::Periodic { period, default_window, local_rope_base } => {
            let Some(size) = window(default_window) else { return Ok(global_only(n_layers)) };
            let local = local_layers(m, arch, n_layers, period)?;
            let base = local_base.or(local_rope_base).unwrap_or(global.base);
            let local_rope = Rope::plain(global.layout, base);
            let layers = local
                .iter()
                .map(|&is_local| if is_local { LayerAttention { window: Some(size), rope: 1 } } else { LayerAttention { window: None, rope: 0 } })
                .collect();
            Ok((layers, vec![global, local_rope]))
        }
    }
}

/// Which layers are local: the file's `attention.sliding_window_pattern` (a period, or one
/// bool per layer), else every layer but the last of each `period`.
fn local_layers(m: &Metadata, arch: &Architecture, n_layers: usize, period: usize) -> Result<Vec<bool>, ModelError> {
    let key = format!("{}.attention.sliding_window_pattern", arch.name);
    let period = match m.get(&key) {
        None => period,
        Some(MetadataValue::Array(_, values)) => {
            let flags: Option<Vec<bool>> = values.iter().map(MetadataValue::as_bool).collect();
            return match flags {
                Some(flags) if flags.len() == n_layers => Ok(flags),
                _ => Err(ModelError::InvalidConfig(format!("{key} must hold one bool per layer ({n_layers})"))),
            };
        }
        Some(_) => m.get_usize_at_most(&key, MAX_DIM)?,
    };
    Ok((0..n_layers).map(|l| period == 0 || l % period < period - 1).collect())
}
