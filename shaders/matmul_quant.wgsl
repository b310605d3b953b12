// y[t, r] = sum_c W[r, c] * x[t, c] for a weight matrix kept in a GGUF block format.
//
// The weights are repacked at load into two word arrays: `quants` (each 32-value block's
// quantized values, whole words per block) and `scales` (each block's f16 scale, and offset
// where the format has one). The format's `unpack` (templated in from unpack_<format>.wgsl)
// yields block values 4k..4k+3 and 16+4k..16+4k+3 for k = 0..3, matching GGUF's nibble
// order, so every format shares this loop.
//
// One invocation per output row: on CPU-backed adapters (lavapipe) that beats workgroup
// reductions, each lane streaming its own row. Each invocation computes TILE tokens at once,
// reading the weights once for all of them; accumulators are vec4s, summed at the end.

{{BINDINGS}}

const TILE: u32 = {{TILE}}u;
const WORKGROUP: u32 = 64u;

{{UNPACK}}

// The per-token lines (the TOKEN_ROWS, ACCUMULATORS, ACCUMULATE and STORE placeholders) are
// written out once per token of the tile, so each accumulator is its own variable: an
// array indexed in a loop would live in memory on CPU-backed adapters.
@compute @workgroup_size(WORKGROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    if (row >= info.rows) {
        return;
    }
    let first_token = gid.y * TILE;
    let blocks = info.cols / 32u;
    let x_row = info.cols / 4u;
    // Tokens past the end read the last token's row and are not written.
    let last = info.tokens - 1u;
{{TOKEN_ROWS}}
{{ACCUMULATORS}}
    for (var b = 0u; b < blocks; b++) {
        let block = row * blocks + b;
        for (var k = 0u; k < 4u; k++) {
            var lo: vec4<f32>;
            var hi: vec4<f32>;
            unpack(block, k, &lo, &hi);
            let xi = b * 8u + k;
{{ACCUMULATE}}
        }
    }
{{STORE}}
}
