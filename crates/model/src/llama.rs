//! The Llama forward pass on Burn tensors.

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use cinder_gguf::{GgufFile, TensorInfo};

use crate::fused::{rms_norm, rope, silu_gate};
use crate::kernel::{Arg, Template, cube, cube_device, empty, from_cube, launch};
use crate::paged::{BatchBuffer, PagedKvCache, SeqChunk};
use crate::quant::Linear;
use crate::{LlamaConfig, ModelError};

/// One transformer block's weights.
struct Block {
    attn_norm: Tensor<2>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Tensor<2>,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
}

impl Block {
    fn linears(&self) -> [&Linear; 7] {
        [&self.wq, &self.wk, &self.wv, &self.wo, &self.w_gate, &self.w_up, &self.w_down]
    }
}

/// Token embedding rows kept in their GGUF encoding on the host: a lookup dequantizes only
/// the rows it needs, instead of holding the whole table as f32 on the device.
struct HostEmbedding {
    info: TensorInfo,
    data: Vec<u8>,
}

impl HostEmbedding {
    fn rows(&self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        Ok(self.info.dequantize_rows(&self.data, ids.iter().map(|&id| u64::from(id)))?)
    }
}

/// A Llama-architecture model whose weights live on a Burn device.
pub struct Llama {
    config: LlamaConfig,
    device: Device,
    embedding: HostEmbedding,
    blocks: Vec<Block>,
    output_norm: Tensor<2>,
    lm_head: Linear,
    /// RoPE angles' cosines and sines, `[context, head_dim / 2]`.
    rope_cos: Tensor<2>,
    rope_sin: Tensor<2>,
}

/// One sequence's cache: a [`PagedKvCache`] of its own with the identity block table, for
/// callers that run a single sequence ([`generate`](crate::generate), benchmarks, tests).
pub struct KvCache {
    paged: PagedKvCache,
    table: Vec<u32>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// Number of positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Block size of single-sequence caches.
const SINGLE_BLOCK: usize = 16;

impl Llama {
    /// Reads the model in `file` onto `device`. Matrices in a format the quantized kernels
    /// read stay in it; others are dequantized to f32.
    pub fn load(file: &GgufFile, device: &Device) -> Result<Self, ModelError> {
        Self::load_with_progress(file, device, &mut |_, _| {})
    }

    /// [`Llama::load`], calling `progress(done, total)` as layers reach the device.
    pub fn load_with_progress(
        file: &GgufFile,
        device: &Device,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, ModelError> {
        let config = LlamaConfig::from_gguf(file)?;
        guard(|| Self::load_checked(file, device, config, progress))
    }

    fn load_checked(
        file: &GgufFile,
        device: &Device,
        config: LlamaConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, ModelError> {
        let embd = file.tensor("token_embd.weight")?;
        let embedding = HostEmbedding { info: embd.clone(), data: file.tensor_data(embd).to_vec() };
        let head_name = if config.tied_embeddings { "token_embd.weight" } else { "output.weight" };
        let lm_head = Linear::load(file, file.tensor(head_name)?, device)?;
        let norm = |name: &str| -> Result<Tensor<2>, ModelError> {
            let info = file.tensor(name)?;
            let values = file.dequantize(info)?;
            Ok(Tensor::from_data(TensorData::new(values, [1, info.row_len() as usize]), device))
        };
        let mut blocks = Vec::with_capacity(config.n_layers);
        for l in 0..config.n_layers {
            let weight = |name: &str| Linear::load(file, file.tensor(&format!("blk.{l}.{name}.weight"))?, device);
            blocks.push(Block {
                attn_norm: norm(&format!("blk.{l}.attn_norm.weight"))?,
                wq: weight("attn_q")?,
                wk: weight("attn_k")?,
                wv: weight("attn_v")?,
                wo: weight("attn_output")?,
                ffn_norm: norm(&format!("blk.{l}.ffn_norm.weight"))?,
                w_gate: weight("ffn_gate")?,
                w_up: weight("ffn_up")?,
                w_down: weight("ffn_down")?,
            });
            progress(l + 1, config.n_layers);
        }
        let (rope_cos, rope_sin) = rope_tables(&config, device);
        let model = Self {
            output_norm: norm("output_norm.weight")?,
            config,
            device: device.clone(),
            embedding,
            blocks,
            lm_head,
            rope_cos,
            rope_sin,
        };
        // A browser cannot block on the device; its first read waits for the uploads instead.
        #[cfg(not(target_family = "wasm"))]
        model.device.sync().map_err(|e| ModelError::Backend(e.to_string()))?;
        Ok(model)
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes of weights on the device (the token embedding stays on the host).
    pub fn device_weight_bytes(&self) -> usize {
        let norms = (self.blocks.len() * 2 + 1) * self.config.hidden * 4;
        let linears: usize = self.blocks.iter().flat_map(Block::linears).map(Linear::device_bytes).sum();
        norms + linears + self.lm_head.device_bytes()
    }

    /// An empty cache for up to `capacity` positions (at most the context length).
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache, ModelError> {
        if capacity > self.config.context_length {
            return Err(ModelError::CacheFull { needed: capacity, capacity: self.config.context_length });
        }
        let blocks = capacity.div_ceil(SINGLE_BLOCK).max(1);
        let paged = self.new_paged_cache(blocks, SINGLE_BLOCK)?;
        Ok(KvCache { paged, table: (0..blocks as u32).collect(), len: 0, capacity })
    }

    /// A KV pool of `num_blocks` blocks of `block_size` token slots, shared by the sequences
    /// of [`Llama::forward_batch`].
    pub fn new_paged_cache(&self, num_blocks: usize, block_size: usize) -> Result<PagedKvCache, ModelError> {
        let c = &self.config;
        guard(|| PagedKvCache::new(&self.cube_device(), c.n_layers, c.n_kv_heads * c.head_dim, num_blocks, block_size))
    }

    /// Runs `tokens` (the positions after those already in `cache`) through the model,
    /// appends their keys and values to `cache`, and returns the logits of the last token.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, ModelError> {
        let needed = cache.len + tokens.len();
        if needed > cache.capacity {
            return Err(ModelError::CacheFull { needed, capacity: cache.capacity });
        }
        let chunk = SeqChunk { tokens, start: cache.len, blocks: &cache.table, logits: true };
        let logits = self.forward_batch(&[chunk], &mut cache.paged)?.pop().expect("one chunk asks for logits");
        cache.len = needed;
        Ok(logits)
    }

    /// Runs the chunks of several sequences as one batch: writes their keys and values into
    /// `cache` through their block tables and returns, for each chunk that asks, the logits
    /// of its last token, in order.
    pub fn forward_batch(&self, chunks: &[SeqChunk], cache: &mut PagedKvCache) -> Result<Vec<Vec<f32>>, ModelError> {
        match self.launch_batch(chunks, cache)?.read()? {
            LogitRows::Full(rows) => Ok(rows),
            LogitRows::TopK(_) => unreachable!("launch_batch reads whole rows unless asked for top-k"),
        }
    }

    /// [`Llama::forward_batch`] without waiting: the work is queued on the device and the
    /// logits are read later, with [`PendingLogits::read`] or, where the thread must not
    /// block (a browser), [`PendingLogits::read_async`].
    pub fn launch_batch(&self, chunks: &[SeqChunk], cache: &mut PagedKvCache) -> Result<PendingLogits, ModelError> {
        self.check_batch(chunks, cache)?;
        let order = BatchBuffer::order(chunks);
        let laid_out: Vec<&SeqChunk> = order.iter().map(|&i| &chunks[i]).collect();
        let tokens: Vec<u32> = laid_out.iter().flat_map(|c| c.tokens.iter().copied()).collect();
        let embedded = self.embedding.rows(&tokens)?;
        // The last row of each chunk that wants logits, by chunk index.
        let mut last_rows = Vec::new();
        let mut row = 0;
        for (&index, chunk) in order.iter().zip(&laid_out) {
            row += chunk.tokens.len();
            if chunk.logits {
                last_rows.push((index, row - 1));
            }
        }
        last_rows.sort_unstable();
        let rows: Vec<usize> = last_rows.iter().map(|&(_, row)| row).collect();
        let vocab = self.config.vocab_size;
        guard(|| {
            let x = Tensor::<2>::from_data(TensorData::new(embedded, [tokens.len(), self.config.hidden]), &self.device);
            let batch = BatchBuffer::new(&self.cube_device(), &laid_out, cache.block_size());
            // Without logits to read, the queued work runs ahead of the next step's.
            let logits = self.forward_rows(x, &batch, cache, &rows);
            Ok(PendingLogits { logits, vocab, top_k: None })
        })
    }

    /// Copies KV blocks `(source, destination)` (copy-on-write of shared blocks).
    pub fn copy_blocks(&self, cache: &mut PagedKvCache, pairs: &[(u32, u32)]) -> Result<(), ModelError> {
        let limit = cache.num_blocks() as u32;
        if let Some(bad) = pairs.iter().find(|(s, d)| *s >= limit || *d >= limit) {
            return Err(ModelError::InvalidParameter(format!("block copy {bad:?} is outside the pool of {limit} blocks")));
        }
        guard(|| {
            cache.copy(pairs);
            Ok(())
        })
    }

    fn check_batch(&self, chunks: &[SeqChunk], cache: &PagedKvCache) -> Result<(), ModelError> {
        let invalid = |m: String| Err(ModelError::InvalidParameter(m));
        if chunks.is_empty() {
            return invalid("no tokens to run".into());
        }
        for chunk in chunks {
            if chunk.tokens.is_empty() {
                return invalid("a sequence in the batch has no tokens to run".into());
            }
            if let Some(&bad) = chunk.tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
                return invalid(format!("token id {bad} is outside the vocabulary of {} tokens", self.config.vocab_size));
            }
            let end = chunk.start + chunk.tokens.len();
            if end > self.config.context_length {
                return Err(ModelError::CacheFull { needed: end, capacity: self.config.context_length });
            }
            let covered = chunk.blocks.len() * cache.block_size();
            if end > covered {
                return Err(ModelError::CacheFull { needed: end, capacity: covered });
            }
            if let Some(bad) = chunk.blocks.iter().find(|&&b| b as usize >= cache.num_blocks()) {
                return invalid(format!("block {bad} is outside the pool of {} blocks", cache.num_blocks()));
            }
        }
        Ok(())
    }

    /// Attention of every row: the paged kernel for decodes and short chunks, dense matmuls
    /// over gathered keys for long chunks, concatenated in row order.
    fn attention(&self, layer: usize, q: Tensor<2>, batch: &BatchBuffer, cache: &PagedKvCache, masks: &[Tensor<3>]) -> Tensor<2> {
        let c = &self.config;
        let mut parts = Vec::with_capacity(1 + batch.dense.len());
        if batch.paged_rows > 0 {
            parts.push(cache.attend(layer, q.clone(), c.n_heads, c.head_dim, batch));
        }
        for (chunk, mask) in batch.dense.iter().zip(masks) {
            let (keys, values) = cache.gather(layer, batch, chunk);
            let q = q.clone().slice([chunk.first_row..chunk.first_row + chunk.len]);
            parts.push(self.dense_attention(q, keys, values, mask.clone()));
        }
        if parts.len() == 1 { parts.pop().expect("one part") } else { Tensor::cat(parts, 0) }
    }

    /// Grouped-query attention of one chunk's queries (`[n, heads * head_dim]`) over its
    /// sequence's keys and values (`[context, kv_dim]`). The query heads sharing a KV head
    /// are adjacent, so viewing the queries as `[kv_heads, group * n, head_dim]` lets each
    /// KV head serve its whole group in one matmul, without repeating keys and values.
    fn dense_attention(&self, q: Tensor<2>, keys: Tensor<2>, values: Tensor<2>, mask: Tensor<3>) -> Tensor<2> {
        let c = &self.config;
        let n = q.dims()[0];
        let context = keys.dims()[0];
        let group = c.n_heads / c.n_kv_heads;
        let per_head = |t: Tensor<2>| t.reshape([context, c.n_kv_heads, c.head_dim]).swap_dims(0, 1);
        let q = q.reshape([n, c.n_heads, c.head_dim]).swap_dims(0, 1).reshape([c.n_kv_heads, group * n, c.head_dim]);
        let scores = q.matmul(per_head(keys).transpose()).mul_scalar(1.0 / (c.head_dim as f32).sqrt()) + mask;
        let out = softmax(scores, 2).matmul(per_head(values));
        out.reshape([c.n_heads, n, c.head_dim]).swap_dims(0, 1).reshape([n, c.hidden])
    }

    /// Additive mask `[1, group * n, start + n]`: query `i` of the chunk sees positions up to
    /// `start + i`.
    fn causal_mask(&self, n: usize, start: usize) -> Tensor<3> {
        let group = self.config.n_heads / self.config.n_kv_heads;
        let total = start + n;
        let mut mask = vec![0f32; group * n * total];
        for g in 0..group {
            for i in 0..n {
                let row = (g * n + i) * total;
                mask[row + start + i + 1..row + total].fill(f32::NEG_INFINITY);
            }
        }
        Tensor::from_data(TensorData::new(mask, [1, group * n, total]), &self.device)
    }

    fn cube_device(&self) -> burn_cubecl::CubeDevice {
        cube_device(&self.device).expect("models are loaded on a wgpu device")
    }

    /// The layers over a batch's rows; returns the logits of rows `logit_rows`, if any.
    fn forward_rows(
        &self,
        mut x: Tensor<2>,
        batch: &BatchBuffer,
        cache: &PagedKvCache,
        logit_rows: &[usize],
    ) -> Option<Tensor<2>> {
        let c = &self.config;
        let n = x.dims()[0];
        let masks: Vec<Tensor<3>> = batch.dense.iter().map(|d| self.causal_mask(d.len, d.start)).collect();
        for (l, block) in self.blocks.iter().enumerate() {
            let h = rms_norm(x.clone(), &block.attn_norm, c.rms_eps);
            let rotate = |x: Tensor<2>, heads| {
                rope(x.reshape([n, heads, c.head_dim]), &self.rope_cos, &self.rope_sin, batch).reshape([n, heads * c.head_dim])
            };
            let q = rotate(block.wq.forward(h.clone()), c.n_heads);
            let k = rotate(block.wk.forward(h.clone()), c.n_kv_heads);
            cache.write(l, k, block.wv.forward(h), batch);
            let attn = self.attention(l, q, batch, cache, &masks);
            x = x + block.wo.forward(attn);

            let h = rms_norm(x.clone(), &block.ffn_norm, c.rms_eps);
            let gate = block.w_gate.forward(h.clone());
            x = x + block.w_down.forward(silu_gate(gate, block.w_up.forward(h)));
        }
        let last = if logit_rows.is_empty() {
            return None;
        } else if logit_rows.len() == n {
            x
        } else if let [row] = logit_rows {
            x.slice([*row..*row + 1])
        } else {
            let rows: Vec<i64> = logit_rows.iter().map(|&r| r as i64).collect();
            x.select(0, Tensor::<1, Int>::from_data(TensorData::new(rows, [logit_rows.len()]), &self.device))
        };
        Some(self.lm_head.forward(rms_norm(last, &self.output_norm, c.rms_eps)))
    }
}

fn rope_tables(config: &LlamaConfig, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let half = config.head_dim / 2;
    let thetas: Vec<f64> =
        (0..half).map(|i| (config.rope_base as f64).powf(-2.0 * i as f64 / config.head_dim as f64)).collect();
    let mut cos = Vec::with_capacity(config.context_length * half);
    let mut sin = Vec::with_capacity(config.context_length * half);
    for pos in 0..config.context_length {
        for &theta in &thetas {
            let angle = pos as f64 * theta;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    let shape = [config.context_length, half];
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}

/// Logits queued on the device by [`Llama::launch_batch`], one row per chunk that asked.
#[must_use = "the logits are only computed once read"]
pub struct PendingLogits {
    /// `[rows, vocab]`, or `[rows, 2k]` candidates once [`PendingLogits::top_k`] has run.
    pub(crate) logits: Option<Tensor<2>>,
    pub(crate) vocab: usize,
    /// The `k` of [`PendingLogits::top_k`], once it has run.
    pub(crate) top_k: Option<usize>,
}

/// The most candidates [`PendingLogits::top_k`] keeps per row.
pub const MAX_DEVICE_TOP_K: usize = 64;

/// What a step reads back.
#[derive(Debug, Clone, PartialEq)]
pub enum LogitRows {
    /// Each row's logits.
    Full(Vec<Vec<f32>>),
    /// Each row's best `(token, logit)` pairs, best first, picked on the device
    /// ([`PendingLogits::top_k`]).
    TopK(Vec<Vec<(u32, f32)>>),
}

impl PendingLogits {
    /// Keeps each row's `k` best logits among the first `limit` on the device, best first,
    /// equal logits in token order (as a CPU sort ranks them), NaN dropped: `k = 1` is the
    /// greedy token. A read then moves `2k` numbers per row instead of the vocabulary.
    /// `k` is rounded up to a power of two (fewer kernel variants) and at most
    /// [`MAX_DEVICE_TOP_K`].
    pub fn top_k(mut self, k: usize, limit: usize) -> Self {
        let k = k.clamp(1, MAX_DEVICE_TOP_K).next_power_of_two();
        if let Some(logits) = self.logits.take() {
            let [rows, _] = logits.dims();
            let logits = cube(logits);
            let best = empty(&logits.device, [rows, 2 * k]);
            let template = Template {
                name: "top_k",
                source: include_str!("../../../shaders/top_k.wgsl"),
                variant: ("", k as u32),
                values: &|| vec![("K", k.to_string())],
                workgroup: 64,
            };
            let info = [self.vocab as u32, limit.min(self.vocab) as u32];
            launch(&logits.device, &template, [rows as u32, 1, 1], &[Arg::Read(&logits.handle), Arg::Write(&best.handle)], &info);
            self.logits = Some(from_cube(best));
        }
        self.top_k = Some(k);
        self
    }

    /// Waits for the device and returns the rows.
    pub fn read(mut self) -> Result<LogitRows, ModelError> {
        let Some(logits) = self.logits.take() else { return Ok(self.rows(Vec::new())) };
        guard(|| Ok(self.rows(logits.try_into_vec_as::<f32>().map_err(|e| ModelError::Backend(format!("{e:?}")))?)))
    }

    /// [`PendingLogits::read`] without blocking the thread.
    pub async fn read_async(mut self) -> Result<LogitRows, ModelError> {
        let Some(logits) = self.logits.take() else { return Ok(self.rows(Vec::new())) };
        let data = logits.into_data_async().await.map_err(|e| ModelError::Backend(format!("{e:?}")))?;
        Ok(self.rows(data.try_into_vec::<f32>().map_err(|e| ModelError::Backend(format!("{e:?}")))?))
    }

    fn rows(&self, flat: Vec<f32>) -> LogitRows {
        match self.top_k {
            Some(k) => LogitRows::TopK(
                flat.chunks(2 * k)
                    .map(|row| row.chunks(2).filter(|pair| pair[0] >= 0.0).map(|pair| (pair[0] as u32, pair[1])).collect())
                    .collect(),
            ),
            None => LogitRows::Full(flat.chunks(self.vocab).map(<[f32]>::to_vec).collect()),
        }
    }
}

/// Runs `f`, turning a panic inside the backend (an allocation failure, a lost device) into
/// an error, so that one failed request cannot take a server down.
fn guard<T>(f: impl FnOnce() -> Result<T, ModelError>) -> Result<T, ModelError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| Err(ModelError::Backend(panic_message(panic.as_ref()))))
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "the device backend panicked".to_owned())
}
