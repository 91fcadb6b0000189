//! The Lambda adapters fed the event JSON that AWS sends: the fixtures
//! (`baton_testkit::fixtures`) were produced by `sam local generate-event`.

use baton::Step;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use baton::StepStatus;
use baton::engine::run_id_for;
use baton::error::QueueError;
use baton::model::{Message, MessageKind};
use baton::queue::{Envelope, Queue};
use baton::store::memory::MemoryStore;
use baton::{Ctx, Engine, EngineConfig, Event, Function, NewEvent, Registry, RunStatus};
use baton_aws::lambda::{
    handle_cron_schedule, handle_dead_letters, handle_queue_batch, handle_schedule,
};
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    match name {
        "apigateway-http-api-proxy.json" => baton_testkit::fixtures::API_GATEWAY_HTTP,
        "sqs-receive-message.json" => baton_testkit::fixtures::SQS_RECEIVE_MESSAGE,
        "eventbridge-scheduled-event.json" => baton_testkit::fixtures::EVENTBRIDGE_SCHEDULED,
        other => panic!("no fixture {other}"),
    }
    .to_owned()
}

/// Captures what the engine sends; refuses sends for one run (a queue outage hitting it).
#[derive(Default)]
struct TestQueue {
    sent: Mutex<Vec<Message>>,
    refuse_run: Mutex<Option<String>>,
}

#[async_trait]
impl Queue for TestQueue {
    async fn send(&self, batch: Vec<Envelope>) -> Result<(), QueueError> {
        let refuse = self.refuse_run.lock().unwrap().clone();
        if batch
            .iter()
            .any(|e| Some(&e.message.run_id) == refuse.as_ref())
        {
            return Err(QueueError::Backend("queue unavailable".into()));
        }
        self.sent
            .lock()
            .unwrap()
            .extend(batch.into_iter().map(|e| e.message));
        Ok(())
    }
}

impl TestQueue {
    fn take(&self) -> Vec<Message> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

fn engine(queue: Arc<TestQueue>) -> Engine {
    let f = Function::new("two-steps")
        .trigger("t/two")
        .step(Step::new("a"))
        .step(Step::new("b"));
    let f = f.handler(|ctx: Ctx, ev: Event<Value>| async move {
        let a: i64 = ctx
            .step(Step::new("a"), |_| async move {
                Ok(ev.data["n"].as_i64().unwrap_or(0) + 1)
            })
            .await?;
        ctx.step(Step::new("b"), move |_| async move { Ok(a * 10) })
            .await
    });
    Engine::new(
        Registry::new().register(f).unwrap(),
        Arc::new(MemoryStore::new()),
        queue,
        EngineConfig::default(),
    )
}

/// The fixture batch with its bodies replaced by these messages (ids, receipt handles,
/// attributes and ARNs stay as AWS sent them).
fn batch_of(messages: &[Message]) -> SqsEvent {
    let mut event: SqsEvent = serde_json::from_str(&fixture("sqs-receive-message.json")).unwrap();
    let template = event.records[0].clone();
    event.records = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut record: SqsMessage = template.clone();
            record.message_id = Some(format!("msg-{i}"));
            record.body = Some(serde_json::to_string(m).unwrap());
            record
        })
        .collect();
    event
}

async fn send(engine: &Engine, n: i64) -> String {
    engine
        .send_events(vec![NewEvent::new("t/two", json!({"n": n}))])
        .await
        .unwrap()
        .remove(0)
}

#[tokio::test]
async fn the_fixture_is_a_real_sqs_event_and_foreign_bodies_are_dropped() {
    let queue = Arc::new(TestQueue::default());
    let engine = engine(queue.clone());
    let event: SqsEvent = serde_json::from_str(&fixture("sqs-receive-message.json")).unwrap();
    assert!(
        event.records[0]
            .event_source_arn
            .as_deref()
            .unwrap()
            .starts_with("arn:aws:sqs:")
    );
    // Its body is sam's sample text, not a Baton message: dropped, not retried forever.
    let response = handle_queue_batch(&engine, event, None).await;
    assert!(response.batch_item_failures.is_empty());
    assert!(queue.take().is_empty());
}

#[tokio::test]
async fn a_run_moves_through_step_queues_one_batch_at_a_time() {
    let queue = Arc::new(TestQueue::default());
    let engine = engine(queue.clone());
    let event_id = send(&engine, 4).await;
    let run_id = run_id_for(&event_id, "two-steps");
    for _ in 0..3 {
        let messages = queue.take();
        assert_eq!(messages.len(), 1, "one message hands the run on");
        let response = handle_queue_batch(&engine, batch_of(&messages), None).await;
        assert!(response.batch_item_failures.is_empty());
    }
    let run = engine.store().get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(
        (run.status, run.output),
        (RunStatus::Completed, Some(json!(50)))
    );
}

#[tokio::test]
async fn a_batch_reports_exactly_the_message_whose_run_failed_to_move_on() {
    let queue = Arc::new(TestQueue::default());
    let engine = engine(queue.clone());
    let ok_event = send(&engine, 1).await;
    let bad_event = send(&engine, 2).await;
    let starts = queue.take();
    assert_eq!(starts.len(), 2);
    let bad_run = run_id_for(&bad_event, "two-steps");
    *queue.refuse_run.lock().unwrap() = Some(bad_run.clone());
    let batch = batch_of(&starts);
    let bad_index = starts.iter().position(|m| m.run_id == bad_run).unwrap();
    let response = handle_queue_batch(&engine, batch, None).await;
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    assert_eq!(failed, vec![format!("msg-{bad_index}")]);
    // The good run moved on; the failed message, redelivered once the queue is back, moves the other.
    let sent = queue.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].run_id, run_id_for(&ok_event, "two-steps"));
    *queue.refuse_run.lock().unwrap() = None;
    let retry = handle_queue_batch(&engine, batch_of(&[starts[bad_index].clone()]), None).await;
    assert!(retry.batch_item_failures.is_empty());
    assert!(
        matches!(&queue.take()[..], [m] if m.run_id == bad_run && matches!(m.kind, MessageKind::Step { .. }))
    );
}

#[tokio::test]
async fn a_dead_letter_fails_its_run_with_the_receive_count() {
    let queue = Arc::new(TestQueue::default());
    let engine = engine(queue.clone());
    let event_id = send(&engine, 1).await;
    let start = queue.take();
    let mut batch = batch_of(&start);
    batch.records[0]
        .attributes
        .insert("ApproximateReceiveCount".into(), "5".into());
    let response = handle_dead_letters(&engine, batch).await;
    assert!(response.batch_item_failures.is_empty());
    let run = engine
        .store()
        .get_run(&run_id_for(&event_id, "two-steps"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap();
    assert_eq!(error.name, "DeadLettered");
    assert!(error.message.contains("5 times"), "{}", error.message);
}

#[tokio::test]
async fn the_scheduled_sweeper_redrives_idle_runs() {
    let queue = Arc::new(TestQueue::default());
    let engine = engine(queue.clone());
    send(&engine, 1).await;
    queue.take(); // the start message is lost
    let event: EventBridgeEvent =
        serde_json::from_str(&fixture("eventbridge-scheduled-event.json")).unwrap();
    assert_eq!(event.detail_type, "Scheduled Event");
    assert_eq!(
        handle_schedule(&engine, event.clone(), Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        handle_schedule(&engine, event, Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    assert!(matches!(&queue.take()[..], [m] if m.kind == MessageKind::Redrive));
}

/// A chain of one step (three times, `link` then `link:1`, `link:2`): on Lambda, with the
/// invocation's deadline, the step handler runs the next link itself instead of a round
/// trip through the queue; without a deadline every link is its own message. When the
/// deadline leaves no room for another step's timeout, the link goes through the queue.
#[tokio::test]
async fn steps_on_the_same_queue_run_inline_while_the_deadline_allows() {
    let chain = |timeout: Duration| {
        Function::new("chain")
            .trigger("t/chain")
            .step(Step::new("link").timeout(timeout))
            .handler(|ctx: Ctx, _ev: Event<Value>| async move {
                let mut n = 0i64;
                for _ in 0..3 {
                    n = ctx
                        .step(Step::new("link"), move |_| async move { Ok(n + 1) })
                        .await?;
                }
                Ok(n)
            })
    };
    let deliveries = |timeout: Duration, deadline: Option<Duration>| async move {
        let queue = Arc::new(TestQueue::default());
        let engine = Engine::new(
            Registry::new().register(chain(timeout)).unwrap(),
            Arc::new(MemoryStore::new()),
            queue.clone(),
            EngineConfig::default(),
        );
        let event_id = engine
            .send_events(vec![NewEvent::new("t/chain", json!({}))])
            .await
            .unwrap()
            .remove(0);
        let mut invocations = 0;
        loop {
            let messages = queue.take();
            if messages.is_empty() {
                break;
            }
            invocations += 1;
            let deadline = deadline.map(|d| tokio::time::Instant::now() + d);
            let response = handle_queue_batch(&engine, batch_of(&messages), deadline).await;
            assert!(response.batch_item_failures.is_empty());
        }
        let run_id = run_id_for(&event_id, "chain");
        let run = engine.store().get_run(&run_id).await.unwrap().unwrap();
        assert_eq!(
            (run.status, run.output),
            (RunStatus::Completed, Some(json!(3)))
        );
        let journal = engine.store().journal(&run_id).await.unwrap();
        assert!(journal.iter().all(|s| s.attempts == 1), "{journal:?}");
        invocations
    };
    let step_timeout = Duration::from_secs(10);
    // Start (continue queue), then one step invocation that runs all three links.
    assert_eq!(
        deliveries(step_timeout, Some(Duration::from_secs(40))).await,
        2
    );
    // No deadline: start + one invocation per link.
    assert_eq!(deliveries(step_timeout, None).await, 4);
    // A deadline too close for another link's timeout (+ margin): one invocation per link.
    assert_eq!(
        deliveries(step_timeout, Some(Duration::from_secs(12))).await,
        4
    );
}

/// An invocation killed while it ran a step inline (the Lambda timed out or crashed): the
/// message it was handling comes back; once the step's timeout + 30 s have passed, its handler
/// must be gone, so the replay sends the step's message, and the run completes.
#[tokio::test(start_paused = true)]
async fn a_step_claimed_inline_by_a_killed_invocation_is_sent_again() {
    let slow_first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let slow = slow_first.clone();
    let chain = Function::new("chain")
        .trigger("t/chain")
        .step(Step::new("link").timeout(Duration::from_secs(10)))
        .handler(move |ctx: Ctx, _ev: Event<Value>| {
            let slow = slow.clone();
            async move {
                let mut n = 0i64;
                for i in 0..3 {
                    let slow = slow.clone();
                    n = ctx
                        .step(Step::new("link"), move |_| async move {
                            // The second link hangs the first time it runs.
                            if i == 1 && slow.swap(false, std::sync::atomic::Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_secs(8)).await;
                            }
                            Ok(n + 1)
                        })
                        .await?;
                }
                Ok(n)
            }
        });
    let queue = Arc::new(TestQueue::default());
    let engine = Engine::new(
        Registry::new().register(chain).unwrap(),
        Arc::new(MemoryStore::new()),
        queue.clone(),
        EngineConfig::default(),
    );
    let event_id = engine
        .send_events(vec![NewEvent::new("t/chain", json!({}))])
        .await
        .unwrap()
        .remove(0);
    let run_id = run_id_for(&event_id, "chain");
    let lambda = |messages: Vec<Message>| {
        let engine = engine.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
            // The invocation is killed after 5 s, while `link:1` (claimed inline) runs.
            tokio::time::timeout(
                Duration::from_secs(5),
                handle_queue_batch(&engine, batch_of(&messages), Some(deadline)),
            )
            .await
            .is_ok()
        }
    };
    let start = queue.take();
    assert!(lambda(start).await);
    let link = queue.take();
    assert_eq!(link.len(), 1);
    assert!(!lambda(link.clone()).await, "killed mid-step");
    let journal = engine.store().journal(&run_id).await.unwrap();
    assert_eq!(journal[1].step_id, "link:1");
    assert_eq!(journal[1].status, StepStatus::Running, "{journal:?}");

    // SQS delivers the message again after its visibility timeout; too early to tell a dead
    // handler from a slow one, nothing is sent.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(lambda(link.clone()).await);
    assert!(queue.take().is_empty());
    // Past the step's timeout + 30 s: its handler is gone; the step's message goes out.
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(lambda(link).await);
    let resent = queue.take();
    assert!(
        matches!(&resent[..], [m] if matches!(&m.kind, MessageKind::Step { step_id, attempt: 1, .. } if step_id == "link:1")),
        "{resent:?}"
    );
    assert!(lambda(resent).await);
    let run = engine.store().get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(
        (run.status, run.output),
        (RunStatus::Completed, Some(json!(3)))
    );
}

/// The cron schedule (EventBridge, every minute) fires the ticks of the minute before the
/// event's scheduled time; the same event again, or a later minute without a tick, starts
/// nothing.
#[tokio::test]
async fn the_cron_schedule_fires_the_ticks_of_its_minute_once() {
    let queue = Arc::new(TestQueue::default());
    let f = Function::new("every-5")
        .cron("*/5 * * * *")
        .handler(|_ctx: Ctx, ev: Event<Value>| async move { Ok(ev.data["scheduled_at"].clone()) });
    let engine = Engine::new(
        Registry::new().register(f).unwrap(),
        Arc::new(MemoryStore::new()),
        queue.clone(),
        EngineConfig::default(),
    );
    let mut event: EventBridgeEvent =
        serde_json::from_str(&fixture("eventbridge-scheduled-event.json")).unwrap();
    let at = |s: &str| Some(s.parse::<chrono::DateTime<chrono::Utc>>().unwrap());
    event.time = at("2026-01-01T10:05:00Z");
    assert_eq!(
        handle_cron_schedule(&engine, event.clone()).await.unwrap(),
        1
    );
    let starts = queue.take();
    assert_eq!(starts.len(), 1, "one run started");
    // EventBridge delivered it twice: the tick's event id is the same, so no new run (the
    // not yet started run's start may be sent again, as after a crash; that is harmless).
    assert_eq!(
        handle_cron_schedule(&engine, event.clone()).await.unwrap(),
        1
    );
    let again = queue.take();
    assert!(
        again.iter().all(|m| m.run_id == starts[0].run_id),
        "{again:?}"
    );
    event.time = at("2026-01-01T10:06:00Z");
    assert_eq!(handle_cron_schedule(&engine, event).await.unwrap(), 0);
    let run = engine
        .store()
        .get_run(&starts[0].run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.event.data["scheduled_at"], "2026-01-01T10:05:00Z");
}

/// An API Gateway HTTP API (v2) event as `sam local generate-event` writes it, with only its
/// method and path changed, goes through lambda_http's request conversion into the API's
/// router (what `lambda-api` serves) and comes back as a response with its JSON body.
#[cfg(feature = "http")]
#[tokio::test]
async fn an_http_api_event_reaches_the_router() {
    use lambda_http::IntoResponse as _;
    use tower::ServiceExt as _;

    async fn call(router: &axum::Router, method: &str, path: &str) -> (u16, Value) {
        let mut event: Value =
            serde_json::from_str(&fixture("apigateway-http-api-proxy.json")).unwrap();
        event["rawPath"] = path.into();
        event["rawQueryString"] = "".into();
        event["queryStringParameters"] = json!({});
        event["requestContext"]["http"]["method"] = method.into();
        event["requestContext"]["http"]["path"] = path.into();
        event["body"] = Value::Null;
        event["isBase64Encoded"] = false.into();
        let request = lambda_http::request::from_str(&event.to_string()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let response = response.into_response().await;
        let status = response.status().as_u16();
        (status, serde_json::from_slice(response.body()).unwrap())
    }

    let (queue, _receiver) = baton::queue::local::LocalQueue::new();
    let engine = Engine::new(
        Registry::new(),
        Arc::new(MemoryStore::new()),
        Arc::new(queue),
        EngineConfig::default(),
    );
    let router = baton_http::api_router(
        engine,
        baton_http::Keys::parse(None, Some("secret-signing-key")),
    );
    let (status, body) = call(&router, "GET", "/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    // The fixture carries no bearer key: /v1 refuses it.
    let (status, body) = call(&router, "GET", "/v1/functions").await;
    assert_eq!(status, 401, "{body}");
    // The API's Lambda serves no dashboard page.
    let (status, _) = call(&router, "GET", "/functions").await;
    assert_eq!(status, 404);
}
