//! `/v1/embeddings`: OpenAI's embeddings body, checked into prompt-only engine requests the
//! same way on the server and in the browser. Its answer is built by
//! [`super::response::embeddings`].

use cinder_model::Pooling;
use cinder_scheduler::Priority;
use cinder_tokenizer::Tokenizer;
use serde::Deserialize;

use super::{InvalidRequest, Prompt, PriorityField, RequestLimits, Submission, invalid, parse_priority};
use crate::GenerationRequest;

/// `encoding_format`: each vector as a list of numbers, or as the base64 text of its
/// little-endian f32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

/// The body of `/v1/embeddings`.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingsBody {
    pub model: Option<String>,
    /// A text, a list of texts, a list of token ids, or a list of token-id lists.
    pub input: Prompt,
    pub encoding_format: Option<EncodingFormat>,
    /// Keep the first this many dimensions, renormalised.
    pub dimensions: Option<u64>,
    /// A label for the end user; the tenant comes from the API key.
    pub user: Option<String>,
    pub priority: Option<PriorityField>,
}

/// A body checked against the limits and the model's width.
#[derive(Debug, Clone)]
pub struct CheckedEmbeddings {
    body: EmbeddingsBody,
    pub encoding_format: EncodingFormat,
    pub dimensions: Option<usize>,
    pub priority: Option<Priority>,
    limits: RequestLimits,
}

impl EmbeddingsBody {
    /// Checks every field, the count of inputs first; `width` is the model's embedding width.
    pub fn check(self, limits: &RequestLimits, width: usize) -> Result<CheckedEmbeddings, InvalidRequest> {
        match self.input.count() {
            0 => return invalid("`input` is empty", "input"),
            count if count > limits.max_embedding_inputs => {
                return invalid(format!("`input` holds {count} inputs; this server takes at most {}", limits.max_embedding_inputs), "input");
            }
            _ => {}
        }
        let dimensions = match self.dimensions {
            None => None,
            Some(d) if (1..=width as u64).contains(&d) => Some(d as usize),
            Some(d) => return invalid(format!("`dimensions` must be in [1, {width}] for this model; got {d}"), "dimensions"),
        };
        let priority = parse_priority(&self.priority)?;
        Ok(CheckedEmbeddings { encoding_format: self.encoding_format.unwrap_or_default(), dimensions, priority, limits: limits.clone(), body: self })
    }
}

impl CheckedEmbeddings {
    pub fn body(&self) -> &EmbeddingsBody {
        &self.body
    }

    /// The inputs as token ids (texts with the model's BOS and EOS as its metadata asks,
    /// control-token text tokenized as text), each at most `max_prompt_tokens` and the context.
    pub fn prompts(&self, tokenizer: &Tokenizer, context_length: usize) -> Result<Vec<Vec<u32>>, InvalidRequest> {
        let most = self.limits.max_prompt_tokens.unwrap_or(context_length).min(context_length);
        let too_long = |tokens: String, index: usize| {
            InvalidRequest::new(format!("input {index} has {tokens} tokens; this server embeds at most {most}"), Some("input"))
        };
        let encode = |(index, text): (usize, &String)| {
            let fewest = tokenizer.fewest_tokens(text.len());
            if fewest > most + 2 {
                return Err(too_long(format!("at least {fewest}"), index));
            }
            tokenizer.encode(text, true, false).map_err(|e| InvalidRequest::new(format!("cannot tokenize input {index}: {e}"), Some("input")))
        };
        let prompts = match &self.body.input {
            Prompt::Text(text) => vec![encode((0, text))?],
            Prompt::Texts(texts) => texts.iter().enumerate().map(encode).collect::<Result<_, _>>()?,
            Prompt::Ids(ids) => vec![ids.clone()],
            Prompt::IdLists(lists) => lists.clone(),
        };
        if let Some(index) = prompts.iter().position(Vec::is_empty) {
            return invalid(format!("input {index} is empty"), "input");
        }
        match prompts.iter().position(|p| p.len() > most) {
            Some(index) => Err(too_long(prompts[index].len().to_string(), index)),
            None => Ok(prompts),
        }
    }

    /// One prompt-only request per input, pooled by `pooling`.
    pub fn requests(&self, prompts: &[Vec<u32>], pooling: Pooling, submission: Submission) -> Vec<GenerationRequest> {
        prompts
            .iter()
            .map(|prompt| GenerationRequest {
                priority: submission.priority,
                max_priority: submission.max_priority,
                tenant: submission.tenant,
                adapter: submission.adapter.map(str::to_owned),
                ..GenerationRequest::embedding(prompt.clone(), pooling)
            })
            .collect()
    }
}

/// An engine's pooled vector as the API gives it: cut to `dimensions`, then unit length
/// (OpenAI's embeddings are normalised, and so are llama.cpp's server's).
pub fn finish_vector(mut vector: Vec<f32>, dimensions: Option<usize>) -> Vec<f32> {
    if let Some(d) = dimensions {
        vector.truncate(d);
    }
    cinder_model::normalize(&mut vector);
    vector
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::parse;

    fn checked(body: &str) -> Result<CheckedEmbeddings, InvalidRequest> {
        parse::<EmbeddingsBody>(body.as_bytes())?.check(&RequestLimits::default(), 8)
    }

    #[test]
    fn inputs_dimensions_and_formats_are_checked() {
        let ok = checked(r#"{"input": ["a", "b"], "encoding_format": "base64", "dimensions": 4, "priority": "low"}"#).unwrap();
        assert_eq!((ok.encoding_format, ok.dimensions, ok.priority), (EncodingFormat::Base64, Some(4), Some(Priority::Low)));
        assert_eq!(checked(r#"{"input": [[1, 2], [3]]}"#).unwrap().encoding_format, EncodingFormat::Float);
        let e = checked(r#"{"input": "a", "dimensions": 9}"#).unwrap_err();
        assert_eq!((e.message.as_str(), e.param.as_deref()), ("`dimensions` must be in [1, 8] for this model; got 9", Some("dimensions")));
        assert_eq!(checked(r#"{"input": []}"#).unwrap_err().message, "`input` is empty");
        assert_eq!(checked(r#"{"input": "a", "encoding_format": "int8"}"#).unwrap_err().param.as_deref(), Some("encoding_format"));
        assert_eq!(checked(r#"{"input": "a", "pooling": "mean"}"#).unwrap_err().message, "`pooling`: cinder does not implement this field");
        assert!(checked(r#"{"model": "m"}"#).unwrap_err().message.contains("input"));
        let many = format!(r#"{{"input": [{}]}}"#, vec!["\"x\""; RequestLimits::default().max_embedding_inputs + 1].join(","));
        assert!(checked(&many).unwrap_err().message.starts_with("`input` holds"));
    }

    #[test]
    fn vectors_are_cut_then_made_unit_length() {
        assert_eq!(finish_vector(vec![3.0, 4.0, 12.0], Some(2)), vec![0.6, 0.8]);
        let whole = finish_vector(vec![3.0, 4.0, 12.0], None);
        assert!((whole.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
