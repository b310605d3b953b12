//! A plain CPU forward pass in f32, written for clarity rather than speed. Device code is
//! tested against it: same weights (dequantized), same math, loops instead of kernels.

use cinder_gguf::GgufFile;

use crate::{LlamaConfig, ModelError};

/// The reference model: dequantized weights in GGUF layout (`rows = outputs`).
pub struct ReferenceLlama {
    config: LlamaConfig,
    tensors: std::collections::HashMap<String, Vec<f32>>,
}

/// Keys and values per layer, position-major: `[position][kv_heads * head_dim]`.
#[derive(Default)]
pub struct ReferenceCache {
    keys: Vec<Vec<Vec<f32>>>,
    values: Vec<Vec<Vec<f32>>>,
}

impl ReferenceLlama {
    pub fn load(file: &GgufFile) -> Result<Self, ModelError> {
        let config = LlamaConfig::from_gguf(file)?;
        let mut tensors = std::collections::HashMap::new();
        for (name, _) in config.expected_tensors() {
            tensors.insert(name.clone(), file.dequantize(file.tensor(&name)?)?);
        }
        Ok(Self { config, tensors })
    }

    fn t(&self, name: &str) -> &[f32] {
        &self.tensors[name]
    }

    /// Logits of the last of `tokens`, continuing from `cache`.
    pub fn forward(&self, tokens: &[u32], cache: &mut ReferenceCache) -> Vec<f32> {
        let c = &self.config;
        if cache.keys.is_empty() {
            cache.keys = vec![Vec::new(); c.n_layers];
            cache.values = vec![Vec::new(); c.n_layers];
        }
        let mut last = Vec::new();
        for &token in tokens {
            let h = c.hidden;
            let mut x = self.t("token_embd.weight")[token as usize * h..(token as usize + 1) * h].to_vec();
            for l in 0..c.n_layers {
                let w = |name: &str| self.t(&format!("blk.{l}.{name}.weight"));
                let pos = cache.keys[l].len();
                let normed = rms_norm(&x, w("attn_norm"), c.rms_eps);
                let mut q = matvec(w("attn_q"), &normed);
                let mut k = matvec(w("attn_k"), &normed);
                let v = matvec(w("attn_v"), &normed);
                rope(&mut q, pos, c);
                rope(&mut k, pos, c);
                cache.keys[l].push(k);
                cache.values[l].push(v);
                let attn = attention(&q, &cache.keys[l], &cache.values[l], c);
                add(&mut x, &matvec(w("attn_output"), &attn));
                let normed = rms_norm(&x, w("ffn_norm"), c.rms_eps);
                let gate = matvec(w("ffn_gate"), &normed);
                let up = matvec(w("ffn_up"), &normed);
                let act: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
                add(&mut x, &matvec(w("ffn_down"), &act));
            }
            last = x;
        }
        let normed = rms_norm(&last, self.t("output_norm.weight"), c.rms_eps);
        let head = if c.tied_embeddings { "token_embd.weight" } else { "output.weight" };
        matvec(self.t(head), &normed)
    }
}

fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
    w.chunks_exact(x.len()).map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mean = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| v * scale * w).collect()
}

fn rope(x: &mut [f32], pos: usize, c: &LlamaConfig) {
    for head in x.chunks_exact_mut(c.head_dim) {
        for i in 0..c.head_dim / 2 {
            let theta = (c.rope_base as f64).powf(-2.0 * i as f64 / c.head_dim as f64);
            let (sin, cos) = (pos as f64 * theta).sin_cos();
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = a * cos as f32 - b * sin as f32;
            head[2 * i + 1] = a * sin as f32 + b * cos as f32;
        }
    }
}

fn attention(q: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>], c: &LlamaConfig) -> Vec<f32> {
    let d = c.head_dim;
    let group = c.n_heads / c.n_kv_heads;
    let mut out = vec![0f32; c.n_heads * d];
    for head in 0..c.n_heads {
        let kv = head / group;
        let qh = &q[head * d..(head + 1) * d];
        let scores: Vec<f32> = keys
            .iter()
            .map(|k| qh.iter().zip(&k[kv * d..(kv + 1) * d]).map(|(a, b)| a * b).sum::<f32>() / (d as f32).sqrt())
            .collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        for (p, v) in exp.iter().zip(values) {
            for (o, x) in out[head * d..(head + 1) * d].iter_mut().zip(&v[kv * d..(kv + 1) * d]) {
                *o += p / sum * x;
            }
        }
    }
    out
}
