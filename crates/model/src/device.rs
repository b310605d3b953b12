//! Opening the GPU through wgpu.

use std::sync::OnceLock;

use burn::tensor::Device;

use crate::ModelError;

struct Opened {
    device: Device,
    adapter: AdapterInfo,
}

/// What wgpu says about the adapter behind the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterInfo {
    /// E.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// The graphics API: `Vulkan`, `Metal`, `Dx12`, `Gl`, `BrowserWebGpu`.
    pub backend: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `Cpu`, …
    pub device_type: String,
    pub driver: String,
}

static WGPU: OnceLock<Result<Opened, String>> = OnceLock::new();

/// The process's wgpu device: the best adapter wgpu finds (a discrete GPU if there is one;
/// Mesa's lavapipe on machines without a GPU). Opened once; later calls return it again.
pub fn wgpu_device() -> Result<Device, ModelError> {
    let opened = WGPU.get_or_init(|| {
        // wgpu reports some failures (no driver, no adapter) by panicking.
        // A decode step is a few hundred small dispatches; submitting them in one go instead
        // of cubecl's default batches of 32 saves ~15 % per token on lavapipe.
        // CUBECL_WGPU_MAX_TASKS still overrides it.
        let tasks = std::env::var("CUBECL_WGPU_MAX_TASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
        let init = std::panic::catch_unwind(|| Device::wgpu_options().tasks_max(tasks).init_with_setup());
        match init {
            Ok(Ok((device, setup))) => {
                let info = setup.adapter.get_info();
                let adapter = AdapterInfo {
                    name: info.name,
                    backend: format!("{:?}", setup.backend),
                    device_type: format!("{:?}", info.device_type),
                    driver: format!("{} {}", info.driver, info.driver_info).trim().to_owned(),
                };
                Ok(Opened { device, adapter })
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(panic) => Err(crate::llama::panic_message(panic.as_ref())),
        }
    });
    match opened {
        Ok(o) => Ok(o.device.clone()),
        Err(e) => Err(ModelError::Device(e.clone())),
    }
}

/// The adapter behind `device`, if it was opened by [`wgpu_device`].
pub fn adapter_info(device: &Device) -> Option<AdapterInfo> {
    match WGPU.get() {
        Some(Ok(o)) if &o.device == device => Some(o.adapter.clone()),
        _ => None,
    }
}

/// A one-line description of the adapter behind `device`: name, graphics API, type, driver.
pub fn adapter_name(device: &Device) -> String {
    match adapter_info(device) {
        Some(a) => format!("{} ({}, {}, driver {})", a.name, a.backend, a.device_type, a.driver),
        None => device.identity().map_or_else(|| format!("{device:?}"), |id| id.name),
    }
}
