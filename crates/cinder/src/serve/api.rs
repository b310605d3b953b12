//! The OpenAI-compatible request body, its validation, and OpenAI-style errors.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cinder_engine::SubmitError;
use cinder_model::SamplingParams;
use cinder_scheduler::{Priority, RejectionReason};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<String>,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), param: None, code: None, retry_after_s: None }
    }

    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self { param: param.map(str::to_owned), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    pub fn model_not_found(model: &str) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found".into()),
            ..Self::new(StatusCode::NOT_FOUND, "not_found_error", format!("the model `{model}` does not exist"))
        }
    }

    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key".into()),
            ..Self::new(StatusCode::UNAUTHORIZED, "authentication_error", "missing or wrong API key (Authorization: Bearer KEY)")
        }
    }

    pub fn shutting_down() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "the server is shutting down")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The reason label of `cinder:request_rejected_total`.
    pub fn reason(&self) -> &str {
        self.code.as_deref().unwrap_or(self.kind)
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Invalid(message) => Self::invalid(message, None),
            SubmitError::Rejected(r) => {
                let (status, kind) = match r.reason {
                    RejectionReason::TooLong => (StatusCode::BAD_REQUEST, "invalid_request_error"),
                    RejectionReason::CircuitOpen => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
                    _ => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
                };
                Self {
                    code: Some(r.reason.name().to_owned()),
                    retry_after_s: r.retry_after.map(|d| d.as_secs_f64().ceil().max(1.0) as u64),
                    ..Self::new(status, kind, r.message)
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Parses a JSON body; a wrong type names the field, unknown fields are logged and ignored.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|&b| b != b'{') {
        return Err(ApiError::invalid("the request body must be a JSON object", None));
    }
    let mut json = serde_json::Deserializer::from_slice(body);
    let mut unknown = Vec::new();
    let mut note_unknown = |path: serde_ignored::Path| unknown.push(path.to_string());
    let ignored = serde_ignored::Deserializer::new(&mut json, &mut note_unknown);
    let parsed = serde_path_to_error::deserialize(ignored).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(format!("the body is not valid JSON: {inner}"), None)
        } else if path == "." {
            ApiError::invalid(format!("bad request body: {inner}"), None)
        } else {
            ApiError::invalid(format!("`{path}`: {inner}"), Some(&path))
        }
    })?;
    json.end().map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}"), None))?;
    if !unknown.is_empty() {
        tracing::debug!("ignored unknown fields: {}", unknown.join(", "));
    }
    Ok(parsed)
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
    pub fn text(&self) -> Result<String, ApiError> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(t)) => Ok(t.clone()),
            Some(Content::Parts(parts)) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => Ok(t.as_str()),
                    (kind, _) => Err(ApiError::invalid(format!("content parts of type `{kind}` are not supported"), Some("messages"))),
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
    pub ignore_eos: Option<bool>,
    pub priority: Option<PriorityField>,
    pub cache_prompt: Option<bool>,
    pub return_token_ids: Option<bool>,
    pub user: Option<String>,
    pub echo: Option<bool>,
}

/// Most alternatives per choice and most choices per request.
pub const MAX_LOGPROBS: u32 = 20;
pub const MAX_N: u32 = 16;

impl GenerationBody {
    /// The sampling parameters, checked; `seed` is used when the body has none.
    pub fn sampling(&self, seed: u64) -> Result<SamplingParams, ApiError> {
        let range = |name: &str, value: Option<f32>, ok: &dyn Fn(f32) -> bool, rule: &str| match value {
            Some(v) if !ok(v) => Err(ApiError::invalid(format!("`{name}` must be {rule}; got {v}"), Some(name))),
            _ => Ok(()),
        };
        range("temperature", self.temperature, &|v| (0.0..=2.0).contains(&v), "in [0, 2]")?;
        range("top_p", self.top_p, &|v| v > 0.0 && v <= 1.0, "in (0, 1]")?;
        range("min_p", self.min_p, &|v| (0.0..=1.0).contains(&v), "in [0, 1]")?;
        range("presence_penalty", self.presence_penalty, &|v| (-2.0..=2.0).contains(&v), "in [-2, 2]")?;
        range("frequency_penalty", self.frequency_penalty, &|v| (-2.0..=2.0).contains(&v), "in [-2, 2]")?;
        range("repetition_penalty", self.repetition_penalty, &|v| v > 0.0 && v <= 10.0, "in (0, 10]")?;
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => return Err(ApiError::invalid(format!("`top_k` must be -1, 0 or positive; got {k}"), Some("top_k"))),
        };
        Ok(SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k,
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            seed: self.seed.unwrap_or(seed),
            ..SamplingParams::default()
        })
    }

    pub fn n(&self) -> Result<usize, ApiError> {
        match self.n.unwrap_or(1) {
            n @ 1..=MAX_N => Ok(n as usize),
            n => Err(ApiError::invalid(format!("`n` must be in [1, {MAX_N}]; got {n}"), Some("n"))),
        }
    }

    /// How many alternatives to report per token, if any.
    pub fn logprobs(&self, chat: bool) -> Result<Option<usize>, ApiError> {
        let count = match (chat, self.logprobs) {
            (_, None) | (_, Some(Logprobs::Flag(false))) => return Ok(None),
            (true, Some(Logprobs::Flag(true))) => self.top_logprobs.unwrap_or(0),
            (false, Some(Logprobs::Count(k))) => k,
            (true, Some(Logprobs::Count(_))) => return Err(ApiError::invalid("`logprobs` is a boolean here; use `top_logprobs` for a count", Some("logprobs"))),
            (false, Some(Logprobs::Flag(true))) => return Err(ApiError::invalid("`logprobs` is a number of alternatives here", Some("logprobs"))),
        };
        if count > MAX_LOGPROBS {
            let param = if chat { "top_logprobs" } else { "logprobs" };
            return Err(ApiError::invalid(format!("`{param}` must be at most {MAX_LOGPROBS}; got {count}"), Some(param)));
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

    pub fn priority(&self) -> Result<Priority, ApiError> {
        let bad = |what: String| ApiError::invalid(format!("`priority` must be 0-4 or critical, high, normal, low, batch; got {what}"), Some("priority"));
        match &self.priority {
            None => Ok(Priority::Normal),
            Some(PriorityField::Level(l)) if (0..=4).contains(l) => Ok(Priority::from_level(*l as usize)),
            Some(PriorityField::Level(l)) => Err(bad(l.to_string())),
            Some(PriorityField::Name(name)) => {
                Priority::ALL.into_iter().find(|p| p.name() == name).ok_or_else(|| bad(format!("{name:?}")))
            }
        }
    }
}
