//! One description per model architecture: every way in which the families cinder runs
//! differ, as data. The loader, the shape checks ([`ModelConfig`](crate::ModelConfig)), the
//! forward pass, the CPU reference and the random-weight test models (`tiny`) all read it;
//! tensor names are spelled once, in [`LayerWeight`] and [`GlobalWeight`].
//!
//! Adding a family: write its [`Architecture`] and add it to [`ARCHITECTURES`]; give `tiny`
//! its metadata keys if they differ; if its block does something none of these does, add
//! the variant here, its branch in the forward pass and the CPU reference, and a kernel if
//! one is needed.

/// How RoPE pairs a head's dimensions (llama.cpp's rope types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs `(x[2i], x[2i + 1])`: llama.cpp's NORM, used for `llama` (GGUF
    /// converters permute the Q/K rows for it).
    Adjacent,
    /// Halves `(x[i], x[i + d/2])`: llama.cpp's NEOX.
    Halves,
}

/// The gate's activation in the gated feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: `silu(gate) * up`.
    Silu,
    /// GeGLU with the tanh approximation of GELU: `gelu_tanh(gate) * up`.
    GeluTanh,
}

/// How the feed-forward block's input projections are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnLayout {
    /// `ffn_gate` and `ffn_up`.
    Separate,
    /// One `ffn_up` of twice the width: the gate's rows, then the up projection's.
    FusedGateUp,
}

/// Which layers attend through a sliding window, and how their RoPE differs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WindowRule {
    /// Every layer attends to the whole context.
    Never,
    /// Every layer, when the file sets `attention.sliding_window` (Mistral-style).
    AllLayersIfSet,
    /// Layer `l` is local (windowed) unless `l % period == period - 1`, or as the file's
    /// `attention.sliding_window_pattern` says. The window is the file's, else
    /// `default_window`; with neither, no layer is local. Local layers rotate with the
    /// file's `rope.freq_base_swa`, else `local_rope_base` (else the global base), and
    /// without RoPE scaling.
    Periodic { period: usize, default_window: Option<usize>, local_rope_base: Option<f32> },
}

/// The scale of the query before attention.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QueryScale {
    /// `1 / sqrt(head_dim)`.
    InverseSqrtHeadDim,
    /// `1 / sqrt(hidden / heads)` for models with one of these layer counts (Gemma's 27B,
    /// whose query_pre_attn_scalar is not its head size), `1 / sqrt(head_dim)` otherwise.
    HiddenPerHeadAtLayerCounts(&'static [usize]),
}

/// Everything that distinguishes one architecture's forward pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Architecture {
    /// `general.architecture`, also the prefix of its metadata keys.
    pub name: &'static str,
    pub rope: RopeLayout,
    /// RMSNorm of each query and key head before RoPE (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// RMSNorm of the attention and feed-forward outputs before the residual adds
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    pub ffn: FfnLayout,
    pub activation: Activation,
    /// Token embeddings multiplied by `sqrt(hidden)`.
    pub scale_embeddings: bool,
    pub query_scale: QueryScale,
    /// Attention scores soft-capped as `cap * tanh(score / cap)`: the default cap, which the
    /// file's `attn_logit_softcapping` replaces.
    pub attention_softcap: Option<f32>,
    /// Whether the file's `final_logit_softcapping` is read, and the cap without one.
    pub final_softcap: FinalSoftcap,
    pub window: WindowRule,
    /// Biases read when the file has them (every family takes query, key and value
    /// biases, as llama.cpp does).
    pub optional_biases: &'static [LayerWeight],
}

/// Soft-capping of the output logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FinalSoftcap {
    Never,
    /// The file's cap if it has one (0 is none), else this default.
    FromFile(Option<f32>),
}

const QKV_BIASES: &[LayerWeight] = &[LayerWeight::QBias, LayerWeight::KBias, LayerWeight::VBias, LayerWeight::QkvBias];

const PLAIN: Architecture = Architecture {
    name: "",
    rope: RopeLayout::Halves,
    qk_norm: false,
    post_norms: false,
    ffn: FfnLayout::Separate,
    activation: Activation::Silu,
    scale_embeddings: false,
    query_scale: QueryScale::InverseSqrtHeadDim,
    attention_softcap: None,
    final_softcap: FinalSoftcap::Never,
    window: WindowRule::Never,
    optional_biases: QKV_BIASES,
};

/// Llama 1/2/3.x, Mistral, TinyLlama, SmolLM.
pub const LLAMA: Architecture = Architecture {
    name: "llama",
    rope: RopeLayout::Adjacent,
    window: WindowRule::AllLayersIfSet,
    optional_biases: &[
        LayerWeight::QBias,
        LayerWeight::KBias,
        LayerWeight::VBias,
        LayerWeight::QkvBias,
        LayerWeight::AttnOutBias,
        LayerWeight::GateBias,
        LayerWeight::UpBias,
        LayerWeight::DownBias,
    ],
    ..PLAIN
};

/// Qwen 2 and 2.5 (their files carry query, key and value biases).
pub const QWEN2: Architecture = Architecture { name: "qwen2", ..PLAIN };

/// Qwen 3: RMSNorm of each query and key head.
pub const QWEN3: Architecture = Architecture { name: "qwen3", qk_norm: true, ..PLAIN };

const GEMMA: Architecture = Architecture {
    post_norms: true,
    activation: Activation::GeluTanh,
    scale_embeddings: true,
    query_scale: QueryScale::HiddenPerHeadAtLayerCounts(&[]),
    ..PLAIN
};

/// Gemma 2: soft-capped attention scores and logits, every other layer local.
pub const GEMMA2: Architecture = Architecture {
    name: "gemma2",
    query_scale: QueryScale::HiddenPerHeadAtLayerCounts(&[46]),
    attention_softcap: Some(50.0),
    final_softcap: FinalSoftcap::FromFile(Some(30.0)),
    window: WindowRule::Periodic { period: 2, default_window: Some(4096), local_rope_base: None },
    ..GEMMA
};

/// Gemma 3 (text): QK-norm, five local layers to one global, local RoPE base 10 000.
pub const GEMMA3: Architecture = Architecture {
    name: "gemma3",
    qk_norm: true,
    query_scale: QueryScale::HiddenPerHeadAtLayerCounts(&[62]),
    final_softcap: FinalSoftcap::FromFile(None),
    window: WindowRule::Periodic { period: 6, default_window: None, local_rope_base: Some(10_000.0) },
    ..GEMMA
};

/// Phi-3 and 3.5 (mini, medium): fused QKV, fused gate and up projections.
pub const PHI3: Architecture = Architecture { name: "phi3", ffn: FfnLayout::FusedGateUp, ..PLAIN };

/// Every architecture cinder runs.
pub const ARCHITECTURES: &[Architecture] = &[LLAMA, QWEN2, QWEN3, GEMMA2, GEMMA3, PHI3];

impl Architecture {
    pub fn named(name: &str) -> Option<&'static Architecture> {
        ARCHITECTURES.iter().find(|a| a.name == name)
    }

    /// The names of every supported architecture, for error messages.
    pub fn supported() -> String {
        ARCHITECTURES.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
    }
}

/// A tensor of each transformer block, named `blk.{layer}.{suffix}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerWeight {
    AttnNorm,
    Q,
    K,
    V,
    /// Query, key and value rows in one matrix.
    Qkv,
    QBias,
    KBias,
    VBias,
    QkvBias,
    QNorm,
    KNorm,
    AttnOut,
    AttnOutBias,
    PostAttnNorm,
    FfnNorm,
    Gate,
    Up,
    Down,
    GateBias,
    UpBias,
    DownBias,
    PostFfnNorm,
}

impl LayerWeight {
    pub fn suffix(self) -> &'static str {
        match self {
            Self::AttnNorm => "attn_norm.weight",
            Self::Q => "attn_q.weight",
            Self::K => "attn_k.weight",
            Self::V => "attn_v.weight",
            Self::Qkv => "attn_qkv.weight",
            Self::QBias => "attn_q.bias",
            Self::KBias => "attn_k.bias",
            Self::VBias => "attn_v.bias",
            Self::QkvBias => "attn_qkv.bias",
            Self::QNorm => "attn_q_norm.weight",
            Self::KNorm => "attn_k_norm.weight",
            Self::AttnOut => "attn_output.weight",
            Self::AttnOutBias => "attn_output.bias",
            Self::PostAttnNorm => "post_attention_norm.weight",
            Self::FfnNorm => "ffn_norm.weight",
            Self::Gate => "ffn_gate.weight",
            Self::Up => "ffn_up.weight",
            Self::Down => "ffn_down.weight",
            Self::GateBias => "ffn_gate.bias",
            Self::UpBias => "ffn_up.bias",
            Self::DownBias => "ffn_down.bias",
            Self::PostFfnNorm => "post_ffw_norm.weight",
        }
    }

    pub fn name(self, layer: usize) -> String {
        format!("blk.{layer}.{}", self.suffix())
    }

    /// The bias of a projection, if the projection is one.
    pub fn bias(self) -> Option<Self> {
        Some(match self {
            Self::Q => Self::QBias,
            Self::K => Self::KBias,
            Self::V => Self::VBias,
            Self::Qkv => Self::QkvBias,
            Self::AttnOut => Self::AttnOutBias,
            Self::Gate => Self::GateBias,
            Self::Up => Self::UpBias,
            Self::Down => Self::DownBias,
            _ => return None,
        })
    }
}

/// A tensor outside the blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GlobalWeight {
    TokenEmbedding,
    OutputNorm,
    /// The LM head; without it the token embedding is reused (tied).
    Output,
    OutputBias,
    /// Llama 3.1+ RoPE frequency factors (`rope_freqs.weight`).
    RopeFreqs,
    /// Phi-3 LongRoPE factors, for contexts beyond the original one and within it.
    RopeFactorsLong,
    RopeFactorsShort,
}

impl GlobalWeight {
    pub fn name(self) -> &'static str {
        match self {
            Self::TokenEmbedding => "token_embd.weight",
            Self::OutputNorm => "output_norm.weight",
            Self::Output => "output.weight",
            Self::OutputBias => "output.bias",
            Self::RopeFreqs => "rope_freqs.weight",
            Self::RopeFactorsLong => "rope_factors_long.weight",
            Self::RopeFactorsShort => "rope_factors_short.weight",
        }
    }
}
