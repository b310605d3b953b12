//! The scheduler shared by cinder's native server and its browser build: it decides which
//! requests run together, how KV-cache memory is spent, who waits and who is turned away.
//!
//! It is a pure state machine. Nothing here touches a GPU, spawns a thread or reads a clock:
//! the caller passes the current [`Time`] into every call, so a run is a deterministic
//! function of its inputs, it can be property-tested and simulated, and it compiles to wasm.
//!
//! The loop an engine runs around it:
//!
//! ```
//! use cinder_scheduler::{Scheduler, SchedulerConfig, Request, StepResult, Time};
//!
//! let mut scheduler = Scheduler::new(SchedulerConfig::default());
//! let id = scheduler.submit(Request::new(vec![1, 2, 3, 4], 8), Time::ZERO).unwrap();
//! let mut now = Time::ZERO;
//! while !scheduler.is_idle() {
//!     let plan = scheduler.plan(now);            // what to run this step
//!     // ... run the model on plan.prefill and plan.decode, sample one token per sequence
//!     //     that finished its prompt or decoded ...
//!     let result = StepResult::sampled(&plan, |_seq| 7);
//!     now = now + cinder_scheduler::Duration::from_millis(20);
//!     scheduler.complete(result, now);           // tokens in, finished sequences out
//! }
//! assert_eq!(scheduler.take_finished()[0].id, id);
//! ```
//!
//! Modules, from the bottom up:
//! - [`blocks`]: the paged KV block pool: refcounted blocks released on drop, copy-on-write,
//!   and a prefix cache of full blocks reused across requests (LRU-evicted under pressure).
//! - [`queue`]: the waiting queue: priority levels with aging, earliest-deadline-first for
//!   requests with deadlines, and weighted fair sharing between tenants.
//! - [`admission`]: per-tenant token buckets, queue limits, load levels that shed the lowest
//!   priorities first, and a circuit breaker for failing steps.
//! - [`policy`]: batch formation policies, all driven through the same step API.
//! - [`plan`]: the plan of a step and the engine's result, the types scheduler and engine
//!   exchange.
//! - [`scheduler`]: the state machine tying them together (static batching in its own
//!   module).
//! - [`sim`]: a discrete-event simulator that drives the real scheduler with a cost model.

pub mod admission;
pub mod blocks;
mod config;
pub mod plan;
pub mod policy;
pub mod queue;
mod request;
pub mod scheduler;
pub mod sim;
mod time;

pub use admission::{LoadLevel, Rejection, RejectionReason};
pub use config::SchedulerConfig;
pub use policy::{BatchPolicy, PolicyName};
pub use request::{Priority, Request, SeqId, TenantId};
pub use plan::{DecodeItem, FinishReason, FinishedSequence, ForkItem, Metrics, PrefillChunk, StepPlan, StepResult};
pub use scheduler::Scheduler;
pub use time::{Duration, Time};
