//! `cinder serve`: the OpenAI-compatible HTTP server.
//!
//! The model runs on one worker thread ([`worker`]) that owns the device and the engine;
//! the HTTP handlers ([`routes`]) run on tokio, parse and check requests ([`api`]), submit
//! them to the worker and stream the events back. `/metrics` ([`metrics`]) reads a snapshot
//! the worker publishes after every step.

mod api;
mod metrics;
mod routes;
mod worker;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::HandlerWithoutStateExt;
use axum::http::HeaderValue;
use axum::routing::{get, post};
use cinder_engine::Engine;
use cinder_model::Model;
use cinder_scheduler::{BatchPolicy, SchedulerConfig};
use cinder_tokenizer::Tokenizer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::{ServeDir, ServeFile};

use crate::model_path::ModelArg;
use routes::AppState;

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Address to listen on.
    #[arg(long, env = "CINDER_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, env = "CINDER_PORT", default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on the API routes.
    #[arg(long, env = "CINDER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Name the model is served under [default: the file name without .gguf].
    #[arg(long, env = "CINDER_SERVED_MODEL_NAME")]
    served_model_name: Option<String>,
    /// Device memory for the KV cache, in MiB.
    #[arg(long, env = "CINDER_KV_CACHE_MB", default_value_t = 512)]
    kv_cache_mb: usize,
    /// Token slots per KV block.
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// Most tokens (prompt chunks plus decodes) in one step.
    #[arg(long, env = "CINDER_MAX_BATCH_TOKENS", default_value_t = 512)]
    max_batch_tokens: usize,
    /// Most requests running at once.
    #[arg(long, env = "CINDER_MAX_RUNNING", default_value_t = 64)]
    max_running: usize,
    /// Largest piece of one prompt run in one step.
    #[arg(long, default_value_t = 256)]
    chunk_size: usize,
    /// Most requests waiting; more get 429.
    #[arg(long, env = "CINDER_MAX_WAITING", default_value_t = 1024)]
    max_waiting: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Longest prompt in tokens [default: the model's context].
    #[arg(long)]
    max_prompt_tokens: Option<usize>,
    /// Allow browsers from this origin (repeatable; `*` allows any).
    #[arg(long)]
    cors_origin: Vec<String>,
    /// Serve the browser demo from this folder (`web/dist`, built by scripts/build-web.sh)
    /// at `/`, and the loaded model file at `/model.gguf` for the page to fetch.
    #[arg(long, env = "CINDER_WEB")]
    web: Option<PathBuf>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let path = args.model.path();
    if let Some(dir) = &args.web
        && !dir.join("index.html").is_file()
    {
        anyhow::bail!("--web {}: no index.html there; build the demo with `bash scripts/build-web.sh`", dir.display());
    }
    let file = args.model.open()?;
    let tokenizer = Tokenizer::from_gguf(file.metadata())?;
    let template = match cinder_tokenizer::ChatTemplate::from_gguf(file.metadata(), &tokenizer) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("no chat template ({e:#}); /v1/chat/completions will refuse requests");
            None
        }
    };
    let device = cinder_model::wgpu_device().context("no usable GPU adapter")?;
    eprintln!("adapter: {}", cinder_model::adapter_name(&device));
    let load_start = Instant::now();
    let model = load_with_progress_bar(&file, &device).with_context(|| format!("loading {}", path.display()))?;
    drop(file);
    let config = model.config().clone();
    let base = SchedulerConfig {
        block_size: args.block_size,
        policy: BatchPolicy::Continuous {
            max_batch_tokens: args.max_batch_tokens,
            max_running: args.max_running,
            chunk_size: args.chunk_size,
        },
        max_waiting: args.max_waiting,
        ..SchedulerConfig::default()
    };
    let scheduler =
        Engine::sized_config(&config, args.kv_cache_mb << 20, cinder_model::max_binding_bytes(&device), base)
            .map_err(|e| anyhow::anyhow!("--kv-cache-mb: {e}"))?;
    let (num_blocks, context_length) = (scheduler.num_blocks, scheduler.max_seq_len);
    let engine = Engine::new(model, tokenizer.clone(), scheduler).context("allocating the KV cache")?;
    eprintln!(
        "model: {} loaded in {:.2} s; KV cache {} blocks x {} tokens ({} MiB)",
        path.display(),
        load_start.elapsed().as_secs_f64(),
        num_blocks,
        args.block_size,
        engine.kv_cache().device_bytes() >> 20
    );
    let (worker, worker_thread) = worker::spawn(engine);
    let model_name = args.served_model_name.clone().unwrap_or_else(|| {
        path.file_name().map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_owned()).unwrap_or_default()
    });
    let started = routes::unix_seconds();
    let state = Arc::new(AppState {
        worker,
        tokenizer,
        template,
        model_name,
        context_length,
        max_prompt_tokens: args.max_prompt_tokens.unwrap_or(context_length),
        api_key: args.api_key.clone(),
        shutting_down: AtomicBool::new(false),
        metrics: Default::default(),
        started,
        next_id: AtomicU64::new(0),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(&args, state, &path))?;
    // The handles are gone: the worker finishes what is left and stops.
    worker_thread.join().map_err(|_| anyhow::anyhow!("the engine thread panicked"))?;
    eprintln!("stopped");
    Ok(())
}

/// Loads the model, with a progress bar when standard error is a terminal.
fn load_with_progress_bar(file: &cinder_gguf::GgufFile, device: &cinder_model::Device) -> Result<Model, cinder_model::ModelError> {
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

fn router(args: &ServeArgs, state: Arc<AppState>, model_path: &Path) -> anyhow::Result<Router> {
    let api = Router::new()
        .route("/v1/completions", post(routes::completions))
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/models", get(routes::models))
        .route("/tokenize", post(routes::tokenize))
        .route("/detokenize", post(routes::detokenize))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), routes::require_api_key));
    let app = api
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics));
    let app = match &args.web {
        Some(dir) => app.route_service("/model.gguf", ServeFile::new(model_path)).fallback_service(
            ServeDir::new(dir).not_found_service(HandlerWithoutStateExt::into_service(routes::not_found)),
        ),
        None => app.fallback(routes::not_found),
    };
    let mut app = app
        .layer(DefaultBodyLimit::max(args.max_body_bytes))
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
    let shutdown = async move {
        shutdown_signal().await;
        eprintln!("shutting down: finishing requests in flight");
        state.shutting_down.store(true, Ordering::Relaxed);
    };
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
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
