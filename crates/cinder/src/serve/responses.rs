//! OpenAI's Responses API: `POST /v1/responses` on the chat path (the same limits,
//! tenants, tools and batches), and the responses it stores for `previous_response_id`,
//! `GET` and `DELETE`, each tenant's apart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cinder_engine::openai::response::{Choice, Endpoint};
use cinder_engine::openai::{finish_reason, parse};
use cinder_engine::responses::{Echo, Item, ResponseEvents, ResponsesBody};
use serde_json::{Value, json};

use super::api::ApiError;
use super::events::{self, EventSequence};
use super::routes::{RequestBody, Shared, gather, refuse, reply, start, unix_seconds};
use super::tenants::Tenant;

/// A stored response and the conversation that led to it, for the next turn.
#[derive(Clone)]
struct Stored {
    tenant: String,
    stored_at: Instant,
    response: Value,
    /// Every input item of the conversation, then this response's output.
    conversation: Vec<Item>,
}

/// The stored responses: at most `per_tenant` of each tenant's, for `ttl`.
pub struct ResponseStore {
    per_tenant: usize,
    ttl: Duration,
    responses: Mutex<HashMap<String, Stored>>,
}

impl ResponseStore {
    pub fn new(per_tenant: usize, ttl: Duration) -> Self {
        Self { per_tenant, ttl, responses: Mutex::new(HashMap::new()) }
    }

    fn put(&self, id: String, stored: Stored) {
        if self.per_tenant == 0 {
            return;
        }
        let mut responses = self.responses.lock().expect("the store is never poisoned");
        responses.retain(|_, s| s.stored_at.elapsed() < self.ttl);
        let mine: Vec<(&String, &Stored)> = responses.iter().filter(|(_, s)| s.tenant == stored.tenant).collect();
        if mine.len() >= self.per_tenant {
            let oldest = mine.iter().min_by_key(|(_, s)| s.stored_at).map(|(id, _)| (*id).clone()).expect("at least one");
            responses.remove(&oldest);
        }
        responses.insert(id, stored);
    }

    /// The tenant's response `id`, if stored and not expired.
    fn get(&self, tenant: &str, id: &str) -> Option<Stored> {
        let responses = self.responses.lock().expect("the store is never poisoned");
        responses.get(id).filter(|s| s.tenant == tenant && s.stored_at.elapsed() < self.ttl).cloned()
    }

    fn delete(&self, tenant: &str, id: &str) -> bool {
        let mut responses = self.responses.lock().expect("the store is never poisoned");
        let mine = responses.get(id).is_some_and(|s| s.tenant == tenant);
        mine && responses.remove(id).is_some()
    }
}

/// What a finished response leaves in the store, if it is kept.
struct Keep {
    s: Shared,
    tenant: String,
    id: String,
    conversation: Vec<Item>,
}

impl Keep {
    fn store(self, response: &Value) {
        let output = response["output"].as_array().into_iter().flatten();
        let mut conversation = self.conversation;
        conversation.extend(output.filter_map(|item| serde_json::from_value(item.clone()).ok()));
        let stored = Stored { tenant: self.tenant, stored_at: Instant::now(), response: response.clone(), conversation };
        self.s.responses.put(self.id, stored);
    }
}

pub async fn create(State(s): State<Shared>, Extension(tenant): Extension<Arc<Tenant>>, body: Result<RequestBody, ApiError>) -> Response {
    let prepared = (|| {
        let body = parse::<ResponsesBody>(&body?.0)?;
        let history = match &body.previous_response_id {
            Some(id) => s.responses.get(&tenant.name, id).ok_or_else(|| ApiError::response_not_found(id))?.conversation,
            None => Vec::new(),
        };
        let mut conversation = history.clone();
        conversation.extend(body.input_items());
        let echo = Echo::of(&body, String::new(), String::new(), unix_seconds());
        Ok((body.into_chat(&history)?, echo, conversation))
    })();
    let (chat, mut echo, conversation) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => return refuse(&s, &tenant, e),
    };
    let mut run = match start(&s, &tenant, Endpoint::Chat, Ok(chat)).await {
        Ok(run) => run,
        Err(e) => return refuse(&s, &tenant, e),
    };
    echo.id = format!("resp_{}", run.bare_id());
    echo.model = run.served_as.clone();
    let keep = echo.store.then(|| Keep { s: s.clone(), tenant: tenant.name.clone(), id: echo.id.clone(), conversation });
    if run.stream {
        let (events, first) = ResponseEvents::start(echo);
        return events::stream(s, run, Streamed { events, keep }, first).into_response();
    }
    let answer = gather(&s, &mut run).await.map(|choices| {
        let choice = &choices[0];
        let finished = choice.finished.as_ref().expect("gathered choices finished");
        let calls = run.read_calls(&choice.text);
        let output = echo.output(&choice.text, calls.as_deref());
        let tokens = (finished.prompt_tokens, finished.completion_tokens);
        let response = echo.response("completed", &output, Some(finish_reason(finished.reason)), Some(tokens));
        if let Some(keep) = keep {
            keep.store(&response);
        }
        response
    });
    reply(&s, &tenant, answer)
}

pub async fn retrieve(State(s): State<Shared>, Extension(tenant): Extension<Arc<Tenant>>, Path(id): Path<String>) -> Response {
    match s.responses.get(&tenant.name, &id) {
        Some(stored) => Json(stored.response).into_response(),
        None => refuse(&s, &tenant, ApiError::response_not_found(&id)),
    }
}

pub async fn delete(State(s): State<Shared>, Extension(tenant): Extension<Arc<Tenant>>, Path(id): Path<String>) -> Response {
    if s.responses.delete(&tenant.name, &id) {
        Json(json!({"id": id, "object": "response", "deleted": true})).into_response()
    } else {
        refuse(&s, &tenant, ApiError::response_not_found(&id))
    }
}

/// A streamed response's events, stored once it completes.
struct Streamed {
    events: ResponseEvents,
    keep: Option<Keep>,
}

impl EventSequence for Streamed {
    fn chunk(&mut self, choice: &Choice, tokens: (usize, usize)) -> Vec<(&'static str, Value)> {
        let out = self.events.chunk(choice, tokens);
        if let (Some(response), Some(keep)) = (self.events.response(), self.keep.take()) {
            keep.store(response);
        }
        out
    }

    fn error(&self, message: &str) -> (&'static str, Value) {
        let error = json!({"type": "error", "code": "server_error", "message": message, "param": null, "sequence_number": 0});
        ("error", error)
    }
}
