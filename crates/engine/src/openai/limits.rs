//! What one request may ask of a server: every count that multiplies the work of a request
//! or of each of its tokens, checked before anything per-sequence exists (`[limits]` in
//! `cinder serve`'s config file; a page's engine takes the defaults).

use serde::{Deserialize, Serialize};

/// See the module documentation. The defaults are what a public server can live with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestLimits {
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Prompts in one completion request (`prompt` as a list).
    pub max_prompts: usize,
    /// Inputs of one embeddings request (each its own sequence, batched with the others).
    pub max_embedding_inputs: usize,
    /// Choices per prompt (`n`).
    pub max_n: usize,
    /// Sequences one request runs: its prompts times `n`.
    pub max_sequences: usize,
    /// Longest prompt in tokens [default: the model's context].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_prompt_tokens: Option<usize>,
    /// Most tokens one choice may generate [default: what the context leaves].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// `max_tokens` of requests that give none [default: 16 for a completion, what the
    /// context leaves for a chat].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_max_tokens: Option<usize>,
    /// Stop strings per request, and the bytes of each: every token is matched against
    /// them.
    pub max_stop: usize,
    pub max_stop_bytes: usize,
    /// `stop_token_ids` entries.
    pub max_stop_token_ids: usize,
    /// `logit_bias` entries.
    pub max_logit_bias: usize,
    /// Alternatives reported per token (`logprobs`, `top_logprobs`).
    pub max_logprobs: usize,
    /// Messages of one chat.
    pub max_messages: usize,
    /// Functions in `tools`.
    pub max_tools: usize,
    /// The JSON text of the schemas a request's grammar is built from: `response_format`'s
    /// schema, or the tools' parameters together.
    pub max_schema_bytes: usize,
    /// Longest a request's grammar may take to compile; past it the request is refused.
    pub grammar_compile_ms: u64,
    /// Responses API answers kept per tenant (`store`), the oldest dropped first.
    pub stored_responses: usize,
    /// Seconds a stored response is kept.
    pub stored_response_ttl_s: u64,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            max_prompts: 32,
            max_embedding_inputs: 2048,
            max_n: 16,
            max_sequences: 64,
            max_prompt_tokens: None,
            max_tokens: None,
            default_max_tokens: None,
            max_stop: 16,
            max_stop_bytes: 256,
            max_stop_token_ids: 64,
            max_logit_bias: 1024,
            max_logprobs: 20,
            max_messages: 1024,
            max_tools: 128,
            max_schema_bytes: 64 << 10,
            grammar_compile_ms: 2_000,
            stored_responses: 1_000,
            stored_response_ttl_s: 3_600,
        }
    }
}

impl RequestLimits {
    /// Every limit is at least 1; an error names the key (`limits.KEY`).
    pub fn check(&self) -> Result<(), String> {
        let counts = [
            ("max_body_bytes", Some(self.max_body_bytes)),
            ("max_prompts", Some(self.max_prompts)),
            ("max_embedding_inputs", Some(self.max_embedding_inputs)),
            ("max_n", Some(self.max_n)),
            ("max_sequences", Some(self.max_sequences)),
            ("max_prompt_tokens", self.max_prompt_tokens),
            ("max_tokens", self.max_tokens),
            ("default_max_tokens", self.default_max_tokens),
            ("max_stop_bytes", Some(self.max_stop_bytes)),
            ("max_messages", Some(self.max_messages)),
            ("max_schema_bytes", Some(self.max_schema_bytes)),
            ("grammar_compile_ms", usize::try_from(self.grammar_compile_ms).ok()),
            ("stored_response_ttl_s", usize::try_from(self.stored_response_ttl_s).ok()),
        ];
        if let Some((key, _)) = counts.iter().find(|(_, value)| *value == Some(0)) {
            return Err(format!("`limits.{key}` must be at least 1"));
        }
        Ok(())
    }
}
