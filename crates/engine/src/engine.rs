//! The engine: one step at a time, the scheduler decides and the model runs.

use std::collections::HashMap;

use std::sync::Arc;

use cinder_model::{
    LogitRows, LoraAdapter, Model, ModelConfig, ModelError, Outputs, PagedKvCache, PendingLogits, PooledPrompt, Pooling, RowAdapter, Sampler,
    SamplingParams, SeqChunk, Verdict, log_softmax, top_logprobs,
};
use cinder_scheduler::admission::Applicant;
use cinder_scheduler::{
    BatchPolicy, FinishReason, FinishedSequence, Metrics, Request, Scheduler, SchedulerConfig, SeqId, StepPlan, StepResult, Time,
};
use cinder_tokenizer::{StreamDecoder, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

use crate::adapters::{AdapterMetrics, Adapters};
use crate::draft::{DraftModel, DraftRequest};
use crate::speculative::{SequenceSpeculation, StepCost, ngram_proposal};
use crate::stop::StopMatcher;
mod warm_up;

use crate::{
    Constraint, Event, Finished, Generation, GenerationRequest, SpeculationConfig, SpeculativeMethod, SpeculativeUsage, SubmitError,
    TokenLogprob,
};

/// A request being served.
struct Active {
    sampler: Sampler,
    /// Prompt and generated tokens (the penalties look at both).
    history: Vec<u32>,
    decoder: StreamDecoder,
    stops: StopMatcher,
    stop_token_ids: Vec<u32>,
    ignore_eos: bool,
    logprobs: Option<usize>,
    constraint: Option<Constraint>,
    events: UnboundedSender<Event>,
    /// Set once the engine ended it (its reason beats the scheduler's length check).
    stopped: bool,
    /// Why the engine ended it as failed, when it did (non-finite logits).
    error: Option<String>,
    speculation: SequenceSpeculation,
    /// With a draft model: the draft's sampler (the request's parameters, its own random
    /// stream), and the distributions the step's draft tokens were drawn from.
    draft_sampler: Option<Sampler>,
    proposals: Vec<Vec<(u32, f32)>>,
    /// The LoRA adapter its rows run with.
    adapter: Option<RowAdapter>,
    /// An embedding request's pooled rows so far.
    embedding: Option<PooledPrompt>,
}

/// Counters since the engine started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineMetrics {
    pub scheduler: Metrics,
    pub prompt_tokens_total: u64,
    pub generation_tokens_total: u64,
    /// Speculative decoding: draft tokens verified, and those accepted.
    pub spec_draft_tokens_total: u64,
    pub spec_accepted_tokens_total: u64,
    /// LoRA adapters: the most that may be loaded, and each loaded one's counts.
    pub max_loras: usize,
    pub adapters: Vec<AdapterMetrics>,
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Nothing could run (no work, or waiting work that does not fit yet).
    Idle,
    /// Ran this many tokens and sampled this many.
    Ran { tokens: usize, sampled: usize },
}

/// A step whose work is queued on the device: see [`Engine::launch`].
#[must_use = "a launched step must be landed, or its sequences never advance"]
pub struct Launched {
    pub plan: StepPlan,
    pub logits: PendingLogits,
}

/// See the crate documentation.
pub struct Engine {
    model: Model,
    tokenizer: Tokenizer,
    cache: PagedKvCache,
    scheduler: Scheduler,
    active: HashMap<SeqId, Active>,
    prompt_tokens_total: u64,
    generation_tokens_total: u64,
    spec_draft_tokens_total: u64,
    spec_accepted_tokens_total: u64,
    speculation: SpeculationConfig,
    draft: Option<DraftModel>,
    /// Decode steps' times by size, which price a draft token.
    step_cost: StepCost,
    /// The step in flight, when it runs only decodes: its number, tokens and start.
    timing: Option<(u64, usize, Time)>,
    /// Why the last failed step failed: the error of requests that end as failed.
    last_step_error: String,
    adapters: Adapters,
    /// The step in flight's pooling chunks, in the order of their rows: each sequence and
    /// the chunk's positions.
    pooled_chunks: Vec<(SeqId, std::ops::Range<usize>)>,
}

impl Engine {
    /// An engine with a KV pool of `config.num_blocks` blocks of `config.block_size` slots.
    /// Sequences are capped at the model's context length; the scheduler tracks a block
    /// table per group of the model's layers ([`ModelConfig::kv_layout`]).
    pub fn new(model: Model, tokenizer: Tokenizer, mut config: SchedulerConfig) -> Result<Self, ModelError> {
        if tokenizer.vocab_size() > model.config().vocab_size {
            return Err(ModelError::InvalidConfig(format!(
                "the tokenizer has {} tokens, the model's embedding {}",
                tokenizer.vocab_size(),
                model.config().vocab_size
            )));
        }
        config.max_seq_len = config.max_seq_len.min(model.config().context_length);
        config.kv_groups = model.config().kv_layout().groups;
        let cache = model.new_paged_cache(config.num_blocks, config.block_size)?;
        Ok(Self {
            model,
            tokenizer,
            cache,
            scheduler: Scheduler::new(config),
            active: HashMap::new(),
            prompt_tokens_total: 0,
            generation_tokens_total: 0,
            spec_draft_tokens_total: 0,
            spec_accepted_tokens_total: 0,
            speculation: SpeculationConfig::default(),
            draft: None,
            step_cost: StepCost::default(),
            timing: None,
            last_step_error: String::new(),
            adapters: Adapters::default(),
            pooled_chunks: Vec::new(),
        })
    }

    /// Sets the speculation of requests that ask for none, and the batch above which
    /// nobody speculates.
    pub fn set_speculation(&mut self, speculation: SpeculationConfig) -> Result<(), String> {
        self.check_method(speculation.default.method)?;
        self.speculation = speculation;
        Ok(())
    }

    /// Loads the draft model of `"draft"` speculation: `model` with its `tokenizer`, which
    /// must be the target's vocabulary. Its KV cache takes as many blocks as the target's
    /// (size the pool for both with [`Engine::sized_config`]).
    pub fn set_draft_model(&mut self, mut model: Model, tokenizer: &Tokenizer) -> Result<(), String> {
        // The draft's cache stores what the target's does.
        model.set_kv_types(self.model.config().kv_types).map_err(|e| format!("the draft model's KV cache: {e}"))?;
        let layout = self.model.config().kv_layout();
        let blocks = self.scheduler.config();
        self.draft = Some(DraftModel::new(model, tokenizer, &self.tokenizer, &layout, blocks.num_blocks, blocks.block_size)?);
        Ok(())
    }

    fn check_method(&self, method: SpeculativeMethod) -> Result<(), String> {
        match method {
            SpeculativeMethod::Draft if self.draft.is_none() => {
                Err("speculative method \"draft\" needs a draft model, and none is loaded (--draft-model); use \"ngram\"".into())
            }
            _ => Ok(()),
        }
    }

    /// `base` with a KV pool of as many blocks as fit in `kv_bytes` of device memory, for the
    /// model and its draft model if any (and
    /// in per-layer buffers of at most `max_buffer_bytes`, what the device binds:
    /// [`cinder_model::max_binding_bytes`]), and sequences capped at what one request can
    /// hold in that pool (at most the context): layers with a sliding window hold only their
    /// window, so a windowed model's requests can be longer than the pool's blocks times
    /// their size.
    pub fn sized_config(
        model: &ModelConfig,
        draft: Option<&ModelConfig>,
        kv_bytes: usize,
        max_buffer_bytes: usize,
        base: SchedulerConfig,
    ) -> Result<SchedulerConfig, String> {
        let layout = model.kv_layout();
        let block_size = base.block_size.max(1);
        // A draft model's cache has as many blocks: each block is both models' bytes.
        let block_bytes = PagedKvCache::bytes_per_block(model, block_size)
            + draft.map_or(0, |d| DraftModel::bytes_per_block(d, block_size));
        let widest = [Some(model), draft].into_iter().flatten().map(|c| PagedKvCache::layer_buffer_bytes(c, 1, block_size)).max().unwrap_or(1);
        let num_blocks = (kv_bytes / block_bytes).min(max_buffer_bytes / widest.max(1));
        let config = SchedulerConfig { block_size, num_blocks, kv_groups: layout.groups, ..base };
        let usable = num_blocks.saturating_sub(config.watermark_blocks);
        // The longest sequence whose blocks fit: blocks_for grows with the length.
        let (mut fits, mut too_long) = (0, model.context_length + 1);
        while too_long - fits > 1 {
            let mid = (fits + too_long) / 2;
            if config.blocks_for(mid) <= usable { fits = mid } else { too_long = mid }
        }
        if fits == 0 {
            return Err(format!("{} MiB of KV cache holds no usable KV block for this model", kv_bytes >> 20));
        }
        Ok(SchedulerConfig { max_seq_len: fits, ..config })
    }

    /// A configuration for `sequences` requests of up to `tokens` tokens each (prompt and
    /// generated) on `model`, all running at once: a KV pool that holds them in every layer
    /// group, a whole prompt of `tokens` in one forward pass.
    pub fn fixed_config(model: &ModelConfig, tokens: usize, sequences: usize) -> SchedulerConfig {
        const BLOCK: usize = 16;
        let (tokens, sequences) = (tokens.max(1), sequences.max(1));
        SchedulerConfig {
            block_size: BLOCK,
            num_blocks: tokens.div_ceil(BLOCK) * model.kv_layout().groups.len() * sequences,
            max_seq_len: tokens,
            policy: BatchPolicy::Continuous { max_batch_tokens: tokens.max(sequences), max_running: sequences, chunk_size: tokens },
            watermark_blocks: 0,
            prefix_caching: false,
            ..SchedulerConfig::default()
        }
    }

    /// How many LoRA adapters may be loaded at once (each holds a slot on the device).
    pub fn set_max_loras(&mut self, max: usize) -> Result<(), String> {
        self.adapters.set_max(max)
    }

    /// Loads `adapter` (read for this engine's model) under `name`: requests naming it run
    /// with it, its product scaled by `scale`, batched with every other adapter's.
    pub fn load_adapter(&mut self, name: &str, adapter: Arc<LoraAdapter>, scale: f32) -> Result<(), String> {
        self.adapters.load(&mut self.model, name, adapter, scale)
    }

    /// Unloads adapter `name`: new requests naming it are refused from now on; those
    /// queued or running finish with it, and its slot empties after the last.
    pub fn unload_adapter(&mut self, name: &str) -> Result<(), String> {
        self.adapters.unload(name)?;
        self.retire_adapters()
    }

    pub fn adapters(&self) -> &Adapters {
        &self.adapters
    }

    /// Empties the slots of unloaded adapters that no request runs any more.
    fn retire_adapters(&mut self) -> Result<(), String> {
        let active = &self.active;
        self.adapters.retire(&mut self.model, |slot| active.values().any(|a| a.adapter.is_some_and(|r| r.slot == slot)))
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn kv_cache(&self) -> &PagedKvCache {
        &self.cache
    }

    /// Whether any request is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.scheduler.is_idle()
    }

    /// Gives back the memory the backend pooled for the largest steps so far; for an
    /// idle engine, so a long prompt's activations are not held until the next one.
    pub fn release_pooled_memory(&self) -> Result<(), ModelError> {
        self.model.release_pooled_memory()
    }

    /// Queues `request`; its tokens and its end go to `events`. Dropping the receiver
    /// cancels it at the next step.
    pub fn submit(&mut self, request: GenerationRequest, events: UnboundedSender<Event>, now: Time) -> Result<SeqId, SubmitError> {
        Ok(self.submit_all(vec![(request, events)], now)?[0])
    }

    /// Whether the scheduler would admit a request now, short of its tenant's rate limits
    /// (see [`Scheduler::check_admission`]).
    pub fn check_admission(&mut self, applicant: Applicant, now: Time) -> Result<(), SubmitError> {
        self.scheduler.check_admission(applicant, now).map_err(SubmitError::Rejected)
    }

    /// Queues the sequences of one client request (the choices of `n`, the prompts of a
    /// list) together, or none of them: the scheduler admits them as one request.
    pub fn submit_all(
        &mut self,
        requests: Vec<(GenerationRequest, UnboundedSender<Event>)>,
        now: Time,
    ) -> Result<Vec<SeqId>, SubmitError> {
        let samplers = requests.iter().map(|(r, _)| self.check(r)).collect::<Result<Vec<_>, _>>()?;
        let adapters = (requests.iter())
            .map(|(r, _)| r.adapter.as_deref().map(|name| self.adapters.select(name)).transpose())
            .collect::<Result<Vec<_>, _>>()
            .map_err(SubmitError::Invalid)?;
        let scheduled = requests
            .iter()
            .zip(&adapters)
            .map(|((r, _), adapter)| Request {
                prompt: r.prompt.clone(),
                max_new_tokens: r.max_tokens,
                priority: r.priority,
                max_priority: r.max_priority,
                tenant: r.tenant,
                max_wait: r.deadline,
                // Pooling over rows a cached prefix skips would miss them.
                use_prefix_cache: r.use_prefix_cache && r.embed.is_none_or(Pooling::allows_prefix_cache),
                cache_salt: adapter.map_or(0, |a| a.salt),
            })
            .collect();
        let ids = self.scheduler.submit_all(scheduled, now).map_err(SubmitError::Rejected)?;
        for (((id, (request, events)), sampler), adapter) in ids.iter().zip(requests).zip(samplers).zip(adapters) {
            if let Some(name) = &request.adapter {
                self.adapters.count(name);
            }
            self.prompt_tokens_total += request.prompt.len() as u64;
            let setting = request.speculative.unwrap_or(self.speculation.default);
            let draft_sampler = (setting.method == SpeculativeMethod::Draft).then(|| {
                let params = SamplingParams { seed: sampler.params().seed ^ DRAFT_SEED, ..sampler.params().clone() };
                Sampler::new(params).expect("the request's parameters were checked")
            });
            let active = Active {
                sampler,
                history: request.prompt,
                decoder: StreamDecoder::new(),
                stops: StopMatcher::new(request.stop),
                stop_token_ids: request.stop_token_ids,
                ignore_eos: request.ignore_eos,
                logprobs: request.logprobs,
                constraint: request.constraint,
                events,
                stopped: false,
                error: None,
                speculation: SequenceSpeculation::new(setting),
                draft_sampler,
                proposals: Vec::new(),
                adapter: adapter.map(|a| a.row),
                embedding: request.embed.map(PooledPrompt::new),
            };
            self.active.insert(*id, active);
        }
        Ok(ids)
    }

    /// Checks what the scheduler does not know about (the vocabulary, the context, the
    /// sampling parameters) and builds the request's sampler.
    fn check(&self, request: &GenerationRequest) -> Result<Sampler, SubmitError> {
        let invalid = |message: String| Err(SubmitError::Invalid(message));
        if request.prompt.is_empty() {
            return invalid("the prompt is empty".into());
        }
        match (request.embed, request.max_tokens) {
            (Some(Pooling::None), _) => {
                return invalid("pooling \"none\" makes no single embedding of a prompt: use mean, cls or last".into());
            }
            (Some(_), 0) => {}
            (Some(_), _) => return invalid("an embedding request generates no tokens: max_tokens must be 0".into()),
            (None, 0) => return invalid("max_tokens must be at least 1".into()),
            (None, _) => {}
        }
        let method = request.speculative.unwrap_or(self.speculation.default).method;
        self.check_method(method).map_err(SubmitError::Invalid)?;
        let vocab = self.model.config().vocab_size;
        let biased = request.sampling.logit_bias.iter().map(|(token, _)| token);
        if let Some(&bad) = request.prompt.iter().chain(&request.stop_token_ids).chain(biased).find(|&&t| t as usize >= vocab) {
            return invalid(format!("token id {bad} is outside the vocabulary of {vocab} tokens"));
        }
        let context = self.model.config().context_length;
        if request.prompt.len().checked_add(request.max_tokens).is_none_or(|total| total > context) {
            let e = ModelError::ContextOverflow { prompt: request.prompt.len(), max_tokens: request.max_tokens, context };
            return invalid(e.to_string());
        }
        Sampler::new(request.sampling.clone()).map_err(|e| SubmitError::Invalid(e.to_string()))
    }

    /// Ends a request now; its blocks are freed and it gets a `Cancelled` end.
    pub fn abort(&mut self, id: SeqId, now: Time) {
        self.scheduler.abort(id, now);
        self.send_finished();
    }

    /// Runs one step: cancels requests whose receivers are gone, asks the scheduler for a
    /// plan, runs it as one batch, samples, streams, and reports back. `clock` gives the
    /// current time (the engine reads no clock itself). A failed forward pass is reported to
    /// the scheduler, which runs the same work again next step, and returned as the error.
    pub fn step(&mut self, clock: &dyn Fn() -> Time) -> Result<StepOutcome, ModelError> {
        match self.launch(clock)? {
            None => Ok(StepOutcome::Idle),
            Some(launched) => {
                let logits = launched.logits.read();
                self.land(launched.plan, logits, clock)
            }
        }
    }

    /// [`Engine::step`] in two halves for a thread that must not block on the device (a
    /// browser's): `launch` queues the step's work and returns it; await
    /// [`PendingLogits::read_async`] on its logits and hand the result and the plan to
    /// [`Engine::land`]. In between, requests may be submitted (they join the next step) and
    /// aborted (they end at once; `land` skips what was computed for them).
    pub fn launch(&mut self, clock: &dyn Fn() -> Time) -> Result<Option<Launched>, ModelError> {
        let gone: Vec<SeqId> = self.active.iter().filter(|(_, a)| a.events.is_closed()).map(|(&id, _)| id).collect();
        for id in gone {
            self.scheduler.abort(id, clock());
        }
        self.send_finished();
        self.propose_drafts();
        let mut plan = self.scheduler.plan(clock());
        if let Some(draft) = &mut self.draft {
            plan.preempted.iter().for_each(|&id| draft.forget(id));
        }
        if plan.is_empty() {
            return Ok(None);
        }
        self.timing = plan.prefill.is_empty().then(|| (plan.step, plan.num_tokens(), clock()));
        match self.draft_tokens(&mut plan).and_then(|()| self.run(&plan)) {
            Ok(logits) => {
                // When every row's token is decided by its few best logits (greedy, or sampling
                // among a small top-k, without penalties, logprobs or a grammar), the device picks those
                // and the step reads back a few numbers per row instead of the vocabulary.
                let forks = plan.forks.iter().map(|f| f.seq);
                let deciding = plan.sampling().chain(forks).try_fold(1, |k, id| {
                    let active = self.active.get(&id).filter(|a| a.logprobs.is_none() && a.constraint.is_none())?;
                    Some(active.sampler.params().deciding_candidates()?.max(k))
                });
                let vocab = self.tokenizer.vocab_size();
                let logits = match deciding {
                    Some(k) => logits.top_k(k, vocab),
                    None => logits,
                };
                Ok(Some(Launched { plan, logits }))
            }
            Err(e) => Err(self.fail_step(&plan, e, clock)),
        }
    }

    /// Samples from a launched step's logits, streams the tokens and reports to the scheduler.
    pub fn land(&mut self, plan: StepPlan, outputs: Result<Outputs, ModelError>, clock: &dyn Fn() -> Time) -> Result<StepOutcome, ModelError> {
        let Outputs { logits: rows, pooled } = match outputs {
            Ok(outputs) => outputs,
            Err(e) => return Err(self.fail_step(&plan, e, clock)),
        };
        for ((id, positions), row) in std::mem::take(&mut self.pooled_chunks).into_iter().zip(&pooled) {
            // An aborted request is gone; its row is skipped.
            if let Some(embedding) = self.active.get_mut(&id).and_then(|a| a.embedding.as_mut()) {
                embedding.add(positions, row);
            }
        }
        if let Some((_, tokens, started)) = self.timing.take().filter(|t| t.0 == plan.step) {
            self.step_cost.observe(tokens, clock().since(started).as_secs_f64());
        }
        let (logits, candidates) = match rows {
            LogitRows::Full(logits) => (logits, Vec::new()),
            LogitRows::TopK(candidates) => (Vec::new(), candidates),
        };
        let mut result = StepResult { step: plan.step, success: true, ..Default::default() };
        // Models may pad their embedding past the tokenizer's vocabulary: never pick those rows.
        let vocab = self.tokenizer.vocab_size();
        let mut broken = Vec::new();
        // Choices forking from a prompt that ends this step sample from its row too.
        let mut forks: HashMap<SeqId, Vec<SeqId>> = HashMap::new();
        for fork in &plan.forks {
            forks.entry(fork.from).or_default().push(fork.seq);
        }
        let mut next_row = 0;
        for (from, draft) in plan.sampling_rows() {
            let rows = next_row..next_row + 1 + draft.len();
            next_row = rows.end;
            let forked = forks.get(&from).map_or(&[][..], Vec::as_slice);
            for &id in std::iter::once(&from).chain(forked) {
                let Some(active) = self.active.get_mut(&id) else { continue };
                let position = active.history.len() - 1;
                let row_logits = |row: usize| (logits.get(row).map(|l| &l[..vocab.min(l.len())]), candidates.get(row).cloned());
                let verified = Self::take_rows(active, &self.tokenizer, rows.clone().map(row_logits), draft);
                if verified.stopped {
                    active.stopped = true;
                    result.stopped.push(id);
                }
                if !draft.is_empty() {
                    if let Some(model) = &mut self.draft {
                        model.landed(id, position, draft.len(), verified.accepted);
                    }
                    active.proposals.clear();
                    active.speculation.record(draft.len(), verified.accepted, verified.rejected);
                    self.spec_draft_tokens_total += draft.len() as u64;
                    self.spec_accepted_tokens_total += verified.accepted as u64;
                }
                if let Some(error) = verified.error {
                    active.error = Some(error);
                    broken.push(id);
                } else if let Some(token) = verified.last {
                    // The last token goes as the sampled one; those before it are the draft's.
                    result.sampled.push((id, token));
                    if verified.tokens > 1 {
                        result.accepted.push((id, draft[..verified.tokens - 1].to_vec()));
                    }
                }
            }
        }
        let generated = result.sampled.len() + result.accepted.iter().map(|a| a.1.len()).sum::<usize>();
        let outcome = StepOutcome::Ran { tokens: plan.num_tokens(), sampled: generated };
        self.generation_tokens_total += generated as u64;
        for id in broken {
            self.scheduler.fail(id, clock());
        }
        self.scheduler.complete(result, clock());
        self.send_finished();
        Ok(outcome)
    }

    /// Reports a failed step: its sequences run again next step, or end as failed (with
    /// this error) once they have failed too often in a row.
    fn fail_step(&mut self, plan: &StepPlan, error: ModelError, clock: &dyn Fn() -> Time) -> ModelError {
        self.last_step_error = error.to_string();
        self.pooled_chunks.clear();
        self.scheduler.complete(StepResult::failed(plan), clock());
        self.send_finished();
        error
    }

    /// Copies shared blocks written to, then queues the plan's chunks and decodes as one batch.
    fn run(&mut self, plan: &StepPlan) -> Result<PendingLogits, ModelError> {
        if !plan.copies.is_empty() {
            let pairs: Vec<(u32, u32)> = plan.copies.iter().map(|c| (c.from, c.to)).collect();
            self.model.copy_blocks(&mut self.cache, &pairs)?;
            if let Some(draft) = &mut self.draft {
                draft.copy_blocks(&pairs)?;
            }
        }
        let decode_tokens: Vec<Vec<u32>> = plan.decode.iter().map(|d| [&[d.token], &d.draft[..]].concat()).collect();
        let adapter = |seq: &SeqId| self.active.get(seq).and_then(|a| a.adapter);
        // An embedding's chunks reduce their rows to what its pooling needs.
        let pool = |seq: &SeqId, positions: std::ops::Range<usize>| {
            let active = self.active.get(seq)?;
            active.embedding.as_ref()?.pooling.reduce(positions, active.history.len())
        };
        let positions = |c: &cinder_scheduler::PrefillChunk| c.start..c.start + c.tokens.len();
        self.pooled_chunks = plan.prefill.iter().filter(|c| pool(&c.seq, positions(c)).is_some()).map(|c| (c.seq, positions(c))).collect();
        let chunks: Vec<SeqChunk> = plan
            .prefill
            .iter()
            .map(|c| SeqChunk {
                tokens: &c.tokens,
                start: c.start,
                tables: &c.block_tables,
                logits: usize::from(c.samples),
                adapter: adapter(&c.seq),
                pool: pool(&c.seq, positions(c)),
            })
            .chain(plan.decode.iter().zip(&decode_tokens).map(|(d, tokens)| SeqChunk {
                tokens,
                start: d.position,
                tables: &d.block_tables,
                logits: tokens.len(),
                adapter: adapter(&d.seq),
                pool: None,
            }))
            .collect();
        self.model.launch_batch(&chunks, &mut self.cache)
    }

    /// Takes a sequence's rows in order (each its logits, or its deciding candidates): the
    /// first verifies `draft[0]` and so on, until a draft token is rejected (its
    /// replacement is the last token) or the last row samples the token after the draft.
    /// Streams each token; stops early at the request's end or a broken row.
    fn take_rows<'r>(
        active: &mut Active,
        tokenizer: &Tokenizer,
        rows: impl Iterator<Item = (Option<&'r [f32]>, Option<Vec<(u32, f32)>>)>,
        draft: &[u32],
    ) -> Verified {
        let mut verified = Verified::default();
        for (j, (logits, best)) in rows.enumerate() {
            let non_finite = match (&best, logits) {
                (Some(best), _) => best.iter().any(|(_, l)| !l.is_finite()),
                (None, Some(logits)) => logits.iter().any(|l| !l.is_finite()),
                (None, None) => false,
            };
            if non_finite {
                // NaN weights or an overflow: nothing sampled from these logits means anything.
                verified.error = Some("the model produced NaN or infinite logits (corrupt weights or a numeric overflow)".into());
                break;
            }
            let proposed = draft.get(j).map(|&token| match active.proposals.get(j) {
                Some(distribution) => (token, distribution.clone()),
                None => (token, vec![(token, 1.0)]),
            });
            let (token, accepted) = match Self::choose(active, best, logits, proposed) {
                Ok(Some(choice)) => choice,
                Ok(None) => break,
                Err(e) => {
                    verified.error = Some(e);
                    break;
                }
            };
            active.history.push(token);
            verified.tokens += 1;
            verified.last = Some(token);
            verified.accepted += usize::from(accepted);
            verified.rejected = j < draft.len() && !accepted;
            let complete = active.constraint.as_ref().is_some_and(Constraint::is_complete);
            if Self::emit(active, tokenizer, token, logits.unwrap_or_default()) || complete {
                verified.stopped = true;
                break;
            }
            if !accepted {
                break;
            }
        }
        verified
    }

    /// The token a row gives a sequence: sampled, or, where a draft token is proposed for
    /// it, the draft token if accepted (true) or what replaces it. A grammar masks the row
    /// first and moves past the token. `None` when the row was not read.
    fn choose(
        active: &mut Active,
        best: Option<Vec<(u32, f32)>>,
        logits: Option<&[f32]>,
        proposed: Option<(u32, Vec<(u32, f32)>)>,
    ) -> Result<Option<(u32, bool)>, String> {
        let candidates = match (best, logits, &mut active.constraint) {
            (Some(best), ..) => best,
            (None, Some(logits), Some(constraint)) => {
                let mut allowed = logits.to_vec();
                constraint.mask(&mut allowed)?;
                if allowed.iter().all(|l| *l == f32::NEG_INFINITY) {
                    return Err("constrained decoding: the grammar allows no token of this vocabulary here".into());
                }
                active.sampler.adjust(&allowed, &active.history)
            }
            (None, Some(logits), None) => active.sampler.adjust(logits, &active.history),
            (None, None, _) => return Ok(None),
        };
        let choice = match proposed {
            Some((draft, distribution)) => match active.sampler.verify(candidates, draft, &distribution) {
                Verdict::Accepted => (draft, true),
                Verdict::Rejected(token) => (token, false),
            },
            None => (active.sampler.sample_candidates(candidates), false),
        };
        if let Some(constraint) = &mut active.constraint {
            constraint.advance(choice.0)?;
        }
        Ok(Some(choice))
    }

    /// Runs the draft model for the planned decodes of `"draft"` requests and puts its
    /// tokens in the plan in place of their placeholders.
    fn draft_tokens(&mut self, plan: &mut StepPlan) -> Result<(), ModelError> {
        let Some(model) = &mut self.draft else { return Ok(()) };
        // The draft samplers leave their requests for the call, which reads their histories.
        let mut drafting: Vec<(usize, Sampler)> = plan
            .decode
            .iter()
            .enumerate()
            .filter(|(_, item)| !item.draft.is_empty())
            .filter_map(|(index, item)| Some((index, self.active.get_mut(&item.seq)?.draft_sampler.take()?)))
            .collect();
        let drafts = {
            let active = &self.active;
            let mut requests: Vec<DraftRequest> = drafting
                .iter_mut()
                .map(|(index, sampler)| {
                    let item = &plan.decode[*index];
                    let tokens = &active[&item.seq].history;
                    DraftRequest { seq: item.seq, tokens, table: &item.block_tables[0], length: item.draft.len(), sampler }
                })
                .collect();
            model.draft(&mut requests)
        };
        let indices: Vec<usize> = drafting.iter().map(|(index, _)| *index).collect();
        for (index, sampler) in drafting {
            self.active.get_mut(&plan.decode[index].seq).expect("drafting requests are active").draft_sampler = Some(sampler);
        }
        for (index, draft) in indices.into_iter().zip(drafts?) {
            let item = &mut plan.decode[index];
            item.draft = draft.tokens;
            self.active.get_mut(&item.seq).expect("drafting requests are active").proposals = draft.proposals;
        }
        Ok(())
    }

    /// Proposes a draft for every decoding sequence that speculates (none when more
    /// sequences decode than [`SpeculationConfig::max_batch`]).
    fn propose_drafts(&mut self) {
        let decoding = self.scheduler.decoding().count();
        if decoding == 0 || decoding > self.speculation.max_batch {
            return;
        }
        let worthwhile = self.step_cost.worthwhile(decoding);
        let mut drafts = Vec::new();
        for (id, tokens) in self.scheduler.decoding() {
            let Some(active) = self.active.get_mut(&id) else { continue };
            let length = active.speculation.length(worthwhile);
            if length > 0 {
                // A draft model drafts once the step's blocks are known: placeholders until then.
                let draft = match active.speculation.setting.method {
                    SpeculativeMethod::Draft => vec![0; length],
                    SpeculativeMethod::Ngram | SpeculativeMethod::Off => ngram_proposal(tokens, length),
                };
                drafts.push((id, draft));
            }
        }
        for (id, draft) in drafts {
            if !draft.is_empty() {
                self.scheduler.propose(id, draft);
            }
        }
    }

    /// Streams a sampled token; true if it ends the request.
    fn emit(active: &mut Active, tokenizer: &Tokenizer, token: u32, logits: &[f32]) -> bool {
        let logprob = active.logprobs.map(|k| {
            let all = log_softmax(logits);
            TokenLogprob { logprob: all[token as usize], top: top_logprobs(&all, k) }
        });
        let ends = (!active.ignore_eos && tokenizer.is_end_of_generation(token)) || active.stop_token_ids.contains(&token);
        let (text, stopped) = if ends {
            (String::new(), true)
        } else {
            let released = active.stops.push(&active.decoder.push(tokenizer, token, false));
            (released.text, released.stopped)
        };
        // A closed channel is noticed at the next step.
        let _ = active.events.send(Event::Token { token, text, logprob });
        ends || stopped
    }

    /// Sends the end of every request the scheduler finished.
    fn send_finished(&mut self) {
        for done in self.scheduler.take_finished() {
            if let Some(draft) = &mut self.draft {
                draft.forget(done.id);
            }
            let Some(mut active) = self.active.remove(&done.id) else { continue };
            let reason = if active.stopped { FinishReason::Stop } else { done.reason };
            let text = active.stops.push(&active.decoder.finish()).text + &active.stops.finish();
            let error = (reason == FinishReason::Failed).then(|| {
                active.error.take().unwrap_or_else(|| {
                    let attempts = self.scheduler.config().max_step_attempts;
                    format!("the step running this request failed {attempts} times in a row: {}", self.last_step_error)
                })
            });
            let speculative = active.speculation.setting.is_on().then_some(active.speculation.usage);
            let embedding = active.embedding.filter(|_| reason == FinishReason::Length).and_then(|e| e.finish());
            let mut finished = finished(done, reason, text, error, speculative);
            finished.embedding = embedding;
            finished.stop_sequence = active.stops.matched().map(str::to_owned);
            let _ = active.events.send(Event::Finished(finished));
        }
        // A failure leaves the adapter unloading, tried again after the next request ends.
        if let Err(e) = self.retire_adapters() {
            self.last_step_error = e;
        }
    }

    /// Runs `request` alone to its end, stepping the engine; `on_text` gets the text as it
    /// is released. The one-request path of `cinder generate` and
    /// `cinder bench`, through the same steps as a server's requests.
    pub fn generate(
        &mut self,
        request: GenerationRequest,
        clock: &dyn Fn() -> Time,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation, SubmitError> {
        let (events, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        self.submit(request, events, clock())?;
        let mut tokens = Vec::new();
        let mut text = String::new();
        loop {
            while let Ok(event) = receiver.try_recv() {
                match event {
                    Event::Token { token, text: piece, .. } => {
                        tokens.push(token);
                        text.push_str(&piece);
                        on_text(&piece);
                    }
                    Event::Finished(finished) => {
                        text.push_str(&finished.text);
                        on_text(&finished.text);
                        return Ok(Generation { tokens, text, finished });
                    }
                }
            }
            // A failed step is retried; the scheduler ends the request once it keeps failing.
            let _ = self.step(clock);
        }
    }

    pub fn metrics(&self, now: Time) -> EngineMetrics {
        EngineMetrics {
            scheduler: self.scheduler.metrics(now),
            prompt_tokens_total: self.prompt_tokens_total,
            generation_tokens_total: self.generation_tokens_total,
            spec_draft_tokens_total: self.spec_draft_tokens_total,
            spec_accepted_tokens_total: self.spec_accepted_tokens_total,
            max_loras: self.adapters.max(),
            adapters: self.adapters.metrics(|slot| {
                let sequences = self.active.iter().filter(|(_, a)| a.adapter.is_some_and(|r| r.slot == slot));
                sequences.fold((0, 0), |(running, waiting), (&id, _)| match self.scheduler.is_running(id) {
                    true => (running + 1, waiting),
                    false => (running, waiting + 1),
                })
            }),
        }
    }

    /// Panics if the scheduler's bookkeeping is inconsistent (for tests).
    pub fn check_invariants(&self) {
        self.scheduler.check_invariants();
        assert!(self.active.len() <= self.scheduler.num_running() + self.scheduler.num_waiting());
    }
}

fn finished(
    done: FinishedSequence,
    reason: FinishReason,
    text: String,
    error: Option<String>,
    speculative: Option<SpeculativeUsage>,
) -> Finished {
    Finished {
        reason,
        error,
        text,
        prompt_tokens: done.prompt_tokens,
        completion_tokens: done.generated.len(),
        arrival: done.arrival,
        scheduled: done.scheduled,
        first_token: done.first_token,
        finished: done.finished,
        preemptions: done.preemptions,
        speculative,
        embedding: None,
        stop_sequence: None,
    }
}

/// Mixed into a request's seed for its draft sampler's stream.
const DRAFT_SEED: u64 = 0x5eed_d4af;

/// What the rows of one sequence gave in a step.
#[derive(Default)]
struct Verified {
    /// Tokens emitted: accepted draft tokens, then a sampled or replacing one.
    tokens: usize,
    last: Option<u32>,
    accepted: usize,
    /// Verification stopped at a rejected draft token.
    rejected: bool,
    /// The request ended at the last token.
    stopped: bool,
    error: Option<String>,
}
