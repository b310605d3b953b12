//! cinder in a web page: the same [`Engine`](cinder_engine::Engine), scheduler and WGSL
//! kernels as the native server, on the browser's WebGPU.
//!
//! The Rust side is [`WasmEngine`](browser::WasmEngine) (wasm32 only): it opens WebGPU,
//! loads a GGUF from bytes, takes OpenAI-shaped request bodies (parsed by
//! [`cinder_engine::openai`], as the server parses them) and runs one engine step per
//! `step()` call, awaiting the device between launching a batch and sampling from it, so the
//! page's thread never blocks. Every request submitted before a step shares its batch.
//!
//! `web/cinder.js` is the JavaScript face: it fetches the model with progress and keeps it
//! in the Cache API, drives the step loop (yielding to the browser between steps), and wraps
//! events into `generate()` promises and `chat.completions.create()` async iterators.
//!
//! What does not need a browser lives in target-independent modules and is tested natively:
//! the engine options ([`options`]), the events as the page sees them ([`events`]) and the
//! profile of its steps ([`profile`]).

pub mod events;
pub mod options;
pub mod profile;

#[cfg(target_family = "wasm")]
pub mod browser;
