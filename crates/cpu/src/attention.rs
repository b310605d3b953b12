//! Attention of query rows over a paged KV cache: what `shaders/paged_attention.wgsl` and
//! `flash_attention.wgsl` do. Each (row, head) pair is a task: its scores over the
//! positions it sees, their softmax, the weighted sum of the values.

use pulp::{Arch, Simd, WithSimd};

use crate::kv::KvRows;
use crate::simd::{dot, scale_add};
use crate::threads::for_each;

/// How a layer turns query-key products into attention weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreRule {
    /// Multiplies each query-key product.
    pub scale: f32,
    /// Each query sees its last `window` positions only (itself included).
    pub window: Option<usize>,
    /// Scores become `softcap * tanh(score / softcap)`.
    pub softcap: Option<f32>,
}

impl ScoreRule {
    /// The first position a query at `position` sees.
    pub fn first_visible(&self, position: usize) -> usize {
        self.window.map_or(0, |w| (position + 1).saturating_sub(w))
    }
}

/// One layer's keys and values in the pool: slot `s` is row `s` of each; a sequence's
/// position `p` is in slot `table[p / block_size] * block_size + p % block_size`.
pub struct KvLayer<'a> {
    pub keys: KvRows<'a>,
    pub values: KvRows<'a>,
    pub block_size: usize,
}

/// The heads of a layer: queries have `heads`, keys and values `kv_heads` (each shared by
/// `heads / kv_heads` query heads), all `head_dim` wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// A query row: its position and its sequence's block table.
#[derive(Debug, Clone, Copy)]
pub struct QueryRow<'a> {
    pub position: usize,
    pub table: &'a [u32],
}

/// Attention of each row of `q` (`[rows, heads * head_dim]`) over the positions it sees of
/// its sequence, up to its own: `[rows, heads * head_dim]`. A task is a (row, KV head)
/// pair: each key and value is read (decoded, for the encoded types) once for the query
/// heads that share it.
pub fn paged_attention(q: &[f32], rows: &[QueryRow], kv: &KvLayer, heads: Heads, rule: &ScoreRule) -> Vec<f32> {
    let Heads { heads: n_heads, kv_heads, head_dim } = heads;
    let q_width = n_heads * head_dim;
    assert_eq!(q.len(), rows.len() * q_width, "q must be [rows, heads * head_dim]");
    let group = n_heads / kv_heads;
    let mut out = vec![0f32; q.len()];
    let arch = Arch::new();
    for_each(out.chunks_mut(group * head_dim).enumerate(), |(pair, out)| {
        let (row, kv_head) = (&rows[pair / kv_heads], pair % kv_heads);
        let queries = &q[pair * group * head_dim..(pair + 1) * group * head_dim];
        let slot = |p: usize| row.table[p / kv.block_size] as usize * kv.block_size + p % kv.block_size;
        let first = kv_head * head_dim;
        arch.dispatch(OneGroup { queries, position: row.position, slot, first, kv, head_dim, rule, out });
    });
    out
}

/// One (row, KV head) pair's attention, for the query heads of its group.
struct OneGroup<'a, F> {
    /// The group's queries, one `head_dim` slice per head.
    queries: &'a [f32],
    position: usize,
    /// The slot of position `p`.
    slot: F,
    /// The head's first value in a row of keys or values.
    first: usize,
    kv: &'a KvLayer<'a>,
    head_dim: usize,
    rule: &'a ScoreRule,
    out: &'a mut [f32],
}

impl<F: Fn(usize) -> usize> WithSimd for OneGroup<'_, F> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let d = self.head_dim;
        let group = self.queries.len() / d;
        // Online softmax per query head: the running maximum rescales what was summed before
        // it. One allocation per task for those and the decoded key and value.
        let mut scratch = vec![0f32; 2 * group + 2 * d];
        let (max, rest) = scratch.split_at_mut(group);
        let (sum, rest) = rest.split_at_mut(group);
        let (key_scratch, value_scratch) = rest.split_at_mut(d);
        max.fill(f32::NEG_INFINITY);
        for p in self.rule.first_visible(self.position)..=self.position {
            let slot = (self.slot)(p);
            let key = self.kv.keys.read(slot, self.first, key_scratch);
            let value = self.kv.values.read(slot, self.first, value_scratch);
            for h in 0..group {
                let mut score = dot(simd, &self.queries[h * d..(h + 1) * d], key) * self.rule.scale;
                if let Some(cap) = self.rule.softcap {
                    score = cap * (score / cap).tanh();
                }
                let top = max[h].max(score);
                let (keep, weight) = ((max[h] - top).exp(), (score - top).exp());
                max[h] = top;
                sum[h] = sum[h] * keep + weight;
                scale_add(simd, &mut self.out[h * d..(h + 1) * d], keep, weight, value);
            }
        }
        for (out, &sum) in self.out.chunks_mut(d).zip(sum.iter()) {
            out.iter_mut().for_each(|v| *v /= sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvType;

    /// Against softmax(q·k) v written out, with grouped heads, scattered blocks, a window
    /// and a soft-cap.
    #[test]
    fn matches_softmax_attention_written_out() {
        let heads = Heads { heads: 4, kv_heads: 2, head_dim: 8 };
        let kv_dim = heads.kv_heads * heads.head_dim;
        let (block_size, slots) = (3, 30);
        let value = |i: usize| ((i * 7919) % 101) as f32 / 50.0 - 1.0;
        let keys: Vec<f32> = (0..slots * kv_dim).map(value).collect();
        let values: Vec<f32> = (0..slots * kv_dim).map(|i| value(i + 13)).collect();
        fn rows_of(v: &[f32], kv_dim: usize) -> KvRows<'_> {
            KvRows { ty: KvType::F32, bytes: bytemuck::cast_slice(v), row_bytes: kv_dim * 4 }
        }
        let kv = KvLayer { keys: rows_of(&keys, kv_dim), values: rows_of(&values, kv_dim), block_size };
        let table = [7u32, 2, 9, 0, 5];
        let rows = [QueryRow { position: 0, table: &table }, QueryRow { position: 13, table: &table }];
        let q: Vec<f32> = (0..2 * heads.heads * heads.head_dim).map(|i| value(i + 5)).collect();
        for rule in [ScoreRule { scale: 0.3, window: None, softcap: None }, ScoreRule { scale: 0.5, window: Some(4), softcap: Some(0.8) }] {
            let got = paged_attention(&q, &rows, &kv, heads, &rule);
            for (r, row) in rows.iter().enumerate() {
                for h in 0..heads.heads {
                    let d = heads.head_dim;
                    let query = &q[(r * heads.heads + h) * d..][..d];
                    let at = |p: usize| (table[p / block_size] as usize * block_size + p % block_size) * kv_dim + h / 2 * d;
                    let visible: Vec<usize> = (rule.first_visible(row.position)..=row.position).collect();
                    let scores: Vec<f32> = visible
                        .iter()
                        .map(|&p| {
                            let s = query.iter().zip(&keys[at(p)..at(p) + d]).map(|(a, b)| a * b).sum::<f32>() * rule.scale;
                            rule.softcap.map_or(s, |c| c * (s / c).tanh())
                        })
                        .collect();
                    let total: f32 = scores.iter().map(|s| s.exp()).sum();
                    for i in 0..d {
                        let expected: f32 = visible.iter().zip(&scores).map(|(&p, s)| s.exp() / total * values[at(p) + i]).sum();
                        let got = got[(r * heads.heads + h) * d + i];
                        assert!((got - expected).abs() < 1e-5, "{rule:?} row {r} head {h} dim {i}: {got} vs {expected}");
                    }
                }
            }
        }
    }
}
