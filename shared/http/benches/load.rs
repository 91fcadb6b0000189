//! Load on the local runtime (the embedded SQLite store, the in-process queue, the Router), as
//! `baton dev` runs it. Not a test: it asserts only that nothing is lost.
//!
//! ```text
//! cargo bench -p baton-http --bench load -- [--in-flight N] [--listed N] [--event-kib K]
//! ```
//!
//! 1. In flight: `--in-flight` runs (default 10,000) started at once; each sleeps 2 s, then
//!    waits up to 10 s for an event carrying its key. Half get theirs, half time out. Every
//!    run must end with the right output. Reported: the time to send, the time until the last
//!    run ended (drain), the peak RSS and its growth per run in flight.
//! 2. Listing: `--listed` runs (default 1,000) whose events are `--event-kib` KiB (default
//!    200), then `GET /v1/runs?limit=1000` three times in a row and six at once. Reported:
//!    the peak RSS over idle, per request. The same run measures a baseline: the listing as it
//!    was before summaries (every run read whole, events included, as `list_runs` did).
//!
//! RSS is VmRSS / VmHWM from /proc/self/status; VmHWM is reset (/proc/self/clear_refs)
//! before each measurement.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use baton::local::{LocalOptions, LocalRuntime};
use baton::model::{EventRecord, RunQuery, RunRecord, RunStatus};
use baton::{Ctx, Error, Event, Function, NewEvent, Registry, Store, Wait};
use baton_http::{Keys, router};
use baton_sqlite::{Durability, SqliteStore};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const GO: Wait = Wait::new("go", "load/go")
    .matching_run_event("data.key")
    .timeout(Duration::from_secs(10));

fn in_flight() -> Function {
    Function::new("in-flight")
        .trigger("load/start")
        .wait(GO)
        .handler(async |ctx: Ctx, _event: Event<Value>| {
            ctx.sleep("nap", Duration::from_secs(2)).await?;
            let go = ctx.wait_for_match::<Value>(GO).await?;
            Ok::<_, Error>(go.is_some())
        })
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

fn rss_mib() -> f64 {
    status_kib("VmRSS:") as f64 / 1024.0
}

fn peak_mib() -> f64 {
    status_kib("VmHWM:") as f64 / 1024.0
}

fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn measure_in_flight(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(SqliteStore::open(dir.path().join("load.db"), Durability::Normal).unwrap());
    let registry = Registry::new().register(in_flight()).unwrap();
    let runtime = LocalRuntime::start(registry, store.clone(), LocalOptions::default())
        .await
        .unwrap();
    let engine = runtime.engine().clone();
    let idle = rss_mib();
    reset_peak();
    let started = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let events = chunk
            .iter()
            .map(|k| NewEvent::new("load/start", json!({"key": k})))
            .collect();
        ids.extend(engine.send_events(events).await.unwrap());
    }
    let sent = started.elapsed();
    // The even keys get their event (before or after their run waits: the wait is race-free).
    for chunk in (0..n).step_by(2).collect::<Vec<_>>().chunks(500) {
        let events = chunk
            .iter()
            .map(|k| NewEvent::new("load/go", json!({"key": k})))
            .collect();
        engine.send_events(events).await.unwrap();
    }
    // Drained when no run is Queued or Running.
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut live = 0;
        for status in [RunStatus::Queued, RunStatus::Running] {
            let page = store
                .list_runs(&RunQuery {
                    status: Some(status),
                    limit: 1,
                    ..RunQuery::default()
                })
                .await
                .unwrap();
            live += page.runs.len();
        }
        if live == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "runs did not drain"
        );
    }
    let drained = started.elapsed();
    let peak = peak_mib();
    // Nothing lost: every run ended, with the output its key calls for.
    let mut wrong = 0;
    for (k, id) in ids.iter().enumerate() {
        let run = store
            .get_run(&baton::engine::run_id_for(id, "in-flight"))
            .await
            .unwrap()
            .expect("every event started its run");
        if run.status != RunStatus::Completed || run.output != Some(json!(k % 2 == 0)) {
            wrong += 1;
        }
    }
    assert_eq!(wrong, 0, "runs ended wrong or not at all");
    println!(
        "\n## {n} runs in flight (sleep 2 s, then wait up to 10 s; SQLite, durability normal)\n"
    );
    println!(
        "| sent in | drained in | RSS idle | peak RSS | growth per run in flight | runs lost |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {:.1} s | {:.1} s | {idle:.1} MiB | {peak:.1} MiB | {:.1} KiB | 0 |",
        sent.as_secs_f64(),
        drained.as_secs_f64(),
        (peak - idle) * 1024.0 / n as f64,
    );
    drop(runtime);
}

async fn list(router: &axum::Router) -> usize {
    let response = router
        .clone()
        .oneshot(
            Request::get("/v1/runs?limit=1000")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(response.status().is_success());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let page: Value = serde_json::from_slice(&body).unwrap();
    page["data"].as_array().map_or(0, Vec::len)
}

async fn measure_listing(n: usize, event_kib: usize, mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(SqliteStore::open(dir.path().join("list.db"), Durability::Normal).unwrap());
    let blob = "x".repeat(event_kib * 1024);
    let started_at = chrono::Utc::now();
    let mut run_ids = Vec::with_capacity(n);
    for i in 0..n {
        let event_id = ulid::Ulid::new().to_string();
        let event = EventRecord {
            id: event_id.clone(),
            name: "load/big".into(),
            data: json!({"i": i, "blob": blob}),
            ts: started_at.timestamp_millis(),
            user: json!({}),
            v: None,
            idempotency_id: None,
        };
        store.put_event(&event).await.unwrap();
        let run = RunRecord {
            run_id: ulid::Ulid::new().to_string(),
            function_id: "big".into(),
            event_id,
            event,
            status: RunStatus::Completed,
            started_at,
            ended_at: Some(started_at),
            output: Some(json!({"i": i})),
            error: None,
            progress: None,
            replay_of: None,
            replay_from: None,
        };
        store.create_run(&run).await.unwrap();
        run_ids.push(run.run_id);
    }
    let registry = Registry::new();
    let runtime = LocalRuntime::start(registry, store.clone(), LocalOptions::default())
        .await
        .unwrap();
    let router = router(runtime.engine().clone(), Keys::open());

    // Each measurement runs in a process of its own (see `main`): the allocator keeps what
    // an earlier one freed, which would hide the next one's growth.
    let idle = rss_mib();
    reset_peak();
    let what = match mode {
        "sequential" => {
            for _ in 0..3 {
                assert_eq!(list(&router).await, n.min(1000));
            }
            "3 listings in a row"
        }
        "concurrent" => {
            let six: Vec<_> = (0..6).map(|_| list(&router)).collect();
            for listed in futures::future::join_all(six).await {
                assert_eq!(listed, n.min(1000));
            }
            "6 listings at once"
        }
        _ => {
            // As listings read before summaries: every run whole, events included.
            let mut whole = Vec::with_capacity(n);
            for id in run_ids.iter().take(1000) {
                whole.push(store.get_run(id).await.unwrap().unwrap());
            }
            assert_eq!(whole.len(), n.min(1000));
            "baseline: 1 listing reading whole runs, as before summaries"
        }
    };
    let peak = peak_mib() - idle;
    let kept = rss_mib() - idle;
    // In a row, one request at a time holds the peak; at once, six share it.
    let per_request = if mode == "concurrent" {
        peak / 6.0
    } else {
        peak
    };
    println!("| {what} | {idle:.1} MiB | {peak:.1} MiB | {per_request:.1} MiB | {kept:.1} MiB |");
    drop(runtime);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo test --all-targets` builds and runs benches too, without `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let in_flight = arg("--in-flight", 10_000);
    let listed = arg("--listed", 1000);
    let event_kib = arg("--event-kib", 200);
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--scenario") {
        match args.get(i + 1).map(String::as_str) {
            Some("in-flight") => measure_in_flight(in_flight).await,
            Some(mode) => measure_listing(listed, event_kib, mode).await,
            None => panic!("--scenario in-flight|sequential|concurrent|baseline"),
        }
        return;
    }
    // Each scenario in a fresh process of this binary.
    let scenario = |name: &str| {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--bench", "--scenario", name])
            .args(["--in-flight", &in_flight.to_string()])
            .args(["--listed", &listed.to_string()])
            .args(["--event-kib", &event_kib.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "scenario {name}");
    };
    println!("\n## Listing {listed} runs of {event_kib} KiB events: `GET /v1/runs?limit=1000`\n");
    println!("| | RSS idle | peak RSS over idle | per request | RSS kept after |");
    println!("|---|---|---|---|---|");
    for mode in ["sequential", "concurrent", "baseline"] {
        scenario(mode);
    }
    scenario("in-flight");
}
