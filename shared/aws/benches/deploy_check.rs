//! `baton deploy-check`'s throughput: unfinished runs checked per second, on SQLite (a file,
//! as `baton dev` keeps it) and on DynamoDB (moto on 127.0.0.1, the real aws-sdk client).
//!
//! Each store gets N copies of one real journal: a run of the upgrade scenarios' `article`
//! function, driven by the engine to its 24 h sleep (fetch, a 1 h sleep, publish: four
//! entries). The check dry-replays every run against the patched v2 ([`upgrade::Article`]).
//! The baseline, measured in the same run on the same store, is the check's own reads without
//! the replay (list the unfinished runs, then each run and its journal, as many at once): the
//! ratio says what the replay costs on top of reading.
//!
//! ```text
//! BATON_MOTO_ENDPOINT=$(scripts/moto) cargo bench -p baton-aws --bench deploy_check
//! ```
//! `BATON_CHECK_RUNS` (default 2000) runs on SQLite, `BATON_CHECK_RUNS_MOTO` (default 500) on
//! moto; `BATON_CHECK_ROUNDS` (default 3) measurements of each, the best kept.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::engine::{DEPLOY_CHECK_CONCURRENCY, run_id_for};
use baton::model::{RunQuery, RunStatus};
use baton::store::MAX_PAGE;
use baton::{Engine, Registry, Store};
use baton_sqlite::{Durability, SqliteStore};
use baton_testkit::upgrade::{self, ARTICLE, ARTICLE_EVENT, Article, Bodies, Stack};
use futures::StreamExt as _;
use serde_json::json;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `runs` copies of one article run asleep at its follow-up, in `store`.
async fn populate(store: Arc<dyn Store>, runs: usize) {
    let bodies = Bodies::default();
    let v1 = || {
        Registry::new()
            .register(upgrade::article(Article::V1, &bodies))
            .unwrap()
    };
    let mut stack = Stack::new(store.clone());
    let engine = stack.engine(v1(), Duration::ZERO);
    let model = run_id_for(
        &stack.send(&engine, ARTICLE_EVENT, json!({})).await,
        ARTICLE,
    );
    stack.deploy(v1(), Duration::from_secs(7200)).await;
    let run = stack.run(&model).await;
    let journal = stack.journal(&model).await;
    assert_eq!(run.status, RunStatus::Running);
    futures::stream::iter(1..runs)
        .for_each_concurrent(16, |_| {
            let (store, run, journal) = (store.clone(), run.clone(), journal.clone());
            async move {
                let run_id = ulid::Ulid::new().to_string();
                for step in journal {
                    let step = baton::model::StepRecord {
                        run_id: run_id.clone(),
                        ..step
                    };
                    store.record_step(&step, &[]).await.unwrap();
                }
                let run = baton::model::RunRecord { run_id, ..run };
                store.create_run(&run).await.unwrap();
            }
        })
        .await;
}

/// What the check reads, without the replay: every unfinished run and its journal.
async fn read_all(store: &Arc<dyn Store>) -> usize {
    let mut read = 0;
    for status in [RunStatus::Queued, RunStatus::Running] {
        let mut cursor = None;
        loop {
            let page = store
                .list_runs(&RunQuery {
                    status: Some(status),
                    limit: MAX_PAGE,
                    cursor: cursor.take(),
                    ..RunQuery::default()
                })
                .await
                .unwrap();
            read += futures::stream::iter(page.runs)
                .map(|r| async move {
                    let read = store.run_with_journal(&r.run_id).await.unwrap();
                    usize::from(read.is_some_and(|(_, journal)| !journal.is_empty()))
                })
                .buffered(DEPLOY_CHECK_CONCURRENCY)
                .fold(0, |a, b| async move { a + b })
                .await;
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
    read
}

async fn measure(name: &str, store: Arc<dyn Store>, runs: usize, rounds: usize) {
    let started = Instant::now();
    populate(store.clone(), runs).await;
    eprintln!(
        "{name}: {runs} runs written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let bodies = Bodies::default();
    let v2 = Registry::new()
        .register(upgrade::article(Article::V2Patched, &bodies))
        .unwrap();
    let (queue, _rx) = baton::queue::local::LocalQueue::new();
    let engine = Engine::new(v2, store.clone(), Arc::new(queue), Default::default());
    let (mut best_read, mut best_check) = (f64::MAX, f64::MAX);
    for _ in 0..rounds {
        let t = Instant::now();
        let read = read_all(&store).await;
        best_read = best_read.min(t.elapsed().as_secs_f64());
        assert_eq!(read, runs);
        let t = Instant::now();
        let report = engine.deploy_check().await.unwrap();
        best_check = best_check.min(t.elapsed().as_secs_f64());
        assert_eq!(report.runs.len(), runs);
        assert_eq!(report.compatible(), runs, "the patched v2 keeps every run");
        assert_eq!(bodies.count("review"), 0, "no step body runs");
    }
    println!(
        "| {name} | {runs} | {:.0} runs/s ({:.2} s) | {:.0} runs/s ({:.2} s) | {:.2}x |",
        runs as f64 / best_check,
        best_check,
        runs as f64 / best_read,
        best_read,
        best_read / best_check,
    );
}

fn main() {
    // `cargo test --all-targets` builds and runs benches too, without `--bench`: building is
    // the check there.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rounds = env_usize("BATON_CHECK_ROUNDS", 3);
    runtime.block_on(async {
        println!(
            "| store | unfinished runs | deploy-check (best of {rounds}) | reads alone, same runs | check / reads |"
        );
        println!("|---|---|---|---|---|");
        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqliteStore::open(dir.path().join("baton.db"), Durability::Normal).unwrap();
        measure(
            "SQLite (file)",
            Arc::new(sqlite),
            env_usize("BATON_CHECK_RUNS", 2000),
            rounds,
        )
        .await;
        let dynamo = baton_testkit::moto::fresh_store().await;
        measure(
            "DynamoDB (moto)",
            Arc::new(dynamo),
            env_usize("BATON_CHECK_RUNS_MOTO", 500),
            rounds,
        )
        .await;
    });
}
