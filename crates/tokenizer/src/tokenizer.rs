//! Building a byte-level BPE tokenizer from `tokenizer.ggml.*` metadata.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};

use cinder_gguf::{GgufError, Metadata};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::AddedToken;

use crate::pretokenizer;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Metadata(#[from] GgufError),
    #[error("tokenizer model {0:?} is not supported (supported: gpt2 (byte-level BPE), llama (SentencePiece))")]
    UnsupportedModel(String),
    #[error("pre-tokenizer {name:?} is not supported (supported: {supported})")]
    UnsupportedPreTokenizer { name: String, supported: String },
    #[error("malformed tokenizer metadata: {0}")]
    Malformed(String),
    #[error("cannot build the tokenizer: {0}")]
    Build(String),
    #[error("tokenization failed: {0}")]
    Encode(String),
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    UnknownId { id: u32, vocab_size: usize },
}

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_id(id: i64) -> Option<Self> {
        Some(match id {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
}

/// The two vocabulary families of GGUF files (`tokenizer.ggml.model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabKind {
    /// `gpt2`: byte-level BPE with merges and a pre-tokenizer (Llama 3, Qwen, SmolLM).
    BytePairs,
    /// `llama`: SentencePiece pieces with scores, `▁` for spaces and `<0xNN>` byte
    /// fallback (Llama 2, Mistral, Gemma, Phi-3).
    SentencePiece,
}

/// Ids of the special tokens the metadata names, and the set that ends generation.
#[derive(Debug, Clone, Default)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    /// End-of-generation tokens: eos, eot, eom and the well-known end-of-turn texts, as
    /// llama.cpp collects them.
    pub end_of_generation: Vec<u32>,
}

/// Texts llama.cpp treats as end of generation, whatever the metadata says: end-of-turn
/// and end-of-message markers, and the fill-in-the-middle padding, repository and file
/// separators.
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "[PAD]",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

/// Texts llama.cpp makes control tokens whatever their type in the file (so they are
/// matched only when special tokens are parsed, and left out of decoded text): those that
/// end generation and the fill-in-the-middle markers.
const CONTROL_LOOKING_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];

/// A piece of text to tokenize: markup, whose control-token text becomes those tokens, or
/// literal text (what a user wrote), which never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    Markup(&'a str),
    Literal(&'a str),
}

/// The control tokens matched in text when special tokens are parsed, as the Hugging Face
/// tokenizer matches them (leftmost-longest; some swallow the whitespace after them), for
/// splitting text into control tokens and plain pieces as llama.cpp's fragments do.
#[derive(Debug, Clone)]
struct ControlTokens {
    matcher: AhoCorasick,
    ids: Vec<u32>,
    rstrip: Vec<bool>,
}

impl ControlTokens {
    fn new(tokens: &[(&str, u32, bool)]) -> Result<Self, TokenizerError> {
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(tokens.iter().map(|t| t.0))
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        Ok(Self { matcher, ids: tokens.iter().map(|t| t.1).collect(), rstrip: tokens.iter().map(|t| t.2).collect() })
    }
}

/// A model's tokenizer. Cheap to clone: the vocabulary is shared (a 262k-token one takes
/// tens of MB per copy).
#[derive(Clone)]
pub struct Tokenizer {
    /// Splits control tokens out of the text (llama.cpp's `parse_special = true`).
    parsing_special: Arc<tokenizers::Tokenizer>,
    /// Treats control-token text as plain text.
    plain: Arc<tokenizers::Tokenizer>,
    control: ControlTokens,
    tokens: Arc<[String]>,
    types: Arc<[TokenType]>,
    kind: VocabKind,
    token_bytes: Arc<[Vec<u8>]>,
    /// The most bytes of text one token stands for (a control token's text included).
    longest_token: usize,
    special: SpecialTokens,
    add_bos: bool,
    add_eos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("special", &self.special)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's metadata.
    pub fn from_gguf(metadata: &Metadata) -> Result<Self, TokenizerError> {
        let kind = match metadata.get_str("tokenizer.ggml.model")? {
            "gpt2" => VocabKind::BytePairs,
            "llama" => VocabKind::SentencePiece,
            other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
        };
        let tokens: Vec<String> =
            metadata.get_str_array("tokenizer.ggml.tokens")?.into_iter().map(str::to_owned).collect();
        if tokens.is_empty() || tokens.len() > u32::MAX as usize {
            return Err(TokenizerError::Malformed(format!("vocabulary of {} tokens", tokens.len())));
        }
        let types = match metadata.optional("tokenizer.ggml.token_type", |m, k| m.get_int_array(k))? {
            None => vec![TokenType::Normal; tokens.len()],
            Some(ids) => {
                if ids.len() != tokens.len() {
                    return Err(TokenizerError::Malformed(format!(
                        "{} token types for {} tokens",
                        ids.len(),
                        tokens.len()
                    )));
                }
                ids.iter()
                    .map(|&t| {
                        TokenType::from_id(t)
                            .ok_or_else(|| TokenizerError::Malformed(format!("unknown token type {t}")))
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        let types: Vec<TokenType> = tokens
            .iter()
            .zip(types)
            .map(|(text, ty)| {
                let looks_control = END_OF_GENERATION_TEXTS.contains(&text.as_str()) || CONTROL_LOOKING_TEXTS.contains(&text.as_str());
                if looks_control { TokenType::Control } else { ty }
            })
            .collect();
        let mut vocab = Vocab::default();
        for (id, token) in tokens.iter().enumerate() {
            // On duplicates the first id wins, as in llama.cpp's text-to-token map.
            vocab.entry(token.clone()).or_insert(id as u32);
        }
        let special = special_tokens(metadata, &tokens)?;
        let (mut tokenizer, default_add_bos) = match kind {
            VocabKind::BytePairs => byte_pair_tokenizer(metadata, vocab)?,
            VocabKind::SentencePiece => (sentence_piece_tokenizer(metadata, &tokens, &types, vocab, &special)?, true),
        };
        let add_bos = metadata.optional("tokenizer.ggml.add_bos_token", |m, k| m.get_bool(k))?.unwrap_or(default_add_bos);
        let add_eos = metadata.optional("tokenizer.ggml.add_eos_token", |m, k| m.get_bool(k))?.unwrap_or(false);
        if add_bos && special.bos.is_none() {
            return Err(TokenizerError::Malformed("add_bos_token is set but there is no bos_token_id".into()));
        }
        if add_eos && special.eos.is_none() {
            return Err(TokenizerError::Malformed("add_eos_token is set but there is no eos_token_id".into()));
        }
        if let Some(processor) = post_processor(&tokens, &special, add_bos, add_eos)? {
            tokenizer.with_post_processor(Some(processor));
        }
        // Control, unknown and user-defined tokens are matched in the text before the model
        // runs; user-defined ones always, the others only when special tokens are parsed.
        let rstrip = strips_after_special_tokens(metadata)?;
        let mut added: Vec<AddedToken> = Vec::new();
        let mut control: Vec<(&str, u32, bool)> = Vec::new();
        let mut seen = HashSet::new();
        for (id, (text, ty)) in tokens.iter().zip(&types).enumerate() {
            if !matches!(ty, TokenType::Control | TokenType::Unknown | TokenType::UserDefined) {
                continue;
            }
            let is_control = *ty != TokenType::UserDefined;
            let strips = rstrip && !["<unk>", "<s>", "<|endoftext|>"].contains(&text.as_str());
            added.push(AddedToken::from(text.clone(), is_control).normalized(false).rstrip(strips));
            // On duplicate texts the first id wins, as in the vocabulary.
            if seen.insert(text.as_str()) && is_control {
                control.push((text, id as u32, strips));
            }
        }
        let control = ControlTokens::new(&control)?;
        tokenizer.add_tokens(&added);
        let mut plain = tokenizer.clone();
        plain.set_encode_special_tokens(true);

        let token_bytes: Arc<[Vec<u8>]> = tokens.iter().zip(&types).map(|(t, ty)| token_to_bytes(t, *ty, kind)).collect();
        let longest_token = token_bytes.iter().map(Vec::len).chain(tokens.iter().map(String::len)).max().unwrap_or(1).max(1);
        Ok(Self {
            parsing_special: Arc::new(tokenizer),
            plain: Arc::new(plain),
            control,
            tokens: tokens.into(),
            types: types.into(),
            kind,
            token_bytes,
            longest_token,
            special,
            add_bos,
            add_eos,
        })
    }

    /// Token ids for `text`. `add_special` adds BOS/EOS as the model's metadata asks;
    /// `parse_special` turns control-token text such as `<|im_start|>` into that token
    /// instead of tokenizing its characters.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let tokenizer = if parse_special { &self.parsing_special } else { &self.plain };
        let encoding = tokenizer.encode_fast(text, add_special).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids for `segments` as one text, where only the markup's control-token text
    /// becomes control tokens: the same ids as [`Tokenizer::encode`] with `parse_special`
    /// when the literal text holds none, and that text tokenized as characters when it does.
    pub fn encode_segments(&self, segments: &[Segment], add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::new();
        if add_special && self.add_bos {
            ids.extend(self.special.bos);
        }
        // Plain text since the last control token: literal text joins the markup around it,
        // so the words at a boundary split as they would in one text.
        let mut plain = String::new();
        let flush = |plain: &mut String, ids: &mut Vec<u32>| -> Result<(), TokenizerError> {
            if !plain.is_empty() {
                ids.extend(self.encode(plain, false, false)?);
                plain.clear();
            }
            Ok(())
        };
        for segment in segments {
            let markup = match segment {
                Segment::Literal(text) => {
                    plain.push_str(text);
                    continue;
                }
                Segment::Markup(markup) => markup,
            };
            let mut rest = 0;
            for found in self.control.matcher.find_iter(*markup) {
                if found.start() < rest {
                    continue; // inside whitespace the previous control token swallowed
                }
                plain.push_str(&markup[rest..found.start()]);
                flush(&mut plain, &mut ids)?;
                ids.push(self.control.ids[found.pattern()]);
                rest = found.end();
                if self.control.rstrip[found.pattern()] {
                    let after = &markup[rest..];
                    rest += after.len() - after.trim_start().len();
                }
            }
            plain.push_str(&markup[rest..]);
        }
        flush(&mut plain, &mut ids)?;
        if add_special && self.add_eos {
            ids.extend(self.special.eos);
        }
        Ok(ids)
    }

    /// Where control-token text occurs in `text` (leftmost-longest, without overlaps).
    pub fn find_control_tokens(&self, text: &str) -> Vec<Range<usize>> {
        self.control.matcher.find_iter(text).map(|m| m.range()).collect()
    }

    /// Text of `ids`; control tokens are left out when `skip_special` is set.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        let mut bytes = Vec::new();
        for &id in ids {
            self.check_id(id)?;
            if !(skip_special && self.is_special(id)) {
                bytes.extend_from_slice(self.token_bytes(id));
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Checks that `id` is in the vocabulary.
    pub fn check_id(&self, id: u32) -> Result<(), TokenizerError> {
        if (id as usize) < self.tokens.len() {
            Ok(())
        } else {
            Err(TokenizerError::UnknownId { id, vocab_size: self.tokens.len() })
        }
    }

    /// The bytes a token stands for. Panics on ids outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        &self.token_bytes[id as usize]
    }

    /// The token's text as stored in the vocabulary.
    /// Fewest tokens `text_bytes` of text can become (without BOS or EOS): every token
    /// stands for at most the longest token's bytes. A bound that needs no tokenizing.
    pub fn fewest_tokens(&self, text_bytes: usize) -> usize {
        text_bytes.div_ceil(self.longest_token)
    }

    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Whether the token is a control token (never part of visible text).
    pub fn is_special(&self, id: u32) -> bool {
        matches!(self.types.get(id as usize), Some(TokenType::Control | TokenType::Unknown))
    }

    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.special.end_of_generation.contains(&id)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn kind(&self) -> VocabKind {
        self.kind
    }

    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// The underlying Hugging Face tokenizer (with control tokens parsed).
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.parsing_special
    }
}

/// Whether special tokens swallow the whitespace after them: llama.cpp does so for models
/// named Phi-3 (as their Hugging Face tokenizers do), but for `<unk>`, `<s>` and
/// `<|endoftext|>`.
fn strips_after_special_tokens(metadata: &Metadata) -> Result<bool, TokenizerError> {
    let name = metadata.optional("general.name", |m, k| m.get_str(k))?.unwrap_or_default().to_lowercase();
    Ok(name.contains("phi-3") || name.contains("phi3"))
}

/// A byte-level BPE tokenizer: the merges, and the pre-tokenizer `tokenizer.ggml.pre`
/// names. Also returns whether BOS is added when the file does not say.
fn byte_pair_tokenizer(metadata: &Metadata, vocab: Vocab) -> Result<(tokenizers::Tokenizer, bool), TokenizerError> {
    let pre_name = metadata.optional("tokenizer.ggml.pre", |m, k| m.get_str(k))?.unwrap_or("default");
    let pre = pretokenizer::spec(pre_name)?;
    let merges = metadata
        .get_str_array("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            // Byte-level tokens never contain a space, so the space separates the pair.
            m.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| TokenizerError::Malformed(format!("merge {m:?} has no space")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(|e| TokenizerError::Build(e.to_string()))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pretokenizer::build(&pre)?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
    Ok((tokenizer, pre.default_add_bos))
}

/// llama.cpp's SentencePiece tokenizer as a BPE model: spaces become `▁` (and one is
/// prepended to every text between special tokens when `add_space_prefix` is set, its
/// default), then adjacent pieces merge while their concatenation is a token, the
/// highest-scoring first, and characters that form no token fall back to their `<0xNN>`
/// byte tokens. The merges are every split of every token into two tokens, ranked by the
/// token's score, which is what SentencePiece's BPE does with the scores.
fn sentence_piece_tokenizer(
    metadata: &Metadata,
    tokens: &[String],
    types: &[TokenType],
    vocab: Vocab,
    special: &SpecialTokens,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let scores = metadata.get_array("tokenizer.ggml.scores")?;
    if scores.len() != tokens.len() {
        return Err(TokenizerError::Malformed(format!("{} scores for {} tokens", scores.len(), tokens.len())));
    }
    let scores: Vec<f32> = scores
        .iter()
        .map(|v| v.as_f64().map(|f| f as f32).ok_or_else(|| TokenizerError::Malformed("a score is not a number".into())))
        .collect::<Result<_, _>>()?;
    let mut ranked: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (text, &id) in &vocab {
        if types[id as usize] == TokenType::Byte {
            continue;
        }
        for (split, _) in text.char_indices().skip(1) {
            if let (Some(&left), Some(&right)) = (vocab.get(&text[..split]), vocab.get(&text[split..])) {
                ranked.push((scores[id as usize], id, left, right));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2, a.3).cmp(&(b.1, b.2, b.3))));
    let merges = ranked.into_iter().map(|(_, _, l, r)| (tokens[l as usize].clone(), tokens[r as usize].clone())).collect();
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true);
    if let Some(unk) = special.unk {
        builder = builder.unk_token(tokens[unk as usize].clone());
    }
    let bpe = builder.build().map_err(|e| TokenizerError::Build(e.to_string()))?;
    let add_space_prefix = metadata.optional("tokenizer.ggml.add_space_prefix", |m, k| m.get_bool(k))?.unwrap_or(true);
    let mut steps = Vec::new();
    if add_space_prefix {
        steps.push(Prepend::new(SPACE_MARK.into()).into());
    }
    steps.push(Replace::new(" ", SPACE_MARK).map_err(|e| TokenizerError::Build(e.to_string()))?.into());
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(NormalizerSequence::new(steps)));
    Ok(tokenizer)
}

/// SentencePiece's stand-in for a space.
const SPACE_MARK: &str = "\u{2581}";

fn special_tokens(metadata: &Metadata, tokens: &[String]) -> Result<SpecialTokens, TokenizerError> {
    let id = |key: &str| -> Result<Option<u32>, TokenizerError> {
        let Some(id) = metadata.optional(key, |m, k| m.get_u64(k))? else { return Ok(None) };
        if id as usize >= tokens.len() {
            return Err(TokenizerError::Malformed(format!(
                "{key} = {id} is outside the vocabulary of {} tokens",
                tokens.len()
            )));
        }
        Ok(Some(id as u32))
    };
    let mut special = SpecialTokens {
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        eot: id("tokenizer.ggml.eot_token_id")?,
        unk: id("tokenizer.ggml.unknown_token_id")?,
        pad: id("tokenizer.ggml.padding_token_id")?,
        end_of_generation: Vec::new(),
    };
    let eom = id("tokenizer.ggml.eom_token_id")?;
    let mut eog: HashSet<u32> = [special.eos, special.eot, eom].into_iter().flatten().collect();
    eog.extend(
        tokens.iter().enumerate().filter(|(_, t)| END_OF_GENERATION_TEXTS.contains(&t.as_str())).map(|(i, _)| i as u32),
    );
    special.end_of_generation = eog.into_iter().collect();
    special.end_of_generation.sort_unstable();
    Ok(special)
}

fn post_processor(
    tokens: &[String],
    special: &SpecialTokens,
    add_bos: bool,
    add_eos: bool,
) -> Result<Option<TemplateProcessing>, TokenizerError> {
    if !add_bos && !add_eos {
        return Ok(None);
    }
    let bos = add_bos.then_some(special.bos).flatten();
    let eos = add_eos.then_some(special.eos).flatten();
    let text = |id: u32| tokens[id as usize].clone();
    let mut pieces: Vec<String> = bos.map(text).into_iter().collect();
    pieces.push("$A".to_owned());
    pieces.extend(eos.map(text));
    let mut ids: Vec<(String, u32)> = bos.into_iter().chain(eos).map(|id| (text(id), id)).collect();
    ids.dedup();
    let single = pieces.join(" ");
    let pair = format!("{single} $B:1");
    TemplateProcessing::builder()
        .try_single(single)
        .and_then(|b| b.try_pair(pair))
        .map_err(|e| TokenizerError::Build(e.to_string()))?
        .special_tokens(ids)
        .build()
        .map(Some)
        .map_err(|e| TokenizerError::Build(e.to_string()))
}

/// The GPT-2 byte-level alphabet: the printable character that stands for each byte in
/// byte-level BPE vocabularies (printable bytes stand for themselves).
pub fn byte_level_alphabet() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut extra = 0;
    std::array::from_fn(|b| {
        let b = b as u32;
        if printable(b) {
            char::from_u32(b).expect("valid")
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("valid")
        }
    })
}

fn byte_decoder() -> HashMap<char, u8> {
    byte_level_alphabet().into_iter().enumerate().map(|(b, c)| (c, b as u8)).collect()
}

/// The bytes a token stands for, as llama.cpp's `token_to_piece` gives them: control,
/// unknown and user-defined tokens as their text, byte tokens as their byte, unused tokens
/// as nothing, and normal ones decoded from the vocabulary's encoding (GPT-2's byte
/// alphabet, or `▁` for a space).
fn token_to_bytes(token: &str, ty: TokenType, kind: VocabKind) -> Vec<u8> {
    thread_local! {
        static DECODER: HashMap<char, u8> = byte_decoder();
    }
    match ty {
        TokenType::Control | TokenType::UserDefined | TokenType::Unknown => token.as_bytes().to_vec(),
        TokenType::Unused => Vec::new(),
        TokenType::Byte => match token.strip_prefix("<0x").and_then(|t| t.strip_suffix('>')).and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(byte) => vec![byte],
            None => token.as_bytes().to_vec(),
        },
        TokenType::Normal => match kind {
            VocabKind::SentencePiece => token.replace(SPACE_MARK, " ").into_bytes(),
            VocabKind::BytePairs => DECODER.with(|decoder| {
                let mut out = Vec::with_capacity(token.len());
                for c in token.chars() {
                    match decoder.get(&c) {
                        Some(&b) => out.push(b),
                        None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                out
            }),
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use cinder_gguf::MetadataValue;

    /// A byte-level vocabulary: two control tokens, the 256 byte characters, a few merges.
    pub(crate) fn tiny_metadata(pre: &str, add_bos: bool) -> Metadata {
        let mut tokens = vec!["<s>".to_owned(), "</s>".to_owned()];
        let mut chars: Vec<char> = byte_decoder().into_keys().collect();
        chars.sort_unstable();
        tokens.extend(chars.iter().map(|c| c.to_string()));
        let merges = ["h e", "l l", "ll o", "he llo", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
        }
        let mut types = vec![3, 3];
        types.resize(tokens.len(), 1);
        let mut m = Metadata::default();
        let mut put = |k: &str, v| m.insert(k.to_owned(), v).unwrap();
        put("tokenizer.ggml.model", MetadataValue::String("gpt2".into()));
        put("tokenizer.ggml.pre", MetadataValue::String(pre.into()));
        put("tokenizer.ggml.tokens", MetadataValue::strings(tokens));
        put("tokenizer.ggml.token_type", MetadataValue::i32s(types));
        put("tokenizer.ggml.merges", MetadataValue::strings(merges));
        put("tokenizer.ggml.bos_token_id", MetadataValue::U32(0));
        put("tokenizer.ggml.eos_token_id", MetadataValue::U32(1));
        put("tokenizer.ggml.add_bos_token", MetadataValue::Bool(add_bos));
        m
    }

    fn id_of(t: &Tokenizer, text: &str) -> u32 {
        (0..t.vocab_size() as u32).find(|&i| t.token_text(i) == Some(text)).unwrap()
    }

    #[test]
    fn merges_apply_and_decode_round_trips() {
        let t = Tokenizer::from_gguf(&tiny_metadata("smollm", false)).unwrap();
        let ids = t.encode("hello world", false, false).unwrap();
        assert_eq!(ids, [id_of(&t, "hello"), id_of(&t, "Ġworld")]);
        for text in ["hello world", "héllo 12 wörld\n\n  tabs\there", "日本語 🦀", ""] {
            let ids = t.encode(text, false, false).unwrap();
            assert_eq!(t.decode(&ids, false).unwrap(), text);
            assert_eq!(t.hf().decode(&ids, false).unwrap(), text, "HF decoder agrees");
        }
    }

    #[test]
    fn smollm_splits_every_digit() {
        let t = Tokenizer::from_gguf(&tiny_metadata("smollm", false)).unwrap();
        assert_eq!(t.encode("2024", false, false).unwrap().len(), 4);
    }

    #[test]
    fn special_tokens_parse_only_when_asked() {
        let t = Tokenizer::from_gguf(&tiny_metadata("gpt-2", false)).unwrap();
        assert_eq!(t.encode("<s>hello", false, true).unwrap(), [0, id_of(&t, "hello")]);
        let plain = t.encode("<s>hello", false, false).unwrap();
        assert_eq!(plain.len(), 4, "'<', 's', '>' and 'hello': {plain:?}");
        assert_eq!(t.decode(&[0, id_of(&t, "hello")], true).unwrap(), "hello");
        assert_eq!(t.decode(&[0, id_of(&t, "hello")], false).unwrap(), "<s>hello");
        assert!(t.is_end_of_generation(1));
    }

    #[test]
    fn segments_split_control_tokens_only_in_markup() {
        for t in [Tokenizer::from_gguf(&tiny_metadata("gpt-2", true)).unwrap(), Tokenizer::from_gguf(&sentence_piece_metadata(true)).unwrap()] {
            for text in ["<s>hello</s> world", "hello world", "</s></s>x<s>", ""] {
                let whole = t.encode(text, true, true).unwrap();
                assert_eq!(t.encode_segments(&[Segment::Markup(text)], true).unwrap(), whole, "{text:?}");
                // Split anywhere between characters into markup and literal pieces without
                // control-token text, the ids stay the same.
                for cut in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
                    let (a, b) = text.split_at(cut);
                    let inside_control = t.find_control_tokens(text).iter().any(|r| r.start < cut && cut < r.end);
                    if t.find_control_tokens(b).is_empty() && !inside_control {
                        let ids = t.encode_segments(&[Segment::Markup(a), Segment::Literal(b)], true).unwrap();
                        assert_eq!(ids, whole, "{a:?} + literal {b:?}");
                    }
                }
            }
            let literal = t.encode_segments(&[Segment::Markup("<s>"), Segment::Literal("hello</s>")], false).unwrap();
            let bos = t.special_tokens().bos.unwrap();
            let expected: Vec<u32> = std::iter::once(bos).chain(t.encode("hello</s>", false, false).unwrap()).collect();
            assert_eq!(literal, expected);
        }
    }

    #[test]
    fn bos_is_added_when_metadata_says_so() {
        let t = Tokenizer::from_gguf(&tiny_metadata("gpt-2", true)).unwrap();
        assert_eq!(t.encode("hello", true, false).unwrap(), [0, id_of(&t, "hello")]);
        assert_eq!(t.encode("hello", false, false).unwrap(), [id_of(&t, "hello")]);
    }

    #[test]
    fn unsupported_inputs_are_named() {
        let err = Tokenizer::from_gguf(&tiny_metadata("mystery", false)).unwrap_err().to_string();
        assert!(err.contains("\"mystery\"") && err.contains("smollm"), "{err}");
        let mut m = tiny_metadata("gpt-2", false);
        let mut other = Metadata::default();
        for (k, v) in m.iter() {
            let v = if k == "tokenizer.ggml.model" { MetadataValue::String("bert".into()) } else { v.clone() };
            other.insert(k.to_owned(), v).unwrap();
        }
        let err = Tokenizer::from_gguf(&other).unwrap_err().to_string();
        assert!(err.contains("\"bert\" is not supported") && err.contains("llama (SentencePiece)"), "{err}");
        m = Metadata::default();
        let err = Tokenizer::from_gguf(&m).unwrap_err().to_string();
        assert!(err.contains("tokenizer.ggml.model"), "{err}");
        let t = Tokenizer::from_gguf(&tiny_metadata("gpt-2", false)).unwrap();
        assert!(t.decode(&[99_999], false).unwrap_err().to_string().contains("outside the vocabulary"));
    }

    /// A SentencePiece vocabulary: `<unk>`, `<s>`, `</s>`, the 256 byte tokens, pieces
    /// scored longest-first, and a user-defined token.
    fn sentence_piece_metadata(add_space_prefix: bool) -> Metadata {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        types.resize(tokens.len(), 6);
        let pieces = ["▁", "h", "e", "l", "o", "w", "r", "d", "x", "he", "ll", "llo", "hello", "▁hello", "▁w", "or", "ld", "▁wor", "▁world", "▁x"];
        let mut scores = vec![0.0f32; tokens.len()];
        for piece in pieces {
            scores.push(piece.chars().count() as f32 - 10.0);
            tokens.push(piece.into());
            types.push(1);
        }
        tokens.push("<tag>".into());
        types.push(4);
        scores.push(0.0);
        let mut m = Metadata::default();
        let mut put = |k: &str, v| m.insert(k.to_owned(), v).unwrap();
        put("tokenizer.ggml.model", MetadataValue::String("llama".into()));
        put("tokenizer.ggml.tokens", MetadataValue::strings(tokens));
        put("tokenizer.ggml.token_type", MetadataValue::i32s(types));
        put("tokenizer.ggml.scores", MetadataValue::f32s(scores));
        put("tokenizer.ggml.unknown_token_id", MetadataValue::U32(0));
        put("tokenizer.ggml.bos_token_id", MetadataValue::U32(1));
        put("tokenizer.ggml.eos_token_id", MetadataValue::U32(2));
        put("tokenizer.ggml.add_space_prefix", MetadataValue::Bool(add_space_prefix));
        m
    }

    #[test]
    fn sentence_piece_merges_by_score_and_falls_back_to_bytes() {
        let t = Tokenizer::from_gguf(&sentence_piece_metadata(true)).unwrap();
        assert_eq!(t.kind(), VocabKind::SentencePiece);
        assert!(t.add_bos(), "SentencePiece vocabularies add BOS unless told otherwise");
        let id = |text: &str| id_of(&t, text);
        assert_eq!(t.encode("hello world", false, false).unwrap(), [id("▁hello"), id("▁world")]);
        assert_eq!(t.encode("hello world", true, false).unwrap(), [1, id("▁hello"), id("▁world")]);
        // "é" is no token: its UTF-8 bytes are.
        assert_eq!(t.encode("hé", false, false).unwrap(), [id("▁"), id("h"), id("<0xC3>"), id("<0xA9>")]);
        // Text after a special token gets the space prefix again; a user-defined token is
        // matched whether or not special tokens are parsed.
        assert_eq!(t.encode("<s>x", false, true).unwrap(), [1, id("▁x")]);
        assert_eq!(t.encode("x<tag>x", false, false).unwrap(), [id("▁x"), id("<tag>"), id("▁x")]);
        let ids = t.encode("hello wé", false, false).unwrap();
        assert_eq!(t.decode(&ids, false).unwrap(), " hello wé");
        // Streaming holds back the first byte token of "é" until the second completes it.
        let mut decoder = crate::StreamDecoder::new();
        let pieces: Vec<String> = t.encode("hé", false, false).unwrap().iter().map(|&id| decoder.push(&t, id, false)).collect();
        assert_eq!(pieces, [" ", "h", "", "é"]);
        assert_eq!(t.decode(&[1, id("▁hello"), 2], true).unwrap(), " hello");

        let no_prefix = Tokenizer::from_gguf(&sentence_piece_metadata(false)).unwrap();
        assert_eq!(no_prefix.encode("hello world", false, false).unwrap(), [id("hello"), id("▁world")]);
    }

    #[test]
    fn stream_decoder_holds_back_partial_characters() {
        let t = Tokenizer::from_gguf(&tiny_metadata("gpt-2", false)).unwrap();
        let ids = t.encode("a🦀b", false, false).unwrap();
        assert_eq!(ids.len(), 6, "the crab is four byte tokens");
        let mut decoder = crate::StreamDecoder::new();
        let pieces: Vec<String> = ids.iter().map(|&id| decoder.push(&t, id, false)).collect();
        assert_eq!(pieces, ["a", "", "", "", "🦀", "b"]);
        assert_eq!(decoder.finish(), "");
    }
}
