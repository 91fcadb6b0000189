//! The SQS queue against a real SQS wire server (moto) with the real aws-sdk client: batching,
//! delays and their cap, failed batch entries, the dead-letter queue, and the naming rule.
//!
//! Needs a moto server: `scripts/moto` starts one (scripts/test runs it first). The endpoint
//! is `BATON_MOTO_ENDPOINT` (default http://127.0.0.1:5005). Every test uses its own queue-name
//! prefix, so tests never see each other's queues; they never reset the server.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_sqs::config::{ConfigBag, Credentials, Intercept, RuntimeComponents};
use aws_sdk_sqs::error::BoxError;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, QueueAttributeName};
use baton::Queue;
use baton::error::QueueError;
use baton::model::{Message, MessageKind, QueueName};
use baton::queue::Envelope;
use baton_aws::sqs::{
    DEAD_LETTER_QUEUE, DLQ_SUFFIX, MAX_DELAY, MAX_QUEUE_NAME_LEN, MAX_RECEIVE_COUNT, QueueNaming,
    SqsQueue, decode_message, delay_seconds, dlq_name, encode_message, is_valid_sqs_name,
    queue_name,
};
use chrono::{TimeZone, Utc};

/// moto's default account.
const ACCOUNT: &str = "123456789012";

fn endpoint() -> String {
    std::env::var("BATON_MOTO_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:5005".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// What the test sees on the wire: `SendMessageBatch` requests, and a switch that makes the
/// next batches ask for a delay SQS refuses (to get entries back in the `Failed` list).
#[derive(Debug, Default)]
struct Wire {
    batch_requests: AtomicU64,
    bodies: Mutex<Vec<String>>,
    delay_past_limit: AtomicBool,
}

#[derive(Debug, Clone)]
struct WireTap(Arc<Wire>);

impl Intercept for WireTap {
    fn name(&self) -> &'static str {
        "baton-test-wire-tap"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request_mut();
        if request.headers().get("x-amz-target") != Some("AmazonSQS.SendMessageBatch") {
            return Ok(());
        }
        self.0.batch_requests.fetch_add(1, Ordering::SeqCst);
        let body = std::str::from_utf8(request.body().bytes().ok_or("streaming body")?)?;
        let mut body = body.to_owned();
        if self.0.delay_past_limit.load(Ordering::SeqCst) {
            // Same length, so Content-Length still holds.
            body = body.replace("\"DelaySeconds\":900", "\"DelaySeconds\":901");
            *request.body_mut() = body.clone().into();
        }
        self.0.bodies.lock().unwrap().push(body);
        Ok(())
    }
}

struct Harness {
    client: Client,
    queue: SqsQueue,
    wire: Arc<Wire>,
    prefix: String,
}

/// A client for the moto server (a missing server fails the test, loudly) and a queue with a
/// prefix of its own.
async fn harness() -> Harness {
    let endpoint = endpoint();
    let wire = Arc::new(Wire::default());
    let shared = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .region("us-east-1")
        // moto speaks plain HTTP: no TLS stack needed.
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .load()
        .await;
    let config = aws_sdk_sqs::config::Builder::from(&shared)
        .interceptor(WireTap(wire.clone()))
        .build();
    let client = Client::from_conf(config);
    let probe = tokio::time::timeout(
        Duration::from_secs(20),
        client.list_queues().queue_name_prefix("baton-probe").send(),
    )
    .await;
    match probe {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!(
            "no SQS (moto) server answers at {endpoint}: {}\n\
             Start one with `scripts/moto` (port: BATON_MOTO_PORT, default 5005; \
             endpoint: BATON_MOTO_ENDPOINT).",
            aws_sdk_sqs::error::DisplayErrorContext(&e)
        ),
        Err(_) => panic!(
            "the SQS (moto) server at {endpoint} did not answer within 20 s.\n\
             Start one with `scripts/moto` (port: BATON_MOTO_PORT, default 5005; \
             endpoint: BATON_MOTO_ENDPOINT)."
        ),
    }
    let prefix = format!("bt{}-", ulid::Ulid::new().to_string().to_lowercase());
    let naming = QueueNaming::new(prefix.clone(), format!("{endpoint}/{ACCOUNT}/"));
    Harness {
        queue: SqsQueue::new(client.clone(), naming),
        client,
        wire,
        prefix,
    }
}

impl Harness {
    /// Receives (and deletes) until `want` messages came or `within` passed; long polls.
    async fn receive(&self, url: &str, want: usize, within: Duration) -> Vec<Message> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < want && Instant::now() < deadline {
            let out = self
                .client
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .expect("ReceiveMessage");
            let mut deletes = Vec::new();
            for (i, m) in out.messages().iter().enumerate() {
                got.push(decode_message(m.body().expect("a body")).expect("a Baton message"));
                deletes.push(
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle().expect("a receipt handle"))
                        .build()
                        .unwrap(),
                );
            }
            if !deletes.is_empty() {
                let out = self
                    .client
                    .delete_message_batch()
                    .queue_url(url)
                    .set_entries(Some(deletes))
                    .send()
                    .await
                    .expect("DeleteMessageBatch");
                assert!(out.failed().is_empty(), "{:?}", out.failed());
            }
        }
        got
    }

    /// One receive without waiting (and without deleting).
    async fn receive_now(&self, url: &str) -> Vec<Message> {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .visibility_timeout(0)
            .send()
            .await
            .expect("ReceiveMessage");
        out.messages()
            .iter()
            .map(|m| decode_message(m.body().unwrap()).unwrap())
            .collect()
    }

    /// Deletes this test's queues (best effort: the prefix is unique anyway).
    async fn cleanup(&self) {
        if let Ok(out) = self
            .client
            .list_queues()
            .queue_name_prefix(&self.prefix)
            .send()
            .await
        {
            for url in out.queue_urls() {
                let _ = self.client.delete_queue().queue_url(url).send().await;
            }
        }
    }
}

fn step_queue(function_id: &str, step: &str) -> QueueName {
    QueueName::Step {
        function_id: function_id.into(),
        step: step.into(),
    }
}

fn continue_queue(function_id: &str) -> QueueName {
    QueueName::Continue {
        function_id: function_id.into(),
    }
}

fn step_message(run: usize, function_id: &str, step: &str, attempt: u32) -> Message {
    Message {
        run_id: format!("01RUN{run:05}"),
        function_id: function_id.into(),
        kind: MessageKind::Step {
            step_id: format!("{step}:{run}"),
            name: step.into(),
            attempt,
        },
        not_before: None,
    }
}

fn now_envelope(message: Message) -> Envelope {
    Envelope {
        message,
        delay: Duration::ZERO,
    }
}

fn as_set(messages: &[Message]) -> HashSet<Message> {
    messages.iter().cloned().collect()
}

#[tokio::test]
async fn sends_in_batches_of_ten_and_receives_every_message() {
    let h = harness().await;
    let started = Instant::now();
    let f = "ingest";
    let (a, b, c) = (
        step_queue(f, "transcribe"),
        step_queue(f, "embed"),
        continue_queue(f),
    );
    h.queue
        .create_queues(&[a.clone(), b.clone(), c.clone()], false)
        .await
        .unwrap();

    // 12 + 9 + 4 = 25 messages, interleaved: 2 + 1 + 1 = 4 batches.
    let mut sent = Vec::new();
    for i in 0..12 {
        sent.push(step_message(i, f, "transcribe", 1 + i as u32 % 3));
        if i < 9 {
            sent.push(step_message(100 + i, f, "embed", 1));
        }
        if i < 4 {
            sent.push(Message {
                run_id: format!("01CONT{i:04}"),
                function_id: f.into(),
                kind: match i {
                    0 => MessageKind::Start,
                    1 => MessageKind::Wake {
                        step_id: "cool-down".into(),
                    },
                    _ => MessageKind::Redrive,
                },
                not_before: (i == 3).then(|| Utc.timestamp_millis_opt(1_700_000_000_123).unwrap()),
            });
        }
    }
    assert_eq!(sent.len(), 25);
    h.queue
        .send(sent.iter().cloned().map(now_envelope).collect())
        .await
        .unwrap();
    assert_eq!(h.queue.batch_requests(), 4, "SendMessageBatch calls");
    assert_eq!(
        h.wire.batch_requests.load(Ordering::SeqCst),
        4,
        "requests on the wire"
    );
    for body in h.wire.bodies.lock().unwrap().iter() {
        let request: serde_json::Value = serde_json::from_str(body).unwrap();
        let entries = request["Entries"].as_array().unwrap();
        assert!((1..=10).contains(&entries.len()), "{body}");
    }
    let sizes: BTreeSet<usize> = h
        .wire
        .bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| {
            serde_json::from_str::<serde_json::Value>(b).unwrap()["Entries"]
                .as_array()
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(sizes, BTreeSet::from([2, 4, 9, 10]), "batch sizes");

    for q in [&a, &b, &c] {
        let expected: Vec<Message> = sent.iter().filter(|m| m.queue() == *q).cloned().collect();
        let got = h
            .receive(
                &h.queue.queue_url(q),
                expected.len(),
                Duration::from_secs(20),
            )
            .await;
        assert_eq!(got.len(), expected.len(), "{q:?}: {got:?}");
        assert_eq!(as_set(&got), as_set(&expected), "{q:?}");
        // Nothing more (no duplicates, nothing in the wrong queue).
        assert!(
            h.receive_now(&h.queue.queue_url(q)).await.is_empty(),
            "{q:?}"
        );
    }
    eprintln!(
        "25 messages over 3 queues, sent and received in {:?}",
        started.elapsed()
    );
    h.cleanup().await;
}

/// Sends to one queue made while a request to it is in flight share the next request: 30
/// handlers handing on at once (one message each) make at most 4 `SendMessageBatch`
/// requests, not 30, and every message arrives once. Sends to different queues do not wait
/// for each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_to_a_queue_share_requests() {
    let h = harness().await;
    let (q, other) = (step_queue("fan", "hop"), step_queue("fan", "other"));
    h.queue
        .create_queues(&[q.clone(), other.clone()], false)
        .await
        .unwrap();
    let sent: Vec<Message> = (0..30).map(|i| step_message(i, "fan", "hop", 1)).collect();
    let results = futures::future::join_all(
        sent.iter()
            .map(|m| h.queue.send(vec![now_envelope(m.clone())])),
    )
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let requests = h.queue.batch_requests();
    assert!(
        (3..=4).contains(&requests),
        "30 sends made {requests} requests"
    );
    let got = h
        .receive(&h.queue.queue_url(&q), 30, Duration::from_secs(20))
        .await;
    assert_eq!(as_set(&got), as_set(&sent));
    assert!(h.receive_now(&h.queue.queue_url(&q)).await.is_empty());

    // Once the queue's requests are done, the next send goes out on its own, and a send to
    // another queue is not held back by them.
    let alone = step_message(99, "fan", "other", 1);
    h.queue
        .send(vec![now_envelope(alone.clone())])
        .await
        .unwrap();
    assert_eq!(h.queue.batch_requests(), requests + 1);
    let got = h
        .receive(&h.queue.queue_url(&other), 1, Duration::from_secs(20))
        .await;
    assert_eq!(got, vec![alone]);
    h.cleanup().await;
}

/// A send whose request fails answers every message in it with the error, also those that
/// joined it from other senders, and the next send starts afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_shared_request_fails_every_sender_in_it() {
    let h = harness().await;
    let missing = step_queue("gone", "hop");
    let sent: Vec<Message> = (0..12).map(|i| step_message(i, "gone", "hop", 1)).collect();
    let results = futures::future::join_all(
        sent.iter()
            .map(|m| h.queue.send(vec![now_envelope(m.clone())])),
    )
    .await;
    for result in &results {
        let error = result
            .as_ref()
            .expect_err("the queue does not exist")
            .to_string();
        assert!(error.contains("create the queues"), "{error}");
    }
    h.queue
        .create_queues(std::slice::from_ref(&missing), false)
        .await
        .unwrap();
    h.queue
        .send(vec![now_envelope(sent[0].clone())])
        .await
        .expect("a later send works");
    let got = h
        .receive(&h.queue.queue_url(&missing), 1, Duration::from_secs(20))
        .await;
    assert_eq!(got, vec![sent[0].clone()]);
    h.cleanup().await;
}

#[tokio::test]
async fn a_delayed_message_is_not_visible_at_once_and_arrives_later() {
    let h = harness().await;
    let q = step_queue("render", "wait");
    h.queue
        .create_queues(std::slice::from_ref(&q), false)
        .await
        .unwrap();
    let url = h.queue.queue_url(&q);
    let now = step_message(1, "render", "wait", 1);
    let later = step_message(2, "render", "wait", 1);
    let sent_at = Instant::now();
    h.queue
        .send(vec![
            now_envelope(now.clone()),
            Envelope {
                message: later.clone(),
                delay: Duration::from_secs(2),
            },
        ])
        .await
        .unwrap();
    assert_eq!(h.queue.batch_requests(), 1);

    let first = h.receive(&url, 1, Duration::from_secs(5)).await;
    assert_eq!(
        first,
        vec![now],
        "only the undelayed message is visible at once"
    );
    let second = h.receive(&url, 1, Duration::from_secs(10)).await;
    let arrived = sent_at.elapsed();
    assert_eq!(
        second,
        vec![later],
        "the delayed message arrives within 10 s"
    );
    eprintln!("a 2 s delay: received after {arrived:?}");
    h.cleanup().await;
}

#[test]
fn delays_are_whole_seconds_rounded_up_and_capped_at_900() {
    assert_eq!(delay_seconds(Duration::ZERO), 0);
    assert_eq!(delay_seconds(Duration::from_millis(1)), 1);
    assert_eq!(delay_seconds(Duration::from_millis(1200)), 2);
    assert_eq!(delay_seconds(Duration::from_secs(2)), 2);
    assert_eq!(delay_seconds(Duration::from_secs(899)), 899);
    assert_eq!(delay_seconds(Duration::from_millis(899_001)), 900);
    assert_eq!(delay_seconds(Duration::from_secs(900)), 900);
    assert_eq!(delay_seconds(Duration::from_millis(900_001)), 900);
    assert_eq!(delay_seconds(Duration::from_secs(3600)), 900);
    assert_eq!(delay_seconds(Duration::from_secs(400 * 86400)), 900);
    assert_eq!(delay_seconds(Duration::MAX), 900);
    assert_eq!(MAX_DELAY, Duration::from_secs(15 * 60));
}

#[tokio::test]
async fn delays_over_fifteen_minutes_go_out_as_900_seconds() {
    let h = harness().await;
    assert_eq!(h.queue.max_delay(), Duration::from_secs(900));
    let q = step_queue("render", "nap");
    h.queue
        .create_queues(std::slice::from_ref(&q), false)
        .await
        .unwrap();
    // SQS (and moto) refuse DelaySeconds over 900, so these only go through capped.
    h.queue
        .send(vec![
            Envelope {
                message: step_message(1, "render", "nap", 1),
                delay: Duration::from_secs(3600),
            },
            Envelope {
                message: step_message(2, "render", "nap", 1),
                delay: Duration::MAX,
            },
        ])
        .await
        .unwrap();
    let bodies = h.wire.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    let request: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    let delays: Vec<i64> = request["Entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["DelaySeconds"].as_i64().unwrap())
        .collect();
    assert_eq!(delays, vec![900, 900]);
    assert!(h.receive_now(&h.queue.queue_url(&q)).await.is_empty());
    h.cleanup().await;
}

#[tokio::test]
async fn entries_sqs_refuses_fail_the_send_with_its_reasons() {
    let h = harness().await;
    let q = step_queue("render", "nap");
    h.queue
        .create_queues(std::slice::from_ref(&q), false)
        .await
        .unwrap();
    // The wire tap turns DelaySeconds 900 into 901: SQS lists that entry as failed (the
    // request itself succeeds, and the other entries are sent).
    h.wire.delay_past_limit.store(true, Ordering::SeqCst);
    let refused = step_message(7, "render", "nap", 1);
    let err = h
        .queue
        .send(vec![
            now_envelope(step_message(1, "render", "nap", 1)),
            Envelope {
                message: refused.clone(),
                delay: Duration::from_secs(7200),
            },
            now_envelope(step_message(2, "render", "nap", 1)),
        ])
        .await
        .unwrap_err();
    let QueueError::Backend(text) = &err;
    eprintln!("{text}");
    assert!(text.contains(&h.queue.queue_name(&q)), "{text}");
    assert!(text.contains("1 of 3 messages not sent"), "{text}");
    assert!(
        text.contains(&format!("(run {})", refused.run_id)),
        "{text}"
    );
    assert!(text.contains("DelaySeconds"), "SQS's reason: {text}");
    assert!(text.contains("sender fault"), "{text}");
    let got = h
        .receive(&h.queue.queue_url(&q), 2, Duration::from_secs(10))
        .await;
    assert_eq!(got.len(), 2, "the other entries were sent: {got:?}");
    h.cleanup().await;
}

#[tokio::test]
async fn sending_to_a_missing_queue_fails_clearly() {
    let h = harness().await;
    let q = step_queue("never", "created");
    let err = h
        .queue
        .send(vec![now_envelope(step_message(1, "never", "created", 1))])
        .await
        .unwrap_err();
    let text = err.to_string();
    eprintln!("{text}");
    assert!(matches!(err, QueueError::Backend(_)), "{err:?}");
    assert!(text.contains(&h.queue.queue_name(&q)), "{text}");
    assert!(text.contains("create the queues"), "{text}");
}

#[tokio::test]
async fn a_message_received_too_often_lands_in_the_dlq() {
    let h = harness().await;
    let started = Instant::now();
    let q = step_queue("ingest", "flaky");
    h.queue
        .create_queues(std::slice::from_ref(&q), true)
        .await
        .unwrap();
    let (url, dlq_url) = (h.queue.queue_url(&q), h.queue.dlq_url());
    let naming = h.queue.naming();
    assert_eq!(
        dlq_url,
        format!("{}{}{DEAD_LETTER_QUEUE}", naming.url_prefix, h.prefix)
    );

    let attributes = h
        .client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let policy: serde_json::Value = serde_json::from_str(
        attributes
            .attributes()
            .unwrap()
            .get(&QueueAttributeName::RedrivePolicy)
            .expect("a redrive policy"),
    )
    .unwrap();
    assert_eq!(
        policy["maxReceiveCount"].as_u64(),
        Some(MAX_RECEIVE_COUNT as u64),
        "{policy}"
    );
    assert!(
        policy["deadLetterTargetArn"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{}", h.queue.naming().dlq_name())),
        "{policy}"
    );

    let message = step_message(1, "ingest", "flaky", 1);
    h.queue
        .send(vec![now_envelope(message.clone())])
        .await
        .unwrap();

    // A handler that fails every time: receive, never delete, the message comes back after
    // its 1 s visibility timeout, until SQS moves it to the DLQ.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut receives: u32 = 0;
    let in_dlq = loop {
        assert!(
            Instant::now() < deadline,
            "not in the DLQ after {receives} receives"
        );
        let out = h
            .client
            .receive_message()
            .queue_url(&url)
            .wait_time_seconds(2)
            .visibility_timeout(1)
            .send()
            .await
            .unwrap();
        for m in out.messages() {
            assert_eq!(decode_message(m.body().unwrap()).unwrap(), message);
            receives += 1;
        }
        if out.messages().is_empty() {
            let dlq = h.receive_now(&dlq_url).await;
            if !dlq.is_empty() {
                break dlq;
            }
        }
    };
    assert_eq!(receives, MAX_RECEIVE_COUNT, "receives before the DLQ");
    assert_eq!(in_dlq, vec![message]);
    assert!(h.receive_now(&url).await.is_empty());
    eprintln!(
        "redriven to the DLQ after {receives} receives in {:?}",
        started.elapsed()
    );
    h.cleanup().await;
}

#[tokio::test]
async fn computed_urls_are_the_urls_sqs_reports() {
    let h = harness().await;
    let names = [
        step_queue("ingest", "transcribe"),
        continue_queue("ingest"),
        step_queue(&"f".repeat(64), &"s".repeat(64)),
    ];
    // create_queues itself fails when SQS's URL differs from the computed one.
    h.queue.create_queues(&names, true).await.unwrap();
    // Idempotent.
    h.queue.create_queues(&names, true).await.unwrap();
    let dlq = (h.queue.naming().dlq_name(), h.queue.dlq_url());
    let all = names
        .iter()
        .map(|q| (h.queue.queue_name(q), h.queue.queue_url(q)))
        .chain([dlq]);
    for (name, url) in all {
        let out = h
            .client
            .get_queue_url()
            .queue_name(&name)
            .send()
            .await
            .unwrap();
        assert_eq!(out.queue_url(), Some(url.as_str()));
    }
    // Every queue's redrive policy names the one dead-letter queue.
    let dlq_arn = baton_aws::sqs::queue_arn(&h.client, &h.queue.dlq_url())
        .await
        .unwrap();
    for q in &names {
        let attributes = h
            .client
            .get_queue_attributes()
            .queue_url(h.queue.queue_url(q))
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .unwrap();
        let policy = attributes.attributes().unwrap()[&QueueAttributeName::RedrivePolicy].clone();
        let policy: serde_json::Value = serde_json::from_str(&policy).unwrap();
        assert_eq!(policy["deadLetterTargetArn"], dlq_arn.as_str(), "{q:?}");
    }
    // A wrong url_prefix is caught at setup.
    let wrong = SqsQueue::new(
        h.client.clone(),
        QueueNaming::new(h.prefix.clone(), format!("{}/000000000000/", endpoint())),
    );
    let err = wrong
        .create_queues(&[continue_queue("other")], false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("url_prefix"), "{err}");
    h.cleanup().await;
}

// ---- naming (no server) ----

#[test]
fn plain_names_follow_the_documented_rule() {
    assert_eq!(
        queue_name("baton-", &step_queue("ingest", "transcribe")),
        "baton-ingest--transcribe"
    );
    assert_eq!(
        queue_name("baton-", &continue_queue("ingest")),
        "baton-ingest--continue"
    );
    assert_eq!(dlq_name("baton-"), "baton-dead-letters");
    assert_eq!(queue_name("", &step_queue("a_B-9", "x")), "a_B-9--x");

    let naming = QueueNaming::new("p-", "http://127.0.0.1:5005/123456789012");
    assert_eq!(naming.url_prefix, "http://127.0.0.1:5005/123456789012/");
    assert_eq!(
        naming.url(&step_queue("f", "s")),
        "http://127.0.0.1:5005/123456789012/p-f--s"
    );
    assert_eq!(
        naming.dlq_url(),
        "http://127.0.0.1:5005/123456789012/p-dead-letters"
    );
    let aws = QueueNaming::aws("app-", "eu-west-1", "111122223333");
    assert_eq!(
        aws.url(&continue_queue("f")),
        "https://sqs.eu-west-1.amazonaws.com/111122223333/app-f--continue"
    );
    // Fields set by hand, without the trailing slash.
    let by_hand = QueueNaming {
        prefix: "p-".into(),
        url_prefix: "http://h/1".into(),
    };
    assert_eq!(by_hand.url(&step_queue("f", "s")), "http://h/1/p-f--s");
}

#[test]
fn long_names_are_shortened_deterministically() {
    let f = "f".repeat(64);
    let s = "s".repeat(64);
    let name = queue_name("baton-prod-", &step_queue(&f, &s));
    assert_eq!(name.len(), MAX_QUEUE_NAME_LEN);
    assert!(is_valid_sqs_name(&name), "{name}");
    assert_eq!(
        name,
        queue_name("baton-prod-", &step_queue(&f, &s)),
        "deterministic"
    );
    // Recognisable: prefix, both ids (cut evenly), the hash.
    let (readable, hash) = name.rsplit_once('-').unwrap();
    assert_eq!(hash.len(), 8);
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
    assert_eq!(readable, format!("baton-prod-{}--{}", &f[..27], &s[..27]));

    // Ids that differ only in the part cut off still get different names.
    let mut s2 = s.clone();
    s2.replace_range(63.., "t");
    let mut f2 = f.clone();
    f2.replace_range(63.., "g");
    let names: HashSet<String> = [
        step_queue(&f, &s),
        step_queue(&f, &s2),
        step_queue(&f2, &s),
        continue_queue(&f),
        continue_queue(&f2),
    ]
    .iter()
    .map(|q| queue_name("baton-prod-", q))
    .collect();
    assert_eq!(names.len(), 5);

    // A short step keeps all of itself; the function id takes the rest of the room.
    let name = queue_name("baton-prod-", &step_queue(&f, "embed"));
    assert!(
        name.starts_with(&format!("baton-prod-{}--embed-", &f[..49])),
        "{name}"
    );
    assert_eq!(name.len(), MAX_QUEUE_NAME_LEN);
    let name = queue_name("baton-prod-", &continue_queue(&f));
    assert!(name.contains("--continue-"), "{name}");
}

#[test]
fn the_length_limit_is_76() {
    let prefix = "p-";
    // 2 + 34 + 2 + 38 = 76: plain.
    let q = step_queue(&"a".repeat(34), &"b".repeat(38));
    assert_eq!(
        queue_name(prefix, &q),
        format!("p-{}--{}", "a".repeat(34), "b".repeat(38))
    );
    // One more: shortened, to 76.
    let q = step_queue(&"a".repeat(34), &"b".repeat(39));
    let name = queue_name(prefix, &q);
    assert_eq!(name.len(), 76);
    // 67 characters before `-{hash}`: after `p-` and `--`, 63 split 31 / 32.
    assert!(
        name.starts_with(&format!("p-{}--{}", "a".repeat(31), "b".repeat(32))),
        "{name}"
    );
}

#[test]
fn names_that_could_be_mistaken_are_disambiguated() {
    let p = "x-";
    let pairs = [
        // `--` inside an id: the plain names would both be `x-a--b--c`.
        (step_queue("a--b", "c"), step_queue("a", "b--c")),
        // A function id ending in `-`: both would be `x-a----b`.
        (step_queue("a-", "-b"), step_queue("a", "--b")),
        // A step named `continue` against the continue queue.
        (step_queue("a", "continue"), continue_queue("a")),
        // A step ending in `-dlq` against another step's dead-letter queue.
        (step_queue("a", "b-dlq"), step_queue("a", "b")),
    ];
    for (one, other) in &pairs {
        let (n1, n2) = (queue_name(p, one), queue_name(p, other));
        assert_ne!(n1, n2, "{one:?} / {other:?}");
        for n in [&n1, &n2] {
            assert!(is_valid_sqs_name(n) && n.len() <= MAX_QUEUE_NAME_LEN, "{n}");
            assert!(!n.ends_with(DLQ_SUFFIX), "{n}");
        }
        assert_ne!(n1, dlq_name(p));
        assert_ne!(n2, dlq_name(p));
    }
    assert_eq!(queue_name(p, &continue_queue("a")), "x-a--continue");
    assert_eq!(queue_name(p, &step_queue("a", "b")), "x-a--b");
}

#[test]
fn every_queue_and_dlq_name_is_distinct_and_valid() {
    // All ids of up to 4 characters over {a, -} (the separator's own character), and some
    // long ones: every queue name and the dead-letter queue's are distinct, valid SQS names.
    let mut ids = vec![String::new()];
    let mut frontier = vec![String::new()];
    for _ in 0..4 {
        frontier = frontier
            .iter()
            .flat_map(|s| [format!("{s}a"), format!("{s}-")])
            .collect();
        ids.extend(frontier.iter().cloned());
    }
    ids.retain(|s| !s.is_empty());
    ids.extend(
        [
            "continue",
            "a-dlq",
            "continue-dlq",
            "dlq",
            "dead",
            "letters",
            "dead-letters",
        ]
        .map(String::from),
    );
    ids.extend((60..=64).map(|n| "z".repeat(n)));
    ids.push(format!("{}-", "z".repeat(63)));
    let mut queues = Vec::new();
    for f in &ids {
        queues.push(continue_queue(f));
        for s in &ids {
            queues.push(step_queue(f, s));
        }
    }
    let mut seen = HashSet::new();
    for prefix in ["", "p-", "baton-production-eu-"] {
        seen.clear();
        let dlq = dlq_name(prefix);
        assert!(is_valid_sqs_name(&dlq), "{dlq}");
        seen.insert(dlq);
        for q in &queues {
            let name = queue_name(prefix, q);
            assert!(name.len() <= MAX_QUEUE_NAME_LEN, "{name}");
            assert!(is_valid_sqs_name(&name), "{name}");
            assert!(seen.insert(name.clone()), "{q:?} -> {name} twice");
        }
    }
    assert_eq!(seen.len(), queues.len() + 1);
}

#[test]
fn odd_prefixes_still_give_valid_names() {
    let q = step_queue("ingest", "transcribe");
    let name = queue_name("my.app/", &q);
    assert!(is_valid_sqs_name(&name), "{name}");
    assert!(name.starts_with("my_app_ingest--transcribe-"), "{name}");
    let long = "p".repeat(100);
    let name = queue_name(&long, &q);
    assert!(
        is_valid_sqs_name(&name) && name.len() == MAX_QUEUE_NAME_LEN,
        "{name}"
    );
    assert_ne!(name, queue_name(&long, &step_queue("ingest", "embed")));
}

// ---- message bodies ----

#[test]
fn message_bodies_round_trip_and_keep_their_wire_shape() {
    let message = Message {
        run_id: "01J00000000000000000000000".into(),
        function_id: "ingest".into(),
        kind: MessageKind::Step {
            step_id: "embed:1".into(),
            name: "embed".into(),
            attempt: 2,
        },
        not_before: Some(Utc.timestamp_millis_opt(1_700_000_000_000).unwrap()),
    };
    let body = encode_message(&message).unwrap();
    assert_eq!(decode_message(&body).unwrap(), message);
    let fixed = r#"{"run_id":"r1","function_id":"f","kind":{"type":"wake","step_id":"nap"}}"#;
    assert_eq!(
        decode_message(fixed).unwrap(),
        Message {
            run_id: "r1".into(),
            function_id: "f".into(),
            kind: MessageKind::Wake {
                step_id: "nap".into()
            },
            not_before: None,
        }
    );
}

#[test]
fn bad_bodies_are_clear_errors() {
    let long_garbage = "x".repeat(5000);
    for body in [
        "",
        "\0",
        "not json",
        "{}",
        r#"{"run_id":"r","function_id":"f","kind":{"type":"teleport"}}"#,
        long_garbage.as_str(),
    ] {
        let err = decode_message(body).unwrap_err();
        let QueueError::Backend(text) = &err;
        assert!(text.starts_with("not a Baton queue message"), "{text}");
        assert!(text.len() < 600, "the body is cut short: {}", text.len());
    }
}
