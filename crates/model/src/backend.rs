//! Where a model runs: the GPU through wgpu (the WGSL kernels of `shaders/`), or the CPU
//! (the kernels of `cinder-cpu`), chosen at load.

use std::sync::Arc;

use burn::tensor::Device;
use cinder_cpu::Threads;

use crate::{DeviceMemory, ModelError};

/// What a user asks for: `--device auto|gpu|cpu`, `Engine.load(url, { device })`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The GPU, unless the only adapter is a software one (lavapipe, SwiftShader, WARP) or
    /// there is none: then the CPU, which runs the same model several times faster there.
    #[default]
    Auto,
    Gpu,
    Cpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "gpu" => Ok(Self::Gpu),
            "cpu" => Ok(Self::Cpu),
            other => Err(format!("unknown device {other:?} (auto, gpu or cpu)")),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Gpu => "gpu",
            Self::Cpu => "cpu",
        })
    }
}

/// A device models load on.
#[derive(Clone)]
pub enum Backend {
    Gpu(Device),
    /// The CPU's threads, shared by the models loaded on it.
    Cpu(Arc<Threads>),
}

impl Backend {
    /// The CPU with `threads` threads (0: one per core).
    pub fn cpu(threads: usize) -> Result<Self, ModelError> {
        Ok(Self::Cpu(Arc::new(Threads::new(threads).map_err(ModelError::Device)?)))
    }

    /// The device `choice` names (`threads` for the CPU; 0: one per core). `Auto` takes the
    /// CPU where wgpu finds no adapter or only a CPU one.
    #[cfg(not(target_family = "wasm"))]
    pub fn open(choice: DeviceChoice, threads: usize) -> Result<Self, ModelError> {
        match choice {
            DeviceChoice::Cpu => Self::cpu(threads),
            DeviceChoice::Gpu => Ok(Self::Gpu(crate::wgpu_device()?)),
            DeviceChoice::Auto => match crate::wgpu_device() {
                Ok(device) if !crate::adapter_info(&device).is_some_and(|a| a.is_software()) => Ok(Self::Gpu(device)),
                _ => Self::cpu(threads),
            },
        }
    }

    pub fn is_cpu(&self) -> bool {
        matches!(self, Self::Cpu(_))
    }

    /// The wgpu device, on the GPU.
    pub fn gpu(&self) -> Option<&Device> {
        match self {
            Self::Gpu(device) => Some(device),
            Self::Cpu(_) => None,
        }
    }

    /// `gpu` or `cpu`.
    pub fn kind(&self) -> DeviceChoice {
        match self {
            Self::Gpu(_) => DeviceChoice::Gpu,
            Self::Cpu(_) => DeviceChoice::Cpu,
        }
    }

    /// A one-line description: the adapter, or the CPU's threads.
    pub fn name(&self) -> String {
        match self {
            Self::Gpu(device) => crate::adapter_name(device),
            Self::Cpu(threads) => match threads.count() {
                1 => "CPU (1 thread)".into(),
                count => format!("CPU ({count} threads)"),
            },
        }
    }

    /// What the device is: the GPU's adapter, or the CPU described alike.
    pub fn describe(&self) -> Option<crate::AdapterInfo> {
        match self {
            Self::Gpu(device) => crate::adapter_info(device),
            Self::Cpu(_) => Some(crate::AdapterInfo {
                name: self.name(),
                backend: "Cpu".into(),
                device_type: "Cpu".into(),
                driver: "cinder-cpu".into(),
                subgroup_max_size: None,
                subgroup_min_size: None,
                max_binding_bytes: u64::MAX,
            }),
        }
    }

    /// The device memory held through the GPU backend (`None` on the CPU).
    pub fn memory(&self) -> Option<DeviceMemory> {
        self.gpu().and_then(crate::device_memory)
    }

    /// Gives the GPU backend's free pooled memory back to the driver.
    pub fn release_memory(&self) -> Result<(), ModelError> {
        self.gpu().map_or(Ok(()), crate::release_device_memory)
    }

    /// The largest buffer one KV layer may take: the GPU's binding limit; on the CPU, any.
    pub fn max_binding_bytes(&self) -> usize {
        self.gpu().map_or(usize::MAX, crate::max_binding_bytes)
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}
