//! `/admin/…`: the aliases' splits, the models and the LoRA adapters served, changed while
//! the server runs (and vLLM's `/v1/load_lora_adapter`, `/v1/unload_lora_adapter`).
//! Only `--api-key`'s holder (the default tenant) may use them, and only when the server
//! has a key.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::Response;
use cinder_scheduler::TenantId;
use serde::Deserialize;
use serde_json::json;

use super::NamedModel;
use super::api::ApiError;
use super::loras::{LoraEntry, check_entry};
use super::models::{Pending, Routing};
use super::routes::{RequestBody, Shared, reply};
use super::tenants::Tenant;
use cinder_engine::openai::parse;

fn check_admin(s: &Shared, tenant: &Tenant) -> Result<(), ApiError> {
    if !s.admin {
        return Err(ApiError::forbidden("the admin routes need a server started with --api-key"));
    }
    if tenant.id != TenantId::default() {
        return Err(ApiError::forbidden("the admin routes need the server's --api-key, not a tenant's key"));
    }
    Ok(())
}

/// `GET /admin/routes`: the aliases in force.
pub async fn routes(State(s): State<Shared>, Extension(tenant): Extension<Arc<Tenant>>) -> Response {
    let result = check_admin(&s, &tenant).map(|()| json!(s.models.routing()));
    reply(&s, &tenant, result)
}

/// `POST /admin/routes` with `{"aliases": {ALIAS: {MODEL: WEIGHT, …}}, "sticky": bool}`:
/// replaces the aliases at once; requests in flight keep the model they were routed to.
pub async fn set_routes(State(s): State<Shared>, Extension(tenant): Extension<Arc<Tenant>>, body: Result<RequestBody, ApiError>) -> Response {
    let result = (|| {
        check_admin(&s, &tenant)?;
        let routing: Routing = parse(&body?.0)?;
        s.models.set_routing(routing).map_err(|e| ApiError::invalid(e, Some("aliases")))?;
        Ok(json!(s.models.routing()))
    })();
    reply(&s, &tenant, result)
}

/// `GET /admin/models`: every model's state.
pub async fn models(State(s): State<Shared>, Extension(tenant): Extension<Arc<Tenant>>) -> Response {
    let result = check_admin(&s, &tenant).map(|()| json!({"models": s.models.states(true)}));
    reply(&s, &tenant, result)
}

#[derive(Deserialize)]
struct LoadBody {
    name: String,
    path: std::path::PathBuf,
}

/// `POST /admin/models` with `{"name", "path"}`: loads a model with the server's settings
/// (its own KV cache of `--kv-cache-mb`) and answers once it serves, or with why not.
pub async fn load(State(s): State<Shared>, Extension(tenant): Extension<Arc<Tenant>>, body: Result<RequestBody, ApiError>) -> Response {
    let result: Result<serde_json::Value, ApiError> = async {
        check_admin(&s, &tenant)?;
        let body: LoadBody = parse(&body?.0)?;
        if body.name.is_empty() || s.models.name_taken(&body.name) {
            return Err(ApiError::invalid(format!("the name {:?} is empty or taken", body.name), Some("name")));
        }
        let spec = NamedModel { name: body.name, path: body.path };
        s.models.set_pending(&spec.name, Some(Pending::Loading));
        let loading = s.clone();
        let name = spec.name.clone();
        let loaded = tokio::task::spawn_blocking(move || loading.loader.load(&spec, false, false)).await;
        s.models.set_pending(&name, None);
        let model = match loaded {
            Ok(Ok(model)) => model,
            Ok(Err(e)) => return Err(ApiError::invalid(format!("model {name}: {e:#}"), Some("path"))),
            Err(_) => return Err(ApiError::internal("loading the model panicked")),
        };
        let context_length = model.context_length;
        s.models.add(Arc::new(model)).map_err(|e| ApiError::invalid(e, Some("name")))?;
        Ok(json!({"loaded": name, "max_model_len": context_length}))
    }
    .await;
    reply(&s, &tenant, result)
}

/// `DELETE /admin/models/NAME`: stops serving NAME (its requests get 404 from now on); its
/// engine ends once the requests in flight have, and its device memory is freed.
pub async fn unload(State(s): State<Shared>, Extension(tenant): Extension<Arc<Tenant>>, Path(name): Path<String>) -> Response {
    let result = check_admin(&s, &tenant).and_then(|()| s.models.remove(&name)).map(|_| json!({"unloaded": name}));
    reply(&s, &tenant, result)
}

/// `GET /admin/loras`: every LoRA adapter served, with its model, file and scale.
pub async fn loras(State(s): State<Shared>, Extension(tenant): Extension<Arc<Tenant>>) -> Response {
    let result = check_admin(&s, &tenant).map(|()| {
        let all: Vec<serde_json::Value> = (s.models.all().iter())
            .flat_map(|m| m.adapters().into_iter().map(|(name, a)| json!({"name": name, "model": m.name, "path": a.path, "scale": a.scale})))
            .collect();
        json!({"loras": all})
    });
    reply(&s, &tenant, result)
}

#[derive(Deserialize)]
struct LoadLoraBody {
    name: String,
    path: std::path::PathBuf,
    scale: Option<f32>,
    /// The served model it adapts [default: the first].
    model: Option<String>,
}

/// vLLM's `/v1/load_lora_adapter` body.
#[derive(Deserialize)]
struct VllmLoadLoraBody {
    lora_name: String,
    lora_path: std::path::PathBuf,
}

/// vLLM's `/v1/unload_lora_adapter` body.
#[derive(Deserialize)]
struct VllmUnloadLoraBody {
    lora_name: String,
}

/// `POST /admin/loras` with `{"name", "path", "scale", "model"}`: reads the adapter for the
/// model (the first when none is named) and answers once requests may name it, or with why not.
pub async fn load_lora(State(s): State<Shared>, Extension(tenant): Extension<Arc<Tenant>>, body: Result<RequestBody, ApiError>) -> Response {
    let result = async {
        check_admin(&s, &tenant)?;
        let body: LoadLoraBody = parse(&body?.0)?;
        let entry = LoraEntry { name: body.name, path: body.path, scale: body.scale.unwrap_or(1.0), model: body.model };
        add_lora(&s, entry).await
    }
    .await;
    reply(&s, &tenant, result)
}

/// `POST /v1/load_lora_adapter` with `{"lora_name", "lora_path"}`: vLLM's route, the same
/// as `POST /admin/loras` for the first model at scale 1.
pub async fn load_lora_vllm(State(s): State<Shared>, Extension(tenant): Extension<Arc<Tenant>>, body: Result<RequestBody, ApiError>) -> Response {
    let result = async {
        check_admin(&s, &tenant)?;
        let body: VllmLoadLoraBody = parse(&body?.0)?;
        add_lora(&s, LoraEntry { name: body.lora_name, path: body.lora_path, scale: 1.0, model: None }).await
    }
    .await;
    reply(&s, &tenant, result)
}

async fn add_lora(s: &Shared, entry: LoraEntry) -> Result<serde_json::Value, ApiError> {
    check_entry(&entry).map_err(|e| ApiError::invalid(e, Some("name")))?;
    if s.models.name_taken(&entry.name) {
        return Err(ApiError::invalid(format!("the name {:?} is taken", entry.name), Some("name")));
    }
    let model = s.models.route(entry.model.as_deref(), None, None, 0)?.0;
    let (path, config) = (entry.path.clone(), model.config.clone());
    let read = tokio::task::spawn_blocking(move || super::loras::read(&path, &config)).await;
    let adapter = match read {
        Ok(Ok(adapter)) => adapter,
        Ok(Err(e)) => return Err(ApiError::invalid(format!("LoRA adapter {}: {e:#}", entry.name), Some("path"))),
        Err(_) => return Err(ApiError::internal("reading the adapter panicked")),
    };
    let (rank, matrices) = (adapter.rank(), adapter.matrices());
    model.load_adapter(&entry.name, &entry.path, adapter, entry.scale).await.map_err(ApiError::conflict)?;
    tracing::info!("model {}: LoRA adapter {} loaded from {} (rank {rank}, {matrices} matrices)", model.name, entry.name, entry.path.display());
    Ok(json!({"loaded": entry.name, "model": model.name, "rank": rank, "matrices": matrices}))
}

/// `DELETE /admin/loras/NAME`: requests naming NAME get 404 from now on; those in flight
/// finish with it, then its slot on the device is freed.
pub async fn unload_lora(State(s): State<Shared>, Extension(tenant): Extension<Arc<Tenant>>, Path(name): Path<String>) -> Response {
    let result = async {
        check_admin(&s, &tenant)?;
        remove_lora(&s, &name).await
    }
    .await;
    reply(&s, &tenant, result)
}

/// `POST /v1/unload_lora_adapter` with `{"lora_name"}`: vLLM's route for the same.
pub async fn unload_lora_vllm(State(s): State<Shared>, Extension(tenant): Extension<Arc<Tenant>>, body: Result<RequestBody, ApiError>) -> Response {
    let result = async {
        check_admin(&s, &tenant)?;
        let body: VllmUnloadLoraBody = parse(&body?.0)?;
        remove_lora(&s, &body.lora_name).await
    }
    .await;
    reply(&s, &tenant, result)
}

async fn remove_lora(s: &Shared, name: &str) -> Result<serde_json::Value, ApiError> {
    let model = s.models.adapter_owner(name).ok_or_else(|| ApiError::model_not_found(name))?;
    model.unload_adapter(name).await.map_err(ApiError::conflict)?;
    Ok(json!({"unloaded": name}))
}
