//! The options of `WasmEngine.load`: the KV pool and the batching limits.

use cinder_engine::Engine;
use cinder_model::{DeviceChoice, KvType, KvTypes, ModelConfig, Pooling};
use cinder_scheduler::{BatchPolicy, SchedulerConfig};
use serde::Deserialize;

/// Defaults sized for a browser tab: a small KV pool, a few sequences per batch.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineOptions {
    /// Device memory for the KV cache, in MiB.
    pub kv_cache_mb: usize,
    /// What the KV cache stores keys and values as: `f32`, `f16`, `q8_0` or `q4_0`.
    pub kv_cache_type: KvType,
    /// Keys only, over `kv_cache_type`.
    pub kv_cache_type_k: Option<KvType>,
    /// Values only, over `kv_cache_type`.
    pub kv_cache_type_v: Option<KvType>,
    /// Token slots per KV block.
    pub block_size: usize,
    /// Most tokens (prompt chunks and decodes) in one step.
    pub max_batch_tokens: usize,
    /// Most sequences decoding at once.
    pub max_running: usize,
    /// Longest piece of a prompt run in one step.
    pub chunk_size: usize,
    /// Whether the device has WebGPU's `subgroups` feature (web/core.js asks for it where
    /// the adapter offers it, unless the page passes `false`); the subgroup kernels then run.
    pub subgroups: bool,
    /// `gpu` (WebGPU), `cpu` (this module's CPU kernels, SIMD128) or `auto` (web/core.js
    /// decides from the adapter; here: the GPU unless WebGPU fails or is a software adapter).
    pub device: DeviceChoice,
    /// Most LoRA adapters loaded at once (`Engine.load`'s `loras`).
    pub max_loras: usize,
    /// How `embeddings.create` pools a prompt's rows: `mean`, `cls`, `last` or `none`
    /// [default: the file's `pooling_type`; mean where the file names none].
    pub pooling: Option<Pooling>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            kv_cache_mb: 64,
            kv_cache_type: KvType::F16,
            kv_cache_type_k: None,
            kv_cache_type_v: None,
            block_size: 16,
            max_batch_tokens: 256,
            max_running: 16,
            chunk_size: 128,
            subgroups: false,
            device: DeviceChoice::Auto,
            max_loras: 4,
            pooling: None,
        }
    }
}

impl EngineOptions {
    /// Parses the options JSON (`""` or `"{}"` for the defaults); unknown keys are errors,
    /// so a misspelt option is not silently ignored.
    pub fn parse(json: &str) -> Result<Self, String> {
        if json.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_str(json).map_err(|e| format!("engine options: {e}"))
    }

    /// What the KV cache stores.
    pub fn kv_types(&self) -> KvTypes {
        KvTypes { keys: self.kv_cache_type_k.unwrap_or(self.kv_cache_type), values: self.kv_cache_type_v.unwrap_or(self.kv_cache_type) }
    }

    /// The scheduler's configuration for `model` on a device that binds buffers of at most
    /// `max_buffer_bytes`.
    pub fn scheduler(&self, model: &ModelConfig, max_buffer_bytes: usize) -> Result<SchedulerConfig, String> {
        if self.block_size == 0 {
            return Err("engine options: `block_size` must be at least 1".into());
        }
        let policy = BatchPolicy::Continuous {
            max_batch_tokens: self.max_batch_tokens,
            max_running: self.max_running,
            chunk_size: self.chunk_size,
        };
        policy.check("").map_err(|e| format!("engine options: {e}"))?;
        let base = SchedulerConfig { block_size: self.block_size, policy, ..SchedulerConfig::default() };
        Engine::sized_config(model, None, self.kv_cache_mb << 20, max_buffer_bytes, base)
            .map_err(|e| format!("engine options: kv_cache_mb: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_options_are_the_defaults_and_typos_are_refused() {
        assert_eq!(EngineOptions::parse("").unwrap(), EngineOptions::default());
        assert_eq!(EngineOptions::parse("{}").unwrap(), EngineOptions::default());
        assert_eq!(EngineOptions::parse(r#"{"kv_cache_mb": 8}"#).unwrap().kv_cache_mb, 8);
        let typo = EngineOptions::parse(r#"{"kv_cache_md": 8}"#).unwrap_err();
        assert!(typo.contains("unknown field `kv_cache_md`"), "{typo}");
        assert!(EngineOptions::parse(r#"{"kv_cache_mb": "lots"}"#).unwrap_err().contains("invalid type"));
        let types = EngineOptions::parse(r#"{"kv_cache_type": "q8_0", "kv_cache_type_v": "q4_0"}"#).unwrap().kv_types();
        assert_eq!(types, KvTypes { keys: KvType::Q8_0, values: KvType::Q4_0 });
        assert_eq!(EngineOptions::default().kv_types(), KvTypes::both(KvType::F16));
        let unknown = EngineOptions::parse(r#"{"kv_cache_type": "q5_1"}"#).unwrap_err();
        assert!(unknown.contains("unknown variant `q5_1`"), "{unknown}");
    }

    #[test]
    fn the_pool_is_sized_from_the_budget_and_caps_the_context() {
        let file = cinder_gguf::GgufFile::from_bytes(cinder_model::tiny::TinyModel::default().to_gguf()).unwrap();
        let model = ModelConfig::from_gguf(&file).unwrap();
        let options = EngineOptions { kv_cache_mb: 1, ..EngineOptions::default() };
        let unbounded = usize::MAX;
        let config = options.scheduler(&model, unbounded).unwrap();
        assert!(config.num_blocks > 0);
        assert!(config.max_seq_len <= model.context_length);
        assert!(config.max_seq_len <= config.num_blocks * config.block_size);
        // Each layer's share of the pool stays within what the device binds.
        let per_block = cinder_model::PagedKvCache::layer_buffer_bytes(&model, 1, config.block_size);
        let capped = options.scheduler(&model, 10 * per_block).unwrap();
        assert_eq!(capped.num_blocks, 10);
        let none = EngineOptions { kv_cache_mb: 0, ..EngineOptions::default() }.scheduler(&model, unbounded).unwrap_err();
        assert!(none.contains("kv_cache_mb"), "{none}");
        let zero = EngineOptions { max_running: 0, ..EngineOptions::default() }.scheduler(&model, unbounded).unwrap_err();
        assert!(zero.contains("at least 1"), "{zero}");
    }
}
