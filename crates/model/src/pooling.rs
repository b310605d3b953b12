//! Embeddings: how a prompt's rows become one vector. As in llama.cpp, the rows are the
//! final norm's output (what the LM head would read), pooled over the prompt.

use std::fmt;
use std::ops::Range;

use crate::ModelError;

/// How a prompt's rows pool into its embedding: GGUF's `{arch}.pooling_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// One vector per token: nothing pooled.
    None,
    /// The mean of every row.
    Mean,
    /// The first token's row.
    Cls,
    /// The last token's row (causal embedding models: Qwen3-Embedding and its kin).
    Last,
}

/// What the device computes of one chunk of a prompt for its embedding: a single row,
/// read back with the step's logits ([`crate::PendingLogits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    /// The sum of the chunk's rows.
    Sum,
    First,
    Last,
}

impl Pooling {
    pub const ALL: [Pooling; 4] = [Pooling::None, Pooling::Mean, Pooling::Cls, Pooling::Last];

    /// GGUF's number for it (llama.cpp's `llama_pooling_type`).
    pub fn from_gguf(value: u64) -> Result<Self, ModelError> {
        match value {
            0 => Ok(Pooling::None),
            1 => Ok(Pooling::Mean),
            2 => Ok(Pooling::Cls),
            3 => Ok(Pooling::Last),
            4 => Err(ModelError::Unsupported("pooling type 4 (rank: a reranker's score head)".into())),
            other => Err(ModelError::InvalidConfig(format!("pooling type {other} is not one of 0 (none), 1 (mean), 2 (cls), 3 (last)"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pooling::None => "none",
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Last => "last",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// What the chunk at `positions` of a prompt of `len` tokens contributes, if anything.
    /// `None` pooling has no single vector to make.
    pub fn reduce(self, positions: Range<usize>, len: usize) -> Option<Reduce> {
        match self {
            Pooling::Mean => Some(Reduce::Sum),
            Pooling::Cls => (positions.start == 0).then_some(Reduce::First),
            Pooling::Last => (positions.end == len).then_some(Reduce::Last),
            Pooling::None => None,
        }
    }

    /// Whether a prompt's cached prefix may be skipped: only the last row is needed.
    pub fn allows_prefix_cache(self) -> bool {
        self == Pooling::Last
    }
}

impl fmt::Display for Pooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Reduce {
    /// The rows of `chunk` (a chunk's rows in the batch) that it reads.
    pub(crate) fn rows(self, chunk: Range<usize>) -> Range<usize> {
        match self {
            Reduce::Sum => chunk,
            Reduce::First => chunk.start..chunk.start + 1,
            Reduce::Last => chunk.end - 1..chunk.end,
        }
    }
}

/// A prompt's embedding as its chunks arrive.
#[derive(Debug, Clone, PartialEq)]
pub struct PooledPrompt {
    pub pooling: Pooling,
    /// The sum of the rows so far (mean), or the row kept (cls, last).
    sum: Vec<f32>,
    rows: usize,
}

impl PooledPrompt {
    pub fn new(pooling: Pooling) -> Self {
        Self { pooling, sum: Vec::new(), rows: 0 }
    }

    /// Adds what the chunk at `positions` gave. A chunk starting the prompt again (its
    /// sequence was preempted and recomputes) starts the sum again.
    pub fn add(&mut self, positions: Range<usize>, row: &[f32]) {
        if positions.start == 0 || self.pooling != Pooling::Mean {
            self.sum.clear();
            self.rows = 0;
        }
        if self.sum.is_empty() {
            self.sum = row.to_vec();
        } else {
            self.sum.iter_mut().zip(row).for_each(|(s, r)| *s += r);
        }
        self.rows += if self.pooling == Pooling::Mean { positions.len() } else { 1 };
    }

    /// The embedding (not normalised), once every chunk it needs has been added.
    pub fn finish(&self) -> Option<Vec<f32>> {
        (self.rows > 0).then(|| self.sum.iter().map(|s| s / self.rows as f32).collect())
    }
}

/// `v` scaled to unit length (left as it is when all zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_contribute_what_their_pooling_needs() {
        assert_eq!(Pooling::Mean.reduce(16..32, 40), Some(Reduce::Sum));
        assert_eq!(Pooling::Cls.reduce(0..16, 40), Some(Reduce::First));
        assert_eq!(Pooling::Cls.reduce(16..32, 40), None);
        assert_eq!(Pooling::Last.reduce(16..32, 40), None);
        assert_eq!(Pooling::Last.reduce(32..40, 40), Some(Reduce::Last));
        assert_eq!(Reduce::Last.rows(4..9), 8..9);
        assert_eq!(Reduce::First.rows(4..9), 4..5);
    }

    #[test]
    fn a_mean_over_chunks_restarts_when_the_prompt_is_recomputed() {
        let mut mean = PooledPrompt::new(Pooling::Mean);
        mean.add(0..2, &[2.0, 4.0]);
        mean.add(2..3, &[1.0, 2.0]);
        assert_eq!(mean.finish(), Some(vec![1.0, 2.0]));
        mean.add(0..3, &[3.0, 3.0]);
        assert_eq!(mean.finish(), Some(vec![1.0, 1.0]));
        let mut last = PooledPrompt::new(Pooling::Last);
        assert_eq!(last.finish(), None);
        last.add(5..9, &[1.0, -1.0]);
        assert_eq!(last.finish(), Some(vec![1.0, -1.0]));
        let mut v = [3.0, 4.0];
        normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
    }

    #[test]
    fn gguf_numbers_and_names_map_both_ways() {
        for p in Pooling::ALL {
            assert_eq!(Pooling::from_name(p.name()), Some(p));
        }
        assert_eq!(Pooling::from_gguf(3).unwrap(), Pooling::Last);
        assert!(Pooling::from_gguf(4).unwrap_err().to_string().contains("rank"));
        assert!(Pooling::from_gguf(9).is_err());
    }
}
