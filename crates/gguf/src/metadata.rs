//! Typed GGUF metadata values and the key/value map with checked accessors.

use std::collections::HashMap;
use std::fmt;

use crate::GgufError;

/// The value types GGUF defines, with their on-disk ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }
}

/// One metadata value. Arrays hold values of one type and may nest.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Element type and elements (the type is kept so empty arrays round-trip).
    Array(ValueType, Vec<MetadataValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetadataValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::F32(_) => ValueType::F32,
            Self::Bool(_) => ValueType::Bool,
            Self::String(_) => ValueType::String,
            Self::Array(..) => ValueType::Array,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F64(_) => ValueType::F64,
        }
    }

    /// The value as a signed integer, for any integer type that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::I8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::U64(v) => i64::try_from(v).ok(),
            Self::I64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a float, for float types.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetadataValue]> {
        match self {
            Self::Array(_, items) => Some(items),
            _ => None,
        }
    }

    fn type_name(&self) -> String {
        match self {
            Self::Array(ty, _) => format!("array of {ty:?}"),
            other => format!("{:?}", other.value_type()),
        }
    }
}

impl fmt::Display for MetadataValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(s) => write!(f, "{s:?}"),
            Self::Array(_, items) => write!(f, "[{} items]", items.len()),
            Self::Bool(b) => write!(f, "{b}"),
            other => match (other.as_i64(), other.as_f64()) {
                (Some(i), _) => write!(f, "{i}"),
                (_, Some(x)) => write!(f, "{x}"),
                _ => write!(f, "{other:?}"),
            },
        }
    }
}

/// The metadata of a GGUF file, in file order, with accessors that turn a missing key or a
/// wrong type into a [`GgufError`] naming the key.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    entries: Vec<(String, MetadataValue)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// Adds a key; a key may appear only once.
    pub fn insert(&mut self, key: String, value: MetadataValue) -> Result<(), GgufError> {
        if self.index.contains_key(&key) {
            return Err(GgufError::DuplicateKey(key));
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetadataValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn require(&self, key: &str) -> Result<&MetadataValue, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey(key.to_owned()))
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        convert: impl FnOnce(&'a MetadataValue) -> Option<T>,
    ) -> Result<T, GgufError> {
        let value = self.require(key)?;
        convert(value).ok_or_else(|| GgufError::WrongType {
            key: key.to_owned(),
            expected: expected.to_owned(),
            found: value.type_name(),
        })
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.typed(key, "string", MetadataValue::as_str)
    }

    /// A non-negative integer of any integer type.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        if let Some(&MetadataValue::U64(value)) = self.get(key) {
            return Ok(value);
        }
        let value = self.typed(key, "integer", MetadataValue::as_i64)?;
        u64::try_from(value).map_err(|_| GgufError::OutOfRange {
            key: key.to_owned(),
            value: value.to_string(),
            reason: "must not be negative".into(),
        })
    }

    /// A non-negative integer that fits in `usize` and is at most `max`.
    pub fn get_usize_at_most(&self, key: &str, max: u64) -> Result<usize, GgufError> {
        let value = self.get_u64(key)?;
        if value > max {
            return Err(GgufError::OutOfRange {
                key: key.to_owned(),
                value: value.to_string(),
                reason: format!("must be at most {max}"),
            });
        }
        usize::try_from(value).map_err(|_| GgufError::OutOfRange {
            key: key.to_owned(),
            value: value.to_string(),
            reason: "does not fit in memory".into(),
        })
    }

    /// A float (f32 or f64).
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        self.typed(key, "float", MetadataValue::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        self.typed(key, "bool", MetadataValue::as_bool)
    }

    pub fn get_array(&self, key: &str) -> Result<&[MetadataValue], GgufError> {
        self.typed(key, "array", MetadataValue::as_array)
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        self.typed(key, "array of strings", |v| {
            v.as_array()?.iter().map(MetadataValue::as_str).collect()
        })
    }

    /// An array of integers, each fitting in `i64`.
    pub fn get_int_array(&self, key: &str) -> Result<Vec<i64>, GgufError> {
        self.typed(key, "array of integers", |v| {
            v.as_array()?.iter().map(MetadataValue::as_i64).collect()
        })
    }

    /// A value that is optional in the format: `Ok(None)` when missing, an error when present
    /// with the wrong type.
    pub fn optional<'a, T>(
        &'a self,
        key: &str,
        get: impl FnOnce(&'a Self, &str) -> Result<T, GgufError>,
    ) -> Result<Option<T>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => get(self, key).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Metadata {
        let mut m = Metadata::default();
        m.insert("a.count".into(), MetadataValue::U32(30)).unwrap();
        m.insert("a.neg".into(), MetadataValue::I32(-1)).unwrap();
        m.insert("a.name".into(), MetadataValue::String("llama".into())).unwrap();
        m.insert("a.eps".into(), MetadataValue::F32(1e-5)).unwrap();
        m
    }

    #[test]
    fn accessors_convert_and_name_the_key_on_errors() {
        let m = sample();
        assert_eq!(m.get_u64("a.count").unwrap(), 30);
        assert_eq!(m.get_str("a.name").unwrap(), "llama");
        assert!((m.get_f64("a.eps").unwrap() - 1e-5).abs() < 1e-9);
        let missing = m.get_u64("a.missing").unwrap_err().to_string();
        assert!(missing.contains("a.missing") && missing.contains("missing"), "{missing}");
        let wrong = m.get_u64("a.name").unwrap_err().to_string();
        assert!(wrong.contains("a.name") && wrong.contains("integer"), "{wrong}");
        let negative = m.get_u64("a.neg").unwrap_err().to_string();
        assert!(negative.contains("negative"), "{negative}");
        let big = m.get_usize_at_most("a.count", 10).unwrap_err().to_string();
        assert!(big.contains("at most 10"), "{big}");
        assert_eq!(m.optional("a.none", Metadata::get_u64).unwrap(), None);
        assert!(m.optional("a.name", Metadata::get_u64).is_err());
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let mut m = sample();
        let err = m.insert("a.count".into(), MetadataValue::U8(1)).unwrap_err();
        assert!(matches!(err, GgufError::DuplicateKey(k) if k == "a.count"));
    }
}
