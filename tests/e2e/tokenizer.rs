//! Tokenizer parity with llama.cpp on the default model's vocabulary.

use cinder_gguf::GgufFile;
use cinder_tokenizer::Tokenizer;

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
