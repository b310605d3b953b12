//! What the scheduler and an engine tell each other every step: the plan of a step
//! ([`StepPlan`]: prompt chunks, decodes, forks, block copies), the engine's result
//! ([`StepResult`]), the sequences that finished and the scheduler's metrics.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{LoadLevel, Priority, RejectionReason, SeqId, Time, TenantId};
use crate::blocks::{BlockCopy, BlockId, CacheStats};

/// A piece of a prompt to run this step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrefillChunk {
    pub seq: SeqId,
    /// Position of the chunk's first token.
    pub start: usize,
    pub tokens: Vec<u32>,
    /// The sequence's blocks, one table per KV group ([`SchedulerConfig::kv_groups`]):
    /// position `p` of group `g` lives in block `block_tables[g][p / block_size]`.
    pub block_tables: Vec<Vec<BlockId>>,
    /// Whether the chunk ends the prompt, so a token is sampled from its last position.
    pub samples: bool,
}

/// One generated token to run this step (its successor is sampled), and the draft tokens
/// proposed to follow it ([`Scheduler::propose`]), which run at the next positions: the
/// logits of every row verify the draft token after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecodeItem {
    pub seq: SeqId,
    pub position: usize,
    pub token: u32,
    pub draft: Vec<u32>,
    /// As [`PrefillChunk::block_tables`].
    pub block_tables: Vec<Vec<BlockId>>,
}

/// A choice of a request that starts from another choice's prompt this step: once that
/// prompt's last chunk runs, it shares every block of it (copy-on-write) and samples its
/// first token from the same logits row, so the prompt is computed once for all choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ForkItem {
    pub seq: SeqId,
    /// The sequence whose prompt ends this step.
    pub from: SeqId,
}

/// What the engine runs in one step.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StepPlan {
    pub step: u64,
    pub prefill: Vec<PrefillChunk>,
    pub decode: Vec<DecodeItem>,
    /// Sequences that sample from another's row this step (not in [`Self::sampling`]).
    pub forks: Vec<ForkItem>,
    /// Copies to perform before running (copy-on-write of shared blocks).
    pub copies: Vec<BlockCopy>,
    /// Sequences whose blocks were taken back; they recompute when resumed.
    pub preempted: Vec<SeqId>,
}

impl StepPlan {
    pub fn is_empty(&self) -> bool {
        self.prefill.is_empty() && self.decode.is_empty()
    }

    /// Tokens run this step.
    pub fn num_tokens(&self) -> usize {
        self.prefill.iter().map(|c| c.tokens.len()).sum::<usize>() + self.decode.iter().map(|d| 1 + d.draft.len()).sum::<usize>()
    }

    /// Draft tokens verified this step.
    pub fn num_draft_tokens(&self) -> usize {
        self.decode.iter().map(|d| d.draft.len()).sum()
    }

    /// Sequences that get a sampled token from this step.
    pub fn sampling(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.sampling_rows().map(|(seq, _)| seq)
    }

    /// Sequences that get a sampled token from this step, in the order of their logits
    /// rows, each with its draft: `1 + draft.len()` rows, the first verifying `draft[0]`.
    pub fn sampling_rows(&self) -> impl Iterator<Item = (SeqId, &[u32])> + '_ {
        let prompts = self.prefill.iter().filter(|c| c.samples).map(|c| (c.seq, &[][..]));
        prompts.chain(self.decode.iter().map(|d| (d.seq, &d.draft[..])))
    }

    /// KV positions attention reads this step (for cost models).
    pub fn kv_reads(&self) -> usize {
        // A decode's rows read its position and the draft positions before theirs.
        let rows = |d: &DecodeItem| (0..=d.draft.len()).map(|j| d.position + 1 + j).sum::<usize>();
        self.prefill.iter().map(|c| c.tokens.len() * (c.start + c.tokens.len())).sum::<usize>()
            + self.decode.iter().map(rows).sum::<usize>()
    }
}

/// What the engine reports after a step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepResult {
    pub step: u64,
    /// False if the step failed; its work is discarded and retried.
    pub success: bool,
    /// The token sampled for each sequence in [`StepPlan::sampling`] and [`StepPlan::forks`].
    pub sampled: Vec<(SeqId, u32)>,
    /// The leading tokens of a decode's draft that were accepted (none when absent): they
    /// join the sequence before its sampled token. The engine may have replaced the
    /// proposed tokens before running them (a draft model's, proposed as a length).
    pub accepted: Vec<(SeqId, Vec<u32>)>,
    /// Sequences the engine ended (an end-of-generation token, a stop string).
    pub stopped: Vec<SeqId>,
}

impl StepResult {
    /// A successful result sampling `sample(seq)` for every sequence that samples (forks
    /// included).
    pub fn sampled(plan: &StepPlan, mut sample: impl FnMut(SeqId) -> u32) -> Self {
        let sampling = plan.sampling().chain(plan.forks.iter().map(|f| f.seq));
        Self { step: plan.step, success: true, sampled: sampling.map(|s| (s, sample(s))).collect(), ..Default::default() }
    }

    pub fn failed(plan: &StepPlan) -> Self {
        Self { step: plan.step, success: false, ..Default::default() }
    }
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The engine stopped it.
    Stop,
    /// It generated `max_new_tokens`.
    Length,
    /// Aborted by the caller.
    Cancelled,
    /// Every step that ran it failed, [`SchedulerConfig::max_step_attempts`] times in a row
    /// (a lost device, memory exhausted): it ends instead of being retried forever.
    Failed,
    /// Its deadline passed while it waited to start (see [`Request::max_wait`]).
    Deadline,
}

/// A sequence that has ended, with its timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FinishedSequence {
    pub id: SeqId,
    pub reason: FinishReason,
    pub tenant: TenantId,
    pub priority: Priority,
    pub prompt_tokens: usize,
    pub generated: Vec<u32>,
    pub arrival: Time,
    /// When it first joined the running set (`None`: it never started).
    pub scheduled: Option<Time>,
    pub first_token: Option<Time>,
    pub finished: Time,
    pub deadline: Option<Time>,
    pub preemptions: u32,
}

/// A snapshot of the scheduler's state and counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Metrics {
    pub waiting_by_priority: [usize; 5],
    /// Waiting sequences (each choice of a request is one).
    pub waiting: usize,
    /// Requests with a sequence waiting.
    pub waiting_requests: usize,
    pub running: usize,
    /// Token slots per KV block.
    pub kv_block_size: usize,
    pub kv_blocks_total: usize,
    /// Blocks held by live sequences.
    pub kv_blocks_in_use: usize,
    pub kv_usage: f64,
    pub prefix_cache: CacheStats,
    pub preemptions: u64,
    pub rejections: BTreeMap<RejectionReason, u64>,
    /// Tokens computed (prompt and generated) per tenant.
    pub tenant_tokens: BTreeMap<u32, u64>,
    pub load_level: LoadLevel,
    pub steps: u64,
    pub failed_steps: u64,
    /// The circuit breaker refuses new work after failed steps.
    pub breaker_open: bool,
}
