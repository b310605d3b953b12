//! Engine events as the page receives them: one JSON object per event.
//!
//! `{"type": "token", "id", "token", "text"}` for each generated token (the text it
//! releases; empty while a character or a possible stop string is incomplete), then one
//! `{"type": "finished", "id", "finish_reason", "text", "prompt_tokens",
//! "completion_tokens"}`, where `text` is what was held back until the end and
//! `finish_reason` is OpenAI's (`stop`, `length`, `abort`), or `error` with an `error`
//! message when the device kept failing the request's steps.
//!
//! A chat request's events also carry its OpenAI answer, built by the same typed module as
//! the server's ([`cinder_engine::openai::response`]): `chunk`, the `chat.completion.chunk`
//! the event makes (absent when it makes none), and on the end `usage_chunk` and
//! `completion`, the whole `chat.completion`.

use cinder_engine::Event;
use cinder_engine::openai::finish_reason;
use cinder_engine::openai::response::{self, Body, Endpoint, Message, Output, Usage};
use serde_json::{Value, json};

pub fn event_json(id: u64, event: &Event) -> String {
    event_value(id, event).to_string()
}

fn event_value(id: u64, event: &Event) -> Value {
    match event {
        Event::Token { token, text, .. } => json!({"type": "token", "id": id, "token": token, "text": text}),
        Event::Finished(f) => {
            let mut end = json!({
                "type": "finished",
                "id": id,
                "finish_reason": finish_reason(f.reason),
                "text": f.text,
                "prompt_tokens": f.prompt_tokens,
                "completion_tokens": f.completion_tokens,
            });
            if let Some(error) = &f.error {
                end["error"] = json!(error);
            }
            end
        }
    }
}

/// A chat request's answer so far, for the OpenAI objects its events carry.
pub struct ChatReply {
    id: String,
    created: u64,
    model: String,
    text: String,
    started: bool,
}

impl ChatReply {
    /// The answer of engine request `id`, made at `created` (Unix seconds) by `model`.
    pub fn new(id: u64, created: u64, model: String) -> Self {
        Self { id: format!("{}-{id}", Endpoint::Chat.id_prefix()), created, model, text: String::new(), started: false }
    }

    fn body(&self, object: &'static str, choices: Vec<response::Choice>, usage: Option<Usage>) -> Value {
        let body = Body { id: &self.id, object, created: self.created, model: &self.model, choices, usage, prompt_token_ids: None };
        serde_json::to_value(body).expect("a response is plain data")
    }

    /// The event's JSON (as [`event_json`]) with the OpenAI objects it makes.
    pub fn event_json(&mut self, id: u64, event: &Event) -> String {
        let mut value = event_value(id, event);
        let (text, reason) = match event {
            Event::Token { text, .. } => (text.as_str(), None),
            Event::Finished(f) => (f.text.as_str(), Some(finish_reason(f.reason))),
        };
        self.text.push_str(text);
        let first = !self.started;
        if first || !text.is_empty() || reason.is_some() {
            self.started = true;
            let delta = Output::Delta(Message::delta(first, text.to_owned(), reason.is_some()));
            value["chunk"] = self.body(Endpoint::Chat.chunk_object(), vec![response::Choice::new(0, delta, reason)], None);
        }
        if let Event::Finished(f) = event {
            let usage = Some(Usage::new(f.prompt_tokens, f.completion_tokens));
            value["usage_chunk"] = self.body(Endpoint::Chat.chunk_object(), Vec::new(), usage);
            let message = Output::Message(Message::answer(self.text.clone(), None));
            value["completion"] = self.body(Endpoint::Chat.object(), vec![response::Choice::new(0, message, reason)], usage);
        }
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use cinder_engine::Finished;
    use cinder_scheduler::{FinishReason, Time};
    use serde_json::Value;

    use super::*;

    /// A request's end after `prompt_tokens` and `completion_tokens`, timed 0, 1, 2.
    fn finished(reason: FinishReason, text: &str, prompt_tokens: usize, completion_tokens: usize) -> Finished {
        Finished {
            reason,
            error: None,
            text: text.into(),
            prompt_tokens,
            completion_tokens,
            arrival: Time(0),
            scheduled: Some(Time(0)),
            first_token: Some(Time(1)),
            finished: Time(2),
            preemptions: 0,
        }
    }

    #[test]
    fn tokens_and_ends_become_typed_json_objects() {
        let token: Value = serde_json::from_str(&event_json(3, &Event::Token { token: 42, text: "é\"".into(), logprob: None })).unwrap();
        assert_eq!(token, json!({"type": "token", "id": 3, "token": 42, "text": "é\""}));
        let end = finished(FinishReason::Length, "tail", 5, 7);
        let failed = Finished { reason: FinishReason::Failed, error: Some("device lost".into()), ..end.clone() };
        let end: Value = serde_json::from_str(&event_json(3, &Event::Finished(end))).unwrap();
        assert_eq!(end["finish_reason"], "length");
        assert_eq!(end["text"], "tail");
        assert_eq!((end["prompt_tokens"].as_u64(), end["completion_tokens"].as_u64()), (Some(5), Some(7)));
        assert!(end.get("error").is_none());
        let failed: Value = serde_json::from_str(&event_json(3, &Event::Finished(failed))).unwrap();
        assert_eq!((&failed["finish_reason"], &failed["error"]), (&json!("error"), &json!("device lost")));
    }

    #[test]
    fn chat_events_carry_openai_chunks_and_the_whole_completion() {
        let mut reply = ChatReply::new(3, 100, "m".into());
        let event = |e: &Event, reply: &mut ChatReply| -> Value { serde_json::from_str(&reply.event_json(3, e)).unwrap() };
        let first = event(&Event::Token { token: 1, text: "Hel".into(), logprob: None }, &mut reply);
        assert_eq!(first["chunk"]["object"], "chat.completion.chunk");
        assert_eq!(first["chunk"]["id"], "chatcmpl-3");
        assert_eq!(first["chunk"]["choices"][0]["delta"], json!({"role": "assistant", "content": "Hel"}));
        let empty = event(&Event::Token { token: 2, text: String::new(), logprob: None }, &mut reply);
        assert!(empty.get("chunk").is_none(), "nothing to send: {empty}");
        let end = finished(FinishReason::Stop, "lo", 5, 3);
        let last = event(&Event::Finished(end), &mut reply);
        assert_eq!(last["chunk"]["choices"][0]["delta"], json!({"content": "lo"}));
        assert_eq!(last["chunk"]["choices"][0]["finish_reason"], "stop");
        assert_eq!(last["usage_chunk"]["usage"]["total_tokens"], 8);
        assert_eq!(last["usage_chunk"]["choices"], json!([]));
        assert_eq!(last["completion"]["object"], "chat.completion");
        assert_eq!(last["completion"]["choices"][0]["message"], json!({"role": "assistant", "content": "Hello"}));
    }
}
