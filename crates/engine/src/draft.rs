//! The draft model of speculative decoding: a smaller model with the target's vocabulary
//! proposes each drafting sequence's next tokens, one batched forward pass per draft
//! position, before the target verifies them in its step.
//!
//! Its keys and values live in its own paged cache with as many blocks as the target's, and
//! each sequence uses the blocks of its target block table: the scheduler's blocks cover
//! both models (a block's bytes are the two models' together, see
//! [`Engine::sized_config`](crate::Engine::sized_config)), so the draft needs no bookkeeping
//! of its own beyond how far each sequence's draft keys are computed.

use std::collections::HashMap;

use cinder_model::{KvLayout, LogitRows, Model, ModelConfig, ModelError, PagedKvCache, Sampler, SeqChunk};
use cinder_scheduler::SeqId;
use cinder_tokenizer::Tokenizer;

/// See the module documentation.
pub struct DraftModel {
    model: Model,
    cache: PagedKvCache,
    vocab: usize,
    /// Per drafting sequence: positions whose draft keys and values hold its tokens.
    computed: HashMap<SeqId, usize>,
}

/// One sequence to draft for.
pub(crate) struct DraftRequest<'a> {
    pub seq: SeqId,
    /// Prompt and generated tokens; the last is the token the step decodes.
    pub tokens: &'a [u32],
    /// The sequence's block table (the target's, valid for every position so far).
    pub table: &'a [u32],
    pub length: usize,
    /// The draft's own sampler: the request's parameters, its own random stream.
    pub sampler: &'a mut Sampler,
}

/// The tokens drafted for one sequence, each with the distribution it was drawn from.
#[derive(Debug, Clone, Default)]
pub(crate) struct Draft {
    pub tokens: Vec<u32>,
    pub proposals: Vec<Vec<(u32, f32)>>,
}

impl DraftModel {
    /// `model` as the draft of a target whose tokenizer is `target`, with a cache of
    /// `num_blocks` blocks of `block_size` (the target's). Refused unless both vocabularies
    /// are the same token for token, the target has a layer group without a window (whose
    /// table covers every position) and the draft none with one.
    pub fn new(
        model: Model,
        tokenizer: &Tokenizer,
        target: &Tokenizer,
        target_layout: &KvLayout,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<Self, String> {
        let vocab = target.vocab_size();
        if tokenizer.vocab_size() != vocab {
            return Err(format!(
                "the draft model's vocabulary has {} tokens, the target's {vocab}: speculative decoding needs the same vocabulary",
                tokenizer.vocab_size()
            ));
        }
        if let Some(id) = (0..vocab as u32).find(|&id| tokenizer.token_text(id) != target.token_text(id)) {
            return Err(format!(
                "the draft model's token {id} is {:?}, the target's {:?}: speculative decoding needs the same vocabulary",
                tokenizer.token_text(id).unwrap_or_default(),
                target.token_text(id).unwrap_or_default()
            ));
        }
        if model.config().vocab_size < vocab {
            return Err(format!("the draft model's embedding has {} rows for {vocab} tokens", model.config().vocab_size));
        }
        Self::check_layouts(target_layout, &model.config().kv_layout())?;
        let cache = model.new_paged_cache(num_blocks, block_size).map_err(|e| format!("the draft model's KV cache: {e}"))?;
        Ok(Self { model, cache, vocab, computed: HashMap::new() })
    }

    /// The draft reads each sequence's first block table, which must cover every position,
    /// and keeps all its layers in one table.
    fn check_layouts(target: &KvLayout, draft: &KvLayout) -> Result<(), String> {
        if target.groups.first().is_none_or(Option::is_some) {
            return Err("speculative decoding with a draft model needs a target whose first layer group attends without a window".into());
        }
        if draft.groups.len() != 1 || draft.groups[0].is_some() {
            return Err("the draft model has sliding-window layers; a draft model must attend to the whole context".into());
        }
        Ok(())
    }

    /// KV bytes one block takes in the draft's cache (what the shared pool budgets per block
    /// on top of the target's).
    pub fn bytes_per_block(config: &ModelConfig, block_size: usize) -> usize {
        PagedKvCache::bytes_per_block(config, block_size)
    }

    /// Drafts `length` tokens for each request: the first forward pass runs the part of
    /// its context the draft has not seen (the decoded token, two after a fully accepted
    /// draft, the whole prompt the first time), each further pass the token drafted last.
    pub(crate) fn draft(&mut self, requests: &mut [DraftRequest]) -> Result<Vec<Draft>, ModelError> {
        let mut drafts = vec![Draft::default(); requests.len()];
        let groups = self.cache.layout().groups.len();
        let tables: Vec<Vec<Vec<u32>>> = requests.iter().map(|r| vec![r.table.to_vec(); groups]).collect();
        let longest = requests.iter().map(|r| r.length).max().unwrap_or(0);
        for pass in 0..longest {
            let drafting: Vec<usize> = (0..requests.len()).filter(|&i| requests[i].length > pass).collect();
            let inputs: Vec<(usize, Vec<u32>)> = drafting
                .iter()
                .map(|&i| {
                    let r = &requests[i];
                    let decoded = r.tokens.len() - 1;
                    match drafts[i].tokens.last() {
                        Some(&last) => (decoded + pass, vec![last]),
                        None => {
                            let start = self.computed.get(&r.seq).copied().unwrap_or(0).min(decoded);
                            (start, r.tokens[start..].to_vec())
                        }
                    }
                })
                .collect();
            let chunks: Vec<SeqChunk> = inputs
                .iter()
                .zip(&drafting)
                .map(|((start, tokens), &i)| SeqChunk { tokens, start: *start, tables: &tables[i], logits: 1, adapter: None, pool: None })
                .collect();
            let LogitRows::Full(rows) = self.model.launch_batch(&chunks, &mut self.cache)?.read()?.logits else {
                unreachable!("whole rows unless asked for top-k")
            };
            for (row, &i) in rows.iter().zip(&drafting) {
                let r = &mut requests[i];
                let history = [r.tokens, &drafts[i].tokens].concat();
                let (token, proposal) = r.sampler.propose(r.sampler.adjust(&row[..self.vocab.min(row.len())], &history));
                drafts[i].tokens.push(token);
                drafts[i].proposals.push(proposal);
            }
        }
        Ok(drafts)
    }

    /// After the target verified `drafted` tokens drafted after position `position`,
    /// accepting `accepted`: the draft's keys stay valid up to the last accepted token it
    /// ran (it never ran the last drafted token).
    pub(crate) fn landed(&mut self, seq: SeqId, position: usize, drafted: usize, accepted: usize) {
        if drafted > 0 {
            self.computed.insert(seq, position + 1 + accepted.min(drafted - 1));
        }
    }

    /// A sequence that ended or was preempted (its blocks may be reused by others).
    pub(crate) fn forget(&mut self, seq: SeqId) {
        self.computed.remove(&seq);
    }

    /// The target's block copies (copy-on-write), made in the draft's cache too.
    pub(crate) fn copy_blocks(&mut self, pairs: &[(u32, u32)]) -> Result<(), ModelError> {
        self.model.copy_blocks(&mut self.cache, pairs)
    }
}
