//! `cinder bench serve`: a load generator for OpenAI-compatible servers.
//!
//! For every concurrency level it sends the same set of requests (prompts of random token
//! ids with lengths spread over a range, a fixed number of output tokens with `ignore_eos`,
//! streaming) to each target in turn, and measures output tokens per second, time to first
//! token and time per output token. Prompts are token ids, so every server sees exactly the
//! same tokens; llama.cpp's `llama-server` accepts them as cinder does. With `--embed-batch`
//! it loads `/v1/embeddings` instead (llama-server with `--embeddings`), and measures
//! embeddings per second at each batch size.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(clap::Args)]
pub struct ServeBenchArgs {
    /// A server to load, as NAME=URL (e.g. `cinder=http://127.0.0.1:8080`); repeatable. The
    /// first one is compared with the others.
    #[arg(long = "target", value_parser = parse_target, required = true)]
    targets: Vec<(String, String)>,
    /// Concurrency levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16")]
    concurrency: Vec<usize>,
    /// Requests per concurrency level.
    #[arg(long, default_value_t = 32)]
    requests: usize,
    /// Shortest prompt in tokens.
    #[arg(long, default_value_t = 32)]
    prompt_min: usize,
    /// Longest prompt in tokens.
    #[arg(long, default_value_t = 256)]
    prompt_max: usize,
    /// Output tokens per request (with ignore_eos).
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Prompt token ids are drawn from 100..VOCAB.
    #[arg(long, default_value_t = 49_152)]
    vocab: u32,
    /// Seeds the prompts: level i draws from seed + i. A server loaded again by a later run
    /// with the same seed finds those prompts in its prefix cache: restart it or change the seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Give up on a request after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Load `/v1/embeddings` instead: each request embeds this many prompts, a level per
    /// value (comma-separated: `1,32`), `--requests` requests at the first `--concurrency`.
    #[arg(long, value_delimiter = ',')]
    embed_batch: Vec<usize>,
}

fn parse_target(s: &str) -> Result<(String, String), String> {
    let (name, url) = s.split_once('=').ok_or("expected NAME=URL")?;
    let host = url.strip_prefix("http://").ok_or("only http:// URLs")?.trim_end_matches('/');
    Ok((name.to_owned(), host.to_owned()))
}

/// One request's timings.
struct Sample {
    ttft: f64,
    tpot: Option<f64>,
    tokens: usize,
}

#[derive(Serialize)]
struct Level {
    concurrency: usize,
    requests: usize,
    errors: usize,
    /// The first error message, if any.
    first_error: Option<String>,
    wall_s: f64,
    output_tok_s: f64,
    ttft_p50_s: f64,
    ttft_p95_s: f64,
    tpot_p50_s: f64,
    tpot_p95_s: f64,
}

#[derive(Serialize)]
struct TargetResult {
    name: String,
    url: String,
    levels: Vec<Level>,
    /// Output tok/s at the highest level up to 8 divided by output tok/s at concurrency 1.
    batching_gain: Option<f64>,
}

#[derive(Serialize)]
struct Comparison {
    concurrency: usize,
    other: String,
    /// The first target's output tok/s over the other's.
    output_tok_s_ratio: f64,
    /// The first target's TTFT p50 over the other's (below 1 is faster).
    ttft_p50_ratio: f64,
}

#[derive(Serialize)]
struct Report {
    requests: usize,
    prompt_tokens: (usize, usize),
    max_tokens: usize,
    targets: Vec<TargetResult>,
    comparisons: Vec<Comparison>,
}

pub fn run(args: ServeBenchArgs) -> anyhow::Result<()> {
    if args.prompt_min == 0 || args.prompt_min > args.prompt_max || args.vocab <= 100 {
        bail!("need 0 < --prompt-min <= --prompt-max and --vocab > 100");
    }
    // Each level gets its own prompts (the same for every target), so that prefix caches
    // do not carry one level's prompts into the next.
    let prompts_of_level = |level: usize, count: usize| -> Vec<Vec<u32>> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed.wrapping_add(level as u64));
        (0..count)
            .map(|_| {
                let len = rng.random_range(args.prompt_min..=args.prompt_max);
                (0..len).map(|_| rng.random_range(100..args.vocab)).collect()
            })
            .collect()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if !args.embed_batch.is_empty() {
        return run_embeddings(&args, &runtime, prompts_of_level);
    }
    let mut targets = Vec::new();
    for (name, url) in &args.targets {
        let mut levels = Vec::new();
        for (i, &c) in args.concurrency.iter().enumerate() {
            let level = runtime.block_on(load(url, &prompts_of_level(i, args.requests), c.max(1), &args));
            eprintln!(
                "{name} C={c}: {:.1} output tok/s, TTFT p50 {:.2} s p95 {:.2} s, TPOT p50 {:.3} s p95 {:.3} s, {} errors",
                level.output_tok_s, level.ttft_p50_s, level.ttft_p95_s, level.tpot_p50_s, level.tpot_p95_s, level.errors
            );
            if let Some(e) = &level.first_error {
                eprintln!("  first error: {e}");
            }
            levels.push(level);
        }
        let at = |c: usize| levels.iter().find(|l| l.concurrency == c).map(|l| l.output_tok_s);
        let high = levels.iter().filter(|l| l.concurrency <= 8).map(|l| l.concurrency).max();
        let batching_gain = match (at(1), high.and_then(at)) {
            (Some(one), Some(high)) if one > 0.0 => Some(high / one),
            _ => None,
        };
        targets.push(TargetResult { name: name.clone(), url: url.clone(), levels, batching_gain });
    }
    let comparisons = comparisons(&targets);
    print_table(&targets, &comparisons);
    let report = Report {
        requests: args.requests,
        prompt_tokens: (args.prompt_min, args.prompt_max),
        max_tokens: args.max_tokens,
        targets,
        comparisons,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn comparisons(targets: &[TargetResult]) -> Vec<Comparison> {
    let Some((first, others)) = targets.split_first() else { return Vec::new() };
    let mut out = Vec::new();
    for other in others {
        for (a, b) in first.levels.iter().zip(&other.levels) {
            out.push(Comparison {
                concurrency: a.concurrency,
                other: other.name.clone(),
                output_tok_s_ratio: a.output_tok_s / b.output_tok_s,
                ttft_p50_ratio: a.ttft_p50_s / b.ttft_p50_s,
            });
        }
    }
    out
}

fn print_table(targets: &[TargetResult], comparisons: &[Comparison]) {
    println!("| server | C | output tok/s | TTFT p50 / p95 (s) | TPOT p50 / p95 (s) | errors |");
    println!("|---|---|---|---|---|---|");
    for t in targets {
        for l in &t.levels {
            println!(
                "| {} | {} | {:.1} | {:.2} / {:.2} | {:.3} / {:.3} | {}/{} |",
                t.name, l.concurrency, l.output_tok_s, l.ttft_p50_s, l.ttft_p95_s, l.tpot_p50_s, l.tpot_p95_s, l.errors, l.requests
            );
        }
        if let Some(gain) = t.batching_gain {
            println!("| {} | batching gain | {gain:.2}x | | | |", t.name);
        }
    }
    for c in comparisons {
        println!(
            "| {} / {} | {} | {:.2}x | {:.2}x | | |",
            targets[0].name, c.other, c.concurrency, c.output_tok_s_ratio, c.ttft_p50_ratio
        );
    }
}

/// Runs every prompt against `host` with `concurrency` requests in flight.
async fn load(host: &str, prompts: &[Vec<u32>], concurrency: usize, args: &ServeBenchArgs) -> Level {
    let start = Instant::now();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(prompts.to_vec().into_iter()));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let queue = queue.clone();
        let host = host.to_owned();
        let (max_tokens, timeout) = (args.max_tokens, Duration::from_secs(args.timeout_s));
        workers.push(tokio::spawn(async move {
            let mut results = Vec::new();
            loop {
                let Some(prompt) = queue.lock().unwrap_or_else(|e| e.into_inner()).next() else { break };
                let result = tokio::time::timeout(timeout, stream_one(&host, &prompt, max_tokens)).await;
                results.push(result.unwrap_or_else(|_| Err(anyhow::anyhow!("timed out"))));
            }
            results
        }));
    }
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    for w in workers {
        for r in w.await.unwrap_or_default() {
            match r {
                Ok(s) => samples.push(s),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let tokens: usize = samples.iter().map(|s| s.tokens).sum();
    let mut ttft: Vec<f64> = samples.iter().map(|s| s.ttft).collect();
    let mut tpot: Vec<f64> = samples.iter().filter_map(|s| s.tpot).collect();
    Level {
        concurrency,
        requests: prompts.len(),
        errors: errors.len(),
        first_error: errors.into_iter().next(),
        wall_s: wall,
        output_tok_s: tokens as f64 / wall,
        ttft_p50_s: percentile(&mut ttft, 0.5),
        ttft_p95_s: percentile(&mut ttft, 0.95),
        tpot_p50_s: percentile(&mut tpot, 0.5),
        tpot_p95_s: percentile(&mut tpot, 0.95),
    }
}

/// One batch size's embedding requests against one server.
#[derive(Serialize)]
struct EmbedLevel {
    batch: usize,
    requests: usize,
    errors: usize,
    first_error: Option<String>,
    wall_s: f64,
    embeddings_per_s: f64,
    latency_p50_s: f64,
}

fn run_embeddings(args: &ServeBenchArgs, runtime: &tokio::runtime::Runtime, prompts_of_level: impl Fn(usize, usize) -> Vec<Vec<u32>>) -> anyhow::Result<()> {
    let concurrency = args.concurrency.first().copied().unwrap_or(1).max(1);
    let mut report = Vec::new();
    for (name, url) in &args.targets {
        let mut levels = Vec::new();
        for (i, &batch) in args.embed_batch.iter().enumerate() {
            let batch = batch.max(1);
            let prompts = prompts_of_level(i, args.requests * batch);
            let batches: Vec<Vec<Vec<u32>>> = prompts.chunks(batch).map(<[Vec<u32>]>::to_vec).collect();
            let level = runtime.block_on(embed_level(url, batches, concurrency, Duration::from_secs(args.timeout_s)));
            eprintln!("{name} batch {batch}: {:.1} embeddings/s, request p50 {:.3} s, {} errors", level.embeddings_per_s, level.latency_p50_s, level.errors);
            if let Some(e) = &level.first_error {
                eprintln!("  first error: {e}");
            }
            levels.push(level);
        }
        report.push((name.clone(), levels));
    }
    println!("| server | inputs per request | embeddings/s | request p50 (s) | errors |");
    println!("|---|---|---|---|---|");
    for (name, levels) in &report {
        for l in levels {
            println!("| {name} | {} | {:.1} | {:.3} | {}/{} |", l.batch, l.embeddings_per_s, l.latency_p50_s, l.errors, l.requests);
        }
    }
    if let Some(((first, ours), others)) = report.split_first() {
        for (other, theirs) in others {
            for (a, b) in ours.iter().zip(theirs) {
                println!("| {first} / {other} | {} | {:.2}x | | |", a.batch, a.embeddings_per_s / b.embeddings_per_s);
            }
        }
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({"requests": args.requests, "prompt_tokens": [args.prompt_min, args.prompt_max], "concurrency": concurrency, "targets": report.iter().map(|(name, levels)| serde_json::json!({"name": name, "levels": levels})).collect::<Vec<_>>()});
        std::fs::write(path, serde_json::to_string_pretty(&json)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Sends every batch to `host`'s `/v1/embeddings`, `concurrency` requests in flight.
async fn embed_level(host: &str, batches: Vec<Vec<Vec<u32>>>, concurrency: usize, timeout: Duration) -> EmbedLevel {
    let (requests, batch) = (batches.len(), batches.first().map_or(0, Vec::len));
    let start = Instant::now();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(batches.into_iter()));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (queue, host) = (queue.clone(), host.to_owned());
            tokio::spawn(async move {
                let mut results = Vec::new();
                loop {
                    let Some(inputs) = queue.lock().unwrap_or_else(|e| e.into_inner()).next() else { break };
                    let begun = Instant::now();
                    let result = tokio::time::timeout(timeout, embed_one(&host, &inputs)).await.unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
                    results.push(result.map(|embedded| (embedded, begun.elapsed().as_secs_f64())));
                }
                results
            })
        })
        .collect();
    let (mut embedded, mut latencies, mut errors) = (0, Vec::new(), Vec::new());
    for worker in workers {
        for result in worker.await.unwrap_or_default() {
            match result {
                Ok((count, seconds)) => {
                    embedded += count;
                    latencies.push(seconds);
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
    }
    let wall = start.elapsed().as_secs_f64();
    EmbedLevel {
        batch,
        requests,
        errors: errors.len(),
        first_error: errors.into_iter().next(),
        wall_s: wall,
        embeddings_per_s: embedded as f64 / wall,
        latency_p50_s: percentile(&mut latencies, 0.5),
    }
}

/// Embeds `inputs` (token-id lists) in one request; returns how many vectors came back.
async fn embed_one(host: &str, inputs: &[Vec<u32>]) -> anyhow::Result<usize> {
    let body = serde_json::json!({"input": inputs, "encoding_format": "float"}).to_string();
    let mut socket = TcpStream::connect(host).await.with_context(|| format!("connecting to {host}"))?;
    let request = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await?;
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else { bail!("no HTTP response") };
    // The head gives the status and the encoding; the body is one JSON value.
    let mut reader = SseLines::default();
    reader.feed(&response[..end + 4]);
    reader.pending.extend_from_slice(&response[end + 4..]);
    reader.dechunk();
    let status = reader.status.unwrap_or_default();
    let text = String::from_utf8_lossy(&reader.body);
    if !status.starts_with("HTTP/1.1 200") {
        bail!("{status}: {}", text.chars().take(300).collect::<String>());
    }
    let answer: serde_json::Value = serde_json::from_str(text.trim()).context("the answer is not JSON")?;
    let count = answer["data"].as_array().map_or(0, Vec::len);
    if count != inputs.len() {
        bail!("{count} embeddings for {} inputs", inputs.len());
    }
    Ok(count)
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// Sends one streaming completion over HTTP/1.1 and times its events.
async fn stream_one(host: &str, prompt: &[u32], max_tokens: usize) -> anyhow::Result<Sample> {
    let body = serde_json::json!({
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
    })
    .to_string();
    let start = Instant::now();
    let mut socket = TcpStream::connect(host).await.with_context(|| format!("connecting to {host}"))?;
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await?;
    let mut buf = vec![0u8; 16 << 10];
    let mut lines = SseLines::default();
    let (mut first, mut last, mut chunks, mut usage_tokens) = (None, None, 0usize, None);
    loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let now = start.elapsed().as_secs_f64();
        for data in lines.feed(&buf[..n]) {
            if data == "[DONE]" {
                continue;
            }
            let event: serde_json::Value = serde_json::from_str(&data).with_context(|| format!("bad event {data}"))?;
            if let Some(error) = event.get("error") {
                bail!("server error: {error}");
            }
            if let Some(n) = event.pointer("/usage/completion_tokens").and_then(|v| v.as_u64()) {
                usage_tokens = Some(n as usize);
            }
            let has_text = event["choices"].as_array().is_some_and(|c| c.iter().any(|c| c["text"].as_str().is_some_and(|t| !t.is_empty())));
            if has_text {
                first.get_or_insert(now);
                last = Some(now);
                chunks += 1;
            }
        }
    }
    let status = lines.status.as_deref().unwrap_or("no response");
    if !status.starts_with("HTTP/1.1 200") {
        bail!("{status}");
    }
    let first = first.context("no tokens streamed")?;
    let tokens = usage_tokens.unwrap_or(chunks);
    let tpot = (tokens > 1).then(|| (last.unwrap_or(first) - first) / (tokens - 1) as f64);
    Ok(Sample { ttft: first, tpot, tokens })
}

/// The `data:` payloads of a server-sent event stream, from raw HTTP bytes (headers and
/// chunked transfer encoding included) fed in pieces.
#[derive(Default)]
struct SseLines {
    pending: Vec<u8>,
    /// The response's status line, once the head has arrived.
    status: Option<String>,
    in_body: bool,
    chunked: bool,
    /// Bytes left in the current chunk (chunked encoding).
    chunk_left: usize,
    body: Vec<u8>,
}

impl SseLines {
    fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        if !self.in_body {
            let Some(end) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") else { return Vec::new() };
            let head = String::from_utf8_lossy(&self.pending[..end]).into_owned();
            self.status = head.lines().next().map(str::to_owned);
            self.chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
            self.pending.drain(..end + 4);
            self.in_body = true;
        }
        self.dechunk();
        let mut out = Vec::new();
        while let Some(end) = self.body.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.body.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                out.push(data.trim_start().to_owned());
            }
        }
        out
    }

    fn dechunk(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.pending);
            return;
        }
        loop {
            if self.chunk_left > 0 {
                let take = self.chunk_left.min(self.pending.len());
                self.body.extend(self.pending.drain(..take));
                self.chunk_left -= take;
                if self.chunk_left > 0 {
                    return;
                }
            }
            // A chunk ends with CRLF, and the next starts with its size line.
            let Some(end) = self.pending.windows(2).position(|w| w == b"\r\n") else { return };
            let line = String::from_utf8_lossy(&self.pending[..end]).into_owned();
            self.pending.drain(..end + 2);
            if line.is_empty() {
                continue;
            }
            self.chunk_left = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
            if self.chunk_left == 0 {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_payloads_survive_chunking_split_anywhere() {
        let body = "data: {\"a\":1}\n\ndata: [DONE]\n\n";
        let chunked = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n", 10, &body[..10], body.len() - 10, &body[10..]);
        for split in 1..chunked.len() {
            let mut sse = SseLines::default();
            let mut got = sse.feed(&chunked.as_bytes()[..split]);
            got.extend(sse.feed(&chunked.as_bytes()[split..]));
            assert_eq!(got, vec!["{\"a\":1}".to_owned(), "[DONE]".to_owned()], "split at {split}");
            assert_eq!(sse.status.as_deref(), Some("HTTP/1.1 200 OK"));
        }
    }

    #[test]
    fn percentiles_pick_from_the_sorted_values() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!((percentile(&mut v, 0.5), percentile(&mut v, 0.95)), (3.0, 5.0));
        assert!(percentile(&mut [], 0.5).is_nan());
    }
}
