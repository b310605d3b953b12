//! The LoRA adapters an engine serves by name: each resident in a slot of its model (at most
//! `max_loras`), with the scale its rows run at. Unloading takes a name away from new
//! requests at once; its slot is emptied once no request of it is left.

use std::collections::BTreeMap;
use std::sync::Arc;

use cinder_model::{LoraAdapter, Model, RowAdapter};

/// One loaded adapter.
#[derive(Debug, Clone)]
struct Loaded {
    slot: u32,
    scale: f32,
    /// Salts its requests' prefix hashes: unique per load, so a reloaded adapter of the
    /// same name shares no cached blocks with the one before it.
    salt: u64,
    requests_total: u64,
    /// Unloading: new requests are refused; the slot empties when its last request ends.
    retiring: bool,
}

/// What the metrics say of one adapter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdapterMetrics {
    pub name: String,
    /// Sequences submitted with it since it was loaded (each choice of `n` counts).
    pub requests_total: u64,
    /// Its sequences running and waiting now.
    pub running: usize,
    pub waiting: usize,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Adapters {
    max: usize,
    loaded: BTreeMap<String, Loaded>,
    loads: u64,
}

/// An adapter a request runs with: its row adapter and its prefix-cache salt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Selected {
    pub row: RowAdapter,
    pub salt: u64,
}

impl Adapters {
    pub fn max(&self) -> usize {
        self.max
    }

    pub(crate) fn set_max(&mut self, max: usize) -> Result<(), String> {
        if self.loaded.len() > max {
            return Err(format!("{} LoRA adapters are loaded, more than max_loras {max}", self.loaded.len()));
        }
        self.max = max;
        Ok(())
    }

    /// Puts `adapter` in a free slot of `model` under `name`, its rows at `scale`.
    pub(crate) fn load(&mut self, model: &mut Model, name: &str, adapter: Arc<LoraAdapter>, scale: f32) -> Result<(), String> {
        if let Some(loaded) = self.loaded.get(name) {
            let why = if loaded.retiring { "is still unloading" } else { "is already loaded" };
            return Err(format!("a LoRA adapter named {name:?} {why}"));
        }
        if !scale.is_finite() {
            return Err(format!("the scale of LoRA adapter {name:?} must be a finite number; got {scale}"));
        }
        if self.loaded.len() >= self.max {
            return Err(format!("max_loras {} LoRA adapters are loaded; unload one first (or raise max_loras)", self.max));
        }
        let slot = (0..).find(|s| !self.loaded.values().any(|l| l.slot == *s)).expect("a slot below max_loras is free");
        model.set_adapter(slot as usize, Some(adapter)).map_err(|e| format!("loading LoRA adapter {name:?}: {e}"))?;
        self.loads += 1;
        let loaded = Loaded { slot, scale, salt: self.loads.wrapping_mul(0x9E37_79B9_7F4A_7C15), requests_total: 0, retiring: false };
        self.loaded.insert(name.to_owned(), loaded);
        Ok(())
    }

    /// Takes `name` from new requests; its slot is emptied once no request of it is left
    /// ([`Adapters::retire`]).
    pub(crate) fn unload(&mut self, name: &str) -> Result<(), String> {
        match self.loaded.get_mut(name) {
            Some(loaded) if !loaded.retiring => {
                loaded.retiring = true;
                Ok(())
            }
            _ => Err(format!("no LoRA adapter named {name:?} is loaded")),
        }
    }

    /// Empties the slots of unloading adapters whose slot no request runs (`in_use`). One
    /// the device fails to drop stays unloading, and is tried again next time.
    pub(crate) fn retire(&mut self, model: &mut Model, in_use: impl Fn(u32) -> bool) -> Result<(), String> {
        let done: Vec<(String, u32)> = self.loaded.iter().filter(|(_, l)| l.retiring && !in_use(l.slot)).map(|(n, l)| (n.clone(), l.slot)).collect();
        for (name, slot) in done {
            model.set_adapter(slot as usize, None).map_err(|e| format!("unloading LoRA adapter {name:?}: {e}"))?;
            self.loaded.remove(&name);
        }
        Ok(())
    }

    /// The adapter named `name`, for a new request.
    pub(crate) fn select(&self, name: &str) -> Result<Selected, String> {
        match self.loaded.get(name) {
            Some(l) if !l.retiring => Ok(Selected { row: RowAdapter { slot: l.slot, scale: l.scale }, salt: l.salt }),
            _ => Err(format!("no LoRA adapter named {name:?} is loaded")),
        }
    }

    /// Counts a sequence submitted with `name`.
    pub(crate) fn count(&mut self, name: &str) {
        if let Some(loaded) = self.loaded.get_mut(name) {
            loaded.requests_total += 1;
        }
    }

    /// The adapters new requests may name.
    pub fn names(&self) -> Vec<String> {
        self.loaded.iter().filter(|(_, l)| !l.retiring).map(|(n, _)| n.clone()).collect()
    }

    /// Each adapter's counts; `state(slot)` gives its sequences `(running, waiting)`.
    pub(crate) fn metrics(&self, state: impl Fn(u32) -> (usize, usize)) -> Vec<AdapterMetrics> {
        self.loaded
            .iter()
            .map(|(name, l)| {
                let (running, waiting) = state(l.slot);
                AdapterMetrics { name: name.clone(), requests_total: l.requests_total, running, waiting }
            })
            .collect()
    }
}
