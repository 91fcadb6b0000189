//! End to end through the Vercel functions as real processes: the built `vercel-route-*` and
//! `vercel-step-*` binaries, each serving HTTP on 127.0.0.1:$VERCEL_DEV_PORT as vercel_runtime
//! does outside Vercel, against DynamoDB and SQS on moto (a fresh table and fresh queues per
//! test). The relays run in this process: each queue of a step hosted on Vercel is received
//! in batches as Lambda's event source mapping would ([`SqsTrigger`]) and handed to the relay
//! Lambda's own code ([`Relay::deliver`]), which posts it, signed, to the step's process; the
//! other queues are handled by the Lambda consumers' code ([`baton_aws::lambda::handle_queue_batch`]).
//!
//! Needs a moto server: `scripts/moto` starts one (scripts/test does); the endpoint is
//! `BATON_MOTO_ENDPOINT`, default http://127.0.0.1:5005.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use baton::model::{QueueName, RunStatus, StepStatus};
use baton::{Engine, EngineConfig, NewEvent, Store as _};
use baton_aws::dynamodb::DynamoStore;
use baton_aws::relay::{Relay, RelayConfig};
use baton_aws::sqs::{QueueNaming, SqsQueue};
use baton_testkit::sqs_trigger::SqsTrigger;
use serde_json::{Value, json};

const REGION: &str = "us-east-1";
/// moto's default account (its queue URLs are `{endpoint}/{account}/{name}`).
const ACCOUNT: &str = "123456789012";
const EVENT_KEY: &str = "vercel-e2e-event-key-0123456789";
const SIGNING_KEY: &str = "vercel-e2e-signing-key-0123456789";
const RELAY_SECRET: &str = "vercel-e2e-relay-secret-0123456789-abcdef";

fn endpoint() -> String {
    std::env::var("BATON_MOTO_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:5005".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// The built binary of a Vercel function of this package.
macro_rules! vercel_bin {
    ($name:literal) => {
        env!(concat!("CARGO_BIN_EXE_", $name))
    };
}

fn charge_card() -> QueueName {
    QueueName::Step {
        function_id: "process-order".into(),
        step: "charge-card".into(),
    }
}

fn send_receipt() -> QueueName {
    QueueName::Step {
        function_id: "process-order".into(),
        step: "send-receipt".into(),
    }
}

// ---- the AWS side: table, queues, the Lambda consumers' engine ----

struct Aws {
    store: DynamoStore,
    queue: SqsQueue,
    engine: Engine,
    table: String,
    prefix: String,
    url_prefix: String,
}

async fn aws() -> Aws {
    let endpoint = endpoint();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .region(REGION)
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .load()
        .await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let hint = "Run the tests with `scripts/test`, or start moto with `scripts/moto` \
                (endpoint: BATON_MOTO_ENDPOINT, default http://127.0.0.1:5005).";
    match tokio::time::timeout(
        Duration::from_secs(20),
        dynamodb.list_tables().limit(1).send(),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!(
            "no moto server answers at {endpoint}: {}\n{hint}",
            aws_sdk_dynamodb::error::DisplayErrorContext(&e)
        ),
        Err(_) => panic!("the moto server at {endpoint} did not answer within 20 s.\n{hint}"),
    }
    let unique = ulid::Ulid::new().to_string().to_lowercase();
    let table = format!("baton-vercel-{unique}");
    let prefix = format!("vc{}-", &unique[unique.len() - 10..]);
    let url_prefix = format!("{endpoint}/{ACCOUNT}/");
    let store = DynamoStore::new(dynamodb, table.clone());
    store.create_table().await.expect("create the table");
    let queue = SqsQueue::new(
        aws_sdk_sqs::Client::new(&config),
        QueueNaming::new(prefix.clone(), url_prefix.clone()),
    );
    let registry = app::registry();
    queue
        .create_queues(&registry.queues(), true)
        .await
        .expect("create the queues");
    let engine = Engine::new(
        registry,
        Arc::new(store.clone()),
        Arc::new(queue.clone()),
        EngineConfig::default(),
    );
    Aws {
        store,
        queue,
        engine,
        table,
        prefix,
        url_prefix,
    }
}

// ---- the Vercel functions as processes ----

/// A Vercel function's binary running as vercel_runtime runs outside Vercel, on
/// 127.0.0.1:`port`; killed when dropped (its log shown if the test failed).
struct Function {
    name: &'static str,
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Function {
    /// Starts `binary` with the configuration a Vercel project would give it (and nothing
    /// else from this environment), and waits until it listens.
    fn start(name: &'static str, binary: &str, aws: &Aws) -> Function {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .env_clear()
            .env("VERCEL_DEV_PORT", port.to_string())
            .env("HOME", dir.path())
            .env("RUST_LOG", "info")
            .env("BATON_TABLE", &aws.table)
            .env("BATON_QUEUE_PREFIX", &aws.prefix)
            .env("BATON_QUEUE_URL_PREFIX", &aws.url_prefix)
            .env("BATON_EVENT_KEY", EVENT_KEY)
            .env("BATON_SIGNING_KEY", SIGNING_KEY)
            .env("BATON_RELAY_SECRET", RELAY_SECRET)
            .env("AWS_ENDPOINT_URL", endpoint())
            .env("AWS_REGION", REGION)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{binary} does not start: {e}"));
        let mut function = Function {
            name,
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Some(status) = function.child.try_wait().unwrap() {
                panic!(
                    "{name} exited ({status}) before listening:\n{}",
                    function.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not listen on 127.0.0.1:{port} within 60 s:\n{}",
                function.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        function
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log_text());
        }
    }
}

// ---- delivery: relays for the Vercel steps' queues, Lambda consumers for the others ----

/// What the consumers did, per queue.
#[derive(Debug, Default, Clone)]
struct QueueStats {
    /// Batches relayed, by the step function's answer (`None`: no answer).
    relayed: BTreeMap<Option<u16>, usize>,
    /// Messages relayed and not reported failed.
    relayed_ok: usize,
    /// Messages handled in this process (the Lambda path).
    handled: usize,
}

struct Consumers {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<BTreeMap<QueueName, QueueStats>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Consumers {
    /// Consumes `queues`: those in `relays` through a relay to the given URL, the others
    /// with the engine.
    async fn start(aws: &Aws, queues: &[QueueName], relays: &[(QueueName, String)]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stats: Arc<Mutex<BTreeMap<QueueName, QueueStats>>> = Arc::default();
        let mut tasks = Vec::new();
        for q in queues {
            let mut trigger =
                SqsTrigger::new(aws.queue.client().clone(), aws.queue.queue_url(q), REGION)
                    .await
                    .expect("queue attributes");
            trigger.visibility_timeout = 5;
            let relay = relays.iter().find(|(r, _)| r == q).map(|(_, url)| {
                Relay::new(RelayConfig {
                    url: url.clone(),
                    secret: RELAY_SECRET.to_owned(),
                    timeout: Duration::from_secs(60),
                })
            });
            let engine = aws.engine.clone();
            let (stop, stats, q) = (stop.clone(), stats.clone(), q.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let records = trigger
                        .receive(Duration::from_secs(1))
                        .await
                        .expect("receive");
                    if records.is_empty() {
                        continue;
                    }
                    let mut event = SqsEvent::default();
                    event.records = records.clone();
                    let failed: Vec<String> = match &relay {
                        Some(relay) => {
                            let delivery = relay.deliver(&event, Duration::from_secs(60)).await;
                            let failed: Vec<String> = delivery
                                .failed_ids()
                                .iter()
                                .map(|s| s.to_string())
                                .collect();
                            let mut stats = stats.lock().unwrap();
                            let s = stats.entry(q.clone()).or_default();
                            *s.relayed.entry(delivery.status).or_default() += 1;
                            s.relayed_ok += records.len() - failed.len();
                            failed
                        }
                        None => {
                            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
                            let response = baton_aws::lambda::handle_queue_batch(
                                &engine,
                                event,
                                Some(deadline),
                            )
                            .await;
                            stats.lock().unwrap().entry(q.clone()).or_default().handled +=
                                records.len();
                            response
                                .batch_item_failures
                                .into_iter()
                                .map(|f| f.item_identifier)
                                .collect()
                        }
                    };
                    let done: Vec<SqsMessage> = records
                        .into_iter()
                        .filter(|r| !failed.contains(r.message_id.as_ref().unwrap()))
                        .collect();
                    trigger.delete(&done).await.expect("delete");
                }
            }));
        }
        Consumers { stop, stats, tasks }
    }

    async fn stop(self) -> BTreeMap<QueueName, QueueStats> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            if let Err(e) = task.await {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        self.stats.lock().unwrap().clone()
    }
}

/// The queues of the order example and its failure handler.
fn order_queues(aws: &Aws) -> Vec<QueueName> {
    aws.engine
        .registry()
        .queues()
        .into_iter()
        .filter(|q| match q {
            QueueName::Step { function_id, .. } | QueueName::Continue { function_id } => {
                function_id.starts_with("process-order")
            }
        })
        .collect()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client
        .get(url)
        .bearer_auth(SIGNING_KEY)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn step<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {run}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_runs_through_the_vercel_routes_and_the_relayed_vercel_steps() {
    let aws = aws().await;
    let events = Function::start("route-events", vercel_bin!("vercel-route-events"), &aws);
    let event_runs = Function::start(
        "route-event-runs",
        vercel_bin!("vercel-route-event-runs"),
        &aws,
    );
    let runs_get = Function::start("route-runs-get", vercel_bin!("vercel-route-runs-get"), &aws);
    let charge = Function::start(
        "step charge-card",
        vercel_bin!("vercel-step-process-order--charge-card"),
        &aws,
    );
    let receipt = Function::start(
        "step send-receipt",
        vercel_bin!("vercel-step-process-order--send-receipt"),
        &aws,
    );
    let consumers = Consumers::start(
        &aws,
        &order_queues(&aws),
        &[
            (
                charge_card(),
                charge.url("/api/step-process-order--charge-card"),
            ),
            (
                send_receipt(),
                receipt.url("/api/step-process-order--send-receipt"),
            ),
        ],
    )
    .await;
    let client = http();

    // The event in through the events route's process.
    let response = client
        .post(events.url(&format!("/e/{EVENT_KEY}")))
        .json(&json!({
            "name": "demo/order.placed",
            "id": "vercel-order-1",
            "data": {"order_id": "o-vercel", "items": ["book", "pen"], "flaky_payment": true, "cool_down_s": 1},
        }))
        .send()
        .await
        .expect("POST /e");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let event_id = body["ids"][0].as_str().expect("an event id").to_owned();
    // A wrong event key is refused by the same process.
    let refused = client
        .post(events.url("/e/not-the-key"))
        .json(&json!({"name": "demo/order.placed", "data": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // The run, found through the event-runs route's process, ends.
    let deadline = Instant::now() + Duration::from_secs(120);
    let run_id = loop {
        let (status, body) = get(
            &client,
            &event_runs.url(&format!("/v1/events/{event_id}/runs")),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let runs = body["data"].as_array().cloned().unwrap_or_default();
        if let Some(run) = runs.first() {
            let ended = ["Completed", "Failed", "Cancelled"]
                .contains(&run["status"].as_str().unwrap_or(""));
            if ended {
                break run["run_id"].as_str().unwrap().to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the run did not end within 120 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Its status and output through the runs route's process.
    let (status, body) = get(&client, &runs_get.url(&format!("/v1/runs/{run_id}"))).await;
    assert_eq!(status, 200, "{body}");
    let run = &body["data"];
    assert_eq!(run["status"], "Completed", "{run}");
    assert_eq!(run["output"]["order_id"], "o-vercel");
    assert_eq!(run["output"]["payment"], "pay-o-vercel");
    assert_eq!(run["output"]["charged_on_attempt"], 3, "{run}");
    assert_eq!(run["output"]["receipt"], "receipt for o-vercel");
    assert_eq!(run["progress"]["percent"], 100, "{run}");
    for (name, attempts) in [
        ("validate", 1),
        ("reserve-stock", 1),
        ("charge-card", 3),
        ("send-receipt", 1),
    ] {
        let s = step(run, name);
        assert_eq!(s["status"], "Completed", "{s}");
        assert_eq!(s["attempts"], attempts, "{s}");
    }
    // Without the signing key, the runs route refuses.
    let unauthorized = client
        .get(runs_get.url(&format!("/v1/runs/{run_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);

    let stats = consumers.stop().await;
    // The Vercel steps went through their relays to the step processes (three charge-card
    // attempts, one receipt), and nothing handled their queues in this process.
    let charged = stats.get(&charge_card()).cloned().unwrap_or_default();
    let receipted = stats.get(&send_receipt()).cloned().unwrap_or_default();
    assert_eq!(charged.handled, 0);
    assert_eq!(receipted.handled, 0);
    assert!(charged.relayed_ok >= 3, "{charged:?}");
    assert!(receipted.relayed_ok >= 1, "{receipted:?}");
    assert!(
        charged.relayed.keys().all(|s| *s == Some(200)),
        "every relayed call answered 200: {charged:?}"
    );
    eprintln!("per queue: {stats:#?}");
}

/// A charge-card message on its queue, not yet delivered: the order's other queues are
/// consumed (the Lambda path) until it is there.
async fn pending_charge(aws: &Aws) -> (String, SqsTrigger, SqsMessage) {
    let ids = aws
        .engine
        .send_events(vec![NewEvent::new(
            "demo/order.placed",
            json!({"order_id": "o-signed", "items": ["book"], "flaky_payment": true}),
        )])
        .await
        .unwrap();
    let run_id = aws.store.runs_for_event(&ids[0]).await.unwrap()[0]
        .run_id
        .clone();
    let others: Vec<QueueName> = order_queues(aws)
        .into_iter()
        .filter(|q| *q != charge_card())
        .collect();
    let consumers = Consumers::start(aws, &others, &[]).await;
    let mut trigger = SqsTrigger::new(
        aws.queue.client().clone(),
        aws.queue.queue_url(&charge_card()),
        REGION,
    )
    .await
    .unwrap();
    trigger.visibility_timeout = 2;
    trigger.batch_size = 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    let record = loop {
        let records = trigger.receive(Duration::from_secs(1)).await.unwrap();
        if let Some(r) = records.into_iter().next() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no charge-card message within 60 s"
        );
    };
    consumers.stop().await;
    (run_id, trigger, record)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relayed_batch_with_a_bad_or_stale_signature_is_refused_and_changes_nothing() {
    let aws = aws().await;
    let charge = Function::start(
        "step charge-card",
        vercel_bin!("vercel-step-process-order--charge-card"),
        &aws,
    );
    let url = charge.url("/api/step-process-order--charge-card");
    let (run_id, trigger, record) = pending_charge(&aws).await;
    let message_id = record.message_id.clone().unwrap();
    let mut event = SqsEvent::default();
    event.records = vec![record];
    let body = serde_json::to_string(&event).unwrap();
    let state = || async {
        (
            aws.store.get_run(&run_id).await.unwrap(),
            aws.store.journal(&run_id).await.unwrap(),
        )
    };
    let before = state().await;
    let charge_step = before
        .1
        .iter()
        .find(|s| s.step_id == "charge-card")
        .unwrap();
    assert_eq!(
        (charge_step.status, charge_step.attempts),
        (StepStatus::Planned, 0)
    );

    // The relay with another secret: refused, and it reports the message failed, so it
    // stays on the queue.
    let wrong = Relay::new(RelayConfig {
        url: url.clone(),
        secret: "not-the-relay-secret-0123456789-abcdef".into(),
        timeout: Duration::from_secs(30),
    });
    let delivery = wrong.deliver(&event, Duration::from_secs(30)).await;
    assert_eq!(delivery.status, Some(401));
    assert_eq!(delivery.failed_ids(), [message_id.as_str()]);
    assert_eq!(state().await, before, "a wrong secret changed the run");

    // The right relay, but signed ten minutes ago: stale.
    let relay = Relay::new(RelayConfig {
        url: url.clone(),
        secret: RELAY_SECRET.into(),
        timeout: Duration::from_secs(30),
    });
    let delivery = relay
        .deliver_at(
            &event,
            Duration::from_secs(30),
            chrono::Utc::now() - chrono::Duration::minutes(10),
        )
        .await;
    assert_eq!(delivery.status, Some(401));
    assert_eq!(delivery.failed_ids(), [message_id.as_str()]);
    assert_eq!(state().await, before, "a stale request changed the run");

    // Signed now, then altered (another attempt number), or not signed at all: refused.
    let client = http();
    let altered = body.replace(r#"\"attempt\":1"#, r#"\"attempt\":2"#);
    assert_ne!(altered, body);
    let signature = baton_aws::relay::sign(RELAY_SECRET, body.as_bytes(), chrono::Utc::now());
    for (what, body, headers) in [
        ("altered body", altered.as_str(), signature.to_vec()),
        ("no signature", body.as_str(), vec![]),
    ] {
        let mut request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 401, "{what}: {answer}");
        assert!(answer["error"].is_string(), "{what}: {answer}");
        assert_eq!(state().await, before, "{what} changed the run");
    }

    // The message was left on the queue: it comes back (after its visibility timeout).
    let deadline = Instant::now() + Duration::from_secs(60);
    let again = loop {
        let records = trigger.receive(Duration::from_secs(1)).await.unwrap();
        if let Some(r) = records.into_iter().next() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the refused message did not come back within 60 s"
        );
    };
    assert_eq!(again.message_id.as_deref(), Some(message_id.as_str()));
    let received: u32 = again.attributes["ApproximateReceiveCount"].parse().unwrap();
    assert!(received >= 2, "{:?}", again.attributes);

    // Delivered by the right relay, signed now, the same message is handled: the payment
    // fails its first attempt (flaky), which the engine records as the step's retry.
    let mut event = SqsEvent::default();
    event.records = vec![again];
    let delivery = relay.deliver(&event, Duration::from_secs(30)).await;
    assert_eq!(delivery.status, Some(200));
    assert!(delivery.failed_ids().is_empty(), "{delivery:?}");
    let (run, journal) = state().await;
    let charge_step = journal.iter().find(|s| s.step_id == "charge-card").unwrap();
    assert_eq!(charge_step.attempts, 1, "{charge_step:?}");
    assert_eq!(run.unwrap().status, RunStatus::Running);
    drop(charge);
}
