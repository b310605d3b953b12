//! Attention of query rows over a paged KV cache: what `shaders/paged_attention.wgsl` and
//! `flash_attention.wgsl` do. Each (row, head) pair is a task: its scores over the
//! positions it sees, their softmax, the weighted sum of the values.

use pulp::{Arch, Simd, WithSimd};

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

/// One layer's keys and values in the pool: slot `s` is row `s` of `[slots, kv_dim]`; a
/// sequence's position `p` is in slot `table[p / block_size] * block_size + p % block_size`.
pub struct KvLayer<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
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
/// its sequence, up to its own: `[rows, heads * head_dim]`.
pub fn paged_attention(q: &[f32], rows: &[QueryRow], kv: &KvLayer, heads: Heads, rule: &ScoreRule) -> Vec<f32> {
    let Heads { heads: n_heads, kv_heads, head_dim } = heads;
    let (q_width, kv_dim) = (n_heads * head_dim, kv_heads * head_dim);
    assert_eq!(q.len(), rows.len() * q_width, "q must be [rows, heads * head_dim]");
    let mut out = vec![0f32; q.len()];
    let arch = Arch::new();
    for_each(out.chunks_mut(head_dim).enumerate(), |(pair, out)| {
        let (row, head) = (pair / n_heads, pair % n_heads);
        let query = &q[pair * head_dim..(pair + 1) * head_dim];
        let kv_head = head / (n_heads / kv_heads);
        let slot = |p: usize| {
            let row = &rows[row];
            (row.table[p / kv.block_size] as usize * kv.block_size + p % kv.block_size) * kv_dim + kv_head * head_dim
        };
        arch.dispatch(OnePair { query, position: rows[row].position, slot, kv, head_dim, rule, out });
    });
    out
}

/// One (row, head) pair's attention.
struct OnePair<'a, F> {
    query: &'a [f32],
    position: usize,
    /// Where position `p`'s key (and value) of this head starts in the layer's buffers.
    slot: F,
    kv: &'a KvLayer<'a>,
    head_dim: usize,
    rule: &'a ScoreRule,
    out: &'a mut [f32],
}

impl<F: Fn(usize) -> usize> WithSimd for OnePair<'_, F> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let d = self.head_dim;
        // Online softmax: the running maximum rescales what was summed before it.
        let (mut max, mut sum) = (f32::NEG_INFINITY, 0f32);
        for p in self.rule.first_visible(self.position)..=self.position {
            let at = (self.slot)(p);
            let mut score = dot(simd, self.query, &self.kv.keys[at..at + d]) * self.rule.scale;
            if let Some(cap) = self.rule.softcap {
                score = cap * (score / cap).tanh();
            }
            let top = max.max(score);
            let (keep, weight) = ((max - top).exp(), (score - top).exp());
            max = top;
            sum = sum * keep + weight;
            scale_add(simd, self.out, keep, weight, &self.kv.values[at..at + d]);
        }
        self.out.iter_mut().for_each(|v| *v /= sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let kv = KvLayer { keys: &keys, values: &values, block_size };
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
