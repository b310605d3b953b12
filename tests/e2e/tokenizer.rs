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
