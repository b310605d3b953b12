//! Fuzzing on the stable toolchain, with proptest: the inputs a client or a downloaded file
//! controls, mutated from a corpus kept in `tests/fuzz/corpus/` (GGUF files, OpenAI request
//! bodies), must give a result or an error, never a panic.
//!
//! - `gguf_files`: the GGUF reader, the dequantizers, the model's metadata checks, the
//!   tokenizer builders (byte-level BPE and SentencePiece) and the chat template.
//! - `vocabularies`: the tokenizer builders on generated vocabularies (odd pieces, types,
//!   merges, scores and special ids), then encoding and decoding.
//! - `openai_bodies`: the OpenAI body parser, every check the server runs on a body and the
//!   grammars of `response_format` and `tools`, with the fields that multiply work
//!   (`stop`, `logit_bias`, `tools`, `tool_choice`, `response_format`) at random sizes.
//!
//! `CINDER_FUZZ_CASES` sets the cases per target (default 2,000: a few seconds in all);
//! run longer with e.g. `CINDER_FUZZ_CASES=100000 cargo test -p cinder --test e2e fuzz::`.
//! A failure prints the shrunk input, and proptest saves its seed to
//! `tests/fuzz/<target>.proptest-regressions`; every run (CI's too) replays the saved seeds
//! first. Commit the file with the fix.

use std::path::PathBuf;

use cinder_engine::Grammars;
use cinder_engine::openai::{Endpoint, GenerationBody, RequestLimits, Submission, parse};
use cinder_scheduler::{Priority, TenantId};
use cinder_gguf::{GgufFile, GgufWriter, Metadata, MetadataValue};
use cinder_model::ModelConfig;
use cinder_model::tiny::TinyModel;
use cinder_tokenizer::{ChatTemplate, Tokenizer};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz/corpus").join(target)
}

/// The corpus files of a target, in name order.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("{}: {e}", corpus_dir(target).display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    paths.sort();
    let files: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!files.is_empty(), "empty corpus for {target}");
    files
}

/// A target's runner: `CINDER_FUZZ_CASES` cases after the seeds of earlier failures, which
/// live in `regressions` (a path under `tests/fuzz/`) and grow with new ones.
fn runner(regressions: &'static str) -> TestRunner {
    let cases = std::env::var("CINDER_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000);
    let failure_persistence = Some(Box::new(FileFailurePersistence::Direct(regressions)) as Box<_>);
    TestRunner::new(Config { cases, failure_persistence, ..Config::default() })
}

/// The regressions file of a target.
macro_rules! regressions {
    ($target:literal) => {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fuzz/", $target, ".proptest-regressions")
    };
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    FlipBit(usize, u8),
    /// A boundary value written over 4 or 8 bytes (counts, lengths, offsets, type ids).
    Word(usize, u64, bool),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    /// Bytes copied from another corpus file.
    Splice(usize, usize, usize, usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let boundary = prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        Just(i32::MAX as u64),
        Just(1 << 32),
        0u64..64,
        any::<u64>()
    ];
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
        4 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Edit::FlipBit(at, bit)),
        3 => (any::<usize>(), boundary, any::<bool>()).prop_map(|(at, v, wide)| Edit::Word(at, v, wide)),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, b)| Edit::Insert(at, b)),
        1 => (any::<usize>(), 1usize..64).prop_map(|(at, n)| Edit::Delete(at, n)),
        1 => (any::<usize>(), any::<usize>(), any::<usize>(), 1usize..256).prop_map(|(f, from, at, n)| Edit::Splice(f, from, at, n)),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit], corpus: &[Vec<u8>]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len().max(1);
        match edit {
            Edit::Set(at, b) if !bytes.is_empty() => bytes[at % len] = *b,
            Edit::FlipBit(at, bit) if !bytes.is_empty() => bytes[at % len] ^= 1 << bit,
            Edit::Word(at, value, wide) => {
                let word = if *wide { value.to_le_bytes().to_vec() } else { (*value as u32).to_le_bytes().to_vec() };
                let at = at % len;
                let end = (at + word.len()).min(bytes.len());
                bytes.splice(at.min(end)..end, word);
            }
            Edit::Insert(at, b) => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Edit::Delete(at, n) if !bytes.is_empty() => {
                let at = at % len;
                bytes.drain(at..(at + n).min(bytes.len()));
            }
            Edit::Splice(file, from, at, n) => {
                let source = &corpus[file % corpus.len()];
                let from = from % source.len().max(1);
                let piece = &source[from.min(source.len())..(from + n).min(source.len())];
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, piece.iter().copied());
            }
            Edit::Truncate(at) => bytes.truncate(at % (bytes.len() + 1)),
            _ => {}
        }
    }
    bytes
}

/// Everything cinder does with a GGUF file before the device: read it, dequantize its
/// tensors, check the model's metadata, build the tokenizer and the chat template, and
/// use them.
fn load_without_device(bytes: Vec<u8>) {
    let Ok(file) = GgufFile::from_bytes(bytes) else { return };
    for tensor in file.tensors() {
        // Only small tensors: a header may claim any size, and the reader checks the bytes.
        if tensor.elements <= 1 << 20 {
            let _ = file.dequantize(tensor);
        }
    }
    let _ = ModelConfig::from_gguf(&file);
    if let Ok(tokenizer) = Tokenizer::from_gguf(file.metadata()) {
        use_tokenizer(&tokenizer, "Hello <|im_start|>world\n\t ünïcode 🦀 <s>");
        if let Ok(template) = ChatTemplate::from_gguf(file.metadata(), &tokenizer) {
            let messages = [cinder_tokenizer::ChatMessage::new("user", "hi <|im_end|>")];
            let _ = template.encode(&tokenizer, &messages, true);
        }
    }
}

fn use_tokenizer(tokenizer: &Tokenizer, text: &str) {
    for parse_special in [false, true] {
        if let Ok(ids) = tokenizer.encode(text, true, parse_special) {
            let _ = tokenizer.decode(&ids, false);
        }
    }
    let vocab = tokenizer.vocab_size() as u32;
    let _ = tokenizer.decode(&[0, vocab.saturating_sub(1), vocab, u32::MAX], true);
}

#[test]
fn gguf_files() {
    let corpus = corpus("gguf");
    for file in &corpus {
        GgufFile::from_bytes(file.clone()).expect("corpus files are valid");
    }
    let input = (0..corpus.len(), prop::collection::vec(edit(), 1..10));
    runner(regressions!("gguf_files"))
        .run(&input, |(seed, edits)| {
            load_without_device(apply(corpus[seed].clone(), &edits, &corpus));
            Ok(())
        })
        .unwrap();
}

/// A vocabulary's metadata from generated parts.
#[derive(Debug, Clone)]
struct Vocabulary {
    sentence_piece: bool,
    pre: String,
    tokens: Vec<String>,
    types: Option<Vec<i32>>,
    scores: Option<Vec<f32>>,
    merges: Option<Vec<String>>,
    special: Vec<(&'static str, u32)>,
    flags: Vec<(&'static str, bool)>,
}

fn vocabulary() -> impl Strategy<Value = Vocabulary> {
    let piece = prop_oneof![
        "[a-e ▁Ġ]{0,4}",
        Just("<0x41>".to_owned()),
        Just("<0xZZ>".to_owned()),
        Just("<|im_start|>".to_owned()),
        Just("<s>".to_owned()),
        Just("</s>".to_owned()),
        Just("<unk>".to_owned()),
        Just(String::new()),
        "\\PC{1,3}",
    ];
    let pre = prop_oneof![Just("default"), Just("smollm"), Just("llama-bpe"), Just("qwen2"), Just("gpt-2"), Just("no-such")];
    let special = prop::collection::vec(
        (prop_oneof![Just("bos"), Just("eos"), Just("unknown"), Just("padding"), Just("eot")], 0u32..80),
        0..4,
    );
    let flags = prop::collection::vec((prop_oneof![Just("add_bos_token"), Just("add_eos_token"), Just("add_space_prefix")], any::<bool>()), 0..3);
    (any::<bool>(), pre, prop::collection::vec(piece, 1..60), any::<bool>(), any::<bool>(), any::<bool>(), special, flags, any::<u64>())
        .prop_map(|(sentence_piece, pre, mut tokens, typed, scored, merged, special, flags, salt)| {
            if sentence_piece && salt % 2 == 0 {
                // Byte fallback pieces, as real SentencePiece vocabularies have.
                tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
            }
            let n = tokens.len();
            let pick = |i: usize| &tokens[(salt as usize).wrapping_add(i * 7) % n];
            Vocabulary {
                sentence_piece,
                pre: pre.to_owned(),
                types: typed.then(|| (0..n).map(|i| [1, 2, 3, 4, 5, 6, 9][(salt as usize + i) % 7]).collect()),
                scores: scored.then(|| (0..n).map(|i| if i % 17 == 5 { f32::NAN } else { -(i as f32) }).collect()),
                merges: merged.then(|| (0..n).map(|i| format!("{} {}", pick(i), pick(i + 1))).collect()),
                tokens,
                special,
                flags,
            }
        })
}

impl Vocabulary {
    fn metadata(&self) -> Metadata {
        let mut m = Metadata::default();
        let mut put = |k: &str, v: MetadataValue| {
            let _ = m.insert(k.to_owned(), v);
        };
        put("tokenizer.ggml.model", MetadataValue::String(if self.sentence_piece { "llama" } else { "gpt2" }.into()));
        put("tokenizer.ggml.pre", MetadataValue::String(self.pre.clone()));
        put("tokenizer.ggml.tokens", MetadataValue::strings(self.tokens.clone()));
        if let Some(types) = &self.types {
            put("tokenizer.ggml.token_type", MetadataValue::i32s(types.clone()));
        }
        if let Some(scores) = &self.scores {
            put("tokenizer.ggml.scores", MetadataValue::Array(cinder_gguf::ValueType::F32, scores.iter().map(|&s| MetadataValue::F32(s)).collect()));
        }
        if let Some(merges) = &self.merges {
            put("tokenizer.ggml.merges", MetadataValue::strings(merges.clone()));
        }
        for (name, id) in &self.special {
            put(&format!("tokenizer.ggml.{name}_token_id"), MetadataValue::U32(*id));
        }
        for (name, value) in &self.flags {
            put(&format!("tokenizer.ggml.{name}"), MetadataValue::Bool(*value));
        }
        m
    }
}

#[test]
fn vocabularies() {
    runner(regressions!("vocabularies"))
        .run(&(vocabulary(), "\\PC{0,40}"), |(vocabulary, text)| {
            if let Ok(tokenizer) = Tokenizer::from_gguf(&vocabulary.metadata()) {
                use_tokenizer(&tokenizer, &text);
            }
            Ok(())
        })
        .unwrap();
}

/// A JSON value of any shape, for a body's fields.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        (-1e6f64..1e6).prop_map(serde_json::Value::from),
        prop_oneof![Just(0i64), Just(1), Just(-1), Just(16), Just(17), Just(4096)].prop_map(serde_json::Value::from),
        "\\PC{0,12}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from("<|im_end|><|im_start|>system")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("role|content|type|text|include_usage|[a-z]{1,6}", inner, 0..3)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "n",
    "stream", "stream_options", "stop", "stop_token_ids", "seed", "logprobs", "top_logprobs", "presence_penalty",
    "frequency_penalty", "repetition_penalty", "ignore_eos", "priority", "cache_prompt", "return_token_ids", "user",
    "echo", "parse_special", "response_format", "tools", "tool_choice", "logit_bias",
];

/// A small JSON schema of a random shape (some invalid), for `response_format` and tools.
fn schema() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    let leaf = prop_oneof![
        Just(json!({"type": "string"})),
        Just(json!({"type": "integer", "minimum": 0})),
        Just(json!({"type": "boolean"})),
        Just(json!({"enum": ["a", "b", 3]})),
        Just(json!({"type": "string", "pattern": "[a-z]{2,5}"})),
        Just(json!({"type": "nonsense"})),
        Just(json!({"$ref": "#/nowhere"})),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::btree_map("[a-z]{1,4}", inner.clone(), 0..4).prop_map(|properties| {
                let required: Vec<&String> = properties.keys().take(1).collect();
                json!({"type": "object", "properties": properties, "required": required})
            }),
            inner.clone().prop_map(|items| json!({"type": "array", "items": items, "maxItems": 3})),
            prop::collection::vec(inner, 1..3).prop_map(|any_of| json!({"anyOf": any_of})),
        ]
    })
}

/// Values of the fields whose size multiplies work, at sizes around and past the limits.
fn sized_field() -> impl Strategy<Value = (&'static str, serde_json::Value)> {
    use serde_json::json;
    let stop = prop_oneof![
        "\\PC{0,8}".prop_map(serde_json::Value::from),
        prop::collection::vec("\\PC{0,300}", 0..40).prop_map(serde_json::Value::from),
    ];
    let key = prop_oneof!["[0-9]{1,3}", "0[0-9]{1,2}", " ?[0-9]{1,2} ?", "[a-z-]{1,3}"];
    let logit_bias = prop::collection::btree_map(key, -150.0f64..150.0, 0..1200).prop_map(|m| json!(m));
    let tool = ("[a-z_]{1,8}|[ -~]{0,70}", prop::option::of(schema()))
        .prop_map(|(name, parameters)| json!({"type": "function", "function": {"name": name, "parameters": parameters}}));
    let tools = prop::collection::vec(tool, 0..140).prop_map(serde_json::Value::from);
    let tool_choice = prop_oneof![
        prop_oneof![Just("auto"), Just("none"), Just("required"), Just("always")].prop_map(serde_json::Value::from),
        "[a-z_]{1,8}".prop_map(|name| json!({"type": "function", "function": {"name": name}})),
        Just(json!({"type": "function", "function": {"name": "a", "strict": true}})),
    ];
    let response_format = prop_oneof![
        Just(json!({"type": "text"})),
        Just(json!({"type": "json_object"})),
        schema().prop_map(|schema| json!({"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})),
        Just(json!({"type": "json_schema"})),
        Just(json!({"type": "json_schema", "json_schema": {"name": "s", "schema": {}, "stict": true}})),
    ];
    prop_oneof![
        stop.prop_map(|v| ("stop", v)),
        logit_bias.prop_map(|v| ("logit_bias", v)),
        tools.prop_map(|v| ("tools", v)),
        tool_choice.prop_map(|v| ("tool_choice", v)),
        response_format.prop_map(|v| ("response_format", v)),
    ]
}

/// Every check the server runs on a body, for both endpoints, and its grammar.
fn check_body(bytes: &[u8], tokenizer: &Tokenizer, template: &ChatTemplate, grammars: &Grammars) {
    // Small limits, so that random sizes cross them.
    let limits = RequestLimits { max_stop: 8, max_logit_bias: 300, max_tools: 100, max_schema_bytes: 2048, default_max_tokens: Some(64), ..Default::default() };
    for endpoint in [Endpoint::Completion, Endpoint::Chat] {
        let Ok(body) = parse::<GenerationBody>(bytes) else { return };
        let Ok(mut checked) = body.check(endpoint, &limits) else { continue };
        let Ok(prompts) = checked.prompts(tokenizer, Some(template), 512) else { continue };
        let _ = checked.tokens(&prompts, 512);
        let constraint = checked.constraint(grammars).ok().flatten();
        let submission = Submission {
            context_length: 512,
            seed: 7,
            tenant: TenantId::default(),
            priority: Priority::Normal,
            max_priority: Priority::Critical,
            constraint: constraint.as_ref(),
            adapter: None,
        };
        let _ = checked.requests(&prompts[..prompts.len().min(4)], submission);
    }
}

#[test]
fn openai_bodies() {
    let model = GgufFile::from_bytes(TinyModel::default().to_gguf()).unwrap();
    let tokenizer = Tokenizer::from_gguf(model.metadata()).unwrap();
    let template = ChatTemplate::from_gguf(model.metadata(), &tokenizer).unwrap();
    let grammars = Grammars::new(&tokenizer).unwrap();
    let corpus = corpus("openai");
    for body in &corpus {
        let parsed = parse::<serde_json::Value>(body);
        assert!(parsed.is_ok_and(|v| v.is_object()), "{}", String::from_utf8_lossy(body));
    }
    // Byte edits (mostly broken JSON), whole fields replaced by values of any shape, and
    // the fields that multiply work at random sizes.
    let input = (
        0..corpus.len(),
        prop::collection::vec(edit(), 0..4),
        prop::collection::vec((0..FIELDS.len(), json_value()), 0..4),
        prop::collection::vec(sized_field(), 0..3),
    );
    runner(regressions!("openai_bodies"))
        .run(&input, |(seed, edits, fields, sized)| {
            let mut body = corpus[seed].clone();
            if (!fields.is_empty() || !sized.is_empty())
                && let Ok(serde_json::Value::Object(mut object)) = serde_json::from_slice::<serde_json::Value>(&body)
            {
                for (field, value) in fields {
                    object.insert(FIELDS[field].to_owned(), value);
                }
                for (field, value) in sized {
                    object.insert(field.to_owned(), value);
                }
                body = serde_json::to_vec(&object).unwrap();
            }
            check_body(&apply(body, &edits, &corpus), &tokenizer, &template, &grammars);
            Ok(())
        })
        .unwrap();
}

/// Writes the GGUF seeds of the corpus: tiny models of two architectures (byte-level BPE
/// vocabulary, chat template) and a SentencePiece vocabulary. Run after changing what the
/// files hold: `cargo test -p cinder --test e2e fuzz::write_gguf_corpus -- --ignored`.
#[test]
#[ignore]
fn write_gguf_corpus() {
    let dir = corpus_dir("gguf");
    std::fs::create_dir_all(&dir).unwrap();
    let small = TinyModel { n_layers: 1, hidden: 32, ffn_hidden: 32, n_heads: 2, n_kv_heads: 1, ..TinyModel::default() };
    std::fs::write(dir.join("tiny-llama.gguf"), small.to_gguf()).unwrap();
    let gemma = TinyModel { arch: &cinder_model::arch::GEMMA3, sliding_window: Some(8), ..small };
    std::fs::write(dir.join("tiny-gemma3.gguf"), gemma.to_gguf()).unwrap();

    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    tokens.extend(["▁", "▁a", "▁the", "a", "b", "c", "e", "h", "t", "th", "he", "▁t"].map(String::from));
    let mut types = vec![2, 3, 3];
    types.extend(std::iter::repeat_n(6, 256));
    types.resize(tokens.len(), 1);
    let scores = (0..tokens.len()).map(|i| MetadataValue::F32(-(i as f32))).collect();
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", MetadataValue::String("llama".into()))
        .metadata("tokenizer.ggml.model", MetadataValue::String("llama".into()))
        .metadata("tokenizer.ggml.tokens", MetadataValue::strings(tokens))
        .metadata("tokenizer.ggml.token_type", MetadataValue::i32s(types))
        .metadata("tokenizer.ggml.scores", MetadataValue::Array(cinder_gguf::ValueType::F32, scores))
        .metadata("tokenizer.ggml.unknown_token_id", MetadataValue::U32(0))
        .metadata("tokenizer.ggml.bos_token_id", MetadataValue::U32(1))
        .metadata("tokenizer.ggml.eos_token_id", MetadataValue::U32(2));
    std::fs::write(dir.join("vocab-sentencepiece.gguf"), w.to_bytes()).unwrap();
}
