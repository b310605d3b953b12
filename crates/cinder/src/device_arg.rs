//! `--device` and `--threads`, shared by every subcommand that runs a model.

use anyhow::Context;
use cinder_model::{Backend, DeviceChoice};

#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArg {
    /// Where models run: `gpu` (wgpu: Vulkan, Metal, DX12), `cpu`, or `auto`: the GPU unless
    /// the only adapter is a software one (lavapipe, SwiftShader, WARP) or there is none
    #[arg(long, env = "CINDER_DEVICE", default_value = "auto")]
    pub device: DeviceChoice,
    /// Threads of the CPU backend (0: one per core)
    #[arg(long, env = "CINDER_THREADS", default_value_t = 0)]
    pub threads: usize,
}

impl DeviceArg {
    /// Opens the device and says which it is.
    pub fn open(&self) -> anyhow::Result<Backend> {
        let backend = Backend::open(self.device, self.threads).with_context(|| format!("--device {}", self.device))?;
        eprintln!("device: {}", backend.name());
        Ok(backend)
    }
}
