//! A plain CPU forward pass in f32, written for clarity rather than speed. Device code is
//! tested against it: same weights (dequantized), same description ([`ModelConfig`]), the
//! same KV cache types (keys and values as stored and read back), loops instead of kernels.

use std::collections::HashMap;
use std::sync::Arc;

use cinder_gguf::GgufFile;

use crate::arch::{FfnLayout, GlobalWeight, LayerWeight, RopeLayout};
use crate::lora::LoraAdapter;
use crate::model::rope_factors;
use crate::{ModelConfig, ModelError};

/// The reference model: dequantized weights in GGUF layout (`rows = outputs`).
pub struct ReferenceModel {
    config: ModelConfig,
    tensors: HashMap<String, Vec<f32>>,
    /// Each RoPE's frequency divisors, if it has them.
    rope_factors: Vec<Option<Vec<f32>>>,
    /// A LoRA adapter every projection adds, and its scale.
    adapter: Option<(Arc<LoraAdapter>, f32)>,
}

/// Keys and values per layer, position-major: `[position][kv_heads * head_dim]`.
#[derive(Default, Clone)]
pub struct ReferenceCache {
    keys: Vec<Vec<Vec<f32>>>,
    values: Vec<Vec<Vec<f32>>>,
}

impl ReferenceModel {
    pub fn load(file: &GgufFile) -> Result<Self, ModelError> {
        let config = ModelConfig::from_gguf(file)?;
        let mut tensors = HashMap::new();
        for (name, _) in config.expected_tensors() {
            tensors.insert(name.clone(), file.dequantize(file.tensor(&name)?)?);
        }
        let rope_factors = config.ropes.iter().map(|r| rope_factors(file, r.factors)).collect::<Result<_, _>>()?;
        Ok(Self { config, tensors, rope_factors, adapter: None })
    }

    /// Keys and values are kept as a cache of `types` reads them back
    /// ([`ModelConfig::set_kv_types`]; f16 unless set).
    pub fn set_kv_types(&mut self, types: crate::KvTypes) -> Result<(), ModelError> {
        self.config.set_kv_types(types)
    }

    /// Runs with `adapter` at `scale` (`None`: the base model alone).
    pub fn set_adapter(&mut self, adapter: Option<(Arc<LoraAdapter>, f32)>) {
        self.adapter = adapter;
    }

    fn t(&self, name: &str) -> &[f32] {
        &self.tensors[name]
    }

    /// `W x (+ b)` for a block's projection, or for rows `rows` of a fused one.
    fn project(&self, layer: usize, weight: LayerWeight, rows: std::ops::Range<usize>, x: &[f32]) -> Vec<f32> {
        let w = &self.t(&weight.name(layer))[rows.start * x.len()..rows.end * x.len()];
        let mut y = matvec(w, x);
        if let Some(pair) = self.adapter.as_ref().and_then(|(a, scale)| Some((a.pair(layer, weight)?, scale))) {
            let delta: Vec<f32> = pair.0.product(x, rows.clone()).iter().map(|v| v * pair.1).collect();
            add(&mut y, &delta);
        }
        if let Some(bias) = weight.bias().filter(|&b| self.config.has(b)) {
            add(&mut y, &self.t(&bias.name(layer))[rows]);
        }
        y
    }

    /// Logits of the last of `tokens`, continuing from `cache`.
    pub fn forward(&self, tokens: &[u32], cache: &mut ReferenceCache) -> Vec<f32> {
        let c = &self.config;
        let last = self.layers(tokens, cache).pop().unwrap_or_default();
        let normed = rms_norm(&last, self.t(GlobalWeight::OutputNorm.name()), c.rms_eps);
        let head = if c.tied_embeddings { GlobalWeight::TokenEmbedding } else { GlobalWeight::Output };
        let mut logits = matvec(self.t(head.name()), &normed);
        if c.output_bias {
            add(&mut logits, self.t(GlobalWeight::OutputBias.name()));
        }
        if let Some(cap) = c.final_softcap {
            logits.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        }
        logits
    }

    /// Each token's row after the final norm: what embeddings pool.
    pub fn normed_rows(&self, tokens: &[u32], cache: &mut ReferenceCache) -> Vec<Vec<f32>> {
        let c = &self.config;
        let rows = self.layers(tokens, cache);
        rows.iter().map(|x| rms_norm(x, self.t(GlobalWeight::OutputNorm.name()), c.rms_eps)).collect()
    }

    /// Each token's row after the last layer.
    fn layers(&self, tokens: &[u32], cache: &mut ReferenceCache) -> Vec<Vec<f32>> {
        let c = &self.config;
        if cache.keys.is_empty() {
            cache.keys = vec![Vec::new(); c.n_layers];
            cache.values = vec![Vec::new(); c.n_layers];
        }
        let (q_dim, kv_dim, f) = (c.q_dim(), c.kv_dim(), c.ffn_hidden);
        let mut rows = Vec::new();
        for &token in tokens {
            let h = c.hidden;
            let embedding = &self.t(GlobalWeight::TokenEmbedding.name())[token as usize * h..(token as usize + 1) * h];
            let mut x: Vec<f32> = embedding.iter().map(|v| v * c.embedding_scale).collect();
            for l in 0..c.n_layers {
                let norm = |w: LayerWeight, v: &[f32]| rms_norm(v, self.t(&w.name(l)), c.rms_eps);
                let pos = cache.keys[l].len();
                let normed = norm(LayerWeight::AttnNorm, &x);
                let (mut q, mut k, v) = if c.has(LayerWeight::Qkv) {
                    let all = self.project(l, LayerWeight::Qkv, 0..q_dim + 2 * kv_dim, &normed);
                    (all[..q_dim].to_vec(), all[q_dim..q_dim + kv_dim].to_vec(), all[q_dim + kv_dim..].to_vec())
                } else {
                    (
                        self.project(l, LayerWeight::Q, 0..q_dim, &normed),
                        self.project(l, LayerWeight::K, 0..kv_dim, &normed),
                        self.project(l, LayerWeight::V, 0..kv_dim, &normed),
                    )
                };
                if c.arch.qk_norm {
                    q = q.chunks(c.head_dim).flat_map(|head| norm(LayerWeight::QNorm, head)).collect();
                    k = k.chunks(c.head_dim).flat_map(|head| norm(LayerWeight::KNorm, head)).collect();
                }
                let layer = c.layers[l];
                self.rope(&mut q, pos, layer.rope);
                self.rope(&mut k, pos, layer.rope);
                cache.keys[l].push(c.kv_types.keys.stored(&k));
                cache.values[l].push(c.kv_types.values.stored(&v));
                let first = layer.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let attn = attention(&q, &cache.keys[l][first..], &cache.values[l][first..], c);
                let mut out = self.project(l, LayerWeight::AttnOut, 0..h, &attn);
                if c.arch.post_norms {
                    out = norm(LayerWeight::PostAttnNorm, &out);
                }
                add(&mut x, &out);

                let normed = norm(LayerWeight::FfnNorm, &x);
                let (gate, up) = match c.arch.ffn {
                    FfnLayout::Separate => (
                        self.project(l, LayerWeight::Gate, 0..f, &normed),
                        self.project(l, LayerWeight::Up, 0..f, &normed),
                    ),
                    FfnLayout::FusedGateUp => {
                        let both = self.project(l, LayerWeight::Up, 0..2 * f, &normed);
                        (both[..f].to_vec(), both[f..].to_vec())
                    }
                };
                let act: Vec<f32> = gate.iter().zip(&up).map(|(&g, u)| crate::ops::activation(c.arch.activation)(g) * u).collect();
                let mut down = self.project(l, LayerWeight::Down, 0..h, &act);
                if c.arch.post_norms {
                    down = norm(LayerWeight::PostFfnNorm, &down);
                }
                add(&mut x, &down);
            }
            rows.push(x);
        }
        rows
    }

    fn rope(&self, x: &mut [f32], pos: usize, rope: usize) {
        let c = &self.config;
        let spec = &c.ropes[rope];
        // One position's row of the same tables the device reads.
        let (cos, sin) = spec.tables(c.head_dim, pos + 1, self.rope_factors[rope].as_deref());
        let half = c.head_dim / 2;
        let (cos, sin) = (&cos[pos * half..], &sin[pos * half..]);
        for head in x.chunks_exact_mut(c.head_dim) {
            for i in 0..half {
                let (a, b) = match spec.layout {
                    RopeLayout::Adjacent => (2 * i, 2 * i + 1),
                    RopeLayout::Halves => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x0 * sin[i] + x1 * cos[i];
            }
        }
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

/// One query row's attention (all heads) over the keys and values it sees.
pub(crate) fn attention(q: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>], c: &ModelConfig) -> Vec<f32> {
    let d = c.head_dim;
    let group = c.n_heads / c.n_kv_heads;
    let mut out = vec![0f32; c.n_heads * d];
    for head in 0..c.n_heads {
        let kv = head / group;
        let qh = &q[head * d..(head + 1) * d];
        let scores: Vec<f32> = keys
            .iter()
            .map(|k| {
                let s = qh.iter().zip(&k[kv * d..(kv + 1) * d]).map(|(a, b)| a * b).sum::<f32>() * c.query_scale;
                c.attention_softcap.map_or(s, |cap| cap * (s / cap).tanh())
            })
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
