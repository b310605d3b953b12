//! The paged KV cache: the pool of blocks on the device, the batch's layout over it, and
//! the writes and copies of its slots (attention over it is [`crate::attention`]).
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

use crate::kernel::{Arg, MAX_WORKGROUPS, Template, cube, launch, upload};
use crate::{KvLayout, ModelError};

/// The KV pool, on the device.
pub struct PagedKvCache {
    pub(crate) device: CubeDevice,
    /// One buffer per place in a layer group (`group_size` of them).
    pub(crate) keys: Vec<Handle>,
    pub(crate) values: Vec<Handle>,
    pub(crate) layout: KvLayout,
    num_blocks: usize,
    pub(crate) block_size: usize,
    pub(crate) kv_dim: usize,
    /// The adapter's subgroup width where it is fixed: long chunks then attend through
    /// flash_attention_subgroup.wgsl.
    pub(crate) subgroup_width: Option<usize>,
}

impl PagedKvCache {
    pub(crate) fn new(
        device: &CubeDevice,
        layout: KvLayout,
        kv_dim: usize,
        num_blocks: usize,
        block_size: usize,
        subgroup_width: Option<usize>,
    ) -> Result<Self, ModelError> {
        if num_blocks == 0 || block_size == 0 {
            return Err(ModelError::InvalidParameter("a KV cache needs at least one block of one slot".into()));
        }
        let bytes = Self::layer_buffer_bytes(num_blocks, block_size, kv_dim);
        let client = device.client();
        let buffers = || (0..layout.group_size).map(|_| client.empty(bytes)).collect::<Vec<_>>();
        let subgroup_width = subgroup_width.filter(|w| w.is_power_of_two() && (4..=64).contains(w));
        Ok(Self { device: device.clone(), keys: buffers(), values: buffers(), layout, num_blocks, block_size, kv_dim, subgroup_width })
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

    /// Device bytes of keys and values over all layers.
    pub fn device_bytes(&self) -> usize {
        self.num_blocks * Self::bytes_per_block(&self.layout, self.kv_dim, self.block_size)
    }

    /// Bytes one block takes: `block_size` positions of a group's layers.
    pub fn bytes_per_block(layout: &KvLayout, kv_dim: usize, block_size: usize) -> usize {
        2 * layout.group_size * Self::layer_buffer_bytes(1, block_size, kv_dim)
    }

    /// Bytes of one layer's keys (or values) in a pool of `num_blocks`: each such buffer is
    /// bound whole by the kernels, so it must stay within the device's binding limit.
    pub fn layer_buffer_bytes(num_blocks: usize, block_size: usize, kv_dim: usize) -> usize {
        num_blocks.saturating_mul(block_size).saturating_mul(kv_dim * 4)
    }

    pub(crate) fn write(&self, layer: usize, k: Tensor<2>, v: Tensor<2>, batch: &BatchBuffer) {
        let (k, v) = (cube(k), cube(v));
        let (group, slot) = self.layout.layer_slots[layer];
        let kernel = Template::plain("kv_write", include_str!("../../../shaders/kv_write.wgsl"));
        let args = [
            Arg::Read(&k.handle),
            Arg::Read(&v.handle),
            Arg::Read(&batch.handle),
            Arg::Write(&self.keys[slot]),
            Arg::Write(&self.values[slot]),
        ];
        let workgroups = (batch.rows * self.kv_dim).div_ceil(64).min(MAX_WORKGROUPS) as u32;
        let info = KvWriteInfo { rows: batch.rows as u32, kv_dim: self.kv_dim as u32, slots: batch.slots_at(group) as u32 };
        launch(&self.device, &kernel, [workgroups, 1, 1], &args, &info);
    }

    /// Copies blocks `(source, destination)` in every buffer (a block holds one group's
    /// layers, whichever group it serves).
    pub(crate) fn copy(&self, pairs: &[(u32, u32)]) {
        if pairs.is_empty() {
            return;
        }
        let words: Vec<u32> = pairs.iter().flat_map(|&(s, d)| [s, d]).collect();
        let pairs_handle = upload(&self.device, words);
        let block_len = self.block_size * self.kv_dim;
        let kernel = Template::plain("kv_copy", include_str!("../../../shaders/kv_copy.wgsl"));
        let groups = (pairs.len() * block_len).div_ceil(64).min(MAX_WORKGROUPS) as u32;
        let info = KvCopyInfo { pairs: pairs.len() as u32, block_len: block_len as u32 };
        for (keys, values) in self.keys.iter().zip(&self.values) {
            let args = [Arg::Read(&pairs_handle), Arg::Write(keys), Arg::Write(values)];
            launch(&self.device, &kernel, [groups, 1, 1], &args, &info);
        }
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
    /// Floats per block: block_size * kv_dim.
    block_len: u32,
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

/// Where each row of a batch sits, uploaded once per step and read by RoPE, the KV write and
/// attention: `[positions; rows]`, then per layer group `[slots; rows][table starts; rows]`,
/// then the block tables. Rows of chunks that attend through the paged kernel come first
/// (`paged_rows` of them), then the long chunks; [`BatchBuffer::order`] gives that order.
pub struct BatchBuffer {
    pub(crate) handle: Handle,
    pub(crate) rows: usize,
    pub(crate) paged_rows: usize,
    /// The most positions a paged row's sequence holds (its context with this step).
    pub(crate) paged_context: usize,
    pub(crate) long: Vec<LongChunk>,
}

impl BatchBuffer {
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

    /// Lays out `chunks`, which must be in [`BatchBuffer::order`], with `groups` block
    /// tables each.
    pub(crate) fn new(device: &CubeDevice, chunks: &[&SeqChunk], block_size: usize, groups: usize) -> Self {
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
        Self { handle: upload(device, words), rows, paged_rows, paged_context, long }
    }

    /// A batch of `positions` only, for RoPE alone.
    #[cfg(test)]
    pub(crate) fn positions(device: &burn::tensor::Device, positions: &[u32]) -> Self {
        let device = crate::kernel::cube_device(device).expect("a wgpu device");
        Self { handle: upload(&device, positions.to_vec()), rows: positions.len(), paged_rows: 0, paged_context: 0, long: Vec::new() }
    }
}
