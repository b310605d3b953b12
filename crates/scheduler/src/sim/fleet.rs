//! Many replicas behind a router: each replica is the real [`Scheduler`] stepping at the
//! cost model's speed, and the router picks one per arriving request by a policy a load
//! balancer or Kubernetes' inference gateway uses.
//!
//! The router reads the replicas' gauges as a gateway scrapes them: every
//! `scrape_interval_s`, routing on the last values in between. The gateway's prefix
//! affinity is its own guess, as in the endpoint picker: it remembers which prompt blocks it
//! sent where, not what each replica's cache holds.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{CostModel, Latencies, Workload};
use crate::blocks::prefix_hashes;
use crate::{Duration, Scheduler, SchedulerConfig, StepPlan, StepResult, Time};

/// How the router picks a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    RoundRobin,
    /// Fewest waiting requests, then fewest running.
    LeastQueue,
    /// Lowest KV-cache use.
    LeastKv,
    /// The inference gateway's endpoint picker with its default profile: queue, KV-cache
    /// use and prefix affinity scores, weighted 2, 2 and 3 (GIE v1.0 `default-plugins.yaml`).
    Epp,
}

impl Routing {
    pub const ALL: [Routing; 4] = [Routing::RoundRobin, Routing::LeastQueue, Routing::LeastKv, Routing::Epp];

    pub fn name(self) -> &'static str {
        match self {
            Routing::RoundRobin => "round_robin",
            Routing::LeastQueue => "least_queue",
            Routing::LeastKv => "least_kv",
            Routing::Epp => "epp",
        }
    }
}

/// The endpoint picker's scorer weights: queue, KV-cache use, prefix.
const EPP_WEIGHTS: [f64; 3] = [2.0, 2.0, 3.0];
/// The picker hashes prompts in blocks of 64 characters: about 16 tokens.
const EPP_BLOCK_TOKENS: usize = 16;
/// Its `maxPrefixBlocksToMatch` and `lruCapacityPerServer` defaults.
const EPP_MAX_BLOCKS: usize = 256;
const EPP_LRU_BLOCKS: usize = 31_250;

/// A fleet run: replicas of one scheduler configuration, the routing policy, the traffic.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub replicas: usize,
    pub config: SchedulerConfig,
    pub routing: Routing,
    pub workload: Workload,
    /// Offered load of the whole fleet, requests per second.
    pub rate_rps: f64,
    pub duration_s: f64,
    pub cost: CostModel,
    pub seed: u64,
    /// Seconds between the router's reads of the replicas' gauges (the endpoint picker's
    /// default is 0.05); 0 reads them at every request.
    pub scrape_interval_s: f64,
}

/// One fleet run's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetResult {
    pub routing: Routing,
    pub workload: String,
    pub replicas: usize,
    /// Offered load of the fleet, requests per second.
    pub load: f64,
    pub throughput_tok_s: f64,
    pub ttft_p50_s: f64,
    pub ttft_p95_s: f64,
    pub e2e_p95_s: f64,
    /// Prompt blocks found in the prefix cache of the replica a request ran on.
    pub prefix_hit_rate: f64,
    pub completed: usize,
    pub rejected: usize,
    pub unfinished: usize,
    /// Requests routed to the busiest replica over the mean per replica.
    pub busiest_replica_load: f64,
}

impl FleetResult {
    /// Every request served, with p95 time to first token within `slo_s`.
    pub fn meets(&self, slo_s: f64) -> bool {
        self.rejected == 0 && self.unfinished == 0 && self.ttft_p95_s <= slo_s
    }
}

/// What the router last read from a replica.
#[derive(Debug, Clone, Copy, Default)]
struct Gauges {
    waiting: usize,
    running: usize,
    kv_usage: f64,
}

struct Replica {
    scheduler: Scheduler,
    /// The step running, if any: the replica is busy until its heap entry comes up.
    step: Option<StepPlan>,
    busy: bool,
    routed: usize,
}

impl Replica {
    fn gauges(&self) -> Gauges {
        let blocks = self.scheduler.blocks();
        Gauges {
            waiting: self.scheduler.num_waiting(),
            running: self.scheduler.num_running(),
            kv_usage: blocks.in_use() as f64 / blocks.num_blocks().max(1) as f64,
        }
    }

    /// Plans the next step at `now`; returns when it ends, or `None` when there is nothing
    /// to do until a request arrives.
    fn start_step(&mut self, now: Time, cost: &CostModel) -> Option<Time> {
        let plan = self.scheduler.plan(now);
        if plan.is_empty() {
            // Nothing runnable (a static batch filling, or memory blocked): look again soon.
            return (!self.scheduler.is_idle()).then(|| now + Duration::from_millis(5));
        }
        let seconds = cost.step_seconds(plan.num_tokens(), plan.kv_reads());
        self.step = Some(plan);
        Some(now + Duration::from_secs_f64(seconds))
    }

    fn end_step(&mut self, now: Time) {
        if let Some(plan) = self.step.take() {
            self.scheduler.complete(StepResult::sampled(&plan, |_| 1), now);
        }
    }
}

/// The endpoint picker's record of the prompt blocks it sent to one replica, least
/// recently used dropped first.
#[derive(Default)]
struct PrefixIndex {
    last_use: HashMap<u64, u64>,
    order: VecDeque<(u64, u64)>,
    tick: u64,
}

impl PrefixIndex {
    /// Leading blocks of `hashes` this replica was sent.
    fn matched(&self, hashes: &[u64]) -> usize {
        hashes.iter().take_while(|h| self.last_use.contains_key(h)).count()
    }

    fn insert(&mut self, hashes: &[u64]) {
        for &hash in hashes {
            self.tick += 1;
            self.last_use.insert(hash, self.tick);
            self.order.push_back((hash, self.tick));
        }
        while self.last_use.len() > EPP_LRU_BLOCKS {
            let (hash, tick) = self.order.pop_front().expect("every indexed hash is queued");
            if self.last_use.get(&hash) == Some(&tick) {
                self.last_use.remove(&hash);
            }
        }
        if self.order.len() > 4 * EPP_LRU_BLOCKS {
            // Drop the stale queue entries of hashes used again since.
            let last_use = &self.last_use;
            self.order.retain(|(hash, tick)| last_use.get(hash) == Some(tick));
        }
    }
}

struct Router {
    routing: Routing,
    gauges: Vec<Gauges>,
    next_scrape: Time,
    next_round_robin: usize,
    prefixes: Vec<PrefixIndex>,
    rng: ChaCha8Rng,
}

impl Router {
    /// The replica for a request of `prompt`.
    fn route(&mut self, prompt: &[u32]) -> usize {
        let n = self.gauges.len();
        match self.routing {
            Routing::RoundRobin => {
                self.next_round_robin = (self.next_round_robin + 1) % n;
                self.next_round_robin
            }
            Routing::LeastQueue => self.best(|g, _| -((g.waiting * 1_000_000 + g.running) as f64)),
            Routing::LeastKv => self.best(|g, _| -g.kv_usage),
            Routing::Epp => {
                let mut hashes = prefix_hashes(prompt, EPP_BLOCK_TOKENS, 0);
                hashes.truncate(EPP_MAX_BLOCKS);
                let (least, most) = self.gauges.iter().fold((usize::MAX, 0), |(lo, hi), g| (lo.min(g.waiting), hi.max(g.waiting)));
                let matched: Vec<f64> =
                    self.prefixes.iter().map(|p| if hashes.is_empty() { 0.0 } else { p.matched(&hashes) as f64 / hashes.len() as f64 }).collect();
                let chosen = self.best(|g, replica| {
                    let queue = if most == least { 1.0 } else { (most - g.waiting) as f64 / (most - least) as f64 };
                    let kv = 1.0 - g.kv_usage.clamp(0.0, 1.0);
                    EPP_WEIGHTS[0] * queue + EPP_WEIGHTS[1] * kv + EPP_WEIGHTS[2] * matched[replica]
                });
                self.prefixes[chosen].insert(&hashes);
                chosen
            }
        }
    }

    /// The replica of the highest score, ties broken at random as the picker does.
    fn best(&mut self, score: impl Fn(&Gauges, usize) -> f64) -> usize {
        let scores: Vec<f64> = self.gauges.iter().enumerate().map(|(i, g)| score(g, i)).collect();
        let top = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let tied: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] >= top - 1e-12).collect();
        tied[self.rng.random_range(0..tied.len())]
    }
}

impl Fleet {
    pub fn run(&self) -> FleetResult {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let arrivals = self.workload.arrivals(self.rate_rps, self.duration_s, &mut rng);
        let n = self.replicas.max(1);
        let mut replicas: Vec<Replica> = (0..n)
            .map(|_| Replica { scheduler: Scheduler::new(self.config.clone()), step: None, busy: false, routed: 0 })
            .collect();
        let mut router = Router {
            routing: self.routing,
            gauges: vec![Gauges::default(); n],
            next_scrape: Time::ZERO,
            next_round_robin: n - 1,
            prefixes: (0..n).map(|_| PrefixIndex::default()).collect(),
            rng,
        };
        let scrape = Duration::from_secs_f64(self.scrape_interval_s);
        let horizon = Time::from_secs_f64(self.duration_s * 4.0 + 60.0);
        // Step ends, earliest first.
        let mut ends: BinaryHeap<Reverse<(Time, usize)>> = BinaryHeap::new();
        let mut finished = Vec::new();
        let mut rejected = 0;
        let mut next = 0;
        let mut now = Time::ZERO;
        loop {
            let arrival = arrivals.get(next).map(|a| a.at);
            let end = ends.peek().map(|Reverse((t, _))| *t);
            match (arrival, end) {
                (None, None) => break,
                (Some(at), end) if end.is_none_or(|e| at <= e) => {
                    now = at;
                    if now >= router.next_scrape {
                        router.gauges = replicas.iter().map(Replica::gauges).collect();
                        router.next_scrape = now + scrape;
                    }
                    let request = arrivals[next].request.clone();
                    next += 1;
                    let r = router.route(&request.prompt);
                    let replica = &mut replicas[r];
                    replica.routed += 1;
                    if replica.scheduler.submit(request, now).is_err() {
                        rejected += 1;
                    } else if !replica.busy {
                        if let Some(at) = replica.start_step(now, &self.cost) {
                            replica.busy = true;
                            ends.push(Reverse((at, r)));
                        }
                    }
                }
                _ => {
                    let Reverse((at, r)) = ends.pop().expect("peeked");
                    now = at;
                    if now >= horizon {
                        break;
                    }
                    let replica = &mut replicas[r];
                    replica.end_step(now);
                    finished.extend(replica.scheduler.take_finished());
                    replica.busy = false;
                    if let Some(at) = replica.start_step(now, &self.cost) {
                        replica.busy = true;
                        ends.push(Reverse((at, r)));
                    }
                }
            }
        }
        let first = arrivals.first().map_or(Time::ZERO, |a| a.at);
        let latencies = Latencies::of(&finished, first, now);
        let (queried, hits) = replicas.iter().fold((0, 0), |(q, h), r| {
            let stats = r.scheduler.blocks().stats();
            (q + stats.queried_blocks, h + stats.hit_blocks)
        });
        let busiest = replicas.iter().map(|r| r.routed).max().unwrap_or(0);
        FleetResult {
            routing: self.routing,
            workload: self.workload.name.clone(),
            replicas: n,
            load: self.rate_rps,
            throughput_tok_s: latencies.throughput_tok_s,
            ttft_p50_s: latencies.ttft_p50_s,
            ttft_p95_s: latencies.ttft_p95_s,
            e2e_p95_s: latencies.e2e_p95_s,
            prefix_hit_rate: if queried == 0 { 0.0 } else { hits as f64 / queried as f64 },
            completed: finished.len(),
            rejected,
            unfinished: replicas.iter().map(|r| r.scheduler.num_waiting() + r.scheduler.num_running()).sum(),
            busiest_replica_load: busiest as f64 * n as f64 / arrivals.len().max(1) as f64,
        }
    }

    /// The fewest replicas, up to `max_replicas`, that keep p95 time to first token within
    /// `slo_s` at this fleet's load (searched by halving, as more replicas never hurt), with
    /// the run that showed it; `None` if even `max_replicas` do not.
    pub fn replicas_for_slo(&self, slo_s: f64, max_replicas: usize) -> Option<(usize, FleetResult)> {
        let with = |replicas: usize| Fleet { replicas, ..self.clone() }.run();
        let mut best = with(max_replicas);
        if !best.meets(slo_s) {
            return None;
        }
        let (mut lo, mut hi) = (0, max_replicas);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            let result = with(mid);
            if result.meets(slo_s) {
                (hi, best) = (mid, result);
            } else {
                lo = mid;
            }
        }
        Some((hi, best))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::Workload;

    fn fleet(routing: Routing, workload: Workload, replicas: usize, rate_rps: f64) -> Fleet {
        Fleet {
            replicas,
            config: SchedulerConfig::default(),
            routing,
            workload,
            rate_rps,
            duration_s: 20.0,
            cost: CostModel::default(),
            seed: 3,
            scrape_interval_s: 0.05,
        }
    }

    #[test]
    fn every_request_is_served_once_and_runs_are_repeatable() {
        for routing in Routing::ALL {
            let run = fleet(routing, Workload::mixed(), 4, 8.0);
            let result = run.run();
            assert_eq!(result, run.run(), "{routing:?} is not deterministic");
            assert_eq!(result.rejected + result.unfinished, 0, "{routing:?}");
            assert!(result.completed > 100, "{routing:?} finished {}", result.completed);
            assert!(result.ttft_p95_s.is_finite() && result.throughput_tok_s > 0.0);
        }
    }

    #[test]
    fn round_robin_spreads_requests_evenly() {
        let result = fleet(Routing::RoundRobin, Workload::mixed(), 4, 8.0).run();
        let busiest = result.busiest_replica_load * result.completed as f64 / 4.0;
        assert!(busiest.round() as usize <= result.completed.div_ceil(4), "{busiest} of {}", result.completed);
    }

    #[test]
    fn prefix_affinity_keeps_each_tenants_prompt_on_few_replicas() {
        let epp = fleet(Routing::Epp, Workload::many_tenants(), 8, 12.0).run();
        let spread = fleet(Routing::RoundRobin, Workload::many_tenants(), 8, 12.0).run();
        assert!(epp.prefix_hit_rate > spread.prefix_hit_rate + 0.1, "epp {} round robin {}", epp.prefix_hit_rate, spread.prefix_hit_rate);
        assert!(epp.ttft_p95_s < spread.ttft_p95_s, "epp {} round robin {}", epp.ttft_p95_s, spread.ttft_p95_s);
    }

    #[test]
    fn later_chat_turns_resend_the_conversation() {
        let workload = Workload::multi_turn();
        let arrivals = workload.arrivals(2.0, 30.0, &mut ChaCha8Rng::seed_from_u64(1));
        let prompts: Vec<&[u32]> = arrivals.iter().map(|a| a.request.prompt.as_slice()).collect();
        let continued = prompts.iter().filter(|p| prompts.iter().any(|q| q.len() < p.len() && p.starts_with(q))).count();
        assert!(continued * 2 > prompts.len(), "{continued} of {} turns continue an earlier one", prompts.len());
    }

    #[test]
    fn more_replicas_find_the_slo() {
        let run = fleet(Routing::LeastQueue, Workload::mixed(), 1, 16.0);
        let (replicas, result) = run.replicas_for_slo(2.0, 16).expect("16 replicas hold 16 requests per second");
        assert!((2..=16).contains(&replicas), "{replicas}");
        assert!(result.meets(2.0) && result.replicas == replicas);
        assert!(!Fleet { replicas: replicas - 1, ..run }.run().meets(2.0));
    }
}
