//! SIMD arithmetic shared by the kernels, generic over pulp's targets.

use pulp::Simd;

/// `a · b` with four independent accumulators (a fused multiply-add's latency is four
/// times its throughput).
#[inline(always)]
pub(crate) fn dot<S: Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    let (a, a_tail) = S::as_simd_f32s(a);
    let (b, b_tail) = S::as_simd_f32s(b);
    let mut acc = [simd.splat_f32s(0.0); 4];
    let (a4, a_rest) = a.split_at(a.len() / 4 * 4);
    let (b4, b_rest) = b.split_at(a4.len());
    for (a, b) in a4.chunks_exact(4).zip(b4.chunks_exact(4)) {
        for i in 0..4 {
            acc[i] = simd.mul_add_e_f32s(a[i], b[i], acc[i]);
        }
    }
    for (&a, &b) in a_rest.iter().zip(b_rest) {
        acc[0] = simd.mul_add_e_f32s(a, b, acc[0]);
    }
    let sum = simd.add_f32s(simd.add_f32s(acc[0], acc[1]), simd.add_f32s(acc[2], acc[3]));
    simd.reduce_sum_f32s(sum) + a_tail.iter().zip(b_tail).map(|(a, b)| a * b).sum::<f32>()
}


/// `acc = acc * keep + w * v`, elementwise.
#[inline(always)]
pub(crate) fn scale_add<S: Simd>(simd: S, acc: &mut [f32], keep: f32, w: f32, v: &[f32]) {
    let (acc, acc_tail) = S::as_mut_simd_f32s(acc);
    let (v, v_tail) = S::as_simd_f32s(v);
    let (keep_s, w_s) = (simd.splat_f32s(keep), simd.splat_f32s(w));
    for (a, &v) in acc.iter_mut().zip(v) {
        *a = simd.mul_add_e_f32s(w_s, v, simd.mul_f32s(*a, keep_s));
    }
    for (a, &v) in acc_tail.iter_mut().zip(v_tail) {
        *a = *a * keep + w * v;
    }
}

/// How far ahead of its use a product asks for a weight's cache lines.
#[cfg(target_arch = "x86_64")]
const PREFETCH_BYTES: usize = 2048;

/// Asks for the cache lines of `bytes` at `PREFETCH_BYTES` past `block`, ahead of their
/// use: a decode step streams every weight once, faster than the hardware prefetcher
/// brings them in (Q4_1 rows from L3, one thread: 3.2 -> 4.4 GB/s). Where stable Rust has
/// no prefetch instruction (aarch64, wasm), nothing.
#[inline(always)]
pub(crate) fn prefetch_ahead(block: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..bytes).step_by(64) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch is a hint that never faults, whatever the address; the address
        // is computed without dereferencing (`wrapping_add`).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH_BYTES + line).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (block, bytes);
}
