// The bindings of the flash-attention kernels (flash_attention.wgsl and its subgroup
// variant): one long chunk's queries `q` (rows first_row.., RoPE applied), the layer's
// paged keys and values (read through the KV code of their types: `key4`, `value4`),
// the batch buffer, and `out` (same layout as `q`); and the window rule both apply.

struct Info {
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

@group(0) @binding(0) var<storage, read_write> q: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> batch: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(5) var<uniform> info: Info;
{{KV}}

// The first position a query at `position` sees: with a window, only its last `window`.
fn first_visible(position: u32) -> u32 {
    if info.window > 0u && position + 1u > info.window {
        return position + 1u - info.window;
    }
    return 0u;
}
