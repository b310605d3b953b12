//! Hyperparameters of a Llama-architecture model, read and checked from GGUF metadata.

use cinder_gguf::{GgufFile, Metadata};

use crate::ModelError;

/// Architectures whose forward pass this crate implements.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama"];

/// Everything the forward pass needs to know about the model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub architecture: String,
    pub n_layers: usize,
    pub hidden: usize,
    pub ffn_hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// Whether the LM head reuses the token embedding (no `output.weight` tensor).
    pub tied_embeddings: bool,
}

/// Upper bound on any single dimension; larger values in a file are treated as corrupt.
const MAX_DIM: u64 = 1 << 20;

impl LlamaConfig {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ModelError> {
        let m = file.metadata();
        let architecture = m.get_str("general.architecture")?.to_owned();
        if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
            return Err(ModelError::UnsupportedArchitecture {
                name: architecture,
                supported: SUPPORTED_ARCHITECTURES.join(", "),
            });
        }
        let key = |k: &str| format!("{architecture}.{k}");
        let dim = |m: &Metadata, k: &str| m.get_usize_at_most(&key(k), MAX_DIM);

        let n_layers = dim(m, "block_count")?;
        let hidden = dim(m, "embedding_length")?;
        let ffn_hidden = dim(m, "feed_forward_length")?;
        let n_heads = dim(m, "attention.head_count")?;
        let n_kv_heads = m.optional(&key("attention.head_count_kv"), |m, k| m.get_usize_at_most(k, MAX_DIM))?.unwrap_or(n_heads);
        let context_length = dim(m, "context_length")?;
        let rms_eps = m.get_f64(&key("attention.layer_norm_rms_epsilon"))? as f32;
        let rope_base = m.optional(&key("rope.freq_base"), Metadata::get_f64)?.unwrap_or(10_000.0) as f32;

        let invalid = |reason: String| Err(ModelError::InvalidConfig(reason));
        if n_layers == 0 || hidden == 0 || ffn_hidden == 0 || n_heads == 0 || n_kv_heads == 0 || context_length == 0 {
            return invalid("layer count, widths, head counts and context length must be positive".into());
        }
        if hidden % n_heads != 0 {
            return invalid(format!("embedding length {hidden} is not divisible by {n_heads} heads"));
        }
        if n_heads % n_kv_heads != 0 {
            return invalid(format!("{n_heads} heads cannot be grouped over {n_kv_heads} KV heads"));
        }
        let head_dim = hidden / n_heads;
        if head_dim % 2 != 0 {
            return invalid(format!("head dimension {head_dim} is odd; RoPE rotates pairs"));
        }
        if head_dim % 4 != 0 {
            return Err(ModelError::Unsupported(format!("head dimension {head_dim} (attention reads keys in fours)")));
        }
        if let Some(rot) = m.optional(&key("rope.dimension_count"), Metadata::get_u64)? {
            if rot != head_dim as u64 {
                return Err(ModelError::Unsupported(format!("partial RoPE over {rot} of {head_dim} dimensions")));
            }
        }
        if let Some(scaling) = m.optional(&key("rope.scaling.type"), |m, k| m.get_str(k))? {
            if scaling != "none" {
                return Err(ModelError::Unsupported(format!("RoPE scaling {scaling:?}")));
            }
        }
        if !(rms_eps > 0.0 && rms_eps.is_finite() && rope_base > 0.0 && rope_base.is_finite()) {
            return invalid(format!("rms epsilon {rms_eps} and rope base {rope_base} must be positive"));
        }

        let embd = file.tensor("token_embd.weight")?;
        let vocab_size = embd.rows() as usize;
        let tied_embeddings = file.tensor("output.weight").is_err();
        let config = Self {
            architecture,
            n_layers,
            hidden,
            ffn_hidden,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length,
            rms_eps,
            rope_base,
            tied_embeddings,
        };
        config.check_tensor_shapes(file)?;
        Ok(config)
    }

    /// Width of the K and V projections.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Every tensor the forward pass reads, with the shape it must have (ggml order:
    /// `[inputs, outputs]` for a weight matrix).
    pub fn expected_tensors(&self) -> Vec<(String, Vec<u64>)> {
        let (h, f, kv, v) = (self.hidden as u64, self.ffn_hidden as u64, self.kv_dim() as u64, self.vocab_size as u64);
        let mut out = vec![("token_embd.weight".to_owned(), vec![h, v]), ("output_norm.weight".to_owned(), vec![h])];
        if !self.tied_embeddings {
            out.push(("output.weight".to_owned(), vec![h, v]));
        }
        for l in 0..self.n_layers {
            let t = |name: &str, shape: Vec<u64>| (format!("blk.{l}.{name}.weight"), shape);
            out.extend([
                t("attn_norm", vec![h]),
                t("attn_q", vec![h, h]),
                t("attn_k", vec![h, kv]),
                t("attn_v", vec![h, kv]),
                t("attn_output", vec![h, h]),
                t("ffn_norm", vec![h]),
                t("ffn_gate", vec![h, f]),
                t("ffn_up", vec![h, f]),
                t("ffn_down", vec![f, h]),
            ]);
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
