//! The `cinder` binary driven as a user would: streaming output, `--json`, `tokenize`, and
//! a clear error (never a panic) for every bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cinder_gguf::{GgufFile, GgufWriter, MetadataValue};
use cinder_model::tiny::TinyModel;
use cinder_tokenizer::Tokenizer;
use serde_json::Value;

fn cinder(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cinder"))
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
