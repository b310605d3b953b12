//! The `cinder` binary driven as a user would: streaming output, `--json`, `tokenize`, and
//! a clear error (never a panic) for every bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cinder_gguf::{GgufFile, GgufWriter, MetadataValue};
use cinder_model::tiny::TinyModel;
use cinder_tokenizer::Tokenizer;
use serde_json::Value;

fn cinder(args: &[&str]) -> Output {
    crate::cinder_command()
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env_remove("CINDER_MODEL")
        .output()
        .expect("cinder runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn succeed(args: &[&str]) -> String {
    let out = cinder(args);
    assert!(out.status.success(), "cinder {args:?} failed: {}", stderr(&out));
    stdout(&out)
}

/// Runs a command that must fail with exit code 1 and an `error:` line containing `message`.
fn fail_with(args: &[&str], message: &str) {
    let out = cinder(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "cinder {args:?}: {err}");
    assert!(err.contains("error:") && err.contains(message), "cinder {args:?}: {err:?} lacks {message:?}");
    assert!(!err.contains("panicked"), "{err}");
}

fn last_json_line(text: &str) -> Value {
    serde_json::from_str(text.lines().last().expect("output")).expect("last line is JSON")
}

fn tiny_model(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.gguf");
    std::fs::write(&path, TinyModel::default().to_gguf()).unwrap();
    path
}

fn ids(value: &Value) -> Vec<u32> {
    value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

#[test]
fn generate_streams_text_and_prints_json_last() {
    let dir = crate::scratch_dir("generate");
    let model = tiny_model(&dir);
    let model = model.to_str().unwrap();
    let tokenizer = Tokenizer::from_gguf(GgufFile::open(model).unwrap().metadata()).unwrap();

    let out = succeed(&["generate", "--model", model, "--prompt", "the cat", "--max-tokens", "6", "--ignore-eos", "--json"]);
    let json = last_json_line(&out);
    assert_eq!(ids(&json["prompt_ids"]), tokenizer.encode("the cat", true, true).unwrap());
    let generated = ids(&json["ids"]);
    assert_eq!(generated.len(), 6);
    let text = json["text"].as_str().unwrap();
    assert_eq!(text, tokenizer.decode(&generated, true).unwrap());
    assert!(out.starts_with(text), "the streamed text comes first: {out:?}");
    assert_eq!(json["finish_reason"], "length");

    let by_ids = last_json_line(&succeed(&["generate", "--model", model, "--prompt-ids", &json["prompt_ids"].as_array().unwrap().iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","), "--max-tokens", "6", "--ignore-eos", "--json"]));
    assert_eq!(by_ids["ids"], json["ids"], "the same prompt as ids gives the same greedy tokens");

    let chat = last_json_line(&succeed(&["generate", "--model", model, "--chat", "hi", "--max-tokens", "3", "--json", "--temperature", "0.8", "--top-p", "0.9", "--seed", "3"]));
    let chat_prompt = ids(&chat["prompt_ids"]);
    assert_eq!(chat_prompt[0], 1, "the chat template starts with <|im_start|>");
    let again = last_json_line(&succeed(&["generate", "--model", model, "--chat", "hi", "--max-tokens", "3", "--json", "--temperature", "0.8", "--top-p", "0.9", "--seed", "3"]));
    assert_eq!(chat["ids"], again["ids"], "same seed, same output");
}

#[test]
fn tokenize_prints_ids() {
    let dir = crate::scratch_dir("tokenize");
    let model = tiny_model(&dir);
    let model = model.to_str().unwrap();
    let plain = ids(&last_json_line(&succeed(&["tokenize", "--model", model, "--", "<|im_start|>the"])));
    let special = ids(&last_json_line(&succeed(&["tokenize", "--model", model, "--special", "--", "<|im_start|>the"])));
    assert_eq!(special[0], 1);
    assert!(plain.len() > special.len());
    let dashes = ids(&last_json_line(&succeed(&["tokenize", "--model", model, "--", "--not-a-flag"])));
    assert!(!dashes.is_empty());
}

/// An executable that prints `text`.
fn printing_script(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\necho '{text}'\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `cinder bench` on a tiny model, against a stand-in `llama-bench` that prints its JSON
/// format: the JSON has the promised fields and the ratios are cinder's speed over the peer's.
#[test]
fn bench_reports_speeds_and_peer_ratios() {
    let dir = crate::scratch_dir("bench");
    let model = tiny_model(&dir);
    let runs = r#"[{"n_prompt": 32, "n_gen": 0, "avg_ts": 200.0}, {"n_prompt": 0, "n_gen": 4, "avg_ts": 50.0}]"#;
    let peer = printing_script(&dir, "llama-bench", runs);
    let out = dir.join("bench.json");
    let peer_arg = format!("cpu={}", peer.display());
    let args = ["bench", "--model", model.to_str().unwrap(), "--decode-tokens", "4", "--prefill-tokens", "32"];
    succeed(&[&args[..], &["--json", out.to_str().unwrap(), "--peer", &peer_arg]].concat());
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for key in ["decode_tok_s", "prefill_tok_s", "device_weight_bytes"] {
        assert!(json[key].as_f64().unwrap() > 0.0, "{key}: {json}");
    }
    assert!(!json["adapter"].as_str().unwrap().is_empty() && !json["backend"].as_str().unwrap().is_empty());
    let p = &json["peers"][0];
    assert_eq!((p["name"].as_str(), p["decode_tok_s"].as_f64(), p["prefill_tok_s"].as_f64()), (Some("cpu"), Some(50.0), Some(200.0)));
    assert!((p["decode_ratio"].as_f64().unwrap() - json["decode_tok_s"].as_f64().unwrap() / 50.0).abs() < 1e-9);
    assert!((p["prefill_ratio"].as_f64().unwrap() - json["prefill_tok_s"].as_f64().unwrap() / 200.0).abs() < 1e-9);

    // Several prompt lengths (each compared with the peer's), batched decode and its plot.
    let runs = r#"[{"n_prompt": 16, "n_gen": 0, "avg_ts": 100.0}, {"n_prompt": 32, "n_gen": 0, "avg_ts": 200.0}, {"n_prompt": 0, "n_gen": 4, "avg_ts": 50.0}]"#;
    let peer = printing_script(&dir, "llama-bench-lengths", runs);
    let plot = dir.join("batch.svg");
    let wide = ["--prefill-tokens", "16,32", "--batch", "1,3", "--plot", plot.to_str().unwrap(), "--json", out.to_str().unwrap()];
    let peer_arg = format!("cpu={}", peer.display());
    let table = succeed(&[&args[..5], &wide[..], &["--peer", &peer_arg]].concat());
    assert!(table.contains("| sequences | decode tok/s (all together) |"), "{table}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let lengths: Vec<u64> = json["prefill"].as_array().unwrap().iter().map(|p| p["tokens"].as_u64().unwrap()).collect();
    assert_eq!((lengths, json["prefill_tokens"].as_u64()), (vec![16, 32], Some(16)), "{json}");
    let batches = json["decode_batches"].as_array().unwrap();
    assert_eq!(batches.iter().map(|b| b["batch"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 3]);
    assert!(batches.iter().all(|b| b["tok_s"].as_f64().unwrap() > 0.0), "{json}");
    let peer_prefill = &json["peers"][0]["prefill"];
    assert_eq!((peer_prefill[0]["tok_s"].as_f64(), peer_prefill[1]["tok_s"].as_f64()), (Some(100.0), Some(200.0)));
    let ratio = json["prefill"][1]["tok_s"].as_f64().unwrap() / 200.0;
    assert!((peer_prefill[1]["ratio"].as_f64().unwrap() - ratio).abs() < 1e-9, "{json}");
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));

    fail_with(&[&args[..], &["--peer", "vulkan=/nonexistent/llama-bench"]].concat(), "running /nonexistent/llama-bench");
    let silent = printing_script(&dir, "silent-bench", "[]");
    fail_with(&[&args[..], &["--peer", &format!("x={}", silent.display())]].concat(), "llama-bench printed no run with 0 prompt and 4 generated tokens");
    fail_with(&["bench", "--model", model.to_str().unwrap(), "--decode-tokens", "0"], "must be at least 1");
    fail_with(&["bench", "--model", model.to_str().unwrap(), "--prefill-tokens", "100000"], "the model's context is 512 tokens");
    let out = cinder(&["bench", "--model", model.to_str().unwrap(), "--peer", "no-equals-sign"]);
    assert_eq!(out.status.code(), Some(2), "clap rejects a peer without NAME=");
    assert!(stderr(&out).contains("expected NAME=PATH"), "{}", stderr(&out));
}

fn write_edited(dir: &Path, name: &str, edit: impl FnOnce(&mut GgufWriter)) -> String {
    let file = GgufFile::from_bytes(TinyModel::default().to_gguf()).unwrap();
    let mut writer = GgufWriter::from_file(&file);
    edit(&mut writer);
    let path = dir.join(name);
    writer.write(&path).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn bad_inputs_get_clear_errors() {
    let dir = crate::scratch_dir("errors");
    let model_path = tiny_model(&dir);
    let model = model_path.to_str().unwrap();
    let generate = |model: &str, extra: &[&str], message: &str| {
        let mut args = vec!["generate", "--model", model];
        args.extend_from_slice(extra);
        fail_with(&args, message);
    };

    generate("/nonexistent/m.gguf", &["--prompt", "x"], "/nonexistent/m.gguf");
    let not_gguf = dir.join("not.gguf");
    std::fs::write(&not_gguf, b"<html>404</html>").unwrap();
    generate(not_gguf.to_str().unwrap(), &["--prompt", "x"], "not a GGUF file");
    let truncated = dir.join("truncated.gguf");
    let bytes = std::fs::read(&model_path).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    generate(truncated.to_str().unwrap(), &["--prompt", "x"], "outside the file");
    let arch = write_edited(&dir, "arch.gguf", |w| {
        w.set_metadata("general.architecture", MetadataValue::String("mamba".into()));
    });
    generate(&arch, &["--prompt", "x"], "unsupported architecture \"mamba\"");
    let pre = write_edited(&dir, "pre.gguf", |w| {
        w.set_metadata("tokenizer.ggml.pre", MetadataValue::String("exotic".into()));
    });
    generate(&pre, &["--prompt", "x"], "pre-tokenizer \"exotic\" is not supported");
    let no_template = write_edited(&dir, "no-template.gguf", |w| {
        w.remove_metadata("tokenizer.chat_template");
    });
    generate(&no_template, &["--chat", "x"], "no chat template");

    generate(model, &["--prompt", "x", "--max-tokens", "100000"], "exceeds the context of 512 tokens");
    generate(model, &["--prompt-ids", "1,99999"], "token id 99999 is outside the vocabulary");
    generate(model, &["--prompt", ""], "the prompt is empty");
    generate(model, &["--prompt", "x", "--temperature", "-1"], "temperature");
    generate(model, &["--prompt", "x", "--top-p", "0"], "top_p");

    let out = cinder(&["generate", "--model", model]);
    assert_eq!(out.status.code(), Some(2), "clap rejects a missing prompt");
    assert!(stderr(&out).contains("--prompt"), "{}", stderr(&out));
    fail_with(&["tokenize", "--model", "/nonexistent/m.gguf", "x"], "/nonexistent/m.gguf");
}

#[test]
fn the_default_model_answers() {
    let model = crate::real_model_path();
    let out = succeed(&["generate", "--model", model.to_str().unwrap(), "--prompt", "The capital of France is", "--max-tokens", "2", "--json"]);
    let json = last_json_line(&out);
    assert!(json["text"].as_str().unwrap().contains("Paris"), "{out}");
}

#[test]
fn serve_and_bench_serve_refuse_bad_arguments() {
    let dir = crate::scratch_dir("serve-args");
    let model = tiny_model(&dir);
    fail_with(&["serve", "--model", model.to_str().unwrap(), "--kv-cache-mb", "0"], "holds no usable KV block");
    // The tiny model's heads have 16 values; q4_0 stores blocks of 32.
    let heads = "--kv-cache-type q4_0: unsupported model feature: a KV cache of q4_0 stores blocks of 32 values along a head, and this model's heads have 16";
    fail_with(&["serve", "--model", model.to_str().unwrap(), "--kv-cache-type", "q4_0", "--device", "cpu"], heads);
    let out = cinder(&["serve", "--model", model.to_str().unwrap(), "--kv-cache-type", "q5_1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown KV cache type `q5_1`; one of f32, f16, q8_0, q4_0"), "{}", stderr(&out));
    fail_with(&["bench", "serve", "--target", "a=http://127.0.0.1:1", "--prompt-min", "0"], "--prompt-min");
    for (target, message) in [("no-equals", "expected NAME=URL"), ("a=https://x", "only http:// URLs")] {
        let out = cinder(&["bench", "serve", "--target", target]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(message), "{err:?} lacks {message:?}");
    }
    // A server that is not there: the level reports the error instead of failing.
    let out = cinder(&["bench", "serve", "--target", "gone=http://127.0.0.1:1", "--concurrency", "1", "--requests", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("| gone | 1 | 0.0 |") && table.contains("| 2/2 |"), "{table}");
    assert!(stderr(&out).contains("connecting to 127.0.0.1:1"), "{}", stderr(&out));
}

#[test]
fn synth_writes_real_shapes_that_load_and_generate_the_same_for_a_seed() {
    let dir = crate::scratch_dir("synth");
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let vocabulary = crate::real_model_path();
    let synth = |out: &str, seed: &str| {
        let from = vocabulary.to_str().unwrap();
        succeed(&["synth", "--like", "smollm2-135m", "--type", "q4_0", "--seed", seed, "--out", out, "--vocabulary-from", from])
    };
    synth(&path("a.gguf"), "3");
    synth(&path("b.gguf"), "3");
    synth(&path("c.gguf"), "4");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    assert!(read("a.gguf") == read("b.gguf"), "one seed, one file");
    assert!(read("a.gguf") != read("c.gguf"), "another seed, other weights");

    let file = GgufFile::open(dir.join("a.gguf")).unwrap();
    assert_eq!(file.metadata().get_u64("llama.block_count").unwrap(), 30);
    assert_eq!(file.tensor("token_embd.weight").unwrap().shape, [576, 49152]);
    assert_eq!(file.tensor("blk.29.ffn_down.weight").unwrap().ty, cinder_gguf::GgmlType::Q4_0);
    let real = GgufFile::open(&vocabulary).unwrap();
    let tokens = |f: &GgufFile| f.metadata().get_str_array("tokenizer.ggml.tokens").unwrap().len();
    assert_eq!(tokens(&file), tokens(&real), "the real vocabulary, from the default model");
    let out = succeed(&["generate", "--model", &path("a.gguf"), "--prompt", "Once upon", "--max-tokens", "3", "--ignore-eos", "--json"]);
    assert_eq!(ids(&last_json_line(&out)["ids"]).len(), 3, "{out}");

    for (args, listed) in [
        (["synth", "--like", "gpt-5", "--type", "q4_0", "--out", "x.gguf"], "llama-3.1-8b"),
        (["synth", "--like", "llama-3.2-1b", "--type", "q3_k", "--out", "x.gguf"], "q4_k"),
    ] {
        let out = cinder(&args);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("possible values") && stderr(&out).contains(listed), "{}", stderr(&out));
    }
}


#[test]
fn the_bench_kit_packs_and_runs_end_to_end() {
    let dir = crate::scratch_dir("bench-kit");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let pack = Command::new("bash")
        .arg(root.join("scripts/bench-kit.sh"))
        .env("CINDER_BIN", env!("CARGO_BIN_EXE_cinder"))
        .output()
        .unwrap();
    assert!(pack.status.success(), "{}", stderr(&pack));
    let tarball = root.join("dist/cinder-bench-linux-x86_64.tar.xz");
    let unpack = Command::new("tar").arg("-xJf").arg(&tarball).arg("-C").arg(&dir).output().unwrap();
    assert!(unpack.status.success(), "{}", stderr(&unpack));
    let kit = dir.join("cinder-bench");
    assert!(kit.join("lib/libvulkan.so.1").is_file());

    let results = dir.join("results");
    let run = Command::new(kit.join("run.sh"))
        .args(["--models", "smollm2-135m", "--quick", "--out"])
        .arg(&results)
        // A bare host: nothing but the kit on the path's side.
        .env_remove("CINDER_MODEL")
        .env("HOME", &dir)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}\n{}", stdout(&run), stderr(&run));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(results.join("results.json")).unwrap()).unwrap();
    let only = &json["runs"][0];
    assert_eq!((&only["model"], &only["type"]), (&Value::from("smollm2-135m"), &Value::from("q4_0")));
    assert!(only["bench"]["decode_tok_s"].as_f64().unwrap() > 0.0, "{json}");
    assert_eq!(only["bench"]["decode_batches"].as_array().unwrap().len(), 2, "{json}");
    assert!(only["serve"].is_object(), "{json}");
    // --profile: every kernel of a decode step and of the 64-token prompt's step, with
    // shares of the step's device time that add up.
    let profile = &only["bench"]["profile"];
    assert!(["device", "host"].contains(&profile["timing"].as_str().unwrap()), "{profile}");
    for (step, expected) in [("decode", "matmul_quant"), ("prefill", "flash_attention")] {
        let kernels = profile[step]["kernels"].as_array().unwrap();
        let names: Vec<&str> = kernels.iter().map(|k| k["kernel"].as_str().unwrap()).collect();
        assert!(names.iter().any(|n| n.starts_with(expected)), "{step}: {names:?}");
        assert!(kernels.iter().all(|k| k["dispatches_per_step"].as_f64().unwrap() > 0.0), "{profile}");
        let shares: f64 = kernels.iter().map(|k| k["share"].as_f64().unwrap()).sum();
        assert!((shares - 1.0).abs() < 1e-6, "{step}: shares sum to {shares}");
    }
    // Each other KV cache type, and 0, 1 and 8 LoRA adapters, on the first model.
    let types: Vec<&str> = json["kv_types"].as_array().unwrap().iter().map(|b| b["kv_cache_type"].as_str().unwrap()).collect();
    assert_eq!(types, ["f32", "q8_0", "q4_0"], "{json}");
    let lora: Vec<u64> = json["lora"]["lora"].as_array().unwrap().iter().map(|l| l["adapters"].as_u64().unwrap()).collect();
    assert_eq!(lora, [0, 0, 1, 1, 8, 8], "{json}");
    let table = std::fs::read_to_string(results.join("results.md")).unwrap();
    assert!(table.contains("## smollm2-135m (q4_0)") && table.contains("| cinder |"), "{table}");
    assert!(table.contains("| LoRA adapters (rank) | sequences | decode tok/s (all together) |"), "{table}");
    assert!(table.contains("| kernel | dispatches per token | share of step time |"), "{table}");
    assert!(results.join("batch-smollm2-135m-q4_0.svg").is_file());
}

#[test]
fn simulate_fleet_compares_routing_policies_and_finds_replicas_for_the_slo() {
    let dir = crate::scratch_dir("simulate-fleet");
    let json = dir.join("fleet.json");
    let plots = dir.join("plots");
    let table = succeed(&[
        "simulate", "--fleet", "--replicas", "4", "--loads", "2,4", "--slo-loads", "24", "--max-replicas", "16", "--duration", "20",
        "--json", json.to_str().unwrap(), "--plots", plots.to_str().unwrap(),
    ]);
    assert!(table.contains("Replicas for TTFT p95 <= 2 s at 24 requests/s"), "{table}");
    assert!(table.contains("| workload | round_robin | least_queue | least_kv | epp |"), "{table}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let curves = report["load_curves"].as_array().unwrap();
    // Five workloads, four policies, two loads of four replicas each.
    assert_eq!(curves.len(), 5 * 4 * 2);
    assert!(curves.iter().all(|r| r["replicas"] == 4 && (r["load"] == 8.0 || r["load"] == 16.0)), "{curves:?}");
    let run = |workload: &str, routing: &str, load: f64| {
        curves.iter().find(|r| r["workload"] == workload && r["routing"] == routing && r["load"] == load).unwrap().clone()
    };
    // Prefix affinity keeps each tenant's system prompt cached on the replicas it went to.
    let (epp, spread) = (run("many_tenants", "epp", 16.0), run("many_tenants", "round_robin", 16.0));
    assert!(epp["prefix_hit_rate"].as_f64().unwrap() > spread["prefix_hit_rate"].as_f64().unwrap() + 0.1, "{epp} {spread}");
    let found = report["replicas_for_slo"].as_array().unwrap();
    assert_eq!(found.len(), 5 * 4);
    let mixed = found.iter().find(|f| f["workload"] == "mixed" && f["routing"] == "round_robin").unwrap();
    let replicas = mixed["replicas"].as_u64().expect("16 replicas hold 24 requests/s of the mixed workload");
    assert!((2..=16).contains(&replicas) && mixed["ttft_p95_s"].as_f64().unwrap() <= 2.0, "{mixed}");
    for name in ["fleet_ttft_p95_many_tenants.svg", "fleet_throughput_multi_turn.svg", "fleet_prefix_hits_shared_prefix.svg"] {
        assert!(std::fs::read_to_string(plots.join(name)).unwrap().contains("<svg"), "{name}");
    }
    fail_with(&["simulate", "--fleet", "--replicas", "0"], "--replicas and --max-replicas must be at least 1");
    let out = cinder(&["simulate", "--replicas", "4"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
