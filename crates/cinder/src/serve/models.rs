//! The models a server serves, each with its own engine, and the aliases that split the
//! requests for one name over several of them by weight (A/B tests). Routes can be
//! replaced while the server runs; a request keeps the model it was routed to until it ends.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use cinder_engine::Grammars;
use cinder_tokenizer::{ChatTemplate, Tokenizer};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::api::ApiError;
use super::loras::ServedAdapter;
use super::worker::WorkerHandle;

/// One served model: its engine's worker and what the handlers need to build its requests.
pub struct ServedModel {
    pub name: String,
    pub path: PathBuf,
    pub worker: WorkerHandle,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    /// Compiles `response_format` schemas and tool-call grammars for the vocabulary.
    pub grammars: Grammars,
    pub context_length: usize,
    /// How its embeddings pool (`--pooling`, else the file's).
    pub pooling: cinder_model::Pooling,
    /// The model's description, which adapters are read against.
    pub config: cinder_model::ModelConfig,
    /// Its LoRA adapters by name, as its engine has them loaded.
    pub adapters: RwLock<BTreeMap<String, ServedAdapter>>,
}

impl ServedModel {
    pub fn adapters(&self) -> BTreeMap<String, ServedAdapter> {
        self.adapters.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn has_adapter(&self, name: &str) -> bool {
        self.adapters.read().unwrap_or_else(|e| e.into_inner()).contains_key(name)
    }

    /// Loads `adapter` into its engine under `name` (its file was read for this model).
    pub async fn load_adapter(&self, name: &str, path: &std::path::Path, adapter: Arc<cinder_model::LoraAdapter>, scale: f32) -> Result<(), String> {
        self.worker.load_adapter(name, adapter, scale).await?;
        let served = ServedAdapter { path: path.to_owned(), scale };
        self.adapters.write().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), served);
        Ok(())
    }

    /// Unloads adapter `name`: new requests for it get 404 at once; those in flight finish.
    pub async fn unload_adapter(&self, name: &str) -> Result<(), String> {
        self.adapters.write().unwrap_or_else(|e| e.into_inner()).remove(name);
        self.worker.unload_adapter(name).await
    }
}

/// The aliases: each name splits its requests over models by weight. `sticky`: requests
/// with the same `user` always go to the same model of an alias.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routing {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub aliases: BTreeMap<String, BTreeMap<String, f64>>,
    pub sticky: bool,
}

/// See the module documentation.
pub struct Models {
    /// In the order given; the first answers requests that name no model.
    served: RwLock<Vec<Arc<ServedModel>>>,
    routing: RwLock<Routing>,
    /// Models not serving, by name: loading, or failed to load (and why).
    pending: RwLock<BTreeMap<String, Pending>>,
    /// Held by every change of the models or aliases, each of which checks one against the
    /// other: an alias set while its model is being unloaded would route to nothing.
    changing: Mutex<()>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Pending {
    Loading,
    Failed(String),
}

impl Models {
    pub fn new(served: Vec<Arc<ServedModel>>, failed: Vec<(String, String)>, routing: Routing) -> Result<Self, String> {
        let pending = failed.into_iter().map(|(name, error)| (name, Pending::Failed(error))).collect();
        let models = Self {
            served: RwLock::new(served),
            routing: RwLock::new(Routing::default()),
            pending: RwLock::new(pending),
            changing: Mutex::new(()),
        };
        models.set_routing(routing)?;
        Ok(models)
    }

    /// Marks a model as loading or failed (`None`: neither, once it serves or is given up).
    pub fn set_pending(&self, name: &str, state: Option<Pending>) {
        let mut pending = self.pending.write().unwrap_or_else(|e| e.into_inner());
        match state {
            Some(state) => pending.insert(name.to_owned(), state),
            None => pending.remove(name),
        };
    }

    /// Every model's state, for `/health` and `/admin/models`; `detailed`: with its file,
    /// context and why it failed (for the admin only: paths and errors describe the host).
    pub fn states(&self, detailed: bool) -> BTreeMap<String, serde_json::Value> {
        let mut states: BTreeMap<String, serde_json::Value> = self
            .all()
            .iter()
            .map(|m| {
                let state = match detailed {
                    true => json!({"status": "ready", "path": m.path, "max_model_len": m.context_length}),
                    false => json!({"status": "ready"}),
                };
                (m.name.clone(), state)
            })
            .collect();
        for (name, state) in self.pending.read().unwrap_or_else(|e| e.into_inner()).iter() {
            let state = match (state, detailed) {
                (Pending::Loading, _) => json!({"status": "loading"}),
                (Pending::Failed(error), true) => json!({"status": "failed", "error": error}),
                (Pending::Failed(_), false) => json!({"status": "failed"}),
            };
            states.entry(name.clone()).or_insert(state);
        }
        states
    }

    fn changing(&self) -> MutexGuard<'_, ()> {
        self.changing.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn all(&self) -> Vec<Arc<ServedModel>> {
        self.served.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn routing(&self) -> Routing {
        self.routing.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the aliases, once checked: every alias names served models with positive
    /// weights, and no alias is a model's name.
    pub fn set_routing(&self, routing: Routing) -> Result<(), String> {
        let _changing = self.changing();
        let served = self.all();
        for (alias, split) in &routing.aliases {
            if served.iter().any(|m| &m.name == alias || m.has_adapter(alias)) {
                return Err(format!("alias {alias:?} is the name of a served model or LoRA adapter"));
            }
            if split.is_empty() {
                return Err(format!("alias {alias:?} names no model"));
            }
            for (model, weight) in split {
                if !served.iter().any(|m| &m.name == model) {
                    return Err(format!("alias {alias:?}: no model {model:?} is served"));
                }
                if !(weight.is_finite() && *weight > 0.0) {
                    return Err(format!("alias {alias:?}: the weight of {model:?} must be a positive number; got {weight}"));
                }
            }
        }
        *self.routing.write().unwrap_or_else(|e| e.into_inner()) = routing;
        Ok(())
    }

    /// Whether `name` is a served model's, a LoRA adapter's, an alias's or a pending model's.
    pub fn name_taken(&self, name: &str) -> bool {
        self.states(false).contains_key(name) || self.routing().aliases.contains_key(name) || self.adapter_owner(name).is_some()
    }

    /// The model serving LoRA adapter `name`.
    pub fn adapter_owner(&self, name: &str) -> Option<Arc<ServedModel>> {
        self.all().into_iter().find(|m| m.has_adapter(name))
    }

    /// Adds a model (loaded at run time); its name must be new.
    pub fn add(&self, model: Arc<ServedModel>) -> Result<(), String> {
        let _changing = self.changing();
        let mut served = self.served.write().unwrap_or_else(|e| e.into_inner());
        if served.iter().any(|m| m.name == model.name || m.has_adapter(&model.name)) || self.routing().aliases.contains_key(&model.name) {
            return Err(format!("the name {:?} is taken", model.name));
        }
        served.push(model);
        Ok(())
    }

    /// Takes a model out: requests for it get 404 from now on, those in flight finish. Its
    /// engine stops, and its device memory is freed, once they have. Refused while an
    /// alias routes to it.
    pub fn remove(&self, name: &str) -> Result<Arc<ServedModel>, ApiError> {
        let _changing = self.changing();
        if let Some((alias, _)) = self.routing().aliases.iter().find(|(_, split)| split.contains_key(name)) {
            return Err(ApiError::conflict(format!("alias {alias:?} routes to {name:?}: change the routes first")));
        }
        let mut served = self.served.write().unwrap_or_else(|e| e.into_inner());
        let index = served.iter().position(|m| m.name == name).ok_or_else(|| ApiError::model_not_found(name))?;
        Ok(served.remove(index))
    }

    /// The model and LoRA adapter that answer a request for `name` with `lora`: that
    /// model, or the base model of the adapter `name` names, or an alias's pick (by `user`
    /// when sticky, else by `draw`, a random number), or the first model when the request
    /// names none; the adapter `name` or `lora` names, which must be the model's.
    pub fn route(&self, name: Option<&str>, lora: Option<&str>, user: Option<&str>, draw: u64) -> Result<(Arc<ServedModel>, Option<String>), ApiError> {
        let model = match name.and_then(|name| self.adapter_owner(name)) {
            Some(model) => {
                let adapter = name.expect("found by name");
                if lora.is_some_and(|l| l != adapter) {
                    return Err(ApiError::invalid(format!("`model` names LoRA adapter {adapter:?} and `lora` another"), Some("lora")));
                }
                return Ok((model, Some(adapter.to_owned())));
            }
            None => self.route_model(name, user, draw)?,
        };
        match lora {
            Some(lora) if !model.has_adapter(lora) => Err(ApiError {
                param: Some("lora".into()),
                message: format!("no LoRA adapter `{lora}` is loaded for the model `{}`", model.name),
                ..ApiError::model_not_found(lora)
            }),
            _ => Ok((model, lora.map(str::to_owned))),
        }
    }

    /// The model that answers a request for model or alias `name`.
    fn route_model(&self, name: Option<&str>, user: Option<&str>, draw: u64) -> Result<Arc<ServedModel>, ApiError> {
        let served = self.all();
        let Some(name) = name else { return served.first().cloned().ok_or_else(|| ApiError::unavailable("no model is loaded")) };
        if let Some(model) = served.iter().find(|m| m.name == name) {
            return Ok(model.clone());
        }
        let routing = self.routing();
        let split = routing.aliases.get(name).ok_or_else(|| ApiError::model_not_found(name))?;
        let key = match user.filter(|_| routing.sticky) {
            Some(user) => {
                let mut hasher = std::hash::DefaultHasher::new();
                user.hash(&mut hasher);
                hasher.finish()
            }
            None => draw,
        };
        let picked = pick(split, key);
        served.into_iter().find(|m| m.name == picked).ok_or_else(|| ApiError::model_not_found(picked))
    }
}

/// The model `key` (uniform over u64) falls on, each taking a share of the range by weight.
fn pick(split: &BTreeMap<String, f64>, key: u64) -> &str {
    let total: f64 = split.values().sum();
    let mut point = key as f64 / u64::MAX as f64 * total;
    for (model, weight) in split {
        if point < *weight {
            return model;
        }
        point -= weight;
    }
    split.keys().next_back().expect("a split names a model")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_follow_their_weights() {
        let split: BTreeMap<String, f64> = [("a".to_owned(), 90.0), ("b".to_owned(), 10.0)].into();
        let n = 10_000u64;
        // Keys spread evenly over the range: a tenth of them fall on b.
        let to_b = (0..n).filter(|i| pick(&split, (2 * i + 1) * (u64::MAX / (2 * n))) == "b").count();
        assert_eq!(to_b, 1_000);
        assert_eq!(pick(&split, 0), "a");
        assert_eq!(pick(&split, u64::MAX), "b");
    }
}
