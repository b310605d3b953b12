//! Speculative decoding through the server's doors: `--speculative`, the `[speculative]`
//! config section, the request's `speculative` field, the usage block and the metrics.


use serde_json::json;

use crate::serve::{Server, tiny_model};

/// A prompt of token ids that repeats itself: the n-gram proposer finds its suffix earlier.
fn repeating_prompt() -> Vec<u32> {
    [11u32, 40, 75, 3, 120, 9].repeat(4)
}

#[test]
fn the_server_speculates_by_default_or_per_request_and_reports_it() {
    let server = Server::start(&tiny_model("speculative"), &["--speculative", "ngram:4"]);
    let body = |extra: serde_json::Value| {
        let mut body = json!({"prompt": repeating_prompt(), "max_tokens": 40, "temperature": 0, "ignore_eos": true});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body.to_string()
    };
    let speculated = server.post("/v1/completions", &body(json!({})));
    assert_eq!(speculated.status, 200, "{}", speculated.body);
    let speculated = speculated.json();
    let usage = &speculated["usage"]["speculative"];
    let (drafted, accepted) = (usage["draft_tokens"].as_u64().unwrap(), usage["accepted_tokens"].as_u64().unwrap());
    assert!(drafted > 0 && accepted > 0 && accepted <= drafted, "{usage}");
    assert!((usage["acceptance_rate"].as_f64().unwrap() - accepted as f64 / drafted as f64).abs() < 1e-9);

    // The same request without speculation: the same greedy text, no speculative usage.
    let plain = server.post("/v1/completions", &body(json!({"speculative": {"method": "off"}}))).json();
    assert_eq!(plain["choices"][0]["text"], speculated["choices"][0]["text"]);
    assert_eq!(plain["usage"]["completion_tokens"], speculated["usage"]["completion_tokens"]);
    assert!(plain["usage"].get("speculative").is_none(), "{}", plain["usage"]);
    let own = server.post("/v1/completions", &body(json!({"speculative": {"method": "ngram", "num_tokens": 2}}))).json();
    assert_eq!(own["choices"][0]["text"], speculated["choices"][0]["text"]);

    // The worker publishes its counters after the step that ended a request, which may be
    // a moment after the response went out.
    let expected = drafted + own["usage"]["speculative"]["draft_tokens"].as_u64().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while server.metric("spec_decode_num_draft_tokens_total") as u64 != expected && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(server.metric("spec_decode_num_draft_tokens_total") as u64, expected);
    assert!(server.metric("spec_decode_num_accepted_tokens_total") >= accepted as f64);

    for (speculative, param, says) in [
        (json!({"method": "ngram", "num_tokens": 0}), "speculative.num_tokens", "must be in [1, 16]"),
        (json!({"method": "medusa"}), "speculative.method", "unknown variant `medusa`"),
        (json!({"method": "ngram", "k": 3}), "speculative.k", "does not implement"),
    ] {
        let r = server.post("/v1/completions", &body(json!({ "speculative": speculative })));
        let error = &r.json()["error"];
        assert_eq!((r.status, error["param"].as_str()), (400, Some(param)), "{}", r.body);
        assert!(error["message"].as_str().unwrap().contains(says), "{}", r.body);
    }
    let r = server.post("/v1/completions", &body(json!({"speculative": {"method": "draft"}})));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("needs a draft model"), "{}", r.body);
    assert_eq!(server.post("/v1/completions", &body(json!({}))).status, 200, "the server keeps serving");
}

#[test]
fn the_default_is_set_by_flag_or_config_file_and_checked_at_start() {
    let cinder = |args: &[&str]| crate::cinder_command().args(args).output().unwrap();
    let file = crate::scratch_dir("speculative-config").join("cinder.toml");
    std::fs::write(&file, "[speculative]\nmethod = \"ngram\"\nnum_tokens = 5\nmax_batch = 4\n").unwrap();
    let out = cinder(&["serve", "--config", file.to_str().unwrap(), "--print-config"]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("[speculative]\nmethod = \"ngram\"\nnum_tokens = 5\nmax_batch = 4"), "{printed}");
    let out = cinder(&["serve", "--config", file.to_str().unwrap(), "--speculative", "off", "--print-config"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("method = \"off\""));
    for (args, says) in [
        (vec!["serve", "--speculative", "ngram:0", "--print-config"], "must be in [1, 16]"),
        (vec!["serve", "--speculative", "lookahead", "--print-config"], "unknown speculative method"),
    ] {
        let out = cinder(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{args:?}: {stderr}");
    }
    std::fs::write(&file, "[speculative]\nnum_tokens = 99\n").unwrap();
    let out = cinder(&["serve", "--config", file.to_str().unwrap(), "--print-config"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("`speculative.num_tokens`"), "{}", String::from_utf8_lossy(&out.stderr));
    let model = tiny_model("speculative-draft");
    let out = cinder(&["serve", "--port", "0", "--model", model.to_str().unwrap(), "--speculative", "draft:3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("needs a draft model"), "{stderr}");
}

#[test]
fn a_draft_model_proposes_when_asked_and_must_share_the_vocabulary() {
    let target = tiny_model("speculative-draft-model");
    let server = Server::start(&target, &["--draft-model", target.to_str().unwrap(), "--speculative", "draft:3"]);
    let body = |speculative: serde_json::Value| {
        json!({"prompt": [5, 9, 14, 77], "max_tokens": 24, "temperature": 0, "ignore_eos": true, "speculative": speculative}).to_string()
    };
    let drafted = server.post("/v1/completions", &body(json!({"method": "draft", "num_tokens": 3}))).json();
    let plain = server.post("/v1/completions", &body(json!({"method": "off"}))).json();
    assert_eq!(drafted["choices"][0]["text"], plain["choices"][0]["text"]);
    // The draft is the target itself: every proposal is what the target picks.
    let usage = &drafted["usage"]["speculative"];
    assert!(usage["draft_tokens"].as_u64().unwrap() > 0 && usage["acceptance_rate"] == 1.0, "{usage}");
    let default = server.post("/v1/completions", &json!({"prompt": [5, 9, 14, 77], "max_tokens": 24, "temperature": 0, "ignore_eos": true}).to_string()).json();
    assert!(default["usage"]["speculative"]["draft_tokens"].as_u64().unwrap() > 0, "--speculative draft:3 is the default");
    drop(server);

    // A draft model with another vocabulary (the real model's) is refused at start.
    let cinder = |args: &[&str]| crate::cinder_command().args(args).output().unwrap();
    let real = crate::real_model_path();
    let out = cinder(&["serve", "--port", "0", "--model", target.to_str().unwrap(), "--draft-model", real.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--draft-model") && stderr.contains("same vocabulary"), "{stderr}");
    let out = cinder(&["serve", "--port", "0", "--model", target.to_str().unwrap(), "--draft-model", "/nonexistent.gguf"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--draft-model /nonexistent.gguf"), "{stderr}");
}
