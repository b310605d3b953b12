//! OpenAI's request bodies for completions and chat completions, parsed, checked and turned
//! into engine requests the same way wherever they arrive: over HTTP (`cinder serve`) or
//! from a web page (`cinder-wasm`). A body is [`parse`]d, then [`GenerationBody::check`]ed
//! against the [`RequestLimits`] before anything is tokenized or compiled; the [`Checked`]
//! body gives its prompts, its grammar and, last, its engine requests. [`response`] builds
//! what goes back.

use std::collections::BTreeMap;
use std::fmt;

use cinder_model::SamplingParams;
use cinder_scheduler::{Duration, FinishReason, Priority, TenantId};
use cinder_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use serde::de::{DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::{Constraint, GenerationRequest, Grammars, Speculation, SpeculativeMethod};

pub mod embeddings;
mod limits;
pub mod response;
pub mod stream;
mod tools;

pub use limits::RequestLimits;
pub use response::Endpoint;
pub use tools::{CallDelta, Fed, HeldCalls, PartialCall, ToolCall, ToolFormat, ToolOutput, parse_tool_calls, partial_calls};

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
/// implement (`best_of`, a typo…), which is refused rather than dropped, at any depth: the
/// body's types read objects inside their enums without buffering them, so the unknown-field
/// check sees every field.
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
#[derive(Debug, Clone)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

impl Prompt {
    /// How many prompts it holds.
    pub fn count(&self) -> usize {
        match self {
            Self::Text(_) | Self::Ids(_) => 1,
            Self::Texts(texts) => texts.len(),
            Self::IdLists(lists) => lists.len(),
        }
    }
}

impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PromptVisitor;
        impl<'de> Visitor<'de> for PromptVisitor {
            type Value = Prompt;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, a list of token ids, or a list of strings or of token-id lists")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Prompt, E> {
                Ok(Prompt::Text(text.to_owned()))
            }

            /// The first item decides what the list holds; the others must be alike.
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Prompt, A::Error> {
                #[derive(Deserialize)]
                #[serde(untagged, expecting = "a string, a token id or a list of token ids")]
                enum First {
                    Id(u32),
                    Text(String),
                    Ids(Vec<u32>),
                }
                fn rest<'de, A: SeqAccess<'de>, T: Deserialize<'de>>(first: T, seq: &mut A) -> Result<Vec<T>, A::Error> {
                    let mut all = vec![first];
                    while let Some(item) = seq.next_element()? {
                        all.push(item);
                    }
                    Ok(all)
                }
                Ok(match seq.next_element::<First>()? {
                    None => Prompt::Texts(Vec::new()),
                    Some(First::Id(id)) => Prompt::Ids(rest(id, &mut seq)?),
                    Some(First::Text(text)) => Prompt::Texts(rest(text, &mut seq)?),
                    Some(First::Ids(ids)) => Prompt::IdLists(rest(ids, &mut seq)?),
                })
            }
        }
        deserializer.deserialize_any(PromptVisitor)
    }
}

/// A text, or a list of parts (a chat message's content, an Anthropic message's blocks).
#[derive(Debug, Clone)]
pub enum TextOr<P> {
    Text(String),
    Parts(Vec<P>),
}

/// A chat message's content: text, or a list of parts of which the text ones count.
pub type Content = TextOr<ContentPart>;

impl<'de, P: Deserialize<'de>> Deserialize<'de> for TextOr<P> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextOrVisitor<P>(std::marker::PhantomData<P>);
        impl<'de, P: Deserialize<'de>> Visitor<'de> for TextOrVisitor<P> {
            type Value = TextOr<P>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of content parts")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<TextOr<P>, E> {
                Ok(TextOr::Text(text.to_owned()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TextOr<P>, A::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element()? {
                    parts.push(part);
                }
                Ok(TextOr::Parts(parts))
            }
        }
        deserializer.deserialize_any(TextOrVisitor(std::marker::PhantomData))
    }
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
    /// A message of `role` saying `text`.
    pub fn plain(role: &str, text: String) -> Self {
        Self { role: role.to_owned(), content: Some(Content::Text(text)), tool_calls: None, tool_call_id: None }
    }

    /// The message as a chat template sees it: for a template that takes tools (`format`
    /// not the JSON list), an assistant's calls as `tool_calls` (arguments as objects, as
    /// `transformers` passes them) and a tool message's `tool_call_id`; otherwise the calls
    /// written as the model wrote them, in the content ([`Message::text`]).
    pub fn chat_message(&self, format: ToolFormat) -> Result<ChatMessage, InvalidRequest> {
        if !format.in_template() {
            return Ok(ChatMessage::new(self.role.clone(), self.text()?));
        }
        let text = match &self.content {
            None => String::new(),
            Some(_) => Self { tool_calls: None, ..self.clone() }.text()?,
        };
        let calls = self.tool_calls.as_ref().filter(|c| !c.is_empty()).map(|calls| {
            let calls: Vec<serde_json::Value> = calls
                .iter()
                .map(|c| {
                    let arguments = serde_json::from_str(&c.function.arguments).unwrap_or(serde_json::Value::String(c.function.arguments.clone()));
                    let id = format.call_id(c.id.as_deref().unwrap_or_default());
                    serde_json::json!({"id": id, "type": "function", "function": {"name": c.function.name, "arguments": arguments}})
                })
                .collect();
            serde_json::Value::from(calls)
        });
        Ok(ChatMessage {
            tool_calls: calls,
            tool_call_id: self.tool_call_id.as_deref().map(|id| format.call_id(id)),
            ..ChatMessage::new(self.role.clone(), text)
        })
    }

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
#[serde(try_from = "ResponseFormatBody")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

/// `response_format` as written: read as a plain object (not a tagged enum, which would hide
/// its unknown fields), then checked into a [`ResponseFormat`].
#[derive(Deserialize)]
struct ResponseFormatBody {
    #[serde(rename = "type")]
    kind: ResponseFormatKind,
    #[serde(default)]
    json_schema: Option<JsonSchemaFormat>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ResponseFormatKind {
    Text,
    JsonObject,
    JsonSchema,
}

impl TryFrom<ResponseFormatBody> for ResponseFormat {
    type Error = String;

    fn try_from(body: ResponseFormatBody) -> Result<Self, String> {
        match (body.kind, body.json_schema) {
            (ResponseFormatKind::JsonSchema, Some(json_schema)) => Ok(Self::JsonSchema { json_schema }),
            (ResponseFormatKind::JsonSchema, None) => Err("type `json_schema` needs `json_schema`".into()),
            (_, Some(_)) => Err("`json_schema` goes with type `json_schema`".into()),
            (ResponseFormatKind::Text, None) => Ok(Self::Text),
            (ResponseFormatKind::JsonObject, None) => Ok(Self::JsonObject),
        }
    }
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

impl Tool {
    /// The tool as a chat template lists it: OpenAI's `{"type": "function", "function":
    /// {"name", "description", "parameters"}}`, with the fields the request gave.
    pub fn listed(&self) -> serde_json::Value {
        let f = &self.function;
        let mut function = serde_json::Map::new();
        function.insert("name".into(), f.name.clone().into());
        if let Some(description) = &f.description {
            function.insert("description".into(), description.clone().into());
        }
        if let Some(parameters) = &f.parameters {
            function.insert("parameters".into(), parameters.clone());
        }
        serde_json::json!({"type": "function", "function": function})
    }
}

/// `tool_choice`: `none`, `auto`, `required`, or one named function.
#[derive(Debug, Clone)]
pub enum ToolChoice {
    Mode(String),
    Named(NamedToolChoice),
}

/// `{"type": "function", "function": {"name": …}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct NamedToolChoice {
    #[serde(rename = "type")]
    pub kind: ToolKind,
    pub function: NamedFunction,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NamedFunction {
    pub name: String,
}

impl ToolChoice {
    /// The function `name`, and no other.
    pub fn function(name: String) -> Self {
        ToolChoice::Named(NamedToolChoice { kind: ToolKind::Function, function: NamedFunction { name } })
    }
}

impl<'de> Deserialize<'de> for ToolChoice {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ToolChoiceVisitor;
        impl<'de> Visitor<'de> for ToolChoiceVisitor {
            type Value = ToolChoice;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("none, auto, required, or {\"type\": \"function\", \"function\": {\"name\": …}}")
            }

            fn visit_str<E: serde::de::Error>(self, mode: &str) -> Result<ToolChoice, E> {
                Ok(ToolChoice::Mode(mode.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ToolChoice, A::Error> {
                NamedToolChoice::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(ToolChoice::Named)
            }
        }
        deserializer.deserialize_any(ToolChoiceVisitor)
    }
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
    /// A model, an alias or a LoRA adapter.
    pub model: Option<String>,
    /// A LoRA adapter of the model `model` names, to run with.
    pub lora: Option<String>,
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

/// Longest `deadline_ms`: a day.
pub const MAX_DEADLINE_MS: u64 = 86_400_000;

/// A deadline of `ms` milliseconds, if in [1, MAX_DEADLINE_MS].
pub fn deadline_from_ms(ms: u64) -> Option<Duration> {
    (1..=MAX_DEADLINE_MS).contains(&ms).then(|| Duration::from_millis(ms))
}

/// The seed of a request's choice `index` (over all its prompts' choices): the request's
/// seed for the first, a mix of it and the index for the others, so that the choices of
/// one request differ and the same body gives the same choices.
pub fn choice_seed(seed: u64, index: usize) -> u64 {
    if index == 0 {
        return seed;
    }
    // SplitMix64's finaliser over the pair.
    let mut z = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `priority` checked: a level name or number.
fn parse_priority(field: &Option<PriorityField>) -> Result<Option<Priority>, InvalidRequest> {
    let bad = |what: String| invalid(format!("`priority` must be 0-4 or critical, high, normal, low, batch; got {what}"), "priority");
    match field {
        None => Ok(None),
        Some(PriorityField::Level(l)) if (0..=4).contains(l) => Ok(Some(Priority::from_level(*l as usize))),
        Some(PriorityField::Level(l)) => bad(l.to_string()),
        Some(PriorityField::Name(name)) => match Priority::from_name(name) {
            Some(priority) => Ok(Some(priority)),
            None => bad(format!("{name:?}")),
        },
    }
}

/// A refusal naming `param`.
fn invalid<T>(message: impl Into<String>, param: &str) -> Result<T, InvalidRequest> {
    Err(InvalidRequest::new(message, Some(param)))
}

/// Bytes of `value` as JSON text.
fn json_bytes(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("counting cannot fail");
    count.0
}

/// A body checked against the limits and each field's bounds, nothing tokenized or compiled
/// yet: what the server and the browser build engine requests from.
#[derive(Debug, Clone)]
pub struct Checked {
    body: GenerationBody,
    pub endpoint: Endpoint,
    /// Choices per prompt.
    pub n: usize,
    /// Alternatives reported per token, when asked.
    pub logprobs: Option<usize>,
    /// The priority asked for (a server caps it at the tenant's).
    pub priority: Option<Priority>,
    sampling: SamplingParams,
    stop: Vec<String>,
    deadline: Option<Duration>,
    speculative: Option<Speculation>,
    /// `max_completion_tokens` or `max_tokens`, and which.
    max_tokens: Option<(usize, &'static str)>,
    limits: RequestLimits,
    /// The tools the model may call (indices into `tools`), and whether it must.
    callable: Option<(Vec<usize>, bool)>,
    /// How the model writes calls, read from its chat template by [`Checked::prompts`].
    format: ToolFormat,
}

impl GenerationBody {
    /// Checks every field, counts first: what a request may multiply (prompts, choices,
    /// stop strings, logit biases, tools, messages) is held to `limits` before anything is
    /// tokenized, compiled or allocated per sequence. An error names the field at fault.
    pub fn check(self, endpoint: Endpoint, limits: &RequestLimits) -> Result<Checked, InvalidRequest> {
        let chat = endpoint == Endpoint::Chat;
        let (prompts, prompt_param) = if chat {
            if self.prompt.is_some() {
                return invalid("`prompt` is for /v1/completions; chat takes `messages`", "prompt");
            }
            match self.messages.as_ref().map_or(0, Vec::len) {
                0 => return invalid("`messages` must be a non-empty list", "messages"),
                count if count > limits.max_messages => {
                    return invalid(format!("`messages` holds {count} messages; this server takes at most {}", limits.max_messages), "messages");
                }
                _ => (1, "messages"),
            }
        } else {
            if self.messages.is_some() {
                return invalid("`messages` is for /v1/chat/completions; completions take `prompt`", "messages");
            }
            let Some(prompt) = &self.prompt else { return invalid("`prompt` is required", "prompt") };
            (prompt.count(), "prompt")
        };
        if prompts == 0 {
            return invalid("the prompt is empty", "prompt");
        }
        if prompts > limits.max_prompts {
            return invalid(format!("`prompt` holds {prompts} prompts; this server takes at most {}", limits.max_prompts), prompt_param);
        }
        let n = match self.n.unwrap_or(1) as usize {
            n if (1..=limits.max_n).contains(&n) => n,
            n => return invalid(format!("`n` must be in [1, {}]; got {n}", limits.max_n), "n"),
        };
        if prompts * n > limits.max_sequences {
            let message = format!("{prompts} prompts times `n` = {n} make {} sequences; this server runs at most {} per request", prompts * n, limits.max_sequences);
            return invalid(message, "n");
        }
        if self.echo == Some(true) {
            return invalid("`echo` is not supported", "echo");
        }
        if chat && self.parse_special.is_some() {
            return invalid("`parse_special` applies to completions; chat messages are always tokenized as text", "parse_special");
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > limits.max_stop {
            return invalid(format!("`stop` holds {} strings; this server takes at most {}", stop.len(), limits.max_stop), "stop");
        }
        if let Some(long) = stop.iter().find(|s| s.len() > limits.max_stop_bytes) {
            return invalid(format!("a `stop` string has {} bytes; this server takes at most {}", long.len(), limits.max_stop_bytes), "stop");
        }
        let stop_ids = self.stop_token_ids.as_ref().map_or(0, Vec::len);
        if stop_ids > limits.max_stop_token_ids {
            let message = format!("`stop_token_ids` holds {stop_ids} ids; this server takes at most {}", limits.max_stop_token_ids);
            return invalid(message, "stop_token_ids");
        }
        let logprobs = self.logprobs(chat, limits.max_logprobs)?;
        let callable = self.callable_tools(chat, limits)?;
        if let Some(ResponseFormat::JsonSchema { json_schema: JsonSchemaFormat { schema: Some(schema), .. } }) = &self.response_format {
            let bytes = json_bytes(schema);
            if bytes > limits.max_schema_bytes {
                let message = format!("the schema has {bytes} bytes of JSON; this server takes at most {}", limits.max_schema_bytes);
                return invalid(message, "response_format.json_schema.schema");
            }
        }
        if self.response_format.as_ref().is_some_and(|f| !matches!(f, ResponseFormat::Text)) && callable.is_some() {
            return invalid("`response_format` together with `tools` is not supported; use one or the other", "response_format");
        }
        let sampling = self.sampling(limits)?;
        let priority = parse_priority(&self.priority)?;
        let deadline = match self.deadline_ms {
            None => None,
            Some(ms) => match deadline_from_ms(ms) {
                Some(deadline) => Some(deadline),
                None => return invalid(format!("`deadline_ms` must be in [1, {MAX_DEADLINE_MS}] milliseconds; got {ms}"), "deadline_ms"),
            },
        };
        let speculative = match &self.speculative {
            None => None,
            Some(body) => {
                let num_tokens = body.num_tokens.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
                Some(Speculation::new(body.method, num_tokens).map_err(|e| InvalidRequest::new(e, Some("speculative.num_tokens")))?)
            }
        };
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => Some((m, "max_completion_tokens")),
            (None, m) => m.map(|m| (m, "max_tokens")),
        };
        let max_tokens = match max_tokens {
            Some((0, param)) => return invalid(format!("`{param}` must be at least 1"), param),
            Some((m, param)) => {
                let m = usize::try_from(m).unwrap_or(usize::MAX);
                if let Some(cap) = limits.max_tokens.filter(|&cap| m > cap) {
                    return invalid(format!("`{param}` is {m}; this server generates at most {cap} tokens per choice"), param);
                }
                Some((m, param))
            }
            None => None,
        };
        Ok(Checked {
            body: self,
            endpoint,
            n,
            logprobs,
            priority,
            sampling,
            stop,
            deadline,
            speculative,
            max_tokens,
            limits: limits.clone(),
            callable,
            format: ToolFormat::JsonList,
        })
    }

    /// The sampling parameters, checked (the seed is set per choice later).
    fn sampling(&self, limits: &RequestLimits) -> Result<SamplingParams, InvalidRequest> {
        let biases = self.logit_bias.as_ref().map_or(0, BTreeMap::len);
        if biases > limits.max_logit_bias {
            return invalid(format!("`logit_bias` has {biases} entries; this server takes at most {}", limits.max_logit_bias), "logit_bias");
        }
        // Keys are token ids as text: `1` and `01` name one token, which may appear once.
        let mut logit_bias: BTreeMap<u32, (f32, &str)> = BTreeMap::new();
        for (key, &bias) in self.logit_bias.iter().flatten() {
            let param = format!("logit_bias.{key}");
            let Ok(id) = key.trim().parse::<u32>() else {
                return invalid(format!("`logit_bias` keys are token ids; got {key:?}"), &param);
            };
            if let Some((_, other)) = logit_bias.insert(id, (bias, key)) {
                return invalid(format!("`logit_bias` names token {id} twice (`{other}` and `{key}`)"), &param);
            }
        }
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => return invalid(format!("`top_k` must be positive, or 0 or -1 for all tokens; got {k}"), "top_k"),
        };
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k,
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            logit_bias: logit_bias.into_iter().map(|(id, (bias, _))| (id, bias)).collect(),
            ..SamplingParams::default()
        };
        params.check().or_else(|e| invalid(e.to_string(), &e.param))?;
        Ok(params)
    }

    /// How many alternatives to report per token, if any.
    fn logprobs(&self, chat: bool, most: usize) -> Result<Option<usize>, InvalidRequest> {
        let count = match (chat, self.logprobs) {
            (_, None) | (_, Some(Logprobs::Flag(false))) => return Ok(None),
            (true, Some(Logprobs::Flag(true))) => self.top_logprobs.unwrap_or(0),
            (false, Some(Logprobs::Count(k))) => k,
            (true, Some(Logprobs::Count(_))) => return invalid("`logprobs` is a boolean here; use `top_logprobs` for a count", "logprobs"),
            (false, Some(Logprobs::Flag(true))) => return invalid("`logprobs` is a number of alternatives here", "logprobs"),
        } as usize;
        if count > most {
            let param = if chat { "top_logprobs" } else { "logprobs" };
            return invalid(format!("`{param}` must be at most {most}; got {count}"), param);
        }
        Ok(Some(count))
    }

    /// The tools the model may call under `tool_choice` (their indices), and whether it
    /// must: `None` with no tools or `tool_choice` none.
    fn callable_tools(&self, chat: bool, limits: &RequestLimits) -> Result<Option<(Vec<usize>, bool)>, InvalidRequest> {
        let tools = self.tools.as_deref().unwrap_or_default();
        if !tools.is_empty() && !chat {
            return invalid("`tools` are for chat completions", "tools");
        }
        if tools.len() > limits.max_tools {
            return invalid(format!("`tools` lists {} functions; this server takes at most {}", tools.len(), limits.max_tools), "tools");
        }
        let mut schema_bytes = 0;
        for (i, tool) in tools.iter().enumerate() {
            let name = &tool.function.name;
            let valid = (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                let param = format!("tools[{i}].function.name");
                return invalid(format!("`{param}` must be 1-64 letters, digits, _ or -; got {name:?}"), &param);
            }
            schema_bytes += tool.function.parameters.as_ref().map_or(0, json_bytes);
        }
        if schema_bytes > limits.max_schema_bytes {
            let message = format!("the tools' parameters have {schema_bytes} bytes of JSON; this server takes at most {}", limits.max_schema_bytes);
            return invalid(message, "tools");
        }
        let all = || (0..tools.len()).collect::<Vec<_>>();
        let (chosen, required) = match &self.tool_choice {
            Some(_) if tools.is_empty() => return invalid("`tool_choice` needs `tools`", "tool_choice"),
            None => (all(), false),
            Some(ToolChoice::Mode(mode)) => match mode.as_str() {
                "none" => return Ok(None),
                "auto" => (all(), false),
                "required" => (all(), true),
                other => return invalid(format!("`tool_choice` must be none, auto, required or a function; got {other:?}"), "tool_choice"),
            },
            Some(ToolChoice::Named(named)) => match tools.iter().position(|t| t.function.name == named.function.name) {
                Some(index) => (vec![index], true),
                None => return invalid(format!("`tool_choice` names `{}`, which is not in `tools`", named.function.name), "tool_choice"),
            },
        };
        Ok((!chosen.is_empty()).then_some((chosen, required)))
    }
}

/// What a server adds to a checked body's requests: who sends them, at what priority, and
/// the grammar their output follows.
#[derive(Debug, Clone, Copy)]
pub struct Submission<'a> {
    /// The longest sequence the engine holds.
    pub context_length: usize,
    /// The seed of a request whose body gives none (each choice's is derived from it).
    pub seed: u64,
    pub tenant: TenantId,
    pub priority: Priority,
    /// The most urgent level the queue may lift the requests to.
    pub max_priority: Priority,
    pub constraint: Option<&'a Constraint>,
    /// The LoRA adapter the requests run with.
    pub adapter: Option<&'a str>,
}

impl Checked {
    /// The body as parsed.
    pub fn body(&self) -> &GenerationBody {
        &self.body
    }

    /// Whether the output follows a grammar (`response_format` or tools), which
    /// [`constraint`](Self::constraint) compiles.
    pub fn has_constraint(&self) -> bool {
        self.callable.is_some() || matches!(self.body.response_format, Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. }))
    }

    /// How the output is read back: text, or maybe or surely tool calls.
    pub fn tool_output(&self) -> ToolOutput {
        match &self.callable {
            None => ToolOutput::Text,
            Some((_, true)) => ToolOutput::Calls(self.format),
            Some((_, false)) => ToolOutput::MaybeCalls(self.format),
        }
    }

    fn callable(&self) -> Option<(Vec<&Tool>, bool)> {
        let tools = self.body.tools.as_deref().unwrap_or_default();
        self.callable.as_ref().map(|(chosen, required)| (chosen.iter().map(|&i| &tools[i]).collect(), *required))
    }

    /// The grammar the output must follow (`response_format`, or the tool-call list of
    /// `tools` and `tool_choice`), compiled. An invalid schema is an error naming it.
    pub fn constraint(&self, grammars: &Grammars) -> Result<Option<Constraint>, InvalidRequest> {
        let format = match &self.body.response_format {
            None | Some(ResponseFormat::Text) => None,
            Some(ResponseFormat::JsonObject) => Some((serde_json::json!({"type": "object"}), "response_format")),
            Some(ResponseFormat::JsonSchema { json_schema }) => {
                let param = "response_format.json_schema.schema";
                let schema = json_schema.schema.clone().ok_or_else(|| InvalidRequest::new(format!("`{param}` is required"), Some(param)))?;
                Some((schema, param))
            }
        };
        if let Some((schema, param)) = format {
            return grammars.json_schema(schema).map(Some).map_err(|e| InvalidRequest::new(format!("`{param}`: {e}"), Some(param)));
        }
        let Some((tools, required)) = self.callable() else { return Ok(None) };
        let one = self.body.parallel_tool_calls == Some(false);
        let bad = |e: String| InvalidRequest::new(format!("`tools`: {e}"), Some("tools"));
        if required && self.format == ToolFormat::JsonList {
            return grammars.json_schema(tools::call_list_schema(&tools, one)).map(Some).map_err(bad);
        }
        grammars.lark(&self.format.grammar(&tools, required, one, grammars.tokenizer())).map(Some).map_err(bad)
    }

    /// The prompts as token ids: a completion's `prompt` (control-token text parsed unless
    /// `parse_special` is false), or a chat's `messages` rendered by the model's chat
    /// template (what they say tokenized as text: a `<|im_end|>` in a content is never the
    /// token), each at most `max_prompt_tokens` and the context. A text too long to fit is
    /// refused before it is tokenized (tokenizing holds memory in proportion to the text):
    /// no token stands for more text than the vocabulary's longest.
    /// A chat with tools also reads, from the template, the format its model calls in.
    pub fn prompts(&mut self, tokenizer: &Tokenizer, template: Option<&ChatTemplate>, context_length: usize) -> Result<Vec<Vec<u32>>, InvalidRequest> {
        if self.callable.is_some() {
            self.format = ToolFormat::of(template);
        }
        let most = self.limits.max_prompt_tokens.unwrap_or(context_length).min(context_length);
        let param = if self.endpoint == Endpoint::Chat { "messages" } else { "prompt" };
        let too_long = |tokens: String| invalid(format!("the prompt has {tokens} tokens; this server takes at most {most}"), param);
        let texts: Vec<usize> = match (&self.body.prompt, &self.body.messages) {
            (Some(Prompt::Text(text)), _) => vec![text.len()],
            (Some(Prompt::Texts(texts)), _) => texts.iter().map(String::len).collect(),
            (_, Some(messages)) => vec![messages.iter().map(|m| m.text().map(|t| t.len())).sum::<Result<usize, _>>()?],
            _ => Vec::new(),
        };
        // BOS and EOS, and a SentencePiece vocabulary's leading space, come on top of the text.
        if let Some(fewest) = texts.iter().map(|&bytes| tokenizer.fewest_tokens(bytes)).find(|&fewest| fewest > most + 2) {
            return too_long(format!("at least {fewest}"));
        }
        let prompts = match self.endpoint {
            Endpoint::Completion => self.completion_prompts(tokenizer)?,
            Endpoint::Chat => vec![self.chat_prompt(tokenizer, template)?],
        };
        match prompts.iter().find(|p| p.len() > most) {
            Some(long) => too_long(long.len().to_string()),
            None => Ok(prompts),
        }
    }

    fn completion_prompts(&self, tokenizer: &Tokenizer) -> Result<Vec<Vec<u32>>, InvalidRequest> {
        let parse_special = self.body.parse_special.unwrap_or(true);
        let encode = |text: &str| {
            tokenizer.encode(text, true, parse_special).map_err(|e| InvalidRequest::new(format!("cannot tokenize the prompt: {e}"), Some("prompt")))
        };
        let prompts = match &self.body.prompt {
            None => return invalid("`prompt` is required", "prompt"),
            Some(Prompt::Text(t)) => vec![encode(t)?],
            Some(Prompt::Ids(ids)) => vec![ids.clone()],
            Some(Prompt::Texts(texts)) => texts.iter().map(|t| encode(t)).collect::<Result<_, _>>()?,
            Some(Prompt::IdLists(lists)) => lists.clone(),
        };
        if prompts.iter().any(Vec::is_empty) {
            return invalid("the prompt is empty", "prompt");
        }
        Ok(prompts)
    }

    fn chat_prompt(&self, tokenizer: &Tokenizer, template: Option<&ChatTemplate>) -> Result<Vec<u32>, InvalidRequest> {
        let template = template.ok_or_else(|| InvalidRequest::new("this model has no chat template; use a completion", None))?;
        let messages = self.body.messages.as_deref().unwrap_or_default();
        let mut messages: Vec<ChatMessage> = messages.iter().map(|m| m.chat_message(self.format)).collect::<Result<_, InvalidRequest>>()?;
        let encode = |messages: &[ChatMessage], tools: Option<&serde_json::Value>| {
            template.encode_with_tools(tokenizer, messages, tools, true).map_err(|e| InvalidRequest::new(format!("chat template: {e}"), Some("messages")))
        };
        let Some((tools, required)) = self.callable() else { return encode(&messages, None) };
        if self.format.in_template() {
            return encode(&messages, Some(&serde_json::Value::from(tools.iter().map(|t| t.listed()).collect::<Vec<_>>())));
        }
        let tools = tools::tool_prompt(&tools, required);
        if let Some(system) = messages.first_mut().filter(|m| m.role == "system") {
            system.content = format!("{}\n\n{tools}", system.content);
            return encode(&messages, None);
        }
        let mut with_system = messages.clone();
        with_system.insert(0, ChatMessage::new("system", tools.clone()));
        encode(&with_system, None).or_else(|refused| {
            // A template without a system role (Gemma's): the tools open the first message.
            match messages.first_mut() {
                Some(first) => {
                    first.content = format!("{tools}\n\n{}", first.content);
                    encode(&messages, None)
                }
                None => Err(refused),
            }
        })
    }

    /// Most new tokens of a choice of a `prompt`-token prompt: `max_completion_tokens` or
    /// `max_tokens`; without either, the server's default (cut to the room left), else 16
    /// for a completion (OpenAI's default) and the rest of the context for a chat.
    pub fn max_tokens(&self, prompt: usize, context_length: usize) -> Result<usize, InvalidRequest> {
        let room = context_length.saturating_sub(prompt);
        let chat = self.endpoint == Endpoint::Chat;
        let (max, param) = match self.max_tokens {
            Some((m, param)) => (m, param),
            None => {
                let default = self.limits.default_max_tokens.unwrap_or(if chat { usize::MAX } else { 16 });
                (default.min(self.limits.max_tokens.unwrap_or(usize::MAX)).min(room.max(1)), "max_tokens")
            }
        };
        if max > room {
            let message = format!("the prompt ({prompt} tokens) plus {param} ({max}) exceeds the model's context of {context_length} tokens");
            return invalid(message, param);
        }
        Ok(max)
    }

    /// Tokens the request may occupy: each sequence's prompt and most new tokens (what a
    /// tenant's token rate counts).
    pub fn tokens(&self, prompts: &[Vec<u32>], context_length: usize) -> Result<usize, InvalidRequest> {
        prompts.iter().try_fold(0usize, |sum, p| Ok(sum + (p.len() + self.max_tokens(p.len(), context_length)?) * self.n))
    }

    /// The engine requests: `n` choices of each prompt, in the order of the response's
    /// choices, each seeded from the request's seed and its index ([`choice_seed`]).
    pub fn requests(&self, prompts: &[Vec<u32>], submission: Submission) -> Result<Vec<GenerationRequest>, InvalidRequest> {
        let seed = self.body.seed.unwrap_or(submission.seed);
        let mut requests = Vec::with_capacity(prompts.len() * self.n);
        for prompt in prompts {
            let max_tokens = self.max_tokens(prompt.len(), submission.context_length)?;
            for _ in 0..self.n {
                requests.push(GenerationRequest {
                    prompt: prompt.clone(),
                    max_tokens,
                    sampling: SamplingParams { seed: choice_seed(seed, requests.len()), ..self.sampling.clone() },
                    stop: self.stop.clone(),
                    stop_token_ids: self.body.stop_token_ids.clone().unwrap_or_default(),
                    ignore_eos: self.body.ignore_eos.unwrap_or(false),
                    logprobs: self.logprobs,
                    priority: submission.priority,
                    max_priority: submission.max_priority,
                    tenant: submission.tenant,
                    deadline: self.deadline,
                    use_prefix_cache: self.body.cache_prompt.unwrap_or(true),
                    constraint: submission.constraint.cloned(),
                    speculative: self.speculative,
                    adapter: submission.adapter.map(str::to_owned),
                    embed: None,
                });
            }
        }
        Ok(requests)
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn checked(body: &str, endpoint: Endpoint) -> Result<Checked, InvalidRequest> {
        parse::<GenerationBody>(body.as_bytes())?.check(endpoint, &RequestLimits::default())
    }

    fn submission(seed: u64) -> Submission<'static> {
        Submission { context_length: 64, seed, tenant: TenantId(3), priority: Priority::Low, max_priority: Priority::Low, constraint: None, adapter: None }
    }

    #[test]
    fn each_choice_has_its_own_seed_and_the_first_the_requests() {
        let c = checked(r#"{"prompt": ["a", "b"], "n": 3, "seed": 42, "temperature": 1}"#, Endpoint::Completion).unwrap();
        let prompts = [vec![1, 2], vec![3]];
        let requests = c.requests(&prompts, submission(7)).unwrap();
        let seeds: Vec<u64> = requests.iter().map(|r| r.sampling.seed).collect();
        assert_eq!(seeds[0], 42);
        assert_eq!(seeds.iter().collect::<BTreeSet<_>>().len(), 6, "{seeds:?}");
        let again: Vec<u64> = c.requests(&prompts, submission(9)).unwrap().iter().map(|r| r.sampling.seed).collect();
        assert_eq!(seeds, again, "the body's seed decides, not the server's draw");
        assert!(requests.iter().all(|r| (r.tenant, r.priority, r.max_priority) == (TenantId(3), Priority::Low, Priority::Low)));
        assert_eq!(requests.iter().map(|r| r.prompt.len()).collect::<Vec<_>>(), [2, 2, 2, 1, 1, 1]);
        let unseeded = checked(r#"{"prompt": "a", "n": 2}"#, Endpoint::Completion).unwrap();
        let seeds: Vec<u64> = unseeded.requests(&[vec![1]], submission(7)).unwrap().iter().map(|r| r.sampling.seed).collect();
        assert_eq!(seeds, [7, choice_seed(7, 1)]);
    }

    #[test]
    fn logit_bias_keys_name_a_token_once() {
        let c = checked(r#"{"prompt": "a", "logit_bias": {" 2": 5, "10": -100}}"#, Endpoint::Completion).unwrap();
        assert_eq!(c.sampling.logit_bias, [(2, 5.0), (10, -100.0)]);
        let e = checked(r#"{"prompt": "a", "logit_bias": {"1": 1, "01": 2}}"#, Endpoint::Completion).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("logit_bias.1"), "{e}");
        assert!(e.message.contains("token 1 twice"), "{e}");
    }

    #[test]
    fn sampling_ranges_are_the_samplers() {
        let hot = SamplingParams { temperature: 1.0, ..Default::default() };
        for (field, value, direct) in [
            ("temperature", "-1", SamplingParams { temperature: -1.0, ..hot.clone() }),
            ("top_p", "0", SamplingParams { top_p: 0.0, ..hot.clone() }),
            ("min_p", "1.5", SamplingParams { min_p: 1.5, ..hot.clone() }),
            ("repetition_penalty", "0", SamplingParams { repetition_penalty: 0.0, ..hot.clone() }),
            ("presence_penalty", "3", SamplingParams { presence_penalty: 3.0, ..hot.clone() }),
            ("logit_bias", r#"{"5": 101}"#, SamplingParams { logit_bias: vec![(5, 101.0)], ..hot.clone() }),
        ] {
            let e = checked(&format!(r#"{{"prompt": "a", "{field}": {value}}}"#), Endpoint::Completion).unwrap_err();
            let sampler = direct.check().unwrap_err();
            assert_eq!((e.param.as_deref(), e.message), (Some(sampler.param.as_str()), sampler.to_string()));
        }
        assert!(checked(r#"{"prompt": "a", "temperature": 2, "repetition_penalty": 10}"#, Endpoint::Completion).is_ok());
        let hot = checked(r#"{"prompt": "a", "temperature": 2.5}"#, Endpoint::Completion).unwrap_err();
        assert_eq!(hot.message, SamplingParams { temperature: 2.5, ..Default::default() }.check().unwrap_err().to_string());
    }

    #[test]
    fn counts_are_checked_before_anything_else() {
        let limits = RequestLimits { max_prompts: 2, max_sequences: 4, ..Default::default() };
        let check = |body: &str| parse::<GenerationBody>(body.as_bytes()).unwrap().check(Endpoint::Completion, &limits);
        assert_eq!(check(r#"{"prompt": ["a", "b", "c"]}"#).unwrap_err().param.as_deref(), Some("prompt"));
        assert_eq!(check(r#"{"prompt": [[1], [2]], "n": 3}"#).unwrap_err().param.as_deref(), Some("n"));
        assert_eq!(check(r#"{"prompt": [[1], [2]], "n": 2}"#).unwrap().n, 2);
        assert_eq!(check(r#"{"prompt": []}"#).unwrap_err().message, "the prompt is empty");
        let chat = checked(r#"{"messages": [{"role": "user", "content": "hi"}], "prompt": "x"}"#, Endpoint::Chat).unwrap_err();
        assert_eq!(chat.param.as_deref(), Some("prompt"));
    }

    #[test]
    fn unknown_fields_inside_enums_name_their_path() {
        let user = r#"{"role": "user", "content": "hi"}"#;
        for (body, param) in [
            (r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "x": 1}]}]}"#.to_owned(), "messages[0].content[0].x"),
            (format!(r#"{{"messages": [{user}], "response_format": {{"type": "json_object", "schema": {{}}}}}}"#), "response_format.schema"),
            (
                format!(r#"{{"messages": [{user}], "response_format": {{"type": "json_schema", "json_schema": {{"name": "x", "stict": true}}}}}}"#),
                "response_format.json_schema.stict",
            ),
            (format!(r#"{{"messages": [{user}], "tool_choice": {{"type": "function", "function": {{"name": "f"}}, "x": 1}}}}"#), "tool_choice.x"),
            (format!(r#"{{"messages": [{user}], "tool_choice": {{"type": "function", "function": {{"name": "f", "x": 1}}}}}}"#), "tool_choice.function.x"),
        ] {
            let e = parse::<GenerationBody>(body.as_bytes()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e}");
        }
        let prompt: GenerationBody = parse(br#"{"prompt": [[1, 2], [3]]}"#).unwrap();
        assert!(matches!(prompt.prompt, Some(Prompt::IdLists(ref l)) if l.len() == 2));
        let mixed = parse::<GenerationBody>(br#"{"prompt": ["a", 1]}"#).unwrap_err();
        assert_eq!(mixed.param.as_deref(), Some("prompt[1]"), "{mixed}");
    }
}
