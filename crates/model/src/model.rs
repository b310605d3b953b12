//! A language model: the forward pass of every supported architecture, driven by its
//! description ([`ModelConfig`], [`crate::arch`]), written once over the [`Ops`] of the
//! backend it loaded on (the GPU's WGSL kernels or the CPU's).

use std::ops::Range;
use std::sync::Arc;

use cinder_gguf::{GgufFile, TensorInfo};
use web_time::{Duration, Instant};

use crate::arch::{FfnLayout, GlobalWeight, LayerWeight};
use crate::attention::ScoreRule;
use crate::backend::Backend;
use crate::error::guard;
use crate::logits::PendingLogits;
use crate::lora::{LoraAdapter, LoraTarget};
use crate::ops::Ops;
use crate::ops::cpu::CpuOps;
use crate::ops::gpu::GpuOps;
use crate::paged::{BatchLayout, PagedKvCache, SeqChunk};
use crate::quant::QuantMatrix;
use crate::{LogitRows, ModelConfig, ModelError, RowAdapter};

/// A matrix and its optional bias, and the LoRA adapters that adapt it:
/// `y = x W^T + b + scale * B (A x)` with each row's own adapter, if it runs one.
struct Projection<O: Ops> {
    weight: O::Matrix,
    bias: Option<O::Vector>,
    /// What adapters adapt here (none for the LM head).
    target: Option<LoraTarget>,
    /// The resident adapters' pairs for it, where any has one.
    lora: Option<O::Lora>,
}

impl<O: Ops> Projection<O> {
    fn forward(&self, ops: &O, x: O::Rows, adapters: Option<&O::LoraRows>) -> O::Rows {
        let y = match self.lora.as_ref().zip(adapters) {
            Some((lora, rows)) => ops.lora_add(ops.linear(&self.weight, x.clone()), &x, lora, rows),
            None => ops.linear(&self.weight, x),
        };
        match &self.bias {
            Some(b) => ops.add_bias(y, b),
            None => y,
        }
    }

    /// `forward(x) + residual`: one dispatch on the GPU where there is no bias or adapter.
    fn forward_add(&self, ops: &O, x: O::Rows, residual: O::Rows, adapters: Option<&O::LoraRows>) -> O::Rows {
        match (&self.bias, self.lora.as_ref().zip(adapters)) {
            (Some(_), _) => ops.add(self.forward(ops, x, adapters), residual),
            (None, Some((lora, rows))) => ops.lora_add(ops.linear_add(&self.weight, x.clone(), residual), &x, lora, rows),
            (None, None) => ops.linear_add(&self.weight, x, residual),
        }
    }

    fn bytes(&self) -> usize {
        O::matrix_bytes(&self.weight) + self.bias.as_ref().map_or(0, |b| O::vector_len(b) * 4) + self.lora.as_ref().map_or(0, O::lora_bytes)
    }
}

/// One transformer block's weights; the optional ones are those of its architecture's
/// variant.
struct Block<O: Ops> {
    attn_norm: O::Vector,
    q: Projection<O>,
    k: Projection<O>,
    v: Projection<O>,
    q_norm: Option<O::Vector>,
    k_norm: Option<O::Vector>,
    out: Projection<O>,
    post_attn_norm: Option<O::Vector>,
    ffn_norm: O::Vector,
    gate: Projection<O>,
    up: Projection<O>,
    down: Projection<O>,
    post_ffn_norm: Option<O::Vector>,
}

impl<O: Ops> Block<O> {
    fn bytes(&self) -> usize {
        let vectors = [Some(&self.attn_norm), self.q_norm.as_ref(), self.k_norm.as_ref(), self.post_attn_norm.as_ref(), Some(&self.ffn_norm), self.post_ffn_norm.as_ref()];
        let vector_bytes: usize = vectors.into_iter().flatten().map(|v| O::vector_len(v) * 4).sum();
        vector_bytes + self.projections().iter().map(|p| p.bytes()).sum::<usize>()
    }

    fn projections(&self) -> [&Projection<O>; 7] {
        [&self.q, &self.k, &self.v, &self.out, &self.gate, &self.up, &self.down]
    }

    fn projections_mut(&mut self) -> [&mut Projection<O>; 7] {
        [&mut self.q, &mut self.k, &mut self.v, &mut self.out, &mut self.gate, &mut self.up, &mut self.down]
    }
}

/// Reads one model's tensors onto a backend by their role.
struct Loader<'a, O> {
    file: &'a GgufFile,
    config: &'a ModelConfig,
    ops: O,
}

impl<O: Ops> Loader<'_, O> {
    /// A vector (norm weight or bias), rows `range` of it if given.
    fn vector(&self, name: &str, range: Option<std::ops::Range<usize>>) -> Result<O::Vector, ModelError> {
        let mut values = self.file.dequantize(self.file.tensor(name)?)?;
        // Norms and biases are small and scale everything after them: a broken one would
        // only show as garbage output, so it is refused here.
        if values.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite(name.to_owned()));
        }
        if let Some(range) = range {
            values = values[range].to_vec();
        }
        Ok(self.ops.vector(values))
    }

    fn layer_vector(&self, layer: usize, weight: LayerWeight) -> Result<Option<O::Vector>, ModelError> {
        self.config.has(weight).then(|| self.vector(&weight.name(layer), None)).transpose()
    }

    /// The projections stored as consecutive row ranges of `weight` (one, or the parts of a
    /// fused matrix), with their biases.
    fn projections<const N: usize>(&self, layer: usize, weight: LayerWeight, widths: [usize; N]) -> Result<[Projection<O>; N], ModelError> {
        let info = self.file.tensor(&weight.name(layer))?;
        let bias = weight.bias().filter(|&b| self.config.has(b));
        let mut parts = Vec::with_capacity(N);
        let mut start = 0;
        for width in widths {
            let rows = start..start + width;
            start += width;
            parts.push(Projection {
                weight: self.ops.matrix(self.file, info, rows.clone())?,
                bias: bias.map(|b| self.vector(&b.name(layer), Some(rows.clone()))).transpose()?,
                target: Some(LoraTarget { layer, weight, rows }),
                lora: None,
            });
        }
        Ok(parts.try_into().unwrap_or_else(|_| unreachable!("one part per width")))
    }

    fn block(&self, l: usize) -> Result<Block<O>, ModelError> {
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

    /// Every weight but the token embedding, `progress(done, total)` called per layer.
    fn layers(self, progress: &mut dyn FnMut(usize, usize)) -> Result<Layers<O>, ModelError> {
        let (file, config) = (self.file, self.config);
        let head = if config.tied_embeddings { GlobalWeight::TokenEmbedding } else { GlobalWeight::Output };
        let info = file.tensor(head.name())?;
        let lm_head = Projection {
            weight: self.ops.matrix(file, info, 0..info.rows() as usize)?,
            bias: config.output_bias.then(|| self.vector(GlobalWeight::OutputBias.name(), None)).transpose()?,
            target: None,
            lora: None,
        };
        let mut blocks = Vec::with_capacity(config.n_layers);
        for l in 0..config.n_layers {
            blocks.push(self.block(l)?);
            progress(l + 1, config.n_layers);
        }
        let mut ropes = Vec::with_capacity(config.ropes.len());
        for rope in &config.ropes {
            let factors = rope_factors(file, rope.factors)?;
            let (cos, sin) = rope.tables(config.head_dim, config.context_length, factors.as_deref());
            ropes.push(self.ops.rope(rope.layout, cos, sin, config.head_dim / 2));
        }
        let output_norm = self.vector(GlobalWeight::OutputNorm.name(), None)?;
        Ok(Layers { ops: self.ops, blocks, output_norm, lm_head, ropes })
    }
}

/// Token embedding rows kept in their GGUF encoding on the host: a lookup dequantizes only
/// the rows it needs, instead of holding the whole table as f32 on the device.
struct HostEmbedding {
    info: TensorInfo,
    data: cinder_gguf::SharedBytes,
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

/// The factors a RoPE divides its frequencies by, read from the file.
pub(crate) fn rope_factors(file: &GgufFile, factors: Option<GlobalWeight>) -> Result<Option<Vec<f32>>, ModelError> {
    factors.map(|w| Ok(file.dequantize(file.tensor(w.name())?)?)).transpose()
}

/// A model's weights on its backend, and the ops that run them.
struct Layers<O: Ops> {
    ops: O,
    blocks: Vec<Block<O>>,
    output_norm: O::Vector,
    lm_head: Projection<O>,
    ropes: Vec<O::Rope>,
}

enum Weights {
    Gpu(Layers<GpuOps>),
    Cpu(Layers<CpuOps>),
}

/// A language model whose weights live on a [`Backend`].
pub struct Model {
    config: ModelConfig,
    backend: Backend,
    embedding: HostEmbedding,
    weights: Weights,
    /// The LoRA adapters in each slot, which a batch's rows name by slot.
    adapters: Vec<Option<Arc<LoraAdapter>>>,
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

/// How long `backend` takes for the matrix products of one layer of a decode step of
/// `file`'s model (its first layer's, on zero activations): the best of three passes after
/// one that compiles the GPU's kernels and warms the caches. The page's `auto` compares its
/// two paths with it where the only adapter is a software one, as prompts' kernels are
/// picked by timing them.
pub async fn time_layer_products(file: &GgufFile, backend: &Backend) -> Result<Duration, ModelError> {
    let config = ModelConfig::from_gguf(file)?;
    match backend {
        Backend::Gpu(device) => layer_products(GpuOps::new(device)?, file, &config).await,
        // In the pool, as a forward pass runs; the host's products are done before their
        // future is first polled.
        Backend::Cpu(threads) => threads.install(|| {
            let future = std::pin::pin!(layer_products(CpuOps { threads: threads.clone() }, file, &config));
            match future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
                std::task::Poll::Ready(duration) => duration,
                std::task::Poll::Pending => unreachable!("the CPU's products never wait"),
            }
        }),
    }
}

async fn layer_products<O: Ops>(ops: O, file: &GgufFile, config: &ModelConfig) -> Result<Duration, ModelError> {
    let loader = Loader { file, config, ops };
    let block = loader.block(0)?;
    let ops = &loader.ops;
    let x = ops.rows(vec![0.0; config.hidden], config.hidden);
    // The products a layer of a decode step runs, in their shapes; the result is read back,
    // so a pass ends once the device has run it.
    let pass = || {
        let linear = |p: &Projection<O>, x: &O::Rows| ops.linear(&p.weight, x.clone());
        let (q, _, _) = (linear(&block.q, &x), linear(&block.k, &x), linear(&block.v, &x));
        let (gate, _) = (linear(&block.gate, &x), linear(&block.up, &x));
        let sum = ops.add(linear(&block.out, &q), linear(&block.down, &gate));
        PendingLogits::new(Some(ops.read_back(sum)), config.hidden).read_async()
    };
    pass().await?;
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        pass().await?;
        best = best.min(start.elapsed());
    }
    Ok(best)
}

impl Model {
    /// Reads the model in `file` onto `backend`. Matrices in a format the backend's
    /// kernels read stay in it; others are dequantized to f32.
    pub fn load(file: &GgufFile, backend: &Backend) -> Result<Self, ModelError> {
        Self::load_with_progress(file, backend, &mut |_, _| {})
    }

    /// [`Model::load`], calling `progress(done, total)` as layers load.
    pub fn load_with_progress(
        file: &GgufFile,
        backend: &Backend,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, ModelError> {
        let config = ModelConfig::from_gguf(file)?;
        guard(|| Self::load_checked(file, backend, config, progress))
    }

    fn load_checked(
        file: &GgufFile,
        backend: &Backend,
        config: ModelConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, ModelError> {
        let weights = match backend {
            Backend::Gpu(device) => Weights::Gpu(Loader { file, config: &config, ops: GpuOps::new(device)? }.layers(progress)?),
            Backend::Cpu(threads) => {
                Weights::Cpu(Loader { file, config: &config, ops: CpuOps { threads: threads.clone() } }.layers(progress)?)
            }
        };
        // Read after the LM head has loaded, so a tied embedding (often the largest tensor)
        // is not held on the host twice over while the head is repacked.
        let embd = file.tensor(GlobalWeight::TokenEmbedding.name())?;
        // On the CPU a tied LM head's blocks are the embedding's: one copy serves both.
        let shared = match &weights {
            Weights::Cpu(layers) if config.tied_embeddings => layers.lm_head.weight.shared_data(embd.ty),
            _ => None,
        };
        let data = shared.unwrap_or_else(|| file.tensor_shared(embd, 0..embd.bytes));
        let embedding = HostEmbedding { info: embd.clone(), data, scale: config.embedding_scale };
        let model = Self { config, backend: backend.clone(), embedding, weights, adapters: Vec::new() };
        // A browser cannot block on the device; its first read waits for the uploads instead.
        #[cfg(not(target_family = "wasm"))]
        {
            if let Backend::Gpu(device) = backend {
                device.sync().map_err(|e| ModelError::Backend(e.to_string()))?;
                burn_cubecl::cubecl::future::block_on(model.calibrate_prompt_kernels());
            }
        }
        Ok(model)
    }

    /// Times the GPU kernels for prompts' products (not the LM head's, which multiplies the
    /// last tokens only) on the largest matrix of each format (see [`crate::many_tokens`]).
    /// Natively the load does it; a browser awaits it before its first prompt. Nothing to
    /// time on the CPU.
    pub fn calibrate_prompt_kernels(&self) -> impl Future<Output = ()> + 'static {
        let mut matrices: Vec<QuantMatrix> = match &self.weights {
            Weights::Gpu(layers) => (layers.blocks.iter())
                .flat_map(|b| b.projections())
                .flat_map(|p| p.weight.quantized())
                .cloned()
                .collect(),
            Weights::Cpu(_) => Vec::new(),
        };
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

    /// Sets what the model's KV caches store, for caches made after this (f16 unless set):
    /// an error where its heads cannot be stored so.
    pub fn set_kv_types(&mut self, types: crate::KvTypes) -> Result<(), ModelError> {
        self.config.set_kv_types(types)
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Puts `adapter` in slot `slot` (`None`: empties it), for rows that name the slot
    /// ([`SeqChunk::adapter`]). The projections' stacks are rebuilt with every resident
    /// adapter's pairs; the other slots keep their adapters.
    pub fn set_adapter(&mut self, slot: usize, adapter: Option<Arc<LoraAdapter>>) -> Result<(), ModelError> {
        if let Some(adapter) = &adapter {
            adapter.check_base(&self.config)?;
        }
        if self.adapters.len() <= slot {
            self.adapters.resize(slot + 1, None);
        }
        self.adapters[slot] = adapter;
        while self.adapters.last().is_some_and(Option::is_none) {
            self.adapters.pop();
        }
        let slots = &self.adapters;
        guard(|| {
            match &mut self.weights {
                Weights::Gpu(layers) => layers.stack_adapters(slots),
                Weights::Cpu(layers) => layers.stack_adapters(slots),
            }
            Ok(())
        })
    }

    /// Gives the device memory Burn keeps pooled for reuse (the activations of the largest
    /// step so far, which grow with the longest sequence) back to the driver; the weights
    /// and the KV cache stay.
    pub fn release_pooled_memory(&self) -> Result<(), ModelError> {
        self.backend.release_memory()
    }

    /// Bytes of weights on the backend (the token embedding stays on the host).
    pub fn device_weight_bytes(&self) -> usize {
        match &self.weights {
            Weights::Gpu(layers) => layers.bytes(),
            Weights::Cpu(layers) => layers.bytes(),
        }
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
    /// of [`Model::forward_batch`]: on the device for a GPU model, in host memory for a CPU one.
    pub fn new_paged_cache(&self, num_blocks: usize, block_size: usize) -> Result<PagedKvCache, ModelError> {
        let c = &self.config;
        guard(|| match &self.weights {
            Weights::Gpu(layers) => layers.ops.kv_pool(c, num_blocks, block_size),
            Weights::Cpu(layers) => layers.ops.kv_pool(c, num_blocks, block_size),
        })
    }

    /// Runs `tokens` (the positions after those already in `cache`) through the model,
    /// appends their keys and values to `cache`, and returns the logits of the last token.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, ModelError> {
        self.forward_adapted(tokens, cache, None)
    }

    /// [`Model::forward`] with the LoRA adapter `adapter` names ([`Model::set_adapter`]).
    pub fn forward_adapted(&self, tokens: &[u32], cache: &mut KvCache, adapter: Option<RowAdapter>) -> Result<Vec<f32>, ModelError> {
        let needed = cache.len + tokens.len();
        if needed > cache.capacity {
            return Err(ModelError::CacheFull { needed, capacity: cache.capacity });
        }
        let chunk = SeqChunk { tokens, start: cache.len, tables: &cache.tables, logits: 1, adapter, pool: None };
        let logits = self.forward_batch(&[chunk], &mut cache.paged)?.pop().expect("one chunk asks for logits");
        cache.len = needed;
        Ok(logits)
    }

    /// Runs the chunks of several sequences as one batch: writes their keys and values into
    /// `cache` through their block tables and returns the logits each chunk asks for, in
    /// order (chunk, then position). Chunks that pool get theirs from [`Model::launch_batch`].
    pub fn forward_batch(&self, chunks: &[SeqChunk], cache: &mut PagedKvCache) -> Result<Vec<Vec<f32>>, ModelError> {
        match self.launch_batch(chunks, cache)?.read()?.logits {
            LogitRows::Full(rows) => Ok(rows),
            LogitRows::TopK(_) => unreachable!("launch_batch reads whole rows unless asked for top-k"),
        }
    }

    /// [`Model::forward_batch`] without waiting: on the GPU the work is queued and the
    /// logits are read later, with [`PendingLogits::read`] or, where the thread must not
    /// block (a browser), [`PendingLogits::read_async`]; on the CPU it runs here.
    pub fn launch_batch(&self, chunks: &[SeqChunk], cache: &mut PagedKvCache) -> Result<PendingLogits, ModelError> {
        self.check_batch(chunks, cache)?;
        let order = BatchLayout::order(chunks);
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
        // The rows each pooling chunk reduces, by chunk index.
        let mut pooled = Vec::new();
        let mut first = 0;
        for (&index, chunk) in order.iter().zip(&laid_out) {
            let chunk_rows = first..first + chunk.tokens.len();
            first = chunk_rows.end;
            if let Some(reduce) = chunk.pool {
                pooled.push((index, reduce.rows(chunk_rows)));
            }
        }
        pooled.sort_unstable_by_key(|p| p.0);
        let pooled: Vec<Range<usize>> = pooled.into_iter().map(|p| p.1).collect();
        let batch = BatchLayout::new(&laid_out, cache.block_size(), cache.layout().groups.len());
        // Each row's adapter, where any row has one.
        let adapters = laid_out.iter().any(|c| c.adapter.is_some()).then(|| {
            laid_out.iter().flat_map(|c| std::iter::repeat_n(c.adapter, c.tokens.len())).collect::<Vec<_>>()
        });
        let adapters = adapters.as_deref();
        let c = &self.config;
        // Without logits to read, the GPU's queued work runs ahead of the next step's.
        guard(|| match &self.weights {
            Weights::Gpu(layers) => Ok(layers.forward(c, embedded, batch, adapters, cache, &rows, &pooled)),
            Weights::Cpu(layers) => Ok(layers.ops.threads.install(|| layers.forward(c, embedded, batch, adapters, cache, &rows, &pooled))),
        })
    }

    /// Copies KV blocks `(source, destination)` (copy-on-write of shared blocks).
    pub fn copy_blocks(&self, cache: &mut PagedKvCache, pairs: &[(u32, u32)]) -> Result<(), ModelError> {
        let limit = cache.num_blocks() as u32;
        if let Some(bad) = pairs.iter().find(|(s, d)| *s >= limit || *d >= limit) {
            return Err(ModelError::InvalidParameter(format!("block copy {bad:?} is outside the pool of {limit} blocks")));
        }
        self.check_pool(cache)?;
        guard(|| {
            cache.copy(pairs);
            Ok(())
        })
    }

    /// Refuses a pool of the other backend.
    fn check_pool(&self, cache: &PagedKvCache) -> Result<(), ModelError> {
        if cache.is_host() != self.backend.is_cpu() {
            let (pool, model) = if cache.is_host() { ("host memory", "GPU") } else { ("the GPU", "CPU") };
            return Err(ModelError::InvalidParameter(format!("a KV cache in {pool} given to a model on the {model}")));
        }
        Ok(())
    }

    fn check_batch(&self, chunks: &[SeqChunk], cache: &PagedKvCache) -> Result<(), ModelError> {
        let invalid = |m: String| Err(ModelError::InvalidParameter(m));
        self.check_pool(cache)?;
        if chunks.is_empty() {
            return invalid("no tokens to run".into());
        }
        for chunk in chunks {
            if chunk.tokens.is_empty() {
                return invalid("a sequence in the batch has no tokens to run".into());
            }
            if let Some(adapter) = chunk.adapter
                && self.adapters.get(adapter.slot as usize).is_none_or(Option::is_none)
            {
                return invalid(format!("no LoRA adapter is in slot {}", adapter.slot));
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
}

impl<O: Ops> Layers<O> {
    /// Rebuilds every projection's adapter stack from `slots`.
    fn stack_adapters(&mut self, slots: &[Option<Arc<LoraAdapter>>]) {
        for block in &mut self.blocks {
            for projection in block.projections_mut() {
                projection.lora = projection.target.as_ref().and_then(|t| t.stack(slots)).map(|s| self.ops.lora(s));
            }
        }
    }

    fn bytes(&self) -> usize {
        let blocks: usize = self.blocks.iter().map(Block::bytes).sum();
        blocks + O::vector_len(&self.output_norm) * 4 + self.lm_head.bytes()
    }

    /// The layers over a batch's rows (`embedded`, `[rows, hidden]`), each row with its
    /// adapter (`adapters`, where any row has one); returns the logits of rows `logit_rows`
    /// and the sums of each range of `pooled` after the final norm.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        c: &ModelConfig,
        embedded: Vec<f32>,
        layout: BatchLayout,
        adapters: Option<&[Option<RowAdapter>]>,
        cache: &mut PagedKvCache,
        logit_rows: &[usize],
        pooled: &[Range<usize>],
    ) -> PendingLogits {
        let ops = &self.ops;
        let mut x = ops.rows(embedded, c.hidden);
        let batch = ops.batch(layout);
        let lora = adapters.map(|rows| ops.lora_rows(rows));
        let lora = lora.as_ref();
        // x + norm(out(input)), or x + out(input) added by the matrix kernel.
        let add_to = |x: O::Rows, out: &Projection<O>, input: O::Rows, norm: &Option<O::Vector>| match norm {
            Some(w) => ops.add(x, ops.rms_norm(out.forward(ops, input, lora), w, c.rms_eps)),
            None => out.forward_add(ops, input, x, lora),
        };
        for (l, block) in self.blocks.iter().enumerate() {
            let layer = c.layers[l];
            let h = ops.rms_norm(x.clone(), &block.attn_norm, c.rms_eps);
            let (mut q, mut k) = (block.q.forward(ops, h.clone(), lora), block.k.forward(ops, h.clone(), lora));
            let v = block.v.forward(ops, h, lora);
            if let (Some(qn), Some(kn)) = (&block.q_norm, &block.k_norm) {
                q = ops.rms_norm(q, qn, c.rms_eps);
                k = ops.rms_norm(k, kn, c.rms_eps);
            }
            let rope = &self.ropes[layer.rope];
            let (q, k) = (ops.rotate(q, c.head_dim, rope, &batch), ops.rotate(k, c.head_dim, rope, &batch));
            ops.write_kv(cache, l, k, v, &batch);
            let rule = ScoreRule { scale: c.query_scale, window: layer.window, softcap: c.attention_softcap };
            let attn = ops.attend(cache, l, q, c, &rule, &batch);
            x = add_to(x, &block.out, attn, &block.post_attn_norm);

            let h = ops.rms_norm(x.clone(), &block.ffn_norm, c.rms_eps);
            let act = ops.gated(block.gate.forward(ops, h.clone(), lora), block.up.forward(ops, h, lora), c.arch.activation);
            x = add_to(x, &block.down, act, &block.post_ffn_norm);
        }
        let pooled = (!pooled.is_empty()).then(|| {
            let rows: Vec<usize> = pooled.iter().flat_map(Range::clone).collect();
            let normed = ops.rms_norm(ops.select(x.clone(), &rows), &self.output_norm, c.rms_eps);
            ops.read_back(ops.sum_groups(normed, &pooled.iter().map(Range::len).collect::<Vec<_>>()))
        });
        let logits = (!logit_rows.is_empty()).then(|| {
            let last = ops.rms_norm(ops.select(x, logit_rows), &self.output_norm, c.rms_eps);
            let logits = self.lm_head.forward(ops, last, None);
            match c.final_softcap {
                Some(cap) => ops.softcap(logits, cap),
                None => logits,
            }
        });
        PendingLogits::new(logits.map(|l| ops.read_back(l)), c.vocab_size).with_pooled(pooled, c.hidden)
    }
}
