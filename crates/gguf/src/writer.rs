//! Writing GGUF version 3 files.

use crate::metadata::{MetadataValue, ValueType};
use crate::reader::align_up;
use crate::{DEFAULT_ALIGNMENT, GGUF_MAGIC, GgmlType, GgufFile};

/// Builds a GGUF file in memory: metadata first, then tensors in the order added.
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// A writer holding everything `file` holds, to be edited and written back.
    pub fn from_file(file: &GgufFile) -> Self {
        Self {
            metadata: file.metadata().iter().map(|(k, v)| (k.to_owned(), v.clone())).collect(),
            tensors: file
                .tensors()
                .iter()
                .map(|t| (t.name.clone(), t.shape.clone(), t.ty, file.tensor_data(t).into_owned()))
                .collect(),
        }
    }

    /// Appends a key (even if present: a file with duplicate keys is invalid, which tests need).
    pub fn metadata(&mut self, key: impl Into<String>, value: MetadataValue) -> &mut Self {
        self.metadata.push((key.into(), value));
        self
    }

    /// Sets a key, replacing its value if present.
    pub fn set_metadata(&mut self, key: &str, value: MetadataValue) -> &mut Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key.to_owned(), value)),
        }
        self
    }

    pub fn remove_metadata(&mut self, key: &str) -> &mut Self {
        self.metadata.retain(|(k, _)| k != key);
        self
    }

    pub fn remove_tensor(&mut self, name: &str) -> &mut Self {
        self.tensors.retain(|(n, ..)| n != name);
        self
    }

    /// Adds a tensor whose `data` is already encoded as `ty`; `shape` is in ggml order
    /// (innermost dimension first).
    pub fn tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[u64],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> &mut Self {
        self.tensors.push((name.into(), shape.to_vec(), ty, data));
        self
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_i64())
            .map_or(DEFAULT_ALIGNMENT, |a| a as u64)
    }

    /// Everything before the tensor data: header, metadata and the table of `tensors`
    /// (name, shape, type, data length), padded to the alignment.
    fn head<'a>(&self, tensors: impl ExactSizeIterator<Item = (&'a str, &'a [u64], GgmlType, u64)>) -> Vec<u8> {
        let alignment = self.alignment();
        let mut out = Vec::new();
        out.extend(GGUF_MAGIC);
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut out, key);
            out.extend((value.value_type() as u32).to_le_bytes());
            write_value(&mut out, value);
        }
        let mut offset = 0u64;
        for (name, shape, ty, len) in tensors {
            write_string(&mut out, name);
            out.extend((shape.len() as u32).to_le_bytes());
            shape.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(ty.id().to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset = align_up(offset + len, alignment);
        }
        out.resize(align_up(out.len() as u64, alignment) as usize, 0);
        out
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let alignment = self.alignment();
        let mut out = self.head(self.tensors.iter().map(|(n, s, t, d)| (n.as_str(), s.as_slice(), *t, d.len() as u64)));
        for (_, _, _, data) in &self.tensors {
            out.extend(data);
            out.resize(align_up(out.len() as u64, alignment) as usize, 0);
        }
        out
    }

    /// Writes the metadata and `tensors` (name, shape, type) without holding their data:
    /// `data(i, out)` writes tensor `i`'s encoded bytes when its turn comes, so files larger
    /// than memory can be written. Tensors added with [`tensor`](Self::tensor) are not
    /// written. Fails if `data` writes a length other than the shape and type call for.
    pub fn write_streaming(
        &self,
        out: &mut impl std::io::Write,
        tensors: &[(String, Vec<u64>, GgmlType)],
        mut data: impl FnMut(usize, &mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let invalid = |message: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, message);
        let lengths = tensors
            .iter()
            .map(|(name, shape, ty)| {
                shape
                    .iter()
                    .try_fold(1u64, |n, &d| n.checked_mul(d))
                    .and_then(|n| ty.bytes_for(n))
                    .ok_or_else(|| invalid(format!("{name}: shape {shape:?} is not whole {} blocks", ty.name())))
            })
            .collect::<std::io::Result<Vec<u64>>>()?;
        let table = tensors.iter().zip(&lengths).map(|((n, s, t), len)| (n.as_str(), s.as_slice(), *t, *len));
        let head = self.head(table);
        out.write_all(&head)?;
        let alignment = self.alignment();
        let mut position = head.len() as u64;
        for (i, len) in lengths.into_iter().enumerate() {
            let mut counted = Counted { inner: &mut *out, written: 0 };
            data(i, &mut counted)?;
            if counted.written != len {
                return Err(invalid(format!("{}: {} bytes written, {len} expected", tensors[i].0, counted.written)));
            }
            let padding = align_up(position + len, alignment) - (position + len);
            out.write_all(&vec![0; padding as usize])?;
            position += len + padding;
        }
        out.flush()
    }

    pub fn write(&self, path: impl AsRef<std::path::Path>) -> std::io::Result<()> {
        std::fs::write(path, self.to_bytes())
    }
}

/// A writer that counts what passes through it.
struct Counted<'a, W: std::io::Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: std::io::Write> std::io::Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &MetadataValue) {
    match value {
        MetadataValue::U8(v) => out.extend(v.to_le_bytes()),
        MetadataValue::I8(v) => out.extend(v.to_le_bytes()),
        MetadataValue::U16(v) => out.extend(v.to_le_bytes()),
        MetadataValue::I16(v) => out.extend(v.to_le_bytes()),
        MetadataValue::U32(v) => out.extend(v.to_le_bytes()),
        MetadataValue::I32(v) => out.extend(v.to_le_bytes()),
        MetadataValue::F32(v) => out.extend(v.to_le_bytes()),
        MetadataValue::U64(v) => out.extend(v.to_le_bytes()),
        MetadataValue::I64(v) => out.extend(v.to_le_bytes()),
        MetadataValue::F64(v) => out.extend(v.to_le_bytes()),
        MetadataValue::Bool(v) => out.push(*v as u8),
        MetadataValue::String(s) => write_string(out, s),
        MetadataValue::Array(ty, items) => {
            out.extend((*ty as u32).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|item| write_value(out, item));
        }
    }
}

impl MetadataValue {
    /// An array of strings.
    pub fn strings<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Self {
        Self::Array(ValueType::String, items.into_iter().map(|s| Self::String(s.into())).collect())
    }

    /// An array of i32.
    pub fn i32s(items: impl IntoIterator<Item = i32>) -> Self {
        Self::Array(ValueType::I32, items.into_iter().map(Self::I32).collect())
    }

    /// An array of f32.
    pub fn f32s(items: impl IntoIterator<Item = f32>) -> Self {
        Self::Array(ValueType::F32, items.into_iter().map(Self::F32).collect())
    }
}
