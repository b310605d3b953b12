//! End-to-end tests: the real default model against llama.cpp's reference fixtures, the
//! `gguf` package's dequantizer, and the `cinder` binary driven as a user would.
//!
//! Fixtures live in `tests/fixtures/` and are made by `scripts/make_reference_fixtures.py`.
//! The real model is the one `scripts/setup.sh` installs (or `$CINDER_MODEL`).

/// Tests that run once per backend: `on_each_backend!(name, …)` makes `gpu::name` and
/// `cpu::name`, each calling `name(On::…)`.
macro_rules! on_each_backend {
    ($($test:ident),* $(,)?) => {
        mod gpu {
            $(#[test]
            fn $test() {
                super::$test(crate::On::Gpu);
            })*
        }
        mod cpu {
            $(#[test]
            fn $test() {
                super::$test(crate::On::Cpu);
            })*
        }
    };
}

mod anthropic;
mod architectures;
mod browser;
mod cli;
mod control;
mod deploy;
mod dequant;
mod embeddings;
mod fleet;
mod fuzz;
mod hardening;
mod isolation;
mod lora;
mod models;
mod parity;
mod responses;
mod serve;
mod speculative;
mod tokenizer;
mod tool_formats;

use std::path::PathBuf;
use std::process::Command;

/// A backend a test runs on: the GPU's (lavapipe here and in CI) or the CPU's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    Gpu = 0,
    Cpu = 1,
}

impl On {
    pub fn backend(self) -> cinder_model::Backend {
        match self {
            On::Gpu => cinder_model::Backend::Gpu(cinder_model::wgpu_device().unwrap()),
            On::Cpu => cinder_model::Backend::cpu(0).unwrap(),
        }
    }

    /// The `--device` that selects it.
    pub fn flag(self) -> &'static str {
        match self {
            On::Gpu => "gpu",
            On::Cpu => "cpu",
        }
    }
}

/// The `cinder` binary on the GPU backend unless the test names another `--device`: `auto`
/// would pick the CPU on a software adapter, and the WGSL kernels must keep running here.
pub fn cinder_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cinder"));
    command.env("CINDER_DEVICE", "gpu");
    command
}

/// The default model (or `$CINDER_MODEL`). Tests that need it fail with instructions when
/// it is missing.
pub fn real_model_path() -> PathBuf {
    match std::env::var_os("CINDER_MODEL") {
        Some(path) => PathBuf::from(path),
        None => installed("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    }
}

pub fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The SHA-256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A file `scripts/setup.sh` installs under `$CINDER_HOME` (`~/.cache/cinder`), e.g.
/// `models/gemma-3-270m-q4_k_m.gguf` or `vocab/ggml-vocab-llama-spm.gguf`. Tests that need
/// it fail with instructions when it is missing.
pub fn installed(relative: &str) -> PathBuf {
    let home = std::env::var_os("CINDER_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/cinder"));
    let path = home.join(relative);
    assert!(path.exists(), "{} is missing: run scripts/setup.sh first", path.display());
    path
}

/// A fresh directory for one test's files.
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cinder-e2e-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
