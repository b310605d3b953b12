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

#[derive(clap::Args)]
pub struct SynthLoraArgs {
    /// The model the adapter adapts [default: the default model].
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// `adapter.lora.alpha`: the product is scaled by alpha / rank.
    #[arg(long, default_value_t = 16.0)]
    alpha: f32,
    /// Encoding of lora_a and lora_b (q8_0 needs a rank that is a multiple of 32).
    #[arg(long = "type", default_value = "f32", value_parser = ["f32", "f16", "q8_0"])]
    ty: String,
    /// The matrices it adapts, of: q, k, v, qkv, o, gate, up, down [default: all the model has].
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// The same seed writes the same bytes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the GGUF file.
    #[arg(long)]
    out: PathBuf,
}

/// `cinder synth-lora`: a random LoRA adapter for a model file, as llama.cpp reads them.
pub fn run_lora(args: SynthLoraArgs) -> anyhow::Result<()> {
    use cinder_model::arch::LayerWeight;
    let path = args.model.clone().unwrap_or_else(default_model_path);
    let file = cinder_gguf::GgufFile::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let config = cinder_model::ModelConfig::from_gguf(&file)?;
    let all = [
        ("q", LayerWeight::Q),
        ("k", LayerWeight::K),
        ("v", LayerWeight::V),
        ("qkv", LayerWeight::Qkv),
        ("o", LayerWeight::AttnOut),
        ("gate", LayerWeight::Gate),
        ("up", LayerWeight::Up),
        ("down", LayerWeight::Down),
    ];
    let targets = if args.targets.is_empty() {
        cinder_model::lora::ADAPTABLE.to_vec()
    } else {
        (args.targets.iter())
            .map(|t| all.iter().find(|(n, _)| n == t).map(|(_, w)| *w).ok_or_else(|| anyhow::anyhow!("--targets: unknown matrix {t:?} (q, k, v, qkv, o, gate, up, down)")))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let ty = match args.ty.as_str() {
        "f16" => cinder_gguf::GgmlType::F16,
        "q8_0" => cinder_gguf::GgmlType::Q8_0,
        _ => cinder_gguf::GgmlType::F32,
    };
    let writer = cinder_model::lora::synthetic_adapter(&config, &targets, args.rank, args.alpha, ty, args.seed)?;
    writer.write(&args.out).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {} (rank {}, alpha {}, {}, for {})", args.out.display(), args.rank, args.alpha, args.ty, path.display());
    Ok(())
}
