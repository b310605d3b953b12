//! Attention of a batch's rows over the paged KV cache: decodes and short prompt chunks go
//! through the paged kernel, long prompt chunks through dense matmuls over their gathered
//! keys and values (Burn's tiled matmul reuses each key across the chunk's queries).

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};

use crate::ModelConfig;
use crate::paged::{BatchBuffer, DenseChunk, PagedKvCache, ScoreRule};

/// The attention of one step: the batch's layout and the masks its dense chunks need.
pub(crate) struct Attention<'a> {
    config: &'a ModelConfig,
    batch: &'a BatchBuffer,
    cache: &'a PagedKvCache,
    /// Per distinct window of the model's layers, a mask per dense chunk.
    masks: Vec<(Option<usize>, Vec<Tensor<3>>)>,
}

impl<'a> Attention<'a> {
    pub fn new(config: &'a ModelConfig, batch: &'a BatchBuffer, cache: &'a PagedKvCache, device: &Device) -> Self {
        let mut windows: Vec<Option<usize>> = config.layers.iter().map(|l| l.window).collect();
        windows.sort_unstable();
        windows.dedup();
        let group = config.n_heads / config.n_kv_heads;
        let masks = if batch.dense.is_empty() {
            Vec::new()
        } else {
            windows.into_iter().map(|window| (window, batch.dense.iter().map(|d| causal_mask(group, d, window, device)).collect())).collect()
        };
        Self { config, batch, cache, masks }
    }

    /// Attention of every row of `q` (`[rows, heads * head_dim]`, RoPE applied) in `layer`,
    /// concatenated in row order.
    pub fn attend(&self, layer: usize, q: Tensor<2>, rule: &ScoreRule) -> Tensor<2> {
        let c = self.config;
        let mut parts = Vec::with_capacity(1 + self.batch.dense.len());
        if self.batch.paged_rows > 0 {
            parts.push(self.cache.attend(layer, q.clone(), c.n_heads, c.head_dim, self.batch, rule));
        }
        if !self.batch.dense.is_empty() {
            let masks = &self.masks.iter().find(|(w, _)| *w == rule.window).expect("a mask per window of the layers").1;
            for (chunk, mask) in self.batch.dense.iter().zip(masks) {
                let (keys, values) = self.cache.gather(layer, self.batch, chunk, rule.first_visible(chunk.start));
                let q = q.clone().slice([chunk.first_row..chunk.first_row + chunk.len]);
                parts.push(self.dense(q, keys, values, mask.clone(), rule));
            }
        }
        if parts.len() == 1 { parts.pop().expect("one part") } else { Tensor::cat(parts, 0) }
    }

    /// Grouped-query attention of one chunk's queries (`[n, heads * head_dim]`) over its
    /// sequence's keys and values (`[context, kv_dim]`). The query heads sharing a KV head
    /// are adjacent, so viewing the queries as `[kv_heads, group * n, head_dim]` lets each
    /// KV head serve its whole group in one matmul, without repeating keys and values.
    fn dense(&self, q: Tensor<2>, keys: Tensor<2>, values: Tensor<2>, mask: Tensor<3>, rule: &ScoreRule) -> Tensor<2> {
        let c = self.config;
        let n = q.dims()[0];
        let context = keys.dims()[0];
        let group = c.n_heads / c.n_kv_heads;
        let per_head = |t: Tensor<2>| t.reshape([context, c.n_kv_heads, c.head_dim]).swap_dims(0, 1);
        let q = q.reshape([n, c.n_heads, c.head_dim]).swap_dims(0, 1).reshape([c.n_kv_heads, group * n, c.head_dim]);
        let mut scores = q.matmul(per_head(keys).transpose()).mul_scalar(rule.scale);
        if let Some(cap) = rule.softcap {
            scores = scores.div_scalar(cap).tanh().mul_scalar(cap);
        }
        let out = softmax(scores + mask, 2).matmul(per_head(values));
        out.reshape([c.n_heads, n, c.head_dim]).swap_dims(0, 1).reshape([n, c.q_dim()])
    }
}

/// Additive mask `[1, group * n, context - first]` of a dense chunk, its keys starting at
/// the first position its first query sees: query `i` sees the positions up to its own,
/// and with a window only its last `window` ones.
fn causal_mask(group: usize, chunk: &DenseChunk, window: Option<usize>, device: &Device) -> Tensor<3> {
    let rule = ScoreRule { scale: 1.0, window, softcap: None };
    let (n, start) = (chunk.len, chunk.start);
    let first = rule.first_visible(start);
    let keys = chunk.context() - first;
    let mut mask = vec![0f32; group * n * keys];
    for g in 0..group {
        for i in 0..n {
            let row = &mut mask[(g * n + i) * keys..(g * n + i + 1) * keys];
            let position = start + i;
            row[..rule.first_visible(position) - first].fill(f32::NEG_INFINITY);
            row[position + 1 - first..].fill(f32::NEG_INFINITY);
        }
    }
    Tensor::from_data(TensorData::new(mask, [1, group * n, keys]), device)
}
