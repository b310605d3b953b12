//! LoRA adapters through `cinder serve`, on the real default model on the CPU: the OpenAI
//! client naming an adapter as its model (and as `lora` beside the base model), adapters
//! and the base model batched together giving what each gives alone, an adapter unloaded
//! while its request streams (the request finishes; new ones get 404; the slot frees once
//! it ends), `max_loras`, tenants limited to adapters, and the metrics.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::serve::{Server, python};

/// Writes a random adapter for the default model with `cinder synth-lora`.
fn adapter(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let path = dir.join(format!("{name}.gguf"));
    let status = crate::cinder_command().arg("synth-lora").arg("--out").arg(&path).args(args).status().unwrap();
    assert!(status.success());
    path
}

const KEY: (&str, &str) = ("Authorization", "Bearer secret");

fn greedy(server: &Server, model: &str, extra: &str) -> (u16, serde_json::Value) {
    let body = format!(r#"{{"model": "{model}", "prompt": "The capital of France is", "max_tokens": 16, "temperature": 0{extra}}}"#);
    let answer = server.request("POST", "/v1/completions", &[KEY], &body);
    (answer.status, serde_json::from_str(&answer.body).unwrap_or_default())
}

fn text(answer: &(u16, serde_json::Value)) -> String {
    assert_eq!(answer.0, 200, "{}", answer.1);
    answer.1["choices"][0]["text"].as_str().unwrap().to_owned()
}

#[test]
fn adapters_are_served_by_name_batched_together_and_swapped_under_traffic() {
    let dir = crate::scratch_dir("lora_serve");
    let sql = adapter(&dir, "sql", &["--rank", "8", "--seed", "1"]);
    let chat = adapter(&dir, "chat", &["--rank", "16", "--alpha", "32", "--type", "f16", "--targets", "q,v,o,down", "--seed", "2"]);
    let config = dir.join("tenants.toml");
    std::fs::write(&config, "[[tenants]]\nname = \"chat-only\"\napi_keys = [\"chat-key\"]\nloras = [\"chat\"]\n").unwrap();
    let server = Server::start(&crate::real_model_path(), &[
        "--device", "cpu", "--api-key", "secret", "--served-model-name", "smollm2", "--max-loras", "2", "--config", config.to_str().unwrap(),
        "--lora", &format!("sql={}", sql.display()), "--lora", &format!("chat={}:0.5", chat.display()),
    ]);

    // The OpenAI client: adapters listed with their base, selected by model name.
    let script = dir.join("client.py");
    std::fs::write(&script, r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="secret")
models = {m.id: getattr(m, "parent", None) for m in client.models.list().data}
by_name = client.completions.create(model="sql", prompt="The capital of France is", max_tokens=16, temperature=0)
by_field = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=16, temperature=0, extra_body={"lora": "chat"})
chat = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0)
print(json.dumps({"models": models, "sql": [by_name.model, by_name.choices[0].text], "chat": [by_field.model, by_field.choices[0].text], "chat_model": chat.model}))
"#).unwrap();
    let output = Command::new(python()).arg(&script).arg(format!("http://{}/v1", server.address)).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let client: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(client["models"], serde_json::json!({"smollm2": null, "sql": "smollm2", "chat": "smollm2"}));
    assert_eq!(client["sql"][0], "sql");
    assert_eq!(client["chat"][0], "chat");
    assert_eq!(client["chat_model"], "chat");

    // Alone, then the three at once (one batch): the same greedy text each.
    let alone: Vec<String> = ["smollm2", "sql", "chat"].iter().map(|m| text(&greedy(&server, m, ""))).collect();
    assert_ne!(alone[0], alone[1], "the adapter changes the output");
    assert_eq!(alone[1], client["sql"][1], "the client's and the raw request's");
    assert_eq!(alone[2], client["chat"][1], "`lora` and `model` select the same adapter");
    let together: Vec<String> = std::thread::scope(|scope| {
        let running: Vec<_> = ["smollm2", "sql", "chat"].iter().map(|m| scope.spawn(|| text(&greedy(&server, m, "")))).collect();
        running.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(together, alone);

    // Refusals: an unknown adapter, one naming another, a tenant's adapter list, max_loras.
    let (status, body) = greedy(&server, "smollm2", r#", "lora": "nope""#);
    assert_eq!((status, body["error"]["param"].as_str()), (404, Some("lora")), "{body}");
    let (status, _) = greedy(&server, "sql", r#", "lora": "chat""#);
    assert_eq!(status, 400);
    let limited = server.request("POST", "/v1/completions", &[("Authorization", "Bearer chat-key")], r#"{"model": "sql", "prompt": "Hi", "max_tokens": 2}"#);
    assert_eq!(limited.status, 403, "{}", limited.body);
    assert!(limited.body.contains("may not run with LoRA adapter"), "{}", limited.body);
    let allowed = server.request("POST", "/v1/completions", &[("Authorization", "Bearer chat-key")], r#"{"model": "chat", "prompt": "Hi", "max_tokens": 2}"#);
    assert_eq!(allowed.status, 200, "{}", allowed.body);

    // Unload sql while a request of it streams: it finishes whole, new ones get 404, and
    // its slot stays taken (max_loras 2) until it ends.
    // The stream has started once the engine has counted it: a counter only grows, where a
    // gauge's snapshot may still show the request before it.
    let sql_requests = "lora_requests_total{lora_name=\"sql\",model_name=\"smollm2\"}";
    let counted = server.metric(sql_requests);
    let streamed = std::thread::scope(|scope| {
        let stream = scope.spawn(|| {
            let body = r#"{"model": "sql", "prompt": "Once upon a time", "max_tokens": 160, "ignore_eos": true, "temperature": 0, "stream": true}"#;
            server.request("POST", "/v1/completions", &[KEY], body)
        });
        let started = Instant::now();
        while server.metric(sql_requests) <= counted {
            assert!(started.elapsed() < Duration::from_secs(60), "the stream never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        let unloaded = server.request("DELETE", "/admin/loras/sql", &[KEY], "");
        assert_eq!(unloaded.status, 200, "{}", unloaded.body);
        assert_eq!(greedy(&server, "sql", "").0, 404);
        let third = format!(r#"{{"name": "sql2", "path": "{}"}}"#, sql.display());
        let full = server.request("POST", "/admin/loras", &[KEY], &third);
        let still_running = server.metric("num_requests_running") >= 1.0;
        let stream = stream.join().unwrap();
        (full, still_running, stream)
    });
    let (full, still_running, stream) = streamed;
    if still_running {
        assert_eq!(full.status, 409, "{}", full.body);
        assert!(full.body.contains("max_loras 2"), "{}", full.body);
    }
    assert_eq!(stream.status, 200);
    let tokens = stream.body.lines().filter(|l| l.starts_with("data: {") && !l.contains("\"text\":\"\"")).count();
    assert!(stream.body.contains("\"finish_reason\":\"length\""), "{}", stream.body);
    assert!(tokens > 100, "{tokens} chunks: {}", stream.body);

    // Its slot is free again: the same file under a new name gives the same text.
    let reload = server.request("POST", "/admin/loras", &[KEY], &format!(r#"{{"name": "sql2", "path": "{}"}}"#, sql.display()));
    assert_eq!(reload.status, 200, "{}", reload.body);
    assert_eq!(text(&greedy(&server, "sql2", "")), alone[1]);
    let listed = server.request("GET", "/admin/loras", &[KEY], "").json();
    let names: Vec<&str> = listed["loras"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["chat", "sql2"]);

    // An adapter for another model is refused with the reason, and the server keeps serving.
    let tiny = crate::serve::tiny_model("lora_serve_tiny");
    let other = adapter(&dir, "other", &["--model", tiny.to_str().unwrap(), "--rank", "4"]);
    let e = server.request("POST", "/v1/load_lora_adapter", &[KEY], &format!(r#"{{"lora_name": "x", "lora_path": "{}"}}"#, other.display()));
    assert_eq!(e.status, 400, "{}", e.body);
    assert!(e.body.contains("lora_a is [64, 4]"), "{}", e.body);
    assert_eq!(server.request("POST", "/v1/unload_lora_adapter", &[KEY], r#"{"lora_name": "sql2"}"#).status, 200);
    assert_eq!(text(&greedy(&server, "chat", "")), alone[2]);

    // `cinder generate --lora` gives what the server gives for the same adapter and scale.
    let generated = crate::cinder_command()
        .args(["generate", "--device", "cpu", "--prompt", "The capital of France is", "--max-tokens", "16", "--json", "--lora"])
        .arg(format!("{}:0.5", chat.display()))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&generated.stdout);
    let json: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(json["text"].as_str().unwrap(), alone[2]);

    assert!(server.metric("lora_requests_total{lora_name=\"chat\",model_name=\"smollm2\"}") >= 4.0);
    let metrics = server.request("GET", "/metrics", &[KEY], "").body;
    assert!(metrics.contains("cinder:lora_requests_info{max_lora=\"2\",model_name=\"smollm2\","), "{metrics}");
}

/// A missing adapter file stops the server at start with the reason.
#[test]
fn a_bad_lora_flag_is_refused_at_start() {
    let out = crate::cinder_command().args(["serve", "--device", "cpu", "--port", "0", "--lora", "x=/nonexistent.gguf"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("LoRA adapter x") && stderr.contains("/nonexistent.gguf"), "{stderr}");
    let out = crate::cinder_command().args(["serve", "--lora", "nonsense"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not NAME=PATH[:SCALE]"));
}
