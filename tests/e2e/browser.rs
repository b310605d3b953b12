//! The web demo in headless Chromium (`tests/browser/demo.cjs`, Playwright), on WebGPU
//! (`?device=gpu`) and on the CPU path, served by `cinder serve --web web/dist` as a user
//! would run it. Needs the demo built
//! (`bash scripts/build-web.sh`) and Chromium and playwright-core (`scripts/setup.sh`).
//!
//! The browser here renders WebGPU on the CPU (SwiftShader), so the tiny model does the
//! exact checks and the real model only has to load and produce its first tokens.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::serve::{Server, tiny_model};

fn web_dist() -> PathBuf {
    let dist = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web/dist");
    assert!(dist.join("index.html").exists(), "{} is missing: run `bash scripts/build-web.sh` first", dist.display());
    dist
}

/// Runs the demo script against `server` and returns what it saw.
fn drive(server: &Server, spec: Value) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser/demo.cjs");
    let output = Command::new("node")
        .arg(script)
        .arg(format!("http://{}/", server.address))
        .arg(spec.to_string())
        .output()
        .expect("running node (scripts/setup.sh installs it)");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let last = stdout.lines().last().unwrap_or_default();
    let result: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: no result from the browser:\n{stdout}\n{stderr}"));
    assert!(output.status.success() && result.get("error").is_none(), "the browser run failed: {result:#}\n{stderr}");
    assert!(result["status"].as_str().unwrap_or_default().contains("ready"), "the page did not load: {result:#}");
    result
}

/// Greedy token ids from the native engine behind the same server.
fn native_tokens(server: &Server, prompt: &str, max_tokens: usize) -> Vec<u64> {
    let body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true, "return_token_ids": true});
    let response = server.post("/v1/completions", &body.to_string());
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()["choices"][0]["token_ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect()
}

fn ids(value: &Value) -> Vec<u64> {
    value.as_array().unwrap_or_else(|| panic!("token ids in {value}")).iter().map(|t| t.as_u64().unwrap()).collect()
}

fn report(name: &str, result: &Value) {
    eprintln!(
        "browser {name}: adapter {}, load {:.1} s (fetch {:.2} s, cached {}), first token {:.2} s, {:.2} tok/s",
        result["info"]["adapter"],
        result["load_stats"]["load_s"].as_f64().unwrap_or_default(),
        result["load_stats"]["fetch_s"].as_f64().unwrap_or_default(),
        result["load_stats"]["cached"],
        result["first_token_s"].as_f64().unwrap_or_default(),
        result["tokens_per_s"].as_f64().unwrap_or_default(),
    );
}

/// What the page's JavaScript API did (`"api": true` in the spec), generating `max_tokens`.
fn check_api(server: &Server, api: &Value, max_tokens: usize) {
    // The page refused what the server refuses, in the same words.
    let refused = api["refused"].as_array().unwrap();
    assert!(refused.len() >= 6, "{api}");
    for entry in refused {
        let mut body = entry["options"].clone();
        body["prompt"] = json!("x");
        body["max_tokens"] = json!(1);
        let response = server.post("/v1/completions", &body.to_string());
        assert_eq!(response.status, 400, "{body}: {}", response.body);
        assert_eq!(response.json()["error"]["message"], entry["message"], "{body}");
    }

    assert!(api["ticks_during_generation"].as_u64().unwrap() >= 2, "the page's timers stalled while generating: {api}");

    // The page's embeddings are the server's, float and base64, and so is its refusal.
    let embeddings = &api["embeddings"];
    let inputs = json!(["The capital of France is Paris.", "Embeddings turn text into vectors."]);
    let native = server.post("/v1/embeddings", &json!({"input": inputs, "encoding_format": "float"}).to_string()).json();
    assert_eq!((&embeddings["object"], &embeddings["usage"]), (&json!("list"), &native["usage"]), "{api}");
    for (page, server) in embeddings["vectors"].as_array().unwrap().iter().zip(native["data"].as_array().unwrap()) {
        let (a, b) = (page.as_array().unwrap(), server["embedding"].as_array().unwrap());
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x.as_f64().unwrap() * y.as_f64().unwrap()).sum();
        assert!(a.len() == b.len() && dot > 0.9999, "page and server embeddings differ (cosine {dot}): {api}");
    }
    let cut = server.post("/v1/embeddings", &json!({"input": inputs[0], "dimensions": 8, "encoding_format": "base64"}).to_string()).json();
    let decode = |v: &Value| -> Vec<f32> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap();
        bytes.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    };
    let (page_cut, server_cut) = (decode(&embeddings["base64"]), decode(&cut["data"][0]["embedding"]));
    assert_eq!(page_cut.len(), 8, "{api}");
    assert!(page_cut.iter().zip(&server_cut).all(|(a, b)| (a - b).abs() < 1e-3), "{page_cut:?} {server_cut:?}");
    let refused = server.post("/v1/embeddings", r#"{"input": []}"#);
    assert_eq!(embeddings["refused"], refused.json()["error"]["message"], "{api}");
    assert_eq!(api["chat_finish_reason"], "length", "{api}");
    assert_eq!(api["stream_text"], api["chat_text"], "streamed and whole chat completions differ: {api}");
    assert_eq!(api["stream_finish_reason"], "length", "{api}");
    assert_eq!(api["stream_usage"]["completion_tokens"], max_tokens, "{api}");
    assert!(["\"yes\"", "\"no\""].contains(&api["structured"].as_str().unwrap_or_default()), "{api}");
    let call = &api["tool_call"];
    assert_eq!((&call["finish_reason"], &call["content"]), (&json!("tool_calls"), &Value::Null), "{api}");
    let name = call["call"]["name"].as_str().unwrap_or_default();
    assert!(["get_weather", "get_time"].contains(&name), "{api}");
    let arguments: Value = serde_json::from_str(call["call"]["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments.is_object(), "{api}");
    let stream = &api["tool_stream"];
    assert_eq!((&stream["names"], &stream["finish_reasons"]), (&json!([name]), &json!(["tool_calls"])), "streamed calls differ: {api}");
    let streamed: Value = serde_json::from_str(stream["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(streamed, arguments, "the streamed pieces add up to the call: {api}");
    let two = json!([
        {"index": 0, "finish_reason": "length", "logprobs": max_tokens, "top": 2},
        {"index": 1, "finish_reason": "length", "logprobs": max_tokens, "top": 2},
    ]);
    assert_eq!(api["n2_choices"], two, "{api}");
    assert_eq!(api["n2_usage"]["completion_tokens"], 2 * max_tokens, "{api}");
    let mut ends: Vec<u64> = api["n2_stream_indices"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap()).collect();
    ends.sort();
    assert_eq!(ends, [0, 1], "each streamed choice ends once: {api}");
    let generated = json!({"choices": 2, "completion_tokens": 2 * max_tokens, "token_logprobs": max_tokens, "top": 3});
    assert_eq!(api["generate_n2"], generated, "{api}");
    assert_eq!(api["abort"]["finish_reason"], "abort", "{api}");
    assert!(api["abort"]["completion_tokens"].as_u64().unwrap() < 400, "{api}");
    let speculative = &api["speculative"];
    assert_eq!((&speculative["same"], &speculative["plain"]), (&json!(true), &Value::Null), "{api}");
    assert!(speculative["drafted"]["accepted_tokens"].as_u64().unwrap() > 0, "{api}");
    assert!(speculative["chat_usage"]["draft_tokens"].as_u64().is_some(), "{api}");
    let bad = api["bad_option"].as_str().unwrap();
    assert!(bad.starts_with("CinderError") && bad.contains("temperature"), "{api}");
}

#[test]
fn the_browser_gives_the_native_greedy_tokens_and_batches_concurrent_generations() {
    let model = tiny_model("browser");
    let server = Server::start(&model, &["--web", web_dist().to_str().unwrap()]);
    // Over 16 tokens, so the prompt's products run on the prompt kernel the page timed
    // faster.
    let prompt = "the quick brown fox jumps over the lazy dog while five boxing wizards jump quickly";
    let max_tokens = 12;
    let native = native_tokens(&server, prompt, max_tokens);
    let spec = json!({
        "prompt": prompt, "max_tokens": max_tokens, "concurrent": 4, "api": true, "errors": true,
        "reload": true, "change_before_reload": model, "timeout_s": 600, "query": "profile=1&device=gpu",
    });
    let result = drive(&server, spec);
    report("tiny model", &result);
    assert!(result["status"].as_str().unwrap().contains("in a worker"), "{result:#}");
    // The page asks for WebGPU's subgroups, and the subgroup kernels run on SwiftShader's
    // 4 lanes (the greedy tokens below come from them).
    assert_eq!((&result["info"]["subgroups_granted"], &result["info"]["subgroups"]), (&json!(true), &json!(4)), "{result:#}");
    // The page timed both prompt kernels while it warmed up.
    let timings = result["info"]["prompt_kernels"].as_array().expect("the prompt kernels' timings");
    assert!(!timings.is_empty(), "{result:#}");
    for timing in timings {
        assert!(timing["tiled_ms"].as_f64().unwrap() > 0.0 && timing["rows_ms"].as_f64().unwrap() > 0.0, "{timing}");
        assert!(["tiled", "rows"].contains(&timing["kernel"].as_str().unwrap()), "{timing}");
    }
    assert_eq!(ids(&result["tokens"]), native, "browser and native greedy tokens differ");
    let concurrent = result["concurrent"].as_array().expect("concurrent results");
    assert_eq!(concurrent.len(), 4);
    for generation in concurrent {
        assert_eq!(generation["completion_tokens"], max_tokens, "{generation}");
        assert_eq!(generation["finish_reason"], "length", "{generation}");
    }
    assert_eq!(ids(&concurrent[0]["tokens"]), native, "batched greedy tokens differ from alone");
    let speed = result["ui_speed"].as_str().unwrap_or_default();
    assert!(speed.contains("tokens/s") && !speed.contains("error"), "the chat UI did not finish: {result:#}");
    let batch = result["ui_batch"].as_array().expect("the batching panel's table");
    let modes: Vec<&str> = batch.iter().filter_map(|row| row[0].as_str()).collect();
    assert_eq!(modes, ["mode", "batched", "sequential", "batched / sequential"], "{batch:?}");
    assert!(batch[3][1].as_str().unwrap().ends_with('×'), "{batch:?}");
    check_api(&server, &result["api"], max_tokens);

    // ?profile=1: every answer's steps, the host's parts and each kernel's device time.
    let profile = &result["profile"];
    assert_eq!(profile["steps"].as_u64(), Some(max_tokens as u64), "one step per token of the UI's answer: {profile}");
    assert!(profile["host"]["launch_ms"].as_f64().unwrap() > 0.0 && profile["host"]["wait_ms"].as_f64().unwrap() > 0.0, "{profile}");
    let kernels: Vec<&str> = profile["kernels"].as_array().unwrap().iter().map(|k| k["kernel"].as_str().unwrap()).collect();
    for kernel in ["matmul_quant_subgroup", "rms_norm", "paged_attention"] {
        assert!(kernels.contains(&kernel), "{kernel} is missing from the profile: {profile}");
    }
    // The UI's prompt is over 16 tokens: where one kernel was faster at every count timed,
    // that one ran.
    let tiled_ran = kernels.contains(&"matmul_quant_tiled");
    if timings.iter().all(|t| t["kernel"] == "tiled") {
        assert!(tiled_ran, "the tiled kernel timed faster but did not run: {profile}");
    } else if timings.iter().all(|t| t["kernel"] == "rows") {
        assert!(!tiled_ran, "the row kernels timed faster but the tiled one ran: {profile}");
    }
    eprintln!("browser tiny model prompt kernels: {timings:?}");
    let table: Vec<&str> = result["ui_profile"].as_array().unwrap().iter().filter_map(|row| row[0].as_str()).collect();
    assert_eq!(&table[..4], ["kernel", "host: plan and launch", "host: await the device", "host: sample"], "{table:?}");
    eprintln!("browser tiny model profile: {}", result["ui_profile_summary"]);

    let missing = result["missing_model_status"].as_str().unwrap();
    assert!(missing.contains("model fetch failed") && missing.contains("404"), "{missing}");
    let no_gpu = result["no_webgpu_status"].as_str().unwrap();
    assert!(no_gpu.contains("WebGPU is not available"), "{no_gpu}");

    // The model comes from the Cache API while the server has the same file, and from the
    // server again once the file changed.
    assert_eq!(result["reload"]["load_stats"]["cached"], true, "{result:#}");
    let changed = &result["reload_changed"]["load_stats"];
    assert_eq!((&changed["cached"], &changed["stale"]), (&json!(false), &json!(true)), "a changed model was served stale: {result:#}");
}

/// A browser without WebGPU (Chromium with it disabled): `auto` runs the CPU path, with the
/// native CPU backend's greedy tokens, alone and batched, and the same API. `?cache=0`
/// (`Engine.load`'s `cache: false`) leaves the Cache API alone: a reload downloads again.
#[test]
fn without_webgpu_the_page_runs_on_the_cpu_with_the_native_tokens() {
    let model = tiny_model("browser-cpu");
    let adapter = crate::scratch_dir("browser-cpu").join("lora.gguf");
    let status = crate::cinder_command().arg("synth-lora").arg("--model").arg(&model).arg("--out").arg(&adapter).args(["--rank", "8", "--seed", "3"]).status().unwrap();
    assert!(status.success());
    let lora = format!("sql={}:0.5", adapter.display());
    let server = Server::start(&model, &["--web", web_dist().to_str().unwrap(), "--device", "cpu", "--lora", &lora]);
    let prompt = "the quick brown fox jumps over the lazy dog while five boxing wizards jump quickly";
    let max_tokens = 8;
    let native = native_tokens(&server, prompt, max_tokens);
    let spec = json!({
        "prompt": prompt, "max_tokens": max_tokens, "concurrent": 3, "ui": true, "api": true, "reload": true,
        "query": "cache=0", "webgpu": false, "lora": {"name": "sql", "path": adapter},
    });
    let result = drive(&server, spec);
    // The page's LoRA adapter, batched beside the base model, gives native's tokens for it.
    let body = json!({"model": "sql", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true, "return_token_ids": true});
    let native_lora: Vec<u64> = ids(&server.post("/v1/completions", &body.to_string()).json()["choices"][0]["token_ids"]);
    let lora = &result["lora"];
    assert_eq!(lora["loras"], json!(["sql"]), "{result:#}");
    assert_eq!(ids(&lora["adapted"]), native_lora, "the page's adapter and native's differ: {result:#}");
    assert_eq!(ids(&lora["base"]), native, "{result:#}");
    assert_ne!(native_lora, native, "the adapter changes the tokens");
    assert!(lora["refused"].as_str().unwrap_or_default().contains("no LoRA adapter \"nope\" is loaded"), "{result:#}");
    report("tiny model, CPU path", &result);
    assert!(result["status"].as_str().unwrap().contains("ready on the CPU"), "{result:#}");
    assert_eq!(result["info"]["kv_cache_type"], json!("f16"), "the browser's KV cache is f16 by default: {result:#}");
    assert_eq!((&result["info"]["device"], &result["info"]["device_timing"]), (&json!("cpu"), &Value::Null), "{result:#}");
    assert_eq!(ids(&result["tokens"]), native, "the page's CPU path and native greedy tokens differ");
    let concurrent = result["concurrent"].as_array().expect("concurrent results");
    assert!(concurrent.iter().all(|g| g["completion_tokens"] == max_tokens), "{concurrent:?}");
    assert_eq!(ids(&concurrent[0]["tokens"]), native, "batched greedy tokens differ from alone");
    check_api(&server, &result["api"], max_tokens);
    let reload = &result["reload"]["load_stats"];
    assert_eq!((&reload["cached"], &result["load_stats"]["cached"]), (&json!(false), &json!(false)), "cache=0 used the Cache API: {result:#}");
}

/// The default model with `auto` on SwiftShader (a software adapter): the page times a
/// layer's products on the CPU and on WebGPU and runs on the faster; its first tokens equal
/// native's, a reload reads the model from the Cache API (stored as it downloaded), and the
/// file is held once, in WebAssembly memory, where the CPU's weights stay.
#[test]
fn auto_on_a_software_adapter_times_both_paths_and_runs_the_default_model_on_the_faster() {
    let model = crate::real_model_path();
    let server = Server::start(&model, &["--web", web_dist().to_str().unwrap(), "--device", "cpu"]);
    let prompt = "The capital of France is";
    let native = native_tokens(&server, prompt, 8);
    let result = drive(&server, json!({"prompt": prompt, "max_tokens": 8, "ui": false, "reload": true, "timeout_s": 900}));
    report("default model, auto on SwiftShader", &result);
    let timing = &result["info"]["device_timing"];
    eprintln!("browser default model, auto: {timing}");
    let (cpu_ms, gpu_ms) = (timing["cpu_ms"].as_f64().unwrap(), timing["gpu_ms"].as_f64().unwrap_or(f64::INFINITY));
    assert!(cpu_ms > 0.0 && gpu_ms > 0.0, "{result:#}");
    let faster = if gpu_ms < cpu_ms { "gpu" } else { "cpu" };
    assert_eq!(result["info"]["device"], faster, "auto did not take the path it timed faster: {result:#}");
    assert!(result["status"].as_str().unwrap().contains("a layer took"), "{result:#}");
    assert_eq!(ids(&result["tokens"]), native, "the page's greedy tokens and native's differ: {result:#}");
    let reload = &result["reload"];
    assert!(reload["status"].as_str().unwrap_or_default().contains("ready on the"), "the reloaded page did not load: {result:#}");
    assert_eq!(reload["load_stats"]["cached"], true, "a reload downloads the model again: {result:#}");
    // The weights are the file's bytes in WebAssembly memory, not a copy of them: the heap
    // holds the file once, the page's 64 MiB KV pool and the engine (187 MB of a 97 MB
    // file; a copy of the weights beside the file would pass 2 x 97 + 64 MB).
    let heap = result["load_stats"]["wasm_memory_bytes"].as_u64().unwrap();
    let file = std::fs::metadata(Path::new(&model)).unwrap().len();
    eprintln!("browser default model, CPU path: WebAssembly heap {} MB, file {} MB", heap / 1_000_000, file / 1_000_000);
    assert!(heap < 2 * file + (64 << 20), "the WebAssembly heap grew to {heap} bytes loading a {file}-byte model");
}

#[test]
fn the_engine_on_the_pages_thread_without_subgroups_gives_the_same_tokens_and_api() {
    let server = Server::start(&tiny_model("browser-in-page"), &["--web", web_dist().to_str().unwrap()]);
    let prompt = "the quick brown fox jumps over the lazy dog while five boxing wizards jump quickly";
    let max_tokens = 6;
    let native = native_tokens(&server, prompt, max_tokens);
    // `?subgroups=0` as well: the portable kernels, which browsers without subgroups run.
    let result = drive(&server, json!({"prompt": prompt, "max_tokens": max_tokens, "ui": false, "api": true, "query": "worker=0&subgroups=0&device=gpu"}));
    assert!(result["status"].as_str().unwrap().contains("on the page's thread"), "{result:#}");
    assert_eq!((&result["info"]["subgroups_granted"], &result["info"]["subgroups"]), (&json!(false), &Value::Null), "{result:#}");
    assert_eq!(ids(&result["tokens"]), native, "browser and native greedy tokens differ");
    check_api(&server, &result["api"], max_tokens);
}

#[test]
fn the_browser_loads_the_default_model_and_produces_its_first_tokens() {
    let model = crate::real_model_path();
    let server = Server::start(&model, &["--web", web_dist().to_str().unwrap()]);
    let prompt = "The capital of France is";
    let native = native_tokens(&server, prompt, 2);
    let result = drive(&server, json!({"prompt": prompt, "max_tokens": 2, "ui": false, "reload": true, "timeout_s": 900, "query": "device=gpu"}));
    report("default model", &result);
    let reload = &result["reload"];
    assert!(reload["status"].as_str().unwrap_or_default().contains("ready"), "the reloaded page did not load: {result:#}");
    assert_eq!(reload["load_stats"]["cached"], true, "a reload downloads the model again: {result:#}");
    eprintln!("browser default model reload: {:.1} s to ready (model from the Cache API)", reload["load_s"].as_f64().unwrap_or_default());
    let tokens = ids(&result["tokens"]);
    assert_eq!(tokens.len(), 2, "{result:#}");
    assert_eq!(tokens[0], native[0], "the first greedy token differs from the native engine's: {result:#}");
    let weights = result["info"]["device_weight_bytes"].as_u64().unwrap();
    let file = std::fs::metadata(Path::new(&model)).unwrap().len();
    assert!(weights < file, "weights stay quantized in the browser: {weights} bytes on the device, file {file}");
    // The file is read into WebAssembly memory a tensor at a time, never whole (that memory
    // never shrinks): the heap stays under twice the file (it was 2.9x with a whole copy).
    let heap = result["load_stats"]["wasm_memory_bytes"].as_u64().unwrap();
    eprintln!("browser default model: WebAssembly heap {} MB after loading a {} MB file", heap / 1_000_000, file / 1_000_000);
    assert!(heap < 2 * file, "the WebAssembly heap grew to {heap} bytes loading a {file}-byte model");
}

/// Native `cinder generate` on the default model, run once on `icd`'s Vulkan driver (None:
/// the machine's, lavapipe): its text, and its peak resident memory in MB, read from
/// /proc while it runs. A run past 4 GB or 5 minutes is killed and fails.
fn generate_watched(icd: Option<&Path>) -> (String, u64) {
    let mut command = crate::cinder_command();
    command
        .args(["generate", "--prompt", "The capital of France is", "--max-tokens", "8", "--temperature", "0", "--json"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(icd) = icd {
        command.env("VK_ICD_FILENAMES", icd);
    }
    let mut child = command.spawn().expect("cinder runs");
    let status = format!("/proc/{}/status", child.id());
    let started = std::time::Instant::now();
    let mut peak_mb = 0;
    while child.try_wait().expect("waiting for cinder").is_none() {
        // VmHWM: the peak resident set so far.
        let hwm = std::fs::read_to_string(&status).ok().and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        });
        peak_mb = peak_mb.max(hwm.unwrap_or(0) / 1024);
        if peak_mb > 4096 || started.elapsed().as_secs() > 300 {
            child.kill().ok();
            panic!("cinder on {icd:?} grew to {peak_mb} MB in {:.0?} and was stopped", started.elapsed());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("cinder's output");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "cinder on {icd:?} failed: {stderr}");
    let json: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("the --json line");
    eprintln!("{}: peak {peak_mb} MB, {stderr}", icd.map_or("lavapipe".into(), |p| p.display().to_string()));
    (json["text"].as_str().expect("text").to_owned(), peak_mb)
}

/// Native cinder on the very Vulkan device the headless page uses (Chromium's SwiftShader):
/// the same greedy text as on lavapipe, with memory bounded (it once grew without end there).
#[test]
fn native_cinder_on_the_browsers_swiftshader_matches_lavapipe_in_bounded_memory() {
    let icd = Path::new("/usr/lib/chromium/vk_swiftshader_icd.json");
    assert!(icd.exists(), "{} is missing: scripts/setup.sh installs Chromium", icd.display());
    let (lavapipe_text, lavapipe_mb) = generate_watched(None);
    let (swiftshader_text, swiftshader_mb) = generate_watched(Some(icd));
    assert_eq!(swiftshader_text, lavapipe_text);
    assert!(swiftshader_mb <= 2 * lavapipe_mb, "SwiftShader peaked at {swiftshader_mb} MB, lavapipe at {lavapipe_mb} MB");
}
