//! Who a request comes from. The bearer key decides the tenant; the handlers apply its
//! priority cap, concurrent-request cap and rates (one set of token buckets for every
//! served model), the scheduler its fair share.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cinder_scheduler::admission::{Limited, RateLimiter};
use cinder_scheduler::{Priority, TenantId, Time};
use subtle::ConstantTimeEq;

use super::api::ApiError;
use super::config::{AbovePriority, DEFAULT_TENANT, ServeConfig, TenantConfig};

pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    max_priority: Priority,
    above_max_priority: AbovePriority,
    max_concurrent: Option<usize>,
    /// The LoRA adapters it may run with (`None`: any).
    loras: Option<Vec<String>>,
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
            loras: None,
            in_flight: AtomicUsize::new(0),
        }
    }

    fn configured(index: usize, config: &TenantConfig) -> Self {
        Self {
            max_priority: config.max_priority,
            above_max_priority: config.above_max_priority,
            max_concurrent: config.max_concurrent,
            loras: config.loras.clone(),
            ..Self::new(TenantConfig::id(index), &config.name)
        }
    }

    /// The most urgent level its requests may stand at in the queue.
    pub fn max_priority(&self) -> Priority {
        self.max_priority
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

    /// Refuses LoRA adapter `name` unless the tenant may run with it.
    pub fn check_adapter(&self, name: &str) -> Result<(), ApiError> {
        match &self.loras {
            Some(allowed) if !allowed.iter().any(|a| a == name) => {
                Err(ApiError::forbidden(format!("tenant {:?} may not run with LoRA adapter {name:?}", self.name)))
            }
            _ => Ok(()),
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

/// The header in which a trusted gateway names a request's tenant (Kubernetes' inference
/// gateway's fairness id).
pub const FAIRNESS_HEADER: &str = "x-gateway-inference-fairness-id";

/// Whose a key is.
#[derive(Clone, Copy)]
enum KeyOf {
    /// The tenant at this index.
    Tenant(usize),
    /// The trusted gateway's (`[gateway] api_keys`).
    Gateway,
}

pub struct Tenants {
    /// The default tenant first, then the file's in order (their index is their id).
    all: Vec<Arc<Tenant>>,
    /// Each key and whose it is.
    keys: Vec<(String, KeyOf)>,
    /// Whether the gateway's requests run as the tenant its fairness header names.
    fairness_header: bool,
    rates: Arc<Mutex<RateLimiter>>,
    /// The rate limiter's time origin.
    started: std::time::Instant,
}

impl Tenants {
    /// The configured tenants, and `api_key` (`--api-key`) as the default tenant's key.
    /// With neither, no key is asked for and every request is the default tenant's. The
    /// tenants' rates are `rates`. A tenant's key equal to `api_key` is refused: it would
    /// open the admin routes.
    pub fn new(config: &ServeConfig, api_key: Option<&str>, rates: RateLimiter) -> Result<Self, String> {
        let mut all = vec![Arc::new(Tenant::new(TenantId(0), DEFAULT_TENANT))];
        let mut keys: Vec<(String, KeyOf)> = api_key.map(|k| (k.to_owned(), KeyOf::Tenant(0))).into_iter().collect();
        for (index, tenant) in config.tenants.iter().enumerate() {
            if let Some(admin) = api_key
                && tenant.api_keys.iter().any(|k| k == admin)
            {
                return Err(format!("tenant {:?} has the server's --api-key among its keys; give it keys of its own", tenant.name));
            }
            all.push(Arc::new(Tenant::configured(index, tenant)));
            keys.extend(tenant.api_keys.iter().map(|k| (k.clone(), KeyOf::Tenant(index + 1))));
        }
        if api_key.is_some_and(|admin| config.gateway.api_keys.iter().any(|k| k == admin)) {
            return Err("the gateway has the server's --api-key among its keys; give it keys of its own".into());
        }
        keys.extend(config.gateway.api_keys.iter().map(|k| (k.clone(), KeyOf::Gateway)));
        let fairness_header = config.gateway.fairness_header;
        Ok(Self { all, keys, fairness_header, rates: Arc::new(Mutex::new(rates)), started: std::time::Instant::now() })
    }

    /// Takes one request and `tokens` (its sequences' prompts and most new tokens) from
    /// `tenant`'s buckets. They go back when the returned [`Taken`] drops uncommitted.
    pub fn take_rate(&self, tenant: &Tenant, tokens: usize) -> Result<Taken, ApiError> {
        let now = Time(self.started.elapsed().as_micros() as u64);
        let taken = self.rates.lock().unwrap_or_else(|e| e.into_inner()).take(tenant.id, tokens, now);
        match taken {
            Ok(()) => Ok(Taken { rates: Some(self.rates.clone()), tenant: tenant.id, tokens }),
            Err(Limited::Later { what, retry_after }) => Err(ApiError::rate_limited(what, retry_after.as_secs_f64())),
            Err(Limited::Never { what, burst }) => Err(ApiError::exceeds_burst(what, tokens, burst)),
        }
    }

    /// Whether requests must carry a key.
    pub fn need_key(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The tenant whose key is `given` (compared in constant time against every key), or
    /// the default tenant when no key is needed; `None` for a missing or unknown key. A
    /// request with the gateway's key runs as the tenant `fairness_id` names when
    /// `[gateway] fairness_header` is on (the default tenant for no name or another name);
    /// anyone else's `fairness_id` is ignored.
    pub fn identify(&self, given: Option<&str>, fairness_id: Option<&str>) -> Option<Arc<Tenant>> {
        if !self.need_key() {
            return Some(self.all[0].clone());
        }
        let given = given?.as_bytes();
        let mut found = None;
        for (key, owner) in &self.keys {
            if bool::from(key.as_bytes().ct_eq(given)) {
                found = Some(*owner);
            }
        }
        match found? {
            KeyOf::Tenant(index) => Some(self.all[index].clone()),
            KeyOf::Gateway => {
                let named = fairness_id.filter(|_| self.fairness_header).and_then(|name| self.all[1..].iter().find(|t| t.name == name));
                Some(named.unwrap_or(&self.all[0]).clone())
            }
        }
    }

}

/// A request's share of its tenant's rates, given back on drop unless the request was
/// admitted ([`commit`](Self::commit)).
pub struct Taken {
    rates: Option<Arc<Mutex<RateLimiter>>>,
    tenant: TenantId,
    tokens: usize,
}

impl Taken {
    pub fn commit(mut self) {
        self.rates = None;
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let Some(rates) = self.rates.take() {
            rates.lock().unwrap_or_else(|e| e.into_inner()).give_back(self.tenant, self.tokens);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants(file: &str, api_key: Option<&str>) -> Tenants {
        let mut config = ServeConfig::parse(file).unwrap();
        config.resolve().unwrap();
        Tenants::new(&config, api_key, config.rate_limiter(100)).unwrap()
    }

    #[test]
    fn keys_pick_tenants_and_caps_apply() {
        let open = tenants("", None);
        assert_eq!(open.identify(None, None).unwrap().name, DEFAULT_TENANT);
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
        assert!(t.identify(None, None).is_none() && t.identify(Some("ka"), None).is_none() && t.identify(Some(""), None).is_none());
        assert_eq!(t.identify(Some("admin"), None).unwrap().id, TenantId(0));
        let alice = t.identify(Some("ka2"), None).unwrap();
        assert_eq!((alice.id, alice.name.as_str()), (TenantId(1), "alice"));
        assert_eq!(alice.priority(Some(Priority::Critical)).unwrap(), Priority::Normal, "lowered");
        assert_eq!(alice.priority(Some(Priority::Batch)).unwrap(), Priority::Batch);
        let bob = t.identify(Some("kb"), None).unwrap();
        assert_eq!(bob.priority(Some(Priority::High)).unwrap_err().status.as_u16(), 403);
        assert_eq!(bob.priority(None).unwrap(), Priority::Low, "not asking is not asking too high");
        let first = alice.enter().unwrap();
        assert_eq!(alice.enter().err().unwrap().status.as_u16(), 429, "at its cap");
        drop(first);
        assert!(alice.enter().is_ok(), "the place is free again");
        assert!(tenants(file, None).identify(Some("admin"), None).is_none());
        let mut config = ServeConfig::parse(file).unwrap();
        config.resolve().unwrap();
        let clash = Tenants::new(&config, Some("kb"), config.rate_limiter(100)).err().unwrap();
        assert!(clash.contains("\"bob\" has the server's --api-key"), "{clash}");
    }

    /// The gateway's key with `fairness_header` on runs a request as the tenant its header
    /// names (the default tenant for none or an unknown one); a tenant's header is ignored,
    /// and with the setting off so is the gateway's.
    #[test]
    fn only_the_gateway_names_a_tenant_in_its_fairness_header() {
        let file = |on: bool| {
            format!(
                "[gateway]\nfairness_header = {on}\napi_keys = [\"gw\"]\n[[tenants]]\nname = \"alice\"\napi_keys = [\"ka\"]\n[[tenants]]\nname = \"bob\"\napi_keys = [\"kb\"]"
            )
        };
        let t = tenants(&file(true), Some("admin"));
        let name = |key: &str, header: Option<&str>| t.identify(Some(key), header).map(|t| t.name.clone());
        assert_eq!(name("gw", Some("bob")).as_deref(), Some("bob"));
        assert_eq!(name("gw", Some("mallory")).as_deref(), Some(DEFAULT_TENANT));
        assert_eq!(name("gw", None).as_deref(), Some(DEFAULT_TENANT));
        assert_eq!(name("ka", Some("bob")).as_deref(), Some("alice"), "a client cannot name its tenant");
        assert_eq!(name("nope", Some("bob")), None);
        let off = tenants(&file(false), None);
        assert_eq!(off.identify(Some("gw"), Some("bob")).unwrap().name, DEFAULT_TENANT);
        let mut config = ServeConfig::parse("[gateway]\nfairness_header = true").unwrap();
        assert!(config.resolve().unwrap_err().contains("`gateway.fairness_header` needs `gateway.api_keys`"));
        let mut shared = ServeConfig::parse("[gateway]\napi_keys = [\"k\"]\n[[tenants]]\nname = \"a\"\napi_keys = [\"k\"]").unwrap();
        assert!(shared.resolve().unwrap_err().contains("also a tenant's"));
        assert!(ServeConfig::parse(&file(true)).unwrap().to_toml().contains("api_keys = [\"***\"]"));
    }

    #[test]
    fn rates_are_shared_given_back_and_never_passing_requests_are_told_so() {
        let file = r#"
            [[tenants]]
            name = "alice"
            api_keys = ["ka"]
            tokens_per_second = 10.0
            token_burst = 100.0
        "#;
        let t = tenants(file, None);
        let alice = t.identify(Some("ka"), None).unwrap();
        let error = t.take_rate(&alice, 101).err().unwrap();
        assert_eq!((error.status.as_u16(), error.code.as_deref()), (400, Some("exceeds_burst")), "{}", error.message);
        assert!(error.message.contains("token_burst"), "{}", error.message);
        let held = t.take_rate(&alice, 60).unwrap();
        assert_eq!(t.take_rate(&alice, 60).err().unwrap().status.as_u16(), 429);
        drop(held);
        t.take_rate(&alice, 60).unwrap().commit();
        assert_eq!(t.take_rate(&alice, 60).err().unwrap().status.as_u16(), 429, "committed: not given back");
    }
}
