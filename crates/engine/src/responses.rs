//! OpenAI's Responses API on the chat path: a Responses body (with the conversation a
//! stored response left) becomes a chat [`GenerationBody`], and a choice's text and calls
//! become a response's output items, whole or as the stream of typed events.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::openai::response::{Choice, Output};
use crate::openai::{
    CalledFunction, FunctionSpec, GenerationBody, InvalidRequest, JsonSchemaFormat, Message, MessageToolCall,
    ResponseFormat, TextOr, Tool, ToolCall, ToolChoice, ToolKind,
};

/// The body of `POST /v1/responses`.
#[derive(Debug, Clone, Deserialize)]
pub struct ResponsesBody {
    pub model: Option<String>,
    pub input: TextOr<Item>,
    /// A system message before the conversation (not carried on by `previous_response_id`).
    pub instructions: Option<String>,
    pub tools: Option<Vec<ToolBody>>,
    pub tool_choice: Option<ToolChoiceBody>,
    pub parallel_tool_calls: Option<bool>,
    pub text: Option<TextBody>,
    pub max_output_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stream: Option<bool>,
    /// Keep the response for `GET` and `previous_response_id` [default: true].
    pub store: Option<bool>,
    pub previous_response_id: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    pub user: Option<String>,
    /// Not implemented: `true` is refused.
    pub background: Option<bool>,
}

/// An input item: a message, an earlier call, or a call's output.
#[derive(Debug, Clone, Deserialize)]
pub struct Item {
    /// `message` (the default for an item with a `role`), `function_call` or
    /// `function_call_output`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub id: Option<String>,
    pub status: Option<String>,
    pub role: Option<String>,
    pub content: Option<TextOr<Part>>,
    pub call_id: Option<String>,
    pub name: Option<String>,
    pub arguments: Option<String>,
    pub output: Option<String>,
}

/// A content part: `input_text`, or `output_text` in an earlier answer.
#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    pub annotations: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ToolBody {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub parameters: Option<Value>,
    pub strict: Option<bool>,
}

/// `"auto" | "none" | "required"` or `{"type": "function", "name"}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ToolChoiceBody {
    Mode(String),
    Function {
        #[serde(rename = "type")]
        kind: String,
        name: String,
    },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TextBody {
    pub format: Option<FormatBody>,
}

/// `{"type": "text" | "json_object"}` or `{"type": "json_schema", "name", "schema", "strict"}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct FormatBody {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: Option<String>,
    pub schema: Option<Value>,
    pub strict: Option<bool>,
    pub description: Option<String>,
}

fn invalid(message: impl Into<String>, param: &str) -> InvalidRequest {
    InvalidRequest::new(message, Some(param))
}

/// Input items as chat messages: consecutive calls are one assistant turn.
pub fn chat_messages(items: &[Item], out: &mut Vec<Message>) -> Result<(), InvalidRequest> {
    for item in items {
        match item.kind.as_deref().unwrap_or("message") {
            "message" => {
                let role = match item.role.as_deref() {
                    Some("developer") | Some("system") => "system",
                    Some(role @ ("user" | "assistant")) => role,
                    other => return Err(invalid(format!("a message's `role` must be user, assistant, system or developer, not {other:?}"), "input")),
                };
                let text = match &item.content {
                    None => String::new(),
                    Some(TextOr::Text(text)) => text.clone(),
                    Some(TextOr::Parts(parts)) => parts
                        .iter()
                        .map(|p| match (p.kind.as_str(), &p.text) {
                            ("input_text" | "output_text", Some(text)) => Ok(text.as_str()),
                            (kind, _) => Err(invalid(format!("content parts of type `{kind}` are not supported"), "input")),
                        })
                        .collect::<Result<String, _>>()?,
                };
                out.push(Message::plain(role, text));
            }
            "function_call" => {
                let (Some(call_id), Some(name)) = (&item.call_id, &item.name) else {
                    return Err(invalid("a function_call item needs `call_id` and `name`", "input"));
                };
                let call = MessageToolCall {
                    id: Some(call_id.clone()),
                    kind: Some(ToolKind::Function),
                    function: CalledFunction { name: name.clone(), arguments: item.arguments.clone().unwrap_or_else(|| "{}".into()) },
                };
                match out.last_mut() {
                    Some(last) if last.role == "assistant" && last.tool_calls.is_some() => last.tool_calls.as_mut().expect("checked").push(call),
                    _ => out.push(Message { tool_calls: Some(vec![call]), ..Message::plain("assistant", String::new()) }),
                }
            }
            "function_call_output" => {
                let call_id = item.call_id.clone().ok_or_else(|| invalid("a function_call_output item needs `call_id`", "input"))?;
                let output = item.output.clone().unwrap_or_default();
                out.push(Message { tool_call_id: Some(call_id), ..Message::plain("tool", output) });
            }
            kind => return Err(invalid(format!("input items of type `{kind}` are not supported"), "input")),
        }
    }
    Ok(())
}

impl ResponsesBody {
    /// The input as items (a string is one user message).
    pub fn input_items(&self) -> Vec<Item> {
        match &self.input {
            TextOr::Text(text) => vec![Item {
                kind: Some("message".into()),
                id: None,
                status: None,
                role: Some("user".into()),
                content: Some(TextOr::Text(text.clone())),
                call_id: None,
                name: None,
                arguments: None,
                output: None,
            }],
            TextOr::Parts(items) => items.clone(),
        }
    }

    /// The chat request this asks for, after `history` (the items of the previous
    /// response's conversation and its output).
    pub fn into_chat(self, history: &[Item]) -> Result<GenerationBody, InvalidRequest> {
        if self.background == Some(true) {
            return Err(invalid("`background` responses are not implemented", "background"));
        }
        let mut messages = Vec::new();
        if let Some(instructions) = &self.instructions {
            messages.push(Message::plain("system", instructions.clone()));
        }
        chat_messages(history, &mut messages)?;
        chat_messages(&self.input_items(), &mut messages)?;
        let tools = self
            .tools
            .map(|tools| {
                tools
                    .into_iter()
                    .map(|t| match (t.kind.as_str(), t.name) {
                        ("function", Some(name)) => Ok(Tool {
                            kind: ToolKind::Function,
                            function: FunctionSpec { name, description: t.description, parameters: t.parameters, strict: t.strict },
                        }),
                        ("function", None) => Err(invalid("a function tool needs `name`", "tools")),
                        (kind, _) => Err(invalid(format!("built-in tools (`{kind}`) are not implemented: only `function` tools"), "tools")),
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let tool_choice = self
            .tool_choice
            .map(|choice| match choice {
                ToolChoiceBody::Mode(mode) => Ok(ToolChoice::Mode(mode)),
                ToolChoiceBody::Function { kind, name } if kind == "function" => {
                    Ok(ToolChoice::function(name))
                }
                ToolChoiceBody::Function { kind, .. } => Err(invalid(format!("`tool_choice` of type `{kind}` is not implemented"), "tool_choice")),
            })
            .transpose()?;
        let response_format = match self.text.and_then(|t| t.format) {
            None => None,
            Some(f) => match f.kind.as_str() {
                "text" => None,
                "json_object" => Some(ResponseFormat::JsonObject),
                "json_schema" => Some(ResponseFormat::JsonSchema {
                    json_schema: JsonSchemaFormat {
                        name: f.name.unwrap_or_else(|| "response".into()),
                        description: f.description,
                        schema: f.schema,
                        strict: f.strict,
                    },
                }),
                kind => return Err(invalid(format!("`text.format` type `{kind}`: one of text, json_object, json_schema"), "text.format")),
            },
        };
        Ok(GenerationBody {
            model: self.model,
            messages: Some(messages),
            max_tokens: self.max_output_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            stream: self.stream,
            user: self.user,
            tools,
            tool_choice,
            parallel_tool_calls: self.parallel_tool_calls,
            response_format,
            ..GenerationBody::default()
        })
    }
}

/// What a response echoes of its request.
#[derive(Debug, Clone)]
pub struct Echo {
    pub id: String,
    pub model: String,
    pub created_at: u64,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub previous_response_id: Option<String>,
    pub store: bool,
    pub metadata: Map<String, Value>,
    pub tools: Value,
    pub tool_choice: Value,
    pub parallel_tool_calls: bool,
    pub text: Value,
}

impl Echo {
    pub fn of(body: &ResponsesBody, id: String, model: String, created_at: u64) -> Self {
        Self {
            id,
            model,
            created_at,
            instructions: body.instructions.clone(),
            max_output_tokens: body.max_output_tokens,
            temperature: body.temperature,
            top_p: body.top_p,
            previous_response_id: body.previous_response_id.clone(),
            store: body.store.unwrap_or(true),
            metadata: body.metadata.clone().unwrap_or_default(),
            tools: serde_json::to_value(body.tools.as_deref().unwrap_or_default()).expect("plain data"),
            tool_choice: body.tool_choice.as_ref().map_or(json!("auto"), |c| serde_json::to_value(c).expect("plain data")),
            parallel_tool_calls: body.parallel_tool_calls.unwrap_or(true),
            text: body.text.as_ref().map_or(json!({"format": {"type": "text"}}), |t| serde_json::to_value(t).expect("plain data")),
        }
    }

    /// The response object with `output` so far.
    pub fn response(&self, status: &str, output: &[Value], finish_reason: Option<&str>, usage: Option<(usize, usize)>) -> Value {
        let incomplete = (finish_reason == Some("length")).then(|| json!({"reason": "max_output_tokens"}));
        let status = if incomplete.is_some() { "incomplete" } else { status };
        let usage = usage.map(|(input, output)| {
            json!({
                "input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input + output,
            })
        });
        json!({
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "model": self.model, "output": output, "usage": usage, "error": null, "incomplete_details": incomplete,
            "instructions": self.instructions, "max_output_tokens": self.max_output_tokens,
            "temperature": self.temperature, "top_p": self.top_p, "previous_response_id": self.previous_response_id,
            "store": self.store, "metadata": self.metadata, "parallel_tool_calls": self.parallel_tool_calls,
            "tool_choice": self.tool_choice, "tools": self.tools, "text": self.text,
        })
    }

    fn item_id(&self, kind: &str, index: usize) -> String {
        format!("{kind}_{}_{index}", self.id.trim_start_matches("resp_"))
    }

    fn message_item(&self, index: usize, text: &str, status: &str) -> Value {
        let content: Vec<Value> = if status == "completed" { vec![output_text(text)] } else { Vec::new() };
        json!({"type": "message", "id": self.item_id("msg", index), "status": status, "role": "assistant", "content": content})
    }

    fn call_item(&self, index: usize, call: &ToolCall, status: &str) -> Value {
        let arguments = if status == "completed" { call.arguments.as_str() } else { "" };
        json!({
            "type": "function_call", "id": self.item_id("fc", index), "call_id": self.item_id("call", index),
            "name": call.name, "arguments": arguments, "status": status,
        })
    }

    /// A whole answer's output items: its text, or its calls.
    pub fn output(&self, text: &str, calls: Option<&[ToolCall]>) -> Vec<Value> {
        match calls {
            Some(calls) => calls.iter().enumerate().map(|(i, call)| self.call_item(i, call, "completed")).collect(),
            None => vec![self.message_item(0, text, "completed")],
        }
    }
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

/// A response's stream: the typed events of one choice's chunks, as `(type, data)`, each
/// with its `sequence_number`.
#[derive(Debug)]
pub struct ResponseEvents {
    echo: Echo,
    sequence: u64,
    /// Output items so far (the open one as it was added).
    output: Vec<Value>,
    /// The open message item's text.
    text: Option<String>,
    /// The open call item: its name and arguments so far.
    call: Option<ToolCall>,
    /// The whole response, once it ended.
    done: Option<Value>,
}

impl ResponseEvents {
    /// The stream and its first events, `response.created` and `response.in_progress`.
    pub fn start(echo: Echo) -> (Self, Vec<(&'static str, Value)>) {
        let mut events = Self { echo, sequence: 0, output: Vec::new(), text: None, call: None, done: None };
        let response = events.echo.response("in_progress", &[], None, None);
        let first = vec![
            events.event("response.created", json!({"response": response})),
            events.event("response.in_progress", json!({"response": response})),
        ];
        (events, first)
    }

    /// The whole response, once the stream ended.
    pub fn response(&self) -> Option<&Value> {
        self.done.as_ref()
    }

    fn event(&mut self, kind: &'static str, mut data: Value) -> (&'static str, Value) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        (kind, data)
    }

    /// Opens an output item with `item` (in progress) and returns its index and id.
    fn add_item(&mut self, item: Value, out: &mut Vec<(&'static str, Value)>) -> (usize, Value) {
        let index = self.output.len();
        let id = item["id"].clone();
        out.push(self.event("response.output_item.added", json!({"output_index": index, "item": item})));
        self.output.push(Value::Null);
        (index, id)
    }

    fn close_text(&mut self, out: &mut Vec<(&'static str, Value)>) {
        let Some(text) = self.text.take() else { return };
        let index = self.output.len() - 1;
        let item = self.echo.message_item(index, &text, "completed");
        let at = |mut data: Value| {
            data["item_id"] = item["id"].clone();
            data["output_index"] = json!(index);
            data["content_index"] = json!(0);
            data
        };
        out.push(self.event("response.output_text.done", at(json!({"text": text, "logprobs": []}))));
        out.push(self.event("response.content_part.done", at(json!({"part": output_text(&text)}))));
        out.push(self.event("response.output_item.done", json!({"output_index": index, "item": item})));
        self.output[index] = item;
    }

    fn close_call(&mut self, out: &mut Vec<(&'static str, Value)>) {
        let Some(call) = self.call.take() else { return };
        let index = self.output.len() - 1;
        let item = self.echo.call_item(index, &call, "completed");
        let done = json!({"item_id": item["id"], "output_index": index, "arguments": call.arguments, "name": call.name});
        out.push(self.event("response.function_call_arguments.done", done));
        out.push(self.event("response.output_item.done", json!({"output_index": index, "item": item})));
        self.output[index] = item;
    }

    /// The events of a chat chunk's choice; at its end the closing events and
    /// `response.completed` (or `response.incomplete`, cut by `max_output_tokens`) with the
    /// whole response. `usage`: prompt and generated tokens so far.
    pub fn chunk(&mut self, choice: &Choice, usage: (usize, usize)) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        let Output::Delta(delta) = &choice.output else { return out };
        if let crate::openai::response::Content::Text(text) = &delta.content {
            if !text.is_empty() {
                if self.text.is_none() {
                    let index = self.output.len();
                    let (index, id) = self.add_item(self.echo.message_item(index, "", "in_progress"), &mut out);
                    let part = json!({"item_id": id, "output_index": index, "content_index": 0, "part": output_text("")});
                    out.push(self.event("response.content_part.added", part));
                    self.text = Some(String::new());
                }
                let index = self.output.len() - 1;
                let id = self.echo.item_id("msg", index);
                self.text.as_mut().expect("opened").push_str(text);
                let data = json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []});
                out.push(self.event("response.output_text.delta", data));
            }
        }
        for piece in delta.tool_calls.iter().flatten() {
            if !piece.function.name.is_empty() {
                self.close_text(&mut out);
                self.close_call(&mut out);
                let call = ToolCall { name: piece.function.name.clone(), arguments: String::new() };
                let index = self.output.len();
                self.add_item(self.echo.call_item(index, &call, "in_progress"), &mut out);
                self.call = Some(call);
            }
            if !piece.function.arguments.is_empty() {
                let index = self.output.len() - 1;
                self.call.as_mut().expect("a call's arguments come after its name").arguments.push_str(&piece.function.arguments);
                let data = json!({"item_id": self.echo.item_id("fc", index), "output_index": index, "delta": piece.function.arguments});
                out.push(self.event("response.function_call_arguments.delta", data));
            }
        }
        if let Some(reason) = choice.finish_reason {
            self.close_text(&mut out);
            self.close_call(&mut out);
            let response = self.echo.response("completed", &self.output, Some(reason), Some(usage));
            let kind = if response["status"] == "incomplete" { "response.incomplete" } else { "response.completed" };
            out.push(self.event(kind, json!({"response": response})));
            self.done = Some(response);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::parse;

    #[test]
    fn items_and_history_become_chat_messages() {
        let previous: ResponsesBody = parse(br#"{"input": "Weather in Paris?"}"#).unwrap();
        let mut history = previous.input_items();
        history.push(parse(br#"{"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{\"city\": \"Paris\"}"}"#).unwrap());
        let body: ResponsesBody = parse(
            br#"{"model": "m", "instructions": "Be brief.", "max_output_tokens": 9,
                "input": [{"type": "function_call_output", "call_id": "c1", "output": "18 C"},
                          {"role": "user", "content": [{"type": "input_text", "text": "And tomorrow?"}]}],
                "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
                "tool_choice": {"type": "function", "name": "weather"},
                "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}}}"#,
        )
        .unwrap();
        let chat = body.into_chat(&history).unwrap();
        let messages = chat.messages.unwrap();
        let roles: Vec<&str> = messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
        assert_eq!(messages[2].tool_calls.as_ref().unwrap()[0].function.name, "weather");
        assert_eq!(messages[3].tool_call_id.as_deref(), Some("c1"));
        assert!(matches!(chat.tool_choice, Some(ToolChoice::Named(_))));
        assert!(matches!(chat.response_format, Some(ResponseFormat::JsonSchema { .. })));
        assert_eq!(chat.max_tokens, Some(9));
    }

    #[test]
    fn what_is_not_implemented_is_refused_by_name() {
        let refused = |body: &str| parse::<ResponsesBody>(body.as_bytes()).and_then(|b| b.into_chat(&[])).unwrap_err().message;
        assert!(refused(r#"{"input": "hi", "background": true}"#).contains("`background`"));
        assert!(refused(r#"{"input": "hi", "tools": [{"type": "web_search"}]}"#).contains("built-in tools (`web_search`)"));
        assert!(refused(r#"{"input": "hi", "reasoning": {"effort": "low"}}"#).contains("`reasoning`"));
        assert!(refused(r#"{"input": [{"type": "input_image"}]}"#).contains("`input_image`"));
    }

    #[test]
    fn a_streamed_answer_adds_fills_and_completes_its_item() {
        use crate::openai::response::Message as Delta;
        let body: ResponsesBody = parse(br#"{"input": "hi", "max_output_tokens": 2}"#).unwrap();
        let (mut events, first) = ResponseEvents::start(Echo::of(&body, "resp_1".into(), "m".into(), 0));
        assert_eq!(first.iter().map(|e| e.0).collect::<Vec<_>>(), ["response.created", "response.in_progress"]);
        let text = Choice::new(0, Output::Delta(Delta::delta(true, "Hi".into(), false)), None);
        let names: Vec<&str> = events.chunk(&text, (3, 1)).iter().map(|e| e.0).collect();
        assert_eq!(names, ["response.output_item.added", "response.content_part.added", "response.output_text.delta"]);
        let last = events.chunk(&Choice::new(0, Output::Delta(Delta::delta(false, "!".into(), true)), Some("length")), (3, 2));
        let names: Vec<&str> = last.iter().map(|e| e.0).collect();
        assert_eq!(
            names,
            ["response.output_text.delta", "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.incomplete"]
        );
        let response = events.response().unwrap();
        assert_eq!(response["output"][0]["content"][0]["text"], "Hi!");
        assert_eq!((response["status"].as_str(), response["usage"]["total_tokens"].as_u64()), (Some("incomplete"), Some(5)));
        assert_eq!(last.last().unwrap().1["sequence_number"], 9);
    }
}
