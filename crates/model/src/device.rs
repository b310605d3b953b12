//! Opening the GPU through wgpu.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::Device;

use burn_cubecl::cubecl::wgpu::wgpu;

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
    /// The largest subgroup size, when the device offers subgroup operations to the
    /// kernels.
    pub subgroup_max_size: Option<u32>,
    /// The smallest subgroup size, beside `subgroup_max_size`: kernels that split work by
    /// the subgroup's width need it fixed (equal to the largest).
    pub subgroup_min_size: Option<u32>,
    /// The largest buffer a kernel may bind (the device's storage-binding and buffer-size
    /// limits): bigger weight matrices are split into parts.
    pub max_binding_bytes: u64,
}

impl AdapterInfo {
    /// A CPU posing as a GPU (lavapipe, SwiftShader, WARP): the CPU backend is faster there.
    pub fn is_software(&self) -> bool {
        self.device_type == "Cpu"
    }
}

static WGPU: OnceLock<Result<Opened, String>> = OnceLock::new();

/// Whether the browser's device was given WebGPU's `subgroups` feature. wgpu 30 does not map
/// it (gfx-rs/wgpu#10146), so it neither asks for it nor reports it: the page asks for it
/// (web/core.js) and says so here before the device opens.
static BROWSER_SUBGROUPS: AtomicBool = AtomicBool::new(false);

/// Tells the device about to open in a browser that it has WebGPU's `subgroups` feature.
pub fn set_browser_subgroups(granted: bool) {
    BROWSER_SUBGROUPS.store(granted, Ordering::Relaxed);
}

/// A decode step is a few hundred small dispatches; submitting them in one go instead of
/// cubecl's default batches of 32 saves ~15 % per token on lavapipe.
/// CUBECL_WGPU_MAX_TASKS still overrides it.
fn options() -> burn::tensor::wgpu::WgpuOptions {
    let tasks = std::env::var("CUBECL_WGPU_MAX_TASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    Device::wgpu_options().tasks_max(tasks)
}

fn opened(
    init: Result<(Device, burn::tensor::wgpu::WgpuSetup), burn::tensor::wgpu::WgpuInitError>,
) -> Result<Opened, String> {
    let (device, setup) = init.map_err(|e| e.to_string())?;
    let info = setup.adapter.get_info();
    let subgroups = match info.backend {
        wgpu::Backend::BrowserWebGpu => BROWSER_SUBGROUPS.load(Ordering::Relaxed),
        _ => setup.device.features().contains(wgpu::Features::SUBGROUP),
    };
    let adapter = AdapterInfo {
        name: info.name,
        backend: format!("{:?}", setup.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info).trim().to_owned(),
        subgroup_max_size: subgroups.then_some(info.subgroup_max_size),
        subgroup_min_size: subgroups.then_some(info.subgroup_min_size),
        max_binding_bytes: {
            let limits = setup.device.limits();
            u64::from(limits.max_storage_buffer_binding_size).min(limits.max_buffer_size)
        },
    };
    Ok(Opened { device, adapter })
}

fn device_of(opened: &Result<Opened, String>) -> Result<Device, ModelError> {
    match opened {
        Ok(o) => Ok(o.device.clone()),
        Err(e) => Err(ModelError::Device(e.clone())),
    }
}

/// The process's wgpu device: the best adapter wgpu finds (a discrete GPU if there is one;
/// Mesa's lavapipe on machines without a GPU). Opened once; later calls return it again.
#[cfg(not(target_family = "wasm"))]
pub fn wgpu_device() -> Result<Device, ModelError> {
    device_of(WGPU.get_or_init(|| {
        // wgpu reports some failures (no driver, no adapter) by panicking.
        match std::panic::catch_unwind(|| options().init_with_setup()) {
            Ok(init) => opened(init),
            Err(panic) => Err(crate::error::panic_message(panic.as_ref())),
        }
    }))
}

/// [`wgpu_device`] for a thread that must not block: a browser's, where the adapter is
/// WebGPU's and asking for it is asynchronous.
pub async fn wgpu_device_async() -> Result<Device, ModelError> {
    if let Some(done) = WGPU.get() {
        return device_of(done);
    }
    let init = opened(options().init_with_setup_async().await);
    device_of(WGPU.get_or_init(|| init))
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

/// The device memory this process holds through the backend: bytes in live allocations
/// (weights, KV caches, a step's activations) and bytes reserved from the driver, the
/// backend's pools included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceMemory {
    pub in_use: u64,
    pub reserved: u64,
}

/// See [`DeviceMemory`]; `None` off the wgpu backend.
pub fn device_memory(device: &Device) -> Option<DeviceMemory> {
    let device = crate::kernel::cube_device(device)?;
    let usage = device.client().memory_report(burn_cubecl::cubecl::MemoryScope::Device).usage();
    Some(DeviceMemory { in_use: usage.bytes_in_use, reserved: usage.bytes_reserved })
}

/// Gives the backend's free pooled memory back to the driver (after a model was dropped,
/// or after a long prompt's activations).
pub fn release_device_memory(device: &Device) -> Result<(), ModelError> {
    let Some(device) = crate::kernel::cube_device(device) else { return Ok(()) };
    device.client().memory_cleanup().map_err(|e| ModelError::Backend(format!("{e:?}")))
}

/// The largest buffer a kernel binds on `device`: WebGPU's default (and lavapipe's limit)
/// where the adapter is unknown.
pub fn max_binding_bytes(device: &Device) -> usize {
    adapter_info(device).map_or(128 << 20, |a| a.max_binding_bytes.min(usize::MAX as u64) as usize)
}
