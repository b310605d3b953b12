//! Constrained decoding: output held to a JSON schema or a Lark grammar by llguidance, which
//! masks each step's logits to the tokens that keep the output valid. Only the sequences
//! that carry a [`Constraint`] are masked (and read their whole logit rows).

use std::fmt;
use std::sync::{Arc, OnceLock};

use cinder_tokenizer::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

/// The vocabulary as llguidance sees it: each token's bytes, control tokens marked so that
/// no grammar matches them as text.
struct Vocabulary {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, bytes: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(bytes, |text| self.tokenizer.encode(text, false, false).unwrap_or_default())
    }
}

fn build_factory(tokenizer: &Tokenizer) -> Result<ParserFactory, String> {
    let special = tokenizer.special_tokens();
    let vocab_size = tokenizer.vocab_size() as u32;
    // The token that ends a valid output: the end of turn of chat models, else the end
    // of text. Every end-of-generation token stops the engine; this one is the grammar's.
    let eos = special.eot.or(special.eos).or(special.end_of_generation.first().copied()).unwrap_or(0);
    let info = TokRxInfo {
        tok_bos: special.bos,
        tok_pad: special.pad,
        tok_unk: special.unk,
        tok_end_of_turn: special.eot,
        ..TokRxInfo::new(vocab_size, eos)
    };
    let words: Vec<Vec<u8>> = (0..vocab_size)
        .map(|id| match tokenizer.is_special(id) {
            true => [&[TokTrie::SPECIAL_TOKEN_MARKER][..], tokenizer.token_text(id).unwrap_or_default().as_bytes()].concat(),
            false => tokenizer.token_bytes(id).to_vec(),
        })
        .collect();
    let trie = TokTrie::from(&info, &words);
    let env: TokEnv = Arc::new(Vocabulary { trie, tokenizer: tokenizer.clone() });
    let mut factory = ParserFactory::new_simple(&env).map_err(|e| format!("building the grammar vocabulary: {e}"))?;
    factory.quiet();
    // llguidance's default fuel bounds each step's mask (about 15 ms of lexer work and 3 ms
    // of parser items at most) and a grammar's size; its errors should not echo a client's
    // whole grammar and output back.
    factory.limits_mut().verbose_errors = false;
    Ok(factory)
}

/// Compiles grammars against one vocabulary; every request's constraint starts here.
/// Cheap to clone.
#[derive(Clone)]
pub struct Grammars {
    factory: Arc<OnceLock<Result<ParserFactory, String>>>,
    tokenizer: Tokenizer,
}

impl Grammars {
    /// Builds the vocabulary's grammar tables now; an error names the problem.
    pub fn new(tokenizer: &Tokenizer) -> Result<Self, String> {
        let grammars = Self::lazy(tokenizer);
        grammars.factory()?;
        Ok(grammars)
    }

    /// Builds the tables when the first grammar is compiled: for a 262k-token vocabulary
    /// they take ~130 MB, which a web page that never asks for structured output should
    /// not hold.
    pub fn lazy(tokenizer: &Tokenizer) -> Self {
        Self { factory: Arc::new(OnceLock::new()), tokenizer: tokenizer.clone() }
    }

    /// The vocabulary grammars are compiled against.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn factory(&self) -> Result<&ParserFactory, String> {
        self.factory.get_or_init(|| build_factory(&self.tokenizer)).as_ref().map_err(Clone::clone)
    }

    /// Output that is one JSON value matching `schema`, laid out as [`json_layout`] says
    /// unless the schema sets llguidance's `x-guidance` options itself. An invalid schema
    /// is an error naming the problem.
    pub fn json_schema(&self, schema: serde_json::Value) -> Result<Constraint, String> {
        self.compile(TopLevelGrammar::from_json_schema(json_layout(schema)))
    }

    /// Output that a Lark grammar (llguidance's dialect, `%json {…}` inline schemas) accepts.
    pub fn lark(&self, grammar: &str) -> Result<Constraint, String> {
        self.compile(TopLevelGrammar::from_lark(grammar.to_owned()))
    }

    fn compile(&self, grammar: TopLevelGrammar) -> Result<Constraint, String> {
        let parser = self.factory()?.create_parser(grammar).map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        match matcher.get_error() {
            Some(e) => Err(e),
            None => Ok(Constraint { matcher }),
        }
    }
}

/// `schema` with JSON written on one line, `", "` and `": "` between items: what models
/// write most, and no room for the runs of whitespace a weak model can loop in. A schema
/// that sets `x-guidance` keeps its own.
pub fn json_layout(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(object) = schema.as_object_mut() {
        object.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
        });
    }
    schema
}

/// One sequence's place in its grammar.
pub struct Constraint {
    matcher: Matcher,
}

impl Constraint {
    /// Sets the logits of every token the grammar does not allow next to minus infinity.
    pub(crate) fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let allowed = self.matcher.compute_mask().map_err(|e| format!("constrained decoding: {e}"))?;
        for (id, logit) in logits.iter_mut().enumerate() {
            if !allowed.is_allowed(id as TokenId) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Moves past a sampled token.
    pub(crate) fn advance(&mut self, token: u32) -> Result<(), String> {
        self.matcher.consume_token(token).map_err(|e| format!("constrained decoding: {e}"))
    }

    /// The output is complete: the grammar allows nothing more.
    pub(crate) fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }
}

impl Clone for Constraint {
    /// An independent copy at the same place (for the `n` choices of one request).
    fn clone(&self) -> Self {
        Self { matcher: self.matcher.deep_clone() }
    }
}

impl fmt::Debug for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Constraint").field("complete", &self.is_complete()).finish()
    }
}
