//! A language model on Burn tensors: the forward pass of every supported architecture,
//! driven by its description ([`ModelConfig`], [`crate::arch`]).

use burn::tensor::{Device, Int, Tensor, TensorData};
use cinder_gguf::{GgufFile, TensorInfo};

use crate::arch::{FfnLayout, GlobalWeight, LayerWeight, RopeLayout};
use crate::attention::{Attention, ScoreRule};
use crate::fused::{gated, rms_norm, rope};
use crate::kernel::cube_device;
use crate::logits::PendingLogits;
use crate::paged::{BatchBuffer, PagedKvCache, SeqChunk};
use crate::linear::Linear;
use crate::quant::QuantMatrix;
use crate::error::guard;
use crate::{LogitRows, ModelConfig, ModelError};

/// A matrix and its optional bias: `y = x W^T + b`.
struct Projection {
    weight: Linear,
    /// `[1, outputs]`.
    bias: Option<Tensor<2>>,
}

impl Projection {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let y = self.weight.forward(x);
        match &self.bias {
            Some(b) => y + b.clone(),
            None => y,
        }
    }

    /// `forward(x) + residual`: one dispatch where there is no bias.
    fn forward_add(&self, x: Tensor<2>, residual: Tensor<2>) -> Tensor<2> {
        match &self.bias {
            Some(_) => self.forward(x) + residual,
            None => self.weight.forward_add(x, residual),
        }
    }

    fn device_bytes(&self) -> usize {
        self.weight.device_bytes() + self.bias.as_ref().map_or(0, |b| b.shape().num_elements() * 4)
    }
}

/// One transformer block's weights; the optional ones are those of its architecture's
/// variant.
struct Block {
    attn_norm: Tensor<2>,
    q: Projection,
    k: Projection,
    v: Projection,
    q_norm: Option<Tensor<2>>,
    k_norm: Option<Tensor<2>>,
    out: Projection,
    post_attn_norm: Option<Tensor<2>>,
    ffn_norm: Tensor<2>,
    gate: Projection,
    up: Projection,
    down: Projection,
    post_ffn_norm: Option<Tensor<2>>,
}

impl Block {
    fn device_bytes(&self) -> usize {
        let vectors = [Some(&self.attn_norm), self.q_norm.as_ref(), self.k_norm.as_ref(), self.post_attn_norm.as_ref(), Some(&self.ffn_norm), self.post_ffn_norm.as_ref()];
        let vector_bytes: usize = vectors.into_iter().flatten().map(|t| t.shape().num_elements() * 4).sum();
        let projections = [&self.q, &self.k, &self.v, &self.out, &self.gate, &self.up, &self.down];
        vector_bytes + projections.iter().map(|p| p.device_bytes()).sum::<usize>()
    }
}

/// Reads one model's tensors onto the device by their role.
struct Loader<'a> {
    file: &'a GgufFile,
    config: &'a ModelConfig,
    device: &'a Device,
}

impl Loader<'_> {
    /// A vector (norm weight or bias) as `[1, len]`, rows `range` of it if given.
    fn vector(&self, name: &str, range: Option<std::ops::Range<usize>>) -> Result<Tensor<2>, ModelError> {
        let mut values = self.file.dequantize(self.file.tensor(name)?)?;
        // Norms and biases are small and scale everything after them: a broken one would
        // only show as garbage output, so it is refused here.
        if values.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite(name.to_owned()));
        }
        if let Some(range) = range {
            values = values[range].to_vec();
        }
        let len = values.len();
        Ok(Tensor::from_data(TensorData::new(values, [1, len]), self.device))
    }

    fn layer_vector(&self, layer: usize, weight: LayerWeight) -> Result<Option<Tensor<2>>, ModelError> {
        self.config.has(weight).then(|| self.vector(&weight.name(layer), None)).transpose()
    }

    /// The projections stored as consecutive row ranges of `weight` (one, or the parts of a
    /// fused matrix), with their biases.
    fn projections<const N: usize>(&self, layer: usize, weight: LayerWeight, widths: [usize; N]) -> Result<[Projection; N], ModelError> {
        let info = self.file.tensor(&weight.name(layer))?;
        let bias = weight.bias().filter(|&b| self.config.has(b));
        let mut parts = Vec::with_capacity(N);
        let mut start = 0;
        for width in widths {
            let rows = start..start + width;
            start += width;
            parts.push(Projection {
                weight: Linear::load_rows(self.file, info, rows.clone(), self.device)?,
                bias: bias.map(|b| self.vector(&b.name(layer), Some(rows))).transpose()?,
            });
        }
        Ok(parts.try_into().unwrap_or_else(|_| unreachable!("one part per width")))
    }

    fn block(&self, l: usize) -> Result<Block, ModelError> {
        let c = self.config;
        let [q, k, v] = if c.has(LayerWeight::Qkv) {
            self.projections(l, LayerWeight::Qkv, [c.q_dim(), c.kv_dim(), c.kv_dim()])?
        } else {
            let [q] = self.projections(l, LayerWeight::Q, [c.q_dim()])?;
            let [k] = self.projections(l, LayerWeight::K, [c.kv_dim()])?;
            let [v] = self.projections(l, LayerWeight::V, [c.kv_dim()])?;
            [q, k, v]
        };
        let [gate, up] = match c.arch.ffn {
            FfnLayout::Separate => {
                let [gate] = self.projections(l, LayerWeight::Gate, [c.ffn_hidden])?;
                let [up] = self.projections(l, LayerWeight::Up, [c.ffn_hidden])?;
                [gate, up]
            }
            FfnLayout::FusedGateUp => self.projections(l, LayerWeight::Up, [c.ffn_hidden, c.ffn_hidden])?,
        };
        let [out] = self.projections(l, LayerWeight::AttnOut, [c.hidden])?;
        let [down] = self.projections(l, LayerWeight::Down, [c.hidden])?;
        let required = |w: LayerWeight| self.vector(&w.name(l), None);
        Ok(Block {
            attn_norm: required(LayerWeight::AttnNorm)?,
            q,
            k,
            v,
            q_norm: self.layer_vector(l, LayerWeight::QNorm)?,
            k_norm: self.layer_vector(l, LayerWeight::KNorm)?,
            out,
            post_attn_norm: self.layer_vector(l, LayerWeight::PostAttnNorm)?,
            ffn_norm: required(LayerWeight::FfnNorm)?,
            gate,
            up,
            down,
            post_ffn_norm: self.layer_vector(l, LayerWeight::PostFfnNorm)?,
        })
    }
}

/// Token embedding rows kept in their GGUF encoding on the host: a lookup dequantizes only
/// the rows it needs, instead of holding the whole table as f32 on the device.
struct HostEmbedding {
    info: TensorInfo,
    data: Vec<u8>,
    scale: f32,
}

impl HostEmbedding {
    fn rows(&self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        let mut rows = self.info.dequantize_rows(&self.data, ids.iter().map(|&id| u64::from(id)))?;
        if self.scale != 1.0 {
            rows.iter_mut().for_each(|v| *v *= self.scale);
        }
        Ok(rows)
    }
}

/// A RoPE's cos / sin tables on the device.
struct DeviceRope {
    layout: RopeLayout,
    cos: Tensor<2>,
    sin: Tensor<2>,
}

/// The factors a RoPE divides its frequencies by, read from the file.
pub(crate) fn rope_factors(file: &GgufFile, factors: Option<GlobalWeight>) -> Result<Option<Vec<f32>>, ModelError> {
    factors.map(|w| Ok(file.dequantize(file.tensor(w.name())?)?)).transpose()
}

/// A language model whose weights live on a Burn device.
pub struct Model {
    config: ModelConfig,
    device: Device,
    embedding: HostEmbedding,
    blocks: Vec<Block>,
    output_norm: Tensor<2>,
    lm_head: Projection,
    ropes: Vec<DeviceRope>,
}

/// One sequence's cache: a [`PagedKvCache`] of its own, each layer group with its own
/// consecutive blocks, for callers that run a single sequence (tests, parity checks).
pub struct KvCache {
    paged: PagedKvCache,
    tables: Vec<Vec<u32>>,
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

impl Model {
    /// Reads the model in `file` onto `device`. Matrices in a format the quantized kernels
    /// read stay in it; others are dequantized to f32.
    pub fn load(file: &GgufFile, device: &Device) -> Result<Self, ModelError> {
        Self::load_with_progress(file, device, &mut |_, _| {})
    }

    /// [`Model::load`], calling `progress(done, total)` as layers reach the device.
    pub fn load_with_progress(
        file: &GgufFile,
        device: &Device,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, ModelError> {
        let config = ModelConfig::from_gguf(file)?;
        guard(|| Self::load_checked(file, device, config, progress))
    }

    fn load_checked(
        file: &GgufFile,
        device: &Device,
        config: ModelConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, ModelError> {
        let loader = Loader { file, config: &config, device };
        let head = if config.tied_embeddings { GlobalWeight::TokenEmbedding } else { GlobalWeight::Output };
        let lm_head = Projection {
            weight: Linear::load(file, file.tensor(head.name())?, device)?,
            bias: config.output_bias.then(|| loader.vector(GlobalWeight::OutputBias.name(), None)).transpose()?,
        };
        // Read after the LM head is on the device, so a tied embedding (often the largest
        // tensor) is not held on the host twice over while the head is repacked.
        let embd = file.tensor(GlobalWeight::TokenEmbedding.name())?;
        let embedding = HostEmbedding { info: embd.clone(), data: file.tensor_data(embd).into_owned(), scale: config.embedding_scale };
        let mut blocks = Vec::with_capacity(config.n_layers);
        for l in 0..config.n_layers {
            blocks.push(loader.block(l)?);
            progress(l + 1, config.n_layers);
        }
        let mut ropes = Vec::with_capacity(config.ropes.len());
        for rope in &config.ropes {
            let factors = rope_factors(file, rope.factors)?;
            let (cos, sin) = rope.tables(config.head_dim, config.context_length, factors.as_deref());
            let shape = [config.context_length, config.head_dim / 2];
            ropes.push(DeviceRope {
                layout: rope.layout,
                cos: Tensor::from_data(TensorData::new(cos, shape), device),
                sin: Tensor::from_data(TensorData::new(sin, shape), device),
            });
        }
        let model = Self {
            output_norm: loader.vector(GlobalWeight::OutputNorm.name(), None)?,
            config,
            device: device.clone(),
            embedding,
            blocks,
            lm_head,
            ropes,
        };
        // A browser cannot block on the device; its first read waits for the uploads instead.
        #[cfg(not(target_family = "wasm"))]
        model.device.sync().map_err(|e| ModelError::Backend(e.to_string()))?;
        #[cfg(not(target_family = "wasm"))]
        burn_cubecl::cubecl::future::block_on(model.calibrate_prompt_kernels());
        Ok(model)
    }

    /// Times the kernels for prompts' products (not the LM head's, which multiplies the
    /// last tokens only) on the largest matrix of each format (see [`crate::many_tokens`]).
    /// Natively the load does it; a browser awaits it before its first prompt.
    pub fn calibrate_prompt_kernels(&self) -> impl Future<Output = ()> + 'static {
        let mut matrices: Vec<QuantMatrix> = (self.blocks.iter())
            .flat_map(|b| [&b.q, &b.k, &b.v, &b.out, &b.gate, &b.up, &b.down])
            .flat_map(|p| p.weight.quantized())
            .cloned()
            .collect();
        matrices.sort_by_key(|m| std::cmp::Reverse(m.rows() * m.cols()));
        async move {
            for matrix in &matrices {
                matrix.calibrate().await;
            }
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Gives the device memory Burn keeps pooled for reuse (the activations of the largest
    /// step so far, which grow with the longest sequence) back to the driver; the weights
    /// and the KV cache stay.
    pub fn release_pooled_memory(&self) -> Result<(), ModelError> {
        crate::device::release_device_memory(&self.device)
    }

    /// Bytes of weights on the device (the token embedding stays on the host).
    pub fn device_weight_bytes(&self) -> usize {
        let blocks: usize = self.blocks.iter().map(Block::device_bytes).sum();
        blocks + self.config.hidden * 4 + self.lm_head.device_bytes()
    }

    /// An empty cache for up to `capacity` positions (at most the context length).
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache, ModelError> {
        if capacity > self.config.context_length {
            return Err(ModelError::CacheFull { needed: capacity, capacity: self.config.context_length });
        }
        let blocks = capacity.div_ceil(SINGLE_BLOCK).max(1);
        let groups = self.config.kv_layout().groups.len();
        let paged = self.new_paged_cache(blocks * groups, SINGLE_BLOCK)?;
        let tables = (0..groups).map(|g| (0..blocks as u32).map(|b| (g * blocks) as u32 + b).collect()).collect();
        Ok(KvCache { paged, tables, len: 0, capacity })
    }

    /// A KV pool of `num_blocks` blocks of `block_size` token slots, shared by the sequences
    /// of [`Model::forward_batch`].
    pub fn new_paged_cache(&self, num_blocks: usize, block_size: usize) -> Result<PagedKvCache, ModelError> {
        let c = &self.config;
        let buffer = PagedKvCache::layer_buffer_bytes(num_blocks, block_size, c.kv_dim());
        let limit = crate::max_binding_bytes(&self.device);
        if buffer > limit {
            return Err(ModelError::InvalidParameter(format!(
                "a KV pool of {num_blocks} blocks of {block_size} needs per-layer buffers of {} MiB; the device binds at most {} MiB",
                buffer >> 20,
                limit >> 20
            )));
        }
        let subgroup_width = fixed_subgroup_width(&self.device);
        guard(|| PagedKvCache::new(&self.cube_device(), c.kv_layout(), c.kv_dim(), num_blocks, block_size, subgroup_width))
    }

    /// Runs `tokens` (the positions after those already in `cache`) through the model,
    /// appends their keys and values to `cache`, and returns the logits of the last token.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, ModelError> {
        let needed = cache.len + tokens.len();
        if needed > cache.capacity {
            return Err(ModelError::CacheFull { needed, capacity: cache.capacity });
        }
        let chunk = SeqChunk { tokens, start: cache.len, tables: &cache.tables, logits: 1 };
        let logits = self.forward_batch(&[chunk], &mut cache.paged)?.pop().expect("one chunk asks for logits");
        cache.len = needed;
        Ok(logits)
    }

    /// Runs the chunks of several sequences as one batch: writes their keys and values into
    /// `cache` through their block tables and returns the logits each chunk asks for, in
    /// order (chunk, then position).
    pub fn forward_batch(&self, chunks: &[SeqChunk], cache: &mut PagedKvCache) -> Result<Vec<Vec<f32>>, ModelError> {
        match self.launch_batch(chunks, cache)?.read()? {
            LogitRows::Full(rows) => Ok(rows),
            LogitRows::TopK(_) => unreachable!("launch_batch reads whole rows unless asked for top-k"),
        }
    }

    /// [`Model::forward_batch`] without waiting: the work is queued on the device and the
    /// logits are read later, with [`PendingLogits::read`] or, where the thread must not
    /// block (a browser), [`PendingLogits::read_async`].
    pub fn launch_batch(&self, chunks: &[SeqChunk], cache: &mut PagedKvCache) -> Result<PendingLogits, ModelError> {
        self.check_batch(chunks, cache)?;
        let order = BatchBuffer::order(chunks);
        let laid_out: Vec<&SeqChunk> = order.iter().map(|&i| &chunks[i]).collect();
        let tokens: Vec<u32> = laid_out.iter().flat_map(|c| c.tokens.iter().copied()).collect();
        let embedded = self.embedding.rows(&tokens)?;
        // The last rows of each chunk that wants logits, by chunk index.
        let mut last_rows = Vec::new();
        let mut row = 0;
        for (&index, chunk) in order.iter().zip(&laid_out) {
            row += chunk.tokens.len();
            let wanted = chunk.logits.min(chunk.tokens.len());
            last_rows.extend((row - wanted..row).map(|r| (index, r)));
        }
        last_rows.sort_unstable();
        let rows: Vec<usize> = last_rows.iter().map(|&(_, row)| row).collect();
        let vocab = self.config.vocab_size;
        guard(|| {
            let x = Tensor::<2>::from_data(TensorData::new(embedded, [tokens.len(), self.config.hidden]), &self.device);
            let batch = BatchBuffer::new(&self.cube_device(), &laid_out, cache.block_size(), cache.layout().groups.len());
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
            let groups = cache.layout().groups.len();
            if chunk.tables.len() != groups {
                return invalid(format!("{} block tables for a cache of {groups} layer groups", chunk.tables.len()));
            }
            for table in chunk.tables {
                let covered = table.len() * cache.block_size();
                if end > covered {
                    return Err(ModelError::CacheFull { needed: end, capacity: covered });
                }
                if let Some(bad) = table.iter().find(|&&b| b as usize >= cache.num_blocks()) {
                    return invalid(format!("block {bad} is outside the pool of {} blocks", cache.num_blocks()));
                }
            }
        }
        Ok(())
    }

    fn cube_device(&self) -> burn_cubecl::CubeDevice {
        cube_device(&self.device).expect("models are loaded on a wgpu device")
    }

    /// RMSNorm of each `head_dim` slice of `x` (`[tokens, heads * head_dim]`).
    fn per_head_norm(&self, x: Tensor<2>, weight: &Tensor<2>) -> Tensor<2> {
        let [n, width] = x.dims();
        let hd = self.config.head_dim;
        rms_norm(x.reshape([n * width / hd, hd]), weight, self.config.rms_eps).reshape([n, width])
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
        let attention = Attention::new(c, batch, cache);
        // x + norm(out(input)), or x + out(input) added by the matrix kernel.
        let add_to = |x: Tensor<2>, out: &Projection, input: Tensor<2>, norm: &Option<Tensor<2>>| match norm {
            Some(w) => x + rms_norm(out.forward(input), w, c.rms_eps),
            None => out.forward_add(input, x),
        };
        for (l, block) in self.blocks.iter().enumerate() {
            let layer = c.layers[l];
            let h = rms_norm(x.clone(), &block.attn_norm, c.rms_eps);
            let (mut q, mut k) = (block.q.forward(h.clone()), block.k.forward(h.clone()));
            let v = block.v.forward(h);
            if let (Some(qn), Some(kn)) = (&block.q_norm, &block.k_norm) {
                q = self.per_head_norm(q, qn);
                k = self.per_head_norm(k, kn);
            }
            let r = &self.ropes[layer.rope];
            let rotate = |x: Tensor<2>, heads| {
                rope(x.reshape([n, heads, c.head_dim]), &r.cos, &r.sin, r.layout, batch).reshape([n, heads * c.head_dim])
            };
            let (q, k) = (rotate(q, c.n_heads), rotate(k, c.n_kv_heads));
            cache.write(l, k, v, batch);
            let rule = ScoreRule { scale: c.query_scale, window: layer.window, softcap: c.attention_softcap };
            let attn = attention.attend(l, q, &rule);
            x = add_to(x, &block.out, attn, &block.post_attn_norm);

            let h = rms_norm(x.clone(), &block.ffn_norm, c.rms_eps);
            let act = gated(block.gate.forward(h.clone()), block.up.forward(h), c.arch.activation);
            x = add_to(x, &block.down, act, &block.post_ffn_norm);
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
        let logits = self.lm_head.forward(rms_norm(last, &self.output_norm, c.rms_eps));
        Some(match c.final_softcap {
            Some(cap) => logits.div_scalar(cap).tanh().mul_scalar(cap),
            None => logits,
        })
    }
}

/// The adapter's subgroup width, where every subgroup has it.
pub(crate) fn fixed_subgroup_width(device: &Device) -> Option<usize> {
    let adapter = crate::adapter_info(device)?;
    let width = adapter.subgroup_max_size?;
    (adapter.subgroup_min_size == Some(width)).then_some(width as usize)
}
