//! OpenAI's request bodies for completions and chat completions, parsed and checked the same
//! way wherever they arrive: over HTTP (`cinder serve`) or from a web page (`cinder-wasm`);
//! [`response`] builds what goes back.

use std::collections::BTreeMap;

use cinder_model::SamplingParams;
use cinder_scheduler::{Duration, FinishReason, Priority, TenantId};
use cinder_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::{Constraint, GenerationRequest, Grammars, Speculation, SpeculativeMethod};

pub mod response;

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
    /// An assistant's earlier calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<MessageToolCall>>,
    /// A `tool` message: the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

/// A call in an assistant message of the conversation so far.
#[derive(Debug, Clone, Deserialize)]
pub struct MessageToolCall {
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<ToolKind>,
    pub function: CalledFunction,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CalledFunction {
    pub name: String,
    /// The arguments as a JSON text.
    pub arguments: String,
}

impl Message {
    /// What the template sees as the message's content: its text, or an assistant's calls
    /// written as the model writes them (a JSON list of `{"name", "arguments"}`).
    pub fn text(&self) -> Result<String, InvalidRequest> {
        if let Some(calls) = self.tool_calls.as_ref().filter(|c| !c.is_empty()) {
            let calls: Vec<serde_json::Value> = calls
                .iter()
                .map(|c| {
                    let arguments = serde_json::from_str(&c.function.arguments).unwrap_or(serde_json::Value::String(c.function.arguments.clone()));
                    serde_json::json!({"name": c.function.name, "arguments": arguments})
                })
                .collect();
            return Ok(serde_json::Value::from(calls).to_string());
        }
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

/// `response_format`: free text, any JSON object, or JSON matching a schema.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Clone, Deserialize)]
pub struct JsonSchemaFormat {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
    /// Output always follows the schema here, strict or not.
    #[serde(default)]
    pub strict: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolKind {
    Function,
}

/// A tool the model may call.
#[derive(Debug, Clone, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: ToolKind,
    pub function: FunctionSpec,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FunctionSpec {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// A JSON schema of the arguments object [default: any object].
    #[serde(default)]
    pub parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

/// `tool_choice`: `none`, `auto`, `required`, or one named function.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Named { #[serde(rename = "type")] kind: ToolKind, function: NamedFunction },
}

#[derive(Debug, Clone, Deserialize)]
pub struct NamedFunction {
    pub name: String,
}

/// How a choice's output is read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolOutput {
    /// Text (or JSON text, under `response_format`).
    Text,
    /// Calls when the output is a call list, else text (`tool_choice` auto).
    MaybeCalls,
    /// Always a call list (`required` or a named function).
    Calls,
}

/// A choice's streamed output while it may still be a call list: its text is held back
/// until it cannot be one (under `tool_choice` auto, once it starts with anything but `[`),
/// or until its end, where a whole call list is read as calls.
#[derive(Debug, Clone)]
pub struct HeldCalls {
    output: ToolOutput,
    held: Option<String>,
}

impl HeldCalls {
    pub fn new(output: ToolOutput) -> Self {
        Self { output, held: (output != ToolOutput::Text).then(String::new) }
    }

    /// Takes the choice's next `text` (`last`: its end). Returns the text that may go out
    /// now and, at the end, the calls when the whole output was a call list.
    pub fn feed(&mut self, text: String, last: bool) -> (String, Option<Vec<ToolCall>>) {
        let Some(held) = &mut self.held else { return (text, None) };
        held.push_str(&text);
        let start = held.trim_start();
        let is_text = self.output == ToolOutput::MaybeCalls && !start.is_empty() && !start.starts_with('[');
        if !last && !is_text {
            return (String::new(), None);
        }
        let text = std::mem::take(held);
        self.held = None;
        let calls = if last { parse_tool_calls(&text) } else { None };
        (text, calls)
    }
}

/// A function call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments object as JSON text (OpenAI's form).
    pub arguments: String,
}

/// The calls in a choice's output: a JSON list of `{"name", "arguments"}` as the call
/// grammar makes the model write; `None` if the output is not one (text, or cut short).
pub fn parse_tool_calls(output: &str) -> Option<Vec<ToolCall>> {
    #[derive(Deserialize)]
    struct Written {
        name: String,
        arguments: serde_json::Value,
    }
    let written: Vec<Written> = serde_json::from_str(output.trim()).ok()?;
    (!written.is_empty()).then(|| written.into_iter().map(|c| ToolCall { name: c.name, arguments: c.arguments.to_string() }).collect())
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
    pub response_format: Option<ResponseFormat>,
    pub tools: Option<Vec<Tool>>,
    pub tool_choice: Option<ToolChoice>,
    /// false: at most one call per answer.
    pub parallel_tool_calls: Option<bool>,
    /// Speculative decoding for this request (the server's default otherwise).
    pub speculative: Option<SpeculativeBody>,
}

/// `speculative`: `{"method": "ngram" | "draft" | "off", "num_tokens": k}`.
#[derive(Debug, Clone, Deserialize)]
pub struct SpeculativeBody {
    pub method: SpeculativeMethod,
    pub num_tokens: Option<u64>,
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

    /// The request's own speculative decoding, checked.
    pub fn speculation(&self) -> Result<Option<Speculation>, InvalidRequest> {
        let Some(body) = &self.speculative else { return Ok(None) };
        let num_tokens = body.num_tokens.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        Speculation::new(body.method, num_tokens).map(Some).map_err(|e| InvalidRequest::new(e, Some("speculative.num_tokens")))
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

    /// The grammar the output must follow (`response_format`, or the tool-call list of
    /// `tools` and `tool_choice`), and how to read the output back. An invalid schema is
    /// an error naming it.
    pub fn output_constraint(&self, grammars: &Grammars, chat: bool) -> Result<(Option<Constraint>, ToolOutput), InvalidRequest> {
        let tools = self.callable_tools(chat)?;
        let format = match &self.response_format {
            None | Some(ResponseFormat::Text) => None,
            Some(ResponseFormat::JsonObject) => Some((serde_json::json!({"type": "object"}), "response_format")),
            Some(ResponseFormat::JsonSchema { json_schema }) => {
                let param = "response_format.json_schema.schema";
                let schema = json_schema.schema.clone().ok_or_else(|| InvalidRequest::new(format!("`{param}` is required"), Some(param)))?;
                Some((schema, param))
            }
        };
        if let (Some(_), Some(_)) = (&format, &tools) {
            let message = "`response_format` together with `tools` is not supported; use one or the other";
            return Err(InvalidRequest::new(message, Some("response_format")));
        }
        if let Some((schema, param)) = format {
            let constraint = grammars.json_schema(schema).map_err(|e| InvalidRequest::new(format!("`{param}`: {e}"), Some(param)))?;
            return Ok((Some(constraint), ToolOutput::Text));
        }
        let Some((tools, required)) = tools else { return Ok((None, ToolOutput::Text)) };
        let calls = call_list_schema(&tools, self.parallel_tool_calls == Some(false));
        let bad = |e: String| InvalidRequest::new(format!("`tools`: {e}"), Some("tools"));
        if required {
            return Ok((Some(grammars.json_schema(calls).map_err(bad)?), ToolOutput::Calls));
        }
        // Text that does not start a call list, or a call list.
        let grammar = format!("start: TEXT | calls\nTEXT: /[^\\[](.|\\n)*/\ncalls: %json {calls}\n");
        Ok((Some(grammars.lark(&grammar).map_err(bad)?), ToolOutput::MaybeCalls))
    }

    /// The tools the model may call under `tool_choice`, and whether it must: `None` with
    /// no tools or `tool_choice` none.
    fn callable_tools(&self, chat: bool) -> Result<Option<(Vec<&Tool>, bool)>, InvalidRequest> {
        let tools = self.tools.as_deref().unwrap_or_default();
        if !tools.is_empty() && !chat {
            return Err(InvalidRequest::new("`tools` are for chat completions", Some("tools")));
        }
        for (i, tool) in tools.iter().enumerate() {
            let name = &tool.function.name;
            let valid = (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                let param = format!("tools[{i}].function.name");
                return Err(InvalidRequest::new(format!("`{param}` must be 1-64 letters, digits, _ or -; got {name:?}"), Some(&param)));
            }
        }
        let bad_choice = |message: String| Err(InvalidRequest::new(message, Some("tool_choice")));
        let (chosen, required): (Vec<&Tool>, bool) = match &self.tool_choice {
            Some(_) if tools.is_empty() => return bad_choice("`tool_choice` needs `tools`".into()),
            None => (tools.iter().collect(), false),
            Some(ToolChoice::Mode(mode)) => match mode.as_str() {
                "none" => return Ok(None),
                "auto" => (tools.iter().collect(), false),
                "required" => (tools.iter().collect(), true),
                other => return bad_choice(format!("`tool_choice` must be none, auto, required or a function; got {other:?}")),
            },
            Some(ToolChoice::Named { function, .. }) => match tools.iter().find(|t| t.function.name == function.name) {
                Some(tool) => (vec![tool], true),
                None => return bad_choice(format!("`tool_choice` names `{}`, which is not in `tools`", function.name)),
            },
        };
        Ok((!chosen.is_empty()).then_some((chosen, required)))
    }

    /// A system message that tells the model the tools it may call and how to write a
    /// call (the chat templates of small models know no tools), when it may call any.
    pub fn tool_prompt(&self) -> Result<Option<String>, InvalidRequest> {
        let Some((tools, required)) = self.callable_tools(true)? else { return Ok(None) };
        let listed: Vec<serde_json::Value> = tools
            .iter()
            .map(|t| serde_json::json!({"name": t.function.name, "description": t.function.description, "parameters": t.function.parameters}))
            .collect();
        let when = if required { "Answer with" } else { "To call functions, answer with only" };
        Ok(Some(format!(
            "You can call these functions:\n{}\n{when} a JSON list of calls: [{{\"name\": \"<function name>\", \"arguments\": {{<arguments>}}}}].",
            serde_json::Value::from(listed)
        )))
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
        let mut messages: Vec<ChatMessage> =
            messages.iter().map(|m| Ok(ChatMessage::new(m.role.clone(), m.text()?))).collect::<Result<_, InvalidRequest>>()?;
        if let Some(tools) = self.tool_prompt()? {
            match messages.first_mut().filter(|m| m.role == "system") {
                Some(system) => system.content = format!("{}\n\n{tools}", system.content),
                None => messages.insert(0, ChatMessage::new("system", tools)),
            }
        }
        template.encode(tokenizer, &messages, true).map_err(|e| InvalidRequest::new(format!("chat template: {e}"), Some("messages")))
    }

    /// The engine requests for one of the body's prompts: `n` choices whose seeds differ by
    /// their index, each capped so the prompt and its answer fit in the context. Their
    /// tenant is the default one; a server sets the tenant its API key stands for.
    pub fn requests(&self, prompt: &[u32], chat: bool, limits: Limits, seed: u64) -> Result<Vec<GenerationRequest>, InvalidRequest> {
        let max_tokens = self.max_tokens(chat, prompt.len(), limits)?;
        let (logprobs, stop, priority, deadline) = (self.logprobs(chat)?, self.stop(), self.priority()?, self.deadline()?);
        let speculative = self.speculation()?;
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
                    constraint: None,
                    speculative,
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

/// The JSON schema of a call list: calls of the given tools, each `{"name", "arguments"}`
/// with the tool's argument schema; at least one, at most one if `one`; laid out on one line.
fn call_list_schema(tools: &[&Tool], one: bool) -> serde_json::Value {
    let calls: Vec<serde_json::Value> = tools
        .iter()
        .map(|t| {
            let arguments = t.function.parameters.clone().unwrap_or_else(|| serde_json::json!({"type": "object"}));
            serde_json::json!({
                "type": "object",
                "properties": {"name": {"const": t.function.name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    let mut schema = serde_json::json!({"type": "array", "items": {"anyOf": calls}, "minItems": 1});
    if one {
        schema["maxItems"] = 1.into();
    }
    crate::json_layout(schema)
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
