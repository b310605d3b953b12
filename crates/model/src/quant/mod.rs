//! Weight matrices kept in their GGUF block format on the device.
//!
//! A [`Linear`](crate::linear::Linear) layer holds its matrix quantized when a kernel reads that format
//! (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K: `shaders/matmul_quant.wgsl`), so device memory
//! is about the file's bytes and each product reads 4.5–8.5 bits per weight instead of 32.
//! Other formats are dequantized to an f32 tensor at load and multiplied by Burn.
//!
//! At load, blocks are split into two word arrays: the quantized values of each block
//! (whole words, so a lane reads aligned `u32`s) and the scales (two f16 per word; Q4_1's
//! scale and offset share one word; a K-quant super-block's scales take five words).
//! GGUF's 18/20/22/24/34/144/210-byte blocks are not word-aligned, so reading them in place
//! would cost byte-by-byte extraction. The kernels see every format as 32-value blocks;
//! the K-quants' unpack functions find their sub-block's scales in the super-block's words.
//!
//! [`format`] holds the block formats the kernels read and their device layout, [`wgsl`] the
//! kernels' generated code, [`matrix`] the matrix on the device and its launches; the layer
//! around it is [`crate::linear::Linear`].

mod format;
mod matrix;
mod wgsl;

pub use format::QuantFormat;
pub use matrix::QuantMatrix;
#[cfg(test)]
pub(crate) use matrix::MAX_QUANTIZED_TOKENS;
