//! What a step reads back: the logits of the rows that asked, whole or as each row's best
//! few candidates picked on the device, and the pooled rows of embeddings' chunks.

use burn::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

use crate::ModelError;
use crate::kernel::{Arg, Template, cube, empty, from_cube, launch};
use crate::error::guard;

/// Logits of [`Model::launch_batch`](crate::Model::launch_batch), one row per chunk that
/// asked: queued on the device, or computed on the CPU.
#[must_use = "the logits are only computed once read"]
pub struct PendingLogits {
    logits: Option<Logits>,
    vocab: usize,
    /// The `k` of [`PendingLogits::top_k`], once it has run.
    top_k: Option<usize>,
    /// One row per chunk that pools ([`crate::SeqChunk::pool`]), `[chunks, width]`.
    pooled: Option<(Logits, usize)>,
}

/// `[rows, vocab]`, or on the device `[rows, 2k]` candidates once [`PendingLogits::top_k`]
/// has run.
pub(crate) enum Logits {
    Device(Tensor<2>),
    /// `[rows, vocab]` in host memory.
    Host(Vec<f32>),
    /// Each row's best `(token, logit)` pairs, picked by [`PendingLogits::top_k`].
    HostTopK(Vec<Vec<(u32, f32)>>),
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
pub struct Outputs {
    pub logits: LogitRows,
    /// The pooled row of each chunk that pools, in chunk order.
    pub pooled: Vec<Vec<f32>>,
}

/// The logits a step reads back.
#[derive(Debug, Clone, PartialEq)]
pub enum LogitRows {
    /// Each row's logits.
    Full(Vec<Vec<f32>>),
    /// Each row's best `(token, logit)` pairs, best first, picked on the device
    /// ([`PendingLogits::top_k`]).
    TopK(Vec<Vec<(u32, f32)>>),
}

impl PendingLogits {
    pub(crate) fn new(logits: Option<Logits>, vocab: usize) -> Self {
        Self { logits, vocab, top_k: None, pooled: None }
    }

    /// With the pooled rows, `width` wide, of the chunks that pool.
    pub(crate) fn with_pooled(self, pooled: Option<Logits>, width: usize) -> Self {
        Self { pooled: pooled.map(|p| (p, width)), ..self }
    }

    /// Keeps each row's `k` best logits among the first `limit` on the device, best first,
    /// equal logits in token order (as a CPU sort ranks them), NaN dropped: `k = 1` is the
    /// greedy token. A read then moves `2k` numbers per row instead of the vocabulary.
    /// `k` is rounded up to a power of two (fewer kernel variants) and at most
    /// [`MAX_DEVICE_TOP_K`].
    pub fn top_k(mut self, k: usize, limit: usize) -> Self {
        let k = k.clamp(1, MAX_DEVICE_TOP_K).next_power_of_two();
        let limit = limit.min(self.vocab);
        if let Some(Logits::Host(flat)) = &self.logits {
            self.logits = Some(Logits::HostTopK(flat.chunks(self.vocab).map(|row| best(&row[..limit], k)).collect()));
        } else if let Some(Logits::Device(logits)) = self.logits.take() {
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
            let info = TopKInfo { cols: self.vocab as u32, limit: limit as u32 };
            launch(&logits.device, &template, [rows as u32, 1, 1], &[Arg::Read(&logits.handle), Arg::Write(&best.handle)], &info);
            self.logits = Some(Logits::Device(from_cube(best)));
        }
        self.top_k = Some(k);
        self
    }

    /// Waits for the device and returns the rows.
    pub fn read(mut self) -> Result<Outputs, ModelError> {
        let logits = match self.logits.take() {
            Some(Logits::Device(logits)) => self.rows(guard(|| read_device(logits))?),
            host => self.host_rows(host),
        };
        let pooled = match self.pooled.take() {
            Some((Logits::Device(rows), width)) => split(guard(|| read_device(rows))?, width),
            Some((Logits::Host(rows), width)) => split(rows, width),
            _ => Vec::new(),
        };
        Ok(Outputs { logits, pooled })
    }

    /// [`PendingLogits::read`] without blocking the thread.
    pub async fn read_async(mut self) -> Result<Outputs, ModelError> {
        let logits = match self.logits.take() {
            Some(Logits::Device(logits)) => self.rows(read_device_async(logits).await?),
            host => self.host_rows(host),
        };
        let pooled = match self.pooled.take() {
            Some((Logits::Device(rows), width)) => split(read_device_async(rows).await?, width),
            Some((Logits::Host(rows), width)) => split(rows, width),
            _ => Vec::new(),
        };
        Ok(Outputs { logits, pooled })
    }

    fn host_rows(&self, logits: Option<Logits>) -> LogitRows {
        match logits {
            Some(Logits::HostTopK(rows)) => LogitRows::TopK(rows),
            Some(Logits::Host(flat)) => self.rows(flat),
            _ => self.rows(Vec::new()),
        }
    }

    fn rows(&self, flat: Vec<f32>) -> LogitRows {
        match self.top_k {
            Some(k) => LogitRows::TopK(
                flat.chunks(2 * k)
                    .map(|row| row.chunks(2).filter(|pair| pair[0] >= 0.0).map(|pair| (pair[0] as u32, pair[1])).collect())
                    .collect(),
            ),
            None => LogitRows::Full(split(flat, self.vocab)),
        }
    }
}

fn split(flat: Vec<f32>, width: usize) -> Vec<Vec<f32>> {
    flat.chunks(width).map(<[f32]>::to_vec).collect()
}

fn read_device(rows: Tensor<2>) -> Result<Vec<f32>, ModelError> {
    rows.try_into_vec_as::<f32>().map_err(|e| ModelError::Backend(format!("{e:?}")))
}

async fn read_device_async(rows: Tensor<2>) -> Result<Vec<f32>, ModelError> {
    let data = rows.into_data_async().await.map_err(|e| ModelError::Backend(format!("{e:?}")))?;
    data.try_into_vec::<f32>().map_err(|e| ModelError::Backend(format!("{e:?}")))
}


/// The `k` best `(token, logit)` pairs of `row`, best first, equal logits in token order,
/// NaN dropped: what top_k.wgsl picks on the device.
fn best(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut pairs: Vec<(u32, f32)> = row.iter().enumerate().filter(|(_, v)| !v.is_nan()).map(|(i, &v)| (i as u32, v)).collect();
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.partial_cmp(&a.1).expect("NaN was dropped").then(a.0.cmp(&b.0));
    if pairs.len() > k {
        pairs.select_nth_unstable_by(k - 1, order);
        pairs.truncate(k);
    }
    pairs.sort_unstable_by(order);
    pairs
}
