//! Every supported architecture against llama.cpp: tiny random-weight models of each block
//! variant (written by `cinder_model::tiny`), run by llama.cpp once
//! (`scripts/make_family_fixtures.py` writes `tests/fixtures/architectures.json`), and by
//! cinder here: same greedy tokens, logits within a stated tolerance. llama.cpp ran them
//! with an f32 KV cache (`type_k`, `type_v`), and so does cinder here.

use cinder_gguf::{GgmlType, GgufFile};
use cinder_model::arch::{GEMMA2, GEMMA3, PHI3, QWEN2, QWEN3};
use cinder_model::tiny::{TinyModel, TinyRopeScaling};
use cinder_model::{KvType, KvTypes, LoraAdapter, Model, RowAdapter, log_softmax};

use crate::On;

/// The variants, by name: each architecture with the options its real files use, and
/// Llama's RoPE scalings. `quantized` ones run in llama.cpp with 8-bit activations.
fn variants() -> Vec<(&'static str, TinyModel)> {
    let base = TinyModel { n_layers: 3, weight_type: GgmlType::F32, tied_embeddings: false, ..Default::default() };
    let yarn = TinyRopeScaling::Yarn { factor: 4.0, original_context: 128 };
    vec![
        ("llama", base.clone()),
        ("llama_rope_freqs", TinyModel { rope_scaling: TinyRopeScaling::FreqFactors, seed: 2, ..base.clone() }),
        ("llama_linear_rope", TinyModel { rope_scaling: TinyRopeScaling::Linear(4.0), seed: 3, ..base.clone() }),
        ("qwen2_biases", TinyModel { arch: &QWEN2, biases: true, tied_embeddings: true, seed: 4, ..base.clone() }),
        ("qwen2_yarn", TinyModel { arch: &QWEN2, biases: true, rope_scaling: yarn, seed: 5, ..base.clone() }),
        ("qwen3", TinyModel { arch: &QWEN3, head_dim: Some(32), seed: 6, ..base.clone() }),
        ("gemma2", TinyModel { arch: &GEMMA2, sliding_window: Some(6), tied_embeddings: true, seed: 7, ..base.clone() }),
        (
            "gemma3",
            TinyModel {
                arch: &GEMMA3,
                n_layers: 7,
                head_dim: Some(256),
                n_kv_heads: 1,
                sliding_window: Some(8),
                tied_embeddings: true,
                seed: 8,
                ..base.clone()
            },
        ),
        ("phi3", TinyModel { arch: &PHI3, fused_qkv: true, seed: 9, ..base.clone() }),
        (
            "phi3_longrope",
            TinyModel {
                arch: &PHI3,
                fused_qkv: true,
                rope_scaling: TinyRopeScaling::LongRope { original_context: 128, attn_factor: 1.19 },
                seed: 12,
                ..base.clone()
            },
        ),
        ("llama_q8_0", TinyModel { weight_type: GgmlType::Q8_0, seed: 10, ..base.clone() }),
        ("gemma3_q5_0", TinyModel { arch: &GEMMA3, weight_type: GgmlType::Q5_0, sliding_window: Some(8), n_layers: 7, tied_embeddings: true, seed: 11, ..base }),
    ]
}

/// Writes the variants to `$CINDER_TINY_DIR` for the fixture script (run by hand).
#[test]
#[ignore = "writes the tiny models for scripts/make_family_fixtures.py"]
fn write_tiny_architectures() {
    let dir = std::path::PathBuf::from(std::env::var_os("CINDER_TINY_DIR").expect("CINDER_TINY_DIR is set"));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, spec) in variants() {
        std::fs::write(dir.join(format!("{name}.gguf")), spec.to_gguf()).unwrap();
    }
}

on_each_backend!(tiny_architectures_match_llama_cpp, tiny_architectures_match_llama_cpp_with_lora_adapters);

fn tiny_architectures_match_llama_cpp(on: On) {
    let fixture = crate::fixture("architectures.json");
    let backend = on.backend();
    let mut failures = Vec::new();
    for (name, spec) in variants() {
        let case = &fixture["models"][name];
        assert!(case.is_object(), "no llama.cpp reference for {name}: run scripts/make_family_fixtures.py");
        let bytes = spec.to_gguf();
        assert_eq!(
            crate::sha256_hex(&bytes),
            case["sha256"].as_str().unwrap(),
            "{name}: the tiny model changed since its reference was made: run scripts/make_family_fixtures.py"
        );
        let file = GgufFile::from_bytes(bytes).unwrap();
        let mut model = Model::load(&file, &backend).unwrap();
        model.set_kv_types(KvTypes::both(KvType::F32)).unwrap();
        let tolerance = case["tolerance"].as_f64().unwrap() as f32;
        let prompt: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        let steps = case["steps"].as_array().unwrap();
        let mut cache = model.new_cache(prompt.len() + steps.len()).unwrap();
        let mut input = prompt;
        let mut worst = 0f32;
        for (i, step) in steps.iter().enumerate() {
            let logits = model.forward(&input, &mut cache).unwrap();
            let expected: Vec<f32> = serde_json::from_value(step["logits"].clone()).unwrap();
            let diff = logits.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            worst = worst.max(diff);
            let ours = argmax(&logits);
            let theirs = step["id"].as_u64().unwrap() as u32;
            if ours != theirs {
                failures.push(format!("{name}: step {i}: token {ours}, llama.cpp {theirs}"));
                break;
            }
            if diff > tolerance {
                failures.push(format!("{name}: step {i}: logits differ by up to {diff} (tolerance {tolerance})"));
            }
            input = vec![ours];
        }
        eprintln!("{name}: {} steps, largest logit difference {worst:.5}", steps.len());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A LoRA adapter of every matrix of each F32 tiny model (written again by `cinder
/// synth-lora` from the fixture's arguments), against llama.cpp's `--lora` with an f32 KV
/// cache (`architectures_lora.json`, `scripts/make_lora_fixtures.py --architectures`): the
/// same greedy token at each of 8 steps (or a near-tie in llama.cpp's own numbers) and
/// llama.cpp's 10 most likely tokens' log-probabilities within the plain comparison's
/// tolerance (0.001 in f32; 0.05 where the LM head is the Q8_0 token embedding, which
/// llama.cpp multiplies with 8-bit activations). llama.cpp ran without flash attention
/// (its CPU flash attention rounds to f16), and picked among tokens that complete a UTF-8
/// character (the bytes from 0x80, which it reports no probabilities for, were banned);
/// cinder picks among the same.
fn tiny_architectures_match_llama_cpp_with_lora_adapters(on: On) {
    let fixture = crate::fixture("architectures_lora.json");
    let plain = crate::fixture("architectures.json");
    let dir = crate::scratch_dir(&format!("tiny_lora_{}", on.flag()));
    let mut failures = Vec::new();
    for (name, case) in fixture["models"].as_object().unwrap() {
        let spec = variants().into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no tiny model {name}")).1;
        let bytes = spec.to_gguf();
        assert_eq!(crate::sha256_hex(&bytes), plain["models"][name]["sha256"].as_str().unwrap(), "{name}: the tiny model changed");
        let path = dir.join(format!("{name}.gguf"));
        std::fs::write(&path, &bytes).unwrap();
        let adapter_path = dir.join(format!("{name}-lora.gguf"));
        let args: Vec<&str> = case["synth_lora"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        let status = crate::cinder_command().arg("synth-lora").arg("--model").arg(&path).arg("--out").arg(&adapter_path).args(&args).status().unwrap();
        assert!(status.success());
        let file = GgufFile::from_bytes(bytes).unwrap();
        let mut model = Model::load(&file, &on.backend()).unwrap();
        model.set_kv_types(KvTypes::both(KvType::F32)).unwrap();
        let adapter = LoraAdapter::from_gguf(&GgufFile::open(&adapter_path).unwrap(), model.config()).unwrap();
        model.set_adapter(0, Some(std::sync::Arc::new(adapter))).unwrap();
        let tolerance = plain["models"][name]["tolerance"].as_f64().unwrap() as f32;
        let banned: Vec<usize> = serde_json::from_value(case["banned"].clone()).unwrap();
        let prompt: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        let steps = case["steps"].as_array().unwrap();
        let mut cache = model.new_cache(prompt.len() + steps.len()).unwrap();
        let mut input = prompt;
        let mut worst = 0f32;
        for (i, step) in steps.iter().enumerate() {
            let logits = model.forward_adapted(&input, &mut cache, Some(RowAdapter { slot: 0, scale: 1.0 })).unwrap();
            let logprobs = log_softmax(&logits);
            let ours = (0..logprobs.len()).filter(|t| !(banned[0]..banned[1]).contains(t)).max_by(|&a, &b| logprobs[a].total_cmp(&logprobs[b]).then(b.cmp(&a))).unwrap() as u32;
            let theirs = step["id"].as_u64().unwrap() as u32;
            let top: Vec<(u32, f32)> = (step["top"].as_array().unwrap().iter()).map(|t| (t[0].as_u64().unwrap() as u32, t[1].as_f64().unwrap() as f32)).collect();
            let their_lp = |token: u32| top.iter().find(|t| t.0 == token).map(|t| t.1);
            let gap = their_lp(theirs).zip(their_lp(ours)).map(|(a, b)| a - b);
            if ours != theirs && gap.is_none_or(|gap| gap >= 2.0 * tolerance) {
                failures.push(format!("{name}: step {i}: token {ours}, llama.cpp {theirs} (its gap between them {gap:?})"));
            }
            for &(id, lp) in &top {
                worst = worst.max((logprobs[id as usize] - lp).abs());
            }
            input = vec![theirs];
        }
        if worst > tolerance {
            failures.push(format!("{name}: log-probabilities differ by up to {worst}"));
        }
        eprintln!("{name} with a LoRA adapter: {} steps, largest log-probability difference {worst:.5}", steps.len());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn argmax(logits: &[f32]) -> u32 {
    (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a))).unwrap() as u32
}
