//! The threads the kernels' tasks run on: a rayon pool natively; in a wasm module without
//! threads, the calling thread.

/// A pool of threads for the kernels.
pub struct Threads {
    #[cfg(not(target_family = "wasm"))]
    pool: rayon::ThreadPool,
}

impl Threads {
    /// A pool of `count` threads, one per core for 0 (where a wasm module has no threads:
    /// the calling one).
    pub fn new(count: usize) -> Result<Self, String> {
        #[cfg(not(target_family = "wasm"))]
        {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(count)
                .thread_name(|i| format!("cinder-cpu-{i}"))
                .build()
                .map_err(|e| format!("starting {count} CPU threads: {e}"))?;
            Ok(Self { pool })
        }
        #[cfg(target_family = "wasm")]
        {
            let _ = count;
            Ok(Self {})
        }
    }

    pub fn count(&self) -> usize {
        #[cfg(not(target_family = "wasm"))]
        return self.pool.current_num_threads();
        #[cfg(target_family = "wasm")]
        1
    }

    /// Runs `work` on the pool. Kernels called inside start their tasks from one of its
    /// threads instead of waking the pool from outside for each product (on 2 cores, 40 %
    /// of a decode step's matrix time).
    pub fn install<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        #[cfg(not(target_family = "wasm"))]
        return self.pool.install(work);
        #[cfg(target_family = "wasm")]
        work()
    }
}

/// The threads of the pool the caller runs in (rayon's global pool outside one).
pub(crate) fn current() -> usize {
    #[cfg(not(target_family = "wasm"))]
    return rayon::current_num_threads();
    #[cfg(target_family = "wasm")]
    1
}

/// Runs `task` on every item, in parallel natively.
pub(crate) fn for_each<T: Send>(items: impl Iterator<Item = T>, task: impl Fn(T) + Sync + Send) {
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        let items: Vec<T> = items.collect();
        items.into_par_iter().for_each(task);
    }
    #[cfg(target_family = "wasm")]
    items.for_each(task);
}
