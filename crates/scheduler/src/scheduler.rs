//! The scheduler state machine: requests in through [`Scheduler::submit`], a [`StepPlan`]
//! out of [`Scheduler::plan`] for every model step, sampled tokens back through
//! [`Scheduler::complete`], finished sequences out of [`Scheduler::take_finished`].

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod static_batch;

use crate::admission::{Admission, Applicant};
use crate::blocks::{BlockManager, SequenceBlocks, group_hash, prefix_hashes};
use crate::policy::{Bandit, Load, Shape, StepShape};
use crate::queue::{Queued, WaitingQueue};
use crate::plan::{DecodeItem, FinishReason, FinishedSequence, ForkItem, Metrics, PrefillChunk, StepPlan, StepResult};
use crate::request::{IdMap, deadline};
use crate::{
    BatchPolicy, Duration, LoadLevel, Priority, Rejection, RejectionReason, Request, SchedulerConfig, SeqId, TenantId,
    Time,
};

/// A request waiting for its turn, new or preempted. Boxed in the queue, so that a waiting
/// request costs the scheduler little more than the request itself.
#[derive(Debug)]
struct Waiting {
    id: SeqId,
    /// The first sequence of the request this one belongs to (choices of one request are
    /// admitted together and count as one waiting request).
    request_of: SeqId,
    arrival: Time,
    /// The request; a preempted one's prompt is followed by what it generated so far.
    request: Request,
    progress: Option<Box<Progress>>,
    /// Another choice of the same request with the same prompt, which this one forks from
    /// once that prompt is computed.
    fork_of: Option<SeqId>,
}

/// What a preempted sequence had achieved, kept while it waits to recompute.
#[derive(Debug)]
struct Progress {
    prompt_len: usize,
    scheduled: Option<Time>,
    first_token: Option<Time>,
    preemptions: u32,
}

impl Waiting {
    fn prompt_len(&self) -> usize {
        self.progress.as_ref().map_or(self.request.prompt.len(), |p| p.prompt_len)
    }
}

impl Queued for Box<Waiting> {
    fn id(&self) -> SeqId {
        self.id
    }
    fn priority(&self) -> Priority {
        self.request.priority
    }
    fn max_priority(&self) -> Priority {
        self.request.max_priority
    }
    fn tenant(&self) -> TenantId {
        self.request.tenant
    }
    fn arrival(&self) -> Time {
        self.arrival
    }
    /// A preempted sequence has started: it met its deadline.
    fn deadline(&self) -> Option<Time> {
        if self.progress.is_some() { None } else { deadline(&self.request, self.arrival) }
    }
    fn cost(&self) -> usize {
        self.prompt_len() + self.request.max_new_tokens
    }
}

/// A running sequence.
#[derive(Debug)]
struct Sequence {
    /// The request, its prompt moved into `tokens`.
    request: Request,
    request_of: SeqId,
    prompt_len: usize,
    /// Prompt followed by the generated tokens.
    tokens: Vec<u32>,
    /// Positions whose keys and values are computed.
    computed: usize,
    blocks: SequenceBlocks,
    /// Leading full blocks registered in the prefix cache.
    registered: usize,
    /// Hash of the prompt's first cacheable block, while the prompt is being computed:
    /// waiting prompts that start with the same block wait for it (see `admission_waits`).
    prefilling_first_block: Option<u64>,
    arrival: Time,
    scheduled: Option<Time>,
    first_token: Option<Time>,
    preemptions: u32,
    /// Failed steps that ran this sequence since its last successful one.
    failed_attempts: u32,
    /// Tokens proposed to follow the next decode ([`Scheduler::propose`]); once planned,
    /// the part that runs, until the step lands.
    draft: Vec<u32>,
    /// Its level in the queue when it was admitted (after aging and bonuses): the level of
    /// its prompt's chunks (see `plan_iteration`).
    level: usize,
}

impl Sequence {
    /// The running form of `waiting`; `now` is when it starts running (`None`: it ends
    /// without running).
    fn start(mut waiting: Waiting, now: Option<Time>) -> Self {
        let progress = waiting.progress.map_or(
            Progress { prompt_len: waiting.request.prompt.len(), scheduled: None, first_token: None, preemptions: 0 },
            |p| *p,
        );
        let level = waiting.request.priority.level();
        Sequence {
            tokens: std::mem::take(&mut waiting.request.prompt),
            request: waiting.request,
            request_of: waiting.request_of,
            prompt_len: progress.prompt_len,
            computed: 0,
            blocks: SequenceBlocks::default(),
            registered: 0,
            prefilling_first_block: None,
            arrival: waiting.arrival,
            scheduled: progress.scheduled.or(now),
            first_token: progress.first_token,
            preemptions: progress.preemptions,
            failed_attempts: 0,
            draft: Vec::new(),
            level,
        }
    }

    /// Back to waiting, keeping the tokens so far; the blocks go back to the pool.
    fn into_waiting(mut self, id: SeqId) -> Waiting {
        self.request.prompt = self.tokens;
        let progress = Progress {
            prompt_len: self.prompt_len,
            scheduled: self.scheduled,
            first_token: self.first_token,
            preemptions: self.preemptions,
        };
        // A preempted sequence recomputes its own tokens: it forks from nobody.
        let progress = Some(Box::new(progress));
        Waiting { id, request_of: self.request_of, arrival: self.arrival, request: self.request, progress, fork_of: None }
    }

    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Its next step decodes one generated token (a draft can follow it).
    fn is_decoding(&self) -> bool {
        self.generated() > 0 && self.computed + 1 == self.tokens.len()
    }

    fn into_finished(self, id: SeqId, reason: FinishReason, now: Time) -> FinishedSequence {
        FinishedSequence {
            id,
            reason,
            tenant: self.request.tenant,
            priority: self.request.priority,
            prompt_tokens: self.prompt_len,
            generated: self.tokens[self.prompt_len..].to_vec(),
            arrival: self.arrival,
            scheduled: self.scheduled,
            first_token: self.first_token,
            finished: now,
            deadline: deadline(&self.request, self.arrival),
            preemptions: self.preemptions,
        }
        // Dropping the sequence drops its block tables: blocks go back to the pool or the cache.
    }
}

/// What the in-flight step scheduled, to apply or roll back at completion.
#[derive(Debug, Default)]
struct InFlight {
    step: u64,
    planned_at: Time,
    /// (sequence, positions run, samples)
    work: Vec<(SeqId, usize, bool)>,
    /// The step ran under the bandit's current limit with more work waiting than it ran,
    /// so its throughput says something about that limit.
    limit_binding: bool,
    /// The choices forking this step ([`StepPlan::forks`]), out of the queue until the step
    /// lands: they start running if it succeeds and wait again if it does not.
    forks: Vec<Box<Waiting>>,
}

/// See the crate documentation.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    blocks: BlockManager,
    queue: WaitingQueue<Box<Waiting>>,
    /// Sequences waiting per request (keyed by its first sequence): the queue's length in
    /// requests.
    waiting_requests: IdMap<SeqId, usize>,
    /// Requests with a sequence started and others still waiting: those met their deadline.
    started_requests: IdMap<SeqId, ()>,
    /// The running sequences.
    seqs: IdMap<SeqId, Sequence>,
    /// Running sequences, most important first: `(priority, id)` (ids grow with arrival).
    running: Vec<(Priority, SeqId)>,
    next_id: u64,
    step: u64,
    in_flight: Option<InFlight>,
    /// Static policies: the batch in progress admits nobody until it drains.
    batch_closed: bool,
    admission: Admission,
    bandit: Option<Bandit>,
    /// Recent step time, seconds (an exponential average of planned-to-completed).
    step_seconds: f64,
    rng: ChaCha8Rng,
    finished: Vec<FinishedSequence>,
    preemptions: u64,
    tenant_tokens: BTreeMap<u32, u64>,
    failed_steps: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        let bandit = match config.policy {
            BatchPolicy::Bandit { min_running, max_running, .. } => Some(Bandit::new(min_running, max_running)),
            BatchPolicy::Fixed { .. }
            | BatchPolicy::Bucketed { .. }
            | BatchPolicy::MemoryAware { .. }
            | BatchPolicy::Continuous { .. }
            | BatchPolicy::Adaptive { .. } => None,
        };
        Self {
            blocks: BlockManager::new(config.num_blocks, config.block_size),
            queue: WaitingQueue::new(config.queue.clone()),
            waiting_requests: IdMap::default(),
            started_requests: IdMap::default(),
            seqs: IdMap::default(),
            running: Vec::new(),
            next_id: 0,
            step: 0,
            in_flight: None,
            batch_closed: false,
            admission: Admission::new(&config),
            bandit,
            step_seconds: 0.0,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            finished: Vec::new(),
            preemptions: 0,
            tenant_tokens: BTreeMap::new(),
            failed_steps: 0,
            config,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn blocks(&self) -> &BlockManager {
        &self.blocks
    }

    /// No sequence waiting or running.
    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty() && self.queue.is_empty()
    }

    /// Waiting sequences (each choice of a request is one; choices forking in the step in
    /// flight count until it lands).
    pub fn num_waiting(&self) -> usize {
        self.queue.len() + self.in_flight.as_ref().map_or(0, |f| f.forks.len())
    }

    /// Requests with a sequence waiting: what `max_waiting` limits.
    pub fn num_waiting_requests(&self) -> usize {
        self.waiting_requests.len()
    }

    fn enqueue(&mut self, waiting: Box<Waiting>) {
        *self.waiting_requests.entry(waiting.request_of).or_default() += 1;
        self.queue.push(waiting);
    }

    fn dequeue(&mut self, id: SeqId, admitted: bool) -> Option<Box<Waiting>> {
        let waiting = self.queue.remove(id, admitted)?;
        if let std::collections::hash_map::Entry::Occupied(mut count) = self.waiting_requests.entry(waiting.request_of) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
                self.started_requests.remove(&waiting.request_of);
            } else if admitted {
                self.started_requests.insert(waiting.request_of, ());
            }
        }
        Some(waiting)
    }

    /// Sequences the running set can still take under the policy's cap (static policies
    /// form their batches themselves: none).
    fn free_running_slots(&self) -> usize {
        // Static policies admit only into a new batch: no slot is free while one runs.
        self.config.policy.max_running().map_or(0, |max| max.saturating_sub(self.running.len()))
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    fn reject(&mut self, reason: RejectionReason, message: String, retry_after: Option<Duration>) -> Rejection {
        self.admission.reject(reason, message, retry_after)
    }

    /// The load level now, from the backlog (waiting requests beyond what the running set
    /// can take at the next step), KV pressure and the oldest wait. KV pressure counts only
    /// under contention (work waiting, or too few free blocks to start another request): a
    /// busy cache with an empty queue is no reason to shed.
    pub fn load_level(&self, now: Time) -> LoadLevel {
        let backlog = self.num_waiting_requests().saturating_sub(self.free_running_slots());
        let queue_frac = backlog as f64 / self.config.max_waiting.max(1) as f64;
        let contended = !self.queue.is_empty() || self.blocks.available() <= self.config.watermark_blocks;
        let kv_frac = if contended { self.blocks.in_use() as f64 / self.config.num_blocks.max(1) as f64 } else { 0.0 };
        self.admission.level(queue_frac, kv_frac, self.oldest_wait(now))
    }

    /// How long the oldest waiting request has waited (zero with nothing waiting).
    fn oldest_wait(&self, now: Time) -> Duration {
        self.queue.oldest_arrival().map_or(Duration::ZERO, |a| now.since(a))
    }

    /// Admits a request to the waiting queue, or says why not.
    pub fn submit(&mut self, request: Request, now: Time) -> Result<SeqId, Rejection> {
        Ok(self.submit_all(vec![request], now)?[0])
    }

    /// Whether a request would be admitted now, short of its tenant's rate limits (which
    /// [`submit_all`](Self::submit_all) takes): for work worth doing only if it can run,
    /// such as compiling its grammar. A refusal counts.
    pub fn check_admission(&mut self, applicant: Applicant, now: Time) -> Result<(), Rejection> {
        let level = self.load_level(now);
        let waiting = self.num_waiting_requests();
        self.admission.check(applicant, level, waiting, now)
    }

    /// Admits the sequences of one request (the choices of `n`, the prompts of a list)
    /// together, or none of them: they count as one request against `max_waiting` and the
    /// tenant's request rate, and as the sum of their tokens against its token rate.
    pub fn submit_all(&mut self, requests: Vec<Request>, now: Time) -> Result<Vec<SeqId>, Rejection> {
        if requests.is_empty() {
            return Err(self.reject(RejectionReason::TooLong, "the request has no prompt".into(), None));
        }
        for request in &requests {
            self.check_fits(request)?;
        }
        let applicant = Applicant {
            tenant: requests[0].tenant,
            priority: requests.iter().map(|r| r.priority).max().expect("not empty"),
            tokens: requests.iter().map(Request::max_len).sum(),
        };
        let level = self.load_level(now);
        let waiting = self.num_waiting_requests();
        self.admission.admit(applicant, level, waiting, now)?;
        let mut requests = requests;
        for request in &mut requests {
            request.max_wait = request.max_wait.or_else(|| self.config.default_deadlines.get(&request.priority).copied());
        }

        let request_of = SeqId(self.next_id);
        let first_prompt = requests[0].prompt.clone();
        let ids: Vec<SeqId> = requests
            .into_iter()
            .map(|request| {
                let id = SeqId(self.next_id);
                self.next_id += 1;
                // The other choices of one prompt fork from the first once it is computed;
                // prompt-only requests (embeddings of one text twice) sample nothing to fork at.
                let forks = id != request_of && request.prompt == first_prompt && request.max_new_tokens > 0;
                let fork_of = forks.then_some(request_of);
                self.enqueue(Box::new(Waiting { id, request_of, arrival: now, request, progress: None, fork_of }));
                id
            })
            .collect();
        Ok(ids)
    }

    /// Refuses a request that can never run: empty, longer than a sequence may be, or
    /// needing more blocks than the pool has.
    fn check_fits(&mut self, request: &Request) -> Result<(), Rejection> {
        if request.prompt.is_empty() {
            return Err(self.reject(RejectionReason::TooLong, "the prompt is empty".into(), None));
        }
        let max_len = request.max_len();
        if max_len > self.config.max_seq_len {
            let message = format!(
                "prompt of {} tokens plus {} new tokens exceeds the limit of {} tokens",
                request.prompt.len(),
                request.max_new_tokens,
                self.config.max_seq_len
            );
            return Err(self.reject(RejectionReason::TooLong, message, None));
        }
        let blocks_needed = self.config.blocks_for(max_len);
        if blocks_needed + self.config.watermark_blocks > self.config.num_blocks {
            let message = format!("{max_len} tokens need {blocks_needed} KV blocks; the pool has {}", self.config.num_blocks);
            return Err(self.reject(RejectionReason::TooLong, message, None));
        }
        Ok(())
    }

    /// Ends a sequence now, waiting or running; its blocks are freed. Unknown ids are ignored.
    pub fn abort(&mut self, id: SeqId, now: Time) -> bool {
        let forking = self.in_flight.as_mut().and_then(|f| Some(f.forks.remove(f.forks.iter().position(|w| w.id == id)?)));
        if let Some(waiting) = forking.or_else(|| self.dequeue(id, false)) {
            self.finished.push(Sequence::start(*waiting, None).into_finished(id, FinishReason::Cancelled, now));
            return true;
        }
        self.finish(id, FinishReason::Cancelled, now)
    }

    /// Ends a running sequence as failed (its output cannot be trusted); its blocks are
    /// freed. False if `id` is not running.
    pub fn fail(&mut self, id: SeqId, now: Time) -> bool {
        self.finish(id, FinishReason::Failed, now)
    }

    /// Ends a running sequence; false if `id` is not running.
    fn finish(&mut self, id: SeqId, reason: FinishReason, now: Time) -> bool {
        let Some(seq) = self.seqs.remove(&id) else { return false };
        self.running.retain(|r| r.1 != id);
        self.finished.push(seq.into_finished(id, reason, now));
        true
    }

    /// Ends the waiting sequences whose deadline to start has passed, unless a sequence of
    /// their request (another choice, another prompt of a list) has started.
    fn expire(&mut self, now: Time) {
        for id in self.queue.expired(now) {
            let request_of = self.queue.get(id).expect("expired sequences are waiting").request_of;
            if self.started_requests.contains_key(&request_of) {
                self.queue.clear_deadline(id);
                continue;
            }
            let waiting = self.dequeue(id, false).expect("expired sequences are waiting");
            self.finished.push(Sequence::start(*waiting, None).into_finished(id, FinishReason::Deadline, now));
        }
    }

    /// Sequences that ended since the last call.
    pub fn take_finished(&mut self) -> Vec<FinishedSequence> {
        std::mem::take(&mut self.finished)
    }

    /// Running sequences whose next step is a decode, with their tokens (prompt and
    /// generated): those a draft can be proposed for.
    pub fn decoding(&self) -> impl Iterator<Item = (SeqId, &[u32])> + '_ {
        self.running.iter().filter_map(|&(_, id)| {
            let seq = &self.seqs[&id];
            seq.is_decoding().then_some((id, &seq.tokens[..]))
        })
    }

    /// Proposes tokens to follow `id`'s next decode (speculative decoding): the next plan
    /// runs them with it where the token budget and the block pool have room, and the
    /// engine reports those it accepted ([`StepResult::accepted`]). A proposer that drafts
    /// once the step's blocks are known (a draft model) proposes placeholders and replaces
    /// them in the plan. Cut to what the request may still generate; ignored while a step
    /// is in flight or when `id` is not decoding. Replaces an earlier proposal.
    pub fn propose(&mut self, id: SeqId, mut draft: Vec<u32>) {
        if self.in_flight.is_some() {
            return;
        }
        let Some(seq) = self.seqs.get_mut(&id).filter(|s| s.is_decoding()) else { return };
        draft.truncate(seq.request.max_new_tokens.saturating_sub(seq.generated() + 1));
        seq.draft = draft;
    }

    /// Takes a running sequence's blocks back; it waits again and recomputes when resumed.
    fn preempt(&mut self, id: SeqId, plan: &mut StepPlan) {
        self.running.retain(|r| r.1 != id);
        let mut seq = self.seqs.remove(&id).expect("running sequence exists");
        seq.preemptions += 1;
        self.enqueue(Box::new(seq.into_waiting(id)));
        self.preemptions += 1;
        plan.preempted.push(id);
    }

    /// Plans the next step. Returns an empty plan while a step is in flight or when there is
    /// nothing to run.
    pub fn plan(&mut self, now: Time) -> StepPlan {
        self.expire(now);
        let mut plan = StepPlan { step: self.step, ..Default::default() };
        if self.in_flight.is_some() || !self.admission.steps_allowed(now) {
            return plan;
        }
        let mut work = Vec::new();
        let mut forks = Vec::new();
        let mut limit_binding = false;
        let load = Load { oldest_wait: self.oldest_wait(now), step_seconds: self.step_seconds };
        let policy = self.config.policy.clone();
        match policy.shape(load, self.bandit.as_ref().map(Bandit::limit)) {
            Shape::Step(shape) => {
                self.plan_iteration(now, shape, &mut plan, &mut work, &mut forks);
                // For the bandit: demand exceeded what ran (the limit, or memory under it,
                // held work back), and the set is not still shrinking from a larger limit.
                let limit = shape.max_running;
                limit_binding = self.running.len() <= limit && (self.running.len() == limit || !self.queue.is_empty());
            }
            Shape::Static { capacity, max_wait, token_budget, bucket_edges } => {
                if self.running.is_empty() {
                    self.batch_closed = false;
                }
                if !self.batch_closed {
                    self.form_static_batch(now, capacity, max_wait, token_budget, bucket_edges);
                }
                for id in self.running_by_importance() {
                    // Static batches reserve every member's length up front and decode
                    // without drafts.
                    let s = self.seqs.get_mut(&id).expect("running sequence exists");
                    s.draft.clear();
                    let n = s.tokens.len() - s.computed;
                    self.schedule(id, n, &mut plan, &mut work);
                }
            }
        }
        if !plan.is_empty() {
            self.in_flight = Some(InFlight { step: self.step, planned_at: now, work, limit_binding, forks });
            self.step += 1;
        }
        plan
    }

    /// Running sequences, most important first (priority, then arrival).
    fn running_by_importance(&self) -> Vec<SeqId> {
        self.running.iter().map(|r| r.1).collect()
    }

    fn add_running(&mut self, id: SeqId, seq: Sequence) {
        let key = (seq.request.priority, id);
        let at = self.running.partition_point(|r| *r < key);
        self.running.insert(at, key);
        self.seqs.insert(id, seq);
    }

    /// Grows `id`'s tables to hold positions up to `end` (its next positions from
    /// `computed`), letting windowed groups go of blocks no query sees any more.
    fn ensure(&mut self, id: SeqId, end: usize, plan: &mut StepPlan) -> bool {
        let seq = self.seqs.get_mut(&id).expect("sequence exists");
        seq.blocks.ensure(&self.blocks, &self.config.kv_groups, seq.computed, end).map(|copies| plan.copies.extend(copies)).is_ok()
    }

    fn schedule(&self, id: SeqId, n: usize, plan: &mut StepPlan, work: &mut Vec<(SeqId, usize, bool)>) {
        let seq = &self.seqs[&id];
        let start = seq.computed;
        // A prompt-only request (an embedding) ends with its prompt: nothing samples.
        let samples = start + n == seq.tokens.len() && seq.request.max_new_tokens > 0;
        if n == 1 && seq.generated() > 0 && samples {
            let (token, draft) = (seq.tokens[start], seq.draft.clone());
            plan.decode.push(DecodeItem { seq: id, position: start, token, draft, block_tables: seq.blocks.ids() });
        } else {
            plan.prefill.push(PrefillChunk {
                seq: id,
                start,
                tokens: seq.tokens[start..start + n].to_vec(),
                block_tables: seq.blocks.ids(),
                samples,
            });
        }
        work.push((id, n, samples));
    }

    /// Continuous batching: running sequences first (decodes, then unfinished prefills), then
    /// new ones from the queue, within the token budget and the block pool.
    fn plan_iteration(
        &mut self,
        now: Time,
        shape: StepShape,
        plan: &mut StepPlan,
        work: &mut Vec<(SeqId, usize, bool)>,
        forks: &mut Vec<Box<Waiting>>,
    ) {
        let mut budget = shape.max_batch_tokens;
        let mut order = self.running_by_importance();
        plan.decode.reserve(order.len());
        work.reserve(order.len());
        // Decodes first: they hold memory already and each costs one token.
        let mut prefilling = Vec::new();
        let mut i = 0;
        while i < order.len() && budget > 0 {
            let id = order[i];
            let seq = self.seqs.get_mut(&id).expect("running sequence exists");
            let pending = seq.tokens.len() - seq.computed;
            if pending != 1 {
                if pending > 1 {
                    prefilling.push(id);
                }
                i += 1;
                continue;
            }
            // A draft runs where the budget and the pool have room for it, else the decode
            // runs alone.
            seq.draft.truncate(budget - 1);
            let mut ensure = |end| seq.blocks.ensure(&self.blocks, &self.config.kv_groups, seq.computed, end);
            let mut grown = ensure(seq.tokens.len() + seq.draft.len());
            if grown.is_err() && !seq.draft.is_empty() {
                seq.draft.clear();
                grown = ensure(seq.tokens.len());
            }
            if let Ok(copies) = grown {
                plan.copies.extend(copies);
                budget -= 1 + seq.draft.len();
                // `schedule` in place, without looking the sequence up again (the hot path).
                if seq.generated() > 0 {
                    let (position, draft) = (seq.computed, seq.draft.clone());
                    let token = seq.tokens[position];
                    plan.decode.push(DecodeItem { seq: id, position, token, draft, block_tables: seq.blocks.ids() });
                    work.push((id, 1, true));
                } else {
                    self.schedule(id, 1, plan, work);
                }
                i += 1;
                continue;
            }
            // Out of blocks: preempt the least important sequence not yet scheduled.
            let victim = order.pop().expect("order holds at least `id`");
            self.preempt(victim, plan);
            if victim == id {
                break;
            }
        }
        self.plan_prompts(now, prefilling, budget, shape, plan, work, forks);
        if work.is_empty() && !self.running.is_empty() {
            // Every running sequence is a prompt stuck waiting for blocks the others hold
            // (and nobody could start): let the least important go (it recomputes later), so
            // that the rest can go on next step.
            let (_, victim) = *self.running.last().expect("running is not empty");
            self.preempt(victim, plan);
        }
    }

    /// The step's prompt chunks: unfinished prefills of running sequences (preemption only
    /// took sequences not yet looked at, so these are all still running) and new sequences
    /// from the queue, best level first, within the budget. A step's prompts are of one
    /// level: a prompt never waits on the prompts of less urgent requests in its step (on a
    /// device whose step time grows with its tokens, its first token would), and these run
    /// in the next step without it. Choices that fork from a prompt ending this step join.
    #[allow(clippy::too_many_arguments)]
    fn plan_prompts(
        &mut self,
        now: Time,
        mut prefilling: Vec<SeqId>,
        mut budget: usize,
        shape: StepShape,
        plan: &mut StepPlan,
        work: &mut Vec<(SeqId, usize, bool)>,
        forks: &mut Vec<Box<Waiting>>,
    ) {
        let StepShape { max_running, chunk_size, .. } = shape;
        prefilling.sort_by_key(|id| (self.seqs[id].level, *id));
        let mut prefilling = prefilling.into_iter().peekable();
        let mut step_level = None;
        // Cleared once the queue's head cannot start: the running prompts still go on.
        let mut admitting = true;
        while budget > 0 {
            let queued = (admitting && self.running.len() + forks.len() < max_running)
                .then(|| self.queue.peek(now).map(|w| (w.id, self.queue.effective_level(w, now))))
                .flatten();
            if let Some((id, _)) = queued
                && let Some(from) = self.fork_source(id, work)
            {
                plan.forks.push(ForkItem { seq: id, from });
                forks.push(self.dequeue(id, true).expect("peeked"));
                continue;
            }
            let running = prefilling.peek().map(|id| (*id, self.seqs[id].level));
            let (id, level, is_running) = match (running, queued) {
                (Some((id, level)), Some((_, queued_level))) if level <= queued_level => (id, level, true),
                (_, Some((id, level))) => (id, level, false),
                (Some((id, level)), None) => (id, level, true),
                (None, None) => break,
            };
            if step_level.is_some_and(|best| level > best) {
                break;
            }
            if is_running {
                prefilling.next();
                let s = &self.seqs[&id];
                let n = (s.tokens.len() - s.computed).min(budget).min(chunk_size);
                let end = s.computed + n;
                if self.ensure(id, end, plan) {
                    self.schedule(id, n, plan, work);
                    budget -= n;
                    step_level.get_or_insert(level);
                }
                continue;
            }
            // A sequence preempted for memory in this step does not come straight back.
            if plan.preempted.contains(&id) || self.admission_waits(id) || !self.admit(id, budget.min(chunk_size), now) {
                admitting = false;
                continue;
            }
            let s = &self.seqs[&id];
            let n = (s.tokens.len() - s.computed).min(budget).min(chunk_size);
            self.schedule(id, n, plan, work);
            budget -= n;
            step_level.get_or_insert(level);
        }
    }

    /// The hash of the first block of `tokens` that the prefix cache may serve, if any.
    fn first_cacheable_block(&self, tokens: &[u32], salt: u64) -> Option<u64> {
        let bs = self.config.block_size;
        // The last token is always computed: its logits give the next token.
        (self.config.prefix_caching && tokens.len() > bs).then(|| prefix_hashes(&tokens[..bs], bs, salt)[0])
    }

    /// Whether sequence `id` is running (not waiting, not finished).
    pub fn is_running(&self, id: SeqId) -> bool {
        self.seqs.contains_key(&id)
    }

    /// True if the waiting sequence `id` starts with a block that a running prompt is
    /// computing right now: it waits until those blocks are in the prefix cache instead of
    /// computing them a second time. This is how the `n` choices of one request (and
    /// requests sharing a system prompt) share their prompt's blocks. A running prompt
    /// always progresses or is preempted, so the wait ends.
    fn admission_waits(&self, id: SeqId) -> bool {
        let waiting = self.queue.get(id).expect("queued sequence exists");
        // A choice waits for the choice it forks from until that one's prompt is computed
        // (it waits in the queue ahead of this one, or its prompt is running).
        if let Some(from) = waiting.fork_of
            && (self.queue.contains(from) || self.seqs.get(&from).is_some_and(|s| s.generated() == 0))
        {
            return true;
        }
        let request = &waiting.request;
        if !request.use_prefix_cache {
            return false;
        }
        let Some(first) = self.first_cacheable_block(&request.prompt, request.cache_salt) else { return false };
        self.running.iter().any(|(_, running)| self.seqs[running].prefilling_first_block == Some(first))
    }

    /// The sequence the waiting choice `id` forks from this step: the one it was submitted
    /// with, whose prompt's last chunk is in this step's `work`.
    fn fork_source(&self, id: SeqId, work: &[(SeqId, usize, bool)]) -> Option<SeqId> {
        let from = self.queue.get(id)?.fork_of?;
        let ends_prompt = work.iter().any(|&(seq, _, samples)| seq == from && samples);
        (ends_prompt && self.seqs.get(&from)?.generated() == 0).then_some(from)
    }

    /// Takes a waiting sequence into the running set with blocks for its first `chunk`
    /// tokens (after prefix-cache hits); false if the pool cannot hold that and the watermark.
    fn admit(&mut self, id: SeqId, chunk: usize, now: Time) -> bool {
        let bs = self.config.block_size;
        let waiting = self.queue.get(id).expect("queued sequence exists");
        let tokens = &waiting.request.prompt;
        let groups = &self.config.kv_groups;
        let mut blocks = SequenceBlocks::new(groups.len());
        if self.config.prefix_caching && waiting.request.use_prefix_cache {
            // The last token is always computed: its logits give the next token.
            let cacheable = (tokens.len() - 1) / bs * bs;
            let hashes = prefix_hashes(&tokens[..cacheable], bs, waiting.request.cache_salt);
            blocks = SequenceBlocks::from_prefix(self.blocks.lookup_groups(&hashes, groups), bs);
        }
        let computed = blocks.len();
        let n = (tokens.len() - computed).min(chunk.max(1));
        let needed = blocks.blocks_needed(n, bs) + self.config.watermark_blocks;
        if needed > self.blocks.available() {
            return false;
        }
        blocks.ensure(&self.blocks, groups, computed, computed + n).expect("checked available");
        let level = self.queue.effective_level(waiting, now);
        let waiting = self.dequeue(id, true).expect("peeked");
        let mut seq = Sequence::start(*waiting, Some(now));
        seq.level = level;
        seq.prefilling_first_block = self.first_cacheable_block(&seq.tokens, seq.request.cache_salt).filter(|_| computed < seq.tokens.len() - 1);
        seq.blocks = blocks;
        seq.computed = computed;
        seq.registered = computed / bs;
        self.add_running(id, seq);
        true
    }

    /// Applies the engine's report on the step planned last.
    pub fn complete(&mut self, result: StepResult, now: Time) {
        let Some(flight) = self.in_flight.take() else { return };
        if flight.step != result.step {
            // A stale report: keep waiting for the right one.
            self.in_flight = Some(flight);
            return;
        }
        self.admission.record_step(result.success, now);
        if !result.success {
            // Nothing advances: the reserved blocks stay, and the next plan runs the same
            // tokens again, unless a sequence has failed too often.
            self.failed_steps += 1;
            for waiting in flight.forks {
                self.enqueue(waiting);
            }
            for (id, ..) in flight.work {
                let Some(seq) = self.seqs.get_mut(&id) else { continue };
                seq.draft.clear();
                seq.failed_attempts += 1;
                if seq.failed_attempts >= self.config.max_step_attempts {
                    self.finish(id, FinishReason::Failed, now);
                }
            }
            return;
        }
        let sampled: IdMap<SeqId, u32> = result.sampled.into_iter().collect();
        let mut accepted: IdMap<SeqId, Vec<u32>> = result.accepted.into_iter().collect();
        let mut generated = 0usize;
        let mut forks = flight.forks;
        let bs = self.config.block_size;
        for (id, n, samples) in flight.work {
            let Some(seq) = self.seqs.get_mut(&id) else { continue };
            seq.failed_attempts = 0;
            let draft = std::mem::take(&mut seq.draft);
            let token = sampled.get(&id).copied();
            if samples && token.is_none() {
                // The engine produced nothing for this sequence: run the same tokens again.
                seq.blocks.truncate(seq.computed, bs);
                continue;
            }
            let mut accepted = accepted.remove(&id).unwrap_or_default();
            accepted.truncate(draft.len());
            seq.computed += n + accepted.len();
            if seq.computed + 1 >= seq.tokens.len() {
                seq.prefilling_first_block = None;
            }
            *self.tenant_tokens.entry(seq.request.tenant.0).or_default() += (n + draft.len()) as u64;
            if let Some(token) = token.filter(|_| samples) {
                generated += 1 + accepted.len();
                seq.tokens.extend(accepted);
                seq.tokens.push(token);
                seq.first_token.get_or_insert(now);
            }
            if !draft.is_empty() {
                // The rejected draft's positions are free again (their keys and values
                // are overwritten by the tokens that take them).
                seq.blocks.truncate(seq.computed, bs);
            }
            self.register_full_blocks(id);
            if samples && self.seqs[&id].generated() == 1 {
                generated += self.start_forks(id, &mut forks, &sampled, now);
            }
            let seq = &self.seqs[&id];
            let prompt_only = seq.request.max_new_tokens == 0;
            if (prompt_only && seq.computed == seq.tokens.len()) || (!prompt_only && seq.generated() >= seq.request.max_new_tokens) {
                self.finish(id, FinishReason::Length, now);
            }
        }
        // Forks whose source produced no token this step wait again.
        for waiting in forks {
            self.enqueue(waiting);
        }
        for id in result.stopped {
            // Only running sequences have tokens the engine could stop on.
            if self.seqs.contains_key(&id) {
                self.finish(id, FinishReason::Stop, now);
            }
        }
        let seconds = now.since(flight.planned_at).as_secs_f64();
        self.step_seconds = if self.step_seconds == 0.0 { seconds } else { 0.8 * self.step_seconds + 0.2 * seconds };
        // Steps with nothing waiting, or with a set still shrinking after a switch to a
        // smaller limit, would credit the arm with throughput it did not cause.
        if let Some(bandit) = self.bandit.as_mut().filter(|_| flight.limit_binding) {
            bandit.observe(generated, seconds, &mut self.rng);
        }
    }

    /// Starts the choices forking from `from`, whose prompt just got its first token: each
    /// shares its blocks and takes its own sampled token. Returns how many started.
    fn start_forks(&mut self, from: SeqId, forks: &mut Vec<Box<Waiting>>, sampled: &IdMap<SeqId, u32>, now: Time) -> usize {
        let ready: Vec<Box<Waiting>> = forks.extract_if(.., |w| w.fork_of == Some(from) && sampled.contains_key(&w.id)).collect();
        let started = ready.len();
        for waiting in ready {
            let (id, token) = (waiting.id, sampled[&waiting.id]);
            let source = self.seqs.get_mut(&from).expect("the source is running");
            let (blocks, computed, registered) = (source.blocks.fork(), source.prompt_len, source.registered);
            let mut seq = Sequence::start(*waiting, Some(now));
            (seq.blocks, seq.computed, seq.registered) = (blocks, computed, registered);
            seq.tokens.push(token);
            seq.first_token = Some(now);
            let done = seq.generated() >= seq.request.max_new_tokens;
            self.add_running(id, seq);
            if done {
                self.finish(id, FinishReason::Length, now);
            }
        }
        started
    }

    /// Adds the sequence's newly completed full blocks to the prefix cache.
    fn register_full_blocks(&mut self, id: SeqId) {
        if !self.config.prefix_caching {
            return;
        }
        let bs = self.config.block_size;
        let seq = self.seqs.get_mut(&id).expect("sequence exists");
        let full = seq.computed / bs;
        if full <= seq.registered {
            return;
        }
        let hashes = prefix_hashes(&seq.tokens[..full * bs], bs, seq.request.cache_salt);
        for (g, table) in seq.blocks.tables().iter().enumerate() {
            // A windowed group's blocks may be gone already; the cache serves the rest.
            for (index, hash) in hashes.iter().enumerate().skip(seq.registered) {
                if let Some(block) = table.block(index) {
                    self.blocks.register(block, group_hash(*hash, g));
                }
            }
        }
        seq.registered = full;
    }

    /// Fraction of allocated KV slots of running sequences that hold no computed token.
    pub fn kv_waste(&self) -> f64 {
        let bs = self.config.block_size;
        let (used, allocated) = self.running.iter().fold((0usize, 0usize), |(u, a), (_, id)| {
            let s = &self.seqs[id];
            (u + s.blocks.used(s.computed, bs), a + s.blocks.capacity(bs))
        });
        if allocated == 0 { 0.0 } else { 1.0 - used as f64 / allocated as f64 }
    }

    pub fn metrics(&self, now: Time) -> Metrics {
        let in_use = self.blocks.in_use();
        Metrics {
            waiting_by_priority: self.queue.depth_by_priority(),
            waiting: self.queue.len(),
            waiting_requests: self.num_waiting_requests(),
            running: self.running.len(),
            kv_block_size: self.config.block_size,
            kv_blocks_total: self.config.num_blocks,
            kv_blocks_in_use: in_use,
            kv_usage: in_use as f64 / self.config.num_blocks.max(1) as f64,
            prefix_cache: self.blocks.stats(),
            preemptions: self.preemptions,
            rejections: self.admission.rejections().clone(),
            tenant_tokens: self.tenant_tokens.clone(),
            load_level: self.load_level(now),
            steps: self.step,
            failed_steps: self.failed_steps,
            breaker_open: self.admission.breaker_open(now),
        }
    }

    /// Panics if internal bookkeeping is inconsistent (for tests).
    pub fn check_invariants(&self) {
        self.blocks.check_invariants();
        assert!(self.running.is_sorted(), "running sequences are kept in importance order");
        assert!(self.started_requests.keys().all(|r| self.waiting_requests.contains_key(r)), "started requests still wait");
        for (_, id) in &self.running {
            let s = &self.seqs[id];
            assert!(!self.queue.contains(*id), "{id:?} is running and waiting");
            assert!(s.computed <= s.blocks.len() && s.computed <= s.tokens.len());
            assert_eq!(s.blocks.tables().len(), self.config.kv_groups.len(), "a table per KV group");
        }
        assert_eq!(self.running.len(), self.seqs.len(), "every running sequence is in the running order");
        assert_eq!(self.waiting_requests.values().sum::<usize>(), self.queue.len(), "waiting sequences counted by request");
    }
}
