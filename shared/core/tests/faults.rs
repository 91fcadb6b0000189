//! Fault-injection properties of the engine, over many seeds.
//!
//! Each seed builds a fresh engine on a [`MemoryStore`] wrapped in a [`ChaosStore`] and a
//! [`ChaosQueue`], sends one event per test function (retrying sends that fail, with the
//! same event ids), drives every run to its end with the [`Driver`] (crashes before and after
//! every store and queue operation, duplicated, reordered and delayed messages, and for some
//! seeds concurrent handlers interleaving at store operations), then checks:
//!
//! - no run lost: every event's runs exist and every run ended (Completed, or Failed where
//!   the function is designed to fail), and no unexpected run exists;
//! - no recorded step output overwritten (the [`ChaosStore`] watch, plus the final journal
//!   compared with the first recorded outcomes);
//! - every run's output is the value computed from its input;
//! - a step body runs only while its output is not recorded (each body checks the inner,
//!   fault-free store's journal).
//!
//! `BATON_FAULT_SEEDS=N` runs N seeds (default 1000); `BATON_FAULT_SEED=k` replays one seed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::engine::run_id_for;
use baton::model::{RunQuery, RunRecord, RunSummary, StepOutcome, StepRecord};
use baton::store::memory::MemoryStore;
use baton::{
    Ctx, Engine, EngineConfig, Event, FailureData, Function, Invoke, NewEvent, Registry, RunStatus,
    Step, StepCtx, StepError, StepStatus, Store, Wait,
};
use baton_sqlite::SqliteStore;
use baton_testkit::chaos::{
    ChaosQueue, ChaosStore, DriveReport, Driver, DriverConfig, FaultConfig,
};
use baton_testkit::chaos::{FaultStats, Faults};
use serde::Deserialize;
use serde_json::{Value, json};

// ---- the functions under test ----

#[derive(Debug, Clone, Deserialize)]
struct Input {
    n: u64,
}

/// Watches step bodies: each one checks, on the fault-free inner store, that its step is not
/// final yet.
#[derive(Clone)]
struct Probe {
    inner: Arc<dyn Store>,
    violations: Arc<Mutex<Vec<String>>>,
    bodies: Arc<AtomicU64>,
    /// Runs of `limited` between their `enter` and `leave` steps: never more than one.
    occupants: Arc<Mutex<std::collections::BTreeSet<String>>>,
}

impl Probe {
    fn new(inner: Arc<dyn Store>) -> Self {
        Probe {
            inner,
            violations: Arc::default(),
            bodies: Arc::default(),
            occupants: Arc::default(),
        }
    }

    async fn body(&self, s: &StepCtx) {
        self.bodies.fetch_add(1, Ordering::Relaxed);
        let journal = self.inner.journal(&s.run_id).await.expect("inner store");
        let problem = match journal.iter().find(|step| step.step_id == s.step_id) {
            None => Some("is not in the journal".to_string()),
            Some(step) if step.status.is_final() => Some(format!(
                "is already {:?} (output {:?}, error {:?})",
                step.status, step.output, step.error
            )),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            self.violations.lock().unwrap().push(format!(
                "body of step {}/{} (attempt {}) ran but the step {problem}",
                s.run_id, s.step_id, s.attempt
            ));
        }
    }

    /// A run of `limited` enters (true) or leaves its critical section.
    fn occupy(&self, run_id: &str, enter: bool) {
        let mut occupants = self.occupants.lock().unwrap();
        if enter {
            occupants.insert(run_id.to_string());
            if occupants.len() > 1 {
                let list: Vec<_> = occupants.iter().cloned().collect();
                self.violations
                    .lock()
                    .unwrap()
                    .push(format!("concurrency limit 1 broken: {list:?} run at once"));
            }
        } else {
            occupants.remove(run_id);
        }
    }

    fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }
}

const PIPELINE_SLEEP: Duration = Duration::from_secs(1000);
/// Longer than the queue's longest delay (15 min), so a wait's timeout hops, and far longer
/// than any run needs with the driver's delays: these waits never time out.
const WAIT_TIMEOUT: Duration = Duration::from_secs(3 * 3600);
const FAN: u64 = 3;

fn registry(probe: &Probe) -> Registry {
    let p = probe.clone();
    // Sequential steps and a sleep longer than the queue's longest delay (15 min).
    let pipeline = Function::new("pipeline")
        .trigger("t/pipeline")
        .step(Step::new("double"))
        .step(Step::new("inc"))
        .step(Step::new("square"))
        .handler(move |ctx: Ctx, ev: Event<Input>| {
            let p = p.clone();
            async move {
                let n = ev.data.n;
                let pd = p.clone();
                let d: u64 = ctx
                    .step(Step::new("double"), |s| async move {
                        pd.body(&s).await;
                        Ok(n * 2)
                    })
                    .await?;
                let pi = p.clone();
                let i: u64 = ctx
                    .step(Step::new("inc"), |s| async move {
                        pi.body(&s).await;
                        Ok(d + 1)
                    })
                    .await?;
                ctx.progress(50, "halfway");
                // A patch marker (journaled, its answer fixed): every run starts under this
                // code, so every run must get true, however its handlers crash and race.
                if !ctx.patched("nap").await {
                    return Err(baton::Error::msg(
                        "patch marker answered false for a new run",
                    ));
                }
                ctx.sleep("nap", PIPELINE_SLEEP).await?;
                let ps = p.clone();
                ctx.step(Step::new("square"), |s| async move {
                    ps.body(&s).await;
                    Ok(i * i)
                })
                .await
            }
        });

    // Parallel steps joined, then one more.
    let p = probe.clone();
    let fanout = Function::new("fanout")
        .trigger("t/fanout")
        .step(Step::new("part"))
        .step(Step::new("sum"))
        .handler(move |ctx: Ctx, ev: Event<Input>| {
            let p = p.clone();
            async move {
                let n = ev.data.n;
                let parts = futures::future::join_all((0..FAN).map(|i| {
                    let (ctx, p) = (ctx.clone(), p.clone());
                    async move {
                        ctx.step(Step::new("part"), move |s| async move {
                            p.body(&s).await;
                            Ok((i + 1) * n)
                        })
                        .await
                    }
                }))
                .await;
                let parts: Vec<u64> = parts.into_iter().collect::<Result<_, _>>()?;
                let ps = p.clone();
                ctx.step(Step::new("sum"), move |s| async move {
                    ps.body(&s).await;
                    Ok(parts.iter().sum::<u64>())
                })
                .await
            }
        });

    // Fails retriably on attempts 1 and 2, succeeds on 3.
    let p = probe.clone();
    let flaky = Function::new("flaky")
        .trigger("t/flaky")
        .step(Step::new("call").retries(3))
        .handler(move |ctx: Ctx, ev: Event<Input>| {
            let p = p.clone();
            async move {
                let n = ev.data.n;
                ctx.step(Step::new("call"), |s| async move {
                    p.body(&s).await;
                    if s.attempt < 3 {
                        Err(StepError::retriable(format!("flaky {}", s.attempt)))
                    } else {
                        Ok(n * 10 + u64::from(s.attempt))
                    }
                })
                .await
            }
        });

    // Exhausts its retries; the code handles the failure with another step.
    let p = probe.clone();
    let fallback = Function::new("fallback")
        .trigger("t/fallback")
        .step(Step::new("primary").retries(1))
        .step(Step::new("secondary"))
        .handler(move |ctx: Ctx, ev: Event<Input>| {
            let p = p.clone();
            async move {
                let n = ev.data.n;
                let pp = p.clone();
                let primary: Result<u64, baton::Error> = ctx
                    .step(Step::new("primary"), |s| async move {
                        pp.body(&s).await;
                        Err(StepError::retriable(format!("down {}", s.attempt)))
                    })
                    .await;
                match primary {
                    Ok(v) => Ok(format!("primary {v}")),
                    Err(e) if e.is_step_failure() => {
                        ctx.step(Step::new("secondary"), |s| async move {
                            p.body(&s).await;
                            Ok(format!("fallback {n}: {}", e.message))
                        })
                        .await
                    }
                    Err(e) => Err(e),
                }
            }
        });

    // Fails for good; its failure handler runs a step.
    let p = probe.clone();
    let pf = probe.clone();
    let strict = Function::new("strict")
        .trigger("t/strict")
        .step(Step::new("check").retries(5))
        .failure_step(Step::new("note"))
        .handler(move |ctx: Ctx, ev: Event<Input>| {
            let p = p.clone();
            async move {
                let n = ev.data.n;
                ctx.step(Step::new("check"), |s| async move {
                    p.body(&s).await;
                    Err::<(), _>(StepError::non_retriable(format!("bad input {n}")))
                })
                .await
            }
        })
        .on_failure(move |ctx: Ctx, ev: Event<FailureData>| {
            let p = pf.clone();
            async move {
                let msg = ev.data.error.message.clone();
                ctx.step(Step::new("note"), |s| async move {
                    p.body(&s).await;
                    Ok(format!("handled: {msg}"))
                })
                .await
            }
        });

    // Sends an event that starts `child`, then runs a step.
    let p = probe.clone();
    let parent = Function::new("parent")
        .trigger("t/parent")
        .step(Step::new("after"))
        .handler(move |ctx: Ctx, ev: Event<Input>| {
            let p = p.clone();
            async move {
                let n = ev.data.n;
                let ids = ctx
                    .send_event("notify", vec![NewEvent::new("t/child", json!({"n": n}))])
                    .await?;
                let after: u64 = ctx
                    .step(Step::new("after"), |s| async move {
                        p.body(&s).await;
                        Ok(n + 1)
                    })
                    .await?;
                Ok(json!({"sent": ids, "after": after}))
            }
        });
    let p = probe.clone();
    let child = Function::new("child")
        .trigger("t/child")
        .step(Step::new("triple"))
        .handler(move |ctx: Ctx, ev: Event<Input>| {
            let p = p.clone();
            async move {
                let n = ev.data.n;
                ctx.step(Step::new("triple"), |s| async move {
                    p.body(&s).await;
                    Ok(n * 3)
                })
                .await
            }
        });

    // One step three times in a row: on one queue, so a handler with a deadline runs the
    // next link itself (inline) instead of sending its message. The second link fails its
    // first attempt: a retry of a step started inline (with no entry of its own).
    let p = probe.clone();
    let chain = Function::new("chain")
        .trigger("t/chain")
        .step(Step::new("link"))
        .handler(move |ctx: Ctx, ev: Event<Input>| {
            let p = p.clone();
            async move {
                let mut value = ev.data.n;
                for i in 1..=3u64 {
                    let p = p.clone();
                    value = ctx
                        .step(Step::new("link"), move |s| async move {
                            p.body(&s).await;
                            if i == 2 && s.attempt == 1 {
                                return Err(StepError::retriable("the second link fails once"));
                            }
                            Ok(value + i)
                        })
                        .await?;
                }
                Ok(value)
            }
        });

    // Waits: an event sent before the wait is registered (the race of Inngest #1433), one
    // that never comes (the timeout), and a child function invoked and awaited.
    const REPLY: Wait = Wait::new("reply", "t/reply")
        .on("data.token")
        .timeout(WAIT_TIMEOUT);
    const NEVER: Wait = Wait::new("never", "t/reply")
        .on("data.token")
        .timeout(Duration::from_secs(60));
    const TRIPLE_IT: Invoke<Value, u64> = Invoke::new("triple-it", "child").timeout(WAIT_TIMEOUT);
    let p = probe.clone();
    let waiter = Function::new("waiter")
        .trigger("t/waiter")
        .step(Step::new("token"))
        .wait(REPLY)
        .invokes(TRIPLE_IT)
        .handler(move |ctx: Ctx, ev: Event<Input>| {
            let p = p.clone();
            async move {
                let n = ev.data.n;
                let token: String = ctx
                    .step(Step::new("token"), |s| async move {
                        p.body(&s).await;
                        Ok(format!("tok-{}", s.run_id))
                    })
                    .await?;
                ctx.send_event(
                    "reply-early",
                    vec![NewEvent::new(
                        "t/reply",
                        json!({"token": token, "v": n * 7}),
                    )],
                )
                .await?;
                let reply = ctx.wait_for_event(REPLY, &token).await?;
                let missing = ctx.wait_for_event(NEVER, format!("{token}-never")).await?;
                let tripled = ctx.invoke(TRIPLE_IT, &json!({"n": n})).await?;
                Ok(json!({
                    "reply": reply.map(|e| e.data["v"].clone()),
                    "missing": missing.is_some(),
                    "tripled": tripled,
                }))
            }
        });

    // At most one run at a time: each holds the slot across a sleep.
    let p = probe.clone();
    let limited = Function::new("limited")
        .trigger("t/limited")
        .concurrency(1, None)
        .step(Step::new("enter"))
        .step(Step::new("leave"))
        .handler(move |ctx: Ctx, ev: Event<Input>| {
            let p = p.clone();
            async move {
                let n = ev.data.n;
                let pe = p.clone();
                ctx.step(Step::new("enter"), |s| async move {
                    pe.body(&s).await;
                    pe.occupy(&s.run_id, true);
                    Ok(())
                })
                .await?;
                ctx.sleep("hold", Duration::from_secs(100)).await?;
                ctx.step(Step::new("leave"), |s| async move {
                    p.body(&s).await;
                    p.occupy(&s.run_id, false);
                    Ok(n)
                })
                .await
            }
        });

    [
        pipeline, fanout, flaky, fallback, strict, parent, child, chain, waiter, limited,
    ]
    .into_iter()
    .try_fold(Registry::new(), Registry::register)
    .expect("valid functions")
}

/// The trigger events of one seed: (function, event name, n). Odd seeds send two of each.
fn inputs(seed: u64) -> Vec<(&'static str, &'static str, u64)> {
    let n = |k: u64| (seed.wrapping_mul(7919).wrapping_add(k * 104_729)) % 1000;
    let one = [
        ("pipeline", "t/pipeline"),
        ("fanout", "t/fanout"),
        ("flaky", "t/flaky"),
        ("fallback", "t/fallback"),
        ("strict", "t/strict"),
        ("parent", "t/parent"),
        ("chain", "t/chain"),
        ("waiter", "t/waiter"),
        ("limited", "t/limited"),
        ("limited", "t/limited"),
    ];
    let copies = 1 + seed % 2;
    (0..copies)
        .flat_map(|c| one.iter().map(move |&(f, e)| (f, e, c)))
        .enumerate()
        .map(|(k, (f, e, _))| (f, e, n(k as u64)))
        .collect()
}

// ---- one seed ----

/// The store under the chaos wrapper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Memory,
    Sqlite,
    /// A deliberately broken store (see [`Overwriting`]): the properties must catch it.
    Overwriting,
}

/// How a seed is run.
#[derive(Debug, Clone)]
struct Scenario {
    backend: Backend,
    faults: FaultConfig,
    driver: DriverConfig,
    /// Send all events in one request (else one request per event).
    batch: bool,
}

/// The mix of the property test: fault rates from half to three times the default, half of
/// the seeds with 2 or 4 concurrent handlers interleaving at store operations, a fifth with
/// sweeps racing live messages, an eighth sending all events in one request.
fn scenario(seed: u64) -> Scenario {
    let factor = [0.5, 1.0, 2.0, 3.0][(seed % 4) as usize];
    let concurrency = [1, 1, 2, 4][((seed / 4) % 4) as usize];
    let mut faults = FaultConfig::default().scaled(factor);
    if concurrency > 1 {
        faults.interleave = 0.3;
    }
    Scenario {
        backend: Backend::Memory,
        faults,
        driver: DriverConfig {
            concurrency,
            stray_sweeps: if seed % 5 == 0 { 0.03 } else { 0.0 },
            ..DriverConfig::default()
        },
        batch: seed % 8 == 0,
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
struct SeedStats {
    report: DriveReport,
    faults: FaultStats,
    bodies: u64,
    send_retries: u64,
    /// Every run's (function, status, output), sorted: compared across replays of a seed.
    outcomes: Vec<(String, RunStatus, Option<Value>)>,
}

/// Runs one seed on its own paused current-thread runtime. Err lists every broken property.
fn run_seed(seed: u64, scenario: &Scenario) -> Result<SeedStats, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(seed_body(seed, scenario))
}

async fn seed_body(seed: u64, scenario: &Scenario) -> Result<SeedStats, String> {
    let faults = Faults::new(seed, scenario.faults.clone());
    let inner: Arc<dyn Store> = match scenario.backend {
        Backend::Memory => Arc::new(MemoryStore::new()),
        Backend::Sqlite => Arc::new(SqliteStore::in_memory().expect("in-memory sqlite")),
        Backend::Overwriting => Arc::new(Overwriting::default()),
    };
    let store = Arc::new(ChaosStore::new(inner.clone(), faults.clone()));
    let queue = ChaosQueue::new(faults.clone());
    let probe = Probe::new(inner.clone());
    let engine = Engine::new(
        registry(&probe),
        store.clone(),
        Arc::new(queue.clone()),
        // Ids and times as in every replay of this seed (ids sort where order matters).
        EngineConfig {
            id_seed: Some(seed),
            clock_start: Some(chrono::DateTime::from_timestamp(1_790_000_000, 0).expect("a time")),
            ..EngineConfig::default()
        },
    );

    // Send the events as a client would: a failed request is sent again, same ids.
    let inputs = inputs(seed);
    let events: Vec<NewEvent> = inputs
        .iter()
        .enumerate()
        .map(|(i, (f, name, n))| {
            NewEvent::new(*name, json!({"n": n})).with_id(format!("{f}-{seed}-{i}"))
        })
        .collect();
    let requests: Vec<Vec<NewEvent>> = if scenario.batch {
        vec![events]
    } else {
        events.into_iter().map(|e| vec![e]).collect()
    };
    let mut event_ids = Vec::new();
    let mut send_retries = 0;
    for request in requests {
        let mut tries = 0;
        loop {
            match engine.send_events(request.clone()).await {
                Ok(ids) => {
                    event_ids.extend(ids);
                    break;
                }
                Err(e) => {
                    assert!(
                        matches!(
                            e,
                            baton::EngineError::Store(_) | baton::EngineError::Queue(_)
                        ),
                        "seed {seed}: unexpected send error {e}"
                    );
                    send_retries += 1;
                    tries += 1;
                    // A client keeps trying; past this, let it through.
                    if tries == 50 {
                        faults.set_enabled(false);
                    }
                }
            }
        }
    }
    faults.set_enabled(true);

    let driver = Driver::new(
        engine.clone(),
        queue,
        faults.clone(),
        scenario.driver.clone(),
    );
    let report = driver.run().await;

    let mut problems = Vec::new();
    for message in &report.hung {
        problems.push(format!(
            "a handler invocation never returned (abandoned after {:?}): {message:?}",
            scenario.driver.handler_timeout
        ));
    }
    if report.exhausted || !report.unfinished.is_empty() {
        problems.push(format!(
            "did not finish: exhausted={}, unfinished runs {:?}",
            report.exhausted, report.unfinished
        ));
    }
    problems.extend(store.violations());
    problems.extend(probe.violations());
    let outcomes = check_runs(inner.as_ref(), &store, &inputs, &event_ids, &mut problems).await;

    let stats = SeedStats {
        report,
        faults: faults.stats(),
        bodies: probe.bodies.load(Ordering::Relaxed),
        send_retries,
        outcomes,
    };
    if problems.is_empty() {
        Ok(stats)
    } else {
        Err(format!(
            "{}\n  drive: {:?}\n  faults: crashes={} store_before={} store_after={} queue_before={} queue_partial={} queue_after={}",
            problems.join("\n  "),
            stats.report,
            stats.faults.crashes(),
            stats.faults.store_before,
            stats.faults.store_after,
            stats.faults.queue_before,
            stats.faults.queue_partial,
            stats.faults.queue_after,
        ))
    }
}

async fn all_runs(store: &dyn Store) -> Vec<RunRecord> {
    let mut runs = Vec::new();
    let mut query = RunQuery {
        limit: 1000,
        ..RunQuery::default()
    };
    loop {
        let page = store.list_runs(&query).await.unwrap();
        assert!(page.unreadable.is_empty(), "{:?}", page.unreadable);
        for listed in page.runs {
            runs.push(
                store
                    .get_run(&listed.run_id)
                    .await
                    .unwrap()
                    .expect("a listed run"),
            );
        }
        match page.cursor {
            Some(c) => query.cursor = Some(c),
            None => return runs,
        }
    }
}

/// The run must exist with `status` and pass `check`; returns it if it exists.
fn expect(
    by_id: &HashMap<&str, &RunRecord>,
    problems: &mut Vec<String>,
    run_id: &str,
    what: &str,
    status: RunStatus,
    check: &dyn Fn(&RunRecord) -> Result<(), String>,
) -> Option<RunRecord> {
    let Some(run) = by_id.get(run_id) else {
        problems.push(format!("run lost: {what} (run {run_id}) does not exist"));
        return None;
    };
    if run.status != status {
        problems.push(format!(
            "{what} (run {run_id}) is {:?}, expected {status:?}: output {:?} error {:?}",
            run.status, run.output, run.error
        ));
    } else if let Err(e) = check(run) {
        problems.push(format!("{what} (run {run_id}): {e}"));
    }
    Some((*run).clone())
}

/// Checks every run against what its input says it must be. Returns the outcomes.
async fn check_runs(
    inner: &dyn Store,
    store: &ChaosStore<dyn Store>,
    inputs: &[(&'static str, &'static str, u64)],
    event_ids: &[String],
    problems: &mut Vec<String>,
) -> Vec<(String, RunStatus, Option<Value>)> {
    let runs = all_runs(inner).await;
    let by_id: HashMap<&str, &RunRecord> = runs.iter().map(|r| (r.run_id.as_str(), r)).collect();
    let mut journals: HashMap<String, Vec<StepRecord>> = HashMap::new();
    for run in &runs {
        journals.insert(
            run.run_id.clone(),
            inner.journal(&run.run_id).await.unwrap(),
        );
        if !run.status.is_terminal() {
            problems.push(format!(
                "run {} of {} never ended ({:?})",
                run.run_id, run.function_id, run.status
            ));
        }
    }

    // The final journal against the first recorded outcomes, both ways.
    for journal in journals.values() {
        problems.extend(store.check_journal(journal));
    }
    for ((run_id, step_id), outcome) in store.recorded() {
        let step = journals
            .get(&run_id)
            .and_then(|j| j.iter().find(|s| s.step_id == step_id));
        if !step.is_some_and(|s| s.status.is_final()) {
            problems.push(format!(
                "step {run_id}/{step_id} was recorded as {outcome:?} but is not final in the journal: {step:?}"
            ));
        }
    }

    let steps_of = |run_id: &str| -> Vec<(String, StepStatus, u32)> {
        journals
            .get(run_id)
            .map(|j| {
                j.iter()
                    .map(|s| (s.step_id.clone(), s.status, s.attempts))
                    .collect()
            })
            .unwrap_or_default()
    };
    let eq = |got: &Option<Value>, want: Value| -> Result<(), String> {
        if got.as_ref() == Some(&want) {
            Ok(())
        } else {
            Err(format!("output {got:?}, expected {want}"))
        }
    };

    if event_ids.len() != inputs.len() {
        problems.push(format!(
            "{} event ids for {} events",
            event_ids.len(),
            inputs.len()
        ));
        return Vec::new();
    }
    let mut expected_runs: BTreeMap<&str, usize> = BTreeMap::new();
    for ((function, _, n), event_id) in inputs.iter().zip(event_ids) {
        let n = *n;
        let run_id = run_id_for(event_id, function);
        *expected_runs.entry(function).or_default() += 1;
        match *function {
            "pipeline" => {
                expect(
                    &by_id,
                    problems,
                    &run_id,
                    "pipeline",
                    RunStatus::Completed,
                    &|r| {
                        let progress = r.progress.as_ref().map(|p| (p.percent, p.message.as_str()));
                        if progress != Some((50, "halfway")) {
                            return Err(format!("progress {:?}", r.progress));
                        }
                        eq(&r.output, json!((2 * n + 1) * (2 * n + 1)))
                    },
                );
                let steps = steps_of(&run_id);
                let marker = journals
                    .get(&run_id)
                    .and_then(|j| j.iter().find(|s| s.step_id == "@nap"))
                    .map(|s| s.output.clone());
                if marker != Some(Some(json!(true))) {
                    problems.push(format!("pipeline patch marker: {marker:?}"));
                }
                let ids: Vec<&str> = steps
                    .iter()
                    .map(|s| s.0.as_str())
                    .filter(|id| *id != "@nap")
                    .collect();
                if ids != ["double", "inc", "nap", "square"]
                    || steps.iter().any(|s| s.1 != StepStatus::Completed)
                {
                    problems.push(format!("pipeline journal: {steps:?}"));
                }
            }
            "chain" => {
                expect(
                    &by_id,
                    problems,
                    &run_id,
                    "chain",
                    RunStatus::Completed,
                    &|r| eq(&r.output, json!(n + 6)),
                );
                let steps = steps_of(&run_id);
                let ids: Vec<&str> = steps.iter().map(|s| s.0.as_str()).collect();
                let attempts: Vec<u32> = steps.iter().map(|s| s.2).collect();
                if ids != ["link", "link:1", "link:2"]
                    || steps.iter().any(|s| s.1 != StepStatus::Completed)
                    || attempts != [1, 2, 1]
                {
                    problems.push(format!("chain journal: {steps:?}"));
                }
            }
            "fanout" => {
                expect(
                    &by_id,
                    problems,
                    &run_id,
                    "fanout",
                    RunStatus::Completed,
                    &|r| eq(&r.output, json!(6 * n)),
                );
                let steps = steps_of(&run_id);
                let ids: Vec<&str> = steps.iter().map(|s| s.0.as_str()).collect();
                if ids != ["0/part", "1/part", "2/part", "sum"]
                    || steps.iter().any(|s| s.1 != StepStatus::Completed)
                {
                    problems.push(format!("fanout journal: {steps:?}"));
                }
            }
            "flaky" => {
                expect(
                    &by_id,
                    problems,
                    &run_id,
                    "flaky",
                    RunStatus::Completed,
                    &|r| eq(&r.output, json!(10 * n + 3)),
                );
                let steps = steps_of(&run_id);
                if steps != [("call".to_string(), StepStatus::Completed, 3)] {
                    problems.push(format!("flaky journal: {steps:?}"));
                }
            }
            "strict" => {
                let run = expect(
                    &by_id,
                    problems,
                    &run_id,
                    "strict",
                    RunStatus::Failed,
                    &|r| {
                        let e = r.error.clone().unwrap_or_else(|| {
                            baton::model::ErrorInfo::new("<none>", "<no error recorded>")
                        });
                        if e.name == "NonRetriableError" && e.message == format!("bad input {n}") {
                            Ok(())
                        } else {
                            Err(format!("error {e:?}"))
                        }
                    },
                );
                let steps = steps_of(&run_id);
                if steps != [("check".to_string(), StepStatus::Failed, 1)] {
                    problems.push(format!("strict journal: {steps:?}"));
                }
                // Exactly one failure-handler run, on this run's failure.
                *expected_runs.entry("strict-failure").or_default() += 1;
                let handlers: Vec<&RunRecord> = runs
                    .iter()
                    .filter(|r| {
                        r.function_id == "strict-failure" && r.event.data["run_id"] == json!(run_id)
                    })
                    .collect();
                match (run, handlers.as_slice()) {
                    (Some(_), [handler]) => {
                        expect(
                            &by_id,
                            problems,
                            &handler.run_id,
                            "strict-failure",
                            RunStatus::Completed,
                            &|r| eq(&r.output, json!(format!("handled: bad input {n}"))),
                        );
                    }
                    (_, handlers) => problems.push(format!(
                        "{} failure-handler runs for {run_id}, expected 1",
                        handlers.len()
                    )),
                }
            }
            "fallback" => {
                expect(
                    &by_id,
                    problems,
                    &run_id,
                    "fallback",
                    RunStatus::Completed,
                    &|r| eq(&r.output, json!(format!("fallback {n}: down 2"))),
                );
                let steps = steps_of(&run_id);
                let want = [
                    ("primary".to_string(), StepStatus::Failed, 2),
                    ("secondary".to_string(), StepStatus::Completed, 1),
                ];
                if steps != want {
                    problems.push(format!("fallback journal: {steps:?}"));
                }
            }
            "parent" => {
                let run = expect(
                    &by_id,
                    problems,
                    &run_id,
                    "parent",
                    RunStatus::Completed,
                    &|r| {
                        let out = r.output.clone().unwrap_or_default();
                        if out["after"] == json!(n + 1)
                            && out["sent"].as_array().map(Vec::len) == Some(1)
                        {
                            Ok(())
                        } else {
                            Err(format!("output {out}"))
                        }
                    },
                );
                *expected_runs.entry("child").or_default() += 1;
                let child_event = run
                    .and_then(|r| r.output)
                    .and_then(|o| o["sent"][0].as_str().map(str::to_string));
                if let Some(child_event) = child_event {
                    let child_run = run_id_for(&child_event, "child");
                    expect(
                        &by_id,
                        problems,
                        &child_run,
                        "child",
                        RunStatus::Completed,
                        &|r| eq(&r.output, json!(3 * n)),
                    );
                    let for_event = inner.runs_for_event(&child_event).await.unwrap();
                    if for_event.len() != 1 {
                        problems.push(format!(
                            "child event {child_event} started {} runs",
                            for_event.len()
                        ));
                    }
                }
            }
            "waiter" => {
                expect(
                    &by_id,
                    problems,
                    &run_id,
                    "waiter",
                    RunStatus::Completed,
                    &|r| {
                        eq(
                            &r.output,
                            json!({"reply": n * 7, "missing": false, "tripled": 3 * n}),
                        )
                    },
                );
                let steps = steps_of(&run_id);
                let ids: Vec<&str> = steps.iter().map(|s| s.0.as_str()).collect();
                let want = [
                    "token",
                    "reply-early",
                    "reply",
                    "never",
                    "triple-it",
                    "triple-it.finished",
                ];
                if ids != want || steps.iter().any(|s| s.1 != StepStatus::Completed) {
                    problems.push(format!("waiter journal: {steps:?}"));
                }
                // The invoked child is a run of `child`.
                *expected_runs.entry("child").or_default() += 1;
            }
            "limited" => {
                expect(
                    &by_id,
                    problems,
                    &run_id,
                    "limited",
                    RunStatus::Completed,
                    &|r| eq(&r.output, json!(n)),
                );
            }
            other => unreachable!("{other}"),
        }
    }
    // No run beyond those expected (a second failure handler, a second child...).
    let mut actual: BTreeMap<&str, usize> = BTreeMap::new();
    for run in &runs {
        *actual.entry(run.function_id.as_str()).or_default() += 1;
    }
    if actual != expected_runs {
        problems.push(format!(
            "runs per function {actual:?}, expected {expected_runs:?}"
        ));
    }

    // Event ids carry ULID randomness: the outcomes keep only how many were sent.
    let mut outcomes: Vec<_> = runs
        .iter()
        .map(|r| {
            let mut output = r.output.clone();
            if let Some(sent) = output.as_mut().and_then(|o| o.get_mut("sent")) {
                *sent = json!(sent.as_array().map_or(0, Vec::len));
            }
            (r.function_id.clone(), r.status, output)
        })
        .collect();
    outcomes.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    outcomes
}

// ---- running many seeds ----

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

/// The seeds to run: `BATON_FAULT_SEED=k` alone, else `0..BATON_FAULT_SEEDS` (default).
fn seeds(default: u64) -> Vec<u64> {
    match env_u64("BATON_FAULT_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("BATON_FAULT_SEEDS").unwrap_or(default)).collect(),
    }
}

#[derive(Debug, Default)]
struct Totals {
    seeds: u64,
    faults: FaultStats,
    deliveries: u64,
    handler_errors: u64,
    duplicates: u64,
    sweeps: u64,
    sweep_errors: u64,
    stray_sweeps: u64,
    redriven: u64,
    seeds_redriven: u64,
    concurrent_peak: usize,
    bodies: u64,
    send_retries: u64,
    max_deliveries: u64,
    faults_switched_off_early: u64,
}

impl Totals {
    fn add(&mut self, s: &SeedStats) {
        self.seeds += 1;
        self.faults.add(&s.faults);
        self.deliveries += s.report.deliveries;
        self.handler_errors += s.report.handler_errors;
        self.duplicates += s.report.duplicates;
        self.sweeps += u64::from(s.report.sweeps);
        self.sweep_errors += u64::from(s.report.sweep_errors);
        self.stray_sweeps += u64::from(s.report.stray_sweeps);
        self.redriven += s.report.redriven;
        self.seeds_redriven += u64::from(s.report.redriven > 0);
        self.concurrent_peak = self.concurrent_peak.max(s.report.max_in_flight);
        self.bodies += s.bodies;
        self.send_retries += s.send_retries;
        self.max_deliveries = self.max_deliveries.max(s.report.deliveries);
        self.faults_switched_off_early += u64::from(
            s.report
                .faults_off_at
                .is_some_and(|at| at < s.report.deliveries),
        );
    }
}

/// Runs every seed on a few threads; each seed is isolated (its own runtime, panics caught).
fn run_seeds(
    seeds: &[u64],
    scenario: &(dyn Fn(u64) -> Scenario + Sync),
) -> (Totals, Vec<(u64, String)>) {
    run_seeds_with(seeds, scenario, true)
}

/// [`run_seeds`] without printing failures (for tests that expect them).
fn run_seeds_quietly(
    seeds: &[u64],
    scenario: &(dyn Fn(u64) -> Scenario + Sync),
) -> (Totals, Vec<(u64, String)>) {
    run_seeds_with(seeds, scenario, false)
}

fn run_seeds_with(
    seeds: &[u64],
    scenario: &(dyn Fn(u64) -> Scenario + Sync),
    loud: bool,
) -> (Totals, Vec<(u64, String)>) {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(seeds.len().max(1));
    let next = AtomicU64::new(0);
    let totals = Mutex::new(Totals::default());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&seed) = seeds.get(i) else { return };
                    let sc = scenario(seed);
                    let result = std::panic::catch_unwind(|| run_seed(seed, &sc))
                        .unwrap_or_else(|panic| {
                            let msg = panic
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default();
                            Err(format!("panicked: {msg}"))
                        });
                    match result {
                        Ok(stats) => totals.lock().unwrap().add(&stats),
                        Err(e) => {
                            if loud {
                                eprintln!(
                                "FAILED seed {seed} (replay: BATON_FAULT_SEED={seed} cargo test -p baton --test faults): {e}"
                            );
                            }
                            failures.lock().unwrap().push((seed, e));
                        }
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|f| f.0);
    (totals.into_inner().unwrap(), failures)
}

fn assert_no_failures(what: &str, failures: &[(u64, String)]) {
    if failures.is_empty() {
        return;
    }
    let seeds: Vec<u64> = failures.iter().map(|f| f.0).collect();
    let (first, error) = &failures[0];
    panic!(
        "{what}: {} seed(s) failed: {seeds:?}\nfirst failure, seed {first} (replay with BATON_FAULT_SEED={first}):\n  {error}",
        failures.len()
    );
}

// ---- the properties ----

#[test]
fn no_run_lost_no_output_overwritten_every_output_right() {
    let seeds = seeds(1000);
    let started = Instant::now();
    let (totals, failures) = run_seeds(&seeds, &scenario);
    let took = started.elapsed();
    let f = &totals.faults;
    eprintln!(
        "faults: {} seeds ok, {} failed, in {took:.2?}\n  \
         store: {} calls, {} crashes before, {} after; queue: {} sends, {} crashes before, {} partial, {} after\n  \
         driver: {} deliveries (max {} for one seed), {} handler crashes, {} duplicates, {} peak concurrency, \
         {} sweeps when dry re-driving {} runs ({} seeds needed a re-drive), {} mid-flight sweeps, {} sweeps failed\n  \
         {} step bodies run, {} client re-sends, faults switched off early in {} seeds",
        totals.seeds,
        failures.len(),
        f.store_calls,
        f.store_before,
        f.store_after,
        f.queue_sends,
        f.queue_before,
        f.queue_partial,
        f.queue_after,
        totals.deliveries,
        totals.max_deliveries,
        totals.handler_errors,
        totals.duplicates,
        totals.concurrent_peak,
        totals.sweeps,
        totals.redriven,
        totals.seeds_redriven,
        totals.stray_sweeps,
        totals.sweep_errors,
        totals.bodies,
        totals.send_retries,
        totals.faults_switched_off_early,
    );
    assert_no_failures("fault properties", &failures);
}

/// The same properties with the SQLite store under the chaos wrapper (a tenth of the seeds).
/// One handler at a time: SQLite runs on blocking threads, so concurrent handlers would
/// interleave nondeterministically, and a handler could be overtaken between its
/// `begin_attempt` and its body, which the body check (sound only without a yield there)
/// would misreport.
#[test]
fn the_properties_hold_on_sqlite_too() {
    let seeds: Vec<u64> = match env_u64("BATON_FAULT_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("BATON_FAULT_SEEDS").unwrap_or(1000) / 10)
            .map(|k| 1_000_000 + k)
            .collect(),
    };
    let sqlite = |seed: u64| {
        let mut sc = scenario(seed);
        sc.backend = Backend::Sqlite;
        sc.driver.concurrency = 1;
        sc.faults.interleave = 0.0;
        sc
    };
    let started = Instant::now();
    let (totals, failures) = run_seeds(&seeds, &sqlite);
    eprintln!(
        "sqlite: {} seeds ok, {} failed, in {:.2?} ({} crashes injected)",
        totals.seeds,
        failures.len(),
        started.elapsed(),
        totals.faults.crashes()
    );
    assert_no_failures("fault properties on SQLite", &failures);
}

/// The harness really injects every kind of fault, and the properties hold under heavy ones,
/// so the property test cannot pass vacuously.
#[test]
fn the_harness_really_injects_faults() {
    let seeds: Vec<u64> = (10_000..10_040).collect();
    let heavy = |seed: u64| Scenario {
        backend: Backend::Memory,
        faults: FaultConfig::heavy(),
        driver: DriverConfig {
            concurrency: if seed % 2 == 0 { 1 } else { 3 },
            ..DriverConfig::default()
        },
        batch: false,
    };
    let (totals, failures) = run_seeds(&seeds, &heavy);
    assert_no_failures("heavy faults", &failures);
    let f = &totals.faults;
    eprintln!("heavy: {totals:?}");
    assert_eq!(totals.seeds, 40);
    assert!(f.store_before > 100 && f.store_after > 100, "{f:?}");
    assert!(
        f.queue_before > 10 && f.queue_partial > 0 && f.queue_after > 10,
        "{f:?}"
    );
    for op in [
        "claim_idempotency_id",
        "put_event",
        "create_run",
        "get_run",
        "transition_run",
        "journal",
        "get_step",
        "plan_step",
        "begin_attempt",
        "retry_step",
        "finish_step",
        "list_runs",
    ] {
        let s = f.store_ops.get(op).copied().unwrap_or_default();
        assert!(s.before > 0 && s.after > 0, "{op}: {s:?}");
    }
    assert!(f.delayed > 0 && f.yields > 0, "{f:?}");
    assert!(totals.handler_errors > 100, "{totals:?}");
    assert!(totals.duplicates > 100, "{totals:?}");
    // Sweeps run, but redeliveries now re-send what a crash lost, so runs rarely need them.
    assert!(totals.sweeps > 40, "{totals:?}");
    assert!(totals.concurrent_peak >= 2, "{totals:?}");
    assert!(totals.send_retries > 0, "{totals:?}");
}

/// A seed is one history: running it twice gives the same faults, deliveries and outcomes.
#[test]
fn a_seed_replays_identically() {
    for seed in [3u64, 17, 42, 1234, 99_999] {
        for sc in [scenario(seed), {
            let mut sc = scenario(seed);
            sc.driver.concurrency = 3;
            sc.faults.interleave = 0.4;
            sc
        }] {
            let a = run_seed(seed, &sc).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let b = run_seed(seed, &sc).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(a, b, "seed {seed} ({sc:?}) is not reproducible");
        }
    }
}

/// Without crashes (reordering, duplicates, delays and concurrent interleaving only), no
/// message is ever lost, so no run should need the sweeper to finish.
#[test]
fn without_crashes_no_run_needs_the_sweeper() {
    let no_crashes = |seed: u64| {
        let mut faults = FaultConfig::heavy();
        faults.store_before = 0.0;
        faults.store_after = 0.0;
        faults.queue_before = 0.0;
        faults.queue_partial = 0.0;
        faults.queue_after = 0.0;
        Scenario {
            backend: Backend::Memory,
            faults,
            driver: DriverConfig {
                concurrency: [1, 2, 4][(seed % 3) as usize],
                ..DriverConfig::default()
            },
            batch: seed % 2 == 0,
        }
    };
    let seeds: Vec<u64> = (20_000..20_200).collect();
    let (totals, mut failures) = run_seeds(&seeds, &no_crashes);
    assert_eq!(totals.faults.crashes(), 0);
    assert!(totals.duplicates > 0 && totals.concurrent_peak >= 2);
    // Re-run the seeds that passed, to name the ones that needed a re-drive.
    for seed in seeds {
        if failures.iter().any(|f| f.0 == seed) {
            continue;
        }
        let stats = run_seed(seed, &no_crashes(seed)).unwrap();
        if stats.report.redriven > 0 {
            failures.push((
                seed,
                format!(
                    "finished only after the sweeper re-drove {} run(s): a message was lost without any crash. {:?}",
                    stats.report.redriven, stats.report
                ),
            ));
        }
    }
    assert_no_failures("liveness without crashes", &failures);
}

/// A broken store for the negative test: `begin_attempt` always lets the body run and
/// `finish_step` always records, overwriting a final step (the conditions the engine relies
/// on, dropped). Everything else is the memory store.
#[derive(Default)]
struct Overwriting {
    inner: MemoryStore,
    overwritten: Mutex<HashMap<(String, String), StepOutcome>>,
}

impl Overwriting {
    /// Shows the last outcome written, as a store without conditions would have kept it.
    fn overwrite(&self, step: &mut StepRecord) {
        let overwritten = self.overwritten.lock().unwrap();
        match overwritten.get(&(step.run_id.clone(), step.step_id.clone())) {
            Some(StepOutcome::Completed(v)) => {
                step.status = StepStatus::Completed;
                step.output = Some(v.clone());
                step.error = None;
            }
            Some(StepOutcome::Failed(e)) => {
                step.status = StepStatus::Failed;
                step.output = None;
                step.error = Some(e.clone());
            }
            None => {}
        }
    }
}

#[async_trait::async_trait]
impl Store for Overwriting {
    fn backend(&self) -> &'static str {
        "overwriting"
    }
    async fn claim_idempotency_id(
        &self,
        idempotency_id: &str,
        event_id: &str,
        now: chrono::DateTime<chrono::Utc>,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> baton::store::StoreResult<Option<String>> {
        let inner = &self.inner;
        inner
            .claim_idempotency_id(idempotency_id, event_id, now, expires_at)
            .await
    }
    async fn put_event(
        &self,
        event: &baton::model::EventRecord,
    ) -> baton::store::StoreResult<bool> {
        self.inner.put_event(event).await
    }
    async fn get_event(
        &self,
        event_id: &str,
    ) -> baton::store::StoreResult<Option<baton::model::EventRecord>> {
        self.inner.get_event(event_id).await
    }
    async fn create_run(&self, run: &RunRecord) -> baton::store::StoreResult<bool> {
        self.inner.create_run(run).await
    }
    async fn get_run(&self, run_id: &str) -> baton::store::StoreResult<Option<RunRecord>> {
        self.inner.get_run(run_id).await
    }
    async fn transition_run(
        &self,
        run_id: &str,
        t: &baton::model::RunTransition,
    ) -> baton::store::StoreResult<bool> {
        self.inner.transition_run(run_id, t).await
    }
    async fn set_progress(
        &self,
        run_id: &str,
        progress: &baton::model::Progress,
    ) -> baton::store::StoreResult<bool> {
        self.inner.set_progress(run_id, progress).await
    }
    async fn list_runs(
        &self,
        query: &RunQuery,
    ) -> baton::store::StoreResult<baton::model::RunPage> {
        self.inner.list_runs(query).await
    }
    async fn runs_for_event(&self, event_id: &str) -> baton::store::StoreResult<Vec<RunSummary>> {
        self.inner.runs_for_event(event_id).await
    }
    async fn journal(&self, run_id: &str) -> baton::store::StoreResult<Vec<StepRecord>> {
        let mut steps = self.inner.journal(run_id).await?;
        steps.iter_mut().for_each(|s| self.overwrite(s));
        Ok(steps)
    }
    async fn get_step(
        &self,
        run_id: &str,
        step_id: &str,
    ) -> baton::store::StoreResult<Option<StepRecord>> {
        let mut step = self.inner.get_step(run_id, step_id).await?;
        step.iter_mut().for_each(|s| self.overwrite(s));
        Ok(step)
    }
    async fn plan_step(&self, step: &StepRecord) -> baton::store::StoreResult<bool> {
        self.inner.plan_step(step).await
    }
    async fn put_entry(
        &self,
        entry: &baton::model::Entry,
        expect: baton::model::Expect,
        now: chrono::DateTime<chrono::Utc>,
    ) -> baton::store::StoreResult<bool> {
        self.inner.put_entry(entry, expect, now).await
    }
    async fn list_entries(
        &self,
        key: &str,
        prefix: &str,
        now: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> baton::store::StoreResult<Vec<baton::model::Entry>> {
        self.inner.list_entries(key, prefix, now, limit).await
    }
    async fn delete_entry(
        &self,
        key: &str,
        id: &str,
        expect: baton::model::Expect,
        now: chrono::DateTime<chrono::Utc>,
    ) -> baton::store::StoreResult<bool> {
        self.inner.delete_entry(key, id, expect, now).await
    }
    async fn begin_attempt(
        &self,
        step: &StepRecord,
        attempt: u32,
        at: chrono::DateTime<chrono::Utc>,
    ) -> baton::store::StoreResult<bool> {
        self.inner.begin_attempt(step, attempt, at).await?;
        Ok(true)
    }
    async fn record_step(
        &self,
        step: &StepRecord,
        next: &[StepRecord],
    ) -> baton::store::StoreResult<bool> {
        if !self.inner.record_step(step, next).await? {
            let outcome = match step.status {
                StepStatus::Failed => StepOutcome::Failed(step.error.clone().unwrap()),
                _ => StepOutcome::Completed(step.output.clone().unwrap_or_default()),
            };
            let key = (step.run_id.clone(), step.step_id.clone());
            self.overwritten.lock().unwrap().insert(key, outcome);
        }
        Ok(true)
    }
    async fn retry_step(
        &self,
        step: &StepRecord,
        attempt: u32,
        error: &baton::model::ErrorInfo,
        next_at: chrono::DateTime<chrono::Utc>,
    ) -> baton::store::StoreResult<bool> {
        self.inner.retry_step(step, attempt, error, next_at).await
    }
    async fn finish_step(
        &self,
        run_id: &str,
        step_id: &str,
        outcome: &StepOutcome,
        at: chrono::DateTime<chrono::Utc>,
    ) -> baton::store::StoreResult<bool> {
        if !self.inner.finish_step(run_id, step_id, outcome, at).await? {
            let key = (run_id.to_string(), step_id.to_string());
            self.overwritten
                .lock()
                .unwrap()
                .insert(key, outcome.clone());
        }
        Ok(true)
    }
}

/// The properties are not vacuous: on a store that drops the conditions of `begin_attempt`
/// and `finish_step`, the same seeds report overwritten outputs and bodies re-run after
/// their output was recorded.
#[test]
fn the_properties_catch_a_store_that_overwrites() {
    let broken = |_seed: u64| Scenario {
        backend: Backend::Overwriting,
        faults: FaultConfig::heavy(),
        driver: DriverConfig {
            concurrency: 3,
            ..DriverConfig::default()
        },
        batch: false,
    };
    let seeds: Vec<u64> = (30_000..30_040).collect();
    let (_, failures) = run_seeds_quietly(&seeds, &broken);
    let overwritten = failures
        .iter()
        .filter(|f| f.1.contains("recorded step output overwritten"))
        .count();
    let reran = failures
        .iter()
        .filter(|f| f.1.contains("ran but the step is already"))
        .count();
    eprintln!(
        "broken store: {} of {} seeds caught it ({overwritten} an overwritten output, {reran} a body re-run after its output was recorded)",
        failures.len(),
        seeds.len()
    );
    assert!(failures.len() >= 8, "{failures:?}");
    assert!(overwritten > 0 && reran > 0, "{failures:?}");
}

/// The watch in ChaosStore catches a store that overwrites a recorded output.
#[test]
fn the_store_watch_catches_an_overwritten_output() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let faults = Faults::new(1, FaultConfig::none());
        let inner = Arc::new(MemoryStore::new());
        let store = ChaosStore::new(inner.clone(), faults);
        let now = chrono::Utc::now();
        let step = StepRecord {
            run_id: "r".into(),
            step_id: "s".into(),
            name: "s".into(),
            kind: baton::model::StepKind::Run,
            status: StepStatus::Planned,
            attempts: 0,
            seq: 0,
            planned_at: now,
            started_at: None,
            ended_at: None,
            wake_at: None,
            output: None,
            error: None,
            planned: Vec::new(),
        };
        assert!(store.plan_step(&step).await.unwrap());
        let first = StepOutcome::Completed(json!(1));
        assert!(store.finish_step("r", "s", &first, now).await.unwrap());
        // A correct store refuses a second outcome: nothing to report.
        let second = StepOutcome::Completed(json!(2));
        assert!(!store.finish_step("r", "s", &second, now).await.unwrap());
        assert!(store.violations().is_empty());
        assert!(store.journal("r").await.unwrap()[0].output == Some(json!(1)));
        // Simulate a store that lost the condition: the output changes underneath.
        let mut changed = inner.journal("r").await.unwrap();
        changed[0].output = Some(json!(2));
        let found = store.check_journal(&changed);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("recorded step output overwritten"));
        assert_eq!(store.violations(), found);
    });
}

/// Regression (found by seed 17 of the property test): a step message whose attempt is older
/// than the step's current one (a duplicate, or a redelivery after a crash, arriving once the
/// next attempt has begun) must end its invocation, not hang it. `begin_attempt` refuses the
/// stale attempt and `Ctx::step` re-reads the journal; the step is not final, so the pass
/// blocks on it while the body's active count is still held, and `run_pass` waits forever.
#[test]
fn a_stale_step_message_does_not_hang_its_handler() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let faults = Faults::new(0, FaultConfig::none());
        let inner = Arc::new(MemoryStore::new());
        let probe = Probe::new(inner.clone());
        let queue = ChaosQueue::new(faults.clone());
        let engine = Engine::new(
            registry(&probe),
            inner.clone(),
            Arc::new(queue.clone()),
            EngineConfig::default(),
        );
        let ids = engine
            .send_events(vec![NewEvent::new("t/flaky", json!({"n": 1}))])
            .await
            .unwrap();
        let run_id = run_id_for(&ids[0], "flaky");
        let step = |attempt| baton::model::Message {
            run_id: run_id.clone(),
            function_id: "flaky".into(),
            kind: baton::model::MessageKind::Step {
                step_id: "call".into(),
                name: "call".into(),
                attempt,
            },
            not_before: None,
        };
        let start = baton::model::Message {
            kind: baton::model::MessageKind::Start,
            ..step(1)
        };
        let handle = |m| tokio::time::timeout(Duration::from_secs(60), engine.handle(m));
        handle(start).await.unwrap().unwrap();
        // Attempt 1 fails and schedules attempt 2 (backoff at most 1 s).
        handle(step(1)).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Attempt 2 begins (and fails, scheduling attempt 3).
        handle(step(2)).await.unwrap().unwrap();
        let journal = inner.journal(&run_id).await.unwrap();
        assert_eq!(
            (journal[0].attempts, journal[0].status),
            (2, StepStatus::Planned)
        );
        // Attempt 1 again: stale. It must return (and change nothing).
        let stale = handle(step(1)).await;
        assert!(
            stale.is_ok(),
            "the handler of a stale step message never returned"
        );
        assert_eq!(inner.journal(&run_id).await.unwrap(), journal);
        assert!(probe.violations().is_empty(), "{:?}", probe.violations());
    });
}

/// No faults needed: in a replay a parallel branch whose earlier steps are journaled reaches
/// its later steps sooner than when they were first planned. Branch 0 sleeps then runs
/// `part`, branch 1 runs `part` at once. With ids assigned by name in call order, branch 0
/// would be handed branch 1's output after the wake-up (`[1, 1]`); ids scoped by the cloned
/// `Ctx` of each branch keep them apart.
#[test]
fn parallel_branches_get_their_own_step_outputs() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let f = Function::new("branches")
            .trigger("t/branches")
            .step(Step::new("part"))
            .handler(|ctx: Ctx, _ev: Event<Value>| async move {
                let branch = |i: u64| {
                    let ctx = ctx.clone();
                    async move {
                        if i == 0 {
                            ctx.sleep("wait", Duration::from_secs(5)).await?;
                        }
                        ctx.step(Step::new("part"), move |_| async move { Ok(i) })
                            .await
                    }
                };
                let (a, b) = futures::join!(branch(0), branch(1));
                Ok(vec![a?, b?])
            });
        let faults = Faults::new(0, FaultConfig::none());
        let inner = Arc::new(MemoryStore::new());
        let queue = ChaosQueue::new(faults.clone());
        let engine = Engine::new(
            Registry::new().register(f).unwrap(),
            inner.clone(),
            Arc::new(queue.clone()),
            EngineConfig::default(),
        );
        let ids = engine
            .send_events(vec![NewEvent::new("t/branches", json!({}))])
            .await
            .unwrap();
        let report = Driver::new(engine, queue, faults, DriverConfig::default())
            .run()
            .await;
        assert!(report.finished(), "{report:?}");
        let run = inner
            .get_run(&run_id_for(&ids[0], "branches"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(run.output, Some(json!([0, 1])), "{run:?}");
    });
}
