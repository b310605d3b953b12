//! The Llama forward pass on Burn tensors.

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};
use cinder_gguf::{GgufFile, TensorInfo};

use crate::fused::{rms_norm, rope, silu_gate};
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

/// Keys and values of every layer for one sequence, `[kv_heads, capacity, head_dim]` each.
pub struct KvCache {
    keys: Vec<Option<Tensor<3>>>,
    values: Vec<Option<Tensor<3>>>,
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

impl Llama {
    /// Reads the model in `file` onto `device`. Matrices in a format the quantized kernels
    /// read stay in it; others are dequantized to f32.
    pub fn load(file: &GgufFile, device: &Device) -> Result<Self, ModelError> {
        let config = LlamaConfig::from_gguf(file)?;
        guard(|| Self::load_checked(file, device, config))
    }

    fn load_checked(file: &GgufFile, device: &Device, config: LlamaConfig) -> Result<Self, ModelError> {
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
        let c = &self.config;
        guard(|| {
            let empty = || Some(Tensor::<3>::zeros([c.n_kv_heads, capacity, c.head_dim], &self.device));
            Ok(KvCache {
                keys: (0..c.n_layers).map(|_| empty()).collect(),
                values: (0..c.n_layers).map(|_| empty()).collect(),
                len: 0,
                capacity,
            })
        })
    }

    /// Runs `tokens` (the positions after those already in `cache`) through the model,
    /// appends their keys and values to `cache`, and returns the logits of the last token.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::InvalidParameter("no tokens to run".into()));
        }
        let needed = cache.len + tokens.len();
        if needed > cache.capacity {
            return Err(ModelError::CacheFull { needed, capacity: cache.capacity });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(ModelError::InvalidParameter(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.config.vocab_size
            )));
        }
        let embedded = self.embedding.rows(tokens)?;
        let logits = guard(|| {
            let x = Tensor::<2>::from_data(TensorData::new(embedded, [tokens.len(), self.config.hidden]), &self.device);
            let logits = self.forward_embedded(x, cache);
            logits.try_into_vec_as::<f32>().map_err(|e| ModelError::Backend(format!("{e:?}")))
        })?;
        cache.len = needed;
        Ok(logits)
    }

    fn forward_embedded(&self, mut x: Tensor<2>, cache: &mut KvCache) -> Tensor<2> {
        let c = &self.config;
        let n = x.dims()[0];
        let start = cache.len;
        let mask = (n > 1).then(|| self.causal_mask(n, start));
        for (l, block) in self.blocks.iter().enumerate() {
            let h = rms_norm(x.clone(), &block.attn_norm, c.rms_eps);
            let rotate = |x: Tensor<2>, heads| rope(x.reshape([n, heads, c.head_dim]), &self.rope_cos, &self.rope_sin, start);
            let q = rotate(block.wq.forward(h.clone()), c.n_heads);
            let k = rotate(block.wk.forward(h.clone()), c.n_kv_heads);
            let v = block.wv.forward(h).reshape([n, c.n_kv_heads, c.head_dim]);

            let keys = append(&mut cache.keys[l], k.swap_dims(0, 1), start);
            let values = append(&mut cache.values[l], v.swap_dims(0, 1), start);
            let attn = self.attention(q, keys, values, mask.clone());
            x = x + block.wo.forward(attn);

            let h = rms_norm(x.clone(), &block.ffn_norm, c.rms_eps);
            let gate = block.w_gate.forward(h.clone());
            x = x + block.w_down.forward(silu_gate(gate, block.w_up.forward(h)));
        }
        let last = x.slice([n - 1..n]);
        self.lm_head.forward(rms_norm(last, &self.output_norm, c.rms_eps))
    }

    /// Grouped-query attention. The query heads sharing a KV head are adjacent, so viewing
    /// the queries as `[kv_heads, group * n, head_dim]` lets each KV head serve its whole
    /// group in one matmul, without repeating keys and values.
    fn attention(&self, q: Tensor<3>, keys: Tensor<3>, values: Tensor<3>, mask: Option<Tensor<3>>) -> Tensor<2> {
        let c = &self.config;
        let n = q.dims()[0];
        let group = c.n_heads / c.n_kv_heads;
        let q = q.swap_dims(0, 1).reshape([c.n_kv_heads, group * n, c.head_dim]);
        let mut scores = q.matmul(keys.transpose()).mul_scalar(1.0 / (c.head_dim as f32).sqrt());
        if let Some(mask) = mask {
            scores = scores + mask;
        }
        let out = softmax(scores, 2).matmul(values);
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
}

/// Writes `new` (`[kv_heads, n, head_dim]`) at positions `start..` of a cache tensor and
/// returns the filled part. The cache tensor is taken out while written so that Burn can
/// update it in place (it copies when another handle to the buffer is alive).
fn append(slot: &mut Option<Tensor<3>>, new: Tensor<3>, start: usize) -> Tensor<3> {
    let [heads, n, dim] = new.dims();
    let full = slot.take().expect("cache slot is refilled after every write");
    let full = full.slice_assign([0..heads, start..start + n, 0..dim], new);
    let filled = full.clone().slice([0..heads, 0..start + n, 0..dim]);
    *slot = Some(full);
    filled
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
