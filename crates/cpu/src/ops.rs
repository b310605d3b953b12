//! The elementwise and normalising ops of a forward pass, in place on `[rows, width]`
//! row-major activations: what `shaders/rms_norm.wgsl`, `gated.wgsl` and `rope.wgsl` do.

use crate::threads::for_each;

/// Rows per parallel task: elementwise work is cheap, so tasks take many rows.
const ROWS_PER_TASK: usize = 16;

/// RMSNorm of each `weight.len()`-wide slice of `x`, scaled by `weight`.
pub fn rms_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    let width = weight.len();
    assert_eq!(x.len() % width, 0, "x is not made of {width}-wide slices");
    for_each(x.chunks_mut(width * ROWS_PER_TASK), |rows| {
        for row in rows.chunks_exact_mut(width) {
            let mean = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
            let scale = 1.0 / (mean + eps).sqrt();
            row.iter_mut().zip(weight).for_each(|(v, w)| *v *= scale * w);
        }
    });
}

/// `gate = activation(gate) * up`, elementwise.
pub fn gated(gate: &mut [f32], up: &[f32], activation: fn(f32) -> f32) {
    assert_eq!(gate.len(), up.len(), "gate and up differ in length");
    let chunk = 4096;
    for_each(gate.chunks_mut(chunk).zip(up.chunks(chunk)), |(gate, up)| {
        gate.iter_mut().zip(up).for_each(|(g, u)| *g = activation(*g) * u);
    });
}

/// A RoPE's angles: `cos` and `sin` of `[positions, head_dim / 2]`, and how it pairs a
/// head's dimensions.
pub struct RopeTables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    /// Pairs `(x[i], x[i + d/2])` (NEOX) rather than `(x[2i], x[2i + 1])`.
    pub halves: bool,
}

impl RopeTables {
    /// Rotates the heads of each row of `x` (`[rows, heads * head_dim]`) by the angles of
    /// the row's position.
    pub fn rotate(&self, x: &mut [f32], head_dim: usize, positions: &[u32]) {
        let half = head_dim / 2;
        let width = x.len() / positions.len().max(1);
        assert_eq!(width * positions.len(), x.len(), "one position per row");
        for_each(x.chunks_mut(width).zip(positions), |(row, &position)| {
            let at = position as usize * half;
            let (cos, sin) = (&self.cos[at..at + half], &self.sin[at..at + half]);
            for head in row.chunks_exact_mut(head_dim) {
                for i in 0..half {
                    let (a, b) = if self.halves { (i, i + half) } else { (2 * i, 2 * i + 1) };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos[i] - x1 * sin[i];
                    head[b] = x0 * sin[i] + x1 * cos[i];
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_scales_each_slice_to_unit_root_mean_square() {
        let mut x = vec![3.0, 4.0, 0.0, 2.0];
        rms_norm(&mut x, &[1.0, 2.0], 0.0);
        let s = (12.5f32).sqrt();
        let expected = [3.0 / s, 8.0 / s, 0.0, 2.0 * 2.0 / 2f32.sqrt()];
        x.iter().zip(expected).for_each(|(a, b)| assert!((a - b).abs() < 1e-6, "{x:?}"));
    }

    #[test]
    fn rope_rotates_each_pair_by_its_angle() {
        // One head of 4, two positions; position 1 turns the pairs by 90° and 180°.
        let tables = RopeTables { cos: vec![1.0, 1.0, 0.0, -1.0], sin: vec![0.0, 0.0, 1.0, 0.0], halves: true };
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0];
        tables.rotate(&mut x, 4, &[0, 1]);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0, -3.0, -2.0, 1.0, -4.0]);
        let adjacent = RopeTables { halves: false, ..tables };
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        adjacent.rotate(&mut x, 4, &[1]);
        assert_eq!(x, [-2.0, 1.0, -3.0, -4.0]);
    }
}
