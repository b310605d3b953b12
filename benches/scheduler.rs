//! Scheduler speed and memory: enqueue rate, `plan()` with 1,000 running and 10,000
//! waiting sequences, and bytes of scheduler state per queued request.
//!
//! `cargo bench -p cinder-scheduler --bench scheduler`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use cinder_scheduler::{BatchPolicy, Priority, Request, Scheduler, SchedulerConfig, StepResult, TenantId, Time};
use criterion::{BatchSize, Criterion, criterion_group};

/// Counts live heap bytes, to measure what the scheduler keeps per request.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn config() -> SchedulerConfig {
    SchedulerConfig {
        num_blocks: 1 << 20,
        max_waiting: 1 << 22,
        max_seq_len: 1 << 16,
        policy: BatchPolicy::Continuous { max_batch_tokens: 4096, max_running: 1000, chunk_size: 512 },
        prefix_caching: false,
        ..Default::default()
    }
}

fn request(i: u32) -> Request {
    Request::new(vec![i; 64], 64).with_tenant(TenantId(i % 8)).with_priority(Priority::from_level((i % 5) as usize))
}

/// A scheduler with `running` sequences decoding and `waiting` queued behind them.
fn loaded(running: usize, waiting: usize) -> Scheduler {
    let mut s = Scheduler::new(SchedulerConfig {
        policy: BatchPolicy::Continuous { max_batch_tokens: 1 << 20, max_running: running, chunk_size: 1 << 16 },
        ..config()
    });
    for i in 0..running + waiting {
        s.submit(request(i as u32), Time::ZERO).unwrap();
    }
    let plan = s.plan(Time::ZERO);
    s.complete(StepResult::sampled(&plan, |_| 1), Time(1));
    assert_eq!((s.num_running(), s.num_waiting()), (running, waiting));
    s
}

fn benches(c: &mut Criterion) {
    c.bench_function("submit 10k requests", |b| {
        b.iter_batched(
            || (Scheduler::new(config()), (0..10_000).map(request).collect::<Vec<_>>()),
            |(mut s, requests)| {
                for r in requests {
                    s.submit(r, Time::ZERO).unwrap();
                }
                s
            },
            BatchSize::LargeInput,
        )
    });
    c.bench_function("plan 1k running 10k waiting", |b| {
        b.iter_batched(
            || loaded(1000, 10_000),
            |mut s| {
                let plan = s.plan(Time(2));
                (s, plan)
            },
            BatchSize::LargeInput,
        )
    });
}

/// Heap bytes the scheduler holds per queued request beyond the request itself (its struct
/// and prompt), at several queue lengths: growable containers make it vary with the length.
fn bytes_per_queued_request(n: u32, deadlines: bool) -> f64 {
    let requests: Vec<Request> = (0..n)
        .map(request)
        .map(|r| if deadlines { r.with_max_wait(cinder_scheduler::Duration::from_millis(60_000)) } else { r })
        .collect();
    let mut s = Scheduler::new(config());
    let before = LIVE.load(Ordering::Relaxed);
    for r in requests {
        s.submit(r, Time::ZERO).unwrap();
    }
    // The prompts were counted before. The loop freed the vector holding the request structs,
    // so a scheduler that stored each struct as is and nothing else would show zero.
    let after = LIVE.load(Ordering::Relaxed);
    drop(s);
    (after - before) as f64 / n as f64
}

fn report_bytes_per_queued_request() {
    for deadlines in [false, true] {
        let sizes = [1_000u32, 10_000, 100_000, 1_000_000];
        let bytes: Vec<String> = sizes.iter().map(|&n| format!("{n}: {:.0}", bytes_per_queued_request(n, deadlines))).collect();
        let kind = if deadlines { "with deadlines" } else { "no deadlines" };
        println!("scheduler bytes per queued request beyond the request ({kind}), by queue length: {}", bytes.join(", "));
    }
}

criterion_group!(group, benches);

fn main() {
    report_bytes_per_queued_request();
    group();
    Criterion::default().configure_from_args().final_summary();
}
