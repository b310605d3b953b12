//! Dequantization against the `gguf` Python package's dequantizer, on real blocks of the
//! default model and random blocks of the types it does not use.

use cinder_gguf::{GgmlType, dequantize};

fn type_named(name: &str) -> GgmlType {
    (0..64).filter_map(GgmlType::from_id).find(|t| t.name() == name).unwrap_or_else(|| panic!("type {name}"))
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn every_type_matches_the_gguf_package() {
    let fixture = crate::fixture("dequant.json");
    let cases = fixture["cases"].as_array().unwrap();
    let mut types = Vec::new();
    for case in cases {
        let ty = type_named(case["type"].as_str().unwrap());
        let ours = dequantize(ty, &hex(case["hex"].as_str().unwrap())).unwrap();
        let expected: Vec<f32> = case["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(ours.len(), expected.len(), "{}", case["name"]);
        for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{} value {i}: {a} vs {b}", case["name"]);
        }
        types.push(ty);
    }
    for required in [GgmlType::F32, GgmlType::F16, GgmlType::Bf16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4K, GgmlType::Q6K] {
        assert!(types.contains(&required), "no fixture for {required}");
    }
}
