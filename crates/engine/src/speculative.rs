//! Speculative decoding: which requests speculate and how far, the n-gram proposer, and the
//! per-sequence length that backs off when drafts keep being rejected. The scheduler runs a
//! decode with its draft as one chunk ([`cinder_scheduler::Scheduler::propose`]); the
//! engine verifies each draft token against the row before it
//! ([`cinder_model::Sampler::verify`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where draft tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpeculativeMethod {
    Off,
    /// Prompt lookup: the tokens that followed the longest recent suffix of the context
    /// found earlier in it (no extra model).
    Ngram,
    /// A smaller model with the same vocabulary.
    Draft,
}

/// How a request speculates: the method and the most draft tokens per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Speculation {
    pub method: SpeculativeMethod,
    pub num_tokens: usize,
}

/// Draft tokens per step when none is given, and the most allowed.
pub const DEFAULT_SPECULATIVE_TOKENS: usize = 4;
pub const MAX_SPECULATIVE_TOKENS: usize = 16;

impl Speculation {
    pub const OFF: Speculation = Speculation { method: SpeculativeMethod::Off, num_tokens: 0 };

    /// `method` with `num_tokens` draft tokens (the default when `None`), checked.
    pub fn new(method: SpeculativeMethod, num_tokens: Option<usize>) -> Result<Self, String> {
        let num_tokens = match num_tokens.unwrap_or(DEFAULT_SPECULATIVE_TOKENS) {
            n @ 1..=MAX_SPECULATIVE_TOKENS => n,
            n => return Err(format!("the number of speculative tokens must be in [1, {MAX_SPECULATIVE_TOKENS}]; got {n}")),
        };
        Ok(if method == SpeculativeMethod::Off { Self::OFF } else { Self { method, num_tokens } })
    }

    pub fn is_on(&self) -> bool {
        self.method != SpeculativeMethod::Off
    }
}

/// `off`, `ngram`, `ngram:K`, `draft`, `draft:K` (the command line's and the config file's form).
impl FromStr for Speculation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, count) = match s.split_once(':') {
            Some((name, count)) => {
                let n = count.trim().parse::<usize>().map_err(|_| format!("{count:?} is not a number of speculative tokens"))?;
                (name, Some(n))
            }
            None => (s, None),
        };
        let method = match name.trim() {
            "off" => SpeculativeMethod::Off,
            "ngram" => SpeculativeMethod::Ngram,
            "draft" => SpeculativeMethod::Draft,
            other => return Err(format!("unknown speculative method {other:?}: use off, ngram[:K] or draft[:K]")),
        };
        Self::new(method, count)
    }
}

impl fmt::Display for Speculation {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.method {
            SpeculativeMethod::Off => f.write_str("off"),
            SpeculativeMethod::Ngram => write!(f, "ngram:{}", self.num_tokens),
            SpeculativeMethod::Draft => write!(f, "draft:{}", self.num_tokens),
        }
    }
}

/// The longest and shortest suffix the n-gram proposer looks up. One-token matches propose
/// mostly wrong tokens in free text; three tokens already pin a copied passage down.
const NGRAM_MAX: usize = 3;
const NGRAM_MIN: usize = 2;

/// Prompt lookup: finds the last `NGRAM_MAX`..`NGRAM_MIN` tokens of `context` earlier in it
/// (the longest suffix first, its most recent occurrence) and proposes up to `max_tokens`
/// of the tokens that followed. Empty when the suffix never occurred before.
pub fn ngram_proposal(context: &[u32], max_tokens: usize) -> Vec<u32> {
    for n in (NGRAM_MIN..=NGRAM_MAX).rev() {
        if context.len() <= n {
            continue;
        }
        let suffix = &context[context.len() - n..];
        // Occurrences ending before the suffix itself, most recent first.
        let found = (0..context.len() - n).rev().find(|&start| &context[start..start + n] == suffix);
        if let Some(start) = found {
            let follows = start + n;
            return context[follows..(follows + max_tokens).min(context.len())].to_vec();
        }
    }
    Vec::new()
}

/// The engine's speculation: the setting of requests that give none, and the batch above
/// which nobody speculates (with many sequences decoding, a step's rows already keep the
/// device busy, and draft rows cost about what a decode does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeculationConfig {
    pub default: Speculation,
    pub max_batch: usize,
}

impl Default for SpeculationConfig {
    fn default() -> Self {
        Self { default: Speculation::OFF, max_batch: 8 }
    }
}

/// A draft token whose chance of acceptance is below this is not worth its place in the
/// verifying chunk: each costs a fraction of a decode step (a row through every layer
/// beside the decode's, which shares its weight reads).
const WORTHWHILE_ACCEPTANCE: f32 = 0.3;
/// Decode steps without drafting after which a sequence that backed off tries again.
const RETRY_AFTER_STEPS: u32 = 16;

/// One sequence's speculation: its request's setting, the acceptance seen so far (a
/// decaying count of draft tokens tried and accepted, trying stopping at the first
/// rejection) and the counts its usage reports.
#[derive(Debug, Clone)]
pub struct SequenceSpeculation {
    pub setting: Speculation,
    tried: f32,
    accepted: f32,
    idle_steps: u32,
    pub draft_tokens: usize,
    pub accepted_tokens: usize,
}

impl SequenceSpeculation {
    pub fn new(setting: Speculation) -> Self {
        // A prior of 4 in 5 accepted: a new sequence drafts in full until it learns otherwise.
        Self { setting, tried: 2.0, accepted: 1.6, idle_steps: 0, draft_tokens: 0, accepted_tokens: 0 }
    }

    /// How many draft tokens to propose this step: the longest draft whose last token is
    /// still likely enough to be accepted (the `j`-th is accepted with the acceptance
    /// rate to the `j`th power), within the request's number. A sequence that backed off
    /// to none tries a short draft again now and then.
    pub fn length(&mut self) -> usize {
        if !self.setting.is_on() {
            return 0;
        }
        let rate = self.accepted / self.tried;
        let mut length = 0;
        let mut chance = rate;
        while length < self.setting.num_tokens && chance >= WORTHWHILE_ACCEPTANCE {
            length += 1;
            chance *= rate;
        }
        if length == 0 {
            self.idle_steps += 1;
            if self.idle_steps >= RETRY_AFTER_STEPS {
                self.idle_steps = 0;
                return 1;
            }
        }
        length
    }

    /// Records a verified draft of `proposed` tokens of which the first `accepted` were
    /// accepted; `rejected` when verification stopped at a rejection (not at the draft's end or a
    /// stop).
    pub fn record(&mut self, proposed: usize, accepted: usize, rejected: bool) {
        const DECAY: f32 = 0.9;
        let tried = accepted + usize::from(rejected);
        self.tried = self.tried * DECAY + tried as f32;
        self.accepted = self.accepted * DECAY + accepted as f32;
        self.draft_tokens += proposed;
        self.accepted_tokens += accepted;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_recent_suffix_proposes_what_followed_it() {
        // "a b c d | x b c d" : the suffix "b c d" occurred at 1..4, followed by x b c d.
        let context = [1, 2, 3, 4, 9, 2, 3, 4];
        assert_eq!(ngram_proposal(&context, 3), [9, 2, 3]);
        assert_eq!(ngram_proposal(&context, 10), [9, 2, 3, 4], "up to the end of the context");
        // The most recent occurrence wins: "5 6" follows "7" last.
        assert_eq!(ngram_proposal(&[5, 6, 1, 5, 6, 7, 5, 6], 1), [7]);
        // Two tokens at least: a lone repeated token proposes nothing.
        assert!(ngram_proposal(&[1, 2, 3, 1], 4).is_empty());
        assert!(ngram_proposal(&[1, 2], 4).is_empty());
    }

    #[test]
    fn settings_parse_from_the_command_line_form() {
        assert_eq!("ngram:4".parse::<Speculation>().unwrap(), Speculation { method: SpeculativeMethod::Ngram, num_tokens: 4 });
        assert_eq!("ngram".parse::<Speculation>().unwrap().num_tokens, DEFAULT_SPECULATIVE_TOKENS);
        assert_eq!("off".parse::<Speculation>().unwrap(), Speculation::OFF);
        assert_eq!("ngram:6".parse::<Speculation>().unwrap().to_string(), "ngram:6");
        for bad in ["ngram:0", "ngram:99", "ngram:x", "medusa:3"] {
            assert!(bad.parse::<Speculation>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_draft_shortens_when_tokens_are_rejected_and_recovers() {
        let mut s = SequenceSpeculation::new(Speculation { method: SpeculativeMethod::Ngram, num_tokens: 5 });
        assert_eq!(s.length(), 5);
        for _ in 0..20 {
            s.record(5, 0, true);
        }
        assert_eq!(s.length(), 0, "nothing accepted: no draft");
        let retried = (0..RETRY_AFTER_STEPS).map(|_| s.length()).collect::<Vec<_>>();
        assert_eq!(retried.iter().filter(|&&l| l > 0).count(), 1, "one retry every {RETRY_AFTER_STEPS} steps");
        for _ in 0..30 {
            s.record(5, 5, false);
        }
        assert_eq!(s.length(), 5, "all accepted: full drafts again");
        assert_eq!((s.draft_tokens, s.accepted_tokens), (250, 150));
        assert_eq!(SequenceSpeculation::new(Speculation::OFF).length(), 0);
    }
}
