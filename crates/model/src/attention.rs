//! Attention of a batch's rows over the paged KV cache: decodes and short prompt chunks go
//! through the paged kernel (one workgroup per query row, split over the keys where the
//! rows are too few to fill the device, the splits merged after), long prompt chunks through a
//! flash-attention kernel (many queries per workgroup, each key loaded once for all of
//! them, no score matrix). Both write into one output, each its own rows.

use burn::tensor::Tensor;
use burn_cubecl::tensor::CubeTensor;
use bytemuck::{Pod, Zeroable};

pub(crate) use cinder_cpu::ScoreRule;

use crate::ModelConfig;
use crate::kernel::{Arg, MAX_WORKGROUPS, Template, cube, empty, from_cube, launch};
use crate::config::KvTypes;
use crate::paged::{BatchBuffer, LongChunk, PagedKvCache, kv_code};

/// The attention of one step over a batch's layout.
pub(crate) struct Attention<'a> {
    config: &'a ModelConfig,
    batch: &'a BatchBuffer,
    cache: &'a PagedKvCache,
}

impl<'a> Attention<'a> {
    pub fn new(config: &'a ModelConfig, batch: &'a BatchBuffer, cache: &'a PagedKvCache) -> Self {
        Self { config, batch, cache }
    }

    /// Attention of every row of `q` (`[rows, heads * head_dim]`, RoPE applied) in `layer`.
    pub fn attend(&self, layer: usize, q: Tensor<2>, rule: &ScoreRule) -> Tensor<2> {
        let c = self.config;
        let q = cube(q);
        let out = empty(&q.device, [self.batch.layout.rows, c.q_dim()]);
        let shape = (c.n_heads, c.head_dim);
        if self.batch.layout.paged_rows > 0 {
            paged(self.cache, layer, &q, &out, shape, self.batch, rule);
        }
        for chunk in &self.batch.layout.long {
            flash(self.cache, layer, &q, &out, shape, self.batch, chunk, rule);
        }
        from_cube(out)
    }
}

/// Attention of the batch's first `paged_rows` rows of `q` (`[rows, heads * head_dim]`,
/// RoPE applied) over the cache of `layer`, into the same rows of `out`.
fn paged(
    cache: &PagedKvCache,
    layer: usize,
    q: &CubeTensor,
    out: &CubeTensor,
    (heads, head_dim): (usize, usize),
    batch: &BatchBuffer,
    rule: &ScoreRule,
) {
    let (group, slot) = cache.layout.layer_slots[layer];
    let dims = head_dim.div_ceil(64);
    let visible = rule.window.map_or(batch.layout.paged_context, |w| w.min(batch.layout.paged_context));
    let splits = key_splits(heads * batch.layout.paged_rows, visible);
    let split = splits > 1;
    let types = cache.types;
    let values = move || {
        let (output, store) = if split { PAGED_SPLIT_STORE } else { PAGED_STORE };
        vec![
            ("DIMS", dims.to_string()),
            ("MAX_HEAD_DIM", (dims * 64).to_string()),
            ("OUTPUT", output.to_owned()),
            ("STORE", store.to_owned()),
            ("KV", kv_code(types, 1, false)),
        ]
    };
    let kernel = Template {
        name: "paged_attention",
        source: include_str!("../../../shaders/paged_attention.wgsl"),
        variant: (if split { "split" } else { "" }, dims as u32 * KvTypes::PAIRS + types.code()),
        values: &values,
        workgroup: 64,
    };
    let partials = split.then(|| empty(&cache.device_kv().device, [batch.layout.paged_rows * heads * splits, head_dim + 2]));
    let args = attention_args(cache, slot, q, batch, partials.as_ref().unwrap_or(out));
    let info = PagedAttentionInfo {
        rows: batch.layout.paged_rows as u32,
        table_starts: batch.layout.table_starts_at(group) as u32,
        heads: heads as u32,
        kv_heads: (cache.kv_dim / head_dim) as u32,
        head_dim: head_dim as u32,
        block_size: cache.block_size as u32,
        scale: rule.scale,
        window: rule.window.unwrap_or(0) as u32,
        softcap: rule.softcap.unwrap_or(0.0),
        splits: splits as u32,
        split_keys: visible.div_ceil(splits).next_multiple_of(64).max(64) as u32,
        kv_dim: cache.kv_dim as u32,
    };
    let rows = batch.layout.paged_rows.min(MAX_WORKGROUPS) as u32;
    launch(&cache.device_kv().device, &kernel, [heads as u32, rows, splits as u32], &args, &info);
    if let Some(partials) = partials {
        let merge = Template::plain("attention_merge", include_str!("../../../shaders/attention_merge.wgsl"));
        let info = AttentionMergeInfo { rows: batch.layout.paged_rows as u32, heads: heads as u32, head_dim: head_dim as u32, splits: splits as u32 };
        let workgroups = (batch.layout.paged_rows * heads * head_dim).div_ceil(64).min(MAX_WORKGROUPS) as u32;
        launch(&cache.device_kv().device, &merge, [workgroups, 1, 1], &[Arg::Read(&partials.handle), Arg::Write(&out.handle)], &info);
    }
}

/// Attention of a long chunk's rows of `q` over the cache of `layer` (the chunk's own
/// keys included: they are written first), into the same rows of `out`.
#[allow(clippy::too_many_arguments)]
fn flash(
    cache: &PagedKvCache,
    layer: usize,
    q: &CubeTensor,
    out: &CubeTensor,
    (heads, head_dim): (usize, usize),
    batch: &BatchBuffer,
    chunk: &LongChunk,
    rule: &ScoreRule,
) {
    let (group, slot) = cache.layout.layer_slots[layer];
    let hd4 = head_dim / 4;
    let types = cache.types;
    let (subgroup_values, values);
    let (kernel, queries_per_workgroup) = match cache.device_kv().subgroup_width {
        Some(width) => {
            subgroup_values = move || {
                let mut values = flash_subgroup_code(hd4, width);
                // After the bindings, which hold its placeholder.
                values.extend([("BINDINGS", FLASH_BINDINGS.to_owned()), ("KV", kv_code(types, 1, false))]);
                values
            };
            let kernel = Template {
                name: "flash_attention_subgroup",
                source: include_str!("../../../shaders/flash_attention_subgroup.wgsl"),
                variant: ("", (head_dim * 100 + width) as u32 * KvTypes::PAIRS + types.code()),
                values: &subgroup_values,
                workgroup: 64,
            };
            (kernel, 64 / width * flash_subgroup_queries(hd4, width))
        }
        None => {
            // The K and V tiles fill WebGPU's default 16 KiB of workgroup memory.
            let keys = (16_384 / (2 * 4 * head_dim)).max(1);
            values = move || {
                let bindings = FLASH_BINDINGS.to_owned();
                vec![("HD4", hd4.to_string()), ("KEYS", keys.to_string()), ("BINDINGS", bindings), ("KV", kv_code(types, 1, false))]
            };
            let kernel = Template {
                name: "flash_attention",
                source: include_str!("../../../shaders/flash_attention.wgsl"),
                variant: ("", head_dim as u32 * KvTypes::PAIRS + types.code()),
                values: &values,
                workgroup: 64,
            };
            (kernel, FLASH_QUERIES)
        }
    };
    let args = attention_args(cache, slot, q, batch, out);
    let info = FlashAttentionInfo {
        first_row: chunk.first_row as u32,
        len: chunk.len as u32,
        start: chunk.start as u32,
        table: chunk.tables[group] as u32,
        heads: heads as u32,
        kv_heads: (cache.kv_dim / head_dim) as u32,
        block_size: cache.block_size as u32,
        window: rule.window.unwrap_or(0) as u32,
        scale: rule.scale,
        softcap: rule.softcap.unwrap_or(0.0),
        kv_dim: cache.kv_dim as u32,
    };
    let query_tiles = chunk.len.div_ceil(queries_per_workgroup) as u32;
    launch(&cache.device_kv().device, &kernel, [heads as u32, query_tiles, 1], &args, &info);
}

/// The bindings the attention kernels share: queries, the keys and values of the pool's
/// buffer `slot`, the batch buffer, and where the kernel writes.
fn attention_args<'a>(cache: &'a PagedKvCache, slot: usize, q: &'a CubeTensor, batch: &'a BatchBuffer, output: &'a CubeTensor) -> [Arg<'a>; 5] {
    [
        Arg::Read(&q.handle),
        Arg::Read(&cache.device_kv().keys[slot]),
        Arg::Read(&cache.device_kv().values[slot]),
        Arg::Read(&batch.handle),
        Arg::Write(&output.handle),
    ]
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
    kv_dim: u32,
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
    kv_dim: u32,
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
        let mut code = format!("        let v{d} = value4(slot, kv_offset + {}u);", 4 * d);
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
        ("KEYS", lines(hd4, &|d| format!("        let k{d} = key4(slot, kv_offset + {}u);", 4 * d))),
        ("SCORES", lines(queries, &scores)),
        ("VALUES", lines(hd4, &values)),
        ("MERGE", lines(queries, &merge)),
    ]
}
