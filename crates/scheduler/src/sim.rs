//! A discrete-event simulator that drives the real [`Scheduler`] with a cost model in
//! place of a GPU, to compare batching policies under synthetic workloads.
//!
//! Step time is `overhead + per_token × tokens run + per_kv_read × KV positions read`, the
//! shape of a memory-bound decoder; the parameters can be fitted to measured engine steps.
//! Everything is seeded: the same inputs give the same results, bit for bit.
//!
//! [`fleet`] runs many replicas behind a router.

pub mod fleet;

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Duration, FinishedSequence, Priority, Request, Scheduler, SchedulerConfig, StepResult, TenantId, Time};

/// Seconds a step takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostModel {
    pub step_overhead_s: f64,
    pub per_token_s: f64,
    pub per_kv_read_s: f64,
}

impl Default for CostModel {
    fn default() -> Self {
        Self { step_overhead_s: 0.010, per_token_s: 0.000_25, per_kv_read_s: 0.000_000_2 }
    }
}

impl CostModel {
    pub fn step_seconds(&self, tokens: usize, kv_reads: usize) -> f64 {
        self.step_overhead_s + self.per_token_s * tokens as f64 + self.per_kv_read_s * kv_reads as f64
    }
}

/// A length distribution: log-normal around a median, clamped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lengths {
    pub median: f64,
    pub sigma: f64,
    pub min: usize,
    pub max: usize,
}

impl Lengths {
    fn sample(&self, rng: &mut ChaCha8Rng) -> usize {
        let z = normal(rng);
        ((self.median * (self.sigma * z).exp()).round() as usize).clamp(self.min, self.max)
    }
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Synthetic traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub name: String,
    /// Arrivals alternate between periods at `burst` × and (2 − `burst`) × the mean rate;
    /// 1 is a plain Poisson process.
    pub burst: f64,
    pub burst_period_s: f64,
    pub prompt: Lengths,
    pub output: Lengths,
    /// Share of requests at each priority, critical first.
    pub priority_mix: [f64; 5],
    /// Share of requests from each tenant (tenant ids are the indices).
    pub tenant_mix: Vec<f64>,
    /// Share of requests that start with one of `shared_prefixes` prompts of `prefix_len` tokens.
    pub shared_prefix_frac: f64,
    pub shared_prefixes: usize,
    pub prefix_len: usize,
    /// A request meets its SLA if its first token comes within this many seconds.
    pub ttft_sla_s: f64,
    /// Share of requests that carry the SLA as a deadline for the scheduler.
    pub deadline_frac: f64,
    /// A request's shared prefix is its tenant's own (tenant `i` uses prefix `i` modulo
    /// `shared_prefixes`), as with one system prompt per customer, not drawn at random.
    #[serde(default)]
    pub prefix_by_tenant: bool,
    /// Requests come as conversations of several turns, each turn's prompt the whole chat
    /// so far; `prompt` is the first turn's length.
    #[serde(default)]
    pub chat: Option<Chat>,
}

/// Multi-turn conversations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chat {
    /// Turns per conversation, drawn uniformly from this range.
    pub turns: (usize, usize),
    /// Tokens of each later user message.
    pub message: Lengths,
    /// Median seconds from one turn's arrival to the next (log-normal, sigma 0.5).
    pub think_median_s: f64,
}

impl Workload {
    /// Mixed lengths and priorities, three tenants of which one sends most of the traffic.
    pub fn mixed() -> Self {
        Self {
            name: "mixed".into(),
            burst: 1.0,
            burst_period_s: 10.0,
            prompt: Lengths { median: 256.0, sigma: 0.8, min: 8, max: 2048 },
            output: Lengths { median: 128.0, sigma: 0.7, min: 4, max: 512 },
            priority_mix: [0.05, 0.15, 0.5, 0.2, 0.1],
            tenant_mix: vec![0.2, 0.2, 0.6],
            shared_prefix_frac: 0.0,
            shared_prefixes: 0,
            prefix_len: 0,
            ttft_sla_s: 2.0,
            deadline_frac: 0.3,
            prefix_by_tenant: false,
            chat: None,
        }
    }

    /// The mixed workload in bursts of 1.8× the mean rate.
    pub fn bursty() -> Self {
        Self { name: "bursty".into(), burst: 1.8, ..Self::mixed() }
    }

    /// Most requests start with one of four long system prompts.
    pub fn shared_prefix() -> Self {
        Self { name: "shared_prefix".into(), shared_prefix_frac: 0.8, shared_prefixes: 4, prefix_len: 512, ..Self::mixed() }
    }

    /// 64 tenants of equal traffic, each with its own 2048-token system prompt before a
    /// short question: together more prefix than one replica's KV cache holds.
    pub fn many_tenants() -> Self {
        Self {
            name: "many_tenants".into(),
            prompt: Lengths { median: 64.0, sigma: 0.8, min: 4, max: 512 },
            tenant_mix: vec![1.0; 64],
            shared_prefix_frac: 1.0,
            shared_prefixes: 64,
            prefix_len: 2048,
            prefix_by_tenant: true,
            ..Self::mixed()
        }
    }

    /// Chats of 2 to 8 turns, ten seconds apart: each turn resends the conversation so far.
    pub fn multi_turn() -> Self {
        Self {
            name: "multi_turn".into(),
            chat: Some(Chat { turns: (2, 8), message: Lengths { median: 48.0, sigma: 0.8, min: 4, max: 512 }, think_median_s: 10.0 }),
            ..Self::mixed()
        }
    }

    /// The arrivals of `rate_rps` requests per second (turns, for chats) for `duration_s`
    /// seconds, sorted by time.
    pub(crate) fn arrivals(&self, rate_rps: f64, duration_s: f64, rng: &mut ChaCha8Rng) -> Vec<Arrival> {
        let prefixes: Vec<Vec<u32>> = (0..self.shared_prefixes)
            .map(|_| (0..self.prefix_len).map(|_| rng.random_range(0..32_000)).collect())
            .collect();
        let random_tokens = |n: usize, rng: &mut ChaCha8Rng| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..32_000u32)).collect() };
        // Conversations start at the rate that makes their turns arrive at `rate_rps`, from
        // early enough that chats are under way when the run starts; turns before it are
        // not sent.
        let (turns_mean, warm_up) = self.chat.as_ref().map_or((1.0, 0.0), |c| ((c.turns.0 + c.turns.1) as f64 / 2.0, c.think_median_s * c.turns.1 as f64));
        let mut out = Vec::new();
        let mut t = -warm_up;
        loop {
            let phase_high = ((t.max(0.0) / self.burst_period_s) as u64) % 2 == 0;
            let rate = rate_rps / turns_mean * if phase_high { self.burst } else { 2.0 - self.burst };
            t += -(1.0 - rng.random::<f64>()).ln() / rate.max(1e-9);
            if t >= duration_s {
                break;
            }
            let with_prefix = !prefixes.is_empty() && rng.random::<f64>() < self.shared_prefix_frac;
            let drawn_prefix = (with_prefix && !self.prefix_by_tenant).then(|| rng.random_range(0..prefixes.len()));
            let own = self.prompt.sample(rng);
            let own = random_tokens(own, rng);
            let mut output = self.output.sample(rng);
            let priority = Priority::from_level(pick(&self.priority_mix, rng));
            let tenant = pick(&self.tenant_mix, rng);
            let deadline = rng.random::<f64>() < self.deadline_frac;
            let mut prompt = if with_prefix { prefixes[drawn_prefix.unwrap_or(tenant % prefixes.len())].clone() } else { Vec::new() };
            prompt.extend(own);
            let turns = self.chat.as_ref().map_or(1, |c| rng.random_range(c.turns.0..=c.turns.1));
            let mut at = t;
            for turn in 0..turns {
                if at >= 0.0 {
                    let mut request = Request::new(prompt.clone(), output).with_priority(priority).with_tenant(TenantId(tenant as u32));
                    if deadline {
                        request = request.with_max_wait(Duration::from_secs_f64(self.ttft_sla_s));
                    }
                    out.push(Arrival { at: Time::from_secs_f64(at), request });
                }
                let Some(chat) = self.chat.as_ref().filter(|_| turn + 1 < turns) else { break };
                at += chat.think_median_s * (0.5 * normal(rng)).exp();
                if at >= duration_s {
                    break;
                }
                // The model's answer (the simulator samples token 1) and the next message.
                prompt.extend(std::iter::repeat_n(1, output));
                prompt.extend(random_tokens(chat.message.sample(rng), rng));
                output = self.output.sample(rng);
            }
        }
        out.sort_by_key(|a| a.at);
        out
    }
}

/// One run's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub strategy: String,
    pub workload: String,
    /// Offered load, requests per second.
    pub load: f64,
    pub throughput_tok_s: f64,
    pub ttft_p50_s: f64,
    pub ttft_p95_s: f64,
    pub e2e_p95_s: f64,
    pub sla_attainment: f64,
    pub kv_waste_frac: f64,
    pub preemptions: u64,
    pub completed: usize,
    pub rejected: usize,
    pub unfinished: usize,
    pub prefix_hit_rate: f64,
    pub ttft_p95_by_priority_s: BTreeMap<String, f64>,
    /// Tokens computed per tenant in each `share_window_s` window: `[window][tenant]`.
    pub tenant_tokens_over_time: Vec<Vec<u64>>,
    pub share_window_s: f64,
}

/// Output throughput and latency percentiles of a run's finished sequences.
pub(crate) struct Latencies {
    pub throughput_tok_s: f64,
    pub ttft_p50_s: f64,
    pub ttft_p95_s: f64,
    pub e2e_p95_s: f64,
}

impl Latencies {
    /// `first` is the first arrival; `now` ends the run if nothing finished.
    pub fn of(finished: &[FinishedSequence], first: Time, now: Time) -> Self {
        let last_finish = finished.iter().map(|f| f.finished).max().unwrap_or(now);
        let generated: usize = finished.iter().map(|f| f.generated.len()).sum();
        let mut ttft: Vec<f64> = finished.iter().filter_map(|f| f.first_token.map(|t| t.since(f.arrival).as_secs_f64())).collect();
        let mut e2e: Vec<f64> = finished.iter().map(|f| f.finished.since(f.arrival).as_secs_f64()).collect();
        Self {
            throughput_tok_s: generated as f64 / last_finish.since(first).as_secs_f64().max(1e-9),
            ttft_p50_s: percentile(&mut ttft, 50.0),
            ttft_p95_s: percentile(&mut ttft, 95.0),
            e2e_p95_s: percentile(&mut e2e, 95.0),
        }
    }
}

/// A simulation: the scheduler's configuration, the traffic and its rate, and how long
/// requests keep arriving.
#[derive(Debug, Clone)]
pub struct Simulation {
    pub config: SchedulerConfig,
    pub workload: Workload,
    pub rate_rps: f64,
    pub duration_s: f64,
    pub cost: CostModel,
    pub seed: u64,
}

pub(crate) struct Arrival {
    pub at: Time,
    pub request: Request,
}

pub(crate) fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank]
}

fn pick(weights: &[f64], rng: &mut ChaCha8Rng) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

impl Simulation {
    pub fn run(&self) -> RunResult {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let arrivals = self.workload.arrivals(self.rate_rps, self.duration_s, &mut rng);
        let mut scheduler = Scheduler::new(self.config.clone());
        let horizon = Time::from_secs_f64(self.duration_s * 4.0 + 60.0);
        let window = 1.0;
        let tenants = self.workload.tenant_mix.len();
        let mut tenant_windows: Vec<Vec<u64>> = Vec::new();
        let mut last_tenant_tokens = vec![0u64; tenants];
        let mut now = Time::ZERO;
        let mut next = 0;
        let mut rejected = 0;
        let mut waste_time = 0.0;
        let mut busy_time = 0.0;
        let mut finished = Vec::new();
        loop {
            while next < arrivals.len() && arrivals[next].at <= now {
                if scheduler.submit(arrivals[next].request.clone(), now).is_err() {
                    rejected += 1;
                }
                next += 1;
            }
            let plan = scheduler.plan(now);
            if plan.is_empty() {
                if next >= arrivals.len() && scheduler.is_idle() || now >= horizon {
                    break;
                }
                // Idle, or a static batch waiting to fill: move to the next arrival or tick.
                let tick = now + Duration::from_millis(5);
                now = arrivals.get(next).map_or(tick, |a| a.at.min(tick).max(now + Duration(1)));
                continue;
            }
            let seconds = self.cost.step_seconds(plan.num_tokens(), plan.kv_reads());
            now = now + Duration::from_secs_f64(seconds);
            scheduler.complete(StepResult::sampled(&plan, |_| 1), now);
            // Measured between steps, when every reserved slot should hold a computed token.
            waste_time += scheduler.kv_waste() * seconds;
            busy_time += seconds;
            finished.extend(scheduler.take_finished());
            let w = (now.as_secs_f64() / window) as usize;
            if w >= tenant_windows.len() {
                let totals = scheduler.metrics(now).tenant_tokens;
                let current: Vec<u64> = (0..tenants).map(|t| totals.get(&(t as u32)).copied().unwrap_or(0)).collect();
                let delta = current.iter().zip(&last_tenant_tokens).map(|(c, l)| c - l).collect();
                tenant_windows.resize(w, vec![0; tenants]);
                tenant_windows.push(delta);
                last_tenant_tokens = current;
            }
        }
        let metrics = scheduler.metrics(now);
        let unfinished = metrics.waiting + metrics.running;
        let first = arrivals.first().map_or(Time::ZERO, |a| a.at);
        let latencies = Latencies::of(&finished, first, now);
        let offered = arrivals.len().max(1);
        let met = finished
            .iter()
            .filter(|f| f.first_token.is_some_and(|t| t.since(f.arrival).as_secs_f64() <= self.workload.ttft_sla_s))
            .count();
        let mut by_priority = BTreeMap::new();
        for p in Priority::ALL {
            let mut values: Vec<f64> = finished
                .iter()
                .filter(|f| f.priority == p)
                .filter_map(|f| f.first_token.map(|t| t.since(f.arrival).as_secs_f64()))
                .collect();
            if !values.is_empty() {
                by_priority.insert(p.name().to_owned(), percentile(&mut values, 95.0));
            }
        }
        RunResult {
            strategy: self.config.policy.name().to_owned(),
            workload: self.workload.name.clone(),
            load: self.rate_rps,
            throughput_tok_s: latencies.throughput_tok_s,
            ttft_p50_s: latencies.ttft_p50_s,
            ttft_p95_s: latencies.ttft_p95_s,
            e2e_p95_s: latencies.e2e_p95_s,
            sla_attainment: met as f64 / offered as f64,
            kv_waste_frac: if busy_time > 0.0 { waste_time / busy_time } else { 0.0 },
            preemptions: metrics.preemptions,
            completed: finished.len(),
            rejected,
            unfinished,
            prefix_hit_rate: metrics.prefix_cache.hit_rate(),
            ttft_p95_by_priority_s: by_priority,
            tenant_tokens_over_time: tenant_windows,
            share_window_s: window,
        }
    }
}
