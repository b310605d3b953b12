//! What a step reads back: the logits of the rows that asked, whole or as each row's best
//! few candidates picked on the device.

use burn::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

use crate::ModelError;
use crate::kernel::{Arg, Template, cube, empty, from_cube, launch};
use crate::error::guard;

/// Logits queued on the device by [`Model::launch_batch`](crate::Model::launch_batch), one row per chunk that asked.
#[must_use = "the logits are only computed once read"]
pub struct PendingLogits {
    /// `[rows, vocab]`, or `[rows, 2k]` candidates once [`PendingLogits::top_k`] has run.
    pub(crate) logits: Option<Tensor<2>>,
    pub(crate) vocab: usize,
    /// The `k` of [`PendingLogits::top_k`], once it has run.
    pub(crate) top_k: Option<usize>,
}

/// top_k.wgsl's `Info`: the row width and how many of its first columns compete.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct TopKInfo {
    cols: u32,
    limit: u32,
}

/// The most candidates [`PendingLogits::top_k`] keeps per row.
pub const MAX_DEVICE_TOP_K: usize = 64;

/// What a step reads back.
#[derive(Debug, Clone, PartialEq)]
pub enum LogitRows {
    /// Each row's logits.
    Full(Vec<Vec<f32>>),
    /// Each row's best `(token, logit)` pairs, best first, picked on the device
    /// ([`PendingLogits::top_k`]).
    TopK(Vec<Vec<(u32, f32)>>),
}

impl PendingLogits {
    /// Keeps each row's `k` best logits among the first `limit` on the device, best first,
    /// equal logits in token order (as a CPU sort ranks them), NaN dropped: `k = 1` is the
    /// greedy token. A read then moves `2k` numbers per row instead of the vocabulary.
    /// `k` is rounded up to a power of two (fewer kernel variants) and at most
    /// [`MAX_DEVICE_TOP_K`].
    pub fn top_k(mut self, k: usize, limit: usize) -> Self {
        let k = k.clamp(1, MAX_DEVICE_TOP_K).next_power_of_two();
        if let Some(logits) = self.logits.take() {
            let [rows, _] = logits.dims();
            let logits = cube(logits);
            let best = empty(&logits.device, [rows, 2 * k]);
            let template = Template {
                name: "top_k",
                source: include_str!("../../../shaders/top_k.wgsl"),
                variant: ("", k as u32),
                values: &|| vec![("K", k.to_string())],
                workgroup: 64,
            };
            let info = TopKInfo { cols: self.vocab as u32, limit: limit.min(self.vocab) as u32 };
            launch(&logits.device, &template, [rows as u32, 1, 1], &[Arg::Read(&logits.handle), Arg::Write(&best.handle)], &info);
            self.logits = Some(from_cube(best));
        }
        self.top_k = Some(k);
        self
    }

    /// Waits for the device and returns the rows.
    pub fn read(mut self) -> Result<LogitRows, ModelError> {
        let Some(logits) = self.logits.take() else { return Ok(self.rows(Vec::new())) };
        guard(|| Ok(self.rows(logits.try_into_vec_as::<f32>().map_err(|e| ModelError::Backend(format!("{e:?}")))?)))
    }

    /// [`PendingLogits::read`] without blocking the thread.
    pub async fn read_async(mut self) -> Result<LogitRows, ModelError> {
        let Some(logits) = self.logits.take() else { return Ok(self.rows(Vec::new())) };
        let data = logits.into_data_async().await.map_err(|e| ModelError::Backend(format!("{e:?}")))?;
        Ok(self.rows(data.try_into_vec::<f32>().map_err(|e| ModelError::Backend(format!("{e:?}")))?))
    }

    fn rows(&self, flat: Vec<f32>) -> LogitRows {
        match self.top_k {
            Some(k) => LogitRows::TopK(
                flat.chunks(2 * k)
                    .map(|row| row.chunks(2).filter(|pair| pair[0] >= 0.0).map(|pair| (pair[0] as u32, pair[1])).collect())
                    .collect(),
            ),
            None => LogitRows::Full(flat.chunks(self.vocab).map(<[f32]>::to_vec).collect()),
        }
    }
}

