//! The thread that owns the device: it feeds requests to the engine and steps it.
//!
//! Handlers talk to it through a channel of [`Command`]s; tokens go straight from the
//! engine to each request's own channel. The worker publishes a metrics snapshot after
//! every step, so `/metrics` never waits for the device.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use cinder_engine::{Engine, EngineMetrics, Event, GenerationRequest, StepOutcome, SubmitError};
use cinder_model::LoraAdapter;
use cinder_scheduler::SeqId;
use cinder_scheduler::admission::Applicant;
use tokio::sync::{mpsc, oneshot};

/// What handlers ask of the worker.
pub enum Command {
    /// The sequences of one client request, queued together or not at all.
    Submit {
        requests: Vec<(GenerationRequest, mpsc::UnboundedSender<Event>)>,
        reply: oneshot::Sender<Result<Vec<SeqId>, SubmitError>>,
    },
    /// Whether a request would be admitted now (before work that is only worth doing if so).
    Check { applicant: Applicant, reply: oneshot::Sender<Result<(), SubmitError>> },
    /// Loads a LoRA adapter (read for this model) under a name, at a scale.
    LoadAdapter { name: String, adapter: Arc<LoraAdapter>, scale: f32, reply: oneshot::Sender<Result<(), String>> },
    /// Unloads a LoRA adapter once its requests end.
    UnloadAdapter { name: String, reply: oneshot::Sender<Result<(), String>> },
}

/// The handlers' side of the worker.
#[derive(Clone)]
pub struct WorkerHandle {
    commands: Sender<Command>,
    metrics: Arc<Mutex<EngineMetrics>>,
}

impl WorkerHandle {
    /// Queues the sequences of one client request, all or none; each one's events arrive
    /// on its receiver. Dropping a receiver cancels its sequence.
    pub async fn submit(&self, requests: Vec<GenerationRequest>) -> Result<Vec<mpsc::UnboundedReceiver<Event>>, SubmitError> {
        let (senders, receivers): (Vec<_>, Vec<_>) = requests.iter().map(|_| mpsc::unbounded_channel()).unzip();
        let requests = requests.into_iter().zip(senders).collect();
        let (reply, answer) = oneshot::channel();
        let gone = || SubmitError::Invalid("the engine has stopped".into());
        self.commands.send(Command::Submit { requests, reply }).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())??;
        Ok(receivers)
    }

    /// Whether the engine's scheduler would admit `applicant` now (its breaker, shedding and
    /// queue; rates are the server's own).
    pub async fn check(&self, applicant: Applicant) -> Result<(), SubmitError> {
        let (reply, answer) = oneshot::channel();
        let gone = || SubmitError::Invalid("the engine has stopped".into());
        self.commands.send(Command::Check { applicant, reply }).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    pub async fn load_adapter(&self, name: &str, adapter: Arc<LoraAdapter>, scale: f32) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::LoadAdapter { name: name.to_owned(), adapter, scale, reply }).map_err(|_| STOPPED.to_owned())?;
        answer.await.map_err(|_| STOPPED.to_owned())?
    }

    pub async fn unload_adapter(&self, name: &str) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::UnloadAdapter { name: name.to_owned(), reply }).map_err(|_| STOPPED.to_owned())?;
        answer.await.map_err(|_| STOPPED.to_owned())?
    }

    pub fn metrics(&self) -> EngineMetrics {
        self.metrics.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

const STOPPED: &str = "the engine has stopped";

/// Starts the worker thread. It ends once every [`WorkerHandle`] is dropped and the engine
/// has no work left.
pub fn spawn(engine: Engine) -> (WorkerHandle, JoinHandle<()>) {
    let (commands, receiver) = channel();
    // A first snapshot before the thread runs: the pool's size is known from the start.
    let metrics = Arc::new(Mutex::new(engine.metrics(cinder_scheduler::Time::ZERO)));
    let shared = metrics.clone();
    let thread = std::thread::Builder::new()
        .name("cinder-engine".into())
        .spawn(move || run(engine, receiver, shared))
        .expect("spawning the engine thread");
    (WorkerHandle { commands, metrics }, thread)
}

/// How long the engine stays idle before it gives back the memory pooled for its steps:
/// long enough that back-to-back requests reuse it.
const RELEASE_AFTER_IDLE: Duration = Duration::from_secs(2);

fn run(mut engine: Engine, commands: Receiver<Command>, metrics: Arc<Mutex<EngineMetrics>>) {
    let clock = crate::wall_clock();
    let mut connected = true;
    let mut failures = 0u32;
    // When the engine last ran a step, while its pooled memory is not yet released.
    let mut pooled_since: Option<std::time::Instant> = None;
    loop {
        // With work, take what has arrived and step; without, sleep until a command comes.
        let wait = if engine.has_work() { Duration::ZERO } else { Duration::from_millis(100) };
        // Err(true): every handle is gone.
        let mut received = if connected {
            commands.recv_timeout(wait).map_err(|e| e == RecvTimeoutError::Disconnected)
        } else {
            Err(true)
        };
        while let Ok(command) = received {
            match command {
                Command::Submit { requests, reply } => drop(reply.send(engine.submit_all(requests, clock()))),
                Command::Check { applicant, reply } => drop(reply.send(engine.check_admission(applicant, clock()))),
                Command::LoadAdapter { name, adapter, scale, reply } => drop(reply.send(engine.load_adapter(&name, adapter, scale))),
                Command::UnloadAdapter { name, reply } => drop(reply.send(engine.unload_adapter(&name))),
            }
            received = commands.try_recv().map_err(|e| e == TryRecvError::Disconnected);
        }
        connected &= !matches!(received, Err(true));
        if !connected && !engine.has_work() {
            // The model was unloaded or the server stops: its weights and KV cache go, and
            // the backend gives their memory back to the driver.
            let backend = engine.model().backend().clone();
            drop(engine);
            if let Err(e) = backend.release_memory() {
                tracing::warn!("releasing device memory: {e}");
            }
            return;
        }
        match engine.step(&clock) {
            Ok(StepOutcome::Ran { .. }) => {
                failures = 0;
                pooled_since = Some(std::time::Instant::now());
            }
            // Waiting work that does not fit yet: let running requests' receivers drop or
            // new commands arrive instead of spinning.
            Ok(StepOutcome::Idle) if engine.has_work() => std::thread::sleep(Duration::from_millis(2)),
            Ok(StepOutcome::Idle) => {}
            Err(e) => {
                failures += 1;
                tracing::error!("engine step failed ({failures} in a row): {e}");
                std::thread::sleep(Duration::from_millis(10 * u64::from(failures.min(100))));
            }
        }
        if !engine.has_work() && pooled_since.is_some_and(|t| t.elapsed() >= RELEASE_AFTER_IDLE) {
            if let Err(e) = engine.release_pooled_memory() {
                tracing::warn!("releasing pooled device memory: {e}");
            }
            pooled_since = None;
        }
        *metrics.lock().unwrap_or_else(|e| e.into_inner()) = engine.metrics(clock());
    }
}
