//! The ops a forward pass is written in ([`Ops`]), with one implementation per backend:
//! [`gpu::GpuOps`] launches the WGSL kernels, [`cpu::CpuOps`] runs `cinder-cpu`'s. The
//! forward pass (`model.rs`) is written once over them; the reference (`reference.rs`)
//! stays the plain-loop oracle both are tested against.

pub(crate) mod cpu;
pub(crate) mod gpu;

use std::ops::Range;

use cinder_cpu::{LoraStack, RowAdapter};
use cinder_gguf::{GgufFile, TensorInfo};

use crate::arch::{Activation, RopeLayout};
use crate::attention::ScoreRule;
use crate::logits::Logits;
use crate::paged::{BatchLayout, PagedKvCache};
use crate::{ModelConfig, ModelError};

pub(crate) trait Ops {
    /// Activations, `[rows, width]`.
    type Rows: Clone;
    /// A norm's weight or a bias.
    type Vector;
    /// A linear layer's matrix.
    type Matrix;
    /// A RoPE's angles.
    type Rope;
    /// A step's [`BatchLayout`] where the kernels read it.
    type Batch;
    /// A projection's LoRA adapters, stacked by slot.
    type Lora;
    /// The adapter each row of a step runs with.
    type LoraRows;

    fn rows(&self, values: Vec<f32>, width: usize) -> Self::Rows;
    fn vector(&self, values: Vec<f32>) -> Self::Vector;
    /// Rows `rows` of the matrix `info`.
    fn matrix(&self, file: &GgufFile, info: &TensorInfo, rows: Range<usize>) -> Result<Self::Matrix, ModelError>;
    /// Angles `[positions, half]`.
    fn rope(&self, layout: RopeLayout, cos: Vec<f32>, sin: Vec<f32>, half: usize) -> Self::Rope;
    fn batch(&self, layout: BatchLayout) -> Self::Batch;
    /// A pool of `num_blocks` blocks of `block_size` slots for `config`'s layers.
    fn kv_pool(&self, config: &ModelConfig, num_blocks: usize, block_size: usize) -> Result<PagedKvCache, ModelError>;

    fn lora(&self, stack: LoraStack) -> Self::Lora;
    fn lora_rows(&self, rows: &[Option<RowAdapter>]) -> Self::LoraRows;

    fn matrix_bytes(matrix: &Self::Matrix) -> usize;
    fn lora_bytes(lora: &Self::Lora) -> usize;
    fn vector_len(vector: &Self::Vector) -> usize;

    /// `x W^T`.
    fn linear(&self, matrix: &Self::Matrix, x: Self::Rows) -> Self::Rows;
    /// `x W^T + residual`.
    fn linear_add(&self, matrix: &Self::Matrix, x: Self::Rows, residual: Self::Rows) -> Self::Rows;
    /// `y + scale_r * B_r (A_r x)` for each row `r` that runs an adapter of `lora`.
    fn lora_add(&self, y: Self::Rows, x: &Self::Rows, lora: &Self::Lora, rows: &Self::LoraRows) -> Self::Rows;
    fn add(&self, a: Self::Rows, b: Self::Rows) -> Self::Rows;
    /// `x + bias` on every row.
    fn add_bias(&self, x: Self::Rows, bias: &Self::Vector) -> Self::Rows;
    /// RMSNorm of each `weight`-wide slice of every row (a row, or each head of one).
    fn rms_norm(&self, x: Self::Rows, weight: &Self::Vector, eps: f32) -> Self::Rows;
    /// `activation(gate) * up`.
    fn gated(&self, gate: Self::Rows, up: Self::Rows, activation: Activation) -> Self::Rows;
    /// RoPE on every `head_dim`-wide head, at the batch's positions.
    fn rotate(&self, x: Self::Rows, head_dim: usize, rope: &Self::Rope, batch: &Self::Batch) -> Self::Rows;
    /// Writes each row's key and value into its slot of `layer`.
    fn write_kv(&self, cache: &mut PagedKvCache, layer: usize, k: Self::Rows, v: Self::Rows, batch: &Self::Batch);
    /// Attention of each query row over its sequence in `layer`.
    fn attend(&self, cache: &PagedKvCache, layer: usize, q: Self::Rows, config: &ModelConfig, rule: &ScoreRule, batch: &Self::Batch) -> Self::Rows;
    /// Rows `rows` of `x`, in that order.
    fn select(&self, x: Self::Rows, rows: &[usize]) -> Self::Rows;
    /// `cap * tanh(x / cap)`.
    fn softcap(&self, x: Self::Rows, cap: f32) -> Self::Rows;
    /// One row per group of `x`'s consecutive rows (`lens` of them each): their sum.
    fn sum_groups(&self, x: Self::Rows, lens: &[usize]) -> Self::Rows;
    /// Rows for the caller to read ([`PendingLogits`]).
    fn read_back(&self, x: Self::Rows) -> Logits;
}

/// The gate's activation, as one function of a value.
pub(crate) fn activation(activation: Activation) -> fn(f32) -> f32 {
    match activation {
        Activation::Silu => |g| g / (1.0 + (-g).exp()),
        Activation::GeluTanh => |g| 0.5 * g * (1.0 + (0.797_884_6 * (g + 0.044_715 * g * g * g)).tanh()),
    }
}
