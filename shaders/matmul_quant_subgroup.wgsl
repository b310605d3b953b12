// y[t, r] = sum_c W[r, c] * x[t, c] for a quantized W (layout as in matmul_quant.wgsl), with
// the lanes of a subgroup splitting each row's columns.
//
// Each subgroup takes ROWS consecutive rows; lane l reads the 8-value groups l, l + width,
// ... of them, loads the matching inputs once and uses them for all ROWS rows, and a
// subgroupAdd sums the lanes' parts. Where every lane owns a row (matmul_quant.wgsl), every
// lane loads the same inputs: CPU-backed adapters (lavapipe) gather them lane by lane, so
// sharing the inputs across rows cuts the loads per weight by ROWS.

// Subgroup builtins need the adapter's subgroup feature; a browser also needs the `enable`
// directive, which naga refuses (the launcher writes it on wasm only).
{{ENABLE_SUBGROUPS}}

{{BINDINGS}}

const TILE: u32 = {{TILE}}u;
const ROWS: u32 = {{ROWS}}u;
const WORKGROUP: u32 = 64u;

{{UNPACK}}

@compute @workgroup_size(WORKGROUP)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) width: u32,
) {
    let subgroups = WORKGROUP / width;
    let first_token = wg.y * TILE;
    let blocks = info.cols / 32u;
    let x_row = info.cols / 4u;
    // Tokens and rows past the end compute on the last ones and are not written.
    let last = info.tokens - 1u;
    let last_row = info.rows - 1u;
{{TOKEN_ROWS}}
    // The dispatch counts subgroups of the largest size: smaller ones are more per
    // workgroup, and those past the last row have nothing to do. (No loop over rows: a
    // loop around the conditional stores made SwiftShader's compiler run for minutes
    // and grow without bound once a tile held 16 accumulators.)
    let first_row = (wg.x * subgroups + lid / width) * ROWS;
    if first_row >= info.rows {
        return;
    }
{{ROW_STARTS}}
{{ACCUMULATORS}}
        for (var g = lane; g < blocks * 4u; g += width) {
            let b = g >> 2u;
            let k = g & 3u;
            let xi = b * 8u + k;
{{INPUTS}}
            var lo: vec4<f32>;
            var hi: vec4<f32>;
{{ACCUMULATE}}
        }
{{STORE}}
}
