//! The engine end to end in local mode, on the in-memory store, with paused tokio time so
//! sleeps and backoffs take no real time.

use baton::Step;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::engine::run_id_for;
use baton::local::{LocalOptions, LocalRuntime};
use baton::model::{MessageKind, RunQuery, RunRecord, StepKind};
use baton::store::memory::MemoryStore;
use baton::{
    Ctx, EngineConfig, Error, Event, Function, Limits, NewEvent, Registry, RunStatus, StepError,
    StepStatus,
};
use serde_json::{Value, json};

type Counts = Arc<Mutex<HashMap<String, u32>>>;

fn bump(counts: &Counts, key: &str) -> u32 {
    let mut c = counts.lock().unwrap();
    let n = c.entry(key.to_string()).or_insert(0);
    *n += 1;
    *n
}

async fn start(registry: Registry) -> LocalRuntime {
    // No sweeps: a lost message must show up as a stuck run here, not be papered over.
    let options = LocalOptions {
        sweep_interval: Duration::from_secs(1000 * 86400),
        ..LocalOptions::default()
    };
    LocalRuntime::start(registry, Arc::new(MemoryStore::new()), options)
        .await
        .unwrap()
}

async fn send(rt: &LocalRuntime, name: &str, data: Value) -> String {
    rt.engine()
        .send_events(vec![NewEvent::new(name, data)])
        .await
        .unwrap()
        .remove(0)
}

async fn finish(rt: &LocalRuntime, event_id: &str, function_id: &str) -> RunRecord {
    let run_id = run_id_for(event_id, function_id);
    rt.wait_for_run(&run_id, Duration::from_secs(3 * 366 * 86400))
        .await
        .expect("run ends")
}

#[tokio::test(start_paused = true)]
async fn steps_run_once_and_outputs_are_journaled() {
    let counts: Counts = Default::default();
    let c = counts.clone();
    let f = Function::new("seq")
        .trigger("t/seq")
        .step(Step::new("a"))
        .step(Step::new("b"))
        .handler(move |ctx: Ctx, ev: Event<Value>| {
            let c = c.clone();
            async move {
                let a: u32 = ctx
                    .step(Step::new("a"), |_| async { Ok(bump(&c, "a") * 10) })
                    .await?;
                let b: String = ctx
                    .step(Step::new("b"), |_| async move {
                        bump(&c, "b");
                        Ok(format!("{a}-{}", ev.data["x"]))
                    })
                    .await?;
                Ok(json!({"a": a, "b": b}))
            }
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let ev = send(&rt, "t/seq", json!({"x": 7})).await;
    let run = finish(&rt, &ev, "seq").await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.output, Some(json!({"a": 10, "b": "10-7"})));
    // Three invocations replayed the function; each body ran exactly once.
    assert_eq!(
        *counts.lock().unwrap(),
        HashMap::from([("a".into(), 1), ("b".into(), 1)])
    );
    let detail = rt.engine().get_run(&run.run_id).await.unwrap().unwrap();
    let steps: Vec<_> = detail
        .steps
        .iter()
        .map(|s| (s.step_id.as_str(), s.status, s.attempts))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("a", StepStatus::Completed, 1),
            ("b", StepStatus::Completed, 1)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_step_that_fails_twice_then_succeeds_shows_three_attempts() {
    let f = Function::new("flaky")
        .trigger("t/flaky")
        .step(Step::new("call").retries(3))
        .handler(|ctx: Ctx, _ev: Event<Value>| async move {
            ctx.step(Step::new("call"), |s| async move {
                if s.attempt < 3 {
                    Err(StepError::retriable(format!("boom {}", s.attempt)))
                } else {
                    Ok(s.attempt)
                }
            })
            .await
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let began = rt.engine().now();
    let ev = send(&rt, "t/flaky", json!({})).await;
    let run = finish(&rt, &ev, "flaky").await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!(3)));
    let steps = rt
        .engine()
        .get_run(&run.run_id)
        .await
        .unwrap()
        .unwrap()
        .steps;
    assert_eq!(steps[0].attempts, 3);
    assert_eq!(steps[0].status, StepStatus::Completed);
    // Backoff 1 s then 2 s, each with jitter in [50%, 100%].
    let took = (run.ended_at.unwrap() - began).to_std().unwrap();
    assert!(
        took >= Duration::from_millis(1500) && took <= Duration::from_secs(4),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_hint_delays_the_next_attempt() {
    let f = Function::new("limited")
        .trigger("t/429")
        .step(Step::new("call"))
        .handler(|ctx: Ctx, _ev: Event<Value>| async move {
            ctx.step(Step::new("call"), |s| async move {
                if s.attempt == 1 {
                    Err(StepError::retry_after(Duration::from_secs(120), "429"))
                } else {
                    Ok(())
                }
            })
            .await
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let began = rt.engine().now();
    let ev = send(&rt, "t/429", json!({})).await;
    let run = finish(&rt, &ev, "limited").await;
    assert_eq!(run.status, RunStatus::Completed);
    let took = (run.ended_at.unwrap() - began).to_std().unwrap();
    assert!(
        took >= Duration::from_secs(120) && took < Duration::from_secs(125),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn non_retriable_failure_fails_the_run_and_starts_the_failure_handler() {
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let f = Function::new("strict")
        .trigger("t/strict")
        .step(Step::new("check").retries(5))
        .failure_step(Step::new("note"))
        .handler(move |ctx: Ctx, _ev: Event<Value>| {
            let a = a.clone();
            async move {
                ctx.step(Step::new("check"), |_| async move {
                    a.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>(StepError::non_retriable("bad video"))
                })
                .await
            }
        })
        .on_failure(|ctx: Ctx, ev: Event<baton::FailureData>| async move {
            let msg = ev.data.error.message.clone();
            ctx.step(Step::new("note"), |_| async move {
                Ok(format!("handled: {msg}"))
            })
            .await
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let ev = send(&rt, "t/strict", json!({})).await;
    let run = finish(&rt, &ev, "strict").await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.as_ref().unwrap().message, "bad video");
    assert_eq!(run.error.as_ref().unwrap().name, "NonRetriableError");
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "non-retriable errors are not retried"
    );
    // The failure handler ran on the baton/function.failed event.
    let query = baton::model::RunQuery {
        function_id: Some("strict-failure".into()),
        limit: 10,
        ..Default::default()
    };
    let handler_runs = rt.engine().store().list_runs(&query).await.unwrap().runs;
    assert_eq!(handler_runs.len(), 1);
    let handler_run = rt
        .wait_for_run(&handler_runs[0].run_id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(handler_run.status, RunStatus::Completed);
    assert_eq!(handler_run.output, Some(json!("handled: bad video")));
    assert_eq!(handler_run.event.data["run_id"], json!(run.run_id));
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_come_back_to_the_code_as_an_error_it_can_handle() {
    let f = Function::new("fallback")
        .trigger("t/fb")
        .step(Step::new("primary").retries(2))
        .step(Step::new("secondary"));
    let f = f.handler(|ctx: Ctx, _ev: Event<Value>| async move {
        let primary: Result<String, Error> = ctx
            .step(Step::new("primary"), |_| async {
                Err(StepError::retriable("primary down"))
            })
            .await;
        match primary {
            Ok(v) => Ok(v),
            Err(e) => {
                assert!(e.is_step_failure());
                ctx.step(Step::new("secondary"), |_| async move {
                    Ok(format!("secondary after: {}", e.message))
                })
                .await
            }
        }
    });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let ev = send(&rt, "t/fb", json!({})).await;
    let run = finish(&rt, &ev, "fallback").await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.output, Some(json!("secondary after: primary down")));
    let steps = rt
        .engine()
        .get_run(&run.run_id)
        .await
        .unwrap()
        .unwrap()
        .steps;
    assert_eq!(
        (steps[0].status, steps[0].attempts),
        (StepStatus::Failed, 3)
    );
}

#[tokio::test(start_paused = true)]
async fn parallel_steps_are_planned_together_and_joined() {
    let f = Function::new("fan")
        .trigger("t/fan")
        .step(Step::new("part"))
        .step(Step::new("sum"));
    let f = f.handler(|ctx: Ctx, _ev: Event<Value>| async move {
        let parts = futures::future::join_all((0..5u32).map(|i| {
            let ctx = ctx.clone();
            async move {
                ctx.step(Step::new("part"), move |_| async move { Ok(i * i) })
                    .await
            }
        }))
        .await;
        let parts: Vec<u32> = parts.into_iter().collect::<Result<_, _>>()?;
        ctx.step(Step::new("sum"), move |_| async move {
            Ok(parts.iter().sum::<u32>())
        })
        .await
    });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let ev = send(&rt, "t/fan", json!({})).await;
    let run = finish(&rt, &ev, "fan").await;
    assert_eq!(run.output, Some(json!(30)));
    let steps = rt
        .engine()
        .get_run(&run.run_id)
        .await
        .unwrap()
        .unwrap()
        .steps;
    let ids: Vec<_> = steps.iter().map(|s| s.step_id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["0/part", "1/part", "2/part", "3/part", "4/part", "sum"]
    );
    // All five parts were planned by the same (start) invocation.
    assert!(
        steps[..5]
            .iter()
            .all(|s| s.planned_at == steps[0].planned_at)
    );
}

#[tokio::test(start_paused = true)]
async fn sleeps_of_a_year_complete_and_longer_ones_are_refused() {
    let f = Function::new("sleepy").trigger("t/sleep").handler(
        |ctx: Ctx, ev: Event<Value>| async move {
            let secs = ev.data["secs"].as_u64().unwrap();
            ctx.sleep("nap", Duration::from_secs(secs)).await?;
            Ok("awake")
        },
    );
    let rt = start(Registry::new().register(f).unwrap()).await;
    let year = 365 * 24 * 3600;
    let began = rt.engine().now();
    let ev = send(&rt, "t/sleep", json!({"secs": year})).await;
    // One long tokio sleep lets paused time jump straight to the wake-up.
    tokio::time::sleep(Duration::from_secs(year + 60)).await;
    let run = finish(&rt, &ev, "sleepy").await;
    assert_eq!(run.status, RunStatus::Completed);
    let slept = (run.ended_at.unwrap() - began).to_std().unwrap();
    assert!(
        slept >= Duration::from_secs(year) && slept < Duration::from_secs(year + 5),
        "{slept:?}"
    );
    let steps = rt
        .engine()
        .get_run(&run.run_id)
        .await
        .unwrap()
        .unwrap()
        .steps;
    assert_eq!(
        (steps[0].kind, steps[0].status),
        (StepKind::Sleep, StepStatus::Completed)
    );

    let ev = send(&rt, "t/sleep", json!({"secs": 400 * 24 * 3600})).await;
    let run = finish(&rt, &ev, "sleepy").await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.unwrap().name, "SleepTooLong");
}

/// A run lives at most `max_run_age` (400 days): two sleeps of 300 days are each allowed, but
/// the second would end past the run's maximum age, so it is refused.
#[tokio::test(start_paused = true)]
async fn a_sleep_past_the_runs_maximum_age_is_refused() {
    let f = Function::new("ageing").trigger("t/age").handler(
        |ctx: Ctx, _ev: Event<Value>| async move {
            let days = Duration::from_secs(300 * 24 * 3600);
            ctx.sleep("first", days).await?;
            ctx.sleep("second", days).await?;
            Ok("too old to get here")
        },
    );
    let rt = start(Registry::new().register(f).unwrap()).await;
    let ev = send(&rt, "t/age", json!({})).await;
    tokio::time::sleep(Duration::from_secs(300 * 24 * 3600 + 60)).await;
    let run = finish(&rt, &ev, "ageing").await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap();
    assert_eq!(error.name, "SleepTooLong");
    assert!(error.message.contains("maximum age"), "{}", error.message);
}

/// A run still going past `max_run_age` (here: waiting on a retry) fails with `RunTooOld`.
#[tokio::test(start_paused = true)]
async fn a_run_past_its_maximum_age_fails() {
    let f = Function::new("slow-retry")
        .trigger("t/slow")
        .step(Step::new("flaky"))
        .handler(|ctx: Ctx, _ev: Event<Value>| async move {
            ctx.step(Step::new("flaky"), |_| async {
                Err::<(), _>(StepError::retry_after(Duration::from_secs(60), "busy"))
            })
            .await
        });
    let options = LocalOptions {
        sweep_interval: Duration::from_secs(1000 * 86400),
        engine: EngineConfig {
            limits: Limits {
                max_run_age: Duration::from_secs(30),
                ..Limits::default()
            },
            ..EngineConfig::default()
        },
        ..LocalOptions::default()
    };
    let rt = LocalRuntime::start(
        Registry::new().register(f).unwrap(),
        Arc::new(MemoryStore::new()),
        options,
    )
    .await
    .unwrap();
    let ev = send(&rt, "t/slow", json!({})).await;
    let run = finish(&rt, &ev, "slow-retry").await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.unwrap().name, "RunTooOld");
}

/// `ctx.map`: one step per item, at most `parallelism` running at once, outputs in item
/// order; a failed item fails the map with its error once every item has run.
#[tokio::test(start_paused = true)]
async fn map_fans_out_with_bounded_parallelism_and_keeps_the_order() {
    let running = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let f = Function::new("fan")
        .trigger("t/fan")
        .step(Step::new("square").retries(0))
        .handler(move |ctx: Ctx, ev: Event<Value>| {
            let (r, p) = (r.clone(), p.clone());
            async move {
                let items: Vec<i64> = serde_json::from_value(ev.data["items"].clone()).unwrap();
                ctx.map(Step::new("square"), items, 3, move |_, n: i64| {
                    let (r, p) = (r.clone(), p.clone());
                    async move {
                        let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                        p.fetch_max(now, Ordering::SeqCst);
                        // Slower for the first items, so later ones overtake them.
                        tokio::time::sleep(Duration::from_millis(100 * (8 - n.unsigned_abs())))
                            .await;
                        r.fetch_sub(1, Ordering::SeqCst);
                        if n < 0 {
                            return Err(StepError::non_retriable(format!("bad item {n}")));
                        }
                        Ok(n * n)
                    }
                })
                .await
            }
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let ev = send(&rt, "t/fan", json!({"items": [1, 2, 3, 4, 5, 6, 7]})).await;
    let run = finish(&rt, &ev, "fan").await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.output, Some(json!([1, 4, 9, 16, 25, 36, 49])));
    let peak_seen = peak.load(Ordering::SeqCst);
    assert!(
        (2..=3).contains(&peak_seen),
        "at most 3 at once, and in parallel: {peak_seen}"
    );
    let steps = rt
        .engine()
        .get_run(&run.run_id)
        .await
        .unwrap()
        .unwrap()
        .steps;
    let mut ids: Vec<&str> = steps.iter().map(|s| s.step_id.as_str()).collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "0/square", "1/square", "2/square", "3/square", "4/square", "5/square", "6/square"
        ]
    );

    let ev = send(&rt, "t/fan", json!({"items": [1, -2, 3, -4]})).await;
    let run = finish(&rt, &ev, "fan").await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(
        run.error.unwrap().message,
        "bad item -2",
        "the first failed item, in item order"
    );
    let steps = rt
        .engine()
        .get_run(&run.run_id)
        .await
        .unwrap()
        .unwrap()
        .steps;
    assert_eq!(steps.len(), 4, "every item ran: {steps:?}");
}

/// A cron trigger fires in the local runtime (the dev server's scheduler) at each tick; a
/// tick fired again starts nothing; a bad pattern is refused at registration.
#[tokio::test(start_paused = true)]
async fn cron_triggers_fire_on_schedule_once_per_tick() {
    let f = Function::new("tick")
        .cron("*/5 * * * *")
        .handler(|_ctx: Ctx, ev: Event<Value>| async move { Ok(ev.data["scheduled_at"].clone()) });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let began = rt.engine().now();
    tokio::time::sleep(Duration::from_secs(11 * 60)).await;
    let query = RunQuery {
        function_id: Some("tick".into()),
        limit: 10,
        ..RunQuery::default()
    };
    let mut runs = rt.engine().store().list_runs(&query).await.unwrap().runs;
    runs.sort_by_key(|r| r.started_at);
    // Every 5-minute mark in (began, began + 11 min]: 2 or 3 of them.
    let end = began.timestamp() + 11 * 60;
    let ticks = (began.timestamp() / 300 + 1..=end / 300).count();
    assert!(ticks >= 2);
    assert_eq!(
        runs.len(),
        ticks,
        "one run per tick in 11 minutes: {runs:?}"
    );
    for run in &runs {
        let run = rt
            .wait_for_run(&run.run_id, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(run.status, RunStatus::Completed);
        let at: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(run.output.clone().unwrap()).unwrap();
        assert!(at > began && at.timestamp() % 300 == 0, "{at}");
    }
    // The same tick again (a second scheduler, a retried EventBridge call): no new run.
    let first = rt
        .engine()
        .store()
        .get_run(&runs[0].run_id)
        .await
        .unwrap()
        .unwrap();
    let first_tick: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(first.event.data["scheduled_at"].clone()).unwrap();
    rt.engine().fire_cron("tick", first_tick).await.unwrap();
    let again = rt.engine().store().list_runs(&query).await.unwrap().runs;
    assert_eq!(again.len(), ticks);

    let bad = Function::new("bad-cron")
        .cron("every day at noon")
        .handler(|_ctx: Ctx, _ev: Event<Value>| async move { Ok(()) });
    let refused = Registry::new().register(bad).err().expect("refused");
    assert!(refused.to_string().contains("cron pattern"), "{refused}");
}

/// A finish timeout cancels a run that is still asleep when it is due (not when it wakes),
/// with the reason; a run that ends in time is left alone.
#[tokio::test(start_paused = true)]
async fn a_finish_timeout_cancels_a_sleeping_run_when_due() {
    let f = Function::new("slowpoke")
        .trigger("t/slow")
        .finish_timeout(Duration::from_secs(600))
        .handler(|ctx: Ctx, ev: Event<Value>| async move {
            let secs = ev.data["sleep_s"].as_u64().unwrap();
            ctx.sleep("nap", Duration::from_secs(secs)).await?;
            Ok("awake")
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let began = rt.engine().now();
    let late = send(&rt, "t/slow", json!({"sleep_s": 3600})).await;
    let on_time = send(&rt, "t/slow", json!({"sleep_s": 60})).await;
    let run = finish(&rt, &late, "slowpoke").await;
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.error.as_ref().unwrap().name, "FinishTimeout");
    let ended = (run.ended_at.unwrap() - began).to_std().unwrap();
    assert!(
        ended >= Duration::from_secs(600) && ended < Duration::from_secs(660),
        "cancelled when due, not at the wake-up: {ended:?}"
    );
    let run = finish(&rt, &on_time, "slowpoke").await;
    assert_eq!(run.status, RunStatus::Completed);
}

/// A start timeout cancels a run whose start comes too late (a backlog).
#[tokio::test(start_paused = true)]
async fn a_start_timeout_cancels_a_run_that_starts_too_late() {
    let f = Function::new("prompt")
        .trigger("t/prompt")
        .start_timeout(Duration::from_secs(30))
        .handler(|_ctx: Ctx, _ev: Event<Value>| async move { Ok("ran") });
    let (queue, mut receiver) = baton::queue::local::LocalQueue::new();
    let engine = baton::Engine::new(
        Registry::new().register(f).unwrap(),
        Arc::new(MemoryStore::new()),
        Arc::new(queue),
        EngineConfig::default(),
    );
    let ev = engine
        .send_events(vec![NewEvent::new("t/prompt", json!({}))])
        .await
        .unwrap()
        .remove(0);
    let start = receiver.recv().await.unwrap();
    // The backlog holds the start for a minute.
    tokio::time::sleep(Duration::from_secs(60)).await;
    engine.handle(start).await.unwrap();
    let run = engine
        .store()
        .get_run(&run_id_for(&ev, "prompt"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.error.unwrap().name, "StartTimeout");
}

/// `cancel_on`: an event whose field matches the run's own event cancels the sleeping run;
/// one with another value, or without the field, leaves runs alone.
#[tokio::test(start_paused = true)]
async fn a_cancel_event_stops_a_sleeping_run_with_the_same_key() {
    let f = Function::new("reminder")
        .trigger("t/remind")
        .cancel_on("t/remind.cancelled", "data.order_id")
        .handler(|ctx: Ctx, _ev: Event<Value>| async move {
            ctx.sleep("wait", Duration::from_secs(3600)).await?;
            Ok("reminded")
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let a = send(&rt, "t/remind", json!({"order_id": "o-1"})).await;
    let b = send(&rt, "t/remind", json!({"order_id": "o-2"})).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    send(&rt, "t/remind.cancelled", json!({"order_id": "o-9"})).await;
    send(&rt, "t/remind.cancelled", json!({})).await;
    send(&rt, "t/remind.cancelled", json!({"order_id": "o-1"})).await;
    let run_a = rt
        .engine()
        .store()
        .get_run(&run_id_for(&a, "reminder"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run_a.status, RunStatus::Cancelled, "cancelled while asleep");
    let run_b = finish(&rt, &b, "reminder").await;
    assert_eq!(
        run_b.status,
        RunStatus::Completed,
        "another key is left alone"
    );
    // The cancelled run stays cancelled when its wake-up comes.
    let run_a = finish(&rt, &a, "reminder").await;
    assert_eq!(run_a.status, RunStatus::Cancelled);
}

/// An idempotency field: one run per value in the window; other values and events without
/// the field are not limited; after the window the value runs again.
#[tokio::test(start_paused = true)]
async fn an_idempotency_field_starts_one_run_per_value() {
    let f = Function::new("charge")
        .trigger("t/charge")
        .idempotency("data.order_id")
        .handler(|_ctx: Ctx, ev: Event<Value>| async move { Ok(ev.data) });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let runs_of = |id: String| {
        let engine = rt.engine().clone();
        async move { engine.store().runs_for_event(&id).await.unwrap().len() }
    };
    let first = send(&rt, "t/charge", json!({"order_id": "o-1"})).await;
    let repeat = send(&rt, "t/charge", json!({"order_id": "o-1", "note": "again"})).await;
    let other = send(&rt, "t/charge", json!({"order_id": "o-2"})).await;
    let keyless = send(&rt, "t/charge", json!({"note": "no key"})).await;
    assert_eq!(runs_of(first.clone()).await, 1);
    assert_eq!(runs_of(repeat).await, 0, "the same order starts nothing");
    assert_eq!(runs_of(other).await, 1);
    assert_eq!(runs_of(keyless).await, 1);
    // Past the 24 h window the value runs again.
    tokio::time::sleep(Duration::from_secs(24 * 3600 + 60)).await;
    let later = send(&rt, "t/charge", json!({"order_id": "o-1"})).await;
    assert_eq!(runs_of(later).await, 1);
}

#[tokio::test(start_paused = true)]
async fn an_undeclared_step_fails_the_run_with_a_clear_error() {
    let f = Function::new("typo")
        .trigger("t/typo")
        .step(Step::new("download"))
        .handler(|ctx: Ctx, _ev: Event<Value>| async move {
            // Even code that swallows the error cannot hide it.
            let _ = ctx.step(Step::new("downlaod"), |_| async { Ok(1) }).await;
            Ok(())
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let ev = send(&rt, "t/typo", json!({})).await;
    let run = finish(&rt, &ev, "typo").await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap();
    assert_eq!(error.name, "UndeclaredStep");
    assert!(
        error.message.contains("\"downlaod\"") && error.message.contains("download"),
        "{}",
        error.message
    );
}

#[tokio::test(start_paused = true)]
async fn code_that_plans_steps_differently_on_replay_fails_instead_of_hanging() {
    let flips = Arc::new(AtomicU32::new(0));
    let fl = flips.clone();
    let f = Function::new("wobbly")
        .trigger("t/wobbly")
        .step(Step::new("a"))
        .step(Step::new("b"));
    let f = f.handler(move |ctx: Ctx, _ev: Event<Value>| {
        // Non-deterministic: a different first step on every replay.
        let first = if fl.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
            Step::new("a")
        } else {
            Step::new("b")
        };
        async move {
            ctx.step(first, |_| async { Ok(1) }).await?;
            ctx.step(Step::new("b"), |_| async { Ok(2) }).await?;
            Ok(())
        }
    });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let ev = send(&rt, "t/wobbly", json!({})).await;
    let run = finish(&rt, &ev, "wobbly").await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.unwrap().name, "NonDeterministic");
}

#[tokio::test(start_paused = true)]
async fn send_event_is_journaled_and_starts_other_functions_once() {
    let received = Arc::new(AtomicU32::new(0));
    let r = received.clone();
    let parent = Function::new("parent").trigger("t/parent").handler(
        |ctx: Ctx, _ev: Event<Value>| async move {
            let ids = ctx
                .send_event("notify", vec![NewEvent::new("t/child", json!({"n": 1}))])
                .await?;
            ctx.sleep("wait", Duration::from_secs(5)).await?;
            Ok(ids)
        },
    );
    let child =
        Function::new("child")
            .trigger("t/child")
            .handler(move |_ctx: Ctx, ev: Event<Value>| {
                r.fetch_add(1, Ordering::SeqCst);
                async move { Ok(ev.data["n"].clone()) }
            });
    let rt = start(
        Registry::new()
            .register(parent)
            .unwrap()
            .register(child)
            .unwrap(),
    )
    .await;
    let ev = send(&rt, "t/parent", json!({})).await;
    let run = finish(&rt, &ev, "parent").await;
    assert_eq!(run.status, RunStatus::Completed);
    let ids: Vec<String> = serde_json::from_value(run.output.unwrap()).unwrap();
    assert_eq!(ids.len(), 1);
    let child_run = finish(&rt, &ids[0], "child").await;
    assert_eq!(child_run.output, Some(json!(1)));
    // The parent replayed after its sleep; the child event was sent once.
    assert_eq!(
        rt.engine()
            .store()
            .runs_for_event(&ids[0])
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(received.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn progress_is_visible_while_running() {
    let f =
        Function::new("prog")
            .trigger("t/prog")
            .handler(|ctx: Ctx, _ev: Event<Value>| async move {
                ctx.progress(40, "transcribing");
                ctx.sleep("hold", Duration::from_secs(3600)).await?;
                ctx.progress(100, "done");
                Ok(())
            });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let ev = send(&rt, "t/prog", json!({})).await;
    let run_id = run_id_for(&ev, "prog");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let run = rt.engine().store().get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(
        run.progress.unwrap(),
        baton::model::Progress {
            percent: 40,
            message: "transcribing".into()
        }
    );
    let run = finish(&rt, &ev, "prog").await;
    assert_eq!(run.progress.unwrap().percent, 100);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_sleeping_run_stops_it() {
    let ran = Arc::new(AtomicU32::new(0));
    let r = ran.clone();
    let f = Function::new("cancel-me")
        .trigger("t/cancel")
        .step(Step::new("after"))
        .handler(move |ctx: Ctx, _ev: Event<Value>| {
            let r = r.clone();
            async move {
                ctx.sleep("long", Duration::from_secs(3600)).await?;
                ctx.step(Step::new("after"), |_| async move {
                    Ok(r.fetch_add(1, Ordering::SeqCst))
                })
                .await
            }
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let ev = send(&rt, "t/cancel", json!({})).await;
    let run_id = run_id_for(&ev, "cancel-me");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cancelled = rt.engine().cancel(&run_id).await.unwrap();
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    // It says why, and nothing in its journal is left pending: the sleep it was in failed
    // with `Cancelled`.
    let error = cancelled.error.unwrap();
    assert_eq!(error.name, "Cancelled");
    assert!(error.message.contains("cancelled by request"), "{error:?}");
    let journal = rt.engine().store().journal(&run_id).await.unwrap();
    assert_eq!(journal.len(), 1, "{journal:?}");
    assert_eq!(journal[0].step_id, "long");
    assert_eq!(journal[0].status, StepStatus::Failed);
    assert_eq!(journal[0].error.as_ref().unwrap().name, "Cancelled");
    tokio::time::sleep(Duration::from_secs(7200)).await;
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert!(matches!(
        rt.engine().cancel(&run_id).await,
        Err(baton::EngineError::Conflict(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn the_same_event_id_starts_one_run() {
    let f = Function::new("once")
        .trigger("t/once")
        .handler(|_ctx: Ctx, _ev: Event<Value>| async move { Ok(()) });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let event = NewEvent::new("t/once", json!({})).with_id("order-42");
    let a = rt.engine().send_events(vec![event.clone()]).await.unwrap();
    let b = rt.engine().send_events(vec![event]).await.unwrap();
    assert_eq!(a, b);
    finish(&rt, &a[0], "once").await;
    assert_eq!(
        rt.engine()
            .store()
            .runs_for_event(&a[0])
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn duplicate_and_stale_messages_change_nothing() {
    let counts: Counts = Default::default();
    let c = counts.clone();
    let f = Function::new("dup")
        .trigger("t/dup")
        .step(Step::new("a"))
        .step(Step::new("b"));
    let f = f.handler(move |ctx: Ctx, _ev: Event<Value>| {
        let c = c.clone();
        async move {
            let a: u32 = ctx
                .step(Step::new("a"), |_| async { Ok(bump(&c, "a")) })
                .await?;
            let b: u32 = ctx
                .step(Step::new("b"), |_| async { Ok(bump(&c, "b")) })
                .await?;
            Ok(a + b)
        }
    });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let ev = send(&rt, "t/dup", json!({})).await;
    let run = finish(&rt, &ev, "dup").await;
    let before = rt.engine().get_run(&run.run_id).await.unwrap().unwrap();
    // Every kind of message again, after the run ended and while its steps were final.
    for kind in [
        MessageKind::Start,
        MessageKind::Redrive,
        MessageKind::Step {
            step_id: "a".into(),
            name: "a".into(),
            attempt: 1,
        },
        MessageKind::Step {
            step_id: "b".into(),
            name: "b".into(),
            attempt: 1,
        },
    ] {
        let message = baton::model::Message {
            run_id: run.run_id.clone(),
            function_id: "dup".into(),
            kind,
            not_before: None,
        };
        rt.engine().handle(message).await.unwrap();
    }
    assert_eq!(
        rt.engine().get_run(&run.run_id).await.unwrap().unwrap(),
        before
    );
    assert_eq!(
        *counts.lock().unwrap(),
        HashMap::from([("a".into(), 1), ("b".into(), 1)])
    );
}

#[tokio::test(start_paused = true)]
async fn oversized_outputs_fail_the_step_without_retrying() {
    let f = Function::new("big")
        .trigger("t/big")
        .step(Step::new("blob"))
        .handler(|ctx: Ctx, _ev: Event<Value>| async move {
            let s: String = ctx
                .step(Step::new("blob"), |_| async { Ok("x".repeat(300 * 1024)) })
                .await?;
            Ok(s.len())
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let ev = send(&rt, "t/big", json!({})).await;
    let run = finish(&rt, &ev, "big").await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.unwrap().name, "OutputTooLarge");
    let steps = rt
        .engine()
        .get_run(&run.run_id)
        .await
        .unwrap()
        .unwrap()
        .steps;
    assert_eq!(
        (steps[0].status, steps[0].attempts),
        (StepStatus::Failed, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn runs_over_the_step_limit_fail() {
    let f = Function::new("many")
        .trigger("t/many")
        .step(Step::new("s"))
        .handler(|ctx: Ctx, _ev: Event<Value>| async move {
            for i in 0..1001u32 {
                ctx.sleep("tick", Duration::from_millis(1)).await?;
                let _ = i;
            }
            Ok(())
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let ev = send(&rt, "t/many", json!({})).await;
    let run = finish(&rt, &ev, "many").await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.unwrap().name, "TooManySteps");
    assert_eq!(
        rt.engine()
            .get_run(&run.run_id)
            .await
            .unwrap()
            .unwrap()
            .steps
            .len(),
        1000
    );
}

#[tokio::test(start_paused = true)]
async fn invalid_event_data_fails_the_run_with_a_typed_error() {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[allow(dead_code)]
        video_id: String,
    }
    let f = Function::new("typed")
        .trigger("t/typed")
        .handler(|_ctx: Ctx, _ev: Event<Typed>| async move { Ok(()) });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let ev = send(&rt, "t/typed", json!({"video_id": 5})).await;
    let run = finish(&rt, &ev, "typed").await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.unwrap().name, "InvalidEventData");
}

/// Parallel branches finishing at the same moment in different handlers: each reads the
/// journal before the other's write lands, so only the re-read after recording lets the
/// last one plan the join. Real threads and SQLite, many runs, so the race really happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_branches_finishing_together_still_plan_the_join() {
    let f = Function::new("join")
        .trigger("t/join")
        .step(Step::new("left"))
        .step(Step::new("right"));
    let f = f
        .step(Step::new("after"))
        .handler(|ctx: Ctx, _ev: Event<Value>| async move {
            let (l, r) = futures::join!(
                ctx.step(Step::new("left"), |_| async { Ok(1) }),
                ctx.step(Step::new("right"), |_| async { Ok(2) })
            );
            let (l, r): (u32, u32) = (l?, r?);
            ctx.step(Step::new("after"), move |_| async move { Ok(l + r) })
                .await
        });
    let store = baton_sqlite::SqliteStore::in_memory().unwrap();
    let options = LocalOptions {
        sweep_interval: Duration::from_secs(1000 * 86400),
        ..LocalOptions::default()
    };
    let rt = LocalRuntime::start(
        Registry::new().register(f).unwrap(),
        Arc::new(store),
        options,
    )
    .await
    .unwrap();
    let events = (0..40)
        .map(|_| NewEvent::new("t/join", json!({})))
        .collect();
    let ids = rt.engine().send_events(events).await.unwrap();
    for id in ids {
        let run = rt
            .wait_for_run(&run_id_for(&id, "join"), Duration::from_secs(30))
            .await
            .expect("every run ends");
        assert_eq!(run.output, Some(json!(3)));
    }
}

/// A start message lost between creating the run and enqueueing it (a crash): the sweeper
/// finds the run idle past its deadline and re-drives it.
#[tokio::test(start_paused = true)]
async fn the_sweeper_recovers_a_run_whose_message_was_lost() {
    let f = Function::new("lost")
        .trigger("t/lost")
        .step(Step::new("work"))
        .handler(|ctx: Ctx, _ev: Event<Value>| async move {
            ctx.step(Step::new("work"), |_| async { Ok("done".to_string()) })
                .await
        });
    let options = LocalOptions {
        sweep_interval: Duration::from_secs(30),
        stale_after: Duration::from_secs(600),
        ..LocalOptions::default()
    };
    let store = Arc::new(MemoryStore::new());
    let rt = LocalRuntime::start(Registry::new().register(f).unwrap(), store.clone(), options)
        .await
        .unwrap();
    let now = rt.engine().now();
    let event = baton::model::EventRecord {
        id: ulid::Ulid::new().to_string(),
        name: "t/lost".into(),
        data: json!({}),
        ts: now.timestamp_millis(),
        user: json!({}),
        v: None,
        idempotency_id: None,
    };
    let run = RunRecord {
        run_id: run_id_for(&event.id, "lost"),
        function_id: "lost".into(),
        event_id: event.id.clone(),
        event,
        status: RunStatus::Queued,
        started_at: now,
        ended_at: None,
        output: None,
        error: None,
        progress: None,
        replay_of: None,
        replay_from: None,
    };
    // Written straight to the store: no start message was ever sent.
    assert!(
        baton::Store::create_run(store.as_ref(), &run)
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(
        rt.engine()
            .store()
            .get_run(&run.run_id)
            .await
            .unwrap()
            .unwrap()
            .status,
        RunStatus::Queued
    );
    let ended = rt
        .wait_for_run(&run.run_id, Duration::from_secs(900))
        .await
        .expect("re-driven");
    assert_eq!(ended.output, Some(json!("done")));
    let idle = (ended.ended_at.unwrap() - now).to_std().unwrap();
    assert!(
        idle >= Duration::from_secs(600) && idle <= Duration::from_secs(700),
        "{idle:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dead_lettered_message_fails_its_run_with_the_reason() {
    let f = Function::new("dl")
        .trigger("t/dl")
        .step(Step::new("slow"))
        .handler(|ctx: Ctx, _ev: Event<Value>| async move {
            ctx.sleep("wait", Duration::from_secs(3600)).await?;
            ctx.step(Step::new("slow"), |_| async { Ok(1) }).await
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let ev = send(&rt, "t/dl", json!({})).await;
    let run_id = run_id_for(&ev, "dl");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let message = baton::model::Message {
        run_id: run_id.clone(),
        function_id: "dl".into(),
        kind: MessageKind::Step {
            step_id: "slow".into(),
            name: "slow".into(),
            attempt: 1,
        },
        not_before: None,
    };
    rt.engine()
        .dead_letter(&message, "received 5 times")
        .await
        .unwrap();
    let run = rt.engine().store().get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap();
    assert_eq!(error.name, "DeadLettered");
    assert!(
        error.message.contains("\"slow\"") && error.message.contains("received 5 times"),
        "{}",
        error.message
    );
    // A finished run is left alone.
    rt.engine().dead_letter(&message, "again").await.unwrap();
    assert_eq!(
        rt.engine()
            .store()
            .get_run(&run_id)
            .await
            .unwrap()
            .unwrap()
            .error
            .unwrap()
            .name,
        "DeadLettered"
    );
}

/// Regression (found by the podcast example's TTS fan-out): the handler that records a
/// parallel step replays a second time to catch a join it may have raced (the recheck). That
/// second pass moved nothing on by itself, so it took the invocation for the redelivery of one
/// that had died between planning and sending, and sent the messages of the steps its first
/// pass had just planned and sent again. A duplicate arriving while its step still ran began
/// the same attempt a second time: every join of slow parallel steps ran bodies twice.
#[tokio::test(start_paused = true)]
async fn a_parallel_join_does_not_send_the_next_steps_twice() {
    let counts: Counts = Default::default();
    let c = counts.clone();
    let f = Function::new("slow-fan")
        .trigger("t/slow-fan")
        .step(Step::new("part").retries(0))
        .handler(move |ctx: Ctx, _ev: Event<Value>| {
            let c = c.clone();
            async move {
                ctx.map(Step::new("part"), 0..8u32, 4, move |s, n| {
                    let c = c.clone();
                    async move {
                        bump(&c, &s.step_id);
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        Ok(n)
                    }
                })
                .await
            }
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let ev = send(&rt, "t/slow-fan", json!({})).await;
    let run = finish(&rt, &ev, "slow-fan").await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.output, Some(json!([0, 1, 2, 3, 4, 5, 6, 7])));
    let counts = counts.lock().unwrap().clone();
    assert_eq!(counts.len(), 8, "{counts:?}");
    assert!(
        counts.values().all(|&n| n == 1),
        "each body runs once: {counts:?}"
    );
}
