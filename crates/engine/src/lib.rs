//! The engine: continuous batching of many requests on one model.
//!
//! An [`Engine`] owns the model, its paged KV cache on the device and a
//! [`Scheduler`](cinder_scheduler::Scheduler). Requests come in through
//! [`Engine::submit`] with a channel for their [`Event`]s. Every [`Engine::step`]:
//!
//! 1. cancels requests whose receivers were dropped (their blocks go back to the pool);
//! 2. asks the scheduler for a plan: prompt chunks of new or resumed sequences and one token
//!    of every decoding sequence, under a token budget, with KV blocks assigned;
//! 3. copies shared blocks that are about to be written (copy-on-write), then runs every
//!    chunk and decode as one batch ([`Model::forward_batch`](cinder_model::Model::forward_batch));
//! 4. samples one token for each sequence that finished its prompt or decoded, with that
//!    request's own sampler (so a seed gives the same text alone or batched), and streams
//!    the text it completes, holding back incomplete UTF-8 and possible stop strings;
//!    a request with a [`Constraint`] (a JSON schema, a grammar) samples only among the
//!    tokens its grammar allows;
//!    a decode may carry draft tokens (speculative decoding, [`speculative`]): each is
//!    verified against the row before it, and the accepted ones join the output at once;
//! 5. tells the scheduler what was sampled and what stopped, and sends the end of every
//!    finished request.
//!
//! [`Engine::launch`] and [`Engine::land`] are the same step cut where it waits for the
//! device, for a browser, whose thread must not block: it awaits the logits in between.
//!
//! The engine reads no clock and starts no thread: the caller passes the time and decides
//! when to step, so the same engine runs under the native server's worker thread and in a
//! browser's event loop.

mod adapters;
pub mod anthropic;
mod constraint;
mod draft;
mod engine;
pub mod openai;
mod request;
pub mod responses;
pub mod speculative;
pub mod stop;

pub use adapters::{AdapterMetrics, Adapters};
pub use constraint::{Constraint, Grammars, json_layout};
pub use draft::DraftModel;
pub use engine::{Engine, EngineMetrics, Launched, StepOutcome};
pub use request::{Event, Finished, Generation, GenerationRequest, SpeculativeUsage, SubmitError, TokenLogprob};
pub use speculative::{Speculation, SpeculationConfig, SpeculativeMethod};
