//! A deployment on the moto server, driven the way Lambda drives it: a fresh DynamoDB table
//! and the registry's queues (with dead-letter queues), the handlers' own code paths (the HTTP
//! router fed API Gateway v2 events, `handle_queue_batch` fed `SqsEvent` batches), and one
//! consumer per queue doing what Lambda's SQS event source mapping does ([`SqsTrigger`]).
//! Every request goes through a [`CostMeter`].
//!
//! Used by end-to-end tests on moto and the `aws_cost` bench. Needs a moto server:
//! `scripts/moto` starts one (scripts/test does); the endpoint is `BATON_MOTO_ENDPOINT`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::SqsMessage;
use baton::Store as _;
use baton::model::{QueueName, RunSummary};
use baton::{Engine, EngineConfig, Registry};
use baton_aws::dynamodb::DynamoStore;
use baton_aws::sqs::{QueueNaming, SqsQueue};
use baton_http::Keys;

use crate::cost::{CostMeter, IndexDef};
use crate::sqs_trigger::SqsTrigger;
use lambda_http::IntoResponse as _;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tower::ServiceExt as _;

pub const REGION: &str = "us-east-1";
/// moto's default account.
pub const ACCOUNT: &str = "123456789012";
pub const EVENT_KEY: &str = "e2e-event-key-0123456789";
pub const SIGNING_KEY: &str = "e2e-signing-key-0123456789";

pub fn endpoint() -> String {
    std::env::var("BATON_MOTO_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:5005".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// The indexes of the store's table, for the meter (see `baton_aws::dynamodb`).
pub fn table_indexes() -> Vec<IndexDef> {
    let index = |name: &str, projected: &[&str]| IndexDef {
        name: name.into(),
        keys: vec![format!("{name}PK"), format!("{name}SK")],
        projected: projected.iter().map(|s| s.to_string()).collect(),
    };
    vec![
        index("GSI1", &["status", "started_at"]),
        index("GSI2", &["started_at"]),
        index("GSI3", &[]),
    ]
}

async fn sdk_config(
    endpoint: &str,
    meter: &CostMeter,
) -> (
    aws_sdk_dynamodb::Client,
    aws_sdk_sqs::Client,
    aws_sdk_dynamodb::Client,
) {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .region(REGION)
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .load()
        .await;
    let dynamodb = aws_sdk_dynamodb::config::Builder::from(&config)
        .interceptor(meter.dynamodb())
        .build();
    let sqs = aws_sdk_sqs::config::Builder::from(&config)
        .interceptor(meter.sqs())
        .build();
    (
        aws_sdk_dynamodb::Client::from_conf(dynamodb),
        aws_sdk_sqs::Client::from_conf(sqs),
        aws_sdk_dynamodb::Client::new(&config),
    )
}

/// A store on a fresh table of its own on the moto server at [`endpoint`] (unmetered).
pub async fn fresh_store() -> DynamoStore {
    let endpoint = endpoint();
    let (_, _, client) = sdk_config(&endpoint, &CostMeter::new(table_indexes())).await;
    let id = ulid::Ulid::new().to_string().to_lowercase();
    let store = DynamoStore::new(client, format!("baton-test-{id}"));
    store.create_table().await.unwrap_or_else(|e| {
        panic!(
            "create table: {e}; is a moto server running at {endpoint}? `scripts/moto` starts one"
        )
    });
    store
}

/// The deployment: engine over DynamoDB + SQS on moto.
pub struct Deployment {
    pub engine: Engine,
    pub store: DynamoStore,
    pub queue: SqsQueue,
    pub meter: CostMeter,
    pub queues: Vec<QueueName>,
    /// The same table through an unmetered client: what a test reads to check on runs
    /// without adding to the cost being measured.
    pub observer: DynamoStore,
    router: axum::Router,
}

impl Deployment {
    /// A fresh table and fresh queues (a unique prefix) for `registry`, on the moto server at
    /// [`endpoint`].
    pub async fn start(registry: Registry, config: EngineConfig) -> Self {
        Self::start_at(&endpoint(), registry, config).await
    }

    /// The same on the moto server at `endpoint` (the SAM tests' one listens where Lambda
    /// containers reach it).
    pub async fn start_at(endpoint: &str, registry: Registry, config: EngineConfig) -> Self {
        let meter = CostMeter::new(table_indexes());
        let (dynamodb, sqs, unmetered) = sdk_config(endpoint, &meter).await;
        let id = ulid::Ulid::new().to_string().to_lowercase();
        let table = format!("baton-e2e-{id}");
        let store = DynamoStore::new(dynamodb, table.clone());
        let observer = DynamoStore::new(unmetered, table);
        let hint = format!(
            "is a moto server running at {endpoint}? `scripts/moto` starts one (scripts/test does)"
        );
        store
            .create_table()
            .await
            .unwrap_or_else(|e| panic!("create table: {e}; {hint}"));
        let prefix = format!("e2e{}-", &id[id.len() - 10..]);
        let naming = QueueNaming::new(prefix, format!("{endpoint}/{ACCOUNT}/"));
        let queue = SqsQueue::new(sqs, naming);
        let queues = registry.queues();
        queue
            .create_queues(&queues, true)
            .await
            .unwrap_or_else(|e| panic!("create queues: {e}; {hint}"));
        let engine = Engine::new(
            registry,
            Arc::new(store.clone()),
            Arc::new(queue.clone()),
            config,
        );
        let router = baton_http::router(
            engine.clone(),
            Keys::parse(Some(EVENT_KEY), Some(SIGNING_KEY)),
        );
        Deployment {
            engine,
            store,
            queue,
            meter,
            queues,
            observer,
            router,
        }
    }

    /// One HTTP route invocation: an API Gateway HTTP API (v2) event as `sam local
    /// generate-event` writes it, with this method, path, query and body, through lambda_http's
    /// conversion into the router. `/v1` calls carry the signing key.
    pub async fn http(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut event: Value = serde_json::from_str(crate::fixtures::API_GATEWAY_HTTP).unwrap();
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        event["rawPath"] = path.into();
        event["rawQueryString"] = query.into();
        let params: serde_json::Map<String, Value> = url_pairs(query)
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        event["queryStringParameters"] = params.into();
        event["requestContext"]["http"]["method"] = method.into();
        event["requestContext"]["http"]["path"] = path.into();
        event["headers"]["authorization"] = format!("Bearer {SIGNING_KEY}").into();
        event["headers"]["content-type"] = "application/json".into();
        event["body"] = body.map_or(Value::Null, |b| b.to_string().into());
        event["isBase64Encoded"] = false.into();
        let request = lambda_http::request::from_str(&event.to_string()).unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let response = response.into_response().await;
        let status = response.status().as_u16();
        let body = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
        (status, body)
    }

    /// Sends events through `POST /e/{key}`; returns their ids.
    pub async fn send(&self, events: &Value) -> Vec<String> {
        let (status, body) = self
            .http("POST", &format!("/e/{EVENT_KEY}"), Some(events))
            .await;
        assert_eq!(status, 200, "POST /e: {body}");
        body["ids"]
            .as_array()
            .unwrap_or_else(|| panic!("no ids in {body}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits (polling `GET /v1/events/{id}/runs`) until the event started `runs` runs and
    /// all of them ended; returns them.
    pub async fn wait_for_event_runs(
        &self,
        event_id: &str,
        runs: usize,
        timeout: Duration,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self
                .http("GET", &format!("/v1/events/{event_id}/runs"), None)
                .await;
            assert_eq!(status, 200, "{body}");
            let list = body["data"].as_array().cloned().unwrap_or_default();
            let ended = |r: &Value| {
                ["Completed", "Failed", "Cancelled"].contains(&r["status"].as_str().unwrap_or(""))
            };
            if list.len() >= runs && list.iter().all(ended) {
                return list;
            }
            assert!(
                Instant::now() < deadline,
                "event {event_id}: runs still not ended after {timeout:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits (reading the table without the meter) until every one of these events started
    /// a run and all those runs ended; returns them.
    pub async fn wait_quietly(&self, event_ids: &[String], timeout: Duration) -> Vec<RunSummary> {
        let deadline = Instant::now() + timeout;
        'poll: loop {
            assert!(
                Instant::now() < deadline,
                "runs still not ended after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
            let mut out = Vec::new();
            for id in event_ids {
                let runs = self
                    .observer
                    .runs_for_event(id)
                    .await
                    .expect("runs_for_event");
                if runs.is_empty() || runs.iter().any(|r| !r.status.is_terminal()) {
                    continue 'poll;
                }
                out.extend(runs);
            }
            return out;
        }
    }

    /// One consumer per queue, as Lambda's event source mapping runs them. Each is its own
    /// engine instance ([`Engine::instance`]): a queue's Lambda function keeps its own journal
    /// cache, and a step handled by another function's Lambda reads what it has not seen.
    pub async fn consume(&self, options: ConsumeOptions) -> Consumers {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let mut tasks = Vec::new();
        for (i, q) in self.queues.iter().enumerate() {
            let mut trigger =
                SqsTrigger::new(self.queue.client().clone(), self.queue.queue_url(q), REGION)
                    .await
                    .expect("queue attributes");
            trigger.visibility_timeout = options.visibility_timeout;
            let engine = self.engine.instance();
            let stop = stop.clone();
            let stats = stats.clone();
            let client = self.queue.client().clone();
            let seed = options.seed.wrapping_add(i as u64);
            let options = options.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                while !stop.load(Ordering::SeqCst) {
                    let records = match trigger.receive(Duration::from_secs(1)).await {
                        Ok(records) => records,
                        Err(e) => panic!("receive: {e}"),
                    };
                    if records.is_empty() {
                        continue;
                    }
                    let mut event = aws_lambda_events::event::sqs::SqsEvent::default();
                    event.records = records.clone();
                    let started = Instant::now();
                    // As on Lambda: the invocation's deadline is the step's timeout + 30 s.
                    let deadline = tokio::time::Instant::now() + options.lambda_timeout;
                    let response =
                        baton_aws::lambda::handle_queue_batch(&engine, event, Some(deadline)).await;
                    stats.record_invocation(records.len(), started.elapsed());
                    let failed: Vec<&str> = response
                        .batch_item_failures
                        .iter()
                        .map(|f| f.item_identifier.as_str())
                        .collect();
                    stats
                        .failed
                        .fetch_add(failed.len() as u64, Ordering::SeqCst);
                    let mut done: Vec<SqsMessage> = Vec::new();
                    for r in records {
                        if failed.contains(&r.message_id.as_deref().unwrap_or("")) {
                            continue;
                        }
                        // A duplicate delivery: the handler's answer is lost, the message
                        // stays and comes back after the visibility timeout.
                        if rng.random_bool(options.redeliver) {
                            stats.redelivered.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        // A duplicate send: the same body enqueued again.
                        if rng.random_bool(options.duplicate) {
                            stats.duplicated.fetch_add(1, Ordering::SeqCst);
                            client
                                .send_message()
                                .queue_url(trigger.queue_url())
                                .message_body(r.body.clone().unwrap_or_default())
                                .send()
                                .await
                                .expect("duplicate send");
                        }
                        done.push(r);
                    }
                    trigger.delete(&done).await.expect("delete");
                }
            }));
        }
        Consumers { stop, stats, tasks }
    }
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// How the consumers deliver: probabilities of injected duplicates, per handled message.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// Leave a handled message on the queue (it is delivered again).
    pub redeliver: f64,
    /// Send a handled message's body again.
    pub duplicate: f64,
    pub visibility_timeout: i32,
    pub seed: u64,
    /// Each invocation's deadline from its start, as the template's Lambda timeout.
    pub lambda_timeout: Duration,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        ConsumeOptions {
            redeliver: 0.0,
            duplicate: 0.0,
            visibility_timeout: 30,
            seed: 1,
            lambda_timeout: Duration::from_secs(300 + 30),
        }
    }
}

/// What the consumers did.
#[derive(Debug, Default)]
pub struct Stats {
    pub invocations: AtomicU64,
    pub messages: AtomicU64,
    pub failed: AtomicU64,
    pub redelivered: AtomicU64,
    pub duplicated: AtomicU64,
    /// Handler wall time per invocation, in microseconds.
    pub durations_us: Mutex<Vec<u64>>,
}

impl Stats {
    fn record_invocation(&self, messages: usize, took: Duration) {
        self.invocations.fetch_add(1, Ordering::SeqCst);
        self.messages.fetch_add(messages as u64, Ordering::SeqCst);
        self.durations_us
            .lock()
            .unwrap()
            .push(took.as_micros() as u64);
    }

    pub fn get(&self, counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
}

pub struct Consumers {
    stop: Arc<AtomicBool>,
    pub stats: Arc<Stats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Consumers {
    /// Stops polling (after the current long polls end) and surfaces a consumer's panic.
    pub async fn stop(self) -> Arc<Stats> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            if let Err(e) = task.await {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        self.stats
    }
}
