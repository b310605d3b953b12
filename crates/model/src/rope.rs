//! Rotary position embeddings: the angles of every position, as ggml computes them for
//! `ggml_rope_ext` (frequency base, linear scaling, YaRN, per-dimension frequency factors
//! and magnitude scale), tabulated once at load. The device kernel and the CPU reference
//! both rotate with these tables.

use cinder_gguf::Metadata;

use crate::ModelError;
use crate::arch::{GlobalWeight, RopeLayout};

/// YaRN's blend of interpolated and extrapolated frequencies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yarn {
    /// The context the model was trained with before scaling.
    pub original_context: usize,
    pub beta_fast: f32,
    pub beta_slow: f32,
}

/// One RoPE: the layers of a model that share it (Gemma's local and global layers differ).
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub layout: RopeLayout,
    pub base: f32,
    /// Angles are multiplied by this (1 / the linear or YaRN scaling factor).
    pub freq_scale: f32,
    pub yarn: Option<Yarn>,
    /// Cosines and sines are multiplied by this.
    pub attn_factor: f32,
    /// A tensor of per-dimension divisors of the frequencies (Llama 3.1's `rope_freqs`,
    /// Phi-3's LongRoPE factors).
    pub factors: Option<GlobalWeight>,
}

impl Rope {
    /// A RoPE without scaling.
    pub fn plain(layout: RopeLayout, base: f32) -> Self {
        Self { layout, base, freq_scale: 1.0, yarn: None, attn_factor: 1.0, factors: None }
    }

    /// The model's RoPE as its metadata and tensors describe it (`rope.freq_base`,
    /// `rope.scaling.*`, `rope_freqs`, LongRoPE factors; `present` says which tensors the
    /// file has). `context` is the longest sequence the model will run: LongRoPE picks its
    /// long factors beyond the original context.
    pub fn from_metadata(
        m: &Metadata,
        arch: &str,
        layout: RopeLayout,
        context: usize,
        present: &dyn Fn(&str) -> bool,
    ) -> Result<Self, ModelError> {
        let key = |k: &str| format!("{arch}.{k}");
        let float = |m: &Metadata, k: &str| m.optional(&key(k), Metadata::get_f64).map(|v| v.map(|v| v as f32));
        let base = float(m, "rope.freq_base")?.unwrap_or(10_000.0);
        let scaling = m.optional(&key("rope.scaling.type"), |m, k| m.get_str(k))?.unwrap_or("linear");
        let factor = match float(m, "rope.scaling.factor")? {
            Some(f) => f,
            None => float(m, "rope.scale_linear")?.unwrap_or(0.0),
        };
        let attn_factor = float(m, "rope.scaling.attn_factor")?.unwrap_or(1.0);
        let original_context = m
            .optional(&key("rope.scaling.original_context_length"), |m, k| m.get_usize_at_most(k, 1 << 24))?
            .unwrap_or(context);
        let has = |w: GlobalWeight| present(w.name());
        // A factor of 0 (or none) is no scaling; the "none" type ignores any factor.
        let freq_scale = if factor == 0.0 || scaling == "none" { 1.0 } else { 1.0 / factor };
        let mut rope = Self { layout, base, freq_scale, yarn: None, attn_factor, factors: None };
        match scaling {
            "none" | "linear" => {}
            "yarn" => rope.yarn = Some(Yarn { original_context, beta_fast: 32.0, beta_slow: 1.0 }),
            "longrope" => {
                let long = context > original_context;
                rope.factors = Some(if long { GlobalWeight::RopeFactorsLong } else { GlobalWeight::RopeFactorsShort })
                    .filter(|&w| has(w));
            }
            other => return Err(ModelError::Unsupported(format!("RoPE scaling {other:?} (supported: none, linear, yarn, longrope)"))),
        }
        if rope.factors.is_none() && has(GlobalWeight::RopeFreqs) {
            rope.factors = Some(GlobalWeight::RopeFreqs);
        }
        if !(base > 0.0 && base.is_finite() && rope.freq_scale > 0.0 && rope.freq_scale.is_finite() && attn_factor.is_finite()) {
            return Err(ModelError::InvalidConfig(format!(
                "RoPE base {base}, scaling factor {factor} and attention factor {attn_factor} must be positive and finite"
            )));
        }
        Ok(rope)
    }

    /// Cosines and sines of positions `0..positions`, `[positions, head_dim / 2]` each.
    /// `factors` holds the frequency divisors when [`Rope::factors`] names a tensor.
    pub fn tables(&self, head_dim: usize, positions: usize, factors: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
        let half = head_dim / 2;
        let inv_freq = self.inverse_frequencies(head_dim, factors);
        let (corr_low, corr_high) = self.yarn.map_or((0.0, 0.0), |y| yarn_correction_dims(head_dim, y, self.base));
        let mut mscale = f64::from(self.attn_factor);
        if self.yarn.is_some() {
            mscale *= 1.0 + 0.1 * (1.0 / f64::from(self.freq_scale)).ln();
        }
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for pos in 0..positions {
            for (i, &inv) in inv_freq.iter().enumerate() {
                let extrapolated = pos as f64 * inv;
                let interpolated = extrapolated * f64::from(self.freq_scale);
                let theta = match self.yarn {
                    None => interpolated,
                    Some(_) => {
                        let mix = yarn_ramp(corr_low, corr_high, i);
                        interpolated * (1.0 - mix) + extrapolated * mix
                    }
                };
                cos.push((theta.cos() * mscale) as f32);
                sin.push((theta.sin() * mscale) as f32);
            }
        }
        (cos, sin)
    }

    /// `base^(-2i / head_dim) / factor_i` for each pair `i`.
    fn inverse_frequencies(&self, head_dim: usize, factors: Option<&[f32]>) -> Vec<f64> {
        (0..head_dim / 2)
            .map(|i| {
                let factor = factors.map_or(1.0, |f| f64::from(f[i]));
                f64::from(self.base).powf(-2.0 * i as f64 / head_dim as f64) / factor
            })
            .collect()
    }
}

/// ggml's `ggml_rope_yarn_corr_dims`: the pair indices between which YaRN blends.
fn yarn_correction_dims(head_dim: usize, yarn: Yarn, base: f32) -> (f64, f64) {
    let dim = |rotations: f32| {
        head_dim as f64 * (yarn.original_context as f64 / (f64::from(rotations) * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * f64::from(base).ln())
    };
    let start = dim(yarn.beta_fast).floor().max(0.0);
    let end = dim(yarn.beta_slow).ceil().min(head_dim as f64 - 1.0);
    (start, end)
}

/// ggml's `rope_yarn_ramp` times the extrapolation factor (1): how much of pair `i` keeps
/// its unscaled frequency.
fn yarn_ramp(low: f64, high: f64, i: usize) -> f64 {
    let y = (i as f64 - low) / (high - low).max(0.001);
    1.0 - y.clamp(0.0, 1.0)
}
