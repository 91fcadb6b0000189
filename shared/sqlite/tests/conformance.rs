//! The SQLite store against the one conformance suite (in memory and on disk, both
//! durabilities), and what only a file store must do: survive reopening.

use std::sync::atomic::{AtomicUsize, Ordering};

use baton::Store;
use baton::model::{EventRecord, RunRecord, RunStatus, StepKind, StepRecord, StepStatus};
use baton_sqlite::{Durability, SqliteStore};
use baton_testkit::conformance;
use chrono::{TimeZone, Utc};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_in_memory_conforms() {
    conformance::run_all(|| async { SqliteStore::in_memory().expect("open in-memory sqlite") })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_file_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = AtomicUsize::new(0);
    for durability in [Durability::Full, Durability::Normal] {
        conformance::run_all(|| {
            // A fresh database per check, in a subdirectory that does not exist yet.
            let path = dir
                .path()
                .join(format!("db-{}", n.fetch_add(1, Ordering::Relaxed)))
                .join("baton.db");
            async move { SqliteStore::open(path, durability).expect("open sqlite file") }
        })
        .await;
    }
}

#[tokio::test]
async fn sqlite_data_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("baton.db");
    let started = Utc
        .timestamp_opt(1_700_000_000, 987_654_321)
        .single()
        .unwrap();
    let event = EventRecord {
        id: ulid::Ulid::new().to_string(),
        name: "app/order.placed".into(),
        data: json!({"order": 7}),
        ts: 1_700_000_000_987,
        user: json!({}),
        v: None,
        idempotency_id: Some("order-7".into()),
    };
    let run = RunRecord {
        run_id: ulid::Ulid::new().to_string(),
        function_id: "fulfil".into(),
        event_id: event.id.clone(),
        event: event.clone(),
        status: RunStatus::Running,
        started_at: started,
        ended_at: None,
        output: None,
        error: None,
        progress: None,
        replay_of: None,
        replay_from: None,
    };
    let step = StepRecord {
        run_id: run.run_id.clone(),
        step_id: "reserve".into(),
        name: "reserve".into(),
        kind: StepKind::Run,
        status: StepStatus::Completed,
        attempts: 1,
        seq: 0,
        planned_at: started,
        started_at: Some(started),
        ended_at: Some(started),
        wake_at: None,
        output: Some(json!({"reserved": true})),
        error: None,
        planned: Vec::new(),
    };

    {
        let store = SqliteStore::open(&path, Durability::Full).expect("open");
        assert!(store.put_event(&event).await.unwrap());
        let expires = started + chrono::Duration::hours(24);
        assert_eq!(
            store
                .claim_idempotency_id("order-7", &event.id, started, expires)
                .await
                .unwrap(),
            None
        );
        assert!(store.create_run(&run).await.unwrap());
        assert!(store.plan_step(&step).await.unwrap());
    }

    // Reopening runs the (idempotent) schema setup again over the existing tables.
    for _ in 0..2 {
        let store = SqliteStore::open(&path, Durability::Normal).expect("reopen");
        assert_eq!(
            store.get_event(&event.id).await.unwrap(),
            Some(event.clone())
        );
        assert_eq!(store.get_run(&run.run_id).await.unwrap(), Some(run.clone()));
        assert_eq!(
            store.journal(&run.run_id).await.unwrap(),
            vec![step.clone()]
        );
        assert_eq!(
            store
                .claim_idempotency_id("order-7", "another", started, started)
                .await
                .unwrap(),
            Some(event.id.clone()),
            "the idempotency claim survives a reopen"
        );
        assert!(
            !store.create_run(&run).await.unwrap(),
            "the run still exists after a reopen"
        );
    }
}

#[tokio::test]
async fn sqlite_reports_corrupt_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("baton.db");
    let store = SqliteStore::open(&path, Durability::Normal).expect("open");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO events (event_id, name, data, ts, user) VALUES ('e1', 'x', '{not json', 0, 'null')",
        [],
    )
    .unwrap();
    let err = store.get_event("e1").await.unwrap_err();
    assert!(
        matches!(err, baton::error::StoreError::Corrupt(_)),
        "got {err:?}"
    );
}
