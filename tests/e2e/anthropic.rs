//! Anthropic's Messages API through Anthropic's own Python client, and its errors.

use crate::serve::{Server, run_client};

/// Greedy messages equal to chat's, streamed and not, a forced tool call and its result,
/// `count_tokens`, and a wrong `x-api-key`: `tests/e2e/anthropic_client.py` on the real model.
#[test]
fn the_anthropic_client_gets_messages_streams_and_tool_calls() {
    let server = Server::start(&crate::real_model_path(), &["--api-key", "secret", "--served-model-name", "smollm2"]);
    run_client("anthropic_client.py", &format!("http://{}", server.address), "smollm2", "secret");
}

#[test]
fn messages_errors_come_in_anthropics_shape_and_chats_stay_openais() {
    let server = Server::start(&crate::serve::tiny_model("anthropic-errors"), &["--api-key", "k3y"]);
    let key = [("x-api-key", "k3y")];
    let error = |status: u16, path: &str, headers: &[(&str, &str)], body: &str| -> serde_json::Value {
        let answer = server.request("POST", path, headers, body);
        assert_eq!(answer.status, status, "{}", answer.body);
        let json = answer.json();
        assert_eq!(json["type"], "error", "{json}");
        json["error"].clone()
    };
    let hello = r#""messages": [{"role": "user", "content": "hi"}]"#;
    let e = error(400, "/v1/messages", &key, &format!("{{{hello}}}"));
    assert_eq!(e["type"], "invalid_request_error");
    assert!(e["message"].as_str().unwrap().contains("`max_tokens` is required"), "{e}");
    let e = error(400, "/v1/messages", &key, &format!(r#"{{{hello}, "max_tokens": 4, "thinking": {{"type": "enabled"}}}}"#));
    assert!(e["message"].as_str().unwrap().contains("`thinking`: cinder does not implement this field"), "{e}");
    let e = error(401, "/v1/messages", &[], &format!(r#"{{{hello}, "max_tokens": 4}}"#));
    assert_eq!(e["type"], "authentication_error");
    let e = error(404, "/v1/messages", &key, &format!(r#"{{{hello}, "max_tokens": 4, "model": "claude-9"}}"#));
    assert_eq!(e["type"], "not_found_error");
    let e = error(400, "/v1/messages/count_tokens", &key, "{\"messages\": ");
    assert!(e["message"].as_str().unwrap().contains("not valid JSON"), "{e}");
    // The bearer key works here too, and the tiny model answers.
    let answer = server.request("POST", "/v1/messages", &[("Authorization", "Bearer k3y")], &format!(r#"{{{hello}, "max_tokens": 3}}"#));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let message = answer.json();
    assert_eq!((message["type"].as_str(), message["usage"]["output_tokens"].as_u64()), (Some("message"), Some(3)), "{message}");
    assert_eq!(message["stop_reason"], "max_tokens");
    let counted = server.request("POST", "/v1/messages/count_tokens", &key, &format!("{{{hello}}}"));
    assert_eq!(counted.json()["input_tokens"], message["usage"]["input_tokens"], "{}", counted.body);
    // Chat keeps OpenAI's errors.
    let chat = server.request("POST", "/v1/chat/completions", &[], "{}");
    assert_eq!((chat.status, chat.json()["error"]["type"].as_str()), (401, Some("authentication_error")), "{}", chat.body);
}
