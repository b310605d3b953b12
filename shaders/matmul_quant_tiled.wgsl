// y[t, r] = sum_c W[r, c] * x[t, c] for a quantized W (layout as in matmul_quant.wgsl) and
// many tokens (prompts): each workgroup computes a tile of TOKENS tokens x ROWS rows.
//
// The columns go a block (32 values) at a time: the workgroup dequantizes the tile's ROWS
// blocks once into workgroup memory and copies the TOKENS inputs beside them, then each
// invocation multiplies TM tokens by TN rows out of workgroup memory into registers. Every
// weight is unpacked once per TOKENS tokens and every input read once per ROWS rows.
//
// Invocation (tx, ty) = (lid % 8, lid / 8) owns tokens ty + 8i and rows tx + 8j: the eight
// invocations of a row of the grid read one input slot (a broadcast) and eight consecutive
// weight slots (no bank conflicts), as the tiles are stored slot-major.

{{BINDINGS}}

const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const TOKENS: u32 = 8u * TM;
const ROWS: u32 = 8u * TN;

// Slot s (values 4s..4s+3 of a block, in the unpack order: lo of groups 0-3, then hi) of
// row / token i at s * ROWS + i / s * TOKENS + i. Both take at most 8 KiB, so the pair fits
// WebGPU's default 16 KiB of workgroup memory.
var<workgroup> w_tile: array<vec4<f32>, 8u * ROWS>;
var<workgroup> x_tile: array<vec4<f32>, 8u * TOKENS>;

{{UNPACK}}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tx = lid % 8u;
    let ty = lid / 8u;
    let first_row = wg.x * ROWS;
    let first_token = wg.y * TOKENS;
    let blocks = info.cols / 32u;
    let x_row = info.cols / 4u;
    // Rows and tokens past the end load the last ones and are not written.
    let last_row = info.rows - 1u;
    let last_token = info.tokens - 1u;
{{ACCUMULATORS}}
    for (var b = 0u; b < blocks; b++) {
        for (var e = lid; e < ROWS * 4u; e += 64u) {
            let row = e / 4u;
            let k = e % 4u;
            var lo: vec4<f32>;
            var hi: vec4<f32>;
            unpack(min(first_row + row, last_row) * blocks + b, k, &lo, &hi);
            w_tile[k * ROWS + row] = lo;
            w_tile[(k + 4u) * ROWS + row] = hi;
        }
        for (var e = lid; e < TOKENS * 8u; e += 64u) {
            let t = e / 8u;
            let s = e % 8u;
            x_tile[s * TOKENS + t] = x[min(first_token + t, last_token) * x_row + b * 8u + s];
        }
        workgroupBarrier();
        for (var s = 0u; s < 8u; s++) {
{{PRODUCTS}}
        }
        workgroupBarrier();
    }
{{STORE}}
}
