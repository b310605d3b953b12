//! The serving control plane through its doors: `--config` files and `--print-config`,
//! tenants told apart by API key (priority caps, rates with `Retry-After`, concurrent-request
//! caps, per-tenant metrics), every batching policy serving, `logit_bias`, and structured
//! output (`response_format`, `tools`) on the tiny model and the real one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::serve::{Server, http, tiny_model};

fn cinder(args: &[&str]) -> std::process::Output {
    crate::cinder_command().args(args).output().expect("running cinder")
}

pub(crate) fn write_config(test: &str, text: &str) -> PathBuf {
    let path = crate::scratch_dir(test).join("cinder.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn arg(path: &Path) -> &str {
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
    for line in ["policy = \"adaptive\"", "max_running = 8", "min_batch_tokens = 512", "max_batch_tokens = 2048", "max_waiting = 100", "prefix_caching = false", "weight = 2.0", "api_keys = [\"***\"]"] {
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
    let short = r#"{"prompt": "hi", "max_tokens": 2, "ignore_eos": true}"#;

    assert_eq!(server.post("/v1/completions", short).status, 401, "no key");
    assert_eq!(as_key("sk-carol", short).status, 401, "unknown key");
    assert_eq!(as_key("admin", short).status, 200);

    // Alice asks for critical and runs at normal; her second request within 5 s is over
    // her rate, and the answer says when to come back.
    let r = as_key("sk-alice", r#"{"prompt": "hi", "max_tokens": 2, "ignore_eos": true, "priority": "critical", "user": "someone"}"#);
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
        "cinder:request_success_total{finished_reason=\"length\",model_name=\"tiny\",tenant=\"alice\"} 1",
        "cinder:request_success_total{finished_reason=\"length\",model_name=\"tiny\",tenant=\"bob\"} 2",
        "cinder:request_success_total{finished_reason=\"length\",model_name=\"tiny\",tenant=\"default\"} 2",
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

/// Checks `value` against the part of JSON Schema the tests' schemas use (type, properties,
/// required, additionalProperties, enum, const, items, minItems, maxItems, minimum,
/// maximum, minLength, maxLength, anyOf); the reason it does not match, if it does not.
fn violation(schema: &serde_json::Value, value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    let fail = |why: &str| Some(format!("{value} {why} ({schema})"));
    if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
        return options.iter().all(|o| violation(o, value).is_some()).then(|| format!("{value} matches no option of {schema}"));
    }
    if let Some(choices) = schema.get("enum").and_then(Value::as_array)
        && !choices.contains(value)
    {
        return fail("is not one of the enum");
    }
    if let Some(constant) = schema.get("const")
        && constant != value
    {
        return fail("is not the const");
    }
    let number = |key: &str| schema.get(key).and_then(Value::as_f64);
    let count = |key: &str| schema.get(key).and_then(Value::as_u64).map(|n| n as usize);
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(object) = value.as_object() else { return fail("is not an object") };
            let properties = schema.get("properties").and_then(Value::as_object);
            for key in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                if !object.contains_key(key.as_str().unwrap()) {
                    return fail(&format!("lacks {key}"));
                }
            }
            for (key, item) in object {
                match properties.and_then(|p| p.get(key)) {
                    Some(sub) => {
                        if let Some(why) = violation(sub, item) {
                            return Some(why);
                        }
                    }
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => return fail(&format!("has extra key {key}")),
                    None => {}
                }
            }
        }
        Some("array") => {
            let Some(items) = value.as_array() else { return fail("is not an array") };
            if count("minItems").is_some_and(|n| items.len() < n) || count("maxItems").is_some_and(|n| items.len() > n) {
                return fail("has the wrong number of items");
            }
            if let Some(sub) = schema.get("items") {
                return items.iter().find_map(|item| violation(sub, item));
            }
        }
        Some("string") => {
            let Some(text) = value.as_str() else { return fail("is not a string") };
            let chars = text.chars().count();
            if count("minLength").is_some_and(|n| chars < n) || count("maxLength").is_some_and(|n| chars > n) {
                return fail("has the wrong length");
            }
        }
        Some(kind @ ("integer" | "number")) => {
            let Some(n) = value.as_f64() else { return fail("is not a number") };
            if kind == "integer" && !(value.is_i64() || value.is_u64()) {
                return fail("is not an integer");
            }
            if number("minimum").is_some_and(|m| n < m) || number("maximum").is_some_and(|m| n > m) {
                return fail("is out of range");
            }
        }
        Some("boolean") if !value.is_boolean() => return fail("is not a boolean"),
        _ => {}
    }
    None
}

fn chat(server: &Server, body: serde_json::Value) -> serde_json::Value {
    let r = server.post("/v1/chat/completions", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

#[test]
fn response_formats_and_tool_calls_hold_to_their_schemas() {
    // The tools' description makes prompts longer than the default tiny model's context.
    let model = crate::scratch_dir("structured").join("tiny-4k.gguf");
    std::fs::write(&model, cinder_model::tiny::TinyModel { context_length: 4096, ..Default::default() }.to_gguf()).unwrap();
    let server = Server::start(&model, &[]);
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Oslo"]}, "days": {"type": "integer", "minimum": 1, "maximum": 14}},
        "required": ["city", "days"],
        "additionalProperties": false,
    });
    let messages = serde_json::json!([{"role": "user", "content": "plan a trip"}]);
    for seed in 0..3 {
        let answer = chat(&server, serde_json::json!({
            "messages": messages, "max_tokens": 200, "temperature": 1, "seed": seed,
            "response_format": {"type": "json_schema", "json_schema": {"name": "trip", "schema": schema, "strict": true}},
        }));
        let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
        let value: serde_json::Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content}"));
        assert_eq!(violation(&schema, &value), None);
        assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    }

    let weather = serde_json::json!({"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}}, "required": ["city"], "additionalProperties": false},
    }});
    let time = serde_json::json!({"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}, "additionalProperties": false}}});
    let tools = serde_json::json!([weather, time]);
    for (choice, names) in [
        (serde_json::json!("required"), vec!["get_weather", "get_time"]),
        (serde_json::json!({"type": "function", "function": {"name": "get_time"}}), vec!["get_time"]),
    ] {
        // One call: random weights would go on listing calls.
        let body = serde_json::json!({
            "messages": messages, "tools": tools, "tool_choice": choice, "parallel_tool_calls": false,
            "max_tokens": 200, "temperature": 1, "seed": 5,
        });
        let answer = chat(&server, body.clone());
        let choice0 = &answer["choices"][0];
        assert_eq!(choice0["finish_reason"], "tool_calls", "{answer}");
        assert!(choice0["message"]["content"].is_null(), "{answer}");
        let calls = choice0["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 1);
        for call in calls {
            assert_eq!(call["type"], "function");
            assert!(call["id"].as_str().unwrap().starts_with("call_"));
            let name = call["function"]["name"].as_str().unwrap();
            assert!(names.contains(&name), "{name}");
            let arguments: serde_json::Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            let tool = tools.as_array().unwrap().iter().find(|t| t["function"]["name"] == name).unwrap();
            assert_eq!(violation(&tool["function"]["parameters"], &arguments), None);
        }
        // Streamed: the same calls, in one delta, then the finish reason.
        let mut streamed = body.clone();
        streamed["stream"] = true.into();
        let r = server.post("/v1/chat/completions", &streamed.to_string());
        let chunks: Vec<serde_json::Value> = r
            .body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        // Each call streams as it is written: its id and name first, then its arguments in
        // pieces that add up to the call's.
        let pieces: Vec<&serde_json::Value> = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array()).flatten().collect();
        for (i, call) in calls.iter().enumerate() {
            let mine: Vec<&&serde_json::Value> = pieces.iter().filter(|p| p["index"] == i).collect();
            assert!(mine.len() > 1, "call {i} came in one piece: {}", r.body);
            assert_eq!((&mine[0]["function"]["name"], &mine[0]["type"]), (&call["function"]["name"], &serde_json::json!("function")), "{}", r.body);
            assert!(mine[1..].iter().all(|p| p.get("id").is_none() && p["function"].get("name").is_none()), "{}", r.body);
            let arguments: String = mine.iter().map(|p| p["function"]["arguments"].as_str().unwrap()).collect();
            let whole: serde_json::Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            assert_eq!(serde_json::from_str::<serde_json::Value>(&arguments).unwrap(), whole, "{}", r.body);
        }
        assert_eq!(pieces.iter().filter(|p| p.get("id").is_some()).count(), calls.len(), "{}", r.body);
        assert!(chunks.iter().all(|c| c["choices"][0]["delta"]["content"].as_str().is_none_or(str::is_empty)), "{}", r.body);
        assert!(r.body.contains(r#""finish_reason":"tool_calls""#), "{}", r.body);
    }
    // auto: calls or text, whichever the model starts with; none: text.
    let auto = chat(&server, serde_json::json!({"messages": messages, "tools": tools, "max_tokens": 20, "seed": 1, "temperature": 1}));
    let message = &auto["choices"][0]["message"];
    assert!(message["tool_calls"].is_array() != message["content"].is_string(), "{auto}");

    for (body, param) in [
        (serde_json::json!({"messages": messages, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}), "response_format.json_schema.schema"),
        (serde_json::json!({"messages": messages, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}), "response_format.json_schema.schema"),
        (serde_json::json!({"messages": messages, "tools": tools, "tool_choice": {"type": "function", "function": {"name": "fly"}}}), "tool_choice"),
        (serde_json::json!({"messages": messages, "tool_choice": "required"}), "tool_choice"),
        (serde_json::json!({"messages": messages, "tools": [{"type": "function", "function": {"name": "bad name"}}]}), "tools[0].function.name"),
        (serde_json::json!({"messages": messages, "tools": tools, "response_format": {"type": "json_object"}}), "response_format"),
    ] {
        let r = server.post("/v1/chat/completions", &body.to_string());
        assert_eq!((r.status, &r.json()["error"]["param"]), (400, &serde_json::json!(param)), "{}", r.body);
    }
    let r = server.post("/v1/completions", &serde_json::json!({"prompt": "hi", "tools": tools}).to_string());
    assert_eq!(r.status, 400, "{}", r.body);
    // A conversation that carries earlier calls and their results is taken.
    let history = serde_json::json!([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]);
    chat(&server, serde_json::json!({"messages": history, "tools": tools, "max_tokens": 4}));
}

/// Twenty schemas of nested objects, enums, arrays, numbers and bounded strings, answered
/// at once by the real model, greedy: every answer parses and matches its schema.
#[test]
fn twenty_schemas_hold_on_the_real_model() {
    let server = Server::start(&crate::real_model_path(), &["--max-running", "20"]);
    // Plain words: a greedy small model may otherwise fill every string with emoji, a few
    // tokens each, and run out of tokens before the JSON ends.
    let string = |max: u64| serde_json::json!({"type": "string", "pattern": format!("^[A-Za-z0-9 ,.'-]{{1,{max}}}$"), "maxLength": max});
    let int = |min: i64, max: i64| serde_json::json!({"type": "integer", "minimum": min, "maximum": max});
    let object = |properties: serde_json::Value| {
        let required: Vec<String> = properties.as_object().unwrap().keys().cloned().collect();
        serde_json::json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
    };
    let array = |items: serde_json::Value, max: u64| serde_json::json!({"type": "array", "items": items, "minItems": 1, "maxItems": max});
    let schemas = [
        ("a person", object(serde_json::json!({"name": string(30), "age": int(0, 120)}))),
        ("a color", object(serde_json::json!({"color": {"enum": ["red", "green", "blue"]}}))),
        ("a city and its country", object(serde_json::json!({"city": string(30), "country": string(30)}))),
        ("three fruits", object(serde_json::json!({"fruits": array(string(20), 3)}))),
        ("a yes or no answer: is the sky blue?", object(serde_json::json!({"answer": {"type": "boolean"}}))),
        ("a temperature in Celsius", object(serde_json::json!({"celsius": {"type": "number", "minimum": -50, "maximum": 60}}))),
        ("a book", object(serde_json::json!({"title": string(40), "author": object(serde_json::json!({"first": string(20), "last": string(20)})), "year": int(1000, 2030)}))),
        ("a shopping list", object(serde_json::json!({"items": array(object(serde_json::json!({"name": string(20), "quantity": int(1, 20)})), 4)}))),
        ("a weekday", object(serde_json::json!({"day": {"enum": ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]}}))),
        ("a rectangle", object(serde_json::json!({"width": int(1, 100), "height": int(1, 100)}))),
        ("a point in 3D", object(serde_json::json!({"point": array(serde_json::json!({"type": "number", "minimum": -10, "maximum": 10}), 3)}))),
        ("a movie rating", object(serde_json::json!({"movie": string(40), "stars": int(1, 5), "liked": {"type": "boolean"}}))),
        ("an address", object(serde_json::json!({"street": string(40), "number": int(1, 999), "zip": string(10)}))),
        ("a task", object(serde_json::json!({"task": string(40), "priority": {"enum": ["low", "medium", "high"]}, "done": {"type": "boolean"}}))),
        ("two numbers and their sum", object(serde_json::json!({"a": int(0, 100), "b": int(0, 100), "sum": int(0, 200)}))),
        ("a pet", object(serde_json::json!({"kind": {"enum": ["cat", "dog", "fish"]}, "name": string(20), "age": int(0, 30)}))),
        ("a team", object(serde_json::json!({"team": string(30), "members": array(object(serde_json::json!({"name": string(20), "role": {"enum": ["lead", "member"]}})), 3)}))),
        ("a recipe", object(serde_json::json!({"dish": string(30), "minutes": int(1, 240), "steps": array(string(40), 3)}))),
        ("a date", object(serde_json::json!({"year": int(1900, 2100), "month": int(1, 12), "day": int(1, 31)}))),
        ("a word and its letters", object(serde_json::json!({"word": string(12), "letters": int(1, 12), "vowels": array(serde_json::json!({"enum": ["a", "e", "i", "o", "u"]}), 5)}))),
    ];
    let answers: Vec<_> = schemas
        .iter()
        .map(|(what, schema)| {
            let address = server.address.clone();
            let body = serde_json::json!({
                "messages": [{"role": "user", "content": format!("Give me {what} as JSON.")}],
                "max_tokens": 400, "temperature": 0,
                "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
            });
            std::thread::spawn(move || http(&address, "POST", "/v1/chat/completions", &[], &body.to_string()))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for ((what, schema), r) in schemas.iter().zip(answers) {
        assert_eq!(r.status, 200, "{what}: {}", r.body);
        let content = r.json()["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
        let value: serde_json::Value = serde_json::from_str(&content).unwrap_or_else(|e| panic!("{what}: {e}: {content}"));
        assert_eq!(violation(schema, &value), None, "{what}");
    }
    // A tool call on the real model.
    let tools = serde_json::json!([{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"], "additionalProperties": false},
    }}]);
    let answer = chat(&server, serde_json::json!({
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": tools, "tool_choice": "required", "max_tokens": 60, "temperature": 0,
    }));
    let call = &answer["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "get_weather", "{answer}");
    let arguments: serde_json::Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments["city"].is_string(), "{answer}");
}

/// A noisy tenant held to one request at a time sends ten at once next to a quiet tenant
/// (the real model, the OpenAI Python client): the excess gets 429 and the quiet tenant is
/// served throughout. Prints the quiet tenant's TTFT p95 alone and under the noise (the
/// number in docs/serving.md; timing is reported, not asserted).
#[test]
fn a_noisy_tenant_is_held_to_its_share() {
    let file = write_config(
        "isolation",
        "[[tenants]]\nname = \"quiet\"\napi_keys = [\"sk-quiet\"]\n\n[[tenants]]\nname = \"noisy\"\napi_keys = [\"sk-noisy\"]\nmax_concurrent = 1\n",
    );
    let server = Server::start(&crate::real_model_path(), &["--config", arg(&file), "--served-model-name", "smollm2", "--api-key", "admin"]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/tenant_isolation.py");
    let output = Command::new(crate::serve::python())
        .arg(script)
        .args([&format!("http://{}/v1", server.address), "smollm2", "sk-quiet", "sk-noisy", "10"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the isolation client failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for phase in ["quiet_alone_s", "quiet_with_noise_s"] {
        assert!(report[phase].as_array().unwrap().iter().all(|t| t.as_f64().is_some()), "every quiet request streamed: {report}");
    }
    assert!(report["noisy"]["answered"].as_u64().unwrap() >= 1 && report["noisy"]["refused"].as_u64().unwrap() >= 1, "{report}");
    let (alone, noisy) = (report["p95_alone_s"].as_f64().unwrap(), report["p95_with_noise_s"].as_f64().unwrap());
    println!("quiet tenant TTFT p95: alone {alone:.3} s, next to the noisy tenant {noisy:.3} s ({:.2}x)", noisy / alone);
    assert!(server.metric("request_rejected_total{reason=\"too_many_concurrent_requests\",tenant=\"noisy\"}") >= 1.0);
}
