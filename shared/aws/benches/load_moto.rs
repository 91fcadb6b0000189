//! Runs end to end on DynamoDB + SQS (moto server), delivered as Lambda delivers them, with
//! duplicate deliveries: a share of handled messages is left on the queue (delivered again
//! after the visibility timeout) and a share is sent a second time. Not a test: it asserts only
//! that every run ends once, with the right output, and that no step ran twice.
//!
//! ```text
//! BATON_MOTO_ENDPOINT=$(scripts/moto) cargo bench -p baton-aws --bench load_moto -- [--runs N]
//! ```

use std::time::{Duration, Instant};

use baton::{Ctx, EngineConfig, Error, Event, Function, Registry, RunStatus, Step, Store};
use baton_testkit::moto::{ConsumeOptions, Deployment};
use serde_json::{Value, json};

const FETCH: Step = Step::new("fetch").memory_mb(128);
const SAVE: Step = Step::new("save").memory_mb(128);

/// Two steps and a short sleep, as a typical job: fetch, wait a moment, save.
fn job() -> Function {
    Function::new("job")
        .trigger("load/job")
        .steps(&[FETCH, SAVE])
        .handler(async |ctx: Ctx, event: Event<Value>| {
            let k = event.data["k"].as_u64().unwrap_or(0);
            let fetched: u64 = ctx.step(FETCH, async |_| Ok(k * 2)).await?;
            ctx.sleep("settle", Duration::from_secs(1)).await?;
            let saved: u64 = ctx.step(SAVE, async |_| Ok(fetched + 1)).await?;
            Ok::<_, Error>(saved)
        })
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = arg("--runs", 1000);
    let registry = Registry::new().register(job()).unwrap();
    let deployment = Deployment::start(registry, EngineConfig::default()).await;
    let options = ConsumeOptions {
        redeliver: 0.1,
        duplicate: 0.1,
        visibility_timeout: 2,
        ..ConsumeOptions::default()
    };
    let consumers = deployment.consume(options).await;
    let started = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|k| json!({"name": "load/job", "data": {"k": k}}))
            .collect();
        ids.extend(deployment.send(&json!(events)).await);
    }
    // Duplicates here are the queue's (SQS's at-least-once delivery, and a Lambda whose
    // answer was lost): the events carry no idempotency id.
    let runs = deployment
        .wait_quietly(&ids, Duration::from_secs(3600))
        .await;
    let took = started.elapsed();
    let stats = consumers.stop().await;
    let mut wrong = 0;
    let mut steps_twice = 0;
    for (k, run) in runs.iter().enumerate() {
        let expected = json!((k as u64) * 2 + 1);
        if run.status != RunStatus::Completed || run.output.as_ref() != Some(&expected) {
            wrong += 1;
        }
        let journal = deployment.observer.journal(&run.run_id).await.unwrap();
        steps_twice += journal.iter().filter(|s| s.attempts > 1).count();
    }
    assert_eq!(runs.len(), n, "one run per event");
    assert_eq!(wrong, 0, "every run ended once with its output");
    let get = |c| stats.get(c);
    println!("\n## {n} runs on DynamoDB + SQS (moto), with duplicate deliveries\n");
    println!(
        "| runs | ended right | took | invocations | messages | left on the queue (redelivered) | sent twice | step attempts > 1 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {n} | {} | {:.0} s | {} | {} | {} | {} | {steps_twice} |",
        runs.len() - wrong,
        took.as_secs_f64(),
        get(&stats.invocations),
        get(&stats.messages),
        get(&stats.redelivered),
        get(&stats.duplicated),
    );
}
