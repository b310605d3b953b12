//! What callers submit to the engine and what it streams back.

use cinder_model::{Pooling, SamplingParams};
use cinder_scheduler::{Duration, FinishReason, Priority, Rejection, TenantId, Time};

use crate::{Constraint, Speculation};

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Texts that end generation; they are not part of the output.
    pub stop: Vec<String>,
    /// Token ids that end generation, besides the model's end-of-generation tokens.
    pub stop_token_ids: Vec<u32>,
    /// Keep going past end-of-generation tokens until `max_tokens`.
    pub ignore_eos: bool,
    /// Report each token's log-probability with this many most likely alternatives.
    pub logprobs: Option<usize>,
    pub priority: Priority,
    /// The most urgent level the queue may lift it to: its tenant's cap.
    pub max_priority: Priority,
    pub tenant: TenantId,
    /// Longest wait to start; past it, a request still waiting ends with
    /// [`FinishReason::Deadline`]. `None`: the scheduler's default for its priority.
    pub deadline: Option<Duration>,
    /// Whether cached prompt-prefix blocks may be reused.
    pub use_prefix_cache: bool,
    /// Output held to a grammar (a JSON schema, tool calls).
    pub constraint: Option<Constraint>,
    /// Speculative decoding; `None`: the engine's default ([`crate::SpeculationConfig`]).
    pub speculative: Option<Speculation>,
    /// The LoRA adapter to run with, by the name it was loaded under
    /// ([`crate::Engine::load_adapter`]); `None`: the base model.
    pub adapter: Option<String>,
    /// The prompt's embedding, pooled so, instead of generated tokens (`max_tokens` 0): it
    /// comes in [`Finished::embedding`].
    pub embed: Option<Pooling>,
}

impl GenerationRequest {
    pub fn new(prompt: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            prompt,
            max_tokens,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            priority: Priority::Normal,
            max_priority: Priority::Critical,
            tenant: TenantId(0),
            deadline: None,
            use_prefix_cache: true,
            constraint: None,
            speculative: None,
            adapter: None,
            embed: None,
        }
    }

    /// A request for the embedding of `prompt`, pooled by `pooling`.
    pub fn embedding(prompt: Vec<u32>, pooling: Pooling) -> Self {
        Self { embed: Some(pooling), ..Self::new(prompt, 0) }
    }
}

/// A token's log-probability (natural log, before penalties) and the most likely tokens at
/// its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What the engine sends about a request, in order: tokens, then one `Finished`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token and the text it releases (empty while a character or a possible
    /// stop string is incomplete, and for the token that ends generation).
    Token { token: u32, text: String, logprob: Option<TokenLogprob> },
    Finished(Finished),
}

/// The end of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub reason: FinishReason,
    /// Why, when the request failed ([`FinishReason::Failed`]).
    pub error: Option<String>,
    /// Text held back until the end (an incomplete character, a partial stop string that
    /// never completed).
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub arrival: Time,
    /// When it started running (`None`: it never did).
    pub scheduled: Option<Time>,
    pub first_token: Option<Time>,
    pub finished: Time,
    pub preemptions: u32,
    /// Draft tokens verified and accepted, when the request speculated.
    pub speculative: Option<SpeculativeUsage>,
    /// An embedding request's vector (pooled, not normalised), when it completed.
    pub embedding: Option<Vec<f32>>,
    /// The stop string that ended it, when one did.
    pub stop_sequence: Option<String>,
}

/// A request's speculative decoding: draft tokens proposed and verified, and how many of
/// them the model accepted (each accepted one is a token generated without a step of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpeculativeUsage {
    pub draft_tokens: usize,
    pub accepted_tokens: usize,
}

impl SpeculativeUsage {
    pub fn acceptance_rate(&self) -> f64 {
        if self.draft_tokens == 0 { 0.0 } else { self.accepted_tokens as f64 / self.draft_tokens as f64 }
    }
}

/// A request run alone to its end ([`Engine::generate`](crate::Engine::generate)).
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Every sampled token, including one that ended generation.
    pub tokens: Vec<u32>,
    pub text: String,
    pub finished: Finished,
}

impl Generation {
    /// Prompt tokens per second: the prompt's tokens over the time to the first token.
    pub fn prompt_tokens_per_s(&self) -> f64 {
        let f = &self.finished;
        rate(f.prompt_tokens, f.first_token.map(|t| t.since(f.arrival)))
    }

    /// Tokens per second after the first (which the prompt's pass produces).
    pub fn decode_tokens_per_s(&self) -> f64 {
        let f = &self.finished;
        rate(self.tokens.len().saturating_sub(1), f.first_token.map(|t| f.finished.since(t)))
    }
}

fn rate(count: usize, time: Option<Duration>) -> f64 {
    match time {
        Some(t) if t.0 > 0 && count > 0 => count as f64 / (t.0 as f64 / 1e6),
        _ => 0.0,
    }
}

/// Why a request was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    /// The request itself is wrong (a bad token id, too long for the context, a bad
    /// sampling parameter).
    #[error("{0}")]
    Invalid(String),
    /// The scheduler turned it away (overload, rate limits, a full queue).
    #[error("{}", .0.message)]
    Rejected(Rejection),
}
