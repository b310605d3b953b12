//! The HTTP routes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use std::time::Duration;

use axum::body::{Bytes, HttpBody};
use axum::extract::{FromRequest, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cinder_engine::{Event, Finished, TokenLogprob};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{Stream, StreamMap};

use cinder_engine::openai::response::{self, Body, Endpoint, Message, Output, Usage};
use cinder_engine::Constraint;
use cinder_engine::openai::stream::{ChunkSequencer, Extras};
use cinder_engine::openai::{Checked, GenerationBody, RequestLimits, Submission, ToolCall, ToolOutput, finish_reason, parse};
use cinder_scheduler::admission::Applicant;
use cinder_scheduler::{FinishReason, TenantId};

use super::api::ApiError;
use super::metrics::ServerMetrics;
use super::models::{Models, ServedModel};
use super::tenants::{InFlight, Tenant, Tenants};

/// Everything the handlers share.
pub struct AppState {
    pub models: Models,
    /// Loads models at run time, with the server's settings.
    pub loader: super::Loader,
    /// Whether the admin routes are open: to `--api-key`'s holder, when there is one.
    pub admin: bool,
    /// What one request may ask for (`[limits]`).
    pub limits: RequestLimits,
    /// Grammars compiling at once, at most.
    pub grammar_slots: Arc<tokio::sync::Semaphore>,
    /// Longest wait for a request's whole body.
    pub body_timeout: Duration,
    pub tenants: Tenants,
    /// `--metrics-names`.
    pub metric_names: super::metrics::MetricNames,
    /// SIGTERM came: /health/ready answers 503 while requests are still served.
    pub draining: AtomicBool,
    /// The drain's grace is over: new requests get 503.
    pub shutting_down: AtomicBool,
    pub metrics: ServerMetrics,
    /// The Responses API's stored answers.
    pub responses: super::responses::ResponseStore,
    pub started: u64,
    pub next_id: AtomicU64,
}

pub type Shared = Arc<AppState>;

/// The API routes' door: the bearer key names the tenant (a missing or unknown key is a
/// 401 when keys are configured; the trusted gateway's key lets its fairness header name
/// it), which the handlers get as an extension.
pub async fn identify_tenant(State(s): State<Shared>, mut request: Request, next: Next) -> Response {
    // Anthropic's clients send their key as `x-api-key`.
    let headers = request.headers();
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let given = bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    let fairness_id = request.headers().get(super::tenants::FAIRNESS_HEADER).and_then(|v| v.to_str().ok());
    let Some(tenant) = s.tenants.identify(given, fairness_id) else {
        s.metrics.rejected("", "unauthorized");
        return ApiError::unauthorized().into_response();
    };
    request.extensions_mut().insert(tenant);
    next.run(request).await
}

/// Counts every answer of the API routes by endpoint (the route as written) and status.
pub async fn count_answers(State(s): State<Shared>, request: Request, next: Next) -> Response {
    let endpoint = request.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_owned());
    let response = next.run(request).await;
    if let Some(endpoint) = endpoint {
        s.metrics.answered(&endpoint, response.status().as_u16());
    }
    response
}

/// A request's body, read within the server's time limit (the size limit is the router's
/// `DefaultBodyLimit`): a client that sends its body slowly or never gets a 408.
pub struct RequestBody(pub Bytes);

impl FromRequest<Shared> for RequestBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, s: &Shared) -> Result<Self, ApiError> {
        match tokio::time::timeout(s.body_timeout, Bytes::from_request(request, s)).await {
            Err(_) => Err(ApiError::body_timeout(s.body_timeout.as_secs())),
            Ok(Ok(bytes)) => Ok(Self(bytes)),
            // Too large (413) or the connection failed mid-body (400).
            Ok(Err(e)) => Err(ApiError { status: e.status(), ..ApiError::invalid(e.body_text(), None) }),
        }
    }
}

/// Every error answer carries OpenAI's error JSON, also those made without a body (the
/// router's 405, the static files' errors).
pub async fn error_bodies(request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = next.run(request).await;
    let status = response.status();
    let is_error = status.is_client_error() || status.is_server_error();
    if !is_error || method == Method::HEAD || response.body().size_hint().exact() != Some(0) {
        return response;
    }
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => format!("{method} is not allowed on {path}"),
        _ => format!("{path}: {}", status.canonical_reason().unwrap_or("error")),
    };
    let (parts, _) = response.into_parts();
    let mut answer = ApiError::for_status(status, message).into_response();
    for name in [header::ALLOW, header::CONTENT_RANGE, header::RETRY_AFTER] {
        if let Some(value) = parts.headers.get(&name) {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    answer
}

/// Records a refused request and turns the error into its response.
pub(super) fn refuse(s: &AppState, tenant: &Tenant, e: ApiError) -> Response {
    s.metrics.rejected(&tenant.name, e.reason());
    e.into_response()
}

/// A JSON answer, or the refusal.
pub(super) fn reply(s: &AppState, tenant: &Tenant, result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(json) => Json(json).into_response(),
        Err(e) => refuse(s, tenant, e),
    }
}

pub async fn completions(
    State(s): State<Shared>,
    Extension(tenant): Extension<Arc<Tenant>>,
    body: Result<RequestBody, ApiError>,
) -> Response {
    generate(s, tenant, Endpoint::Completion, body).await
}

pub async fn chat_completions(
    State(s): State<Shared>,
    Extension(tenant): Extension<Arc<Tenant>>,
    body: Result<RequestBody, ApiError>,
) -> Response {
    generate(s, tenant, Endpoint::Chat, body).await
}

async fn generate(s: Shared, tenant: Arc<Tenant>, kind: Endpoint, body: Result<RequestBody, ApiError>) -> Response {
    let body = body.and_then(|body| Ok(parse::<GenerationBody>(&body.0)?));
    match start(&s, &tenant, kind, body).await {
        Ok(run) if run.stream => stream(s, run).into_response(),
        Ok(run) => reply(&s, &tenant, collect(&s, run).await),
        Err(e) => refuse(&s, &tenant, e),
    }
}

/// A generation in flight: one receiver per choice.
pub(super) struct Run {
    /// The model answering it (what the request named, or an alias's pick).
    pub(super) model: Arc<ServedModel>,
    /// The name its responses give: the LoRA adapter it runs with, or the model's.
    pub(super) served_as: String,
    kind: Endpoint,
    pub(super) id: String,
    /// When the request arrived, in Unix seconds (OpenAI's `created`).
    created: u64,
    pub(super) stream: bool,
    include_usage: bool,
    logprobs: bool,
    return_token_ids: bool,
    pub(super) prompts: Vec<Vec<u32>>,
    n: usize,
    pub(super) receivers: Vec<UnboundedReceiver<Event>>,
    /// Whether the output may be tool calls.
    pub(super) tool_output: ToolOutput,
    /// Its place under the tenant's `max_concurrent`, held until the response ends.
    in_flight: InFlight,
}

impl Run {
    /// The id without its endpoint's prefix (`chatcmpl-`), for the ids other APIs give
    /// (`msg_…`, `resp_…`).
    pub(super) fn bare_id(&self) -> &str {
        self.id.split_once('-').map_or(self.id.as_str(), |(_, id)| id)
    }

    pub(super) fn tenant(&self) -> &str {
        &self.in_flight.tenant().name
    }

    /// A choice's calls, when it may make some and its whole output is a call list.
    pub(super) fn read_calls(&self, output: &str) -> Option<Vec<ToolCall>> {
        self.tool_output.calls(output)
    }

    /// A body around `choices`: a response, or a chunk when `chunk`.
    fn body<'a>(&'a self, model: &'a str, choices: Vec<response::Choice>, chunk: bool) -> Body<'a> {
        let object = if chunk { self.kind.chunk_object() } else { self.kind.object() };
        Body { id: &self.id, object, created: self.created, model, choices, usage: None, prompt_token_ids: None }
    }

    /// Chat with `return_token_ids` gives the prompt's ids once, at the top.
    fn chat_prompt_ids(&self) -> Option<&[u32]> {
        (self.return_token_ids && self.kind == Endpoint::Chat).then(|| self.prompts[0].as_slice())
    }
}

/// Starts the generation `body` asks for (parsed, or the reason it could not be).
pub(super) async fn start(s: &Shared, tenant: &Arc<Tenant>, kind: Endpoint, body: Result<GenerationBody, ApiError>) -> Result<Run, ApiError> {
    if s.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::shutting_down());
    }
    // The limits first: nothing that grows with what the body asks for exists before they
    // pass, then the tenant's caps and rates, then the engine's queue.
    let checked = body?.check(kind, &s.limits)?;
    let id = s.next_id.fetch_add(1, Ordering::Relaxed);
    // An alias's draw of its own, apart from the sampling seed drawn below.
    let (model, adapter) = {
        let body = checked.body();
        s.models.route(body.model.as_deref(), body.lora.as_deref(), body.user.as_deref(), random_seed(id ^ 0x5a5a))?
    };
    if let Some(adapter) = &adapter {
        tenant.check_adapter(adapter)?;
    }
    let priority = tenant.priority(checked.priority)?;
    let in_flight = tenant.enter()?;
    let (checked, prompts) = off_runtime({
        let model = model.clone();
        move || {
            let mut checked = checked;
            let prompts = checked.prompts(&model.tokenizer, model.template.as_ref(), model.context_length);
            (checked, prompts)
        }
    })
    .await?;
    let prompts = prompts?;
    let tokens = checked.tokens(&prompts, model.context_length)?;
    let rate = s.tenants.take_rate(tenant, tokens)?;
    let (checked, constraint) = if checked.has_constraint() {
        // A grammar is compiled only for a request the engine would take now.
        model.worker.check(Applicant { tenant: tenant.id, priority, tokens }).await?;
        compile_grammar(s, &model, checked).await?
    } else {
        (checked, None)
    };
    let submission = Submission {
        context_length: model.context_length,
        // Without a seed, each request draws its own; its choices' seeds derive from it.
        seed: random_seed(id),
        tenant: tenant.id,
        priority,
        max_priority: tenant.max_priority(),
        constraint: constraint.as_ref(),
        adapter: adapter.as_deref(),
    };
    let requests = checked.requests(&prompts, submission)?;
    // Every choice of every prompt is admitted together, or the request is refused.
    let receivers = model.worker.submit(requests).await?;
    rate.commit();
    let body = checked.body();
    Ok(Run {
        served_as: adapter.unwrap_or_else(|| model.name.clone()),
        model,
        kind,
        id: format!("{}-{:x}{id:08x}", kind.id_prefix(), s.started),
        created: unix_seconds(),
        stream: body.stream.unwrap_or(false),
        include_usage: body.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false),
        logprobs: checked.logprobs.is_some(),
        return_token_ids: body.return_token_ids.unwrap_or(false),
        prompts,
        n: checked.n,
        receivers,
        tool_output: checked.tool_output(),
        in_flight,
    })
}

/// Runs `work` (tokenizing, compiling) on the blocking pool, off the threads that serve
/// connections.
pub(super) async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|_| ApiError::internal("preparing the request panicked"))
}

/// Compiles a checked body's grammar on the blocking pool, a few at a time, within
/// `[limits] grammar_compile_ms`; past it the request is refused (the compile, bounded by
/// llguidance's own limits, ends on its own and frees its slot).
async fn compile_grammar(s: &Shared, model: &ServedModel, checked: Checked) -> Result<(Checked, Option<Constraint>), ApiError> {
    let slot = s.grammar_slots.clone().acquire_owned().await.map_err(|_| ApiError::shutting_down())?;
    let budget_ms = s.limits.grammar_compile_ms;
    let param = if checked.tool_output() == ToolOutput::Text { "response_format" } else { "tools" };
    let grammars = model.grammars.clone();
    let compiling = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let constraint = checked.constraint(&grammars);
        (checked, constraint)
    });
    match tokio::time::timeout(Duration::from_millis(budget_ms), compiling).await {
        Err(_) => Err(ApiError::invalid(
            format!("`{param}`: the grammar did not compile within {budget_ms} ms (the server's grammar_compile_ms); simplify the schema"),
            Some(param),
        )),
        Ok(Err(_)) => Err(ApiError::internal("compiling the grammar panicked")),
        Ok(Ok((checked, constraint))) => Ok((checked, constraint?)),
    }
}

pub(super) fn random_seed(id: u64) -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ id.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// One choice's output so far.
#[derive(Default)]
pub(super) struct Collected {
    pub(super) text: String,
    tokens: Vec<u32>,
    logprobs: Vec<(u32, TokenLogprob)>,
    pub(super) finished: Option<Finished>,
}

impl Collected {
    fn add(&mut self, event: Event) {
        match event {
            Event::Token { token, text, logprob } => {
                self.text.push_str(&text);
                self.tokens.push(token);
                if let Some(lp) = logprob {
                    self.logprobs.push((token, lp));
                }
            }
            Event::Finished(f) => {
                self.text.push_str(&f.text);
                self.finished = Some(f);
            }
        }
    }
}

/// Waits for every choice and builds the whole response.
async fn collect(s: &Shared, mut run: Run) -> Result<Value, ApiError> {
    let choices = gather(s, &mut run).await?;
    Ok(openai_response(&run, choices))
}

/// Waits for every choice to finish; a failed one, or one whose deadline passed, fails the
/// whole request.
pub(super) async fn gather(s: &Shared, run: &mut Run) -> Result<Vec<Collected>, ApiError> {
    let mut choices: Vec<Collected> = Vec::with_capacity(run.receivers.len());
    for rx in &mut run.receivers {
        let mut choice = Collected::default();
        while choice.finished.is_none() {
            let event = rx.recv().await.ok_or_else(|| ApiError::internal("the engine stopped before the request ended"))?;
            choice.add(event);
        }
        let finished = choice.finished.as_ref().expect("finished");
        s.metrics.finished(&run.model.name, &run.in_flight.tenant().name, finished);
        if let Some(error) = &finished.error {
            return Err(ApiError::internal(error.clone()));
        }
        if finished.reason == FinishReason::Deadline {
            return Err(ApiError::deadline_exceeded(finished.finished.since(finished.arrival).as_secs_f64()));
        }
        choices.push(choice);
    }
    Ok(choices)
}

/// Builds the OpenAI response of every choice.
fn openai_response(run: &Run, choices: Vec<Collected>) -> Value {
    let mut usage = Usage::default();
    let mut out = Vec::new();
    for (index, c) in choices.into_iter().enumerate() {
        let f = c.finished.expect("every choice finished");
        usage.add(&f, index % run.n == 0);
        let logprobs = if run.logprobs { response::logprobs(&run.model.tokenizer, run.kind, &c.logprobs, 0) } else { Value::Null };
        let calls = run.read_calls(&c.text);
        let finish_reason = Some(if calls.is_some() { "tool_calls" } else { finish_reason(f.reason) });
        let output = match run.kind {
            Endpoint::Completion => Output::Text(c.text),
            Endpoint::Chat => Output::Message(Message::answer(c.text, calls.map(|calls| response::tool_calls(&run.id, index, &calls)))),
        };
        let ids = run.return_token_ids;
        out.push(response::Choice {
            index,
            output,
            logprobs,
            finish_reason,
            token_ids: ids.then_some(c.tokens),
            prompt_token_ids: (ids && run.kind == Endpoint::Completion).then(|| run.prompts[index / run.n].clone()),
        });
    }
    let body = Body {
        usage: Some(usage),
        prompt_token_ids: run.chat_prompt_ids(),
        ..run.body(&run.served_as, out, false)
    };
    serde_json::to_value(body).expect("a response is plain data")
}

/// Server-sent events: a chunk per token (or group of tokens with text), a final chunk per
/// choice with its finish reason, the usage if asked, then `[DONE]`. Dropping the stream (the
/// client went away) drops the receivers, which cancels the requests.
fn stream(s: Shared, mut run: Run) -> Sse<ChunkStream> {
    let mut receivers = StreamMap::new();
    for (index, rx) in run.receivers.drain(..).enumerate() {
        receivers.insert(index, UnboundedReceiverStream::new(rx));
    }
    let extras = Extras { logprobs: run.logprobs, token_ids: run.return_token_ids };
    let chunks = ChunkSequencer::new(run.kind, run.id.clone(), receivers.len(), run.n, run.tool_output, extras);
    Sse::new(ChunkStream { s, run, receivers, chunks, phase: Phase::Events })
}

#[derive(PartialEq, Eq)]
enum Phase {
    Events,
    Usage,
    Done,
    End,
}

pub struct ChunkStream {
    s: Shared,
    run: Run,
    receivers: StreamMap<usize, UnboundedReceiverStream<Event>>,
    chunks: ChunkSequencer,
    phase: Phase,
}

impl ChunkStream {
    fn chunk(&self, choices: Vec<response::Choice>) -> SseEvent {
        let body = self.run.body(&self.run.served_as, choices, true);
        SseEvent::default().data(serde_json::to_string(&body).expect("a chunk is plain data"))
    }

    /// The chunk for one event, or None when it carries nothing to send.
    fn event_chunk(&mut self, index: usize, event: Event) -> Option<SseEvent> {
        if let Event::Finished(f) = &event {
            self.s.metrics.finished(&self.run.model.name, self.run.tenant(), f);
            if let Some(error) = &f.error {
                // Mid-stream there is no status to set: the error object is the event.
                return Some(SseEvent::default().data(ApiError::internal(error.clone()).body().to_string()));
            }
        }
        let choice = self.chunks.event(&self.run.model.tokenizer, index, &event)?;
        Some(self.chunk(vec![choice]))
    }
}

impl Stream for ChunkStream {
    type Item = Result<SseEvent, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.phase {
                Phase::Events => match Pin::new(&mut self.receivers).poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some((index, event))) => {
                        if let Some(chunk) = self.event_chunk(index, event) {
                            return Poll::Ready(Some(Ok(chunk)));
                        }
                    }
                    Poll::Ready(None) => self.phase = Phase::Usage,
                },
                Phase::Usage => {
                    self.phase = Phase::Done;
                    if self.run.include_usage {
                        let body = Body {
                            usage: Some(self.chunks.usage()),
                            prompt_token_ids: self.run.chat_prompt_ids(),
                            ..self.run.body(&self.run.served_as, Vec::new(), true)
                        };
                        let data = serde_json::to_string(&body).expect("a chunk is plain data");
                        return Poll::Ready(Some(Ok(SseEvent::default().data(data))));
                    }
                }
                Phase::Done => {
                    self.phase = Phase::End;
                    return Poll::Ready(Some(Ok(SseEvent::default().data("[DONE]"))));
                }
                Phase::End => return Poll::Ready(None),
            }
        }
    }
}

/// Now, in seconds since the Unix epoch.
pub fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The served models with their context length, then the aliases with their splits.
pub async fn models(State(s): State<Shared>) -> Json<Value> {
    let model = |m: &ServedModel| {
        json!({"id": m.name, "object": "model", "created": s.started, "owned_by": "cinder", "max_model_len": m.context_length})
    };
    let mut data = Vec::new();
    for m in s.models.all() {
        data.push(model(&m));
        // Adapters as vLLM lists them: their own id, and the model they adapt as `parent`.
        for name in m.adapters().into_keys() {
            data.push(json!({"id": name, "object": "model", "created": s.started, "owned_by": "cinder", "parent": m.name, "max_model_len": m.context_length}));
        }
    }
    for (alias, split) in s.models.routing().aliases {
        data.push(json!({"id": alias, "object": "model", "created": s.started, "owned_by": "cinder", "routes_to": split}));
    }
    Json(json!({"object": "list", "data": data}))
}

/// `{"status": "ok", "models": {NAME: {"status": "ready" | "loading" | "failed"}}}`: 200
/// while some model is ready. `--api-key`'s holder also sees each model's file and why one
/// failed; nobody else does.
pub async fn health(State(s): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    if s.shutting_down.load(Ordering::Relaxed) {
        return ApiError::shutting_down().into_response();
    }
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let admin = s.admin && s.tenants.identify(given, None).is_some_and(|t| t.id == TenantId::default());
    let models = s.models.states(admin);
    let ready = models.values().any(|state| state["status"] == "ready");
    let body = Json(json!({"status": if ready { "ok" } else { "unavailable" }, "models": models}));
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, body).into_response()
}

/// Liveness: the process serves HTTP (200 until it exits, drain included).
pub async fn health_live() -> Response {
    Json(json!({"status": "alive"})).into_response()
}

/// Readiness: 200 when every model is loaded and warmed, the server is not draining and no
/// model's circuit breaker is open; else 503 naming why, so that a load balancer sends its
/// work elsewhere.
pub async fn health_ready(State(s): State<Shared>) -> Response {
    let mut reasons = Vec::new();
    if s.draining.load(Ordering::Relaxed) {
        reasons.push("draining: the server is shutting down".to_owned());
    }
    for (name, state) in s.models.states(false) {
        if state["status"] != "ready" {
            reasons.push(format!("model {name} is {}", state["status"].as_str().unwrap_or("unavailable")));
        }
    }
    for model in s.models.all() {
        if model.worker.metrics().scheduler.breaker_open {
            reasons.push(format!("model {}: the circuit breaker is open after failed steps", model.name));
        }
    }
    if reasons.is_empty() {
        return Json(json!({"status": "ready"})).into_response();
    }
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable", "reasons": reasons}))).into_response()
}

/// Prometheus metrics. Behind keys, only `--api-key`'s holder (the default tenant) reads
/// them: they name every tenant.
pub async fn metrics(State(s): State<Shared>, tenant: Option<Extension<Arc<Tenant>>>) -> Response {
    if let Some(Extension(tenant)) = tenant
        && tenant.id != TenantId::default()
    {
        return refuse(&s, &tenant, ApiError::forbidden("/metrics needs the server's --api-key, not a tenant's key"));
    }
    let engines: Vec<(String, _)> = s.models.all().iter().map(|m| (m.name.clone(), m.worker.metrics())).collect();
    let text = s.metrics.render(&engines, s.loader.backend().memory(), s.metric_names);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

#[derive(Deserialize)]
struct TokenizeBody {
    /// Whose vocabulary (the first model's when absent).
    model: Option<String>,
    /// llama.cpp's name for the text; `prompt` is vLLM's.
    content: Option<String>,
    prompt: Option<String>,
    add_special: Option<bool>,
    /// Whether control-token text becomes control tokens (default true, as for completions).
    parse_special: Option<bool>,
}

pub async fn tokenize(
    State(s): State<Shared>,
    Extension(tenant): Extension<Arc<Tenant>>,
    body: Result<RequestBody, ApiError>,
) -> Response {
    let result = (|| {
        let body: TokenizeBody = parse(&body?.0)?;
        let (model, _) = s.models.route(body.model.as_deref(), None, None, 0)?;
        let text = body.content.or(body.prompt).ok_or_else(|| ApiError::invalid("`content` (or `prompt`) is required", Some("content")))?;
        let tokens = model
            .tokenizer
            .encode(&text, body.add_special.unwrap_or(true), body.parse_special.unwrap_or(true))
            .map_err(|e| ApiError::invalid(format!("cannot tokenize: {e}"), Some("content")))?;
        Ok(json!({"tokens": tokens, "count": tokens.len(), "max_model_len": model.context_length}))
    })();
    reply(&s, &tenant, result)
}

#[derive(Deserialize)]
struct DetokenizeBody {
    model: Option<String>,
    tokens: Vec<u32>,
}

pub async fn detokenize(
    State(s): State<Shared>,
    Extension(tenant): Extension<Arc<Tenant>>,
    body: Result<RequestBody, ApiError>,
) -> Response {
    let result = (|| {
        let body: DetokenizeBody = parse(&body?.0)?;
        let (model, _) = s.models.route(body.model.as_deref(), None, None, 0)?;
        let text = model.tokenizer.decode(&body.tokens, false).map_err(|e| ApiError::invalid(e.to_string(), Some("tokens")))?;
        Ok(json!({"content": text, "prompt": text}))
    })();
    reply(&s, &tenant, result)
}

pub fn internal_error(message: &str) -> Response {
    ApiError::internal(message).into_response()
}

pub async fn not_found() -> Response {
    ApiError { status: StatusCode::NOT_FOUND, ..ApiError::invalid("no such route", None) }.into_response()
}
