//! The fuzz harness of the HTTP layer: arbitrary methods, paths (every route of the table,
//! with hostile segments), queries, headers and bodies (arbitrary JSON, JSON nested past any
//! limit, event-shaped JSON, raw bytes, forms) driven through the Router over a live local
//! runtime whose functions succeed, fail (so failure handlers wrap what came in) and sleep.
//!
//! Expected of every request: no panic and no 5xx (the store here is never down). Expected of
//! everything accepted: an event `/e` took reads back with its runs, every run the store holds
//! reads back (JSON and its dashboard page), and listings report nothing unreadable.
//!
//! `BATON_FUZZ_CASES` sets the number of requests (default 300 in CI);
//! `BATON_FUZZ_SEED` replays one sequence.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use baton::local::{LocalOptions, LocalRuntime};
use baton::store::memory::MemoryStore;
use baton::webhook::WebhookSource;
use baton::{Ctx, Error, Event, FailureData, Function, Registry, Step, StepError};
use baton_http::routes::ROUTES;
use baton_http::{Keys, router};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Map, Value, json};
use tower::ServiceExt;

const SECRET: &str = "whsec-fuzz-0123456789";

fn registry() -> Registry {
    let echo = Function::new("echo")
        .trigger("fuzz/echo")
        .step(Step::new("copy"))
        .handler(|ctx: Ctx, e: Event<Value>| async move {
            let data = e.data.clone();
            ctx.progress(50, "copying");
            ctx.step(Step::new("copy"), async move |_| Ok::<_, StepError>(data))
                .await
        });
    let fail = Function::new("fail")
        .trigger("fuzz/fail")
        .retries(0)
        .handler(|_ctx: Ctx, e: Event<Value>| async move {
            Err::<(), _>(Error::new("Fuzz", format!("failing on {}", e.data)))
        })
        .on_failure(|_ctx: Ctx, e: Event<FailureData>| async move { Ok(e.data.event) });
    let nap = Function::new("nap")
        .trigger("fuzz/nap")
        .cancel_on("fuzz/stop", "data.k")
        .handler(|ctx: Ctx, _e: Event<Value>| async move {
            ctx.sleep("nap", Duration::from_secs(3600)).await?;
            Ok("woke")
        });
    Registry::new()
        .register(echo)
        .unwrap()
        .register(fail)
        .unwrap()
        .register(nap)
        .unwrap()
        .register_webhook(
            WebhookSource::new("hook", "called")
                .timestamp_header("x-hook-timestamp")
                .id_header("x-hook-delivery"),
        )
        .unwrap()
}

/// JSON of any shape, nesting up to `depth` levels.
fn json_value(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((text(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// `{"a": {"a": ... }}` or `[[...]]`, `n` levels: around every nesting limit.
fn nested() -> impl Strategy<Value = Value> {
    (0usize..200, any::<bool>()).prop_map(|(n, arrays)| {
        let mut v = json!(1);
        for _ in 0..n {
            v = if arrays {
                json!([v])
            } else {
                json!({ "a": v })
            };
        }
        v
    })
}

/// Short strings with the characters that break things: controls, quotes, slashes, `%`,
/// non-ASCII, and sometimes long ones.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::collection::vec(
            prop_oneof![
                Just('a'), Just('Z'), Just('0'), Just('/'), Just('\\'), Just('.'), Just('%'),
                Just('"'), Just('\''), Just('<'), Just('>'), Just('&'), Just('\t'), Just('\n'),
                Just('\0'), Just(' '), Just('é'), Just('💥'), Just('{'), Just('#'), Just('?'),
                Just(':'), Just('='),
            ],
            0..24,
        )
        .prop_map(|chars| chars.into_iter().collect()),
        1 => (0usize..6000).prop_map(|n| "x".repeat(n)),
        1 => Just("01J00000000000000000000000".to_string()),
    ]
}

fn event_name() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => Just(json!("fuzz/echo")),
        3 => Just(json!("fuzz/fail")),
        2 => Just(json!("fuzz/nap")),
        2 => Just(json!("fuzz/stop")),
        1 => Just(json!("baton/function.failed")),
        1 => Just(json!("")),
        1 => text().prop_map(Value::String),
        1 => json_value(2),
    ]
}

/// An event as a sender might (mis)shape it.
fn event() -> impl Strategy<Value = Value> {
    (
        event_name(),
        prop_oneof![
            4 => json_value(4).prop_map(|v| json!({"k": 1, "v": v})),
            1 => json_value(4),
            2 => nested().prop_map(|v| json!({"k": 2, "deep": v})),
            1 => Just(json!({"k": 1})),
        ],
        proptest::option::weighted(
            0.3,
            prop_oneof![4 => text().prop_map(Value::String), 1 => json_value(1)],
        ),
        proptest::option::weighted(
            0.2,
            prop_oneof![4 => (0i64..4_000_000_000_000).prop_map(Value::from), 1 => json_value(1)],
        ),
        proptest::option::weighted(
            0.3,
            prop_oneof![
                4 => json_value(3).prop_map(|v| json!({"u": v})),
                1 => nested(),
                1 => json_value(2),
            ],
        ),
    )
        .prop_map(|(name, data, id, ts, user)| {
            let mut event = Map::new();
            event.insert("name".into(), name);
            event.insert("data".into(), data);
            for (field, value) in [("id", id), ("ts", ts), ("user", user)] {
                if let Some(value) = value {
                    event.insert(field.into(), value);
                }
            }
            Value::Object(event)
        })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => event().prop_map(|e| e.to_string().into_bytes()),
        2 => proptest::collection::vec(event(), 0..5).prop_map(|e| Value::Array(e).to_string().into_bytes()),
        2 => json_value(5).prop_map(|v| v.to_string().into_bytes()),
        1 => nested().prop_map(|v| v.to_string().into_bytes()),
        1 => proptest::collection::vec(any::<u8>(), 0..512),
        1 => text().prop_map(|t| format!("function_id={t}&status=Failed&since=1h&name={t}&data=%7B%7D&csrf=x&key={t}").into_bytes()),
        1 => Just(Vec::new()),
    ]
}

/// A path segment: an id the store holds, or something hostile.
fn segment(known: Vec<String>) -> impl Strategy<Value = String> {
    let known = if known.is_empty() {
        vec!["echo".to_string()]
    } else {
        known
    };
    prop_oneof![
        2 => proptest::sample::select(known),
        1 => Just("echo".to_string()),
        1 => Just("hook".to_string()),
        1 => Just("dev".to_string()),
        1 => Just("dashboard.js".to_string()),
        3 => text().prop_map(|t| percent(&t)),
    ]
}

/// Percent-encodes what a URI path or query cannot hold as is.
fn percent(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Clone)]
struct Case {
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn case(known: Vec<String>) -> impl Strategy<Value = Case> {
    // Half the requests send events, so runs pile up for the other routes to meet.
    let events_route = *ROUTES.iter().find(|r| r.path == "/e/{event_key}").unwrap();
    let route = prop_oneof![
        1 => Just(events_route),
        1 => proptest::sample::select(ROUTES.to_vec()),
    ];
    let method = prop_oneof![
        6 => Just(None),
        1 => proptest::sample::select(vec![
            Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::HEAD, Method::OPTIONS,
        ]).prop_map(Some),
    ];
    let query = proptest::collection::vec(
        (
            proptest::sample::select(vec![
                "limit",
                "cursor",
                "status",
                "function_id",
                "started_after",
                "started_before",
                "window",
                "next",
                "notice",
                "since",
                "until",
            ]),
            prop_oneof![
                text(),
                Just("1000".to_string()),
                Just("0".to_string()),
                Just("Failed".to_string()),
                Just("2026-01-01T00:00:00Z".to_string()),
                Just("24h".to_string()),
            ],
        ),
        0..4,
    );
    let header = prop_oneof![
        Just(("content-type", "application/json".to_string())),
        Just(("content-type", "text/plain".to_string())),
        Just((
            "content-type",
            "application/x-www-form-urlencoded".to_string()
        )),
        Just(("host", "127.0.0.1:8288".to_string())),
        Just(("host", "evil.example".to_string())),
        Just(("origin", "http://127.0.0.1:8288".to_string())),
        Just(("origin", "https://evil.example".to_string())),
        Just(("sec-fetch-site", "cross-site".to_string())),
        Just(("x-baton-fragment", "live".to_string())),
        Just(("x-forwarded-for", "203.0.113.9".to_string())),
        text().prop_map(|t| ("authorization", format!("Bearer {}", percent(&t)))),
        text().prop_map(|t| ("idempotency-key", percent(&t))),
        text().prop_map(|t| ("cookie", format!("baton_session={}", percent(&t)))),
        text().prop_map(|t| ("x-hook-delivery", percent(&t))),
        any::<i64>().prop_map(|t| ("x-hook-timestamp", t.to_string())),
        text().prop_map(|t| ("x-baton-signature", percent(&t))),
    ];
    (
        route,
        method,
        proptest::collection::vec(segment(known), 2),
        query,
        prop_oneof![
            2 => Just(Vec::new()),
            1 => proptest::collection::vec(header, 0..5),
        ],
        body(),
    )
        .prop_map(|(route, method, segments, query, headers, body)| {
            if route.path == "/e/{event_key}" && body.len() % 4 != 0 {
                // Mostly a usable key (any key is one on an open server).
                return Case {
                    method: method.unwrap_or(Method::POST),
                    path: "/e/dev".into(),
                    headers,
                    body,
                };
            }
            let mut path = String::new();
            let mut segments = segments.into_iter();
            for part in route.path.split('/').skip(1) {
                path.push('/');
                if part.starts_with('{') {
                    path.push_str(&segments.next().unwrap_or_default());
                } else {
                    path.push_str(part);
                }
            }
            if !query.is_empty() {
                let pairs: Vec<String> = query
                    .iter()
                    .map(|(k, v)| format!("{k}={}", percent(v)))
                    .collect();
                path.push('?');
                path.push_str(&pairs.join("&"));
            }
            let method = method.unwrap_or_else(|| route.method.parse().unwrap());
            Case {
                method,
                path,
                headers,
                body,
            }
        })
}

struct Harness {
    runtime: LocalRuntime,
    router: Router,
}

impl Harness {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> (StatusCode, Vec<u8>) {
        let mut builder = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, v.as_str());
        }
        let request = builder
            .body(Body::from(body))
            .expect("a request the harness can build");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, bytes.to_vec())
    }

    async fn get_json(&self, uri: &str) -> Value {
        let (status, body) = self.call(Method::GET, uri, &[], Vec::new()).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{uri}: {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).unwrap()
    }

    /// Every run in the store reads back, as JSON and as its page; nothing is unreadable.
    async fn everything_reads_back(&self) -> Vec<String> {
        let mut run_ids = Vec::new();
        let mut uri = "/v1/runs?limit=1000".to_string();
        loop {
            let page = self.get_json(&uri).await;
            assert_eq!(page["unreadable"], json!([]), "{page}");
            for run in page["data"].as_array().unwrap() {
                run_ids.push(run["run_id"].as_str().unwrap().to_string());
            }
            match page["cursor"].as_str() {
                Some(cursor) => uri = format!("/v1/runs?limit=1000&cursor={cursor}"),
                None => break,
            }
        }
        for id in &run_ids {
            let run = self.get_json(&format!("/v1/runs/{id}")).await;
            let event_id = run["data"]["event_id"].as_str().unwrap();
            self.get_json(&format!("/v1/events/{event_id}/runs")).await;
            let (status, body) = self
                .call(Method::GET, &format!("/runs/{id}"), &[], Vec::new())
                .await;
            assert_eq!(
                status,
                StatusCode::OK,
                "/runs/{id}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        for uri in [
            "/",
            "/runs",
            "/functions",
            "/functions/echo",
            "/functions/fail",
            "/v1/functions",
        ] {
            let (status, _) = self.call(Method::GET, uri, &[], Vec::new()).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
        }
        run_ids
    }
}

#[test]
fn the_router_takes_anything_without_a_panic_or_a_5xx() {
    let cases: u32 = std::env::var("BATON_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let seed: u64 = std::env::var("BATON_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand_seed);
    eprintln!("fuzz: {cases} requests, BATON_FUZZ_SEED={seed}");
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let harness = tokio.block_on(async {
        let runtime = LocalRuntime::start(
            registry(),
            Arc::new(MemoryStore::new()),
            LocalOptions::default(),
        )
        .await
        .unwrap();
        let router = router(
            runtime.engine().clone(),
            Keys::open().with_webhook_secret("hook", SECRET),
        );
        Harness { runtime, router }
    });
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let mut accepted = 0usize;
    for _ in 0..cases {
        // Ids the store holds, so paths reach real runs and events too.
        let known: Vec<String> = tokio.block_on(async {
            let page = harness.get_json("/v1/runs?limit=20").await;
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| [r["run_id"].clone(), r["event_id"].clone()])
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        });
        let case = case(known).new_tree(&mut runner).unwrap().current();
        let (status, body) = tokio.block_on(harness.call(
            case.method.clone(),
            &case.path,
            &case.headers,
            case.body.clone(),
        ));
        let text = String::from_utf8_lossy(&body);
        assert!(
            !status.is_server_error(),
            "{status} for {case:?}\n{text}\nreplay with BATON_FUZZ_SEED={seed}"
        );
        // What /e accepted reads back.
        if case.path.starts_with("/e/") && status == StatusCode::OK {
            let reply: Value = serde_json::from_slice(&body).unwrap();
            for id in reply["ids"].as_array().unwrap() {
                let id = id.as_str().unwrap();
                tokio.block_on(harness.get_json(&format!("/v1/events/{id}/runs")));
                accepted += 1;
            }
        }
    }
    // Once the runs have had time to end (or sleep), every one of them reads back.
    let runs = tokio.block_on(async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        harness.everything_reads_back().await
    });
    eprintln!(
        "fuzz: {accepted} events accepted, {} runs read back",
        runs.len()
    );
    drop(harness.runtime);
}

fn rand_seed() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
