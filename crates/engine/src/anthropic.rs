//! Anthropic's Messages API on the chat path: a Messages body becomes a chat
//! [`GenerationBody`] (so limits, tools, tenants and batching are chat's), and a choice's
//! text and calls become a message, or its stream of events.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::openai::response::{Choice, Output};
use crate::openai::{
    CalledFunction, Content, FunctionSpec, GenerationBody, InvalidRequest, Message, MessageToolCall, Stop, Tool,
    TextOr, ToolCall, ToolChoice, ToolKind,
};

/// The body of `/v1/messages` (and, without `max_tokens`, of `/v1/messages/count_tokens`).
#[derive(Debug, Clone, Deserialize)]
pub struct MessagesBody {
    pub model: Option<String>,
    /// Required by `/v1/messages`.
    pub max_tokens: Option<u64>,
    pub messages: Vec<InputMessage>,
    pub system: Option<Blocks>,
    pub stop_sequences: Option<Vec<String>>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub stream: Option<bool>,
    pub tools: Option<Vec<ToolSpec>>,
    pub tool_choice: Option<ToolChoiceBody>,
    pub metadata: Option<Metadata>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    /// A label for the end user; the tenant comes from the API key.
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InputMessage {
    pub role: String,
    pub content: Blocks,
}

/// A text, or a list of content blocks.
pub type Blocks = TextOr<Block>;

#[derive(Debug, Clone, Deserialize)]
pub struct Block {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    /// `tool_use`: the call's id, the tool's name and its input object.
    pub id: Option<String>,
    pub name: Option<String>,
    pub input: Option<Value>,
    /// `tool_result`: the call it answers, and what the tool gave.
    pub tool_use_id: Option<String>,
    pub content: Option<Blocks>,
    pub is_error: Option<bool>,
    /// An image's or document's data: refused by name rather than as an unknown field.
    pub source: Option<Value>,
    /// Prompt caching hints: every prefix is cached here anyway.
    pub cache_control: Option<Value>,
}

/// A tool the model may call.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolSpec {
    /// Absent or `custom`; Anthropic's own server tools are not run here.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub name: String,
    pub description: Option<String>,
    pub input_schema: Option<Value>,
    pub cache_control: Option<Value>,
}

/// `{"type": "auto" | "any" | "none"}` or `{"type": "tool", "name": …}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolChoiceBody {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: Option<String>,
    pub disable_parallel_tool_use: Option<bool>,
}

fn invalid(message: impl Into<String>, param: &str) -> InvalidRequest {
    InvalidRequest::new(message, Some(param))
}

impl TextOr<Block> {
    /// The text of a system prompt or a tool result: text blocks only.
    fn text(&self, param: &str) -> Result<String, InvalidRequest> {
        match self {
            TextOr::Text(text) => Ok(text.clone()),
            TextOr::Parts(blocks) => blocks
                .iter()
                .map(|b| match (b.kind.as_str(), &b.text) {
                    ("text", Some(text)) => Ok(text.as_str()),
                    (kind, _) => Err(invalid(format!("content blocks of type `{kind}` are not supported here"), param)),
                })
                .collect(),
        }
    }
}

/// One input message as chat messages: a user turn's tool results become `tool` messages
/// (before its text), an assistant turn's `tool_use` blocks its calls.
fn chat_messages(input: &InputMessage, out: &mut Vec<Message>) -> Result<(), InvalidRequest> {
    let role = input.role.as_str();
    if role != "user" && role != "assistant" {
        return Err(invalid(format!("`role` must be user or assistant, not `{role}` (the system prompt is `system`)"), "messages"));
    }
    let blocks = match &input.content {
        TextOr::Text(text) => return Ok(out.push(Message::plain(role, text.clone()))),
        TextOr::Parts(blocks) => blocks,
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in blocks {
        match (block.kind.as_str(), role) {
            ("text", _) => text.push_str(block.text.as_deref().ok_or_else(|| invalid("a text block needs `text`", "messages"))?),
            ("tool_use", "assistant") => {
                let (Some(id), Some(name)) = (&block.id, &block.name) else {
                    return Err(invalid("a tool_use block needs `id` and `name`", "messages"));
                };
                let input = block.input.clone().unwrap_or_else(|| json!({}));
                calls.push(MessageToolCall {
                    id: Some(id.clone()),
                    kind: Some(ToolKind::Function),
                    function: CalledFunction { name: name.clone(), arguments: input.to_string() },
                });
            }
            ("tool_result", "user") => {
                let id = block.tool_use_id.clone().ok_or_else(|| invalid("a tool_result block needs `tool_use_id`", "messages"))?;
                let mut result = block.content.as_ref().map(|c| c.text("messages")).transpose()?.unwrap_or_default();
                if block.is_error == Some(true) {
                    result = format!("Error: {result}");
                }
                out.push(Message { role: "tool".into(), content: Some(Content::Text(result)), tool_calls: None, tool_call_id: Some(id) });
            }
            (kind, _) => return Err(invalid(format!("{role} content blocks of type `{kind}` are not supported"), "messages")),
        }
    }
    if !text.is_empty() || !calls.is_empty() || role == "assistant" {
        out.push(Message { tool_calls: (!calls.is_empty()).then_some(calls), ..Message::plain(role, text) });
    }
    Ok(())
}

impl MessagesBody {
    /// The chat request this asks for. `count_only`: `/v1/messages/count_tokens`, where
    /// `max_tokens` is not asked for.
    pub fn into_chat(self, count_only: bool) -> Result<GenerationBody, InvalidRequest> {
        let max_tokens = match (self.max_tokens, count_only) {
            (Some(n), _) => Some(n),
            (None, true) => None,
            (None, false) => return Err(invalid("`max_tokens` is required", "max_tokens")),
        };
        let mut messages = Vec::new();
        if let Some(system) = &self.system {
            messages.push(Message::plain("system", system.text("system")?));
        }
        for input in &self.messages {
            chat_messages(input, &mut messages)?;
        }
        let tools = self
            .tools
            .map(|tools| {
                tools
                    .into_iter()
                    .map(|t| match t.kind.as_deref() {
                        None | Some("custom") => Ok(Tool {
                            kind: ToolKind::Function,
                            function: FunctionSpec { name: t.name, description: t.description, parameters: t.input_schema, strict: None },
                        }),
                        Some(kind) => Err(invalid(format!("server tools (`{kind}`) are not supported: only tools with an `input_schema`"), "tools")),
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let parallel = self.tool_choice.as_ref().and_then(|c| c.disable_parallel_tool_use).map(|disable| !disable);
        let tool_choice = self
            .tool_choice
            .map(|choice| match (choice.kind.as_str(), choice.name) {
                ("auto", _) => Ok(ToolChoice::Mode("auto".into())),
                ("any", _) => Ok(ToolChoice::Mode("required".into())),
                ("none", _) => Ok(ToolChoice::Mode("none".into())),
                ("tool", Some(name)) => Ok(ToolChoice::function(name)),
                ("tool", None) => Err(invalid("`tool_choice` of type tool needs `name`", "tool_choice")),
                (kind, _) => Err(invalid(format!("`tool_choice` type `{kind}`: one of auto, any, tool, none"), "tool_choice")),
            })
            .transpose()?;
        Ok(GenerationBody {
            model: self.model,
            messages: Some(messages),
            max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            stream: self.stream,
            stop: self.stop_sequences.map(Stop::Many),
            user: self.metadata.and_then(|m| m.user_id),
            tools,
            tool_choice,
            parallel_tool_calls: parallel,
            ..GenerationBody::default()
        })
    }
}

/// Anthropic's `stop_reason` for a chat finish reason.
pub fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" => "tool_use",
        _ => "end_turn",
    }
}

/// A call's id, `toolu_…` as Anthropic's are.
fn tool_use_id(message_id: &str, index: usize) -> String {
    format!("toolu_{}_{index}", message_id.trim_start_matches("msg_"))
}

fn tool_use(message_id: &str, index: usize, call: &ToolCall) -> Value {
    let input: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
    json!({"type": "tool_use", "id": tool_use_id(message_id, index), "name": call.name, "input": input})
}

/// An error in Anthropic's shape, its `type` from the HTTP status.
pub fn error(status: u16, message: &str) -> Value {
    let kind = match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500.. => "api_error",
        _ => "invalid_request_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// Token counts in Anthropic's shape.
pub fn usage(input_tokens: usize, output_tokens: usize) -> Value {
    json!({"input_tokens": input_tokens, "output_tokens": output_tokens})
}

/// Why a message ended, Anthropic's `stop_reason`, and the stop sequence that ended it.
fn ending(finish_reason: &str, stop_sequence: Option<&str>) -> Value {
    match stop_sequence {
        Some(stop) => json!({"stop_reason": "stop_sequence", "stop_sequence": stop}),
        None => json!({"stop_reason": stop_reason(finish_reason), "stop_sequence": null}),
    }
}

/// A whole answer: its text, or its calls, with why it ended (`stop_sequence`: the stop
/// string that ended it).
pub fn message(id: &str, model: &str, text: &str, calls: Option<&[ToolCall]>, finish_reason: &str, stop_sequence: Option<&str>, usage: Value) -> Value {
    let content: Vec<Value> = match calls {
        Some(calls) => calls.iter().enumerate().map(|(i, call)| tool_use(id, i, call)).collect(),
        None => vec![json!({"type": "text", "text": text})],
    };
    let mut message = json!({"id": id, "type": "message", "role": "assistant", "model": model, "content": content});
    let ending = if calls.is_some() { json!({"stop_reason": "tool_use", "stop_sequence": null}) } else { ending(finish_reason, stop_sequence) };
    message.as_object_mut().expect("an object").extend(ending.as_object().expect("an object").clone());
    message["usage"] = usage;
    message
}

/// A message's stream: the events of one choice's chunks, as `(event name, data)`.
#[derive(Debug)]
pub struct MessageEvents {
    id: String,
    /// Content blocks started so far.
    blocks: usize,
    /// The block open now, if any.
    open: Option<OpenBlock>,
    /// The stop string that ended the message, once it ended so.
    stop_sequence: Option<String>,
}

/// The kind of the content block being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    Text,
    ToolUse,
}

impl MessageEvents {
    /// The stream of message `id` and its first event, `message_start`.
    pub fn start(id: &str, model: &str, input_tokens: usize) -> (Self, (&'static str, Value)) {
        let message = json!({
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": usage(input_tokens, 0),
        });
        (Self { id: id.to_owned(), blocks: 0, open: None, stop_sequence: None }, ("message_start", json!({"type": "message_start", "message": message})))
    }

    /// The stop string that ended the message (its last chunk reports it).
    pub fn stopped_by(&mut self, stop_sequence: Option<String>) {
        self.stop_sequence = stop_sequence;
    }

    fn close(&mut self, out: &mut Vec<(&'static str, Value)>) {
        if self.open.take().is_some() {
            out.push(("content_block_stop", json!({"type": "content_block_stop", "index": self.blocks - 1})));
        }
    }

    /// Closes the open block and starts `block` of `kind`.
    fn open(&mut self, kind: OpenBlock, block: Value, out: &mut Vec<(&'static str, Value)>) {
        self.close(out);
        self.open = Some(kind);
        self.blocks += 1;
        out.push(("content_block_start", json!({"type": "content_block_start", "index": self.blocks - 1, "content_block": block})));
    }

    fn delta(&self, delta: Value) -> (&'static str, Value) {
        ("content_block_delta", json!({"type": "content_block_delta", "index": self.blocks - 1, "delta": delta}))
    }

    /// The events of a chat chunk's choice: text deltas, a `tool_use` block per call with
    /// its input as it is written; at the end, `message_delta` with the stop reason and
    /// `output_tokens`, then `message_stop`.
    pub fn chunk(&mut self, choice: &Choice, output_tokens: usize) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        let Output::Delta(delta) = &choice.output else { return out };
        if let crate::openai::response::Content::Text(text) = &delta.content {
            if !text.is_empty() {
                if self.open != Some(OpenBlock::Text) {
                    self.open(OpenBlock::Text, json!({"type": "text", "text": ""}), &mut out);
                }
                out.push(self.delta(json!({"type": "text_delta", "text": text})));
            }
        }
        for piece in delta.tool_calls.iter().flatten() {
            if !piece.function.name.is_empty() {
                let block = json!({"type": "tool_use", "id": tool_use_id(&self.id, self.blocks), "name": piece.function.name, "input": {}});
                self.open(OpenBlock::ToolUse, block, &mut out);
            }
            if !piece.function.arguments.is_empty() {
                out.push(self.delta(json!({"type": "input_json_delta", "partial_json": piece.function.arguments})));
            }
        }
        if let Some(reason) = choice.finish_reason {
            self.close(&mut out);
            let delta = ending(reason, self.stop_sequence.as_deref());
            out.push(("message_delta", json!({"type": "message_delta", "delta": delta, "usage": {"output_tokens": output_tokens}})));
            out.push(("message_stop", json!({"type": "message_stop"})));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::parse;

    #[test]
    fn a_tool_round_trip_becomes_chat_messages() {
        let body: MessagesBody = parse(
            br#"{"model": "m", "max_tokens": 20, "system": [{"type": "text", "text": "Be brief."}],
                "messages": [
                  {"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                     {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"},
                     {"type": "text", "text": "And tomorrow?"}]}],
                "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                "stop_sequences": ["\n\n"], "top_k": 5}"#,
        )
        .unwrap();
        let chat = body.into_chat(false).unwrap();
        let messages = chat.messages.unwrap();
        let roles: Vec<&str> = messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
        let calls = messages[2].tool_calls.as_ref().unwrap();
        assert_eq!((calls[0].function.name.as_str(), calls[0].function.arguments.as_str()), ("weather", r#"{"city":"Paris"}"#));
        assert_eq!(messages[3].tool_call_id.as_deref(), Some("toolu_1"));
        assert!(matches!(chat.tool_choice, Some(ToolChoice::Mode(ref m)) if m == "required"));
        assert_eq!((chat.parallel_tool_calls, chat.top_k, chat.max_tokens), (Some(false), Some(5), Some(20)));
    }

    #[test]
    fn what_is_not_served_is_refused_by_name() {
        let refused = |body: &str| parse::<MessagesBody>(body.as_bytes()).and_then(|b| b.into_chat(false)).unwrap_err().message;
        assert!(refused(r#"{"messages": [{"role": "user", "content": "hi"}]}"#).contains("`max_tokens` is required"));
        let image = r#"{"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}"#;
        assert!(refused(image).contains("`image`"), "{}", refused(image));
        let search = r#"{"max_tokens": 5, "messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}"#;
        assert!(refused(search).contains("server tools (`web_search_20250305`)"));
        assert!(refused(r#"{"max_tokens": 5, "messages": [], "thinking": {}}"#).contains("thinking"));
    }

    #[test]
    fn a_streamed_answer_opens_and_closes_its_blocks() {
        use crate::openai::response::{Message as Delta, ToolCallOut, FunctionOut};
        let (mut events, (first, _)) = MessageEvents::start("msg_1", "m", 7);
        assert_eq!(first, "message_start");
        let text = Choice::new(0, Output::Delta(Delta::delta(true, "Hi".into(), false)), None);
        let names: Vec<&str> = events.chunk(&text, 1).iter().map(|e| e.0).collect();
        assert_eq!(names, ["content_block_start", "content_block_delta"]);
        let call = ToolCallOut { index: Some(0), id: "c".into(), kind: "function", function: FunctionOut { name: "f".into(), arguments: "{\"a\"".into() } };
        let calls = Delta { tool_calls: Some(vec![call]), ..Delta::default() };
        let names: Vec<&str> = events.chunk(&Choice::new(0, Output::Delta(calls), None), 2).iter().map(|e| e.0).collect();
        assert_eq!(names, ["content_block_stop", "content_block_start", "content_block_delta"]);
        let more = ToolCallOut { index: Some(0), id: String::new(), kind: "", function: FunctionOut { name: String::new(), arguments: ": 1}".into() } };
        let rest = Delta { tool_calls: Some(vec![more]), ..Delta::default() };
        let last = events.chunk(&Choice::new(0, Output::Delta(rest), Some("tool_calls")), 3);
        let names: Vec<&str> = last.iter().map(|e| e.0).collect();
        assert_eq!(names, ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]);
        assert_eq!((&last[0].1["index"], &last[0].1["delta"]["partial_json"]), (&json!(1), &json!(": 1}")));
        assert_eq!(last[2].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(last[2].1["usage"]["output_tokens"], 3);
    }
}
