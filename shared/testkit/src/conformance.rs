//! The conformance suite: the [`Store`] contract as executable checks. Every backend must
//! pass [`run_all`]; each check is also public, so a backend's own tests can run one alone.
//!
//! Each check expects a fresh, empty store (the listing checks count every run). Checks panic
//! with a message naming the operation and what differed.
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread")]
//! async fn conformance() {
//!     baton::store::conformance::run_all(|| async { MyStore::new() }).await;
//! }
//! ```

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use ulid::Ulid;

use baton::model::{
    Entry, ErrorInfo, EventRecord, Expect, Progress, RunQuery, RunRecord, RunStatus, RunSummary,
    RunTransition, StepKind, StepOutcome, StepRecord, StepStatus,
};
use baton::store::Store;

/// Runs every check, each on a store fresh from `make`.
pub async fn run_all<S, F, Fut>(mut make: F)
where
    S: Store,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    macro_rules! checks {
        ($($check:ident),* $(,)?) => {$(
            let store = make().await;
            eprintln!("store conformance [{}]: {}", store.backend(), stringify!($check));
            $check(&store).await;
        )*};
    }
    checks!(
        events_put_if_absent,
        idempotency_claims,
        runs_create_if_absent,
        event_with_runs,
        run_transitions,
        run_progress,
        list_runs_order_and_filters,
        list_runs_paging,
        list_runs_default_limit,
        list_runs_reads_summaries,
        runs_for_event,
        journal_order,
        plan_step_if_absent,
        start_run_with_step,
        begin_attempt,
        retry_step,
        finish_step,
        record_step,
        record_step_and_end,
        run_with_journal,
        runs_do_not_interfere,
        entries_conditions,
        entries_listing_and_expiry,
        ids_of_any_length,
    );
    // The concurrent checks spawn tasks, so they need a shared store.
    macro_rules! concurrent_checks {
        ($($check:ident),* $(,)?) => {$(
            let store: Arc<dyn Store> = Arc::new(make().await);
            eprintln!("store conformance [{}]: {}", store.backend(), stringify!($check));
            $check(store).await;
        )*};
    }
    concurrent_checks!(
        concurrent_finish_step,
        concurrent_claims,
        concurrent_create_run,
        concurrent_entry_versions
    );
}

// ---- fixtures ----

/// A fixed instant with nanoseconds, so lossy timestamp encodings fail the round trips.
fn t0() -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 123_456_789)
        .single()
        .expect("valid timestamp")
}

fn at(secs: i64) -> DateTime<Utc> {
    t0() + Duration::seconds(secs)
}

fn new_id() -> String {
    Ulid::new().to_string()
}

/// Run ids that sort in creation order: increasing milliseconds, random tails.
fn ordered_ids(n: usize) -> Vec<String> {
    let base = 1_700_000_000_000u64;
    (0..n)
        .map(|i| Ulid::from_parts(base + i as u64, rand::random()).to_string())
        .collect()
}

fn event(id: &str) -> EventRecord {
    EventRecord {
        id: id.to_owned(),
        name: "app/user.created".to_owned(),
        data: json!({"user": {"id": 42, "tags": ["a", "b"]}, "ratio": 0.1, "big": u64::MAX, "none": null}),
        ts: 1_700_000_000_123,
        user: json!({"ip": "10.0.0.1"}),
        v: Some("2024-01-01.1".to_owned()),
        idempotency_id: Some(format!("idem-{id}")),
    }
}

/// A run as first created: queued, nothing optional set.
fn run(run_id: &str, function_id: &str, event_id: &str, started_at: DateTime<Utc>) -> RunRecord {
    RunRecord {
        run_id: run_id.to_owned(),
        function_id: function_id.to_owned(),
        event_id: event_id.to_owned(),
        event: event(event_id),
        status: RunStatus::Queued,
        started_at,
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
        name: step_id.split(':').next().unwrap_or(step_id).to_owned(),
        kind: StepKind::Run,
        status: StepStatus::Planned,
        attempts: 0,
        seq,
        planned_at: at(seq.into()),
        started_at: None,
        ended_at: None,
        wake_at: None,
        output: None,
        error: None,
        planned: Vec::new(),
    }
}

fn finish_to(
    to: RunStatus,
    output: Option<serde_json::Value>,
    error: Option<ErrorInfo>,
) -> RunTransition {
    RunTransition {
        from: vec![RunStatus::Queued, RunStatus::Running],
        to,
        ended_at: Some(at(60)),
        output,
        error,
    }
}

async fn get_run(store: &dyn Store, run_id: &str) -> RunRecord {
    store
        .get_run(run_id)
        .await
        .expect("get_run")
        .unwrap_or_else(|| panic!("run {run_id} not found"))
}

async fn get_step(store: &dyn Store, run_id: &str, step_id: &str) -> StepRecord {
    store
        .journal(run_id)
        .await
        .expect("journal")
        .into_iter()
        .find(|s| s.step_id == step_id)
        .unwrap_or_else(|| panic!("step {run_id}/{step_id} not in the journal"))
}

async fn plan(store: &dyn Store, step: &StepRecord) {
    assert!(
        store.plan_step(step).await.expect("plan_step"),
        "plan_step of a new step must write it"
    );
}

async fn create(store: &dyn Store, run: &RunRecord) {
    assert!(
        store.create_run(run).await.expect("create_run"),
        "create_run of a new run must write it"
    );
}

/// The journal's step ids, in its order.
fn step_ids(journal: &[StepRecord]) -> Vec<&str> {
    journal.iter().map(|s| s.step_id.as_str()).collect()
}

fn ids(runs: &[RunSummary]) -> Vec<String> {
    runs.iter().map(|r| r.run_id.clone()).collect()
}

// ---- events ----

/// `put_event` writes only when absent; `get_event` returns exactly what was written.
pub async fn events_put_if_absent(store: &dyn Store) {
    let full = event(&new_id());
    assert!(
        store.put_event(&full).await.expect("put_event"),
        "first put_event must write"
    );
    assert_eq!(
        store.get_event(&full.id).await.expect("get_event"),
        Some(full.clone()),
        "event round trip"
    );

    let changed = EventRecord {
        name: "other".into(),
        data: json!(1),
        ..full.clone()
    };
    assert!(
        !store.put_event(&changed).await.expect("put_event"),
        "second put_event must not write"
    );
    assert_eq!(
        store.get_event(&full.id).await.expect("get_event"),
        Some(full),
        "a second put_event must not change the event"
    );

    let minimal = EventRecord {
        id: new_id(),
        name: "tick".into(),
        data: serde_json::Value::Null,
        ts: 0,
        user: serde_json::Value::Null,
        v: None,
        idempotency_id: None,
    };
    assert!(store.put_event(&minimal).await.expect("put_event"));
    assert_eq!(
        store.get_event(&minimal.id).await.expect("get_event"),
        Some(minimal),
        "minimal event round trip"
    );

    assert_eq!(
        store.get_event(&new_id()).await.expect("get_event"),
        None,
        "unknown event"
    );
}

/// A claim holds until it expires; then a new event may take it.
pub async fn idempotency_claims(store: &dyn Store) {
    let key = format!("key-{}", new_id());
    let (first, second, third) = (new_id(), new_id(), new_id());
    let claim = |event_id: String, now: DateTime<Utc>, expires: DateTime<Utc>| {
        let key = key.clone();
        async move {
            store
                .claim_idempotency_id(&key, &event_id, now, expires)
                .await
                .expect("claim")
        }
    };

    assert_eq!(
        claim(first.clone(), at(0), at(100)).await,
        None,
        "the first claim must succeed"
    );
    assert_eq!(
        claim(second.clone(), at(1), at(101)).await,
        Some(first.clone()),
        "a second claim must return the holder"
    );
    assert_eq!(
        claim(second.clone(), at(99), at(199)).await,
        Some(first.clone()),
        "a claim just before expiry must return the holder"
    );
    // The claim holds *until* expires_at: at that instant it is free.
    assert_eq!(
        claim(second.clone(), at(100), at(200)).await,
        None,
        "an expired claim must be re-claimable"
    );
    assert_eq!(
        claim(third.clone(), at(150), at(250)).await,
        Some(second.clone()),
        "the re-claim must hold with its new event id and expiry"
    );
    assert_eq!(
        claim(third.clone(), at(200), at(300)).await,
        None,
        "the re-claim expires at its own expiry"
    );

    let other = format!("key-{}", new_id());
    assert_eq!(
        store
            .claim_idempotency_id(&other, &first, at(0), at(100))
            .await
            .expect("claim"),
        None,
        "claims on different ids must not interfere"
    );
}

// ---- runs ----

/// `create_run` writes only when absent; `get_run` returns every field exactly.
pub async fn runs_create_if_absent(store: &dyn Store) {
    let event_id = new_id();
    let full = RunRecord {
        status: RunStatus::Failed,
        ended_at: Some(at(5)),
        output: Some(json!({"partial": [1, 2.5, "three"], "nested": {"ok": false}})),
        error: Some(ErrorInfo::new("TypeError", "boom: ünïcödé 🎉")),
        progress: Some(Progress {
            percent: 75,
            message: "three quarters".into(),
        }),
        replay_of: Some(new_id()),
        ..run(&new_id(), "fn-a", &event_id, at(0))
    };
    create(store, &full).await;
    assert_eq!(
        get_run(store, &full.run_id).await,
        full,
        "full run round trip"
    );

    let changed = RunRecord {
        status: RunStatus::Queued,
        function_id: "fn-b".into(),
        ..full.clone()
    };
    assert!(
        !store.create_run(&changed).await.expect("create_run"),
        "second create_run must not write"
    );
    assert_eq!(
        get_run(store, &full.run_id).await,
        full,
        "a second create_run must not change the run"
    );

    let minimal = run(&new_id(), "fn-a", &event_id, Utc::now());
    create(store, &minimal).await;
    assert_eq!(
        get_run(store, &minimal.run_id).await,
        minimal,
        "minimal run round trip (now, to the nanosecond)"
    );

    // A function returning `()` records `Some(null)`, which must not read back as `None`.
    let null_output = RunRecord {
        status: RunStatus::Completed,
        output: Some(serde_json::Value::Null),
        ..run(&new_id(), "fn-a", &event_id, at(0))
    };
    create(store, &null_output).await;
    assert_eq!(
        get_run(store, &null_output.run_id).await,
        null_output,
        "Some(null) output round trip"
    );

    assert_eq!(
        store.get_run(&new_id()).await.expect("get_run"),
        None,
        "unknown run"
    );
}

/// `put_event_with_runs` stores the event and every run, each only when absent: a repeat
/// (a sender's retry after a lost answer) changes nothing and adds only what was missing.
pub async fn event_with_runs(store: &dyn Store) {
    let stored = event(&new_id());
    let runs = [
        run(&new_id(), "fn-a", &stored.id, at(0)),
        run(&new_id(), "fn-b", &stored.id, at(0)),
    ];
    store
        .put_event_with_runs(&stored, &runs)
        .await
        .expect("put_event_with_runs");
    assert_eq!(
        store.get_event(&stored.id).await.expect("get_event"),
        Some(stored.clone()),
        "event round trip"
    );
    for run in &runs {
        assert_eq!(&get_run(store, &run.run_id).await, run, "run round trip");
    }

    let no_runs = event(&new_id());
    store
        .put_event_with_runs(&no_runs, &[])
        .await
        .expect("an event that starts nothing");
    assert_eq!(
        store.get_event(&no_runs.id).await.expect("get_event"),
        Some(no_runs)
    );

    let changed_event = EventRecord {
        data: json!("changed"),
        ..stored.clone()
    };
    let changed_run = RunRecord {
        status: RunStatus::Completed,
        ..runs[0].clone()
    };
    let missing = run(&new_id(), "fn-c", &stored.id, at(1));
    store
        .put_event_with_runs(&changed_event, &[changed_run, missing.clone()])
        .await
        .expect("put_event_with_runs again");
    assert_eq!(
        store.get_event(&stored.id).await.expect("get_event"),
        Some(stored),
        "a repeat must not change the event"
    );
    assert_eq!(
        get_run(store, &runs[0].run_id).await,
        runs[0],
        "a repeat must not change a run"
    );
    assert_eq!(
        get_run(store, &missing.run_id).await,
        missing,
        "a repeat writes a run that was missing"
    );
}

/// Transitions apply only from the listed statuses; terminal runs stay as they ended.
pub async fn run_transitions(store: &dyn Store) {
    let r = run(&new_id(), "fn", &new_id(), at(0));
    create(store, &r).await;
    let progress = Progress {
        percent: 10,
        message: "starting".into(),
    };
    assert!(
        store
            .set_progress(&r.run_id, &progress)
            .await
            .expect("set_progress")
    );

    let start = RunTransition::start();
    assert!(
        store
            .transition_run(&r.run_id, &start)
            .await
            .expect("transition_run"),
        "Queued -> Running"
    );
    assert!(
        !store
            .transition_run(&r.run_id, &start)
            .await
            .expect("transition_run"),
        "Queued -> Running must not apply to a Running run"
    );
    assert_eq!(get_run(store, &r.run_id).await.status, RunStatus::Running);

    let complete = finish_to(RunStatus::Completed, Some(json!({"done": true})), None);
    assert!(
        store
            .transition_run(&r.run_id, &complete)
            .await
            .expect("transition_run"),
        "Running -> Completed"
    );
    let done = get_run(store, &r.run_id).await;
    let expected = RunRecord {
        status: RunStatus::Completed,
        ended_at: Some(at(60)),
        output: Some(json!({"done": true})),
        progress: Some(progress),
        ..r.clone()
    };
    assert_eq!(
        done, expected,
        "a transition sets status, end time and output, and keeps the rest"
    );

    for second in [
        finish_to(
            RunStatus::Failed,
            None,
            Some(ErrorInfo::new("Error", "late")),
        ),
        finish_to(RunStatus::Cancelled, None, None),
        finish_to(RunStatus::Completed, Some(json!("other")), None),
    ] {
        assert!(
            !store
                .transition_run(&r.run_id, &second)
                .await
                .expect("transition_run"),
            "a second finish must not apply ({:?})",
            second.to
        );
    }
    assert_eq!(
        get_run(store, &r.run_id).await,
        expected,
        "a finished run must not change"
    );

    // Every terminal status is final for transitions from the live statuses.
    for terminal in [RunStatus::Failed, RunStatus::Cancelled] {
        let r = run(&new_id(), "fn", &new_id(), at(0));
        create(store, &r).await;
        let error = (terminal == RunStatus::Failed).then(|| ErrorInfo::new("Error", "failed"));
        assert!(
            store
                .transition_run(&r.run_id, &finish_to(terminal, None, error))
                .await
                .expect("transition_run")
        );
        let ended = get_run(store, &r.run_id).await;
        let revive = finish_to(RunStatus::Running, None, None);
        assert!(
            !store
                .transition_run(&r.run_id, &revive)
                .await
                .expect("transition_run"),
            "a {terminal:?} run must not change"
        );
        assert_eq!(get_run(store, &r.run_id).await, ended);
    }

    assert!(
        !store
            .transition_run(&new_id(), &start)
            .await
            .expect("transition_run"),
        "transition_run of an unknown run must not apply"
    );
    assert_eq!(store.get_run(&new_id()).await.expect("get_run"), None);
}

/// Progress changes only while the run has not ended.
pub async fn run_progress(store: &dyn Store) {
    let r = run(&new_id(), "fn", &new_id(), at(0));
    create(store, &r).await;
    let p1 = Progress {
        percent: 5,
        message: "queued".into(),
    };
    let p2 = Progress {
        percent: 50,
        message: "halfway".into(),
    };
    assert!(
        store
            .set_progress(&r.run_id, &p1)
            .await
            .expect("set_progress"),
        "progress of a queued run"
    );
    assert_eq!(get_run(store, &r.run_id).await.progress, Some(p1));

    let start = RunTransition::start();
    assert!(
        store
            .transition_run(&r.run_id, &start)
            .await
            .expect("transition_run")
    );
    assert!(
        store
            .set_progress(&r.run_id, &p2)
            .await
            .expect("set_progress"),
        "progress of a running run"
    );
    assert_eq!(get_run(store, &r.run_id).await.progress, Some(p2.clone()));

    assert!(
        store
            .transition_run(&r.run_id, &finish_to(RunStatus::Completed, None, None))
            .await
            .unwrap()
    );
    let late = Progress {
        percent: 100,
        message: "late".into(),
    };
    assert!(
        !store
            .set_progress(&r.run_id, &late)
            .await
            .expect("set_progress"),
        "progress of an ended run must not apply"
    );
    assert_eq!(
        get_run(store, &r.run_id).await.progress,
        Some(p2),
        "an ended run keeps its last progress"
    );

    assert!(
        !store
            .set_progress(&new_id(), &late)
            .await
            .expect("set_progress"),
        "unknown run"
    );
}

/// Newest first by run id, and every filter on its own and combined.
pub async fn list_runs_order_and_filters(store: &dyn Store) {
    // Twelve runs over two functions and three statuses, started one minute apart, and
    // created out of order so the store, not insertion order, does the sorting.
    let run_ids = ordered_ids(12);
    let statuses = [RunStatus::Queued, RunStatus::Running, RunStatus::Completed];
    let mut all = Vec::new();
    for (i, run_id) in run_ids.iter().enumerate() {
        let function_id = if i % 2 == 0 { "fn-even" } else { "fn-odd" };
        let r = RunRecord {
            status: statuses[i % 3],
            ..run(run_id, function_id, &new_id(), at(60 * i as i64))
        };
        all.push(r);
    }
    for i in [5, 0, 11, 3, 8, 1, 10, 2, 7, 4, 9, 6] {
        create(store, &all[i]).await;
    }
    let newest_first = |pred: &dyn Fn(&RunRecord) -> bool| -> Vec<String> {
        all.iter()
            .rev()
            .filter(|r| pred(r))
            .map(|r| r.run_id.clone())
            .collect()
    };
    let list = |query: RunQuery| async move {
        let page = store
            .list_runs(&RunQuery {
                limit: 100,
                ..query
            })
            .await
            .expect("list_runs");
        assert_eq!(
            page.cursor, None,
            "a page holding every match must have no cursor"
        );
        page.runs
    };

    let everything = list(RunQuery::default()).await;
    assert_eq!(
        ids(&everything),
        newest_first(&|_| true),
        "no filter: every run, newest first"
    );
    assert_eq!(
        everything[0],
        all[11].summary(false),
        "listed runs are summaries without outputs"
    );

    let by_function = list(RunQuery {
        function_id: Some("fn-odd".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(
        ids(&by_function),
        newest_first(&|r| r.function_id == "fn-odd"),
        "function filter"
    );

    let by_status = list(RunQuery {
        status: Some(RunStatus::Running),
        ..Default::default()
    })
    .await;
    assert_eq!(
        ids(&by_status),
        newest_first(&|r| r.status == RunStatus::Running),
        "status filter"
    );

    let both = list(RunQuery {
        function_id: Some("fn-even".into()),
        status: Some(RunStatus::Queued),
        ..Default::default()
    })
    .await;
    assert_eq!(
        ids(&both),
        newest_first(&|r| r.function_id == "fn-even" && r.status == RunStatus::Queued),
        "function and status filters"
    );

    // Time bounds are exclusive: runs 3 and 8 start exactly on them.
    let (after, before) = (at(60 * 3), at(60 * 8));
    let window = list(RunQuery {
        started_after: Some(after),
        started_before: Some(before),
        ..Default::default()
    })
    .await;
    assert_eq!(
        ids(&window),
        newest_first(&|r| r.started_at > after && r.started_at < before),
        "started_after and started_before (both exclusive)"
    );
    let after_only = list(RunQuery {
        started_after: Some(after),
        ..Default::default()
    })
    .await;
    assert_eq!(
        ids(&after_only),
        newest_first(&|r| r.started_at > after),
        "started_after"
    );
    let before_only = list(RunQuery {
        started_before: Some(before),
        ..Default::default()
    })
    .await;
    assert_eq!(
        ids(&before_only),
        newest_first(&|r| r.started_at < before),
        "started_before"
    );
    // A bound a nanosecond off the start includes it: timestamps compare at full precision.
    let nano = Duration::nanoseconds(1);
    let just_after = list(RunQuery {
        started_after: Some(at(60 * 11) - nano),
        ..Default::default()
    })
    .await;
    assert_eq!(
        ids(&just_after),
        vec![all[11].run_id.clone()],
        "started_after to the nanosecond"
    );

    let everything_filtered = list(RunQuery {
        function_id: Some("fn-odd".into()),
        status: Some(RunStatus::Completed),
        started_after: Some(at(0)),
        started_before: Some(at(60 * 11)),
        ..Default::default()
    })
    .await;
    assert_eq!(
        ids(&everything_filtered),
        newest_first(&|r| r.function_id == "fn-odd"
            && r.status == RunStatus::Completed
            && r.started_at > at(0)
            && r.started_at < at(60 * 11)),
        "all filters at once"
    );

    let none = list(RunQuery {
        function_id: Some("fn-missing".into()),
        ..Default::default()
    })
    .await;
    assert!(
        none.is_empty(),
        "a filter matching nothing gives an empty page"
    );

    // The status filter sees transitions.
    let transition = finish_to(RunStatus::Completed, None, None);
    assert!(
        store
            .transition_run(&all[1].run_id, &transition)
            .await
            .expect("transition_run")
    );
    let running = list(RunQuery {
        status: Some(RunStatus::Running),
        ..Default::default()
    })
    .await;
    assert!(
        !ids(&running).contains(&all[1].run_id),
        "a run leaves the status it left"
    );
}

/// Following cursors returns every matching run exactly once, newest first.
pub async fn list_runs_paging(store: &dyn Store) {
    let run_ids = ordered_ids(23);
    for (i, run_id) in run_ids.iter().enumerate() {
        let function_id = if i % 3 == 0 { "fn-a" } else { "fn-b" };
        create(store, &run(run_id, function_id, &new_id(), at(i as i64))).await;
    }
    let mut newest_first = run_ids.clone();
    newest_first.reverse();

    async fn page_through(store: &dyn Store, query: RunQuery) -> Vec<String> {
        let mut seen = Vec::new();
        let mut cursor = None;
        for _ in 0..100 {
            let page = store
                .list_runs(&RunQuery {
                    cursor: cursor.clone(),
                    ..query.clone()
                })
                .await
                .expect("list");
            assert!(
                page.runs.len() <= query.limit,
                "a page holds at most `limit` runs"
            );
            if page.cursor.is_some() {
                assert_eq!(
                    page.runs.len(),
                    query.limit,
                    "a page with a cursor must be full"
                );
            }
            seen.extend(ids(&page.runs));
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return seen,
            }
        }
        panic!("paging did not end after 100 pages");
    }

    for limit in [1, 5, 7, 23, 24, 100] {
        let seen = page_through(
            store,
            RunQuery {
                limit,
                ..Default::default()
            },
        )
        .await;
        let unique: HashSet<_> = seen.iter().collect();
        assert_eq!(
            unique.len(),
            seen.len(),
            "limit {limit}: a run listed twice"
        );
        assert_eq!(
            seen, newest_first,
            "limit {limit}: every run exactly once, newest first"
        );
    }

    // Paging through a filter that skips most rows.
    let fn_a: Vec<String> = run_ids
        .iter()
        .enumerate()
        .rev()
        .filter(|(i, _)| i % 3 == 0)
        .map(|(_, id)| id.clone())
        .collect();
    let seen = page_through(
        store,
        RunQuery {
            function_id: Some("fn-a".into()),
            limit: 3,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(seen, fn_a, "filtered paging: every match exactly once");

    // With the row count a multiple of the limit, the last full page ends the listing.
    let page = store
        .list_runs(&RunQuery {
            limit: 23,
            ..Default::default()
        })
        .await
        .expect("list_runs");
    assert_eq!(page.runs.len(), 23);
    assert_eq!(page.cursor, None, "no cursor when no run remains");

    // A run created after the first page was read, newer than the cursor, is not listed again
    // on later pages: the cursor is a position, not an offset.
    let first = store
        .list_runs(&RunQuery {
            limit: 5,
            ..Default::default()
        })
        .await
        .expect("list_runs");
    create(store, &run(&new_id(), "fn-a", &new_id(), Utc::now())).await;
    let second = store
        .list_runs(&RunQuery {
            limit: 5,
            cursor: first.cursor.clone(),
            ..Default::default()
        })
        .await
        .expect("list_runs");
    assert_eq!(
        ids(&second.runs),
        newest_first[5..10].to_vec(),
        "the next page continues after the cursor"
    );
}

/// A limit of 0 means the default page of 50.
pub async fn list_runs_default_limit(store: &dyn Store) {
    for run_id in ordered_ids(51) {
        create(store, &run(&run_id, "fn", &new_id(), at(0))).await;
    }
    let page = store
        .list_runs(&RunQuery::default())
        .await
        .expect("list_runs");
    assert_eq!(page.runs.len(), 50, "limit 0 lists 50 runs");
    assert!(page.cursor.is_some(), "the 51st run is on the next page");
}

/// A listing returns summaries: the event's name but not its payload, and outputs only when
/// asked; the whole run is still read back by `get_run`.
pub async fn list_runs_reads_summaries(store: &dyn Store) {
    let event_id = new_id();
    let big = EventRecord {
        name: "conformance/big".into(),
        data: json!({"blob": "x".repeat(200 * 1024)}),
        ..event(&event_id)
    };
    let whole = RunRecord {
        event: big,
        status: RunStatus::Completed,
        ended_at: Some(at(5)),
        output: Some(json!({"answer": 42, "text": "y".repeat(40 * 1024)})),
        error: None,
        progress: Some(Progress {
            percent: 100,
            message: "done".into(),
        }),
        ..run(&new_id(), "fn-summary", &event_id, at(0))
    };
    create(store, &whole).await;
    let query = RunQuery {
        function_id: Some("fn-summary".into()),
        ..RunQuery::default()
    };
    let page = store.list_runs(&query).await.expect("list_runs");
    assert_eq!(page.runs, vec![whole.summary(false)]);
    assert_eq!(page.runs[0].event_name, "conformance/big");
    assert_eq!(page.runs[0].output, None, "no output unless asked");
    assert!(page.unreadable.is_empty());
    let with_output = store
        .list_runs(&RunQuery {
            with_output: true,
            ..query
        })
        .await
        .expect("list_runs");
    assert_eq!(with_output.runs, vec![whole.summary(true)]);
    assert_eq!(
        store.get_run(&whole.run_id).await.expect("get_run"),
        Some(whole.clone()),
        "get_run reads the whole run"
    );
}

/// Every run of an event, replays included, oldest first.
pub async fn runs_for_event(store: &dyn Store) {
    let (event_a, event_b) = (new_id(), new_id());
    let run_ids = ordered_ids(4);
    let first = run(&run_ids[0], "fn-a", &event_a, at(0));
    let other_fn = run(&run_ids[1], "fn-b", &event_a, at(0));
    let other_event = run(&run_ids[2], "fn-a", &event_b, at(1));
    let replay = RunRecord {
        replay_of: Some(first.run_id.clone()),
        ..run(&run_ids[3], "fn-a", &event_a, at(2))
    };
    for r in [&replay, &other_event, &first, &other_fn] {
        create(store, r).await;
    }
    assert_eq!(
        store
            .runs_for_event(&event_a)
            .await
            .expect("runs_for_event"),
        vec![
            first.summary(true),
            other_fn.summary(true),
            replay.summary(true)
        ],
        "runs of an event, oldest first"
    );
    assert_eq!(
        store
            .runs_for_event(&event_b)
            .await
            .expect("runs_for_event"),
        vec![other_event.summary(true)]
    );
    assert!(
        store
            .runs_for_event(&new_id())
            .await
            .expect("runs_for_event")
            .is_empty(),
        "unknown event"
    );
}

// ---- journal ----

/// The journal is ordered by `seq`, whatever the order of planning.
pub async fn journal_order(store: &dyn Store) {
    let run_id = new_id();
    let steps = [
        step(&run_id, "b", 2),
        step(&run_id, "a", 0),
        step(&run_id, "c:1", 3),
        step(&run_id, "z", 1),
    ];
    for s in &steps {
        plan(store, s).await;
    }
    let journal = store.journal(&run_id).await.expect("journal");
    let order: Vec<_> = journal
        .iter()
        .map(|s| (s.seq, s.step_id.as_str()))
        .collect();
    assert_eq!(
        order,
        vec![(0, "a"), (1, "z"), (2, "b"), (3, "c:1")],
        "journal ordered by seq"
    );
    assert_eq!(journal[0], steps[1], "journal entries are whole records");
    for s in &steps {
        assert_eq!(
            store
                .get_step(&run_id, &s.step_id)
                .await
                .expect("get_step")
                .as_ref(),
            Some(s),
            "get_step reads one whole entry"
        );
    }
    assert_eq!(
        store.get_step(&run_id, "missing").await.expect("get_step"),
        None
    );
    assert_eq!(
        store.get_step(&new_id(), "a").await.expect("get_step"),
        None
    );
    assert!(
        store.journal(&new_id()).await.expect("journal").is_empty(),
        "an unknown run has no journal"
    );
}

/// `plan_step` writes only when absent; a full record round-trips.
/// `start_run_with_step` moves the run on (only from its `from`) and plans the step (only
/// when absent), each as if on its own.
pub async fn start_run_with_step(store: &dyn Store) {
    let run_id = new_id();
    create(store, &run(&run_id, "fn-a", "ev-1", t0())).await;
    let start = RunTransition::start();
    let first = StepRecord {
        status: StepStatus::Running,
        attempts: 1,
        started_at: Some(at(1)),
        ..step(&run_id, "a", 0)
    };
    assert!(store.start_run_with_step(&first, &start).await.unwrap());
    let started = get_run(store, &run_id).await;
    assert_eq!(
        (started.status, started.ended_at),
        (RunStatus::Running, None)
    );
    assert_eq!(get_step(store, &run_id, "a").await, first);

    // Again (a duplicate start): the step stays as planned, the run Running.
    let again = StepRecord {
        attempts: 2,
        ..first.clone()
    };
    assert!(!store.start_run_with_step(&again, &start).await.unwrap());
    assert_eq!(get_step(store, &run_id, "a").await, first);
    assert_eq!(get_run(store, &run_id).await.status, RunStatus::Running);

    // A run cancelled meanwhile stays cancelled; the step is still planned, as plan_step would.
    let cancelled = new_id();
    create(store, &run(&cancelled, "fn-a", "ev-2", t0())).await;
    assert!(
        store
            .transition_run(&cancelled, &finish_to(RunStatus::Cancelled, None, None))
            .await
            .unwrap()
    );
    let step_b = step(&cancelled, "b", 0);
    assert!(store.start_run_with_step(&step_b, &start).await.unwrap());
    assert_eq!(
        get_run(store, &cancelled).await.status,
        RunStatus::Cancelled
    );
    assert_eq!(get_step(store, &cancelled, "b").await, step_b);
}

pub async fn plan_step_if_absent(store: &dyn Store) {
    let run_id = new_id();
    let full = StepRecord {
        kind: StepKind::Sleep,
        status: StepStatus::Sleeping,
        attempts: 3,
        started_at: Some(at(1)),
        ended_at: Some(at(2)),
        wake_at: Some(at(3600)),
        output: Some(json!({"list": [1, {"x": null}], "s": "ünïcödé"})),
        error: Some(ErrorInfo::new("Timeout", "took too long")),
        ..step(&run_id, "nap", 4)
    };
    plan(store, &full).await;
    assert_eq!(
        get_step(store, &run_id, "nap").await,
        full,
        "full step round trip"
    );

    let replanned = StepRecord {
        status: StepStatus::Planned,
        attempts: 0,
        seq: 9,
        ..full.clone()
    };
    assert!(
        !store.plan_step(&replanned).await.expect("plan_step"),
        "a second plan_step must not write"
    );
    assert_eq!(
        get_step(store, &run_id, "nap").await,
        full,
        "a second plan_step must not change the step"
    );

    let null_output = StepRecord {
        kind: StepKind::SendEvent,
        output: Some(serde_json::Value::Null),
        ..step(&run_id, "send", 5)
    };
    plan(store, &null_output).await;
    assert_eq!(
        get_step(store, &run_id, "send").await,
        null_output,
        "Some(null) output round trip"
    );
    assert_eq!(store.journal(&run_id).await.expect("journal").len(), 2);
}

/// Attempts start only forwards, never on a final step; the first start time sticks.
pub async fn begin_attempt(store: &dyn Store) {
    let run_id = new_id();
    plan(store, &step(&run_id, "s", 0)).await;
    let begin = |attempt: u32, secs: i64| {
        let run_id = run_id.clone();
        async move {
            store
                .begin_attempt(&step(&run_id, "s", 0), attempt, at(secs))
                .await
                .expect("begin_attempt")
        }
    };

    assert!(begin(1, 10).await, "attempt 1 of a planned step");
    let s = get_step(store, &run_id, "s").await;
    assert_eq!(
        (s.status, s.attempts, s.started_at),
        (StepStatus::Running, 1, Some(at(10)))
    );

    assert!(begin(1, 20).await, "a redelivered attempt may start again");
    let s = get_step(store, &run_id, "s").await;
    assert_eq!(
        (s.status, s.attempts, s.started_at),
        (StepStatus::Running, 1, Some(at(10))),
        "start time kept"
    );

    assert!(begin(3, 30).await, "a later attempt");
    let s = get_step(store, &run_id, "s").await;
    assert_eq!(
        (s.status, s.attempts, s.started_at),
        (StepStatus::Running, 3, Some(at(10)))
    );

    assert!(!begin(2, 40).await, "a stale attempt must not apply");
    assert_eq!(
        get_step(store, &run_id, "s").await,
        s,
        "a stale attempt must not change the step"
    );

    assert!(
        store
            .finish_step(&run_id, "s", &StepOutcome::Completed(json!(1)), at(50))
            .await
            .unwrap()
    );
    let finished = get_step(store, &run_id, "s").await;
    assert!(!begin(4, 60).await, "no attempt starts on a completed step");
    assert!(!begin(3, 60).await, "no attempt starts on a completed step");
    assert_eq!(get_step(store, &run_id, "s").await, finished);

    plan(store, &step(&run_id, "f", 1)).await;
    let failed = StepOutcome::Failed(ErrorInfo::new("Error", "bad input"));
    assert!(
        store
            .finish_step(&run_id, "f", &failed, at(5))
            .await
            .unwrap()
    );
    assert!(
        !store
            .begin_attempt(&step(&run_id, "f", 0), 1, at(6))
            .await
            .unwrap(),
        "no attempt starts on a failed step"
    );

    // A step whose start time was set when planned keeps it.
    let preset = StepRecord {
        started_at: Some(at(-5)),
        ..step(&run_id, "p", 2)
    };
    plan(store, &preset).await;
    assert!(
        store
            .begin_attempt(&step(&run_id, "p", 0), 1, at(7))
            .await
            .unwrap()
    );
    assert_eq!(get_step(store, &run_id, "p").await.started_at, Some(at(-5)));

    // A step planned in the result of the one before it may have no entry of its own: its
    // first attempt writes it.
    let unplanned = step(&run_id, "fresh", 3);
    assert!(
        store.begin_attempt(&unplanned, 1, at(8)).await.unwrap(),
        "a step with no entry starts"
    );
    assert_eq!(
        get_step(store, &run_id, "fresh").await,
        StepRecord {
            status: StepStatus::Running,
            attempts: 1,
            started_at: Some(at(8)),
            ..unplanned
        }
    );
    let other_run = new_id();
    assert!(
        store
            .begin_attempt(&step(&other_run, "s", 0), 1, at(0))
            .await
            .unwrap()
    );
    assert_eq!(store.journal(&other_run).await.unwrap().len(), 1);
}

/// A step's result and the steps planned with it go in one write; a recorded result is never
/// overwritten, and the planned steps show in the journal as planned until they start.
/// The run and its journal read together are what `get_run` and `journal` read apart: with
/// steps planned on a result, outputs (large ones too: chunked on DynamoDB), a finished run's
/// output; none for a run that does not exist.
pub async fn run_with_journal(store: &dyn Store) {
    assert!(
        store.run_with_journal(&new_id()).await.unwrap().is_none(),
        "no such run"
    );
    let run_id = new_id();
    create(store, &run(&run_id, "f", &new_id(), t0())).await;
    let alone = store.run_with_journal(&run_id).await.unwrap().unwrap();
    assert_eq!(alone, (get_run(store, &run_id).await, Vec::new()));
    let big = "x".repeat(50_000);
    let done = StepRecord {
        status: StepStatus::Completed,
        attempts: 1,
        started_at: Some(at(1)),
        ended_at: Some(at(2)),
        output: Some(json!({"text": big})),
        ..step(&run_id, "a", 0)
    };
    assert!(
        store
            .record_step(&done, &[step(&run_id, "b", 1), step(&run_id, "c", 2)])
            .await
            .unwrap()
    );
    assert!(
        store
            .transition_run(
                &run_id,
                &finish_to(RunStatus::Completed, Some(json!({"text": big})), None)
            )
            .await
            .unwrap()
    );
    let (run, journal) = store.run_with_journal(&run_id).await.unwrap().unwrap();
    assert_eq!(run, get_run(store, &run_id).await);
    assert_eq!(run.output, Some(json!({"text": big})));
    let apart = store.journal(&run_id).await.unwrap();
    assert_eq!(journal, apart);
    assert_eq!(step_ids(&journal), ["a", "b", "c"]);
    assert_eq!(journal[0].output, done.output);
}

/// `record_step_and_end` journals a run's last step and ends the run; a repeat (a duplicate
/// delivery) changes neither, and the transition still applies only from its `from`.
pub async fn record_step_and_end(store: &dyn Store) {
    let run_id = new_id();
    create(store, &run(&run_id, "fn-a", "ev-1", t0())).await;
    let end = |output: serde_json::Value| RunTransition {
        from: vec![RunStatus::Running],
        ..finish_to(RunStatus::Completed, Some(output), None)
    };
    // Queued: the step is journaled, the run is not Running so it does not end.
    let first = StepRecord {
        status: StepStatus::Completed,
        attempts: 1,
        started_at: Some(at(1)),
        ended_at: Some(at(2)),
        output: Some(json!({"n": 1})),
        ..step(&run_id, "a", 0)
    };
    assert!(
        store
            .record_step_and_end(&first, &end(json!(1)))
            .await
            .unwrap()
    );
    assert_eq!(get_run(store, &run_id).await.status, RunStatus::Queued);
    assert_eq!(get_step(store, &run_id, "a").await, first);

    assert!(
        store
            .transition_run(&run_id, &RunTransition::start())
            .await
            .unwrap()
    );
    // A step planned and started, then recorded with the run's end.
    let last = step(&run_id, "b", 1);
    plan(store, &last).await;
    assert!(store.begin_attempt(&last, 1, at(3)).await.unwrap());
    let done = StepRecord {
        status: StepStatus::Completed,
        attempts: 1,
        started_at: Some(at(3)),
        ended_at: Some(at(4)),
        output: Some(json!({"n": 2})),
        ..last.clone()
    };
    assert!(
        store
            .record_step_and_end(&done, &end(json!({"out": 2})))
            .await
            .unwrap()
    );
    let ended = get_run(store, &run_id).await;
    assert_eq!(
        (ended.status, ended.output, ended.ended_at),
        (RunStatus::Completed, Some(json!({"out": 2})), Some(at(60)))
    );
    assert_eq!(get_step(store, &run_id, "b").await, done);
    assert_eq!(step_ids(&store.journal(&run_id).await.unwrap()), ["a", "b"]);

    // Again with another result: neither the step nor the run changes.
    let other = StepRecord {
        output: Some(json!({"n": 3})),
        ..done.clone()
    };
    assert!(
        !store
            .record_step_and_end(&other, &end(json!({"out": 3})))
            .await
            .unwrap()
    );
    assert_eq!(get_step(store, &run_id, "b").await, done);
    assert_eq!(
        get_run(store, &run_id).await.output,
        Some(json!({"out": 2}))
    );
}

pub async fn record_step(store: &dyn Store) {
    let run_id = new_id();
    plan(store, &step(&run_id, "a", 0)).await;
    assert!(
        store
            .begin_attempt(&step(&run_id, "a", 0), 1, at(1))
            .await
            .unwrap()
    );
    let done = StepRecord {
        status: StepStatus::Completed,
        attempts: 1,
        started_at: Some(at(1)),
        ended_at: Some(at(2)),
        output: Some(json!({"n": 1})),
        ..step(&run_id, "a", 0)
    };
    let (b, c) = (step(&run_id, "b", 1), step(&run_id, "c", 2));
    assert!(
        store
            .record_step(&done, &[b.clone(), c.clone()])
            .await
            .unwrap()
    );
    let journal = store.journal(&run_id).await.unwrap();
    let found = |id: &str| journal.iter().find(|s| s.step_id == id).cloned();
    let a = found("a").expect("a in the journal");
    assert_eq!(
        StepRecord {
            planned: Vec::new(),
            ..a.clone()
        },
        done
    );
    assert_eq!(step_ids(&journal), ["a", "b", "c"]);
    for planned in [&b, &c] {
        assert_eq!(
            found(&planned.step_id).as_ref(),
            Some(planned),
            "planned as given"
        );
        // Kept on a's entry (then a holds it), or an entry of its own.
        match store.get_step(&run_id, &planned.step_id).await.unwrap() {
            Some(own) => assert_eq!(&own, planned),
            None => assert!(a.planned.contains(planned), "a holds {}", planned.step_id),
        }
    }

    // Recorded once: a second result changes nothing and plans nothing.
    let other = StepRecord {
        output: Some(json!({"n": 2})),
        ..done.clone()
    };
    assert!(
        !store
            .record_step(&other, &[step(&run_id, "d", 3)])
            .await
            .unwrap()
    );
    let journal = store.journal(&run_id).await.unwrap();
    assert_eq!(
        journal.len(),
        3,
        "d is not planned by a result that was not recorded"
    );
    assert_eq!(journal[0].output, Some(json!({"n": 1})));

    // A planned step starts (its entry is written), then its result is recorded: it is in the
    // journal once, final.
    assert!(store.begin_attempt(&b, 1, at(3)).await.unwrap());
    let b_running = get_step(store, &run_id, "b").await;
    assert_eq!(
        (b_running.status, b_running.attempts),
        (StepStatus::Running, 1)
    );
    let b_failed = StepRecord {
        status: StepStatus::Failed,
        attempts: 1,
        started_at: Some(at(3)),
        ended_at: Some(at(4)),
        error: Some(ErrorInfo::new("Error", "bad")),
        ..b.clone()
    };
    // Planning an existing step again (c) leaves it as it is.
    assert!(store.record_step(&b_failed, &[c.clone()]).await.unwrap());
    let journal = store.journal(&run_id).await.unwrap();
    assert_eq!(journal.len(), 3);
    let b_now = journal.iter().find(|s| s.step_id == "b").unwrap();
    assert_eq!(
        (b_now.status, &b_now.error, &b_now.output),
        (StepStatus::Failed, &b_failed.error, &None)
    );
    assert_eq!(journal.iter().find(|s| s.step_id == "c"), Some(&c));

    // A step run by the handler that planned it (planned started, with no entry of its own)
    // is written whole with its result.
    let inline = StepRecord {
        status: StepStatus::Completed,
        attempts: 1,
        started_at: Some(at(5)),
        ended_at: Some(at(6)),
        output: Some(json!("x")),
        ..step(&run_id, "x", 4)
    };
    assert!(store.record_step(&inline, &[]).await.unwrap());
    assert_eq!(get_step(store, &run_id, "x").await, inline);
    assert!(
        !store.record_step(&inline, &[]).await.unwrap(),
        "recorded once"
    );
}

/// A retry applies only to the current attempt of a step that is not final.
pub async fn retry_step(store: &dyn Store) {
    let run_id = new_id();
    plan(store, &step(&run_id, "s", 0)).await;
    let e1 = ErrorInfo::new("HttpError", "503");
    let e2 = ErrorInfo::new("HttpError", "429");

    assert!(
        !store
            .retry_step(&step(&run_id, "s", 0), 1, &e1, at(100))
            .await
            .unwrap(),
        "no retry of an attempt that has not started"
    );
    assert!(
        store
            .begin_attempt(&step(&run_id, "s", 0), 1, at(10))
            .await
            .unwrap()
    );
    assert!(
        store
            .retry_step(&step(&run_id, "s", 0), 1, &e1, at(100))
            .await
            .unwrap(),
        "retry of the current attempt"
    );
    let s = get_step(store, &run_id, "s").await;
    assert_eq!(
        (
            s.status,
            s.attempts,
            s.error.clone(),
            s.wake_at,
            s.started_at
        ),
        (
            StepStatus::Planned,
            1,
            Some(e1.clone()),
            Some(at(100)),
            Some(at(10))
        ),
        "retry sets Planned, the error and the wake time, and keeps the counter"
    );

    assert!(
        !store
            .retry_step(&step(&run_id, "s", 0), 2, &e2, at(200))
            .await
            .unwrap(),
        "retry of a future attempt"
    );
    assert!(
        !store
            .retry_step(&step(&run_id, "s", 0), 0, &e2, at(200))
            .await
            .unwrap(),
        "retry of a past attempt"
    );
    assert_eq!(
        get_step(store, &run_id, "s").await,
        s,
        "refused retries must not change the step"
    );

    assert!(
        store
            .begin_attempt(&step(&run_id, "s", 0), 2, at(100))
            .await
            .unwrap()
    );
    let s = get_step(store, &run_id, "s").await;
    assert_eq!((s.status, s.attempts), (StepStatus::Running, 2));
    assert_eq!(
        s.error,
        Some(e1),
        "the last attempt's error stays while retries remain"
    );
    assert!(
        !store
            .retry_step(&step(&run_id, "s", 0), 1, &e2, at(200))
            .await
            .unwrap(),
        "retry of a stale attempt"
    );
    assert!(
        store
            .retry_step(&step(&run_id, "s", 0), 2, &e2, at(300))
            .await
            .unwrap()
    );
    assert_eq!(get_step(store, &run_id, "s").await.error, Some(e2.clone()));

    assert!(
        store
            .begin_attempt(&step(&run_id, "s", 0), 3, at(300))
            .await
            .unwrap()
    );
    let failed = StepOutcome::Failed(ErrorInfo::new("HttpError", "gave up"));
    assert!(
        store
            .finish_step(&run_id, "s", &failed, at(310))
            .await
            .unwrap()
    );
    let finished = get_step(store, &run_id, "s").await;
    assert!(
        !store
            .retry_step(&step(&run_id, "s", 0), 3, &e2, at(400))
            .await
            .unwrap(),
        "no retry of a final step"
    );
    assert_eq!(get_step(store, &run_id, "s").await, finished);

    // A step started by the handler that planned it may have no entry of its own: its failed
    // attempt writes it.
    let inline = StepRecord {
        status: StepStatus::Running,
        attempts: 1,
        started_at: Some(at(5)),
        ..step(&run_id, "inline", 1)
    };
    assert!(
        store.retry_step(&inline, 1, &e2, at(500)).await.unwrap(),
        "a started step with no entry"
    );
    assert_eq!(
        get_step(store, &run_id, "inline").await,
        StepRecord {
            status: StepStatus::Planned,
            error: Some(e2.clone()),
            wake_at: Some(at(500)),
            ..inline
        }
    );
}

/// The first result recorded wins; Completed and Failed are both final.
pub async fn finish_step(store: &dyn Store) {
    let run_id = new_id();
    plan(store, &step(&run_id, "ok", 0)).await;
    assert!(
        store
            .begin_attempt(&step(&run_id, "ok", 0), 1, at(1))
            .await
            .unwrap()
    );
    let e = ErrorInfo::new("Flaky", "first try");
    assert!(
        store
            .retry_step(&step(&run_id, "ok", 0), 1, &e, at(2))
            .await
            .unwrap()
    );
    assert!(
        store
            .begin_attempt(&step(&run_id, "ok", 0), 2, at(2))
            .await
            .unwrap()
    );

    let output = json!({"charge": "ch_1", "amount": 1999});
    assert!(
        store
            .finish_step(
                &run_id,
                "ok",
                &StepOutcome::Completed(output.clone()),
                at(3)
            )
            .await
            .unwrap(),
        "the first finish records"
    );
    let done = get_step(store, &run_id, "ok").await;
    let expected = StepRecord {
        status: StepStatus::Completed,
        attempts: 2,
        started_at: Some(at(1)),
        ended_at: Some(at(3)),
        wake_at: Some(at(2)),
        output: Some(output.clone()),
        error: None,
        ..step(&run_id, "ok", 0)
    };
    assert_eq!(
        done, expected,
        "a completed step holds its output and no error"
    );

    let late_failure = StepOutcome::Failed(ErrorInfo::new("Error", "late"));
    assert!(
        !store
            .finish_step(&run_id, "ok", &late_failure, at(4))
            .await
            .unwrap(),
        "a second finish"
    );
    let late_output = StepOutcome::Completed(json!("different"));
    assert!(
        !store
            .finish_step(&run_id, "ok", &late_output, at(4))
            .await
            .unwrap(),
        "a second finish"
    );
    assert_eq!(
        get_step(store, &run_id, "ok").await,
        expected,
        "the first output is kept"
    );

    // A step can be finished without an attempt (sleeps, sent events), and fail for good.
    plan(store, &step(&run_id, "bad", 1)).await;
    let error = ErrorInfo::new("NonRetriableError", "invalid card");
    assert!(
        store
            .finish_step(&run_id, "bad", &StepOutcome::Failed(error.clone()), at(5))
            .await
            .unwrap()
    );
    let failed = get_step(store, &run_id, "bad").await;
    assert_eq!(
        (
            failed.status,
            failed.output.clone(),
            failed.error.clone(),
            failed.ended_at
        ),
        (StepStatus::Failed, None, Some(error), Some(at(5))),
        "a failed step holds its error"
    );
    assert!(
        !store
            .finish_step(&run_id, "bad", &late_output, at(6))
            .await
            .unwrap(),
        "Failed is final"
    );
    assert_eq!(get_step(store, &run_id, "bad").await, failed);

    // `()` outputs are recorded as null, which is a result like any other.
    plan(store, &step(&run_id, "unit", 2)).await;
    let unit = StepOutcome::Completed(serde_json::Value::Null);
    assert!(
        store
            .finish_step(&run_id, "unit", &unit, at(7))
            .await
            .unwrap()
    );
    assert_eq!(
        get_step(store, &run_id, "unit").await.output,
        Some(serde_json::Value::Null)
    );
    assert!(
        !store
            .finish_step(&run_id, "unit", &late_output, at(8))
            .await
            .unwrap(),
        "a null output is final"
    );

    assert!(
        !store
            .finish_step(&run_id, "missing", &unit, at(9))
            .await
            .unwrap(),
        "unknown step"
    );
    assert!(
        !store
            .finish_step(&new_id(), "ok", &unit, at(9))
            .await
            .unwrap(),
        "unknown run"
    );
}

/// Runs and steps with the same step ids in different runs are separate records.
pub async fn runs_do_not_interfere(store: &dyn Store) {
    let (a, b) = (new_id(), new_id());
    for run_id in [&a, &b] {
        create(store, &run(run_id, "fn", &new_id(), at(0))).await;
        plan(store, &step(run_id, "charge", 0)).await;
        plan(store, &step(run_id, "email", 1)).await;
    }
    let b_before = (get_run(store, &b).await, store.journal(&b).await.unwrap());

    assert!(
        store
            .begin_attempt(&step(&a, "charge", 0), 1, at(1))
            .await
            .unwrap()
    );
    assert!(
        store
            .retry_step(&step(&a, "charge", 0), 1, &ErrorInfo::new("E", "x"), at(2))
            .await
            .unwrap()
    );
    assert!(
        store
            .begin_attempt(&step(&a, "charge", 0), 2, at(2))
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_step(&a, "charge", &StepOutcome::Completed(json!("a")), at(3))
            .await
            .unwrap()
    );
    assert!(
        store
            .set_progress(
                &a,
                &Progress {
                    percent: 50,
                    message: "a".into()
                }
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .transition_run(&a, &finish_to(RunStatus::Completed, Some(json!("a")), None))
            .await
            .unwrap()
    );

    assert_eq!(
        (get_run(store, &b).await, store.journal(&b).await.unwrap()),
        b_before,
        "changes to one run must not touch another"
    );
    // And the other run's operations still apply independently.
    assert!(
        store
            .finish_step(&b, "charge", &StepOutcome::Completed(json!("b")), at(4))
            .await
            .unwrap()
    );
    assert_eq!(get_step(store, &a, "charge").await.output, Some(json!("a")));
    assert_eq!(get_step(store, &b, "charge").await.output, Some(json!("b")));
    assert_eq!(store.journal(&a).await.unwrap().len(), 2);
}

// ---- concurrency ----

const WRITERS: usize = 8;

/// Eight tasks finishing one step at once: exactly one records, and its output is kept.
pub async fn concurrent_finish_step(store: Arc<dyn Store>) {
    let run_id = new_id();
    plan(store.as_ref(), &step(&run_id, "s", 0)).await;
    assert!(
        store
            .begin_attempt(&step(&run_id, "s", 0), 1, at(1))
            .await
            .unwrap()
    );
    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (store, run_id) = (Arc::clone(&store), run_id.clone());
            tokio::spawn(async move {
                let outcome = StepOutcome::Completed(json!({ "writer": i }));
                (
                    i,
                    store
                        .finish_step(&run_id, "s", &outcome, at(2))
                        .await
                        .expect("finish_step"),
                )
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (i, won) = task.await.expect("finish_step task panicked");
        if won {
            winners.push(i);
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one concurrent finish_step must record (winners: {winners:?})"
    );
    let s = get_step(store.as_ref(), &run_id, "s").await;
    assert_eq!(
        s.output,
        Some(json!({ "writer": winners[0] })),
        "the winner's output is journaled"
    );
}

/// Eight events claiming one idempotency id at once: one claims it, the rest see that one.
pub async fn concurrent_claims(store: Arc<dyn Store>) {
    let key = format!("key-{}", new_id());
    let tasks: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (store, key, event_id) = (Arc::clone(&store), key.clone(), new_id());
            tokio::spawn(async move {
                let holder = store
                    .claim_idempotency_id(&key, &event_id, at(0), at(100))
                    .await
                    .expect("claim");
                (event_id, holder)
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("claim task panicked"));
    }
    let winners: Vec<_> = results
        .iter()
        .filter(|(_, holder)| holder.is_none())
        .map(|(e, _)| e)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one concurrent claim must succeed"
    );
    for (event_id, holder) in &results {
        if event_id != winners[0] {
            assert_eq!(
                holder.as_ref(),
                Some(winners[0]),
                "losers must see the winning event id"
            );
        }
    }
}

/// Eight tasks creating one run at once: exactly one writes.
pub async fn concurrent_create_run(store: Arc<dyn Store>) {
    let run_id = new_id();
    let event_id = new_id();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            let store = Arc::clone(&store);
            let r = run(&run_id, &format!("fn-{i}"), &event_id, at(0));
            tokio::spawn(async move { (i, store.create_run(&r).await.expect("create_run")) })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (i, won) = task.await.expect("create_run task panicked");
        if won {
            winners.push(i);
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one concurrent create_run must write (winners: {winners:?})"
    );
    assert_eq!(
        get_run(store.as_ref(), &run_id).await.function_id,
        format!("fn-{}", winners[0])
    );
}

// ---- coordination entries ----

fn entry(key: &str, id: &str, version: u64, expires_at: DateTime<Utc>) -> Entry {
    Entry {
        key: key.to_owned(),
        id: id.to_owned(),
        value: json!({"v": version, "id": id, "nested": {"text": "é \u{1F600}"}}),
        version,
        expires_at,
    }
}

/// Absent, version and unconditional writes and deletes.
pub async fn entries_conditions(store: &dyn Store) {
    let key = format!("k-{}", new_id());
    let e1 = entry(&key, "slot:0", 1, at(100));
    assert!(
        store
            .put_entry(&e1, Expect::Absent, at(0))
            .await
            .expect("put"),
        "put_entry(Absent) on a free id must write"
    );
    assert!(
        !store
            .put_entry(&e1, Expect::Absent, at(1))
            .await
            .expect("put"),
        "put_entry(Absent) on a live entry must not write"
    );
    let listed = store.list_entries(&key, "", at(1), 10).await.expect("list");
    assert_eq!(
        listed,
        vec![e1.clone()],
        "list_entries must return the entry as written"
    );
    let e2 = entry(&key, "slot:0", 2, at(100));
    assert!(
        !store
            .put_entry(&e2, Expect::Version(7), at(1))
            .await
            .expect("put"),
        "put_entry(Version) with a wrong version must not write"
    );
    assert!(
        store
            .put_entry(&e2, Expect::Version(1), at(1))
            .await
            .expect("put"),
        "put_entry(Version) with the current version must write"
    );
    assert!(
        !store
            .put_entry(&e2, Expect::Version(1), at(1))
            .await
            .expect("put"),
        "a second writer with the old version must lose"
    );
    assert!(
        !store
            .delete_entry(&key, "slot:0", Expect::Version(1), at(1))
            .await
            .expect("delete"),
        "delete_entry with a wrong version must not delete"
    );
    assert!(
        !store
            .delete_entry(&key, "other", Expect::Any, at(1))
            .await
            .expect("delete"),
        "deleting a missing entry reports false"
    );
    assert!(
        store
            .delete_entry(&key, "slot:0", Expect::Version(2), at(1))
            .await
            .expect("delete"),
        "delete_entry with the current version must delete"
    );
    assert!(
        store
            .list_entries(&key, "", at(1), 10)
            .await
            .expect("list")
            .is_empty(),
        "a deleted entry is gone"
    );
    let e3 = entry(&key, "slot:0", 1, at(100));
    assert!(
        store.put_entry(&e3, Expect::Any, at(1)).await.expect("put"),
        "put_entry(Any) always writes"
    );
    let e4 = entry(&key, "slot:0", 9, at(100));
    assert!(
        store.put_entry(&e4, Expect::Any, at(1)).await.expect("put"),
        "put_entry(Any) overwrites"
    );
    assert_eq!(
        store
            .list_entries(&key, "slot:", at(1), 10)
            .await
            .expect("list"),
        vec![e4],
        "the overwritten entry is listed"
    );
}

/// Ids of any length (a caller's path parameter, a sender's idempotency id) are answered like
/// any other: absent when nothing has them, stored and read back when written. A backend
/// with key size limits (DynamoDB) must not turn them into errors.
pub async fn ids_of_any_length(store: &dyn Store) {
    let long = |tag: &str| format!("{tag}{}", "é".repeat(2500));
    assert_eq!(store.get_event(&long("ev")).await.expect("get_event"), None);
    assert_eq!(store.get_run(&long("run")).await.expect("get_run"), None);
    assert!(
        store
            .journal(&long("run"))
            .await
            .expect("journal")
            .is_empty()
    );
    assert_eq!(
        store
            .get_step(&long("run"), &long("step"))
            .await
            .expect("get_step"),
        None
    );
    assert!(
        store
            .runs_for_event(&long("ev"))
            .await
            .expect("runs_for_event")
            .is_empty()
    );
    let page = store
        .list_runs(&RunQuery {
            function_id: Some(long("fn")),
            cursor: Some(long("cursor")),
            ..RunQuery::default()
        })
        .await
        .expect("list_runs");
    assert!(page.runs.is_empty() && page.cursor.is_none());

    // Two long idempotency ids that share their first 4 KB are still two ids.
    let (a, b) = (long("idem-a"), format!("{}b", long("idem-a")));
    let until = at(3600);
    assert_eq!(
        store
            .claim_idempotency_id(&a, "e-a", at(0), until)
            .await
            .expect("claim"),
        None
    );
    assert_eq!(
        store
            .claim_idempotency_id(&b, "e-b", at(0), until)
            .await
            .expect("claim"),
        None
    );
    assert_eq!(
        store
            .claim_idempotency_id(&a, "e-c", at(1), until)
            .await
            .expect("claim"),
        Some("e-a".to_string())
    );

    let entry = Entry {
        key: long("key"),
        id: long("id"),
        value: json!({"n": 1}),
        version: 1,
        expires_at: at(3600),
    };
    assert!(
        store
            .put_entry(&entry, Expect::Absent, at(0))
            .await
            .expect("put_entry")
    );
    let listed = store
        .list_entries(&entry.key, "", at(1), 10)
        .await
        .expect("list_entries");
    assert_eq!(listed, vec![entry.clone()]);
    assert!(
        store
            .delete_entry(&entry.key, &entry.id, Expect::Any, at(2))
            .await
            .expect("delete_entry")
    );
}

/// Listing by prefix in id order with a limit; expired entries count as absent.
pub async fn entries_listing_and_expiry(store: &dyn Store) {
    let key = format!("k-{}", new_id());
    let other = format!("k-{}", new_id());
    for id in ["w:b", "e:2", "w:a", "e:1", "e:3", "e_x"] {
        let e = entry(&key, id, 1, at(50));
        assert!(
            store
                .put_entry(&e, Expect::Absent, at(0))
                .await
                .expect("put")
        );
    }
    store
        .put_entry(&entry(&other, "e:0", 1, at(50)), Expect::Absent, at(0))
        .await
        .expect("put");
    let ids = |entries: Vec<Entry>| entries.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store
            .list_entries(&key, "e:", at(1), 10)
            .await
            .expect("list")),
        ["e:1", "e:2", "e:3"],
        "list_entries: the prefix's entries by id, and no other key's"
    );
    assert_eq!(
        ids(store
            .list_entries(&key, "e:", at(1), 2)
            .await
            .expect("list")),
        ["e:1", "e:2"],
        "list_entries honours the limit"
    );
    assert_eq!(
        ids(store
            .list_entries(&key, "w:", at(1), 10)
            .await
            .expect("list")),
        ["w:a", "w:b"]
    );
    assert!(
        store
            .list_entries(&key, "", at(50), 10)
            .await
            .expect("list")
            .is_empty(),
        "entries at their expiry are not listed"
    );
    let fresh = entry(&key, "e:1", 5, at(200));
    assert!(
        !store
            .put_entry(&fresh, Expect::Version(1), at(60))
            .await
            .expect("put"),
        "an expired entry has no version to match"
    );
    assert!(
        store
            .put_entry(&fresh, Expect::Absent, at(60))
            .await
            .expect("put"),
        "an expired entry counts as absent"
    );
    assert_eq!(
        ids(store
            .list_entries(&key, "", at(60), 10)
            .await
            .expect("list")),
        ["e:1"]
    );
}

/// Eight tasks bumping one entry's version from the same read: exactly one wins.
pub async fn concurrent_entry_versions(store: Arc<dyn Store>) {
    let key = format!("k-{}", new_id());
    store
        .put_entry(&entry(&key, "bucket", 1, at(100)), Expect::Absent, at(0))
        .await
        .expect("put");
    let tasks: Vec<_> = (0..WRITERS)
        .map(|n| {
            let (store, key) = (Arc::clone(&store), key.clone());
            tokio::spawn(async move {
                let mut e = entry(&key, "bucket", 2, at(100));
                e.value = json!({"writer": n});
                store
                    .put_entry(&e, Expect::Version(1), at(1))
                    .await
                    .expect("put")
            })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        wins += usize::from(task.await.expect("put task panicked"));
    }
    assert_eq!(
        wins, 1,
        "exactly one concurrent versioned write must succeed"
    );
}
