//! `cinder simulate`: every batching strategy over a sweep of loads and workloads, through
//! the scheduler's simulator; with `--fleet`, replicas behind routing policies.

mod fleet;

use std::path::{Path, PathBuf};

use anyhow::Context;
use cinder_scheduler::sim::{CostModel, RunResult, Simulation, Workload};
use cinder_scheduler::{BatchPolicy, Duration, SchedulerConfig};
use crate::plot::{Series, line_chart};
use serde::Serialize;

#[derive(clap::Args)]
pub struct SimulateArgs {
    /// Write every run's results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write SVG plots into this folder.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Offered loads to sweep, requests per second (per replica with `--fleet`).
    #[arg(long, value_delimiter = ',', default_values_t = [1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0])]
    loads: Vec<f64>,
    /// Seconds during which requests arrive in each run.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulate replicas behind routing policies (round robin, least queue, least KV and
    /// the inference gateway's endpoint picker) instead of batching strategies.
    #[arg(long)]
    fleet: bool,
    /// With `--fleet`: replicas of the load sweep.
    #[arg(long, default_value_t = 8, requires = "fleet")]
    replicas: usize,
    /// With `--fleet`: fleet loads (requests/s) at which to find the replicas each policy
    /// needs to hold the TTFT SLO.
    #[arg(long, value_delimiter = ',', default_values_t = [16.0, 32.0, 64.0, 128.0, 256.0], requires = "fleet")]
    slo_loads: Vec<f64>,
    /// With `--fleet`: the SLO, p95 seconds to the first token (every request served).
    #[arg(long, default_value_t = 2.0, requires = "fleet")]
    slo_ttft: f64,
    /// With `--fleet`: the most replicas searched.
    #[arg(long, default_value_t = 64, requires = "fleet")]
    max_replicas: usize,
    /// With `--fleet`: seconds between the router's reads of the replicas' gauges (the
    /// endpoint picker scrapes every 50 ms).
    #[arg(long, default_value_t = 0.05, requires = "fleet")]
    scrape_interval: f64,
}

/// The strategies compared, with the names reports use.
fn strategies() -> Vec<(&'static str, BatchPolicy)> {
    let wait = Duration::from_millis(50);
    vec![
        ("fixed", BatchPolicy::Fixed { batch_size: 16, max_wait: wait }),
        ("bucketed", BatchPolicy::Bucketed { batch_size: 16, max_wait: wait, bucket_edges: vec![128, 512, 1024] }),
        ("memory_aware", BatchPolicy::MemoryAware { max_batch_tokens: 16_384, max_wait: wait }),
        ("continuous", BatchPolicy::Continuous { max_batch_tokens: 2048, max_running: 256, chunk_size: 512 }),
        ("adaptive", BatchPolicy::Adaptive { min_batch_tokens: 512, max_batch_tokens: 2048, min_chunk_size: 128, chunk_size: 512, max_running: 256 }),
        ("bandit", BatchPolicy::Bandit { max_batch_tokens: 2048, min_running: 4, max_running: 256, chunk_size: 512 }),
        ("latency_preset", BatchPolicy::latency_optimised()),
        ("throughput_preset", BatchPolicy::throughput_optimised()),
    ]
}

#[derive(Serialize)]
struct Summary {
    workload: String,
    /// The fixed baseline's e2e p95 latency at its peak throughput: the latency bound at
    /// which strategies are compared.
    latency_bound_e2e_p95_s: f64,
    /// Highest throughput per strategy over the loads where e2e p95 stays within the bound.
    peak_throughput_at_equal_p95: Vec<(String, f64)>,
    continuous_over_fixed: f64,
    adaptive_over_continuous: f64,
    bandit_over_continuous: f64,
    /// Mean over loads of the continuous strategy's time-averaged KV waste.
    continuous_kv_waste_frac: f64,
}

#[derive(Serialize)]
struct Report {
    cost_model: CostModel,
    runs: Vec<RunResult>,
    summary: Vec<Summary>,
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    if args.fleet {
        anyhow::ensure!(args.replicas >= 1 && args.max_replicas >= 1, "--replicas and --max-replicas must be at least 1");
        return fleet::run(&args);
    }
    let workloads = [Workload::mixed(), Workload::bursty(), Workload::shared_prefix()];
    let cost = CostModel::default();
    let mut runs = Vec::new();
    for workload in &workloads {
        for (name, policy) in strategies() {
            for &load in &args.loads {
                let simulation = Simulation {
                    config: SchedulerConfig { policy: policy.clone(), ..Default::default() },
                    workload: workload.clone(),
                    rate_rps: load,
                    duration_s: args.duration,
                    cost: cost.clone(),
                    seed: args.seed,
                };
                let mut result = simulation.run();
                result.strategy = name.to_owned();
                eprintln!(
                    "{:<14} {:<18} load {:>5.1}/s: {:>7.0} tok/s, TTFT p50 {:>6.2} s p95 {:>6.2} s, e2e p95 {:>6.2} s, SLA {:>5.1} %, KV waste {:>5.1} %, preemptions {}",
                    result.workload,
                    name,
                    load,
                    result.throughput_tok_s,
                    result.ttft_p50_s,
                    result.ttft_p95_s,
                    result.e2e_p95_s,
                    100.0 * result.sla_attainment,
                    100.0 * result.kv_waste_frac,
                    result.preemptions
                );
                runs.push(result);
            }
        }
    }
    let summary: Vec<Summary> = workloads.iter().map(|w| summarize(&runs, w)).collect();
    for s in &summary {
        println!(
            "{}: peak throughput at e2e p95 <= {:.1} s (fixed's at its peak): continuous / fixed = {:.2}x, adaptive / continuous = {:.2}x, bandit / continuous = {:.2}x; continuous KV waste {:.2} %",
            s.workload,
            s.latency_bound_e2e_p95_s,
            s.continuous_over_fixed,
            s.adaptive_over_continuous,
            s.bandit_over_continuous,
            100.0 * s.continuous_kv_waste_frac
        );
    }
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        plot_all(dir, &runs, &workloads)?;
    }
    if let Some(path) = &args.json {
        let report = Report { cost_model: cost, runs, summary };
        std::fs::write(path, serde_json::to_string(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn summarize(runs: &[RunResult], workload: &Workload) -> Summary {
    fn of<'a>(runs: &'a [RunResult], workload: &'a Workload, strategy: &'a str) -> impl Iterator<Item = &'a RunResult> {
        runs.iter().filter(move |r| r.workload == workload.name && r.strategy == strategy)
    }
    let fixed_peak = of(runs, workload, "fixed").max_by(|a, b| a.throughput_tok_s.total_cmp(&b.throughput_tok_s));
    let bound = fixed_peak.map_or(f64::INFINITY, |r| r.e2e_p95_s);
    let peak = |strategy: &str| {
        of(runs, workload, strategy).filter(|r| r.e2e_p95_s <= bound).map(|r| r.throughput_tok_s).fold(0.0, f64::max)
    };
    let peaks: Vec<(String, f64)> = strategies().iter().map(|(name, _)| (name.to_string(), peak(name))).collect();
    let waste: Vec<f64> = of(runs, workload, "continuous").map(|r| r.kv_waste_frac).collect();
    Summary {
        workload: workload.name.clone(),
        latency_bound_e2e_p95_s: bound,
        continuous_over_fixed: peak("continuous") / peak("fixed").max(1e-9),
        adaptive_over_continuous: peak("adaptive") / peak("continuous").max(1e-9),
        bandit_over_continuous: peak("bandit") / peak("continuous").max(1e-9),
        continuous_kv_waste_frac: waste.iter().sum::<f64>() / waste.len().max(1) as f64,
        peak_throughput_at_equal_p95: peaks,
    }
}

fn plot_all(dir: &Path, runs: &[RunResult], workloads: &[Workload]) -> anyhow::Result<()> {
    for w in workloads {
        let by_strategy = |metric: fn(&RunResult) -> f64| -> Series {
            strategies()
                .iter()
                .map(|(name, _)| {
                    let points = runs.iter().filter(|r| r.workload == w.name && r.strategy == *name).map(|r| (r.load, metric(r))).collect();
                    (name.to_string(), points)
                })
                .collect()
        };
        line_chart(&dir.join(format!("throughput_{}.svg", w.name)), &format!("Throughput vs offered load ({})", w.name), "offered load (requests/s)", "output tokens/s", &by_strategy(|r| r.throughput_tok_s))?;
        line_chart(&dir.join(format!("ttft_p95_{}.svg", w.name)), &format!("TTFT p95 vs offered load ({})", w.name), "offered load (requests/s)", "seconds", &by_strategy(|r| r.ttft_p95_s))?;
    }
    let continuous_mixed: Vec<&RunResult> = runs.iter().filter(|r| r.workload == "mixed" && r.strategy == "continuous").collect();
    let priorities: Series = ["critical", "high", "normal", "low", "batch"]
        .iter()
        .map(|p| (p.to_string(), continuous_mixed.iter().filter_map(|r| r.ttft_p95_by_priority_s.get(*p).map(|v| (r.load, *v))).collect()))
        .collect();
    line_chart(&dir.join("ttft_p95_by_priority.svg"), "TTFT p95 by priority (continuous, mixed)", "offered load (requests/s)", "seconds", &priorities)?;
    if let Some(heaviest) = continuous_mixed.last() {
        let tenants = heaviest.tenant_tokens_over_time.first().map_or(0, Vec::len);
        let shares: Series = (0..tenants)
            .map(|t| {
                let points = heaviest
                    .tenant_tokens_over_time
                    .iter()
                    .enumerate()
                    .map(|(i, w)| (i as f64 * heaviest.share_window_s, w[t] as f64 / w.iter().sum::<u64>().max(1) as f64))
                    .collect();
                (format!("tenant {t}"), points)
            })
            .collect();
        line_chart(&dir.join("tenant_share.svg"), &format!("Share of computed tokens per tenant (continuous, mixed, {} req/s)", heaviest.load), "time (s)", "share", &shares)?;
    }
    Ok(())
}
