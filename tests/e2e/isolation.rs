//! One tenant cannot hurt the others, through the server's door: request limits refused
//! before anything grows (and the memory of a 200,000-prompt body), seeds per choice,
//! priority caps that hold against short deadlines, an HTTP/2 idle timeout, escaped metric
//! labels, unknown fields inside every enum of a body, and a server warm before it listens.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::control::{arg, write_config};
use crate::serve::{Server, http, tiny_model};

/// The server process's resident memory, in bytes.
fn rss(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn each_request_limit_is_a_400_naming_its_field() {
    let file = write_config(
        "limits",
        r#"
        [limits]
        max_prompts = 2
        max_n = 3
        max_sequences = 4
        max_stop = 2
        max_stop_bytes = 8
        max_stop_token_ids = 2
        max_logit_bias = 2
        max_logprobs = 2
        max_messages = 2
        max_tools = 1
        max_schema_bytes = 64
        max_tokens = 20
        max_prompt_tokens = 30
        default_max_tokens = 3
        max_body_bytes = 4096
        "#,
    );
    let server = Server::start(&tiny_model("limits"), &["--config", arg(&file)]);
    let user = json!({"role": "user", "content": "hi"});
    let tool = |name: &str| json!({"type": "function", "function": {"name": name}});
    let big_schema = json!({"type": "object", "properties": {"a_long_property_name": {"type": "string"}, "another_one": {"type": "integer"}}});
    let completion = "/v1/completions";
    let chat = "/v1/chat/completions";
    for (path, body, param) in [
        (completion, json!({"prompt": ["a", "b", "c"]}), "prompt"),
        (completion, json!({"prompt": "a", "n": 4}), "n"),
        (completion, json!({"prompt": ["a", "b"], "n": 3}), "n"),
        (completion, json!({"prompt": "a", "stop": ["x", "y", "z"]}), "stop"),
        (completion, json!({"prompt": "a", "stop": "123456789"}), "stop"),
        (completion, json!({"prompt": "a", "stop_token_ids": [1, 2, 3]}), "stop_token_ids"),
        (completion, json!({"prompt": "a", "logit_bias": {"1": 1, "2": 1, "3": 1}}), "logit_bias"),
        // `01` and `1` name one token.
        (completion, json!({"prompt": "a", "logit_bias": {"1": 1, "01": 1}}), "logit_bias.1"),
        (completion, json!({"prompt": "a", "logprobs": 3}), "logprobs"),
        (completion, json!({"prompt": "a", "max_tokens": 21}), "max_tokens"),
        (completion, json!({"prompt": (1..=31).collect::<Vec<u32>>()}), "prompt"),
        // Refused before tokenizing: no token is that much text.
        (completion, json!({"prompt": "ab ".repeat(1300)}), "prompt"),
        (completion, json!({"prompt": "a", "best_of": 2}), "best_of"),
        (chat, json!({"messages": [user, user, user]}), "messages"),
        (chat, json!({"messages": [user], "tools": [tool("a"), tool("b")]}), "tools"),
        (chat, json!({"messages": [user], "tools": [{"type": "function", "function": {"name": "a", "parameters": big_schema}}]}), "tools"),
        (
            chat,
            json!({"messages": [user], "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": big_schema}}}),
            "response_format.json_schema.schema",
        ),
    ] {
        let r = server.post(path, &body.to_string());
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.json()["error"]["param"], param, "{body}: {}", r.body);
    }
    let r = server.post(completion, &json!({"prompt": "a".repeat(5000)}).to_string());
    assert_eq!(r.status, 413, "{}", r.body);
    // Within the limits it serves, and `default_max_tokens` from the file applies.
    let r = server.post(completion, &json!({"prompt": ["a", "b"], "n": 2, "ignore_eos": true, "stop": ["zz"]}).to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["usage"]["completion_tokens"], 12, "{}", r.body);
}

#[test]
fn a_200000_prompt_fan_out_is_refused_at_once_and_costs_no_memory() {
    let server = Server::start(&tiny_model("fan-out-memory"), &[]);
    // Warm the handler's own allocations with a small request first.
    assert_eq!(server.post("/v1/completions", r#"{"prompt": "hi", "max_tokens": 1}"#).status, 200);
    let before = rss(&server);
    let body = json!({"prompt": vec!["abc"; 200_000], "n": 8, "max_tokens": 16}).to_string();
    assert!(body.len() > 1 << 20, "{} bytes", body.len());
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let (pid, peak, done) = (server.child.id(), peak.clone(), done.clone());
        move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    && let Some(kb) = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1))
                {
                    peak.fetch_max(kb.parse::<u64>().unwrap() * 1024, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    let started = Instant::now();
    let r = server.post("/v1/completions", &body);
    let took = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!((r.status, &r.json()["error"]["param"]), (400, &json!("prompt")), "{}", r.body);
    let (peak, after) = (peak.load(std::sync::atomic::Ordering::Relaxed), rss(&server));
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("RSS before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB; refused in {took:?}", mib(before), mib(peak), mib(after));
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    assert!(peak < before + (50 << 20), "peak {:.1} MiB over {:.1} MiB", mib(peak), mib(before));
    assert_eq!(server.post("/v1/completions", r#"{"prompt": "hi", "max_tokens": 1}"#).status, 200);
}

#[test]
fn seeded_choices_differ_from_each_other_and_repeat_across_requests() {
    let server = Server::start(&tiny_model("seeds"), &[]);
    let body = json!({"prompt": "hi", "n": 3, "seed": 42, "temperature": 1.0, "max_tokens": 8, "ignore_eos": true, "return_token_ids": true});
    let choices = |r: crate::serve::Response| -> Vec<serde_json::Value> {
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["choices"].as_array().unwrap().iter().map(|c| c["token_ids"].clone()).collect()
    };
    let first = choices(server.post("/v1/completions", &body.to_string()));
    assert_eq!(first, choices(server.post("/v1/completions", &body.to_string())), "the same body gives the same choices");
    assert!(first[0] != first[1] && first[1] != first[2] && first[0] != first[2], "{first:?}");
    // Choice 0 is what the seed alone gives.
    let mut single = body.clone();
    single["n"] = 1.into();
    assert_eq!(choices(server.post("/v1/completions", &single.to_string()))[0], first[0]);
}

#[test]
fn a_capped_tenant_with_a_short_deadline_does_not_overtake_a_normal_request() {
    // One request runs at a time; any deadline is urgent at once; no aging.
    let file = write_config(
        "priority-cap",
        r#"
        [scheduler]
        max_running = 1
        deadline_urgency_ms = 60000
        aging_interval_ms = 0

        [[tenants]]
        name = "low"
        api_keys = ["sk-low"]
        max_priority = "low"
        "#,
    );
    let server = Server::start(&tiny_model("priority-cap"), &["--config", arg(&file), "--api-key", "admin"]);
    let post = |key: &'static str, body: serde_json::Value| {
        let address = server.address.clone();
        std::thread::spawn(move || {
            let r = http(&address, "POST", "/v1/completions", &[("Authorization", &format!("Bearer {key}"))], &body.to_string());
            (r.status, Instant::now())
        })
    };
    let running = post("admin", json!({"prompt": "hi", "max_tokens": 300, "ignore_eos": true}));
    std::thread::sleep(Duration::from_millis(400));
    let normal = post("admin", json!({"prompt": "hi", "max_tokens": 100, "ignore_eos": true}));
    std::thread::sleep(Duration::from_millis(200));
    // Asks for critical (lowered to low) with a deadline that is urgent from the start.
    let capped = post("sk-low", json!({"prompt": "hi", "max_tokens": 2, "priority": "critical", "deadline_ms": 50000}));
    let (normal, capped) = (normal.join().unwrap(), capped.join().unwrap());
    assert_eq!(running.join().unwrap().0, 200);
    assert_eq!((normal.0, capped.0), (200, 200));
    assert!(normal.1 < capped.1, "the capped tenant's request ended first: it overtook the normal one");
}

/// Reads HTTP/2 frames from a client that has sent its preface and settings, answering the
/// server's settings and pings as a live client does, until the server closes the
/// connection; returns the frame types seen and when it closed.
fn h2_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Instant>) {
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let deadline = Instant::now() + limit;
    let (mut seen, mut buffer, mut chunk) = (Vec::new(), Vec::new(), [0u8; 1024]);
    while Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) => return (seen, Some(Instant::now())),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return (seen, Some(Instant::now())),
        }
        while buffer.len() >= 9 {
            let length = u32::from_be_bytes([0, buffer[0], buffer[1], buffer[2]]) as usize;
            if buffer.len() < 9 + length {
                break;
            }
            let (kind, flags) = (buffer[3], buffer[4]);
            let payload = buffer[9..9 + length].to_vec();
            buffer.drain(..9 + length);
            seen.push(kind);
            let ack = flags & 1 == 1;
            match kind {
                4 if !ack => stream.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).unwrap(),
                6 if !ack => {
                    let mut pong = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                    pong.extend_from_slice(&payload);
                    stream.write_all(&pong).unwrap();
                }
                _ => {}
            }
        }
    }
    (seen, None)
}

#[test]
fn an_idle_http2_connection_is_closed() {
    let server = Server::start(&tiny_model("h2-idle"), &["--header-timeout-s", "2"]);
    let mut stream = TcpStream::connect(&server.address).unwrap();
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    let opened = Instant::now();
    let (frames, closed) = h2_until_closed(&mut stream, Duration::from_secs(15));
    let closed = closed.expect("the idle connection stayed open for 15 s");
    let after = closed - opened;
    assert!(frames.contains(&7), "a GOAWAY before closing: {frames:?}");
    assert!(after >= Duration::from_millis(1500) && after < Duration::from_secs(6), "closed after {after:?}");
}

#[test]
fn model_names_are_escaped_in_prometheus_labels() {
    let name = "we\"ird\\model\nname";
    let model = tiny_model("escaped-labels");
    let server = Server::start(&model, &["--served-model-name", name]);
    assert_eq!(server.post("/v1/completions", &json!({"model": name, "prompt": "hi", "max_tokens": 2}).to_string()).status, 200);
    let text = server.request("GET", "/metrics", &[], "").body;
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
names = set()
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        if "model_name" in sample.labels:
            names.add(sample.labels["model_name"])
print(sorted(names))
assert names == {sys.argv[1]}, names
"#;
    let mut child = Command::new(crate::serve::python())
        .args(["-c", script, name])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}\n{}\n{text}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
}

#[test]
fn unknown_fields_inside_enums_are_refused() {
    let server = Server::start(&tiny_model("unknown-in-enums"), &[]);
    let user = json!({"role": "user", "content": "hi"});
    let tool = json!({"type": "function", "function": {"name": "f"}});
    for (body, param) in [
        (json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {}}]}]}), "messages[0].content[0].cache_control"),
        (json!({"messages": [user], "response_format": {"type": "json_object", "schema": {}}}), "response_format.schema"),
        (
            json!({"messages": [user], "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "stict": true}}}),
            "response_format.json_schema.stict",
        ),
        (json!({"messages": [user], "tools": [tool], "tool_choice": {"type": "function", "function": {"name": "f"}, "extra": 1}}), "tool_choice.extra"),
        (json!({"messages": [user], "tools": [tool], "tool_choice": {"type": "function", "function": {"name": "f", "strict": true}}}), "tool_choice.function.strict"),
        (json!({"messages": [user], "speculative": {"method": "ngram", "k": 2}}), "speculative.k"),
    ] {
        let r = server.post("/v1/chat/completions", &body.to_string());
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.json()["error"]["param"], param, "{body}: {}", r.body);
    }
    let r = server.post("/v1/chat/completions", &json!({"messages": [user], "response_format": {"type": "text", "json_schema": {"name": "x"}}}).to_string());
    assert_eq!((r.status, &r.json()["error"]["param"]), (400, &json!("response_format")), "{}", r.body);
}

#[test]
fn grammars_over_their_compile_budget_are_refused() {
    let file = write_config("grammar-budget", "[limits]\ngrammar_compile_ms = 1\n");
    let server = Server::start(&tiny_model("grammar-budget"), &["--config", arg(&file)]);
    // Many properties with patterns: far more than a millisecond of lexer building.
    let properties: serde_json::Map<String, serde_json::Value> =
        (0..200).map(|i| (format!("p{i}"), json!({"type": "string", "pattern": format!("[a-z]{{{i},{}}}x[0-9]+", i + 40)}))).collect();
    let schema = json!({"type": "object", "properties": properties, "required": properties.keys().collect::<Vec<_>>()});
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}});
    let r = server.post("/v1/chat/completions", &body.to_string());
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("grammar_compile_ms"), "{}", r.body);
    assert_eq!(server.post("/v1/completions", r#"{"prompt": "hi", "max_tokens": 1}"#).status, 200);
}

#[test]
fn health_shows_paths_and_errors_only_to_the_admin_key_and_a_failed_model_is_not_ready() {
    let model = tiny_model("health-details");
    let missing = crate::scratch_dir("health-details").join("missing.gguf");
    let missing = format!("gone={}", missing.display());
    let server = Server::start(&model, &["--model", &missing, "--allow-partial", "--api-key", "k3y"]);
    let public = server.request("GET", "/health", &[], "");
    assert_eq!(public.status, 200, "{}", public.body);
    assert!(!public.body.contains("gguf") && !public.body.contains("error"), "{}", public.body);
    assert_eq!(public.json()["models"]["gone"]["status"], "failed");
    let admin = server.request("GET", "/health", &[("Authorization", "Bearer k3y")], "");
    assert!(admin.body.contains("tiny.gguf") && admin.body.contains("missing.gguf"), "{}", admin.body);
    // Not ready while a model failed, naming it (without its path); alive all the same.
    let ready = server.request("GET", "/health/ready", &[], "");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.json()["reasons"], serde_json::json!(["model gone is failed"]), "{}", ready.body);
    assert_eq!(server.request("GET", "/health/live", &[], "").status, 200);
}

#[test]
fn a_tenant_key_equal_to_the_admin_key_is_refused_at_start() {
    let file = write_config("key-clash", "[[tenants]]\nname = \"a\"\napi_keys = [\"same\"]\n");
    let output = crate::cinder_command()
        .args(["serve", "--port", "0", "--config", arg(&file), "--api-key", "same", "--model"])
        .arg(tiny_model("key-clash"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("has the server's --api-key among its keys"), "{stderr}");
}

#[test]
fn a_request_over_the_token_burst_is_a_400_never_a_429() {
    let file = write_config("burst", "[[tenants]]\nname = \"a\"\napi_keys = [\"ka\"]\ntokens_per_second = 100.0\ntoken_burst = 100.0\n");
    let server = Server::start(&tiny_model("burst"), &["--config", arg(&file)]);
    let r = server.request("POST", "/v1/completions", &[("Authorization", "Bearer ka")], r#"{"prompt": "hi", "max_tokens": 60, "n": 2}"#);
    assert_eq!((r.status, &r.json()["error"]["code"]), (400, &json!("exceeds_burst")), "{}", r.body);
    let r = server.request("POST", "/v1/completions", &[("Authorization", "Bearer ka")], r#"{"prompt": "hi", "max_tokens": 20}"#);
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn a_tenants_rate_is_one_across_every_served_model() {
    let file = write_config("rates-across-models", "[[tenants]]\nname = \"a\"\napi_keys = [\"ka\"]\nrequests_per_second = 0.1\n");
    let second = format!("other={}", tiny_model("rates-across-models-b").display());
    let server = Server::start(&tiny_model("rates-across-models"), &["--config", arg(&file), "--model", &second]);
    let ask = |model: &str| {
        let body = json!({"model": model, "prompt": "hi", "max_tokens": 1}).to_string();
        server.request("POST", "/v1/completions", &[("Authorization", "Bearer ka")], &body)
    };
    assert_eq!(ask("tiny").status, 200);
    let r = ask("other");
    assert_eq!((r.status, &r.json()["error"]["code"]), (429, &json!("rate_limited")), "the other model shares the bucket: {}", r.body);
}

/// Behind a trusted gateway (`[gateway] fairness_header`): the gateway's key with
/// `x-gateway-inference-fairness-id: bob` runs as bob, a client's own key with the same
/// header stays the client's tenant, and no key at all is still a 401.
#[test]
fn only_the_gateways_fairness_header_names_the_tenant() {
    let file = write_config(
        "fairness-header",
        r#"
        [gateway]
        fairness_header = true
        api_keys = ["sk-gateway"]

        [[tenants]]
        name = "alice"
        api_keys = ["sk-alice"]

        [[tenants]]
        name = "bob"
        api_keys = ["sk-bob"]
        "#,
    );
    let server = Server::start(&tiny_model("fairness-header"), &["--config", arg(&file), "--api-key", "admin"]);
    let body = json!({"prompt": "hi", "max_tokens": 2}).to_string();
    let post = |key: Option<&str>, header: &str| {
        let bearer = key.map(|k| format!("Bearer {k}"));
        let mut headers: Vec<(&str, &str)> = vec![("x-gateway-inference-fairness-id", header)];
        headers.extend(bearer.iter().map(|b| ("Authorization", b.as_str())));
        server.request("POST", "/v1/completions", &headers, &body).status
    };
    assert_eq!(post(Some("sk-gateway"), "bob"), 200);
    assert_eq!(post(Some("sk-alice"), "bob"), 200);
    assert_eq!(post(None, "bob"), 401);
    let metrics = server.request("GET", "/metrics", &[("Authorization", "Bearer admin")], "").body;
    let ended = |tenant: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("cinder:request_success_total{") && l.contains(&format!("tenant=\"{tenant}\"")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert_eq!((ended("bob"), ended("alice"), ended("default")), (1.0, 1.0, 0.0), "{metrics}");
}
