//! Who a request comes from. The bearer key decides the tenant; the handlers apply its
//! priority cap and concurrent-request cap, the scheduler its rates and fair share.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cinder_scheduler::{Priority, TenantId};
use subtle::ConstantTimeEq;

use super::api::ApiError;
use super::config::{AbovePriority, DEFAULT_TENANT, ServeConfig, TenantConfig};

pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    max_priority: Priority,
    above_max_priority: AbovePriority,
    max_concurrent: Option<usize>,
    in_flight: AtomicUsize,
}

impl Tenant {
    fn new(id: TenantId, name: &str) -> Self {
        Self {
            id,
            name: name.to_owned(),
            max_priority: Priority::Critical,
            above_max_priority: AbovePriority::Lower,
            max_concurrent: None,
            in_flight: AtomicUsize::new(0),
        }
    }

    fn configured(index: usize, config: &TenantConfig) -> Self {
        Self {
            max_priority: config.max_priority,
            above_max_priority: config.above_max_priority,
            max_concurrent: config.max_concurrent,
            ..Self::new(TenantConfig::id(index), &config.name)
        }
    }

    /// The priority a request runs at: what it asked for (`None`: it did not ask, and runs
    /// at normal) at most the tenant's highest; asking above that is refused when the
    /// tenant's configuration says so.
    pub fn priority(&self, asked: Option<Priority>) -> Result<Priority, ApiError> {
        let wanted = asked.unwrap_or_default();
        if wanted >= self.max_priority {
            return Ok(wanted);
        }
        match (asked, self.above_max_priority) {
            (Some(asked), AbovePriority::Refuse) => Err(ApiError::priority_not_allowed(asked.name(), self.max_priority.name())),
            _ => Ok(self.max_priority),
        }
    }

    /// Counts a request in flight until the returned guard drops; `None` at the tenant's cap.
    pub fn enter(self: &Arc<Self>) -> Result<InFlight, ApiError> {
        let cap = self.max_concurrent.unwrap_or(usize::MAX);
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1))
            .map_err(|_| ApiError::too_many_concurrent(cap))?;
        Ok(InFlight(self.clone()))
    }
}

/// A request of a tenant in flight; dropping it (the response ended, the client left)
/// frees its place under `max_concurrent`.
pub struct InFlight(Arc<Tenant>);

impl InFlight {
    pub fn tenant(&self) -> &Tenant {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Tenants {
    /// The default tenant first, then the file's in order (their index is their id).
    all: Vec<Arc<Tenant>>,
    /// Each key and the index of its tenant.
    keys: Vec<(String, usize)>,
}

impl Tenants {
    /// The configured tenants, and `api_key` (`--api-key`) as the default tenant's key.
    /// With neither, no key is asked for and every request is the default tenant's.
    pub fn new(config: &ServeConfig, api_key: Option<&str>) -> Self {
        let mut all = vec![Arc::new(Tenant::new(TenantId(0), DEFAULT_TENANT))];
        let mut keys: Vec<(String, usize)> = api_key.map(|k| (k.to_owned(), 0)).into_iter().collect();
        for (index, tenant) in config.tenants.iter().enumerate() {
            all.push(Arc::new(Tenant::configured(index, tenant)));
            keys.extend(tenant.api_keys.iter().map(|k| (k.clone(), index + 1)));
        }
        Self { all, keys }
    }

    /// Whether requests must carry a key.
    pub fn need_key(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The tenant whose key is `given` (compared in constant time against every key), or
    /// the default tenant when no key is needed; `None` for a missing or unknown key.
    pub fn identify(&self, given: Option<&str>) -> Option<Arc<Tenant>> {
        if !self.need_key() {
            return Some(self.all[0].clone());
        }
        let given = given?.as_bytes();
        let mut found = None;
        for (key, index) in &self.keys {
            if bool::from(key.as_bytes().ct_eq(given)) {
                found = Some(*index);
            }
        }
        found.map(|index| self.all[index].clone())
    }

}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants(file: &str, api_key: Option<&str>) -> Tenants {
        let mut config = ServeConfig::parse(file).unwrap();
        config.resolve().unwrap();
        Tenants::new(&config, api_key)
    }

    #[test]
    fn keys_pick_tenants_and_caps_apply() {
        let open = tenants("", None);
        assert_eq!(open.identify(None).unwrap().name, DEFAULT_TENANT);
        let file = r#"
            [[tenants]]
            name = "alice"
            api_keys = ["ka1", "ka2"]
            max_priority = "normal"
            max_concurrent = 1
            [[tenants]]
            name = "bob"
            api_keys = ["kb"]
            max_priority = "low"
            above_max_priority = "refuse"
        "#;
        let t = tenants(file, Some("admin"));
        assert!(t.identify(None).is_none() && t.identify(Some("ka")).is_none() && t.identify(Some("")).is_none());
        assert_eq!(t.identify(Some("admin")).unwrap().id, TenantId(0));
        let alice = t.identify(Some("ka2")).unwrap();
        assert_eq!((alice.id, alice.name.as_str()), (TenantId(1), "alice"));
        assert_eq!(alice.priority(Some(Priority::Critical)).unwrap(), Priority::Normal, "lowered");
        assert_eq!(alice.priority(Some(Priority::Batch)).unwrap(), Priority::Batch);
        let bob = t.identify(Some("kb")).unwrap();
        assert_eq!(bob.priority(Some(Priority::High)).unwrap_err().status.as_u16(), 403);
        assert_eq!(bob.priority(None).unwrap(), Priority::Low, "not asking is not asking too high");
        let first = alice.enter().unwrap();
        assert_eq!(alice.enter().err().unwrap().status.as_u16(), 429, "at its cap");
        drop(first);
        assert!(alice.enter().is_ok(), "the place is free again");
        assert!(tenants(file, None).identify(Some("admin")).is_none());
    }
}
