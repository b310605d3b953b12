//! The engine as a wasm-bindgen class.
//!
//! JavaScript owns the loop: it calls [`WasmEngine::step`] while [`WasmEngine::has_work`]
//! and yields to the browser between calls. A step borrows the engine only while it plans
//! and launches, and again while it samples: while the device computes, the page may
//! submit and abort. Callbacks run after the engine is released, so they may call back in.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use cinder_engine::openai::embeddings::{EmbeddingsBody, EncodingFormat};
use cinder_engine::openai::{Endpoint, GenerationBody, RequestLimits, Submission, parse};
use cinder_engine::{Engine, Event, GenerationRequest, Grammars, Launched};
use cinder_gguf::{ByteSource, GgufFile};
use cinder_model::profile::Profiler;
use cinder_model::{
    Backend, DeviceChoice, LoraAdapter, Model, Pooling, adapter_info, set_browser_subgroups, time_layer_products, wgpu_device_async,
};
use cinder_scheduler::{Priority, SeqId, TenantId, Time};
use cinder_tokenizer::{ChatTemplate, Tokenizer};
use js_sys::Function;
use serde_json::json;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use wasm_bindgen::prelude::*;

use crate::events::Reply;
use crate::options::EngineOptions;
use crate::profile::{StepTimes, profile_json};

/// A request's events (one receiver per choice) and the page's callback for them.
struct Stream {
    choices: Vec<(SeqId, UnboundedReceiver<Event>)>,
    on_event: Function,
    reply: Reply,
}

struct State {
    engine: Engine,
    template: Option<ChatTemplate>,
    grammars: Grammars,
    streams: HashMap<SeqId, Stream>,
    /// A step is on the device: the next may start only once it lands.
    in_flight: bool,
    /// The longest sequence the KV pool holds (at most the model's context).
    context_length: usize,
    /// How embeddings pool.
    pooling: Pooling,
    /// The steps' host times and their kernels' device times since `profileStart`.
    profiling: Option<(StepTimes, Profiler)>,
}

impl State {
    /// Submits one page request's sequences, admitted together, and streams their events to
    /// `on_event` through the reply `reply` makes of the first sequence's id and their count.
    /// Returns the request's id.
    fn start(&mut self, requests: Vec<GenerationRequest>, on_event: Function, reply: impl FnOnce(u64, usize) -> Reply) -> Result<f64, JsError> {
        let (requests, receivers): (Vec<_>, Vec<_>) = requests
            .into_iter()
            .map(|request| {
                let (sender, events) = unbounded_channel();
                ((request, sender), events)
            })
            .unzip();
        let ids = self.engine.submit_all(requests, now()).map_err(error)?;
        let id = ids[0];
        let reply = reply(id.0, ids.len());
        self.streams.insert(id, Stream { choices: ids.into_iter().zip(receivers).collect(), on_event, reply });
        Ok(id.0 as f64)
    }
}

/// The model file as the page holds it for WebGPU, a JavaScript `Uint8Array` outside
/// WebAssembly memory, read by ranges as the loader asks: the file is never copied whole
/// into the module's memory, which never shrinks, when its weights go to the GPU.
struct PageFile(js_sys::Uint8Array);

// SAFETY: WebAssembly in a page or a worker runs on one thread, and the file stays on it.
unsafe impl Send for PageFile {}
unsafe impl Sync for PageFile {}

impl ByteSource for PageFile {
    fn len(&self) -> u64 {
        u64::from(self.0.length())
    }

    fn read(&self, range: std::ops::Range<u64>) -> Vec<u8> {
        self.0.subarray(range.start as u32, range.end as u32).to_vec()
    }
}

/// A model file in WebAssembly memory, written by the page as it downloads: the CPU backend
/// keeps its weights in this buffer, so the file is held once, with no copy in JavaScript.
#[wasm_bindgen]
pub struct ModelBytes(Vec<u8>);

#[wasm_bindgen]
impl ModelBytes {
    /// `len` zeroed bytes, or an error where WebAssembly memory cannot hold them.
    #[wasm_bindgen(constructor)]
    pub fn new(len: usize) -> Result<ModelBytes, JsError> {
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(len)
            .map_err(|_| error(format!("the model file ({} MB) does not fit in WebAssembly memory (4 GiB at most)", len >> 20)))?;
        bytes.resize(len, 0);
        Ok(Self(bytes))
    }

    /// Where the bytes start in the module's memory.
    pub fn pointer(&self) -> usize {
        self.0.as_ptr() as usize
    }
}

/// The engine behind `web/cinder.js`; see the crate documentation.
#[wasm_bindgen]
pub struct WasmEngine {
    state: Rc<RefCell<State>>,
    info: serde_json::Value,
}

unsafe extern "C" {
    /// The static constructors, which the linker gathers into this function.
    fn __wasm_call_ctors();
}

/// Runs once, when the page instantiates the module: the static constructors (the
/// `inventory` registries of Burn's compiler) run here. Without a call to them in the
/// module, the linker treats it as a command and runs every constructor again at the top
/// of every exported function, and JavaScript calls into the module thousands of times a
/// step: that made launching a step's kernels cost ~8 ms per kernel.
#[wasm_bindgen(start)]
fn start() {
    // SAFETY: called once per instance, before anything else runs in it.
    unsafe { __wasm_call_ctors() }
    record_panics();
}

/// The message of the last Rust panic: a panic aborts the WebAssembly instance (a JavaScript
/// `RuntimeError: unreachable`), and this is how the page learns why.
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Why the engine stopped, if a Rust panic stopped it.
#[wasm_bindgen(js_name = lastPanic)]
pub fn last_panic() -> Option<String> {
    LAST_PANIC.lock().ok()?.clone()
}

fn record_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = info.to_string();
        web_error(&format!("cinder: {message}"));
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = Some(message);
        }
    }));
}

fn now() -> Time {
    Time((js_sys::Date::now() * 1000.0) as u64)
}

fn error(message: impl std::fmt::Display) -> JsError {
    JsError::new(&message.to_string())
}

#[wasm_bindgen]
impl WasmEngine {
    /// Opens the device `options.device` names (WebGPU, or the CPU), reads the GGUF file in
    /// `bytes` and loads its weights, one tensor at a time. `options` is a JSON object of
    /// [`EngineOptions`] (`""` for the defaults).
    pub async fn load(bytes: js_sys::Uint8Array, options: String) -> Result<WasmEngine, JsError> {
        let file = GgufFile::from_source(Box::new(PageFile(bytes))).map_err(|e| error(format!("the model file: {e}")))?;
        Self::open(file, options).await
    }

    /// [`load`](Self::load) from a file in WebAssembly memory: the CPU backend's weights stay
    /// in it, uncopied.
    #[wasm_bindgen(js_name = loadInMemory)]
    pub async fn load_in_memory(bytes: ModelBytes, options: String) -> Result<WasmEngine, JsError> {
        let file = GgufFile::from_bytes(bytes.0).map_err(|e| error(format!("the model file: {e}")))?;
        Self::open(file, options).await
    }

    async fn open(file: GgufFile, options: String) -> Result<WasmEngine, JsError> {
        let options = EngineOptions::parse(&options).map_err(error)?;
        let tokenizer = Tokenizer::from_gguf(file.metadata()).map_err(|e| error(format!("the model's tokenizer: {e}")))?;
        let template = ChatTemplate::from_gguf(file.metadata(), &tokenizer).ok();
        let grammars = Grammars::lazy(&tokenizer);
        set_browser_subgroups(options.subgroups);
        let cpu = || Backend::cpu(1).map_err(error);
        let mut device_timing = serde_json::Value::Null;
        let backend = match options.device {
            DeviceChoice::Cpu => cpu()?,
            DeviceChoice::Gpu => Backend::Gpu(wgpu_device_async().await.map_err(|e| error(format!("WebGPU: {e}")))?),
            DeviceChoice::Auto => match wgpu_device_async().await {
                Ok(device) if !adapter_info(&device).is_some_and(|a| a.is_software()) => Backend::Gpu(device),
                // A software adapter: the path that runs this model's products faster here.
                Ok(device) => {
                    let (gpu, cpu) = (Backend::Gpu(device), cpu()?);
                    let ms = |time: std::time::Duration| time.as_secs_f64() * 1e3;
                    let cpu_time = time_layer_products(&file, &cpu).await.map_err(|e| error(format!("timing the CPU: {e}")))?;
                    let gpu_time = time_layer_products(&file, &gpu).await;
                    device_timing = json!({
                        "adapter": gpu.name(),
                        "cpu_ms": ms(cpu_time),
                        "gpu_ms": gpu_time.as_ref().ok().map(|&t| ms(t)),
                        "gpu_error": gpu_time.as_ref().err().map(|e| e.to_string()),
                    });
                    if gpu_time.is_ok_and(|t| t < cpu_time) { gpu } else { cpu }
                }
                Err(_) => cpu()?,
            },
        };
        let mut model = Model::load(&file, &backend).map_err(|e| error(format!("loading the model: {e}")))?;
        drop(file);
        let kv_types = options.kv_types();
        model.set_kv_types(kv_types).map_err(|e| error(format!("engine options: kv_cache_type {kv_types}: {e}")))?;
        let config = model.config().clone();
        let pooling = options.pooling.or(config.pooling).unwrap_or(Pooling::Mean);
        let scheduler = options.scheduler(&config, backend.max_binding_bytes()).map_err(error)?;
        let adapter = backend.gpu().and_then(adapter_info);
        let info = json!({
            "adapter": backend.name(),
            "device": backend.kind().to_string(),
            // Whether the device has WebGPU's subgroups, and the width the kernels use (null:
            // they run without).
            "subgroups_granted": options.subgroups && !backend.is_cpu(),
            "subgroups": adapter.and_then(|a| a.subgroup_max_size),
            "architecture": config.arch.name,
            "context_length": scheduler.max_seq_len,
            "vocab_size": tokenizer.vocab_size(),
            "device_weight_bytes": model.device_weight_bytes(),
            "kv_blocks": scheduler.num_blocks,
            "block_size": scheduler.block_size,
            "kv_cache_type": kv_types.to_string(),
            "kv_bytes_per_token": cinder_model::PagedKvCache::bytes_per_position(&config),
            "chat_template": template.is_some(),
            "pooling": pooling.name(),
            // Where `auto` timed both paths on a software adapter: each one's time for a
            // layer's products (null elsewhere).
            "device_timing": device_timing,
        });
        let context_length = scheduler.max_seq_len;
        let mut engine = Engine::new(model, tokenizer, scheduler).map_err(|e| error(format!("the KV cache: {e}")))?;
        engine.set_max_loras(options.max_loras).map_err(error)?;
        let state = State {
            engine,
            template,
            grammars,
            streams: HashMap::new(),
            in_flight: false,
            context_length,
            pooling,
            profiling: None,
        };
        Ok(WasmEngine { state: Rc::new(RefCell::new(state)), info })
    }

    /// Runs one short request through the engine, so that the kernels of a prompt and of a
    /// decode step compile now, while the page still shows loading, rather than in its
    /// first answer (compiling them took ~5 s of SwiftShader's first answer). The request
    /// sees no cache and leaves none.
    #[wasm_bindgen(js_name = warmUp)]
    pub async fn warm_up(&self) -> Result<(), JsError> {
        // First the two kernels for prompts' products are timed, so that prompts take the
        // faster one on this adapter, as natively.
        let calibrating = self.state.borrow().engine.model().calibrate_prompt_kernels();
        calibrating.await;
        // 32 tokens: a prompt chunk on the prompt kernel just picked and flash attention;
        // then one decode step.
        let mut request = GenerationRequest::new(vec![0; 32], 2);
        request.ignore_eos = true;
        request.use_prefix_cache = false;
        let (sender, _events) = unbounded_channel();
        self.state.borrow_mut().engine.submit(request, sender, now()).map_err(error)?;
        loop {
            let launched = self.state.borrow_mut().engine.launch(&now).map_err(error)?;
            let Some(Launched { plan, logits }) = launched else { return Ok(()) };
            let logits = logits.read_async().await;
            self.state.borrow_mut().engine.land(plan, logits, &now).map_err(error)?;
        }
    }

    /// What was loaded, as JSON: adapter, context length, vocabulary, weight bytes, KV pool,
    /// the LoRA adapters, and the prompt kernels' timings once `warmUp` took them.
    pub fn info(&self) -> String {
        let mut info = self.info.clone();
        info["prompt_kernels"] = json!(cinder_model::many_tokens::prompt_kernel_timings());
        info["loras"] = json!(self.state.borrow().engine.adapters().names());
        info.to_string()
    }

    /// Loads the LoRA adapter in the GGUF file `bytes` (llama.cpp's adapter layout, for this
    /// model) as `name`, its product scaled by `scale`: a request runs with it by naming it
    /// as its `model` (or `lora`), batched with the others and the base model.
    #[wasm_bindgen(js_name = loadLora)]
    pub fn load_lora(&self, name: String, bytes: js_sys::Uint8Array, scale: f32) -> Result<(), JsError> {
        let adapter_error = |e: &dyn std::fmt::Display| error(format!("LoRA adapter {name}: {e}"));
        let file = GgufFile::from_source(Box::new(PageFile(bytes))).map_err(|e| adapter_error(&e))?;
        let mut state = self.state.borrow_mut();
        let adapter = LoraAdapter::from_gguf(&file, state.engine.model().config()).map_err(|e| adapter_error(&e))?;
        state.engine.load_adapter(&name, std::sync::Arc::new(adapter), scale).map_err(|e| adapter_error(&e))
    }

    /// Queues an OpenAI body for `endpoint`: `completions` (`prompt`), `chat` (`messages`)
    /// or `embeddings` (`input`); `on_event` receives each event of its `n` choices (of
    /// each input, for embeddings) as a JSON string (see [`crate::events`]). Returns the
    /// request's id.
    pub fn submit(&self, body: &str, endpoint: &str, on_event: Function) -> Result<f64, JsError> {
        let limits = RequestLimits::default();
        if body.len() > limits.max_body_bytes {
            return Err(error(format!("the body has {} bytes; at most {} are taken", body.len(), limits.max_body_bytes)));
        }
        let endpoint = match endpoint {
            "completions" => Endpoint::Completion,
            "chat" => Endpoint::Chat,
            "embeddings" => return self.submit_embeddings(body, &limits, on_event),
            other => return Err(error(format!("unknown endpoint {other:?}: completions, chat or embeddings"))),
        };
        let chat = endpoint == Endpoint::Chat;
        let mut checked = parse::<GenerationBody>(body.as_bytes()).and_then(|b| b.check(endpoint, &limits)).map_err(error)?;
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let prompts = checked.prompts(state.engine.tokenizer(), state.template.as_ref(), state.context_length).map_err(error)?;
        if prompts.len() != 1 {
            return Err(error("`prompt` must be one prompt here; submit once per prompt"));
        }
        let constraint = checked.constraint(&state.grammars).map_err(error)?;
        // `lora` names an adapter; so may `model` (other model names are the one loaded).
        let body = checked.body();
        let loaded = state.engine.adapters().names();
        let adapter = body.lora.clone().or_else(|| body.model.clone().filter(|m| loaded.contains(m)));
        if let Some(name) = adapter.as_ref().filter(|a| !loaded.contains(a)) {
            return Err(error(format!("no LoRA adapter {name:?} is loaded (loaded: {loaded:?})")));
        }
        let submission = Submission {
            context_length: state.context_length,
            seed: (js_sys::Math::random() * 2f64.powi(53)) as u64,
            tenant: TenantId::default(),
            priority: checked.priority.unwrap_or_default(),
            max_priority: Priority::Critical,
            constraint: constraint.as_ref(),
            adapter: adapter.as_deref(),
        };
        // The `n` choices are admitted together and fork from one prefill.
        state.start(checked.requests(&prompts, submission).map_err(error)?, on_event, |id, _| {
            let reply = Reply::new(id, checked.n, checked.logprobs.is_some());
            match chat {
                true => reply.chat((js_sys::Date::now() / 1000.0) as u64, checked.body().model.clone().unwrap_or_else(|| "cinder".into()), checked.tool_output()),
                false => reply,
            }
        })
    }

    /// An embeddings body: each input a prompt-only request, batched with the page's
    /// generations; the last event carries the OpenAI answer.
    fn submit_embeddings(&self, body: &str, limits: &RequestLimits, on_event: Function) -> Result<f64, JsError> {
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let width = state.engine.model().config().hidden;
        let checked = parse::<EmbeddingsBody>(body.as_bytes()).and_then(|b| b.check(limits, width)).map_err(error)?;
        if state.pooling == Pooling::None {
            return Err(error("this engine pools no embedding (pooling none); load it with `pooling` mean, cls or last"));
        }
        let prompts = checked.prompts(state.engine.tokenizer(), state.context_length).map_err(error)?;
        let submission = Submission {
            context_length: state.context_length,
            seed: 0,
            tenant: TenantId::default(),
            priority: checked.priority.unwrap_or_default(),
            max_priority: Priority::Critical,
            constraint: None,
            adapter: None,
        };
        let model = checked.body().model.clone().unwrap_or_else(|| "cinder".into());
        let base64 = checked.encoding_format == EncodingFormat::Base64;
        state.start(checked.requests(&prompts, state.pooling, submission), on_event, |id, inputs| {
            Reply::new(id, inputs, false).embeddings(model, checked.dimensions, base64)
        })
    }

    /// Ends request `id` (every choice); each gets a `finished` event with `finish_reason`
    /// `abort`.
    pub fn abort(&self, id: f64) {
        {
            let mut state = self.state.borrow_mut();
            let State { engine, streams, .. } = &mut *state;
            if let Some(stream) = streams.get(&SeqId(id as u64)) {
                for (seq, _) in &stream.choices {
                    engine.abort(*seq, now());
                }
            }
        }
        self.deliver();
    }

    /// Whether any request is waiting or running.
    #[wasm_bindgen(js_name = hasWork)]
    pub fn has_work(&self) -> bool {
        self.state.borrow().engine.has_work()
    }

    /// Runs one engine step: every request submitted so far shares its batch. Resolves to
    /// true if it ran anything, false if nothing could run.
    pub async fn step(&self) -> Result<bool, JsError> {
        let started = performance_now();
        let launched = {
            let mut state = self.state.borrow_mut();
            if state.in_flight {
                return Err(error("a step is already running; await it before the next"));
            }
            let launched = state.engine.launch(&now);
            state.in_flight = launched.as_ref().is_ok_and(Option::is_some);
            launched
        };
        let Launched { plan, logits } = match launched {
            Ok(Some(launched)) => launched,
            Ok(None) => {
                self.deliver();
                return Ok(false);
            }
            Err(e) => {
                self.deliver();
                return Err(error(format!("the device: {e}")));
            }
        };
        let submitted = performance_now();
        let logits = logits.read_async().await;
        let read = performance_now();
        let landed = {
            let mut state = self.state.borrow_mut();
            state.in_flight = false;
            let landed = state.engine.land(plan, logits, &now);
            if let Some((times, _)) = &mut state.profiling {
                times.add(submitted - started, read - submitted, performance_now() - read);
            }
            landed
        };
        self.deliver();
        landed.map(|_| true).map_err(|e| error(format!("the device: {e}")))
    }

    /// Starts timing the steps: each one's host parts, and every kernel on the device
    /// (timestamp queries where the adapter has them). Restarts a profile already running.
    #[wasm_bindgen(js_name = profileStart)]
    pub fn profile_start(&self) {
        let mut state = self.state.borrow_mut();
        // The running profile ends first: one observer at a time.
        state.profiling = None;
        state.profiling = Some((StepTimes::default(), Profiler::start()));
    }

    /// Ends the profile `profileStart` began and resolves to it as JSON (see
    /// [`crate::profile::profile_json`]) once the device's timings are read.
    #[wasm_bindgen(js_name = profileFinish)]
    pub async fn profile_finish(&self) -> Result<String, JsError> {
        let (times, profiler) = self.state.borrow_mut().profiling.take().ok_or_else(|| error("no profile is running"))?;
        Ok(profile_json(&times, &profiler.read().await))
    }

    /// Hands every pending event to its callback, with the engine released.
    fn deliver(&self) {
        let mut calls = Vec::new();
        {
            let mut state = self.state.borrow_mut();
            let State { engine, streams, .. } = &mut *state;
            streams.retain(|_, stream| {
                for (index, (_, events)) in stream.choices.iter_mut().enumerate() {
                    while let Ok(event) = events.try_recv() {
                        calls.push((stream.on_event.clone(), stream.reply.event_json(engine.tokenizer(), index, &event)));
                    }
                }
                !stream.reply.done()
            });
        }
        for (callback, event) in calls {
            // A throwing callback is the page's bug; the engine and other requests go on.
            if let Err(e) = callback.call1(&JsValue::NULL, &JsValue::from_str(&event)) {
                web_log(&format!("cinder: an event callback threw: {e:?}"));
            }
        }
    }
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = warn)]
    fn web_log(message: &str);
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn web_error(message: &str);
    /// Milliseconds, in a window and in a worker alike.
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
}
