//! Tiny random-weight models written as real GGUF files, for fast tests of everything that
//! loads a model: any supported architecture, its metadata keys and its tensors as the
//! architecture's description lists them ([`ModelConfig::expected_tensors`]), with a few
//! layers and a byte-level vocabulary.

use cinder_gguf::synth::SynthRng;
use cinder_gguf::{GgmlType, GgufWriter, Metadata, MetadataValue, quantize};

use crate::ModelConfig;
use crate::arch::{Architecture, LLAMA, LayerWeight};

/// RoPE scaling of a tiny model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TinyRopeScaling {
    None,
    Linear(f32),
    Yarn { factor: f32, original_context: usize },
    /// Llama 3.1-style frequency divisors in `rope_freqs.weight`.
    FreqFactors,
    /// Phi-3's LongRoPE: divisors in `rope_factors_long.weight` (the context is longer than
    /// the original one) and a magnitude scale.
    LongRope { original_context: usize, attn_factor: f32 },
}

/// Shape and encoding of a tiny model.
#[derive(Debug, Clone)]
pub struct TinyModel {
    pub arch: &'static Architecture,
    pub n_layers: usize,
    pub hidden: usize,
    pub ffn_hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// Written as `attention.key_length` when set (a head size other than hidden / heads).
    pub head_dim: Option<usize>,
    pub context_length: usize,
    /// Encoding of the linear weights (the embedding is Q8_0, norms F32, like the default model).
    pub weight_type: GgmlType,
    pub tied_embeddings: bool,
    /// Query, key and value rows in one `attn_qkv` matrix.
    pub fused_qkv: bool,
    /// Every bias the architecture reads.
    pub biases: bool,
    /// `attention.sliding_window`, when set.
    pub sliding_window: Option<usize>,
    pub rope_scaling: TinyRopeScaling,
    pub rope_freq_base: f32,
    pub seed: u64,
}

impl Default for TinyModel {
    fn default() -> Self {
        Self {
            arch: &LLAMA,
            n_layers: 2,
            hidden: 64,
            ffn_hidden: 96,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: None,
            context_length: 512,
            weight_type: GgmlType::Q4_1,
            tied_embeddings: true,
            fused_qkv: false,
            biases: false,
            sliding_window: None,
            rope_scaling: TinyRopeScaling::None,
            rope_freq_base: 10_000.0,
            seed: 1,
        }
    }
}

/// ChatML, as the default model uses.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A byte-level BPE vocabulary (`gpt2`, SmolLM2's pre-tokenizer, ids 1 and 2 as BOS and
/// EOS) and the ChatML template, as `tokenizer.*` metadata.
pub(crate) fn write_byte_level_vocabulary(w: &mut GgufWriter, tokens: Vec<String>, types: Vec<i32>, merges: Vec<String>) {
    w.metadata("tokenizer.ggml.model", MetadataValue::String("gpt2".into()))
        .metadata("tokenizer.ggml.pre", MetadataValue::String("smollm".into()))
        .metadata("tokenizer.ggml.tokens", MetadataValue::strings(tokens))
        .metadata("tokenizer.ggml.token_type", MetadataValue::i32s(types))
        .metadata("tokenizer.ggml.merges", MetadataValue::strings(merges))
        .metadata("tokenizer.ggml.bos_token_id", MetadataValue::U32(1))
        .metadata("tokenizer.ggml.eos_token_id", MetadataValue::U32(2))
        .metadata("tokenizer.ggml.add_bos_token", MetadataValue::Bool(false))
        .metadata("tokenizer.chat_template", MetadataValue::String(CHATML_TEMPLATE.into()));
}

/// `n` uniform values in [-scale, scale).
fn values(rng: &mut SynthRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.uniform() * scale).collect()
}

impl TinyModel {
    /// The vocabulary: three control tokens, the 256 byte tokens, and a few merges.
    pub fn vocabulary() -> (Vec<String>, Vec<i32>, Vec<String>) {
        let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
        let mut types = vec![3, 3, 3];
        tokens.extend(cinder_tokenizer::byte_level_alphabet().into_iter().map(String::from));
        let merges: Vec<String> = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s", "r e", "a t"]
            .map(String::from)
            .to_vec();
        tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
        types.resize(tokens.len(), 1);
        (tokens, types, merges)
    }

    /// The architecture's metadata for this shape.
    pub(crate) fn model_metadata(&self) -> Vec<(String, MetadataValue)> {
        let arch = self.arch.name;
        let key = |k: &str| format!("{arch}.{k}");
        let u32v = |v: usize| MetadataValue::U32(v as u32);
        let mut out = vec![
            ("general.architecture".to_owned(), MetadataValue::String(arch.into())),
            // Not the family's name: llama.cpp changes how it tokenizes for some model names.
            ("general.name".to_owned(), MetadataValue::String("tiny random model".into())),
            (key("block_count"), u32v(self.n_layers)),
            (key("context_length"), u32v(self.context_length)),
            (key("embedding_length"), u32v(self.hidden)),
            (key("feed_forward_length"), u32v(self.ffn_hidden)),
            (key("attention.head_count"), u32v(self.n_heads)),
            (key("attention.head_count_kv"), u32v(self.n_kv_heads)),
            (key("rope.freq_base"), MetadataValue::F32(self.rope_freq_base)),
            (key("attention.layer_norm_rms_epsilon"), MetadataValue::F32(1e-5)),
        ];
        if let Some(d) = self.head_dim {
            out.extend([(key("attention.key_length"), u32v(d)), (key("attention.value_length"), u32v(d))]);
        }
        if let Some(w) = self.sliding_window {
            out.push((key("attention.sliding_window"), u32v(w)));
        }
        match self.rope_scaling {
            TinyRopeScaling::None | TinyRopeScaling::FreqFactors => {}
            TinyRopeScaling::Linear(factor) => out.extend([
                (key("rope.scaling.type"), MetadataValue::String("linear".into())),
                (key("rope.scaling.factor"), MetadataValue::F32(factor)),
            ]),
            TinyRopeScaling::Yarn { factor, original_context } => out.extend([
                (key("rope.scaling.type"), MetadataValue::String("yarn".into())),
                (key("rope.scaling.factor"), MetadataValue::F32(factor)),
                (key("rope.scaling.original_context_length"), u32v(original_context)),
            ]),
            TinyRopeScaling::LongRope { original_context, attn_factor } => out.extend([
                (key("rope.scaling.type"), MetadataValue::String("longrope".into())),
                (key("rope.scaling.original_context_length"), u32v(original_context)),
                (key("rope.scaling.attn_factor"), MetadataValue::F32(attn_factor)),
            ]),
        }
        out
    }

    /// Whether the model has the optional tensor `name`.
    fn has_optional(&self, name: &str) -> bool {
        let in_layer0 = |w: LayerWeight| name == w.name(0);
        if in_layer0(LayerWeight::Qkv) {
            return self.fused_qkv;
        }
        if self.arch.optional_biases.iter().any(|&b| in_layer0(b)) {
            return self.biases;
        }
        match name {
            "output.weight" => !self.tied_embeddings,
            "rope_freqs.weight" => self.rope_scaling == TinyRopeScaling::FreqFactors,
            "rope_factors_long.weight" => matches!(self.rope_scaling, TinyRopeScaling::LongRope { .. }),
            _ => false,
        }
    }

    /// The model's description, as the loader will read it.
    pub fn config(&self) -> ModelConfig {
        self.config_with_vocabulary(Self::vocabulary().0.len())
    }

    /// The description of this shape with a vocabulary of `vocab_size` tokens.
    pub(crate) fn config_with_vocabulary(&self, vocab_size: usize) -> ModelConfig {
        let mut metadata = Metadata::default();
        for (k, v) in self.model_metadata() {
            metadata.insert(k, v).expect("distinct keys");
        }
        ModelConfig::from_metadata(&metadata, vocab_size, |name| self.has_optional(name)).expect("a valid model shape")
    }

    /// The model as GGUF bytes.
    pub fn to_gguf(&self) -> Vec<u8> {
        let (tokens, types, merges) = Self::vocabulary();
        let mut rng = SynthRng::new(self.seed);
        let mut norm_rng = SynthRng::from_state(self.seed.wrapping_add(17));
        let mut w = GgufWriter::new();
        for (k, v) in self.model_metadata() {
            w.metadata(k, v);
        }
        write_byte_level_vocabulary(&mut w, tokens, types, merges);

        for (name, shape) in self.config().expected_tensors() {
            let n: usize = shape.iter().product::<u64>() as usize;
            let (values, ty) = if shape.len() == 2 {
                let ty = if name == "token_embd.weight" { GgmlType::Q8_0 } else { self.weight_type };
                (values(&mut rng, n, 1.5 / (shape[0] as f32).sqrt()), ty)
            } else if name.ends_with(".bias") {
                (values(&mut rng, n, 0.5), GgmlType::F32)
            } else if name.starts_with("rope_f") {
                // Divisors between 1 and 8, as Llama 3.1's and Phi-3's are.
                (values(&mut norm_rng, n, 1.0).into_iter().map(|v| 4.5 + 3.5 * v).collect(), GgmlType::F32)
            } else {
                (values(&mut norm_rng, n, 0.2).into_iter().map(|v| 1.0 + v).collect(), GgmlType::F32)
            };
            w.tensor(&name, &shape, ty, quantize(ty, &values).expect("whole blocks"));
        }
        w.to_bytes()
    }
}
