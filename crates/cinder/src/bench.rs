//! `cinder bench`: prefill and decode speed of a model on this machine's adapter, and of
//! llama.cpp's `llama-bench` on the same file in the same run when given one, as ratios.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use cinder_engine::{Engine, Generation, GenerationRequest};
use cinder_model::Model;
use serde::Serialize;

use crate::model_path::ModelArg;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    load: Option<LoadBench>,
    #[command(flatten)]
    model: ModelArg,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Tokens generated one at a time (batch 1) after a 16-token prompt.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Length of the prompt run in one forward pass.
    #[arg(long, default_value_t = 512)]
    prefill_tokens: usize,
    /// Runs of each test after a warm-up run; the median is reported.
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// A llama.cpp `llama-bench` binary to run on the same model, as NAME=PATH (e.g.
    /// `vulkan=/opt/llama-vulkan/bin/llama-bench`); repeatable.
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<(String, PathBuf)>,
    /// Extra arguments for every peer, e.g. `--peer-args="-t 2"`.
    #[arg(long, allow_hyphen_values = true)]
    peer_args: Option<String>,
}

#[derive(clap::Subcommand)]
enum LoadBench {
    /// Load OpenAI-compatible servers (cinder serve, llama-server) with concurrent streaming
    /// requests; report output tok/s, TTFT and TPOT per concurrency level.
    Serve(crate::bench_serve::ServeBenchArgs),
}

fn parse_peer(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s.split_once('=').ok_or("expected NAME=PATH")?;
    Ok((name.to_owned(), PathBuf::from(path)))
}

#[derive(Serialize)]
struct PeerResult {
    name: String,
    decode_tok_s: f64,
    prefill_tok_s: f64,
    /// cinder's speed divided by the peer's.
    decode_ratio: f64,
    prefill_ratio: f64,
}

#[derive(Serialize)]
struct BenchResult {
    model: String,
    adapter: String,
    backend: String,
    device_type: String,
    driver: String,
    /// The largest subgroup size when the quantized kernels use subgroups, else null.
    subgroup_max_size: Option<u32>,
    device_weight_bytes: usize,
    load_s: f64,
    decode_tokens: usize,
    decode_tok_s: f64,
    prefill_tokens: usize,
    prefill_tok_s: f64,
    repeats: usize,
    peers: Vec<PeerResult>,
}

/// Token ids for a synthetic prompt: spread over the vocabulary, past the control tokens.
fn prompt(len: usize, vocab: usize) -> Vec<u32> {
    (0..len).map(|i| (100 + (i * 7919) % (vocab - 100)) as u32).collect()
}

/// Runs one request of `prompt` for `max_tokens` greedy tokens (end-of-generation
/// ignored) alone through the engine.
fn run_alone(engine: &mut Engine, prompt: Vec<u32>, max_tokens: usize) -> anyhow::Result<Generation> {
    let request = GenerationRequest { ignore_eos: true, use_prefix_cache: false, ..GenerationRequest::new(prompt, max_tokens) };
    let clock = crate::wall_clock();
    let generation = engine.generate(request, &clock, |_| {})?;
    if let Some(error) = &generation.finished.error {
        bail!("the benchmark request failed: {error}");
    }
    Ok(generation)
}

/// Seconds to run `tokens` as one prompt (to its first token).
fn time_prefill(engine: &mut Engine, tokens: &[u32]) -> anyhow::Result<f64> {
    let f = run_alone(engine, tokens.to_vec(), 1)?.finished;
    Ok(f.first_token.unwrap_or(f.finished).since(f.arrival).0 as f64 / 1e6)
}

/// Seconds to generate `n` tokens after the first, one step each, after a short prompt.
fn time_decode(engine: &mut Engine, n: usize) -> anyhow::Result<f64> {
    let f = run_alone(engine, prompt(16, engine.model().config().vocab_size), n + 1)?.finished;
    Ok(f.finished.since(f.first_token.unwrap_or(f.arrival)).0 as f64 / 1e6)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `llama-bench -o json` and returns (decode, prefill) tokens per second.
fn run_peer(path: &PathBuf, model: &std::path::Path, args: &BenchArgs) -> anyhow::Result<(f64, f64)> {
    let mut command = Command::new(path);
    command.arg("-m").arg(model);
    command.args(["-p", &args.prefill_tokens.to_string(), "-n", &args.decode_tokens.to_string()]);
    command.args(["-r", &args.repeats.max(1).to_string(), "-o", "json"]);
    command.args(args.peer_args.as_deref().unwrap_or("").split_whitespace());
    let output = command.output().with_context(|| format!("running {}", path.display()))?;
    if !output.status.success() {
        bail!("{} failed: {}", path.display(), String::from_utf8_lossy(&output.stderr).trim());
    }
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).context("reading llama-bench's JSON")?;
    let speed = |prompt: usize, generated: usize| {
        runs.iter()
            .find(|r| r["n_prompt"].as_u64() == Some(prompt as u64) && r["n_gen"].as_u64() == Some(generated as u64))
            .and_then(|r| r["avg_ts"].as_f64())
            .with_context(|| format!("llama-bench printed no run with {prompt} prompt and {generated} generated tokens"))
    };
    Ok((speed(0, args.decode_tokens)?, speed(args.prefill_tokens, 0)?))
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(LoadBench::Serve(load)) = args.load {
        return crate::bench_serve::run(load);
    }
    if args.decode_tokens == 0 || args.prefill_tokens == 0 || args.repeats == 0 {
        bail!("--decode-tokens, --prefill-tokens and --repeats must be at least 1");
    }
    let path = args.model.path();
    let file = args.model.open()?;
    let device = cinder_model::wgpu_device().context("no usable GPU adapter")?;
    let adapter = cinder_model::adapter_info(&device).context("the adapter did not describe itself")?;
    eprintln!("adapter: {}", cinder_model::adapter_name(&device));
    let load_start = Instant::now();
    let model = Model::load(&file, &device).with_context(|| format!("loading {}", path.display()))?;
    let load_s = load_start.elapsed().as_secs_f64();
    let context = model.config().context_length;
    // The prefill run samples one token after its prompt; the decode run's first token comes
    // from its 16-token prompt.
    let longest = (args.prefill_tokens + 1).max(16 + args.decode_tokens + 1);
    if longest > context {
        bail!("the model's context is {context} tokens: lower --prefill-tokens or --decode-tokens");
    }
    let long_prompt = prompt(args.prefill_tokens, model.config().vocab_size);
    let device_weight_bytes = model.device_weight_bytes();
    let tokenizer = cinder_tokenizer::Tokenizer::from_gguf(file.metadata())?;
    let config = Engine::single_request_config(model.config(), longest);
    let mut engine = Engine::new(model, tokenizer, config)?;

    // Warm-up: the first launch of every kernel compiles it.
    time_prefill(&mut engine, &long_prompt)?;
    time_decode(&mut engine, 2)?;
    let prefill_s = median((0..args.repeats).map(|_| time_prefill(&mut engine, &long_prompt)).collect::<Result<_, _>>()?);
    let decode_s = median((0..args.repeats).map(|_| time_decode(&mut engine, args.decode_tokens)).collect::<Result<_, _>>()?);
    let decode_tok_s = args.decode_tokens as f64 / decode_s;
    let prefill_tok_s = args.prefill_tokens as f64 / prefill_s;

    let mut peers = Vec::new();
    for (name, binary) in &args.peers {
        eprintln!("running peer {name}: {}", binary.display());
        let (peer_decode, peer_prefill) = run_peer(binary, &path, &args)?;
        peers.push(PeerResult {
            name: name.clone(),
            decode_tok_s: peer_decode,
            prefill_tok_s: peer_prefill,
            decode_ratio: decode_tok_s / peer_decode,
            prefill_ratio: prefill_tok_s / peer_prefill,
        });
    }
    let result = BenchResult {
        model: path.display().to_string(),
        adapter: adapter.name,
        backend: adapter.backend,
        device_type: adapter.device_type,
        driver: adapter.driver,
        subgroup_max_size: adapter.subgroup_max_size,
        device_weight_bytes,
        load_s,
        decode_tokens: args.decode_tokens,
        decode_tok_s,
        prefill_tokens: args.prefill_tokens,
        prefill_tok_s,
        repeats: args.repeats,
        peers,
    };
    print_table(&result);
    if let Some(out) = &args.json {
        std::fs::write(out, serde_json::to_string_pretty(&result)? + "\n").with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn print_table(r: &BenchResult) {
    println!("adapter: {} ({}, {}); device weights {:.1} MB; load {:.2} s", r.adapter, r.backend, r.device_type, r.device_weight_bytes as f64 / 1e6, r.load_s);
    println!("| engine | decode tok/s (batch 1, {} tokens) | prefill tok/s ({} tokens) | decode ratio | prefill ratio |", r.decode_tokens, r.prefill_tokens);
    println!("|---|---|---|---|---|");
    println!("| cinder | {:.2} | {:.2} | | |", r.decode_tok_s, r.prefill_tok_s);
    for p in &r.peers {
        println!("| {} | {:.2} | {:.2} | {:.3}x | {:.3}x |", p.name, p.decode_tok_s, p.prefill_tok_s, p.decode_ratio, p.prefill_ratio);
    }
}
