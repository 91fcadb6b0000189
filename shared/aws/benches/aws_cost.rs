//! What a step costs on AWS: runs of 10, 100 and 1,000 steps on DynamoDB + SQS (moto server),
//! delivered as Lambda delivers them (`baton_testkit::moto`), every request metered
//! ([`baton_testkit::cost::CostMeter`]): requests and DynamoDB capacity units per step, turned into
//! dollars per million steps at us-east-1 list prices.
//!
//! ```text
//! BATON_MOTO_ENDPOINT=$(scripts/moto) cargo bench -p baton-aws --bench aws_cost
//! ```
//!
//! `BATON_COST_WAITS=N` (default 20; 0 skips it) also measures what a wait for an event costs:
//! runs that each wait for their own event, the events sent once every run waits.
//!
//! `BATON_COST_SCENARIOS="10x20,100x4,1000x1,100x4/alt,1000x1/alt"` (steps x runs; `/alt`:
//! the steps alternate between two step functions, so none runs inline after another) picks
//! the scenarios.

use std::time::{Duration, Instant};

use baton::{Ctx, EngineConfig, Error, Event, Function, Registry, RunStatus, Step, Store, Wait};
use baton_testkit::cost::Prices;
use baton_testkit::moto::{ConsumeOptions, Deployment};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Chain {
    steps: u32,
    /// Alternate between two steps (two queues): no step can run inline after another.
    alternate: bool,
}

const LINK: Step = Step::new("link").memory_mb(128);
const HOP: Step = Step::new("hop").memory_mb(128);
const REPLY: Wait = Wait::new("reply", "bench/reply")
    .matching_run_event("data.key")
    .timeout(Duration::from_secs(3600));

/// A run of `steps` steps, each fed the previous one's output (a small JSON object, as real
/// steps hand on ids and URLs rather than data).
fn chain() -> Function {
    Function::new("chain")
        .trigger("bench/chain")
        .steps(&[LINK, HOP])
        .handler(async |ctx: Ctx, event: Event<Chain>| {
            let mut last = json!({"i": 0, "note": "a typical small step output"});
            for i in 0..event.data.steps {
                let step = if event.data.alternate && i % 2 == 1 {
                    HOP
                } else {
                    LINK
                };
                let prev = &last;
                last = ctx
                    .step(step, async |_| {
                        Ok(json!({"i": i + 1, "from": prev["i"], "note": "a typical small step output"}))
                    })
                    .await?;
            }
            Ok::<_, Error>(last)
        })
}

/// Waits for `bench/reply` whose `data.key` is its own event's.
fn waiter() -> Function {
    Function::new("waiter")
        .trigger("bench/wait")
        .wait(REPLY)
        .handler(async |ctx: Ctx, _event: Event<serde_json::Value>| {
            let reply = ctx.wait_for_match(REPLY).await?;
            Ok::<_, Error>(reply.is_some())
        })
}

/// What `n` waits cost, from the start of their runs to their end, per wait.
async fn measure_waits(n: u32, prices: &Prices) {
    let registry = Registry::new().register(waiter()).unwrap();
    let deployment = Deployment::start(registry, EngineConfig::default()).await;
    let consumers = deployment.consume(ConsumeOptions::default()).await;
    let before = deployment.meter.usage();
    let starts: Vec<_> = (0..n)
        .map(|k| json!({"name": "bench/wait", "data": {"key": k}}))
        .collect();
    let ids = deployment.send(&json!(starts)).await;
    // Every run waits (its wait step is in the journal) before the replies go.
    for id in &ids {
        loop {
            let runs = deployment.observer.runs_for_event(id).await.unwrap();
            let waiting = match runs.first() {
                Some(run) => deployment
                    .observer
                    .get_step(&run.run_id, "reply")
                    .await
                    .unwrap()
                    .is_some(),
                None => false,
            };
            if waiting {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let replies: Vec<_> = (0..n)
        .map(|k| json!({"name": "bench/reply", "data": {"key": k}}))
        .collect();
    deployment.send(&json!(replies)).await;
    for run in deployment
        .wait_quietly(&ids, Duration::from_secs(600))
        .await
    {
        assert_eq!(run.output, Some(json!(true)), "{run:?}");
    }
    consumers.stop().await;
    let usage = deployment.meter.usage().since(&before);
    let per = |x: f64| x / f64::from(n);
    println!("\n{n} waits (a run's start, its wait, the reply event, its end):\n{usage}\n");
    println!(
        "| per wait | SQS req. | DynamoDB req. | WCU | RCU | $ per million waits (no Lambda) |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| start + wait + reply + end | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
        per(usage.sqs_requests_busy() as f64),
        per(usage.requests_of("dynamodb") as f64),
        per(usage.write_units),
        per(usage.read_units),
        usage.dollars(prices) / f64::from(n) * 1e6,
    );
}

struct Row {
    steps_per_run: u32,
    alternate: bool,
    runs: u32,
    seconds: f64,
    invocations: f64,
    sqs: f64,
    dynamo: f64,
    wcu: f64,
    rcu: f64,
    handler_ms: f64,
    dollars: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo test --all-targets` builds and runs benches too, without `--bench`: building is
    // the check there.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let scenarios: Vec<(u32, u32, bool)> = std::env::var("BATON_COST_SCENARIOS")
        .unwrap_or_else(|_| "10x20,100x4,1000x1,10x20/alt,100x4/alt,1000x1/alt".into())
        .split(',')
        .map(|s| {
            let (s, alternate) = match s.trim().strip_suffix("/alt") {
                Some(s) => (s, true),
                None => (s.trim(), false),
            };
            let (steps, runs) = s.split_once('x').expect("STEPSxRUNS[/alt]");
            (
                steps.trim().parse().unwrap(),
                runs.trim().parse().unwrap(),
                alternate,
            )
        })
        .collect();
    let prices = Prices::default();
    let mut rows = Vec::new();
    for (steps_per_run, runs, alternate) in scenarios {
        let registry = Registry::new().register(chain()).unwrap();
        let deployment = Deployment::start(registry, EngineConfig::default()).await;
        let before = deployment.meter.usage();
        let consumers = deployment.consume(ConsumeOptions::default()).await;
        let started = Instant::now();
        let events: Vec<_> = (0..runs)
            .map(|_| json!({"name": "bench/chain", "data": {"steps": steps_per_run, "alternate": alternate}}))
            .collect();
        let ids = deployment.send(&json!(events)).await;
        for run in deployment
            .wait_quietly(&ids, Duration::from_secs(1800))
            .await
        {
            assert_eq!(run.status, RunStatus::Completed, "{run:?}");
        }
        let seconds = started.elapsed().as_secs_f64();
        let stats = consumers.stop().await;
        let usage = deployment.meter.usage().since(&before);
        let steps = f64::from(steps_per_run * runs);
        let invocations = stats.get(&stats.invocations) as f64;
        let durations = stats.durations_us.lock().unwrap().clone();
        let handler_ms =
            durations.iter().sum::<u64>() as f64 / durations.len().max(1) as f64 / 1000.0;
        // Lambda: requests, plus duration at 128 MB for the measured handler time.
        let lambda = invocations * prices.lambda_per_million_requests / 1e6
            + invocations * (handler_ms / 1000.0) * 0.125 * prices.lambda_per_gb_second;
        let per_step = |x: f64| x / steps;
        println!(
            "\n{steps_per_run} steps x {runs} runs{}: {seconds:.1} s\n{usage}\n  Lambda invocations {invocations}",
            if alternate {
                " (alternating steps)"
            } else {
                ""
            }
        );
        // Where the writes went: a partition (a table item's key, or an index key) takes
        // about 1,000 write units a second on AWS, so its share of all writes bounds how fast
        // the stack can go before it throttles.
        println!("  busiest partitions (write units, share of all):");
        for (partition, units, share) in usage.busiest_partitions(6) {
            println!("    {partition:<48} {units:>8.0} {:>6.1}%", share * 100.0);
        }
        rows.push(Row {
            steps_per_run,
            alternate,
            runs,
            seconds,
            invocations: per_step(invocations),
            sqs: per_step(usage.sqs_requests_busy() as f64),
            dynamo: per_step(usage.requests_of("dynamodb") as f64),
            wcu: per_step(usage.write_units),
            rcu: per_step(usage.read_units),
            handler_ms,
            dollars: (usage.dollars(&prices) + lambda) / steps * 1e6,
        });
    }
    let waits: u32 = std::env::var("BATON_COST_WAITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    if waits > 0 {
        measure_waits(waits, &prices).await;
    }
    println!(
        "\nper step (the driver watches runs through an unmetered client; SQS without idle polls; Lambda at \
         128 MB for the handler time measured here, against moto)\n"
    );
    println!(
        "| steps/run | steps | runs | wall s | Lambda inv. | SQS req. | DynamoDB req. | WCU | RCU | handler ms | $ per million steps |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} |",
            r.steps_per_run,
            if r.alternate {
                "alternating"
            } else {
                "one step"
            },
            r.runs,
            r.seconds,
            r.invocations,
            r.sqs,
            r.dynamo,
            r.wcu,
            r.rcu,
            r.handler_ms,
            r.dollars
        );
    }
}
