//! [`Ops`] on the wgpu device: Burn tensors and the WGSL kernels.

use std::ops::Range;

use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_cubecl::CubeDevice;
use cinder_cpu::{LoraStack, RowAdapter};
use cinder_gguf::{GgufFile, TensorInfo};

use super::Ops;
use crate::arch::{Activation, RopeLayout};
use crate::attention::{Attention, ScoreRule};
use crate::fused::{gated, rms_norm, rope};
use crate::linear::Linear;
use crate::logits::Logits;
use crate::lora::{DeviceLora, DeviceLoraRows};
use crate::paged::{BatchBuffer, BatchLayout, PagedKvCache, PoolShape};
use crate::{ModelConfig, ModelError};

pub(crate) struct GpuOps {
    pub device: Device,
    pub cube: CubeDevice,
}

impl GpuOps {
    /// The ops on `device`, which must be a wgpu device.
    pub(crate) fn new(device: &Device) -> Result<Self, ModelError> {
        let cube = crate::kernel::cube_device(device).ok_or_else(|| ModelError::Device("not a wgpu device".into()))?;
        Ok(Self { device: device.clone(), cube })
    }
}

/// A RoPE's cos / sin tables on the device.
pub(crate) struct DeviceRope {
    layout: RopeLayout,
    cos: Tensor<2>,
    sin: Tensor<2>,
}

impl Ops for GpuOps {
    type Rows = Tensor<2>;
    type Vector = Tensor<2>;
    type Matrix = Linear;
    type Rope = DeviceRope;
    type Batch = BatchBuffer;
    type Lora = DeviceLora;
    type LoraRows = DeviceLoraRows;

    fn rows(&self, values: Vec<f32>, width: usize) -> Tensor<2> {
        let rows = values.len() / width;
        Tensor::from_data(TensorData::new(values, [rows, width]), &self.device)
    }

    fn vector(&self, values: Vec<f32>) -> Tensor<2> {
        let len = values.len();
        self.rows(values, len)
    }

    fn matrix(&self, file: &GgufFile, info: &TensorInfo, rows: Range<usize>) -> Result<Linear, ModelError> {
        Linear::load_rows(file, info, rows, &self.device)
    }

    fn rope(&self, layout: RopeLayout, cos: Vec<f32>, sin: Vec<f32>, half: usize) -> DeviceRope {
        DeviceRope { layout, cos: self.rows(cos, half), sin: self.rows(sin, half) }
    }

    fn batch(&self, layout: BatchLayout) -> BatchBuffer {
        BatchBuffer::new(&self.cube, layout)
    }

    fn kv_pool(&self, config: &ModelConfig, num_blocks: usize, block_size: usize) -> Result<PagedKvCache, ModelError> {
        let shape = PoolShape::new(config, num_blocks, block_size);
        let buffer = shape.layer_buffer_bytes();
        let limit = crate::max_binding_bytes(&self.device);
        if buffer > limit {
            return Err(ModelError::InvalidParameter(format!(
                "a KV pool of {num_blocks} blocks of {block_size} needs per-layer buffers of {} MiB; the device binds at most {} MiB",
                buffer >> 20,
                limit >> 20
            )));
        }
        let subgroup_width = fixed_subgroup_width(&self.device);
        PagedKvCache::on_device(&self.cube, shape, subgroup_width)
    }

    fn lora(&self, stack: LoraStack) -> DeviceLora {
        DeviceLora::upload(&self.cube, stack)
    }

    fn lora_rows(&self, rows: &[Option<RowAdapter>]) -> DeviceLoraRows {
        DeviceLoraRows::upload(&self.cube, rows)
    }

    fn lora_bytes(lora: &DeviceLora) -> usize {
        lora.bytes()
    }

    fn matrix_bytes(matrix: &Linear) -> usize {
        matrix.device_bytes()
    }

    fn vector_len(vector: &Tensor<2>) -> usize {
        vector.shape().num_elements()
    }

    fn linear(&self, matrix: &Linear, x: Tensor<2>) -> Tensor<2> {
        matrix.forward(x)
    }

    fn linear_add(&self, matrix: &Linear, x: Tensor<2>, residual: Tensor<2>) -> Tensor<2> {
        matrix.forward_add(x, residual)
    }

    fn lora_add(&self, y: Tensor<2>, x: &Tensor<2>, lora: &DeviceLora, rows: &DeviceLoraRows) -> Tensor<2> {
        lora.add_to(y, x.clone(), rows)
    }

    fn add(&self, a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
        a + b
    }

    fn add_bias(&self, x: Tensor<2>, bias: &Tensor<2>) -> Tensor<2> {
        x + bias.clone()
    }

    fn rms_norm(&self, x: Tensor<2>, weight: &Tensor<2>, eps: f32) -> Tensor<2> {
        let [rows, width] = x.dims();
        let part = Self::vector_len(weight);
        rms_norm(x.reshape([rows * width / part, part]), weight, eps).reshape([rows, width])
    }

    fn gated(&self, gate: Tensor<2>, up: Tensor<2>, activation: Activation) -> Tensor<2> {
        gated(gate, up, activation)
    }

    fn rotate(&self, x: Tensor<2>, head_dim: usize, r: &DeviceRope, batch: &BatchBuffer) -> Tensor<2> {
        let [rows, width] = x.dims();
        rope(x.reshape([rows, width / head_dim, head_dim]), &r.cos, &r.sin, r.layout, batch).reshape([rows, width])
    }

    fn write_kv(&self, cache: &mut PagedKvCache, layer: usize, k: Tensor<2>, v: Tensor<2>, batch: &BatchBuffer) {
        cache.write(layer, k, v, batch);
    }

    fn attend(&self, cache: &PagedKvCache, layer: usize, q: Tensor<2>, config: &ModelConfig, rule: &ScoreRule, batch: &BatchBuffer) -> Tensor<2> {
        Attention::new(config, batch, cache).attend(layer, q, rule)
    }

    fn select(&self, x: Tensor<2>, rows: &[usize]) -> Tensor<2> {
        if rows.len() == x.dims()[0] && rows.iter().enumerate().all(|(i, &r)| i == r) {
            x
        } else if let [row] = rows {
            x.slice([*row..*row + 1])
        } else {
            let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            let len = rows.len();
            x.select(0, Tensor::<1, Int>::from_data(TensorData::new(rows, [len]), &self.device))
        }
    }

    fn softcap(&self, x: Tensor<2>, cap: f32) -> Tensor<2> {
        x.div_scalar(cap).tanh().mul_scalar(cap)
    }

    fn sum_groups(&self, x: Tensor<2>, lens: &[usize]) -> Tensor<2> {
        if lens.iter().all(|&n| n == 1) {
            return x;
        }
        let mut start = 0;
        let sums = lens.iter().map(|&n| {
            start += n;
            x.clone().slice([start - n..start]).sum_dim(0)
        });
        Tensor::cat(sums.collect(), 0)
    }

    fn read_back(&self, x: Tensor<2>) -> Logits {
        Logits::Device(x)
    }
}

/// The adapter's subgroup width, where every subgroup has it.
pub(crate) fn fixed_subgroup_width(device: &Device) -> Option<usize> {
    let adapter = crate::adapter_info(device)?;
    let width = adapter.subgroup_max_size?;
    (adapter.subgroup_min_size == Some(width)).then_some(width as usize)
}
