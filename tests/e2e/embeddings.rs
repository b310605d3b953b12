//! Embeddings against llama.cpp's (`embeddings.json`, made by
//! `scripts/make_family_fixtures.py embeddings` with llama-cpp-python's `embedding=True`):
//! the engine on every tiny architecture, `/v1/embeddings` through the OpenAI Python client
//! on the default model, and the endpoint's limits, errors and metrics on a tiny model.

use cinder_engine::{Engine, Event, GenerationRequest};
use cinder_gguf::{GgufFile, GgufWriter, MetadataValue};
use cinder_model::arch::QWEN3;
use cinder_model::tiny::TinyModel;
use cinder_model::{KvType, KvTypes, Model, Pooling};
use cinder_scheduler::{BatchPolicy, Time};
use cinder_tokenizer::Tokenizer;
use serde_json::{Value, json};

use crate::On;
use crate::serve::{Server, run_client};

/// Cosine similarity; llama.cpp's vectors are not normalised, cinder's engine's neither.
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn floats(value: &Value) -> Vec<f32> {
    value.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

on_each_backend!(tiny_architectures_embed_as_llama_cpp);

/// Every tiny architecture's embeddings by each pooling the fixture has, the inputs batched
/// together in prompt chunks of 16 tokens (pooled across chunks), with an f32 KV cache as
/// llama.cpp ran: cosine similarity at least 0.999 to llama.cpp's.
fn tiny_architectures_embed_as_llama_cpp(on: On) {
    let fixture = crate::fixture("embeddings.json");
    let mut failures = Vec::new();
    for (key, case) in fixture["tiny"].as_object().unwrap() {
        let name = case["model"].as_str().unwrap();
        let spec = crate::architectures::variants().into_iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no tiny model {name}")).1;
        let file = GgufFile::from_bytes(spec.to_gguf()).unwrap();
        let tokenizer = Tokenizer::from_gguf(file.metadata()).unwrap();
        let mut model = Model::load(&file, &on.backend()).unwrap();
        model.set_kv_types(KvTypes::both(KvType::F32)).unwrap();
        let inputs = case["inputs"].as_array().unwrap();
        let mut config = Engine::fixed_config(model.config(), 512, inputs.len());
        config.policy = BatchPolicy::Continuous { max_batch_tokens: 64, max_running: 8, chunk_size: 16 };
        let mut engine = Engine::new(model, tokenizer, config).unwrap();
        let pooling = Pooling::from_name(case["pooling"].as_str().unwrap()).unwrap();
        let receivers: Vec<_> = inputs
            .iter()
            .map(|input| {
                let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
                let ids: Vec<u32> = serde_json::from_value(input["ids"].clone()).unwrap();
                engine.submit(GenerationRequest::embedding(ids, pooling), sender, Time::ZERO).unwrap();
                receiver
            })
            .collect();
        while engine.has_work() {
            engine.step(&|| Time::ZERO).unwrap();
        }
        for (i, (mut receiver, input)) in receivers.into_iter().zip(inputs).enumerate() {
            let Ok(Event::Finished(finished)) = receiver.try_recv() else { panic!("{key}: input {i} sent no end") };
            assert_eq!((finished.completion_tokens, finished.prompt_tokens), (0, input["ids"].as_array().unwrap().len()), "{key}");
            let similarity = cosine(&finished.embedding.unwrap(), &floats(&input["embedding"]));
            eprintln!("{key}: input {i}: cosine {similarity:.6}");
            if similarity < 0.999 {
                failures.push(format!("{key}: input {i}: cosine {similarity} to llama.cpp's"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The default model's embeddings through the OpenAI client (`embeddings_client.py`: texts,
/// token ids, base64 and float, `dimensions`, a batch of 32), equal to llama.cpp's on the
/// same weights by mean pooling; then a server pooling by `--pooling last`.
#[test]
fn the_openai_client_embeds_as_llama_cpp() {
    let server = Server::start(&crate::real_model_path(), &["--api-key", "secret", "--served-model-name", "smollm2"]);
    run_client("embeddings_client.py", &format!("http://{}/v1", server.address), "smollm2", "secret");
    drop(server);
    let fixture = crate::fixture("embeddings.json");
    let server = Server::start(&crate::real_model_path(), &["--pooling", "last"]);
    for (i, case) in fixture["default"]["f32/last"].as_array().unwrap().iter().enumerate() {
        let answer = server.post("/v1/embeddings", &json!({"input": case["ids"], "encoding_format": "float"}).to_string());
        assert_eq!(answer.status, 200, "{}", answer.body);
        let similarity = cosine(&floats(&answer.json()["data"][0]["embedding"]), &floats(&case["embedding"]));
        eprintln!("default model, last pooling: input {i}: cosine {similarity:.6}");
        assert!(similarity >= 0.999, "input {i}: cosine {similarity}");
    }
}

/// Embeddings share the scheduler with chat (both answered while the other runs), count
/// under their endpoint, and refuse what they cannot do with OpenAI's errors naming the field.
#[test]
fn embeddings_share_the_server_with_chat_and_refuse_bad_bodies() {
    let server = Server::start(&crate::serve::tiny_model("embeddings"), &[]);
    let embed = |body: Value| server.post("/v1/embeddings", &body.to_string());
    std::thread::scope(|scope| {
        let chat = scope.spawn(|| server.post("/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64, "ignore_eos": true}"#));
        let texts: Vec<String> = (0..40).map(|i| format!("text number {i} ").repeat(1 + i % 5)).collect();
        let answer = embed(json!({"input": texts, "encoding_format": "float"}));
        assert_eq!(answer.status, 200, "{}", answer.body);
        let answer = answer.json();
        assert_eq!(answer["data"].as_array().unwrap().len(), 40);
        for (i, item) in answer["data"].as_array().unwrap().iter().enumerate() {
            assert_eq!((&item["object"], item["index"].as_u64()), (&json!("embedding"), Some(i as u64)));
            let norm: f64 = floats(&item["embedding"]).iter().map(|v| f64::from(*v).powi(2)).sum();
            assert!((norm - 1.0).abs() < 1e-4, "unit length: {norm}");
        }
        assert!(answer["usage"]["prompt_tokens"].as_u64().unwrap() > 40);
        assert_eq!(chat.join().unwrap().status, 200);
    });
    // One text alone gives what it gave in the batch of 40.
    let alone = embed(json!({"input": "text number 3 text number 3 text number 3 text number 3 ", "encoding_format": "float"})).json();
    let batched = embed(json!({"input": ["x", "text number 3 text number 3 text number 3 text number 3 "], "encoding_format": "float"})).json();
    let similarity = cosine(&floats(&alone["data"][0]["embedding"]), &floats(&batched["data"][1]["embedding"]));
    assert!(similarity > 0.9999, "{similarity}");
    for (body, param, words) in [
        (json!({"input": []}), "input", "`input` is empty"),
        (json!({"input": "a", "dimensions": 65}), "dimensions", "`dimensions` must be in [1, 64] for this model; got 65"),
        (json!({"input": "a", "encoding_format": "int8"}), "encoding_format", "unknown variant"),
        (json!({"input": "a", "pooling": "mean"}), "pooling", "`pooling`: cinder does not implement this field"),
        (json!({"input": [[1, 2], [99999]]}), "input", "outside the vocabulary"),
        (json!({"input": ["a", ""]}), "input", "input 1 is empty"),
        (json!({"input": "a", "model": "nope"}), "model", "nope"),
    ] {
        let answer = embed(body.clone());
        assert_eq!(answer.status, if param == "model" { 404 } else { 400 }, "{body}: {}", answer.body);
        let error = &answer.json()["error"];
        assert!(error["message"].as_str().unwrap().contains(words), "{body}: {error}");
        if param != "model" && words != "outside the vocabulary" {
            assert_eq!(error["param"], param, "{body}: {error}");
        }
    }
    let metrics = server.request("GET", "/metrics", &[], "").body;
    assert!(metrics.contains("cinder:api_requests_total{endpoint=\"/v1/embeddings\",status=\"200\"} 3"), "{metrics}");
    // A server told to pool nothing has no embeddings to give, and says how to get them.
    let none = Server::start(&crate::serve::tiny_model("embeddings-none"), &["--pooling", "none"]);
    let answer = none.post("/v1/embeddings", r#"{"input": "a"}"#);
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.json()["error"]["message"].as_str().unwrap().contains("--pooling mean"), "{}", answer.body);
}

/// A file's `pooling_type` decides how the server pools (Qwen3-Embedding's files say last,
/// 3), and `--pooling` overrides it.
#[test]
fn the_files_pooling_type_decides_unless_pooling_is_given() {
    let file = GgufFile::from_bytes(TinyModel { arch: &QWEN3, head_dim: Some(32), ..TinyModel::default() }.to_gguf()).unwrap();
    let mut writer = GgufWriter::from_file(&file);
    writer.set_metadata("qwen3.pooling_type", MetadataValue::U32(3));
    let path = crate::scratch_dir("embeddings-pooling-type").join("last.gguf");
    writer.write(&path).unwrap();
    let embed = |flags: &[&str]| {
        let server = Server::start(&path, flags);
        let answer = server.post("/v1/embeddings", r#"{"input": "one two three four", "encoding_format": "float"}"#);
        assert_eq!(answer.status, 200, "{flags:?}: {}", answer.body);
        floats(&answer.json()["data"][0]["embedding"])
    };
    let (from_file, last, mean) = (embed(&[]), embed(&["--pooling", "last"]), embed(&["--pooling", "mean"]));
    assert!(cosine(&from_file, &last) > 0.99999, "the file's pooling is last");
    assert!(cosine(&from_file, &mean) < 0.999, "--pooling mean pools otherwise");
}
