//! One sequencer of streamed answers, for the server's server-sent events and the browser's
//! events alike: a request's engine events, choice by choice, become the choices of OpenAI
//! chunks (the first chat chunk carries the role; text that may be a call list is held back
//! and goes out as `tool_calls`; completions' logprobs count their text offsets), while the
//! choices' texts, logprobs, calls and usage add up for the whole answer.

use cinder_tokenizer::Tokenizer;

use super::response::{self, Endpoint, Message, Output, Usage};
use super::tools::{HeldCalls, ToolCall, ToolOutput};
use super::finish_reason;
use crate::{Event, TokenLogprob};

/// What a stream reports beside the text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extras {
    /// Each token's logprobs (the engine computes them only when asked).
    pub logprobs: bool,
    /// Each chunk's token ids (`return_token_ids`).
    pub token_ids: bool,
}

/// One choice's answer so far.
#[derive(Debug)]
struct ChoiceState {
    /// The text that went out (or will, at the end).
    text: String,
    /// Whether its first chunk went out (a chat chunk carries the role).
    started: bool,
    held: HeldCalls,
    calls: Option<Vec<ToolCall>>,
    logprobs: Vec<(u32, TokenLogprob)>,
    finish_reason: Option<&'static str>,
}

/// A request's choices as they stream.
#[derive(Debug)]
pub struct ChunkSequencer {
    endpoint: Endpoint,
    /// The response's id, which tool call ids are made from.
    id: String,
    /// Choices per prompt: choice `i` is prompt `i / n`'s, whose tokens are counted once.
    n: usize,
    extras: Extras,
    choices: Vec<ChoiceState>,
    usage: Usage,
}

impl ChunkSequencer {
    /// The stream of response `id`'s `choices` (`n` per prompt), whose outputs may be call
    /// lists as `tools` says.
    pub fn new(endpoint: Endpoint, id: String, choices: usize, n: usize, tools: ToolOutput, extras: Extras) -> Self {
        let choice = || ChoiceState {
            text: String::new(),
            started: false,
            held: HeldCalls::new(tools),
            calls: None,
            logprobs: Vec::new(),
            finish_reason: None,
        };
        Self { endpoint, id, n: n.max(1), extras, choices: (0..choices).map(|_| choice()).collect(), usage: Usage::default() }
    }

    /// Choice `index`'s `event` as the choice of a chunk, or `None` when it has nothing to
    /// send (text held back, with nothing else asked for).
    pub fn event(&mut self, tokenizer: &Tokenizer, index: usize, event: &Event) -> Option<response::Choice> {
        let (text, token, logprob, reason) = match event {
            Event::Token { token, text, logprob } => {
                let logprob = logprob.as_ref().filter(|_| self.extras.logprobs).map(|lp| (*token, lp.clone()));
                (text.clone(), Some(*token), logprob, None)
            }
            Event::Finished(f) => {
                self.usage.add(f, index % self.n == 0);
                (f.text.clone(), None, None, Some(finish_reason(f.reason)))
            }
        };
        let endpoint = self.endpoint;
        let choice = &mut self.choices[index];
        let fed = choice.held.feed(text, reason.is_some());
        let reason = if fed.calls.is_some() { Some("tool_calls") } else { reason };
        if fed.calls.is_some() || (fed.text.is_empty() && !fed.deltas.is_empty()) {
            // Calls go out as they are written: no text, no logprobs.
            let first = !choice.started && endpoint == Endpoint::Chat;
            choice.started = true;
            choice.calls = fed.calls.or(choice.calls.take());
            choice.finish_reason = choice.finish_reason.or(reason);
            let pieces = (!fed.deltas.is_empty()).then(|| response::call_pieces(&self.id, index, &fed.deltas));
            let delta = Message { role: first.then_some("assistant"), tool_calls: pieces, ..Message::default() };
            return Some(response::Choice::new(index, Output::Delta(delta), reason));
        }
        let text = fed.text;
        choice.finish_reason = choice.finish_reason.or(reason);
        let first = !choice.started && endpoint == Endpoint::Chat;
        if text.is_empty() && reason.is_none() && logprob.is_none() && !first && !self.extras.token_ids {
            return None;
        }
        choice.started = true;
        let logprobs = match &logprob {
            Some(entry) => response::logprobs(tokenizer, endpoint, std::slice::from_ref(entry), choice.text.len()),
            None => serde_json::Value::Null,
        };
        choice.logprobs.extend(logprob);
        choice.text.push_str(&text);
        let output = match endpoint {
            Endpoint::Completion => Output::Text(text),
            Endpoint::Chat => Output::Delta(Message::delta(first, text, reason.is_some())),
        };
        let token_ids = self.extras.token_ids.then(|| token.into_iter().collect());
        Some(response::Choice { logprobs, token_ids, ..response::Choice::new(index, output, reason) })
    }

    /// Whether every choice finished.
    pub fn done(&self) -> bool {
        self.choices.iter().all(|c| c.finish_reason.is_some())
    }

    /// The tokens of the choices that finished.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Every choice whole, as the response that is not streamed gives it.
    pub fn whole(&self, tokenizer: &Tokenizer) -> Vec<response::Choice> {
        let choices = self.choices.iter().enumerate();
        choices
            .map(|(index, c)| {
                let output = match self.endpoint {
                    Endpoint::Completion => Output::Text(c.text.clone()),
                    Endpoint::Chat => {
                        let calls = c.calls.as_ref().map(|calls| response::tool_calls(&self.id, index, calls));
                        Output::Message(Message::answer(c.text.clone(), calls))
                    }
                };
                let mut out = response::Choice::new(index, output, c.finish_reason);
                if self.extras.logprobs {
                    out.logprobs = response::logprobs(tokenizer, self.endpoint, &c.logprobs, 0);
                }
                out
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use cinder_gguf::GgufFile;
    use cinder_model::tiny::TinyModel;
    use cinder_scheduler::{FinishReason, Time};
    use serde_json::json;

    use super::*;
    use crate::Finished;

    fn tokenizer() -> Tokenizer {
        let file = GgufFile::from_bytes(TinyModel::default().to_gguf()).unwrap();
        Tokenizer::from_gguf(file.metadata()).unwrap()
    }

    fn token(token: u32, text: &str) -> Event {
        let logprob = Some(TokenLogprob { logprob: -0.5, top: vec![(token, -0.5)] });
        Event::Token { token, text: text.into(), logprob }
    }

    fn finished(text: &str, prompt_tokens: usize) -> Event {
        Event::Finished(Finished {
            reason: FinishReason::Length,
            error: None,
            text: text.into(),
            prompt_tokens,
            completion_tokens: 2,
            arrival: Time(0),
            scheduled: Some(Time(0)),
            first_token: Some(Time(1)),
            finished: Time(2),
            preemptions: 0,
            speculative: None,
            embedding: None,
            stop_sequence: None,
        })
    }

    fn json(choice: Option<response::Choice>) -> serde_json::Value {
        serde_json::to_value(choice).unwrap()
    }

    /// Two prompts, two choices each: every token reports its id and logprobs at its text's
    /// offset, and each prompt's tokens count once.
    #[test]
    fn completion_chunks_carry_extras_and_each_prompt_counts_once() {
        let tokenizer = tokenizer();
        let extras = Extras { logprobs: true, token_ids: true };
        let mut chunks = ChunkSequencer::new(Endpoint::Completion, "cmpl-1".into(), 4, 2, ToolOutput::Text, extras);
        chunks.event(&tokenizer, 3, &token(5, "ab"));
        let second = json(chunks.event(&tokenizer, 3, &token(6, "")));
        assert_eq!((&second["text"], &second["token_ids"]), (&json!(""), &json!([6])), "extras go out with no text: {second}");
        assert_eq!(second["logprobs"]["text_offset"], json!([2]));
        for index in 0..4 {
            chunks.event(&tokenizer, index, &finished("", 10 + index));
        }
        assert!(chunks.done());
        let usage = chunks.usage();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (10 + 12, 8));
        assert_eq!(json(Some(chunks.whole(&tokenizer).remove(3)))["text"], "ab");
    }

    /// A chat choice's first chunk carries the role even while its text is held back, and
    /// empty tokens after it send nothing when no extras are asked for.
    #[test]
    fn the_first_chat_chunk_carries_the_role_and_empty_tokens_send_nothing() {
        let tokenizer = tokenizer();
        let mut chunks = ChunkSequencer::new(Endpoint::Chat, "chatcmpl-1".into(), 1, 1, ToolOutput::Text, Extras::default());
        let first = json(chunks.event(&tokenizer, 0, &token(5, "")));
        assert_eq!(first["delta"], json!({"role": "assistant", "content": ""}));
        assert!(first["logprobs"].is_null(), "not asked for: {first}");
        assert!(chunks.event(&tokenizer, 0, &token(6, "")).is_none());
        let last = json(chunks.event(&tokenizer, 0, &finished("hi", 3)));
        assert_eq!((&last["delta"], &last["finish_reason"]), (&json!({"content": "hi"}), &json!("length")));
    }
}
