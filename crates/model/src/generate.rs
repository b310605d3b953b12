//! Single-sequence generation: prefill the prompt, then decode token by token, streaming
//! text as it becomes complete.

use std::time::{Duration, Instant};

use cinder_tokenizer::{StreamDecoder, Tokenizer};

use crate::{Llama, ModelError, Sampler, SamplingParams};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateRequest<'a> {
    pub prompt_ids: &'a [u32],
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Keep going past end-of-generation tokens until `max_tokens`.
    pub ignore_eos: bool,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token was produced.
    Stop,
    /// `max_tokens` were generated.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// Time spent in each phase.
#[derive(Debug, Clone, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub prompt_time: Duration,
    /// Tokens produced by decode steps (the first token comes from the prompt pass).
    pub decode_steps: usize,
    pub decode_time: Duration,
}

impl GenerationStats {
    pub fn prompt_tokens_per_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_time)
    }

    pub fn decode_tokens_per_s(&self) -> f64 {
        rate(self.decode_steps, self.decode_time)
    }
}

fn rate(count: usize, time: Duration) -> f64 {
    if time.is_zero() { 0.0 } else { count as f64 / time.as_secs_f64() }
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids, including the end-of-generation token if one ended it.
    pub ids: Vec<u32>,
    /// Generated text, control tokens left out.
    pub text: String,
    pub finish_reason: FinishReason,
    pub stats: GenerationStats,
}

/// Runs `request` to completion, calling `on_text` with each piece of text as soon as it is
/// complete UTF-8.
pub fn generate(
    model: &Llama,
    tokenizer: &Tokenizer,
    request: &GenerateRequest<'_>,
    mut on_text: impl FnMut(&str),
) -> Result<Generation, ModelError> {
    let prompt = request.prompt_ids;
    if prompt.is_empty() {
        return Err(ModelError::InvalidParameter("the prompt is empty".into()));
    }
    let context = model.config().context_length;
    let needed = prompt.len() + request.max_tokens;
    if needed > context {
        return Err(ModelError::ContextOverflow { prompt: prompt.len(), max_tokens: request.max_tokens, context });
    }
    let mut sampler = Sampler::new(request.sampling.clone())?;
    let mut cache = model.new_cache(needed)?;
    // Prompt and generated tokens: the repetition penalty looks at both.
    let mut history = prompt.to_vec();
    let mut text = String::new();
    let mut decoder = StreamDecoder::new();
    let mut stats = GenerationStats { prompt_tokens: prompt.len(), ..Default::default() };
    let mut emit = |piece: String, text: &mut String| {
        if !piece.is_empty() {
            on_text(&piece);
            text.push_str(&piece);
        }
    };

    let mut finish_reason = FinishReason::Length;
    for step in 0..request.max_tokens {
        let start = Instant::now();
        // The first pass reads the whole prompt (and checks its ids); every later one the
        // last token only.
        let input = if step == 0 { prompt } else { &history[history.len() - 1..] };
        let logits = model.forward(input, &mut cache)?;
        let token = sampler.sample(&logits, &history);
        if step == 0 {
            stats.prompt_time = start.elapsed();
        } else {
            stats.decode_time += start.elapsed();
            stats.decode_steps += 1;
        }
        history.push(token);
        if !request.ignore_eos && tokenizer.is_end_of_generation(token) {
            finish_reason = FinishReason::Stop;
            break;
        }
        emit(decoder.push(tokenizer, token, false), &mut text);
    }
    emit(decoder.finish(), &mut text);
    let ids = history.split_off(prompt.len());
    Ok(Generation { ids, text, finish_reason, stats })
}
