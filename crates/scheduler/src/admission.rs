//! Who gets in: per-tenant token buckets, load levels that shed the lowest priorities first,
//! and a circuit breaker that stops admitting work while steps keep failing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Duration, Priority, SchedulerConfig, TenantId, Time};

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectionReason {
    /// The prompt plus max tokens exceeds what one sequence may hold.
    TooLong,
    /// The tenant's request or token rate limit.
    RateLimited,
    /// The waiting queue is full.
    QueueFull,
    /// Shed by the current load level.
    Overloaded,
    /// The circuit breaker is open after repeated step failures.
    CircuitOpen,
}

impl RejectionReason {
    pub const ALL: [RejectionReason; 5] = [
        RejectionReason::TooLong,
        RejectionReason::RateLimited,
        RejectionReason::QueueFull,
        RejectionReason::Overloaded,
        RejectionReason::CircuitOpen,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::TooLong => "too_long",
            Self::RateLimited => "rate_limited",
            Self::QueueFull => "queue_full",
            Self::Overloaded => "overloaded",
            Self::CircuitOpen => "circuit_open",
        }
    }
}

/// A refused request: the reason, a message for the client, and when trying again may work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub reason: RejectionReason,
    pub message: String,
    /// `None` when retrying cannot help (e.g. the request is too long).
    pub retry_after: Option<Duration>,
}

/// Load, from calm to saturated. Each level sheds more priorities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadLevel {
    #[default]
    Normal,
    Elevated,
    High,
    Critical,
    Overload,
}

impl LoadLevel {
    /// The least urgent priority still admitted at this level.
    pub fn lowest_admitted(self) -> Option<Priority> {
        match self {
            Self::Normal => Some(Priority::Batch),
            Self::Elevated => Some(Priority::Low),
            Self::High => Some(Priority::Normal),
            Self::Critical => Some(Priority::High),
            Self::Overload => Some(Priority::Critical),
        }
    }

    pub fn admits(self, priority: Priority) -> bool {
        self.lowest_admitted().is_some_and(|lowest| priority <= lowest)
    }
}

/// Thresholds for load levels: each signal is a fraction of its limit (queue depth of
/// `max_waiting`, KV blocks in use, oldest wait of `wait_limit`); the level is the highest
/// whose threshold any signal reaches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadConfig {
    /// Fractions at which Elevated, High, Critical and Overload begin.
    pub thresholds: [f64; 4],
    /// The wait that counts as a full queue for the wait signal.
    pub wait_limit: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self { thresholds: [0.5, 0.7, 0.85, 0.97], wait_limit: Duration::from_millis(30_000) }
    }
}

impl LoadConfig {
    pub fn level(&self, queue_frac: f64, kv_frac: f64, oldest_wait: Duration) -> LoadLevel {
        // KV pressure alone never sheds beyond High: a full cache with an empty queue is a
        // busy engine, not an overloaded one.
        let kv = kv_frac.min(self.thresholds[1]);
        let wait = oldest_wait.as_secs_f64() / self.wait_limit.as_secs_f64().max(1e-9);
        let signal = queue_frac.max(kv).max(wait);
        let levels = [LoadLevel::Elevated, LoadLevel::High, LoadLevel::Critical, LoadLevel::Overload];
        levels.iter().zip(self.thresholds).filter(|(_, t)| signal >= *t).map(|(l, _)| *l).last().unwrap_or_default()
    }
}

/// A token bucket: `rate` tokens per second up to `burst`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Time,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst, tokens: burst, updated: Time::ZERO }
    }

    fn refill(&mut self, now: Time) {
        let elapsed = now.since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = self.updated.max(now);
    }

    /// Takes `amount` if available; otherwise says how long until it would be (`None`:
    /// never, as it is more than the burst).
    pub fn try_take(&mut self, amount: f64, now: Time) -> Result<(), Option<Duration>> {
        self.refill(now);
        if amount <= self.tokens {
            self.tokens -= amount;
            Ok(())
        } else if amount > self.burst || self.rate <= 0.0 {
            Err(None)
        } else {
            Err(Some(Duration::from_secs_f64((amount - self.tokens) / self.rate)))
        }
    }

    /// Returns tokens taken for a request that was then refused elsewhere.
    pub fn give_back(&mut self, amount: f64) {
        self.tokens = (self.tokens + amount).min(self.burst);
    }
}

/// Per-tenant limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimit {
    pub requests_per_s: f64,
    pub request_burst: f64,
    pub tokens_per_s: f64,
    pub token_burst: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self { requests_per_s: f64::INFINITY, request_burst: f64::INFINITY, tokens_per_s: f64::INFINITY, token_burst: f64::INFINITY }
    }
}

/// Why a tenant's request did not pass its buckets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limited {
    /// Over the request or token rate: it passes after `retry_after`.
    Later { what: &'static str, retry_after: Duration },
    /// More than the `burst` of the `what` bucket: it can never pass.
    Never { what: &'static str, burst: f64 },
}

/// Each tenant's two token buckets (requests, and prompt plus new tokens), by its
/// [`RateLimit`]. One per process serves every engine: a tenant's rate does not grow with
/// the number of models it can use.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    limits: BTreeMap<u32, RateLimit>,
    default: RateLimit,
    buckets: BTreeMap<TenantId, (TokenBucket, TokenBucket)>,
}

impl RateLimiter {
    /// Limits per tenant id; tenants not listed get `default`.
    pub fn new(limits: BTreeMap<u32, RateLimit>, default: RateLimit) -> Self {
        Self { limits, default, buckets: BTreeMap::new() }
    }

    /// Takes one request and `tokens` from `tenant`'s buckets, or neither.
    pub fn take(&mut self, tenant: TenantId, tokens: usize, now: Time) -> Result<(), Limited> {
        let limit = self.limits.get(&tenant.0).unwrap_or(&self.default);
        let (requests, token_bucket) = self.buckets.entry(tenant).or_insert_with(|| {
            (TokenBucket::new(limit.requests_per_s, limit.request_burst), TokenBucket::new(limit.tokens_per_s, limit.token_burst))
        });
        let refused = |what, burst, wait: Option<Duration>| match wait {
            Some(retry_after) => Limited::Later { what, retry_after },
            None => Limited::Never { what, burst },
        };
        requests.try_take(1.0, now).map_err(|wait| refused("request", requests.burst, wait))?;
        token_bucket.try_take(tokens as f64, now).map_err(|wait| {
            requests.give_back(1.0);
            refused("token", token_bucket.burst, wait)
        })
    }

    /// Returns what [`take`](Self::take) took for a request that was then refused elsewhere.
    pub fn give_back(&mut self, tenant: TenantId, tokens: usize) {
        if let Some((requests, token_bucket)) = self.buckets.get_mut(&tenant) {
            requests.give_back(1.0);
            token_bucket.give_back(tokens as f64);
        }
    }
}

/// Circuit breaker states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BreakerState {
    Closed,
    /// Refusing work until the given time.
    Open { until: Time },
    /// Letting work through on trial: one success closes, one failure reopens.
    HalfOpen,
}

/// Opens after `threshold` consecutive failed steps, stays open for `cooldown`, then lets
/// a trial through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerConfig {
    pub threshold: u32,
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { threshold: 5, cooldown: Duration::from_millis(10_000) }
    }
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self { config, state: BreakerState::Closed, consecutive_failures: 0 }
    }

    pub fn state(&mut self, now: Time) -> BreakerState {
        if let BreakerState::Open { until } = self.state {
            if now >= until {
                self.state = BreakerState::HalfOpen;
            }
        }
        self.state
    }

    /// Whether it refuses work at `now` (open and not yet cooled down).
    pub fn is_open(&self, now: Time) -> bool {
        matches!(self.state, BreakerState::Open { until } if now < until)
    }

    pub fn record(&mut self, success: bool, now: Time) {
        if success {
            self.consecutive_failures = 0;
            self.state = BreakerState::Closed;
            return;
        }
        self.consecutive_failures += 1;
        if self.state == BreakerState::HalfOpen || self.consecutive_failures >= self.config.threshold {
            self.state = BreakerState::Open { until: now + self.config.cooldown };
        }
    }
}

/// Who gets in: the circuit breaker, load shedding, the queue limit and the tenants' token
/// buckets, checked in that order, with counts of what was refused and why. The scheduler
/// measures the load; this decides.
#[derive(Debug)]
pub struct Admission {
    load: LoadConfig,
    max_waiting: usize,
    rates: RateLimiter,
    breaker: CircuitBreaker,
    rejections: BTreeMap<RejectionReason, u64>,
}

/// A request as admission sees it: all its sequences together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Applicant {
    pub tenant: TenantId,
    /// The least urgent priority among its sequences (the one shedding reaches first).
    pub priority: Priority,
    /// Prompt plus most new tokens, over its sequences.
    pub tokens: usize,
}

impl Admission {
    pub fn new(config: &SchedulerConfig) -> Self {
        Self {
            load: config.load.clone(),
            max_waiting: config.max_waiting,
            rates: RateLimiter::new(config.rate_limits.clone(), config.default_rate_limit.clone()),
            breaker: CircuitBreaker::new(config.breaker.clone()),
            rejections: BTreeMap::new(),
        }
    }

    /// A refusal, counted.
    pub fn reject(&mut self, reason: RejectionReason, message: String, retry_after: Option<Duration>) -> Rejection {
        *self.rejections.entry(reason).or_default() += 1;
        Rejection { reason, message, retry_after }
    }

    /// The load level of these signals (see [`LoadConfig::level`]).
    pub fn level(&self, queue_frac: f64, kv_frac: f64, oldest_wait: Duration) -> LoadLevel {
        self.load.level(queue_frac, kv_frac, oldest_wait)
    }

    /// Whether steps may run now: not while the breaker is open.
    pub fn steps_allowed(&mut self, now: Time) -> bool {
        !matches!(self.breaker.state(now), BreakerState::Open { .. })
    }

    /// Whether the breaker refuses work at `now`.
    pub fn breaker_open(&self, now: Time) -> bool {
        self.breaker.is_open(now)
    }

    /// Records how a step went, for the breaker.
    pub fn record_step(&mut self, success: bool, now: Time) {
        self.breaker.record(success, now);
    }

    /// Lets `applicant` in at load `level` with `waiting` requests queued, taking its
    /// request and tokens from its tenant's buckets; or says why not and when to retry.
    pub fn admit(&mut self, applicant: Applicant, level: LoadLevel, waiting: usize, now: Time) -> Result<(), Rejection> {
        self.check(applicant, level, waiting, now)?;
        let limited = match self.rates.take(applicant.tenant, applicant.tokens, now) {
            Ok(()) => return Ok(()),
            Err(limited) => limited,
        };
        // The tenant is the caller's own key: no need to name it (or leak its number).
        Err(match limited {
            Limited::Later { what, retry_after } => {
                let message = format!("over this tenant's {what} rate limit; retry later");
                self.reject(RejectionReason::RateLimited, message, Some(retry_after))
            }
            Limited::Never { what, burst } => {
                let message = format!("the request needs more than this tenant's {what} burst ({burst}); it can never pass");
                self.reject(RejectionReason::TooLong, message, None)
            }
        })
    }

    /// Whether `applicant` would be let in now, short of its tenant's buckets: the breaker,
    /// shedding at load `level` and the queue with `waiting` requests. A refusal counts.
    pub fn check(&mut self, applicant: Applicant, level: LoadLevel, waiting: usize, now: Time) -> Result<(), Rejection> {
        if let BreakerState::Open { until } = self.breaker.state(now) {
            let message = "the engine is failing; not accepting requests for now".to_owned();
            return Err(self.reject(RejectionReason::CircuitOpen, message, Some(until.since(now))));
        }
        if !level.admits(applicant.priority) {
            let message = format!("overloaded ({level:?}): {} priority requests are shed", applicant.priority.name());
            let retry = Duration::from_millis(500 << (level as u32).min(5));
            return Err(self.reject(RejectionReason::Overloaded, message, Some(retry)));
        }
        if waiting >= self.max_waiting {
            let message = format!("the queue is full ({waiting} requests waiting)");
            return Err(self.reject(RejectionReason::QueueFull, message, Some(Duration::from_millis(1_000))));
        }
        Ok(())
    }

    /// Requests refused so far, by reason.
    pub fn rejections(&self) -> &BTreeMap<RejectionReason, u64> {
        &self.rejections
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_refills_and_says_when() {
        let mut b = TokenBucket::new(10.0, 20.0);
        assert!(b.try_take(20.0, Time::ZERO).is_ok());
        let wait = b.try_take(5.0, Time::ZERO).unwrap_err();
        assert_eq!(wait, Some(Duration::from_millis(500)));
        assert!(b.try_take(5.0, Time::from_secs_f64(0.5)).is_ok());
        assert_eq!(b.try_take(25.0, Time::from_secs_f64(100.0)), Err(None), "more than the burst never fits");
    }

    #[test]
    fn a_rate_limiter_takes_both_or_neither_and_tells_never_from_later() {
        let limit = RateLimit { requests_per_s: 1.0, request_burst: 2.0, tokens_per_s: 10.0, token_burst: 100.0 };
        let mut rates = RateLimiter::new([(1, limit)].into(), RateLimit::default());
        let (alice, other) = (TenantId(1), TenantId(2));
        assert_eq!(rates.take(alice, 101, Time::ZERO), Err(Limited::Never { what: "token", burst: 100.0 }));
        assert!(rates.take(alice, 90, Time::ZERO).is_ok());
        assert_eq!(rates.take(alice, 20, Time::ZERO), Err(Limited::Later { what: "token", retry_after: Duration::from_secs_f64(1.0) }));
        // The refused request's own bucket was not charged: one request is still left.
        assert!(rates.take(alice, 10, Time::ZERO).is_ok());
        assert!(matches!(rates.take(alice, 0, Time::ZERO), Err(Limited::Later { what: "request", .. })));
        rates.give_back(alice, 100);
        assert!(rates.take(alice, 100, Time::ZERO).is_ok(), "given back");
        assert!(rates.take(other, 1_000_000, Time::ZERO).is_ok(), "unlisted tenants are unlimited");
    }

    #[test]
    fn load_levels_shed_lowest_priorities_first() {
        let c = LoadConfig::default();
        assert_eq!(c.level(0.1, 0.1, Duration::ZERO), LoadLevel::Normal);
        assert_eq!(c.level(0.6, 0.1, Duration::ZERO), LoadLevel::Elevated);
        assert_eq!(c.level(0.0, 1.0, Duration::ZERO), LoadLevel::High, "KV pressure alone caps at High");
        assert_eq!(c.level(0.9, 0.0, Duration::ZERO), LoadLevel::Critical);
        assert_eq!(c.level(0.0, 0.0, Duration::from_millis(60_000)), LoadLevel::Overload);
        assert!(LoadLevel::Elevated.admits(Priority::Low) && !LoadLevel::Elevated.admits(Priority::Batch));
        assert!(LoadLevel::Overload.admits(Priority::Critical) && !LoadLevel::Overload.admits(Priority::High));
    }

    #[test]
    fn breaker_opens_cools_down_and_recovers() {
        let mut b = CircuitBreaker::new(BreakerConfig { threshold: 2, cooldown: Duration::from_millis(100) });
        b.record(false, Time::ZERO);
        assert_eq!(b.state(Time::ZERO), BreakerState::Closed);
        b.record(false, Time::ZERO);
        assert!(matches!(b.state(Time::ZERO), BreakerState::Open { .. }));
        assert!(b.is_open(Time(99_999)) && !b.is_open(Time(100_000)));
        assert_eq!(b.state(Time(100_000)), BreakerState::HalfOpen);
        b.record(false, Time(100_000));
        assert!(matches!(b.state(Time(100_000)), BreakerState::Open { .. }), "a failed trial reopens");
        assert_eq!(b.state(Time(200_000)), BreakerState::HalfOpen);
        b.record(true, Time(200_000));
        assert_eq!(b.state(Time(200_000)), BreakerState::Closed);
    }
}
