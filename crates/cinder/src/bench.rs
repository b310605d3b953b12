//! `cinder bench`: prefill and decode speed of a model on this machine's adapter, and of
//! llama.cpp's `llama-bench` on the same file in the same run when given one, as ratios.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use cinder_engine::{Engine, Event, Generation, GenerationRequest, Speculation, SpeculativeMethod};
use cinder_scheduler::BatchPolicy;
use cinder_model::lora::ADAPTABLE;
use cinder_model::{LoraAdapter, Model};
use cinder_model::many_tokens::{PromptKernelTiming, prompt_kernel_timings};
use cinder_model::profile::{Profile, Profiler};
use serde::Serialize;

use crate::model_path::ModelArg;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    load: Option<LoadBench>,
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    device: crate::device_arg::DeviceArg,
    #[command(flatten)]
    kv_type: crate::kv_arg::KvTypeArg,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Tokens generated one at a time (batch 1) after a 16-token prompt.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Prompt lengths, each run in one forward pass (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "512")]
    prefill_tokens: Vec<usize>,
    /// Decode with this many sequences generating together through the engine (after
    /// 16-token prompts), reporting aggregate tok/s per size (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    batch: Vec<usize>,
    /// Write an SVG plot of decode tok/s against batch size.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Also decode each --batch size with its sequences spread over this many random LoRA
    /// adapters (every matrix, rank --lora-rank; 0: the base model alone), e.g. `0,1,8`.
    #[arg(long, value_delimiter = ',')]
    lora_adapters: Vec<usize>,
    #[arg(long, default_value_t = 16)]
    lora_rank: usize,
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
    /// Time every kernel of 16 decode steps and of a prompt of the first prefill length
    /// (with the adapter's timestamp queries where it has them) and print each kernel's
    /// dispatches per token and share of the step's device time.
    #[arg(long)]
    profile: bool,
    /// Also decode a copy-heavy prompt (repeat a given passage) and a free-writing one with
    /// this speculative decoding (`ngram:K`, or `draft:K` with --draft-model) and without,
    /// and report both speeds, their ratio and the drafts' acceptance rate.
    #[arg(long)]
    speculative: Option<Speculation>,
    /// The draft model of `--speculative draft:K`.
    #[arg(long)]
    draft_model: Option<PathBuf>,
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
    /// At the first prompt length.
    prefill_tok_s: f64,
    /// cinder's speed divided by the peer's.
    decode_ratio: f64,
    prefill_ratio: f64,
    prefill: Vec<PrefillResult>,
}

#[derive(Serialize)]
struct PrefillResult {
    tokens: usize,
    tok_s: f64,
    /// With a peer: cinder's speed divided by the peer's.
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio: Option<f64>,
}

#[derive(Serialize)]
struct BatchResult {
    batch: usize,
    /// Tokens per second of all sequences together.
    tok_s: f64,
}

/// A batch decoding with its sequences spread over `adapters` LoRA adapters.
#[derive(Serialize)]
struct LoraResult {
    adapters: usize,
    rank: usize,
    batch: usize,
    tok_s: f64,
}

/// One workload decoded with and without speculative decoding.
#[derive(Serialize)]
struct SpeculativeResult {
    workload: &'static str,
    speculative: String,
    prompt_tokens: usize,
    generated_tokens: usize,
    /// Decode tok/s (after the first token) without and with speculation, and their ratio.
    plain_tok_s: f64,
    speculative_tok_s: f64,
    speedup: f64,
    draft_tokens: usize,
    accepted_tokens: usize,
    acceptance_rate: f64,
}

/// The speculative benchmark's workloads: a passage to copy (drafts from the prompt are
/// mostly right) and a story to write (they are mostly absent or wrong).
const PASSAGE: &str = "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. \
All that glitters is not gold. Actions speak louder than words. Beauty is in the eye of the beholder. Every cloud has a \
silver lining. Fortune favors the bold. Knowledge is power. Laughter is the best medicine. Practice makes perfect. Rome \
was not built in a day. The early bird catches the worm. Time is money. Where there is smoke, there is fire. You cannot \
judge a book by its cover. Honesty is the best policy.";
const FREE_WRITING: &str = "Write a short story about a lighthouse keeper who finds a message in a bottle.";

/// The workloads' prompts: as chat messages where the model has a template, else as text.
fn speculative_workloads(file: &cinder_gguf::GgufFile, tokenizer: &cinder_tokenizer::Tokenizer) -> anyhow::Result<Vec<(&'static str, Vec<u32>)>> {
    let template = cinder_tokenizer::ChatTemplate::from_gguf(file.metadata(), tokenizer).ok();
    let copy = format!("Repeat the following text exactly, word for word:\n\n{PASSAGE}");
    [("copy", copy.as_str()), ("free writing", FREE_WRITING)]
        .into_iter()
        .map(|(name, text)| {
            let ids = match &template {
                Some(t) => t.encode(tokenizer, &[cinder_tokenizer::ChatMessage::new("user", text)], true)?,
                None => tokenizer.encode(text, true, false)?,
            };
            Ok((name, ids))
        })
        .collect()
}

/// Decodes `prompt` greedily for up to `max_tokens` (to the end of generation) with
/// `speculative`, after a warm-up run that compiles the kernels of its step sizes.
fn time_speculative(engine: &mut Engine, prompt: &[u32], max_tokens: usize, speculative: Speculation) -> anyhow::Result<Generation> {
    let run = |engine: &mut Engine| {
        let request = GenerationRequest { use_prefix_cache: false, speculative: Some(speculative), ..GenerationRequest::new(prompt.to_vec(), max_tokens) };
        engine.generate(request, &crate::wall_clock(), |_| {})
    };
    run(engine)?;
    let generation = run(engine)?;
    if let Some(error) = &generation.finished.error {
        bail!("the speculative benchmark's request failed: {error}");
    }
    Ok(generation)
}

fn bench_speculative(engine: &mut Engine, workloads: &[(&'static str, Vec<u32>)], max_tokens: usize, speculative: Speculation) -> anyhow::Result<Vec<SpeculativeResult>> {
    let mut results = Vec::new();
    for (workload, prompt) in workloads {
        let plain = time_speculative(engine, prompt, max_tokens, Speculation::OFF)?;
        let drafted = time_speculative(engine, prompt, max_tokens, speculative)?;
        let usage = drafted.finished.speculative.unwrap_or_default();
        let (plain_tok_s, speculative_tok_s) = (plain.decode_tokens_per_s(), drafted.decode_tokens_per_s());
        eprintln!("speculative {speculative}, {workload}: {plain_tok_s:.2} -> {speculative_tok_s:.2} tok/s, {:.0} % accepted", 100.0 * usage.acceptance_rate());
        results.push(SpeculativeResult {
            workload,
            speculative: speculative.to_string(),
            prompt_tokens: prompt.len(),
            generated_tokens: drafted.tokens.len(),
            plain_tok_s,
            speculative_tok_s,
            speedup: speculative_tok_s / plain_tok_s,
            draft_tokens: usage.draft_tokens,
            accepted_tokens: usage.accepted_tokens,
            acceptance_rate: usage.acceptance_rate(),
        });
    }
    Ok(results)
}

#[derive(Serialize)]
struct KernelShare {
    kernel: String,
    /// Decode: per generated token; prefill: per prompt (one step).
    dispatches_per_step: f64,
    /// Of the summed device time of the step's kernels.
    share: f64,
    ms_per_step: f64,
}

#[derive(Serialize)]
struct StepProfile {
    /// Tokens per step: 1 for decode, the prompt length for prefill.
    tokens: usize,
    steps: usize,
    kernels: Vec<KernelShare>,
}

#[derive(Serialize)]
struct ProfileResult {
    /// "device" (timestamp queries) or "host" (the host's clock around each launch, which
    /// also counts submission: shares only).
    timing: &'static str,
    decode: StepProfile,
    prefill: StepProfile,
}

impl StepProfile {
    fn new(profile: &Profile, tokens: usize, steps: usize) -> Self {
        let total = profile.seconds().max(f64::MIN_POSITIVE);
        let kernels = profile
            .kernels
            .iter()
            .map(|k| KernelShare {
                kernel: k.kernel.clone(),
                dispatches_per_step: k.dispatches as f64 / steps as f64,
                share: k.seconds / total,
                ms_per_step: k.seconds * 1e3 / steps as f64,
            })
            .collect();
        Self { tokens, steps, kernels }
    }
}

/// Decode steps timed kernel by kernel under `--profile`.
const PROFILE_DECODE_STEPS: usize = 16;

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
    /// What the KV cache stores (`--kv-cache-type`), and its bytes per token.
    kv_cache_type: String,
    kv_bytes_per_token: usize,
    vocab_size: usize,
    load_s: f64,
    decode_tokens: usize,
    decode_tok_s: f64,
    /// The first prompt length and its speed; every length is in `prefill`.
    prefill_tokens: usize,
    prefill_tok_s: f64,
    prefill: Vec<PrefillResult>,
    decode_batches: Vec<BatchResult>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    lora: Vec<LoraResult>,
    repeats: usize,
    peers: Vec<PeerResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<ProfileResult>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    speculative: Vec<SpeculativeResult>,
    /// The prompt kernel timings taken at load: per matrix shape and token count, the
    /// tiled and the row kernels' milliseconds, and which runs.
    prompt_kernels: Vec<PromptKernelTiming>,
}

/// Token ids for a synthetic prompt: spread over the vocabulary, past the control tokens.
fn prompt(len: usize, vocab: usize) -> Vec<u32> {
    (0..len).map(|i| (100 + (i * 7919) % (vocab - 100)) as u32).collect()
}

/// Runs one request of `prompt` for `max_tokens` greedy tokens (end-of-generation
/// ignored) alone through the engine, calling `on_token` as each token arrives.
fn run_alone(engine: &mut Engine, prompt: Vec<u32>, max_tokens: usize, on_token: impl FnMut(&str)) -> anyhow::Result<Generation> {
    let request = GenerationRequest { ignore_eos: true, use_prefix_cache: false, ..GenerationRequest::new(prompt, max_tokens) };
    let clock = crate::wall_clock();
    let generation = engine.generate(request, &clock, on_token)?;
    if let Some(error) = &generation.finished.error {
        bail!("the benchmark request failed: {error}");
    }
    Ok(generation)
}

/// Seconds to run `tokens` as one prompt (to its first token).
fn time_prefill(engine: &mut Engine, tokens: &[u32]) -> anyhow::Result<f64> {
    let f = run_alone(engine, tokens.to_vec(), 1, |_| {})?.finished;
    Ok(f.first_token.unwrap_or(f.finished).since(f.arrival).0 as f64 / 1e6)
}

/// Seconds to generate `n` tokens after the first, one step each, after a short prompt.
fn time_decode(engine: &mut Engine, n: usize) -> anyhow::Result<f64> {
    let f = run_alone(engine, prompt(16, engine.model().config().vocab_size), n + 1, |_| {})?.finished;
    Ok(f.finished.since(f.first_token.unwrap_or(f.arrival)).0 as f64 / 1e6)
}

/// Aggregate decode tokens per second of `batch` sequences generating `n` tokens each
/// together, spread over the LoRA adapters `adapters` (none: the base model): all tokens
/// after the last sequence's first, over the time they took.
fn time_batch(engine: &mut Engine, batch: usize, n: usize, adapters: &[String]) -> anyhow::Result<f64> {
    let vocab = engine.model().config().vocab_size;
    let clock = crate::wall_clock();
    let (requests, mut receivers): (Vec<_>, Vec<_>) = (0..batch)
        .map(|i| {
            let prompt = prompt(16 + i, vocab)[i..].to_vec();
            let adapter = (!adapters.is_empty()).then(|| adapters[i % adapters.len()].clone());
            let request = GenerationRequest { ignore_eos: true, use_prefix_cache: false, adapter, ..GenerationRequest::new(prompt, n + 1) };
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            ((request, tx), rx)
        })
        .unzip();
    engine.submit_all(requests, clock())?;
    let mut ends = Vec::with_capacity(batch);
    while ends.len() < batch {
        engine.step(&clock)?;
        for rx in &mut receivers {
            while let Ok(event) = rx.try_recv() {
                if let Event::Finished(f) = event {
                    if let Some(error) = f.error {
                        bail!("a batch-{batch} request failed: {error}");
                    }
                    ends.push((f.first_token.unwrap_or(f.arrival), f.finished));
                }
            }
        }
    }
    let last_first = ends.iter().map(|e| e.0).max().expect("a batch of at least one");
    let last_end = ends.iter().map(|e| e.1).max().expect("a batch of at least one");
    // Every sequence decodes n tokens after its first; those after the last first token are
    // the steps where all of them ran together.
    Ok((batch * n) as f64 / (last_end.since(last_first).0 as f64 / 1e6))
}

/// Decode tok/s of each --batch size spread over each count of --lora-adapters random
/// adapters, loaded into `engine` (`time(engine, batch, adapter names)`).
fn bench_lora(
    engine: &mut Engine,
    args: &BenchArgs,
    time: &mut dyn FnMut(&mut Engine, usize, &[String]) -> anyhow::Result<f64>,
) -> anyhow::Result<Vec<LoraResult>> {
    let most = args.lora_adapters.iter().copied().max().unwrap_or(0);
    if most == 0 {
        return Ok(Vec::new());
    }
    engine.set_max_loras(most).map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = engine.model().config().clone();
    let mut names = Vec::with_capacity(most);
    for i in 0..most {
        let bytes = cinder_model::lora::synthetic_adapter(&config, &ADAPTABLE, args.lora_rank, 2.0 * args.lora_rank as f32, cinder_gguf::GgmlType::F32, i as u64)?.to_bytes();
        let adapter = LoraAdapter::from_gguf(&cinder_gguf::GgufFile::from_bytes(bytes)?, &config)?;
        let name = format!("lora{i}");
        engine.load_adapter(&name, std::sync::Arc::new(adapter), 1.0).map_err(|e| anyhow::anyhow!("{e}"))?;
        names.push(name);
    }
    // Warm-up: the adapters' kernels compile on their first launch.
    time(engine, 2, &names[..1])?;
    let mut results = Vec::new();
    for &adapters in &args.lora_adapters {
        for &batch in &args.batch {
            let tok_s = time(engine, batch, &names[..adapters])?;
            eprintln!("decode batch {batch} over {adapters} LoRA adapters (rank {}): {tok_s:.2} tok/s", args.lora_rank);
            results.push(LoraResult { adapters, rank: args.lora_rank, batch, tok_s });
        }
    }
    Ok(results)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `llama-bench -o json` with the same lengths and returns decode tokens per second
/// and prefill tokens per second per prompt length.
fn run_peer(path: &PathBuf, model: &std::path::Path, args: &BenchArgs) -> anyhow::Result<(f64, Vec<f64>)> {
    let mut command = Command::new(path);
    command.arg("-m").arg(model);
    let lengths: Vec<String> = args.prefill_tokens.iter().map(usize::to_string).collect();
    command.args(["-p", &lengths.join(","), "-n", &args.decode_tokens.to_string()]);
    command.args(["-r", &args.repeats.max(1).to_string(), "-o", "json"]);
    // The same cache types as cinder's (llama-bench's default is f16 too).
    let types = args.kv_type.over(Default::default());
    command.args(["-ctk", types.keys.name(), "-ctv", types.values.name()]);
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
    let decode = speed(0, args.decode_tokens)?;
    let prefill = args.prefill_tokens.iter().map(|&p| speed(p, 0)).collect::<anyhow::Result<_>>()?;
    Ok((decode, prefill))
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(LoadBench::Serve(load)) = args.load {
        return crate::bench_serve::run(load);
    }
    if args.decode_tokens == 0 || args.repeats == 0 || args.prefill_tokens.contains(&0) || args.batch.contains(&0) {
        bail!("--decode-tokens, --prefill-tokens, --batch and --repeats must be at least 1");
    }
    if args.speculative.is_some_and(|s| s.method == SpeculativeMethod::Draft) != args.draft_model.is_some() {
        bail!("--speculative draft:K and --draft-model go together");
    }
    let path = args.model.path();
    let file = args.model.open()?;
    let device = args.device.open()?;
    if args.profile && device.is_cpu() {
        bail!("--profile times the GPU's kernels, and the model runs on the CPU: add --device gpu");
    }
    let adapter = device.describe().context("the adapter did not describe itself")?;
    let load_start = Instant::now();
    let mut model = Model::load(&file, &device).with_context(|| format!("loading {}", path.display()))?;
    let load_s = load_start.elapsed().as_secs_f64();
    args.kv_type.apply(&mut model)?;
    let context = model.config().context_length;
    // The prefill run samples one token after its prompt; the decode run's first token comes
    // from its 16-token prompt.
    let max_prefill = args.prefill_tokens.iter().copied().max().unwrap_or(1);
    // A batch's sequences have prompts of up to 16 + batch tokens.
    let max_batch = args.batch.iter().copied().max().unwrap_or(1);
    let decode_len = 16 + max_batch + args.decode_tokens + 1;
    let tokenizer = cinder_tokenizer::Tokenizer::from_gguf(file.metadata())?;
    let workloads = match args.speculative {
        Some(_) => speculative_workloads(&file, &tokenizer)?,
        None => Vec::new(),
    };
    let longest_workload = workloads.iter().map(|(_, p)| p.len() + args.decode_tokens).max().unwrap_or(0);
    let longest = (max_prefill + 1).max(decode_len).max(longest_workload);
    if longest > context {
        bail!("the model's context is {context} tokens: lower --prefill-tokens or --decode-tokens");
    }
    let vocab = model.config().vocab_size;
    let device_weight_bytes = model.device_weight_bytes();
    let kv_bytes_per_token = cinder_model::PagedKvCache::bytes_per_position(model.config());
    // Room for the longest prompt alone, or for the largest batch of decoding sequences.
    let mut config = Engine::fixed_config(model.config(), decode_len, max_batch);
    let single = Engine::fixed_config(model.config(), longest, 1);
    config.num_blocks = config.num_blocks.max(single.num_blocks);
    config.max_seq_len = longest;
    config.policy = BatchPolicy::Continuous { max_batch_tokens: longest.max(max_batch), max_running: max_batch, chunk_size: longest };
    let mut engine = Engine::new(model, tokenizer, config)?;
    if let Some(path) = &args.draft_model {
        crate::model_path::set_draft(&mut engine, path, crate::model_path::load_draft(path, &device)?)?;
    }

    // Warm-up: the first launch of every kernel compiles it.
    time_prefill(&mut engine, &prompt(max_prefill, vocab))?;
    time_decode(&mut engine, 2)?;
    let repeat = |engine: &mut Engine, f: &mut dyn FnMut(&mut Engine) -> anyhow::Result<f64>| -> anyhow::Result<f64> {
        Ok(median((0..args.repeats).map(|_| f(engine)).collect::<Result<_, _>>()?))
    };
    let mut prefill = Vec::new();
    for &tokens in &args.prefill_tokens {
        let long_prompt = prompt(tokens, vocab);
        let seconds = repeat(&mut engine, &mut |e| time_prefill(e, &long_prompt))?;
        prefill.push(PrefillResult { tokens, tok_s: tokens as f64 / seconds, ratio: None });
    }
    let decode_s = repeat(&mut engine, &mut |e| time_decode(e, args.decode_tokens))?;
    let decode_tok_s = args.decode_tokens as f64 / decode_s;
    let mut decode_batches = Vec::new();
    for &batch in &args.batch {
        let tok_s = repeat(&mut engine, &mut |e| time_batch(e, batch, args.decode_tokens, &[]))?;
        eprintln!("decode batch {batch}: {tok_s:.2} tok/s");
        decode_batches.push(BatchResult { batch, tok_s });
    }
    let lora = bench_lora(&mut engine, &args, &mut |e, batch, adapters| repeat(e, &mut |e| time_batch(e, batch, args.decode_tokens, adapters)))?;

    let profile = if args.profile {
        // Decode steps only: the profile starts once the prompt's step has given a token.
        let mut profiler = None;
        run_alone(&mut engine, prompt(16, vocab), PROFILE_DECODE_STEPS + 1, |_| {
            profiler.get_or_insert_with(Profiler::start);
        })?;
        let decode = profiler.context("the profiled decode gave no token")?.finish();
        let first = prompt(args.prefill_tokens[0], vocab);
        let profiler = Profiler::start();
        time_prefill(&mut engine, &first)?;
        let prefill = profiler.finish();
        Some(ProfileResult {
            timing: if decode.device_timestamps && prefill.device_timestamps { "device" } else { "host" },
            decode: StepProfile::new(&decode, 1, PROFILE_DECODE_STEPS),
            prefill: StepProfile::new(&prefill, first.len(), 1),
        })
    } else {
        None
    };

    let speculative = match args.speculative {
        Some(speculative) => bench_speculative(&mut engine, &workloads, args.decode_tokens, speculative)?,
        None => Vec::new(),
    };

    let mut peers = Vec::new();
    for (name, binary) in &args.peers {
        eprintln!("running peer {name}: {}", binary.display());
        let (peer_decode, peer_prefill) = run_peer(binary, &path, &args)?;
        let prefill: Vec<PrefillResult> = prefill
            .iter()
            .zip(&peer_prefill)
            .map(|(ours, &theirs)| PrefillResult { tokens: ours.tokens, tok_s: theirs, ratio: Some(ours.tok_s / theirs) })
            .collect();
        peers.push(PeerResult {
            name: name.clone(),
            decode_tok_s: peer_decode,
            prefill_tok_s: prefill[0].tok_s,
            decode_ratio: decode_tok_s / peer_decode,
            prefill_ratio: prefill[0].ratio.expect("set above"),
            prefill,
        });
    }
    if let Some(plot) = &args.plot {
        let points = decode_batches.iter().map(|b| (b.batch as f64, b.tok_s)).collect();
        let title = format!("Decode tok/s by batch size ({})", adapter.name);
        crate::plot::line_chart(plot, &title, "sequences decoding together", "output tokens/s", &vec![("cinder".to_owned(), points)])?;
    }
    let result = BenchResult {
        model: path.display().to_string(),
        adapter: adapter.name,
        backend: adapter.backend,
        device_type: adapter.device_type,
        driver: adapter.driver,
        subgroup_max_size: adapter.subgroup_max_size,
        device_weight_bytes,
        kv_cache_type: engine.kv_cache().types().to_string(),
        kv_bytes_per_token,
        vocab_size: vocab,
        load_s,
        decode_tokens: args.decode_tokens,
        decode_tok_s,
        prefill_tokens: prefill[0].tokens,
        prefill_tok_s: prefill[0].tok_s,
        prefill,
        decode_batches,
        lora,
        repeats: args.repeats,
        peers,
        profile,
        speculative,
        prompt_kernels: prompt_kernel_timings(),
    };
    print_table(&result);
    if let Some(out) = &args.json {
        std::fs::write(out, serde_json::to_string_pretty(&result)? + "\n").with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn print_table(r: &BenchResult) {
    println!(
        "adapter: {} ({}, {}); device weights {:.1} MB; KV cache {} ({:.1} KB per token); load {:.2} s",
        r.adapter,
        r.backend,
        r.device_type,
        r.device_weight_bytes as f64 / 1e6,
        r.kv_cache_type,
        r.kv_bytes_per_token as f64 / 1e3,
        r.load_s
    );
    let lengths: String = r.prefill.iter().map(|p| format!(" prefill tok/s ({} tokens) |", p.tokens)).collect();
    println!("| engine | decode tok/s (batch 1, {} tokens) |{lengths}", r.decode_tokens);
    println!("|---|---|{}", "---|".repeat(r.prefill.len()));
    let speeds = |prefill: &[PrefillResult]| -> String {
        prefill.iter().map(|p| format!(" {:.2}{} |", p.tok_s, p.ratio.map_or(String::new(), |x| format!(" ({x:.3}x)")))).collect()
    };
    println!("| cinder | {:.2} |{}", r.decode_tok_s, speeds(&r.prefill));
    for p in &r.peers {
        println!("| {} | {:.2} ({:.3}x) |{}", p.name, p.decode_tok_s, p.decode_ratio, speeds(&p.prefill));
    }
    if let Some(profile) = &r.profile {
        let timing = match profile.timing {
            "device" => "device timestamps",
            _ => "the host's clock around each launch (no timestamp queries): shares only",
        };
        for (name, step, per) in [("decode", &profile.decode, "token"), ("prefill", &profile.prefill, "prompt")] {
            println!("\n{name} profile ({} tokens per step, {} steps; {timing})", step.tokens, step.steps);
            println!("| kernel | dispatches per {per} | share of step time | ms per {per} |\n|---|---|---|---|");
            for k in &step.kernels {
                println!("| {} | {:.1} | {:.1}% | {:.3} |", k.kernel, k.dispatches_per_step, 100.0 * k.share, k.ms_per_step);
            }
        }
    }
    if !r.prompt_kernels.is_empty() {
        println!("\nprompt kernels, timed at load (the faster runs prompts of about that many tokens)");
        println!("| matrix | tokens | tiled ms | rows ms | kernel |\n|---|---|---|---|---|");
        for k in &r.prompt_kernels {
            println!("| {} {}x{} | {} | {:.3} | {:.3} | {} |", k.format, k.rows, k.cols, k.tokens, k.tiled_ms, k.rows_ms, k.kernel);
        }
    }
    if !r.speculative.is_empty() {
        println!("\n| workload | speculative | tokens | decode tok/s without | with | speed-up | accepted |\n|---|---|---|---|---|---|---|");
        for s in &r.speculative {
            println!(
                "| {} | {} | {} | {:.2} | {:.2} | {:.2}x | {}/{} ({:.0} %) |",
                s.workload, s.speculative, s.generated_tokens, s.plain_tok_s, s.speculative_tok_s, s.speedup, s.accepted_tokens, s.draft_tokens, 100.0 * s.acceptance_rate
            );
        }
    }
    if r.decode_batches.iter().any(|b| b.batch > 1) {
        println!("\n| sequences | decode tok/s (all together) |\n|---|---|");
        for b in &r.decode_batches {
            println!("| {} | {:.2} |", b.batch, b.tok_s);
        }
    }
    if !r.lora.is_empty() {
        println!("\n| LoRA adapters (rank) | sequences | decode tok/s (all together) |\n|---|---|---|");
        for l in &r.lora {
            println!("| {} ({}) | {} | {:.2} |", l.adapters, l.rank, l.batch, l.tok_s);
        }
    }
}
