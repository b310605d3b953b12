//! `/admin/…`: the aliases' splits and the models served, changed while the server runs.
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
        if body.name.is_empty() || s.models.states(false).contains_key(&body.name) || s.models.routing().aliases.contains_key(&body.name) {
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
