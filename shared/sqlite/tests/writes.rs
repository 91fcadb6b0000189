//! How many transactions a run of sequential steps commits in local mode: each is an fsync
//! under full durability, so this is what a run costs one at a time.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use baton::engine::run_id_for;
use baton::local::{LocalOptions, LocalRuntime};
use baton::{
    Ctx, Event, Function, NewEvent, Registry, RunStatus, Step, StepError, StepStatus, Store,
};
use baton_sqlite::{Durability, SqliteStore};

const STEPS: [&str; 3] = ["a", "b", "c"];

fn chain(id: &str, trigger: &str) -> Function {
    let mut function = Function::new(id).trigger(trigger);
    for name in STEPS {
        function = function.step(Step::new(name));
    }
    function.handler(|ctx: Ctx, event: Event<Value>| async move {
        let mut acc = event.data["n"].as_u64().unwrap_or(0);
        for name in STEPS {
            acc = ctx
                .step(Step::new(name), move |_| async move {
                    Ok::<u64, StepError>(acc + 1)
                })
                .await?;
        }
        Ok(json!({"acc": acc}))
    })
}

/// One run alone, with nothing else writing: the store's commits are the run's.
async fn commits_for_one_run(
    registry: Registry,
    event: &str,
    function_id: &str,
) -> (u64, baton::model::RunRecord, Vec<baton::model::StepRecord>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("baton.db"), Durability::Normal).unwrap();
    let options = LocalOptions {
        sweep_interval: Duration::from_secs(86_400),
        ..LocalOptions::default()
    };
    let rt = LocalRuntime::start(registry, Arc::new(store.clone()), options)
        .await
        .unwrap();
    let before = store.commits();
    let ids = rt
        .engine()
        .send_events(vec![NewEvent::new(event, json!({"n": 1}))])
        .await
        .unwrap();
    let run = rt
        .wait_for_run(&run_id_for(&ids[0], function_id), Duration::from_secs(10))
        .await
        .expect("the run ends");
    let commits = store.commits() - before;
    let journal = store.journal(&run.run_id).await.unwrap();
    (commits, run, journal)
}

#[tokio::test]
async fn a_run_of_three_steps_commits_five_times() {
    let registry = Registry::new().register(chain("chain", "app/go")).unwrap();
    let (commits, run, journal) = commits_for_one_run(registry, "app/go", "chain").await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!({"acc": 4})));
    assert_eq!(
        journal
            .iter()
            .map(|s| (s.name.as_str(), s.status, s.output.clone()))
            .collect::<Vec<_>>(),
        [
            ("a", StepStatus::Completed, Some(json!(2))),
            ("b", StepStatus::Completed, Some(json!(3))),
            ("c", StepStatus::Completed, Some(json!(4))),
        ]
    );
    // The event with its run; the run Running with its first step planned started; each
    // step's result with the next step planned started; the last one's with the run's end.
    assert_eq!(commits, 5);
}
