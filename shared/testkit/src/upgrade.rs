//! Changing code under live runs, as executable scenarios run on every store: two versions of
//! one function (v1 and v2 registries), deploys between them over the same store, patch
//! markers, the pre-deploy check, removed functions and restarts from a step.
//!
//! A "deploy" is a new [`Engine`] with the other registry over the same store and queue, its
//! clock later than the last one's; [`Stack::deploy`] re-drives every live run (as the sweeper
//! does after a deploy), so sleeps due by the new clock wake at once. Step bodies count their
//! executions ([`Bodies`]), so a test sees which ones ran again.
//!
//! ```ignore
//! baton_testkit::upgrade::run_all(|| async { Arc::new(MemoryStore::new()) as Arc<dyn Store> }).await;
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::engine::{Verdict, run_id_for};
use baton::error::EngineError;
use baton::model::{Message, MessageKind, RunRecord, RunStatus, StepRecord};
use baton::queue::local::{LocalQueue, LocalReceiver};
use baton::{
    Ctx, Engine, EngineConfig, Error, Event, FailureData, Function, NewEvent, Registry, Step,
    StepError, Store,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub const ARTICLE: &str = "article";
pub const ARTICLE_EVENT: &str = "test/article.submitted";
pub const LEGACY: &str = "legacy";
pub const LEGACY_EVENT: &str = "test/legacy.started";
pub const CHAIN: &str = "chain";
pub const CHAIN_EVENT: &str = "test/chain.started";

const FETCH: Step = Step::new("fetch");
const REVIEW: Step = Step::new("review");
const PUBLISH: Step = Step::new("publish");
const NOTIFY: Step = Step::new("notify");
const COOL_OFF: Duration = Duration::from_secs(3600);
const FOLLOW_UP: Duration = Duration::from_secs(24 * 3600);

/// How many times each step body ran, by step name.
#[derive(Clone, Default)]
pub struct Bodies(Arc<Mutex<BTreeMap<String, u32>>>);

impl Bodies {
    /// Counts one execution of `name`; returns the count so far.
    pub fn ran(&self, name: &str) -> u32 {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(name.to_string()).or_insert(0);
        *n += 1;
        *n
    }
    pub fn count(&self, name: &str) -> u32 {
        let counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(name).copied().unwrap_or(0)
    }
}

/// `fetch`'s output in v1 (and v2).
#[derive(Serialize, Deserialize)]
struct Draft {
    words: u32,
}

/// `fetch`'s output in the retyped v2: the field changed type, so v1's outputs do not read.
#[derive(Serialize, Deserialize)]
struct DraftV3 {
    words: Vec<String>,
}

/// Which v2 of [`ARTICLE`] to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Article {
    /// fetch, sleep 1 h, publish, sleep 24 h, notify.
    V1,
    /// v1 with a review step before publish, behind `ctx.patched("review")`.
    V2Patched,
    /// v1 with a review step before publish, unconditionally: breaks runs past that point.
    V2Breaking,
    /// v1 with fetch's output type changed: breaks every run that fetched.
    V2Retyped,
}

/// The article function in one of its versions.
pub fn article(version: Article, bodies: &Bodies) -> Function {
    let bodies = bodies.clone();
    Function::new(ARTICLE)
        .trigger(ARTICLE_EVENT)
        .steps(&[FETCH, REVIEW, PUBLISH, NOTIFY])
        .handler(move |ctx: Ctx, _event: Event<Value>| {
            let bodies = bodies.clone();
            async move {
                let words = if version == Article::V2Retyped {
                    let draft: DraftV3 = ctx
                        .step(FETCH, async |_| {
                            bodies.ran("fetch");
                            Ok(DraftV3 { words: vec![] })
                        })
                        .await?;
                    draft.words.len() as u32
                } else {
                    let draft: Draft = ctx
                        .step(FETCH, async |_| {
                            bodies.ran("fetch");
                            Ok(Draft { words: 120 })
                        })
                        .await?;
                    draft.words
                };
                ctx.sleep("cool-off", COOL_OFF).await?;
                let review = match version {
                    Article::V2Patched => ctx.patched("review").await,
                    Article::V2Breaking => true,
                    Article::V1 | Article::V2Retyped => false,
                };
                let reviewed = if review {
                    ctx.step(REVIEW, async |_| {
                        bodies.ran("review");
                        Ok(true)
                    })
                    .await?
                } else {
                    false
                };
                let url: String = ctx
                    .step(PUBLISH, async |s| {
                        bodies.ran("publish");
                        Ok(format!("https://example.test/{}", s.run_id))
                    })
                    .await?;
                ctx.sleep("follow-up", FOLLOW_UP).await?;
                ctx.step(NOTIFY, async |_| {
                    bodies.ran("notify");
                    Ok(())
                })
                .await?;
                Ok(json!({"words": words, "url": url, "reviewed": reviewed}))
            }
        })
}

/// A function v2 removes: one step, a 1 h sleep, another step; its failure handler
/// (`legacy-failure`) is what v2 keeps ([`legacy_cleanup`]).
pub fn legacy(bodies: &Bodies) -> Function {
    let failures = bodies.clone();
    let bodies = bodies.clone();
    Function::new(LEGACY)
        .failure_step(Step::new("clean-up"))
        .on_failure(move |ctx: Ctx, _event: Event<FailureData>| {
            let bodies = failures.clone();
            async move {
                ctx.step(Step::new("clean-up"), async |_| {
                    bodies.ran("clean-up");
                    Ok(())
                })
                .await
            }
        })
        .trigger(LEGACY_EVENT)
        .steps(&[Step::new("one"), Step::new("two")])
        .handler(move |ctx: Ctx, _event: Event<Value>| {
            let bodies = bodies.clone();
            async move {
                ctx.step(Step::new("one"), async |_| Ok(bodies.ran("one")))
                    .await?;
                ctx.sleep("wait", COOL_OFF).await?;
                ctx.step(Step::new("two"), async |_| Ok(bodies.ran("two")))
                    .await?;
                Ok(())
            }
        })
}

/// What v2 keeps of [`LEGACY`]: its failure handler, as a function of its own with the id
/// [`Function::on_failure`] gave it (a removed function's `on_failure` goes with it).
pub fn legacy_cleanup(bodies: &Bodies) -> Function {
    let bodies = bodies.clone();
    Function::new("legacy-failure")
        .handles_failures_of(LEGACY)
        .step(Step::new("clean-up"))
        .handler(move |ctx: Ctx, event: Event<FailureData>| {
            let bodies = bodies.clone();
            async move {
                ctx.step(Step::new("clean-up"), async |_| {
                    bodies.ran("clean-up");
                    Ok(())
                })
                .await?;
                Ok(json!({
                    "run_id": event.data.run_id,
                    "error": event.data.error.name,
                }))
            }
        })
}

/// Four steps in a row; `s3` fails for good on its first execution (a bug, fixed by the time
/// the run is restarted from it).
pub fn chain(bodies: &Bodies) -> Function {
    let bodies = bodies.clone();
    let names = ["s1", "s2", "s3", "s4"];
    Function::new(CHAIN)
        .trigger(CHAIN_EVENT)
        .steps(&names.map(Step::new))
        .handler(move |ctx: Ctx, _event: Event<Value>| {
            let bodies = bodies.clone();
            async move {
                let mut outputs = Vec::new();
                for name in names {
                    let output: String = ctx
                        .step(Step::new(name), async |_| {
                            let n = bodies.ran(name);
                            if name == "s3" && n == 1 {
                                return Err(StepError::non_retriable("s3 has a bug"));
                            }
                            Ok(format!("{name}#{n}"))
                        })
                        .await?;
                    outputs.push(output);
                }
                Ok::<_, Error>(outputs)
            }
        })
}

/// One store and one queue, deployed to again and again.
pub struct Stack {
    pub store: Arc<dyn Store>,
    queue: LocalQueue,
    rx: LocalReceiver,
    t0: DateTime<Utc>,
}

impl Stack {
    pub fn new(store: Arc<dyn Store>) -> Stack {
        let (queue, rx) = LocalQueue::new();
        Stack {
            store,
            queue,
            rx,
            t0: Utc::now(),
        }
    }

    /// An engine running `registry` whose clock reads `after` past the stack's start. Nothing
    /// is re-driven: see [`Stack::deploy`].
    pub fn engine(&self, registry: Registry, after: Duration) -> Engine {
        let config = EngineConfig {
            clock_start: Some(baton::engine::later(self.t0, after)),
            ..EngineConfig::default()
        };
        Engine::new(
            registry,
            self.store.clone(),
            Arc::new(self.queue.clone()),
            config,
        )
    }

    /// Deploys `registry` at `after`: the engine, after every live run has been re-driven (and
    /// those of removed functions ended) and every message handled.
    pub async fn deploy(&mut self, registry: Registry, after: Duration) -> Engine {
        let engine = self.engine(registry, after);
        engine.sweep(None).await.expect("the sweep");
        self.drain(&engine).await;
        engine
    }

    /// Handles every message that comes due within a short while (sleeps of an hour do not).
    pub async fn drain(&mut self, engine: &Engine) {
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(300), self.rx.recv()).await
        {
            let mut tries = 0;
            while let Err(e) = engine.handle(message.clone()).await {
                tries += 1;
                assert!(tries < 5, "handling {message:?} keeps failing: {e}");
            }
        }
    }

    pub async fn send(&mut self, engine: &Engine, name: &str, data: Value) -> String {
        let event_id = engine
            .send_events(vec![NewEvent::new(name, data)])
            .await
            .expect("the event is accepted")
            .remove(0);
        self.drain(engine).await;
        event_id
    }

    pub async fn run(&self, run_id: &str) -> RunRecord {
        self.store
            .get_run(run_id)
            .await
            .expect("the store reads")
            .expect("the run exists")
    }

    pub async fn journal(&self, run_id: &str) -> Vec<StepRecord> {
        self.store.journal(run_id).await.expect("the store reads")
    }
}

fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

/// Every scenario, each on a fresh store from `fresh`.
pub async fn run_all<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    runs_sleeping_under_v1_finish_under_a_patched_v2(fresh().await).await;
    a_patch_is_retired_once_no_run_takes_its_old_branch(fresh().await).await;
    deploy_check_flags_exactly_the_runs_v2_would_break(fresh().await).await;
    removed_function_runs_end_and_their_cleanup_runs(fresh().await).await;
    restart_from_the_third_step_reruns_it_and_no_earlier_step(fresh().await).await;
}

/// v1 runs at two points (before the patched code, and past it) and a run started under v2:
/// all finish under v2; the ones past the point keep the old branch.
pub async fn runs_sleeping_under_v1_finish_under_a_patched_v2(store: Arc<dyn Store>) {
    let bodies = Bodies::default();
    let v1 = || {
        Registry::new()
            .register(article(Article::V1, &bodies))
            .unwrap()
    };
    let v2 = || {
        Registry::new()
            .register(article(Article::V2Patched, &bodies))
            .unwrap()
    };
    let mut stack = Stack::new(store);
    // Run "past": started, slept, published, now in its 24 h follow-up sleep.
    let engine = stack.engine(v1(), hours(0));
    let past = stack.send(&engine, ARTICLE_EVENT, json!({})).await;
    let engine = stack.deploy(v1(), hours(2)).await;
    // Run "before": started later, in its 1 h cool-off: it has not reached the patch yet.
    let before = stack.send(&engine, ARTICLE_EVENT, json!({})).await;
    let (past, before) = (run_id_for(&past, ARTICLE), run_id_for(&before, ARTICLE));
    assert_eq!(stack.run(&past).await.status, RunStatus::Running);
    assert_eq!(
        bodies.count("publish"),
        1,
        "only the first run has published"
    );

    // The patched v2, past both sleeps; then a run that starts under it.
    let engine = stack.deploy(v2(), hours(30)).await;
    let fresh = stack.send(&engine, ARTICLE_EVENT, json!({})).await;
    let fresh = run_id_for(&fresh, ARTICLE);
    // Each deploy wakes the sleeps due by then: a run's next sleep counts from its wake-up.
    for at in [60, 90] {
        stack.deploy(v2(), hours(at)).await;
    }
    for (run_id, reviewed) in [(&past, false), (&before, true), (&fresh, true)] {
        let run = stack.run(run_id).await;
        assert_eq!(run.status, RunStatus::Completed, "{run:?}");
        assert_eq!(
            run.output.as_ref().unwrap()["reviewed"],
            json!(reviewed),
            "{run:?}"
        );
        let marker = stack
            .journal(run_id)
            .await
            .into_iter()
            .find(|s| s.step_id == "@review")
            .expect("the patch marker is journaled");
        assert_eq!(marker.output, Some(json!(reviewed)), "{marker:?}");
    }
    // Every body ran once per run that reached it: nothing was redone by the deploys.
    assert_eq!(bodies.count("fetch"), 3);
    assert_eq!(bodies.count("publish"), 3);
    assert_eq!(bodies.count("notify"), 3);
    assert_eq!(bodies.count("review"), 2);

    // A restart from after the patch keeps the branch the run took (the marker is reused
    // with the steps before), and a marker is no step to restart from.
    let engine = stack.engine(v2(), hours(90));
    let again = engine.replay_from(&past, "publish", None).await.unwrap();
    match engine.replay_from(&past, "@review", None).await {
        Err(EngineError::Invalid(message)) => assert!(message.contains("patch marker")),
        other => panic!("{other:?}"),
    }
    stack.drain(&engine).await;
    stack.deploy(v2(), hours(120)).await;
    let run = stack.run(&again).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.output.as_ref().unwrap()["reviewed"], json!(false));
    assert_eq!(bodies.count("fetch"), 3, "fetch was reused");
    assert_eq!(bodies.count("review"), 2, "the old branch stayed old");
    assert_eq!(bodies.count("publish"), 4, "publish ran again");
}

/// Retiring a patch: v3 drops the `patched` call and keeps the new branch. The check flags the
/// run still on the old branch until it finishes; then v3 deploys, and a run that took the new
/// branch finishes under it (its marker, no longer reached, is ignored).
pub async fn a_patch_is_retired_once_no_run_takes_its_old_branch(store: Arc<dyn Store>) {
    let bodies = Bodies::default();
    let registry = |version| Registry::new().register(article(version, &bodies)).unwrap();
    // v3: the review unconditional, as the breaking v2 has it.
    let v3 = Article::V2Breaking;
    let mut stack = Stack::new(store);
    let engine = stack.engine(registry(Article::V1), hours(0));
    let old = run_id_for(
        &stack.send(&engine, ARTICLE_EVENT, json!({})).await,
        ARTICLE,
    );
    stack.deploy(registry(Article::V1), hours(2)).await;
    // v2 replays the old run past the patch (old branch, journaled) and starts a new one.
    let engine = stack.deploy(registry(Article::V2Patched), hours(3)).await;
    let new = run_id_for(
        &stack.send(&engine, ARTICLE_EVENT, json!({})).await,
        ARTICLE,
    );
    stack.deploy(registry(Article::V2Patched), hours(5)).await;
    assert_eq!(bodies.count("review"), 1, "the new run reviewed");

    let check = |stack: &Stack, version, at| {
        let engine = stack.engine(registry(version), hours(at));
        async move { engine.deploy_check().await.unwrap() }
    };
    let under_v2 = check(&stack, Article::V2Patched, 5).await;
    assert!(!under_v2.breaks(), "{under_v2:#?}");
    let on_old: Vec<&str> = under_v2
        .runs
        .iter()
        .filter(|r| !r.old_branches.is_empty())
        .map(|r| r.run_id.as_str())
        .collect();
    assert_eq!(on_old, [old.as_str()], "{under_v2:#?}");
    let under_v3 = check(&stack, v3, 5).await;
    let breaking: Vec<&str> = under_v3
        .runs
        .iter()
        .filter(|r| r.breaks())
        .map(|r| r.run_id.as_str())
        .collect();
    assert_eq!(breaking, [old.as_str()], "{under_v3:#?}");

    // The old run finishes under v2 (its follow-up ends at 26 h); then v3 is safe.
    stack.deploy(registry(Article::V2Patched), hours(27)).await;
    assert_eq!(stack.run(&old).await.status, RunStatus::Completed);
    let under_v3 = check(&stack, v3, 27).await;
    assert_eq!(under_v3.runs.len(), 1, "{under_v3:#?}");
    assert!(!under_v3.breaks(), "{under_v3:#?}");
    stack.deploy(registry(v3), hours(30)).await;
    let run = stack.run(&new).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.output.as_ref().unwrap()["reviewed"], json!(true));
    assert_eq!(
        bodies.count("review"),
        1,
        "v3 did not review the new run again"
    );
    assert_eq!(bodies.count("publish"), 2);
}

/// The check sorts v1's runs under three v2s: breaking (only the runs past the new step),
/// patched (all compatible, the old branch reported) and retyped (every run that fetched).
/// It writes nothing.
pub async fn deploy_check_flags_exactly_the_runs_v2_would_break(store: Arc<dyn Store>) {
    let bodies = Bodies::default();
    let registry = |version| {
        Registry::new()
            .register(article(version, &bodies))
            .unwrap()
            .register(legacy(&bodies))
            .unwrap()
    };
    let mut stack = Stack::new(store);
    let engine = stack.engine(registry(Article::V1), hours(0));
    let mut past = Vec::new();
    for _ in 0..2 {
        past.push(run_id_for(
            &stack.send(&engine, ARTICLE_EVENT, json!({})).await,
            ARTICLE,
        ));
    }
    let engine = stack.deploy(registry(Article::V1), hours(2)).await;
    let mut before = Vec::new();
    for _ in 0..3 {
        before.push(run_id_for(
            &stack.send(&engine, ARTICLE_EVENT, json!({})).await,
            ARTICLE,
        ));
    }
    let mut ids: Vec<&String> = past.iter().chain(&before).collect();
    ids.sort();
    let mut journals = Vec::new();
    for id in &ids {
        journals.push(stack.journal(id).await);
    }

    let check = |version| {
        let engine = stack.engine(registry(version), hours(3));
        async move {
            engine
                .deploy_check()
                .await
                .expect("the check reads the store")
        }
    };
    let breaking = check(Article::V2Breaking).await;
    assert_eq!(breaking.runs.len(), 5, "{breaking:#?}");
    assert!(breaking.breaks());
    let mut failing: Vec<&str> = breaking
        .runs
        .iter()
        .filter(|r| r.breaks())
        .map(|r| r.run_id.as_str())
        .collect();
    failing.sort();
    let mut expected: Vec<&str> = past.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(failing, expected, "{breaking:#?}");
    for run in breaking.runs.iter().filter(|r| r.breaks()) {
        match &run.verdict {
            Verdict::WouldFail {
                step_id, reason, ..
            } => {
                assert_eq!(step_id.as_deref(), Some("publish"), "{run:?}");
                assert_eq!(*reason, baton::engine::Incompatibility::Order, "{run:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    let patched = check(Article::V2Patched).await;
    assert!(!patched.breaks(), "{patched:#?}");
    assert_eq!(patched.compatible(), 5);
    for run in &patched.runs {
        let old = past.contains(&run.run_id);
        assert_eq!(run.old_branches == ["@review"], old, "{run:?}");
    }

    let retyped = check(Article::V2Retyped).await;
    assert_eq!(retyped.would_fail(), 5, "{retyped:#?}");
    for run in &retyped.runs {
        match &run.verdict {
            Verdict::WouldFail {
                step_id,
                reason,
                error,
            } => {
                assert_eq!(step_id.as_deref(), Some("fetch"), "{run:?}");
                assert_eq!(*reason, baton::engine::Incompatibility::OutputType);
                assert_eq!(error.name, "OutputTypeMismatch");
            }
            other => panic!("{other:?}"),
        }
    }

    // A run of a function the new code lacks.
    let legacy_run = stack.send(&engine, LEGACY_EVENT, json!({})).await;
    let legacy_run = run_id_for(&legacy_run, LEGACY);
    let without_legacy = stack
        .engine(
            Registry::new()
                .register(article(Article::V2Patched, &bodies))
                .unwrap(),
            hours(3),
        )
        .deploy_check()
        .await
        .unwrap();
    assert_eq!(without_legacy.removed(), 1, "{without_legacy:#?}");
    assert!(without_legacy.breaks());
    let removed = without_legacy
        .runs
        .iter()
        .find(|r| r.verdict == Verdict::FunctionRemoved)
        .unwrap();
    assert_eq!(removed.run_id, legacy_run);

    // Nothing was written: the journals are as they were, and no body ran.
    for (id, journal) in ids.iter().zip(&journals) {
        assert_eq!(&stack.journal(id).await, journal, "run {id}");
    }
    assert_eq!(bodies.count("review"), 0);
    assert_eq!(bodies.count("fetch"), 5);
}

/// A function v2 removes: its sleeping runs end with `FunctionRemoved` (one through a message
/// that reaches it, one through the sweeper), the failure event reaches the clean-up v2 kept,
/// and nothing is left in flight.
pub async fn removed_function_runs_end_and_their_cleanup_runs(store: Arc<dyn Store>) {
    let bodies = Bodies::default();
    let mut stack = Stack::new(store);
    let v1 = Registry::new().register(legacy(&bodies)).unwrap();
    let engine = stack.engine(v1, hours(0));
    let first = run_id_for(&stack.send(&engine, LEGACY_EVENT, json!({})).await, LEGACY);
    let second = run_id_for(&stack.send(&engine, LEGACY_EVENT, json!({})).await, LEGACY);
    let v2 = || {
        Registry::new()
            .register(legacy_cleanup(&bodies))
            .unwrap()
            .register(chain(&bodies))
            .unwrap()
    };
    // A sweeper that does not know the function leaves its runs alone while they move (as
    // one still on old code does during a rolling deploy that adds the function).
    let rolling = stack.engine(v2(), Duration::from_secs(60));
    assert_eq!(
        rolling.sweep(Some(Duration::from_secs(900))).await.unwrap(),
        0
    );
    assert_eq!(stack.run(&first).await.status, RunStatus::Running);
    // A message for the first run reaches v2's handler (its wake-up, say).
    let engine = stack.engine(v2(), hours(2));
    let wake = Message {
        run_id: first.clone(),
        function_id: LEGACY.into(),
        kind: MessageKind::Wake {
            step_id: "wait".into(),
        },
        not_before: None,
    };
    engine.handle(wake).await.expect("the handler ends");
    stack.drain(&engine).await;
    // The second has no message left (its queue went with the function): the sweeper ends it.
    let engine = stack.deploy(v2(), hours(2)).await;
    for run_id in [&first, &second] {
        let run = stack.run(run_id).await;
        assert_eq!(run.status, RunStatus::Failed, "{run:?}");
        assert_eq!(
            run.error.as_ref().unwrap().name,
            "FunctionRemoved",
            "{run:?}"
        );
    }
    assert_eq!(bodies.count("two"), 0);
    assert_eq!(bodies.count("clean-up"), 2, "the clean-up ran once per run");
    // Nothing loops: another sweep finds nothing to do.
    assert_eq!(engine.sweep(None).await.unwrap(), 0);
    stack.drain(&engine).await;
    assert_eq!(bodies.count("clean-up"), 2);
}

/// A run failed at its third step (a bug); restarted from that step once fixed: steps 1 and 2
/// keep their recorded outputs (their bodies do not run), 3 and 4 run.
pub async fn restart_from_the_third_step_reruns_it_and_no_earlier_step(store: Arc<dyn Store>) {
    let bodies = Bodies::default();
    let mut stack = Stack::new(store);
    let engine = stack.engine(Registry::new().register(chain(&bodies)).unwrap(), hours(0));
    let failed = run_id_for(&stack.send(&engine, CHAIN_EVENT, json!({})).await, CHAIN);
    let run = stack.run(&failed).await;
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");

    let restarted = engine.replay_from(&failed, "s3", None).await.unwrap();
    stack.drain(&engine).await;
    let run = stack.run(&restarted).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.output, Some(json!(["s1#1", "s2#1", "s3#2", "s4#1"])));
    assert_eq!(run.replay_of.as_deref(), Some(failed.as_str()));
    assert_eq!(run.replay_from.as_deref(), Some("s3"));
    let summary = run.summary(false);
    assert_eq!(summary.replay_from.as_deref(), Some("s3"));
    for (name, runs) in [("s1", 1), ("s2", 1), ("s3", 2), ("s4", 1)] {
        assert_eq!(bodies.count(name), runs, "{name}");
    }
    // The listing reads where it came from too.
    let listed = stack
        .store
        .list_runs(&baton::model::RunQuery {
            function_id: Some(CHAIN.into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let row = listed.runs.iter().find(|r| r.run_id == restarted).unwrap();
    assert_eq!(row.replay_from.as_deref(), Some("s3"));

    // A step the run does not have, and the same restart with a key twice.
    match engine.replay_from(&failed, "s9", None).await {
        Err(EngineError::NotFound(message)) => assert!(message.contains("s9"), "{message}"),
        other => panic!("{other:?}"),
    }
    let a = engine
        .replay_from(&failed, "s2", Some("k-1"))
        .await
        .unwrap();
    let b = engine
        .replay_from(&failed, "s2", Some("k-1"))
        .await
        .unwrap();
    assert_eq!(a, b, "a retried request starts one run");
    stack.drain(&engine).await;
    let run = stack.run(&a).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.output, Some(json!(["s1#1", "s2#2", "s3#3", "s4#2"])));
    assert_eq!(bodies.count("s1"), 1, "no restart ran step 1 again");
}
