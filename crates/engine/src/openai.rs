//! OpenAI's request bodies for completions and chat completions, parsed and checked the same
//! way wherever they arrive: over HTTP (`cinder serve`) or from a web page (`cinder-wasm`).

use std::collections::BTreeMap;

use cinder_model::SamplingParams;
use cinder_scheduler::{Duration, FinishReason, Priority, TenantId};
use cinder_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::GenerationRequest;

/// Why a request body was refused, and the field at fault (OpenAI's `param`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidRequest {
    pub message: String,
    pub param: Option<String>,
}

impl InvalidRequest {
    pub fn new(message: impl Into<String>, param: Option<&str>) -> Self {
        Self { message: message.into(), param: param.map(str::to_owned) }
    }
}

/// Parses a JSON body; a wrong type names the field, and so does a field cinder does not
/// implement (`tools`, a typo…), which is refused rather than dropped.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, InvalidRequest> {
    if body.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|&b| b != b'{') {
        return Err(InvalidRequest::new("the request body must be a JSON object", None));
    }
    let mut json = serde_json::Deserializer::from_slice(body);
    let mut unknown = Vec::new();
    let mut note_unknown = |path: serde_ignored::Path| unknown.push(field_name(&path));
    let ignored = serde_ignored::Deserializer::new(&mut json, &mut note_unknown);
    let parsed = serde_path_to_error::deserialize(ignored).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            InvalidRequest::new(format!("the body is not valid JSON: {inner}"), None)
        } else if path == "." {
            InvalidRequest::new(format!("bad request body: {inner}"), None)
        } else {
            InvalidRequest::new(format!("`{path}`: {inner}"), Some(&path))
        }
    })?;
    json.end().map_err(|e| InvalidRequest::new(format!("the body is not valid JSON: {e}"), None))?;
    if let Some(field) = unknown.first() {
        return Err(InvalidRequest::new(format!("`{field}`: cinder does not implement this field"), Some(field)));
    }
    Ok(parsed)
}

/// A field's path as a client writes it: `stream_options.x`, `messages[0].name`.
fn field_name(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_name(parent)),
        Path::Map { parent, key } => match field_name(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => field_name(parent),
    }
}

/// `prompt`: one text, one list of token ids, or a list of either.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

/// A chat message's content: text, or a list of parts of which the text ones count.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

impl Message {
    pub fn text(&self) -> Result<String, InvalidRequest> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(t)) => Ok(t.clone()),
            Some(Content::Parts(parts)) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => Ok(t.as_str()),
                    (kind, _) => Err(InvalidRequest::new(format!("content parts of type `{kind}` are not supported"), Some("messages"))),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Completions take a number of alternatives; chat takes a flag (with `top_logprobs`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum Logprobs {
    Flag(bool),
    Count(u32),
}

/// `priority`: a level name, or a number (0 most urgent, as vLLM's).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PriorityField {
    Level(i64),
    Name(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The body of `/v1/completions` and `/v1/chat/completions`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationBody {
    pub model: Option<String>,
    pub prompt: Option<Prompt>,
    pub messages: Option<Vec<Message>>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<Stop>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub seed: Option<u64>,
    pub logprobs: Option<Logprobs>,
    pub top_logprobs: Option<u32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// Token id (as a string, OpenAI's form) to a bias in [-100, 100] added to its logit.
    pub logit_bias: Option<BTreeMap<String, f32>>,
    pub ignore_eos: Option<bool>,
    pub priority: Option<PriorityField>,
    /// Milliseconds the request may wait to start; past them it ends unstarted.
    pub deadline_ms: Option<u64>,
    pub cache_prompt: Option<bool>,
    pub return_token_ids: Option<bool>,
    /// A label for the end user; the tenant comes from the API key, never from here.
    pub user: Option<String>,
    pub echo: Option<bool>,
    /// Completions: whether control-token text in `prompt` becomes control tokens (default
    /// true, as llama.cpp and vLLM do). Chat contents never do.
    pub parse_special: Option<bool>,
}

/// What the server allows a request: the context, and the `max_tokens` of requests that
/// give none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub context_length: usize,
    /// `None`: 16 for a completion (OpenAI's default), the rest of the context for a chat.
    pub default_max_tokens: Option<usize>,
}

/// Most alternatives per choice and most choices per request.
pub const MAX_LOGPROBS: u32 = 20;
pub const MAX_N: u32 = 16;
/// Longest `deadline_ms`: a day.
pub const MAX_DEADLINE_MS: u64 = 86_400_000;

/// A deadline of `ms` milliseconds, if in [1, MAX_DEADLINE_MS].
pub fn deadline_from_ms(ms: u64) -> Option<Duration> {
    (1..=MAX_DEADLINE_MS).contains(&ms).then(|| Duration::from_millis(ms))
}

impl GenerationBody {
    /// The sampling parameters, checked; `seed` is used when the body has none.
    pub fn sampling(&self, seed: u64) -> Result<SamplingParams, InvalidRequest> {
        let range = |name: &str, value: Option<f32>, ok: &dyn Fn(f32) -> bool, rule: &str| match value {
            Some(v) if !ok(v) => Err(InvalidRequest::new(format!("`{name}` must be {rule}; got {v}"), Some(name))),
            _ => Ok(()),
        };
        range("temperature", self.temperature, &|v| (0.0..=2.0).contains(&v), "in [0, 2]")?;
        range("top_p", self.top_p, &|v| v > 0.0 && v <= 1.0, "in (0, 1]")?;
        range("min_p", self.min_p, &|v| (0.0..=1.0).contains(&v), "in [0, 1]")?;
        range("presence_penalty", self.presence_penalty, &|v| (-2.0..=2.0).contains(&v), "in [-2, 2]")?;
        range("frequency_penalty", self.frequency_penalty, &|v| (-2.0..=2.0).contains(&v), "in [-2, 2]")?;
        range("repetition_penalty", self.repetition_penalty, &|v| v > 0.0 && v <= 10.0, "in (0, 10]")?;
        let logit_bias = self
            .logit_bias
            .iter()
            .flatten()
            .map(|(token, &bias)| {
                let param = format!("logit_bias.{token}");
                let id = token.trim().parse::<u32>().map_err(|_| {
                    InvalidRequest::new(format!("`logit_bias` keys are token ids; got {token:?}"), Some(&param))
                })?;
                if !(-100.0..=100.0).contains(&bias) {
                    return Err(InvalidRequest::new(format!("`{param}` must be in [-100, 100]; got {bias}"), Some(&param)));
                }
                Ok((id, bias))
            })
            .collect::<Result<_, _>>()?;
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => return Err(InvalidRequest::new(format!("`top_k` must be -1, 0 or positive; got {k}"), Some("top_k"))),
        };
        Ok(SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k,
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            logit_bias,
            seed: self.seed.unwrap_or(seed),
            ..SamplingParams::default()
        })
    }

    pub fn n(&self) -> Result<usize, InvalidRequest> {
        match self.n.unwrap_or(1) {
            n @ 1..=MAX_N => Ok(n as usize),
            n => Err(InvalidRequest::new(format!("`n` must be in [1, {MAX_N}]; got {n}"), Some("n"))),
        }
    }

    /// How many alternatives to report per token, if any.
    pub fn logprobs(&self, chat: bool) -> Result<Option<usize>, InvalidRequest> {
        let count = match (chat, self.logprobs) {
            (_, None) | (_, Some(Logprobs::Flag(false))) => return Ok(None),
            (true, Some(Logprobs::Flag(true))) => self.top_logprobs.unwrap_or(0),
            (false, Some(Logprobs::Count(k))) => k,
            (true, Some(Logprobs::Count(_))) => return Err(InvalidRequest::new("`logprobs` is a boolean here; use `top_logprobs` for a count", Some("logprobs"))),
            (false, Some(Logprobs::Flag(true))) => return Err(InvalidRequest::new("`logprobs` is a number of alternatives here", Some("logprobs"))),
        };
        if count > MAX_LOGPROBS {
            let param = if chat { "top_logprobs" } else { "logprobs" };
            return Err(InvalidRequest::new(format!("`{param}` must be at most {MAX_LOGPROBS}; got {count}"), Some(param)));
        }
        Ok(Some(count as usize))
    }

    pub fn stop(&self) -> Vec<String> {
        match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        }
    }

    pub fn priority(&self) -> Result<Priority, InvalidRequest> {
        let bad = |what: String| InvalidRequest::new(format!("`priority` must be 0-4 or critical, high, normal, low, batch; got {what}"), Some("priority"));
        match &self.priority {
            None => Ok(Priority::Normal),
            Some(PriorityField::Level(l)) if (0..=4).contains(l) => Ok(Priority::from_level(*l as usize)),
            Some(PriorityField::Level(l)) => Err(bad(l.to_string())),
            Some(PriorityField::Name(name)) => {
                Priority::from_name(name).ok_or_else(|| bad(format!("{name:?}")))
            }
        }
    }

    pub fn deadline(&self) -> Result<Option<Duration>, InvalidRequest> {
        let Some(ms) = self.deadline_ms else { return Ok(None) };
        let message = || format!("`deadline_ms` must be in [1, {MAX_DEADLINE_MS}] milliseconds; got {ms}");
        deadline_from_ms(ms).map(Some).ok_or_else(|| InvalidRequest::new(message(), Some("deadline_ms")))
    }

    /// The prompts of a completion: `prompt` as text (control-token text parsed unless
    /// `parse_special` is false) or ids.
    pub fn completion_prompts(&self, tokenizer: &Tokenizer) -> Result<Vec<Vec<u32>>, InvalidRequest> {
        let parse_special = self.parse_special.unwrap_or(true);
        let encode = |text: &str| {
            tokenizer
                .encode(text, true, parse_special)
                .map_err(|e| InvalidRequest::new(format!("cannot tokenize the prompt: {e}"), Some("prompt")))
        };
        let prompts = match &self.prompt {
            None => return Err(InvalidRequest::new("`prompt` is required", Some("prompt"))),
            Some(Prompt::Text(t)) => vec![encode(t)?],
            Some(Prompt::Ids(ids)) => vec![ids.clone()],
            Some(Prompt::Texts(texts)) => texts.iter().map(|t| encode(t)).collect::<Result<_, _>>()?,
            Some(Prompt::IdLists(lists)) => lists.clone(),
        };
        if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
            return Err(InvalidRequest::new("the prompt is empty", Some("prompt")));
        }
        Ok(prompts)
    }

    /// The prompt of a chat completion: `messages` rendered by the model's chat template,
    /// what they say tokenized as text (a `<|im_end|>` in a content is never the token).
    pub fn chat_prompt(&self, tokenizer: &Tokenizer, template: Option<&ChatTemplate>) -> Result<Vec<u32>, InvalidRequest> {
        if self.parse_special.is_some() {
            let message = "`parse_special` applies to completions; chat messages are always tokenized as text";
            return Err(InvalidRequest::new(message, Some("parse_special")));
        }
        let messages = self.messages.as_ref().filter(|m| !m.is_empty());
        let messages = messages.ok_or_else(|| InvalidRequest::new("`messages` must be a non-empty list", Some("messages")))?;
        let template = template.ok_or_else(|| InvalidRequest::new("this model has no chat template; use a completion", None))?;
        let messages: Vec<ChatMessage> =
            messages.iter().map(|m| Ok(ChatMessage::new(m.role.clone(), m.text()?))).collect::<Result<_, InvalidRequest>>()?;
        template.encode(tokenizer, &messages, true).map_err(|e| InvalidRequest::new(format!("chat template: {e}"), Some("messages")))
    }

    /// The engine requests for one of the body's prompts: `n` choices whose seeds differ by
    /// their index, each capped so the prompt and its answer fit in the context. Their
    /// tenant is the default one; a server sets the tenant its API key stands for.
    pub fn requests(&self, prompt: &[u32], chat: bool, limits: Limits, seed: u64) -> Result<Vec<GenerationRequest>, InvalidRequest> {
        let max_tokens = self.max_tokens(chat, prompt.len(), limits)?;
        let (logprobs, stop, priority, deadline) = (self.logprobs(chat)?, self.stop(), self.priority()?, self.deadline()?);
        (0..self.n()?)
            .map(|choice| {
                Ok(GenerationRequest {
                    prompt: prompt.to_vec(),
                    max_tokens,
                    sampling: self.sampling(seed.wrapping_add(choice as u64))?,
                    stop: stop.clone(),
                    stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
                    ignore_eos: self.ignore_eos.unwrap_or(false),
                    logprobs,
                    priority,
                    tenant: TenantId::default(),
                    deadline,
                    use_prefix_cache: self.cache_prompt.unwrap_or(true),
                })
            })
            .collect()
    }

    /// `max_completion_tokens` or `max_tokens`; without either, the server's default (cut
    /// to the room left), else 16 for a completion (OpenAI's default) and the rest of the
    /// context for a chat.
    fn max_tokens(&self, chat: bool, prompt: usize, limits: Limits) -> Result<usize, InvalidRequest> {
        let context_length = limits.context_length;
        let room = context_length.saturating_sub(prompt);
        let (asked, param) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => (Some(m), "max_completion_tokens"),
            (None, m) => (m, "max_tokens"),
        };
        let max = match (asked, limits.default_max_tokens, chat) {
            (Some(0), ..) => return Err(InvalidRequest::new(format!("`{param}` must be at least 1"), Some(param))),
            (Some(m), ..) => usize::try_from(m).unwrap_or(usize::MAX),
            (None, Some(default), _) => default.min(room.max(1)),
            (None, None, false) => 16.min(room.max(1)),
            (None, None, true) => room.max(1),
        };
        if max > room {
            let message =
                format!("the prompt ({prompt} tokens) plus {param} ({max}) exceeds the model's context of {context_length} tokens");
            return Err(InvalidRequest::new(message, Some(param)));
        }
        Ok(max)
    }
}

/// OpenAI's name for why a choice ended.
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "abort",
        FinishReason::Failed => "error",
        FinishReason::Deadline => "deadline",
    }
}
