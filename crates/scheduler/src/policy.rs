//! Batch formation policies. All are driven by the same [`Scheduler::plan`] /
//! [`Scheduler::complete`] loop; they differ in when requests join a batch and how much KV
//! memory they reserve.
//!
//! - **Static** policies form a batch, run it until every member finishes, and only then
//!   admit more. They reserve KV memory for each member's whole `prompt + max_new_tokens`
//!   up front, as engines without paging must: [`BatchPolicy::Fixed`] (a fixed batch size,
//!   the baseline), [`BatchPolicy::Bucketed`] (members of similar prompt length, so padding
//!   wastes less), [`BatchPolicy::MemoryAware`] (as many as a token budget and the free
//!   blocks allow).
//! - **Iteration-level** policies let sequences join and leave at every step and reserve
//!   blocks only as tokens are written: [`BatchPolicy::Continuous`] (chunked prefill mixed
//!   with decodes under a per-step token budget), [`BatchPolicy::Adaptive`] (the same, with
//!   the step's token budget and prompt chunk sized from the load and the measured step
//!   time) and [`BatchPolicy::Bandit`] (the same, with the number of running sequences
//!   learned by a Thompson-sampling bandit from observed step throughput).
//!
//! A server names its policy ([`PolicyName`]: the six and two presets of continuous
//! batching) and sets some of its parameters; [`BatchPolicy::named`] holds every name's
//! defaults, and the serde form of [`BatchPolicy`] (`policy = "fixed"`, `batch_size = 8`,
//! `max_wait_ms = 50`) is what a config file's `[scheduler]` holds, unknown parameters refused.
//!
//! Every policy answers the same question through [`BatchPolicy::shape`]: a
//! [`Shape::Static`] batch or an iteration-level [`StepShape`] for the next step.
//!
//! [`Scheduler::plan`]: crate::Scheduler::plan
//! [`Scheduler::complete`]: crate::Scheduler::complete

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Duration;
use crate::time::millis;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case", deny_unknown_fields)]
pub enum BatchPolicy {
    Fixed {
        batch_size: usize,
        /// Longest a partial batch waits for more members.
        #[serde(rename = "max_wait_ms", with = "millis")]
        max_wait: Duration,
    },
    Bucketed {
        batch_size: usize,
        #[serde(rename = "max_wait_ms", with = "millis")]
        max_wait: Duration,
        /// Upper prompt-length bounds of the buckets; longer prompts share the last bucket.
        bucket_edges: Vec<usize>,
    },
    MemoryAware {
        /// Most tokens (prompt + max new, summed over members) a batch reserves.
        max_batch_tokens: usize,
        #[serde(rename = "max_wait_ms", with = "millis")]
        max_wait: Duration,
    },
    Continuous {
        /// Most tokens (prefill chunks plus decodes) in one step.
        max_batch_tokens: usize,
        /// Most sequences running at once.
        max_running: usize,
        /// Largest prefill chunk of one sequence in one step.
        chunk_size: usize,
    },
    /// Continuous batching whose steps follow the load: with nothing waiting, small steps
    /// (`min_batch_tokens`, `min_chunk_size`), so running requests' decodes are never stuck
    /// behind a long prompt (latency-optimised); as requests wait longer, measured in recent
    /// step times, the steps grow to `max_batch_tokens` and `chunk_size`, fewer and fuller
    /// forward passes (throughput-optimised).
    Adaptive {
        min_batch_tokens: usize,
        max_batch_tokens: usize,
        min_chunk_size: usize,
        chunk_size: usize,
        max_running: usize,
    },
    /// Continuous batching with the running-set size (between `min_running` and
    /// `max_running`) learned by a Thompson-sampling bandit from step throughput.
    Bandit {
        max_batch_tokens: usize,
        min_running: usize,
        max_running: usize,
        chunk_size: usize,
    },
}

/// What a policy runs next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape<'a> {
    /// A static batch: formed once the previous one drained, whole prompts, every member's
    /// length reserved up front.
    Static {
        /// Most members.
        capacity: usize,
        /// Longest a partial batch waits for more members.
        max_wait: Duration,
        /// Most tokens (prompt + max new) the members reserve together.
        token_budget: usize,
        /// Members share a bucket of prompt lengths with these upper bounds.
        bucket_edges: Option<&'a [usize]>,
    },
    /// An iteration-level step.
    Step(StepShape),
}

/// The limits of one iteration-level step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepShape {
    pub max_batch_tokens: usize,
    pub max_running: usize,
    pub chunk_size: usize,
}

/// What the adaptive policy reads of the load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// How long the oldest waiting request has waited (zero with nothing waiting).
    pub oldest_wait: Duration,
    /// Recent step time (an exponential average), seconds.
    pub step_seconds: f64,
}

/// Steps the oldest request may wait before the adaptive policy runs full-size steps.
const ADAPTIVE_PATIENCE_STEPS: f64 = 4.0;

/// A policy by the name a server is configured with: the six policies and two presets of
/// continuous batching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    /// A batch of `batch_size` runs to its end before the next forms.
    Fixed,
    /// Like fixed, members of similar prompt length (`bucket_edges`).
    Bucketed,
    /// Static batches of as many requests as `max_batch_tokens` of prompt + max tokens.
    MemoryAware,
    /// Requests join and leave every step; prompts run in chunks next to decodes.
    #[default]
    Continuous,
    /// Continuous, with small steps while nothing waits and full-size ones as requests wait.
    Adaptive,
    /// Continuous, with the running set size learned from measured throughput.
    Bandit,
    /// Continuous with small steps ([`BatchPolicy::latency_optimised`]).
    Latency,
    /// Continuous with big steps ([`BatchPolicy::throughput_optimised`]).
    Throughput,
}

impl PolicyName {
    pub const ALL: [Self; 8] = [
        Self::Fixed,
        Self::Bucketed,
        Self::MemoryAware,
        Self::Continuous,
        Self::Adaptive,
        Self::Bandit,
        Self::Latency,
        Self::Throughput,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Fixed => "fixed",
            Self::Bucketed => "bucketed",
            Self::MemoryAware => "memory_aware",
            Self::Continuous => "continuous",
            Self::Adaptive => "adaptive",
            Self::Bandit => "bandit",
            Self::Latency => "latency",
            Self::Throughput => "throughput",
        }
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
            format!("unknown policy `{s}`; expected one of {}", names.join(", "))
        })
    }
}

/// The continuous policy's steps where nothing else is said.
impl Default for BatchPolicy {
    fn default() -> Self {
        Self::named(PolicyName::Continuous)
    }
}

impl BatchPolicy {
    /// A policy's defaults: what `policy = "<name>"` alone configures. The one place they
    /// are written.
    pub fn named(name: PolicyName) -> Self {
        let max_wait = Duration::from_millis(50);
        match name {
            PolicyName::Fixed => Self::Fixed { batch_size: 8, max_wait },
            PolicyName::Bucketed => Self::Bucketed { batch_size: 8, max_wait, bucket_edges: vec![128, 512, 2048] },
            PolicyName::MemoryAware => Self::MemoryAware { max_batch_tokens: 8192, max_wait },
            PolicyName::Continuous => Self::Continuous { max_batch_tokens: 512, max_running: 64, chunk_size: 256 },
            // Starts at the latency preset's steps; grows to 2048-token steps under backlog.
            PolicyName::Adaptive => {
                Self::Adaptive { min_batch_tokens: 512, max_batch_tokens: 2048, min_chunk_size: 128, chunk_size: 512, max_running: 64 }
            }
            PolicyName::Bandit => Self::Bandit { max_batch_tokens: 512, min_running: 1, max_running: 64, chunk_size: 256 },
            PolicyName::Latency => Self::latency_optimised(),
            PolicyName::Throughput => Self::throughput_optimised(),
        }
    }

    /// Checks the parameters' ranges; the message names the parameter as `{prefix}{name}`.
    pub fn check(&self, prefix: &str) -> Result<(), String> {
        let counts: &[(&str, usize)] = match self {
            Self::Fixed { batch_size, .. } | Self::Bucketed { batch_size, .. } => &[("batch_size", *batch_size)],
            Self::MemoryAware { max_batch_tokens, .. } => &[("max_batch_tokens", *max_batch_tokens)],
            Self::Continuous { max_batch_tokens, max_running, chunk_size } => {
                &[("max_batch_tokens", *max_batch_tokens), ("max_running", *max_running), ("chunk_size", *chunk_size)]
            }
            Self::Adaptive { min_batch_tokens, max_batch_tokens, min_chunk_size, chunk_size, max_running } => &[
                ("min_batch_tokens", *min_batch_tokens),
                ("max_batch_tokens", *max_batch_tokens),
                ("min_chunk_size", *min_chunk_size),
                ("chunk_size", *chunk_size),
                ("max_running", *max_running),
            ],
            Self::Bandit { max_batch_tokens, min_running, max_running, chunk_size } => &[
                ("max_batch_tokens", *max_batch_tokens),
                ("min_running", *min_running),
                ("max_running", *max_running),
                ("chunk_size", *chunk_size),
            ],
        };
        if let Some((name, _)) = counts.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{prefix}{name}` must be at least 1"));
        }
        let ordered: &[((&str, usize), (&str, usize))] = match self {
            Self::Adaptive { min_batch_tokens, max_batch_tokens, min_chunk_size, chunk_size, .. } => &[
                (("min_batch_tokens", *min_batch_tokens), ("max_batch_tokens", *max_batch_tokens)),
                (("min_chunk_size", *min_chunk_size), ("chunk_size", *chunk_size)),
            ],
            Self::Bandit { min_running, max_running, .. } => &[(("min_running", *min_running), ("max_running", *max_running))],
            _ => &[],
        };
        if let Some(((low, l), (high, h))) = ordered.iter().find(|((_, l), (_, h))| l > h) {
            return Err(format!("`{prefix}{low}` ({l}) is above `{prefix}{high}` ({h})"));
        }
        if let Self::Bucketed { bucket_edges, .. } = self
            && (bucket_edges.is_empty() || bucket_edges.windows(2).any(|w| w[0] >= w[1]))
        {
            return Err(format!("`{prefix}bucket_edges` must be a non-empty list of increasing lengths"));
        }
        Ok(())
    }

    /// What to run next under `load`; the bandit's current running-set limit is `bandit`.
    pub fn shape(&self, load: Load, bandit: Option<usize>) -> Shape<'_> {
        match self {
            Self::Fixed { batch_size, max_wait } => {
                Shape::Static { capacity: *batch_size, max_wait: *max_wait, token_budget: usize::MAX, bucket_edges: None }
            }
            Self::Bucketed { batch_size, max_wait, bucket_edges } => Shape::Static {
                capacity: *batch_size,
                max_wait: *max_wait,
                token_budget: usize::MAX,
                bucket_edges: Some(bucket_edges),
            },
            Self::MemoryAware { max_batch_tokens, max_wait } => {
                Shape::Static { capacity: usize::MAX, max_wait: *max_wait, token_budget: *max_batch_tokens, bucket_edges: None }
            }
            Self::Continuous { max_batch_tokens, max_running, chunk_size } => {
                Shape::Step(StepShape { max_batch_tokens: *max_batch_tokens, max_running: *max_running, chunk_size: *chunk_size })
            }
            Self::Adaptive { min_batch_tokens, max_batch_tokens, min_chunk_size, chunk_size, max_running } => {
                // 0 with nothing waiting, 1 once the oldest has waited a few steps.
                let patience = ADAPTIVE_PATIENCE_STEPS * load.step_seconds.max(1e-3);
                let pressure = (load.oldest_wait.as_secs_f64() / patience).clamp(0.0, 1.0);
                let between = |low: usize, high: usize| low.min(high) + ((high.saturating_sub(low)) as f64 * pressure).round() as usize;
                Shape::Step(StepShape {
                    max_batch_tokens: between(*min_batch_tokens, *max_batch_tokens),
                    max_running: *max_running,
                    chunk_size: between(*min_chunk_size, *chunk_size),
                })
            }
            Self::Bandit { max_batch_tokens, max_running, chunk_size, .. } => Shape::Step(StepShape {
                max_batch_tokens: *max_batch_tokens,
                max_running: bandit.unwrap_or(*max_running),
                chunk_size: *chunk_size,
            }),
        }
    }

    /// The largest prompt chunk a step may run; `None` for static policies (whole prompts).
    pub fn max_chunk(&self) -> Option<usize> {
        match self {
            Self::Fixed { .. } | Self::Bucketed { .. } | Self::MemoryAware { .. } => None,
            Self::Continuous { chunk_size, .. } | Self::Adaptive { chunk_size, .. } | Self::Bandit { chunk_size, .. } => {
                Some(*chunk_size)
            }
        }
    }

    /// Most sequences running at once; `None` for static policies (their batch size).
    pub fn max_running(&self) -> Option<usize> {
        match self {
            Self::Fixed { .. } | Self::Bucketed { .. } | Self::MemoryAware { .. } => None,
            Self::Continuous { max_running, .. } | Self::Adaptive { max_running, .. } | Self::Bandit { max_running, .. } => {
                Some(*max_running)
            }
        }
    }

    /// Small steps: decodes are never stuck behind long prefills.
    pub fn latency_optimised() -> Self {
        Self::Continuous { max_batch_tokens: 512, max_running: 64, chunk_size: 128 }
    }

    /// Big steps: fewer, fuller forward passes.
    pub fn throughput_optimised() -> Self {
        Self::Continuous { max_batch_tokens: 8192, max_running: 512, chunk_size: 4096 }
    }

    /// A short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Fixed { .. } => "fixed",
            Self::Bucketed { .. } => "bucketed",
            Self::MemoryAware { .. } => "memory_aware",
            Self::Continuous { .. } => "continuous",
            Self::Adaptive { .. } => "adaptive",
            Self::Bandit { .. } => "bandit",
        }
    }
}

/// Thompson sampling over candidate running-set sizes: each arm keeps a Gaussian posterior
/// of the throughput observed while it was in force; every epoch the arm with the best
/// sample wins.
#[derive(Debug, Clone)]
pub(crate) struct Bandit {
    pub arms: Vec<usize>,
    stats: Vec<(f64, f64, f64)>,
    pub current: usize,
    epoch_tokens: f64,
    epoch_time: f64,
    epoch_steps: u32,
}

/// Steps per bandit epoch.
const EPOCH_STEPS: u32 = 8;

impl Bandit {
    pub fn new(min: usize, max: usize) -> Self {
        let mut arms = Vec::new();
        let mut size = min.max(1);
        while size < max {
            arms.push(size);
            size *= 2;
        }
        arms.push(max.max(1));
        let n = arms.len();
        Self { arms, stats: vec![(0.0, 0.0, 0.0); n], current: n - 1, epoch_tokens: 0.0, epoch_time: 0.0, epoch_steps: 0 }
    }

    pub fn limit(&self) -> usize {
        self.arms[self.current]
    }

    /// Records a step; at the end of an epoch, updates the arm and draws the next.
    pub fn observe(&mut self, tokens: usize, seconds: f64, rng: &mut impl rand::Rng) {
        self.epoch_tokens += tokens as f64;
        self.epoch_time += seconds;
        self.epoch_steps += 1;
        if self.epoch_steps < EPOCH_STEPS {
            return;
        }
        let reward = if self.epoch_time > 0.0 { self.epoch_tokens / self.epoch_time } else { 0.0 };
        let (n, mean, m2) = &mut self.stats[self.current];
        *n += 1.0;
        let delta = reward - *mean;
        *mean += delta / *n;
        *m2 += delta * (reward - *mean);
        self.epoch_tokens = 0.0;
        self.epoch_time = 0.0;
        self.epoch_steps = 0;
        let scale = self.stats.iter().map(|s| s.1).fold(1.0, f64::max);
        let mut best = (f64::NEG_INFINITY, self.current);
        for (arm, &(n, mean, m2)) in self.stats.iter().enumerate() {
            // Unexplored arms draw from a wide prior so each gets tried.
            let (mu, sd) = if n < 1.0 { (scale, scale) } else { (mean, ((m2 / n.max(1.0)).sqrt() + 0.05 * scale) / n.sqrt()) };
            let sample = mu + sd * standard_normal(rng);
            if sample > best.0 {
                best = (sample, arm);
            }
        }
        self.current = best.1;
    }
}

fn standard_normal(rng: &mut impl rand::Rng) -> f64 {
    // Box-Muller.
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
