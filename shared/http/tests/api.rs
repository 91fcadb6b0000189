//! The HTTP API (API.md) through the axum Router, request in, response out (no sockets), over a
//! local runtime on the in-memory store.

use baton::Step;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use baton::local::{LocalOptions, LocalRuntime};
use baton::store::memory::MemoryStore;
use baton::webhook::WebhookSource;
use baton::{Ctx, EngineConfig, Event, FailureData, Function, Limits, Registry, StepError};
use baton_http::{Keys, router};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const WAIT: Duration = Duration::from_secs(10);

fn registry() -> Registry {
    let greet = Function::new("greet")
        .trigger("test/greet")
        .step(Step::new("hello"))
        .handler(|ctx: Ctx, ev: Event<Value>| async move {
            let who = ev.data["who"].as_str().unwrap_or("nobody").to_string();
            let s: String = ctx
                .step(Step::new("hello"), |_| async move {
                    Ok::<_, StepError>(format!("hi {who}"))
                })
                .await?;
            ctx.progress(100, "done");
            Ok(s)
        });
    // Stays Running (asleep) for an hour: something to cancel.
    let napper = Function::new("napper").trigger("test/nap").handler(
        |ctx: Ctx, _ev: Event<Value>| async move {
            ctx.sleep("nap", Duration::from_secs(3600)).await?;
            Ok("woke")
        },
    );
    let failer = Function::new("failer")
        .trigger("test/fail")
        .step(
            Step::new("boom")
                .timeout(Duration::from_millis(1500))
                .memory_mb(512)
                .retries(0),
        )
        .handler(|ctx: Ctx, _ev: Event<Value>| async move {
            let s: String = ctx
                .step(Step::new("boom"), |_| async move {
                    Err::<String, _>(StepError::non_retriable("it broke"))
                })
                .await?;
            Ok(s)
        })
        .on_failure(|_ctx: Ctx, ev: Event<FailureData>| async move { Ok(ev.data.run_id) });
    let other = Function::new("other")
        .name("Other function")
        .trigger("test/other")
        .retries(1)
        .handler(|_ctx: Ctx, ev: Event<Value>| async move { Ok(ev.data) });
    Registry::new()
        .register(greet)
        .unwrap()
        .register(napper)
        .unwrap()
        .register(failer)
        .unwrap()
        .register(other)
        .unwrap()
        .register(
            Function::new("on-clip")
                .trigger("clips/task.updated")
                .idempotency("data.task_id")
                .cancel_on("clips/task.cancelled", "data.task_id")
                .finish_timeout(Duration::from_secs(600))
                .handler(|_ctx: Ctx, ev: Event<Value>| async move { Ok(ev.data) }),
        )
        .unwrap()
        .register_webhook(
            WebhookSource::new("clips", "task.updated")
                .signature_header("X-Clips-Signature")
                .timestamp_header("X-Clips-Timestamp")
                .id_header("X-Clips-Delivery"),
        )
        .unwrap()
        .register_webhook(WebhookSource::new("unset", "ping"))
        .unwrap()
}

struct Api {
    runtime: LocalRuntime,
    router: Router,
}

async fn start_with(keys: Keys, options: LocalOptions) -> Api {
    let runtime = LocalRuntime::start(registry(), Arc::new(MemoryStore::new()), options)
        .await
        .unwrap();
    let router = router(runtime.engine().clone(), keys);
    Api { runtime, router }
}

async fn start() -> Api {
    start_with(Keys::open(), LocalOptions::default()).await
}

fn with_limits(limits: Limits) -> LocalOptions {
    LocalOptions {
        engine: EngineConfig {
            limits,
            ..Default::default()
        },
        ..Default::default()
    }
}

struct Reply {
    status: StatusCode,
    content_type: String,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {:?}", self.status, self.text))
    }
}

impl Api {
    async fn raw(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            content_type,
            text: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
        bearer: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(token) = bearer {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(bytes) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(bytes)
            }
            None => Body::empty(),
        };
        let reply = self.raw(builder.body(body).unwrap()).await;
        assert!(
            reply.content_type.starts_with("application/json"),
            "{uri}: {}",
            reply.content_type
        );
        let value = reply.json();
        (reply.status, value)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, None, None).await
    }

    /// A JSON POST with an `Idempotency-Key`.
    async fn post_keyed(&self, uri: &str, key: &str, body: Value) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        let reply = self.raw(request).await;
        (reply.status, reply.json())
    }

    async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            uri,
            Some(serde_json::to_vec(&body).unwrap()),
            None,
        )
        .await
    }

    async fn post_raw(&self, uri: &str, body: &str) -> (StatusCode, Value) {
        self.call(Method::POST, uri, Some(body.as_bytes().to_vec()), None)
            .await
    }

    async fn delete(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, uri, None, None).await
    }

    /// Sends events through the API; returns their ids.
    async fn send(&self, body: Value) -> Vec<String> {
        let (status, reply) = self.post("/e/test-key", body).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!(reply["status"], 200);
        reply["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_str().unwrap().to_string())
            .collect()
    }

    /// The runs an event started, through the API.
    async fn runs_of(&self, event_id: &str) -> Vec<Value> {
        let (status, reply) = self.get(&format!("/v1/events/{event_id}/runs")).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        reply["data"].as_array().unwrap().clone()
    }

    /// The one run an event started.
    async fn run_of(&self, event_id: &str) -> String {
        let runs = self.runs_of(event_id).await;
        assert_eq!(runs.len(), 1, "{runs:?}");
        runs[0]["run_id"].as_str().unwrap().to_string()
    }

    async fn finish(&self, run_id: &str) -> Value {
        self.runtime
            .wait_for_run(run_id, WAIT)
            .await
            .expect("the run ends");
        let (status, reply) = self.get(&format!("/v1/runs/{run_id}")).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        reply["data"].clone()
    }

    /// Waits until a run has the status (e.g. a sleeper reached its sleep).
    async fn wait_status(&self, run_id: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, reply) = self.get(&format!("/v1/runs/{run_id}")).await;
            let steps = reply["data"]["steps"].as_array().map_or(0, Vec::len);
            if reply["data"]["status"] == status && (status != "Running" || steps > 0) {
                return reply["data"].clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "run {run_id} never reached {status}: {reply}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn all_runs(&self) -> Vec<Value> {
        let (status, reply) = self.get("/v1/runs?limit=1000").await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!(reply["cursor"], Value::Null);
        reply["data"].as_array().unwrap().clone()
    }

    /// Asserts a rejected event request stored and started nothing.
    async fn assert_nothing_stored(&self) {
        assert_eq!(self.all_runs().await, Vec::<Value>::new());
        assert_eq!(self.runtime.messages_sent(), 0);
    }
}

fn assert_event_error(status: StatusCode, reply: &Value, want: StatusCode, needle: &str) {
    assert_eq!(status, want, "{reply}");
    assert_eq!(reply["ids"], json!([]), "{reply}");
    assert_eq!(reply["status"], want.as_u16(), "{reply}");
    let error = reply["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {reply}"));
    assert!(
        error.contains(needle),
        "{error:?} should mention {needle:?}"
    );
}

fn assert_error(status: StatusCode, reply: &Value, want: StatusCode, needle: &str) {
    assert_eq!(status, want, "{reply}");
    let error = reply["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {reply}"));
    assert!(
        error.contains(needle),
        "{error:?} should mention {needle:?}"
    );
}

fn run_ids(runs: &[Value]) -> Vec<String> {
    runs.iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect()
}

fn rfc3339(v: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a string: {v}")))
        .unwrap_or_else(|e| panic!("{v} is not RFC 3339: {e}"))
}

// ---- events and runs ----

#[tokio::test]
async fn an_event_starts_a_run_that_the_api_shows() {
    let api = start().await;
    let ids = api
        .send(json!({"name": "test/greet", "data": {"who": "ann"}}))
        .await;
    assert_eq!(ids.len(), 1);

    let runs = api.runs_of(&ids[0]).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["function_id"], "greet");
    assert_eq!(runs[0]["event_id"], ids[0].as_str());
    assert!(
        runs[0].get("steps").is_none(),
        "lists show runs without steps: {}",
        runs[0]
    );

    let run_id = runs[0]["run_id"].as_str().unwrap();
    let run = api.finish(run_id).await;
    assert_eq!(run["run_id"], run_id);
    assert_eq!(run["function_id"], "greet");
    assert_eq!(run["event_id"], ids[0].as_str());
    assert_eq!(run["status"], "Completed");
    assert_eq!(run["output"], "hi ann");
    assert_eq!(run["error"], Value::Null);
    assert_eq!(run["progress"], json!({"percent": 100, "message": "done"}));
    assert_eq!(run["event"]["name"], "test/greet");
    assert_eq!(run["event"]["data"], json!({"who": "ann"}));
    let started = rfc3339(&run["run_started_at"]);
    let ended = rfc3339(&run["ended_at"]);
    assert!(started <= ended);

    let steps = run["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{steps:?}");
    let step = &steps[0];
    assert_eq!(step["id"], "hello");
    assert_eq!(step["name"], "hello");
    assert_eq!(step["status"], "Completed");
    assert_eq!(step["attempts"], 1);
    assert_eq!(step["output"], "hi ann");
    assert_eq!(step["error"], Value::Null);
    assert!(rfc3339(&step["started_at"]) <= rfc3339(&step["ended_at"]));

    // A run's filter times round-trip: the run started neither after nor before its own start.
    let at = run["run_started_at"].as_str().unwrap().replace('+', "%2B");
    let (_, after) = api.get(&format!("/v1/runs?started_after={at}")).await;
    assert_eq!(after["data"], json!([]));
    let (_, before) = api.get(&format!("/v1/runs?started_before={at}")).await;
    assert_eq!(before["data"], json!([]));
}

#[tokio::test]
async fn a_failed_run_shows_its_error() {
    let api = start().await;
    let ids = api.send(json!({"name": "test/fail"})).await;
    let run_id = api.run_of(&ids[0]).await;
    let run = api.finish(&run_id).await;
    assert_eq!(run["status"], "Failed");
    assert_eq!(run["output"], Value::Null);
    assert_eq!(run["error"]["message"], "it broke", "{run}");
    assert!(run["error"]["name"].is_string());
    assert_eq!(run["steps"][0]["status"], "Failed");
    assert_eq!(run["steps"][0]["error"]["message"], "it broke");
}

#[tokio::test]
async fn the_same_event_id_twice_is_one_event_and_one_run() {
    let api = start().await;
    let first = api
        .send(json!({"name": "test/greet", "id": "order-1", "data": {"who": "a"}}))
        .await;
    let second = api
        .send(json!({"name": "test/greet", "id": "order-1", "data": {"who": "b"}}))
        .await;
    assert_eq!(first, second);
    let run_id = api.run_of(&first[0]).await;
    let run = api.finish(&run_id).await;
    assert_eq!(run["output"], "hi a");
    assert_eq!(run_ids(&api.all_runs().await), vec![run_id]);
    // A different id is a different event.
    let third = api
        .send(json!({"name": "test/greet", "id": "order-2"}))
        .await;
    assert_ne!(third, first);
    assert_eq!(api.all_runs().await.len(), 2);
}

#[tokio::test]
async fn an_array_of_events_returns_ids_in_order() {
    let api = start().await;
    let ids = api
        .send(json!([
            {"name": "test/greet", "data": {"who": "x"}},
            {"name": "test/other", "data": {"n": 1}, "ts": 1700000000000i64, "user": {"id": "u"}, "v": "1"},
            {"name": "test/nobody-listens"},
            {"name": "test/greet", "data": {"who": "y"}},
        ]))
        .await;
    assert_eq!(ids.len(), 4);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 4);

    let x = api.finish(&api.run_of(&ids[0]).await).await;
    assert_eq!(x["output"], "hi x");
    let other = api.finish(&api.run_of(&ids[1]).await).await;
    assert_eq!(other["function_id"], "other");
    assert_eq!(other["output"], json!({"n": 1}));
    assert_eq!(other["event"]["ts"], 1700000000000i64);
    assert_eq!(other["event"]["user"], json!({"id": "u"}));
    assert_eq!(other["event"]["v"], "1");
    // An event no function listens to is stored and starts nothing.
    assert_eq!(api.runs_of(&ids[2]).await, Vec::<Value>::new());
    let y = api.finish(&api.run_of(&ids[3]).await).await;
    assert_eq!(y["output"], "hi y");
    assert_eq!(api.all_runs().await.len(), 3);
}

#[tokio::test]
async fn malformed_json_is_400_and_stores_nothing() {
    let api = start().await;
    for body in ["{\"name\": \"test/greet\"", "not json", ""] {
        let (status, reply) = api.post_raw("/e/key", body).await;
        assert_event_error(status, &reply, StatusCode::BAD_REQUEST, "not valid JSON");
    }
    api.assert_nothing_stored().await;
}

#[tokio::test]
async fn events_with_bad_fields_are_400_and_store_nothing() {
    let api = start().await;
    let cases = [
        (json!({"data": {}}), "name is required"),
        (json!({"name": 7}), "name must be a string"),
        (json!({"name": ""}), "name is required"),
        (json!({"name": "x".repeat(257)}), "over the limit"),
        (
            json!({"name": "test/greet", "data": [1]}),
            "data must be a JSON object",
        ),
        (
            json!({"name": "test/greet", "data": "hi"}),
            "data must be a JSON object",
        ),
        (
            json!({"name": "test/greet", "id": 5}),
            "id must be a string",
        ),
        (
            json!({"name": "test/greet", "ts": "yesterday"}),
            "ts must be an integer",
        ),
        (
            json!({"name": "test/greet", "ts": 1.5}),
            "ts must be a non-negative integer",
        ),
        (
            json!({"name": "test/greet", "user": "me"}),
            "user must be a JSON object",
        ),
        (json!({"name": "test/greet", "v": 2}), "v must be a string"),
        (json!(42), "must be an event object or an array"),
        (json!("test/greet"), "must be an event object or an array"),
        (json!([]), "no events"),
        (
            json!([{"name": "test/greet"}, "oops"]),
            "event 1: an event must be a JSON object",
        ),
        // One bad event rejects the whole request, including the good one before it.
        (
            json!([{"name": "test/greet", "id": "k1"}, {"data": {}}]),
            "event 1: event name is required",
        ),
    ];
    for (body, needle) in cases {
        let (status, reply) = api.post("/e/key", body.clone()).await;
        assert_event_error(status, &reply, StatusCode::BAD_REQUEST, needle);
    }
    api.assert_nothing_stored().await;
}

#[tokio::test]
async fn reserved_names_are_400() {
    let api = start().await;
    for name in [
        "baton/function.failed",
        "inngest/function.failed",
        "baton/anything",
    ] {
        let (status, reply) = api.post("/e/key", json!({"name": name, "data": {}})).await;
        assert_event_error(status, &reply, StatusCode::BAD_REQUEST, "reserved");
    }
    let (status, reply) = api
        .post(
            "/e/key",
            json!([{"name": "test/greet"}, {"name": "baton/x"}]),
        )
        .await;
    assert_event_error(status, &reply, StatusCode::BAD_REQUEST, "event 1: ");
    api.assert_nothing_stored().await;
}

#[tokio::test]
async fn too_many_events_in_one_request_is_400() {
    let api = start_with(
        Keys::open(),
        with_limits(Limits {
            max_events_per_request: 3,
            ..Default::default()
        }),
    )
    .await;
    let four: Vec<Value> = (0..4).map(|_| json!({"name": "test/greet"})).collect();
    let (status, reply) = api.post("/e/key", Value::from(four)).await;
    assert_event_error(
        status,
        &reply,
        StatusCode::BAD_REQUEST,
        "over the limit of 3",
    );
    api.assert_nothing_stored().await;
    let three: Vec<Value> = (0..3).map(|_| json!({"name": "test/greet"})).collect();
    assert_eq!(api.send(Value::from(three)).await.len(), 3);
}

#[tokio::test]
async fn an_oversized_event_is_413_and_stores_nothing() {
    let api = start_with(
        Keys::open(),
        with_limits(Limits {
            max_event_bytes: 1024,
            ..Default::default()
        }),
    )
    .await;
    let big = json!({"name": "test/greet", "data": {"who": "x".repeat(2000)}});
    let (status, reply) = api.post("/e/key", big.clone()).await;
    assert_event_error(
        status,
        &reply,
        StatusCode::PAYLOAD_TOO_LARGE,
        "over the limit of 1024 bytes",
    );
    // In an array: the small event before it is not stored either.
    let (status, reply) = api
        .post("/e/key", json!([{"name": "test/greet", "id": "k1"}, big]))
        .await;
    assert_event_error(status, &reply, StatusCode::PAYLOAD_TOO_LARGE, "event 1: ");
    api.assert_nothing_stored().await;
    // Under the limit is fine.
    let ids = api
        .send(json!({"name": "test/greet", "id": "k1", "data": {"who": "x".repeat(500)}}))
        .await;
    assert_eq!(api.runs_of(&ids[0]).await.len(), 1);
}

#[tokio::test]
async fn an_oversized_request_is_413_and_stores_nothing() {
    let api = start_with(
        Keys::open(),
        with_limits(Limits {
            max_request_bytes: 2048,
            ..Default::default()
        }),
    )
    .await;
    let events: Vec<Value> = (0..80)
        .map(|i| json!({"name": "test/greet", "data": {"who": format!("n{i}")}}))
        .collect();
    let body = serde_json::to_vec(&events).unwrap();
    assert!(body.len() > 2048);
    // With a Content-Length header (refused before reading)...
    let (status, reply) = api
        .call(Method::POST, "/e/key", Some(body.clone()), None)
        .await;
    assert_event_error(
        status,
        &reply,
        StatusCode::PAYLOAD_TOO_LARGE,
        "over the limit of 2048 bytes",
    );
    // ...and streamed without one (refused while reading).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(500).map(|c| Ok(c.to_vec())).collect();
    let request = Request::post("/e/key")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let reply = api.raw(request).await;
    assert_event_error(
        reply.status,
        &reply.json(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "over the limit of 2048 bytes",
    );
    api.assert_nothing_stored().await;
    // Just under the limit is fine.
    let ids = api.send(Value::from(events[..10].to_vec())).await;
    assert_eq!(ids.len(), 10);
}

// ---- keys ----

#[tokio::test]
async fn event_keys_are_checked_when_configured() {
    let keys = Keys {
        event_keys: vec!["ek-1".into(), "ek-2".into()],
        ..Keys::default()
    };
    let api = start_with(keys, LocalOptions::default()).await;
    for key in ["wrong", "ek-1x", "ek", "EK-1"] {
        let (status, reply) = api
            .post(&format!("/e/{key}"), json!({"name": "test/greet"}))
            .await;
        assert_event_error(
            status,
            &reply,
            StatusCode::UNAUTHORIZED,
            "invalid event key",
        );
    }
    api.assert_nothing_stored().await;
    for key in ["ek-1", "ek-2"] {
        let (status, reply) = api
            .post(&format!("/e/{key}"), json!({"name": "test/greet"}))
            .await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!(reply["ids"].as_array().unwrap().len(), 1);
    }
    // No signing key: /v1 is open.
    assert_eq!(api.all_runs().await.len(), 2);
}

#[tokio::test]
async fn open_keys_accept_any_event_key() {
    let api = start().await;
    for key in ["anything", "dev", "x"] {
        let (status, _) = api
            .post(&format!("/e/{key}"), json!({"name": "test/greet"}))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn v1_and_the_dashboard_need_the_signing_key_when_configured() {
    let keys = Keys {
        signing_key: Some("sk-secret".into()),
        ..Keys::default()
    };
    let api = start_with(keys, LocalOptions::default()).await;
    let routes = [
        (Method::GET, "/v1/runs"),
        (Method::GET, "/v1/functions"),
        (Method::GET, "/v1/runs/01J00000000000000000000000"),
        (Method::DELETE, "/v1/runs/01J00000000000000000000000"),
        (Method::POST, "/v1/runs/01J00000000000000000000000/replay"),
        (Method::GET, "/v1/events/01J00000000000000000000000/runs"),
        (Method::POST, "/v1/cancellations"),
        (Method::POST, "/v1/replays"),
        (Method::GET, "/v1/functions/greet/stats"),
    ];
    for (method, uri) in routes {
        for bearer in [None, Some("wrong"), Some("sk-secre"), Some("")] {
            let (status, reply) = api.call(method.clone(), uri, None, bearer).await;
            assert_error(status, &reply, StatusCode::UNAUTHORIZED, "signing key");
        }
    }
    // The dashboard answers its sign-in form instead (tests/dashboard.rs).
    let reply = api
        .raw(Request::get("/").body(Body::empty()).unwrap())
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.text.contains("action=\"/login\""), "{}", reply.text);
    // The right key passes.
    let (status, reply) = api
        .call(Method::GET, "/v1/runs", None, Some("sk-secret"))
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["data"], json!([]));
    let request = Request::get("/v1/functions")
        .header(header::AUTHORIZATION, "bearer sk-secret")
        .body(Body::empty());
    assert_eq!(api.raw(request.unwrap()).await.status, StatusCode::OK);
    let request = Request::get("/")
        .header(header::AUTHORIZATION, "Bearer sk-secret")
        .body(Body::empty());
    let reply = api.raw(request.unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.content_type.starts_with("text/html"));
    // Events and /health do not take the signing key.
    let (status, _) = api.post("/e/any", json!({"name": "test/greet"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, reply) = api.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["status"], "ok");
}

#[test]
fn keys_parse_like_the_environment() {
    let keys = Keys::parse(Some(" a , b,,c "), Some(" sk "));
    assert_eq!(keys.event_keys, vec!["a", "b", "c"]);
    assert_eq!(keys.signing_key.as_deref(), Some("sk"));
    let keys = Keys::parse(Some(""), Some("  "));
    assert!(keys.event_keys.is_empty());
    assert_eq!(keys.signing_key, None);
    let keys = Keys::parse(None, None);
    assert!(keys.event_keys.is_empty() && keys.signing_key.is_none());
    let open = Keys::open();
    assert!(open.event_keys.is_empty() && open.signing_key.is_none());
    // Debug never prints a key.
    let shown = format!("{:?}", Keys::parse(Some("topsecret1"), Some("topsecret2")));
    assert!(!shown.contains("topsecret"), "{shown}");
}

// ---- listing ----

#[tokio::test]
async fn list_runs_pages_newest_first_with_filters() {
    let api = start().await;
    let greets: Vec<Value> = (0..25)
        .map(|i| json!({"name": "test/greet", "data": {"who": format!("p{i}")}}))
        .collect();
    let greet_events = api.send(Value::from(greets)).await;
    let nap_events = api
        .send(json!([{"name": "test/nap"}, {"name": "test/nap"}]))
        .await;
    let mut greet_runs = HashSet::new();
    for event in &greet_events {
        let run_id = api.run_of(event).await;
        api.runtime
            .wait_for_run(&run_id, WAIT)
            .await
            .expect("greet runs end");
        greet_runs.insert(run_id);
    }
    let mut nap_runs = HashSet::new();
    for event in &nap_events {
        let run_id = api.run_of(event).await;
        api.wait_status(&run_id, "Running").await;
        nap_runs.insert(run_id);
    }

    // Pages of 10 over the 25 greet runs: every run exactly once, newest first.
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            Some(c) => format!("/v1/runs?function_id=greet&limit=10&cursor={c}"),
            None => "/v1/runs?function_id=greet&limit=10".to_string(),
        };
        let (status, reply) = api.get(&uri).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        let page = reply["data"].as_array().unwrap();
        assert!(
            page.iter()
                .all(|r| r["function_id"] == "greet" && r.get("steps").is_none())
        );
        sizes.push(page.len());
        seen.extend(run_ids(page));
        match &reply["cursor"] {
            Value::Null => break,
            Value::String(c) => cursor = Some(c.clone()),
            other => panic!("cursor is {other}"),
        }
        assert!(sizes.len() < 10, "paging does not end");
    }
    assert_eq!(sizes, vec![10, 10, 5]);
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), greet_runs);
    assert_eq!(seen.len(), 25);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest (largest id) first");

    // Default limit (50) covers all 27; empty parameters count as absent.
    let (_, reply) = api
        .get("/v1/runs?function_id=&status=&limit=&cursor=")
        .await;
    assert_eq!(reply["data"].as_array().unwrap().len(), 27);
    assert_eq!(reply["cursor"], Value::Null);

    // Status filter.
    let (_, reply) = api.get("/v1/runs?status=Running").await;
    assert_eq!(
        run_ids(reply["data"].as_array().unwrap())
            .into_iter()
            .collect::<HashSet<_>>(),
        nap_runs
    );
    let (_, reply) = api
        .get("/v1/runs?status=Completed&function_id=greet&limit=1000")
        .await;
    assert_eq!(reply["data"].as_array().unwrap().len(), 25);
    let (_, reply) = api.get("/v1/runs?status=Failed").await;
    assert_eq!(reply["data"], json!([]));
    let (_, reply) = api.get("/v1/runs?function_id=napper").await;
    assert_eq!(reply["data"].as_array().unwrap().len(), 2);
    let (_, reply) = api.get("/v1/runs?function_id=nope").await;
    assert_eq!(reply["data"], json!([]));

    // Time window.
    let (_, reply) = api
        .get("/v1/runs?started_after=2000-01-01T00:00:00Z&started_before=2999-01-01T00:00:00Z")
        .await;
    assert_eq!(reply["data"].as_array().unwrap().len(), 27);
    let (_, reply) = api.get("/v1/runs?started_after=2999-01-01T00:00:00Z").await;
    assert_eq!(reply["data"], json!([]));
    let (_, reply) = api
        .get("/v1/runs?started_before=2000-01-01T00:00:00%2B02:00")
        .await;
    assert_eq!(reply["data"], json!([]));
}

#[tokio::test]
async fn list_runs_rejects_bad_parameters() {
    let api = start().await;
    let cases = [
        ("/v1/runs?limit=0", "limit"),
        ("/v1/runs?limit=1001", "limit"),
        ("/v1/runs?limit=-1", "limit"),
        ("/v1/runs?limit=ten", "limit"),
        ("/v1/runs?status=Done", "status"),
        ("/v1/runs?started_after=yesterday", "started_after"),
        (
            "/v1/runs?started_before=2025-13-01T00:00:00Z",
            "started_before",
        ),
        (
            "/v1/runs?started_after=2025-02-01T00:00:00Z&started_before=2025-01-01T00:00:00Z",
            "started_after",
        ),
    ];
    for (uri, needle) in cases {
        let (status, reply) = api.get(uri).await;
        assert_error(status, &reply, StatusCode::BAD_REQUEST, needle);
    }
    let (status, reply) = api.get("/v1/runs?limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{reply}");
}

#[tokio::test]
async fn unknown_runs_and_events_are_404() {
    let api = start().await;
    let (status, reply) = api.get("/v1/runs/01J00000000000000000000000").await;
    assert_error(
        status,
        &reply,
        StatusCode::NOT_FOUND,
        "01J00000000000000000000000",
    );
    let (status, reply) = api.get("/v1/events/01J00000000000000000000000/runs").await;
    assert_error(status, &reply, StatusCode::NOT_FOUND, "event");
    let (status, reply) = api.get("/v1/runs/not%20a%20run").await;
    assert_error(status, &reply, StatusCode::NOT_FOUND, "not a run");
}

// ---- cancel and replay ----

#[tokio::test]
async fn cancel_a_run() {
    let api = start().await;
    let ids = api.send(json!({"name": "test/nap"})).await;
    let run_id = api.run_of(&ids[0]).await;
    let before = api.wait_status(&run_id, "Running").await;
    assert_eq!(before["steps"][0]["kind"], "Sleep");
    assert!(before["steps"][0]["wake_at"].is_string());

    let (status, reply) = api.delete(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let run = &reply["data"];
    assert_eq!(run["run_id"], run_id.as_str());
    assert_eq!(run["status"], "Cancelled");
    rfc3339(&run["ended_at"]);
    assert_eq!(run["steps"].as_array().unwrap().len(), 1);

    let (status, reply) = api.get(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["data"]["status"], "Cancelled");

    // Cancelling again, or cancelling a finished run, is 409.
    let (status, reply) = api.delete(&format!("/v1/runs/{run_id}")).await;
    assert_error(status, &reply, StatusCode::CONFLICT, "Cancelled");
    let done = api.send(json!({"name": "test/greet"})).await;
    let done_run = api.run_of(&done[0]).await;
    api.finish(&done_run).await;
    let (status, reply) = api.delete(&format!("/v1/runs/{done_run}")).await;
    assert_error(status, &reply, StatusCode::CONFLICT, "Completed");
    let (_, reply) = api.get(&format!("/v1/runs/{done_run}")).await;
    assert_eq!(reply["data"]["status"], "Completed");

    let (status, reply) = api.delete("/v1/runs/01J00000000000000000000000").await;
    assert_error(status, &reply, StatusCode::NOT_FOUND, "not found");
}

#[tokio::test]
async fn replay_a_run() {
    let api = start().await;
    let ids = api
        .send(json!({"name": "test/greet", "data": {"who": "rex"}}))
        .await;
    let old = api.run_of(&ids[0]).await;
    api.finish(&old).await;

    let (status, reply) = api.post(&format!("/v1/runs/{old}/replay"), json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    let new = reply["data"]["run_id"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    let run = api.finish(&new).await;
    assert_eq!(run["status"], "Completed");
    assert_eq!(run["output"], "hi rex");
    assert_eq!(run["replay_of"], old.as_str());
    assert_eq!(run["event_id"], ids[0].as_str());
    assert_eq!(run["steps"][0]["attempts"], 1);

    // The event lists both runs.
    let runs = api.runs_of(&ids[0]).await;
    assert_eq!(
        run_ids(&runs).into_iter().collect::<HashSet<_>>(),
        HashSet::from([old.clone(), new.clone()])
    );

    let (status, reply) = api
        .post("/v1/runs/01J00000000000000000000000/replay", json!({}))
        .await;
    assert_error(status, &reply, StatusCode::NOT_FOUND, "not found");

    // Restart from a step: the new run says where it came from.
    let (status, reply) = api
        .post(
            &format!("/v1/runs/{old}/replay"),
            json!({"from_step": "hello"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    let restarted = reply["data"]["run_id"].as_str().unwrap().to_string();
    let run = api.finish(&restarted).await;
    assert_eq!(run["status"], "Completed");
    assert_eq!(run["replay_of"], old.as_str());
    assert_eq!(run["replay_from"], "hello");
    // Bad input: a 4xx that says what is wrong, never a new run.
    for (body, code, says) in [
        (
            json!({"from_step": 3}),
            StatusCode::BAD_REQUEST,
            "from_step",
        ),
        (
            json!({"from_step": ""}),
            StatusCode::BAD_REQUEST,
            "from_step",
        ),
        (
            json!({"from": "hello"}),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (json!({"from_step": "nope"}), StatusCode::NOT_FOUND, "nope"),
        (json!([1]), StatusCode::BAD_REQUEST, "JSON object"),
    ] {
        let (status, reply) = api.post(&format!("/v1/runs/{old}/replay"), body).await;
        assert_error(status, &reply, code, says);
    }
    assert_eq!(
        api.runs_of(&ids[0]).await.len(),
        3,
        "only the two replays started runs"
    );
}

#[tokio::test]
async fn bulk_cancellations() {
    let api = start().await;
    let naps = api
        .send(json!([{"name": "test/nap"}, {"name": "test/nap"}, {"name": "test/nap"}]))
        .await;
    let greet = api.send(json!({"name": "test/greet"})).await;
    let mut nap_runs = Vec::new();
    for event in &naps {
        let run_id = api.run_of(event).await;
        api.wait_status(&run_id, "Running").await;
        nap_runs.push(run_id);
    }
    let greet_run = api.run_of(&greet[0]).await;
    api.finish(&greet_run).await;

    // A window before the runs started cancels nothing.
    let (status, reply) = api
        .post(
            "/v1/cancellations",
            json!({"function_id": "napper", "started_before": "2001-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        reply,
        json!({"data": {"cancelled": 0, "run_ids": [], "cursor": null, "unreadable": []}})
    );

    let (status, reply) = api
        .post("/v1/cancellations", json!({"function_id": "napper", "started_after": "2001-01-01T00:00:00Z", "started_before": null}))
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["data"]["cancelled"], 3, "{reply}");
    let cancelled: HashSet<String> =
        serde_json::from_value(reply["data"]["run_ids"].clone()).unwrap();
    assert_eq!(cancelled, nap_runs.iter().cloned().collect::<HashSet<_>>());
    for run_id in &nap_runs {
        let (_, reply) = api.get(&format!("/v1/runs/{run_id}")).await;
        assert_eq!(reply["data"]["status"], "Cancelled");
    }
    let (_, reply) = api.get(&format!("/v1/runs/{greet_run}")).await;
    assert_eq!(reply["data"]["status"], "Completed");

    let (status, reply) = api
        .post("/v1/cancellations", json!({"function_id": "napper"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["data"]["cancelled"], 0);

    let bad = [
        (
            json!({"function_id": "nope"}),
            StatusCode::NOT_FOUND,
            "nope",
        ),
        (
            json!({}),
            StatusCode::BAD_REQUEST,
            "function_id is required",
        ),
        (
            json!({"function_id": 3}),
            StatusCode::BAD_REQUEST,
            "function_id must be a string",
        ),
        (
            json!({"function_id": "napper", "started_after": "last week"}),
            StatusCode::BAD_REQUEST,
            "started_after",
        ),
        (
            json!({"function_id": "napper", "started_before": 5}),
            StatusCode::BAD_REQUEST,
            "started_before",
        ),
        (
            json!({"function_id": "napper", "started_befor": "2001-01-01T00:00:00Z"}),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (json!(["napper"]), StatusCode::BAD_REQUEST, "JSON object"),
    ];
    for (body, want, needle) in bad {
        let (status, reply) = api.post("/v1/cancellations", body).await;
        assert_error(status, &reply, want, needle);
    }
    let (status, reply) = api.post_raw("/v1/cancellations", "{").await;
    assert_error(status, &reply, StatusCode::BAD_REQUEST, "not valid JSON");
}

#[tokio::test]
async fn bulk_replays() {
    let api = start().await;
    // Two failed runs and two cancelled ones.
    let fails = api
        .send(json!([{"name": "test/fail"}, {"name": "test/fail"}]))
        .await;
    let mut failed = HashSet::new();
    for event in &fails {
        let run_id = api.run_of(event).await;
        assert_eq!(api.finish(&run_id).await["status"], "Failed");
        failed.insert(run_id);
    }
    let naps = api
        .send(json!([{"name": "test/nap"}, {"name": "test/nap"}]))
        .await;
    let mut cancelled = HashSet::new();
    for event in &naps {
        let run_id = api.run_of(event).await;
        api.wait_status(&run_id, "Running").await;
        cancelled.insert(run_id);
    }
    let (_, reply) = api
        .post("/v1/cancellations", json!({"function_id": "napper"}))
        .await;
    assert_eq!(reply["data"]["cancelled"], 2);

    let (status, reply) = api
        .post(
            "/v1/replays",
            json!({"function_id": "failer", "status": "Failed"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let new_ids: Vec<String> = serde_json::from_value(reply["data"]["run_ids"].clone()).unwrap();
    assert_eq!(new_ids.len(), 2);
    let mut replayed_from = HashSet::new();
    for id in &new_ids {
        assert!(!failed.contains(id));
        let run = api.finish(id).await;
        assert_eq!(run["function_id"], "failer");
        assert_eq!(run["status"], "Failed");
        replayed_from.insert(run["replay_of"].as_str().unwrap().to_string());
    }
    assert_eq!(replayed_from, failed);

    let (status, reply) = api
        .post(
            "/v1/replays",
            json!({"function_id": "napper", "status": "Cancelled"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let new_ids: Vec<String> = serde_json::from_value(reply["data"]["run_ids"].clone()).unwrap();
    assert_eq!(new_ids.len(), 2);
    let mut replayed_from = HashSet::new();
    for id in &new_ids {
        let run = api.wait_status(id, "Running").await;
        replayed_from.insert(run["replay_of"].as_str().unwrap().to_string());
    }
    assert_eq!(replayed_from, cancelled);

    // Nothing matches: an empty list.
    let (status, reply) = api
        .post("/v1/replays", json!({"function_id": "greet", "status": "Failed", "started_after": "2001-01-01T00:00:00Z"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        reply,
        json!({"data": {"run_ids": [], "cursor": null, "unreadable": []}})
    );

    let bad = [
        (
            json!({"function_id": "failer", "status": "Completed"}),
            StatusCode::BAD_REQUEST,
            "Failed",
        ),
        (
            json!({"function_id": "failer", "status": "Running"}),
            StatusCode::BAD_REQUEST,
            "Cancelled",
        ),
        (
            json!({"function_id": "failer"}),
            StatusCode::BAD_REQUEST,
            "status is required",
        ),
        (
            json!({"function_id": "nope", "status": "Failed"}),
            StatusCode::NOT_FOUND,
            "nope",
        ),
        (
            json!({"status": "Failed"}),
            StatusCode::BAD_REQUEST,
            "function_id",
        ),
        (
            json!({"function_id": "failer", "status": "Failed", "started_before": "soon"}),
            StatusCode::BAD_REQUEST,
            "started_before",
        ),
    ];
    for (body, want, needle) in bad {
        let (status, reply) = api.post("/v1/replays", body).await;
        assert_error(status, &reply, want, needle);
    }
}

// ---- other routes ----

#[tokio::test]
async fn health_names_the_backend() {
    let api = start().await;
    let (status, reply) = api.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply, json!({"status": "ok", "backend": "memory"}));
}

#[tokio::test]
async fn functions_are_listed_with_their_steps_and_triggers() {
    let api = start().await;
    let (status, reply) = api.get("/v1/functions").await;
    assert_eq!(status, StatusCode::OK);
    let data = reply["data"].as_array().unwrap();
    let by_id = |id: &str| {
        data.iter()
            .find(|f| f["id"] == id)
            .unwrap_or_else(|| panic!("no {id}: {reply}"))
            .clone()
    };
    let mut listed: Vec<&str> = data.iter().map(|f| f["id"].as_str().unwrap()).collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            "failer",
            "failer-failure",
            "greet",
            "napper",
            "on-clip",
            "other"
        ]
    );

    let greet = by_id("greet");
    assert_eq!(greet["name"], "greet");
    assert_eq!(greet["triggers"], json!([{"event": "test/greet"}]));
    assert_eq!(
        greet["steps"],
        json!([{"name": "hello", "timeout_s": 60, "memory_mb": 256, "retries": 4, "host": "lambda"}])
    );
    // Inngest's default: 4 retries after the first attempt.
    assert_eq!(greet["retries"], 4);
    assert_eq!(greet["concurrency"], json!([]));
    assert_eq!(greet["on_failure"], false);

    let failer = by_id("failer");
    assert_eq!(failer["on_failure"], true);
    assert_eq!(
        failer["steps"],
        json!([{"name": "boom", "timeout_s": 1.5, "memory_mb": 512, "retries": 0, "host": "lambda"}])
    );

    let handler = by_id("failer-failure");
    assert_eq!(
        handler["triggers"],
        json!([{"event": "baton/function.failed", "expression": "event.data.function_id == \"failer\""}])
    );
    assert_eq!(handler["failure_of"], "failer");
    assert_eq!(handler["on_failure"], false);

    let other = by_id("other");
    assert_eq!(other["name"], "Other function");
    assert_eq!(other["retries"], 1);
    assert_eq!(other["steps"], json!([]));
    // Flow-control and timeout settings are listed.
    let clip = by_id("on-clip");
    assert_eq!(clip["idempotency"], "data.task_id", "{clip}");
    assert_eq!(
        clip["cancel_on"],
        json!([{"event": "clips/task.cancelled", "match": "data.task_id"}])
    );
    assert_eq!(clip["timeouts"], json!({"start_s": null, "finish_s": 600}));
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let api = start().await;
    let (status, reply) = api.get("/nope").await;
    assert_error(status, &reply, StatusCode::NOT_FOUND, "no such route");
    let (status, reply) = api.get("/v1/nope").await;
    assert_error(status, &reply, StatusCode::NOT_FOUND, "no such route");
    let (status, reply) = api.get("/e/key").await;
    assert_error(status, &reply, StatusCode::METHOD_NOT_ALLOWED, "method");
    let (status, reply) = api.call(Method::PUT, "/v1/runs", None, None).await;
    assert_error(status, &reply, StatusCode::METHOD_NOT_ALLOWED, "method");
    let (status, reply) = api.call(Method::POST, "/health", None, None).await;
    assert_error(status, &reply, StatusCode::METHOD_NOT_ALLOWED, "method");
}

// ---- webhooks ----

const CLIPS_SECRET: &str = "whsec-clips-0123456789";

/// A callback as the clip service sends it: signed over `{timestamp}.{body}`.
fn clip_callback(body: &str, timestamp: i64, secret: &str, delivery: &str) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri("/v1/webhooks/clips")
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            "x-clips-signature",
            baton::webhook::sign(secret.as_bytes(), Some(timestamp), body.as_bytes()),
        )
        .header("x-clips-timestamp", timestamp.to_string())
        .header("x-clips-delivery", delivery)
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test]
async fn a_signed_webhook_becomes_an_event_and_starts_its_runs_once() {
    let keys = Keys::open().with_webhook_secret("clips", CLIPS_SECRET);
    let api = start_with(keys, LocalOptions::default()).await;
    let now = api.runtime.engine().now().timestamp();
    let body = r#"{"task_id":"t-1","status":"done"}"#;
    let reply = api.raw(clip_callback(body, now, CLIPS_SECRET, "d-1")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let ids: Vec<String> = serde_json::from_value(reply.json()["ids"].clone()).unwrap();
    assert_eq!(ids.len(), 1);
    let runs = api.runs_of(&ids[0]).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["function_id"], "on-clip");
    assert_eq!(runs[0]["event_name"], "clips/task.updated");
    // The source retries the same delivery: the same event, no second run.
    let again = api.raw(clip_callback(body, now, CLIPS_SECRET, "d-1")).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.json()["ids"][0], ids[0]);
    let run = api
        .runtime
        .wait_for_run(runs[0]["run_id"].as_str().unwrap(), WAIT)
        .await
        .unwrap();
    assert_eq!(
        run.output,
        Some(json!({"task_id": "t-1", "status": "done"}))
    );
    assert_eq!(api.runs_of(&ids[0]).await.len(), 1);
}

/// A captured signed callback sent again within the tolerance, with another delivery id or
/// none, starts nothing: the signed material names the event.
#[tokio::test]
async fn a_captured_webhook_cannot_be_replayed() {
    let keys = Keys::open().with_webhook_secret("clips", CLIPS_SECRET);
    let api = start_with(keys, LocalOptions::default()).await;
    let now = api.runtime.engine().now().timestamp();
    let body = r#"{"task_id":"t-9","status":"done"}"#;
    let reply = api.raw(clip_callback(body, now, CLIPS_SECRET, "d-9")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let event_id = reply.json()["ids"][0].as_str().unwrap().to_string();
    for delivery in ["d-10", "d-11", "x", "d-9 "] {
        let replay = api
            .raw(clip_callback(body, now, CLIPS_SECRET, delivery))
            .await;
        if delivery.trim() == "d-9" {
            // The same delivery again (the source's own retry): the same event.
            assert_eq!(replay.status, StatusCode::OK, "{}", replay.text);
            assert_eq!(replay.json()["ids"][0], event_id.as_str());
        } else {
            assert_eq!(
                replay.status,
                StatusCode::CONFLICT,
                "{delivery}: {}",
                replay.text
            );
            assert_eq!(replay.json()["ids"], json!([]));
        }
    }
    let mut without_id = clip_callback(body, now, CLIPS_SECRET, "");
    without_id.headers_mut().remove("x-clips-delivery");
    let reply = api.raw(without_id).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    assert!(reply.text.contains("x-clips-delivery"), "{}", reply.text);
    // One event, one run.
    let (_, events) = api.get("/v1/runs?function_id=on-clip").await;
    assert_eq!(events["data"].as_array().unwrap().len(), 1, "{events}");
    // The source re-signs a retry with a new timestamp under the same delivery id: the same event.
    let retry = api
        .raw(clip_callback(body, now + 1, CLIPS_SECRET, "d-9"))
        .await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.text);
    assert_eq!(retry.json()["ids"][0], event_id.as_str());
}

#[tokio::test]
async fn bad_webhooks_are_refused_and_store_nothing() {
    let keys = Keys::open().with_webhook_secret("clips", CLIPS_SECRET);
    let api = start_with(keys, LocalOptions::default()).await;
    let now = api.runtime.engine().now().timestamp();
    let body = r#"{"task_id":"t-2"}"#;
    let cases = [
        (
            "a wrong secret",
            clip_callback(body, now, "not-the-secret", "d-2"),
            StatusCode::UNAUTHORIZED,
            "signature does not match",
        ),
        (
            "a stale timestamp",
            clip_callback(body, now - 3600, CLIPS_SECRET, "d-3"),
            StatusCode::UNAUTHORIZED,
            "away from now",
        ),
        (
            "a body that is not JSON",
            clip_callback("not json", now, CLIPS_SECRET, "d-4"),
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
    ];
    for (what, request, status, message) in cases {
        let reply = api.raw(request).await;
        assert_eq!(reply.status, status, "{what}: {}", reply.text);
        let json = reply.json();
        assert!(
            json["error"].as_str().unwrap().contains(message),
            "{what}: {json}"
        );
        assert_eq!(json["ids"], json!([]), "{what}");
    }
    // A valid signature over another body (the body was altered on the way).
    let mut altered = clip_callback(body, now, CLIPS_SECRET, "d-5");
    *altered.body_mut() = Body::from(r#"{"task_id":"t-evil"}"#);
    assert_eq!(api.raw(altered).await.status, StatusCode::UNAUTHORIZED);
    // No signature at all.
    let (status, reply) = api
        .post("/v1/webhooks/clips", json!({"task_id": "t-6"}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("x-clips-signature"),
        "{reply}"
    );
    // Unknown sources and sources without a secret.
    let (status, reply) = api.post("/v1/webhooks/nope", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
    let (status, reply) = api.post("/v1/webhooks/unset", json!({})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("BATON_WEBHOOK_SECRET_UNSET"),
        "{reply}"
    );
    // None of it started anything.
    let (_, runs) = api.get("/v1/runs?function_id=on-clip").await;
    assert_eq!(runs["data"], json!([]), "{runs}");
}

/// Bulk replay acts on one page (at most `limit`, at most the engine's bulk limit) and hands
/// back a cursor; a request retried with its `Idempotency-Key` starts nothing new, for bulk
/// and single replays alike.
#[tokio::test]
async fn bulk_replays_are_bounded_and_idempotent() {
    let api = start_with(
        Keys::open(),
        with_limits(Limits {
            max_bulk_runs: 3,
            ..Limits::default()
        }),
    )
    .await;
    let events = api
        .send(json!([{"name": "test/fail"}, {"name": "test/fail"}, {"name": "test/fail"}, {"name": "test/fail"}, {"name": "test/fail"}]))
        .await;
    let mut failed = HashSet::new();
    for event in &events {
        let run_id = api.run_of(event).await;
        assert_eq!(api.finish(&run_id).await["status"], "Failed");
        failed.insert(run_id);
    }
    let count_runs = || async {
        let (_, reply) = api.get("/v1/runs?function_id=failer&limit=1000").await;
        reply["data"].as_array().unwrap().len()
    };

    // Over the limit: refused. Within it: pages of 2.
    let (status, reply) = api
        .post(
            "/v1/replays",
            json!({"function_id": "failer", "status": "Failed", "limit": 4}),
        )
        .await;
    assert_error(
        status,
        &reply,
        StatusCode::BAD_REQUEST,
        "limit must be an integer from 1 to 3",
    );
    let body = json!({"function_id": "failer", "status": "Failed", "limit": 2});
    let (status, first) = api.post_keyed("/v1/replays", "page-1", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["data"]["run_ids"].as_array().unwrap().len(), 2);
    let cursor = first["data"]["cursor"]
        .as_str()
        .expect("more runs remain")
        .to_string();
    assert_eq!(count_runs().await, 7);

    // The same request again (a client retrying after a timeout): the same runs, none new.
    let (_, again) = api.post_keyed("/v1/replays", "page-1", body.clone()).await;
    assert_eq!(again["data"]["run_ids"], first["data"]["run_ids"]);
    assert_eq!(count_runs().await, 7);

    let mut body2 = body.clone();
    body2["cursor"] = json!(cursor);
    let (_, second) = api.post_keyed("/v1/replays", "page-2", body2.clone()).await;
    assert_eq!(second["data"]["run_ids"].as_array().unwrap().len(), 2);
    let mut body3 = body.clone();
    body3["cursor"] = second["data"]["cursor"].clone();
    let (_, third) = api.post_keyed("/v1/replays", "page-3", body3).await;
    assert_eq!(third["data"]["run_ids"].as_array().unwrap().len(), 1);
    assert_eq!(third["data"]["cursor"], Value::Null);
    let mut replayed_from = HashSet::new();
    for page in [&first, &second, &third] {
        for id in page["data"]["run_ids"].as_array().unwrap() {
            let run = api.finish(id.as_str().unwrap()).await;
            replayed_from.insert(run["replay_of"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        replayed_from, failed,
        "every failed run replayed exactly once"
    );

    // A cursor from elsewhere is a 400, not a 500.
    let mut bad = body.clone();
    bad["cursor"] = json!("Completed.01J00000000000000000000000");
    let (status, reply) = api.post("/v1/replays", bad).await;
    assert_error(status, &reply, StatusCode::BAD_REQUEST, "cursor");

    // A single replay retried with its key: one new run.
    let old = failed.iter().next().unwrap().clone();
    let uri = format!("/v1/runs/{old}/replay");
    let (status, one) = api.post_keyed(&uri, "single", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{one}");
    let (_, two) = api.post_keyed(&uri, "single", json!({})).await;
    assert_eq!(one["data"]["run_id"], two["data"]["run_id"]);
    let (_, three) = api.post_keyed(&uri, "another", json!({})).await;
    assert_ne!(one["data"]["run_id"], three["data"]["run_id"]);
    let (status, reply) = api.post_keyed(&uri, &"k".repeat(300), json!({})).await;
    assert_error(status, &reply, StatusCode::BAD_REQUEST, "Idempotency-Key");
}

/// The open server (no signing key, as `baton dev` runs) answers only loopback host names
/// (DNS rebinding) and refuses writes from other sites (a page's `text/plain` POST needs no
/// preflight). With a signing key, credentials decide instead.
#[tokio::test]
async fn an_open_server_refuses_other_hosts_and_cross_site_writes() {
    let api = start().await;
    let request = |method: Method, uri: &str, headers: &[(&str, &str)], body: &str| {
        let mut builder = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(Body::from(body.to_owned())).unwrap()
    };
    let event = r#"{"name": "test/greet", "data": {"who": "mallory"}}"#;
    let refused = [
        request(
            Method::GET,
            "/v1/runs",
            &[("host", "rebound.evil.example:8288")],
            "",
        ),
        request(Method::GET, "/", &[("host", "192.168.1.20:8288")], ""),
        request(
            Method::POST,
            "/e/dev",
            &[
                ("host", "127.0.0.1:8288"),
                ("content-type", "text/plain"),
                ("origin", "https://evil.example"),
            ],
            event,
        ),
        request(
            Method::POST,
            "/e/dev",
            &[
                ("host", "localhost:8288"),
                ("content-type", "text/plain"),
                ("sec-fetch-site", "cross-site"),
            ],
            event,
        ),
        request(
            Method::POST,
            "/v1/cancellations",
            &[("host", "127.0.0.1:8288"), ("origin", "null")],
            r#"{"function_id": "napper"}"#,
        ),
    ];
    for r in refused {
        let what = format!("{} {} {:?}", r.method(), r.uri(), r.headers());
        let reply = api.raw(r).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{what}: {}",
            reply.text
        );
        assert!(
            reply.json()["error"]
                .as_str()
                .unwrap()
                .contains("signing key"),
            "{what}"
        );
    }
    let (_, runs) = api.get("/v1/runs?function_id=greet").await;
    assert_eq!(runs["data"], json!([]), "nothing was stored");
    // The same from the machine itself goes through.
    let reply = api
        .raw(request(
            Method::POST,
            "/e/dev",
            &[
                ("host", "127.0.0.1:8288"),
                ("content-type", "application/json"),
                ("origin", "http://127.0.0.1:8288"),
            ],
            event,
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);

    // A server with a signing key answers its own domain name.
    let keyed = start_with(
        Keys::parse(None, Some("k-0123456789")),
        LocalOptions::default(),
    )
    .await;
    let reply = keyed
        .raw(request(
            Method::GET,
            "/v1/runs",
            &[
                ("host", "baton.example.com"),
                ("authorization", "Bearer k-0123456789"),
            ],
            "",
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}
