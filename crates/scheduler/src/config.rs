//! Every scheduler knob in one place, with defaults, loadable with serde.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{BatchPolicy, Duration, Priority};
use crate::admission::{BreakerConfig, LoadConfig, RateLimit};
use crate::queue::QueueConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// Token slots per KV block.
    pub block_size: usize,
    /// Blocks in the KV pool.
    pub num_blocks: usize,
    /// Most tokens (prompt + generated) one sequence may hold.
    pub max_seq_len: usize,
    pub policy: BatchPolicy,
    pub queue: QueueConfig,
    /// Most requests waiting; more are refused.
    pub max_waiting: usize,
    pub load: LoadConfig,
    /// Limits per tenant id; tenants not listed get `default_rate_limit`.
    pub rate_limits: BTreeMap<u32, RateLimit>,
    pub default_rate_limit: RateLimit,
    pub breaker: BreakerConfig,
    /// Failed steps in a row after which a sequence they ran ends with
    /// [`crate::FinishReason::Failed`] instead of being retried.
    pub max_step_attempts: u32,
    /// Reuse KV blocks of identical prompt prefixes.
    pub prefix_caching: bool,
    /// Blocks kept free when admitting new sequences, so running ones can keep decoding.
    pub watermark_blocks: usize,
    /// Seed for the policies that draw random numbers (the bandit).
    pub seed: u64,
    /// The groups of model layers whose KV blocks are tracked by a table of their own:
    /// `None` for layers that attend to the whole sequence, `Some(w)` for layers with a
    /// sliding window of `w` positions, whose blocks that fall wholly outside the window
    /// go back to the pool while the sequence runs. Every group takes blocks from the one
    /// pool. The engine sets this from the model.
    pub kv_groups: Vec<Option<usize>>,
    /// The deadline to start ([`Request::max_wait`](crate::Request::max_wait)) of requests
    /// that carry none, by priority; priorities not listed wait as long as it takes.
    pub default_deadlines: BTreeMap<Priority, Duration>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            num_blocks: 4096,
            max_seq_len: 8192,
            policy: BatchPolicy::default(),
            queue: QueueConfig::default(),
            max_waiting: 10_000,
            load: LoadConfig::default(),
            rate_limits: BTreeMap::new(),
            default_rate_limit: RateLimit::default(),
            breaker: BreakerConfig::default(),
            max_step_attempts: 3,
            prefix_caching: true,
            watermark_blocks: 4,
            seed: 0,
            kv_groups: vec![None],
            default_deadlines: BTreeMap::new(),
        }
    }
}

impl SchedulerConfig {
    /// Blocks one sequence of `len` positions holds at most, over every KV group: a
    /// windowed group holds its window and the prompt chunk being computed, under policies
    /// that grow sequences step by step (static ones reserve every position up front).
    pub fn blocks_for(&self, len: usize) -> usize {
        let bs = self.block_size;
        let chunk = self.policy.max_chunk();
        self.kv_groups
            .iter()
            .map(|window| match (window, chunk) {
                (Some(w), Some(chunk)) => len.div_ceil(bs).min(w.saturating_add(chunk).div_ceil(bs) + 1),
                _ => len.div_ceil(bs),
            })
            .sum()
    }
}
