//! The CPU kernels on a real model's matrices: every weight matrix of the file (each layer's
//! projections and the LM head) multiplied once per pass, as one forward pass does, at 1
//! token (a decode step: reported in weight GB/s, and as the tokens per second the matrix
//! products alone would allow) and at prompt sizes (tokens per second of the products).
//! Norms, attention and sampling are not in it: it is the bound the matrices set.
//!
//! `CINDER_MODEL=path.gguf cargo bench -p cinder-cpu --bench cpu --profile dev` (default:
//! the default model in `~/.cache/cinder/models`); `CINDER_BENCH_THREADS` sets rayon's
//! threads, `CINDER_BENCH_TOKENS` (`1,8`) the token counts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cinder_cpu::BlockMatrix;
use cinder_gguf::GgufFile;

fn main() {
    let path = std::env::var_os("CINDER_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("CINDER_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/cinder"));
        home.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    // Passes run inside the pool, as a forward pass would: the matrices' tasks start from
    // one of its threads instead of waking the pool from outside for each product.
    let threads = std::env::var("CINDER_BENCH_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(0);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a thread pool");
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let has_output = file.tensors().iter().any(|t| t.name == "output.weight");
    let matrices: Vec<(String, BlockMatrix)> = file
        .tensors()
        .iter()
        .filter(|t| t.shape.len() == 2 && (t.name.starts_with("blk.") || t.name == "output.weight" || (!has_output && t.name == "token_embd.weight")))
        .map(|t| {
            let matrix = BlockMatrix::new(t.ty, file.tensor_shared(t, 0..t.bytes), t.rows() as usize, t.row_len() as usize);
            (t.name.clone(), matrix.unwrap_or_else(|e| panic!("{}: {e}", t.name)))
        })
        .collect();
    let weight_bytes: usize = file.tensors().iter().filter(|t| matrices.iter().any(|(n, _)| *n == t.name)).map(|t| t.bytes as usize).sum();
    let mut types: Vec<String> = file.tensors().iter().filter(|t| matrices.iter().any(|(n, _)| *n == t.name)).map(|t| t.ty.to_string()).collect();
    types.sort();
    types.dedup();
    println!(
        "{}: {} matrices, {:.1} MB of weights ({}), {} threads",
        path.file_name().unwrap_or_default().to_string_lossy(),
        matrices.len(),
        weight_bytes as f64 / 1e6,
        types.join(", "),
        pool.current_num_threads()
    );
    println!("{:>7} {:>12} {:>14} {:>12}", "tokens", "ms / pass", "tok/s (bound)", "weight GB/s");
    let counts = std::env::var("CINDER_BENCH_TOKENS").unwrap_or_else(|_| "1,8,64,256,512".into());
    for tokens in counts.split(',').map(|t| t.trim().parse::<usize>().expect("CINDER_BENCH_TOKENS: numbers")) {
        let pass = || {
            pool.install(|| {
                for (_, m) in &matrices {
                    let x = vec![0.5f32; tokens * m.cols()];
                    std::hint::black_box(m.matmul(&x, tokens));
                }
            })
        };
        pass();
        // The best of a few passes, at least 2 s of them.
        let (mut best, mut spent, mut runs) = (Duration::MAX, Duration::ZERO, 0);
        while runs < 3 || spent < Duration::from_secs(2) {
            let start = Instant::now();
            pass();
            best = best.min(start.elapsed());
            spent += start.elapsed();
            runs += 1;
        }
        let seconds = best.as_secs_f64();
        println!("{tokens:>7} {:>12.2} {:>14.1} {:>12.2}", seconds * 1e3, tokens as f64 / seconds, weight_bytes as f64 / seconds / 1e9);
    }
}
