//! The waiting queue.
//!
//! Requests wait in lanes, one per (priority, tenant), each first-in first-out. The next
//! request is the head of the lane with the best *effective* priority, where a request
//! gains one level for every `aging_interval` it has waited (so nothing starves), ties going
//! to the tenant that has received least service relative to its weight (weighted fair
//! queuing), then to the earliest arrival. A request whose deadline is within
//! `deadline_urgency` (and not yet missed) jumps the lanes; several such requests go earliest
//! deadline first.

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
    /// Requests whose deadline is this close are served first, earliest deadline first.
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

/// A waiting request as the queue sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry {
    pub id: SeqId,
    pub priority: Priority,
    pub tenant: TenantId,
    pub arrival: Time,
    pub deadline: Option<Time>,
    /// Service the request will take, in tokens, for fair sharing.
    pub cost: usize,
}

#[derive(Debug, Clone, Copy)]
struct Queued {
    entry: Entry,
    /// Global arrival order, kept when a preempted request comes back.
    order: u64,
}

/// The waiting requests.
#[derive(Debug, Default)]
pub struct WaitingQueue {
    config: QueueConfig,
    lanes: BTreeMap<(Priority, TenantId), VecDeque<Queued>>,
    deadlines: BTreeSet<(Time, u64, SeqId)>,
    live: IdMap<SeqId, (Priority, TenantId, u64)>,
    /// Service received per tenant divided by its weight (virtual time).
    served: IdMap<TenantId, f64>,
    /// Non-empty lanes per tenant.
    tenant_lanes: IdMap<TenantId, usize>,
    next_order: u64,
    depth: [usize; 5],
}

impl WaitingQueue {
    pub fn new(config: QueueConfig) -> Self {
        Self { config, ..Default::default() }
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Waiting requests per priority level.
    pub fn depth_by_priority(&self) -> [usize; 5] {
        self.depth
    }

    pub fn contains(&self, id: SeqId) -> bool {
        self.live.contains_key(&id)
    }

    fn weight(&self, tenant: TenantId) -> f64 {
        self.config.tenant_weights.get(&tenant.0).copied().filter(|w| *w > 0.0).unwrap_or(1.0)
    }

    /// Adds a new request at the back of its lane.
    pub fn push(&mut self, entry: Entry) {
        let order = self.next_order;
        self.next_order += 1;
        self.insert(Queued { entry, order });
    }

    /// Puts a preempted request back where its original arrival order places it.
    pub fn requeue(&mut self, entry: Entry, order: u64) {
        self.insert(Queued { entry, order });
    }

    fn insert(&mut self, q: Queued) {
        let key = (q.entry.priority, q.entry.tenant);
        // A tenant coming back from idle starts level with the least-served active tenant,
        // instead of cashing in service it did not ask for while away.
        if !self.tenant_lanes.contains_key(&q.entry.tenant) {
            let floor = self.active_tenants().filter_map(|t| self.served.get(&t).copied()).reduce(f64::min);
            let served = self.served.entry(q.entry.tenant).or_insert(0.0);
            if let Some(floor) = floor {
                *served = served.max(floor);
            }
        }
        let lane = self.lanes.entry(key).or_default();
        if lane.is_empty() {
            *self.tenant_lanes.entry(q.entry.tenant).or_default() += 1;
        }
        let at = lane.partition_point(|other| other.order < q.order);
        lane.insert(at, q);
        if let Some(deadline) = q.entry.deadline {
            self.deadlines.insert((deadline, q.order, q.entry.id));
        }
        self.live.insert(q.entry.id, (q.entry.priority, q.entry.tenant, q.order));
        self.depth[q.entry.priority.level()] += 1;
    }

    fn active_tenants(&self) -> impl Iterator<Item = TenantId> + '_ {
        self.tenant_lanes.keys().copied()
    }

    /// The request that should run next, with its arrival order.
    pub fn peek(&self, now: Time) -> Option<(Entry, u64)> {
        // Requests that already missed their deadline lose the urgency: under overload,
        // serving them first would make every later request miss too.
        if let Some(&(deadline, order, id)) = self.deadlines.range((now, 0, SeqId(0))..).next() {
            if deadline <= now + self.config.deadline_urgency {
                let (priority, tenant, _) = self.live[&id];
                let lane = &self.lanes[&(priority, tenant)];
                let q = lane.iter().find(|q| q.order == order).expect("deadline index is in sync");
                return Some((q.entry, q.order));
            }
        }
        self.lanes
            .values()
            .filter_map(|lane| lane.front())
            .min_by(|a, b| {
                let key = |q: &Queued| (self.effective_level(&q.entry, now), q.order);
                let (la, oa) = key(a);
                let (lb, ob) = key(b);
                la.cmp(&lb)
                    .then_with(|| self.virtual_time(a.entry.tenant).total_cmp(&self.virtual_time(b.entry.tenant)))
                    .then(oa.cmp(&ob))
            })
            .map(|q| (q.entry, q.order))
    }

    fn virtual_time(&self, tenant: TenantId) -> f64 {
        self.served.get(&tenant).copied().unwrap_or(0.0)
    }

    /// The request's priority level after aging and the short-job bonus (0 is most urgent).
    pub fn effective_level(&self, entry: &Entry, now: Time) -> usize {
        let mut level = entry.priority.level();
        if let Some(interval) = self.config.aging_interval.filter(|i| i.0 > 0) {
            level = level.saturating_sub((now.since(entry.arrival).0 / interval.0) as usize);
        }
        if self.config.short_job_tokens > 0 && entry.cost <= self.config.short_job_tokens {
            level = level.saturating_sub(1);
        }
        level
    }

    /// Removes a request (admitted, cancelled or shed) and, when it was admitted, charges its
    /// tenant for the service.
    pub fn remove(&mut self, id: SeqId, admitted: bool) -> Option<Entry> {
        let (priority, tenant, order) = self.live.remove(&id)?;
        let lane = self.lanes.get_mut(&(priority, tenant)).expect("live request has a lane");
        let at = lane.iter().position(|q| q.order == order).expect("live request is in its lane");
        let q = lane.remove(at).expect("position is valid");
        if lane.is_empty() {
            self.lanes.remove(&(priority, tenant));
            let lanes = self.tenant_lanes.get_mut(&tenant).expect("tenant has lanes");
            *lanes -= 1;
            if *lanes == 0 {
                self.tenant_lanes.remove(&tenant);
            }
        }
        if let Some(deadline) = q.entry.deadline {
            self.deadlines.remove(&(deadline, order, id));
        }
        self.depth[priority.level()] -= 1;
        if admitted {
            let charge = q.entry.cost as f64 / self.weight(tenant);
            *self.served.entry(tenant).or_insert(0.0) += charge;
        }
        Some(q.entry)
    }

    /// Arrival time of the longest-waiting request. Lanes are in arrival order, so only
    /// their heads need looking at.
    pub fn oldest_arrival(&self) -> Option<Time> {
        self.lanes.values().filter_map(|l| l.front()).map(|q| q.entry.arrival).min()
    }

    /// Waiting requests from the least urgent (lowest priority, latest arrival) on: the
    /// order in which load shedding drops them.
    pub fn shedding_order(&self) -> Vec<SeqId> {
        let mut all: Vec<(Priority, u64, SeqId)> = self.live.iter().map(|(id, (p, _, o))| (*p, *o, *id)).collect();
        all.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        all.into_iter().map(|(_, _, id)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, priority: Priority, tenant: u32, arrival: u64) -> Entry {
        Entry { id: SeqId(id), priority, tenant: TenantId(tenant), arrival: Time(arrival), deadline: None, cost: 10 }
    }

    fn drain(q: &mut WaitingQueue, now: Time) -> Vec<u64> {
        std::iter::from_fn(|| {
            let (e, _) = q.peek(now)?;
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
    fn urgent_deadlines_go_first_earliest_first() {
        let mut q = WaitingQueue::new(QueueConfig { aging_interval: None, deadline_urgency: Duration(100), ..Default::default() });
        q.push(entry(1, Priority::Critical, 0, 0));
        q.push(Entry { deadline: Some(Time(1000)), ..entry(2, Priority::Batch, 0, 0) });
        q.push(Entry { deadline: Some(Time(950)), ..entry(3, Priority::Low, 0, 0) });
        assert_eq!(q.peek(Time(0)).unwrap().0.id, SeqId(1), "deadlines far away wait their turn");
        assert_eq!(drain(&mut q, Time(900)), [3, 2, 1]);
        q.push(Entry { deadline: Some(Time(950)), ..entry(4, Priority::Low, 0, 0) });
        q.push(entry(5, Priority::Critical, 0, 0));
        assert_eq!(drain(&mut q, Time(960)), [5, 4], "a missed deadline is no longer urgent");
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
