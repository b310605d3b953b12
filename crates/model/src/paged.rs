//! The paged KV cache and batched attention over it.
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
use burn_cubecl::tensor::CubeTensor;
use bytemuck::{Pod, Zeroable};

use crate::kernel::{Arg, MAX_WORKGROUPS, Template, cube, empty, launch, upload};
use crate::{KvLayout, ModelError};

/// The KV pool, on the device.
pub struct PagedKvCache {
    device: CubeDevice,
    /// One buffer per place in a layer group (`group_size` of them).
    keys: Vec<Handle>,
    values: Vec<Handle>,
    layout: KvLayout,
    num_blocks: usize,
    block_size: usize,
    kv_dim: usize,
    /// The adapter's subgroup width where it is fixed: long chunks then attend through
    /// flash_attention_subgroup.wgsl.
    subgroup_width: Option<usize>,
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

    /// Attention of the batch's first `paged_rows` rows of `q` (`[rows, heads * head_dim]`,
    /// RoPE applied) over the cache of `layer`, into the same rows of `out`.
    pub(crate) fn attend(
        &self,
        layer: usize,
        q: &CubeTensor,
        out: &CubeTensor,
        (heads, head_dim): (usize, usize),
        batch: &BatchBuffer,
        rule: &ScoreRule,
    ) {
        let (group, slot) = self.layout.layer_slots[layer];
        let dims = head_dim.div_ceil(64);
        let visible = rule.window.map_or(batch.paged_context, |w| w.min(batch.paged_context));
        let splits = key_splits(heads * batch.paged_rows, visible);
        let split = splits > 1;
        let values = move || {
            let (output, store) = if split { PAGED_SPLIT_STORE } else { PAGED_STORE };
            vec![
                ("DIMS", dims.to_string()),
                ("MAX_HEAD_DIM", (dims * 64).to_string()),
                ("OUTPUT", output.to_owned()),
                ("STORE", store.to_owned()),
            ]
        };
        let kernel = Template {
            name: "paged_attention",
            source: include_str!("../../../shaders/paged_attention.wgsl"),
            variant: (if split { "split" } else { "" }, dims as u32),
            values: &values,
            workgroup: 64,
        };
        let partials = split.then(|| empty(&self.device, [batch.paged_rows * heads * splits, head_dim + 2]));
        let args = self.attention_args(slot, q, batch, partials.as_ref().unwrap_or(out));
        let info = PagedAttentionInfo {
            rows: batch.paged_rows as u32,
            table_starts: batch.table_starts_at(group) as u32,
            heads: heads as u32,
            kv_heads: (self.kv_dim / head_dim) as u32,
            head_dim: head_dim as u32,
            block_size: self.block_size as u32,
            scale: rule.scale,
            window: rule.window.unwrap_or(0) as u32,
            softcap: rule.softcap.unwrap_or(0.0),
            splits: splits as u32,
            split_keys: visible.div_ceil(splits).next_multiple_of(64).max(64) as u32,
        };
        let rows = batch.paged_rows.min(MAX_WORKGROUPS) as u32;
        launch(&self.device, &kernel, [heads as u32, rows, splits as u32], &args, &info);
        if let Some(partials) = partials {
            let merge = Template::plain("attention_merge", include_str!("../../../shaders/attention_merge.wgsl"));
            let info = AttentionMergeInfo { rows: batch.paged_rows as u32, heads: heads as u32, head_dim: head_dim as u32, splits: splits as u32 };
            let workgroups = (batch.paged_rows * heads * head_dim).div_ceil(64).min(MAX_WORKGROUPS) as u32;
            launch(&self.device, &merge, [workgroups, 1, 1], &[Arg::Read(&partials.handle), Arg::Write(&out.handle)], &info);
        }
    }

    /// Attention of a long chunk's rows of `q` over the cache of `layer` (the chunk's own
    /// keys included: they are written first), into the same rows of `out`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn flash_attend(
        &self,
        layer: usize,
        q: &CubeTensor,
        out: &CubeTensor,
        (heads, head_dim): (usize, usize),
        batch: &BatchBuffer,
        chunk: &LongChunk,
        rule: &ScoreRule,
    ) {
        let (group, slot) = self.layout.layer_slots[layer];
        let hd4 = head_dim / 4;
        let (subgroup_values, values);
        let (kernel, queries_per_workgroup) = match self.subgroup_width {
            Some(width) => {
                subgroup_values = move || {
                    let mut values = flash_subgroup_code(hd4, width);
                    values.push(("BINDINGS", FLASH_BINDINGS.to_owned()));
                    values
                };
                let kernel = Template {
                    name: "flash_attention_subgroup",
                    source: include_str!("../../../shaders/flash_attention_subgroup.wgsl"),
                    variant: ("", (head_dim * 100 + width) as u32),
                    values: &subgroup_values,
                    workgroup: 64,
                };
                (kernel, 64 / width * flash_subgroup_queries(hd4, width))
            }
            None => {
                // The K and V tiles fill WebGPU's default 16 KiB of workgroup memory.
                let keys = (16_384 / (2 * 4 * head_dim)).max(1);
                values = move || vec![("HD4", hd4.to_string()), ("KEYS", keys.to_string()), ("BINDINGS", FLASH_BINDINGS.to_owned())];
                let kernel = Template {
                    name: "flash_attention",
                    source: include_str!("../../../shaders/flash_attention.wgsl"),
                    variant: ("", head_dim as u32),
                    values: &values,
                    workgroup: 64,
                };
                (kernel, FLASH_QUERIES)
            }
        };
        let args = self.attention_args(slot, q, batch, out);
        let info = FlashAttentionInfo {
            first_row: chunk.first_row as u32,
            len: chunk.len as u32,
            start: chunk.start as u32,
            table: chunk.tables[group] as u32,
            heads: heads as u32,
            kv_heads: (self.kv_dim / head_dim) as u32,
            block_size: self.block_size as u32,
            window: rule.window.unwrap_or(0) as u32,
            scale: rule.scale,
            softcap: rule.softcap.unwrap_or(0.0),
        };
        let query_tiles = chunk.len.div_ceil(queries_per_workgroup) as u32;
        launch(&self.device, &kernel, [heads as u32, query_tiles, 1], &args, &info);
    }

    /// The bindings the attention kernels share: queries, the keys and values of the pool's
    /// buffer `slot`, the batch buffer, and where the kernel writes.
    fn attention_args<'a>(&'a self, slot: usize, q: &'a CubeTensor, batch: &'a BatchBuffer, output: &'a CubeTensor) -> [Arg<'a>; 5] {
        [
            Arg::Read(&q.handle),
            Arg::Read(&self.keys[slot]),
            Arg::Read(&self.values[slot]),
            Arg::Read(&batch.handle),
            Arg::Write(&output.handle),
        ]
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

/// paged_attention.wgsl's `Info`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PagedAttentionInfo {
    rows: u32,
    table_starts: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    block_size: u32,
    scale: f32,
    /// 0: no window.
    window: u32,
    /// 0: no soft-cap.
    softcap: f32,
    /// Workgroups per (head, row) over the keys, and positions each takes.
    splits: u32,
    split_keys: u32,
}

/// paged_attention.wgsl's output binding and store when each workgroup writes its rows'
/// output itself.
const PAGED_STORE: (&str, &str) = (
    "@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> info: Info;",
    "        for (var i = 0u; i < DIMS; i++) {
            let d = lid + i * TILE;
            if d < hd {
                out[q_base + d] = acc[i] / l;
            }
        }",
);

/// The same when it writes a split's record for attention_merge.wgsl: `head_dim`
/// unnormalised outputs, the maximum score, the sum of weights.
const PAGED_SPLIT_STORE: (&str, &str) = (
    "@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
@group(0) @binding(5) var<uniform> info: Info;",
    "        let record = ((row * info.heads + head) * info.splits + wid.z) * (hd + 2u);
        for (var i = 0u; i < DIMS; i++) {
            let d = lid + i * TILE;
            if d < hd {
                partials[record + d] = acc[i];
            }
        }
        if lid == 0u {
            partials[record + hd] = m;
            partials[record + hd + 1u] = l;
        }",
);

/// Paged attention is split over the keys when its (row, head) pairs are too few to keep a
/// GPU busy (a decode at batch 1): into up to this many workgroups in all, each taking at
/// least `SPLIT_MIN_KEYS` positions, at most `MAX_SPLITS` per pair.
const SPLIT_WORKGROUPS: usize = 128;
const SPLIT_MIN_KEYS: usize = 256;
const MAX_SPLITS: usize = 16;

/// Splits over the keys for `pairs` (row, head) pairs that see up to `visible` positions.
pub(crate) fn key_splits(pairs: usize, visible: usize) -> usize {
    (SPLIT_WORKGROUPS / pairs.max(1)).min(visible / SPLIT_MIN_KEYS).clamp(1, MAX_SPLITS)
}

/// attention_merge.wgsl's `Info`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttentionMergeInfo {
    rows: u32,
    heads: u32,
    head_dim: u32,
    splits: u32,
}

/// The `Info` of flash_attention.wgsl and flash_attention_subgroup.wgsl: the chunk's rows,
/// first position and block table.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct FlashAttentionInfo {
    first_row: u32,
    len: u32,
    start: u32,
    table: u32,
    heads: u32,
    kv_heads: u32,
    block_size: u32,
    window: u32,
    scale: f32,
    softcap: f32,
}

const FLASH_BINDINGS: &str = include_str!("../../../shaders/flash_bindings.wgsl");

/// Queries per workgroup of flash_attention.wgsl.
const FLASH_QUERIES: usize = 64;

/// Query vec4 slots each lane of flash_attention_subgroup.wgsl holds (its queries' outputs
/// are as many again): 16 queries of 64-wide heads. On lavapipe a 512-token prompt's
/// attention took 0.55 s at 256 and at 512, 0.57 s at 128, 0.84 s at 64.
const FLASH_SUBGROUP_SLOTS: usize = 256;
/// The slots on subgroups of 4 lanes (SwiftShader's): its compiler took 4 s for the test's
/// kernels at 64 slots and did not finish in 2 minutes at 128.
const NARROW_FLASH_SUBGROUP_SLOTS: usize = 64;

/// Queries per subgroup of flash_attention_subgroup.wgsl for heads of `hd4` vec4s and
/// subgroups of `width` lanes.
fn flash_subgroup_queries(hd4: usize, width: usize) -> usize {
    let slots = if width < 8 { NARROW_FLASH_SUBGROUP_SLOTS } else { FLASH_SUBGROUP_SLOTS };
    (slots / hd4).max(1)
}

/// flash_attention_subgroup.wgsl's per-query and per-slot lines for heads of `hd4` vec4s
/// and subgroups of `width` lanes.
fn flash_subgroup_code(hd4: usize, width: usize) -> Vec<(&'static str, String)> {
    let queries = flash_subgroup_queries(hd4, width);
    let lines = |n: usize, f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<_>>().join("\n");
    let query_setup = |s: usize| {
        let mut code = format!(
            "    let pos{s} = info.start + min(first_query + {s}u, last_query);
    let first{s} = first_visible(pos{s});
    let row{s} = (info.first_row + min(first_query + {s}u, last_query)) * row_width4 + head * HD4;
    var m{s} = LOWEST;
    var l{s} = 0.0;"
        );
        for d in 0..hd4 {
            code += &format!("\n    let q{s}_{d} = q[row{s} + {d}u] * info.scale;\n    var acc{s}_{d} = vec4<f32>(0.0);");
        }
        code
    };
    let scores = |s: usize| {
        let dot = (0..hd4).map(|d| format!("dot(q{s}_{d}, k{d})")).collect::<Vec<_>>().join(" + ");
        format!(
            "        let s{s} = soft_cap({dot});
        let seen{s} = p >= first{s} && p <= pos{s};
        let top{s} = select(m{s}, max(m{s}, s{s}), seen{s});
        let c{s} = exp(m{s} - top{s});
        let w{s} = select(0.0, exp(s{s} - top{s}), seen{s});
        m{s} = top{s};
        l{s} = l{s} * c{s} + w{s};"
        )
    };
    let values = |d: usize| {
        let mut code = format!("        let v{d} = v_cache[base + {d}u];");
        for s in 0..queries {
            code += &format!("\n        acc{s}_{d} = acc{s}_{d} * c{s} + w{s} * v{d};");
        }
        code
    };
    // A lane that saw none of a query's keys has m = LOWEST: its part weighs 0.
    let merge = |s: usize| {
        let mut code = format!("    let f{s} = exp(m{s} - subgroupMax(m{s}));\n    let total{s} = subgroupAdd(l{s} * f{s});");
        for d in 0..hd4 {
            code += &format!(
                "\n    let o{s}_{d} = subgroupAdd(acc{s}_{d} * f{s}) / total{s};\n    if lane == {d}u % width && first_query + {s}u <= last_query {{ out[row{s} + {d}u] = o{s}_{d}; }}"
            );
        }
        code
    };
    vec![
        ("HD4", hd4.to_string()),
        ("QUERIES", queries.to_string()),
        ("SUBGROUPS", (64 / width).to_string()),
        ("QUERY_SETUP", lines(queries, &query_setup)),
        ("KEYS", lines(hd4, &|d| format!("        let k{d} = k_cache[base + {d}u];"))),
        ("SCORES", lines(queries, &scores)),
        ("VALUES", lines(hd4, &values)),
        ("MERGE", lines(queries, &merge)),
    ]
}

/// kv_copy.wgsl's `Info`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct KvCopyInfo {
    pairs: u32,
    /// Floats per block: block_size * kv_dim.
    block_len: u32,
}

/// How a layer turns query-key products into attention weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ScoreRule {
    /// Multiplies each query-key product.
    pub scale: f32,
    /// Each query sees its last `window` positions only (itself included).
    pub window: Option<usize>,
    /// Scores become `softcap * tanh(score / softcap)`.
    pub softcap: Option<f32>,
}

impl ScoreRule {
    /// The first position a query at `position` sees (the kernels compute it themselves).
    #[cfg(test)]
    pub fn first_visible(&self, position: usize) -> usize {
        self.window.map_or(0, |w| (position + 1).saturating_sub(w))
    }
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
