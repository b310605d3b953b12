//! OpenAI-style errors (the request bodies are `cinder_engine::openai`'s).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cinder_engine::SubmitError;
use cinder_engine::openai::InvalidRequest;
use cinder_scheduler::RejectionReason;

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

    /// No stored response of this id is the tenant's (none, expired, or another's).
    pub fn response_not_found(id: &str) -> Self {
        Self {
            param: Some("response_id".into()),
            ..Self::new(StatusCode::NOT_FOUND, "not_found_error", format!("no stored response `{id}` (never stored, deleted or expired)"))
        }
    }

    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key".into()),
            ..Self::new(StatusCode::UNAUTHORIZED, "authentication_error", "missing or wrong API key (Authorization: Bearer KEY, or x-api-key: KEY)")
        }
    }

    /// The tenant may not ask for this priority (`above_max_priority = "refuse"`).
    pub fn priority_not_allowed(asked: &str, highest: &str) -> Self {
        Self {
            param: Some("priority".into()),
            code: Some("priority_not_allowed".into()),
            ..Self::new(StatusCode::FORBIDDEN, "permission_error", format!("`priority` {asked} is above this key's highest, {highest}"))
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", message)
    }

    /// The tenant has `cap` requests in flight already.
    pub fn too_many_concurrent(cap: usize) -> Self {
        Self {
            code: Some("too_many_concurrent_requests".into()),
            retry_after_s: Some(1),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", format!("this key has {cap} requests in flight, its limit"))
        }
    }

    /// Over the tenant's `what` (request or token) rate: retrying after `retry_s` works.
    pub fn rate_limited(what: &str, retry_s: f64) -> Self {
        Self {
            code: Some("rate_limited".into()),
            retry_after_s: Some(retry_s.ceil().max(1.0) as u64),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", format!("over this key's {what} rate limit; retry later"))
        }
    }

    /// The request needs more than the tenant's `what` burst: no retry can pass.
    pub fn exceeds_burst(what: &str, tokens: usize, burst: f64) -> Self {
        let message = match what {
            "token" => format!(
                "the request needs {tokens} tokens (prompts plus max_tokens, times n), more than this key's token_burst of {burst}; send fewer"
            ),
            _ => format!("this key's {what}_burst is {burst}, below one request"),
        };
        Self { code: Some("exceeds_burst".into()), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    /// The request conflicts with the server's state (unloading a model an alias uses).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict_error", message)
    }

    pub fn shutting_down() -> Self {
        Self::unavailable("the server is shutting down")
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", message)
    }

    /// The body did not arrive in time.
    pub fn body_timeout(seconds: u64) -> Self {
        Self {
            code: Some("request_timeout".into()),
            ..Self::new(StatusCode::REQUEST_TIMEOUT, "invalid_request_error", format!("the request body did not arrive within {seconds} s"))
        }
    }

    /// The request's deadline to start passed while it waited.
    pub fn deadline_exceeded(waited_s: f64) -> Self {
        Self {
            code: Some("deadline_exceeded".into()),
            ..Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout_error",
                format!("the request waited {waited_s:.1} s and could not start before its deadline"),
            )
        }
    }

    /// The error a response with `status` and no body stands for (the router's own 405,
    /// the static files' 416).
    pub fn for_status(status: StatusCode, message: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            500.. => "server_error",
            _ => "invalid_request_error",
        };
        Self::new(status, kind, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// OpenAI's error object: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        })
    }

    /// The reason label of `cinder:request_rejected_total`.
    pub fn reason(&self) -> &str {
        self.code.as_deref().unwrap_or(self.kind)
    }
}

impl From<InvalidRequest> for ApiError {
    fn from(e: InvalidRequest) -> Self {
        Self::invalid(e.message, e.param.as_deref())
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
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
