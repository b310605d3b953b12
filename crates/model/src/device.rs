//! Opening the GPU through wgpu.

use std::sync::OnceLock;

use burn::tensor::Device;

use crate::ModelError;

struct Opened {
    device: Device,
    description: String,
}

static WGPU: OnceLock<Result<Opened, String>> = OnceLock::new();

/// The process's wgpu device: the best adapter wgpu finds (a discrete GPU if there is one;
/// Mesa's lavapipe on machines without a GPU). Opened once; later calls return it again.
pub fn wgpu_device() -> Result<Device, ModelError> {
    let opened = WGPU.get_or_init(|| {
        // wgpu reports some failures (no driver, no adapter) by panicking.
        let init = std::panic::catch_unwind(|| Device::wgpu_options().init_with_setup());
        match init {
            Ok(Ok((device, setup))) => {
                let info = setup.adapter.get_info();
                let description = format!(
                    "{} ({:?}, {:?}, driver {} {})",
                    info.name, setup.backend, info.device_type, info.driver, info.driver_info
                );
                Ok(Opened { device, description })
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

/// A one-line description of the adapter behind `device`: name, graphics API, type, driver.
pub fn adapter_name(device: &Device) -> String {
    match WGPU.get() {
        Some(Ok(o)) if &o.device == device => o.description.clone(),
        _ => device.identity().map_or_else(|| format!("{device:?}"), |id| id.name),
    }
}
