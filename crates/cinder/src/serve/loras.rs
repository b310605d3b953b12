//! LoRA adapters served beside their base model: `--lora NAME=PATH[:SCALE]` and
//! `[[loras]]` at start-up, the admin routes at run time. A request runs with one by naming
//! it as its `model` (what the inference gateway sends) or as `lora` beside the base
//! model's name; rows of every adapter, and of none, share each batch.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use cinder_model::{LoraAdapter, ModelConfig};
use serde::{Deserialize, Serialize};

/// `[[loras]]`, `--lora`: an adapter served under `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraEntry {
    pub name: String,
    pub path: PathBuf,
    /// Multiplies the adapter's product (after its own `alpha / rank`).
    #[serde(default = "one")]
    pub scale: f32,
    /// The served model it adapts [default: the first].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

fn one() -> f32 {
    1.0
}

/// `--lora NAME=PATH[:SCALE]`.
pub fn parse_lora(value: &str) -> Result<LoraEntry, String> {
    let (name, rest) = value.split_once('=').filter(|(n, p)| !n.is_empty() && !p.is_empty()).ok_or_else(|| format!("`{value}` is not NAME=PATH[:SCALE]"))?;
    let (path, scale) = path_and_scale(rest);
    Ok(LoraEntry { name: name.to_owned(), path, scale, model: None })
}

/// `PATH[:SCALE]` (a path whose last `:` part is not a number is all path; scale 1).
pub fn path_and_scale(value: &str) -> (PathBuf, f32) {
    match value.rsplit_once(':').map(|(p, s)| (p, s.parse::<f32>())) {
        Some((path, Ok(scale))) if scale.is_finite() => (PathBuf::from(path), scale),
        _ => (PathBuf::from(value), 1.0),
    }
}

/// The checks on a served adapter's name and scale, naming the field at fault.
pub fn check_entry(entry: &LoraEntry) -> Result<(), String> {
    if entry.name.trim().is_empty() || entry.name.contains(['"', '\\', '\n', ',']) {
        return Err(format!("the LoRA adapter name {:?} is empty or holds a quote, backslash, comma or line break", entry.name));
    }
    if !entry.scale.is_finite() {
        return Err(format!("LoRA adapter {:?}: the scale must be a finite number; got {}", entry.name, entry.scale));
    }
    Ok(())
}

/// Reads the adapter at `path` for a model of `config`.
pub fn read(path: &Path, config: &ModelConfig) -> anyhow::Result<Arc<LoraAdapter>> {
    let file = cinder_gguf::GgufFile::open(path).with_context(|| format!("opening {}", path.display()))?;
    let adapter = LoraAdapter::from_gguf(&file, config).with_context(|| format!("{}", path.display()))?;
    Ok(Arc::new(adapter))
}

/// An adapter as `/v1/models` and the admin routes show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServedAdapter {
    pub path: PathBuf,
    pub scale: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_flags_name_a_path_and_maybe_a_scale() {
        let entry = parse_lora("sql=/a/b.gguf:0.5").unwrap();
        assert_eq!((entry.name.as_str(), entry.path.as_path(), entry.scale), ("sql", Path::new("/a/b.gguf"), 0.5));
        assert_eq!(parse_lora("x=c:/dir/a.gguf").unwrap().path, Path::new("c:/dir/a.gguf"));
        assert_eq!(parse_lora("x=a.gguf").unwrap().scale, 1.0);
        assert!(parse_lora("a.gguf").unwrap_err().contains("is not NAME=PATH[:SCALE]"));
        assert!(check_entry(&LoraEntry { name: "a,b".into(), ..parse_lora("x=a").unwrap() }).is_err());
    }
}
