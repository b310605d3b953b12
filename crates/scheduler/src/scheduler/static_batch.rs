//! Static batching (the fixed, bucketed and memory-aware policies): a batch forms once the
//! last one drained, and runs until every member finishes.

use super::{Scheduler, Sequence};
use crate::blocks::SequenceBlocks;
use crate::queue::Queued;
use crate::{Duration, Time};

impl Scheduler {
    /// Static batching: when the previous batch has drained, gather a new one (waiting up to
    /// `max_wait` for it to fill), reserving every member's full length; `plan` then runs
    /// prompts whole and decodes until all finish.
    pub(super) fn form_static_batch(&mut self, now: Time, capacity: usize, max_wait: Duration, token_budget: usize, bucket_edges: Option<&[usize]>) {
        let Some(head) = self.queue.peek(now) else { return };
        let full = self.queue.len() >= capacity.min(self.config.max_waiting);
        if !full && now.since(head.arrival) < max_wait {
            return;
        }
        let bucket_of = |len: usize, edges: &[usize]| edges.iter().position(|e| len <= *e).unwrap_or(edges.len());
        let head_bucket = bucket_edges.map(|edges| bucket_of(head.prompt_len(), edges));
        let mut reserved = 0usize;
        let mut skipped = Vec::new();
        while self.running.len() < capacity {
            let Some(waiting) = self.queue.peek(now) else { break };
            let (id, max_len) = (waiting.id, waiting.cost());
            if let (Some(bucket), Some(edges)) = (head_bucket, bucket_edges) {
                if bucket_of(waiting.prompt_len(), edges) != bucket {
                    // Another bucket's request: set aside for a later batch.
                    skipped.push(self.dequeue(id, false).expect("peeked"));
                    continue;
                }
            }
            if reserved + max_len > token_budget && !self.running.is_empty() {
                break;
            }
            let needed = self.config.blocks_for(max_len) + self.config.watermark_blocks;
            if needed > self.blocks.available() {
                break;
            }
            let mut seq = Sequence::start(*self.dequeue(id, true).expect("peeked"), Some(now));
            seq.blocks = SequenceBlocks::new(self.config.kv_groups.len());
            seq.blocks.ensure(&self.blocks, &self.config.kv_groups, 0, max_len).expect("checked available");
            self.add_running(id, seq);
            reserved += max_len;
        }
        for waiting in skipped {
            self.enqueue(waiting);
        }
        self.batch_closed = !self.running.is_empty();
    }
}
