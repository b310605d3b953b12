//! Language models on Burn: the families of [`arch`] (Llama, Qwen 2/3, Gemma 2/3, Phi-3),
//! with sampling.
//!
//! [`Model::load`] reads a GGUF file (see `cinder-gguf`), describes it through its
//! architecture ([`ModelConfig`], checked against the file's tensors), and loads the
//! weights onto a [`Backend`]: the GPU through wgpu ([`wgpu_device`]: Vulkan, Metal, DX12,
//! WebGPU) and the WGSL kernels of `shaders/`, or the CPU and the kernels of `cinder-cpu`.
//! [`Model::forward_batch`] runs chunks of many sequences as one batch against a
//! [`PagedKvCache`]; [`Model::forward`] is the one-sequence case. The forward pass follows
//! llama.cpp's graph for each architecture.

pub mod arch;
mod attention;
mod backend;
mod config;
mod device;
mod error;
pub mod fused;
mod kernel;
pub mod linear;
mod logits;
pub mod lora;
pub mod many_tokens;
mod model;
mod ops;
pub mod profile;
pub mod paged;
mod pooling;
pub mod quant;
pub mod reference;
pub mod rope;
pub mod synthetic;
mod sampling;
#[cfg(test)]
mod tests;
pub mod tiny;

pub use arch::Architecture;
pub use backend::{Backend, DeviceChoice};
pub use burn::tensor::Device;
pub use cinder_cpu::{KvType, RowAdapter};
pub use config::{KvLayout, KvTypes, LayerAttention, ModelConfig};
#[cfg(not(target_family = "wasm"))]
pub use device::wgpu_device;
pub use device::{
    AdapterInfo, DeviceMemory, adapter_info, adapter_name, device_memory, max_binding_bytes, release_device_memory, set_browser_subgroups,
    wgpu_device_async,
};
pub use error::ModelError;
pub use lora::LoraAdapter;
pub use logits::{LogitRows, MAX_DEVICE_TOP_K, Outputs, PendingLogits};
pub use model::{KvCache, Model, time_layer_products};
pub use paged::{PagedKvCache, SeqChunk};
pub use pooling::{PooledPrompt, Pooling, Reduce, normalize};
pub use sampling::{OutOfRange, Sampler, SamplingParams, Verdict, log_softmax, top_logprobs};
