//! `cinder synth`: a random-weight GGUF with the shapes and metadata of a known model.

use std::io::BufWriter;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use cinder_model::synthetic::{SYNTH_TYPES, SyntheticModel, catalog};

use crate::model_path::default_model_path;

#[derive(clap::Args)]
pub struct SynthArgs {
    /// The model whose shapes to copy.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(catalog().into_iter().map(|m| m.name)))]
    like: String,
    /// Encoding of the weight matrices (norms and biases stay F32).
    #[arg(long = "type", value_parser = clap::builder::PossibleValuesParser::new(SYNTH_TYPES.iter().map(|(n, _)| *n)))]
    ty: String,
    /// Where to write the GGUF file.
    #[arg(long)]
    out: PathBuf,
    /// The same seed writes the same bytes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Take the vocabulary from this GGUF when its size matches [default: the default
    /// model, for smollm2 shapes]; otherwise one is generated.
    #[arg(long)]
    vocabulary_from: Option<PathBuf>,
}

pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let model = SyntheticModel::named(&args.like).expect("clap checked the name");
    let ty = SYNTH_TYPES.iter().find(|(n, _)| *n == args.ty).expect("clap checked the type").1;
    let vocabulary_file = args.vocabulary_from.clone().or_else(|| Some(default_model_path()).filter(|p| p.exists()));
    let vocabulary = match vocabulary_file {
        Some(path) => Some(cinder_gguf::GgufFile::open(&path).with_context(|| format!("--vocabulary-from {}", path.display()))?),
        None => None,
    };
    let start = Instant::now();
    let file = std::fs::File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    model
        .write(ty, args.seed, vocabulary.as_ref().map(|f| f.metadata()), &mut out)
        .and_then(|()| out.into_inner().map_err(|e| e.into_error()).and_then(|f| f.sync_all()))
        .with_context(|| format!("writing {}", args.out.display()))?;
    let bytes = std::fs::metadata(&args.out)?.len();
    eprintln!(
        "wrote {} ({} like {}, {:.1} MiB) in {:.1} s",
        args.out.display(),
        args.ty,
        model.name,
        bytes as f64 / (1 << 20) as f64,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
