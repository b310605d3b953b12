//! The waiting queue.
//!
//! Requests wait in lanes, one per (priority, tenant), each first-in first-out. The next
//! request is the head of the lane with the best *effective* priority, where a request
//! gains one level for every `aging_interval` it has waited (so nothing starves), ties going
//! to the tenant that has received least service relative to its weight (weighted fair
//! queuing), then to the earliest arrival. A request whose deadline is within
//! `deadline_urgency` (and not yet missed) goes first among the requests of its effective
//! level, earliest deadline first: urgency orders a level, it never lifts a request above
//! one. Nothing lifts a request above its ceiling (its tenant's `max_priority`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::request::IdMap;
use crate::{Duration, Priority, SeqId, TenantId, Time};

/// Ordering knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueConfig {
    /// Wait after which a request is promoted one priority level; `None` turns aging off.
    pub aging_interval: Option<Duration>,
    /// Requests whose deadline is this close go first within their level, earliest
    /// deadline first.
    pub deadline_urgency: Duration,
    /// Requests of at most this many tokens (prompt + max new) get one level of bonus; 0 is off.
    pub short_job_tokens: usize,
    /// Weights of tenants for fair sharing; tenants not listed weigh 1.
    pub tenant_weights: BTreeMap<u32, f64>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            aging_interval: Some(Duration::from_millis(5_000)),
            deadline_urgency: Duration::from_millis(1_000),
            short_job_tokens: 0,
            tenant_weights: BTreeMap::new(),
        }
    }
}

/// What the queue needs to know about a waiting item.
///
/// Ids must grow with arrival (the scheduler assigns them so): a lane is kept sorted by id,
/// which is both its first-in first-out order and how an item is found again.
pub trait Queued {
    fn id(&self) -> SeqId;
    fn priority(&self) -> Priority;
    /// The most urgent level aging and bonuses may lift it to.
    fn max_priority(&self) -> Priority;
    fn tenant(&self) -> TenantId;
    fn arrival(&self) -> Time;
    fn deadline(&self) -> Option<Time>;
    /// Service the request will take, in tokens, for fair sharing.
    fn cost(&self) -> usize;
}

/// A plain waiting request, for using the queue on its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry {
    pub id: SeqId,
    pub priority: Priority,
    pub max_priority: Priority,
    pub tenant: TenantId,
    pub arrival: Time,
    pub deadline: Option<Time>,
    pub cost: usize,
}

impl Queued for Entry {
    fn id(&self) -> SeqId {
        self.id
    }
    fn priority(&self) -> Priority {
        self.priority
    }
    fn max_priority(&self) -> Priority {
        self.max_priority
    }
    fn tenant(&self) -> TenantId {
        self.tenant
    }
    fn arrival(&self) -> Time {
        self.arrival
    }
    fn deadline(&self) -> Option<Time> {
        self.deadline
    }
    fn cost(&self) -> usize {
        self.cost
    }
}

type LaneKey = (Priority, TenantId);

/// The waiting requests. It owns them: a queued request costs its lane slot and nothing
/// else (no per-request index), which keeps the scheduler's overhead per waiting request
/// to a few dozen bytes.
#[derive(Debug)]
pub struct WaitingQueue<T> {
    config: QueueConfig,
    lanes: BTreeMap<LaneKey, VecDeque<T>>,
    /// Requests that have a deadline, by deadline.
    deadlines: BTreeSet<(Time, SeqId)>,
    /// Service received per tenant divided by its weight (virtual time).
    served: IdMap<TenantId, f64>,
    /// Non-empty lanes per tenant.
    tenant_lanes: IdMap<TenantId, usize>,
    len: usize,
    depth: [usize; 5],
}

impl<T: Queued> WaitingQueue<T> {
    pub fn new(config: QueueConfig) -> Self {
        Self {
            config,
            lanes: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            served: IdMap::default(),
            tenant_lanes: IdMap::default(),
            len: 0,
            depth: [0; 5],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Waiting requests per priority level.
    pub fn depth_by_priority(&self) -> [usize; 5] {
        self.depth
    }

    fn weight(&self, tenant: TenantId) -> f64 {
        self.config.tenant_weights.get(&tenant.0).copied().filter(|w| *w > 0.0).unwrap_or(1.0)
    }

    /// Adds a request: a new one lands at the back of its lane, a preempted one coming back
    /// goes where its original arrival places it.
    pub fn push(&mut self, item: T) {
        let (id, tenant) = (item.id(), item.tenant());
        let key = (item.priority(), tenant);
        // A tenant coming back from idle starts level with the least-served active tenant,
        // instead of cashing in service it did not ask for while away.
        if !self.tenant_lanes.contains_key(&tenant) {
            let floor = self.tenant_lanes.keys().filter_map(|t| self.served.get(t).copied()).reduce(f64::min);
            let served = self.served.entry(tenant).or_insert(0.0);
            if let Some(floor) = floor {
                *served = served.max(floor);
            }
        }
        if let Some(deadline) = item.deadline() {
            self.deadlines.insert((deadline, id));
        }
        self.len += 1;
        self.depth[key.0.level()] += 1;
        let lane = self.lanes.entry(key).or_default();
        if lane.is_empty() {
            *self.tenant_lanes.entry(tenant).or_default() += 1;
        }
        let at = lane.partition_point(|other| other.id() < id);
        lane.insert(at, item);
    }

    /// The request that should run next.
    pub fn peek(&self, now: Time) -> Option<&T> {
        let head = self.lanes.values().filter_map(|lane| lane.front()).min_by(|a, b| {
            self.effective_level(*a, now)
                .cmp(&self.effective_level(*b, now))
                .then_with(|| self.virtual_time(a.tenant()).total_cmp(&self.virtual_time(b.tenant())))
                .then(a.id().cmp(&b.id()))
        })?;
        // A request waits behind its lane's head, which arrived earlier: it is never at a
        // better level than the best head. So the earliest urgent deadline at that level goes
        // first. Requests that already missed their deadline lose the urgency (the scheduler
        // ends them): under overload, serving them first would make every later request miss.
        let level = self.effective_level(head, now);
        let urgent = self.deadlines.range((now, SeqId(0))..=(now + self.config.deadline_urgency, SeqId(u64::MAX)));
        let first_urgent = urgent
            .map(|&(_, id)| self.get(id).expect("deadline index is in sync"))
            .find(|item| self.effective_level(*item, now) == level);
        Some(first_urgent.unwrap_or(head))
    }

    fn virtual_time(&self, tenant: TenantId) -> f64 {
        self.served.get(&tenant).copied().unwrap_or(0.0)
    }

    /// The request's priority level after aging and the short-job bonus, never above its
    /// ceiling (0 is most urgent).
    pub fn effective_level(&self, item: &T, now: Time) -> usize {
        let own = item.priority().level();
        let mut level = own;
        if let Some(interval) = self.config.aging_interval.filter(|i| i.0 > 0) {
            level = level.saturating_sub((now.since(item.arrival()).0 / interval.0) as usize);
        }
        if self.config.short_job_tokens > 0 && item.cost() <= self.config.short_job_tokens {
            level = level.saturating_sub(1);
        }
        level.max(item.max_priority().level().min(own))
    }

    /// Where `id` waits: its lane and its index there. A search over the lanes (a handful:
    /// priorities times active tenants), each a binary search.
    fn find(&self, id: SeqId) -> Option<(LaneKey, usize)> {
        self.lanes.iter().find_map(|(key, lane)| lane.binary_search_by_key(&id, |q| q.id()).ok().map(|at| (*key, at)))
    }

    pub fn get(&self, id: SeqId) -> Option<&T> {
        self.find(id).map(|(key, at)| &self.lanes[&key][at])
    }

    pub fn contains(&self, id: SeqId) -> bool {
        self.find(id).is_some()
    }

    /// Removes a request (admitted, cancelled or shed) and, when it was admitted, charges its
    /// tenant for the service.
    pub fn remove(&mut self, id: SeqId, admitted: bool) -> Option<T> {
        let (key, at) = self.find(id)?;
        let (priority, tenant) = key;
        let lane = self.lanes.get_mut(&key).expect("found in this lane");
        let item = lane.remove(at).expect("position is valid");
        if lane.is_empty() {
            self.lanes.remove(&key);
            let lanes = self.tenant_lanes.get_mut(&tenant).expect("tenant has lanes");
            *lanes -= 1;
            if *lanes == 0 {
                self.tenant_lanes.remove(&tenant);
            }
        }
        if let Some(deadline) = item.deadline() {
            self.deadlines.remove(&(deadline, id));
        }
        self.len -= 1;
        self.depth[priority.level()] -= 1;
        if admitted {
            let charge = item.cost() as f64 / self.weight(tenant);
            *self.served.entry(tenant).or_insert(0.0) += charge;
        }
        Some(item)
    }

    /// Takes `id` out of deadline ordering: from now on it waits like a request without one.
    pub fn clear_deadline(&mut self, id: SeqId) {
        if let Some(deadline) = self.get(id).and_then(Queued::deadline) {
            self.deadlines.remove(&(deadline, id));
        }
    }

    /// Requests whose deadline has passed, earliest first.
    pub fn expired(&self, now: Time) -> Vec<SeqId> {
        self.deadlines.range(..(now, SeqId(0))).map(|&(_, id)| id).collect()
    }

    /// Arrival time of the longest-waiting request. Lanes are in arrival order, so only
    /// their heads need looking at.
    pub fn oldest_arrival(&self) -> Option<Time> {
        self.lanes.values().filter_map(|l| l.front()).map(|q| q.arrival()).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, priority: Priority, tenant: u32, arrival: u64) -> Entry {
        Entry {
            id: SeqId(id),
            priority,
            max_priority: Priority::Critical,
            tenant: TenantId(tenant),
            arrival: Time(arrival),
            deadline: None,
            cost: 10,
        }
    }

    fn drain(q: &mut WaitingQueue<Entry>, now: Time) -> Vec<u64> {
        std::iter::from_fn(|| {
            let e = *q.peek(now)?;
            q.remove(e.id, true);
            Some(e.id.0)
        })
        .collect()
    }

    #[test]
    fn priority_then_arrival() {
        let mut q = WaitingQueue::new(QueueConfig { aging_interval: None, ..Default::default() });
        q.push(entry(1, Priority::Low, 0, 0));
        q.push(entry(2, Priority::High, 0, 1));
        q.push(entry(3, Priority::Normal, 0, 2));
        q.push(entry(4, Priority::High, 0, 3));
        assert_eq!(q.depth_by_priority(), [0, 2, 1, 1, 0]);
        assert_eq!(drain(&mut q, Time(10)), [2, 4, 3, 1]);
        assert!(q.is_empty());
    }

    #[test]
    fn aging_promotes_long_waiters() {
        let mut q = WaitingQueue::new(QueueConfig { aging_interval: Some(Duration(100)), ..Default::default() });
        q.push(entry(1, Priority::Batch, 0, 0));
        q.push(entry(2, Priority::High, 0, 450));
        // At 500 the batch request has aged four levels, to Critical.
        assert_eq!(drain(&mut q, Time(500)), [1, 2]);
    }

    #[test]
    fn urgent_deadlines_go_first_within_their_level_earliest_first() {
        let mut q = WaitingQueue::new(QueueConfig { aging_interval: None, deadline_urgency: Duration(100), ..Default::default() });
        q.push(entry(1, Priority::Low, 0, 0));
        q.push(Entry { deadline: Some(Time(1000)), ..entry(2, Priority::Low, 0, 0) });
        q.push(Entry { deadline: Some(Time(950)), ..entry(3, Priority::Low, 0, 0) });
        q.push(Entry { deadline: Some(Time(920)), ..entry(4, Priority::Batch, 0, 0) });
        q.push(entry(5, Priority::Normal, 0, 0));
        assert_eq!(drain(&mut q, Time(0)), [5, 1, 2, 3, 4], "deadlines far away wait their turn");
        for e in [entry(1, Priority::Low, 0, 0), entry(5, Priority::Normal, 0, 0)] {
            q.push(e);
        }
        q.push(Entry { deadline: Some(Time(1000)), ..entry(2, Priority::Low, 0, 0) });
        q.push(Entry { deadline: Some(Time(950)), ..entry(3, Priority::Low, 0, 0) });
        q.push(Entry { deadline: Some(Time(920)), ..entry(4, Priority::Batch, 0, 0) });
        assert_eq!(drain(&mut q, Time(900)), [5, 3, 2, 1, 4], "urgency orders a level and lifts nothing above it");
        q.push(Entry { deadline: Some(Time(950)), ..entry(6, Priority::Low, 0, 0) });
        q.push(entry(7, Priority::Low, 0, 0));
        q.push(Entry { deadline: Some(Time(990)), ..entry(8, Priority::Low, 0, 0) });
        assert_eq!(drain(&mut q, Time(960)), [8, 6, 7], "a missed deadline is no longer urgent");
    }

    #[test]
    fn nothing_lifts_a_request_above_its_ceiling() {
        let config = QueueConfig { aging_interval: Some(Duration(100)), short_job_tokens: 10, ..Default::default() };
        let mut q = WaitingQueue::new(config);
        let capped = |id, priority| Entry { max_priority: Priority::Low, ..entry(id, priority, 1, 0) };
        q.push(capped(1, Priority::Batch));
        q.push(Entry { deadline: Some(Time(10_050)), ..capped(2, Priority::Low) });
        q.push(entry(3, Priority::Normal, 0, 9_999));
        // Aged a hundred levels and short, the capped requests still stand at low.
        assert_eq!(q.effective_level(q.get(SeqId(1)).unwrap(), Time(10_000)), Priority::Low.level());
        assert_eq!(drain(&mut q, Time(10_000)), [3, 2, 1]);
    }

    #[test]
    fn tenants_share_by_weight() {
        let weights = [(1, 3.0)].into_iter().collect();
        let mut q = WaitingQueue::new(QueueConfig { aging_interval: None, tenant_weights: weights, ..Default::default() });
        for i in 0..400 {
            q.push(entry(i, Priority::Normal, (i % 2) as u32, i));
        }
        let first: Vec<u64> = drain(&mut q, Time(1000)).into_iter().take(200).collect();
        let heavy = first.iter().filter(|id| *id % 2 == 1).count();
        assert_eq!(heavy, 150, "weight 3 against 1 gets three quarters");
    }
}
