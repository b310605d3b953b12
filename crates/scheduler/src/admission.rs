//! Who gets in: per-tenant token buckets, load levels that shed the lowest priorities first,
//! and a circuit breaker that stops admitting work while steps keep failing.

use serde::{Deserialize, Serialize};

use crate::{Duration, Priority, Time};

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

    /// Takes `amount` if available; otherwise says how long until it would be.
    pub fn try_take(&mut self, amount: f64, now: Time) -> Result<(), Duration> {
        self.refill(now);
        if amount <= self.tokens {
            self.tokens -= amount;
            Ok(())
        } else if amount > self.burst || self.rate <= 0.0 {
            Err(Duration::from_secs_f64(3600.0))
        } else {
            Err(Duration::from_secs_f64((amount - self.tokens) / self.rate))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_refills_and_says_when() {
        let mut b = TokenBucket::new(10.0, 20.0);
        assert!(b.try_take(20.0, Time::ZERO).is_ok());
        let wait = b.try_take(5.0, Time::ZERO).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(b.try_take(5.0, Time::from_secs_f64(0.5)).is_ok());
        assert!(b.try_take(25.0, Time::from_secs_f64(100.0)).is_err(), "more than the burst never fits");
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
        assert_eq!(b.state(Time(100_000)), BreakerState::HalfOpen);
        b.record(false, Time(100_000));
        assert!(matches!(b.state(Time(100_000)), BreakerState::Open { .. }), "a failed trial reopens");
        assert_eq!(b.state(Time(200_000)), BreakerState::HalfOpen);
        b.record(true, Time(200_000));
        assert_eq!(b.state(Time(200_000)), BreakerState::Closed);
    }
}
