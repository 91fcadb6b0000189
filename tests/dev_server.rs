//! `baton dev` as a user runs it: the real binary, a real socket on 127.0.0.1, the example
//! functions, the embedded SQLite store on disk, and `kill -9` in the middle of a run.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "support/contract.rs"]
mod contract;

struct DevServer {
    child: Child,
    url: String,
}

impl DevServer {
    fn start(db: &std::path::Path) -> DevServer {
        Self::start_with(db, &[])
    }

    fn start_with(db: &std::path::Path, extra: &[&str]) -> DevServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["dev", "--port", "0", "--durability", "normal", "--db"])
            .arg(db)
            .args(extra)
            .env("RUST_LOG", "warn")
            .env_remove("BATON_EVENT_KEY")
            .env_remove("BATON_SIGNING_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("baton dev starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a banner line").unwrap();
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("the URL")
            .to_string();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        DevServer { child, url }
    }

    fn kill9(mut self) {
        // SIGKILL: no shutdown hook runs.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn get(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// The one run an event started, once it exists.
async fn run_of(server: &DevServer, event_id: &str) -> String {
    for _ in 0..500 {
        let runs = get(&format!("{}/v1/events/{event_id}/runs", server.url)).await;
        if let Some(run) = runs["data"].as_array().and_then(|r| r.first()) {
            return run["run_id"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("event {event_id} started no run");
}

async fn wait_until(
    server: &DevServer,
    run_id: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let run = get(&format!("{}/v1/runs/{run_id}", server.url)).await["data"].clone();
        if done(&run) {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting on run {run_id}: {run:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ended(run: &Value) -> bool {
    matches!(
        run["status"].as_str(),
        Some("Completed" | "Failed" | "Cancelled")
    )
}

fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id}: {run:#}"))
}

#[tokio::test]
async fn an_order_runs_to_completion_with_a_retry_a_sleep_and_progress() {
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(&dir.path().join("baton.db"));
    let event = json!({"name": "demo/order.placed", "data": {"order_id": "o-1", "items": ["book", "pen"], "flaky_payment": true, "cool_down_s": 1}});
    let (status, body) = post(&format!("{}/e/anykey", server.url), event).await;
    assert_eq!(status, 200, "{body}");
    let run_id = run_of(&server, body["ids"][0].as_str().unwrap()).await;
    let run = wait_until(&server, &run_id, Duration::from_secs(60), ended).await;
    assert_eq!(run["status"], "Completed", "{run:#}");
    assert_eq!(run["output"]["charged_on_attempt"], 3);
    assert_eq!(run["output"]["receipt"], "receipt for o-1");
    assert_eq!(run["progress"], json!({"percent": 100, "message": "done"}));
    let charge = step(&run, "charge-card");
    assert_eq!(
        (charge["status"].as_str(), charge["attempts"].as_u64()),
        (Some("Completed"), Some(3))
    );
    assert_eq!(step(&run, "cool-down")["status"], "Completed");
    let ids: Vec<_> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "validate",
            "reserve-stock",
            "charge-card",
            "cool-down",
            "send-receipt"
        ]
    );
}

#[tokio::test]
async fn a_non_retriable_failure_fails_the_run_and_runs_the_failure_handler() {
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(&dir.path().join("baton.db"));
    let event = json!({"name": "demo/order.placed", "data": {"order_id": "empty", "items": []}});
    let (_, body) = post(&format!("{}/e/k", server.url), event).await;
    let run_id = run_of(&server, body["ids"][0].as_str().unwrap()).await;
    let run = wait_until(&server, &run_id, Duration::from_secs(30), ended).await;
    assert_eq!(run["status"], "Failed");
    assert_eq!(
        run["error"],
        json!({"name": "NonRetriableError", "message": "order has no items"})
    );
    assert_eq!(step(&run, "validate")["attempts"], 1);
    let handlers = get(&format!(
        "{}/v1/runs?function_id=process-order-failure",
        server.url
    ))
    .await;
    let handler_id = handlers["data"][0]["run_id"]
        .as_str()
        .expect("a failure-handler run")
        .to_string();
    let handler = wait_until(&server, &handler_id, Duration::from_secs(30), ended).await;
    assert_eq!(handler["status"], "Completed");
    assert_eq!(
        handler["output"],
        json!(format!(
            "run {run_id} failed: NonRetriableError: order has no items"
        ))
    );
}

#[tokio::test]
async fn a_run_killed_with_sigkill_mid_sleep_finishes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("baton.db");
    let server = DevServer::start(&db);
    let event = json!({"name": "demo/order.placed", "data": {"order_id": "o-9", "items": ["lamp"], "cool_down_s": 4}});
    let (_, body) = post(&format!("{}/e/k", server.url), event).await;
    let run_id = run_of(&server, body["ids"][0].as_str().unwrap()).await;
    // Wait until the run sleeps, then kill the process outright.
    let sleeping = |run: &Value| {
        run["steps"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["id"] == "cool-down" && s["status"] == "Sleeping")
        })
    };
    wait_until(&server, &run_id, Duration::from_secs(30), sleeping).await;
    server.kill9();

    let server = DevServer::start(&db);
    let run = get(&format!("{}/v1/runs/{run_id}", server.url)).await["data"].clone();
    assert_eq!(
        run["status"], "Running",
        "the run survived the kill unfinished: {run:#}"
    );
    let run = wait_until(&server, &run_id, Duration::from_secs(60), ended).await;
    assert_eq!(run["status"], "Completed", "{run:#}");
    assert_eq!(run["output"]["receipt"], "receipt for o-9");
    for id in ["validate", "reserve-stock", "charge-card", "send-receipt"] {
        assert_eq!(step(&run, id)["attempts"], 1, "step {id} ran once");
    }
}

#[tokio::test]
async fn the_api_contract_holds() {
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(&dir.path().join("baton.db"));
    contract::check(&contract::Target {
        url: &server.url,
        event_key: "k",
        signing_key: None,
    })
    .await;
}

#[tokio::test]
async fn a_cron_trigger_fires_in_the_dev_server() {
    let dir = tempfile::tempdir().unwrap();
    // The daily report, every second for the test (`--cron` overrides a schedule in dev).
    let server = DevServer::start_with(
        &dir.path().join("baton.db"),
        &["--cron", "order-report=* * * * * *"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let run = loop {
        let runs = get(&format!(
            "{}/v1/runs?function_id=order-report&status=Completed",
            server.url
        ))
        .await;
        if let Some(run) = runs["data"].as_array().and_then(|r| r.first()) {
            break run.clone();
        }
        assert!(Instant::now() < deadline, "no cron run within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        run["output"]
            .as_str()
            .is_some_and(|o| o.starts_with("order report for 20")),
        "{run:#}"
    );
    let event = get(&format!(
        "{}/v1/runs/{}",
        server.url,
        run["run_id"].as_str().unwrap()
    ))
    .await;
    assert_eq!(
        event["data"]["event"]["name"], "baton/scheduled",
        "{event:#}"
    );
}

#[tokio::test]
async fn the_clip_example_runs_against_the_built_in_fakes_and_their_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(&dir.path().join("baton.db"));
    let event = json!({"name": "clips/generate.requested", "data": {
        "project_id": "p-dev", "creator_id": "c-dev",
        "video_url": "https://cdn.example/p-dev.mp4", "mode": "webhook"}});
    let (status, body) = post(&format!("{}/e/dev", server.url), event).await;
    assert_eq!(status, 200, "{body}");
    let run_id = run_of(&server, body["ids"][0].as_str().unwrap()).await;
    let run = wait_until(&server, &run_id, Duration::from_secs(30), ended).await;
    assert_eq!(run["status"], "Completed", "{run:#}");
    assert_eq!(run["output"]["clips"], 3);
    assert_eq!(step(&run, "task-finished")["kind"], "Wait");
}

/// Off loopback, an open dev server could be driven by anyone who reaches it: without a
/// signing key `baton dev --host 0.0.0.0` refuses to start (before binding anything).
#[test]
fn an_exposed_bind_needs_a_signing_key() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["dev", "--host", "0.0.0.0", "--port", "0", "--db"])
        .arg(dir.path().join("baton.db"))
        .env_remove("BATON_SIGNING_KEY")
        .env_remove("BATON_HOST")
        .output()
        .expect("baton runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("BATON_SIGNING_KEY"), "{stderr}");
    assert!(!dir.path().join("baton.db").exists(), "nothing was opened");
}
