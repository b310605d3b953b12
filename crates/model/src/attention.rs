//! Attention of a batch's rows over the paged KV cache: decodes and short prompt chunks go
//! through the paged kernel (one workgroup per query row), long prompt chunks through a
//! flash-attention kernel (many queries per workgroup, each key loaded once for all of
//! them, no score matrix). Both write into one output, each its own rows.

use burn::tensor::Tensor;

use crate::ModelConfig;
use crate::kernel::{cube, empty, from_cube};
use crate::paged::{BatchBuffer, PagedKvCache, ScoreRule};

/// The attention of one step over a batch's layout.
pub(crate) struct Attention<'a> {
    config: &'a ModelConfig,
    batch: &'a BatchBuffer,
    cache: &'a PagedKvCache,
}

impl<'a> Attention<'a> {
    pub fn new(config: &'a ModelConfig, batch: &'a BatchBuffer, cache: &'a PagedKvCache) -> Self {
        Self { config, batch, cache }
    }

    /// Attention of every row of `q` (`[rows, heads * head_dim]`, RoPE applied) in `layer`.
    pub fn attend(&self, layer: usize, q: Tensor<2>, rule: &ScoreRule) -> Tensor<2> {
        let c = self.config;
        let q = cube(q);
        let out = empty(&q.device, [self.batch.rows, c.q_dim()]);
        let shape = (c.n_heads, c.head_dim);
        if self.batch.paged_rows > 0 {
            self.cache.attend(layer, &q, &out, shape, self.batch, rule);
        }
        for chunk in &self.batch.long {
            self.cache.flash_attend(layer, &q, &out, shape, self.batch, chunk, rule);
        }
        from_cube(out)
    }
}
