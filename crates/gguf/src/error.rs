use crate::GgmlType;

/// Everything that can be wrong with a GGUF file or a request made of it.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("not a GGUF file: bad magic {found:?} (expected \"GGUF\")")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {0} (supported: 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("truncated GGUF file: {what} at byte {offset} runs past the end ({len} bytes)")]
    Truncated { what: String, offset: u64, len: u64 },
    #[error("invalid UTF-8 in {what} at byte {offset}")]
    InvalidUtf8 { what: String, offset: u64 },
    #[error("metadata key {key:?} has unknown value type {type_id}")]
    UnknownValueType { key: String, type_id: u32 },
    #[error("metadata key {key:?} nests arrays deeper than {max}")]
    NestingTooDeep { key: String, max: usize },
    #[error("metadata key {0:?} appears twice")]
    DuplicateKey(String),
    #[error("tensor {0:?} appears twice")]
    DuplicateTensor(String),
    #[error("tensor {tensor:?} has unknown type id {type_id}")]
    UnknownTensorType { tensor: String, type_id: u32 },
    #[error("tensor {tensor:?} has {n_dims} dimensions (at most 4 are allowed)")]
    TooManyDims { tensor: String, n_dims: u32 },
    #[error("tensor {tensor:?} has a bad shape {shape:?}: {reason}")]
    BadShape { tensor: String, shape: Vec<u64>, reason: String },
    #[error("tensor {tensor:?}: size of shape {shape:?} overflows")]
    SizeOverflow { tensor: String, shape: Vec<u64> },
    #[error("tensor {tensor:?} starts at offset {offset}, not a multiple of the alignment {alignment}")]
    MisalignedTensor { tensor: String, offset: u64, alignment: u64 },
    #[error("tensor {tensor:?} data [{start}, {end}) lies outside the file ({file_len} bytes)")]
    TensorOutOfBounds { tensor: String, start: u64, end: u64, file_len: u64 },
    #[error("tensors {first:?} and {second:?} overlap in the data section")]
    OverlappingTensors { first: String, second: String },
    #[error("general.alignment is {0}; it must be a non-zero power of two")]
    BadAlignment(u64),
    #[error("count {count} of {what} is larger than the file could hold")]
    ImplausibleCount { what: String, count: u64 },
    #[error("required metadata key {0:?} is missing")]
    MissingKey(String),
    #[error("metadata key {key:?} has type {found}, expected {expected}")]
    WrongType { key: String, expected: String, found: String },
    #[error("metadata key {key:?} has value {value}, out of range: {reason}")]
    OutOfRange { key: String, value: String, reason: String },
    #[error("tensor {0:?} not found")]
    TensorNotFound(String),
    #[error("dequantizing {ty} is not supported (tensor {tensor:?})")]
    UnsupportedType { tensor: String, ty: GgmlType },
    #[error("{ty} data of {len} bytes is not a whole number of {block_bytes}-byte blocks")]
    PartialBlock { ty: GgmlType, len: usize, block_bytes: usize },
}
