//! Tokenizer parity with llama.cpp on the default model's vocabulary.

use cinder_gguf::GgufFile;
use cinder_tokenizer::{Segment, Tokenizer};

#[test]
fn token_ids_match_llama_cpp() {
    let file = GgufFile::open(crate::real_model_path()).unwrap();
    let tokenizer = Tokenizer::from_gguf(file.metadata()).unwrap();
    let fixture = crate::fixture("tokenizer.json");
    let ids = |v: &serde_json::Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 100);
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let plain = tokenizer.encode(text, false, false).unwrap();
        let special = tokenizer.encode(text, false, true).unwrap();
        if plain != ids(&case["ids"]) {
            failures.push(format!("{text:?}: {plain:?} != llama.cpp {:?}", ids(&case["ids"])));
        }
        if special != ids(&case["ids_special"]) {
            failures.push(format!("{text:?} (special): {special:?} != llama.cpp {:?}", ids(&case["ids_special"])));
        }
        assert_eq!(tokenizer.decode(&plain, false).unwrap(), text, "round trip");
        assert_eq!(tokenizer.decode(&special, false).unwrap(), text, "round trip with special tokens");
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(tokenizer.encode("Hello", true, true).unwrap(), ids(&fixture["add_special_hello"]));
}

/// The families' vocabularies against llama.cpp: Gemma 3 and Llama 2 / Phi-3 SentencePiece,
/// Qwen 2 and Llama 3 byte-level BPE, with special-token parsing off, on, and with BOS.
#[test]
fn family_vocabularies_match_llama_cpp() {
    let fixture = crate::fixture("tokenizer_families.json");
    let ids = |v: &serde_json::Value| -> Vec<u32> { serde_json::from_value(v.clone()).unwrap() };
    let mut failures = Vec::new();
    for (family, expected) in fixture["families"].as_object().unwrap() {
        let file_name = expected["file"].as_str().unwrap();
        let path = if family == "gemma3" { format!("models/{file_name}") } else { format!("vocab/{file_name}") };
        let file = GgufFile::open(crate::installed(&path)).unwrap();
        let tokenizer = Tokenizer::from_gguf(file.metadata()).unwrap();
        let cases = expected["cases"].as_array().unwrap();
        assert!(cases.len() >= 150, "{family}: {} strings", cases.len());
        let mut mismatches = 0;
        for case in cases {
            let text = case["text"].as_str().unwrap();
            for (key, add, special) in [("ids", false, false), ("ids_special", false, true), ("ids_add_special", true, true)] {
                let ours = tokenizer.encode(text, add, special).unwrap();
                if ours != ids(&case[key]) {
                    mismatches += 1;
                    failures.push(format!("{family} {key} {text:?}: {ours:?} != llama.cpp {:?}", ids(&case[key])));
                }
                // The chat path's splitter finds the same control tokens as the tokenizer.
                if special && tokenizer.encode_segments(&[Segment::Markup(text)], add).unwrap() != ours {
                    failures.push(format!("{family} {key} {text:?}: encode_segments differs from encode"));
                }
            }
            // Text comes back from its tokens (SentencePiece adds the leading space where
            // the vocabulary asks for a space prefix, and decodes `▁` as a space).
            let plain = tokenizer.encode(text, false, false).unwrap();
            let decoded = tokenizer.decode(&plain, false).unwrap();
            let expected_text = match family.as_str() {
                "llama_spm" | "phi3" if !text.is_empty() => format!(" {text}"),
                _ => text.to_owned(),
            };
            let spm_mark = text.contains('\u{2581}') && family != "qwen2" && family != "llama_bpe";
            if family != "phi3" && !spm_mark && decoded != expected_text {
                failures.push(format!("{family}: {text:?} decodes to {decoded:?}"));
            }
        }
        eprintln!("{family}: {} strings, {mismatches} mismatches", cases.len());
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// The families' chat templates render with minijinja, and a template that writes the BOS
/// token itself does not get a second one when the prompt is tokenized.
#[test]
fn family_chat_templates_start_with_one_bos() {
    use cinder_tokenizer::{ChatMessage, ChatTemplate};

    let cases = [
        ("meta-llama-Llama-3.1-8B-Instruct.jinja", "vocab/ggml-vocab-llama-bpe.gguf", "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"),
        ("google-gemma-2-2b-it.jinja", "models/gemma-3-270m-q4_k_m.gguf", "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"),
        ("microsoft-Phi-3.5-mini-instruct.jinja", "vocab/ggml-vocab-phi-3.gguf", "<|user|>\nHi<|end|>\n<|assistant|>\n"),
        ("Qwen-Qwen2.5-7B-Instruct.jinja", "vocab/ggml-vocab-qwen2.gguf", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        ("Qwen-Qwen3-0.6B.jinja", "vocab/ggml-vocab-qwen2.gguf", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "vocab/ggml-vocab-llama-spm.gguf", "[INST]Hi[/INST]"),
    ];
    for (template_name, vocab, expected_end) in cases {
        let file = GgufFile::open(crate::installed(vocab)).unwrap();
        let tokenizer = Tokenizer::from_gguf(file.metadata()).unwrap();
        let source = std::fs::read_to_string(crate::installed(&format!("vocab/templates/{template_name}"))).unwrap();
        let special = tokenizer.special_tokens();
        let text = |id: Option<u32>| id.and_then(|id| tokenizer.token_text(id)).unwrap_or_default().to_owned();
        let template = ChatTemplate::for_tokenizer(&source, &tokenizer).unwrap();
        let rendered = template.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
        assert!(rendered.contains(expected_end), "{template_name}: {rendered:?}");
        let ids = tokenizer.encode(&rendered, true, true).unwrap();
        let bos = special.bos.expect("every family has a BOS token");
        let leading = ids.iter().take_while(|&&id| id == bos).count();
        let writes_bos = source.contains("bos_token");
        let expected = usize::from(tokenizer.add_bos() || writes_bos && !text(special.bos).is_empty());
        assert_eq!(leading, expected, "{template_name} with {vocab}: {ids:?}");
        eprintln!("{template_name}: writes BOS {writes_bos}, tokenizer adds BOS {}, {leading} BOS", tokenizer.add_bos());
    }
}
