//! OpenAI's response bodies and stream chunks for completions and chat completions, typed:
//! the one place their JSON is built.

use serde::Serialize;
use serde_json::Value;

use cinder_tokenizer::Tokenizer;

use super::{CallDelta, ToolCall};
use crate::{Finished, SpeculativeUsage, TokenLogprob};

/// Which endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completion,
    Chat,
}

impl Endpoint {
    /// The `object` of a whole response.
    pub fn object(self) -> &'static str {
        match self {
            Self::Completion => "text_completion",
            Self::Chat => "chat.completion",
        }
    }

    /// The `object` of a stream chunk.
    pub fn chunk_object(self) -> &'static str {
        match self {
            Self::Completion => "text_completion",
            Self::Chat => "chat.completion.chunk",
        }
    }

    /// The prefix of response ids.
    pub fn id_prefix(self) -> &'static str {
        match self {
            Self::Completion => "cmpl",
            Self::Chat => "chatcmpl",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// The choices' speculative decoding, when they speculated (a cinder extension).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculative: Option<SpeculativeStats>,
}

/// `usage.speculative`: draft tokens verified, accepted, and their ratio.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SpeculativeStats {
    pub draft_tokens: usize,
    pub accepted_tokens: usize,
    pub acceptance_rate: f64,
}

impl From<SpeculativeUsage> for SpeculativeStats {
    fn from(usage: SpeculativeUsage) -> Self {
        Self { draft_tokens: usage.draft_tokens, accepted_tokens: usage.accepted_tokens, acceptance_rate: usage.acceptance_rate() }
    }
}

impl Usage {
    /// Counts a finished choice; its prompt only when `own_prompt` (the choices of one
    /// prompt share it).
    pub fn add(&mut self, finished: &Finished, own_prompt: bool) {
        if own_prompt {
            self.prompt_tokens += finished.prompt_tokens;
        }
        self.completion_tokens += finished.completion_tokens;
        self.total_tokens = self.prompt_tokens + self.completion_tokens;
        if let Some(choice) = finished.speculative {
            let (drafted, accepted) = self.speculative.map_or((0, 0), |t| (t.draft_tokens, t.accepted_tokens));
            let sum = SpeculativeUsage { draft_tokens: drafted + choice.draft_tokens, accepted_tokens: accepted + choice.accepted_tokens };
            self.speculative = Some(sum.into());
        }
    }
}

/// A response (`choices` whole) or a stream chunk (`choices` with deltas).
#[derive(Debug, Clone, Serialize)]
pub struct Body<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<Choice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Chat with `return_token_ids`: the prompt's ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<&'a [u32]>,
}

/// One choice of a response or chunk, in the endpoint's shape.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    pub index: usize,
    #[serde(flatten)]
    pub output: Output,
    /// Null unless `logprobs` was asked for.
    pub logprobs: Value,
    pub finish_reason: Option<&'static str>,
    /// With `return_token_ids`: the generated ids (a chunk's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
    /// Completions with `return_token_ids`: the ids of this choice's prompt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
}

impl Choice {
    /// Choice `index` with `output`, without logprobs or token ids.
    pub fn new(index: usize, output: Output, finish_reason: Option<&'static str>) -> Self {
        Self { index, output, logprobs: Value::Null, finish_reason, token_ids: None, prompt_token_ids: None }
    }
}

/// What a choice carries.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// A completion's (or a completion chunk's) text.
    Text(String),
    /// A chat response's message.
    Message(Message),
    /// A chat chunk's change.
    Delta(Message),
}

/// The assistant's message, or a part of it in a chunk (absent fields are left out).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Message {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// Null in a response made of calls; left out of a chunk without text.
    #[serde(skip_serializing_if = "Content::is_absent")]
    pub content: Content,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallOut>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Content {
    #[default]
    Absent,
    Null,
    Text(String),
}

impl Content {
    fn is_absent(&self) -> bool {
        *self == Content::Absent
    }
}

impl Serialize for Content {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Content::Text(text) => serializer.serialize_str(text),
            Content::Absent | Content::Null => serializer.serialize_none(),
        }
    }
}

impl Message {
    /// A chat response's message: text, or calls with null content.
    pub fn answer(text: String, calls: Option<Vec<ToolCallOut>>) -> Self {
        match calls {
            Some(calls) => Self { role: Some("assistant"), content: Content::Null, tool_calls: Some(calls) },
            None => Self { role: Some("assistant"), content: Content::Text(text), tool_calls: None },
        }
    }

    /// A chat chunk's change: the role on a choice's first chunk; the text, except on a
    /// choice's last chunk when it has none.
    pub fn delta(first: bool, text: String, last: bool) -> Self {
        let content = if !text.is_empty() || !last { Content::Text(text) } else { Content::Absent };
        Self { role: first.then_some("assistant"), content, tool_calls: None }
    }
}

/// A call in a response, OpenAI's `tool_calls` entry (`index` in streams only). A streamed
/// call's first piece has its id, type and name; the later ones only more arguments.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(rename = "type", skip_serializing_if = "str::is_empty")]
    pub kind: &'static str,
    pub function: FunctionOut,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionOut {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub arguments: String,
}

/// The id of call `index` of choice `choice` of response `id`.
fn call_id(id: &str, choice: usize, index: usize) -> String {
    let id = id.split_once('-').map_or(id, |(_, id)| id);
    format!("call_{id}_{choice}_{index}")
}

/// The `tool_calls` of choice `choice` of response `id`.
pub fn tool_calls(id: &str, choice: usize, calls: &[ToolCall]) -> Vec<ToolCallOut> {
    calls
        .iter()
        .enumerate()
        .map(|(i, call)| ToolCallOut {
            index: None,
            id: call_id(id, choice, i),
            kind: "function",
            function: FunctionOut { name: call.name.clone(), arguments: call.arguments.clone() },
        })
        .collect()
}

/// Streamed pieces of the calls of choice `choice` of response `id`.
pub fn call_pieces(id: &str, choice: usize, deltas: &[CallDelta]) -> Vec<ToolCallOut> {
    deltas
        .iter()
        .map(|d| ToolCallOut {
            index: Some(d.index),
            id: if d.name.is_some() { call_id(id, choice, d.index) } else { String::new() },
            kind: if d.name.is_some() { "function" } else { "" },
            function: FunctionOut { name: d.name.clone().unwrap_or_default(), arguments: d.arguments.clone() },
        })
        .collect()
}

fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    String::from_utf8_lossy(tokenizer.token_bytes(id)).into_owned()
}

#[derive(Serialize)]
struct ChatLogprob<'a> {
    token: String,
    logprob: f32,
    bytes: &'a [u8],
    #[serde(skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<Vec<ChatLogprob<'a>>>,
}

fn chat_logprob<'t>(tokenizer: &'t Tokenizer, id: u32, logprob: f32, top_logprobs: Option<Vec<ChatLogprob<'t>>>) -> ChatLogprob<'t> {
    ChatLogprob { token: token_text(tokenizer, id), logprob, bytes: tokenizer.token_bytes(id), top_logprobs }
}

#[derive(Serialize)]
struct ChatLogprobs<'a> {
    content: Vec<ChatLogprob<'a>>,
}

#[derive(Serialize)]
struct CompletionLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<f32>,
    top_logprobs: Vec<serde_json::Map<String, Value>>,
    text_offset: Vec<usize>,
}

/// Logprobs in the endpoint's format, for `entries` produced after `text_offset` bytes of
/// the choice's text.
pub fn logprobs(tokenizer: &Tokenizer, endpoint: Endpoint, entries: &[(u32, TokenLogprob)], mut text_offset: usize) -> Value {
    let value = match endpoint {
        Endpoint::Chat => {
            let content = entries
                .iter()
                .map(|(id, lp)| {
                    let top = lp.top.iter().map(|&(t, l)| chat_logprob(tokenizer, t, l, None)).collect();
                    chat_logprob(tokenizer, *id, lp.logprob, Some(top))
                })
                .collect();
            serde_json::to_value(ChatLogprobs { content })
        }
        Endpoint::Completion => {
            let mut text_offsets = Vec::with_capacity(entries.len());
            for (id, _) in entries {
                text_offsets.push(text_offset);
                text_offset += token_text(tokenizer, *id).len();
            }
            serde_json::to_value(CompletionLogprobs {
                tokens: entries.iter().map(|(id, _)| token_text(tokenizer, *id)).collect(),
                token_logprobs: entries.iter().map(|(_, lp)| lp.logprob).collect(),
                top_logprobs: entries
                    .iter()
                    .map(|(_, lp)| lp.top.iter().map(|&(t, l)| (token_text(tokenizer, t), Value::from(l))).collect())
                    .collect(),
                text_offset: text_offsets,
            })
        }
    };
    value.expect("logprobs are plain data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_take_each_endpoints_shape() {
        let body = |output: Output| {
            let choice = Choice::new(0, output, Some("stop"));
            serde_json::to_value(Body { id: "x", object: "o", created: 1, model: "m", choices: vec![choice], usage: None, prompt_token_ids: None })
                .unwrap()
        };
        let text = body(Output::Text("hi".into()));
        assert_eq!(text["choices"][0]["text"], "hi");
        assert!(text.get("usage").is_none());
        let message = body(Output::Message(Message::answer("hi".into(), None)));
        assert_eq!(message["choices"][0]["message"], serde_json::json!({"role": "assistant", "content": "hi"}));
        let call = ToolCall { name: "f".into(), arguments: "{}".into() };
        let calls = body(Output::Message(Message::answer(String::new(), Some(tool_calls("chatcmpl-7", 0, &[call])))));
        assert_eq!(
            calls["choices"][0]["message"],
            serde_json::json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_7_0_0", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
        );
        let delta = body(Output::Delta(Message::default()));
        assert_eq!(delta["choices"][0]["delta"], serde_json::json!({}));
    }
}

/// `/v1/embeddings`' answer: one item per input, in order, each vector as numbers or as
/// the base64 text of its little-endian f32 bytes.
pub fn embeddings(model: &str, vectors: &[Vec<f32>], base64: bool, prompt_tokens: usize) -> Value {
    use base64::Engine as _;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                serde_json::json!(vector)
            };
            serde_json::json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    serde_json::json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })
}
