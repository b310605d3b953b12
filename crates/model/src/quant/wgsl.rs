//! The matrix kernels' generated WGSL: each tiling's lines for the placeholders of
//! `shaders/matmul_quant*.wgsl`, and the bindings they share.

/// The row kernel's lines for `rows` rows per invocation and a tile of `tile` tokens (see
/// matmul_quant.wgsl).
pub(super) fn tile_code(rows: usize, tile: usize) -> Vec<(&'static str, String)> {
    row_lines(rows, tile, &|r, t| {
        format!(
            "    if (first_row + {r}u < info.rows && first_token + {t}u < info.tokens) {{ store((first_token + {t}u) * info.rows + first_row + {r}u, acc{r}_{t}); }}"
        )
    })
}

/// `f(r, t)` for every row and token of a `rows x tile` block of outputs, one per line.
fn pairs(rows: usize, tile: usize, f: &dyn Fn(usize, usize) -> String) -> String {
    (0..rows).flat_map(|r| (0..tile).map(move |t| (r, t))).map(|(r, t)| f(r, t)).collect::<Vec<_>>().join("\n")
}

/// The lines the row kernels share: each token's input row, each row's first block, a
/// scalar accumulator per row and token, the inputs of one 8-value group loaded once, each
/// row's weights unpacked once and multiplied with every token's inputs, and `store(r, t)`
/// for each output.
fn row_lines(rows: usize, tile: usize, store: &dyn Fn(usize, usize) -> String) -> Vec<(&'static str, String)> {
    let each = |n: usize, f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<_>>().join("\n");
    let (outer, indent) = ("        ", "            ");
    vec![
        ("TILE", tile.to_string()),
        ("ROWS", rows.to_string()),
        ("TOKEN_ROWS", each(tile, &|t| format!("    let x{t} = min(first_token + {t}u, last) * x_row;"))),
        ("ROW_STARTS", each(rows, &|r| format!("{outer}let block{r} = min(first_row + {r}u, last_row) * blocks;"))),
        ("ACCUMULATORS", pairs(rows, tile, &|r, t| format!("{outer}var acc{r}_{t} = 0.0;"))),
        ("INPUTS", each(tile, &|t| format!("{indent}let lo{t} = x[x{t} + xi];\n{indent}let hi{t} = x[x{t} + xi + 4u];"))),
        (
            "ACCUMULATE",
            each(rows, &|r| {
                let mut code = format!("{indent}unpack(block{r} + b, k, &lo, &hi);");
                for t in 0..tile {
                    code += &format!("\n{indent}acc{r}_{t} += dot(lo, lo{t}) + dot(hi, hi{t});");
                }
                code
            }),
        ),
        ("STORE", pairs(rows, tile, store)),
    ]
}

/// The subgroup kernel's lines for `rows` rows per subgroup and a tile of `tile` tokens
/// (see matmul_quant_subgroup.wgsl). Its `rows x tile` accumulators are scalars: vec4 ones
/// hold four times the registers and measured 10-15% slower on lavapipe at 8-64 tokens.
pub(super) fn subgroup_tile_code(rows: usize, tile: usize) -> Vec<(&'static str, String)> {
    row_lines(rows, tile, &|r, t| {
        format!(
            "        let sum{r}_{t} = subgroupAdd(acc{r}_{t});\n        if (lane == 0u && first_row + {r}u < info.rows && first_token + {t}u < info.tokens) {{ store((first_token + {t}u) * info.rows + first_row + {r}u, sum{r}_{t}); }}"
        )
    })
}

/// The tiled kernel's lines for TM tokens x TN rows per invocation (see
/// matmul_quant_tiled.wgsl).
pub(super) fn tiled_code(tm: usize, tn: usize) -> Vec<(&'static str, String)> {
    let each = |n: usize, f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<_>>().join("\n");
    let products = [
        each(tm, &|i| format!("            let x{i} = x_tile[s * TOKENS + ty + {}u];", 8 * i)),
        each(tn, &|j| format!("            let w{j} = w_tile[s * ROWS + tx + {}u];", 8 * j)),
        pairs(tm, tn, &|i, j| format!("            acc{i}_{j} += dot(x{i}, w{j});")),
    ];
    vec![
        ("TM", tm.to_string()),
        ("TN", tn.to_string()),
        ("ACCUMULATORS", pairs(tm, tn, &|i, j| format!("    var acc{i}_{j} = 0.0;"))),
        ("PRODUCTS", products.join("\n")),
        (
            "STORE",
            pairs(tm, tn, &|i, j| {
                let (t, r) = (format!("first_token + ty + {}u", 8 * i), format!("first_row + tx + {}u", 8 * j));
                format!("    if ({t} < info.tokens && {r} < info.rows) {{ store(({t}) * info.rows + {r}, acc{i}_{j}); }}")
            }),
        ),
    ]
}

/// matmul_bindings.wgsl for a launch with or without a residual to add.
pub(super) fn matmul_bindings(residual: bool) -> String {
    let (binding, info, add) = match residual {
        true => ("@group(0) @binding(4) var<storage, read_write> residual: array<f32>;", "5", " + residual[i]"),
        false => ("", "4", ""),
    };
    include_str!("../../../../shaders/matmul_bindings.wgsl")
        .replace("{{RESIDUAL_BINDING}}", binding)
        .replace("{{INFO_BINDING}}", info)
        .replace("{{RESIDUAL_ADD}}", add)
}

