//! `cinder serve --config FILE`: the batching policy, queue, KV cache, shedding, circuit
//! breaker, request limits and tenants in one TOML file. Unknown keys and bad values are refused with the
//! key's name; flags override the file; `--print-config` prints what is in force.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use cinder_engine::openai::{MAX_DEADLINE_MS, RequestLimits};
use cinder_engine::speculative::DEFAULT_SPECULATIVE_TOKENS;
use cinder_engine::{Speculation, SpeculationConfig, SpeculativeMethod};
use cinder_scheduler::admission::{BreakerConfig, LoadConfig, RateLimit, RateLimiter};
use cinder_scheduler::queue::QueueConfig;
use cinder_scheduler::{BatchPolicy, Duration, Priority, SchedulerConfig, TenantId};
use serde::{Deserialize, Serialize};

use super::models::Routing;

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    pub scheduler: SchedulerSection,
    pub kv_cache: KvCacheSection,
    pub shedding: SheddingSection,
    pub breaker: BreakerSection,
    pub speculative: SpeculativeSection,
    /// What one request may ask for (`[limits]`).
    pub limits: RequestLimits,
    /// Aliases over the models (`[routing.aliases]`) and whether a `user` sticks to one.
    pub routing: Routing,
    /// The models to serve (`--model NAME=PATH` replaces them); none: the default model.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<TenantConfig>,
}

/// `[[models]]`: a model served under `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: String,
    pub path: PathBuf,
}

/// `[speculative]`: speculative decoding of requests that do not ask otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeculativeSection {
    /// `off`, `ngram` (prompt lookup) or `draft` (the draft model's proposals).
    pub method: SpeculativeMethod,
    /// Most draft tokens per step.
    pub num_tokens: usize,
    /// Nobody speculates while more sequences than this decode.
    pub max_batch: usize,
    /// The draft model: a GGUF with the same vocabulary (`--draft-model`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft_model: Option<PathBuf>,
}

impl Default for SpeculativeSection {
    fn default() -> Self {
        let engine = SpeculationConfig::default();
        Self { method: engine.default.method, num_tokens: DEFAULT_SPECULATIVE_TOKENS, max_batch: engine.max_batch, draft_model: None }
    }
}

impl SpeculativeSection {
    /// The engine's speculation, checked.
    pub fn config(&self) -> Result<SpeculationConfig, String> {
        let default = Speculation::new(self.method, Some(self.num_tokens)).map_err(|e| format!("`speculative.num_tokens`: {e}"))?;
        Ok(SpeculationConfig { default, max_batch: self.max_batch })
    }
}

/// Batching policies by name: the scheduler's six and two presets of continuous batching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum PolicyName {
    /// A batch of `batch_size` runs to its end before the next forms.
    Fixed,
    /// Like fixed, members of similar prompt length (`bucket_edges`).
    Bucketed,
    /// Static batches of as many requests as `max_batch_tokens` of prompt + max tokens.
    MemoryAware,
    /// Requests join and leave every step; prompts run in chunks next to decodes.
    #[default]
    Continuous,
    /// Continuous, with small steps while nothing waits and full-size ones as requests wait
    /// (`min_batch_tokens`..`max_batch_tokens`, `min_chunk_size`..`chunk_size`).
    Adaptive,
    /// Continuous, with the running set size learned from measured throughput.
    Bandit,
    /// Continuous with small steps (512 tokens, 128-token chunks, 64 running).
    Latency,
    /// Continuous with big steps (8192 tokens, 4096-token chunks, 512 running).
    Throughput,
}

impl PolicyName {
    fn name(self) -> &'static str {
        match self {
            Self::Fixed => "fixed",
            Self::Bucketed => "bucketed",
            Self::MemoryAware => "memory_aware",
            Self::Continuous => "continuous",
            Self::Adaptive => "adaptive",
            Self::Bandit => "bandit",
            Self::Latency => "latency",
            Self::Throughput => "throughput",
        }
    }

    /// The continuous-style policies' `(max_batch_tokens, max_running, chunk_size)` defaults.
    fn step_defaults(self) -> Option<(usize, usize, usize)> {
        match self {
            Self::Continuous | Self::Bandit => Some((512, 64, 256)),
            // What it grows to under backlog (the simulator's continuous batching steps).
            Self::Adaptive => Some((2048, 64, 512)),
            // BatchPolicy::latency_optimised's and throughput_optimised's (a test checks).
            Self::Latency => Some((512, 64, 128)),
            Self::Throughput => Some((8192, 512, 4096)),
            Self::Fixed | Self::Bucketed | Self::MemoryAware => None,
        }
    }
}

/// `[scheduler]`. The policy's parameters are optional: a policy takes the ones it uses
/// (with its defaults) and refuses the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSection {
    pub policy: PolicyName,
    /// Most requests running at once (continuous, adaptive, bandit, presets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_running: Option<usize>,
    /// Fewest the bandit runs when there is demand.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_running: Option<usize>,
    /// The adaptive policy's step budget and prompt chunk with nothing waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_batch_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_chunk_size: Option<usize>,
    /// Most tokens in one step (continuous-style), or prompt + max tokens of one static
    /// batch (memory_aware).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_tokens: Option<usize>,
    /// Largest piece of one prompt in one step (continuous-style).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<usize>,
    /// Members of one static batch (fixed, bucketed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Longest a partial static batch waits for more members (fixed, bucketed, memory_aware).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_wait_ms: Option<u64>,
    /// Upper prompt-length bounds of the buckets (bucketed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_edges: Option<Vec<usize>>,
    /// Most requests waiting; more get 429.
    pub max_waiting: usize,
    /// A waiting request gains one priority level per this wait; 0 turns aging off.
    pub aging_interval_ms: u64,
    /// Requests whose deadline is this close jump the priority lanes, earliest first.
    pub deadline_urgency_ms: u64,
    /// Requests of at most this many tokens (prompt + max tokens) gain one level; 0 is off.
    pub short_job_tokens: usize,
    /// Longest wait to start of requests without `deadline_ms`, per priority.
    pub default_deadline_ms: BTreeMap<Priority, u64>,
    /// Seed of the bandit's random draws.
    pub seed: u64,
}

impl Default for SchedulerSection {
    fn default() -> Self {
        Self {
            policy: PolicyName::default(),
            max_running: None,
            min_running: None,
            min_batch_tokens: None,
            min_chunk_size: None,
            max_batch_tokens: None,
            chunk_size: None,
            batch_size: None,
            max_wait_ms: None,
            bucket_edges: None,
            max_waiting: 1024,
            aging_interval_ms: 5_000,
            deadline_urgency_ms: 1_000,
            short_job_tokens: 0,
            default_deadline_ms: BTreeMap::new(),
            seed: 0,
        }
    }
}

/// `[kv_cache]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvCacheSection {
    /// Device memory for the KV cache.
    pub size_mb: usize,
    /// Token slots per block.
    pub block_size: usize,
    /// Blocks kept free when admitting requests, so running ones can keep decoding.
    pub watermark_blocks: usize,
    /// Reuse the blocks of identical prompt prefixes.
    pub prefix_caching: bool,
}

impl Default for KvCacheSection {
    fn default() -> Self {
        Self { size_mb: 512, block_size: 16, watermark_blocks: 4, prefix_caching: true }
    }
}

/// `[shedding]`: the load (the largest of queue backlog / `max_waiting`, KV blocks in use
/// under contention, oldest wait / `wait_limit_ms`) at which each level starts. Elevated
/// sheds `batch` requests, high also `low`, critical also `normal`, overload all but
/// `critical`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SheddingSection {
    pub elevated: f64,
    pub high: f64,
    pub critical: f64,
    pub overload: f64,
    pub wait_limit_ms: u64,
}

impl Default for SheddingSection {
    fn default() -> Self {
        let load = LoadConfig::default();
        let [elevated, high, critical, overload] = load.thresholds;
        Self { elevated, high, critical, overload, wait_limit_ms: load.wait_limit.0 / 1000 }
    }
}

/// `[breaker]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSection {
    /// Failed steps in a row that open the breaker (new requests get 503).
    pub failures: u32,
    /// How long it stays open before letting a trial step through.
    pub cooldown_ms: u64,
    /// Failed steps in a row after which the requests they ran end with an error.
    pub max_step_attempts: u32,
}

impl Default for BreakerSection {
    fn default() -> Self {
        let breaker = BreakerConfig::default();
        Self { failures: breaker.threshold, cooldown_ms: breaker.cooldown.0 / 1000, max_step_attempts: 3 }
    }
}

/// What happens to a request asking for a priority above its tenant's `max_priority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbovePriority {
    /// It runs at `max_priority`.
    #[default]
    Lower,
    /// It gets a 403.
    Refuse,
}

/// `[[tenants]]`: who a bearer key stands for, and what they may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    pub api_keys: Vec<String>,
    /// Share of service under contention, against the other tenants' weights.
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default)]
    pub max_priority: Priority,
    #[serde(default)]
    pub above_max_priority: AbovePriority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// Requests allowed at once above the rate [default: one second's worth, at least 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_burst: Option<f64>,
    /// Prompt plus max tokens per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
    /// [default: one second's worth, at least the served context, so one request fits].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_burst: Option<f64>,
    /// Most of its requests in flight at once; more get 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
}

fn one() -> f64 {
    1.0
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            api_keys: Vec::new(),
            weight: 1.0,
            max_priority: Priority::Critical,
            above_max_priority: AbovePriority::default(),
            requests_per_second: None,
            request_burst: None,
            tokens_per_second: None,
            token_burst: None,
            max_concurrent: None,
        }
    }
}

impl ServeConfig {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading the config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Parses and checks a file's text (the policy's defaults are filled in later, after
    /// the flags, by [`resolve`](Self::resolve)).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        Ok(config)
    }

    /// Fills in the policy's defaults and checks every value, naming the key at fault.
    pub fn resolve(&mut self) -> Result<(), String> {
        let s = &mut self.scheduler;
        let policy = s.policy;
        let uses = |key: &str| -> bool {
            match key {
                "max_running" | "chunk_size" => policy.step_defaults().is_some(),
                "min_running" => policy == PolicyName::Bandit,
                "min_batch_tokens" | "min_chunk_size" => policy == PolicyName::Adaptive,
                "max_batch_tokens" => policy.step_defaults().is_some() || policy == PolicyName::MemoryAware,
                "batch_size" => matches!(policy, PolicyName::Fixed | PolicyName::Bucketed),
                "max_wait_ms" => policy.step_defaults().is_none(),
                "bucket_edges" => policy == PolicyName::Bucketed,
                _ => true,
            }
        };
        let given = [
            ("max_running", s.max_running.is_some()),
            ("min_running", s.min_running.is_some()),
            ("min_batch_tokens", s.min_batch_tokens.is_some()),
            ("min_chunk_size", s.min_chunk_size.is_some()),
            ("max_batch_tokens", s.max_batch_tokens.is_some()),
            ("chunk_size", s.chunk_size.is_some()),
            ("batch_size", s.batch_size.is_some()),
            ("max_wait_ms", s.max_wait_ms.is_some()),
            ("bucket_edges", s.bucket_edges.is_some()),
        ];
        if let Some((key, _)) = given.iter().find(|(key, set)| *set && !uses(key)) {
            return Err(format!("`scheduler.{key}` does not apply to policy `{}`", policy.name()));
        }
        if let Some((tokens, running, chunk)) = policy.step_defaults() {
            s.max_batch_tokens.get_or_insert(tokens);
            s.max_running.get_or_insert(running);
            s.chunk_size.get_or_insert(chunk);
        }
        if uses("min_running") {
            s.min_running.get_or_insert(BANDIT_MIN_RUNNING);
        }
        if uses("min_batch_tokens") {
            s.min_batch_tokens.get_or_insert(ADAPTIVE_MIN_STEP.0);
            s.min_chunk_size.get_or_insert(ADAPTIVE_MIN_STEP.1);
        }
        if policy == PolicyName::MemoryAware {
            s.max_batch_tokens.get_or_insert(MEMORY_AWARE_BATCH_TOKENS);
        }
        if uses("batch_size") {
            s.batch_size.get_or_insert(STATIC_BATCH_SIZE);
        }
        if uses("max_wait_ms") {
            s.max_wait_ms.get_or_insert(STATIC_MAX_WAIT_MS);
        }
        if uses("bucket_edges") {
            s.bucket_edges.get_or_insert_with(|| BUCKET_EDGES.to_vec());
        }
        self.speculative.config()?;
        self.limits.check()?;
        self.check()
    }

    fn check(&self) -> Result<(), String> {
        let s = &self.scheduler;
        let positive = [
            ("scheduler.max_running", s.max_running),
            ("scheduler.min_running", s.min_running),
            ("scheduler.min_batch_tokens", s.min_batch_tokens),
            ("scheduler.min_chunk_size", s.min_chunk_size),
            ("scheduler.max_batch_tokens", s.max_batch_tokens),
            ("scheduler.chunk_size", s.chunk_size),
            ("scheduler.batch_size", s.batch_size),
            ("scheduler.max_waiting", Some(s.max_waiting)),
            ("kv_cache.block_size", Some(self.kv_cache.block_size)),
            ("breaker.failures", Some(self.breaker.failures as usize)),
            ("breaker.max_step_attempts", Some(self.breaker.max_step_attempts as usize)),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == Some(0)) {
            return Err(format!("`{key}` must be at least 1"));
        }
        if let (Some(min), Some(max)) = (s.min_running, s.max_running)
            && min > max
        {
            return Err(format!("`scheduler.min_running` ({min}) is above `scheduler.max_running` ({max})"));
        }
        for (low, high, (low_key, high_key)) in [
            (s.min_batch_tokens, s.max_batch_tokens, ("min_batch_tokens", "max_batch_tokens")),
            (s.min_chunk_size, s.chunk_size, ("min_chunk_size", "chunk_size")),
        ] {
            if let (Some(low), Some(high)) = (low, high)
                && low > high
            {
                return Err(format!("`scheduler.{low_key}` ({low}) is above `scheduler.{high_key}` ({high})"));
            }
        }
        if let Some(edges) = &s.bucket_edges
            && (edges.is_empty() || edges.windows(2).any(|w| w[0] >= w[1]))
        {
            return Err("`scheduler.bucket_edges` must be a non-empty list of increasing lengths".into());
        }
        if let Some((priority, ms)) = s.default_deadline_ms.iter().find(|(_, ms)| !(1..=MAX_DEADLINE_MS).contains(*ms)) {
            let name = priority.name();
            return Err(format!("`scheduler.default_deadline_ms.{name}` must be in [1, {MAX_DEADLINE_MS}]; got {ms}"));
        }
        let block = self.kv_cache.block_size;
        if !block.is_power_of_two() || block > 256 {
            return Err(format!("`kv_cache.block_size` must be a power of two up to 256; got {block}"));
        }
        let levels = self.shedding.levels();
        let names = ["elevated", "high", "critical", "overload"];
        if let Some(i) = (0..4).find(|&i| !(levels[i] > 0.0 && levels[i] <= 1.0) || (i > 0 && levels[i] < levels[i - 1])) {
            return Err(format!(
                "`shedding.{}` must be in (0, 1] and not below the level before it; got {}",
                names[i], levels[i]
            ));
        }
        if self.shedding.wait_limit_ms == 0 {
            return Err("`shedding.wait_limit_ms` must be at least 1".into());
        }
        let mut names = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let at = |field: &str| format!("`tenants[{i}].{field}`");
            if t.name.trim().is_empty() || t.name == DEFAULT_TENANT {
                return Err(format!("{} must be a name other than `{DEFAULT_TENANT}`", at("name")));
            }
            if t.name.contains(['"', '\\', '\n']) {
                return Err(format!("{} may not contain quotes, backslashes or line breaks", at("name")));
            }
            if !names.insert(t.name.as_str()) {
                return Err(format!("{}: two tenants are named `{}`", at("name"), t.name));
            }
            if t.api_keys.is_empty() {
                return Err(format!("{} must list at least one key", at("api_keys")));
            }
            for key in &t.api_keys {
                if key.trim().is_empty() {
                    return Err(format!("{}: a key is empty", at("api_keys")));
                }
                if !keys.insert(key.as_str()) {
                    return Err(format!("{}: a key is listed twice", at("api_keys")));
                }
            }
            let rates = [
                ("weight", Some(t.weight)),
                ("requests_per_second", t.requests_per_second),
                ("request_burst", t.request_burst),
                ("tokens_per_second", t.tokens_per_second),
                ("token_burst", t.token_burst),
            ];
            if let Some((field, Some(v))) = rates.iter().find(|(_, v)| v.is_some_and(|v| !(v > 0.0 && v.is_finite()))) {
                return Err(format!("{} must be a positive number; got {v}", at(field)));
            }
            if t.max_concurrent == Some(0) {
                return Err(format!("{} must be at least 1", at("max_concurrent")));
            }
        }
        Ok(())
    }

    /// The batching policy in force (after [`resolve`](Self::resolve)).
    pub fn policy(&self) -> BatchPolicy {
        let s = &self.scheduler;
        let max_wait = Duration::from_millis(s.max_wait_ms.unwrap_or(STATIC_MAX_WAIT_MS));
        let batch_size = s.batch_size.unwrap_or(STATIC_BATCH_SIZE);
        // The same defaults `resolve` fills in (none apply to static policies).
        let (tokens, running, chunk) = s.policy.step_defaults().unwrap_or_default();
        let step = || (s.max_batch_tokens.unwrap_or(tokens), s.max_running.unwrap_or(running), s.chunk_size.unwrap_or(chunk));
        match s.policy {
            PolicyName::Fixed => BatchPolicy::Fixed { batch_size, max_wait },
            PolicyName::Bucketed => BatchPolicy::Bucketed {
                batch_size,
                max_wait,
                bucket_edges: s.bucket_edges.clone().unwrap_or_else(|| BUCKET_EDGES.to_vec()),
            },
            PolicyName::MemoryAware => {
                BatchPolicy::MemoryAware { max_batch_tokens: s.max_batch_tokens.unwrap_or(MEMORY_AWARE_BATCH_TOKENS), max_wait }
            }
            PolicyName::Continuous | PolicyName::Latency | PolicyName::Throughput => {
                let (max_batch_tokens, max_running, chunk_size) = step();
                BatchPolicy::Continuous { max_batch_tokens, max_running, chunk_size }
            }
            PolicyName::Adaptive => {
                let (max_batch_tokens, max_running, chunk_size) = step();
                BatchPolicy::Adaptive {
                    min_batch_tokens: s.min_batch_tokens.unwrap_or(ADAPTIVE_MIN_STEP.0),
                    max_batch_tokens,
                    min_chunk_size: s.min_chunk_size.unwrap_or(ADAPTIVE_MIN_STEP.1),
                    chunk_size,
                    max_running,
                }
            }
            PolicyName::Bandit => {
                let (max_batch_tokens, max_running, chunk_size) = step();
                BatchPolicy::Bandit { max_batch_tokens, min_running: s.min_running.unwrap_or(BANDIT_MIN_RUNNING), max_running, chunk_size }
            }
        }
    }

    /// The tenants' token buckets, one set for every served model (the schedulers' own
    /// stay unlimited): bursts at least `context_length`'s tokens (the longest served
    /// context) unless given. Tenant `i` of the file is `TenantId(i + 1)`; id 0 is the
    /// default tenant.
    pub fn rate_limiter(&self, context_length: usize) -> RateLimiter {
        let limits = self.tenants.iter().enumerate().map(|(i, t)| (TenantConfig::id(i).0, t.rate_limit(context_length))).collect();
        RateLimiter::new(limits, RateLimit::default())
    }

    /// The scheduler's configuration before the KV pool is sized for the model.
    pub fn scheduler_config(&self) -> SchedulerConfig {
        let s = &self.scheduler;
        let aging = (s.aging_interval_ms > 0).then(|| Duration::from_millis(s.aging_interval_ms));
        SchedulerConfig {
            block_size: self.kv_cache.block_size,
            policy: self.policy(),
            queue: QueueConfig {
                aging_interval: aging,
                deadline_urgency: Duration::from_millis(s.deadline_urgency_ms),
                short_job_tokens: s.short_job_tokens,
                tenant_weights: self.tenants.iter().enumerate().map(|(i, t)| (TenantConfig::id(i).0, t.weight)).collect(),
            },
            max_waiting: s.max_waiting,
            load: LoadConfig { thresholds: self.shedding.levels(), wait_limit: Duration::from_millis(self.shedding.wait_limit_ms) },
            breaker: BreakerConfig { threshold: self.breaker.failures, cooldown: Duration::from_millis(self.breaker.cooldown_ms) },
            max_step_attempts: self.breaker.max_step_attempts,
            prefix_caching: self.kv_cache.prefix_caching,
            watermark_blocks: self.kv_cache.watermark_blocks,
            seed: s.seed,
            default_deadlines: s.default_deadline_ms.iter().map(|(p, ms)| (*p, Duration::from_millis(*ms))).collect(),
            ..SchedulerConfig::default()
        }
    }

    /// The configuration as a TOML file, with every API key shown as `***`.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        for tenant in &mut shown.tenants {
            tenant.api_keys.iter_mut().for_each(|key| *key = "***".into());
        }
        toml::to_string(&shown).expect("the configuration is plain data")
    }
}

impl SheddingSection {
    fn levels(&self) -> [f64; 4] {
        [self.elevated, self.high, self.critical, self.overload]
    }
}

impl TenantConfig {
    /// Its buckets: bursts of one second's worth unless given, and at least the served
    /// context's tokens so that any one request can pass.
    fn rate_limit(&self, context_length: usize) -> RateLimit {
        let unlimited = RateLimit::default();
        RateLimit {
            requests_per_s: self.requests_per_second.unwrap_or(unlimited.requests_per_s),
            request_burst: self.request_burst.or(self.requests_per_second.map(|r| r.max(1.0))).unwrap_or(unlimited.request_burst),
            tokens_per_s: self.tokens_per_second.unwrap_or(unlimited.tokens_per_s),
            token_burst: self
                .token_burst
                .or(self.tokens_per_second.map(|r| r.max(context_length as f64)))
                .unwrap_or(unlimited.token_burst),
        }
    }

    /// The scheduler's id of the file's tenant `index` (id 0 is the default tenant).
    pub fn id(index: usize) -> TenantId {
        TenantId(index as u32 + 1)
    }
}

/// The adaptive policy's `(min_batch_tokens, min_chunk_size)` defaults: the latency
/// preset's steps.
const ADAPTIVE_MIN_STEP: (usize, usize) = (512, 128);
/// The static policies' defaults: members per batch, the wait for a partial batch, the
/// memory-aware token budget and the buckets' prompt-length bounds.
const STATIC_BATCH_SIZE: usize = 8;
const STATIC_MAX_WAIT_MS: u64 = 50;
const MEMORY_AWARE_BATCH_TOKENS: usize = 8192;
const BUCKET_EDGES: [usize; 3] = [128, 512, 2048];
/// The bandit's smallest running set.
const BANDIT_MIN_RUNNING: usize = 1;

/// The tenant of requests when no tenants are configured, and of `--api-key`'s holder.
pub const DEFAULT_TENANT: &str = "default";

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(text: &str) -> Result<ServeConfig, String> {
        let mut config = ServeConfig::parse(text).map_err(|e| format!("{e:#}"))?;
        config.resolve()?;
        Ok(config)
    }

    #[test]
    fn the_issue_example_parses_and_every_policy_resolves() {
        let config = resolved(
            r#"
            [scheduler]
            policy = "continuous"
            max_running = 64
            max_batch_tokens = 512
            max_waiting = 1024
            aging_interval_ms = 5000

            [[tenants]]
            name = "alice"
            api_keys = ["sk-alice"]
            weight = 2
            max_priority = "normal"
            requests_per_second = 5.0
            tokens_per_second = 2000.0
            max_concurrent = 8
            "#,
        )
        .unwrap();
        let tenant = &config.tenants[0];
        assert_eq!((tenant.weight, tenant.max_priority, tenant.max_concurrent), (2.0, Priority::Normal, Some(8)));
        let scheduler = config.scheduler_config();
        assert_eq!(scheduler.policy, BatchPolicy::Continuous { max_batch_tokens: 512, max_running: 64, chunk_size: 256 });
        assert_eq!(scheduler.queue.tenant_weights[&1], 2.0);
        assert!(scheduler.rate_limits.is_empty(), "one rate limiter serves every model");
        let limit = tenant.rate_limit(2048);
        assert_eq!((limit.requests_per_s, limit.request_burst, limit.tokens_per_s, limit.token_burst), (5.0, 5.0, 2000.0, 2048.0));

        for (name, expected) in [
            ("fixed", BatchPolicy::Fixed { batch_size: 8, max_wait: Duration::from_millis(50) }),
            ("bucketed", BatchPolicy::Bucketed { batch_size: 8, max_wait: Duration::from_millis(50), bucket_edges: vec![128, 512, 2048] }),
            ("memory_aware", BatchPolicy::MemoryAware { max_batch_tokens: 8192, max_wait: Duration::from_millis(50) }),
            ("adaptive", BatchPolicy::Adaptive { min_batch_tokens: 512, max_batch_tokens: 2048, min_chunk_size: 128, chunk_size: 512, max_running: 64 }),
            ("bandit", BatchPolicy::Bandit { max_batch_tokens: 512, min_running: 1, max_running: 64, chunk_size: 256 }),
            ("latency", BatchPolicy::latency_optimised()),
            ("throughput", BatchPolicy::throughput_optimised()),
        ] {
            let config = resolved(&format!("scheduler.policy = \"{name}\"")).unwrap();
            assert_eq!(config.policy(), expected, "{name}");
            // What --print-config shows reads back as the same configuration.
            assert_eq!(resolved(&config.to_toml()).unwrap(), config, "{name}");
        }
        let preset = resolved("[scheduler]\npolicy = \"latency\"\nmax_running = 8").unwrap();
        assert_eq!(preset.policy(), BatchPolicy::Continuous { max_batch_tokens: 512, max_running: 8, chunk_size: 128 });
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        for (text, expected) in [
            ("[scheduler]\npolcy = \"fixed\"", "unknown field `polcy`"),
            ("[scheduler]\npolicy = \"fastest\"", "unknown variant `fastest`"),
            ("[scheduler]\nmax_running = -1", "max_running"),
            ("[scheduler]\nmax_running = 0", "`scheduler.max_running` must be at least 1"),
            ("[scheduler]\npolicy = \"fixed\"\nchunk_size = 64", "`scheduler.chunk_size` does not apply to policy `fixed`"),
            ("[scheduler]\npolicy = \"bandit\"\nmin_running = 9\nmax_running = 4", "`scheduler.min_running` (9) is above"),
            ("[scheduler]\npolicy = \"adaptive\"\nmin_chunk_size = 900\nchunk_size = 400", "`scheduler.min_chunk_size` (900) is above"),
            ("[scheduler]\npolicy = \"adaptive\"\nmin_running = 2", "`scheduler.min_running` does not apply to policy `adaptive`"),
            ("[scheduler]\npolicy = \"bucketed\"\nbucket_edges = [512, 128]", "`scheduler.bucket_edges`"),
            ("[scheduler.default_deadline_ms]\nnormal = 0", "`scheduler.default_deadline_ms.normal`"),
            ("[kv_cache]\nblock_size = 12", "`kv_cache.block_size` must be a power of two"),
            ("[shedding]\nhigh = 0.2", "`shedding.high` must be in (0, 1]"),
            ("[breaker]\ncooldown = 5", "unknown field `cooldown`"),
            ("[[tenants]]\nname = \"a\"\napi_keys = []", "`tenants[0].api_keys` must list at least one key"),
            ("[[tenants]]\nname = \"a\"\napi_keys = [\"k\"]\nmax_priority = \"urgent\"", "unknown variant `urgent`"),
            ("[[tenants]]\nname = \"a\"\napi_keys = [\"k\"]\nweight = 0", "`tenants[0].weight` must be a positive number"),
            ("[[tenants]]\nname = \"a\"\napi_keys = [\"k\"]\n[[tenants]]\nname = \"b\"\napi_keys = [\"k\"]", "`tenants[1].api_keys`: a key is listed twice"),
            ("[[tenants]]\nname = \"default\"\napi_keys = [\"k\"]", "`tenants[0].name` must be a name other than `default`"),
            ("[[tenants]]\napi_keys = [\"k\"]", "missing field `name`"),
            ("[[tenants]]\nname = \"a\"\napi_keys = [\"k\"]\nrate = 5", "unknown field `rate`"),
            ("[limits]\nmax_n = 0", "`limits.max_n` must be at least 1"),
            ("[limits]\nmax_prompt = 5", "unknown field `max_prompt`"),
        ] {
            let error = resolved(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn printed_keys_are_hidden() {
        let config = resolved("[[tenants]]\nname = \"a\"\napi_keys = [\"sk-secret\"]").unwrap();
        let printed = config.to_toml();
        assert!(!printed.contains("sk-secret") && printed.contains("***"), "{printed}");
    }
}
