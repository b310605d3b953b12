//! OpenAI's Responses API through the OpenAI Python client, and its stored responses kept
//! apart per tenant and bounded.

use crate::serve::{Server, run_client};

/// Greedy responses equal to chat's, streamed and not, stored, retrieved and deleted; a
/// function call round trip over `previous_response_id`; `text.format`; refusals:
/// `tests/e2e/responses_client.py` on the real model.
#[test]
fn the_openai_client_creates_streams_and_chains_responses() {
    let server = Server::start(&crate::real_model_path(), &["--api-key", "secret", "--served-model-name", "smollm2"]);
    run_client("responses_client.py", &format!("http://{}/v1", server.address), "smollm2", "secret");
}

#[test]
fn a_tenant_never_reads_another_tenants_responses_and_the_oldest_go_first() {
    let dir = crate::scratch_dir("responses-tenants");
    let config = dir.join("cinder.toml");
    let tenants = "[limits]\nstored_responses = 2\n\n[[tenants]]\nname = \"alice\"\napi_keys = [\"ka\"]\n\n[[tenants]]\nname = \"bob\"\napi_keys = [\"kb\"]\n";
    std::fs::write(&config, tenants).unwrap();
    let server = Server::start(&crate::serve::tiny_model("responses-tenants"), &["--config", config.to_str().unwrap(), "--api-key", "admin"]);
    let (alice, bob) = ([("Authorization", "Bearer ka")], [("Authorization", "Bearer kb")]);
    let create = |key: &[(&str, &str)], extra: &str| {
        let answer = server.request("POST", "/v1/responses", key, &format!(r#"{{"input": "hi", "max_output_tokens": 2{extra}}}"#));
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()["id"].as_str().unwrap().to_owned()
    };
    let get = |key: &[(&str, &str)], id: &str| server.request("GET", &format!("/v1/responses/{id}"), key, "").status;
    let first = create(&alice, "");
    assert_eq!(get(&alice, &first), 200);
    // Bob neither reads it, nor continues it, nor deletes it.
    assert_eq!(get(&bob, &first), 404);
    let chained = server.request("POST", "/v1/responses", &bob, &format!(r#"{{"input": "hi", "previous_response_id": "{first}"}}"#));
    assert_eq!((chained.status, chained.json()["error"]["param"].as_str()), (404, Some("response_id")), "{}", chained.body);
    assert_eq!(server.request("DELETE", &format!("/v1/responses/{first}"), &bob, "").status, 404);
    // Alice continues it; a response not stored is not kept.
    let second = create(&alice, &format!(r#", "previous_response_id": "{first}""#));
    let unstored = create(&alice, r#", "store": false"#);
    assert_eq!(get(&alice, &unstored), 404);
    // Two per tenant: a third drops the oldest, and bob's own do not count.
    create(&bob, "");
    let third = create(&alice, "");
    assert_eq!((get(&alice, &first), get(&alice, &second), get(&alice, &third)), (404, 200, 200));
    let deleted = server.request("DELETE", &format!("/v1/responses/{second}"), &alice, "");
    assert_eq!(deleted.json(), serde_json::json!({"id": second, "object": "response", "deleted": true}));
    assert_eq!(get(&alice, &second), 404);
    let unknown = server.request("POST", "/v1/responses", &alice, r#"{"input": "hi", "reasoning": {"effort": "low"}}"#);
    assert_eq!((unknown.status, unknown.json()["error"]["param"].as_str()), (400, Some("reasoning")), "{}", unknown.body);
    // Each endpoint's answers are counted under its route.
    let metrics = server.request("GET", "/metrics", &[("Authorization", "Bearer admin")], "").body;
    for line in [
        "cinder:api_requests_total{endpoint=\"/v1/responses\",status=\"200\"} 5",
        "cinder:api_requests_total{endpoint=\"/v1/responses\",status=\"404\"} 1",
        "cinder:api_requests_total{endpoint=\"/v1/responses\",status=\"400\"} 1",
        "cinder:api_requests_total{endpoint=\"/v1/responses/{id}\",status=\"404\"} 5",
        "cinder:api_requests_total{endpoint=\"/v1/responses/{id}\",status=\"200\"} 4",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}
