//! `cinder simulate --fleet`: replicas of the scheduler behind each routing policy, over
//! offered loads and workloads, and the replicas each policy needs to hold a TTFT SLO.

use std::path::Path;

use anyhow::Context;
use cinder_scheduler::SchedulerConfig;
use cinder_scheduler::sim::fleet::{Fleet, FleetResult, Routing};
use cinder_scheduler::sim::{CostModel, Workload};
use rayon::prelude::*;
use serde::Serialize;

use super::SimulateArgs;
use crate::plot::{Series, line_chart};

/// The fewest replicas holding the SLO at one load, for one workload and policy.
#[derive(Serialize)]
struct ReplicasForSlo {
    workload: String,
    routing: Routing,
    load: f64,
    /// `None`: more than `max_replicas`.
    replicas: Option<usize>,
    /// The run at that many replicas.
    ttft_p95_s: Option<f64>,
    prefix_hit_rate: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    cost_model: CostModel,
    scrape_interval_s: f64,
    slo_ttft_p95_s: f64,
    max_replicas: usize,
    load_curves: Vec<FleetResult>,
    replicas_for_slo: Vec<ReplicasForSlo>,
}

fn workloads() -> [Workload; 5] {
    [Workload::mixed(), Workload::bursty(), Workload::shared_prefix(), Workload::many_tenants(), Workload::multi_turn()]
}

pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let cost = CostModel::default();
    let fleet = |workload: &Workload, routing: Routing, replicas: usize, rate_rps: f64| Fleet {
        replicas,
        config: SchedulerConfig::default(),
        routing,
        workload: workload.clone(),
        rate_rps,
        duration_s: args.duration,
        cost: cost.clone(),
        seed: args.seed,
        scrape_interval_s: args.scrape_interval,
    };
    let workloads = workloads();
    let curve_runs: Vec<Fleet> = workloads
        .iter()
        .flat_map(|w| Routing::ALL.into_iter().flat_map(move |r| args.loads.iter().map(move |&load| (w, r, load))))
        .map(|(w, r, load)| fleet(w, r, args.replicas, load * args.replicas as f64))
        .collect();
    let load_curves: Vec<FleetResult> = curve_runs.par_iter().map(Fleet::run).collect();
    for r in &load_curves {
        eprintln!(
            "{:<14} {:<12} {} replicas, load {:>6.1}/s: {:>7.0} tok/s, TTFT p50 {:>6.2} s p95 {:>6.2} s, prefix hits {:>5.1} %, busiest replica {:.2}x the mean",
            r.workload,
            r.routing.name(),
            r.replicas,
            r.load,
            r.throughput_tok_s,
            r.ttft_p50_s,
            r.ttft_p95_s,
            100.0 * r.prefix_hit_rate,
            r.busiest_replica_load
        );
    }
    let searches: Vec<Fleet> = workloads
        .iter()
        .flat_map(|w| Routing::ALL.into_iter().flat_map(move |r| args.slo_loads.iter().map(move |&load| (w, r, load))))
        .map(|(w, r, load)| fleet(w, r, 1, load))
        .collect();
    let replicas_for_slo: Vec<ReplicasForSlo> = searches
        .par_iter()
        .map(|f| {
            let found = f.replicas_for_slo(args.slo_ttft, args.max_replicas);
            ReplicasForSlo {
                workload: f.workload.name.clone(),
                routing: f.routing,
                load: f.rate_rps,
                replicas: found.as_ref().map(|(n, _)| *n),
                ttft_p95_s: found.as_ref().map(|(_, r)| r.ttft_p95_s),
                prefix_hit_rate: found.as_ref().map(|(_, r)| r.prefix_hit_rate),
            }
        })
        .collect();
    print_table(args, &workloads, &replicas_for_slo);
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        plot_all(dir, args, &workloads, &load_curves, &replicas_for_slo)?;
    }
    if let Some(path) = &args.json {
        let report = Report {
            cost_model: cost,
            scrape_interval_s: args.scrape_interval,
            slo_ttft_p95_s: args.slo_ttft,
            max_replicas: args.max_replicas,
            load_curves,
            replicas_for_slo,
        };
        std::fs::write(path, serde_json::to_string(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One markdown table per load: a row per workload, a column per policy.
fn print_table(args: &SimulateArgs, workloads: &[Workload], found: &[ReplicasForSlo]) {
    let header: Vec<&str> = Routing::ALL.iter().map(|r| r.name()).collect();
    for &load in &args.slo_loads {
        println!("\nReplicas for TTFT p95 <= {} s at {load} requests/s (of at most {}; prefix hit rate in brackets):\n", args.slo_ttft, args.max_replicas);
        println!("| workload | {} |", header.join(" | "));
        println!("|---|{}", "---|".repeat(header.len()));
        for w in workloads {
            let cells: Vec<String> = Routing::ALL
                .iter()
                .map(|&routing| {
                    let cell = found.iter().find(|f| f.workload == w.name && f.routing == routing && f.load == load);
                    match cell.and_then(|f| f.replicas.zip(f.prefix_hit_rate)) {
                        Some((n, hits)) => format!("{n} ({:.0} %)", 100.0 * hits),
                        None => format!("> {}", args.max_replicas),
                    }
                })
                .collect();
            println!("| {} | {} |", w.name, cells.join(" | "));
        }
    }
}

fn plot_all(dir: &Path, args: &SimulateArgs, workloads: &[Workload], curves: &[FleetResult], found: &[ReplicasForSlo]) -> anyhow::Result<()> {
    let x = "offered load (requests/s)";
    for w in workloads {
        let by_routing = |metric: fn(&FleetResult) -> f64| -> Series {
            Routing::ALL
                .iter()
                .map(|&routing| {
                    let points = curves.iter().filter(|r| r.workload == w.name && r.routing == routing).map(|r| (r.load, metric(r))).collect();
                    (routing.name().to_owned(), points)
                })
                .collect()
        };
        let title = |what: &str| format!("{what} vs offered load, {} replicas ({})", args.replicas, w.name);
        line_chart(&dir.join(format!("fleet_ttft_p95_{}.svg", w.name)), &title("TTFT p95"), x, "seconds", &by_routing(|r| r.ttft_p95_s))?;
        line_chart(&dir.join(format!("fleet_throughput_{}.svg", w.name)), &title("Throughput"), x, "output tokens/s", &by_routing(|r| r.throughput_tok_s))?;
        line_chart(&dir.join(format!("fleet_prefix_hits_{}.svg", w.name)), &title("Prefix-cache hit rate"), x, "share of prompt blocks", &by_routing(|r| r.prefix_hit_rate))?;
        if args.slo_loads.len() > 1 {
            let needed: Series = Routing::ALL
                .iter()
                .map(|&routing| {
                    let points = found
                        .iter()
                        .filter(|f| f.workload == w.name && f.routing == routing)
                        .filter_map(|f| f.replicas.map(|n| (f.load, n as f64)))
                        .collect();
                    (routing.name().to_owned(), points)
                })
                .collect();
            let title = format!("Replicas for TTFT p95 <= {} s ({})", args.slo_ttft, w.name);
            line_chart(&dir.join(format!("fleet_replicas_{}.svg", w.name)), &title, x, "replicas", &needed)?;
        }
    }
    Ok(())
}
