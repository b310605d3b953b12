//! The paged KV cache: the pool of blocks (on the device, or in host memory for the CPU
//! backend), the batch's layout over it, and the writes and copies of its slots (attention
//! over it is [`crate::attention`] on the GPU, `cinder_cpu::paged_attention` on the CPU).
//!
//! Keys and values of every sequence live in one pool of fixed-size blocks per layer (the
//! scheduler's blocks): token slot `s` of the pool is row `s` of a `[slots, kv_dim]` buffer.
//! A sequence owns a list of blocks, its block table; position `p` is stored in slot
//! `table[p / block_size] * block_size + p % block_size`. Sequences of any lengths then share
//! one batch: each step's new keys and values are scattered into their slots
//! (`shaders/kv_write.wgsl`) and every query row attends through its own table
//! (`shaders/paged_attention.wgsl`; long prompt chunks `shaders/flash_attention.wgsl`), so
//! prompt chunks and decode tokens run in one forward pass without padding, and blocks can
//! be shared between sequences (a cached prompt prefix) or copied on write
//! ([`Model::copy_blocks`](crate::Model::copy_blocks)).
//!
//! The layers are split into groups of equal size ([`KvLayout`]): a sequence has one block
//! table per group, and a block of the pool holds one group's layers, so a group whose
//! layers attend through a sliding window can give back the blocks behind it while the
//! others keep theirs. The pool is `group_size` per-layer buffers; layer `l` uses the buffer
//! of its place in its group and its group's block table.

use burn::tensor::Tensor;
use burn_cubecl::CubeDevice;
use burn_cubecl::cubecl::server::Handle;
use bytemuck::{Pod, Zeroable};

use cinder_cpu::{KvRows, KvType};

use crate::kernel::{Arg, MAX_WORKGROUPS, Template, cube, launch, upload};
use crate::{KvLayout, KvTypes, ModelConfig, ModelError};

/// The KV pool: on the device for a model on the GPU, in host memory for one on the CPU.
pub struct PagedKvCache {
    pub(crate) layout: KvLayout,
    num_blocks: usize,
    pub(crate) block_size: usize,
    pub(crate) kv_dim: usize,
    pub(crate) types: KvTypes,
    pub(crate) store: KvStore,
}

/// Where the pool's keys and values are: one buffer per place in a layer group
/// (`group_size` of each), token slot `s` at row `s`, rows of [`KvType::row_bytes`] of
/// their type. On the host a quantized row is llama.cpp's blocks one after another; on the
/// device its quants come first, then its blocks' f16 scales, so that every read is of
/// whole 32-bit words (the same bytes per row).
pub(crate) enum KvStore {
    Device(DeviceKv),
    Host { keys: Vec<Vec<u32>>, values: Vec<Vec<u32>> },
}

/// The pool's buffers on the device.
pub(crate) struct DeviceKv {
    pub device: CubeDevice,
    pub keys: Vec<Handle>,
    pub values: Vec<Handle>,
    /// The adapter's subgroup width where it is fixed: long chunks then attend through
    /// flash_attention_subgroup.wgsl.
    pub subgroup_width: Option<usize>,
}

/// The shape of a pool: its layers' grouping, the width and types of a slot's keys and
/// values, and its blocks.
#[derive(Debug, Clone)]
pub(crate) struct PoolShape {
    pub layout: KvLayout,
    pub kv_dim: usize,
    pub types: KvTypes,
    pub num_blocks: usize,
    pub block_size: usize,
}

impl PoolShape {
    pub(crate) fn new(config: &ModelConfig, num_blocks: usize, block_size: usize) -> Self {
        Self { layout: config.kv_layout(), kv_dim: config.kv_dim(), types: config.kv_types, num_blocks, block_size }
    }

    /// Bytes of one layer's keys and of its values.
    fn buffer_bytes(&self) -> (usize, usize) {
        let slots = self.num_blocks.saturating_mul(self.block_size);
        let (k, v) = self.types.row_bytes(self.kv_dim);
        (slots.saturating_mul(k), slots.saturating_mul(v))
    }

    /// The larger of one layer's keys and values: each such buffer is bound whole by the
    /// kernels, so it must stay within the device's binding limit.
    pub(crate) fn layer_buffer_bytes(&self) -> usize {
        let (k, v) = self.buffer_bytes();
        k.max(v)
    }

    /// Bytes one block takes.
    fn block_bytes(&self) -> usize {
        block_bytes(self.layout.group_size, self.block_size, self.kv_dim, self.types)
    }
}

/// Bytes one block of `block_size` positions takes: the keys and values of a group's
/// `group_size` layers.
fn block_bytes(group_size: usize, block_size: usize, kv_dim: usize, types: KvTypes) -> usize {
    let (k, v) = types.row_bytes(kv_dim);
    group_size * block_size * (k + v)
}

impl PagedKvCache {
    fn checked(shape: PoolShape, store: KvStore) -> Result<Self, ModelError> {
        if shape.num_blocks == 0 || shape.block_size == 0 {
            return Err(ModelError::InvalidParameter("a KV cache needs at least one block of one slot".into()));
        }
        let PoolShape { layout, kv_dim, types, num_blocks, block_size } = shape;
        Ok(Self { layout, num_blocks, block_size, kv_dim, types, store })
    }

    pub(crate) fn on_device(device: &CubeDevice, shape: PoolShape, subgroup_width: Option<usize>) -> Result<Self, ModelError> {
        let (key_bytes, value_bytes) = shape.buffer_bytes();
        let client = device.client();
        let buffers = |bytes| (0..shape.layout.group_size).map(|_| client.empty(bytes)).collect::<Vec<_>>();
        let subgroup_width = subgroup_width.filter(|w| w.is_power_of_two() && (4..=64).contains(w));
        let store = KvStore::Device(DeviceKv { device: device.clone(), keys: buffers(key_bytes), values: buffers(value_bytes), subgroup_width });
        Self::checked(shape, store)
    }

    pub(crate) fn on_host(shape: PoolShape) -> Result<Self, ModelError> {
        let (key_bytes, value_bytes) = shape.buffer_bytes();
        let (num_blocks, block_size) = (shape.num_blocks, shape.block_size);
        let buffers = |bytes: usize| -> Result<Vec<Vec<u32>>, ModelError> {
            (0..shape.layout.group_size)
                .map(|_| {
                    let mut buffer = Vec::new();
                    buffer.try_reserve_exact(bytes / 4).map_err(|_| ModelError::InvalidParameter(format!("no host memory for a KV pool of {num_blocks} blocks of {block_size}")))?;
                    buffer.resize(bytes / 4, 0);
                    Ok(buffer)
                })
                .collect()
        };
        let store = KvStore::Host { keys: buffers(key_bytes)?, values: buffers(value_bytes)? };
        Self::checked(shape, store)
    }

    /// The device buffers of a pool the GPU's kernels use.
    pub(crate) fn device_kv(&self) -> &DeviceKv {
        match &self.store {
            KvStore::Device(kv) => kv,
            KvStore::Host { .. } => unreachable!("checked by the model: a GPU model's pool is on the device"),
        }
    }

    /// Layer buffer `slot`'s keys and values in host memory (a CPU model's pool).
    pub(crate) fn host_rows(&self, slot: usize) -> (KvRows<'_>, KvRows<'_>) {
        let KvStore::Host { keys, values } = &self.store else { unreachable!("checked by the model: a CPU model's pool is on the host") };
        let (key_row, value_row) = self.types.row_bytes(self.kv_dim);
        (
            KvRows { ty: self.types.keys, bytes: bytemuck::cast_slice(&keys[slot]), row_bytes: key_row },
            KvRows { ty: self.types.values, bytes: bytemuck::cast_slice(&values[slot]), row_bytes: value_row },
        )
    }

    /// Whether the pool is in host memory (a CPU model's).
    pub fn is_host(&self) -> bool {
        matches!(self.store, KvStore::Host { .. })
    }

    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// What the pool stores keys and values as.
    pub fn types(&self) -> KvTypes {
        self.types
    }

    /// Bytes of keys and values over all layers.
    pub fn device_bytes(&self) -> usize {
        self.num_blocks * block_bytes(self.layout.group_size, self.block_size, self.kv_dim, self.types)
    }

    /// Bytes one block takes in a pool for `config` (its layers, width and types).
    pub fn bytes_per_block(config: &ModelConfig, block_size: usize) -> usize {
        PoolShape::new(config, 1, block_size).block_bytes()
    }

    /// Bytes of the larger of one layer's keys and values in a pool of `num_blocks` for
    /// `config` ([`PoolShape::layer_buffer_bytes`]).
    pub fn layer_buffer_bytes(config: &ModelConfig, num_blocks: usize, block_size: usize) -> usize {
        PoolShape::new(config, num_blocks, block_size).layer_buffer_bytes()
    }

    /// Bytes one position of a sequence takes in a pool for `config`: every layer's keys
    /// and values.
    pub fn bytes_per_position(config: &ModelConfig) -> usize {
        let (k, v) = config.kv_types.row_bytes(config.kv_dim());
        config.n_layers * (k + v)
    }

    /// Writes the rows of `k` and `v` (`[rows, kv_dim]`) into their slots of `layer`.
    pub(crate) fn write(&self, layer: usize, k: Tensor<2>, v: Tensor<2>, batch: &BatchBuffer) {
        let kv = self.device_kv();
        let (k, v) = (cube(k), cube(v));
        let (group, slot) = self.layout.layer_slots[layer];
        let types = self.types;
        let values = move || vec![("KV", kv_code(types, 3, true))];
        let kernel = Template {
            name: "kv_write",
            source: include_str!("../../../shaders/kv_write.wgsl"),
            variant: ("", types.code()),
            values: &values,
            workgroup: 64,
        };
        let args = [
            Arg::Read(&k.handle),
            Arg::Read(&v.handle),
            Arg::Read(&batch.handle),
            Arg::Write(&kv.keys[slot]),
            Arg::Write(&kv.values[slot]),
        ];
        let rows = batch.layout.rows;
        let units = [types.keys, types.values].map(|t| store_units(t, self.kv_dim)).into_iter().max().unwrap_or(0);
        let workgroups = (rows * units).div_ceil(64).min(MAX_WORKGROUPS) as u32;
        let info = KvWriteInfo { rows: rows as u32, kv_dim: self.kv_dim as u32, slots: batch.layout.slots_at(group) as u32 };
        launch(&kv.device, &kernel, [workgroups, 1, 1], &args, &info);
    }

    /// [`PagedKvCache::write`] of a pool in host memory.
    pub(crate) fn write_host(&mut self, layer: usize, k: &[f32], v: &[f32], batch: &BatchLayout) {
        let (group, slot) = self.layout.layer_slots[layer];
        let d = self.kv_dim;
        let (key_row, value_row) = self.types.row_bytes(d);
        let types = self.types;
        let KvStore::Host { keys, values } = &mut self.store else { unreachable!("checked by the model: a CPU model's pool is on the host") };
        let (keys, values): (&mut [u8], &mut [u8]) = (bytemuck::cast_slice_mut(&mut keys[slot]), bytemuck::cast_slice_mut(&mut values[slot]));
        for (row, &s) in batch.slots(group).iter().enumerate() {
            let s = s as usize;
            types.keys.encode(&k[row * d..(row + 1) * d], &mut keys[s * key_row..(s + 1) * key_row]);
            types.values.encode(&v[row * d..(row + 1) * d], &mut values[s * value_row..(s + 1) * value_row]);
        }
    }

    /// Copies blocks `(source, destination)` in every buffer (a block holds one group's
    /// layers, whichever group it serves).
    pub(crate) fn copy(&mut self, pairs: &[(u32, u32)]) {
        if pairs.is_empty() {
            return;
        }
        // Words per block of keys and of values: a block is whole rows, whatever their type.
        let (key_row, value_row) = self.types.row_bytes(self.kv_dim);
        let (key_words, value_words) = (self.block_size * key_row / 4, self.block_size * value_row / 4);
        match &mut self.store {
            KvStore::Host { keys, values } => {
                let buffers = keys.iter_mut().map(|b| (b, key_words)).chain(values.iter_mut().map(|b| (b, value_words)));
                for (buffer, block_len) in buffers {
                    for &(source, destination) in pairs {
                        let source = source as usize * block_len;
                        buffer.copy_within(source..source + block_len, destination as usize * block_len);
                    }
                }
            }
            KvStore::Device(kv) => {
                let words: Vec<u32> = pairs.iter().flat_map(|&(s, d)| [s, d]).collect();
                let pairs_handle = upload(&kv.device, words);
                let kernel = Template::plain("kv_copy", include_str!("../../../shaders/kv_copy.wgsl"));
                let groups = (pairs.len() * key_words.max(value_words)).div_ceil(64).min(MAX_WORKGROUPS) as u32;
                let info = KvCopyInfo { pairs: pairs.len() as u32, key_words: key_words as u32, value_words: value_words as u32 };
                for (keys, values) in kv.keys.iter().zip(&kv.values) {
                    let args = [Arg::Read(&pairs_handle), Arg::Write(keys), Arg::Write(values)];
                    launch(&kv.device, &kernel, [groups, 1, 1], &args, &info);
                }
            }
        }
    }
}

/// The WGSL that reads the pool's keys and values as their types say, bound at
/// `first_binding` (keys) and the one after (values): `key4(slot, d)` / `value4`, the
/// values `d..d + 4` of a slot's row, and `value1(slot, d)` one value. With `writes`, also
/// `store_key(slot, src, unit)` / `store_value`, which encode a row's `unit`th store unit
/// (`key_units()` per row) from the f32 row at `src` of `k` / `v`. Every kernel that
/// includes it has `kv_dim` in its `info`.
pub(crate) fn kv_code(types: KvTypes, first_binding: u32, writes: bool) -> String {
    const WRITES: &str = "// ---- writes";
    let reads = |source: &'static str| if writes { source } else { &source[..source.find(WRITES).unwrap_or(source.len())] };
    let snippet = |ty: KvType, name: &str, cache: &str, src: &str, binding: u32| {
        let mut source = reads(kv_type_source(ty)).to_owned();
        if ty.block_values() > 1 {
            source += reads(include_str!("../../../shaders/kv_blocks.wgsl"));
        }
        source.replace("$NAME", name).replace("$CACHE", cache).replace("$SRC", src).replace("$BINDING", &binding.to_string())
    };
    [
        include_str!("../../../shaders/quant_common.wgsl").to_owned(),
        snippet(types.keys, "key", "k_cache", "k", first_binding),
        snippet(types.values, "value", "v_cache", "v", first_binding + 1),
    ]
    .join("\n")
}

fn kv_type_source(ty: KvType) -> &'static str {
    match ty {
        KvType::F32 => include_str!("../../../shaders/kv_f32.wgsl"),
        KvType::F16 => include_str!("../../../shaders/kv_f16.wgsl"),
        KvType::Q8_0 => include_str!("../../../shaders/kv_q8_0.wgsl"),
        KvType::Q4_0 => include_str!("../../../shaders/kv_q4_0.wgsl"),
    }
}

/// Store units per row of `kv_dim` values of `ty` in kv_write.wgsl: four values (f32,
/// f16), or a pair of blocks (the quantized types: their two scales share a word).
fn store_units(ty: KvType, kv_dim: usize) -> usize {
    match ty {
        KvType::F32 | KvType::F16 => kv_dim / 4,
        KvType::Q8_0 | KvType::Q4_0 => kv_dim.div_ceil(64),
    }
}

/// kv_write.wgsl's `Info`: rows to scatter, their width, where their slots start in the batch buffer.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct KvWriteInfo {
    rows: u32,
    kv_dim: u32,
    slots: u32,
}

/// kv_copy.wgsl's `Info`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct KvCopyInfo {
    pairs: u32,
    /// Words per block of keys and of values.
    key_words: u32,
    value_words: u32,
}

/// One sequence's part of a batched forward pass.
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'a> {
    /// The tokens to run, at positions `start..start + tokens.len()`.
    pub tokens: &'a [u32],
    pub start: usize,
    /// The sequence's blocks, a table per group of [`KvLayout`], each covering at least
    /// `start + tokens.len()` positions (a windowed group's entries behind its window may
    /// name any block: they are not read).
    pub tables: &'a [Vec<u32>],
    /// How many of the chunk's last tokens get logits: 0, 1 (a prompt's end, a decode), or
    /// a decode with its draft tokens, each row verifying the token after it.
    pub logits: usize,
    /// The LoRA adapter its rows run with ([`crate::Model::set_adapter`]'s slot), if any.
    pub adapter: Option<crate::RowAdapter>,
    /// Its rows after the final norm, reduced to one row for an embedding (read back as
    /// [`crate::Outputs::pooled`]), if it is part of an embedding's prompt.
    pub pool: Option<crate::Reduce>,
}

/// Prompt chunks at least this long attend through the flash-attention kernel (each key
/// tile serves 64 queries); shorter ones and decodes through the paged-attention kernel.
pub const FLASH_MIN_TOKENS: usize = 32;

/// A chunk that attends through the flash-attention kernel: its rows, first position and
/// block tables.
#[derive(Debug, Clone)]
pub(crate) struct LongChunk {
    pub first_row: usize,
    pub len: usize,
    pub start: usize,
    /// Word offset of its block table in the batch buffer, per group.
    pub tables: Vec<usize>,
}

/// Where each row of a batch sits, read by RoPE, the KV write and attention:
/// `[positions; rows]`, then per layer group `[slots; rows][table starts; rows]`, then the
/// block tables. Rows of chunks that attend through the paged kernel come first
/// (`paged_rows` of them), then the long chunks; [`BatchLayout::order`] gives that order.
pub(crate) struct BatchLayout {
    pub words: Vec<u32>,
    pub rows: usize,
    pub paged_rows: usize,
    /// The most positions a paged row's sequence holds (its context with this step).
    pub paged_context: usize,
    pub long: Vec<LongChunk>,
}

impl BatchLayout {
    /// The order in which a batch's chunks are laid out: paged ones first, each group in
    /// the given order.
    pub(crate) fn order(chunks: &[SeqChunk]) -> Vec<usize> {
        let long = |c: &SeqChunk| c.tokens.len() >= FLASH_MIN_TOKENS;
        let (mut paged, long): (Vec<usize>, Vec<usize>) = (0..chunks.len()).partition(|&i| !long(&chunks[i]));
        paged.extend(long);
        paged
    }

    /// Word offset of group `g`'s slots (its table starts follow them).
    pub(crate) fn slots_at(&self, group: usize) -> usize {
        self.rows * (1 + 2 * group)
    }

    pub(crate) fn table_starts_at(&self, group: usize) -> usize {
        self.slots_at(group) + self.rows
    }

    /// Each row's position.
    pub(crate) fn positions(&self) -> &[u32] {
        &self.words[..self.rows]
    }

    /// Each row's slot in group `group`'s blocks.
    pub(crate) fn slots(&self, group: usize) -> &[u32] {
        &self.words[self.slots_at(group)..][..self.rows]
    }

    /// Row `row`'s block table in group `group` (and the words after it).
    pub(crate) fn table(&self, group: usize, row: usize) -> &[u32] {
        &self.words[self.words[self.table_starts_at(group) + row] as usize..]
    }

    /// Lays out `chunks`, which must be in [`BatchLayout::order`], with `groups` block
    /// tables each.
    pub(crate) fn new(chunks: &[&SeqChunk], block_size: usize, groups: usize) -> Self {
        let rows: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        let tables: usize = chunks.iter().flat_map(|c| c.tables.iter().map(Vec::len)).sum();
        let header = rows * (1 + 2 * groups);
        let mut words = vec![0u32; header + tables];
        let (mut row, mut table) = (0, header);
        let mut paged_rows = 0;
        let mut paged_context = 0;
        let mut long = Vec::new();
        for chunk in chunks {
            let mut starts = Vec::with_capacity(groups);
            for blocks in chunk.tables {
                words[table..table + blocks.len()].copy_from_slice(blocks);
                starts.push(table);
                table += blocks.len();
            }
            if chunk.tokens.len() >= FLASH_MIN_TOKENS {
                long.push(LongChunk { first_row: row, len: chunk.tokens.len(), start: chunk.start, tables: starts.clone() });
            } else {
                debug_assert!(long.is_empty(), "paged chunks come first");
                paged_rows += chunk.tokens.len();
                paged_context = paged_context.max(chunk.start + chunk.tokens.len());
            }
            for position in chunk.start..chunk.start + chunk.tokens.len() {
                words[row] = position as u32;
                for (g, blocks) in chunk.tables.iter().enumerate() {
                    let slots = rows * (1 + 2 * g);
                    words[slots + row] = blocks[position / block_size] * block_size as u32 + (position % block_size) as u32;
                    words[slots + rows + row] = starts[g] as u32;
                }
                row += 1;
            }
        }
        Self { words, rows, paged_rows, paged_context, long }
    }

    /// A batch of `positions` only, for RoPE alone.
    #[cfg(test)]
    pub(crate) fn positions_only(positions: &[u32]) -> Self {
        Self { words: positions.to_vec(), rows: positions.len(), paged_rows: 0, paged_context: 0, long: Vec::new() }
    }
}

/// A [`BatchLayout`] uploaded to the device, once per step.
pub(crate) struct BatchBuffer {
    pub handle: Handle,
    pub layout: BatchLayout,
}

impl BatchBuffer {
    pub(crate) fn new(device: &CubeDevice, layout: BatchLayout) -> Self {
        Self { handle: upload(device, layout.words.clone()), layout }
    }
}
