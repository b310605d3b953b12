//! Every malformed-file case the reader must refuse, each with the message it gives, and a
//! property test that no byte-level corruption of a valid file makes it panic.

use std::ops::Range;
use std::sync::Mutex;

use cinder_gguf::{ByteSource, GgmlType, GgufError, GgufFile, GgufWriter, MetadataValue, ValueType, quantize};
use proptest::prelude::*;

fn valid_file() -> Vec<u8> {
    let weights: Vec<f32> = (0..64).map(|i| i as f32 / 8.0 - 4.0).collect();
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", MetadataValue::String("llama".into()))
        .metadata("count", MetadataValue::U32(7))
        .metadata("nested", MetadataValue::Array(ValueType::Array, vec![MetadataValue::i32s([1, 2])]))
        .metadata("tokens", MetadataValue::strings(["a", "b"]))
        .metadata("empty", MetadataValue::Array(ValueType::U8, vec![]))
        .metadata("pi", MetadataValue::F64(3.25))
        .metadata("flag", MetadataValue::Bool(true))
        .tensor("w", &[32, 2], GgmlType::Q4_1, quantize(GgmlType::Q4_1, &weights).unwrap())
        .tensor("n", &[3], GgmlType::F32, quantize(GgmlType::F32, &[1.0, 2.0, 3.0]).unwrap());
    w.to_bytes()
}

fn err(bytes: Vec<u8>) -> GgufError {
    GgufFile::from_bytes(bytes).expect_err("must be refused")
}

#[test]
fn valid_file_round_trips() {
    let file = GgufFile::from_bytes(valid_file()).unwrap();
    assert_eq!(file.version(), 3);
    let m = file.metadata();
    assert_eq!(m.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(m.get_u64("count").unwrap(), 7);
    assert_eq!(m.get_str_array("tokens").unwrap(), ["a", "b"]);
    assert_eq!(m.get_array("nested").unwrap()[0].as_array().unwrap().len(), 2);
    assert!(m.get_array("empty").unwrap().is_empty());
    assert_eq!(m.get_f64("pi").unwrap(), 3.25);
    assert!(m.get_bool("flag").unwrap());
    let w = file.tensor("w").unwrap();
    assert_eq!((w.row_len(), w.rows(), w.bytes), (32, 2, 40));
    let values = file.dequantize(w).unwrap();
    assert!((values[63] - 3.875).abs() < 0.3);
    assert_eq!(file.dequantize_rows(w, [1]).unwrap(), values[32..]);
    assert_eq!(file.dequantize(file.tensor("n").unwrap()).unwrap(), [1.0, 2.0, 3.0]);
    assert!(matches!(file.tensor("x"), Err(GgufError::TensorNotFound(_))));
}

#[test]
fn version_2_and_custom_alignment_are_read() {
    let mut w = GgufWriter::new();
    w.metadata("general.alignment", MetadataValue::U32(64))
        .tensor("a", &[1], GgmlType::F32, vec![0; 4])
        .tensor("b", &[1], GgmlType::F32, 7f32.to_le_bytes().to_vec());
    let mut bytes = w.to_bytes();
    bytes[4] = 2;
    let file = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!((file.version(), file.alignment()), (2, 64));
    assert_eq!(file.data_start() % 64, 0);
    assert_eq!(file.tensor("b").unwrap().offset, 64);
    assert_eq!(file.dequantize(file.tensor("b").unwrap()).unwrap(), [7.0]);
}

#[test]
fn open_reports_missing_files_by_path() {
    let e = GgufFile::open("/nonexistent/model.gguf").unwrap_err().to_string();
    assert!(e.contains("/nonexistent/model.gguf"), "{e}");
}

#[test]
fn bad_magic() {
    let mut bytes = valid_file();
    bytes[..4].copy_from_slice(b"GGML");
    assert!(err(bytes).to_string().contains("bad magic"));
    assert!(err(b"PK\x03\x04 a zip file".to_vec()).to_string().contains("not a GGUF file"));
}

#[test]
fn unsupported_versions() {
    for v in [1u32, 4, 99] {
        let mut bytes = valid_file();
        bytes[4..8].copy_from_slice(&v.to_le_bytes());
        assert_eq!(err(bytes).to_string(), format!("unsupported GGUF version {v} (supported: 2 and 3)"));
    }
}

/// A file read by ranges, remembering the ranges asked for.
struct Ranges {
    bytes: Vec<u8>,
    reads: Mutex<Vec<Range<u64>>>,
}

impl ByteSource for Ranges {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read(&self, range: Range<u64>) -> Vec<u8> {
        self.reads.lock().unwrap().push(range.clone());
        self.bytes[range.start as usize..range.end as usize].to_vec()
    }
}

fn from_source(bytes: Vec<u8>) -> (Result<GgufFile, GgufError>, &'static Ranges) {
    let source: &'static Ranges = Box::leak(Box::new(Ranges { bytes, reads: Mutex::new(Vec::new()) }));
    struct Shared(&'static Ranges);
    impl ByteSource for Shared {
        fn len(&self) -> u64 {
            self.0.len()
        }
        fn read(&self, range: Range<u64>) -> Vec<u8> {
            self.0.read(range)
        }
    }
    (GgufFile::from_source(Box::new(Shared(source))), source)
}

#[test]
fn a_file_read_by_ranges_reads_its_header_then_each_tensor_when_asked() {
    // A header of over 1 MiB (a big vocabulary), so it is read in growing prefixes.
    let weights: Vec<f32> = (0..64).map(|i| i as f32 / 8.0 - 4.0).collect();
    let tokens: Vec<String> = (0..120_000).map(|i| format!("token{i}")).collect();
    let mut w = GgufWriter::new();
    w.metadata("tokenizer.ggml.tokens", MetadataValue::strings(tokens.iter().map(String::as_str)))
        .tensor("w", &[32, 2], GgmlType::Q4_1, quantize(GgmlType::Q4_1, &weights).unwrap());
    let bytes = w.to_bytes();
    let whole = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert!(whole.data_start() > 1 << 20);
    let (file, source) = from_source(bytes.clone());
    let file = file.unwrap();
    let header_reads = source.reads.lock().unwrap().clone();
    assert!(header_reads.len() > 1 && header_reads.iter().all(|r| r.start == 0), "{header_reads:?}");
    assert_eq!(file.metadata().get_str_array("tokenizer.ggml.tokens").unwrap().len(), tokens.len());
    let t = file.tensor("w").unwrap();
    assert_eq!(*file.tensor_data(t), *whole.tensor_data(whole.tensor("w").unwrap()));
    assert_eq!(file.dequantize(t).unwrap(), whole.dequantize(t).unwrap());
    let start = file.data_start() + t.offset;
    assert_eq!(source.reads.lock().unwrap().last(), Some(&(start..start + t.bytes)), "only the tensor is read");
    assert_eq!(*file.tensor_bytes(t, 20..40), bytes[(start + 20) as usize..(start + 40) as usize]);

    // A file cut short is refused as from memory, naming what is missing.
    let cut = bytes[..(start + 20) as usize].to_vec();
    assert_eq!(from_source(cut.clone()).0.unwrap_err().to_string(), err(cut).to_string());
    let cut = bytes[..(1 << 20) + 100].to_vec();
    assert_eq!(from_source(cut.clone()).0.unwrap_err().to_string(), err(cut).to_string());
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = valid_file();
    let file = GgufFile::from_bytes(bytes.clone()).unwrap();
    // "n" (12 bytes) is the last tensor, at offset 64; only the padding after it may go.
    let end_of_data = file.data_start() as usize + 64 + 12;
    for len in 0..bytes.len() {
        match GgufFile::from_bytes(bytes[..len].to_vec()) {
            Ok(_) => assert!(len >= end_of_data, "truncated to {len} bytes and accepted"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    ["truncated", "outside the file", "larger than the file"].iter().any(|s| msg.contains(s)),
                    "len {len}: {msg}"
                );
            }
        }
    }
}

#[test]
fn implausible_counts_fail_before_allocating() {
    let mut bytes = valid_file();
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err(bytes).to_string().contains("larger than the file could hold"));
    let mut bytes = valid_file();
    bytes[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(err(bytes).to_string().contains("tensors"));
}

fn file_with_tensor(shape: &[u64], ty_id: u32, offset: u64) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.tensor("t", shape, GgmlType::F32, vec![0; 64]);
    let mut bytes = w.to_bytes();
    // Patch the tensor info written by the writer: name, n_dims, dims, type, offset.
    let info = 24 + 8 + 1;
    let mut out = bytes[..info].to_vec();
    out.extend((shape.len() as u32).to_le_bytes());
    shape.iter().for_each(|d| out.extend(d.to_le_bytes()));
    out.extend(ty_id.to_le_bytes());
    out.extend(offset.to_le_bytes());
    out.resize(out.len().div_ceil(32) * 32, 0);
    out.extend(vec![0u8; 64]);
    bytes.clear();
    bytes.extend(out);
    bytes
}

#[test]
fn tensor_info_errors_name_the_tensor() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (file_with_tensor(&[4], 5, 0), "unknown type id 5"),
        (file_with_tensor(&[4], 1000, 0), "unknown type id 1000"),
        (file_with_tensor(&[1, 1, 1, 1, 1], 0, 0), "5 dimensions"),
        (file_with_tensor(&[u64::MAX, 3], 0, 0), "overflows"),
        (file_with_tensor(&[31], 2, 0), "not a whole number of Q4_0 blocks"),
        (file_with_tensor(&[4], 0, 3), "not a multiple of the alignment"),
        (file_with_tensor(&[4096], 0, 0), "outside the file"),
        (file_with_tensor(&[4], 0, u64::MAX - 31), "outside the file"),
    ];
    for (bytes, expected) in cases {
        let msg = err(bytes).to_string();
        assert!(msg.contains(expected) && msg.contains("\"t\""), "{msg} lacks {expected}");
    }
}

#[test]
fn duplicate_and_overlapping_tensors() {
    let mut w = GgufWriter::new();
    w.tensor("a", &[1], GgmlType::F32, vec![0; 4]).tensor("a", &[1], GgmlType::F32, vec![0; 4]);
    assert!(err(w.to_bytes()).to_string().contains("\"a\" appears twice"));

    let mut w = GgufWriter::new();
    w.tensor("a", &[8], GgmlType::F32, vec![0; 32]).tensor("b", &[8], GgmlType::F32, vec![0; 32]);
    let mut bytes = w.to_bytes();
    // Header (24 bytes) and the info of "a" (33 bytes) precede "b", whose offset ends its info.
    let b_offset = 24 + 33 + 33 - 8;
    assert_eq!(bytes[b_offset], 32);
    bytes[b_offset] = 0;
    assert!(err(bytes).to_string().contains("overlap"));
}

#[test]
fn metadata_errors() {
    let mut w = GgufWriter::new();
    w.metadata("k", MetadataValue::U8(1)).metadata("k", MetadataValue::U8(2));
    assert!(err(w.to_bytes()).to_string().contains("\"k\" appears twice"));

    let mut w = GgufWriter::new();
    w.metadata("general.alignment", MetadataValue::U32(48));
    assert!(err(w.to_bytes()).to_string().contains("power of two"));

    let mut w = GgufWriter::new();
    w.metadata("k", MetadataValue::U8(1));
    let mut bytes = w.to_bytes();
    let type_at = 24 + 8 + 1;
    bytes[type_at..type_at + 4].copy_from_slice(&77u32.to_le_bytes());
    assert!(err(bytes).to_string().contains("unknown value type 77"));

    let mut w = GgufWriter::new();
    w.metadata("s", MetadataValue::String("ok".into()));
    let mut bytes = w.to_bytes();
    bytes[24 + 8 + 1 + 4 + 8] = 0xFF;
    assert!(err(bytes).to_string().contains("invalid UTF-8"));

    let mut deep = MetadataValue::U8(0);
    for _ in 0..12 {
        deep = MetadataValue::Array(deep.value_type(), vec![deep]);
    }
    let mut w = GgufWriter::new();
    w.metadata("deep", deep);
    assert!(err(w.to_bytes()).to_string().contains("nests arrays deeper"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn corrupted_files_never_panic(edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let mut bytes = valid_file();
        let len = bytes.len();
        for (at, byte) in edits {
            bytes[at % len] = byte;
        }
        bytes.truncate(cut % (len + 1));
        if let Ok(file) = GgufFile::from_bytes(bytes) {
            for t in file.tensors() {
                let _ = file.dequantize(t);
            }
        }
    }
}
