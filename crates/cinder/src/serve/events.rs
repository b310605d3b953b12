//! Streams of named server-sent events (Anthropic's and the Responses API's): a request's
//! engine events go through chat's chunk sequencer (which holds back call lists), then an
//! API's own sequence turns each chunk into its events.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::response::sse::{Event as SseEvent, Sse};
use cinder_engine::Event;
use cinder_engine::openai::response::{Choice, Endpoint};
use cinder_engine::openai::stream::{ChunkSequencer, Extras};
use serde_json::Value;
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::routes::{Run, Shared};

/// An API's events for a stream of chat chunks.
pub(super) trait EventSequence: Send + Unpin + 'static {
    /// The events of one chunk's choice; `tokens`: the prompt's and those generated so far.
    fn chunk(&mut self, choice: &Choice, tokens: (usize, usize)) -> Vec<(&'static str, Value)>;
    /// The event that reports a failure mid-stream, where no status can be set.
    fn error(&self, message: &str) -> (&'static str, Value);
    /// Hears how the request ended, before its last chunk.
    fn finished(&mut self, _finished: &cinder_engine::Finished) {}
}

pub(super) fn named((name, data): (&'static str, Value)) -> SseEvent {
    SseEvent::default().event(name).data(data.to_string())
}

/// The stream of `run`'s only choice, after `first` events. Dropping it (the client went
/// away) drops the receiver, which cancels the request.
pub(super) fn stream<E: EventSequence>(s: Shared, mut run: Run, events: E, first: Vec<(&'static str, Value)>) -> Sse<NamedEvents<E>> {
    let receiver = UnboundedReceiverStream::new(run.receivers.remove(0));
    let chunks = ChunkSequencer::new(Endpoint::Chat, run.id.clone(), 1, 1, run.tool_output, Extras::default());
    let pending = first.into_iter().map(named).collect();
    Sse::new(NamedEvents { s, run, receiver: Some(receiver), chunks, events, pending, output_tokens: 0 })
}

pub(super) struct NamedEvents<E> {
    s: Shared,
    run: Run,
    /// `None` once the request ended.
    receiver: Option<UnboundedReceiverStream<Event>>,
    chunks: ChunkSequencer,
    events: E,
    /// Events made and not yet sent.
    pending: VecDeque<SseEvent>,
    output_tokens: usize,
}

impl<E: EventSequence> NamedEvents<E> {
    fn event(&mut self, event: Event) {
        match &event {
            Event::Token { .. } => self.output_tokens += 1,
            Event::Finished(f) => {
                self.receiver = None;
                self.s.metrics.finished(&self.run.model.name, self.run.tenant(), f);
                self.output_tokens = f.completion_tokens;
                self.events.finished(f);
                if let Some(error) = &f.error {
                    self.pending.push_back(named(self.events.error(error)));
                    return;
                }
            }
        }
        if let Some(choice) = self.chunks.event(&self.run.model.tokenizer, 0, &event) {
            let tokens = (self.run.prompts[0].len(), self.output_tokens);
            self.pending.extend(self.events.chunk(&choice, tokens).into_iter().map(named));
        }
    }
}

impl<E: EventSequence> Stream for NamedEvents<E> {
    type Item = Result<SseEvent, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            let Some(receiver) = self.receiver.as_mut() else { return Poll::Ready(None) };
            match Pin::new(receiver).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(event)) => self.event(event),
                Poll::Ready(None) => {
                    self.receiver = None;
                    let error = self.events.error("the engine stopped before the request ended");
                    self.pending.push_back(named(error));
                }
            }
        }
    }
}
