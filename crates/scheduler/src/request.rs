//! What callers submit.

use serde::{Deserialize, Serialize};

use crate::{Duration, Time};

/// A sequence's id, unique for the scheduler's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SeqId(pub u64);

/// A tenant (an API key, a user): the unit of rate limits and fair sharing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct TenantId(pub u32);

/// Priority levels, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Critical = 0,
    High = 1,
    #[default]
    Normal = 2,
    Low = 3,
    Batch = 4,
}

impl Priority {
    pub const ALL: [Priority; 5] = [Priority::Critical, Priority::High, Priority::Normal, Priority::Low, Priority::Batch];

    pub fn level(self) -> usize {
        self as usize
    }

    pub fn from_level(level: usize) -> Priority {
        Priority::ALL[level.min(4)]
    }

    pub fn name(self) -> &'static str {
        ["critical", "high", "normal", "low", "batch"][self.level()]
    }

    /// The level [`name`](Self::name) calls `name`.
    pub fn from_name(name: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// A generation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Prompt token ids (hashed for the prefix cache).
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    pub priority: Priority,
    /// The most urgent level the queue may lift this request to (aging, the short-job
    /// bonus, a near deadline): its tenant's cap. A request never stands above it.
    pub max_priority: Priority,
    pub tenant: TenantId,
    /// Longest wait to start (a deadline): a request none of whose sequences has started
    /// when it passes ends with [`FinishReason::Deadline`](crate::FinishReason::Deadline).
    /// Requests with one are served earliest-deadline-first when their deadline nears.
    pub max_wait: Option<Duration>,
    /// Whether cached prefix blocks may be reused for this request.
    pub use_prefix_cache: bool,
    /// Mixed into its prefix hashes: requests whose KV differs for the same tokens (another
    /// LoRA adapter) share no cached blocks. 0 for the base model.
    #[serde(default)]
    pub cache_salt: u64,
}

impl Request {
    pub fn new(prompt: Vec<u32>, max_new_tokens: usize) -> Self {
        Self {
            prompt,
            max_new_tokens,
            priority: Priority::Normal,
            max_priority: Priority::Critical,
            tenant: TenantId(0),
            max_wait: None,
            use_prefix_cache: true,
            cache_salt: 0,
        }
    }

    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    pub fn with_max_priority(mut self, max_priority: Priority) -> Self {
        self.max_priority = max_priority;
        self
    }

    pub fn with_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = tenant;
        self
    }

    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// Total tokens this request may occupy in the KV cache.
    pub fn max_len(&self) -> usize {
        self.prompt.len().saturating_add(self.max_new_tokens)
    }
}

/// When a request's deadline falls, if it has one.
pub(crate) fn deadline(request: &Request, arrival: Time) -> Option<Time> {
    request.max_wait.map(|w| arrival + w)
}

/// A hash map for the scheduler's small integer ids: a multiplicative hash instead of
/// SipHash, which the scheduler's hot paths would spend most of their time in. Ids are not
/// attacker-chosen (the scheduler assigns them), so flooding resistance is not needed.
pub(crate) type IdMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(n.into());
    }
}
