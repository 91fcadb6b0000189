//! The DynamoDB store against a real DynamoDB wire server (moto) with the real aws-sdk client:
//! the conformance suite, then what is particular to its layout (payload chunks and the item
//! size limit, TTL attributes, index listings).
//!
//! Needs a moto server: `scripts/moto` starts one (scripts/test runs it first). The endpoint
//! is `BATON_MOTO_ENDPOINT` (default http://127.0.0.1:5005). Every store gets its own fresh
//! table, so tests and checks never see each other's items.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::Credentials;
use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveStatus};
use baton::Store;
use baton::error::StoreError;
use baton::model::{
    ErrorInfo, EventRecord, MAX_ERROR_MESSAGE, MAX_ERROR_NAME, Progress, RunQuery, RunRecord,
    RunStatus, RunTransition, StepKind, StepOutcome, StepRecord, StepStatus,
};
use baton_aws::dynamodb::{CHUNK_BYTES, DynamoStore, TTL_ATTRIBUTE};
use baton_testkit::conformance;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};

fn endpoint() -> String {
    std::env::var("BATON_MOTO_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5005".to_owned())
}

/// A client for the moto server, checked: a missing server fails the test, loudly. Each test
/// makes its own (a client's connections belong to the runtime of the test that opened them).
async fn client() -> Client {
    let endpoint = endpoint();
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .region("us-east-1")
        // moto speaks plain HTTP: no TLS stack needed.
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .load()
        .await;
    let client = Client::new(&config);
    let probe = tokio::time::timeout(
        Duration::from_secs(20),
        client.list_tables().limit(1).send(),
    )
    .await;
    let hint = "Start one with `scripts/moto` (port: BATON_MOTO_PORT, default 5005; \
                endpoint: BATON_MOTO_ENDPOINT).";
    match probe {
        Ok(Ok(_)) => client,
        Ok(Err(e)) => panic!(
            "no DynamoDB (moto) server answers at {endpoint}: {}\n{hint}",
            aws_sdk_dynamodb::error::DisplayErrorContext(&e)
        ),
        Err(_) => {
            panic!("the DynamoDB (moto) server at {endpoint} did not answer within 20 s.\n{hint}")
        }
    }
}

fn table_name() -> String {
    format!(
        "baton-test-{}",
        ulid::Ulid::new().to_string().to_lowercase()
    )
}

/// A store on a fresh table of its own.
async fn store_on(
    client: Client,
    configure: impl FnOnce(DynamoStore) -> DynamoStore,
) -> DynamoStore {
    let store = configure(DynamoStore::new(client, table_name()));
    store.create_table().await.expect("create table");
    store
}

async fn fresh(configure: impl FnOnce(DynamoStore) -> DynamoStore) -> DynamoStore {
    store_on(client().await, configure).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_store_conforms() {
    let client = client().await;
    conformance::run_all(|| store_on(client.clone(), |s| s)).await;
}

/// The same contract with every payload (even `null`) in chunk items: the chunked path is
/// exercised by every check, the concurrent ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_store_conforms_with_every_payload_in_chunks() {
    let client = client().await;
    conformance::run_all(|| store_on(client.clone(), |s| s.with_inline_limit(0))).await;
}

// ---- fixtures ----

fn t0() -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap()
}

fn new_id() -> String {
    ulid::Ulid::new().to_string()
}

/// A JSON string of about `bytes` bytes that compresses badly and has multi-byte chars.
fn big_string(bytes: usize) -> Value {
    let mut s = String::with_capacity(bytes + 8);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while s.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{x:016x}"));
        s.push('é');
    }
    Value::String(s)
}

fn event(id: &str, data: Value) -> EventRecord {
    EventRecord {
        id: id.to_owned(),
        name: "app/video.uploaded".into(),
        data,
        ts: 1_700_000_000_123,
        user: json!({}),
        v: None,
        idempotency_id: None,
    }
}

fn run(run_id: &str, function_id: &str, event: EventRecord) -> RunRecord {
    RunRecord {
        run_id: run_id.to_owned(),
        function_id: function_id.to_owned(),
        event_id: event.id.clone(),
        event,
        status: RunStatus::Running,
        started_at: t0(),
        ended_at: None,
        output: None,
        error: None,
        progress: None,
        replay_of: None,
        replay_from: None,
    }
}

fn step(run_id: &str, step_id: &str, seq: u32) -> StepRecord {
    StepRecord {
        run_id: run_id.to_owned(),
        step_id: step_id.to_owned(),
        name: step_id.to_owned(),
        kind: StepKind::Run,
        status: StepStatus::Planned,
        attempts: 0,
        seq,
        planned_at: t0(),
        started_at: None,
        ended_at: None,
        wake_at: None,
        output: None,
        error: None,
        planned: Vec::new(),
    }
}

fn finish(to: RunStatus, ended_at: DateTime<Utc>, output: Option<Value>) -> RunTransition {
    RunTransition {
        from: vec![RunStatus::Queued, RunStatus::Running],
        to,
        ended_at: Some(ended_at),
        output,
        error: None,
    }
}

type Item = HashMap<String, AttributeValue>;

async fn raw_item(store: &DynamoStore, pk: &str, sk: &str) -> Option<Item> {
    store
        .client()
        .get_item()
        .table_name(store.table())
        .key("PK", AttributeValue::S(pk.to_owned()))
        .key("SK", AttributeValue::S(sk.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .expect("GetItem")
        .item
}

/// Every item of a partition, in sort key order.
async fn raw_partition(store: &DynamoStore, pk: &str) -> Vec<Item> {
    let out = store
        .client()
        .query()
        .table_name(store.table())
        .key_condition_expression("PK = :pk")
        .expression_attribute_values(":pk", AttributeValue::S(pk.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .expect("Query");
    assert!(out.last_evaluated_key().is_none(), "partition fits a page");
    out.items.unwrap_or_default()
}

fn sort_key(item: &Item) -> &str {
    item["SK"].as_s().expect("SK is a string")
}

/// DynamoDB's item size: attribute names and values (strings and numbers roughly by length).
fn item_size(item: &Item) -> usize {
    fn value_size(v: &AttributeValue) -> usize {
        match v {
            AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
            AttributeValue::M(m) => {
                3 + m
                    .iter()
                    .map(|(k, v)| k.len() + value_size(v) + 1)
                    .sum::<usize>()
            }
            AttributeValue::L(l) => 3 + l.iter().map(|v| value_size(v) + 1).sum::<usize>(),
            _ => 1,
        }
    }
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn ttl_of(item: &Item) -> Option<i64> {
    item.get(TTL_ATTRIBUTE).map(|v| {
        v.as_n()
            .expect("TTL is a number")
            .parse()
            .expect("TTL parses")
    })
}

// ---- the item size limit ----

/// A run with a 250 KiB event and a 250 KiB output, and a step with a 250 KiB output,
/// round-trip: the large payloads live in chunk items, each item well under 400 KB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_event_and_outputs_round_trip_in_chunks() {
    let store = fresh(|s| s).await;

    // The limit is real on this server: one item over 400 KB is refused.
    let too_big = store
        .client()
        .put_item()
        .table_name(store.table())
        .item("PK", AttributeValue::S("probe".into()))
        .item("SK", AttributeValue::S("probe".into()))
        .item("blob", AttributeValue::S("x".repeat(410 * 1024)))
        .send()
        .await;
    let err = too_big.expect_err("a 410 KiB item must be refused");
    assert!(
        format!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(&err)).contains("size"),
        "refused for its size: {err:?}"
    );

    let kib250 = 250 * 1024;
    let ev = event(&new_id(), json!({ "transcript": big_string(kib250) }));
    assert!(store.put_event(&ev).await.unwrap());
    assert_eq!(store.get_event(&ev.id).await.unwrap(), Some(ev.clone()));

    let r = run(&new_id(), "transcribe", ev.clone());
    assert!(store.create_run(&r).await.unwrap());
    let output = json!({ "chunks": [big_string(kib250)] });
    let error = ErrorInfo::new("Partial", big_string(40 * 1024).as_str().unwrap());
    let progress = Progress {
        percent: 99,
        message: big_string(40 * 1024).as_str().unwrap().to_owned(),
    };
    assert!(store.set_progress(&r.run_id, &progress).await.unwrap());
    let done = RunTransition {
        error: Some(error.clone()),
        ..finish(RunStatus::Completed, t0(), Some(output.clone()))
    };
    assert!(store.transition_run(&r.run_id, &done).await.unwrap());
    let expected = RunRecord {
        status: RunStatus::Completed,
        ended_at: Some(t0()),
        output: Some(output.clone()),
        error: Some(error),
        progress: Some(progress),
        ..r.clone()
    };
    assert_eq!(
        store.get_run(&r.run_id).await.unwrap(),
        Some(expected.clone())
    );
    // Listings read summaries: blob outputs, errors and progress reassembled, never the event.
    let listed = store
        .list_runs(&RunQuery {
            function_id: Some("transcribe".into()),
            with_output: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.runs, vec![expected.summary(true)]);
    assert_eq!(
        store.runs_for_event(&ev.id).await.unwrap(),
        vec![expected.summary(true)]
    );

    assert!(store.plan_step(&step(&r.run_id, "embed", 0)).await.unwrap());
    assert!(
        store
            .begin_attempt(&step(&r.run_id, "embed", 0), 1, t0())
            .await
            .unwrap()
    );
    let step_output = big_string(kib250);
    assert!(
        store
            .finish_step(
                &r.run_id,
                "embed",
                &StepOutcome::Completed(step_output.clone()),
                t0()
            )
            .await
            .unwrap()
    );
    let journal = store.journal(&r.run_id).await.unwrap();
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].output, Some(step_output));

    // The layout: the run item holds references, the chunks hold the text. (An error's
    // message is cut to 8 KiB by `ErrorInfo::new`, so it stays inline.)
    let pk = format!("RUN#{}", r.run_id);
    let run_item = raw_item(&store, &pk, "RUN").await.expect("run item");
    assert!(run_item["error"].as_s().is_ok(), "an error is inline");
    for field in ["event", "output", "progress"] {
        let reference = run_item[field].as_m().unwrap_or_else(|_| {
            panic!(
                "run {field} is a chunk reference, got {:?}",
                run_item[field]
            )
        });
        assert!(reference.contains_key("blob") && reference.contains_key("chunks"));
    }
    let partition = raw_partition(&store, &pk).await;
    let chunks: Vec<&Item> = partition
        .iter()
        .filter(|i| sort_key(i).starts_with("BLOB#"))
        .collect();
    assert_eq!(
        chunks.len(),
        4,
        "event, output, progress, step output: one chunk each"
    );
    for item in &partition {
        assert!(
            item_size(item) < 400 * 1024,
            "{} is {} bytes",
            sort_key(item),
            item_size(item)
        );
    }
    assert!(
        item_size(&run_item) < 4 * 1024 + MAX_ERROR_MESSAGE + MAX_ERROR_NAME,
        "the run item itself stays small: keys, references and an error of at most 8 KiB"
    );
}

/// Payloads bigger than one chunk span several, and the order of chunks is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_chunk_payloads_round_trip() {
    let store = fresh(|s| s).await;
    let r = run(&new_id(), "f", event(&new_id(), json!({})));
    assert!(store.create_run(&r).await.unwrap());
    let output = big_string(CHUNK_BYTES * 3 + 17);
    assert!(
        store
            .transition_run(
                &r.run_id,
                &finish(RunStatus::Completed, t0(), Some(output.clone()))
            )
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_run(&r.run_id).await.unwrap().unwrap().output,
        Some(output)
    );
    let chunks = raw_partition(&store, &format!("RUN#{}", r.run_id))
        .await
        .into_iter()
        .filter(|i| sort_key(i).starts_with("BLOB#"))
        .count();
    assert_eq!(chunks, 4);
}

/// Over the store's hard limit: `TooLarge`, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payloads_are_refused() {
    let store = fresh(|s| s.with_max_payload_bytes(1024 * 1024)).await;
    let r = run(&new_id(), "f", event(&new_id(), json!({})));
    assert!(store.create_run(&r).await.unwrap());
    assert!(store.plan_step(&step(&r.run_id, "s", 0)).await.unwrap());

    let huge = big_string(1024 * 1024 + 1);
    let err = store
        .finish_step(&r.run_id, "s", &StepOutcome::Completed(huge.clone()), t0())
        .await
        .expect_err("an output over the limit");
    match &err {
        StoreError::TooLarge { what, size, limit } => {
            assert!(what.contains("output"), "names the field: {what}");
            assert!(*size > *limit && *limit == 1024 * 1024);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(err.to_string().contains("over the limit"), "{err}");
    assert_eq!(
        store.journal(&r.run_id).await.unwrap()[0].status,
        StepStatus::Planned,
        "a refused finish leaves the step as it was"
    );

    let big_event = RunRecord {
        run_id: new_id(),
        ..run(&new_id(), "f", event(&new_id(), json!({ "x": huge })))
    };
    assert!(matches!(
        store.create_run(&big_event).await,
        Err(StoreError::TooLarge { .. })
    ));
    assert_eq!(store.get_run(&big_event.run_id).await.unwrap(), None);
    assert_eq!(
        raw_partition(&store, &format!("RUN#{}", big_event.run_id))
            .await
            .len(),
        0,
        "no chunk is written for a refused payload"
    );
}

/// Losers of a race leave no chunks behind; a chunk that goes missing is reported corrupt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_of_refused_writes_are_deleted() {
    let store = Arc::new(fresh(|s| s).await);
    let r = run(&new_id(), "f", event(&new_id(), json!({})));
    assert!(store.create_run(&r).await.unwrap());
    assert!(store.plan_step(&step(&r.run_id, "s", 0)).await.unwrap());
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (store, run_id) = (Arc::clone(&store), r.run_id.clone());
            tokio::spawn(async move {
                let output = json!({ "writer": i, "body": big_string(64 * 1024) });
                store
                    .finish_step(&run_id, "s", &StepOutcome::Completed(output), t0())
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        wins += usize::from(task.await.unwrap());
    }
    assert_eq!(wins, 1);
    let pk = format!("RUN#{}", r.run_id);
    let chunks: Vec<String> = raw_partition(&store, &pk)
        .await
        .iter()
        .map(sort_key)
        .filter(|sk| sk.starts_with("BLOB#"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        chunks.len(),
        1,
        "only the winner's chunk remains: {chunks:?}"
    );

    store
        .client()
        .delete_item()
        .table_name(store.table())
        .key("PK", AttributeValue::S(pk))
        .key("SK", AttributeValue::S(chunks[0].clone()))
        .send()
        .await
        .unwrap();
    let err = store
        .journal(&r.run_id)
        .await
        .expect_err("a chunk is missing");
    assert!(matches!(err, StoreError::Corrupt(_)), "got {err:?}");
}

// ---- retention ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_is_set_on_ended_runs_live_runs_items_events_and_claims() {
    let retention = Duration::from_secs(7 * 24 * 3600);
    let store = fresh(|s| s.with_retention(retention).with_inline_limit(1024)).await;
    let ttl = store
        .client()
        .describe_time_to_live()
        .table_name(store.table())
        .send()
        .await
        .unwrap();
    let ttl = ttl.time_to_live_description().expect("TTL description");
    assert_eq!(ttl.attribute_name(), Some(TTL_ATTRIBUTE));
    assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));

    let before = Utc::now().timestamp();
    let ev = event(&new_id(), json!({ "big": big_string(4096) }));
    assert!(store.put_event(&ev).await.unwrap());
    let event_items = raw_partition(&store, &format!("EV#{}", ev.id)).await;
    assert_eq!(event_items.len(), 2, "the event and its data chunk");
    for item in &event_items {
        let expires = ttl_of(item).expect("event items expire");
        assert!(
            (before + retention.as_secs() as i64
                ..=Utc::now().timestamp() + retention.as_secs() as i64 + 1)
                .contains(&expires),
            "event TTL is now + retention: {expires}"
        );
    }

    let claim_until = t0() + chrono::Duration::milliseconds(1500);
    assert_eq!(
        store
            .claim_idempotency_id("order-1", &ev.id, t0(), claim_until)
            .await
            .unwrap(),
        None
    );
    let claim = raw_item(&store, "IDEM#order-1", "IDEM").await.unwrap();
    assert_eq!(
        ttl_of(&claim),
        Some(1_700_000_002),
        "claims expire at expires_at, rounded up"
    );

    let r = run(&new_id(), "f", ev.clone());
    assert!(store.create_run(&r).await.unwrap());
    assert!(store.plan_step(&step(&r.run_id, "a", 0)).await.unwrap());
    let big = StepOutcome::Completed(big_string(4096));
    assert!(store.finish_step(&r.run_id, "a", &big, t0()).await.unwrap());
    assert!(store.plan_step(&step(&r.run_id, "b", 1)).await.unwrap());
    let pk = format!("RUN#{}", r.run_id);
    // A live run's item never expires; its steps and chunks expire the engine's maximum run
    // age plus retention after they were written (the run has ended by then).
    let max_age = baton::Limits::default().max_run_age.as_secs() as i64;
    let live_ttl = |item: &Item| {
        let expires = ttl_of(item).expect("a live run's steps and chunks carry a TTL");
        assert!(
            (before + max_age + retention.as_secs() as i64
                ..=Utc::now().timestamp() + max_age + retention.as_secs() as i64 + 1)
                .contains(&expires),
            "{}: TTL {expires} is not written-at + max run age + retention",
            sort_key(item)
        );
    };
    for item in raw_partition(&store, &pk).await {
        if sort_key(&item) == "RUN" {
            assert_eq!(ttl_of(&item), None, "a live run does not expire");
        } else {
            live_ttl(&item);
        }
    }

    let ended = t0() + chrono::Duration::seconds(30);
    assert!(
        store
            .transition_run(&r.run_id, &finish(RunStatus::Failed, ended, None))
            .await
            .unwrap()
    );
    let expected = ended.timestamp() + retention.as_secs() as i64 + 1;
    let partition = raw_partition(&store, &pk).await;
    assert_eq!(
        partition.len(),
        5,
        "run, its event copy's chunk, two steps, a step output's chunk"
    );
    for item in &partition {
        if sort_key(item) == "RUN" {
            assert_eq!(
                ttl_of(item),
                Some(expected),
                "the run expires at ended_at + retention"
            );
        } else {
            // Not written again when the run ends (no write unit per step).
            live_ttl(item);
        }
    }

    // A run created already ended gets its TTL at once.
    let ended_run = RunRecord {
        status: RunStatus::Cancelled,
        ended_at: Some(ended),
        ..run(&new_id(), "f", ev)
    };
    assert!(store.create_run(&ended_run).await.unwrap());
    let item = raw_item(&store, &format!("RUN#{}", ended_run.run_id), "RUN")
        .await
        .unwrap();
    assert_eq!(ttl_of(&item), Some(expected));
}

// ---- listing through the indexes ----

/// Paging a function's runs with a status filter: most index entries are filtered out, so
/// DynamoDB pages come back short or empty and the store keeps reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_listings_page_through_sparse_matches() {
    let store = fresh(|s| s).await;
    let mut completed = Vec::new();
    let mut all = Vec::new();
    for i in 0..30u64 {
        let run_id = ulid::Ulid::from_parts(1_700_000_000_000 + i, rand::random()).to_string();
        let status = [RunStatus::Queued, RunStatus::Running, RunStatus::Failed][i as usize % 3];
        let status = if i % 7 == 0 {
            RunStatus::Completed
        } else {
            status
        };
        let r = RunRecord {
            status,
            started_at: t0() + chrono::Duration::seconds(i as i64),
            ..run(
                &run_id,
                if i % 2 == 0 { "even" } else { "odd" },
                event(&new_id(), json!({})),
            )
        };
        assert!(store.create_run(&r).await.unwrap());
        if r.function_id == "even" && r.status == RunStatus::Completed {
            completed.push(run_id.clone());
        }
        all.push(run_id);
    }
    completed.reverse();
    all.reverse();

    async fn page_through(store: &DynamoStore, query: RunQuery) -> Vec<String> {
        let mut seen = Vec::new();
        let mut query = query;
        loop {
            let page = store.list_runs(&query).await.unwrap();
            assert!(page.runs.len() <= query.limit);
            seen.extend(page.runs.iter().map(|r| r.run_id.clone()));
            match page.cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => return seen,
            }
        }
    }

    let seen = page_through(
        &store,
        RunQuery {
            function_id: Some("even".into()),
            status: Some(RunStatus::Completed),
            limit: 1,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(seen, completed, "function + status, one per page");

    // No filter: the five status partitions merged newest first.
    for limit in [1, 4, 29, 30] {
        let seen = page_through(
            &store,
            RunQuery {
                limit,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(seen, all, "limit {limit}");
    }
}

/// A run item no version can read is reported by listings and skipped; the other runs list.
/// Listings never read the event copy (a run whose event blob is gone still lists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_run_items_are_reported_and_skipped() {
    let store = fresh(|s| s.with_inline_limit(1024)).await;
    let function = format!("f-{}", new_id());
    let big = event(&new_id(), json!({"blob": "x".repeat(8 * 1024)}));
    let runs: Vec<RunRecord> = (0..3)
        .map(|_| run(&new_id(), &function, big.clone()))
        .collect();
    for r in &runs {
        assert!(store.create_run(r).await.unwrap());
    }
    let set = |run_id: &str, attr: &str, value: AttributeValue| {
        store
            .client()
            .update_item()
            .table_name(store.table())
            .key("PK", AttributeValue::S(format!("RUN#{run_id}")))
            .key("SK", AttributeValue::S("RUN".into()))
            .update_expression("SET #a = :v")
            .expression_attribute_names("#a", attr)
            .expression_attribute_values(":v", value)
            .send()
    };
    // One run's error is not JSON; another's event points at chunks that do not exist.
    set(
        &runs[0].run_id,
        "error",
        AttributeValue::S("[[[not json".into()),
    )
    .await
    .unwrap();
    let missing_blob = AttributeValue::M(
        [
            ("blob".to_string(), AttributeValue::S(new_id())),
            ("chunks".to_string(), AttributeValue::N("1".into())),
            ("bytes".to_string(), AttributeValue::N("10".into())),
        ]
        .into(),
    );
    set(&runs[1].run_id, "event", missing_blob).await.unwrap();

    let page = store
        .list_runs(&RunQuery {
            function_id: Some(function.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.unreadable, vec![runs[0].run_id.clone()]);
    let listed: Vec<&str> = page.runs.iter().map(|r| r.run_id.as_str()).collect();
    let mut expected = vec![runs[1].run_id.as_str(), runs[2].run_id.as_str()];
    expected.sort_by(|a, b| b.cmp(a));
    assert_eq!(listed, expected, "the run whose event is gone still lists");
    assert!(
        store
            .get_run(&runs[1].run_id)
            .await
            .unwrap_err()
            .is_corrupt()
    );
}

/// The function and status index keys are spread over `INDEX_SHARDS` partitions by run id,
/// the shard moves with none of a run's transitions, and listings still see every run once,
/// newest first.
#[tokio::test]
async fn index_keys_are_write_sharded_and_listings_merge_the_shards() {
    use baton::model::RunQuery;
    use baton_aws::dynamodb::{INDEX_SHARDS, index_shard};

    let store = fresh(|s| s).await;
    let ev = event(&new_id(), json!({}));
    assert!(store.put_event(&ev).await.unwrap());
    let mut ids: Vec<String> = (0..40).map(|_| new_id()).collect();
    let mut shards = std::collections::BTreeSet::new();
    for (n, id) in ids.iter().enumerate() {
        assert!(store.create_run(&run(id, "f", ev.clone())).await.unwrap());
        if n % 2 == 0 {
            let done = finish(RunStatus::Completed, t0(), Some(json!(n)));
            assert!(store.transition_run(id, &done).await.unwrap());
        }
        let item = raw_item(&store, &format!("RUN#{id}"), "RUN").await.unwrap();
        let key = |name: &str| match item.get(name) {
            Some(AttributeValue::S(s)) => s.clone(),
            other => panic!("{name}: {other:?}"),
        };
        let shard = index_shard(id);
        assert!(shard < INDEX_SHARDS);
        shards.insert(shard);
        assert_eq!(key("GSI1PK"), format!("FN#f#{shard}"));
        let status = if n % 2 == 0 { "Completed" } else { "Running" };
        assert_eq!(key("GSI2PK"), format!("ST#{status}#{shard}"));
    }
    assert!(
        shards.len() >= 4,
        "40 runs spread over several shards: {shards:?}"
    );

    // Every listing reads all shards: each run exactly once, newest first.
    let mut running: Vec<String> = ids.iter().skip(1).step_by(2).cloned().collect();
    running.sort_unstable_by(|a, b| b.cmp(a));
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let listed = |query: RunQuery| {
        let store = &store;
        async move {
            let mut all = Vec::new();
            let mut query = RunQuery { limit: 7, ..query };
            loop {
                let page = store.list_runs(&query).await.unwrap();
                all.extend(page.runs.iter().map(|r| r.run_id.clone()));
                match page.cursor {
                    Some(cursor) => query.cursor = Some(cursor),
                    None => return all,
                }
            }
        }
    };
    assert_eq!(listed(RunQuery::default()).await, ids);
    let by_function = RunQuery {
        function_id: Some("f".into()),
        ..RunQuery::default()
    };
    assert_eq!(listed(by_function).await, ids);
    let only_running = RunQuery {
        status: Some(RunStatus::Running),
        ..RunQuery::default()
    };
    assert_eq!(listed(only_running).await, running);
}
