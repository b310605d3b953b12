//! `POST /v1/embeddings`: each input a prompt-only request through the model's scheduler,
//! batched with the chat and completion requests of every tenant under the same limits,
//! caps and rates.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use cinder_engine::Event;
use cinder_engine::openai::embeddings::{EmbeddingsBody, EncodingFormat, finish_vector};
use cinder_engine::openai::{Submission, parse, response};
use cinder_model::Pooling;
use cinder_scheduler::FinishReason;
use serde_json::Value;

use super::api::ApiError;
use super::routes::{RequestBody, Shared, off_runtime, random_seed, reply};
use super::tenants::Tenant;

pub async fn embeddings(State(s): State<Shared>, Extension(tenant): Extension<Arc<Tenant>>, body: Result<RequestBody, ApiError>) -> Response {
    let result = embed(&s, &tenant, body).await;
    reply(&s, &tenant, result)
}

async fn embed(s: &Shared, tenant: &Arc<Tenant>, body: Result<RequestBody, ApiError>) -> Result<Value, ApiError> {
    if s.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::shutting_down());
    }
    let body = parse::<EmbeddingsBody>(&body?.0)?;
    let id = s.next_id.fetch_add(1, Ordering::Relaxed);
    // `model` may name a LoRA adapter: its embeddings are the adapted model's.
    let (model, adapter) = s.models.route(body.model.as_deref(), None, body.user.as_deref(), random_seed(id ^ 0x5a5a))?;
    if let Some(adapter) = &adapter {
        tenant.check_adapter(adapter)?;
    }
    let checked = body.check(&s.limits, model.config.hidden)?;
    if model.pooling == Pooling::None {
        let message = format!("model {} pools no embedding (pooling none); serve it with --pooling mean, cls or last", model.name);
        return Err(ApiError::invalid(message, Some("model")));
    }
    let priority = tenant.priority(checked.priority)?;
    let in_flight = tenant.enter()?;
    let (checked, prompts) = off_runtime({
        let model = model.clone();
        move || {
            let prompts = checked.prompts(&model.tokenizer, model.context_length);
            (checked, prompts)
        }
    })
    .await?;
    let prompts = prompts?;
    let tokens: usize = prompts.iter().map(Vec::len).sum();
    let rate = s.tenants.take_rate(tenant, tokens)?;
    let submission = Submission {
        context_length: model.context_length,
        seed: 0,
        tenant: tenant.id,
        priority,
        max_priority: tenant.max_priority(),
        constraint: None,
        adapter: adapter.as_deref(),
    };
    // Every input is admitted together, or the request is refused.
    let receivers = model.worker.submit(checked.requests(&prompts, model.pooling, submission)).await?;
    rate.commit();
    let mut vectors = Vec::with_capacity(receivers.len());
    for mut rx in receivers {
        let finished = loop {
            match rx.recv().await {
                Some(Event::Finished(finished)) => break finished,
                Some(Event::Token { .. }) => {}
                None => return Err(ApiError::internal("the engine stopped before the request ended")),
            }
        };
        s.metrics.finished(&model.name, &in_flight.tenant().name, &finished);
        if let Some(error) = finished.error {
            return Err(ApiError::internal(error));
        }
        if finished.reason == FinishReason::Deadline {
            return Err(ApiError::deadline_exceeded(finished.finished.since(finished.arrival).as_secs_f64()));
        }
        let vector = finished.embedding.ok_or_else(|| ApiError::internal("the engine ended an embedding without its vector"))?;
        vectors.push(finish_vector(vector, checked.dimensions));
    }
    Ok(response::embeddings(adapter.as_deref().unwrap_or(&model.name), &vectors, checked.encoding_format == EncodingFormat::Base64, tokens))
}
