use std::panic::{AssertUnwindSafe, catch_unwind};

use cinder_gguf::GgufError;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported architecture {name:?} (supported: {supported})")]
    UnsupportedArchitecture { name: String, supported: String },
    #[error("unsupported model feature: {0}")]
    Unsupported(String),
    #[error("inconsistent model: {0}")]
    InvalidConfig(String),
    #[error("tensor {0} holds NaN or infinite values: the file is corrupt")]
    NonFinite(String),
    #[error("LoRA adapter: {0}")]
    Adapter(String),
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    #[error(
        "prompt of {prompt} tokens plus max_tokens {max_tokens} exceeds the context of {context} tokens"
    )]
    ContextOverflow { prompt: usize, max_tokens: usize, context: usize },
    #[error("KV cache is full: {needed} positions needed, {capacity} allocated")]
    CacheFull { needed: usize, capacity: usize },
    #[error("no GPU adapter could be initialised: {0}")]
    Device(String),
    #[error("device error: {0}")]
    Backend(String),
}

/// Runs `f`, turning a panic inside the backend (an allocation failure, a lost device) into
/// an error, so that one failed request cannot take a server down.
pub(crate) fn guard<T>(f: impl FnOnce() -> Result<T, ModelError>) -> Result<T, ModelError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| Err(ModelError::Backend(panic_message(panic.as_ref()))))
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "the device backend panicked".to_owned())
}
