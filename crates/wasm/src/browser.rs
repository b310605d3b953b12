//! The engine as a wasm-bindgen class.
//!
//! JavaScript owns the loop: it calls [`WasmEngine::step`] while [`WasmEngine::has_work`]
//! and yields to the browser between calls. A step borrows the engine only while it plans
//! and launches, and again while it samples: while the device computes, the page may
//! submit and abort. Callbacks run after the engine is released, so they may call back in.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use cinder_engine::openai::{GenerationBody, Limits, ToolOutput, parse};
use cinder_engine::{Engine, Event, Grammars, Launched};
use cinder_gguf::GgufFile;
use cinder_model::{Model, adapter_name, wgpu_device_async};
use cinder_scheduler::{SeqId, Time};
use cinder_tokenizer::{ChatTemplate, Tokenizer};
use js_sys::Function;
use serde_json::json;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use wasm_bindgen::prelude::*;

use crate::events::{ChatReply, event_json};
use crate::options::EngineOptions;

/// A request's events and the page's callback for them.
struct Stream {
    events: UnboundedReceiver<Event>,
    on_event: Function,
    /// A chat request's OpenAI answer so far.
    chat: Option<ChatReply>,
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
}

/// The engine behind `web/cinder.js`; see the crate documentation.
#[wasm_bindgen]
pub struct WasmEngine {
    state: Rc<RefCell<State>>,
    info: String,
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
    /// Opens WebGPU, reads the GGUF file in `bytes` and uploads its weights. `options` is a
    /// JSON object of [`EngineOptions`] (`""` for the defaults).
    pub async fn load(bytes: Vec<u8>, options: String) -> Result<WasmEngine, JsError> {
        record_panics();
        let options = EngineOptions::parse(&options).map_err(error)?;
        let file = GgufFile::from_bytes(bytes).map_err(|e| error(format!("the model file: {e}")))?;
        let tokenizer = Tokenizer::from_gguf(file.metadata()).map_err(|e| error(format!("the model's tokenizer: {e}")))?;
        let template = ChatTemplate::from_gguf(file.metadata(), &tokenizer).ok();
        let grammars = Grammars::new(&tokenizer).map_err(error)?;
        let device = wgpu_device_async().await.map_err(|e| error(format!("WebGPU: {e}")))?;
        let model = Model::load(&file, &device).map_err(|e| error(format!("loading the model: {e}")))?;
        drop(file);
        let config = model.config().clone();
        let scheduler = options.scheduler(&config, cinder_model::max_binding_bytes(&device)).map_err(error)?;
        let info = json!({
            "adapter": adapter_name(&device),
            "architecture": config.arch.name,
            "context_length": scheduler.max_seq_len,
            "vocab_size": tokenizer.vocab_size(),
            "device_weight_bytes": model.device_weight_bytes(),
            "kv_blocks": scheduler.num_blocks,
            "block_size": scheduler.block_size,
            "chat_template": template.is_some(),
        })
        .to_string();
        let context_length = scheduler.max_seq_len;
        let engine = Engine::new(model, tokenizer, scheduler).map_err(|e| error(format!("the KV cache: {e}")))?;
        let state =
            State { engine, template, grammars, streams: HashMap::new(), in_flight: false, context_length };
        Ok(WasmEngine { state: Rc::new(RefCell::new(state)), info })
    }

    /// What was loaded, as JSON: adapter, context length, vocabulary, weight bytes, KV pool.
    pub fn info(&self) -> String {
        self.info.clone()
    }

    /// Queues an OpenAI completion (`chat` false: `prompt`) or chat completion (`chat`
    /// true: `messages`) body; `on_event` receives each event as a JSON string (see
    /// [`crate::events`]). Returns the request's id. One choice per call (`n` must be 1).
    pub fn submit(&self, body: &str, chat: bool, on_event: Function) -> Result<f64, JsError> {
        let body: GenerationBody = parse(body.as_bytes()).map_err(error)?;
        if body.n().map_err(error)? != 1 {
            return Err(error("`n` must be 1 here; submit once per choice"));
        }
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let tokenizer = state.engine.tokenizer();
        let prompt = if chat {
            body.chat_prompt(tokenizer, state.template.as_ref()).map_err(error)?
        } else {
            let mut prompts = body.completion_prompts(tokenizer).map_err(error)?;
            if prompts.len() != 1 {
                return Err(error("`prompt` must be one prompt here; submit once per prompt"));
            }
            prompts.remove(0)
        };
        let seed = body.seed.unwrap_or_else(|| (js_sys::Math::random() * 2f64.powi(53)) as u64);
        let (constraint, tool_output) = body.output_constraint(&state.grammars, chat).map_err(error)?;
        if tool_output != ToolOutput::Text {
            return Err(error("`tools` are not supported here yet (`response_format` is)"));
        }
        let limits = Limits { context_length: state.context_length, default_max_tokens: None };
        let mut request = body.requests(&prompt, chat, limits, seed).map_err(error)?.remove(0);
        request.constraint = constraint;
        let (sender, events) = unbounded_channel();
        let id = state.engine.submit(request, sender, now()).map_err(error)?;
        let chat = chat.then(|| {
            let created = (js_sys::Date::now() / 1000.0) as u64;
            ChatReply::new(id.0, created, body.model.clone().unwrap_or_else(|| "cinder".into()))
        });
        state.streams.insert(id, Stream { events, on_event, chat });
        Ok(id.0 as f64)
    }

    /// Ends request `id`; its callback gets a `finished` event with `finish_reason` `abort`.
    pub fn abort(&self, id: f64) {
        self.state.borrow_mut().engine.abort(SeqId(id as u64), now());
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
        let logits = logits.read_async().await;
        let landed = {
            let mut state = self.state.borrow_mut();
            state.in_flight = false;
            state.engine.land(plan, logits, &now)
        };
        self.deliver();
        landed.map(|_| true).map_err(|e| error(format!("the device: {e}")))
    }

    /// Hands every pending event to its callback, with the engine released.
    fn deliver(&self) {
        let mut calls = Vec::new();
        {
            let mut state = self.state.borrow_mut();
            state.streams.retain(|id, stream| {
                let mut open = true;
                while let Ok(event) = stream.events.try_recv() {
                    open &= !matches!(event, Event::Finished(_));
                    let json = match &mut stream.chat {
                        Some(reply) => reply.event_json(id.0, &event),
                        None => event_json(id.0, &event),
                    };
                    calls.push((stream.on_event.clone(), json));
                }
                open
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
}
