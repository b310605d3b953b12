//! Where the model comes from when `--model` is not given, and the draft model of
//! speculative decoding.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cinder_engine::Engine;
use cinder_model::Model;
use cinder_tokenizer::Tokenizer;

/// File name of the default model that `scripts/setup.sh` installs.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The default model path: `$CINDER_HOME/models/…`, `$CINDER_HOME` defaulting to
/// `~/.cache/cinder` (where setup puts it).
pub fn default_model_path() -> PathBuf {
    let home = std::env::var_os("CINDER_HOME").map(PathBuf::from).unwrap_or_else(|| {
        let user_home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        user_home.join(".cache").join("cinder")
    });
    home.join("models").join(DEFAULT_MODEL_FILE)
}

/// `--model`, shared by every subcommand that loads one.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArg {
    /// GGUF model file [default: $CINDER_MODEL, else the model installed by scripts/setup.sh]
    #[arg(long, env = "CINDER_MODEL")]
    pub model: Option<PathBuf>,
}

impl ModelArg {
    pub fn path(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(default_model_path)
    }

    /// Opens the GGUF file, explaining how to get the default model when it is missing.
    pub fn open(&self) -> anyhow::Result<cinder_gguf::GgufFile> {
        let path = self.path();
        if self.model.is_none() && !path.exists() {
            anyhow::bail!(
                "no model at {} (run scripts/setup.sh to fetch the default model, or pass --model)",
                path.display()
            );
        }
        Ok(cinder_gguf::GgufFile::open(&path)?)
    }
}

/// Gives `engine` the draft model loaded from `path` ([`load_draft`]), or says why it
/// cannot take it.
pub fn set_draft(engine: &mut Engine, path: &Path, (model, tokenizer): (Model, Tokenizer)) -> anyhow::Result<()> {
    engine.set_draft_model(model, &tokenizer).map_err(|e| anyhow::anyhow!("--draft-model {}: {e}", path.display()))
}

/// Loads the draft model at `path` (`--draft-model`) and its tokenizer.
pub fn load_draft(path: &Path, backend: &cinder_model::Backend) -> anyhow::Result<(Model, Tokenizer)> {
    let context = || format!("--draft-model {}", path.display());
    let file = cinder_gguf::GgufFile::open(path).with_context(context)?;
    let tokenizer = Tokenizer::from_gguf(file.metadata()).with_context(context)?;
    let model = Model::load(&file, backend).with_context(context)?;
    Ok((model, tokenizer))
}
