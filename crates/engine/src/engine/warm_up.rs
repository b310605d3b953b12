//! Compiling the kernels before serving. A kernel compiles at its first launch (a second or
//! more each on a software driver, 36 s in all for the default model on lavapipe), which
//! would otherwise fall on the first requests a server answers after saying it is ready.

use cinder_model::ModelError;
use cinder_scheduler::{Scheduler, Time};

use super::Engine;
use crate::{GenerationRequest, SubmitError};

/// The warm-up's long prompt: a few chunks, and long enough for decode attention to split
/// over its keys (past 512 positions).
const LONG_PROMPT: usize = 640;
/// Sequences decoding at once in the second phase: every row tile of the matrix kernels
/// (1 to 8 rows) and one more.
const BATCH: usize = 9;

impl Engine {
    /// Runs the steps this engine will run, so that their kernels compile now: a long prompt
    /// in chunks (the prompt kernels, flash attention over earlier chunks) and its decode;
    /// then 1 to 9 sequences decoding together (each row tile), greedy; then full-row and
    /// top-k sampling (the device's top-k). The requests use no prefix cache, and the
    /// scheduler and the counters start afresh afterwards, as if nothing had run.
    pub fn warm_up(&mut self, clock: &dyn Fn() -> Time) -> Result<(), ModelError> {
        let vocab = self.tokenizer.vocab_size().max(1);
        let prompt = |len: usize, salt: usize| -> Vec<u32> { (0..len).map(|i| ((i * 7 + salt * 13 + 3) % vocab) as u32).collect() };
        let request = |prompt: Vec<u32>, max_tokens: usize| GenerationRequest {
            ignore_eos: true,
            use_prefix_cache: false,
            ..GenerationRequest::new(prompt, max_tokens)
        };
        let context = self.scheduler.config().max_seq_len;
        // The longest prompt the pool takes, up to LONG_PROMPT.
        let mut long = LONG_PROMPT.min(context.saturating_sub(2));
        while long > 1 {
            match self.submit_and_run(vec![request(prompt(long, 0), 2)], clock)? {
                Ok(()) => break,
                Err(_) => long /= 2,
            }
        }
        let room = context.saturating_sub(4).max(1);
        let batch = (0..BATCH).map(|i| request(prompt(3.min(room), i + 1), (i + 1).min(context.saturating_sub(3).max(1)))).collect();
        let _ = self.submit_and_run(batch, clock)?;
        for top_k in [0, 40] {
            let mut sampled = request(prompt(3.min(room), BATCH + 1), 2.min(context.saturating_sub(3).max(1)));
            sampled.sampling.temperature = 1.0;
            sampled.sampling.top_k = top_k;
            let _ = self.submit_and_run(vec![sampled], clock)?;
        }
        self.scheduler = Scheduler::new(self.scheduler.config().clone());
        self.prompt_tokens_total = 0;
        self.generation_tokens_total = 0;
        self.spec_draft_tokens_total = 0;
        self.spec_accepted_tokens_total = 0;
        // Its step times counted compiling.
        self.step_cost = Default::default();
        Ok(())
    }

    /// Submits `requests` (each on its own) and steps until nothing is left; the outer error
    /// is the device's, the inner one the scheduler's refusal of a request.
    fn submit_and_run(&mut self, requests: Vec<GenerationRequest>, clock: &dyn Fn() -> Time) -> Result<Result<(), SubmitError>, ModelError> {
        let mut events = Vec::new();
        for request in requests {
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
            if let Err(refused) = self.submit(request, sender, clock()) {
                self.run_to_end(clock)?;
                return Ok(Err(refused));
            }
            events.push(receiver);
        }
        self.run_to_end(clock)?;
        Ok(Ok(()))
    }

    fn run_to_end(&mut self, clock: &dyn Fn() -> Time) -> Result<(), ModelError> {
        while self.has_work() {
            self.step(clock)?;
        }
        Ok(())
    }
}
