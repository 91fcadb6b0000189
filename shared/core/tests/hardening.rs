//! Hostile and careless input to the engine: nesting that would make stored rows unreadable,
//! durations at the end of the range, outside services asking to come back in centuries,
//! error messages of megabytes, ids longer than any key. Each is refused with a clear error or
//! bounded, never a panic.

use std::sync::Arc;
use std::time::Duration;

use baton::engine::run_id_for;
use baton::local::{LocalOptions, LocalRuntime};
use baton::model::{RunRecord, json_depth};
use baton::store::memory::MemoryStore;
use baton::{
    Ctx, EngineError, Error, Event, Function, NewEvent, Registry, RunStatus, Step, StepError,
    StepStatus, Wait,
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

async fn run_of(rt: &LocalRuntime, name: &str, data: Value, function_id: &str) -> RunRecord {
    let event_id = rt
        .engine()
        .send_events(vec![NewEvent::new(name, data)])
        .await
        .unwrap()
        .remove(0);
    rt.wait_for_run(
        &run_id_for(&event_id, function_id),
        Duration::from_secs(3 * 366 * 86400),
    )
    .await
    .expect("the run ends")
}

/// `{"a": {"a": ... {"a": 1}}}`, `depth` levels of objects.
fn nested(depth: usize) -> Value {
    let mut value = json!(1);
    for _ in 0..depth {
        value = json!({ "a": value });
    }
    value
}

#[test]
fn depth_is_measured_without_recursion() {
    assert_eq!(json_depth(&json!(1)), 0);
    assert_eq!(json_depth(&json!({})), 1);
    assert_eq!(json_depth(&json!([1, [2, {"x": []}]])), 4);
    assert_eq!(json_depth(&nested(125)), 125);
}

#[tokio::test(start_paused = true)]
async fn an_event_nested_past_the_limit_is_refused_and_stores_nothing() {
    let f = Function::new("any")
        .trigger("t/deep")
        .handler(|_ctx: Ctx, _e: Event<Value>| async move { Ok::<_, Error>(()) });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let limit = rt.engine().limits().max_json_depth;
    // The data object itself is one level: `nested(limit - 1)` inside it is the most allowed.
    let ok = NewEvent::new("t/deep", nested(limit));
    assert!(rt.engine().send_events(vec![ok]).await.is_ok());
    for event in [
        NewEvent::new("t/deep", nested(limit + 1)),
        // What broke the store: 125 levels, wrapped deeper by the engine's own events.
        NewEvent::new("t/deep", nested(125)),
    ] {
        let e = rt.engine().send_events(vec![event]).await.unwrap_err();
        let EngineError::Invalid(message) = e else {
            panic!("{e:?}")
        };
        assert!(message.contains("nests"), "{message}");
    }
    let mut user = NewEvent::new("t/deep", json!({}));
    user.user = Some(nested(limit + 1));
    assert!(rt.engine().send_events(vec![user]).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_run_failing_with_the_deepest_event_allowed_stays_readable() {
    // The failure event wraps the run's event: {"event": {"data": ...}} two levels deeper.
    let f = Function::new("fails")
        .trigger("t/fails")
        .handler(|_ctx: Ctx, _e: Event<Value>| async move {
            Err::<(), _>(Error::new("Boom", "it failed"))
        })
        .failure_step(Step::new("note"))
        .on_failure(|ctx: Ctx, event: Event<baton::FailureData>| async move {
            let depth = json_depth(&event.data.event);
            ctx.step(Step::new("note"), async |_| Ok(depth)).await
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let limit = rt.engine().limits().max_json_depth;
    let run = run_of(&rt, "t/fails", nested(limit), "fails").await;
    assert_eq!(run.status, RunStatus::Failed);
    let handler = rt
        .engine()
        .store()
        .list_runs(&baton::model::RunQuery {
            function_id: Some("fails-failure".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let handler = rt
        .wait_for_run(&handler.runs[0].run_id, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(handler.status, RunStatus::Completed, "{handler:?}");
    assert_eq!(handler.output, Some(json!(limit + 1)));
}

#[tokio::test(start_paused = true)]
async fn an_output_nested_past_the_limit_fails_the_step_not_the_store() {
    let f = Function::new("deep-output")
        .trigger("t/out")
        .step(Step::new("make"))
        .handler(|ctx: Ctx, _e: Event<Value>| async move {
            let out: Value = ctx
                .step(Step::new("make"), async |_| Ok(nested(100)))
                .await?;
            Ok::<_, Error>(out)
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let run = run_of(&rt, "t/out", json!({}), "deep-output").await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap();
    assert_eq!(error.name, "OutputTooDeep", "{error:?}");
    let journal = rt.engine().store().journal(&run.run_id).await.unwrap();
    assert_eq!(journal[0].status, StepStatus::Failed);
    assert_eq!(
        journal[0].attempts, 1,
        "not retried: the same code gives the same output"
    );
}

#[tokio::test(start_paused = true)]
async fn durations_at_the_end_of_the_range_fail_the_run_cleanly() {
    const FOREVER: Wait = Wait::new("forever", "t/never").timeout(Duration::MAX);
    let sleeper = Function::new("sleeper").trigger("t/sleep").handler(
        |ctx: Ctx, _e: Event<Value>| async move {
            ctx.sleep("long", Duration::MAX).await?;
            Ok::<_, Error>(())
        },
    );
    let waiter = Function::new("waiter")
        .trigger("t/wait")
        .wait(FOREVER)
        .handler(|ctx: Ctx, _e: Event<Value>| async move {
            let got = ctx.wait_for_event(FOREVER, 1).await?;
            Ok::<_, Error>(got.is_some())
        });
    let until = Function::new("until").trigger("t/until").handler(
        |ctx: Ctx, _e: Event<Value>| async move {
            ctx.sleep_until("end", chrono::DateTime::<chrono::Utc>::MAX_UTC)
                .await?;
            Ok::<_, Error>(())
        },
    );
    let timeouts = Function::new("timeouts")
        .trigger("t/timeouts")
        .finish_timeout(Duration::MAX)
        .start_timeout(Duration::MAX)
        .handler(|_ctx: Ctx, _e: Event<Value>| async move { Ok::<_, Error>("done") });
    let rt = start(
        Registry::new()
            .register(sleeper)
            .and_then(|r| r.register(waiter))
            .and_then(|r| r.register(until))
            .and_then(|r| r.register(timeouts))
            .unwrap(),
    )
    .await;
    for (event, function) in [
        ("t/sleep", "sleeper"),
        ("t/wait", "waiter"),
        ("t/until", "until"),
    ] {
        let run = run_of(&rt, event, json!({}), function).await;
        assert_eq!(run.status, RunStatus::Failed, "{function}");
        assert_eq!(run.error.unwrap().name, "SleepTooLong", "{function}");
    }
    let run = run_of(&rt, "t/timeouts", json!({}), "timeouts").await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_of_centuries_is_cut_to_the_limit() {
    let f = Function::new("patient")
        .trigger("t/patient")
        .step(Step::new("call"))
        .handler(|ctx: Ctx, _e: Event<Value>| async move {
            let n: u32 = ctx
                .step(Step::new("call"), async |s| {
                    if s.attempt == 1 {
                        // 1e10 seconds: the year 2343.
                        return Err(StepError::retry_after(
                            Duration::from_secs(10_000_000_000),
                            "come back much later",
                        ));
                    }
                    Ok(s.attempt)
                })
                .await?;
            Ok::<_, Error>(n)
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let started = tokio::time::Instant::now();
    let run = run_of(&rt, "t/patient", json!({}), "patient").await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.output, Some(json!(2)));
    let waited = started.elapsed();
    let limit = rt.engine().limits().max_retry_after;
    assert!(
        waited >= limit && waited < limit + Duration::from_secs(60),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_huge_error_message_is_cut_and_a_huge_event_id_refused() {
    let f = Function::new("loud")
        .trigger("t/loud")
        .step(Step::new("fail").retries(0))
        .handler(|ctx: Ctx, _e: Event<Value>| async move {
            ctx.step(Step::new("fail"), async |_| {
                Err::<(), _>(StepError::non_retriable("x".repeat(5 * 1024 * 1024)))
            })
            .await?;
            Ok::<_, Error>(())
        });
    let rt = start(Registry::new().register(f).unwrap()).await;
    let run = run_of(&rt, "t/loud", json!({}), "loud").await;
    let error = run.error.unwrap();
    assert!(
        error.message.len() <= baton::model::MAX_ERROR_MESSAGE,
        "{}",
        error.message.len()
    );
    assert!(
        error.message.ends_with("bytes cut)"),
        "{}",
        &error.message[error.message.len() - 40..]
    );

    let long_id = NewEvent::new("t/loud", json!({})).with_id("k".repeat(300));
    let e = rt.engine().send_events(vec![long_id]).await.unwrap_err();
    assert!(
        e.to_string().contains("event id must be 1-256 bytes"),
        "{e}"
    );
}

/// A queue that refuses every send while `down` is set.
struct FlakyQueue {
    down: std::sync::atomic::AtomicBool,
    sent: std::sync::Mutex<Vec<baton::queue::Envelope>>,
}

#[async_trait::async_trait]
impl baton::queue::Queue for FlakyQueue {
    async fn send(
        &self,
        batch: Vec<baton::queue::Envelope>,
    ) -> Result<(), baton::error::QueueError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(baton::error::QueueError::Backend("queue down".into()));
        }
        self.sent.lock().unwrap().extend(batch);
        Ok(())
    }
}

/// A batch that fails partway says which events were stored; their runs exist and the
/// sweeper starts them once the queue is back, so nothing is lost and nothing needs resending
/// but the rest. Starts go out as each event is stored, so here the first send fails after
/// the first event: the rest are still stored, their runs left Queued.
#[tokio::test(start_paused = true)]
async fn a_batch_failing_partway_names_what_it_stored() {
    let f = Function::new("any")
        .trigger("t/batch")
        .handler(|_ctx: Ctx, _e: Event<Value>| async move { Ok::<_, Error>(()) });
    let queue = Arc::new(FlakyQueue {
        down: true.into(),
        sent: Default::default(),
    });
    let store = Arc::new(MemoryStore::new());
    let engine = baton::Engine::new(
        Registry::new().register(f).unwrap(),
        store.clone(),
        queue.clone(),
        baton::EngineConfig::default(),
    );
    let events: Vec<NewEvent> = (0..3)
        .map(|i| NewEvent::new("t/batch", json!({"i": i})))
        .collect();
    let (ids, result) = engine.send_events_partial(events).await;
    assert!(matches!(result, Err(EngineError::Queue(_))), "{result:?}");
    assert_eq!(ids.len(), 3, "every stored event is named");
    for id in &ids {
        let run = baton::Store::get_run(&*store, &run_id_for(id, "any"))
            .await
            .unwrap()
            .expect("its run exists");
        assert_eq!(run.status, RunStatus::Queued);
    }
    queue.down.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(engine.sweep(None).await.unwrap(), 3);
    assert_eq!(queue.sent.lock().unwrap().len(), 3);
}

/// A queue that sends `batch_size` messages per request and notes, at each send, how many
/// runs the store holds.
struct CountingQueue {
    batch_size: usize,
    store: Arc<MemoryStore>,
    sends: std::sync::Mutex<Vec<(usize, usize)>>,
}

#[async_trait::async_trait]
impl baton::queue::Queue for CountingQueue {
    async fn send(
        &self,
        batch: Vec<baton::queue::Envelope>,
    ) -> Result<(), baton::error::QueueError> {
        let query = baton::model::RunQuery {
            limit: 100,
            ..Default::default()
        };
        let stored = baton::Store::list_runs(&*self.store, &query)
            .await
            .unwrap()
            .runs
            .len();
        self.sends.lock().unwrap().push((batch.len(), stored));
        Ok(())
    }

    fn send_batch_size(&self) -> usize {
        self.batch_size
    }
}

/// A run's start goes out as soon as its event is stored, not after the rest of the
/// request: one by one in-process, by the queue's batch (SQS: ten) otherwise.
#[tokio::test(start_paused = true)]
async fn starts_go_out_as_their_events_are_stored() {
    for (batch_size, expected) in [
        (1, (1..=5).map(|n| (1, n)).collect::<Vec<_>>()),
        (2, vec![(2, 2), (2, 4), (1, 5)]),
        (10, vec![(5, 5)]),
    ] {
        let f = Function::new("any")
            .trigger("t/eager")
            .handler(|_ctx: Ctx, _e: Event<Value>| async move { Ok::<_, Error>(()) });
        let store = Arc::new(MemoryStore::new());
        let queue = Arc::new(CountingQueue {
            batch_size,
            store: store.clone(),
            sends: Default::default(),
        });
        let engine = baton::Engine::new(
            Registry::new().register(f).unwrap(),
            store.clone(),
            queue.clone(),
            baton::EngineConfig::default(),
        );
        let events = (0..5)
            .map(|i| NewEvent::new("t/eager", json!({"i": i})))
            .collect();
        assert_eq!(engine.send_events(events).await.unwrap().len(), 5);
        assert_eq!(
            *queue.sends.lock().unwrap(),
            expected,
            "(starts sent, runs stored) at each send, batch size {batch_size}"
        );
    }
}
