//! [`Ops`] on the CPU: host vectors and `cinder-cpu`'s kernels, the weights in their GGUF
//! blocks, the KV pool in host memory.

use std::ops::Range;
use std::sync::Arc;

use cinder_cpu::{BlockMatrix, Heads, KvLayer, LoraStack, QueryRow, RopeTables, RowAdapter, Threads, paged_attention};
use cinder_gguf::{GgmlType, GgufFile, TensorInfo};

use super::{Ops, activation};
use crate::arch::{Activation, RopeLayout};
use crate::attention::ScoreRule;
use crate::logits::Logits;
use crate::paged::{BatchLayout, PagedKvCache, PoolShape};
use crate::{ModelConfig, ModelError};

pub(crate) struct CpuOps {
    pub threads: Arc<Threads>,
}

/// Activations in host memory: `data` is `[rows, width]`, row-major.
#[derive(Clone)]
pub(crate) struct HostRows {
    pub data: Vec<f32>,
    pub width: usize,
}

impl HostRows {
    fn count(&self) -> usize {
        self.data.len() / self.width
    }
}

impl Ops for CpuOps {
    type Rows = HostRows;
    type Vector = Vec<f32>;
    type Matrix = BlockMatrix;
    type Rope = RopeTables;
    type Batch = BatchLayout;
    type Lora = LoraStack;
    type LoraRows = Vec<Option<RowAdapter>>;

    fn rows(&self, values: Vec<f32>, width: usize) -> HostRows {
        HostRows { data: values, width }
    }

    fn vector(&self, values: Vec<f32>) -> Vec<f32> {
        values
    }

    fn matrix(&self, file: &GgufFile, info: &TensorInfo, rows: Range<usize>) -> Result<BlockMatrix, ModelError> {
        let cols = info.row_len() as usize;
        let row_bytes = info.ty.bytes_for(cols as u64).expect("validated at parse") as usize;
        let bytes = file.tensor_shared(info, (rows.start * row_bytes) as u64..(rows.end * row_bytes) as u64);
        let refused = |e: cinder_cpu::MatmulError| ModelError::InvalidConfig(format!("tensor {:?}: {e}", info.name));
        match BlockMatrix::new(info.ty, bytes, rows.len(), cols) {
            Ok(matrix) => Ok(matrix),
            // Formats without a CPU kernel run as f32.
            Err(cinder_cpu::MatmulError::Unsupported { .. }) => {
                let values = file.dequantize_rows(info, rows.start as u64..rows.end as u64)?;
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                BlockMatrix::new(GgmlType::F32, bytes, rows.len(), cols).map_err(refused)
            }
            Err(e) => Err(refused(e)),
        }
    }

    fn rope(&self, layout: RopeLayout, cos: Vec<f32>, sin: Vec<f32>, _half: usize) -> RopeTables {
        RopeTables { cos, sin, halves: layout == RopeLayout::Halves }
    }

    fn batch(&self, layout: BatchLayout) -> BatchLayout {
        layout
    }

    fn kv_pool(&self, config: &ModelConfig, num_blocks: usize, block_size: usize) -> Result<PagedKvCache, ModelError> {
        PagedKvCache::on_host(PoolShape::new(config, num_blocks, block_size))
    }

    fn lora(&self, stack: LoraStack) -> LoraStack {
        stack
    }

    fn lora_rows(&self, rows: &[Option<RowAdapter>]) -> Vec<Option<RowAdapter>> {
        rows.to_vec()
    }

    fn lora_bytes(lora: &LoraStack) -> usize {
        (lora.a.len() + lora.b.len()) * 4
    }

    fn matrix_bytes(matrix: &BlockMatrix) -> usize {
        matrix.bytes()
    }

    fn vector_len(vector: &Vec<f32>) -> usize {
        vector.len()
    }

    fn linear(&self, matrix: &BlockMatrix, x: HostRows) -> HostRows {
        HostRows { data: matrix.matmul(&x.data, x.count()), width: matrix.rows() }
    }

    fn linear_add(&self, matrix: &BlockMatrix, x: HostRows, residual: HostRows) -> HostRows {
        self.add(self.linear(matrix, x), residual)
    }

    fn lora_add(&self, mut y: HostRows, x: &HostRows, lora: &LoraStack, rows: &Vec<Option<RowAdapter>>) -> HostRows {
        lora.add_to(&mut y.data, &x.data, rows);
        y
    }

    fn add(&self, mut a: HostRows, b: HostRows) -> HostRows {
        a.data.iter_mut().zip(&b.data).for_each(|(a, b)| *a += b);
        a
    }

    fn add_bias(&self, mut x: HostRows, bias: &Vec<f32>) -> HostRows {
        x.data.chunks_exact_mut(x.width).for_each(|row| row.iter_mut().zip(bias).for_each(|(v, b)| *v += b));
        x
    }

    fn rms_norm(&self, mut x: HostRows, weight: &Vec<f32>, eps: f32) -> HostRows {
        cinder_cpu::rms_norm(&mut x.data, weight, eps);
        x
    }

    fn gated(&self, mut gate: HostRows, up: HostRows, act: Activation) -> HostRows {
        cinder_cpu::gated(&mut gate.data, &up.data, activation(act));
        gate
    }

    fn rotate(&self, mut x: HostRows, head_dim: usize, rope: &RopeTables, batch: &BatchLayout) -> HostRows {
        rope.rotate(&mut x.data, head_dim, batch.positions());
        x
    }

    fn write_kv(&self, cache: &mut PagedKvCache, layer: usize, k: HostRows, v: HostRows, batch: &BatchLayout) {
        cache.write_host(layer, &k.data, &v.data, batch);
    }

    fn attend(&self, cache: &PagedKvCache, layer: usize, q: HostRows, config: &ModelConfig, rule: &ScoreRule, batch: &BatchLayout) -> HostRows {
        let (group, slot) = cache.layout.layer_slots[layer];
        let (keys, values) = cache.host_rows(slot);
        let kv = KvLayer { keys, values, block_size: cache.block_size };
        let rows: Vec<QueryRow> =
            (0..batch.rows).map(|r| QueryRow { position: batch.positions()[r] as usize, table: batch.table(group, r) }).collect();
        let heads = Heads { heads: config.n_heads, kv_heads: config.n_kv_heads, head_dim: config.head_dim };
        HostRows { data: paged_attention(&q.data, &rows, &kv, heads, rule), width: q.width }
    }

    fn select(&self, x: HostRows, rows: &[usize]) -> HostRows {
        if rows.len() == x.count() && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return x;
        }
        let data = rows.iter().flat_map(|&r| &x.data[r * x.width..(r + 1) * x.width]).copied().collect();
        HostRows { data, width: x.width }
    }

    fn softcap(&self, mut x: HostRows, cap: f32) -> HostRows {
        x.data.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
        x
    }

    fn sum_groups(&self, x: HostRows, lens: &[usize]) -> HostRows {
        let width = x.width;
        let mut data = vec![0.0; lens.len() * width];
        let mut rows = x.data.chunks(width);
        for (sum, &n) in data.chunks_mut(width).zip(lens) {
            for row in rows.by_ref().take(n) {
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
        }
        HostRows { data, width }
    }

    fn read_back(&self, x: HostRows) -> Logits {
        Logits::Host(x.data)
    }
}
