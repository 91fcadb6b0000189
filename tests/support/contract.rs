//! The HTTP contract (docs/API.md) as checks any deployment must pass: the dev server
//! (tests/dev_server.rs) and the template under `sam local start-api` (tests/sam_local.rs).

use serde_json::{Value, json};

/// Where to send requests, and the keys the deployment wants (`None`: an open dev server).
pub struct Target<'a> {
    pub url: &'a str,
    pub event_key: &'a str,
    pub signing_key: Option<&'a str>,
}

impl Target<'_> {
    fn v1(&self, client: &reqwest::Client, path: &str) -> reqwest::RequestBuilder {
        let request = client.get(format!("{}{path}", self.url));
        match self.signing_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }
}

async fn post(client: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let resp = client.post(url).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Bad events get the contract's errors and store nothing; a good one is accepted and its
/// run listed; `/v1` wants the signing key when there is one; unknown runs are 404.
pub async fn check(target: &Target<'_>) {
    let client = reqwest::Client::new();
    let health = client
        .get(format!("{}/health", target.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    let url = format!("{}/e/{}", target.url, target.event_key);
    let malformed = client.post(&url).body("{not json").send().await.unwrap();
    assert_eq!(malformed.status().as_u16(), 400);
    let body: Value = malformed.json().await.unwrap();
    assert_eq!(
        (
            body["status"].as_u64(),
            body["ids"].as_array().map(Vec::len)
        ),
        (Some(400), Some(0))
    );
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    let (status, _) = post(&client, &url, json!({"data": {}})).await;
    assert_eq!(status, 400);
    let (status, body) = post(&client, &url, json!({"name": "baton/function.failed"})).await;
    assert_eq!(status, 400, "{body}");
    let big = "x".repeat(300 * 1024);
    let (status, body) = post(
        &client,
        &url,
        json!({"name": "demo/order.placed", "data": {"blob": big}}),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let runs: Value = target
        .v1(&client, "/v1/runs")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(runs["data"], json!([]), "bad events stored nothing");

    let (status, body) = post(
        &client,
        &url,
        json!({"name": "demo/order.placed", "data": {"order_id": "contract", "items": ["a"]}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = body["ids"][0].as_str().expect("an event id").to_owned();
    let runs: Value = target
        .v1(&client, &format!("/v1/events/{id}/runs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        runs["data"][0]["function_id"], "process-order",
        "the event started its run: {runs}"
    );

    if target.signing_key.is_some() {
        let unsigned = client
            .get(format!("{}/v1/runs", target.url))
            .send()
            .await
            .unwrap();
        assert_eq!(unsigned.status().as_u16(), 401);
        let wrong_key = format!("{}/e/not-the-key", target.url);
        let (status, _) = post(&client, &wrong_key, json!({"name": "demo/order.placed"})).await;
        assert_eq!(status, 401);
    }
    let missing = target
        .v1(&client, "/v1/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
}
