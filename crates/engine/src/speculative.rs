//! Speculative decoding: which requests speculate and how far, the n-gram proposer, and the
//! per-sequence length that backs off when drafts keep being rejected. The scheduler runs a
//! decode with its draft as one chunk ([`cinder_scheduler::Scheduler::propose`]); the
//! engine verifies each draft token against the row before it
//! ([`cinder_model::Sampler::verify`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::SpeculativeUsage;

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

/// The chance of acceptance a draft token needs at most: on lavapipe a fifth token in a
/// step cost 0.34 of a one-token step's matrix products. Where the engine measures rows
/// to be cheaper ([`StepCost`]), less is needed; measurements never raise it, since the
/// first steps of each size also compile kernels and would price rows far too high.
pub const DEFAULT_WORTHWHILE: f32 = 0.3;
/// A draft token needs at least this chance however cheap its row.
const MIN_WORTHWHILE: f32 = 0.05;
/// Decode steps without drafting after which a sequence that backed off tries again; each
/// retry that fails doubles the wait, up to the longest.
const RETRY_AFTER_STEPS: u32 = 16;
const LONGEST_RETRY_WAIT: u32 = 128;

/// A decode step's time as `a + b * tokens`, fitted to recent decode steps (their drafts
/// make them differ in size) by least squares with older steps weighing less. It prices a
/// draft token: one more row adds `b` to a step of `a + b * n`, so a draft token pays for
/// itself when its chance of acceptance is above `b * n / (a + b * n)` (the step's output
/// grows by that chance, its time by that share). Near zero where a step is bound by
/// reading the weights (a GPU at small batches), larger where every row costs compute (a
/// CPU), and close to one once a step is full.
#[derive(Debug, Clone, Default)]
pub struct StepCost {
    weight: f64,
    x: f64,
    y: f64,
    xx: f64,
    xy: f64,
}

impl StepCost {
    /// Older steps' weight after each new one.
    const DECAY: f64 = 0.98;

    pub fn observe(&mut self, tokens: usize, seconds: f64) {
        let (x, d) = (tokens as f64, Self::DECAY);
        self.weight = self.weight * d + 1.0;
        self.x = self.x * d + x;
        self.y = self.y * d + seconds;
        self.xx = self.xx * d + x * x;
        self.xy = self.xy * d + x * seconds;
    }

    /// The chance of acceptance a draft token needs in a step of `tokens` decode tokens
    /// (see the type), within [`MIN_WORTHWHILE`, [`DEFAULT_WORTHWHILE`]]; the default until
    /// the steps seen differ in size enough to tell the cost of a token from the step's.
    pub fn worthwhile(&self, tokens: usize) -> f32 {
        self.measured(tokens).map_or(DEFAULT_WORTHWHILE, |share| share.clamp(MIN_WORTHWHILE, DEFAULT_WORTHWHILE))
    }

    /// `b * n / (a + b * n)` from the fit, when there is one.
    fn measured(&self, tokens: usize) -> Option<f32> {
        if self.weight < 4.0 {
            return None;
        }
        let (mean_x, mean_y) = (self.x / self.weight, self.y / self.weight);
        let variance = self.xx / self.weight - mean_x * mean_x;
        if variance < 0.25 {
            return None;
        }
        let b = ((self.xy / self.weight - mean_x * mean_y) / variance).max(0.0);
        let a = (mean_y - b * mean_x).max(0.0);
        let n = tokens.max(1) as f64;
        Some((b * n / (a + b * n).max(f64::MIN_POSITIVE)) as f32)
    }
}

/// One sequence's speculation: its request's setting, the acceptance seen so far (a
/// decaying count of draft tokens tried and accepted, trying stopping at the first
/// rejection) and the counts its usage reports.
#[derive(Debug, Clone)]
pub struct SequenceSpeculation {
    pub setting: Speculation,
    tried: f32,
    accepted: f32,
    idle_steps: u32,
    retry_after: u32,
    pub usage: SpeculativeUsage,
}

impl SequenceSpeculation {
    pub fn new(setting: Speculation) -> Self {
        // A prior of 3 in 5 accepted: a new sequence starts with a short draft, which grows
        // within a few steps when accepted and stops within two when not.
        Self { setting, tried: 2.0, accepted: 1.2, idle_steps: 0, retry_after: RETRY_AFTER_STEPS, usage: SpeculativeUsage::default() }
    }

    /// How many draft tokens to propose this step: the longest draft whose last token is
    /// still likely enough to be accepted (the `j`-th is accepted with the acceptance
    /// rate to the `j`th power) to be `worthwhile` (the chance a draft token needs, see
    /// [`StepCost`]), within the request's number. A sequence that backed off to none
    /// tries a short draft again now and then.
    pub fn length(&mut self, worthwhile: f32) -> usize {
        if !self.setting.is_on() {
            return 0;
        }
        let rate = self.accepted / self.tried;
        let mut length = 0;
        let mut chance = rate;
        while length < self.setting.num_tokens && chance >= worthwhile {
            length += 1;
            chance *= rate;
        }
        if length == 0 {
            self.idle_steps += 1;
            if self.idle_steps >= self.retry_after {
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
        self.retry_after = if accepted > 0 { RETRY_AFTER_STEPS } else { (self.retry_after * 2).min(LONGEST_RETRY_WAIT) };
        self.usage.draft_tokens += proposed;
        self.usage.accepted_tokens += accepted;
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
        let w = DEFAULT_WORTHWHILE;
        assert_eq!(s.length(w), 2, "a short draft first");
        s.record(2, 2, false);
        assert_eq!(s.length(w), 5, "all accepted: the whole draft");
        for _ in 0..20 {
            s.record(5, 0, true);
        }
        assert_eq!(s.length(w), 0, "nothing accepted: no draft");
        let retried = (0..LONGEST_RETRY_WAIT).map(|_| s.length(w)).collect::<Vec<_>>();
        assert_eq!(retried.iter().filter(|&&l| l > 0).count(), 1, "after failed retries, one every {LONGEST_RETRY_WAIT} steps");
        for _ in 0..30 {
            s.record(5, 5, false);
        }
        assert_eq!(s.length(w), 5, "all accepted: full drafts again");
        assert_eq!(s.usage, SpeculativeUsage { draft_tokens: 252, accepted_tokens: 152 });
        assert_eq!(SequenceSpeculation::new(Speculation::OFF).length(w), 0);
        // Half accepted: 0.5^j stays above a cheap token's price longer.
        let mut half = SequenceSpeculation::new(Speculation { method: SpeculativeMethod::Ngram, num_tokens: 8 });
        for _ in 0..40 {
            half.record(2, 1, true);
        }
        assert_eq!((half.length(0.3), half.length(0.1)), (1, 3));
    }

    #[test]
    fn the_step_cost_prices_a_draft_token_by_what_a_row_adds() {
        let mut cost = StepCost::default();
        for _ in 0..10 {
            cost.observe(1, 0.090);
        }
        assert_eq!(cost.worthwhile(1), DEFAULT_WORTHWHILE, "steps of one size tell nothing");
        // A CPU: 15 ms per row over 75 ms.
        for tokens in [1, 5, 2, 4, 3, 1, 5] {
            cost.observe(tokens, 0.075 + 0.015 * tokens as f64);
        }
        let cpu = cost.worthwhile(1);
        assert!((cpu - 0.15 / 0.9).abs() < 0.01, "{cpu}");
        assert_eq!(cost.worthwhile(32), DEFAULT_WORTHWHILE, "a full step: never above the default");
        // A GPU reading its weights: rows are nearly free.
        let mut gpu = StepCost::default();
        for tokens in [1, 5, 2, 4, 3, 1, 5, 2] {
            gpu.observe(tokens, 0.010 + 0.0001 * tokens as f64);
        }
        assert_eq!(gpu.worthwhile(1), MIN_WORTHWHILE);
    }
}
