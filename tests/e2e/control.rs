//! The serving control plane through its doors: `--config` files and `--print-config`,
//! tenants told apart by API key (priority caps, rates with `Retry-After`, concurrent-request
//! caps, per-tenant metrics), every batching policy serving, and `logit_bias`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::serve::{Server, http, tiny_model};

fn cinder(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cinder")).args(args).output().expect("running cinder")
}

fn write_config(test: &str, text: &str) -> PathBuf {
    let path = crate::scratch_dir(test).join("cinder.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn config_files_are_checked_and_flags_override_them() {
    let file = write_config(
        "config-print",
        r#"
        [scheduler]
        policy = "adaptive"
        max_running = 16
        max_waiting = 100

        [kv_cache]
        prefix_caching = false

        [[tenants]]
        name = "alice"
        api_keys = ["sk-alice"]
        weight = 2
        "#,
    );
    let out = cinder(&["serve", "--config", arg(&file), "--max-running", "8", "--print-config"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    for line in ["policy = \"adaptive\"", "max_running = 8", "min_running = 1", "max_waiting = 100", "prefix_caching = false", "weight = 2.0", "api_keys = [\"***\"]"] {
        assert!(printed.contains(line), "{line} in {printed}");
    }
    assert!(!printed.contains("sk-alice"), "{printed}");
    // What it prints is a config file that gives the same configuration.
    let again = write_config("config-print-again", &printed);
    let out = cinder(&["serve", "--config", arg(&again), "--print-config"]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), printed);

    for (text, expected) in [
        ("[scheduler]\nmax_runing = 3", "unknown field `max_runing`"),
        ("[scheduler]\npolicy = \"fastest\"", "unknown variant `fastest`"),
        ("[[tenants]]\nname = \"a\"\napi_keys = [\"k\"]\nmax_priority = \"top\"", "unknown variant `top`"),
        ("[scheduler]\npolicy = \"fixed\"\nmax_running = 3", "`scheduler.max_running` does not apply to policy `fixed`"),
        ("[[tenants]]\nname = \"a\"\napi_keys = [\"k\"]\nrequests_per_second = -1.0", "`tenants[0].requests_per_second` must be a positive number"),
        ("not toml at all", "TOML parse error"),
    ] {
        let file = write_config("config-bad", text);
        let out = cinder(&["serve", "--config", arg(&file)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected) && stderr.contains("cinder.toml"), "{text:?}: {stderr}");
    }
    let out = cinder(&["serve", "--config", "/nonexistent/cinder.toml"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading the config file /nonexistent/cinder.toml"));
}

#[test]
fn tenants_are_told_apart_by_key_and_held_to_their_limits() {
    let file = write_config(
        "tenants",
        r#"
        [[tenants]]
        name = "alice"
        api_keys = ["sk-alice"]
        max_priority = "normal"
        requests_per_second = 0.2

        [[tenants]]
        name = "bob"
        api_keys = ["sk-bob", "sk-bob-2"]
        max_priority = "low"
        above_max_priority = "refuse"
        max_concurrent = 1
        "#,
    );
    let server = Server::start(&tiny_model("tenants"), &["--config", arg(&file), "--api-key", "admin"]);
    let as_key = |key: &str, body: &str| {
        let bearer = format!("Bearer {key}");
        server.request("POST", "/v1/completions", &[("Authorization", &bearer)], body)
    };
    let short = r#"{"prompt": "hi", "max_tokens": 2}"#;

    assert_eq!(server.post("/v1/completions", short).status, 401, "no key");
    assert_eq!(as_key("sk-carol", short).status, 401, "unknown key");
    assert_eq!(as_key("admin", short).status, 200);

    // Alice asks for critical and runs at normal; her second request within 5 s is over
    // her rate, and the answer says when to come back.
    let r = as_key("sk-alice", r#"{"prompt": "hi", "max_tokens": 2, "priority": "critical", "user": "someone"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let limited = as_key("sk-alice", short);
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(limited.json()["error"]["code"], "rate_limited");
    let retry: u64 = limited
        .head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("retry-after: ").map(|v| v.trim().parse().unwrap()))
        .expect("a Retry-After header");
    assert!((1..=5).contains(&retry), "Retry-After {retry}");

    // Bob may not ask above low, and has one request in flight at most, by either key.
    let refused = as_key("sk-bob", r#"{"prompt": "hi", "max_tokens": 2, "priority": "high"}"#);
    assert_eq!((refused.status, &refused.json()["error"]["code"]), (403, &serde_json::json!("priority_not_allowed")), "{}", refused.body);
    let address = server.address.clone();
    let long = std::thread::spawn(move || {
        let body = r#"{"prompt": "hi", "max_tokens": 400, "ignore_eos": true, "priority": "batch"}"#;
        http(&address, "POST", "/v1/completions", &[("Authorization", "Bearer sk-bob")], body)
    });
    std::thread::sleep(Duration::from_millis(300));
    let second = as_key("sk-bob-2", short);
    assert_eq!(second.status, 429, "{}", second.body);
    assert_eq!(second.json()["error"]["code"], "too_many_concurrent_requests");
    assert_eq!(as_key("admin", short).status, 200, "other tenants are not held back");
    assert_eq!(long.join().unwrap().status, 200);
    assert_eq!(as_key("sk-bob-2", short).status, 200, "the place is free again");

    // Per-tenant metrics, for the server's own key only.
    let metrics = server.request("GET", "/metrics", &[("Authorization", "Bearer admin")], "").body;
    for line in [
        "cinder:request_rejected_total{reason=\"rate_limited\",tenant=\"alice\"} 1",
        "cinder:request_rejected_total{reason=\"too_many_concurrent_requests\",tenant=\"bob\"} 1",
        "cinder:request_rejected_total{reason=\"priority_not_allowed\",tenant=\"bob\"} 1",
        "cinder:request_rejected_total{reason=\"unauthorized\",tenant=\"\"} 2",
        "cinder:request_success_total{finished_reason=\"length\",tenant=\"alice\"} 1",
        "cinder:request_success_total{finished_reason=\"length\",tenant=\"bob\"} 2",
        "cinder:request_success_total{finished_reason=\"length\",tenant=\"default\"} 2",
        "cinder:tenant_generation_tokens_total{tenant=\"bob\"} 402",
        "cinder:request_queue_time_seconds_count{tenant=\"alice\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert_eq!(server.request("GET", "/metrics", &[("Authorization", "Bearer sk-alice")], "").status, 403);
}

#[test]
fn every_batching_policy_serves_concurrent_requests() {
    let model = tiny_model("policies");
    for policy in ["fixed", "bucketed", "memory_aware", "continuous", "adaptive", "bandit", "latency", "throughput"] {
        let server = Server::start(&model, &["--policy", policy]);
        let answers: Vec<_> = ["hi", "a longer prompt than the others", "hello there"]
            .into_iter()
            .map(|prompt| {
                let address = server.address.clone();
                let body = format!(r#"{{"prompt": "{prompt}", "max_tokens": 6, "ignore_eos": true}}"#);
                std::thread::spawn(move || http(&address, "POST", "/v1/completions", &[], &body))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        for r in answers {
            assert_eq!(r.status, 200, "{policy}: {}", r.body);
            assert_eq!(r.json()["usage"]["completion_tokens"], 6, "{policy}: {}", r.body);
        }
    }
}

#[test]
fn logit_bias_bans_and_forces_tokens() {
    let server = Server::start(&tiny_model("logit-bias"), &[]);
    let tokens = |extra: &str| -> Vec<u64> {
        let body = format!(r#"{{"prompt": "hello", "max_tokens": 5, "ignore_eos": true, "return_token_ids": true{extra}}}"#);
        let r = server.post("/v1/completions", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["choices"][0]["token_ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect()
    };
    let greedy = tokens(", \"temperature\": 0");
    let banned = tokens(&format!(r#", "temperature": 0, "logit_bias": {{"{}": -100}}"#, greedy[0]));
    assert!(!banned.contains(&greedy[0]), "{greedy:?} then {banned:?}");
    let forced = tokens(r#", "temperature": 1, "seed": 3, "logit_bias": {"7": 100}"#);
    assert_eq!(forced, vec![7; 5]);
}
