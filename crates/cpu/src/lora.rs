//! Low-rank adapters (LoRA) over a batch whose rows run different adapters, or none: what
//! `shaders/lora_shrink.wgsl` and `lora_expand.wgsl` do. The base product runs once for the
//! whole batch; each row then adds its own adapter's `scale * B (A x)`.

use pulp::{Arch, Simd, WithSimd};

use crate::simd::{dot, scale_add};

/// One projection's adapters, one slot each, zero-padded to a common rank: `a` is
/// `[slots, rank, inputs]`, `b` is `[slots, rank, outputs]` (B transposed: each rank's
/// column is a contiguous row, which the expand adds in SIMD).
pub struct LoraStack {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub rank: usize,
    pub inputs: usize,
    pub outputs: usize,
}

/// The adapter a row runs with: its slot in the stacks and its scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowAdapter {
    pub slot: u32,
    pub scale: f32,
}

/// Outputs per parallel task: a decode's one row still spreads over the threads.
const OUTPUTS_PER_TASK: usize = 256;

impl LoraStack {
    pub fn slots(&self) -> usize {
        self.a.len() / (self.rank * self.inputs).max(1)
    }

    /// `y[r] += scale_r * B_r (A_r x[r])` for every row `r` of `x` (`[rows, inputs]`) and
    /// `y` (`[rows, outputs]`) whose adapter has a slot here.
    pub fn add_to(&self, y: &mut [f32], x: &[f32], rows: &[Option<RowAdapter>]) {
        assert_eq!(x.len(), rows.len() * self.inputs, "x must be [rows, inputs]");
        assert_eq!(y.len(), rows.len() * self.outputs, "y must be [rows, outputs]");
        let slots = self.slots();
        // Rows whose adapter adapts nothing here (a slot past this stack's) add nothing.
        let work = (y.chunks_exact_mut(self.outputs).zip(x.chunks_exact(self.inputs)).zip(rows))
            .filter_map(|((y, x), adapter)| adapter.filter(|a| (a.slot as usize) < slots).map(|adapter| (y, x, adapter)))
            .flat_map(|(y, x, adapter)| {
                (y.chunks_mut(OUTPUTS_PER_TASK).enumerate()).map(move |(i, y)| Outputs { stack: self, y, first: i * OUTPUTS_PER_TASK, x, adapter })
            });
        crate::threads::for_each(work, |task| Arch::new().dispatch(task));
    }
}

/// A range of one row's outputs: `y` from output `first` on.
struct Outputs<'a> {
    stack: &'a LoraStack,
    y: &'a mut [f32],
    first: usize,
    x: &'a [f32],
    adapter: RowAdapter,
}

impl WithSimd for Outputs<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let s = self.stack;
        let slot = self.adapter.slot as usize;
        let a = &s.a[slot * s.rank * s.inputs..][..s.rank * s.inputs];
        let b = &s.b[slot * s.rank * s.outputs..][..s.rank * s.outputs];
        for (a, b) in a.chunks_exact(s.inputs).zip(b.chunks_exact(s.outputs)) {
            let t = self.adapter.scale * dot(simd, a, self.x);
            scale_add(simd, self.y, 1.0, t, &b[self.first..][..self.y.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_row_adds_its_own_adapters_product() {
        // Two slots of rank 2 over 3 inputs and 2 outputs.
        let stack = LoraStack {
            a: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, /* slot 1 */ 0.0, 0.0, 1.0, 1.0, 1.0, 1.0],
            // [slots, rank, outputs]
            b: vec![1.0, 0.0, 0.0, 1.0, /* slot 1 */ 2.0, 0.0, 0.0, 3.0],
            rank: 2,
            inputs: 3,
            outputs: 2,
        };
        let x = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0];
        let mut y = vec![10.0; 6];
        let rows = [Some(RowAdapter { slot: 0, scale: 1.0 }), None, Some(RowAdapter { slot: 1, scale: 0.5 })];
        stack.add_to(&mut y, &x, &rows);
        // Slot 0: A x = (1, 2), B t = (1, 2). Slot 1: A x = (3, 6) * 0.5, B t = (3, 9).
        assert_eq!(y, [11.0, 12.0, 10.0, 10.0, 13.0, 19.0]);
    }
}
