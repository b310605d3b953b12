//! CPU kernels: what the device's WGSL kernels in `shaders/` do, on the CPU, for machines
//! where there is no GPU or only a software one.
//!
//! Weights stay in their GGUF blocks ([`cinder_gguf::blocks`]): a product decodes each
//! block once and multiplies it with every token's f32 activations (activations are not
//! rounded to 8 bits, so results keep parity with f32 weights). The arithmetic is SIMD
//! through `pulp` (AVX2 / AVX-512 on x86-64, NEON on aarch64, `simd128` on wasm32, from one
//! source) and tasks run in parallel on a rayon pool ([`Threads`]) natively.

mod attention;
mod kv;
mod lora;
mod matmul;
mod ops;
mod simd;
mod threads;

pub use attention::{Heads, KvLayer, QueryRow, ScoreRule, paged_attention};
pub use kv::{KvRows, KvType};
pub use lora::{LoraStack, RowAdapter};
pub use matmul::{BlockMatrix, MatmulError};
pub use ops::{RopeTables, gated, rms_norm};
pub use threads::Threads;
