//! `cinder serve`: the OpenAI-compatible HTTP server.
//!
//! Each served model ([`models`]) runs on its own worker thread ([`worker`]) that owns its
//! engine; the HTTP handlers ([`routes`]) run on tokio, parse and check requests ([`api`]),
//! route them to a model, submit them to its worker and stream the events back. [`admin`]
//! changes the aliases and the models while serving. `/metrics` ([`metrics`]) reads a snapshot
//! the worker publishes after every step. [`connections`] accepts the connections and
//! holds slow clients to their time limits. [`config`] reads `--config`'s file, and
//! [`tenants`] maps API keys to tenants.

mod admin;
mod anthropic;
mod api;
mod config;
mod connections;
mod embeddings;
mod events;
pub(crate) mod loras;
mod metrics;
mod models;
mod responses;
mod routes;
mod tenants;
mod worker;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::HandlerWithoutStateExt;
use axum::http::HeaderValue;
use axum::routing::{get, post};
use cinder_engine::{Engine, Speculation};
use cinder_model::Model;
use cinder_engine::openai::{MAX_DEADLINE_MS, deadline_from_ms};
use cinder_scheduler::{PolicyName, Priority};
use cinder_tokenizer::Tokenizer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower::Layer;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;

use models::ServedModel;
use routes::AppState;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// A GGUF model to serve: `PATH`, or `NAME=PATH` to serve it as NAME. Repeatable: each
    /// model gets its own engine and a KV cache of --kv-cache-mb, and requests go to the
    /// model their `model` names (the first when they name none) [default: the config
    /// file's [[models]], else $CINDER_MODEL, else the model installed by scripts/setup.sh].
    #[arg(long = "model", env = "CINDER_MODEL", value_parser = parse_model)]
    models: Vec<(Option<String>, PathBuf)>,
    /// Start even when some models fail to load (/health reports them), as long as one loads.
    #[arg(long)]
    allow_partial: bool,
    #[command(flatten)]
    device: crate::device_arg::DeviceArg,
    /// Address to listen on.
    #[arg(long, env = "CINDER_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, env = "CINDER_PORT", default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health (and /metrics and
    /// /model.gguf when made public). An empty key is refused. With tenants in the config
    /// file, their keys are accepted too and this one is the unlimited default tenant's,
    /// the only one that reads /metrics.
    #[arg(long, env = "CINDER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// With --api-key: serve /metrics without the key.
    #[arg(long)]
    public_metrics: bool,
    /// `/metrics` series names: `cinder`, or `vllm`: also vLLM's names for the series vLLM
    /// has (what the Kubernetes inference gateway's endpoint picker reads).
    #[arg(long, env = "CINDER_METRICS_NAMES", value_enum, default_value_t = metrics::MetricNames::Cinder)]
    metrics_names: metrics::MetricNames,
    /// With --api-key and --web: serve the model file at /model.gguf without the key.
    #[arg(long)]
    public_model: bool,
    /// `max_tokens` of requests that give none (`limits.default_max_tokens`) [default: 16
    /// for a completion, the rest of the context for a chat].
    #[arg(long, env = "CINDER_DEFAULT_MAX_TOKENS")]
    default_max_tokens: Option<NonZeroUsize>,
    /// Name the model is served under [default: the file name without .gguf].
    #[arg(long, env = "CINDER_SERVED_MODEL_NAME")]
    served_model_name: Option<String>,
    /// A TOML file with the batching policy, queue, KV cache, shedding, breaker and tenants
    /// (docs/serving.md: "The config file"). The flags below override it.
    #[arg(long, env = "CINDER_CONFIG")]
    config: Option<PathBuf>,
    /// Print the configuration in force (the file, the flags over it, defaults for the rest)
    /// as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Batching policy: fixed, bucketed, memory_aware, continuous, adaptive, bandit, latency
    /// or throughput [default: continuous].
    #[arg(long, env = "CINDER_POLICY")]
    policy: Option<PolicyName>,
    /// Device memory for the KV cache, in MiB [default: 512].
    #[arg(long, env = "CINDER_KV_CACHE_MB")]
    kv_cache_mb: Option<usize>,
    #[command(flatten)]
    kv_type: crate::kv_arg::KvTypeArg,
    /// Token slots per KV block [default: 16].
    #[arg(long)]
    block_size: Option<usize>,
    /// Most tokens (prompt chunks plus decodes) in one step [default: the policy's; 512 for
    /// continuous].
    #[arg(long, env = "CINDER_MAX_BATCH_TOKENS")]
    max_batch_tokens: Option<usize>,
    /// Most requests running at once [default: the policy's; 64 for continuous].
    #[arg(long, env = "CINDER_MAX_RUNNING")]
    max_running: Option<usize>,
    /// Largest piece of one prompt run in one step [default: the policy's; 256 for continuous].
    #[arg(long)]
    chunk_size: Option<usize>,
    /// Most requests waiting; more get 429 [default: 1024].
    #[arg(long, env = "CINDER_MAX_WAITING")]
    max_waiting: Option<usize>,
    /// Longest wait to start for requests without `deadline_ms`: `MS` for every priority,
    /// or `PRIORITY=MS` pairs (`normal=20000,batch=120000`). A request still waiting then
    /// ends: 408, or `finish_reason` "deadline" on a stream [default: none].
    #[arg(long, env = "CINDER_DEFAULT_DEADLINE_MS", value_parser = parse_deadlines)]
    default_deadline_ms: Option<BTreeMap<Priority, u64>>,
    /// Speculative decoding of requests that do not ask otherwise: `off`, `ngram` or
    /// `ngram:K` (prompt lookup, up to K draft tokens per step) [default: off].
    #[arg(long, env = "CINDER_SPECULATIVE")]
    speculative: Option<Speculation>,
    /// The draft model of `draft` speculation: a smaller GGUF with the same vocabulary,
    /// loaded beside the model; its KV cache shares --kv-cache-mb.
    #[arg(long, env = "CINDER_DRAFT_MODEL")]
    draft_model: Option<PathBuf>,
    /// A LoRA adapter of the first model (a GGUF adapter as llama.cpp's
    /// convert_lora_to_gguf.py writes it), served as NAME: requests run with it by naming
    /// it as their `model`, or as `lora`. SCALE multiplies its product [default: 1].
    /// Repeatable; replaces the config file's [[loras]].
    #[arg(long = "lora", value_name = "NAME=PATH[:SCALE]", value_parser = loras::parse_lora)]
    loras: Vec<loras::LoraEntry>,
    /// Most LoRA adapters loaded per model at once, each holding a slot on the device
    /// (`max_loras`) [default: 4].
    #[arg(long, env = "CINDER_MAX_LORAS")]
    max_loras: Option<usize>,
    /// Largest request body in bytes (`limits.max_body_bytes`) [default: 4 MiB].
    #[arg(long)]
    max_body_bytes: Option<NonZeroUsize>,
    /// Seconds a client may take to send a request's head, and to start its next request
    /// on a kept-alive connection; then the connection is closed.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_s: u64,
    /// Seconds a client may take to send a request's body; then it gets a 408.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout_s: u64,
    /// Seconds a response may wait for the client to read it; then the connection is
    /// closed (and its requests cancelled).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    send_timeout_s: u64,
    /// Most connections open at once; more get a 503 [default: 4096, less if the
    /// descriptor limit is lower].
    #[arg(long)]
    max_connections: Option<NonZeroUsize>,
    /// Seconds after SIGTERM (or Ctrl-C) during which new requests are still served while
    /// /health/ready answers 503, so that a load balancer sees the probe before the server
    /// stops taking work.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    drain_grace: u64,
    /// Seconds the drain then waits for requests in flight before it cuts them (logging how
    /// many) and exits.
    #[arg(long, alias = "shutdown-timeout-s", default_value_t = 60, value_name = "SECONDS")]
    drain_timeout: u64,
    /// Longest prompt in tokens (`limits.max_prompt_tokens`) [default: the model's context].
    #[arg(long)]
    max_prompt_tokens: Option<NonZeroUsize>,
    /// Allow browsers from this origin (repeatable; `*` allows any).
    #[arg(long)]
    cors_origin: Vec<String>,
    /// How `/v1/embeddings` pools a prompt's rows: mean, cls, last, or none (no embeddings)
    /// [default: the file's `pooling_type`; mean where the file names none].
    #[arg(long, env = "CINDER_POOLING", value_parser = parse_pooling)]
    pooling: Option<cinder_model::Pooling>,
    /// Serve the browser demo from this folder (`web/dist`, built by scripts/build-web.sh)
    /// at `/`, and the loaded model file at `/model.gguf` for the page to fetch.
    #[arg(long, env = "CINDER_WEB")]
    web: Option<PathBuf>,
}

fn parse_pooling(value: &str) -> Result<cinder_model::Pooling, String> {
    cinder_model::Pooling::from_name(value).ok_or_else(|| format!("`{value}` is not a pooling: mean, cls, last or none"))
}

/// `--default-deadline-ms`: `MS`, or `PRIORITY=MS[,PRIORITY=MS...]`.
fn parse_deadlines(value: &str) -> Result<BTreeMap<Priority, u64>, String> {
    let millis = |ms: &str| {
        ms.trim()
            .parse()
            .ok()
            .filter(|&ms| deadline_from_ms(ms).is_some())
            .ok_or_else(|| format!("`{ms}` is not a number of milliseconds in [1, {MAX_DEADLINE_MS}]"))
    };
    if !value.contains('=') {
        let deadline = millis(value)?;
        return Ok(Priority::ALL.into_iter().map(|p| (p, deadline)).collect());
    }
    value
        .split(',')
        .map(|pair| {
            let (name, ms) = pair.split_once('=').ok_or_else(|| format!("`{pair}` is not PRIORITY=MS"))?;
            let priority = Priority::from_name(name.trim())
                .ok_or_else(|| format!("unknown priority `{name}` (critical, high, normal, low, batch)"))?;
            Ok((priority, millis(ms)?))
        })
        .collect()
}

/// The file's configuration with the flags over it and the policy's defaults filled in.
fn effective_config(args: &ServeArgs) -> anyhow::Result<config::ServeConfig> {
    let mut config = match &args.config {
        Some(path) => config::ServeConfig::load(path)?,
        None => config::ServeConfig::default(),
    };
    let s = &mut config.scheduler;
    s.policy = args.policy.unwrap_or(s.policy);
    s.set("max_running", args.max_running);
    s.set("max_batch_tokens", args.max_batch_tokens);
    s.set("chunk_size", args.chunk_size);
    s.max_waiting = args.max_waiting.unwrap_or(s.max_waiting);
    if let Some(deadlines) = &args.default_deadline_ms {
        s.default_deadline_ms = deadlines.clone();
    }
    if let Some(path) = &args.draft_model {
        config.speculative.draft_model = Some(path.clone());
    }
    if !args.loras.is_empty() {
        config.loras = args.loras.clone();
    }
    config.max_loras.0 = args.max_loras.unwrap_or(config.max_loras.0);
    config.pooling = args.pooling.or(config.pooling);
    if !args.models.is_empty() {
        let specs = model_specs(args, &config)?;
        config.models = specs.into_iter().map(|m| config::ModelEntry { name: m.name, path: m.path }).collect();
    }
    if let Some(speculation) = args.speculative {
        config.speculative.method = speculation.method;
        if speculation.is_on() {
            config.speculative.num_tokens = speculation.num_tokens;
        }
    }
    let limits = &mut config.limits;
    limits.max_body_bytes = args.max_body_bytes.map_or(limits.max_body_bytes, NonZeroUsize::get);
    limits.max_prompt_tokens = args.max_prompt_tokens.map(NonZeroUsize::get).or(limits.max_prompt_tokens);
    limits.default_max_tokens = args.default_max_tokens.map(NonZeroUsize::get).or(limits.default_max_tokens);
    let kv = &mut config.kv_cache;
    kv.size_mb = args.kv_cache_mb.unwrap_or(kv.size_mb);
    kv.block_size = args.block_size.unwrap_or(kv.block_size);
    let types = args.kv_type.over(kv.types());
    kv.set_types(types);
    config.resolve().map_err(|e| match &args.config {
        Some(path) => anyhow::anyhow!("config file {} (with the flags over it): {e}", path.display()),
        None => anyhow::anyhow!("{e}"),
    })?;
    Ok(config)
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    if args.api_key.as_deref().is_some_and(|key| key.trim().is_empty()) {
        anyhow::bail!("--api-key (or CINDER_API_KEY) is empty: give a key, or unset it to serve without authentication");
    }
    let serve_config = effective_config(&args)?;
    if args.print_config {
        println!("{}", serve_config.to_toml().trim_end());
        return Ok(());
    }
    let specs = model_specs(&args, &serve_config)?;
    // Adapters that name no model adapt the first.
    let mut serve_config = serve_config;
    for (i, entry) in serve_config.loras.iter_mut().enumerate() {
        let model = entry.model.get_or_insert_with(|| specs[0].name.clone());
        if !specs.iter().any(|s| &s.name == model) {
            anyhow::bail!("`loras[{i}].model`: no model {model:?} is served");
        }
    }
    if args.web.is_some() && (args.api_key.is_some() || !serve_config.tenants.is_empty()) && !args.public_model {
        tracing::warn!("--web with --api-key: the demo page cannot fetch /model.gguf without the key; add --public-model to open it");
    }
    if let Some(dir) = &args.web
        && !dir.join("index.html").is_file()
    {
        anyhow::bail!("--web {}: no index.html there; build the demo with `bash scripts/build-web.sh`", dir.display());
    }
    let backend = args.device.open()?;
    let loader = Loader { config: serve_config.clone(), backend, workers: Default::default() };
    // Every model loads on its own thread; the first one also gets the draft model.
    let progress = specs.len() == 1;
    let loaded: Vec<anyhow::Result<ServedModel>> = std::thread::scope(|scope| {
        let loading: Vec<_> = specs.iter().enumerate().map(|(i, spec)| scope.spawn({
            let loader = &loader;
            move || loader.load(spec, i == 0, progress)
        })).collect();
        loading.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("loading panicked")))).collect()
    });
    let (mut served, mut failed) = (Vec::new(), Vec::new());
    for (spec, result) in specs.iter().zip(loaded) {
        match result {
            Ok(model) => served.push(Arc::new(model)),
            Err(e) => failed.push((spec.name.clone(), format!("{e:#}"))),
        }
    }
    if !failed.is_empty() && (!args.allow_partial || served.is_empty()) {
        let reasons: Vec<String> = failed.iter().map(|(name, e)| format!("model {name}: {e}")).collect();
        let hint = if served.is_empty() { "" } else { " (--allow-partial starts without it)" };
        anyhow::bail!("{}{hint}", reasons.join("; "));
    }
    for (name, e) in &failed {
        tracing::error!("model {name} failed to load, serving without it: {e}");
    }
    let default_path = served[0].path.clone();
    let longest_context = served.iter().map(|m| m.context_length).max().unwrap_or(0);
    let rates = serve_config.rate_limiter(longest_context);
    let tenants = tenants::Tenants::new(&serve_config, args.api_key.as_deref(), rates).map_err(|e| anyhow::anyhow!("{e}"))?;
    let models = models::Models::new(served, failed, serve_config.routing.clone()).map_err(|e| anyhow::anyhow!("routing: {e}"))?;
    let started = routes::unix_seconds();
    // Grammars compile on at most half the cores, so the engine and the connections keep
    // the rest whatever clients send.
    let compilers = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
    let state = Arc::new(AppState {
        models,
        loader,
        admin: args.api_key.is_some(),
        limits: serve_config.limits.clone(),
        grammar_slots: Arc::new(tokio::sync::Semaphore::new(compilers)),
        body_timeout: Duration::from_secs(args.body_timeout_s),
        tenants,
        metric_names: args.metrics_names,
        draining: AtomicBool::new(false),
        shutting_down: AtomicBool::new(false),
        metrics: Default::default(),
        responses: responses::ResponseStore::new(
            serve_config.limits.stored_responses,
            Duration::from_secs(serve_config.limits.stored_response_ttl_s),
        ),
        started,
        next_id: AtomicU64::new(0),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(&args, state.clone(), &default_path))?;
    // Connections still open after the drain are dropped with their tasks, and with them
    // the last worker handles: the workers cancel what is left and stop.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let workers = std::mem::take(&mut *state.loader.workers.lock().unwrap_or_else(|e| e.into_inner()));
    drop(state);
    for worker in workers {
        worker.join().map_err(|_| anyhow::anyhow!("an engine thread panicked"))?;
    }
    eprintln!("stopped");
    Ok(())
}

/// A model to serve and the name it is served under.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedModel {
    pub name: String,
    pub path: PathBuf,
}

/// `--model`: `PATH` or `NAME=PATH`.
fn parse_model(value: &str) -> Result<(Option<String>, PathBuf), String> {
    match value.split_once('=') {
        Some((name, path)) if !name.is_empty() && !name.contains('/') => Ok((Some(name.to_owned()), PathBuf::from(path))),
        _ if value.is_empty() => Err("an empty model path".into()),
        _ => Ok((None, PathBuf::from(value))),
    }
}

/// The models to serve, named: `--model` flags, else the config file's `[[models]]`, else
/// the default model. An unnamed model is served as `--served-model-name` (one model) or
/// its file name without `.gguf`.
fn model_specs(args: &ServeArgs, config: &config::ServeConfig) -> anyhow::Result<Vec<NamedModel>> {
    let stem = |path: &Path| path.file_name().map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_owned()).unwrap_or_default();
    let specs: Vec<NamedModel> = if !args.models.is_empty() {
        let single = args.models.len() == 1;
        args.models
            .iter()
            .map(|(name, path)| {
                let name = name.clone().or_else(|| args.served_model_name.clone().filter(|_| single)).unwrap_or_else(|| stem(path));
                NamedModel { name, path: path.clone() }
            })
            .collect()
    } else if !config.models.is_empty() {
        config.models.iter().map(|m| NamedModel { name: m.name.clone(), path: m.path.clone() }).collect()
    } else {
        let path = crate::model_path::default_model_path();
        vec![NamedModel { name: args.served_model_name.clone().unwrap_or_else(|| stem(&path)), path }]
    };
    let mut names = std::collections::BTreeSet::new();
    if let Some(twice) = specs.iter().find(|s| !names.insert(&s.name)) {
        anyhow::bail!("two models are named {:?}: name them with --model NAME=PATH", twice.name);
    }
    Ok(specs)
}

/// Loads models with the server's settings: at start-up, and at run time (`POST /admin/models`).
pub struct Loader {
    config: config::ServeConfig,
    backend: cinder_model::Backend,
    /// The engine threads, joined at shutdown.
    workers: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Loader {
    pub fn backend(&self) -> &cinder_model::Backend {
        &self.backend
    }

    /// Opens `spec`'s file, loads its model (and the draft model, `with_draft`), sizes its
    /// own KV cache of `kv_cache.size_mb` and starts its engine.
    pub fn load(&self, spec: &NamedModel, with_draft: bool, progress: bool) -> anyhow::Result<ServedModel> {
        let path = &spec.path;
        let file = cinder_gguf::GgufFile::open(path).with_context(|| format!("opening {}", path.display()))?;
        let tokenizer = Tokenizer::from_gguf(file.metadata())?;
        let template = match cinder_tokenizer::ChatTemplate::from_gguf(file.metadata(), &tokenizer) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("{}: no chat template ({e:#}); chat requests for it are refused", spec.name);
                None
            }
        };
        let grammars = cinder_engine::Grammars::new(&tokenizer).map_err(|e| anyhow::anyhow!("{e}"))?;
        let load_start = Instant::now();
        let mut model = if progress { load_with_progress_bar(&file, &self.backend) } else { Model::load(&file, &self.backend) }
            .with_context(|| format!("loading {}", path.display()))?;
        drop(file);
        let kv_types = self.config.kv_cache.types();
        crate::kv_arg::set_kv_types(&mut model, kv_types)?;
        let speculative = &self.config.speculative;
        let draft = match speculative.draft_model.as_deref().filter(|_| with_draft) {
            Some(draft) => {
                let (mut draft_model, tokenizer) = crate::model_path::load_draft(draft, &self.backend)?;
                crate::kv_arg::set_kv_types(&mut draft_model, kv_types).context("the draft model")?;
                Some((draft_model, tokenizer))
            }
            None => None,
        };
        let config = model.config().clone();
        let kv_bytes = self.config.kv_cache.size_mb << 20;
        let base = self.config.scheduler_config();
        let draft_config = draft.as_ref().map(|(model, _)| model.config());
        let scheduler = Engine::sized_config(&config, draft_config, kv_bytes, self.backend.max_binding_bytes(), base)
            .map_err(|e| anyhow::anyhow!("--kv-cache-mb (kv_cache.size_mb): {e}"))?;
        let (num_blocks, context_length) = (scheduler.num_blocks, scheduler.max_seq_len);
        let mut engine = Engine::new(model, tokenizer.clone(), scheduler).context("allocating the KV cache")?;
        if let Some(draft) = draft {
            crate::model_path::set_draft(&mut engine, speculative.draft_model.as_deref().expect("loaded from it"), draft)?;
        }
        let speculation = speculative.config().map_err(|e| anyhow::anyhow!("{e}"))?;
        engine.set_speculation(speculation).map_err(|e| anyhow::anyhow!("--speculative: {e}"))?;
        engine.set_max_loras(self.config.max_loras.0).map_err(|e| anyhow::anyhow!("max_loras: {e}"))?;
        let mut adapters = BTreeMap::new();
        for entry in self.config.loras.iter().filter(|l| l.model.as_ref() == Some(&spec.name)) {
            let adapter = loras::read(&entry.path, &config).with_context(|| format!("LoRA adapter {}", entry.name))?;
            let (rank, matrices) = (adapter.rank(), adapter.matrices());
            engine.load_adapter(&entry.name, adapter, entry.scale).map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln!("model {}: LoRA adapter {} from {} (rank {rank}, {matrices} matrices, scale {})", spec.name, entry.name, entry.path.display(), entry.scale);
            adapters.insert(entry.name.clone(), loras::ServedAdapter { path: entry.path.clone(), scale: entry.scale });
        }
        eprintln!(
            "model {}: {} loaded in {:.2} s; KV cache {}: {} blocks x {} tokens ({} MiB, {:.1} KiB per token; {} tokens in all, {} in one request)",
            spec.name,
            path.display(),
            load_start.elapsed().as_secs_f64(),
            kv_types,
            num_blocks,
            self.config.kv_cache.block_size,
            engine.kv_cache().device_bytes() >> 20,
            cinder_model::PagedKvCache::bytes_per_position(&config) as f64 / 1024.0,
            num_blocks * self.config.kv_cache.block_size / config.kv_layout().groups.len(),
            context_length
        );
        // Ready means warm: the kernels compile before the model serves, not in its first
        // requests.
        let warm_start = Instant::now();
        engine.warm_up(&crate::wall_clock()).with_context(|| format!("warming up {}", spec.name))?;
        eprintln!("model {}: warmed up in {:.2} s", spec.name, warm_start.elapsed().as_secs_f64());
        let (worker, thread) = worker::spawn(engine);
        self.workers.lock().unwrap_or_else(|e| e.into_inner()).push(thread);
        Ok(ServedModel {
            name: spec.name.clone(),
            path: path.clone(),
            worker,
            tokenizer,
            template,
            grammars,
            context_length,
            pooling: self.config.pooling.or(config.pooling).unwrap_or(cinder_model::Pooling::Mean),
            config,
            adapters: std::sync::RwLock::new(adapters),
        })
    }
}

/// Loads the model, with a progress bar when standard error is a terminal.
fn load_with_progress_bar(file: &cinder_gguf::GgufFile, device: &cinder_model::Backend) -> Result<Model, cinder_model::ModelError> {
    if !std::io::stderr().is_terminal() {
        return Model::load(file, device);
    }
    let bar = indicatif::ProgressBar::new(0).with_message("loading layers");
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} [{elapsed}]").expect("a valid template"),
    );
    let model = Model::load_with_progress(file, device, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    model
}

/// An ETag of the file's size and modification time (as nginx makes them): a page that
/// cached the model file fetches it again once it changed.
fn file_etag(path: &Path) -> Option<HeaderValue> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    HeaderValue::from_str(&format!("\"{:x}-{:x}\"", meta.len(), modified.as_nanos())).ok()
}

fn router(args: &ServeArgs, state: Arc<AppState>, model_path: &Path) -> anyhow::Result<Router> {
    // Behind the key when one is set; /metrics and the model file only if not made public.
    let mut private = Router::new()
        .route("/v1/completions", post(routes::completions))
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/v1/responses", post(responses::create))
        .route("/v1/responses/{id}", get(responses::retrieve).delete(responses::delete))
        .route("/v1/models", get(routes::models))
        .route("/tokenize", post(routes::tokenize))
        .route("/detokenize", post(routes::detokenize))
        .route("/admin/routes", get(admin::routes).post(admin::set_routes))
        .route("/admin/models", get(admin::models).post(admin::load))
        .route("/admin/models/{name}", axum::routing::delete(admin::unload))
        .route("/admin/loras", get(admin::loras).post(admin::load_lora))
        .route("/admin/loras/{name}", axum::routing::delete(admin::unload_lora))
        .route("/v1/load_lora_adapter", post(admin::load_lora_vllm))
        .route("/v1/unload_lora_adapter", post(admin::unload_lora_vllm));
    let mut public = Router::new()
        .route("/health", get(routes::health))
        .route("/health/live", get(routes::health_live))
        .route("/health/ready", get(routes::health_ready));
    if args.public_metrics {
        public = public.route("/metrics", get(routes::metrics));
    } else {
        private = private.route("/metrics", get(routes::metrics));
    }
    if args.web.is_some() {
        let file = model_path.to_owned();
        let etag = move |_: &axum::http::Response<_>| file_etag(&file);
        let model = SetResponseHeaderLayer::overriding(axum::http::header::ETAG, etag).layer(ServeFile::new(model_path));
        if args.public_model {
            public = public.route_service("/model.gguf", model);
        } else {
            private = private.route_service("/model.gguf", model);
        }
    }
    let private = private
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), routes::identify_tenant))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), routes::count_answers));
    let app = public.merge(private);
    let app = match &args.web {
        Some(dir) => app.fallback_service(
            ServeDir::new(dir).not_found_service(HandlerWithoutStateExt::into_service(routes::not_found)),
        ),
        None => app.fallback(routes::not_found),
    };
    let mut app = app
        .layer(axum::middleware::from_fn(routes::error_bodies))
        .layer(axum::middleware::from_fn(anthropic::error_shape))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            routes::internal_error("the request handler panicked")
        }))
        .with_state(state);
    if !args.cors_origin.is_empty() {
        let origin = if args.cors_origin.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            let origins: Vec<HeaderValue> =
                args.cors_origin.iter().map(|o| o.parse()).collect::<Result<_, _>>().context("--cors-origin")?;
            AllowOrigin::list(origins)
        };
        app = app.layer(CorsLayer::new().allow_origin(origin).allow_methods(tower_http::cors::Any).allow_headers(tower_http::cors::Any));
    }
    Ok(app)
}

async fn serve(args: &ServeArgs, state: Arc<AppState>, model_path: &Path) -> anyhow::Result<()> {
    let app = router(args, state.clone(), model_path)?;
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let address: SocketAddr = listener.local_addr()?;
    eprintln!("listening on http://{address}");
    let (grace, timeout) = (args.drain_grace, args.drain_timeout);
    let drained = state.clone();
    // The drain: not ready at once, still serving for the grace, then no new requests and
    // the ones in flight finish.
    let shutdown = async move {
        shutdown_signal().await;
        drained.draining.store(true, Ordering::Relaxed);
        eprintln!("draining: /health/ready answers 503; new requests served for {grace} s more");
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(grace)) => {}
            // A second signal ends the grace.
            () = shutdown_signal() => {}
        }
        eprintln!("shutting down: finishing requests in flight (at most {timeout} s)");
        drained.shutting_down.store(true, Ordering::Relaxed);
    };
    let limits = connections::ConnectionLimits {
        header_timeout: Duration::from_secs(args.header_timeout_s),
        send_timeout: Duration::from_secs(args.send_timeout_s),
        max_connections: max_connections(args.max_connections),
    };
    if !connections::serve(listener, app, limits, shutdown, Duration::from_secs(timeout)).await {
        let cut: usize = state.models.all().iter().map(|m| m.worker.metrics().scheduler).map(|s| s.running + s.waiting_requests).sum();
        tracing::warn!("drain timeout: {cut} request(s) still in flight after {timeout} s were cut");
        eprintln!("drain timeout: {cut} request(s) still in flight after {timeout} s were cut");
    }
    Ok(())
}

/// The connection limit: as asked, else 4096; within the descriptor limit either way
/// (raised to its hard limit first), keeping some for the model, the device and the logs.
fn max_connections(asked: Option<NonZeroUsize>) -> usize {
    const DEFAULT: usize = 4096;
    const RESERVED: u64 = 64;
    let wanted = asked.map_or(DEFAULT, NonZeroUsize::get);
    let Some(descriptors) = connections::raise_descriptor_limit() else { return wanted };
    let room = descriptors.saturating_sub(RESERVED).max(1);
    if wanted as u64 > room {
        if asked.is_some() {
            tracing::warn!("--max-connections {wanted}: the descriptor limit ({descriptors}) allows {room}");
        }
        return room as usize;
    }
    wanted
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
