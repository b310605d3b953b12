//! Tiny random-weight models written as real GGUF files, for fast tests of everything that
//! loads a model: the same metadata keys, tokenizer and tensor layout as the default model,
//! with a few layers and a byte-level vocabulary.

use cinder_gguf::{GgmlType, GgufWriter, MetadataValue, quantize};

/// Shape and encoding of a tiny model.
#[derive(Debug, Clone)]
pub struct TinyModel {
    pub n_layers: usize,
    pub hidden: usize,
    pub ffn_hidden: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub context_length: usize,
    /// Encoding of the linear weights (the embedding is Q8_0, norms F32, like the default model).
    pub weight_type: GgmlType,
    pub tied_embeddings: bool,
    pub seed: u64,
}

impl Default for TinyModel {
    fn default() -> Self {
        Self {
            n_layers: 2,
            hidden: 64,
            ffn_hidden: 96,
            n_heads: 4,
            n_kv_heads: 2,
            context_length: 512,
            weight_type: GgmlType::Q4_1,
            tied_embeddings: true,
            seed: 1,
        }
    }
}

/// ChatML, as the default model uses.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A tiny deterministic generator (xorshift64*), so weights depend only on the seed.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
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

    /// The model as GGUF bytes.
    pub fn to_gguf(&self) -> Vec<u8> {
        let (tokens, types, merges) = Self::vocabulary();
        let vocab = tokens.len();
        let (h, f) = (self.hidden, self.ffn_hidden);
        let kv = self.n_kv_heads * (h / self.n_heads);
        let mut rng = Rng(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut w = GgufWriter::new();
        let u32v = |v: usize| MetadataValue::U32(v as u32);
        w.metadata("general.architecture", MetadataValue::String("llama".into()))
            .metadata("general.name", MetadataValue::String("tiny random llama".into()))
            .metadata("llama.block_count", u32v(self.n_layers))
            .metadata("llama.context_length", u32v(self.context_length))
            .metadata("llama.embedding_length", u32v(h))
            .metadata("llama.feed_forward_length", u32v(f))
            .metadata("llama.attention.head_count", u32v(self.n_heads))
            .metadata("llama.attention.head_count_kv", u32v(self.n_kv_heads))
            .metadata("llama.rope.freq_base", MetadataValue::F32(10_000.0))
            .metadata("llama.attention.layer_norm_rms_epsilon", MetadataValue::F32(1e-5))
            .metadata("tokenizer.ggml.model", MetadataValue::String("gpt2".into()))
            .metadata("tokenizer.ggml.pre", MetadataValue::String("smollm".into()))
            .metadata("tokenizer.ggml.tokens", MetadataValue::strings(tokens))
            .metadata("tokenizer.ggml.token_type", MetadataValue::i32s(types))
            .metadata("tokenizer.ggml.merges", MetadataValue::strings(merges))
            .metadata("tokenizer.ggml.bos_token_id", u32v(1))
            .metadata("tokenizer.ggml.eos_token_id", u32v(2))
            .metadata("tokenizer.ggml.add_bos_token", MetadataValue::Bool(false))
            .metadata("tokenizer.chat_template", MetadataValue::String(CHATML_TEMPLATE.into()));

        let mut matrix = |w: &mut GgufWriter, name: &str, inputs: usize, outputs: usize, ty: GgmlType| {
            let values = rng.values(inputs * outputs, 1.5 / (inputs as f32).sqrt());
            w.tensor(name, &[inputs as u64, outputs as u64], ty, quantize(ty, &values).expect("whole blocks"));
        };
        matrix(&mut w, "token_embd.weight", h, vocab, GgmlType::Q8_0);
        let norm = |w: &mut GgufWriter, name: &str, rng: &mut Rng| {
            let values: Vec<f32> = rng.values(h, 0.2).into_iter().map(|v| 1.0 + v).collect();
            w.tensor(name, &[h as u64], GgmlType::F32, quantize(GgmlType::F32, &values).expect("f32"));
        };
        let mut norm_rng = Rng(self.seed.wrapping_add(17));
        norm(&mut w, "output_norm.weight", &mut norm_rng);
        if !self.tied_embeddings {
            matrix(&mut w, "output.weight", h, vocab, self.weight_type);
        }
        for l in 0..self.n_layers {
            let name = |t: &str| format!("blk.{l}.{t}.weight");
            norm(&mut w, &name("attn_norm"), &mut norm_rng);
            matrix(&mut w, &name("attn_q"), h, h, self.weight_type);
            matrix(&mut w, &name("attn_k"), h, kv, self.weight_type);
            matrix(&mut w, &name("attn_v"), h, kv, self.weight_type);
            matrix(&mut w, &name("attn_output"), h, h, self.weight_type);
            norm(&mut w, &name("ffn_norm"), &mut norm_rng);
            matrix(&mut w, &name("ffn_gate"), h, f, self.weight_type);
            matrix(&mut w, &name("ffn_up"), h, f, self.weight_type);
            matrix(&mut w, &name("ffn_down"), f, h, self.weight_type);
        }
        w.to_bytes()
    }
}
