//! `cinder serve --config FILE`: the batching policy, queue, KV cache, shedding, circuit
//! breaker, request limits and tenants in one TOML file. Unknown keys and bad values are refused with the
//! key's name; flags override the file; `--print-config` prints what is in force.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use cinder_engine::openai::{MAX_DEADLINE_MS, RequestLimits};
use cinder_engine::speculative::DEFAULT_SPECULATIVE_TOKENS;
use cinder_engine::{Speculation, SpeculationConfig, SpeculativeMethod};
use cinder_model::{KvType, KvTypes};
use cinder_scheduler::admission::{BreakerConfig, LoadConfig, RateLimit, RateLimiter};
use cinder_scheduler::queue::QueueConfig;
use cinder_scheduler::{BatchPolicy, Duration, PolicyName, Priority, SchedulerConfig, TenantId};
use serde::{Deserialize, Serialize};

use super::loras::{LoraEntry, check_entry};
use super::models::Routing;

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Most LoRA adapters loaded per model at once, each in a slot on the device
    /// (`--max-loras`) [default: 4].
    pub max_loras: MaxLoras,
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
    /// A gateway in front of the server (`[gateway]`).
    pub gateway: GatewaySection,
    /// LoRA adapters to serve (`--lora NAME=PATH[:SCALE]` replaces them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraEntry>,
    /// How `/v1/embeddings` pools a prompt's rows for every model: mean, cls or last
    /// (`--pooling`) [default: each file's `pooling_type`; mean where the file names none].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pooling: Option<cinder_model::Pooling>,
}

/// `max_loras`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MaxLoras(pub usize);

impl Default for MaxLoras {
    fn default() -> Self {
        Self(4)
    }
}

/// `[gateway]`: a trusted gateway (Kubernetes' inference gateway) may name the tenant of
/// the requests it forwards in its `x-gateway-inference-fairness-id` header. Only requests
/// carrying one of the gateway's own keys are read so: a client's header is ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// Take the tenant from the header on the gateway's requests.
    pub fairness_header: bool,
    /// The gateway's keys (its `Authorization: Bearer` values).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<String>,
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

/// `[scheduler]`: the policy by name, the parameters given for it (the scheduler's own
/// [`BatchPolicy`] fields: `max_running`, `chunk_size`, `max_wait_ms`…; `resolve` fills in
/// the rest from [`BatchPolicy::named`] and refuses parameters the policy does not have),
/// and the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerSection {
    pub policy: PolicyName,
    /// The policy's parameters; any other key lands here too and is refused by `resolve`.
    #[serde(flatten)]
    pub parameters: toml::Table,
    /// Most requests waiting; more get 429.
    pub max_waiting: usize,
    /// A waiting request gains one priority level per this wait; 0 turns aging off.
    pub aging_interval_ms: u64,
    /// Requests whose deadline is this close go first within their priority level.
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
        let queue = QueueConfig::default();
        Self {
            policy: PolicyName::default(),
            parameters: toml::Table::new(),
            max_waiting: 1024,
            aging_interval_ms: queue.aging_interval.map_or(0, Duration::as_millis),
            deadline_urgency_ms: queue.deadline_urgency.as_millis(),
            short_job_tokens: queue.short_job_tokens,
            default_deadline_ms: BTreeMap::new(),
            seed: 0,
        }
    }
}

impl SchedulerSection {
    /// Sets a policy parameter (a flag over the file).
    pub fn set(&mut self, parameter: &str, value: Option<usize>) {
        if let Some(value) = value {
            self.parameters.insert(parameter.into(), toml::Value::Integer(value as i64));
        }
    }

    /// The named policy's parameters with the given ones over them, checked.
    fn resolve(&mut self) -> Result<BatchPolicy, String> {
        let fields = |policy: PolicyName| policy_fields(&BatchPolicy::named(policy));
        let (kind, defaults) = fields(self.policy);
        if let Some(key) = self.parameters.keys().find(|key| !defaults.contains_key(*key)) {
            let of_a_policy = PolicyName::ALL.into_iter().map(fields).any(|(_, other)| other.contains_key(key));
            return Err(match of_a_policy {
                true => format!("`scheduler.{key}` does not apply to policy `{}`", self.policy),
                false => format!("unknown field `{key}` in `[scheduler]`"),
            });
        }
        let mut table = defaults;
        table.insert("policy".into(), kind);
        let read = |table: toml::Table| table.try_into::<BatchPolicy>().map_err(|e| e.to_string().trim_end().to_owned());
        // Each given value alone over the defaults, so that a wrong type names its key.
        for (key, value) in &self.parameters {
            let mut one = table.clone();
            one.insert(key.clone(), value.clone());
            read(one).map_err(|e| format!("`scheduler.{key}`: {e}"))?;
        }
        table.extend(self.parameters.clone());
        let policy = read(table.clone()).map_err(|e| format!("`[scheduler]`: {e}"))?;
        table.remove("policy");
        self.parameters = table;
        policy.check("scheduler.")?;
        Ok(policy)
    }
}

/// A policy as a config file writes it: its kind (the serde tag) and its parameters.
fn policy_fields(policy: &BatchPolicy) -> (toml::Value, toml::Table) {
    match toml::Value::try_from(policy) {
        Ok(toml::Value::Table(mut table)) => (table.remove("policy").expect("policies are tagged"), table),
        other => unreachable!("a policy serialises to a table: {other:?}"),
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
    /// What keys and values are stored as: f32, f16, q8_0 or q4_0.
    #[serde(rename = "type")]
    pub kind: KvType,
    /// Keys' type where it differs from `type`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub type_k: Option<KvType>,
    /// Values' type where it differs from `type`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub type_v: Option<KvType>,
}

impl Default for KvCacheSection {
    fn default() -> Self {
        Self { size_mb: 512, block_size: 16, watermark_blocks: 4, prefix_caching: true, kind: KvType::default(), type_k: None, type_v: None }
    }
}

impl KvCacheSection {
    /// What keys and values are stored as.
    pub fn types(&self) -> KvTypes {
        KvTypes { keys: self.type_k.unwrap_or(self.kind), values: self.type_v.unwrap_or(self.kind) }
    }

    /// Sets the types to `types`, written as `type` where they are one.
    pub fn set_types(&mut self, types: KvTypes) {
        self.kind = types.keys;
        self.type_k = None;
        self.type_v = (types.values != types.keys).then_some(types.values);
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
        Self { elevated, high, critical, overload, wait_limit_ms: load.wait_limit.as_millis() }
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
        Self { failures: breaker.threshold, cooldown_ms: breaker.cooldown.as_millis(), max_step_attempts: 3 }
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
    /// The LoRA adapters its requests may run with [default: any]; the base models stay open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loras: Option<Vec<String>>,
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
            loras: None,
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
        self.scheduler.resolve()?;
        self.speculative.config()?;
        self.limits.check()?;
        self.check()
    }

    fn check(&self) -> Result<(), String> {
        let s = &self.scheduler;
        let positive = [
            ("scheduler.max_waiting", s.max_waiting),
            ("kv_cache.block_size", self.kv_cache.block_size),
            ("breaker.failures", self.breaker.failures as usize),
            ("breaker.max_step_attempts", self.breaker.max_step_attempts as usize),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{key}` must be at least 1"));
        }
        if let Some((priority, ms)) = s.default_deadline_ms.iter().find(|(_, ms)| !(1..=MAX_DEADLINE_MS).contains(*ms)) {
            let name = priority.name();
            return Err(format!("`scheduler.default_deadline_ms.{name}` must be in [1, {MAX_DEADLINE_MS}]; got {ms}"));
        }
        if self.gateway.fairness_header && self.gateway.api_keys.is_empty() {
            return Err("`gateway.fairness_header` needs `gateway.api_keys`: the gateway's own keys, so that no client picks its tenant".into());
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
        let mut adapters = BTreeSet::new();
        for (i, entry) in self.loras.iter().enumerate() {
            check_entry(entry).map_err(|e| format!("`loras[{i}]`: {e}"))?;
            if !adapters.insert(entry.name.as_str()) || self.models.iter().any(|m| m.name == entry.name) {
                return Err(format!("`loras[{i}].name`: {:?} names another adapter or a model", entry.name));
            }
            let sharing = self.loras.iter().filter(|l| l.model == entry.model).count();
            if sharing > self.max_loras.0 {
                return Err(format!("{sharing} LoRA adapters for one model, more than `max_loras` {}", self.max_loras.0));
            }
        }
        for key in &self.gateway.api_keys {
            if key.trim().is_empty() || !keys.insert(key.as_str()) {
                return Err("`gateway.api_keys`: a key is empty, listed twice or also a tenant's".into());
            }
        }
        Ok(())
    }

    /// The batching policy in force (after [`resolve`](Self::resolve), which checked it).
    pub fn policy(&self) -> BatchPolicy {
        self.scheduler.clone().resolve().expect("the policy was checked by resolve")
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
        shown.gateway.api_keys.iter_mut().for_each(|key| *key = "***".into());
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
            ("[kv_cache]\ntype = \"q5_1\"", "unknown variant `q5_1`, expected one of `f32`, `f16`, `q8_0`, `q4_0`"),
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
    fn the_file_reads_into_the_schedulers_policy_with_its_defaults() {
        for name in PolicyName::ALL {
            let config = resolved(&format!("scheduler.policy = \"{name}\"")).unwrap();
            assert_eq!(config.policy(), BatchPolicy::named(name), "{name}");
        }
        assert_eq!(ServeConfig::default().policy(), BatchPolicy::default());
        let error = resolved("[scheduler]\npolicy = \"fixed\"\nmax_wait_ms = \"soon\"").unwrap_err();
        assert!(error.starts_with("`scheduler.max_wait_ms`: invalid type"), "{error}");
        let kv = resolved("[kv_cache]\ntype = \"q8_0\"\ntype_v = \"q4_0\"").unwrap();
        assert_eq!(kv.kv_cache.types(), KvTypes { keys: KvType::Q8_0, values: KvType::Q4_0 });
        assert_eq!(resolved(&kv.to_toml()).unwrap().kv_cache.types(), kv.kv_cache.types());
        assert_eq!(ServeConfig::default().kv_cache.types(), KvTypes::both(KvType::F16));
        let waits = resolved("[scheduler]\npolicy = \"memory_aware\"\nmax_wait_ms = 7").unwrap();
        assert_eq!(waits.policy(), BatchPolicy::MemoryAware { max_batch_tokens: 8192, max_wait: Duration::from_millis(7) });
    }

    #[test]
    fn printed_keys_are_hidden() {
        let config = resolved("[[tenants]]\nname = \"a\"\napi_keys = [\"sk-secret\"]").unwrap();
        let printed = config.to_toml();
        assert!(!printed.contains("sk-secret") && printed.contains("***"), "{printed}");
    }
}
