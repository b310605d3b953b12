//! `cinder serve` started as a user would, on a loopback port: the OpenAI Python client on
//! the real model, raw HTTP for bad inputs, clients that disconnect mid-stream, overload and
//! shutdown on a tiny random-weight model.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cinder_model::tiny::TinyModel;

/// A running server, killed when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) address: String,
    /// The `--api-key` it was started with; `/metrics` needs it.
    api_key: Option<String>,
    /// Its log (stderr) after the listening line, as it comes.
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    pub(crate) fn start(model: &Path, extra: &[&str]) -> Server {
        Self::start_on(model, 0, extra)
    }

    /// [`Server::start`] on port `port` (0: any free one).
    pub(crate) fn start_on(model: &Path, port: u16, extra: &[&str]) -> Server {
        let mut child = crate::cinder_command()
            .args(["serve", "--port", &port.to_string(), "--model"])
            .arg(model)
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting cinder serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let address = loop {
            let line = lines.next().expect("the server exited before listening").unwrap();
            if let Some(a) = line.strip_prefix("listening on http://") {
                break a.to_owned();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let kept = log.clone();
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(|line| kept.lock().unwrap().push_str(&(line + "\n"))));
        let api_key = extra.iter().position(|a| *a == "--api-key").and_then(|i| extra.get(i + 1)).map(|k| k.to_string());
        Server { child, address, api_key, log }
    }

    /// What it has logged since it listened.
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub(crate) fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
        http(&self.address, method, path, headers, body)
    }

    pub(crate) fn post(&self, path: &str, body: &str) -> Response {
        self.request("POST", path, &[], body)
    }

    /// The value of the series `cinder:NAME` (NAME may end in its labels), or the sum of
    /// its series over labels it does not give (every model's).
    pub(crate) fn metric(&self, name: &str) -> f64 {
        let bearer = self.api_key.as_ref().map(|k| format!("Bearer {k}"));
        let auth: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
        let text = self.request("GET", "/metrics", &auth, "").body;
        let (exact, labelled) = (format!("cinder:{name} "), format!("cinder:{name}{{"));
        let values: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(&exact) || (!name.contains('{') && l.starts_with(&labelled)))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(!values.is_empty(), "{name} in {text}");
        values.iter().sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: String,
}

impl Response {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

pub(crate) fn http(address: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
    let mut stream = TcpStream::connect(address).expect("connecting");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    Response { status, head: head.to_owned(), body }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

pub(crate) fn tiny_model(test: &str) -> PathBuf {
    let path = crate::scratch_dir(test).join("tiny.gguf");
    std::fs::write(&path, TinyModel::default().to_gguf()).unwrap();
    path
}

pub(crate) fn python() -> PathBuf {
    let home = std::env::var_os("CINDER_HOME").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/cinder")
    });
    let python = home.join("venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh first", python.display());
    python
}

/// Runs the client script `script` of tests/e2e against `base_url`, which prints `ok` last
/// when every check passed.
pub(crate) fn run_client(script: &str, base_url: &str, model: &str, key: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e").join(script);
    let output = Command::new(python()).arg(path).args([base_url, model, key]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
}

on_each_backend!(the_openai_client_streams_chat_and_completes_with_logprobs_n_and_stop);

fn the_openai_client_streams_chat_and_completes_with_logprobs_n_and_stop(on: crate::On) {
    let server = Server::start(&crate::real_model_path(), &["--device", on.flag(), "--api-key", "secret", "--served-model-name", "smollm2"]);
    run_client("openai_client.py", &format!("http://{}/v1", server.address), "smollm2", "secret");
    assert!(server.metric("generation_tokens_total") > 0.0);
    assert!(server.metric("prompt_tokens_total") > 0.0);
}

/// The two backends serve the same greedy tokens of the real model (each matches llama.cpp
/// on the same weights, `parity.rs`), batched: four prompts at once.
#[test]
fn both_backends_serve_the_same_greedy_completions() {
    let prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "1, 2, 3, 5, 8,"];
    let body = serde_json::json!({"prompt": prompts, "max_tokens": 24, "temperature": 0}).to_string();
    let texts = |device: &str| -> Vec<String> {
        let server = Server::start(&crate::real_model_path(), &["--device", device]);
        let answer = server.post("/v1/completions", &body);
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_owned()).collect()
    };
    let (gpu, cpu) = (texts("gpu"), texts("cpu"));
    assert_eq!(cpu.len(), prompts.len());
    assert_eq!(cpu, gpu);
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let server = Server::start(&tiny_model("bad-requests"), &["--api-key", "k3y", "--max-body-bytes", "2000"]);
    let auth = [("Authorization", "Bearer k3y")];
    let post = |body: &str| server.request("POST", "/v1/completions", &auth, body);
    let error = |r: &Response, status: u16| -> serde_json::Value {
        assert_eq!(r.status, status, "{}", r.body);
        r.json()["error"].clone()
    };

    let e = error(&post("{\"prompt\": "), 400);
    assert!(e["message"].as_str().unwrap().contains("not valid JSON"), "{e}");
    assert_eq!(e["type"], "invalid_request_error");
    let e = error(&post(r#"{"prompt": "hi", "max_tokens": "many"}"#), 400);
    assert_eq!(e["param"], "max_tokens");
    let e = error(&post(r#"{"prompt": "hi", "model": "gpt-9"}"#), 404);
    assert_eq!(e["code"], "model_not_found");
    let e = error(&post(r#"{"prompt": [1, 2, 70000]}"#), 400);
    assert!(e["message"].as_str().unwrap().contains("70000 is outside the vocabulary"), "{e}");
    for max in ["600", "18446744073709551615"] {
        let e = error(&post(&format!(r#"{{"prompt": "hi", "max_tokens": {max}}}"#)), 400);
        assert!(e["message"].as_str().unwrap().contains("context of 512"), "{e}");
    }
    for (field, value) in [("top_p", "0"), ("n", "99"), ("logprobs", "50"), ("presence_penalty", "3")] {
        let e = error(&post(&format!(r#"{{"prompt": "hi", "{field}": {value}}}"#)), 400);
        assert_eq!(e["param"], field, "{e}");
    }
    for (param, bias) in [("logit_bias.x", r#"{"x": 1}"#), ("logit_bias.5", r#"{"5": 101}"#)] {
        let e = error(&post(&format!(r#"{{"prompt": "hi", "logit_bias": {bias}}}"#)), 400);
        assert_eq!(e["param"], param, "{e}");
    }
    let e = error(&post(r#"{"prompt": "hi", "logit_bias": {"70000": 5}}"#), 400);
    assert!(e["message"].as_str().unwrap().contains("70000 is outside the vocabulary"), "{e}");
    let e = error(&server.request("POST", "/v1/chat/completions", &auth, r#"{"messages": []}"#), 400);
    assert_eq!(e["param"], "messages");
    let e = error(&server.post("/v1/completions", r#"{"prompt": "hi"}"#), 401);
    assert_eq!(e["type"], "authentication_error");
    let wrong = server.request("POST", "/v1/completions", &[("Authorization", "Bearer k3z")], r#"{"prompt": "hi"}"#);
    error(&wrong, 401);
    error(&post(&format!(r#"{{"prompt": "{}"}}"#, "a".repeat(3000))), 413);

    // A field cinder does not implement is refused, naming it, never dropped.
    for (field, body) in [
        ("suffix", r#"{"prompt": "hi", "suffix": "!"}"#),
        ("some_extension", r#"{"prompt": "hi", "some_extension": {"x": 1}}"#),
        ("stream_options.include_obfuscation", r#"{"prompt": "hi", "stream": true, "stream_options": {"include_obfuscation": true}}"#),
        ("messages[0].name", r#"{"messages": [{"role": "user", "content": "hi", "name": "bob"}]}"#),
    ] {
        let e = error(&post(body), 400);
        assert_eq!(e["param"], field, "{e}");
        assert!(e["message"].as_str().unwrap().contains("does not implement"), "{e}");
    }

    // The server still answers after all of the above.
    // `created` is the request's time, not the server's start (the model's `created`).
    let started = server.request("GET", "/v1/models", &auth, "").json()["data"][0]["created"].as_u64().unwrap();
    let unix_now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    while unix_now() <= started {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ok = post(r#"{"prompt": "hello", "max_tokens": 4, "temperature": 0, "return_token_ids": true}"#);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.json()["created"].as_u64().unwrap() > started, "{}", ok.body);
    let choice = &ok.json()["choices"][0];
    assert_eq!(choice["token_ids"].as_array().unwrap().len(), ok.json()["usage"]["completion_tokens"].as_u64().unwrap() as usize);
    assert!(choice["prompt_token_ids"].as_array().is_some_and(|ids| !ids.is_empty()));
    assert_eq!(server.request("GET", "/health", &[], "").status, 200);
    let tokens = server.request("POST", "/tokenize", &auth, r#"{"content": "hello"}"#).json()["tokens"].clone();
    let text = server.request("POST", "/detokenize", &auth, &format!(r#"{{"tokens": {tokens}}}"#)).json()["content"].clone();
    assert_eq!(text, "hello");
    assert!(server.request("GET", "/metrics", &auth, "").body.contains("cinder:request_rejected_total{reason=\"invalid_request_error\",tenant=\"default\"}"));
}

/// Opens a streaming request, reads its first event, and hangs up.
fn disconnect_mid_stream(address: &str) {
    let mut stream = TcpStream::connect(address).unwrap();
    let body = r#"{"prompt": "tell me everything", "max_tokens": 400, "ignore_eos": true, "stream": true}"#;
    let request = format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(request.as_bytes()).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the first event: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn clients_that_disconnect_mid_stream_free_every_block() {
    let server = Server::start(&tiny_model("disconnect"), &["--max-running", "128"]);
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let address = server.address.clone();
            std::thread::spawn(move || disconnect_mid_stream(&address))
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (running, waiting, kv) =
            (server.metric("num_requests_running"), server.metric("num_requests_waiting"), server.metric("kv_cache_usage_perc"));
        if (running, waiting, kv) == (0.0, 0.0, 0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "still running {running}, waiting {waiting}, KV {kv} after the clients left");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Far fewer than 100 x 400 tokens were generated: the requests were cut short.
    assert!(server.metric("generation_tokens_total") < 100.0 * 400.0 / 2.0);
    assert_eq!(server.post("/v1/completions", r#"{"prompt": "still there?", "max_tokens": 2}"#).status, 200);
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let server = Server::start(&tiny_model("overload"), &["--max-running", "1", "--max-waiting", "1"]);
    let address = server.address.clone();
    let responses: Vec<Response> = (0..6)
        .map(|_| {
            let address = address.clone();
            std::thread::spawn(move || {
                http(&address, "POST", "/v1/completions", &[], r#"{"prompt": "hi", "max_tokens": 200, "ignore_eos": true}"#)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let refused: Vec<&Response> = responses.iter().filter(|r| r.status == 429).collect();
    assert!(!refused.is_empty(), "statuses {:?}", responses.iter().map(|r| r.status).collect::<Vec<_>>());
    assert!(responses.iter().all(|r| r.status == 200 || r.status == 429));
    for r in refused {
        assert!(r.head.to_ascii_lowercase().contains("retry-after:"), "{}", r.head);
        assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    }
}

/// SIGTERM drains: /health/ready answers 503 at once with the reason while /health/live
/// stays 200 and new requests are still served for `--drain-grace`; then new requests are
/// refused, the stream in flight finishes whole, and the process exits 0.
#[test]
fn sigterm_drains_readiness_first_then_finishes_the_stream_in_flight_and_exits() {
    // A grace long enough for the checks inside it on a busy machine.
    let grace = Duration::from_secs(5);
    let mut server = Server::start(&tiny_model("shutdown"), &["--drain-grace", "5"]);
    let ready = server.request("GET", "/health/ready", &[], "");
    assert_eq!((ready.status, ready.json()["status"].as_str()), (200, Some("ready")), "{}", ready.body);
    let address = server.address.clone();
    let in_flight = std::thread::spawn(move || {
        http(&address, "POST", "/v1/completions", &[], r#"{"prompt": "go", "max_tokens": 400, "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}}"#)
    });
    std::thread::sleep(Duration::from_millis(300));
    let pid = server.child.id().to_string();
    let signalled = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    let ready = server.request("GET", "/health/ready", &[], "");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.json()["reasons"][0].as_str().unwrap().starts_with("draining"), "{}", ready.body);
    assert_eq!(server.request("GET", "/health/live", &[], "").status, 200);
    // Within the grace a new request is served.
    let late = server.post("/v1/completions", r#"{"prompt": "hello", "max_tokens": 3}"#);
    assert_eq!(late.status, 200, "{}", late.body);
    assert!(signalled.elapsed() < grace, "the grace was over before the check");
    // After it, new requests are refused.
    std::thread::sleep(grace.saturating_sub(signalled.elapsed()) + Duration::from_millis(500));
    let after = TcpStream::connect(&server.address).map(|_| http(&server.address, "GET", "/health", &[], ""));
    assert!(after.is_err() || after.as_ref().unwrap().status == 503, "accepted a request after the grace");
    let streamed = in_flight.join().unwrap();
    assert!(streamed.body.contains("\"completion_tokens\":400"), "every token arrived: {}", streamed.body);
    assert_eq!(streamed.status, 200);
    assert!(streamed.body.trim_end().ends_with("data: [DONE]"), "{}", streamed.body);
    assert_eq!(streamed.body.matches("\"finish_reason\":\"length\"").count(), 1);
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(!server.log().contains("were cut"), "{}", server.log());
}

/// A request still running at `--drain-timeout` is cut: the server logs how many it cut
/// and exits 0 at once rather than waiting for it.
#[test]
fn the_drain_timeout_cuts_what_is_still_running_and_says_so() {
    // The default model on the GPU path decodes at ~11 tok/s here: 300 tokens outlast the
    // one-second drain.
    let mut server = Server::start(&crate::real_model_path(), &["--drain-grace", "0", "--drain-timeout", "1"]);
    let body = r#"{"prompt": "Once upon a time", "max_tokens": 300, "ignore_eos": true, "stream": true}"#;
    let mut stream = TcpStream::connect(&server.address).unwrap();
    let head = format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    stream.write_all((head + body).as_bytes()).unwrap();
    // What arrives until the server closes the connection (a reset counts as closed).
    let in_flight = std::thread::spawn(move || {
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        String::from_utf8_lossy(&raw).into_owned()
    });
    std::thread::sleep(Duration::from_millis(1500));
    let pid = server.child.id().to_string();
    let signalled = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(signalled.elapsed() < Duration::from_secs(10), "the drain took {:?}", signalled.elapsed());
    let streamed = in_flight.join().unwrap();
    assert!(streamed.contains("data: ") && !streamed.contains("[DONE]"), "the stream was not cut: {streamed}");
    // Give the log's reader a moment to take the last lines.
    std::thread::sleep(Duration::from_millis(200));
    let log = server.log();
    assert!(log.contains("drain timeout: 1 request(s) still in flight after 1 s were cut"), "{log}");
}

/// `--kv-cache-type` and `--kv-cache-type-v` through the server: `--print-config` writes them
/// as the file's keys, and a model with
/// 32-wide heads serves on q8_0 keys and q4_0 values the greedy tokens `cinder generate`
/// gives with the same flags.
#[test]
fn the_kv_cache_types_are_served_as_asked() {
    let path = crate::scratch_dir("kv-types").join("wide-heads.gguf");
    std::fs::write(&path, TinyModel { hidden: 128, n_heads: 4, n_kv_heads: 2, ..Default::default() }.to_gguf()).unwrap();
    let flags = ["--kv-cache-type", "q8_0", "--kv-cache-type-v", "q4_0", "--device", "cpu"];
    let printed = crate::cinder_command().args(["serve", "--print-config", "--model"]).arg(&path).args(flags).output().unwrap();
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.contains("type = \"q8_0\"") && printed.contains("type_v = \"q4_0\""), "{printed}");

    let server = Server::start(&path, &flags);
    let answer = server.post("/v1/completions", r#"{"prompt": [5, 9, 77, 31], "max_tokens": 8, "temperature": 0, "ignore_eos": true}"#);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let served = answer.json()["choices"][0]["text"].as_str().unwrap().to_owned();
    let generated = crate::cinder_command()
        .args(["generate", "--prompt-ids", "5,9,77,31", "--max-tokens", "8", "--ignore-eos", "--json", "--model"])
        .arg(&path)
        .args(flags)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&generated.stdout);
    let json: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(json["text"].as_str().unwrap(), served);
    drop(server);
}
