//! The engine on a tiny random-weight model: batching invariance, seeds, stops,
//! cancellation, refused requests and constrained decoding.

use std::cell::Cell;

use cinder_engine::{
    Engine, Event, Finished, GenerationRequest, Grammars, Speculation, SpeculationConfig, SpeculativeMethod, StepOutcome, SubmitError,
};
use cinder_gguf::GgufFile;
use cinder_model::tiny::TinyModel;
use cinder_model::{Backend, KvType, KvTypes, Model, SamplingParams};
use cinder_scheduler::{BatchPolicy, FinishReason, SchedulerConfig, Time};
use cinder_tokenizer::Tokenizer;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// The engine's tests run on the CPU backend: they test scheduling, not kernels (the model's
/// tests run both backends), and the CPU runs tiny models several times faster than lavapipe.
fn cpu() -> Backend {
    Backend::cpu(2).unwrap()
}

fn engine_with(config: SchedulerConfig) -> Engine {
    engine_of(TinyModel::default(), config)
}

fn engine_of(spec: TinyModel, config: SchedulerConfig) -> Engine {
    let file = GgufFile::from_bytes(spec.to_gguf()).unwrap();
    let model = Model::load(&file, &cpu()).unwrap();
    let tokenizer = Tokenizer::from_gguf(file.metadata()).unwrap();
    Engine::new(model, tokenizer, config).unwrap()
}

fn engine() -> Engine {
    engine_with(SchedulerConfig { num_blocks: 256, block_size: 8, ..Default::default() })
}

/// Everything a request streamed.
#[derive(Debug, Default)]
struct Output {
    tokens: Vec<u32>,
    text: String,
    logprobs: Vec<f32>,
    finished: Option<Finished>,
}

fn collect(rx: &mut UnboundedReceiver<Event>, out: &mut Output) {
    while let Ok(event) = rx.try_recv() {
        match event {
            Event::Token { token, text, logprob } => {
                out.tokens.push(token);
                out.text.push_str(&text);
                out.logprobs.extend(logprob.map(|l| l.logprob));
            }
            Event::Finished(f) => {
                out.text.push_str(&f.text);
                out.finished = Some(f);
            }
        }
    }
}

struct Clock(Cell<u64>);

impl Clock {
    fn now(&self) -> Time {
        self.0.set(self.0.get() + 1_000);
        Time(self.0.get())
    }
}

/// Submits every request at once and steps until all have ended.
fn run(engine: &mut Engine, requests: Vec<GenerationRequest>) -> Vec<Output> {
    let clock = Clock(Cell::new(0));
    let mut receivers: Vec<_> = requests
        .into_iter()
        .map(|r| {
            let (tx, rx) = unbounded_channel();
            engine.submit(r, tx, clock.now()).unwrap();
            rx
        })
        .collect();
    let mut outputs: Vec<Output> = receivers.iter().map(|_| Output::default()).collect();
    for _ in 0..10_000 {
        if !engine.has_work() {
            break;
        }
        engine.step(&|| clock.now()).unwrap();
        engine.check_invariants();
        for (rx, out) in receivers.iter_mut().zip(&mut outputs) {
            collect(rx, out);
        }
    }
    assert!(outputs.iter().all(|o| o.finished.is_some()), "every request ends");
    outputs
}

fn prompt(seed: usize, len: usize) -> Vec<u32> {
    (0..len).map(|i| (3 + (i * 37 + seed * 101) % 255) as u32).collect()
}

#[test]
fn greedy_tokens_do_not_depend_on_the_rest_of_the_batch() {
    let mut engine = engine();
    let probes: Vec<GenerationRequest> =
        [5, 17, 40].iter().enumerate().map(|(s, &n)| GenerationRequest { ignore_eos: true, ..GenerationRequest::new(prompt(s, n), 12) }).collect();
    let alone: Vec<Vec<u32>> = probes.iter().map(|p| run(&mut engine, vec![p.clone()]).remove(0).tokens).collect();
    // The probes among 15 others of different lengths, with chunked prefill. Alone, the
    // device picks the probes' greedy tokens (PendingLogits::top_k, k = 1); some of the others
    // sample, so in the crowd most steps read whole logits and pick on the CPU.
    let mut crowd: Vec<GenerationRequest> = (0..15)
        .map(|s| {
            let temperature = if s % 3 == 0 { 0.8 } else { 0.0 };
            let sampling = SamplingParams { temperature, seed: s as u64, ..Default::default() };
            GenerationRequest { ignore_eos: true, sampling, ..GenerationRequest::new(prompt(s + 10, 3 + s * 7), 4 + s) }
        })
        .collect();
    crowd.splice(3..3, probes.clone());
    let mut chunked = engine_with(SchedulerConfig {
        num_blocks: 256,
        block_size: 8,
        policy: BatchPolicy::Continuous { max_batch_tokens: 48, max_running: 64, chunk_size: 16 },
        ..Default::default()
    });
    let together = run(&mut chunked, crowd);
    for (i, tokens) in alone.iter().enumerate() {
        assert_eq!(&together[3 + i].tokens, tokens, "probe {i}");
        assert_eq!(together[3 + i].finished.as_ref().unwrap().reason, FinishReason::Length);
    }
    assert_eq!(engine.metrics(Time(0)).scheduler.kv_blocks_in_use, 0);
}

#[test]
fn a_seed_gives_the_same_text_alone_or_batched() {
    let mut engine = engine();
    let sampled = |seed| GenerationRequest {
        sampling: SamplingParams { temperature: 1.2, top_k: 40, seed, ..Default::default() },
        ignore_eos: true,
        ..GenerationRequest::new(prompt(1, 9), 16)
    };
    // Alone, the device keeps each step's 64 best logits and the sampler draws among them;
    // beside a request that samples from the whole vocabulary every step reads whole logits.
    let alone = run(&mut engine, vec![sampled(7)]).remove(0).tokens;
    let unrestricted = GenerationRequest {
        sampling: SamplingParams { temperature: 1.0, seed: 5, ..Default::default() },
        ..sampled(5)
    };
    let batched = run(&mut engine, vec![sampled(3), sampled(7), sampled(7), unrestricted]);
    assert_eq!(batched[1].tokens, alone);
    assert_eq!(batched[2].tokens, alone);
    assert_ne!(batched[0].tokens, alone, "another seed draws other tokens");
}

#[test]
fn stop_strings_stop_tokens_and_logprobs() {
    let mut engine = engine();
    let base = GenerationRequest { ignore_eos: true, ..GenerationRequest::new(prompt(2, 6), 24) };
    let free = run(&mut engine, vec![base.clone()]).remove(0);
    assert_eq!(free.tokens.len(), 24);

    // A stop string taken from the middle of the free-running text: the output is the text
    // before it, and generation ends there.
    let chars: Vec<char> = free.text.chars().collect();
    let (cut, stop) = (chars.len() / 2, chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect::<String>());
    let expected: String = free.text[..free.text.find(&stop).unwrap()].to_owned();
    assert!(expected.chars().count() <= cut);
    let stopped = run(&mut engine, vec![GenerationRequest { stop: vec![stop.clone()], ..base.clone() }]).remove(0);
    assert_eq!(stopped.text, expected, "stop {stop:?}");
    assert_eq!(stopped.finished.unwrap().reason, FinishReason::Stop);

    // A stop token id ends generation with that token, whose text is not sent.
    let stop_token = free.tokens[5];
    let first = free.tokens.iter().position(|&t| t == stop_token).unwrap();
    let by_token = run(&mut engine, vec![GenerationRequest { stop_token_ids: vec![stop_token], ..base.clone() }]).remove(0);
    assert_eq!(by_token.tokens, free.tokens[..=first]);
    let done = by_token.finished.unwrap();
    assert_eq!((done.reason, done.completion_tokens, done.prompt_tokens), (FinishReason::Stop, first + 1, 6));

    // Logprobs: the greedy token is the most likely one and the alternatives are sorted.
    let (tx, mut rx) = unbounded_channel();
    let clock = Clock(Cell::new(0));
    engine.submit(GenerationRequest { logprobs: Some(3), max_tokens: 4, ..base }, tx, clock.now()).unwrap();
    while engine.has_work() {
        engine.step(&|| clock.now()).unwrap();
    }
    let mut seen = 0;
    while let Ok(event) = rx.try_recv() {
        if let Event::Token { token, logprob: Some(lp), .. } = event {
            assert_eq!(lp.top.len(), 3);
            assert_eq!(lp.top[0].0, token);
            assert!((lp.top[0].1 - lp.logprob).abs() < 1e-6 && lp.logprob <= 0.0);
            assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
            seen += 1;
        }
    }
    assert_eq!(seen, 4);
}

#[test]
fn dropped_receivers_cancel_and_free_every_block() {
    let mut engine = engine();
    let clock = Clock(Cell::new(0));
    let mut kept = Vec::new();
    for s in 0..20 {
        let (tx, rx) = unbounded_channel();
        engine.submit(GenerationRequest { ignore_eos: true, ..GenerationRequest::new(prompt(s, 10 + s), 200) }, tx, clock.now()).unwrap();
        kept.push(rx);
    }
    for _ in 0..3 {
        engine.step(&|| clock.now()).unwrap();
    }
    assert!(engine.metrics(clock.now()).scheduler.kv_blocks_in_use > 0);
    drop(kept);
    assert_eq!(engine.step(&|| clock.now()).unwrap(), StepOutcome::Idle);
    let metrics = engine.metrics(clock.now()).scheduler;
    assert_eq!((metrics.running, metrics.waiting, metrics.kv_blocks_in_use), (0, 0, 0));
    assert!(!engine.has_work());
    engine.check_invariants();
}

#[test]
fn abort_ends_a_running_request_as_cancelled_and_frees_its_blocks() {
    let mut engine = engine();
    let clock = Clock(Cell::new(0));
    let (tx, mut rx) = unbounded_channel();
    let id = engine.submit(GenerationRequest { ignore_eos: true, ..GenerationRequest::new(prompt(3, 12), 100) }, tx, clock.now()).unwrap();
    engine.step(&|| clock.now()).unwrap();
    assert!(engine.metrics(clock.now()).scheduler.kv_blocks_in_use > 0);
    engine.abort(id, clock.now());
    let mut out = Output::default();
    collect(&mut rx, &mut out);
    let done = out.finished.expect("an end is sent");
    assert_eq!((done.reason, done.completion_tokens), (FinishReason::Cancelled, 1));
    assert_eq!(engine.metrics(clock.now()).scheduler.kv_blocks_in_use, 0);
    assert!(!engine.has_work());
}

#[test]
fn bad_requests_are_refused_with_the_reason_and_the_engine_keeps_serving() {
    let mut engine = engine();
    let (tx, _rx) = unbounded_channel();
    let mut refuse = |r: GenerationRequest| match engine.submit(r, tx.clone(), Time(0)) {
        Err(SubmitError::Invalid(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert!(refuse(GenerationRequest::new(vec![], 4)).contains("empty"));
    assert!(refuse(GenerationRequest::new(vec![1, 99_999], 4)).contains("99999 is outside the vocabulary"));
    assert!(refuse(GenerationRequest::new(vec![1; 500], 100)).contains("exceeds the context of 512"));
    let hot = GenerationRequest { sampling: SamplingParams { temperature: -1.0, ..Default::default() }, ..GenerationRequest::new(vec![1], 4) };
    assert!(refuse(hot).contains("temperature"));
    assert!(refuse(GenerationRequest::new(vec![1], 0)).contains("max_tokens"));
    let ok = run(&mut engine, vec![GenerationRequest::new(prompt(0, 4), 3)]);
    assert!(ok[0].finished.is_some());
}

#[test]
fn prefix_cache_hits_and_preemption_leave_greedy_tokens_unchanged() {
    let request = |seed: usize, use_prefix_cache| GenerationRequest {
        ignore_eos: true,
        use_prefix_cache,
        ..GenerationRequest::new(prompt(seed, 37), 30)
    };
    let mut engine = engine();
    let first = run(&mut engine, vec![request(1, true)]).remove(0).tokens;
    // The same prompt again: its 4 full blocks come from the prefix cache.
    assert_eq!(run(&mut engine, vec![request(1, true)]).remove(0).tokens, first);
    let hits = engine.metrics(Time(0)).scheduler.prefix_cache;
    assert!(hits.hit_rate() > 0.0, "{hits:?}");
    assert_eq!(run(&mut engine, vec![request(1, false)]).remove(0).tokens, first);

    // A pool too small for four such requests at once: some are preempted and recomputed.
    let alone: Vec<Vec<u32>> = (2..6).map(|s| run(&mut engine, vec![request(s, false)]).remove(0).tokens).collect();
    let mut small = engine_with(SchedulerConfig { num_blocks: 22, block_size: 8, watermark_blocks: 1, ..Default::default() });
    let together = run(&mut small, (2..6).map(|s| request(s, false)).collect());
    for (out, tokens) in together.iter().zip(&alone) {
        assert_eq!(&out.tokens, tokens);
    }
    let preempted: u32 = together.iter().map(|o| o.finished.as_ref().unwrap().preemptions).sum();
    assert!(preempted > 0, "the small pool forced no preemption");
    assert_eq!(small.metrics(Time(0)).scheduler.kv_blocks_in_use, 0);
}

/// A Gemma 3 model with a 12-position window on five layers in six: its windowed layers
/// give back the blocks behind the window while a request runs, so a long request holds
/// about a third of the blocks a full-attention model would; greedy tokens are those of the
/// model run alone, batched or not, with prefix-cache hits (a prompt's windowed blocks are
/// served from the cache where the window needs them) and with chunked prefill.
#[test]
fn windowed_layers_release_blocks_and_keep_tokens_unchanged() {
    use cinder_model::arch::GEMMA3;

    let spec = TinyModel { arch: &GEMMA3, n_layers: 6, head_dim: Some(32), sliding_window: Some(12), seed: 21, ..Default::default() };
    let config = || SchedulerConfig {
        num_blocks: 400,
        block_size: 4,
        policy: BatchPolicy::Continuous { max_batch_tokens: 64, max_running: 8, chunk_size: 16 },
        ..Default::default()
    };
    let mut engine = engine_of(spec.clone(), config());
    let groups = engine.model().config().kv_layout().groups;
    assert_eq!(groups, [None, Some(12), Some(12), Some(12), Some(12), Some(12)]);
    let request = |seed: usize, len: usize| GenerationRequest { ignore_eos: true, ..GenerationRequest::new(prompt(seed, len), 40) };

    // The model alone, one position at a time, with no paging or scheduler in the way.
    let file = GgufFile::from_bytes(spec.to_gguf()).unwrap();
    let model = Model::load(&file, &cpu()).unwrap();
    let greedy = |prompt: &[u32], n: usize| -> Vec<u32> {
        let mut cache = model.new_cache(prompt.len() + n).unwrap();
        let mut input = prompt.to_vec();
        (0..n)
            .map(|_| {
                let logits = model.forward(&input, &mut cache).unwrap();
                let best = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a))).unwrap() as u32;
                input = vec![best];
                best
            })
            .collect()
    };

    // One long request: 60 prompt tokens and 40 generated, the peak of blocks held watched.
    let clock = Clock(Cell::new(0));
    let (tx, mut rx) = unbounded_channel();
    engine.submit(request(1, 60), tx, clock.now()).unwrap();
    let (mut out, mut peak) = (Output::default(), 0);
    while engine.has_work() {
        engine.step(&|| clock.now()).unwrap();
        engine.check_invariants();
        peak = peak.max(engine.metrics(Time(0)).scheduler.kv_blocks_in_use);
        collect(&mut rx, &mut out);
    }
    assert_eq!(out.tokens, greedy(&prompt(1, 60), 40));
    eprintln!("a 100-position request held at most {peak} blocks (full attention: {})", 6 * 25);
    // Full attention: 6 groups x 25 blocks; here the global group's 25, and per windowed
    // group at most the window and a prompt chunk (16 + 12 positions: 8 blocks).
    assert!(peak <= 25 + 5 * 8, "{peak} blocks held");
    assert!(peak * 2 < 6 * 25, "{peak} blocks held is not under half of full attention");

    // The same prompt again (prefix-cache hit), and three others beside it.
    let together = run(&mut engine, vec![request(1, 60), request(2, 33), request(3, 7), request(4, 45)]);
    assert_eq!(together[0].tokens, out.tokens);
    assert!(engine.metrics(Time(0)).scheduler.prefix_cache.hit_blocks > 0);
    for (out, (seed, len)) in together.iter().zip([(1, 60), (2, 33), (3, 7), (4, 45)]).skip(1) {
        assert_eq!(out.tokens, greedy(&prompt(seed, len), 40), "seed {seed}");
    }
    assert_eq!(engine.metrics(Time(0)).scheduler.kv_blocks_in_use, 0);
}

/// The browser's way of stepping: launch, await the logits, land; a request submitted while
/// a step is on the device joins the next one, and one aborted then ends at once.
#[test]
fn a_step_cut_around_an_awaited_read_gives_the_same_tokens() {
    let request = |s: usize| GenerationRequest { ignore_eos: true, ..GenerationRequest::new(prompt(s, 5 + s * 9), 10) };
    let alone: Vec<Vec<u32>> = (0..3).map(|s| run(&mut engine(), vec![request(s)]).remove(0).tokens).collect();
    let mut engine = engine();
    let clock = Clock(Cell::new(0));
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut receivers = Vec::new();
    for s in 0..2 {
        let (tx, rx) = unbounded_channel();
        engine.submit(request(s), tx, clock.now()).unwrap();
        receivers.push(rx);
    }
    let (tx, mut victim_events) = unbounded_channel();
    let victim = engine.submit(request(3), tx, clock.now()).unwrap();
    let mut outputs: Vec<Output> = (0..4).map(|_| Output::default()).collect();
    while engine.has_work() {
        let Some(launched) = engine.launch(&|| clock.now()).unwrap() else { continue };
        if receivers.len() == 2 {
            let (tx, rx) = unbounded_channel();
            engine.submit(request(2), tx, clock.now()).unwrap();
            receivers.push(rx);
        }
        // A request ended while its step is on the device.
        if receivers.len() == 3 && outputs[3].finished.is_none() {
            engine.abort(victim, clock.now());
        }
        let logits = runtime.block_on(launched.logits.read_async());
        engine.land(launched.plan, logits, &|| clock.now()).unwrap();
        engine.check_invariants();
        for (rx, out) in receivers.iter_mut().zip(&mut outputs) {
            collect(rx, out);
        }
        collect(&mut victim_events, &mut outputs[3]);
    }
    for (out, alone) in outputs.iter().zip(&alone) {
        assert!(out.finished.is_some());
        assert_eq!(&out.tokens, alone);
    }
    assert_eq!(outputs[3].finished.as_ref().map(|f| f.reason), Some(FinishReason::Cancelled));
    let metrics = engine.metrics(clock.now()).scheduler;
    assert_eq!((metrics.running, metrics.waiting, metrics.kv_blocks_in_use), (0, 0, 0), "{metrics:?}");
}

/// A step whose read fails (what a lost device or exhausted memory gives) is retried; a
/// request whose steps fail three times in a row ends as failed with the device's error and
/// frees its blocks, and the engine goes on serving.
#[test]
fn requests_whose_steps_keep_failing_end_with_the_error() {
    let mut engine = engine();
    let clock = Clock(Cell::new(0));
    let request = GenerationRequest { ignore_eos: true, ..GenerationRequest::new(prompt(4, 12), 6) };
    let (tx, mut events) = unbounded_channel();
    engine.submit(request.clone(), tx, clock.now()).unwrap();
    let mut out = Output::default();
    for attempt in 1..=3 {
        let launched = engine.launch(&|| clock.now()).unwrap().expect("the request is planned again");
        drop(launched.logits);
        let lost = Err(cinder_model::ModelError::Backend("device lost".into()));
        assert!(engine.land(launched.plan, lost, &|| clock.now()).is_err());
        engine.check_invariants();
        collect(&mut events, &mut out);
        assert_eq!(out.finished.is_some(), attempt == 3, "attempt {attempt}");
    }
    let failed = out.finished.unwrap();
    assert_eq!(failed.reason, FinishReason::Failed);
    let error = failed.error.unwrap();
    assert!(error.contains("3 times in a row") && error.contains("device lost"), "{error}");
    assert!(out.tokens.is_empty());
    assert_eq!(engine.metrics(clock.now()).scheduler.kv_blocks_in_use, 0);
    let after = run(&mut engine, vec![request]).remove(0);
    assert_eq!((after.tokens.len(), after.finished.unwrap().reason), (6, FinishReason::Length));
}

/// A JSON schema holds even random weights' output to it, and a constrained request in a
/// batch leaves the others' tokens as they are alone.
#[test]
fn constrained_requests_follow_their_schema_and_leave_others_alone() {
    let mut engine = engine();
    let grammars = Grammars::new(engine.tokenizer()).unwrap();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green"]},
            "count": {"type": "integer", "minimum": 0, "maximum": 99},
            "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
        },
        "required": ["color", "count", "tags"],
        "additionalProperties": false,
    });
    let constrained = |seed| GenerationRequest {
        sampling: SamplingParams { temperature: 1.0, seed, ..Default::default() },
        constraint: Some(grammars.json_schema(schema.clone()).unwrap()),
        ..GenerationRequest::new(prompt(1, 5), 200)
    };
    let free = GenerationRequest { ignore_eos: true, ..GenerationRequest::new(prompt(2, 7), 12) };
    let alone = run(&mut engine, vec![free.clone()]).remove(0);
    let outputs = run(&mut engine, vec![constrained(1), free, constrained(2)]);
    for out in [&outputs[0], &outputs[2]] {
        let value: serde_json::Value = serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("{e}: {:?}", out.text));
        assert!(matches!(value["color"].as_str(), Some("red" | "green")), "{value}");
        assert!(value["count"].as_u64().is_some_and(|c| c <= 99), "{value}");
        assert!(value["tags"].as_array().is_some_and(|t| t.len() <= 3 && t.iter().all(|b| b.is_boolean())), "{value}");
        assert_eq!(value.as_object().unwrap().len(), 3, "{value}");
        assert_eq!(out.finished.as_ref().unwrap().reason, FinishReason::Stop);
    }
    assert_eq!(outputs[1].tokens, alone.tokens, "the free request is not masked");
    let error = grammars.json_schema(serde_json::json!({"type": "nonsense"})).unwrap_err();
    assert!(error.contains("nonsense"), "{error}");
    assert_eq!(engine.metrics(Time(0)).scheduler.kv_blocks_in_use, 0);
}

/// The choices of one request fork from one prefill: three choices of a 14-token prompt
/// compute its 14 tokens once, share its blocks (the partly filled last one copied on
/// write), give each seed the tokens it gives alone, and free every block at the end.
#[test]
fn the_choices_of_one_prompt_share_one_prefill() {
    let mut engine = engine();
    let clock = Clock(Cell::new(0));
    let choice = |seed| GenerationRequest {
        sampling: SamplingParams { temperature: 1.0, seed, ..Default::default() },
        ignore_eos: true,
        use_prefix_cache: false,
        ..GenerationRequest::new(prompt(7, 14), 6)
    };
    let alone: Vec<Vec<u32>> = (0..3).map(|seed| run(&mut engine, vec![choice(seed)]).remove(0).tokens).collect();
    let (senders, mut receivers): (Vec<_>, Vec<_>) = (0..3).map(|_| unbounded_channel()).unzip();
    engine.submit_all((0..3).map(|seed| choice(seed)).zip(senders).collect(), clock.now()).unwrap();
    let mut computed = 0;
    while engine.has_work() {
        if let StepOutcome::Ran { tokens, .. } = engine.step(&|| clock.now()).unwrap() {
            computed += tokens;
        }
        engine.check_invariants();
    }
    let together: Vec<Vec<u32>> = receivers
        .iter_mut()
        .map(|rx| {
            let mut out = Output::default();
            collect(rx, &mut out);
            out.tokens
        })
        .collect();
    assert_eq!(together, alone, "each seed's tokens as alone");
    assert_eq!(computed, 14 + 3 * 5, "the prompt once, then five decodes per choice");
    assert_eq!(engine.metrics(clock.now()).scheduler.kv_blocks_in_use, 0);
}

const NGRAM: Speculation = Speculation { method: SpeculativeMethod::Ngram, num_tokens: 4 };

/// A prompt that repeats itself, so that the n-gram proposer finds its suffix earlier.
fn repeating(seed: usize) -> Vec<u32> {
    prompt(seed, 6).repeat(4)
}

/// N-gram speculation keeps greedy output token for token (with logprobs, a penalty, a
/// grammar and lengths shorter than a draft), verifies and accepts drafts, reports them in
/// the usage and the metrics, and frees every block.
#[test]
fn speculative_greedy_decoding_gives_the_tokens_of_plain_greedy() {
    let mut engine = engine();
    let grammars = Grammars::new(engine.tokenizer()).unwrap();
    let schema = serde_json::json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
    let requests = |speculative: Speculation| -> Vec<GenerationRequest> {
        let base = |seed, max_tokens| GenerationRequest {
            ignore_eos: true,
            speculative: Some(speculative),
            ..GenerationRequest::new(repeating(seed), max_tokens)
        };
        let penalised = SamplingParams { repetition_penalty: 1.3, ..Default::default() };
        vec![
            base(0, 40),
            GenerationRequest { logprobs: Some(3), ..base(1, 30) },
            GenerationRequest { sampling: penalised, ..base(2, 30) },
            base(3, 2),
            base(4, 3),
            GenerationRequest { constraint: Some(grammars.json_schema(schema.clone()).unwrap()), ignore_eos: false, ..base(5, 40) },
        ]
    };
    let plain = run(&mut engine, requests(Speculation::OFF));
    assert_eq!(engine.metrics(Time(0)).spec_draft_tokens_total, 0);
    let speculated = run(&mut engine, requests(NGRAM));
    for (i, (a, b)) in plain.iter().zip(&speculated).enumerate() {
        assert_eq!(a.tokens, b.tokens, "request {i}");
        assert_eq!(a.logprobs.len(), b.logprobs.len());
        assert!(a.logprobs.iter().zip(&b.logprobs).all(|(x, y)| (x - y).abs() < 1e-3), "request {i}: {:?} {:?}", a.logprobs, b.logprobs);
        let (fa, fb) = (a.finished.as_ref().unwrap(), b.finished.as_ref().unwrap());
        assert_eq!((fa.reason, fa.completion_tokens), (fb.reason, fb.completion_tokens), "request {i}");
        assert_eq!(fa.speculative, None);
        assert!(fb.speculative.is_some());
    }
    let m = engine.metrics(Time(0));
    let usage: usize = speculated.iter().map(|o| o.finished.as_ref().unwrap().speculative.unwrap().accepted_tokens).sum();
    assert!(m.spec_accepted_tokens_total > 0 && m.spec_draft_tokens_total > m.spec_accepted_tokens_total, "{m:?}");
    assert_eq!(usage as u64, m.spec_accepted_tokens_total);
    assert_eq!(m.scheduler.kv_blocks_in_use, 0);
    // Steps saved: the speculating run took fewer steps than it generated tokens.
    let generated: usize = speculated.iter().map(|o| o.tokens.len()).sum();
    println!("{} tokens, {} drafted, {} accepted", generated, m.spec_draft_tokens_total, m.spec_accepted_tokens_total);
}

/// Sampling with n-gram drafts keeps the model's distribution (drafts are accepted with
/// their probability, a rejected one replaced from the rest): the second and third
/// generated tokens of 400 seeds come out with the frequencies they have without drafts.
#[test]
fn speculative_sampling_keeps_the_distribution() {
    let mut engine = engine();
    engine.set_speculation(SpeculationConfig { default: Speculation::OFF, max_batch: 1_000 }).unwrap();
    // The prompt ends in the loop greedy decoding falls into, which sampling tends to go on
    // with: the proposer finds drafts, and some are accepted, some not.
    let looping = run(&mut engine, vec![GenerationRequest { ignore_eos: true, ..GenerationRequest::new(repeating(0), 40) }]);
    let prompt = [repeating(0), looping[0].tokens.clone()].concat();
    let plain = run(&mut engine, sampled(&prompt, 400, Speculation::OFF));
    let speculated = run(&mut engine, sampled(&prompt, 400, NGRAM));
    let m = engine.metrics(Time(0));
    assert!(m.spec_accepted_tokens_total > 100, "drafts were accepted: {m:?}");
    assert_same_distribution(&plain, &speculated, 0.1);
}

/// `count` requests of `prompt` for 3 tokens sampling among the top 3, seeds 0 to `count`.
fn sampled(prompt: &[u32], count: u64, speculative: Speculation) -> Vec<GenerationRequest> {
    (0..count)
        .map(|seed| GenerationRequest {
            sampling: SamplingParams { temperature: 1.0, top_k: 3, seed, ..Default::default() },
            ignore_eos: true,
            speculative: Some(speculative),
            ..GenerationRequest::new(prompt.to_vec(), 3)
        })
        .collect()
}

/// The second and third tokens of two sets of outputs are within `bound` of each other in
/// total variation.
fn assert_same_distribution(a: &[Output], b: &[Output], bound: f64) {
    let frequencies = |outputs: &[Output], position: usize| {
        let mut counts = std::collections::BTreeMap::<u32, f64>::new();
        for o in outputs {
            *counts.entry(o.tokens[position]).or_default() += 1.0 / outputs.len() as f64;
        }
        counts
    };
    for position in [1, 2] {
        let (a, b) = (frequencies(a, position), frequencies(b, position));
        let tokens: std::collections::BTreeSet<u32> = a.keys().chain(b.keys()).copied().collect();
        let distance: f64 = tokens.iter().map(|t| (a.get(t).unwrap_or(&0.0) - b.get(t).unwrap_or(&0.0)).abs()).sum::<f64>() / 2.0;
        println!("position {position}: total variation {distance:.3}");
        assert!(distance < bound, "position {position}: {a:?} vs {b:?}");
    }
}

const DRAFT: Speculation = Speculation { method: SpeculativeMethod::Draft, num_tokens: 4 };

/// An engine with `draft` as its draft model (the target is `TinyModel::default()`, seed 1).
fn engine_with_draft(draft: TinyModel) -> Engine {
    let mut engine = engine();
    let file = GgufFile::from_bytes(draft.to_gguf()).unwrap();
    let model = Model::load(&file, &cpu()).unwrap();
    engine.set_draft_model(model, &Tokenizer::from_gguf(file.metadata()).unwrap()).unwrap();
    engine
}

/// Draft-model speculation keeps greedy output token for token, whether the draft is a
/// copy of the target (almost every draft token accepted) or another model (few), for
/// requests of several lengths decoding together.
#[test]
fn a_draft_model_keeps_greedy_output_and_a_copy_of_the_target_is_accepted() {
    let requests = |speculative| -> Vec<GenerationRequest> {
        [(0, 30), (1, 3), (2, 17)]
            .iter()
            .map(|&(seed, max_tokens)| GenerationRequest {
                ignore_eos: true,
                speculative: Some(speculative),
                ..GenerationRequest::new(prompt(seed, 9 + 5 * seed), max_tokens)
            })
            .collect()
    };
    let plain: Vec<Vec<u32>> = run(&mut engine(), requests(Speculation::OFF)).into_iter().map(|o| o.tokens).collect();
    for (seed, least_rate) in [(1, 0.9), (5, 0.0)] {
        let mut engine = engine_with_draft(TinyModel { seed, ..Default::default() });
        let drafted = run(&mut engine, requests(DRAFT));
        assert_eq!(drafted.iter().map(|o| o.tokens.clone()).collect::<Vec<_>>(), plain, "draft seed {seed}");
        let m = engine.metrics(Time(0));
        let rate = m.spec_accepted_tokens_total as f64 / m.spec_draft_tokens_total as f64;
        println!("draft seed {seed}: {} drafted, {} accepted", m.spec_draft_tokens_total, m.spec_accepted_tokens_total);
        assert!(m.spec_draft_tokens_total > 0 && rate >= least_rate, "draft seed {seed}: {m:?}");
        assert_eq!(m.scheduler.kv_blocks_in_use, 0);
    }
    let refused = engine().submit(GenerationRequest { speculative: Some(DRAFT), ..GenerationRequest::new(vec![5], 2) }, unbounded_channel().0, Time(0));
    assert!(matches!(refused, Err(SubmitError::Invalid(m)) if m.contains("needs a draft model")));
}

/// Sampling with a draft model whose distribution differs from the target's (its first
/// layer alone) keeps the target's distribution (accept with min(1, p/q), else draw from
/// max(0, p - q)): the second and third tokens of 1000 seeds.
#[test]
fn a_draft_models_samples_keep_the_targets_distribution() {
    let mut with_draft = engine_with_draft(TinyModel { n_layers: 1, ..Default::default() });
    with_draft.set_speculation(SpeculationConfig { default: Speculation::OFF, max_batch: 1_000 }).unwrap();
    let plain = run(&mut engine(), sampled(&prompt(3, 12), 1000, Speculation::OFF));
    let drafted = run(&mut with_draft, sampled(&prompt(3, 12), 1000, DRAFT));
    let m = with_draft.metrics(Time(0));
    // Accepting with p alone would keep the distribution too, but accept fewer (66 here).
    assert!(m.spec_accepted_tokens_total > 100 && m.spec_accepted_tokens_total < m.spec_draft_tokens_total, "{m:?}");
    assert_same_distribution(&plain, &drafted, 0.08);
}

/// Each KV cache type under the engine (a model with 32-wide heads, which every type
/// stores): greedy tokens of requests batched with chunked prefill, of a prompt served
/// again from the prefix cache, of choices sharing a prefill (their blocks copied on write),
/// and with a draft model whose cache stores the same type, all equal those of each request
/// run alone on that type.
#[test]
fn every_kv_type_keeps_greedy_tokens_through_batching_prefix_hits_forks_and_drafts() {
    let spec = TinyModel { hidden: 128, n_heads: 4, n_kv_heads: 2, seed: 3, ..Default::default() };
    let file = GgufFile::from_bytes(spec.to_gguf()).unwrap();
    let tokenizer = Tokenizer::from_gguf(file.metadata()).unwrap();
    let load = |ty: KvType| {
        let mut model = Model::load(&file, &cpu()).unwrap();
        model.set_kv_types(KvTypes::both(ty)).unwrap();
        model
    };
    let config = SchedulerConfig {
        num_blocks: 256,
        block_size: 8,
        policy: BatchPolicy::Continuous { max_batch_tokens: 48, max_running: 16, chunk_size: 16 },
        ..Default::default()
    };
    let request = |seed: usize, len: usize| GenerationRequest { ignore_eos: true, ..GenerationRequest::new(prompt(seed, len), 12) };
    let requests = || vec![request(1, 40), request(2, 9), request(3, 23)];
    for ty in KvType::ALL {
        let mut engine = Engine::new(load(ty), tokenizer.clone(), config.clone()).unwrap();
        assert_eq!(engine.kv_cache().types(), KvTypes::both(ty));
        let alone: Vec<Vec<u32>> = requests().into_iter().map(|r| run(&mut engine, vec![r]).remove(0).tokens).collect();
        // Request 1's prompt again, from the prefix cache, beside the others.
        let together: Vec<Vec<u32>> = run(&mut engine, requests()).into_iter().map(|o| o.tokens).collect();
        assert_eq!(together, alone, "{ty}: batched");
        assert!(engine.metrics(Time(0)).scheduler.prefix_cache.hit_blocks > 0, "{ty}: a prefix-cache hit");
        // Two choices of one prompt: one prefill, its last block copied for the second.
        let clock = Clock(Cell::new(0));
        let choice = GenerationRequest { use_prefix_cache: false, ..request(2, 9) };
        let (senders, mut receivers): (Vec<_>, Vec<_>) = (0..2).map(|_| unbounded_channel()).unzip();
        engine.submit_all(vec![choice; 2].into_iter().zip(senders).collect(), clock.now()).unwrap();
        while engine.has_work() {
            engine.step(&|| clock.now()).unwrap();
            engine.check_invariants();
        }
        for rx in &mut receivers {
            let mut out = Output::default();
            collect(rx, &mut out);
            assert_eq!(out.tokens, alone[1], "{ty}: forked choices");
        }

        let mut drafted = Engine::new(load(ty), tokenizer.clone(), config.clone()).unwrap();
        drafted.set_draft_model(Model::load(&file, &cpu()).unwrap(), &tokenizer).unwrap();
        let speculative = requests().into_iter().map(|r| GenerationRequest { speculative: Some(DRAFT), ..r }).collect();
        let tokens: Vec<Vec<u32>> = run(&mut drafted, speculative).into_iter().map(|o| o.tokens).collect();
        assert_eq!(tokens, alone, "{ty}: with a draft model");
        let m = drafted.metrics(Time(0));
        assert!(m.spec_accepted_tokens_total * 10 > m.spec_draft_tokens_total * 9, "{ty}: a copy of the target is accepted: {m:?}");
    }
}
