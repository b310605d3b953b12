//! `/metrics` in Prometheus text format, with vLLM's metric names under a `cinder:` prefix.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use cinder_engine::openai::finish_reason;
use cinder_engine::{AdapterMetrics, EngineMetrics, Finished};
use cinder_model::DeviceMemory;

/// Cumulative-bucket histogram.
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    /// The samples, with `labels` (`tenant="a",`) before `le`.
    fn samples(&self, out: &mut String, name: &str, labels: &str) {
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", self.count);
        let plain = match labels.trim_end_matches(',') {
            "" => String::new(),
            labels => format!("{{{labels}}}"),
        };
        let _ = writeln!(out, "{name}_sum{plain} {}\n{name}_count{plain} {}", self.sum, self.count);
    }
}

/// A label value as Prometheus' text format writes it: backslash, double quote and line
/// feed escaped (a model's name is whatever its operator chose).
fn label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").into()
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

const LATENCY_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0];
const PER_TOKEN_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0];

/// Latencies of one model's requests.
struct Latencies {
    ttft: Histogram,
    tpot: Histogram,
    e2e: Histogram,
}

impl Default for Latencies {
    fn default() -> Self {
        Self { ttft: Histogram::new(LATENCY_BUCKETS), tpot: Histogram::new(PER_TOKEN_BUCKETS), e2e: Histogram::new(LATENCY_BUCKETS) }
    }
}

#[derive(Default)]
struct Recorded {
    /// By model name.
    latencies: BTreeMap<String, Latencies>,
    /// Refused requests by (reason, tenant); the tenant is empty when the key was wrong.
    rejected: BTreeMap<(String, String), u64>,
    /// Requests that ended, by (OpenAI finish reason, model, tenant).
    ended: BTreeMap<(&'static str, String, String), u64>,
    /// Answers by (route, HTTP status).
    answered: BTreeMap<(String, u16), u64>,
    /// Per tenant: the wait to start of requests that started, and prompt and generated
    /// tokens of requests that ended.
    tenants: BTreeMap<String, TenantRecord>,
}

struct TenantRecord {
    queue_time: Histogram,
    prompt_tokens: u64,
    generation_tokens: u64,
}

impl Default for TenantRecord {
    fn default() -> Self {
        Self { queue_time: Histogram::new(LATENCY_BUCKETS), prompt_tokens: 0, generation_tokens: 0 }
    }
}

/// What the HTTP layer records; the engines' own state comes in at render time.
#[derive(Default)]
pub struct ServerMetrics {
    recorded: Mutex<Recorded>,
}

impl ServerMetrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn finished(&self, model: &str, tenant: &str, f: &Finished) {
        let mut r = self.lock();
        *r.ended.entry((finish_reason(f.reason), model.to_owned(), tenant.to_owned())).or_default() += 1;
        let record = r.tenants.entry(tenant.to_owned()).or_default();
        record.prompt_tokens += f.prompt_tokens as u64;
        record.generation_tokens += f.completion_tokens as u64;
        if let Some(scheduled) = f.scheduled {
            record.queue_time.observe(scheduled.since(f.arrival).as_secs_f64());
        }
        let latencies = r.latencies.entry(model.to_owned()).or_default();
        if let Some(first) = f.first_token {
            latencies.ttft.observe(first.since(f.arrival).as_secs_f64());
            if f.completion_tokens > 1 {
                latencies.tpot.observe(f.finished.since(first).as_secs_f64() / (f.completion_tokens - 1) as f64);
            }
        }
        latencies.e2e.observe(f.finished.since(f.arrival).as_secs_f64());
    }

    /// An answer of the API route `endpoint` (`/v1/responses/{id}` as routed).
    pub fn answered(&self, endpoint: &str, status: u16) {
        *self.lock().answered.entry((endpoint.to_owned(), status)).or_default() += 1;
    }

    pub fn rejected(&self, tenant: &str, reason: &str) {
        *self.lock().rejected.entry((reason.to_owned(), tenant.to_owned())).or_default() += 1;
    }

    /// The text of `/metrics`: each model's engine (`(model name, its metrics)`), then what
    /// the HTTP layer recorded. Every model's series carries its `model_name`. With
    /// [`MetricNames::Vllm`], the series vLLM also has are written again under its names.
    pub fn render(&self, engines: &[(String, EngineMetrics)], memory: Option<DeviceMemory>, names: MetricNames) -> String {
        let mut out = String::new();
        if let Some(memory) = memory {
            for (name, help, value) in [
                ("cinder:device_memory_in_use_bytes", "Device memory in live allocations: every model's weights and KV cache, a step's activations.", memory.in_use),
                ("cinder:device_memory_reserved_bytes", "Device memory reserved from the driver, the backend's pools included.", memory.reserved),
            ] {
                header(&mut out, name, "gauge", help);
                let _ = writeln!(out, "{name} {value}");
            }
        }
        type Value = fn(&EngineMetrics) -> f64;
        let engine_metrics: [(&str, &str, &str, Value); 9] = [
            ("num_requests_running", "gauge", "Requests on the engine now.", |e| e.scheduler.running as f64),
            ("num_requests_waiting", "gauge", "Requests waiting to be scheduled.", |e| e.scheduler.waiting_requests as f64),
            ("kv_cache_usage_perc", "gauge", "Fraction of KV blocks held by live requests (1 is full).", |e| e.scheduler.kv_usage),
            ("prefix_cache_hit_rate", "gauge", "Fraction of looked-up prompt blocks found in the prefix cache.", |e| e.scheduler.prefix_cache.hit_rate()),
            ("num_preemptions_total", "counter", "Requests preempted (to be recomputed).", |e| e.scheduler.preemptions as f64),
            ("prompt_tokens_total", "counter", "Prompt tokens accepted.", |e| e.prompt_tokens_total as f64),
            ("generation_tokens_total", "counter", "Tokens generated.", |e| e.generation_tokens_total as f64),
            ("spec_decode_num_draft_tokens_total", "counter", "Speculative decoding: draft tokens proposed and verified.", |e| e.spec_draft_tokens_total as f64),
            (
                "spec_decode_num_accepted_tokens_total",
                "counter",
                "Speculative decoding: draft tokens accepted (generated without a step of their own).",
                |e| e.spec_accepted_tokens_total as f64,
            ),
        ];
        for (name, kind, help, value) in engine_metrics {
            for prefix in names.prefixes(name) {
                let name = format!("{prefix}:{name}");
                header(&mut out, &name, kind, help);
                for (model, engine) in engines {
                    let _ = writeln!(out, "{name}{{model_name=\"{}\"}} {}", label(model), value(engine));
                }
            }
        }
        let name = "cinder:lora_requests_total";
        header(&mut out, name, "counter", "Sequences submitted with each LoRA adapter since it was loaded.");
        for (model, engine) in engines {
            for adapter in &engine.adapters {
                let _ = writeln!(out, "{name}{{lora_name=\"{}\",model_name=\"{}\"}} {}", label(&adapter.name), label(model), adapter.requests_total);
            }
        }
        // The gateway's LoRA gauge, as vLLM writes it: the adapters with sequences running and
        // waiting in its labels, the time in its value (the endpoint picker reads the latest).
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        for prefix in names.prefixes("lora_requests_info") {
            let name = format!("{prefix}:lora_requests_info");
            header(&mut out, &name, "gauge", "LoRA adapters: the most loaded at once, and those running and waiting, in the labels.");
            for (model, engine) in engines.iter().filter(|(_, e)| e.max_loras > 0) {
                let with = |count: fn(&AdapterMetrics) -> usize| {
                    let names: Vec<&str> = engine.adapters.iter().filter(|a| count(a) > 0).map(|a| a.name.as_str()).collect();
                    label(&names.join(",")).into_owned()
                };
                let (running, waiting) = (with(|a| a.running), with(|a| a.waiting));
                let labels = format!("max_lora=\"{}\",model_name=\"{}\",running_lora_adapters=\"{running}\",waiting_lora_adapters=\"{waiting}\"", engine.max_loras, label(model));
                let _ = writeln!(out, "{name}{{{labels}}} {now}");
            }
        }
        if names == MetricNames::Vllm {
            // The inference gateway's endpoint picker reads these: KV use by vLLM's older
            // name too, and the pool's shape as labels.
            let name = "vllm:gpu_cache_usage_perc";
            header(&mut out, name, "gauge", "Fraction of KV blocks held by live requests (vllm:kv_cache_usage_perc's older name).");
            for (model, engine) in engines {
                let _ = writeln!(out, "{name}{{model_name=\"{}\"}} {}", label(model), engine.scheduler.kv_usage);
            }
            let name = "vllm:cache_config_info";
            header(&mut out, name, "gauge", "The KV cache's configuration, in its labels.");
            for (model, engine) in engines {
                let (block_size, blocks) = (engine.scheduler.kv_block_size, engine.scheduler.kv_blocks_total);
                let _ = writeln!(out, "{name}{{block_size=\"{block_size}\",model_name=\"{}\",num_gpu_blocks=\"{blocks}\"}} 1", label(model));
            }
        }
        let r = self.lock();
        header(&mut out, "cinder:request_rejected_total", "counter", "Requests refused, by reason and tenant.");
        for ((reason, tenant), count) in &r.rejected {
            let (reason, tenant) = (label(reason), label(tenant));
            let _ = writeln!(out, "cinder:request_rejected_total{{reason=\"{reason}\",tenant=\"{tenant}\"}} {count}");
        }
        header(&mut out, "cinder:api_requests_total", "counter", "Answers of the API routes, by endpoint and HTTP status.");
        for ((endpoint, status), count) in &r.answered {
            let _ = writeln!(out, "cinder:api_requests_total{{endpoint=\"{}\",status=\"{status}\"}} {count}", label(endpoint));
        }
        let help = "Requests that ended, by finish reason (error: the device kept failing), model and tenant.";
        for prefix in names.prefixes("request_success_total") {
            let name = format!("{prefix}:request_success_total");
            header(&mut out, &name, "counter", help);
            for ((reason, model, tenant), count) in &r.ended {
                let labels = format!("finished_reason=\"{reason}\",model_name=\"{}\",tenant=\"{}\"", label(model), label(tenant));
                let _ = writeln!(out, "{name}{{{labels}}} {count}");
            }
        }
        for (name, help, value) in [
            ("cinder:tenant_prompt_tokens_total", "Prompt tokens of ended requests, by tenant.", (|t: &TenantRecord| t.prompt_tokens) as fn(&TenantRecord) -> u64),
            ("cinder:tenant_generation_tokens_total", "Tokens generated for ended requests, by tenant.", |t| t.generation_tokens),
        ] {
            header(&mut out, name, "counter", help);
            for (tenant, record) in &r.tenants {
                let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {}", label(tenant), value(record));
            }
        }
        let queue_time = "cinder:request_queue_time_seconds";
        header(&mut out, queue_time, "histogram", "Time from arrival to joining the running batch, by tenant.");
        for (tenant, record) in &r.tenants {
            record.queue_time.samples(&mut out, queue_time, &format!("tenant=\"{}\",", label(tenant)));
        }
        let latencies: [(&str, &str, fn(&Latencies) -> &Histogram); 3] = [
            ("time_to_first_token_seconds", "Time from arrival to the first token, by model.", |l| &l.ttft),
            ("time_per_output_token_seconds", "Mean time between output tokens of a request, by model.", |l| &l.tpot),
            ("e2e_request_latency_seconds", "Time from arrival to the end of a request, by model.", |l| &l.e2e),
        ];
        for (name, help, histogram) in latencies {
            for prefix in names.prefixes(name) {
                let name = format!("{prefix}:{name}");
                header(&mut out, &name, "histogram", help);
                for (model, recorded) in &r.latencies {
                    histogram(recorded).samples(&mut out, &name, &format!("model_name=\"{}\",", label(model)));
                }
            }
        }
        out
    }
}

/// The names `/metrics` writes its series under (`--metrics-names`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MetricNames {
    /// `cinder:*` only.
    #[default]
    Cinder,
    /// `cinder:*`, and again as `vllm:*` the series vLLM has (queue, running, KV use, tokens,
    /// latencies), with `vllm:cache_config_info` and `vllm:gpu_cache_usage_perc`: what the
    /// Kubernetes inference gateway's endpoint picker reads from a vLLM server.
    Vllm,
}

impl MetricNames {
    /// The prefixes series `name` is written under: vLLM has no prefix cache hit rate gauge.
    fn prefixes(self, name: &str) -> &'static [&'static str] {
        match self {
            Self::Vllm if name != "prefix_cache_hit_rate" => &["cinder", "vllm"],
            _ => &["cinder"],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_every_metric_is_rendered() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.5, 5.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, vec![1, 2]);
        let m = ServerMetrics::default();
        m.rejected("alice", "overloaded");
        m.answered("/v1/responses", 200);
        m.answered("/v1/responses", 200);
        let failed = Finished {
            reason: cinder_scheduler::FinishReason::Failed,
            error: Some("device lost".into()),
            text: String::new(),
            prompt_tokens: 3,
            completion_tokens: 0,
            arrival: cinder_scheduler::Time(0),
            scheduled: None,
            first_token: None,
            finished: cinder_scheduler::Time(5),
            preemptions: 0,
            speculative: None,
            embedding: None,
            stop_sequence: None,
        };
        m.finished("tiny", "alice", &failed);
        m.finished("tiny", "bob", &Finished { scheduled: Some(cinder_scheduler::Time(2_000_000)), ..failed.clone() });
        let engines = [("tiny".into(), EngineMetrics::default()), ("other".into(), EngineMetrics::default())];
        let text = m.render(&engines, Some(DeviceMemory { in_use: 5, reserved: 8 }), MetricNames::Cinder);
        assert!(!text.contains("vllm:"), "{text}");
        assert!(text.contains("cinder:device_memory_in_use_bytes 5\n") && text.contains("cinder:device_memory_reserved_bytes 8\n"));
        for name in ["num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "prefix_cache_hit_rate",
            "num_preemptions_total", "prompt_tokens_total", "generation_tokens_total", "time_to_first_token_seconds_count",
            "spec_decode_num_draft_tokens_total", "spec_decode_num_accepted_tokens_total",
            "time_per_output_token_seconds_bucket", "e2e_request_latency_seconds_sum"] {
            assert!(text.contains(&format!("cinder:{name}")), "{name} missing");
        }
        assert!(text.contains("cinder:request_rejected_total{reason=\"overloaded\",tenant=\"alice\"} 1"));
        assert!(text.contains("cinder:api_requests_total{endpoint=\"/v1/responses\",status=\"200\"} 2"), "{text}");
        assert!(text.contains("cinder:request_success_total{finished_reason=\"error\",model_name=\"tiny\",tenant=\"alice\"} 1"));
        assert!(text.contains("cinder:num_requests_running{model_name=\"other\"} 0"), "every model's engine: {text}");
        assert!(text.contains("cinder:e2e_request_latency_seconds_count{model_name=\"tiny\"} 2"), "{text}");
        assert!(text.contains("cinder:tenant_prompt_tokens_total{tenant=\"bob\"} 3"));
        assert!(text.contains("cinder:request_queue_time_seconds_bucket{tenant=\"bob\",le=\"2.5\"} 1"), "{text}");
        assert!(text.contains("cinder:request_queue_time_seconds_count{tenant=\"alice\"} 0"));
    }

    /// `--metrics-names vllm`: the gateway's series under vLLM's names beside cinder's.
    #[test]
    fn vllm_names_repeat_the_series_vllm_has() {
        let mut engine = EngineMetrics::default();
        (engine.scheduler.waiting_requests, engine.scheduler.running, engine.scheduler.kv_usage) = (3, 2, 0.25);
        engine.max_loras = 4;
        engine.adapters = vec![
            AdapterMetrics { name: "sql".into(), requests_total: 7, running: 2, waiting: 1 },
            AdapterMetrics { name: "chat".into(), requests_total: 1, running: 0, waiting: 3 },
            AdapterMetrics { name: "idle".into(), requests_total: 0, running: 0, waiting: 0 },
        ];
        (engine.scheduler.kv_block_size, engine.scheduler.kv_blocks_total) = (16, 1000);
        let text = ServerMetrics::default().render(&[("tiny".into(), engine)], None, MetricNames::Vllm);
        for line in [
            "vllm:num_requests_waiting{model_name=\"tiny\"} 3",
            "vllm:num_requests_running{model_name=\"tiny\"} 2",
            "vllm:kv_cache_usage_perc{model_name=\"tiny\"} 0.25",
            "vllm:gpu_cache_usage_perc{model_name=\"tiny\"} 0.25",
            "vllm:cache_config_info{block_size=\"16\",model_name=\"tiny\",num_gpu_blocks=\"1000\"} 1",
            "cinder:num_requests_waiting{model_name=\"tiny\"} 3",
            "# TYPE vllm:time_to_first_token_seconds histogram",
            "cinder:lora_requests_total{lora_name=\"sql\",model_name=\"tiny\"} 7",
            "vllm:lora_requests_info{max_lora=\"4\",model_name=\"tiny\",running_lora_adapters=\"sql\",waiting_lora_adapters=\"sql,chat\"} ",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
        assert!(!text.contains("vllm:prefix_cache_hit_rate"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("plain"), "plain");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let text = ServerMetrics::default().render(&[("x\"\n".into(), EngineMetrics::default())], None, MetricNames::Cinder);
        assert!(text.contains("cinder:num_requests_running{model_name=\"x\\\"\\n\"} 0"), "{text}");
    }
}
