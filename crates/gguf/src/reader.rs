//! Parsing and validating a GGUF file held in memory, memory-mapped, or read by ranges from
//! a [`ByteSource`].

use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::{Deref, Range};
use std::path::Path;
use std::sync::Arc;

use crate::metadata::{Metadata, MetadataValue, ValueType};
use crate::{DEFAULT_ALIGNMENT, GGUF_MAGIC, GgmlType, GgufError};

/// Arrays may contain arrays; deeper nesting than this is treated as a malicious file rather
/// than recursed into.
const MAX_ARRAY_NESTING: usize = 8;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;

/// Description of one tensor: where its data lies and how to read it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `shape[0]` is the innermost (contiguous) one, so a matrix
    /// with `rows` rows of `cols` values has shape `[cols, rows]`.
    pub shape: Vec<u64>,
    pub ty: GgmlType,
    /// Byte offset of the data from the start of the data section.
    pub offset: u64,
    /// Number of values.
    pub elements: u64,
    /// Number of bytes of data.
    pub bytes: u64,
}

impl TensorInfo {
    /// Values in one row (the innermost dimension).
    pub fn row_len(&self) -> u64 {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Number of rows (the product of the outer dimensions).
    pub fn rows(&self) -> u64 {
        self.shape.iter().skip(1).product()
    }

    /// Rows `rows` as f32, dequantized from `data`, this tensor's bytes (as
    /// [`GgufFile::tensor_data`] returns them, or a copy).
    pub fn dequantize_rows(&self, data: &[u8], rows: impl IntoIterator<Item = u64>) -> Result<Vec<f32>, GgufError> {
        let row_bytes = self.ty.bytes_for(self.row_len()).expect("validated at parse") as usize;
        let mut out = Vec::new();
        for row in rows {
            let start = row as usize * row_bytes;
            let bytes = data.get(start..start + row_bytes).filter(|_| row < self.rows()).ok_or_else(|| {
                GgufError::BadShape {
                    tensor: self.name.clone(),
                    shape: self.shape.clone(),
                    reason: format!("row {row} requested of {}", self.rows()),
                }
            })?;
            out.extend(crate::dequantize(self.ty, bytes)?);
        }
        Ok(out)
    }
}

/// A file's bytes read by ranges, for a file that is neither mapped nor in memory (a web
/// page's copy, outside WebAssembly memory): a tensor's bytes are read when it is asked for
/// and not kept.
pub trait ByteSource: Send + Sync {
    fn len(&self) -> u64;
    /// The bytes of `range`, which lies within `0..len()`.
    fn read(&self, range: Range<u64>) -> Vec<u8>;
}

enum Bytes {
    Mapped(Arc<memmap2::Mmap>),
    Owned(Arc<Vec<u8>>),
    Source(Box<dyn ByteSource>),
}

impl Bytes {
    fn range(&self, range: Range<u64>) -> Cow<'_, [u8]> {
        match self {
            Bytes::Mapped(m) => Cow::Borrowed(&m[range.start as usize..range.end as usize]),
            Bytes::Owned(v) => Cow::Borrowed(&v[range.start as usize..range.end as usize]),
            Bytes::Source(source) => Cow::Owned(source.read(range)),
        }
    }

    fn shared(&self, range: Range<u64>) -> SharedBytes {
        let in_memory = range.start as usize..range.end as usize;
        match self {
            Bytes::Mapped(m) => SharedBytes { owner: m.clone(), range: in_memory },
            Bytes::Owned(v) => SharedBytes { owner: v.clone(), range: in_memory },
            Bytes::Source(source) => source.read(range).into(),
        }
    }
}

/// Bytes kept beyond the file's parsing, shared with the file where it is mapped or in
/// memory instead of copied (a mapped file's pages stay the page cache's, as llama.cpp's
/// do), or a copy read from a [`ByteSource`].
#[derive(Clone)]
pub struct SharedBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: Range<usize>,
}

impl Deref for SharedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.range.clone()]
    }
}

impl From<Vec<u8>> for SharedBytes {
    fn from(bytes: Vec<u8>) -> Self {
        let range = 0..bytes.len();
        Self { owner: Arc::new(bytes), range }
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.range.len())
    }
}

/// What parsing a file's header finds.
struct Header {
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_start: u64,
}

/// A parsed and validated GGUF file; tensor data is read from it on demand.
pub struct GgufFile {
    bytes: Bytes,
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_start: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_start", &self.data_start)
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io_error = |source| GgufError::Io { path: path.display().to_string(), source };
        let file = std::fs::File::open(path).map_err(io_error)?;
        // SAFETY: the map is read-only; cinder never writes model files while serving them,
        // and a file truncated underneath us is the same hazard every mmap-based loader has.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error)?;
        let header = parse(&map, map.len() as u64)?;
        Ok(Self::with(Bytes::Mapped(Arc::new(map)), header))
    }

    /// Parses a file already in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        let header = parse(&bytes, bytes.len() as u64)?;
        Ok(Self::with(Bytes::Owned(Arc::new(bytes)), header))
    }

    /// Parses the file `source` reads. Only the header is read now (in growing prefixes
    /// until it is whole); tensors are read when asked for.
    pub fn from_source(source: Box<dyn ByteSource>) -> Result<Self, GgufError> {
        let file_len = source.len();
        let mut prefix = file_len.min(1 << 20);
        loop {
            match parse(&source.read(0..prefix), file_len) {
                Ok(header) => return Ok(Self::with(Bytes::Source(source), header)),
                // The header goes on past this prefix: read more of it.
                Err(GgufError::Truncated { .. }) if prefix < file_len => prefix = file_len.min(prefix * 4),
                Err(e) => return Err(e),
            }
        }
    }

    fn with(bytes: Bytes, header: Header) -> Self {
        let Header { version, metadata, tensors, alignment, data_start } = header;
        Self { bytes, version, metadata, tensors, alignment, data_start }
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section in the file.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| GgufError::TensorNotFound(name.to_owned()))
    }

    /// The raw bytes of a tensor, in its GGUF block format: borrowed from a file in memory,
    /// read from a [`ByteSource`].
    pub fn tensor_data(&self, info: &TensorInfo) -> Cow<'_, [u8]> {
        self.tensor_bytes(info, 0..info.bytes)
    }

    /// Bytes `range` of a tensor's data.
    pub fn tensor_bytes(&self, info: &TensorInfo, range: Range<u64>) -> Cow<'_, [u8]> {
        self.bytes.range(self.in_file(info, range))
    }

    /// Bytes `range` of a tensor's data to keep: shared with a mapped or in-memory file, which
    /// stays in memory as long as they do; read from a [`ByteSource`].
    pub fn tensor_shared(&self, info: &TensorInfo, range: Range<u64>) -> SharedBytes {
        self.bytes.shared(self.in_file(info, range))
    }

    fn in_file(&self, info: &TensorInfo, range: Range<u64>) -> Range<u64> {
        // The tensor's bounds were checked when the file was parsed.
        assert!(range.start <= range.end && range.end <= info.bytes, "bytes {range:?} of a {}-byte tensor", info.bytes);
        let start = self.data_start + info.offset;
        start + range.start..start + range.end
    }

    /// A tensor's values as f32, dequantized if needed.
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        crate::dequantize(info.ty, &self.tensor_data(info)).map_err(|e| match e {
            GgufError::UnsupportedType { ty, .. } => {
                GgufError::UnsupportedType { tensor: info.name.clone(), ty }
            }
            other => other,
        })
    }

    /// Rows `rows` of a 2-D tensor as f32, dequantizing only those rows.
    pub fn dequantize_rows(
        &self,
        info: &TensorInfo,
        rows: impl IntoIterator<Item = u64>,
    ) -> Result<Vec<f32>, GgufError> {
        info.dequantize_rows(&self.tensor_data(info), rows)
    }
}

/// Parses and validates the header in `bytes`, the first bytes of a file of `file_len`
/// bytes (all of them, or a prefix that must hold the whole header).
fn parse(bytes: &[u8], file_len: u64) -> Result<Header, GgufError> {
    let mut cursor = Cursor { bytes, pos: 0, file_len };
    let magic: [u8; 4] = cursor.take(4, "magic")?.try_into().expect("4 bytes");
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = cursor.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let tensor_count = cursor.u64("tensor count")?;
    let kv_count = cursor.u64("metadata count")?;
    // Every key/value takes at least 12 bytes and every tensor info at least 24: counts
    // beyond what the file could hold are refused before anything is allocated.
    cursor.check_count(kv_count, 12, "metadata entries")?;
    cursor.check_count(tensor_count, 24, "tensors")?;

    let mut metadata = Metadata::default();
    for _ in 0..kv_count {
        let key = cursor.string("metadata key")?;
        let type_id = cursor.u32("metadata value type")?;
        let ty = ValueType::from_id(type_id)
            .ok_or_else(|| GgufError::UnknownValueType { key: key.clone(), type_id })?;
        let value = cursor.value(&key, ty, 0)?;
        metadata.insert(key, value)?;
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => {
            let a = v.as_i64().and_then(|a| u64::try_from(a).ok()).unwrap_or(0);
            if a == 0 || !a.is_power_of_two() {
                return Err(GgufError::BadAlignment(a));
            }
            a
        }
    };

    let mut tensors = Vec::with_capacity(tensor_count as usize);
    let mut names = HashSet::new();
    for _ in 0..tensor_count {
        let info = cursor.tensor_info(alignment)?;
        if !names.insert(info.name.clone()) {
            return Err(GgufError::DuplicateTensor(info.name));
        }
        tensors.push(info);
    }

    let data_start = align_up(cursor.pos as u64, alignment);
    for t in &tensors {
        let start = data_start.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.bytes));
        match (start, end) {
            (Some(_), Some(end)) if end <= file_len => {}
            _ => {
                return Err(GgufError::TensorOutOfBounds {
                    tensor: t.name.clone(),
                    start: data_start.saturating_add(t.offset),
                    end: data_start.saturating_add(t.offset).saturating_add(t.bytes),
                    file_len,
                });
            }
        }
    }
    check_no_overlap(&tensors)?;

    Ok(Header { version, metadata, tensors, alignment, data_start })
}

fn check_no_overlap(tensors: &[TensorInfo]) -> Result<(), GgufError> {
    let mut spans: Vec<_> = tensors.iter().filter(|t| t.bytes > 0).collect();
    spans.sort_by_key(|t| t.offset);
    for pair in spans.windows(2) {
        if pair[0].offset + pair[0].bytes > pair[1].offset {
            return Err(GgufError::OverlappingTensors {
                first: pair[0].name.clone(),
                second: pair[1].name.clone(),
            });
        }
    }
    Ok(())
}

pub(crate) fn align_up(value: u64, alignment: u64) -> u64 {
    value.div_ceil(alignment) * alignment
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// The whole file's length (`bytes` may be a prefix of it).
    file_len: u64,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what.to_owned(),
                offset: self.pos as u64,
                len: self.bytes.len() as u64,
            });
        }
        let slice = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        Ok(self.take(N as u64, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn check_count(&self, count: u64, min_bytes_each: u64, what: &str) -> Result<(), GgufError> {
        if count.saturating_mul(min_bytes_each) > self.file_len.saturating_sub(self.pos as u64) {
            return Err(GgufError::ImplausibleCount { what: what.to_owned(), count });
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let start = self.pos as u64;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| GgufError::InvalidUtf8 { what: what.to_owned(), offset: start })
    }

    fn value(&mut self, key: &str, ty: ValueType, depth: usize) -> Result<MetadataValue, GgufError> {
        let what = || format!("value of {key:?}");
        Ok(match ty {
            ValueType::U8 => MetadataValue::U8(u8::from_le_bytes(self.array(&what())?)),
            ValueType::I8 => MetadataValue::I8(i8::from_le_bytes(self.array(&what())?)),
            ValueType::U16 => MetadataValue::U16(u16::from_le_bytes(self.array(&what())?)),
            ValueType::I16 => MetadataValue::I16(i16::from_le_bytes(self.array(&what())?)),
            ValueType::U32 => MetadataValue::U32(u32::from_le_bytes(self.array(&what())?)),
            ValueType::I32 => MetadataValue::I32(i32::from_le_bytes(self.array(&what())?)),
            ValueType::F32 => MetadataValue::F32(f32::from_le_bytes(self.array(&what())?)),
            ValueType::U64 => MetadataValue::U64(u64::from_le_bytes(self.array(&what())?)),
            ValueType::I64 => MetadataValue::I64(i64::from_le_bytes(self.array(&what())?)),
            ValueType::F64 => MetadataValue::F64(f64::from_le_bytes(self.array(&what())?)),
            ValueType::Bool => {
                let [b] = self.array(&what())?;
                MetadataValue::Bool(b != 0)
            }
            ValueType::String => MetadataValue::String(self.string(&what())?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(GgufError::NestingTooDeep {
                        key: key.to_owned(),
                        max: MAX_ARRAY_NESTING,
                    });
                }
                let type_id = self.u32(&what())?;
                let elem = ValueType::from_id(type_id)
                    .ok_or_else(|| GgufError::UnknownValueType { key: key.to_owned(), type_id })?;
                let len = self.u64(&what())?;
                self.check_count(len, 1, &what())?;
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(key, elem, depth + 1)?);
                }
                MetadataValue::Array(elem, items)
            }
        })
    }

    fn tensor_info(&mut self, alignment: u64) -> Result<TensorInfo, GgufError> {
        let name = self.string("tensor name")?;
        let n_dims = self.u32("tensor dimension count")?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims { tensor: name, n_dims });
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            shape.push(self.u64("tensor dimension")?);
        }
        let type_id = self.u32("tensor type")?;
        let ty = GgmlType::from_id(type_id)
            .ok_or_else(|| GgufError::UnknownTensorType { tensor: name.clone(), type_id })?;
        let offset = self.u64("tensor offset")?;

        let elements = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| GgufError::SizeOverflow { tensor: name.clone(), shape: shape.clone() })?;
        let row_len = shape.first().copied().unwrap_or(1);
        if row_len % ty.block_elements() as u64 != 0 {
            return Err(GgufError::BadShape {
                reason: format!(
                    "rows of {row_len} values are not a whole number of {ty} blocks of {}",
                    ty.block_elements()
                ),
                tensor: name,
                shape,
            });
        }
        let bytes = ty
            .bytes_for(elements)
            .ok_or_else(|| GgufError::SizeOverflow { tensor: name.clone(), shape: shape.clone() })?;
        if offset % alignment != 0 {
            return Err(GgufError::MisalignedTensor { tensor: name, offset, alignment });
        }
        Ok(TensorInfo { name, shape, ty, offset, elements, bytes })
    }
}
