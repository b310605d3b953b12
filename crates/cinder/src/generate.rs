//! `cinder generate`.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use cinder_engine::openai::response::{SpeculativeStats, Usage};
use cinder_engine::{Engine, GenerationRequest, Speculation};
use cinder_model::{Model, SamplingParams};
use cinder_scheduler::FinishReason;
use cinder_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use clap::ArgGroup;
use serde::Serialize;

use crate::model_path::ModelArg;

#[derive(clap::Args)]
#[command(group(ArgGroup::new("input").required(true).args(["prompt", "chat", "prompt_ids"])))]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    device: crate::device_arg::DeviceArg,
    #[command(flatten)]
    kv_type: crate::kv_arg::KvTypeArg,
    /// Raw prompt text (control-token text such as <|im_start|> is parsed as those tokens).
    #[arg(long, allow_hyphen_values = true)]
    prompt: Option<String>,
    /// A user message, wrapped in the model's chat template.
    #[arg(long, allow_hyphen_values = true)]
    chat: Option<String>,
    /// Prompt token ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy decoding.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.0)]
    temperature: f32,
    /// Sample from the K most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling: the smallest set of tokens with this much probability.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.0)]
    min_p: f32,
    /// Penalty for tokens among the last 64 (1: off).
    #[arg(long, allow_negative_numbers = true, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Random seed; the same seed gives the same output.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// End generation at this text (not part of the output); repeatable.
    #[arg(long, allow_hyphen_values = true)]
    stop: Vec<String>,
    /// Speculative decoding: `off`, `ngram[:K]` (prompt lookup, up to K draft tokens per
    /// step) or `draft[:K]` (proposed by --draft-model).
    #[arg(long, default_value = "off")]
    speculative: Speculation,
    /// The draft model of `--speculative draft`: a GGUF with the same vocabulary.
    #[arg(long)]
    draft_model: Option<std::path::PathBuf>,
    /// Run with this LoRA adapter (a GGUF adapter as llama.cpp writes them), its product
    /// scaled by SCALE [default: 1].
    #[arg(long, value_name = "PATH[:SCALE]", value_parser = |v: &str| Ok::<_, String>(crate::serve::loras::path_and_scale(v)))]
    lora: Option<(std::path::PathBuf, f32)>,
    /// After the text, print a JSON object with the ids and text on the last line.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    prompt_ids: &'a [u32],
    ids: &'a [u32],
    text: &'a str,
    finish_reason: &'a str,
    prompt_tokens_per_s: f64,
    decode_tokens_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    speculative: Option<SpeculativeStats>,
}

fn prompt_ids(args: &GenerateArgs, file: &cinder_gguf::GgufFile, tokenizer: &Tokenizer) -> anyhow::Result<Vec<u32>> {
    if let Some(ids) = &args.prompt_ids {
        for &id in ids {
            tokenizer.check_id(id)?;
        }
        return Ok(ids.clone());
    }
    if let Some(text) = &args.prompt {
        return Ok(tokenizer.encode(text, true, true)?);
    }
    let message = args.chat.as_deref().expect("clap requires one input");
    Ok(ChatTemplate::from_gguf(file.metadata(), tokenizer)?.encode(tokenizer, &[ChatMessage::new("user", message)], true)?)
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        ..SamplingParams::default()
    };
    sampling.check()?;
    let path = args.model.path();
    let file = args.model.open()?;
    let tokenizer = Tokenizer::from_gguf(file.metadata())?;
    let prompt_ids = prompt_ids(&args, &file, &tokenizer)?;

    let device = args.device.open()?;
    let load_start = Instant::now();
    let mut model = Model::load(&file, &device).with_context(|| format!("loading {}", path.display()))?;
    eprintln!("model: {} loaded in {:.2} s", path.display(), load_start.elapsed().as_secs_f64());
    args.kv_type.apply(&mut model)?;

    let context = model.config().context_length;
    let needed = prompt_ids.len().saturating_add(args.max_tokens);
    if needed > context {
        anyhow::bail!(cinder_model::ModelError::ContextOverflow { prompt: prompt_ids.len(), max_tokens: args.max_tokens, context });
    }
    let config = Engine::fixed_config(model.config(), needed, 1);
    let mut engine = Engine::new(model, tokenizer, config)?;
    if let Some(path) = &args.draft_model {
        crate::model_path::set_draft(&mut engine, path, crate::model_path::load_draft(path, &device)?)?;
    }
    let adapter = match &args.lora {
        Some((path, scale)) => {
            let adapter = crate::serve::loras::read(path, engine.model().config()).context("--lora")?;
            engine.set_max_loras(1).map_err(|e| anyhow::anyhow!("{e}"))?;
            engine.load_adapter("lora", adapter, *scale).map_err(|e| anyhow::anyhow!("--lora: {e}"))?;
            Some("lora".to_owned())
        }
        None => None,
    };
    let request = GenerationRequest {
        adapter,
        sampling,
        stop: args.stop.clone(),
        ignore_eos: args.ignore_eos,
        speculative: Some(args.speculative),
        ..GenerationRequest::new(prompt_ids.clone(), args.max_tokens)
    };
    let clock = crate::wall_clock();
    let mut stdout = std::io::stdout().lock();
    let generation = engine.generate(request, &clock, |piece| {
        // A closed pipe (e.g. `| head`) is not worth failing the generation over.
        let _ = stdout.write_all(piece.as_bytes()).and_then(|()| stdout.flush());
    })?;
    let finish_reason = match generation.finished.reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        _ => anyhow::bail!("generation failed: {}", generation.finished.error.as_deref().unwrap_or("unknown error")),
    };
    eprintln!(
        "\nprompt: {} tokens, {:.2} tok/s; generated: {} tokens, {:.2} tok/s; finish: {finish_reason}",
        prompt_ids.len(),
        generation.prompt_tokens_per_s(),
        generation.tokens.len(),
        generation.decode_tokens_per_s(),
    );
    let mut usage = Usage::default();
    usage.add(&generation.finished, true);
    if let Some(s) = usage.speculative {
        eprintln!(
            "speculative: {} draft tokens, {} accepted ({:.0} %)",
            s.draft_tokens,
            s.accepted_tokens,
            100.0 * s.acceptance_rate
        );
    }
    if args.json {
        let json = JsonOutput {
            prompt_ids: &prompt_ids,
            ids: &generation.tokens,
            text: &generation.text,
            finish_reason,
            prompt_tokens_per_s: generation.prompt_tokens_per_s(),
            decode_tokens_per_s: generation.decode_tokens_per_s(),
            speculative: usage.speculative,
        };
        writeln!(stdout)?;
        writeln!(stdout, "{}", serde_json::to_string(&json)?)?;
    }
    Ok(())
}
