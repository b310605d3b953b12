//! `--kv-cache-type` and its per-side forms, shared by every subcommand that runs a model.

use cinder_model::{KvType, KvTypes, Model};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct KvTypeArg {
    /// What the KV cache stores keys and values as: f32, f16, q8_0 or q4_0 (llama.cpp's
    /// blocks of 32 along a head) [default: f16]
    #[arg(long, env = "CINDER_KV_CACHE_TYPE")]
    pub kv_cache_type: Option<KvType>,
    /// Keys only, over --kv-cache-type (llama.cpp's --cache-type-k)
    #[arg(long, visible_alias = "cache-type-k")]
    pub kv_cache_type_k: Option<KvType>,
    /// Values only, over --kv-cache-type (llama.cpp's --cache-type-v)
    #[arg(long, visible_alias = "cache-type-v")]
    pub kv_cache_type_v: Option<KvType>,
}

impl KvTypeArg {
    /// The types the flags give over `base` (a config file's, or the default).
    pub fn over(&self, base: KvTypes) -> KvTypes {
        let both = self.kv_cache_type;
        KvTypes {
            keys: self.kv_cache_type_k.or(both).unwrap_or(base.keys),
            values: self.kv_cache_type_v.or(both).unwrap_or(base.values),
        }
    }

    /// Sets the flags' types on `model`.
    pub fn apply(&self, model: &mut Model) -> anyhow::Result<()> {
        set_kv_types(model, self.over(KvTypes::default()))
    }
}

/// Sets `types` on `model`, or says which flag asked for what it cannot store.
pub fn set_kv_types(model: &mut Model, types: KvTypes) -> anyhow::Result<()> {
    model.set_kv_types(types).map_err(|e| anyhow::anyhow!("--kv-cache-type {types}: {e}"))
}
