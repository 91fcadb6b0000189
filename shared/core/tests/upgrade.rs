//! Changing code under live runs (`baton_testkit::upgrade`) on the in-memory store and on
//! SQLite; the DynamoDB store runs the same scenarios against moto in baton-aws's tests.

use std::sync::Arc;

use baton::Store;
use baton::store::memory::MemoryStore;
use baton_sqlite::SqliteStore;
use baton_testkit::upgrade;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_on_the_memory_store() {
    upgrade::run_all(|| async { Arc::new(MemoryStore::new()) as Arc<dyn Store> }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicU32::new(0);
    upgrade::run_all(|| {
        let path = dir.path().join(format!(
            "{}.db",
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        async move {
            Arc::new(SqliteStore::open(path, baton_sqlite::Durability::Normal).unwrap())
                as Arc<dyn Store>
        }
    })
    .await;
}

// ---- patch markers and typed outputs, in detail (memory store) ----

use std::time::Duration;

use baton::engine::run_id_for;
use baton::{Ctx, Event, Function, Registry, RunStatus, Step};
use baton_testkit::upgrade::{Bodies, Stack};
use serde_json::{Value, json};

const A: Step = Step::new("a");
const B: Step = Step::new("b");

/// Three branches, each: a, a 1 h sleep, then (v2) `b` behind a patch. Runs asleep under v1
/// take the new code in every branch; each branch journals its own marker.
fn branches(patched: bool, bodies: &Bodies) -> Function {
    let bodies = bodies.clone();
    Function::new("fan")
        .trigger("test/fan")
        .steps(&[A, B])
        .handler(move |ctx: Ctx, _event: Event<Value>| {
            let bodies = bodies.clone();
            async move {
                let work = (0..3).map(|i| {
                    let ctx = ctx.clone();
                    let bodies = bodies.clone();
                    async move {
                        ctx.step(A, async |_| Ok(bodies.ran("a"))).await?;
                        ctx.sleep("nap", Duration::from_secs(3600)).await?;
                        let extra = patched && ctx.patched("extra").await;
                        if extra {
                            ctx.step(B, async |_| Ok(bodies.ran("b"))).await?;
                        }
                        Ok::<_, baton::Error>(json!([i, extra]))
                    }
                });
                let results = futures::future::join_all(work).await;
                results.into_iter().collect::<Result<Vec<_>, _>>()
            }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_in_parallel_branches_is_decided_per_branch() {
    let bodies = Bodies::default();
    let mut stack = Stack::new(Arc::new(MemoryStore::new()));
    let v1 = || Registry::new().register(branches(false, &bodies)).unwrap();
    let v2 = || Registry::new().register(branches(true, &bodies)).unwrap();
    let engine = stack.engine(v1(), Duration::ZERO);
    let run_id = run_id_for(&stack.send(&engine, "test/fan", json!({})).await, "fan");
    assert_eq!(bodies.count("a"), 3);
    let check = stack
        .engine(v2(), Duration::from_secs(7200))
        .deploy_check()
        .await
        .unwrap();
    assert!(!check.breaks(), "{check:#?}");
    stack.deploy(v2(), Duration::from_secs(7200)).await;
    let run = stack.run(&run_id).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.output, Some(json!([[0, true], [1, true], [2, true]])));
    let mut markers: Vec<String> = stack
        .journal(&run_id)
        .await
        .into_iter()
        .filter(|s| s.kind == baton::model::StepKind::Patch)
        .map(|s| s.step_id)
        .collect();
    markers.sort();
    assert_eq!(markers, ["0/@extra", "1/@extra", "2/@extra"]);
    assert_eq!((bodies.count("a"), bodies.count("b")), (3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_patch_id_fails_the_run_with_a_clear_error() {
    let f = Function::new("bad-patch")
        .trigger("test/bad-patch")
        .handler(|ctx: Ctx, _event: Event<Value>| async move { Ok(ctx.patched("not ok!").await) });
    let mut stack = Stack::new(Arc::new(MemoryStore::new()));
    let engine = stack.engine(Registry::new().register(f).unwrap(), Duration::ZERO);
    let run_id = run_id_for(
        &stack.send(&engine, "test/bad-patch", json!({})).await,
        "bad-patch",
    );
    let run = stack.run(&run_id).await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap();
    assert_eq!(error.name, "InvalidPatch");
    assert!(error.message.contains("not ok!"), "{}", error.message);
}

/// v2 reads a journaled output into a type it no longer fits and swallows the error: the run
/// still fails with `OutputTypeMismatch` (a typed error, not a panic and not a silent `None`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_the_new_type_cannot_read_fails_the_run_even_if_the_code_ignores_it() {
    let version = |v2: bool| {
        Function::new("typed")
            .trigger("test/typed")
            .step(A)
            .handler(move |ctx: Ctx, _event: Event<Value>| async move {
                let out = if v2 {
                    let n: Result<u32, _> = ctx.step(A, async |_| Ok(1u32)).await;
                    json!(n.ok())
                } else {
                    json!(ctx.step(A, async |_| Ok("one".to_string())).await?)
                };
                ctx.sleep("nap", Duration::from_secs(3600)).await?;
                Ok(out)
            })
    };
    let mut stack = Stack::new(Arc::new(MemoryStore::new()));
    let engine = stack.engine(
        Registry::new().register(version(false)).unwrap(),
        Duration::ZERO,
    );
    let run_id = run_id_for(&stack.send(&engine, "test/typed", json!({})).await, "typed");
    let v2 = || Registry::new().register(version(true)).unwrap();
    let check = stack
        .engine(v2(), Duration::from_secs(7200))
        .deploy_check()
        .await
        .unwrap();
    assert_eq!(check.would_fail(), 1, "{check:#?}");
    stack.deploy(v2(), Duration::from_secs(7200)).await;
    let run = stack.run(&run_id).await;
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    assert_eq!(run.error.unwrap().name, "OutputTypeMismatch");
}

/// v2 drops a step's declaration that live runs have journaled, or adds a wait it does not
/// declare before where they are: the check says `undeclared`, at that step. (Code past where
/// a run is is not checked: it runs as for a new run.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_check_names_undeclared_steps_and_waits() {
    use baton::Wait;
    use baton::engine::{Incompatibility, Verdict};
    const APPROVED: Wait<Value> = Wait::new("approval", "test/approved").on("data.id");
    let version = |v2: u8| {
        let f = Function::new("undeclared").trigger("test/undeclared");
        let f = if v2 == 1 { f } else { f.step(A) };
        f.handler(move |ctx: Ctx, _event: Event<Value>| async move {
            ctx.step(A, async |_| Ok(1)).await?;
            if v2 == 2 {
                ctx.wait_for_event(APPROVED, "x").await?;
            }
            ctx.sleep("nap", Duration::from_secs(3600)).await?;
            Ok(())
        })
    };
    let mut stack = Stack::new(Arc::new(MemoryStore::new()));
    let engine = stack.engine(
        Registry::new().register(version(0)).unwrap(),
        Duration::ZERO,
    );
    stack.send(&engine, "test/undeclared", json!({})).await;
    for (v2, at) in [(1, "a"), (2, "approval")] {
        let check = stack
            .engine(
                Registry::new().register(version(v2)).unwrap(),
                Duration::from_secs(7200),
            )
            .deploy_check()
            .await
            .unwrap();
        assert_eq!(check.runs.len(), 1);
        match &check.runs[0].verdict {
            Verdict::WouldFail {
                step_id, reason, ..
            } => {
                assert_eq!(*reason, Incompatibility::Undeclared, "{check:#?}");
                assert_eq!(step_id.as_deref(), Some(at), "{check:#?}");
            }
            other => panic!("v2 #{v2}: {other:?}"),
        }
    }
}
