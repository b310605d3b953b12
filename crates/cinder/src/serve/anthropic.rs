//! Anthropic's Messages API: `/v1/messages` and `/v1/messages/count_tokens`, on the chat
//! path (the same limits, tenants, tools and batches), answered in Anthropic's shapes.

use std::sync::Arc;

use axum::body::Body as HttpBody;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cinder_engine::anthropic::{self, MessageEvents, MessagesBody};
use cinder_engine::openai::response::{Choice, Endpoint};
use cinder_engine::openai::{finish_reason, parse};
use serde_json::{Value, json};

use super::api::ApiError;
use super::events::{self, EventSequence};
use super::routes::{RequestBody, Run, Shared, gather, off_runtime, refuse, reply, start};
use super::tenants::Tenant;

/// The message id of a run: `msg_` and the run's own id.
fn message_id(run: &Run) -> String {
    format!("msg_{}", run.bare_id())
}

pub async fn messages(State(s): State<Shared>, Extension(tenant): Extension<Arc<Tenant>>, body: Result<RequestBody, ApiError>) -> Response {
    let body = body.and_then(|body| Ok(parse::<MessagesBody>(&body.0)?.into_chat(false)?));
    let mut run = match start(&s, &tenant, Endpoint::Chat, body).await {
        Ok(run) => run,
        Err(e) => return refuse(&s, &tenant, e),
    };
    if run.stream {
        // Anthropic's events: `message_start`, each content block's start, deltas and stop,
        // `message_delta` with the stop reason, `message_stop`.
        let (events, first) = MessageEvents::start(&message_id(&run), &run.served_as, run.prompts[0].len());
        return events::stream(s, run, events, vec![first]).into_response();
    }
    let answer = gather(&s, &mut run).await.map(|choices| {
        let choice = &choices[0];
        let finished = choice.finished.as_ref().expect("gathered choices finished");
        let calls = run.read_calls(&choice.text);
        let usage = anthropic::usage(finished.prompt_tokens, finished.completion_tokens);
        let stop_sequence = finished.stop_sequence.as_deref();
        anthropic::message(&message_id(&run), &run.served_as, &choice.text, calls.as_deref(), finish_reason(finished.reason), stop_sequence, usage)
    });
    reply(&s, &tenant, answer)
}

/// The prompt's tokens as `/v1/messages` would count them, without running it.
pub async fn count_tokens(State(s): State<Shared>, Extension(tenant): Extension<Arc<Tenant>>, body: Result<RequestBody, ApiError>) -> Response {
    let counted = async {
        let checked = parse::<MessagesBody>(&body?.0)?.into_chat(true)?.check(Endpoint::Chat, &s.limits)?;
        let (model, _) = s.models.route(checked.body().model.as_deref(), None, None, 0)?;
        let prompts = off_runtime(move || {
            let mut checked = checked;
            checked.prompts(&model.tokenizer, model.template.as_ref(), model.context_length)
        })
        .await??;
        Ok(json!({"input_tokens": prompts[0].len()}))
    };
    reply(&s, &tenant, counted.await)
}

/// Rewrites the error answers of the Messages routes into Anthropic's shape
/// (`{"type": "error", "error": {"type", "message"}}`), whichever layer made them.
pub async fn error_shape(request: Request, next: Next) -> Response {
    let anthropic = request.uri().path().starts_with("/v1/messages");
    let response = next.run(request).await;
    let status = response.status();
    if !anthropic || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return (status, Json(anthropic::error(status.as_u16(), "the error could not be read"))).into_response();
    };
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    let body = anthropic::error(status.as_u16(), &message).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, HttpBody::from(body))
}

impl EventSequence for MessageEvents {
    fn finished(&mut self, finished: &cinder_engine::Finished) {
        self.stopped_by(finished.stop_sequence.clone());
    }

    fn chunk(&mut self, choice: &Choice, (_, output_tokens): (usize, usize)) -> Vec<(&'static str, Value)> {
        MessageEvents::chunk(self, choice, output_tokens)
    }

    fn error(&self, message: &str) -> (&'static str, Value) {
        ("error", anthropic::error(500, message))
    }
}
