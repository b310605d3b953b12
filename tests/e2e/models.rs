//! Several models in one server: `--model NAME=PATH` repeated, routing by `model`, aliases
//! that split traffic by weight (sticky per `user` when asked), `/admin/routes` and
//! `/admin/models` (loading and unloading while serving), per-model metrics, `/health`
//! and `--allow-partial`.

use std::time::{Duration, Instant};

use cinder_model::tiny::TinyModel;
use serde_json::json;

use crate::serve::Server;

fn write_model(test: &str, name: &str, spec: TinyModel) -> String {
    let path = crate::scratch_dir(test).join(format!("{name}.gguf"));
    std::fs::write(&path, spec.to_gguf()).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn two_models_are_routed_split_by_weight_and_loaded_and_unloaded_at_run_time() {
    let a = write_model("models", "a", TinyModel::default());
    let b = write_model("models", "b", TinyModel { seed: 7, context_length: 256, ..Default::default() });
    let config = crate::scratch_dir("models").join("cinder.toml");
    std::fs::write(&config, "[routing.aliases]\nchat = { a = 90, b = 10 }\n").unwrap();
    let server = Server::start(
        std::path::Path::new(&format!("a={a}")),
        &["--model", &format!("b={b}"), "--config", config.to_str().unwrap(), "--api-key", "admin", "--kv-cache-mb", "8"],
    );
    let auth = [("Authorization", "Bearer admin")];
    let post = |path: &str, body: serde_json::Value| server.request("POST", path, &auth, &body.to_string());
    let ask = |model: Option<&str>, user: Option<&str>| {
        let mut body = json!({"prompt": [5, 6, 7], "max_tokens": 1});
        if let Some(model) = model {
            body["model"] = json!(model);
        }
        if let Some(user) = user {
            body["user"] = json!(user);
        }
        post("/v1/completions", body)
    };

    let listed = server.request("GET", "/v1/models", &auth, "").json();
    let ids: Vec<&str> = listed["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b", "chat"]);
    assert_eq!((listed["data"][0]["max_model_len"].as_u64(), listed["data"][1]["max_model_len"].as_u64()), (Some(512), Some(256)));
    assert_eq!(listed["data"][2]["routes_to"], json!({"a": 90.0, "b": 10.0}));

    // By name, the first model by default, 404 for a name nobody serves.
    assert_eq!(ask(Some("b"), None).json()["model"], "b");
    assert_eq!(ask(Some("a"), None).json()["model"], "a");
    assert_eq!(ask(None, None).json()["model"], "a");
    let missing = ask(Some("c"), None);
    assert_eq!((missing.status, &missing.json()["error"]["code"]), (404, &json!("model_not_found")));

    // The alias splits 90/10: within 5 points over 400 requests; the answer names the model.
    let to_b = (0..400).filter(|_| ask(Some("chat"), None).json()["model"] == "b").count();
    assert!((20..=60).contains(&to_b), "{to_b} of 400 went to b");

    // Sticky: a user keeps its model; users spread over both.
    let routes = post("/admin/routes", json!({"aliases": {"chat": {"a": 50, "b": 50}}, "sticky": true}));
    assert_eq!(routes.status, 200, "{}", routes.body);
    let model_of = |user: &str| ask(Some("chat"), Some(user)).json()["model"].as_str().unwrap().to_owned();
    let first = model_of("u1");
    assert!((0..10).all(|_| model_of("u1") == first), "u1 sticks to {first}");
    let spread: std::collections::BTreeSet<String> = (0..20).map(|i| model_of(&format!("user-{i}"))).collect();
    assert_eq!(spread.len(), 2, "{spread:?}");
    let bad = post("/admin/routes", json!({"aliases": {"chat": {"a": 1, "z": 1}}}));
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("no model \\\"z\\\" is served"), "{}", bad.body);
    assert_eq!(server.request("GET", "/admin/routes", &[], "").status, 401, "behind the key");

    // Per-model metrics and health.
    assert!(server.metric("request_success_total{finished_reason=\"length\",model_name=\"b\",tenant=\"default\"}") >= 1.0);
    assert!(server.metric("generation_tokens_total{model_name=\"a\"}") >= 1.0);
    let health = server.request("GET", "/health", &[], "").json();
    assert_eq!((health["models"]["a"]["status"].as_str(), health["models"]["b"]["status"].as_str()), (Some("ready"), Some("ready")));

    // Load a third model, use it, unload it: 404 after, and its device memory is freed.
    let before = server.metric("device_memory_in_use_bytes");
    let loaded = post("/admin/models", json!({"name": "c", "path": a}));
    assert_eq!(loaded.status, 200, "{}", loaded.body);
    assert_eq!(ask(Some("c"), None).json()["model"], "c");
    let with_c = server.metric("device_memory_in_use_bytes");
    assert!(with_c >= before + 4.0 * 1024.0 * 1024.0, "c's KV cache: {before} -> {with_c}");
    assert_eq!(post("/admin/models", json!({"name": "c", "path": a})).status, 400, "the name is taken");
    let refused = server.request("DELETE", "/admin/models/b", &auth, "");
    assert_eq!(refused.status, 409, "an alias routes to b: {}", refused.body);
    // A request in flight when its model is unloaded finishes.
    let address = server.address.clone();
    let long = std::thread::spawn(move || {
        let body = json!({"model": "c", "prompt": [5, 6, 7], "max_tokens": 500, "ignore_eos": true});
        crate::serve::http(&address, "POST", "/v1/completions", &[("Authorization", "Bearer admin")], &body.to_string())
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(server.request("DELETE", "/admin/models/c", &auth, "").status, 200);
    assert_eq!(ask(Some("c"), None).status, 404);
    let long = long.join().unwrap();
    assert_eq!((long.status, long.json()["usage"]["completion_tokens"].as_u64()), (200, Some(500)), "{}", long.body);
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.metric("device_memory_in_use_bytes") > before + 1024.0 * 1024.0 {
        assert!(Instant::now() < deadline, "c's memory was not freed: {before} -> {with_c} -> {}", server.metric("device_memory_in_use_bytes"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ask(Some("a"), None).status, 200, "the others keep serving");
}

#[test]
fn a_model_that_fails_to_load_stops_the_server_unless_partial_is_allowed() {
    let a = write_model("models-partial", "a", TinyModel::default());
    let broken = crate::scratch_dir("models-partial").join("broken.gguf");
    std::fs::write(&broken, b"GGUF not really").unwrap();
    let broken = format!("broken={}", broken.display());
    let out = crate::cinder_command()
        .args(["serve", "--port", "0", "--model", &format!("a={a}"), "--model", &broken])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("model broken:") && stderr.contains("--allow-partial"), "{stderr}");
    let server = Server::start(std::path::Path::new(&format!("a={a}")), &["--model", &broken, "--allow-partial", "--api-key", "k"]);
    let health = server.request("GET", "/health", &[], "").json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["models"]["a"]["status"], "ready");
    assert_eq!(health["models"]["broken"]["status"], "failed");
    // Why it failed is the admin's to read.
    let health = server.request("GET", "/health", &[("Authorization", "Bearer k")], "").json();
    assert!(health["models"]["broken"]["error"].as_str().unwrap().contains("broken.gguf"), "{health}");
    let body = r#"{"model": "broken", "prompt": "hi", "max_tokens": 1}"#;
    assert_eq!(server.request("POST", "/v1/completions", &[("Authorization", "Bearer k")], body).status, 404);
}

#[test]
fn the_default_model_and_a_second_file_serve_side_by_side() {
    let tiny = write_model("models-real", "tiny", TinyModel::default());
    let real = crate::real_model_path();
    let server = Server::start(
        std::path::Path::new(&format!("smollm={}", real.display())),
        &["--model", &format!("tiny={tiny}"), "--kv-cache-mb", "32"],
    );
    let ask = |model: &str| {
        let body = json!({"model": model, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0});
        server.post("/v1/completions", &body.to_string()).json()
    };
    let answer = ask("smollm");
    assert_eq!(answer["model"], "smollm");
    assert!(answer["choices"][0]["text"].as_str().unwrap().contains("Paris"), "{answer}");
    assert_eq!(ask("tiny")["model"], "tiny");
    let chat = json!({"model": "smollm", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4});
    assert_eq!(server.post("/v1/chat/completions", &chat.to_string()).status, 200);
    assert!(server.metric("generation_tokens_total{model_name=\"smollm\"}") >= 4.0);
    assert!(server.metric("generation_tokens_total{model_name=\"tiny\"}") >= 1.0);
}
