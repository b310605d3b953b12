//! Products of a weight matrix kept in its GGUF blocks with f32 activations: `x W^T` for
//! `x` of `[tokens, cols]` and a `rows x cols` matrix, GGUF's row order.
//!
//! Rows run in parallel tasks. Decode steps and small batches (up to 32 tokens) multiply
//! each block in place: its values are made in registers ([`QuantBlock::for_each_lanes`])
//! and multiplied with up to four tokens at once, so a weight byte is read from memory once
//! and no decoded values are written. More tokens decode each row to f32 once (in L1) and
//! take its dot product with every token; past 128 tokens, a task's rows are decoded and
//! multiplied as one matrix product. On the default model (2 cores, `benches/cpu.rs`) the
//! three crossed over near 32 and 128 tokens.

use std::marker::PhantomData;

use cinder_gguf::{GgmlType, SharedBytes};
use cinder_gguf::blocks::{LANES, QuantBlock, WithBlock, TakeLanes, blocks, with_block};
use pulp::{Arch, Simd, WithSimd};

use crate::simd::{dot, prefetch_ahead};

/// A matrix the CPU kernels cannot take.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum MatmulError {
    #[error("{ty} matrices have no CPU kernel")]
    Unsupported { ty: GgmlType },
    #[error("{bytes} bytes do not hold a {rows} x {cols} {ty} matrix")]
    Shape { ty: GgmlType, bytes: usize, rows: usize, cols: usize },
}

/// A `rows x cols` matrix in a GGUF format: a block format, F16 or F32.
pub struct BlockMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    /// The file's bytes where it is mapped or in memory; a tied LM head's are also the token
    /// embedding's.
    data: SharedBytes,
}

/// Rows per parallel task at decode: enough work to outweigh a task's cost, few enough that
/// two threads share a 576-row matrix evenly.
const ROWS_PER_TASK: usize = 16;
/// Prompts past `DOT_TOKENS` split a matrix into this many tasks per thread: each task's
/// matrix product packs every token's activations again, so tasks are few and large (with 64
/// rows a task, packing took 40 % of Gemma 3's prompt time).
const PROMPT_TASKS_PER_THREAD: usize = 2;

impl BlockMatrix {
    /// The matrix in `data`: `rows` rows of `cols` values each, whole blocks per row.
    pub fn new(ty: GgmlType, data: impl Into<SharedBytes>, rows: usize, cols: usize) -> Result<Self, MatmulError> {
        let data = data.into();
        if !matches!(ty, GgmlType::F32 | GgmlType::F16) && with_block(ty, BlockBytes).is_none() {
            return Err(MatmulError::Unsupported { ty });
        }
        let shape = MatmulError::Shape { ty, bytes: data.len(), rows, cols };
        let row_bytes = ty.bytes_for(cols as u64).ok_or(shape.clone())? as usize;
        if rows.checked_mul(row_bytes) != Some(data.len()) {
            return Err(shape);
        }
        Ok(Self { ty, rows, cols, data })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of the weights.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The weights' bytes, where they are in format `ty`.
    pub fn shared_data(&self, ty: GgmlType) -> Option<SharedBytes> {
        (self.ty == ty).then(|| self.data.clone())
    }

    /// `x` (`[tokens, cols]`, row-major) times the transposed matrix: `[tokens, rows]`.
    pub fn matmul(&self, x: &[f32], tokens: usize) -> Vec<f32> {
        assert_eq!(x.len(), tokens * self.cols, "x must be [tokens, cols]");
        // Each task writes its rows' products for every token, `[rows, tokens]`; they are
        // laid out `[tokens, rows]` after.
        let mut by_row = vec![0f32; self.rows * tokens];
        let row_bytes = self.data.len() / self.rows.max(1);
        let arch = Arch::new();
        let task = |(rows, out): (&[u8], &mut [f32])| {
            let job = Rows { rows, row_bytes, cols: self.cols, x, tokens, out };
            match self.ty {
                GgmlType::F32 | GgmlType::F16 => arch.dispatch(Plain { ty: self.ty, job }),
                ty => with_block(ty, Blocks { arch, job }).expect("checked at construction"),
            }
        };
        let per_task = if tokens > DOT_TOKENS {
            self.rows.div_ceil(PROMPT_TASKS_PER_THREAD * crate::threads::current()).max(ROWS_PER_TASK)
        } else {
            ROWS_PER_TASK
        };
        let chunks = self.data.chunks(row_bytes * per_task).zip(by_row.chunks_mut(tokens * per_task));
        crate::threads::for_each(chunks, task);
        let mut y = vec![0f32; tokens * self.rows];
        for (r, products) in by_row.chunks_exact(tokens).enumerate() {
            for (t, &value) in products.iter().enumerate() {
                y[t * self.rows + r] = value;
            }
        }
        y
    }
}

/// The size of a block format's blocks (`None` for types without one).
struct BlockBytes;

impl WithBlock for BlockBytes {
    type Output = usize;

    fn run<B: QuantBlock>(self) -> usize {
        size_of::<B>()
    }
}

/// Up to this many tokens, the products read the blocks in place ([`row_products`]); more
/// tokens share each row decoded once to f32, up to `DOT_TOKENS` a dot product per token,
/// beyond as one matrix product.
const IN_PLACE_TOKENS: usize = 32;
const DOT_TOKENS: usize = 128;

/// One task: its rows' weights times every token, into `out` (`[rows, tokens]`).
struct Rows<'a> {
    rows: &'a [u8],
    row_bytes: usize,
    cols: usize,
    x: &'a [f32],
    tokens: usize,
    out: &'a mut [f32],
}

impl Rows<'_> {
    /// The rows decoded to f32 by `decode`: a few tokens take each decoded row's dot
    /// product in turn; more, one matrix product of all the rows (`matrixmultiply`'s packed,
    /// cache-blocked kernels), whose packing pays off.
    #[inline(always)]
    fn by_decoding<S: Simd>(self, simd: S, decode: impl Fn(&[u8], &mut Vec<f32>)) {
        if self.tokens > DOT_TOKENS {
            return self.by_matrix_product(decode);
        }
        let mut row = Vec::with_capacity(self.cols);
        for (weights, out) in self.rows.chunks_exact(self.row_bytes).zip(self.out.chunks_exact_mut(self.tokens)) {
            row.clear();
            decode(weights, &mut row);
            for (t, out) in out.iter_mut().enumerate() {
                *out = dot(simd, &row, &self.x[t * self.cols..(t + 1) * self.cols]);
            }
        }
    }

    #[inline(always)]
    fn by_matrix_product(self, decode: impl Fn(&[u8], &mut Vec<f32>)) {
        let mut weights = Vec::with_capacity(self.out.len() / self.tokens * self.cols);
        for row in self.rows.chunks_exact(self.row_bytes) {
            decode(row, &mut weights);
        }
        let rows = weights.len() / self.cols;
        assert_eq!(self.out.len(), rows * self.tokens);
        let (k, cols, tokens) = (self.cols, self.cols as isize, self.tokens as isize);
        // SAFETY: x is [tokens, cols] and weights [rows, cols], row-major, as checked above
        // and at `matmul`'s entry; out is [rows, tokens]: every index the strides reach is in
        // bounds.
        unsafe {
            matrixmultiply::sgemm(
                self.tokens,
                k,
                rows,
                1.0,
                self.x.as_ptr(),
                cols,
                1,
                weights.as_ptr(),
                1,
                cols,
                0.0,
                self.out.as_mut_ptr(),
                1,
                tokens,
            );
        }
    }
}

/// Rows of F32 or F16 values.
struct Plain<'a> {
    ty: GgmlType,
    job: Rows<'a>,
}

impl WithSimd for Plain<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        match self.ty {
            GgmlType::F32 => self.job.by_decoding(simd, |b, row| row.extend(b.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])))),
            _ => self.job.by_decoding(simd, |b, row| row.extend(b.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()))),
        }
    }
}

/// Rows of blocks of a format, dispatched to the SIMD target inside the format's type (so
/// its loops compile for that target).
struct Blocks<'a> {
    arch: Arch,
    job: Rows<'a>,
}

impl WithBlock for Blocks<'_> {
    type Output = ();

    fn run<B: QuantBlock>(self) {
        self.arch.dispatch(BlockRows::<B> { job: self.job, block: PhantomData });
    }
}

struct BlockRows<'a, B> {
    job: Rows<'a>,
    block: PhantomData<B>,
}

impl<B: QuantBlock> WithSimd for BlockRows<'_, B> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let job = self.job;
        if job.tokens > IN_PLACE_TOKENS {
            return job.by_decoding(simd, |bytes, row| blocks::<B>(bytes).for_each(|block| block.decode(row)));
        }
        let cols = job.cols;
        for (weights, out) in job.rows.chunks_exact(job.row_bytes).zip(job.out.chunks_exact_mut(job.tokens)) {
            for (pass, out) in out.chunks_mut(TOKENS_PER_PASS).enumerate() {
                let x = &job.x[pass * TOKENS_PER_PASS * cols..];
                // `chunks_mut` gives 1 to 4 tokens.
                match out.len() {
                    1 => row_products::<S, B, 1>(simd, weights, x, cols, out),
                    2 => row_products::<S, B, 2>(simd, weights, x, cols, out),
                    3 => row_products::<S, B, 3>(simd, weights, x, cols, out),
                    _ => row_products::<S, B, TOKENS_PER_PASS>(simd, weights, x, cols, out),
                }
            }
        }
    }
}

/// Tokens whose products share each block's values while they are in registers.
const TOKENS_PER_PASS: usize = 4;

/// One row of blocks times `T` tokens (`x`: `[T, cols]` and beyond), into `out[..T]`: each
/// block's values are made once for all of them ([`QuantBlock::for_each_lanes`]).
#[inline(always)]
fn row_products<S: Simd, B: QuantBlock, const T: usize>(simd: S, weights: &[u8], x: &[f32], cols: usize, out: &mut [f32]) {
    let mut products = Products::<S, T> { simd, x: std::array::from_fn(|t| &x[t * cols..(t + 1) * cols]), at: 0, acc: [[0f32; LANES]; T] };
    for (i, block) in blocks::<B>(weights).enumerate() {
        prefetch_ahead((block as *const B).cast(), size_of::<B>());
        products.at = i * B::VALUES;
        block.for_each_lanes(&mut products);
    }
    for (out, acc) in out.iter_mut().zip(&products.acc) {
        *out = acc.iter().sum();
    }
}

/// `T` tokens' products with a row, block by block, in pulp's vectors (LLVM left alone
/// interleaves the tokens' lanes into shuffles).
struct Products<'a, S, const T: usize> {
    simd: S,
    x: [&'a [f32]; T],
    /// The block's first column.
    at: usize,
    acc: [[f32; LANES]; T],
}

impl<S: Simd, const T: usize> TakeLanes for Products<'_, S, T> {
    #[inline(always)]
    fn take(&mut self, offset: usize, values: &[f32; LANES]) {
        let (values, _) = S::as_simd_f32s(values);
        for t in 0..T {
            let (x, _) = S::as_simd_f32s(&self.x[t][self.at + offset..][..LANES]);
            let (acc, _) = S::as_mut_simd_f32s(&mut self.acc[t]);
            for ((acc, &w), &x) in acc.iter_mut().zip(values).zip(x) {
                *acc = self.simd.mul_add_e_f32s(w, x, *acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Every format against its dequantized matrix multiplied plainly, over row counts
    /// around the task size, rows of 1 to 19 blocks, and token counts for each path: in
    /// place (1, 2, and 7 in passes of 4 and 3), a dot product per decoded row (40) and one
    /// matrix product (300).
    #[test]
    fn every_format_matches_the_dequantized_product() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let formats = [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::Q6K,
        ];
        for ty in formats {
            let block = if ty.is_quantized() { ty.block_elements() } else { 32 };
            for (rows, cols) in [(1, block), (17, 3 * block), (37, 19 * block)] {
                let values: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
                let data = match ty {
                    GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    GgmlType::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
                    _ => cinder_gguf::quantize(ty, &values).unwrap(),
                };
                let weights = cinder_gguf::dequantize(ty, &data).unwrap();
                let matrix = BlockMatrix::new(ty, data, rows, cols).unwrap();
                for tokens in [1, 2, 7, 40, 300] {
                    let x: Vec<f32> = (0..tokens * cols).map(|_| rng.random_range(-2.0..2.0)).collect();
                    let got = matrix.matmul(&x, tokens);
                    for (i, got) in got.iter().enumerate() {
                        let (t, r) = (i / rows, i % rows);
                        let row = &weights[r * cols..(r + 1) * cols];
                        let expected: f32 = row.iter().zip(&x[t * cols..(t + 1) * cols]).map(|(w, x)| w * x).sum();
                        let tolerance = 1e-4 * (1.0 + expected.abs()) * (cols as f32).sqrt();
                        assert!((got - expected).abs() <= tolerance, "{ty} {rows}x{cols}, {tokens} tokens, [{t}, {r}]: {got} vs {expected}");
                    }
                }
            }
        }
    }

    #[test]
    fn matrices_the_kernels_cannot_take_are_refused_with_the_reason() {
        let q2k = BlockMatrix::new(GgmlType::Q2K, vec![0; 84], 1, 256).err();
        assert_eq!(q2k.map(|e| e.to_string()).as_deref(), Some("Q2_K matrices have no CPU kernel"));
        let short = BlockMatrix::new(GgmlType::Q4_0, vec![0; 17], 1, 32).err();
        assert_eq!(short.map(|e| e.to_string()).as_deref(), Some("17 bytes do not hold a 1 x 32 Q4_0 matrix"));
        let ragged = BlockMatrix::new(GgmlType::Q4_0, vec![0; 18], 1, 31).err();
        assert!(matches!(ragged, Some(MatmulError::Shape { .. })));
    }
}
