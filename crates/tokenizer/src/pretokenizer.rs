//! The pre-tokenizers llama.cpp knows by the name in `tokenizer.ggml.pre`, expressed as the
//! same list of regular expressions it applies one after another. Each regex splits every
//! piece into its matches and the text between them.

use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::SplitDelimiterBehavior;

use crate::TokenizerError;

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a named pre-tokenizer behaves.
pub(crate) struct PreTokenizerSpec {
    pub regexes: &'static [&'static str],
    /// BPE keeps whole words that are already in the vocabulary (llama 3 does).
    pub ignore_merges: bool,
    /// Whether a BOS token is added when the file does not say.
    pub default_add_bos: bool,
}

/// The pre-tokenizer names this crate supports.
pub const SUPPORTED_PRE_TOKENIZERS: &[&str] = &["default", "gpt-2", "smollm", "llama-bpe", "qwen2"];

pub(crate) fn spec(name: &str) -> Result<PreTokenizerSpec, TokenizerError> {
    let spec = |regexes, ignore_merges, default_add_bos| PreTokenizerSpec {
        regexes,
        ignore_merges,
        default_add_bos,
    };
    Ok(match name {
        // llama.cpp's fallback for BPE vocabularies without a known pre-tokenizer.
        "default" => spec(&[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"], false, false),
        "gpt-2" => spec(&[GPT2], false, false),
        "smollm" => spec(&[r"\p{N}", GPT2], false, false),
        "llama-bpe" => spec(&[LLAMA3], true, true),
        "qwen2" => spec(&[QWEN2], false, false),
        other => {
            return Err(TokenizerError::UnsupportedPreTokenizer {
                name: other.to_owned(),
                supported: SUPPORTED_PRE_TOKENIZERS.join(", "),
            });
        }
    })
}

pub(crate) fn build(spec: &PreTokenizerSpec) -> Result<PreTokenizerWrapper, TokenizerError> {
    let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
    for regex in spec.regexes {
        let split = Split::new(SplitPattern::Regex((*regex).to_owned()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| TokenizerError::Build(format!("pre-tokenizer regex {regex:?}: {e}")))?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());
    Ok(Sequence::new(steps).into())
}
