//! A Llama-architecture language model on Burn, with sampling and generation.
//!
//! [`Llama::load`] reads a GGUF file (see `cinder-gguf`), checks that its tensors match the
//! hyperparameters in its metadata ([`LlamaConfig`]), and uploads the weights to a Burn
//! [`Device`](burn::tensor::Device) — on this crate's default path, wgpu ([`wgpu_device`]), which
//! runs on Vulkan, Metal, DX12 and WebGPU. [`Llama::forward`] runs a chunk of tokens through
//! the model against a [`KvCache`] and returns the logits of the last one; [`generate`] loops
//! that with a [`Sampler`] and streams text.
//!
//! The forward pass follows llama.cpp for the `llama` architecture: RMSNorm, RoPE on adjacent
//! pairs ("NORM" rope; GGUF converters permute Q/K rows for it), grouped-query attention,
//! a SwiGLU feed-forward block, and an LM head tied to the token embedding when the file has
//! no `output.weight`.

mod config;
mod device;
mod error;
pub mod fused;
mod generate;
mod kernel;
mod llama;
pub mod paged;
pub mod quant;
pub mod reference;
mod sampling;
#[cfg(test)]
mod tests;
pub mod tiny;

pub use burn::tensor::Device;
pub use config::{LlamaConfig, SUPPORTED_ARCHITECTURES};
#[cfg(not(target_family = "wasm"))]
pub use device::wgpu_device;
pub use device::{AdapterInfo, adapter_info, adapter_name, wgpu_device_async};
pub use error::ModelError;
pub use generate::{FinishReason, GenerateRequest, Generation, GenerationStats, generate};
pub use llama::{KvCache, Llama, LogitRows, MAX_DEVICE_TOP_K, PendingLogits};
pub use paged::{PagedKvCache, SeqChunk};
pub use sampling::{Sampler, SamplingParams, log_softmax, top_logprobs};
