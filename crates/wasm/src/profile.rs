//! Where the page's engine steps spend their time: the host's share of each step (planning
//! and launching the kernels, awaiting the device, sampling) and the device time of every
//! kernel, as the page's `?profile=1` table shows them.

use cinder_model::profile::Profile;
use serde_json::json;

/// The host's clock around the three parts of the steps taken since profiling started.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct StepTimes {
    pub steps: u32,
    /// Planning the batch and encoding and submitting its kernels (wasm and WebGPU calls).
    pub launch_ms: f64,
    /// From the submit until the logits were read back: the device's work, and any queueing.
    pub wait_ms: f64,
    /// Sampling, streaming text and reporting to the scheduler.
    pub land_ms: f64,
}

impl StepTimes {
    pub fn add(&mut self, launch_ms: f64, wait_ms: f64, land_ms: f64) {
        self.steps += 1;
        self.launch_ms += launch_ms;
        self.wait_ms += wait_ms;
        self.land_ms += land_ms;
    }
}

/// `{"steps", "host": {"launch_ms", "wait_ms", "land_ms"}, "device_timestamps", "device_ms",
/// "kernels": [{"kernel", "dispatches", "ms"}]}`, totals over the profiled steps, kernels
/// with the most device time first.
pub fn profile_json(times: &StepTimes, profile: &Profile) -> String {
    let kernels: Vec<_> = profile
        .kernels
        .iter()
        .map(|k| json!({"kernel": k.kernel, "dispatches": k.dispatches, "ms": k.seconds * 1e3}))
        .collect();
    json!({
        "steps": times.steps,
        "host": {"launch_ms": times.launch_ms, "wait_ms": times.wait_ms, "land_ms": times.land_ms},
        "device_timestamps": profile.device_timestamps,
        "device_ms": profile.seconds() * 1e3,
        "kernels": kernels,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use cinder_model::profile::KernelTime;
    use serde_json::Value;

    use super::*;

    #[test]
    fn the_profile_carries_totals_per_kernel_and_the_hosts_parts_of_each_step() {
        let mut times = StepTimes::default();
        times.add(2.0, 10.0, 0.5);
        times.add(1.0, 8.0, 0.5);
        let profile = Profile {
            kernels: vec![
                KernelTime { kernel: "matmul_quant".into(), dispatches: 60, seconds: 0.012 },
                KernelTime { kernel: "rms_norm".into(), dispatches: 20, seconds: 0.002 },
            ],
            device_timestamps: true,
        };
        let json: Value = serde_json::from_str(&profile_json(&times, &profile)).unwrap();
        assert_eq!(json["steps"], 2);
        assert_eq!(json["host"]["launch_ms"], 3.0);
        assert_eq!(json["host"]["wait_ms"], 18.0);
        assert_eq!(json["host"]["land_ms"], 1.0);
        assert_eq!(json["device_timestamps"], true);
        assert!((json["device_ms"].as_f64().unwrap() - 14.0).abs() < 1e-9);
        assert_eq!(json["kernels"][0]["kernel"], "matmul_quant");
        assert_eq!(json["kernels"][0]["dispatches"], 60);
        assert!((json["kernels"][1]["ms"].as_f64().unwrap() - 2.0).abs() < 1e-9);
    }
}
