//! Reading GGUF files: the container llama.cpp and its converters write model weights in.
//!
//! A GGUF file is a little-endian header (`GGUF`, version, counts), a list of typed metadata
//! key/value pairs (`general.architecture`, `llama.block_count`, the tokenizer's vocabulary…),
//! a list of tensor descriptions (name, shape, element type, offset), and then, aligned to
//! `general.alignment` (32 by default), the tensor data itself.
//!
//! [`GgufFile::open`] memory-maps a file; [`GgufFile::from_bytes`] parses a buffer already in
//! memory (the browser fetches the model into one). Parsing validates everything it reads
//! and reports problems as a [`GgufError`] naming what is wrong; no input makes it panic.
//!
//! ```no_run
//! let file = cinder_gguf::GgufFile::open("model.gguf")?;
//! let arch = file.metadata().get_str("general.architecture")?;
//! let embd = file.tensor("token_embd.weight")?;
//! let weights: Vec<f32> = file.dequantize(embd)?;
//! # Ok::<(), cinder_gguf::GgufError>(())
//! ```
//!
//! [`GgufWriter`] writes files in the same format; tests use it to make tiny models.

pub mod blocks;
mod dequant;
mod error;
mod ggml_type;
mod metadata;
mod quantize;
mod reader;
pub mod synth;
mod writer;

pub use dequant::dequantize;
pub use error::GgufError;
pub use ggml_type::GgmlType;
pub use metadata::{Metadata, MetadataValue, ValueType};
pub use quantize::quantize;
pub use reader::{ByteSource, GgufFile, SharedBytes, TensorInfo};
pub use writer::GgufWriter;

/// GGUF's magic number, the bytes `GGUF` read as a little-endian `u32`.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of tensor data when the file does not set `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
