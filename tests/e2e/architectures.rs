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
pub(crate) fn variants() -> Vec<(&'static str, TinyModel)> {
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

/// Each architecture with heads of 32 values or more, which the quantized KV cache types
/// store (blocks of 32 along a head), F32 weights (Gemma ties its LM head to the token
/// embedding, which the tiny models store as Q8_0).
fn kv_variants() -> Vec<(&'static str, TinyModel)> {
    let wide = TinyModel { n_layers: 3, hidden: 128, n_heads: 4, n_kv_heads: 2, weight_type: GgmlType::F32, tied_embeddings: false, ..Default::default() };
    vec![
        ("llama_kv", TinyModel { seed: 21, ..wide.clone() }),
        ("qwen2_kv", TinyModel { arch: &QWEN2, biases: true, seed: 22, ..wide.clone() }),
        ("qwen3_kv", TinyModel { arch: &QWEN3, head_dim: Some(64), seed: 23, ..wide.clone() }),
        ("gemma2_kv", TinyModel { arch: &GEMMA2, sliding_window: Some(6), tied_embeddings: true, seed: 24, ..wide.clone() }),
        ("gemma3_kv", TinyModel { arch: &GEMMA3, n_layers: 7, head_dim: Some(256), n_kv_heads: 1, sliding_window: Some(8), tied_embeddings: true, seed: 25, ..wide.clone() }),
        ("phi3_kv", TinyModel { arch: &PHI3, fused_qkv: true, seed: 26, ..wide }),
    ]
}

/// Writes the variants (and the KV-type variants) to `$CINDER_TINY_DIR` for the fixture
/// scripts (run by hand).
#[test]
#[ignore = "writes the tiny models for scripts/make_family_fixtures.py and make_kv_type_fixtures.py"]
fn write_tiny_architectures() {
    let dir = std::path::PathBuf::from(std::env::var_os("CINDER_TINY_DIR").expect("CINDER_TINY_DIR is set"));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, spec) in variants().into_iter().chain(kv_variants()) {
        std::fs::write(dir.join(format!("{name}.gguf")), spec.to_gguf()).unwrap();
    }
}

on_each_backend!(
    tiny_architectures_match_llama_cpp,
    tiny_architectures_match_llama_cpp_with_lora_adapters,
    tiny_architectures_match_llama_cpp_with_each_kv_type,
);

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
        let steps = forced_steps(&model, case, &case["steps"], Some(RowAdapter { slot: 0, scale: 1.0 }));
        for (i, step) in steps.iter().enumerate() {
            if !step.same && step.gap.is_none_or(|gap| gap >= 2.0 * tolerance) {
                failures.push(format!("{name}: step {i}: cinder's token differs from llama.cpp's (its gap between them {:?})", step.gap));
            }
        }
        let worst = steps.iter().map(|s| s.logprob_diff).fold(0.0, f32::max);
        if worst > tolerance {
            failures.push(format!("{name}: log-probabilities differ by up to {worst}"));
        }
        eprintln!("{name} with a LoRA adapter: {} steps, largest log-probability difference {worst:.5}", steps.len());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// One step of [`forced_steps`].
struct Step {
    /// cinder picks llama.cpp's token.
    same: bool,
    /// llama.cpp's log-probability of its token less that of cinder's, where it lists both.
    gap: Option<f32>,
    /// The largest log-probability difference over llama.cpp's 10 most likely tokens.
    logprob_diff: f32,
}

/// Step by step on llama.cpp's tokens (`steps`: each its `id` and `top` 10 `[id,
/// log-probability]`, after `case`'s `prompt_ids`), `model` running with `adapter`: how
/// cinder's numbers compare at each. llama.cpp picked among tokens outside `case`'s
/// `banned` range (bytes that leave a UTF-8 character incomplete, which its server reports
/// no probabilities for); cinder picks among the same.
fn forced_steps(model: &Model, case: &serde_json::Value, steps: &serde_json::Value, adapter: Option<RowAdapter>) -> Vec<Step> {
    let banned: Vec<usize> = serde_json::from_value(case["banned"].clone()).unwrap();
    let prompt: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
    let steps = steps.as_array().unwrap();
    let mut cache = model.new_cache(prompt.len() + steps.len()).unwrap();
    let mut input = prompt;
    let mut out = Vec::new();
    for step in steps {
        let logprobs = log_softmax(&model.forward_adapted(&input, &mut cache, adapter).unwrap());
        let allowed = (0..logprobs.len()).filter(|t| !(banned[0]..banned[1]).contains(t));
        let ours = allowed.max_by(|&a, &b| logprobs[a].total_cmp(&logprobs[b]).then(b.cmp(&a))).unwrap() as u32;
        let theirs = step["id"].as_u64().unwrap() as u32;
        let top: Vec<(u32, f32)> = (step["top"].as_array().unwrap().iter()).map(|t| (t[0].as_u64().unwrap() as u32, t[1].as_f64().unwrap() as f32)).collect();
        let their_lp = |token: u32| top.iter().find(|t| t.0 == token).map(|t| t.1);
        let logprob_diff = top.iter().map(|&(id, lp)| (logprobs[id as usize] - lp).abs()).fold(0.0, f32::max);
        out.push(Step { same: ours == theirs, gap: their_lp(theirs).zip(their_lp(ours)).map(|(a, b)| a - b), logprob_diff });
        input = vec![theirs];
    }
    out
}

/// Each KV cache type on a tiny model of each architecture with heads of 32 values or more
/// (`kv_variants`), against llama.cpp with the same `-ctk` / `-ctv` (flash attention on, as a
/// quantized value cache needs; `architectures_kv.json`, `scripts/make_kv_type_fixtures.py
/// --architectures`): step by step on llama.cpp's tokens, the share of steps where cinder
/// picks its token or llama.cpp's gap between the two is a near-tie: f16 at least 99 % and
/// q8_0 95 % (near-ties under 0.05), q4_0 reported and at least 85 % (near-ties under 0.4, the
/// quantized-file rule: llama.cpp rounds the queries to 8 bits against q4_0 keys).
fn tiny_architectures_match_llama_cpp_with_each_kv_type(on: On) {
    let fixture = crate::fixture("architectures_kv.json");
    for (kv_type, near_tie, bound) in [(KvType::F16, 0.05, 0.99), (KvType::Q8_0, 0.05, 0.95), (KvType::Q4_0, 0.4, 0.85)] {
        let (mut agreed, mut total, mut worst) = (0, 0, 0f32);
        for (name, spec) in kv_variants() {
            let case = &fixture["models"][name];
            let bytes = spec.to_gguf();
            assert_eq!(crate::sha256_hex(&bytes), case["sha256"].as_str().unwrap(), "{name}: the tiny model changed: run the fixture script");
            let mut model = Model::load(&GgufFile::from_bytes(bytes).unwrap(), &on.backend()).unwrap();
            model.set_kv_types(KvTypes::both(kv_type)).unwrap();
            let steps = forced_steps(&model, case, &case[kv_type.to_string()], None);
            let ok = steps.iter().filter(|s| s.same || s.gap.is_some_and(|g| g < near_tie)).count();
            let diff = steps.iter().filter(|s| s.same).map(|s| s.logprob_diff).fold(0.0, f32::max);
            eprintln!("{name}, KV {kv_type}: {ok} of {} steps agree; largest log-probability difference {diff:.4}", steps.len());
            (agreed, total, worst) = (agreed + ok, total + steps.len(), worst.max(diff));
        }
        let share = agreed as f64 / total as f64;
        eprintln!("KV {kv_type}: {agreed} of {total} steps agree ({:.1} %) on every architecture; largest log-probability difference {worst:.4}", 100.0 * share);
        assert!(share >= bound, "KV {kv_type}: {:.1} % of the steps agree with llama.cpp", 100.0 * share);
    }
}

fn argmax(logits: &[f32]) -> u32 {
    (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a))).unwrap() as u32
}
