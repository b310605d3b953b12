//! Engine events as the page receives them: one JSON object per event.
//!
//! `{"type": "token", "id", "token", "text"}` for each generated token (the text it
//! releases; empty while a character or a possible stop string is incomplete), then one
//! `{"type": "finished", "id", "finish_reason", "text", "prompt_tokens",
//! "completion_tokens"}`, where `text` is what was held back until the end and
//! `finish_reason` is OpenAI's (`stop`, `length`, `abort`), or `error` with an `error`
//! message when the device kept failing the request's steps.

use cinder_engine::Event;
use cinder_engine::openai::finish_reason;
use serde_json::json;

pub fn event_json(id: u64, event: &Event) -> String {
    let value = match event {
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
    };
    value.to_string()
}

#[cfg(test)]
mod tests {
    use cinder_engine::Finished;
    use cinder_scheduler::{FinishReason, Time};
    use serde_json::Value;

    use super::*;

    #[test]
    fn tokens_and_ends_become_typed_json_objects() {
        let token: Value = serde_json::from_str(&event_json(3, &Event::Token { token: 42, text: "é\"".into(), logprob: None })).unwrap();
        assert_eq!(token, json!({"type": "token", "id": 3, "token": 42, "text": "é\""}));
        let end = Finished {
            reason: FinishReason::Length,
            error: None,
            text: "tail".into(),
            prompt_tokens: 5,
            completion_tokens: 7,
            arrival: Time(0),
            scheduled: Some(Time(0)),
            first_token: Some(Time(1)),
            finished: Time(2),
            preemptions: 0,
        };
        let failed = Finished { reason: FinishReason::Failed, error: Some("device lost".into()), ..end.clone() };
        let end: Value = serde_json::from_str(&event_json(3, &Event::Finished(end))).unwrap();
        assert_eq!(end["finish_reason"], "length");
        assert_eq!(end["text"], "tail");
        assert_eq!((end["prompt_tokens"].as_u64(), end["completion_tokens"].as_u64()), (Some(5), Some(7)));
        assert!(end.get("error").is_none());
        let failed: Value = serde_json::from_str(&event_json(3, &Event::Finished(failed))).unwrap();
        assert_eq!((&failed["finish_reason"], &failed["error"]), (&json!("error"), &json!("device lost")));
    }
}
