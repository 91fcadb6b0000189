//! Waits for events, child functions and flow control, end to end in local mode on the
//! in-memory store, with paused tokio time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::engine::run_id_for;
use baton::local::{LocalOptions, LocalRuntime};
use baton::model::{RunRecord, StepKind, StepStatus};
use baton::store::memory::MemoryStore;
use baton::{
    Ctx, Error, Event, Function, Invoke, NewEvent, Registry, RunStatus, Step, StepError, Wait,
};
use serde_json::{Value, json};

async fn start(registry: Registry) -> LocalRuntime {
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

async fn finish(rt: &LocalRuntime, run_id: &str) -> RunRecord {
    rt.wait_for_run(run_id, Duration::from_secs(30 * 86400))
        .await
        .expect("run ends")
}

/// Polls (in paused time) until the run's journal has a step in `status`.
async fn until_step(rt: &LocalRuntime, run_id: &str, step_id: &str, status: StepStatus) {
    for _ in 0..10_000 {
        if let Some(detail) = rt.engine().get_run(run_id).await.unwrap() {
            if detail
                .steps
                .iter()
                .any(|s| s.step_id == step_id && s.status == status)
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("step {step_id} of {run_id} never reached {status:?}");
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct TaskUpdate {
    task_id: String,
    state: String,
}

/// A function that creates a task at an outside service, then waits for its update.
/// `early`: the "service" answers from inside the create step, before the wait exists.
fn render(early: bool, timeout: Duration) -> Function {
    let rendered = Wait::<TaskUpdate>::new("rendered", "t/task.updated")
        .on("data.task_id")
        .timeout(timeout);
    Function::new("render")
        .trigger("t/render")
        .step(Step::new("create"))
        .wait(rendered)
        .handler(move |ctx: Ctx, event: Event<Value>| async move {
            let task_id: String = ctx
                .step(Step::new("create"), |s| async move {
                    let task_id = format!("task-{}", s.run_id);
                    Ok::<_, StepError>(task_id)
                })
                .await?;
            if early {
                // The callback lands between the step and the wait's registration.
                ctx.send_event(
                    "callback",
                    vec![NewEvent::new(
                        "t/task.updated",
                        json!({"task_id": task_id, "state": "done-early"}),
                    )],
                )
                .await?;
            }
            let _ = event;
            let update = ctx.wait_for_event(rendered, &task_id).await?;
            Ok::<_, Error>(update.map(|u| u.data.state))
        })
}

#[tokio::test(start_paused = true)]
async fn a_wait_resumes_on_its_matching_event_only() {
    let rt = start(
        Registry::new()
            .register(render(false, Duration::from_secs(3600)))
            .unwrap(),
    )
    .await;
    let event_id = send(&rt, "t/render", json!({})).await;
    let run_id = run_id_for(&event_id, "render");
    until_step(&rt, &run_id, "rendered", StepStatus::Waiting).await;
    send(
        &rt,
        "t/task.updated",
        json!({"task_id": "someone-else", "state": "wrong"}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let run = rt.engine().get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(
        run.run.status,
        RunStatus::Running,
        "another task's update resumes nothing"
    );
    let task_id = format!("task-{run_id}");
    send(
        &rt,
        "t/task.updated",
        json!({"task_id": task_id, "state": "done"}),
    )
    .await;
    let run = finish(&rt, &run_id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.output, Some(json!("done")));
    let detail = rt.engine().get_run(&run_id).await.unwrap().unwrap();
    let wait = detail
        .steps
        .iter()
        .find(|s| s.step_id == "rendered")
        .unwrap();
    assert_eq!(wait.kind, StepKind::Wait);
    assert_eq!(
        wait.output.as_ref().unwrap()["data"]["state"],
        json!("done")
    );
}

#[tokio::test(start_paused = true)]
async fn a_wait_whose_event_arrived_early_still_resumes() {
    let rt = start(
        Registry::new()
            .register(render(true, Duration::from_secs(3600)))
            .unwrap(),
    )
    .await;
    let started = tokio::time::Instant::now();
    let event_id = send(&rt, "t/render", json!({})).await;
    let run = finish(&rt, &run_id_for(&event_id, "render")).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(
        run.output,
        Some(json!("done-early")),
        "the event sent before the wait was registered must be found"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3600),
        "resumed by the event, not by the timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn a_wait_times_out_to_none() {
    let rt = start(
        Registry::new()
            .register(render(false, Duration::from_secs(600)))
            .unwrap(),
    )
    .await;
    let started = tokio::time::Instant::now();
    let event_id = send(&rt, "t/render", json!({})).await;
    let run_id = run_id_for(&event_id, "render");
    let run = finish(&rt, &run_id).await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(
        run.output,
        Some(Value::Null),
        "a timed-out wait returns None"
    );
    assert!(started.elapsed() >= Duration::from_secs(600));
    // An update after the timeout changes nothing.
    let task_id = format!("task-{run_id}");
    send(
        &rt,
        "t/task.updated",
        json!({"task_id": task_id, "state": "late"}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let detail = rt.engine().get_run(&run_id).await.unwrap().unwrap();
    let wait = detail
        .steps
        .iter()
        .find(|s| s.step_id == "rendered")
        .unwrap();
    assert_eq!(wait.output, Some(Value::Null));
}

#[tokio::test(start_paused = true)]
async fn an_undeclared_wait_fails_the_run() {
    let f = Function::new("undeclared").trigger("t/undeclared").handler(
        |ctx: Ctx, _e: Event<Value>| async move {
            let other = Wait::new("w", "t/other").timeout(Duration::from_secs(5));
            let got: Option<Event<Value>> = ctx.wait_for_event(other, 1).await?;
            Ok::<_, Error>(got.is_some())
        },
    );
    let rt = start(Registry::new().register(f).unwrap()).await;
    let event_id = send(&rt, "t/undeclared", json!({})).await;
    let run = finish(&rt, &run_id_for(&event_id, "undeclared")).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.unwrap().name, "UndeclaredWait");
}

#[tokio::test(start_paused = true)]
async fn a_wait_can_match_the_run_events_own_field() {
    const APPROVED: Wait = Wait::new("approved", "t/invoice.approved")
        .matching_run_event("data.invoice_id")
        .timeout(Duration::from_secs(86400));
    let f = Function::new("approval")
        .trigger("t/invoice.created")
        .wait(APPROVED)
        .handler(|ctx: Ctx, _e: Event<Value>| async move {
            let approved = ctx.wait_for_match(APPROVED).await?;
            Ok::<_, Error>(approved.map(|e| e.data["by"].clone()))
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let event_id = send(&rt, "t/invoice.created", json!({"invoice_id": 7})).await;
    let run_id = run_id_for(&event_id, "approval");
    until_step(&rt, &run_id, "approved", StepStatus::Waiting).await;
    send(
        &rt,
        "t/invoice.approved",
        json!({"invoice_id": 8, "by": "x"}),
    )
    .await;
    send(
        &rt,
        "t/invoice.approved",
        json!({"invoice_id": 7, "by": "ana"}),
    )
    .await;
    let run = finish(&rt, &run_id).await;
    assert_eq!(run.output, Some(json!("ana")));
}

// ---- invoke ----

fn child() -> Function {
    Function::new("double")
        .trigger("t/double")
        .step(Step::new("double").retries(0))
        .handler(|ctx: Ctx, event: Event<Value>| async move {
            let n = event.data["n"].as_i64().unwrap_or(0);
            let out: i64 = ctx
                .step(Step::new("double"), |_| async move {
                    if n < 0 {
                        return Err(StepError::non_retriable(format!("{n} is negative")));
                    }
                    if n == 99 {
                        tokio::time::sleep(Duration::from_secs(50)).await;
                    }
                    Ok(n * 2)
                })
                .await?;
            Ok::<_, Error>(out)
        })
}

const DOUBLE_IT: Invoke<Value, i64> =
    Invoke::new("double-it", "double").timeout(Duration::from_secs(30));

fn parent() -> Function {
    Function::new("parent")
        .trigger("t/parent")
        .invokes(DOUBLE_IT)
        .handler(|ctx: Ctx, event: Event<Value>| async move {
            let n = event.data["n"].as_i64().unwrap_or(0);
            let result = ctx.invoke(DOUBLE_IT, &json!({"n": n})).await;
            Ok::<_, Error>(match result {
                Ok(v) => json!({"value": v}),
                Err(e) => json!({"error": e.name, "message": e.message}),
            })
        })
}

#[tokio::test(start_paused = true)]
async fn invoke_returns_the_child_output_or_its_error() {
    let rt = start(
        Registry::new()
            .register(child())
            .unwrap()
            .register(parent())
            .unwrap(),
    )
    .await;
    let ok = send(&rt, "t/parent", json!({"n": 21})).await;
    let run = finish(&rt, &run_id_for(&ok, "parent")).await;
    assert_eq!(run.output, Some(json!({"value": 42})), "{:?}", run.error);
    let detail = rt
        .engine()
        .get_run(&run_id_for(&ok, "parent"))
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<&str> = detail.steps.iter().map(|s| s.step_id.as_str()).collect();
    assert_eq!(ids, ["double-it", "double-it.finished"]);
    // The child is an ordinary run of its function, started by the invoke event.
    let child_event = detail.steps[0].output.as_ref().unwrap()[0]
        .as_str()
        .unwrap()
        .to_string();
    let child_run = finish(&rt, &run_id_for(&child_event, "double")).await;
    assert_eq!(child_run.output, Some(json!(42)));
    assert_eq!(
        child_run.event.data["_baton"]["parent_run_id"],
        json!(run.run_id)
    );

    let bad = send(&rt, "t/parent", json!({"n": -1})).await;
    let run = finish(&rt, &run_id_for(&bad, "parent")).await;
    assert_eq!(run.status, RunStatus::Completed);
    let out = run.output.unwrap();
    assert_eq!(out["error"], json!("NonRetriableError"), "{out}");
    assert!(out["message"].as_str().unwrap().contains("-1 is negative"));

    let slow = send(&rt, "t/parent", json!({"n": 99})).await;
    let run = finish(&rt, &run_id_for(&slow, "parent")).await;
    assert_eq!(run.output.unwrap()["error"], json!("InvokeTimedOut"));
}

// ---- concurrency ----

#[tokio::test(start_paused = true)]
async fn fifty_events_for_one_creator_never_run_more_than_ten_at_once() {
    let in_flight: Arc<Mutex<HashMap<String, (i64, i64)>>> = Default::default();
    let flight = in_flight.clone();
    let f = Function::new("transcode")
        .trigger("t/video.uploaded")
        .concurrency(10, Some("data.creator_id"))
        .step(Step::new("begin"))
        .step(Step::new("end"))
        .handler(move |ctx: Ctx, event: Event<Value>| {
            let flight = flight.clone();
            async move {
                let creator = event.data["creator_id"].as_str().unwrap_or("").to_string();
                let (f1, c1) = (flight.clone(), creator.clone());
                ctx.step(Step::new("begin"), |_| async move {
                    let mut map = f1.lock().unwrap();
                    let entry = map.entry(c1).or_default();
                    entry.0 += 1;
                    entry.1 = entry.1.max(entry.0);
                    Ok::<_, StepError>(())
                })
                .await?;
                ctx.sleep("work", Duration::from_secs(7)).await?;
                ctx.step(Step::new("end"), |_| async move {
                    flight.lock().unwrap().entry(creator).or_default().0 -= 1;
                    Ok::<_, StepError>(())
                })
                .await?;
                Ok::<_, Error>(())
            }
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let events: Vec<NewEvent> = (0..50)
        .map(|i| NewEvent::new("t/video.uploaded", json!({"creator_id": "ana", "n": i})))
        .chain(
            (0..5).map(|i| NewEvent::new("t/video.uploaded", json!({"creator_id": "bo", "n": i}))),
        )
        .collect();
    let ids = rt.engine().send_events(events).await.unwrap();
    for id in &ids {
        let run = finish(&rt, &run_id_for(id, "transcode")).await;
        assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    }
    let map = in_flight.lock().unwrap();
    assert_eq!(
        map["ana"],
        (0, 10),
        "ana: at most (and, with 50 queued, exactly) 10 at once"
    );
    assert_eq!(
        map["bo"],
        (0, 5),
        "another creator is not held back by ana's runs"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_run_frees_its_slot() {
    let f = Function::new("one-at-a-time")
        .trigger("t/job")
        .concurrency(1, None)
        .handler(|ctx: Ctx, _e: Event<Value>| async move {
            ctx.sleep("hold", Duration::from_secs(3600)).await?;
            Ok::<_, Error>(())
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let first = run_id_for(&send(&rt, "t/job", json!({})).await, "one-at-a-time");
    until_step(&rt, &first, "hold", StepStatus::Sleeping).await;
    let second = run_id_for(&send(&rt, "t/job", json!({})).await, "one-at-a-time");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let queued = rt.engine().get_run(&second).await.unwrap().unwrap();
    assert_eq!(
        queued.run.status,
        RunStatus::Queued,
        "the only slot is held"
    );
    rt.engine().cancel(&first).await.unwrap();
    until_step(&rt, &second, "hold", StepStatus::Sleeping).await;
}

// ---- throttle, rate limit, debounce ----

#[tokio::test(start_paused = true)]
async fn a_throttle_spaces_starts_and_drops_nothing() {
    let starts: Arc<Mutex<Vec<tokio::time::Instant>>> = Default::default();
    let s = starts.clone();
    let f = Function::new("throttled")
        .trigger("t/throttled")
        .throttle(2, Duration::from_secs(10), None)
        .step(Step::new("go"))
        .handler(move |ctx: Ctx, _e: Event<Value>| {
            let s = s.clone();
            async move {
                ctx.step(Step::new("go"), |_| async move {
                    s.lock().unwrap().push(tokio::time::Instant::now());
                    Ok::<_, StepError>(())
                })
                .await?;
                Ok::<_, Error>(())
            }
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let ids = rt
        .engine()
        .send_events(
            (0..6)
                .map(|i| NewEvent::new("t/throttled", json!({"i": i})))
                .collect(),
        )
        .await
        .unwrap();
    for id in &ids {
        assert_eq!(
            finish(&rt, &run_id_for(id, "throttled")).await.status,
            RunStatus::Completed
        );
    }
    let mut starts = starts.lock().unwrap().clone();
    starts.sort();
    assert_eq!(starts.len(), 6);
    for w in starts.windows(3) {
        assert!(
            w[2] - w[0] >= Duration::from_secs(10),
            "three starts within 10 s: {:?}",
            w[2] - w[0]
        );
    }
    assert!(
        starts[5] - starts[0] < Duration::from_secs(30),
        "throttled, not stalled"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_skips_events_over_it() {
    let f = Function::new("limited")
        .trigger("t/limited")
        .rate_limit(2, Duration::from_secs(60), Some("data.user"))
        .handler(|_ctx: Ctx, _e: Event<Value>| async move { Ok::<_, Error>(()) });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(send(&rt, "t/limited", json!({"user": "a", "i": i})).await);
    }
    let other = send(&rt, "t/limited", json!({"user": "b"})).await;
    let mut ran = 0;
    for id in &ids {
        ran += rt.engine().store().runs_for_event(id).await.unwrap().len();
    }
    assert_eq!(ran, 2, "two runs per minute for user a");
    assert_eq!(
        rt.engine()
            .store()
            .runs_for_event(&other)
            .await
            .unwrap()
            .len(),
        1
    );
    tokio::time::sleep(Duration::from_secs(61)).await;
    let later = send(&rt, "t/limited", json!({"user": "a"})).await;
    assert_eq!(
        rt.engine()
            .store()
            .runs_for_event(&later)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_debounce_runs_once_with_the_last_event_of_a_burst() {
    let runs = Arc::new(AtomicU32::new(0));
    let last_n = Arc::new(AtomicI64::new(-1));
    let (r, l) = (runs.clone(), last_n.clone());
    let f = Function::new("debounced")
        .trigger("t/typed")
        .debounce(Duration::from_secs(5), Some("data.doc"))
        .handler(move |_ctx: Ctx, event: Event<Value>| {
            let (r, l) = (r.clone(), l.clone());
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                l.store(event.data["n"].as_i64().unwrap_or(-1), Ordering::SeqCst);
                Ok::<_, Error>(())
            }
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(send(&rt, "t/typed", json!({"doc": "d1", "n": n})).await);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let last = ids.last().unwrap().clone();
    let run = finish(&rt, &run_id_for(&last, "debounced")).await;
    assert_eq!(run.status, RunStatus::Completed);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one run for the burst");
    assert_eq!(last_n.load(Ordering::SeqCst), 3, "with the last event");
    for id in &ids[..3] {
        assert!(
            rt.engine()
                .store()
                .runs_for_event(id)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[test]
fn flow_control_limits_are_checked_at_registration() {
    let f = || {
        Function::new("f")
            .trigger("t/f")
            .handler(|_c: Ctx, _e: Event<Value>| async { Ok::<_, Error>(()) })
    };
    assert!(Registry::new().register(f().concurrency(0, None)).is_err());
    assert!(
        Registry::new()
            .register(f().concurrency(1001, None))
            .is_err()
    );
    assert!(
        Registry::new()
            .register(f().concurrency(10, Some("")))
            .is_err()
    );
    assert!(
        Registry::new()
            .register(f().throttle(1, Duration::from_millis(10), None))
            .is_err()
    );
    assert!(
        Registry::new()
            .register(f().rate_limit(0, Duration::from_secs(1), None))
            .is_err()
    );
    assert!(
        Registry::new()
            .register(f().debounce(Duration::from_secs(8 * 86400), None))
            .is_err()
    );
    assert!(
        Registry::new()
            .register(f().wait(Wait::<Value>::new("w", "t/x").on("")))
            .is_err()
    );
    assert!(
        Registry::new()
            .register(f().concurrency(10, Some("data.k")).throttle(
                5,
                Duration::from_secs(60),
                None
            ))
            .is_ok()
    );
}

// ---- declarations ----

#[tokio::test(start_paused = true)]
async fn an_invoke_target_must_be_registered_and_declared() {
    // Declared but not registered: the registry refuses to run it.
    let registry = Registry::new().register(parent()).unwrap();
    let e = registry.check().unwrap_err().to_string();
    assert!(
        e.contains("invokes \"double\", which is not registered"),
        "{e}"
    );
    let refused = baton::local::LocalRuntime::start(
        registry,
        std::sync::Arc::new(baton::store::memory::MemoryStore::new()),
        Default::default(),
    )
    .await;
    assert!(refused.is_err());

    // Registered but not declared by the caller: the call fails the run.
    let sneaky = Function::new("sneaky").trigger("t/sneaky").handler(
        |ctx: Ctx, _event: Event<Value>| async move {
            let n = ctx.invoke(DOUBLE_IT, &json!({"n": 1})).await?;
            Ok::<_, Error>(n)
        },
    );
    let rt = start(
        Registry::new()
            .register(child())
            .unwrap()
            .register(sneaky)
            .unwrap(),
    )
    .await;
    let event_id = send(&rt, "t/sneaky", json!({})).await;
    let run = finish(&rt, &run_id_for(&event_id, "sneaky")).await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.unwrap().name, "UndeclaredInvoke");
}

baton::steps! {
    /// Two steps declared together.
    const PAIR = [
        FIRST = Step::new("first").retries(0),
        /// The second.
        SECOND = Step::new("second").timeout(Duration::from_secs(5)),
    ];
}

#[test]
fn steps_declares_the_constants_and_their_list() {
    assert_eq!(PAIR, [FIRST, SECOND]);
    let f = Function::new("pair")
        .trigger("t/pair")
        .steps(PAIR)
        .handler(|_ctx: Ctx, _event: Event<Value>| async move { Ok::<_, Error>(()) });
    assert_eq!(f.steps["first"].retries, Some(0));
    assert_eq!(f.steps["second"].timeout, Duration::from_secs(5));
    // A step declared twice is refused at registration.
    let twice = Function::new("twice")
        .trigger("t/twice")
        .steps(PAIR)
        .step(FIRST)
        .handler(|_ctx: Ctx, _event: Event<Value>| async move { Ok::<_, Error>(()) });
    let e = Registry::new().register(twice).err().unwrap().to_string();
    assert!(e.contains("step \"first\" is declared twice"), "{e}");
}
