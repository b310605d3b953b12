//! Tests of loading and running models on each backend against the CPU reference, and of
//! the GPU kernels and their CPU twins against plain loops.

use cinder_gguf::{GgmlType, GgufFile, GgufWriter, MetadataValue};

use std::sync::Arc;

use crate::arch::{GEMMA2, GEMMA3, LayerWeight, PHI3, QWEN2, QWEN3};
use crate::lora::{ADAPTABLE, LoraAdapter, synthetic_adapter};
use crate::reference::{ReferenceCache, ReferenceModel};
use crate::tiny::{TinyModel, TinyRopeScaling};
use crate::{Backend, KvLayout, KvType, KvTypes, Model, ModelConfig, ModelError, RowAdapter, SeqChunk, wgpu_device};

fn load(bytes: Vec<u8>, backend: &Backend) -> (GgufFile, Model) {
    let file = GgufFile::from_bytes(bytes).unwrap();
    let model = Model::load(&file, backend).unwrap();
    (file, model)
}

/// The forward pass's tests, once on each backend.
macro_rules! on_each_backend {
    ($($test:ident),* $(,)?) => {
        mod gpu {
            $(#[test]
            fn $test() {
                super::$test(&crate::Backend::Gpu(crate::wgpu_device().unwrap()));
            })*
        }
        mod cpu {
            $(#[test]
            fn $test() {
                super::$test(&crate::Backend::cpu(2).unwrap());
            })*
        }
    };
}

on_each_backend!(
    every_architecture_matches_the_reference,
    forward_matches_reference_with_grouped_query_attention,
    forward_matches_reference_across_encodings_and_head_layouts,
    chunked_prefill_equals_one_pass,
    batched_paged_forward_matches_each_sequence_alone,
    bad_batches_are_errors,
    bad_inputs_are_errors,
    a_layers_products_are_timed,
    adapters_match_the_reference_and_share_a_batch,
    pooled_rows_match_the_reference_across_chunks,
);

/// A KV cache lives where its model runs: one of the other backend is refused with the
/// reason, and both stay usable.
#[test]
fn a_kv_cache_of_the_other_backend_is_refused() {
    let (gpu, cpu) = (Backend::Gpu(crate::wgpu_device().unwrap()), Backend::cpu(2).unwrap());
    let (_, on_gpu) = load(TinyModel::default().to_gguf(), &gpu);
    let (_, on_cpu) = load(TinyModel::default().to_gguf(), &cpu);
    let (mut gpu_cache, mut cpu_cache) = (on_gpu.new_cache(8).unwrap(), on_cpu.new_cache(8).unwrap());
    let e = on_gpu.forward(&[1, 2], &mut cpu_cache).unwrap_err().to_string();
    assert_eq!(e, "invalid parameter: a KV cache in host memory given to a model on the GPU");
    let e = on_cpu.forward(&[1, 2], &mut gpu_cache).unwrap_err().to_string();
    assert!(e.contains("a KV cache in the GPU given to a model on the CPU"), "{e}");
    assert_eq!((gpu_cache.len(), cpu_cache.len()), (0, 0));
    on_gpu.forward(&[1, 2], &mut gpu_cache).unwrap();
    on_cpu.forward(&[1, 2], &mut cpu_cache).unwrap();
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn assert_close(device: &[f32], reference: &[f32], what: &str) {
    assert_within(device, reference, 1e-3, what);
}

fn assert_within(device: &[f32], reference: &[f32], tolerance: f32, what: &str) {
    let scale = reference.iter().map(|v| v.abs()).fold(1.0, f32::max);
    let diff = max_abs_diff(device, reference);
    assert!(diff <= tolerance * scale, "{what}: max |device - reference| = {diff} (scale {scale})");
}

/// Prefill, then decode steps, comparing every step's logits with the reference.
fn check_against_reference(spec: TinyModel, backend: &Backend) {
    let (file, model) = load(spec.to_gguf(), backend);
    let reference = ReferenceModel::load(&file).unwrap();
    let mut cache = model.new_cache(64).unwrap();
    let mut ref_cache = ReferenceCache::default();
    let prompt = [1, 40, 77, 200, 5, 9, 260];
    let what = format!("{spec:?}");
    assert_close(&model.forward(&prompt, &mut cache).unwrap(), &reference.forward(&prompt, &mut ref_cache), &what);
    for token in [3, 150, 42] {
        let device = model.forward(&[token], &mut cache).unwrap();
        assert_close(&device, &reference.forward(&[token], &mut ref_cache), &what);
    }
    // A long chunk (flash attention) after the decodes, past any window of the layers.
    let long: Vec<u32> = (0..40).map(|i| (i * 37 % 250) as u32 + 3).collect();
    assert_close(&model.forward(&long, &mut cache).unwrap(), &reference.forward(&long, &mut ref_cache), &what);
    assert_eq!(cache.len(), prompt.len() + 3 + long.len());
}

/// Every architecture's block variant, with the options its real files use.
fn every_architecture_matches_the_reference(backend: &Backend) {
    let small = TinyModel { n_layers: 3, ..Default::default() };
    // Qwen 2: query, key and value biases.
    check_against_reference(TinyModel { arch: &QWEN2, biases: true, ..small.clone() }, backend);
    // Qwen 3: QK-norm and a head size other than hidden / heads.
    check_against_reference(TinyModel { arch: &QWEN3, head_dim: Some(32), seed: 8, ..small.clone() }, backend);
    // Gemma 2: soft-capping, GELU, post-norms, embedding scale, alternating windows.
    check_against_reference(TinyModel { arch: &GEMMA2, sliding_window: Some(6), seed: 9, ..small.clone() }, backend);
    // Gemma 3: QK-norm, 256-wide heads, one global layer in six, local RoPE base.
    let gemma3 = TinyModel { arch: &GEMMA3, n_layers: 7, head_dim: Some(256), n_kv_heads: 1, sliding_window: Some(8), seed: 10, ..small.clone() };
    check_against_reference(gemma3, backend);
    // Phi-3: fused QKV and fused gate-up.
    check_against_reference(TinyModel { arch: &PHI3, fused_qkv: true, tied_embeddings: false, seed: 11, ..small.clone() }, backend);
    // Llama with every bias, a fused QKV, a sliding window and each RoPE scaling.
    check_against_reference(TinyModel { biases: true, fused_qkv: true, sliding_window: Some(5), seed: 12, ..small.clone() }, backend);
    check_against_reference(TinyModel { rope_scaling: TinyRopeScaling::FreqFactors, seed: 13, ..small.clone() }, backend);
    check_against_reference(TinyModel { rope_scaling: TinyRopeScaling::Linear(4.0), seed: 14, ..small.clone() }, backend);
    let yarn = TinyRopeScaling::Yarn { factor: 4.0, original_context: 128 };
    check_against_reference(TinyModel { arch: &QWEN2, rope_scaling: yarn, seed: 15, ..small.clone() }, backend);
    let longrope = TinyRopeScaling::LongRope { original_context: 128, attn_factor: 1.19 };
    check_against_reference(TinyModel { arch: &PHI3, fused_qkv: true, rope_scaling: longrope, seed: 16, ..small }, backend);
}

fn forward_matches_reference_with_grouped_query_attention(backend: &Backend) {
    check_against_reference(TinyModel::default(), backend);
}

fn forward_matches_reference_across_encodings_and_head_layouts(backend: &Backend) {
    check_against_reference(TinyModel { weight_type: GgmlType::Q8_0, n_kv_heads: 4, tied_embeddings: false, seed: 2, ..Default::default() }, backend);
    check_against_reference(TinyModel { weight_type: GgmlType::F32, n_kv_heads: 1, n_layers: 3, seed: 3, ..Default::default() }, backend);
    check_against_reference(TinyModel { weight_type: GgmlType::Q4_0, seed: 4, ..Default::default() }, backend);
    check_against_reference(TinyModel { weight_type: GgmlType::Q5_1, seed: 5, ..Default::default() }, backend);
    // K-quant rows hold 256 values.
    let wide = TinyModel { hidden: 256, ffn_hidden: 512, n_heads: 4, seed: 6, ..Default::default() };
    check_against_reference(TinyModel { weight_type: GgmlType::Q4K, ..wide.clone() }, backend);
    check_against_reference(TinyModel { weight_type: GgmlType::Q6K, tied_embeddings: false, ..wide }, backend);
}

fn chunked_prefill_equals_one_pass(backend: &Backend) {
    let (_, model) = load(TinyModel::default().to_gguf(), backend);
    let prompt: Vec<u32> = (0..20).map(|i| (i * 13 % 250) as u32).collect();
    let mut whole = model.new_cache(32).unwrap();
    let expected = model.forward(&prompt, &mut whole).unwrap();
    let mut chunked = model.new_cache(32).unwrap();
    model.forward(&prompt[..7], &mut chunked).unwrap();
    model.forward(&prompt[7..15], &mut chunked).unwrap();
    assert_close(&model.forward(&prompt[15..], &mut chunked).unwrap(), &expected, "chunked prefill");
}

/// Sequences of different lengths in one batch, through scattered block tables, prefill
/// chunks next to decodes, and a sequence forked by copying its blocks: every logit row
/// equals the reference run of that sequence alone.
fn batched_paged_forward_matches_each_sequence_alone(backend: &Backend) {
    let gemma3 = TinyModel { arch: &GEMMA3, n_layers: 6, head_dim: Some(32), sliding_window: Some(9), seed: 8, ..Default::default() };
    let wide = TinyModel { hidden: 256, n_heads: 2, n_kv_heads: 1, seed: 7, ..Default::default() };
    let types = |keys, values| KvTypes { keys, values };
    // Every KV type as keys and as values (the quantized ones need heads of 32 or more).
    let runs = [
        (TinyModel::default(), KvTypes::default()),
        (wide.clone(), KvTypes::both(KvType::F32)),
        (wide, types(KvType::Q8_0, KvType::Q4_0)),
        (gemma3.clone(), types(KvType::Q4_0, KvType::Q8_0)),
        (gemma3, types(KvType::F16, KvType::F32)),
    ];
    for (spec, types) in runs {
        let (file, mut model) = load(spec.to_gguf(), backend);
        let mut reference = ReferenceModel::load(&file).unwrap();
        model.set_kv_types(types).unwrap();
        reference.set_kv_types(types).unwrap();
        let layout = model.config().kv_layout();
        let block_size = 4;
        let mut cache = model.new_paged_cache(64 * layout.groups.len(), block_size).unwrap();
        // Interleaved tables, so that neighbouring slots belong to different sequences; each
        // layer group its own range of the pool.
        let table = |s: u32, g: usize| -> Vec<u32> { (0..20).map(|i| 64 * g as u32 + i * 3 + s).collect() };
        let tables: Vec<Vec<Vec<u32>>> = (0..3).map(|s| (0..layout.groups.len()).map(|g| table(s, g)).collect()).collect();
        let prompts: Vec<Vec<u32>> =
            [70usize, 5, 23].iter().enumerate().map(|(s, &n)| (0..n).map(|i| ((i * 31 + s * 7) % 250) as u32).collect()).collect();
        let mut refs: Vec<ReferenceCache> = (0..3).map(|_| ReferenceCache::default()).collect();
        let what = format!("{spec:?}, KV {types}");
        // Where the model's arithmetic and the reference's round a value to either side of
        // a level (f32 noise), q4_0 stores values a sixteenth of their block's range apart.
        let tolerance = if [types.keys, types.values].contains(&KvType::Q4_0) { 1e-2 } else { 1e-3 };
        let check = |got: &[f32], expected: &[f32], what: &str| assert_within(got, expected, tolerance, what);

        // Step 1: the first 30 tokens of sequence 0 (no logits), whole prompts of 1 and 2.
        let step1 = [
            SeqChunk { tokens: &prompts[0][..30], start: 0, tables: &tables[0], logits: 0, adapter: None, pool: None },
            SeqChunk { tokens: &prompts[1], start: 0, tables: &tables[1], logits: 1, adapter: None, pool: None },
            SeqChunk { tokens: &prompts[2], start: 0, tables: &tables[2], logits: 1, adapter: None, pool: None },
        ];
        let got = model.forward_batch(&step1, &mut cache).unwrap();
        reference.forward(&prompts[0][..30], &mut refs[0]);
        check(&got[0], &reference.forward(&prompts[1], &mut refs[1]), &what);
        check(&got[1], &reference.forward(&prompts[2], &mut refs[2]), &what);

        // Step 2: the rest of prompt 0 (crossing a 64-key tile) beside two decodes. Entries
        // of windowed groups behind every query's window name blocks sequence 1 is writing:
        // attention must not read them.
        let behind_window = |own: &[Vec<u32>], first_query: usize| -> Vec<Vec<u32>> {
            own.iter()
                .zip(&layout.groups)
                .enumerate()
                .map(|(g, (t, window))| {
                    let mut t = t.clone();
                    if let Some(w) = window {
                        let gone = (first_query + 1).saturating_sub(*w) as usize / block_size;
                        t[..gone].fill(tables[1][g][1]);
                    }
                    t
                })
                .collect()
        };
        let seq0 = behind_window(&tables[0], 30);
        let seq2 = behind_window(&tables[2], 23);
        let step2 = [
            SeqChunk { tokens: &prompts[0][30..], start: 30, tables: &seq0, logits: 1, adapter: None, pool: None },
            SeqChunk { tokens: &[17], start: 5, tables: &tables[1], logits: 1, adapter: None, pool: None },
            SeqChunk { tokens: &[99], start: 23, tables: &seq2, logits: 1, adapter: None, pool: None },
        ];
        let got = model.forward_batch(&step2, &mut cache).unwrap();
        check(&got[0], &reference.forward(&prompts[0][30..], &mut refs[0]), &what);
        check(&got[1], &reference.forward(&[17], &mut refs[1]), &what);
        check(&got[2], &reference.forward(&[99], &mut refs[2]), &what);

        // Fork sequence 0: copy its 18 filled blocks of every group to free ones and decode
        // both copies.
        let free: Vec<u32> = (60..64).chain((0..20).map(|i| i * 3 + 2).skip(6)).take(20).collect();
        let fork: Vec<Vec<u32>> = (0..layout.groups.len()).map(|g| free.iter().map(|b| b + 64 * g as u32).collect()).collect();
        let pairs: Vec<(u32, u32)> =
            tables[0].iter().zip(&fork).flat_map(|(from, to)| from[..18].iter().zip(to).map(|(&s, &d)| (s, d))).collect();
        model.copy_blocks(&mut cache, &pairs).unwrap();
        // The fork runs its decode with a draft token, a logits row for each position.
        let step3 = [
            SeqChunk { tokens: &[5], start: 70, tables: &tables[0], logits: 1, adapter: None, pool: None },
            SeqChunk { tokens: &[5, 8], start: 70, tables: &fork, logits: 2, adapter: None, pool: None },
        ];
        let got = model.forward_batch(&step3, &mut cache).unwrap();
        assert_eq!(got.len(), 3, "one row, then two");
        let expected = reference.forward(&[5], &mut refs[0]);
        let mut forked = refs[0].clone();
        check(&got[0], &expected, &what);
        check(&got[1], &expected, &what);
        check(&got[2], &reference.forward(&[8], &mut forked), &what);
    }
}

/// An adapter for `config` adapting `targets` (every matrix when empty).
fn adapter(config: &ModelConfig, targets: &[LayerWeight], rank: usize, ty: GgmlType, seed: u64) -> Arc<LoraAdapter> {
    let targets = if targets.is_empty() { &ADAPTABLE[..] } else { targets };
    let bytes = synthetic_adapter(config, targets, rank, 2.0 * rank as f32, ty, seed).unwrap().to_bytes();
    Arc::new(LoraAdapter::from_gguf(&GgufFile::from_bytes(bytes).unwrap(), config).unwrap())
}

/// LoRA adapters (f32, f16 and q8_0 files; fused matrices split as their base; biases and
/// post-norms after them) match the reference with the same adapter and scale; one batch
/// whose rows run three adapters and none (a long prompt chunk, short ones, decodes)
/// gives each row what it gets alone; an emptied slot is refused.
fn adapters_match_the_reference_and_share_a_batch(backend: &Backend) {
    let small = TinyModel { n_layers: 2, ..Default::default() };
    let specs = [
        (small.clone(), GgmlType::F32),
        (TinyModel { arch: &PHI3, fused_qkv: true, tied_embeddings: false, seed: 11, ..small.clone() }, GgmlType::F16),
        (TinyModel { arch: &QWEN2, biases: true, seed: 12, ..small.clone() }, GgmlType::Q8_0),
        (TinyModel { arch: &GEMMA2, sliding_window: Some(6), seed: 9, ..small }, GgmlType::F32),
    ];
    for (spec, ty) in specs {
        let (file, mut model) = load(spec.to_gguf(), backend);
        let config = model.config().clone();
        let what = format!("{spec:?}, {ty:?} adapters");
        // q8_0's blocks of 32 run along lora_b's rank.
        let rank = |r: usize| if ty == GgmlType::Q8_0 { 32 } else { r };
        let adapters = [
            adapter(&config, &[], rank(8), ty, 1),
            adapter(&config, &[LayerWeight::Q, LayerWeight::V, LayerWeight::Qkv], rank(4), ty, 2),
            adapter(&config, &[LayerWeight::Gate, LayerWeight::Up, LayerWeight::Down, LayerWeight::AttnOut], rank(16), ty, 3),
        ];
        for (slot, a) in adapters.iter().enumerate() {
            model.set_adapter(slot, Some(a.clone())).unwrap();
        }
        let rows = [Some(RowAdapter { slot: 0, scale: 1.0 }), Some(RowAdapter { slot: 1, scale: 0.5 }), Some(RowAdapter { slot: 2, scale: 2.0 }), None];
        let prompts: Vec<Vec<u32>> = [40usize, 7, 12, 9].iter().enumerate().map(|(s, &n)| (0..n).map(|i| ((i * 29 + s * 11) % 250) as u32 + 3).collect()).collect();
        // Interleaved tables, a range of the pool per layer group.
        let groups = config.kv_layout().groups.len() as u32;
        let tables: Vec<Vec<Vec<u32>>> = (0..4u32).map(|s| (0..groups).map(|g| (0..16).map(|i| 64 * g + i * 4 + s).collect()).collect()).collect();
        let pool = |model: &Model| model.new_paged_cache(64 * groups as usize, 4).unwrap();
        let (decode_a, decode_b) = (17u32, 99u32);

        // The reference, and each sequence alone, per adapter.
        let mut alone = Vec::new();
        for (s, row) in rows.iter().enumerate() {
            let mut reference = ReferenceModel::load(&file).unwrap();
            reference.set_adapter(row.map(|r| (adapters[r.slot as usize].clone(), r.scale)));
            let mut ref_cache = ReferenceCache::default();
            let mut cache = pool(&model);
            let run = |cache: &mut crate::PagedKvCache, tokens: &[u32], start| {
                let chunk = SeqChunk { tokens, start, tables: &tables[s], logits: 1, adapter: *row, pool: None };
                model.forward_batch(&[chunk], cache).unwrap().remove(0)
            };
            let prompt = &prompts[s];
            let got = [run(&mut cache, prompt, 0), run(&mut cache, &[decode_a], prompt.len()), run(&mut cache, &[decode_b], prompt.len() + 1)];
            let expected = [reference.forward(prompt, &mut ref_cache), reference.forward(&[decode_a], &mut ref_cache), reference.forward(&[decode_b], &mut ref_cache)];
            for (g, e) in got.iter().zip(&expected) {
                assert_close(g, e, &format!("{what}, sequence {s} alone"));
            }
            alone.push(got);
        }
        // An adapter moves the outputs (the test would pass unadapted otherwise).
        for s in 0..3 {
            assert!(max_abs_diff(&alone[s][0], &alone[3][0]) > 1e-2, "{what}: adapter {s} changes nothing");
        }

        // All four in one batch: the prompts, then two decode steps.
        let mut cache = pool(&model);
        let prompt_step: Vec<SeqChunk> = (0..4).map(|s| SeqChunk { tokens: &prompts[s], start: 0, tables: &tables[s], logits: 1, adapter: rows[s], pool: None }).collect();
        let mut together = vec![model.forward_batch(&prompt_step, &mut cache).unwrap()];
        for (i, token) in [decode_a, decode_b].iter().enumerate() {
            let step: Vec<SeqChunk> = (0..4)
                .map(|s| SeqChunk { tokens: std::slice::from_ref(token), start: prompts[s].len() + i, tables: &tables[s], logits: 1, adapter: rows[s], pool: None })
                .collect();
            together.push(model.forward_batch(&step, &mut cache).unwrap());
        }
        for (step, rows) in together.iter().enumerate() {
            for (s, got) in rows.iter().enumerate() {
                assert_within(got, &alone[s][step], 1e-4, &format!("{what}: sequence {s} at step {step} in the batch"));
            }
        }

        // Emptying slot 1 leaves the others as they were.
        model.set_adapter(1, None).unwrap();
        let mut cache = pool(&model);
        let chunk = |s: usize| SeqChunk { tokens: &prompts[s], start: 0, tables: &tables[s], logits: 1, adapter: rows[s], pool: None };
        let e = model.forward_batch(&[chunk(1)], &mut cache).unwrap_err().to_string();
        assert_eq!(e, "invalid parameter: no LoRA adapter is in slot 1");
        let got = model.forward_batch(&[chunk(0), chunk(2)], &mut cache).unwrap();
        assert_within(&got[0], &alone[0][0], 1e-4, &what);
        assert_within(&got[1], &alone[2][0], 1e-4, &what);
    }
}

/// Adapter files that do not fit the model, or are not adapters, are refused with the reason.
#[test]
fn mismatched_adapters_are_refused_with_the_reason() {
    let config = TinyModel::default().config();
    let refused = |writer: &GgufWriter, on: &ModelConfig| LoraAdapter::from_gguf(&GgufFile::from_bytes(writer.to_bytes()).unwrap(), on).unwrap_err().to_string();
    let good = || synthetic_adapter(&config, &[LayerWeight::Q], 4, 8.0, GgmlType::F32, 1).unwrap();
    let e = LoraAdapter::from_gguf(&GgufFile::from_bytes(TinyModel::default().to_gguf()).unwrap(), &config).unwrap_err().to_string();
    assert!(e.contains("not an adapter file"), "{e}");
    let e = refused(&good(), &TinyModel { arch: &QWEN2, ..Default::default() }.config());
    assert!(e.contains("the adapter is for a llama model, and this model is qwen2"), "{e}");
    let e = refused(&good(), &TinyModel { hidden: 128, ..Default::default() }.config());
    assert!(e.contains("lora_a is [64, 4]"), "{e}");
    let mut head = good();
    head.tensor("output.weight.lora_a", &[64, 4], GgmlType::F32, vec![0; 64 * 4 * 4]);
    let e = refused(&head, &config);
    assert!(e.contains("the token embedding and output head are not supported"), "{e}");
    let mut half = good();
    half.remove_tensor("blk.1.attn_q.weight.lora_b");
    assert!(refused(&half, &config).contains("\"blk.1.attn_q.weight\" has only one of lora_a and lora_b"));
    let mut other = good();
    other.set_metadata("adapter.type", MetadataValue::String("control_vector".into()));
    assert!(refused(&other, &config).contains("only \"lora\" adapters are supported"));
}

#[test]
fn kv_types_a_models_heads_cannot_hold_are_refused() {
    let mut config = TinyModel::default().config();
    let error = config.set_kv_types(KvTypes { keys: KvType::F16, values: KvType::Q4_0 }).unwrap_err().to_string();
    assert!(error.contains("a KV cache of q4_0 stores blocks of 32 values along a head, and this model's heads have 16"), "{error}");
    assert_eq!(config.kv_types, KvTypes::default());
}

/// Gemma 3's one global layer in six: 12 layers make six groups of two, the global one first.
#[test]
fn windowed_layers_get_their_own_block_tables() {
    let config = TinyModel { arch: &GEMMA3, n_layers: 12, sliding_window: Some(8), ..Default::default() }.config();
    let layout = config.kv_layout();
    assert_eq!(layout.group_size, 2, "2 global and 10 local layers");
    assert_eq!(layout.groups, [None, Some(8), Some(8), Some(8), Some(8), Some(8)]);
    assert_eq!((layout.layer_slots[5], layout.layer_slots[11]), ((0, 0), (0, 1)));
    assert_eq!((layout.layer_slots[0], layout.layer_slots[1], layout.layer_slots[6]), ((1, 0), (1, 1), (3, 1)));
    let plain = TinyModel::default().config().kv_layout();
    assert_eq!((plain.groups, plain.group_size), (vec![None], 2));
}

fn bad_batches_are_errors(backend: &Backend) {
    use crate::SeqChunk;

    let (_, model) = load(TinyModel::default().to_gguf(), backend);
    let mut cache = model.new_paged_cache(4, 4).unwrap();
    let run = |chunks: &[SeqChunk], cache: &mut crate::PagedKvCache| model.forward_batch(chunks, cache).unwrap_err().to_string();
    let e = run(&[SeqChunk { tokens: &[1; 9], start: 0, tables: &[vec![0, 1]], logits: 1, adapter: None, pool: None }], &mut cache);
    assert!(e.contains("9 positions needed, 8 allocated"), "{e}");
    let e = run(&[SeqChunk { tokens: &[1], start: 0, tables: &[vec![7]], logits: 1, adapter: None, pool: None }], &mut cache);
    assert!(e.contains("block 7 is outside the pool of 4 blocks"), "{e}");
    let e = run(&[SeqChunk { tokens: &[1], start: 0, tables: &[vec![0], vec![1]], logits: 1, adapter: None, pool: None }], &mut cache);
    assert!(e.contains("2 block tables for a cache of 1 layer groups"), "{e}");
    let e = run(&[SeqChunk { tokens: &[], start: 0, tables: &[vec![0]], logits: 1, adapter: None, pool: None }], &mut cache);
    assert!(e.contains("no tokens"), "{e}");
    assert!(model.copy_blocks(&mut cache, &[(0, 4)]).is_err());
    assert!(model.new_paged_cache(0, 16).is_err());
    // Nothing was written by the refused batches; the pool still serves.
    let ok = model.forward_batch(&[SeqChunk { tokens: &[1, 2], start: 0, tables: &[vec![3]], logits: 1, adapter: None, pool: None }], &mut cache).unwrap();
    assert_eq!(ok.len(), 1);
}

/// Chunks that pool give one row each, beside chunks that want logits: the sum, first or
/// last of their rows after the final norm, as the reference computes them.
fn pooled_rows_match_the_reference_across_chunks(backend: &Backend) {
    use crate::{Reduce, SeqChunk};

    let (file, model) = load(TinyModel { arch: &QWEN3, ..TinyModel::default() }.to_gguf(), backend);
    let reference = ReferenceModel::load(&file).unwrap();
    let mut cache = model.new_paged_cache(64, 4).unwrap();
    let tables: Vec<Vec<Vec<u32>>> = (0..3).map(|s| vec![(0..16).map(|i| i * 3 + s).collect()]).collect();
    let prompts: Vec<Vec<u32>> = [40usize, 9, 5].iter().map(|&n| (0..n).map(|i| ((i * 37 + n) % 250) as u32).collect()).collect();
    let normed: Vec<Vec<Vec<f32>>> = prompts.iter().map(|p| reference.normed_rows(p, &mut ReferenceCache::default())).collect();
    let sum = |rows: &[Vec<f32>]| (0..rows[0].len()).map(|j| rows.iter().map(|r| r[j]).sum()).collect::<Vec<f32>>();
    let chunk = |s: usize, range: std::ops::Range<usize>, logits: usize, pool: Option<Reduce>| SeqChunk {
        tokens: &prompts[s][range.clone()],
        start: range.start,
        tables: &tables[s],
        logits,
        adapter: None,
        pool,
    };
    let step1 = [chunk(0, 0..24, 0, Some(Reduce::Sum)), chunk(1, 0..9, 1, Some(Reduce::Last))];
    let out = model.launch_batch(&step1, &mut cache).unwrap().read().unwrap();
    let crate::LogitRows::Full(logits) = out.logits else { panic!("whole rows") };
    assert_eq!((logits.len(), out.pooled.len()), (1, 2));
    assert_within(&logits[0], &reference.forward(&prompts[1], &mut ReferenceCache::default()), 1e-3, "logits beside pooling");
    assert_within(&out.pooled[0], &sum(&normed[0][..24]), 1e-3, "the sum of a first chunk");
    assert_within(&out.pooled[1], &normed[1][8], 1e-3, "the last row");
    let step2 = [chunk(2, 0..5, 0, Some(Reduce::First)), chunk(0, 24..40, 0, Some(Reduce::Sum))];
    let out = model.launch_batch(&step2, &mut cache).unwrap().read().unwrap();
    assert_eq!(out.pooled.len(), 2);
    assert_within(&out.pooled[0], &normed[2][0], 1e-3, "the first row");
    assert_within(&out.pooled[1], &sum(&normed[0][24..]), 1e-3, "the sum of a later chunk");
}

/// The timing the page's `auto` compares its two paths with runs on each backend.
fn a_layers_products_are_timed(backend: &Backend) {
    let file = cinder_gguf::GgufFile::from_bytes(TinyModel::default().to_gguf()).unwrap();
    let time = burn_cubecl::cubecl::future::block_on(crate::time_layer_products(&file, backend)).unwrap();
    assert!(time > web_time::Duration::ZERO && time < web_time::Duration::from_secs(10), "{time:?}");
}

fn bad_inputs_are_errors(backend: &Backend) {
    let (_, model) = load(TinyModel::default().to_gguf(), backend);
    let mut cache = model.new_cache(4).unwrap();
    let e = model.forward(&[1, 2, 3, 4, 5], &mut cache).unwrap_err();
    assert!(matches!(e, ModelError::CacheFull { needed: 5, capacity: 4 }), "{e}");
    let e = model.forward(&[99_999], &mut cache).unwrap_err().to_string();
    assert!(e.contains("99999") && e.contains("outside the vocabulary"), "{e}");
    assert!(model.forward(&[], &mut cache).is_err());
    assert!(model.new_cache(100_000).is_err());
    // The cache is still usable after refused requests.
    model.forward(&[1, 2], &mut cache).unwrap();
    assert_eq!(cache.len(), 2);
}

fn edited(edit: impl FnOnce(&mut GgufWriter)) -> String {
    edited_model(TinyModel::default(), edit)
}

fn edited_model(spec: TinyModel, edit: impl FnOnce(&mut GgufWriter)) -> String {
    let file = GgufFile::from_bytes(spec.to_gguf()).unwrap();
    let mut writer = GgufWriter::from_file(&file);
    edit(&mut writer);
    let file = GgufFile::from_bytes(writer.to_bytes()).unwrap();
    match Model::load(&file, &Backend::Gpu(wgpu_device().unwrap())) {
        Ok(_) => panic!("edited model loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn malformed_models_are_refused_with_the_reason() {
    let e = edited(|w| {
        w.set_metadata("general.architecture", MetadataValue::String("gptneox".into()));
    });
    assert_eq!(e, "unsupported architecture \"gptneox\" (supported: llama, qwen2, qwen3, gemma2, gemma3, phi3)");
    let e = edited(|w| {
        w.remove_metadata("llama.block_count");
    });
    assert_eq!(e, "required metadata key \"llama.block_count\" is missing");
    let e = edited(|w| {
        w.set_metadata("llama.attention.head_count", MetadataValue::U32(6));
    });
    assert!(e.contains("not divisible by 6 heads"), "{e}");
    let e = edited(|w| {
        w.set_metadata("llama.attention.head_count", MetadataValue::U32(3));
    });
    assert!(e.contains("3 heads cannot be grouped over 2 KV heads"), "{e}");
    let e = edited(|w| {
        w.remove_tensor("blk.1.ffn_up.weight");
    });
    assert_eq!(e, "tensor \"blk.1.ffn_up.weight\" not found");
    let e = edited(|w| {
        w.set_metadata("llama.feed_forward_length", MetadataValue::U32(128));
    });
    assert!(e.contains("blk.0.ffn_gate.weight") && e.contains("expected [64, 128]"), "{e}");
    let e = edited(|w| {
        w.set_metadata("llama.embedding_length", MetadataValue::U64(u64::MAX));
    });
    assert!(e.contains("llama.embedding_length") && e.contains("at most"), "{e}");
    // The tensors each architecture's description lists are required.
    let gemma3 = TinyModel { arch: &GEMMA3, ..Default::default() };
    let e = edited_model(gemma3.clone(), |w| {
        w.remove_tensor("blk.1.attn_k_norm.weight");
    });
    assert_eq!(e, "tensor \"blk.1.attn_k_norm.weight\" not found");
    let e = edited_model(gemma3, |w| {
        w.remove_tensor("blk.0.post_ffw_norm.weight");
    });
    assert_eq!(e, "tensor \"blk.0.post_ffw_norm.weight\" not found");
    let phi3 = TinyModel { arch: &PHI3, fused_qkv: true, ..Default::default() };
    let e = edited_model(phi3, |w| {
        w.remove_tensor("blk.1.attn_qkv.weight");
    });
    assert_eq!(e, "tensor \"blk.1.attn_qkv.weight\" not found");
    let e = edited_model(TinyModel { arch: &QWEN2, biases: true, ..Default::default() }, |w| {
        w.remove_tensor("blk.1.attn_v.bias");
    });
    assert_eq!(e, "tensor \"blk.1.attn_v.bias\" not found");
    let e = edited(|w| {
        w.set_metadata("llama.attention.key_length", MetadataValue::U32(18));
    });
    assert!(e.contains("head dimension 18") && e.contains("fours"), "{e}");
    let e = edited(|w| {
        w.set_metadata("llama.attention.value_length", MetadataValue::U32(32));
    });
    assert!(e.contains("value heads of 32 dimensions beside key heads of 16"), "{e}");
    let e = edited(|w| {
        w.set_metadata("llama.rope.scaling.type", MetadataValue::String("dynamic".into()));
    });
    assert!(e.contains("RoPE scaling \"dynamic\" (supported: none, linear, yarn, longrope)"), "{e}");
}

/// The quantized matrix kernels against the dequantized matrix multiplied on the CPU, for
/// every format they read, over odd row counts and token counts around the kernels' tilings
/// (decode, batches, prompts on the row and the tiled kernels), with and without a residual
/// added as they write.
#[test]
fn quantized_matmul_matches_dequantized_reference() {
    use burn::tensor::{Tensor, TensorData};
    use rand::{Rng, SeedableRng};

    use crate::many_tokens::ManyTokens;
    use crate::quant::{MAX_QUANTIZED_TOKENS, QuantFormat, QuantMatrix};

    let device = wgpu_device().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let formats = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K];
    for ty in formats {
        // Rows of 1, 3 and 19 blocks (K-quant blocks hold 256 values, the others 32).
        let block = ty.block_elements();
        for (rows, cols) in [(1, block), (37, 3 * block), (130, 19 * block)] {
            let values: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
            let blocks = cinder_gguf::quantize(ty, &values).unwrap();
            let weights = cinder_gguf::dequantize(ty, &blocks).unwrap();
            let format = QuantFormat::of(ty).unwrap();
            let short = QuantMatrix::upload(&device, format, &blocks[1..], rows, cols).err().expect("truncated blocks are refused");
            assert!(short.to_string().contains(&format!("do not hold a {rows} x {cols}")), "{short}");
            let matrix = QuantMatrix::upload(&device, format, &blocks, rows, cols).unwrap();
            let portable = QuantMatrix::upload(&device, format, &blocks, rows, cols).unwrap().without_subgroups();
            let kernels = [ManyTokens::Rows, ManyTokens::Tiled];
            let runs = [&matrix, &portable].into_iter().flat_map(|m| [1, 2, 5, 8, 9, 17, 70, 131].map(|t| (m, t)));
            for (matrix, tokens) in runs {
                let x: Vec<f32> = (0..tokens * cols).map(|_| rng.random_range(-2.0..2.0)).collect();
                let expected: Vec<f32> = x
                    .chunks(cols)
                    .flat_map(|xt| weights.chunks(cols).map(move |w| w.iter().zip(xt).map(|(a, b)| a * b).sum::<f32>()))
                    .collect();
                let input = Tensor::<2>::from_data(TensorData::new(x, [tokens, cols]), &device);
                let residual: Vec<f32> = (0..tokens * rows).map(|_| rng.random_range(-2.0..2.0)).collect();
                let with_residual: Vec<f32> = expected.iter().zip(&residual).map(|(y, r)| y + r).collect();
                let residual = Tensor::<2>::from_data(TensorData::new(residual, [tokens, rows]), &device);
                // Prompt-sized products on both kernels, whichever the adapter's timing picks.
                for kernel in if tokens > MAX_QUANTIZED_TOKENS { &kernels[..] } else { &kernels[..1] } {
                    let name = match (kernel, matrix.uses_subgroups()) {
                        (ManyTokens::Tiled, _) => "tiled",
                        (ManyTokens::Rows, true) => "subgroup",
                        (ManyTokens::Rows, false) => "portable",
                    };
                    let what = format!("{ty:?} {rows}x{cols}, {tokens} tokens, {name} kernel");
                    let got = matrix.multiply_with(input.clone(), None, *kernel).try_into_vec_as::<f32>().unwrap();
                    assert_close(&got, &expected, &what);
                    // The same product with a residual added as it is written.
                    let got = matrix.multiply_with(input.clone(), Some(residual.clone()), *kernel).try_into_vec_as::<f32>().unwrap();
                    assert_close(&got, &with_residual, &format!("{what}, residual"));
                }
                // The public entry takes one of them.
                let got = matrix.forward_add(input, residual).try_into_vec_as::<f32>().unwrap();
                assert_close(&got, &with_residual, &format!("{ty:?} {rows}x{cols}, {tokens} tokens, forward_add"));
            }
        }
    }
}

/// The device's and the CPU backend's top-k against a sort of each row: largest first, equal
/// values in index order, nothing past the limit, NaN never (a row of NaN has no
/// candidates), for k = 1 (greedy), a k that rounds up, and the largest.
#[test]
fn top_k_matches_a_sort_on_both_backends() {
    use burn::tensor::{Tensor, TensorData};
    use rand::{Rng, SeedableRng};

    use crate::logits::Logits;
    use crate::{LogitRows, MAX_DEVICE_TOP_K, PendingLogits};

    let device = wgpu_device().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let (vocab, limit) = (1003, 990);
    let mut rows: Vec<Vec<f32>> = (0..7).map(|_| (0..vocab).map(|_| rng.random_range(-5.0..5.0)).collect()).collect();
    rows[1][10] = 9.0;
    rows[1][900] = 9.0;
    rows[2][995] = 50.0;
    rows[3] = vec![0.5; vocab];
    rows[4][7] = f32::NAN;
    rows[4][8] = 20.0;
    rows[5] = vec![f32::NEG_INFINITY; vocab];
    rows[6] = vec![f32::NAN; vocab];
    // Many equal values spread over every lane's share.
    for i in (0..vocab).step_by(3) {
        rows[0][i] = 4.5;
    }
    let flat: Vec<f32> = rows.concat();
    for k in [1, 5, MAX_DEVICE_TOP_K] {
        let kept = k.next_power_of_two();
        let expected: Vec<Vec<(u32, f32)>> = rows
            .iter()
            .map(|row| {
                let mut all: Vec<(u32, f32)> =
                    row[..limit].iter().enumerate().filter(|(_, v)| !v.is_nan()).map(|(i, &v)| (i as u32, v)).collect();
                all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                all.truncate(kept);
                all
            })
            .collect();
        assert_eq!(expected[1][..2.min(kept)], [(10, 9.0), (900, 9.0)][..2.min(kept)]);
        assert_eq!(expected[4][0], (8, 20.0));
        assert!(expected[6].is_empty());
        let logits = Tensor::<2>::from_data(TensorData::new(flat.clone(), [rows.len(), vocab]), &device);
        let pending = PendingLogits::new(Some(Logits::Device(logits)), vocab).top_k(k, limit);
        assert_eq!(pending.read().unwrap().logits, LogitRows::TopK(expected.clone()), "device, k = {k}");
        let pending = PendingLogits::new(Some(Logits::Host(flat.clone())), vocab).top_k(k, limit);
        assert_eq!(pending.read().unwrap().logits, LogitRows::TopK(expected), "CPU, k = {k}");
    }
}

/// The fused RMSNorm, gate and RoPE kernels and their CPU twins against plain loops, on odd
/// shapes.
#[test]
fn elementwise_ops_match_plain_loops_on_both_backends() {
    use burn::tensor::{Tensor, TensorData};
    use rand::{Rng, SeedableRng};

    use crate::arch::{Activation, RopeLayout};
    use crate::fused::{gated, rms_norm, rope};

    let device = wgpu_device().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-3.0..3.0)).collect() };
    let tensor = |v: Vec<f32>, shape: [usize; 2]| Tensor::<2>::from_data(TensorData::new(v, shape), &device);
    for (rows, cols) in [(1, 7), (5, 576), (3, 1000)] {
        let (x, w, up) = (random(rows * cols), random(cols), random(rows * cols));
        let expected: Vec<f32> = x
            .chunks(cols)
            .flat_map(|row| {
                let scale = 1.0 / (row.iter().map(|v| v * v).sum::<f32>() / cols as f32 + 1e-5).sqrt();
                row.iter().zip(&w).map(move |(v, w)| v * scale * w)
            })
            .collect();
        let got = rms_norm(tensor(x.clone(), [rows, cols]), &tensor(w.clone(), [1, cols]), 1e-5);
        assert_close(&got.try_into_vec_as::<f32>().unwrap(), &expected, &format!("rms_norm {rows}x{cols}"));
        let mut got = x.clone();
        cinder_cpu::rms_norm(&mut got, &w, 1e-5);
        assert_close(&got, &expected, &format!("CPU rms_norm {rows}x{cols}"));

        let expected: Vec<f32> = x.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
        let got = gated(tensor(x.clone(), [rows, cols]), tensor(up.clone(), [rows, cols]), Activation::Silu);
        assert_close(&got.try_into_vec_as::<f32>().unwrap(), &expected, &format!("silu gate {rows}x{cols}"));
        let mut got = x.clone();
        cinder_cpu::gated(&mut got, &up, crate::ops::activation(Activation::Silu));
        assert_close(&got, &expected, &format!("CPU silu gate {rows}x{cols}"));
        // GELU (tanh approximation) as the formula gives it, and as x and 0 beyond |x| = 10.
        let big: Vec<f32> = x.iter().enumerate().map(|(i, v)| if i % 7 == 3 { v * 8.0 } else { *v }).collect();
        let gelu = |g: f32| match g {
            g if g >= 10.0 => g,
            g if g <= -10.0 => 0.0,
            g => 0.5 * g * (1.0 + (0.797_884_6 * (g + 0.044_715 * g * g * g)).tanh()),
        };
        let expected: Vec<f32> = big.iter().zip(&up).map(|(&g, u)| gelu(g) * u).collect();
        let got = gated(tensor(big.clone(), [rows, cols]), tensor(up.clone(), [rows, cols]), Activation::GeluTanh);
        assert_close(&got.try_into_vec_as::<f32>().unwrap(), &expected, &format!("gelu gate {rows}x{cols}"));
        let mut got = big;
        cinder_cpu::gated(&mut got, &up, crate::ops::activation(Activation::GeluTanh));
        assert_close(&got, &expected, &format!("CPU gelu gate {rows}x{cols}"));
    }
    for layout in [RopeLayout::Adjacent, RopeLayout::Halves] {
        for (tokens, heads, head_dim, start) in [(1, 1, 2, 0), (3, 9, 64, 5), (7, 3, 18, 40)] {
            let context = 64;
            let half = head_dim / 2;
            let angles: Vec<f32> = random(context * half);
            let (cos, sin): (Vec<f32>, Vec<f32>) = angles.iter().map(|a| (a.cos(), a.sin())).unzip();
            let x = random(tokens * heads * head_dim);
            let mut expected = x.clone();
            for (h, head) in expected.chunks_mut(head_dim).enumerate() {
                let token = h / heads;
                for i in 0..half {
                    let (a, b) = if layout == RopeLayout::Halves { (i, i + half) } else { (2 * i, 2 * i + 1) };
                    let angle = (start + token) * half + i;
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos[angle] - x1 * sin[angle];
                    head[b] = x0 * sin[angle] + x1 * cos[angle];
                }
            }
            let positions: Vec<u32> = (start as u32..).take(tokens).collect();
            let mut got = x.clone();
            let tables = cinder_cpu::RopeTables { cos: cos.clone(), sin: sin.clone(), halves: layout == RopeLayout::Halves };
            tables.rotate(&mut got, head_dim, &positions);
            assert_close(&got, &expected, &format!("CPU {layout:?} rope {tokens}x{heads}x{head_dim} from {start}"));
            let input = Tensor::<3>::from_data(TensorData::new(x, [tokens, heads, head_dim]), &device);
            let (cos, sin) = (tensor(cos, [context, half]), tensor(sin, [context, half]));
            let cube = crate::kernel::cube_device(&device).unwrap();
            let batch = crate::paged::BatchBuffer::new(&cube, crate::paged::BatchLayout::positions_only(&positions));
            let got = rope(input, &cos, &sin, layout, &batch).try_into_vec_as::<f32>().unwrap();
            assert_close(&got, &expected, &format!("{layout:?} rope {tokens}x{heads}x{head_dim} from {start}"));
        }
    }
}

/// The paged and flash-attention kernels (portable, and subgroup where the adapter has a
/// fixed subgroup size) and the CPU's paged attention against a plain loop, in one batch:
/// decodes (one over 601 positions, split over its keys), chunks of odd lengths (past
/// query-tile and key-tile edges) after cached positions, blocks of 5 slots scattered
/// through the pool, windows, soft-caps, grouped queries, head sizes 32 to 256, and keys
/// and values stored as each KV type (the loop reads them as the CPU's pool decodes them).
#[test]
fn attention_kernels_match_a_loop() {
    use crate::attention::{Attention, ScoreRule};
    use crate::kernel::cube_device;
    use crate::ops::Ops;
    use crate::ops::cpu::{CpuOps, HostRows};
    use crate::paged::{BatchBuffer, BatchLayout, PagedKvCache, PoolShape};
    use burn::tensor::{Tensor, TensorData};

    let device = wgpu_device().unwrap();
    let cube = cube_device(&device).unwrap();
    let mut seed = 1u32;
    let mut random = move |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    };
    let cases = [
        (6, 3, 32, ScoreRule { scale: 0.2, window: None, softcap: None }),
        (3, 1, 64, ScoreRule { scale: 0.125, window: Some(37), softcap: None }),
        (2, 2, 256, ScoreRule { scale: 0.0625, window: None, softcap: Some(2.0) }),
        (6, 3, 64, ScoreRule { scale: 0.3, window: Some(70), softcap: Some(1.5) }),
    ];
    let widths = [None, crate::ops::gpu::fixed_subgroup_width(&device)];
    // Every type as keys and as values, each case with two pairs.
    let type_pairs = [(KvType::F32, KvType::Q4_0), (KvType::F16, KvType::F16), (KvType::Q8_0, KvType::F32), (KvType::Q4_0, KvType::Q8_0)];
    let runs = cases.into_iter().enumerate().flat_map(|(i, c)| {
        let types = [type_pairs[i], type_pairs[(i + 1) % 4]].map(|(keys, values)| KvTypes { keys, values });
        widths.iter().zip(types).map(move |(&w, t)| (c, w, t))
    });
    for ((heads, kv_heads, hd, rule), subgroup_width, types) in runs {
        let kv_dim = kv_heads * hd;
        let block_size = 5;
        let layout = KvLayout { groups: vec![rule.window], layer_slots: vec![(0, 0)], group_size: 1 };
        let shape = PoolShape { layout, kv_dim, types, num_blocks: 700, block_size };
        let cache = PagedKvCache::on_device(&cube, shape.clone(), subgroup_width).unwrap();
        let mut host_cache = PagedKvCache::on_host(shape).unwrap();
        // (cached positions, new tokens) per sequence: decodes (the long one's attention split
        // over its keys where the window allows), then long chunks.
        let sequences = [(9, 1), (600, 1), (0, 33), (40, 65), (7, 130)];
        let tables: Vec<Vec<Vec<u32>>> =
            (0..sequences.len() as u32).map(|s| vec![(0..130).map(|b| b * sequences.len() as u32 + s).collect()]).collect();
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for &(cached, new) in &sequences {
            keys.push((0..cached + new).map(|_| random(kv_dim)).collect::<Vec<_>>());
            values.push((0..cached + new).map(|_| random(kv_dim)).collect::<Vec<_>>());
        }
        // Every position's keys and values written in one batch.
        let tokens: Vec<Vec<u32>> = sequences.iter().map(|&(c, n)| vec![0; c + n]).collect();
        let writes: Vec<SeqChunk> = (0..sequences.len()).map(|s| SeqChunk { tokens: &tokens[s], start: 0, tables: &tables[s], logits: 0, adapter: None, pool: None }).collect();
        let order = BatchLayout::order(&writes);
        let laid_out: Vec<&SeqChunk> = order.iter().map(|&i| &writes[i]).collect();
        let batch = BatchBuffer::new(&cube, BatchLayout::new(&laid_out, block_size, 1));
        let flat = |rows: Vec<&Vec<Vec<f32>>>| -> Vec<f32> { rows.into_iter().flat_map(|r| r.iter().flatten().copied()).collect() };
        let tensor = |data: Vec<f32>| Tensor::<2>::from_data(TensorData::new(data, [batch.layout.rows, kv_dim]), &device);
        let (k, v) = (flat(order.iter().map(|&i| &keys[i]).collect()), flat(order.iter().map(|&i| &values[i]).collect()));
        host_cache.write_host(0, &k, &v, &batch.layout);
        cache.write(0, tensor(k), tensor(v), &batch);

        // The new tokens of every sequence attend in one batch.
        let steps: Vec<SeqChunk> = sequences
            .iter()
            .enumerate()
            .map(|(s, &(cached, new))| SeqChunk { tokens: &tokens[s][cached..cached + new], start: cached, tables: &tables[s], logits: 0, adapter: None, pool: None })
            .collect();
        let order = BatchLayout::order(&steps);
        let laid_out: Vec<&SeqChunk> = order.iter().map(|&i| &steps[i]).collect();
        let batch = BatchBuffer::new(&cube, BatchLayout::new(&laid_out, block_size, 1));
        assert_eq!((batch.layout.paged_rows, batch.layout.long.len()), (2, 3));
        if rule.window.is_none() {
            assert!(crate::attention::key_splits(batch.layout.paged_rows * heads, 601) > 1, "the long decode is split");
        }
        let width = heads * hd;
        let q = random(batch.layout.rows * width);
        let config = ModelConfig {
            n_heads: heads,
            n_kv_heads: kv_heads,
            head_dim: hd,
            query_scale: rule.scale,
            attention_softcap: rule.softcap,
            ..TinyModel::default().config()
        };
        let attention = Attention::new(&config, &batch, &cache);
        let input = Tensor::<2>::from_data(TensorData::new(q.clone(), [batch.layout.rows, width]), &device);
        let got = attention.attend(0, input, &rule).try_into_vec_as::<f32>().unwrap();
        let cpu = CpuOps { threads: std::sync::Arc::new(cinder_cpu::Threads::new(2).unwrap()) };
        let on_cpu = cpu.attend(&host_cache, 0, HostRows { data: q.clone(), width }, &config, &rule, &batch.layout).data;
        let mut row = 0;
        for &s in &order {
            let (cached, new) = sequences[s];
            // The reference model's attention of each query over the positions it sees.
            let expected: Vec<f32> = (cached..cached + new)
                .zip(q[row * width..].chunks(width))
                .flat_map(|(p, query)| {
                    let seen = rule.first_visible(p)..p + 1;
                    let keys: Vec<Vec<f32>> = keys[s][seen.clone()].iter().map(|k| types.keys.stored(k)).collect();
                    let values: Vec<Vec<f32>> = values[s][seen].iter().map(|v| types.values.stored(v)).collect();
                    crate::reference::attention(query, &keys, &values, &config)
                })
                .collect();
            let what = format!("sequence {s}, heads {heads}/{kv_heads} x {hd}, {rule:?}, subgroups {subgroup_width:?}, KV {types}");
            assert_close(&got[row * width..(row + new) * width], &expected, &what);
            assert_close(&on_cpu[row * width..(row + new) * width], &expected, &format!("CPU {what}"));
            row += new;
        }
    }
}
