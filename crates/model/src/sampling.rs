//! Choosing the next token from logits: penalties, truncation (top-k, top-p, min-p),
//! temperature, and a seeded random draw, in llama.cpp's default order.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ModelError;
use crate::logits::MAX_DEVICE_TOP_K;

/// How to pick tokens. The defaults are greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (always the most likely token).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability adds up to `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recently seen tokens; 1 is off.
    pub repetition_penalty: f32,
    /// How many of the last tokens the penalties look at.
    pub repeat_last_n: usize,
    /// Subtracted from a recent token's logit once per occurrence (OpenAI's); 0 is off.
    pub frequency_penalty: f32,
    /// Subtracted from the logit of any recent token (OpenAI's); 0 is off.
    pub presence_penalty: f32,
    /// Added to the logits of these tokens before anything else (OpenAI's `logit_bias`):
    /// -100 bans a token, 100 all but forces it.
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// The one check of every parameter's range, for every door (HTTP, CLI, browser): the
    /// first parameter out of its range, named as the OpenAI field is. The ranges are
    /// OpenAI's (temperature up to 2), and the penalty's a sane bound.
    pub fn check(&self) -> Result<(), OutOfRange> {
        let rule = |param: &str, ok: bool, rule: &'static str, value: f32| match ok {
            true => Ok(()),
            false => Err(OutOfRange { param: param.to_string(), rule, value }),
        };
        let t = self.temperature;
        rule("temperature", (0.0..=2.0).contains(&t), "in [0, 2]", t)?;
        rule("top_p", self.top_p > 0.0 && self.top_p <= 1.0, "in (0, 1]", self.top_p)?;
        rule("min_p", (0.0..=1.0).contains(&self.min_p), "in [0, 1]", self.min_p)?;
        let r = self.repetition_penalty;
        rule("repetition_penalty", r > 0.0 && r <= 10.0, "in (0, 10]", r)?;
        rule("frequency_penalty", (-2.0..=2.0).contains(&self.frequency_penalty), "in [-2, 2]", self.frequency_penalty)?;
        rule("presence_penalty", (-2.0..=2.0).contains(&self.presence_penalty), "in [-2, 2]", self.presence_penalty)?;
        for &(token, bias) in &self.logit_bias {
            rule(&format!("logit_bias.{token}"), (-100.0..=100.0).contains(&bias), "in [-100, 100]", bias)?;
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// How many of the best logits decide the token, when that is a few: 1 for greedy, `top_k`
    /// for sampling among the top `top_k` (at most [`MAX_DEVICE_TOP_K`]); `None` with
    /// penalties or a logit bias (they change logits first) or without a small `top_k`. The device can then
    /// pick the candidates ([`crate::PendingLogits::top_k`]) and
    /// [`Sampler::sample_candidates`] draws the same token as [`Sampler::sample`] would.
    pub fn deciding_candidates(&self) -> Option<usize> {
        if self.changes_logits() {
            None
        } else if self.is_greedy() {
            Some(1)
        } else {
            Some(self.top_k).filter(|&k| (1..=MAX_DEVICE_TOP_K).contains(&k))
        }
    }

    fn is_penalised(&self) -> bool {
        self.repetition_penalty != 1.0 || self.frequency_penalty != 0.0 || self.presence_penalty != 0.0
    }

    fn changes_logits(&self) -> bool {
        self.is_penalised() || !self.logit_bias.is_empty()
    }
}

/// A sampling parameter outside its range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{param}` must be {rule}; got {value}")]
pub struct OutOfRange {
    /// The parameter, as the OpenAI field is named (`logit_bias.<token>` for a bias).
    pub param: String,
    pub rule: &'static str,
    pub value: f32,
}

/// A sampler with its own random stream: the same seed and logits give the same tokens.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self, ModelError> {
        params.check().map_err(|e| ModelError::InvalidParameter(e.to_string()))?;
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Ok(Self { params, rng })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token given the logits and the tokens so far (prompt and output).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        self.sample_candidates(self.adjust(logits, history))
    }

    /// Every token with its logit after the bias and the penalties (which look at
    /// `history`, the prompt and output so far): what [`Sampler::sample_candidates`] and
    /// [`Sampler::verify`] take.
    pub fn adjust(&self, logits: &[f32], history: &[u32]) -> Vec<(u32, f32)> {
        let mut candidates: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        let p = &self.params;
        for &(id, bias) in &p.logit_bias {
            if let Some(c) = candidates.get_mut(id as usize) {
                c.1 += bias;
            }
        }
        if p.is_penalised() {
            let recent = &history[history.len().saturating_sub(p.repeat_last_n)..];
            let mut counts = std::collections::HashMap::<u32, u32>::new();
            for &id in recent {
                *counts.entry(id).or_default() += 1;
            }
            for (id, count) in counts {
                if let Some(c) = candidates.get_mut(id as usize) {
                    if p.repetition_penalty != 1.0 {
                        c.1 = if c.1 > 0.0 { c.1 / p.repetition_penalty } else { c.1 * p.repetition_penalty };
                    }
                    c.1 -= count as f32 * p.frequency_penalty + p.presence_penalty;
                }
            }
        }
        candidates
    }

    /// Picks the next token among `(token, logit)` candidates: all of a row's logits after
    /// penalties, or, when [`SamplingParams::deciding_candidates`] is `Some(k)`, at least the
    /// `k` best ones best first (ties in token order), which gives the same token. A row
    /// without a number (all NaN) gives token 0.
    pub fn sample_candidates(&mut self, mut candidates: Vec<(u32, f32)>) -> u32 {
        candidates.retain(|c| !c.1.is_nan());
        if candidates.is_empty() {
            return 0;
        }
        if self.params.is_greedy() {
            return argmax(&candidates);
        }
        let distribution = self.distribution(candidates);
        self.draw(&distribution)
    }

    /// A draft model's proposal from its candidates (as [`Sampler::sample_candidates`] takes
    /// them): the token and the distribution it was drawn from, for [`Sampler::verify`].
    /// Greedy proposes the most likely token with certainty.
    pub fn propose(&mut self, mut candidates: Vec<(u32, f32)>) -> (u32, Vec<(u32, f32)>) {
        candidates.retain(|c| !c.1.is_nan());
        if candidates.is_empty() {
            return (0, vec![(0, 1.0)]);
        }
        if self.params.is_greedy() {
            let best = argmax(&candidates);
            return (best, vec![(best, 1.0)]);
        }
        let distribution = self.distribution(candidates);
        (self.draw(&distribution), distribution)
    }

    /// Speculative decoding's test of a proposed token against the candidates of the row
    /// that predicts it (as [`Sampler::sample_candidates`] takes them). `proposal` is the
    /// distribution the token was drawn from: `[(draft, 1.0)]` for a proposer that picks
    /// one token. Greedy: accepted when it is the most likely token, else that token
    /// replaces it. Sampling: accepted with probability min(1, p/q), else replaced by a draw
    /// from the normalised residual max(0, p - q), so that the tokens that come out are
    /// distributed as [`Sampler::sample_candidates`]'s.
    pub fn verify(&mut self, mut candidates: Vec<(u32, f32)>, draft: u32, proposal: &[(u32, f32)]) -> Verdict {
        candidates.retain(|c| !c.1.is_nan());
        if candidates.is_empty() {
            return Verdict::Rejected(0);
        }
        if self.params.is_greedy() {
            let best = argmax(&candidates);
            return if best == draft { Verdict::Accepted } else { Verdict::Rejected(best) };
        }
        let p = self.distribution(candidates);
        // The proposal by token id, so that the residual over the vocabulary costs a lookup
        // per token, not a scan of the proposal.
        let mut q = proposal.to_vec();
        q.sort_unstable_by_key(|c| c.0);
        let q_of = |token: u32| q.binary_search_by_key(&token, |c| c.0).map_or(0.0, |i| q[i].1);
        let p_draft = p.iter().find(|c| c.0 == draft).map_or(0.0, |c| c.1);
        let u: f32 = self.rng.random();
        if u * q_of(draft) < p_draft {
            return Verdict::Accepted;
        }
        let residual: Vec<(u32, f32)> = p.iter().map(|&(t, pt)| (t, (pt - q_of(t)).max(0.0))).collect();
        let total: f32 = residual.iter().map(|c| c.1).sum();
        if total <= 0.0 {
            // Only rounding leaves no residual: p equals q.
            return Verdict::Rejected(self.draw(&p));
        }
        Verdict::Rejected(self.draw(&residual.into_iter().map(|(t, r)| (t, r / total)).collect::<Vec<_>>()))
    }

    /// The probabilities sampling draws from: the candidates after top-k, top-p and min-p,
    /// at the temperature, best first.
    fn distribution(&self, mut candidates: Vec<(u32, f32)>) -> Vec<(u32, f32)> {
        let p = &self.params;
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            candidates.truncate(p.top_k);
        }
        let probs = softmax(candidates.iter().map(|c| c.1), 1.0);
        let mut keep = candidates.len();
        if p.top_p < 1.0 {
            let mut total = 0.0;
            keep = probs.iter().position(|&q| {
                total += q;
                total >= p.top_p
            }).map_or(keep, |i| i + 1);
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p;
            keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
        }
        candidates.truncate(keep.max(1));
        let probs = softmax(candidates.iter().map(|c| c.1), p.temperature);
        candidates.iter().zip(probs).map(|(c, q)| (c.0, q)).collect()
    }

    /// One token drawn from `(token, probability)` pairs.
    fn draw(&mut self, distribution: &[(u32, f32)]) -> u32 {
        let mut draw: f32 = self.rng.random();
        for &(token, q) in distribution {
            if draw < q {
                return token;
            }
            draw -= q;
        }
        distribution.last().expect("at least one candidate").0
    }
}

/// What [`Sampler::verify`] decided about a proposed token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Rejected, and this token takes its place.
    Rejected(u32),
}

/// The index of the largest value; ties go to the lowest index.
fn argmax(candidates: &[(u32, f32)]) -> u32 {
    let mut best = candidates[0];
    for &c in &candidates[1..] {
        if c.1 > best.1 {
            best = c;
        }
    }
    best.0
}

fn softmax(logits: impl Iterator<Item = f32> + Clone, temperature: f32) -> Vec<f32> {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.map(|l| ((l - max) / temperature).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// Natural-log probabilities of every token.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32;
    logits.iter().map(|&l| l - max - log_sum).collect()
}

/// The `k` most likely tokens with their log-probabilities, most likely first.
pub fn top_logprobs(logprobs: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut all: Vec<(u32, f32)> = logprobs.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    let k = k.min(all.len());
    if k == 0 {
        return Vec::new();
    }
    all.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
    all.truncate(k);
    all.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(params: SamplingParams) -> Sampler {
        Sampler::new(params).unwrap()
    }

    const LOGITS: [f32; 5] = [1.0, 3.0, 2.0, -1.0, 2.9];

    #[test]
    fn greedy_takes_the_largest_logit() {
        assert_eq!(sampler(SamplingParams::default()).sample(&LOGITS, &[]), 1);
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let params = SamplingParams { repetition_penalty: 1.5, ..Default::default() };
        assert_eq!(sampler(params).sample(&LOGITS, &[1]), 4);
    }

    #[test]
    fn frequency_and_presence_penalties_subtract_per_occurrence_and_once() {
        let frequency = SamplingParams { frequency_penalty: 0.06, ..Default::default() };
        // Seen once, token 1 (3.0) keeps its lead over token 4 (2.9); seen twice it loses 0.12.
        assert_eq!(sampler(frequency.clone()).sample(&LOGITS, &[1]), 1);
        assert_eq!(sampler(frequency).sample(&LOGITS, &[1, 1]), 4);
        let presence = SamplingParams { presence_penalty: 0.5, ..Default::default() };
        assert_eq!(sampler(presence).sample(&LOGITS, &[1]), 4);
        assert!(Sampler::new(SamplingParams { presence_penalty: 2.5, ..Default::default() }).is_err());
    }

    #[test]
    fn logit_bias_bans_and_forces_tokens_and_reads_the_whole_row() {
        let ban = SamplingParams { logit_bias: vec![(1, -100.0)], ..Default::default() };
        assert_eq!(ban.deciding_candidates(), None, "a bias changes which logits decide");
        assert_eq!(sampler(ban).sample(&LOGITS, &[]), 4);
        let force = SamplingParams { temperature: 1.0, logit_bias: vec![(3, 100.0)], ..Default::default() };
        let mut s = sampler(force);
        assert!((0..50).all(|_| s.sample(&LOGITS, &[]) == 3));
        assert!(Sampler::new(SamplingParams { logit_bias: vec![(0, 101.0)], ..Default::default() }).is_err());
    }

    #[test]
    fn same_seed_same_tokens_and_different_seeds_differ() {
        let run = |seed| {
            let mut s = sampler(SamplingParams { temperature: 1.5, seed, ..Default::default() });
            (0..64).map(|_| s.sample(&LOGITS, &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn the_deciding_candidates_draw_what_the_whole_row_draws() {
        let row: Vec<f32> = (0..300).map(|i| ((i * 7919) % 97) as f32 / 10.0).collect();
        let cases = [
            SamplingParams::default(),
            SamplingParams { temperature: 0.9, top_k: 5, ..Default::default() },
            SamplingParams { temperature: 1.5, top_k: 40, top_p: 0.8, min_p: 0.05, ..Default::default() },
        ];
        for params in cases {
            let k = params.deciding_candidates().expect("decided by a few candidates");
            let mut best: Vec<(u32, f32)> = row.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
            best.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            best.truncate(k.next_power_of_two());
            for seed in 0..20 {
                let params = SamplingParams { seed, ..params.clone() };
                let (mut whole, mut few) = (sampler(params.clone()), sampler(params.clone()));
                let drawn: Vec<u32> = (0..10).map(|_| whole.sample(&row, &[])).collect();
                let from_few: Vec<u32> = (0..10).map(|_| few.sample_candidates(best.clone())).collect();
                assert_eq!(drawn, from_few, "{params:?}");
            }
        }
        let undecided = [
            SamplingParams { temperature: 1.0, ..Default::default() },
            SamplingParams { top_k: 5, repetition_penalty: 1.1, ..Default::default() },
            SamplingParams { logit_bias: vec![(3, 5.0)], ..Default::default() },
            SamplingParams { temperature: 1.0, top_k: MAX_DEVICE_TOP_K + 1, ..Default::default() },
        ];
        assert!(undecided.iter().all(|p| p.deciding_candidates().is_none()));
    }

    /// Rejection sampling keeps the target's distribution whatever proposes the tokens:
    /// a proposer that always offers the same token, and one drawing from another
    /// distribution; greedy accepts exactly the most likely token.
    #[test]
    fn verified_tokens_follow_the_target_distribution() {
        let params = SamplingParams { temperature: 1.0, top_k: 4, seed: 3, ..Default::default() };
        let target = sampler(params.clone()).distribution(LOGITS.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect());
        let candidates = || LOGITS.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect::<Vec<_>>();
        let trials = 40_000;
        let skewed = [(0u32, 0.5f32), (2, 0.3), (3, 0.2)];
        for proposal in [vec![(2u32, 1.0f32)], vec![(3, 1.0)], skewed.to_vec()] {
            let mut s = sampler(params.clone());
            let mut proposer = sampler(SamplingParams { seed: 9, ..params.clone() });
            let mut counts = [0usize; 5];
            let mut accepted = 0;
            for _ in 0..trials {
                let draft = proposer.draw(&proposal);
                let token = match s.verify(candidates(), draft, &proposal) {
                    Verdict::Accepted => {
                        accepted += 1;
                        draft
                    }
                    Verdict::Rejected(token) => token,
                };
                counts[token as usize] += 1;
            }
            for (token, q) in &target {
                let seen = counts[*token as usize] as f32 / trials as f32;
                // Four standard deviations of a binomial share.
                let tolerance = 4.0 * (q * (1.0 - q) / trials as f32).sqrt() + 1e-3;
                assert!((seen - q).abs() < tolerance, "{proposal:?}: token {token} seen {seen}, target {q}");
            }
            assert_eq!(counts[3], 0, "top-k 4 excludes token 3, even when proposed");
            assert_eq!(accepted > 0, proposal != [(3, 1.0)], "{proposal:?}: only a token the target can draw is accepted");
        }
        let mut greedy = sampler(SamplingParams::default());
        assert_eq!(greedy.verify(candidates(), 1, &[(1, 1.0)]), Verdict::Accepted);
        assert_eq!(greedy.verify(candidates(), 4, &[(4, 1.0)]), Verdict::Rejected(1));
    }

    #[test]
    fn truncation_limits_the_candidates() {
        let draws = |params: SamplingParams| {
            let mut s = sampler(params);
            (0..500).map(|_| s.sample(&LOGITS, &[])).collect::<std::collections::BTreeSet<_>>()
        };
        let hot = SamplingParams { temperature: 2.0, ..Default::default() };
        assert_eq!(draws(hot.clone()).len(), 5);
        assert_eq!(draws(SamplingParams { top_k: 2, ..hot.clone() }), [1, 4].into());
        assert_eq!(draws(SamplingParams { top_p: 0.5, ..hot.clone() }), [1, 4].into());
        assert_eq!(draws(SamplingParams { min_p: 0.3, ..hot.clone() }), [1, 2, 4].into());
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        for params in [
            SamplingParams { temperature: -1.0, ..Default::default() },
            SamplingParams { temperature: f32::NAN, ..Default::default() },
            SamplingParams { top_p: 0.0, ..Default::default() },
            SamplingParams { min_p: 1.5, ..Default::default() },
            SamplingParams { repetition_penalty: 0.0, ..Default::default() },
        ] {
            assert!(Sampler::new(params).is_err());
        }
    }

    #[test]
    fn logprobs_normalise_and_rank() {
        let lp = log_softmax(&LOGITS);
        let total: f32 = lp.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
        let top = top_logprobs(&lp, 2);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 4]);
    }
}
