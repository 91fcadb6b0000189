//! Defect 1 of the hardening issue, end to end on the embedded store: a run whose stored row
//! cannot be parsed (as an older version wrote for an event nested 125 levels deep) is reported
//! and skipped. It never takes down a listing, a dashboard page, the stats, the sweeper, or the
//! next start of the server on that database.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use baton::local::{LocalOptions, LocalRuntime};
use baton::model::RunQuery;
use baton::{Ctx, Event, Function, NewEvent, Registry, RunStatus, Store};
use baton_http::{Keys, router};
use baton_sqlite::{Durability, SqliteStore};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

fn registry() -> Registry {
    Registry::new()
        .register(
            Function::new("echo")
                .trigger("t/echo")
                .handler(|_ctx: Ctx, e: Event<Value>| async move { Ok(e.data) }),
        )
        .unwrap()
}

/// 200 levels of arrays: past serde_json's recursion limit of 128.
fn too_deep() -> String {
    format!("{}1{}", "[".repeat(200), "]".repeat(200))
}

async fn get(router: &axum::Router, uri: &str) -> (StatusCode, String) {
    let response = router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends `n` events named `name`, one at a time, and returns the ids of their runs, each
/// waited for until it completed.
async fn completed_runs(runtime: &LocalRuntime, name: &str, n: usize) -> Vec<String> {
    let mut run_ids = Vec::new();
    for i in 0..n {
        let ids = runtime
            .engine()
            .send_events(vec![NewEvent::new(name, json!({"i": i}))])
            .await
            .unwrap();
        let run = runtime
            .engine()
            .store()
            .runs_for_event(&ids[0])
            .await
            .unwrap();
        let run = runtime
            .wait_for_run(&run[0].run_id, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(run.status, RunStatus::Completed);
        run_ids.push(run.run_id);
    }
    run_ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unreadable_run_is_reported_and_skipped_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    let open = || Arc::new(SqliteStore::open(&path, Durability::Normal).unwrap());
    let runtime = LocalRuntime::start(registry(), open(), LocalOptions::default())
        .await
        .unwrap();
    let run_ids = completed_runs(&runtime, "t/echo", 3).await;
    drop(runtime);

    // What an older version could write: a row whose event copy and output no parser reads,
    // left Running so the sweeper and the start-up recovery meet it too.
    let bad = run_ids[1].clone();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE runs SET event = ?1, output = ?1, error = ?1, status = 'Running', ended_at = NULL
         WHERE run_id = ?2",
        rusqlite::params![too_deep(), bad],
    )
    .unwrap();
    drop(conn);

    // The store: the listing skips and reports it.
    let store = open();
    let page = store.list_runs(&RunQuery::default()).await.unwrap();
    assert_eq!(page.unreadable, vec![bad.clone()]);
    assert_eq!(page.runs.len(), 2);
    assert!(store.get_run(&bad).await.unwrap_err().is_corrupt());

    // The server starts again on this database (its recovery sweep meets the row), and the
    // sweeper keeps working.
    let runtime = LocalRuntime::start(registry(), store.clone(), LocalOptions::default())
        .await
        .expect("the server starts on a database holding an unreadable row");
    runtime
        .engine()
        .sweep(None)
        .await
        .expect("the sweeper skips it");
    runtime
        .engine()
        .sweep(Some(Duration::ZERO))
        .await
        .expect("the sweeper skips it");
    // The pre-deploy check names it (and says the deploy should wait).
    let check = runtime
        .engine()
        .deploy_check()
        .await
        .expect("the check skips it");
    assert_eq!(check.unreadable, vec![bad.clone()]);
    assert!(check.breaks());

    // Every page and listing answers, naming the run it could not read.
    let router = router(runtime.engine().clone(), Keys::open());
    let (status, body) = get(&router, "/v1/runs").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listing: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listing["unreadable"], json!([bad]));
    assert_eq!(listing["data"].as_array().unwrap().len(), 2);
    for uri in [
        "/",
        "/runs",
        "/functions",
        "/functions/echo",
        "/v1/functions/echo/stats",
    ] {
        let (status, body) = get(&router, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    }
    let (_, body) = get(&router, "/runs").await;
    assert!(
        body.contains("could not be read") && body.contains(&bad),
        "{body}"
    );
    let (_, body) = get(&router, "/v1/functions/echo/stats").await;
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["data"]["unreadable"], 1, "{stats}");

    // The run itself: an error without the parser's message or the database's path.
    let (status, body) = get(&router, &format!("/v1/runs/{bad}")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(
        body.contains("could not be read") && body.contains("reference"),
        "{body}"
    );
    assert!(
        !body.contains("recursion") && !body.contains("baton.db"),
        "{body}"
    );

    // Bulk actions skip it too.
    let outcome = runtime
        .engine()
        .cancel_many(&baton::engine::RunSelection::function("echo"))
        .await
        .unwrap();
    assert!(outcome.run_ids.is_empty());
    assert_eq!(outcome.unreadable, vec![bad]);
    drop(runtime);
}

/// A handler that has nothing cached reads the run and its journal together; what it cannot
/// read is still told apart. A message for a run no version can read is dropped (delivering
/// it again cannot help); one for a run with an unreadable step fails its delivery, so it is
/// delivered again and, on AWS, reaches the dead-letter queue, which fails the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_drops_an_unreadable_run_and_fails_on_an_unreadable_step() {
    const FIRST: baton::Step = baton::Step::new("first");
    let registry = Registry::new()
        .register(
            Function::new("stepper")
                .trigger("t/step")
                .steps(&[FIRST])
                .handler(|ctx: Ctx, _e: Event<Value>| async move {
                    ctx.step(FIRST, async |_| Ok(json!(1))).await
                }),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    let open = || Arc::new(SqliteStore::open(&path, Durability::Normal).unwrap());
    let runtime = LocalRuntime::start(registry.clone(), open(), LocalOptions::default())
        .await
        .unwrap();
    let run_ids = completed_runs(&runtime, "t/step", 2).await;
    drop(runtime);
    let (bad_run, bad_step) = (&run_ids[0], &run_ids[1]);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE runs SET status = 'Running', ended_at = NULL, output = NULL WHERE run_id IN (?1, ?2)",
        rusqlite::params![bad_run, bad_step],
    )
    .unwrap();
    conn.execute(
        "UPDATE runs SET event = ?1 WHERE run_id = ?2",
        rusqlite::params![too_deep(), bad_run],
    )
    .unwrap();
    conn.execute(
        "UPDATE steps SET output = ?1 WHERE run_id = ?2",
        rusqlite::params![too_deep(), bad_step],
    )
    .unwrap();
    drop(conn);

    // A fresh engine: nothing cached, as a Lambda that has not seen these runs.
    let store = open();
    let (queue, _receiver) = baton::queue::local::LocalQueue::new();
    let engine = baton::Engine::new(
        registry,
        store.clone(),
        Arc::new(queue),
        baton::EngineConfig::default(),
    );
    let message = |run_id: &str| baton::model::Message {
        run_id: run_id.to_owned(),
        function_id: "stepper".into(),
        kind: baton::model::MessageKind::Start,
        not_before: None,
    };
    engine
        .handle(message(bad_run))
        .await
        .expect("a message for an unreadable run is dropped");
    let error = engine
        .handle(message(bad_step))
        .await
        .expect_err("a message for a run with an unreadable step fails its delivery");
    assert!(error.to_string().contains(bad_step), "{error}");
    assert!(store.journal(bad_step).await.unwrap_err().is_corrupt());
}
