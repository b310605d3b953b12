//! Device time per kernel over a stretch of work (`cinder bench --profile`).
//!
//! Every kernel launched while a [`Profiler`] runs is bracketed by the runtime with
//! timestamp queries where the adapter has them, else with the host's clock around a
//! blocking submit (which also counts submission and waiting, so only the shares mean
//! much). The measurements are read when it finishes, so kernels still run back to
//! back while they are taken.

use std::sync::{Arc, Mutex};

use burn_cubecl::cubecl::config::{TypeNameFormatLevel, type_name_format};
#[cfg(not(target_family = "wasm"))]
use burn_cubecl::cubecl::future::block_on;
use burn_cubecl::cubecl::logging::{Duration, LaunchObservation, LaunchObserver, ProfileDuration, TimingMethod, TimingRequest};

/// One kernel's launches in a profile.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    /// The WGSL kernel's name (`shaders/NAME.wgsl`) or, for Burn's own kernels, its type.
    pub kernel: String,
    pub dispatches: usize,
    pub seconds: f64,
}

/// The kernels of a profiled stretch of work, the most time first.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub kernels: Vec<KernelTime>,
    /// Whether every launch was timed on the device (timestamp queries); else some or all
    /// were timed by the host's clock.
    pub device_timestamps: bool,
}

impl Profile {
    pub fn seconds(&self) -> f64 {
        self.kernels.iter().map(|k| k.seconds).sum()
    }
}

#[derive(Default)]
struct Recorder {
    /// Measurements not read yet, taken on the device.
    pending: Mutex<Vec<(&'static str, ProfileDuration)>>,
    /// Measurements the runtime read itself (it does when its own profiling log is on).
    read: Mutex<Vec<(&'static str, Duration, TimingMethod)>>,
}

fn take<T>(list: &Mutex<Vec<T>>) -> Vec<T> {
    std::mem::take(&mut *list.lock().unwrap_or_else(|e| e.into_inner()))
}

impl LaunchObserver for Recorder {
    fn launched(&self, _kernel: &'static str) {}

    fn timing(&self) -> TimingRequest {
        TimingRequest::Deferred
    }

    fn profiled(&self, kernel: &'static str, profile: ProfileDuration) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).push((kernel, profile));
    }

    fn timed(&self, kernel: &'static str, duration: Duration, method: TimingMethod) {
        self.read.lock().unwrap_or_else(|e| e.into_inner()).push((kernel, duration, method));
    }
}

/// Times every kernel launched in this process (on any thread) from [`Profiler::start`]
/// to [`Profiler::finish`].
pub struct Profiler {
    recorder: Arc<Recorder>,
    observation: LaunchObservation,
}

impl Profiler {
    pub fn start() -> Self {
        let recorder = Arc::new(Recorder::default());
        Self { observation: LaunchObservation::new(recorder.clone()), recorder }
    }

    /// Stops timing and reads the measurements (blocking until the device reaches them).
    #[cfg(not(target_family = "wasm"))]
    pub fn finish(self) -> Profile {
        block_on(self.read())
    }

    /// Stops timing and reads the measurements once the device reaches them (a browser's
    /// thread must not block).
    pub async fn read(self) -> Profile {
        drop(self.observation);
        let mut read = take(&self.recorder.read);
        for (kernel, measurement) in take(&self.recorder.pending) {
            let method = measurement.timing_method();
            // A window the device never closed (a dropped launch) counts as no time.
            let ticks = measurement.resolve().await;
            read.push((kernel, ticks.map_or(Duration::ZERO, |t| t.duration()), method));
        }
        let device_timestamps = read.iter().all(|(_, _, method)| *method == TimingMethod::Device);
        let mut kernels: Vec<KernelTime> = Vec::new();
        for (kernel, duration, _) in read {
            let name = type_name_format(kernel, TypeNameFormatLevel::Short);
            match kernels.iter_mut().find(|k| k.kernel == name) {
                Some(k) => {
                    k.dispatches += 1;
                    k.seconds += duration.as_secs_f64();
                }
                None => kernels.push(KernelTime { kernel: name, dispatches: 1, seconds: duration.as_secs_f64() }),
            }
        }
        kernels.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        Profile { kernels, device_timestamps }
    }
}
