//! End to end on DynamoDB + SQS (moto server), delivered the way Lambda delivers: events in
//! through the events route's code fed API Gateway v2 events, every step and continuation
//! through its own queue, received in batches and handed to `handle_queue_batch` as an
//! `SqsEvent`, deleted only when not reported as failed. Duplicates are injected (messages
//! left on the queue to come back, bodies sent twice) and change nothing.
//!
//! Needs a moto server: `scripts/moto` starts one (scripts/test does).

use std::time::Duration;

use baton::EngineConfig;
use baton_testkit::moto::{ConsumeOptions, Deployment};
use serde_json::{Value, json};

fn step<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {run}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_order_example_runs_on_dynamodb_and_sqs_and_duplicates_change_nothing() {
    let deployment = Deployment::start(app::registry(), EngineConfig::default()).await;
    let consumers = deployment
        .consume(ConsumeOptions {
            redeliver: 0.25,
            duplicate: 0.25,
            visibility_timeout: 1,
            seed: 7,
            ..ConsumeOptions::default()
        })
        .await;

    let ids = deployment
        .send(&json!([
            {"name": "demo/order.placed", "data": {"order_id": "o-ok", "items": ["book", "pen"], "flaky_payment": true, "cool_down_s": 1}},
            {"name": "demo/order.placed", "data": {"order_id": "o-empty", "items": []}},
        ]))
        .await;
    assert_eq!(ids.len(), 2);

    let timeout = Duration::from_secs(120);
    let ok = deployment.wait_for_event_runs(&ids[0], 1, timeout).await;
    let failed = deployment.wait_for_event_runs(&ids[1], 1, timeout).await;

    // The good order: parallel steps, a retry that succeeds on the third attempt, a sleep.
    let (status, run) = deployment
        .http(
            "GET",
            &format!("/v1/runs/{}", ok[0]["run_id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 200, "{run}");
    let run = &run["data"];
    assert_eq!(run["status"], "Completed", "{run}");
    assert_eq!(run["output"]["order_id"], "o-ok");
    assert_eq!(run["output"]["payment"], "pay-o-ok");
    assert_eq!(run["output"]["charged_on_attempt"], 3, "{run}");
    assert_eq!(run["progress"]["percent"], 100, "{run}");
    for (name, attempts) in [
        ("validate", 1),
        ("reserve-stock", 1),
        ("charge-card", 3),
        ("send-receipt", 1),
    ] {
        let s = step(run, name);
        assert_eq!(s["status"], "Completed", "{s}");
        assert_eq!(
            s["attempts"], attempts,
            "duplicates must not re-run a step: {s}"
        );
    }
    let sleep = step(run, "cool-down");
    assert_eq!(sleep["kind"], "Sleep");
    assert_eq!(sleep["status"], "Completed", "{sleep}");
    assert_eq!(run["steps"].as_array().unwrap().len(), 5, "{run}");
    // The reservation used the step's idempotency key, fixed whatever the deliveries.
    let run_id = run["run_id"].as_str().unwrap();
    assert_eq!(
        run["output"]["reservation"],
        format!(
            "rsv-{run_id}:{}",
            step(run, "reserve-stock")["id"].as_str().unwrap()
        )
    );

    // The empty order fails without retries, and its failure handler runs exactly once.
    let failed_run = &failed[0];
    assert_eq!(failed_run["status"], "Failed", "{failed_run}");
    assert_eq!(failed_run["error"]["message"], "order has no items");
    let failed_id = failed_run["run_id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + timeout;
    let handler_runs = loop {
        let (status, body) = deployment
            .http(
                "GET",
                "/v1/runs?function_id=process-order-failure&limit=50",
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let runs = body["data"].as_array().cloned().unwrap_or_default();
        if runs.iter().any(|r| r["status"] == "Completed") {
            break runs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failure handler run: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        handler_runs.len(),
        1,
        "one failure event, one handler run: {handler_runs:?}"
    );
    let handler_output = handler_runs[0]["output"].as_str().unwrap_or_default();
    assert!(
        handler_output.starts_with(&format!("run {failed_id} failed: ")),
        "{handler_output}"
    );

    // Let the last injected duplicates come back and be handled: nothing may change.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = consumers.stop().await;
    let (_, again) = deployment
        .http("GET", &format!("/v1/runs/{run_id}"), None)
        .await;
    assert_eq!(
        &again["data"], run,
        "a late duplicate changed a finished run"
    );
    let redelivered = stats.get(&stats.redelivered);
    let duplicated = stats.get(&stats.duplicated);
    assert!(
        redelivered > 0 && duplicated > 0,
        "the test must inject duplicates: {redelivered} redelivered, {duplicated} sent twice"
    );
    eprintln!(
        "{} invocations, {} messages, {redelivered} redelivered, {duplicated} sent twice\n{}",
        stats.get(&stats.invocations),
        stats.get(&stats.messages),
        deployment.meter.usage()
    );
}
