//! Incremental detokenization.

use crate::Tokenizer;

/// Turns token ids into text as they are generated. Tokens of byte-level vocabularies may
/// end inside a multi-byte UTF-8 character; the decoder holds those bytes back until the
/// character is complete, so every piece it returns is valid UTF-8 and the pieces
/// concatenate to the full text.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one token and returns the text it completes (possibly empty). Special tokens
    /// yield nothing unless `render_special` is set.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32, render_special: bool) -> String {
        if !render_special && tokenizer.is_special(id) {
            return String::new();
        }
        self.pending.extend_from_slice(tokenizer.token_bytes(id));
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(valid) => {
                    text.push_str(valid);
                    self.pending.clear();
                    return text;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    text.push_str(std::str::from_utf8(&self.pending[..valid]).expect("valid prefix"));
                    match e.error_len() {
                        // Bytes that can never become a character are replaced, as
                        // `String::from_utf8_lossy` would, and decoding goes on after them.
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        // The character may still be completed by the next token.
                        None => {
                            self.pending.drain(..valid);
                            return text;
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left at the end of generation, with incomplete characters replaced.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}
