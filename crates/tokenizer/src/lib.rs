//! The tokenizer and chat template of a model, built from its GGUF metadata alone.
//!
//! GGUF files carry their vocabulary under `tokenizer.ggml.*`: the tokens, their types
//! (normal, control, user-defined…), the special token ids, and either BPE merges and the
//! name of the pre-tokenizer (`tokenizer.ggml.pre`) that splits text into words before BPE
//! runs (`gpt2` vocabularies), or SentencePiece scores (`llama` vocabularies).
//! [`Tokenizer::from_gguf`] turns these into a Hugging Face [`tokenizers::Tokenizer`] that
//! splits and merges exactly as llama.cpp does for the same file.
//!
//! [`ChatTemplate`] renders `tokenizer.chat_template` (a Jinja template) with minijinja, the
//! way `transformers`' `apply_chat_template` does.
//!
//! [`StreamDecoder`] turns generated token ids into text as they arrive without ever
//! emitting half a UTF-8 character.

mod chat;
mod pretokenizer;
mod stream;
mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate, TemplateError};
pub use stream::StreamDecoder;
pub use tokenizer::{Segment, SpecialTokens, TokenType, Tokenizer, TokenizerError, VocabKind, byte_level_alphabet};
