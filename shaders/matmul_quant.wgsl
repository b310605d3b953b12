// y[t, r] = sum_c W[r, c] * x[t, c] for a weight matrix kept in a GGUF block format.
//
// The weights are repacked at load into two word arrays: `quants` (each 32-value block's
// quantized values, whole words per block) and `scales` (each block's f16 scale, and offset
// where the format has one). The format's `unpack` (templated in from unpack_<format>.wgsl)
// yields block values 4k..4k+3 and 16+4k..16+4k+3 for k = 0..3, matching GGUF's nibble
// order, so every format shares this loop.
//
// Each invocation computes ROWS consecutive rows for TILE tokens at once: every input it
// loads serves ROWS rows, and every weight it reads serves TILE tokens. CPU-backed adapters
// (lavapipe, SwiftShader) load memory lane by lane, so loads are what cost there; with one
// row per invocation every weight byte came with ~7 bytes of inputs. Accumulators are
// scalars, one per row and token.

{{BINDINGS}}

const TILE: u32 = {{TILE}}u;
const ROWS: u32 = {{ROWS}}u;
const WORKGROUP: u32 = 64u;

{{UNPACK}}

// The per-row and per-token lines (the placeholders) are written out by the launcher, so
// each accumulator is its own variable: an array indexed in a loop would live in memory
// on CPU-backed adapters.
@compute @workgroup_size(WORKGROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let first_row = gid.x * ROWS;
    if (first_row >= info.rows) {
        return;
    }
    let first_token = gid.y * TILE;
    let blocks = info.cols / 32u;
    let x_row = info.cols / 4u;
    // Tokens and rows past the end compute on the last ones and are not written.
    let last = info.tokens - 1u;
    let last_row = info.rows - 1u;
{{TOKEN_ROWS}}
{{ROW_STARTS}}
{{ACCUMULATORS}}
    for (var b = 0u; b < blocks; b++) {
        for (var k = 0u; k < 4u; k++) {
            let xi = b * 8u + k;
{{INPUTS}}
            var lo: vec4<f32>;
            var hi: vec4<f32>;
{{ACCUMULATE}}
        }
    }
{{STORE}}
}
