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
use cinder_scheduler::SeqId;
use tokio::sync::{mpsc, oneshot};

/// What handlers ask of the worker.
pub enum Command {
    Submit {
        request: GenerationRequest,
        events: mpsc::UnboundedSender<Event>,
        reply: oneshot::Sender<Result<SeqId, SubmitError>>,
    },
}

/// The handlers' side of the worker.
#[derive(Clone)]
pub struct WorkerHandle {
    commands: Sender<Command>,
    metrics: Arc<Mutex<EngineMetrics>>,
}

impl WorkerHandle {
    /// Queues a request; its events arrive on the returned receiver. Dropping the receiver
    /// cancels the request.
    pub async fn submit(&self, request: GenerationRequest) -> Result<mpsc::UnboundedReceiver<Event>, SubmitError> {
        let (events, receiver) = mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        let gone = || SubmitError::Invalid("the engine has stopped".into());
        self.commands.send(Command::Submit { request, events, reply }).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())??;
        Ok(receiver)
    }

    pub fn metrics(&self) -> EngineMetrics {
        self.metrics.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Starts the worker thread. It ends once every [`WorkerHandle`] is dropped and the engine
/// has no work left.
pub fn spawn(engine: Engine) -> (WorkerHandle, JoinHandle<()>) {
    let (commands, receiver) = channel();
    let metrics = Arc::new(Mutex::new(EngineMetrics::default()));
    let shared = metrics.clone();
    let thread = std::thread::Builder::new()
        .name("cinder-engine".into())
        .spawn(move || run(engine, receiver, shared))
        .expect("spawning the engine thread");
    (WorkerHandle { commands, metrics }, thread)
}

fn run(mut engine: Engine, commands: Receiver<Command>, metrics: Arc<Mutex<EngineMetrics>>) {
    let clock = crate::wall_clock();
    let mut connected = true;
    let mut failures = 0u32;
    loop {
        // With work, take what has arrived and step; without, sleep until a command comes.
        let wait = if engine.has_work() { Duration::ZERO } else { Duration::from_millis(100) };
        // Err(true): every handle is gone.
        let mut received = if connected {
            commands.recv_timeout(wait).map_err(|e| e == RecvTimeoutError::Disconnected)
        } else {
            Err(true)
        };
        while let Ok(Command::Submit { request, events, reply }) = received {
            let _ = reply.send(engine.submit(request, events, clock()));
            received = commands.try_recv().map_err(|e| e == TryRecvError::Disconnected);
        }
        connected &= !matches!(received, Err(true));
        if !connected && !engine.has_work() {
            return;
        }
        match engine.step(&clock) {
            Ok(StepOutcome::Ran { .. }) => failures = 0,
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
        *metrics.lock().unwrap_or_else(|e| e.into_inner()) = engine.metrics(clock());
    }
}
