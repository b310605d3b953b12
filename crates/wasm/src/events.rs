//! Engine events as the page receives them: one JSON object per event.
//!
//! `{"type": "token", "id", "index", "token", "text"}` for each token of choice `index`
//! (the text it releases; empty while a character or a possible stop string is
//! incomplete), and one `{"type": "finished", "id", "index", "finish_reason", "text",
//! "prompt_tokens", "completion_tokens"}` per choice, where `text` is what was held back
//! until the end and `finish_reason` is OpenAI's (`stop`, `length`, `abort`), or `error`
//! with an `error` message when the device kept failing the request's steps. The request's
//! last event (every choice of `n` finished) carries `"done": true`. With `logprobs`, a
//! token event carries `logprobs`: OpenAI's completions object for that token.
//!
//! A chat request's events also carry its OpenAI answer, built by the same typed module as
//! the server's ([`cinder_engine::openai::response`]): `chunk`, the `chat.completion.chunk`
//! the event makes (absent when it makes none), and on the last event `usage_chunk` and
//! `completion`, the whole `chat.completion` with every choice. An embeddings request's
//! last event carries `embeddings`, the whole answer of `/v1/embeddings` (each input a
//! choice).

use cinder_engine::Event;
use cinder_engine::openai::response::{self, Body, Endpoint, Usage};
use cinder_engine::openai::stream::{ChunkSequencer, Extras};
use cinder_engine::openai::embeddings::finish_vector;
use cinder_engine::openai::{ToolOutput, finish_reason};
use cinder_tokenizer::Tokenizer;
use serde_json::{Value, json};

/// What a chat answer is labelled with.
struct ChatLabel {
    id: String,
    created: u64,
    model: String,
}

/// An embeddings request's vectors as its inputs finish.
struct Embeddings {
    model: String,
    dimensions: Option<usize>,
    base64: bool,
    vectors: Vec<Vec<f32>>,
    prompt_tokens: usize,
}

/// A request's answer so far: its `n` choices, and the OpenAI objects of a chat or
/// embeddings request.
pub struct Reply {
    id: u64,
    n: usize,
    logprobs: bool,
    chunks: ChunkSequencer,
    chat: Option<ChatLabel>,
    embeddings: Option<Embeddings>,
}

impl Reply {
    /// The answer of engine request `id` (its first choice's sequence) with `n` choices,
    /// reporting `logprobs` when the body asked for them.
    pub fn new(id: u64, n: usize, logprobs: bool) -> Self {
        let chunks = Self::sequencer(Endpoint::Completion, id, n, logprobs, ToolOutput::Text);
        Self { id, n, logprobs, chunks, chat: None, embeddings: None }
    }

    fn sequencer(endpoint: Endpoint, id: u64, n: usize, logprobs: bool, tools: ToolOutput) -> ChunkSequencer {
        let extras = Extras { logprobs, token_ids: false };
        ChunkSequencer::new(endpoint, format!("{}-{id}", endpoint.id_prefix()), n, n, tools, extras)
    }

    /// Also builds the chat answer, made at `created` (Unix seconds) by `model`, whose
    /// choices may be tool calls as `tools` says.
    pub fn chat(self, created: u64, model: String, tools: ToolOutput) -> Self {
        let chunks = Self::sequencer(Endpoint::Chat, self.id, self.n, self.logprobs, tools);
        let chat = ChatLabel { id: format!("{}-{}", Endpoint::Chat.id_prefix(), self.id), created, model };
        Self { chunks, chat: Some(chat), ..self }
    }

    /// Also builds the embeddings answer of `model`: each choice an input's vector, cut to
    /// `dimensions`, as numbers or `base64`.
    pub fn embeddings(self, model: String, dimensions: Option<usize>, base64: bool) -> Self {
        let vectors = vec![Vec::new(); self.n];
        Self { embeddings: Some(Embeddings { model, dimensions, base64, vectors, prompt_tokens: 0 }), ..self }
    }

    /// Whether every choice finished.
    pub fn done(&self) -> bool {
        self.chunks.done()
    }

    fn body(chat: &ChatLabel, object: &'static str, choices: Vec<response::Choice>, usage: Option<Usage>) -> Value {
        let body = Body { id: &chat.id, object, created: chat.created, model: &chat.model, choices, usage, prompt_token_ids: None };
        serde_json::to_value(body).expect("a response is plain data")
    }

    /// Choice `index`'s `event` as the page's JSON.
    pub fn event_json(&mut self, tokenizer: &Tokenizer, index: usize, event: &Event) -> String {
        let id = self.id;
        let mut value = match event {
            Event::Token { token, text, .. } => json!({"type": "token", "id": id, "index": index, "token": token, "text": text}),
            Event::Finished(f) => {
                let mut value = json!({
                    "type": "finished",
                    "id": id,
                    "index": index,
                    "finish_reason": finish_reason(f.reason),
                    "text": f.text,
                    "prompt_tokens": f.prompt_tokens,
                    "completion_tokens": f.completion_tokens,
                });
                if let Some(error) = &f.error {
                    value["error"] = json!(error);
                }
                if let Some(speculative) = f.speculative {
                    value["speculative"] = json!({
                        "draft_tokens": speculative.draft_tokens,
                        "accepted_tokens": speculative.accepted_tokens,
                        "acceptance_rate": speculative.acceptance_rate(),
                    });
                }
                value
            }
        };
        if let (Event::Finished(f), Some(embeddings)) = (event, &mut self.embeddings) {
            embeddings.prompt_tokens += f.prompt_tokens;
            if let (Some(vector), Some(slot)) = (&f.embedding, embeddings.vectors.get_mut(index)) {
                *slot = finish_vector(vector.clone(), embeddings.dimensions);
            }
        }
        let chunk = self.chunks.event(tokenizer, index, event);
        match (&self.chat, chunk) {
            (Some(chat), Some(choice)) => value["chunk"] = Self::body(chat, Endpoint::Chat.chunk_object(), vec![choice], None),
            (None, Some(choice)) if !choice.logprobs.is_null() => value["logprobs"] = choice.logprobs,
            _ => {}
        }
        if matches!(event, Event::Finished(_)) && self.done() {
            value["done"] = json!(true);
            if let Some(e) = &self.embeddings {
                value["embeddings"] = response::embeddings(&e.model, &e.vectors, e.base64, e.prompt_tokens);
            }
            if let Some(chat) = &self.chat {
                let usage = Some(self.chunks.usage());
                value["usage_chunk"] = Self::body(chat, Endpoint::Chat.chunk_object(), Vec::new(), usage);
                value["completion"] = Self::body(chat, Endpoint::Chat.object(), self.chunks.whole(tokenizer), usage);
            }
        }
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use cinder_engine::openai::ToolFormat;
    use cinder_engine::{Finished, TokenLogprob};
    use cinder_gguf::GgufFile;
    use cinder_model::tiny::TinyModel;
    use cinder_scheduler::{FinishReason, Time};
    use serde_json::Value;

    use super::*;

    fn tokenizer() -> Tokenizer {
        let file = GgufFile::from_bytes(TinyModel::default().to_gguf()).unwrap();
        Tokenizer::from_gguf(file.metadata()).unwrap()
    }

    /// A choice's end after `prompt_tokens` and `completion_tokens`, timed 0, 1, 2.
    fn finished(reason: FinishReason, text: &str, prompt_tokens: usize, completion_tokens: usize) -> Event {
        Event::Finished(Finished {
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
            speculative: None,
            embedding: None,
            stop_sequence: None,
        })
    }

    fn token(token: u32, text: &str, logprob: Option<TokenLogprob>) -> Event {
        Event::Token { token, text: text.into(), logprob }
    }

    fn json(reply: &mut Reply, tokenizer: &Tokenizer, index: usize, event: &Event) -> Value {
        serde_json::from_str(&reply.event_json(tokenizer, index, event)).unwrap()
    }

    #[test]
    fn tokens_and_ends_become_typed_json_objects() {
        let tokenizer = tokenizer();
        let mut reply = Reply::new(3, 1, false);
        let first = json(&mut reply, &tokenizer, 0, &token(42, "é\"", Some(TokenLogprob { logprob: -0.5, top: vec![] })));
        assert_eq!(first, json!({"type": "token", "id": 3, "index": 0, "token": 42, "text": "é\""}), "no logprobs unless asked");
        let failed = Event::Finished(match finished(FinishReason::Length, "tail", 5, 7) {
            Event::Finished(f) => Finished { reason: FinishReason::Failed, error: Some("device lost".into()), ..f },
            _ => unreachable!(),
        });
        let end = json(&mut Reply::new(3, 1, false), &tokenizer, 0, &finished(FinishReason::Length, "tail", 5, 7));
        assert_eq!(end["finish_reason"], "length");
        assert_eq!(end["text"], "tail");
        assert_eq!((end["prompt_tokens"].as_u64(), end["completion_tokens"].as_u64()), (Some(5), Some(7)));
        assert_eq!(end["done"], true);
        assert!(end.get("error").is_none());
        let failed = json(&mut reply, &tokenizer, 0, &failed);
        assert_eq!((&failed["finish_reason"], &failed["error"]), (&json!("error"), &json!("device lost")));
    }

    #[test]
    fn chat_events_carry_openai_chunks_and_the_whole_completion() {
        let tokenizer = tokenizer();
        let mut reply = Reply::new(3, 1, false).chat(100, "m".into(), ToolOutput::Text);
        let first = json(&mut reply, &tokenizer, 0, &token(1, "Hel", None));
        assert_eq!(first["chunk"]["object"], "chat.completion.chunk");
        assert_eq!(first["chunk"]["id"], "chatcmpl-3");
        assert_eq!(first["chunk"]["choices"][0]["delta"], json!({"role": "assistant", "content": "Hel"}));
        let empty = json(&mut reply, &tokenizer, 0, &token(2, "", None));
        assert!(empty.get("chunk").is_none(), "nothing to send: {empty}");
        let last = json(&mut reply, &tokenizer, 0, &finished(FinishReason::Stop, "lo", 5, 3));
        assert_eq!(last["chunk"]["choices"][0]["delta"], json!({"content": "lo"}));
        assert_eq!(last["chunk"]["choices"][0]["finish_reason"], "stop");
        assert_eq!(last["usage_chunk"]["usage"]["total_tokens"], 8);
        assert_eq!(last["usage_chunk"]["choices"], json!([]));
        assert_eq!(last["completion"]["object"], "chat.completion");
        assert_eq!(last["completion"]["choices"][0]["message"], json!({"role": "assistant", "content": "Hello"}));
        assert!(last["completion"]["choices"][0].get("logprobs").is_none_or(Value::is_null));
    }

    #[test]
    fn n_choices_end_together_with_every_choice_in_the_completion() {
        let tokenizer = tokenizer();
        let mut reply = Reply::new(8, 2, false).chat(100, "m".into(), ToolOutput::Text);
        let a = json(&mut reply, &tokenizer, 1, &token(1, "b", None));
        assert_eq!(a["index"], 1);
        assert_eq!(a["chunk"]["choices"][0]["index"], 1);
        json(&mut reply, &tokenizer, 0, &token(1, "a", None));
        let one = json(&mut reply, &tokenizer, 1, &finished(FinishReason::Length, "", 4, 1));
        assert!(one.get("done").is_none() && one.get("completion").is_none(), "choice 0 is still running: {one}");
        let both = json(&mut reply, &tokenizer, 0, &finished(FinishReason::Stop, "!", 4, 2));
        assert_eq!(both["done"], true);
        assert_eq!(both["usage_chunk"]["usage"], json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}));
        let choices = &both["completion"]["choices"];
        assert_eq!((&choices[0]["message"]["content"], &choices[0]["finish_reason"]), (&json!("a!"), &json!("stop")));
        assert_eq!((&choices[1]["message"]["content"], &choices[1]["finish_reason"]), (&json!("b"), &json!("length")));
    }

    #[test]
    fn embeddings_answer_once_every_input_finished() {
        let tokenizer = tokenizer();
        let mut reply = Reply::new(6, 2, false).embeddings("m".into(), Some(2), false);
        let with = |vector: Vec<f32>, prompt: usize| match finished(FinishReason::Length, "", prompt, 0) {
            Event::Finished(f) => Event::Finished(Finished { embedding: Some(vector), ..f }),
            _ => unreachable!(),
        };
        let one = json(&mut reply, &tokenizer, 1, &with(vec![0.0, 2.0, 9.0], 3));
        assert!(one.get("embeddings").is_none(), "input 0 is still running: {one}");
        let both = json(&mut reply, &tokenizer, 0, &with(vec![3.0, 4.0, 9.0], 4));
        assert_eq!(both["done"], true);
        let answer = &both["embeddings"];
        assert_eq!(answer["object"], "list");
        assert_eq!(answer["data"][0], json!({"object": "embedding", "index": 0, "embedding": [0.6f32, 0.8f32]}));
        assert_eq!(answer["data"][1]["embedding"], json!([0.0, 1.0]));
        assert_eq!(answer["usage"], json!({"prompt_tokens": 7, "total_tokens": 7}));
    }

    #[test]
    fn a_call_list_streams_as_written_and_is_answered_as_tool_calls() {
        let tokenizer = tokenizer();
        let mut reply = Reply::new(4, 1, false).chat(100, "m".into(), ToolOutput::Calls(ToolFormat::JsonList));
        // The call's name goes out once written, with the role; then its arguments.
        let named = json(&mut reply, &tokenizer, 0, &token(1, r#"[{"name": "get_weather", "#, None));
        let delta = &named["chunk"]["choices"][0]["delta"];
        assert_eq!((&delta["role"], delta.get("content")), (&json!("assistant"), None), "{named}");
        let piece = &delta["tool_calls"][0];
        assert_eq!((&piece["index"], &piece["type"], &piece["function"]), (&json!(0), &json!("function"), &json!({"name": "get_weather", "arguments": ""})));
        let arguments = json(&mut reply, &tokenizer, 0, &token(2, r#""arguments": {"city": "Paris"}}]"#, None));
        let piece = &arguments["chunk"]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(piece, &json!({"index": 0, "function": {"arguments": r#"{"city": "Paris"}"#}}));
        let end = json(&mut reply, &tokenizer, 0, &finished(FinishReason::Stop, "", 5, 2));
        let delta = &end["chunk"]["choices"][0];
        assert_eq!((&delta["finish_reason"], &delta["delta"]), (&json!("tool_calls"), &json!({})), "{end}");
        let message = &end["completion"]["choices"][0];
        assert_eq!((&message["finish_reason"], &message["message"]["content"]), (&json!("tool_calls"), &Value::Null));
        let call = &message["message"]["tool_calls"][0];
        assert_eq!(call["function"]["arguments"], r#"{"city":"Paris"}"#);
        assert_eq!(call["type"], "function");

        // Under `auto`, text that cannot be a list goes out as text.
        let mut reply = Reply::new(5, 1, false).chat(100, "m".into(), ToolOutput::MaybeCalls(ToolFormat::JsonList));
        let text = json(&mut reply, &tokenizer, 0, &token(1, "Sunny", None));
        assert_eq!(text["chunk"]["choices"][0]["delta"]["content"], "Sunny");
        let end = json(&mut reply, &tokenizer, 0, &finished(FinishReason::Stop, "", 5, 1));
        assert_eq!(end["completion"]["choices"][0]["message"]["content"], "Sunny");
    }

    #[test]
    fn logprobs_go_out_per_token_and_whole_in_the_endpoints_shapes() {
        let tokenizer = tokenizer();
        let lp = |logprob| Some(TokenLogprob { logprob, top: vec![(104, logprob), (105, -3.0)] });
        let mut plain = Reply::new(1, 1, true);
        json(&mut plain, &tokenizer, 0, &token(104, "h", lp(-0.25)));
        let second = json(&mut plain, &tokenizer, 0, &token(105, "i", lp(-0.5)));
        let logprobs = &second["logprobs"];
        assert_eq!(logprobs["token_logprobs"], json!([-0.5]));
        assert_eq!(logprobs["text_offset"], json!([1]), "after the first token's text: {logprobs}");
        assert_eq!(logprobs["top_logprobs"][0].as_object().unwrap().len(), 2, "{logprobs}");

        let mut chat = Reply::new(2, 1, true).chat(100, "m".into(), ToolOutput::Text);
        let streamed = json(&mut chat, &tokenizer, 0, &token(104, "h", lp(-0.25)));
        let content = &streamed["chunk"]["choices"][0]["logprobs"]["content"];
        assert_eq!((content[0]["logprob"].as_f64(), content[0]["top_logprobs"].as_array().map(Vec::len)), (Some(-0.25), Some(2)));
        json(&mut chat, &tokenizer, 0, &token(105, "i", lp(-0.5)));
        let end = json(&mut chat, &tokenizer, 0, &finished(FinishReason::Length, "", 3, 2));
        let whole = &end["completion"]["choices"][0]["logprobs"]["content"];
        assert_eq!(whole.as_array().map(Vec::len), Some(2), "{end}");
        assert_eq!(whole[1]["logprob"], -0.5);
    }
}
