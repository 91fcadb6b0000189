//! Local-mode throughput and latency: the engine, the SQLite store and the in-process queue in
//! one process, as `baton dev` runs them.
//!
//! ```text
//! cargo bench -p baton --bench local -- [--runs N] [--durability full|normal|both]
//!     [--concurrency C] [--batch B] [--in-flight K] [--sequential S]
//! ```
//!
//! Two scenarios per durability setting, each on a fresh database in a temp dir:
//! - load: `--runs` events sent in batches of `--batch` through `Engine::send_events`, each
//!   starting a run of a function with 10 sequential steps, handled `--concurrency` at a time;
//! - steady: `--runs` runs with `--in-flight` of them going at any time, as that many clients
//!   would send them: each event in its own `send_events` call, the next one as soon as a run
//!   ends (its terminal transition is committed), handled `--concurrency` at a time;
//! - sequential: `--sequential` runs one after another (the next event is sent once the
//!   previous run has ended), for the unloaded step-to-step latency.
//!
//! Latencies come from the journal's own timestamps (the engine's clock):
//! - step-to-step: the next step's `started_at` minus the previous step's `ended_at`, i.e.
//!   journaling the result, replaying, planning the next step, the queue hop, dispatch, and
//!   re-reading the run and its journal;
//! - event to first step: the first step's `started_at` minus the time the event's
//!   `send_events` call began, split into event to run created (the run's `started_at`,
//!   set as its event is stored: the events ahead of it in its batch) and run created to
//!   first step (the write, the queue, waiting for a free handler, dispatch).
//!
//! Every store call the engine makes is also timed (a wrapper around the store): that latency
//! is waiting for a connection (a reader, or the writer's next group commit), the blocking-pool hop,
//! and SQLite itself.
//!
//! This is a benchmark, not a test: it asserts nothing about time.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use baton::engine::run_id_for;
use baton::local::{LocalOptions, LocalRuntime};
use baton::model::{
    ErrorInfo, EventRecord, Progress, RunDetail, RunPage, RunQuery, RunRecord, RunSummary,
    RunTransition, StepOutcome, StepRecord, StepStatus,
};
use baton::store::StoreResult;
use baton::{Ctx, Event, Function, NewEvent, Registry, RunStatus, Step, StepError, Store};
use baton_sqlite::{Durability, SqliteStore};

const FUNCTION: &str = "chain";
const EVENT: &str = "bench/chain";
const STEPS: [&str; 10] = ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9"];

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone)]
struct Options {
    runs: usize,
    durabilities: Vec<Durability>,
    concurrency: usize,
    batch: usize,
    /// Runs kept going at once in the steady scenario (0 skips it).
    in_flight: usize,
    sequential: usize,
}

const USAGE: &str = "usage: cargo bench -p baton --bench local -- [--runs N] \
[--durability full|normal|both] [--concurrency C] [--batch B] [--in-flight K] [--sequential S]";

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        runs: 1000,
        durabilities: vec![Durability::Full, Durability::Normal],
        concurrency: 50,
        batch: 100,
        in_flight: 50,
        sequential: 50,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        // `cargo bench` passes `--bench` to harness = false targets.
        if arg == "--bench" {
            continue;
        }
        if arg == "-h" || arg == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        let number = |v: String| {
            v.parse::<usize>()
                .map_err(|e| format!("{flag} {v:?}: {e}\n{USAGE}"))
        };
        match flag.as_str() {
            "--runs" => options.runs = number(value()?)?,
            "--concurrency" => options.concurrency = number(value()?)?.max(1),
            "--batch" => options.batch = number(value()?)?.max(1),
            "--in-flight" => options.in_flight = number(value()?)?,
            "--sequential" => options.sequential = number(value()?)?,
            "--durability" => {
                let v = value()?;
                options.durabilities = if v.eq_ignore_ascii_case("both") {
                    vec![Durability::Full, Durability::Normal]
                } else {
                    vec![v.parse::<Durability>()?]
                };
            }
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        }
    }
    Ok(options)
}

// ---------------------------------------------------------------------------------------------
// The function: 10 sequential steps, each deriving a small JSON value from the previous one.

fn registry() -> Registry {
    let mut function = Function::new(FUNCTION).trigger(EVENT);
    for name in STEPS {
        function = function.step(Step::new(name));
    }
    let function = function.handler(|ctx: Ctx, event: Event<Value>| async move {
        let mut prev = json!({"n": event.data["n"].clone(), "step": null, "acc": 1});
        for (i, name) in STEPS.iter().enumerate() {
            let input = prev;
            prev = ctx
                .step(Step::new(name), move |_| async move {
                    let acc = input["acc"].as_u64().unwrap_or(0);
                    Ok::<Value, StepError>(json!({
                        "n": input["n"].clone(),
                        "step": i,
                        "acc": (acc * 31 + i as u64 + 1) % 1_000_000_007,
                    }))
                })
                .await?;
        }
        Ok(prev)
    });
    Registry::new()
        .register(function)
        .expect("valid definition")
}

// ---------------------------------------------------------------------------------------------
// A store wrapper that times every call the engine makes.

#[derive(Default)]
struct OpStats {
    samples: Mutex<BTreeMap<&'static str, Vec<u64>>>,
}

impl OpStats {
    fn record(&self, op: &'static str, since: Instant) {
        let micros = since.elapsed().as_micros() as u64;
        self.samples
            .lock()
            .unwrap()
            .entry(op)
            .or_default()
            .push(micros);
    }

    fn take(&self) -> BTreeMap<&'static str, Vec<u64>> {
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

struct TimedStore {
    inner: SqliteStore,
    stats: Arc<OpStats>,
    /// Told the id of every run whose terminal transition this store committed.
    ended: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

macro_rules! timed {
    ($self:ident, $op:literal, $call:expr) => {{
        let since = Instant::now();
        let result = $call.await;
        $self.stats.record($op, since);
        result
    }};
}

#[async_trait]
impl Store for TimedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn claim_idempotency_id(
        &self,
        idempotency_id: &str,
        event_id: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<Option<String>> {
        timed!(
            self,
            "claim_idempotency_id",
            self.inner
                .claim_idempotency_id(idempotency_id, event_id, now, expires_at)
        )
    }
    async fn put_event(&self, event: &EventRecord) -> StoreResult<bool> {
        timed!(self, "put_event", self.inner.put_event(event))
    }
    async fn get_event(&self, event_id: &str) -> StoreResult<Option<EventRecord>> {
        timed!(self, "get_event", self.inner.get_event(event_id))
    }
    async fn put_event_with_runs(
        &self,
        event: &EventRecord,
        runs: &[RunRecord],
    ) -> StoreResult<()> {
        timed!(
            self,
            "put_event_with_runs",
            self.inner.put_event_with_runs(event, runs)
        )
    }
    async fn create_run(&self, run: &RunRecord) -> StoreResult<bool> {
        timed!(self, "create_run", self.inner.create_run(run))
    }
    async fn get_run(&self, run_id: &str) -> StoreResult<Option<RunRecord>> {
        timed!(self, "get_run", self.inner.get_run(run_id))
    }
    async fn transition_run(&self, run_id: &str, t: &RunTransition) -> StoreResult<bool> {
        let moved = timed!(self, "transition_run", self.inner.transition_run(run_id, t))?;
        if let Some(ended) = self.ended.as_ref().filter(|_| moved && t.to.is_terminal()) {
            let _ = ended.send(run_id.to_string());
        }
        Ok(moved)
    }
    async fn set_progress(&self, run_id: &str, progress: &Progress) -> StoreResult<bool> {
        timed!(
            self,
            "set_progress",
            self.inner.set_progress(run_id, progress)
        )
    }
    async fn list_runs(&self, query: &RunQuery) -> StoreResult<RunPage> {
        timed!(self, "list_runs", self.inner.list_runs(query))
    }
    async fn runs_for_event(&self, event_id: &str) -> StoreResult<Vec<RunSummary>> {
        timed!(self, "runs_for_event", self.inner.runs_for_event(event_id))
    }
    async fn journal(&self, run_id: &str) -> StoreResult<Vec<StepRecord>> {
        timed!(self, "journal", self.inner.journal(run_id))
    }
    async fn get_step(&self, run_id: &str, step_id: &str) -> StoreResult<Option<StepRecord>> {
        timed!(self, "get_step", self.inner.get_step(run_id, step_id))
    }
    async fn plan_step(&self, step: &StepRecord) -> StoreResult<bool> {
        timed!(self, "plan_step", self.inner.plan_step(step))
    }
    async fn put_entry(
        &self,
        entry: &baton::model::Entry,
        expect: baton::model::Expect,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        timed!(self, "put_entry", self.inner.put_entry(entry, expect, now))
    }
    async fn list_entries(
        &self,
        key: &str,
        prefix: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<baton::model::Entry>> {
        timed!(
            self,
            "list_entries",
            self.inner.list_entries(key, prefix, now, limit)
        )
    }
    async fn delete_entry(
        &self,
        key: &str,
        id: &str,
        expect: baton::model::Expect,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        timed!(
            self,
            "delete_entry",
            self.inner.delete_entry(key, id, expect, now)
        )
    }
    async fn begin_attempt(
        &self,
        step: &StepRecord,
        attempt: u32,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        timed!(
            self,
            "begin_attempt",
            self.inner.begin_attempt(step, attempt, at)
        )
    }
    async fn record_step(&self, step: &StepRecord, next: &[StepRecord]) -> StoreResult<bool> {
        timed!(self, "record_step", self.inner.record_step(step, next))
    }
    async fn start_run_with_step(
        &self,
        step: &StepRecord,
        start: &RunTransition,
    ) -> StoreResult<bool> {
        timed!(
            self,
            "start_run_with_step",
            self.inner.start_run_with_step(step, start)
        )
    }
    async fn record_step_and_end(
        &self,
        step: &StepRecord,
        end: &RunTransition,
    ) -> StoreResult<bool> {
        let recorded = timed!(
            self,
            "record_step_and_end",
            self.inner.record_step_and_end(step, end)
        )?;
        if let Some(ended) = self.ended.as_ref().filter(|_| recorded) {
            let _ = ended.send(step.run_id.clone());
        }
        Ok(recorded)
    }
    async fn retry_step(
        &self,
        step: &StepRecord,
        attempt: u32,
        error: &ErrorInfo,
        next_at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        timed!(
            self,
            "retry_step",
            self.inner.retry_step(step, attempt, error, next_at)
        )
    }
    async fn finish_step(
        &self,
        run_id: &str,
        step_id: &str,
        outcome: &StepOutcome,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        timed!(
            self,
            "finish_step",
            self.inner.finish_step(run_id, step_id, outcome, at)
        )
    }
}

/// Whether a store operation writes (goes to the writer's group commit).
fn is_write(op: &str) -> bool {
    !matches!(
        op,
        "get_event"
            | "get_run"
            | "list_runs"
            | "runs_for_event"
            | "journal"
            | "get_step"
            | "list_entries"
    )
}

// ---------------------------------------------------------------------------------------------
// Process and file measurements

/// A numeric field of /proc/self/status (`kB` fields in kB).
fn proc_status(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A `kB` field of /proc/self/status, in bytes.
fn proc_status_bytes(field: &str) -> Option<u64> {
    proc_status(field).map(|kb| kb * 1024)
}

/// Resets VmHWM to the current RSS (Linux >= 4.0), so each scenario reports its own peak.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// CPU time of the whole process so far (user, system), from /proc/self/stat.
fn cpu_times() -> Option<(Duration, Duration)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // USER_HZ is 100 on every Linux configuration that matters.
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    let tick = Duration::from_millis(10);
    Some((tick * ticks(11)? as u32, tick * ticks(12)? as u32))
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

// ---------------------------------------------------------------------------------------------
// Statistics

fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

fn mean(samples: &[u64]) -> Option<u64> {
    (!samples.is_empty()).then(|| samples.iter().sum::<u64>() / samples.len() as u64)
}

fn micros(d: chrono::TimeDelta) -> u64 {
    d.num_microseconds().unwrap_or(i64::MAX).max(0) as u64
}

/// Microseconds, shown in the most readable unit.
fn fmt_us(us: Option<u64>) -> String {
    match us {
        None => "-".into(),
        Some(us) if us < 1_000 => format!("{us} µs"),
        Some(us) if us < 1_000_000 => format!("{:.2} ms", us as f64 / 1e3),
        Some(us) => format!("{:.2} s", us as f64 / 1e6),
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// All runs sent at once (in batches), handled concurrently.
    Load,
    /// A fixed number of runs going at once, each event sent on its own.
    Steady,
    /// One run at a time.
    Sequential,
}

struct Report {
    title: String,
    durability: Durability,
    concurrency: usize,
    runs_sent: usize,
    runs_completed: usize,
    runs_other: usize,
    steps_completed: usize,
    /// From the first `send_events` call to the last run's `ended_at`.
    wall: Duration,
    messages: u64,
    hop: Vec<u64>,
    first_step: Vec<u64>,
    /// The run's `started_at` (set as its event is stored) minus the start of its
    /// `send_events` call: the events stored before it in the same call.
    run_created: Vec<u64>,
    /// The first step's `started_at` minus the run's: storing the run, the queue (waiting
    /// for a free handler under load), dispatch and the step's own start.
    created_to_first_step: Vec<u64>,
    in_step: Vec<u64>,
    run_end: Vec<u64>,
    /// The run's `ended_at` minus the start of its `send_events` call.
    event_to_end: Vec<u64>,
    /// Transactions the store committed (each one fsync under `full`).
    commits: u64,
    peak_rss: Option<u64>,
    /// CPU time (user, system) the process spent during the scenario.
    cpu: Option<(Duration, Duration)>,
    /// OS threads at the end of the scenario (the blocking pool keeps idle threads 10 s).
    threads: Option<u64>,
    rss_before: Option<u64>,
    db_bytes: u64,
    wal_bytes: u64,
    ops: BTreeMap<&'static str, Vec<u64>>,
}

async fn scenario(
    mode: Mode,
    durability: Durability,
    runs: usize,
    options: &Options,
) -> Result<Report, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let db_path = dir.path().join("baton.db");
    let raw = SqliteStore::open(&db_path, durability).map_err(|e| e.to_string())?;
    let stats = Arc::new(OpStats::default());
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    let store = TimedStore {
        inner: raw.clone(),
        stats: stats.clone(),
        ended: (mode == Mode::Steady).then_some(ended_tx),
    };
    let concurrency = match mode {
        Mode::Load | Mode::Steady => options.concurrency,
        Mode::Sequential => LocalOptions::default().concurrency,
    };
    let local = LocalOptions {
        concurrency,
        // Nothing stalls here; keep the sweeper out of the measurement.
        sweep_interval: Duration::from_secs(86_400),
        ..LocalOptions::default()
    };
    let rt = LocalRuntime::start(registry(), Arc::new(store), local)
        .await
        .map_err(|e| e.to_string())?;
    let engine = rt.engine().clone();

    stats.take();
    let commits_before = raw.commits();
    let messages_before = rt.messages_sent();
    let rss_before = proc_status_bytes("VmRSS:");
    let peak_reset = reset_peak_rss();
    let cpu_before = cpu_times();

    let mut sent: Vec<(String, DateTime<Utc>)> = Vec::with_capacity(runs);
    let deadline = Instant::now() + Duration::from_secs(600);
    let first_send = engine.now();
    let mut n = 0usize;
    match mode {
        Mode::Load => {
            while n < runs {
                let size = options.batch.min(runs - n);
                let events = (n..n + size)
                    .map(|i| NewEvent::new(EVENT, json!({"n": i})))
                    .collect();
                n += size;
                let at = engine.now();
                let ids = engine
                    .send_events(events)
                    .await
                    .map_err(|e| e.to_string())?;
                sent.extend(ids.iter().map(|id| (run_id_for(id, FUNCTION), at)));
            }
            // Every run has been created by now, so none Queued or Running means all ended.
            loop {
                let mut busy = false;
                for status in [RunStatus::Queued, RunStatus::Running] {
                    let query = RunQuery {
                        function_id: Some(FUNCTION.into()),
                        status: Some(status),
                        limit: 1,
                        ..RunQuery::default()
                    };
                    busy |= !raw
                        .list_runs(&query)
                        .await
                        .map_err(|e| e.to_string())?
                        .runs
                        .is_empty();
                }
                if !busy {
                    break;
                }
                if Instant::now() > deadline {
                    eprintln!("warning: runs still going after 600 s; reporting what ended");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Mode::Steady => {
            // Each send is its own task, so the driver frees a slot the moment a run ends.
            let mut sends = tokio::task::JoinSet::new();
            let send = |sends: &mut tokio::task::JoinSet<_>, n: usize| {
                let engine = engine.clone();
                sends.spawn(async move {
                    let at = engine.now();
                    let ids = engine
                        .send_events(vec![NewEvent::new(EVENT, json!({"n": n}))])
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>((run_id_for(&ids[0], FUNCTION), at))
                });
            };
            while n < runs.min(options.in_flight.max(1)) {
                send(&mut sends, n);
                n += 1;
            }
            let mut ended_runs = 0usize;
            while ended_runs < runs {
                tokio::select! {
                    Some(_) = ended.recv() => {
                        ended_runs += 1;
                        if n < runs {
                            send(&mut sends, n);
                            n += 1;
                        }
                    }
                    Some(sent_one) = sends.join_next() => {
                        sent.push(sent_one.map_err(|e| e.to_string())??);
                    }
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                        eprintln!("warning: runs still going after 600 s; reporting what ended");
                        break;
                    }
                }
            }
            while let Some(sent_one) = sends.join_next().await {
                sent.push(sent_one.map_err(|e| e.to_string())??);
            }
        }
        Mode::Sequential => {
            while n < runs {
                let at = engine.now();
                let ids = engine
                    .send_events(vec![NewEvent::new(EVENT, json!({"n": n}))])
                    .await
                    .map_err(|e| e.to_string())?;
                n += 1;
                let run_id = run_id_for(&ids[0], FUNCTION);
                sent.push((run_id.clone(), at));
                loop {
                    let run = raw.get_run(&run_id).await.map_err(|e| e.to_string())?;
                    if run.is_some_and(|r| r.status.is_terminal()) {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(format!("run {run_id} did not end within 600 s"));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
    }

    let ops = stats.take();
    let cpu = cpu_times()
        .zip(cpu_before)
        .map(|((u1, s1), (u0, s0))| (u1.saturating_sub(u0), s1.saturating_sub(s0)));
    let threads = proc_status("Threads:");
    let messages = rt.messages_sent() - messages_before;
    let commits = raw.commits() - commits_before;
    let peak_rss = if peak_reset {
        proc_status_bytes("VmHWM:")
    } else {
        None
    };
    drop(rt);

    // Collect the journals (untimed, on the raw store).
    let mut report = Report {
        title: match mode {
            Mode::Load => format!("load/{durability}"),
            Mode::Steady => format!("steady{}/{durability}", options.in_flight.max(1)),
            Mode::Sequential => format!("seq/{durability}"),
        },
        durability,
        concurrency,
        runs_sent: sent.len(),
        runs_completed: 0,
        runs_other: 0,
        steps_completed: 0,
        wall: Duration::ZERO,
        messages,
        hop: Vec::new(),
        first_step: Vec::new(),
        run_created: Vec::new(),
        created_to_first_step: Vec::new(),
        in_step: Vec::new(),
        run_end: Vec::new(),
        event_to_end: Vec::new(),
        commits,
        peak_rss,
        cpu,
        threads,
        rss_before,
        db_bytes: 0,
        wal_bytes: 0,
        ops,
    };
    let mut last_end = first_send;
    for (run_id, sent_at) in &sent {
        let Some(run) = raw.get_run(run_id).await.map_err(|e| e.to_string())? else {
            report.runs_other += 1;
            continue;
        };
        let mut steps = raw.journal(run_id).await.map_err(|e| e.to_string())?;
        steps.sort_by_key(|s| s.seq);
        let detail = RunDetail { run, steps };
        if detail.run.status == RunStatus::Completed {
            report.runs_completed += 1;
        } else {
            report.runs_other += 1;
        }
        if let Some(ended) = detail.run.ended_at {
            last_end = last_end.max(ended);
            report.event_to_end.push(micros(ended - *sent_at));
        }
        let done: Vec<&StepRecord> = detail
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Completed)
            .collect();
        report.steps_completed += done.len();
        report
            .run_created
            .push(micros(detail.run.started_at - *sent_at));
        if let Some(started) = detail.steps.first().and_then(|s| s.started_at) {
            report.first_step.push(micros(started - *sent_at));
            report
                .created_to_first_step
                .push(micros(started - detail.run.started_at));
        }
        for pair in detail.steps.windows(2) {
            if let (Some(ended), Some(started)) = (pair[0].ended_at, pair[1].started_at) {
                report.hop.push(micros(started - ended));
            }
        }
        for step in &done {
            if let (Some(started), Some(ended)) = (step.started_at, step.ended_at) {
                report.in_step.push(micros(ended - started));
            }
        }
        if let (Some(run_ended), Some(step_ended)) = (
            detail.run.ended_at,
            detail.steps.last().and_then(|s| s.ended_at),
        ) {
            report.run_end.push(micros(run_ended - step_ended));
        }
    }
    for v in [
        &mut report.hop,
        &mut report.first_step,
        &mut report.run_created,
        &mut report.created_to_first_step,
        &mut report.in_step,
        &mut report.run_end,
        &mut report.event_to_end,
    ] {
        v.sort_unstable();
    }
    report.wall = (last_end - first_send).to_std().unwrap_or_default();
    drop(raw);
    report.db_bytes = file_size(&db_path);
    report.wal_bytes = file_size(&dir.path().join("baton.db-wal"));
    Ok(report)
}

/// Single-row autocommit INSERTs straight through rusqlite, with the store's pragmas: what
/// one commit costs on this disk, without the engine.
fn calibrate(durability: Durability, commits: usize) -> Option<Duration> {
    let dir = tempfile::tempdir().ok()?;
    let conn = rusqlite::Connection::open(dir.path().join("calibrate.db")).ok()?;
    conn.pragma_update(None, "journal_mode", "WAL").ok()?;
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync).ok()?;
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .ok()?;
    let started = Instant::now();
    for i in 0..commits {
        conn.execute(
            "INSERT INTO t (id, v) VALUES (?1, ?2)",
            rusqlite::params![i as i64, "x"],
        )
        .ok()?;
    }
    Some(started.elapsed() / commits as u32)
}

// ---------------------------------------------------------------------------------------------
// Output

fn describe(durability: Durability) -> &'static str {
    match durability {
        Durability::Full => {
            "full   = synchronous=FULL: every commit is fsynced before it returns (survives power loss)"
        }
        Durability::Normal => {
            "normal = WAL without an fsync per commit (synced at checkpoints): survives kill -9, not power loss"
        }
    }
}

/// `commit_rate`: single-row commits per second on this disk, by durability (calibrated).
fn print_table(reports: &[Report], commit_rate: &BTreeMap<&'static str, f64>) {
    const LABEL: usize = 34;
    const COL: usize = 17;
    let row = |label: &str, cells: Vec<String>| {
        let mut line = format!("{label:<LABEL$}");
        for cell in cells {
            line.push_str(&format!("{cell:>COL$}"));
        }
        println!("{line}");
    };
    let cells = |f: &dyn Fn(&Report) -> String| reports.iter().map(f).collect::<Vec<_>>();
    let pct = |v: &Vec<u64>, q: f64| fmt_us(percentile(v, q));

    row("scenario", cells(&|r| r.title.clone()));
    println!("{}", "-".repeat(LABEL + COL * reports.len()));
    row(
        "fsync on every commit",
        cells(&|r| match r.durability {
            Durability::Full => "yes".into(),
            Durability::Normal => "no".into(),
        }),
    );
    row("handler concurrency", cells(&|r| r.concurrency.to_string()));
    row(
        "runs completed / sent",
        cells(&|r| format!("{} / {}", r.runs_completed, r.runs_sent)),
    );
    row("runs not completed", cells(&|r| r.runs_other.to_string()));
    row("steps completed", cells(&|r| r.steps_completed.to_string()));
    row(
        "wall (1st send -> last run end)",
        cells(&|r| format!("{:.2} s", r.wall.as_secs_f64())),
    );
    let per_sec = |count: usize, wall: Duration| {
        if wall.is_zero() {
            "-".to_string()
        } else {
            format!("{:.0}", count as f64 / wall.as_secs_f64())
        }
    };
    row(
        "durable steps / s",
        cells(&|r| per_sec(r.steps_completed, r.wall)),
    );
    row(
        "  x single-row commit rate",
        cells(&|r| match commit_rate.get(r.durability.as_str()) {
            Some(rate) if !r.wall.is_zero() => format!(
                "{:.2}x",
                r.steps_completed as f64 / r.wall.as_secs_f64() / rate
            ),
            _ => "-".into(),
        }),
    );
    row("runs / s", cells(&|r| per_sec(r.runs_completed, r.wall)));
    row(
        "event -> run end  p50",
        cells(&|r| pct(&r.event_to_end, 0.50)),
    );
    row(
        "event -> run end  p99",
        cells(&|r| pct(&r.event_to_end, 0.99)),
    );
    row("step -> step  p50", cells(&|r| pct(&r.hop, 0.50)));
    row("step -> step  p99", cells(&|r| pct(&r.hop, 0.99)));
    row("step -> step  max", cells(&|r| pct(&r.hop, 1.0)));
    row("step -> step  mean", cells(&|r| fmt_us(mean(&r.hop))));
    // The store calls on the hand-off path: the previous handler's record_step (its result
    // and the next step's plan) and plan_step, the next handler's get_run and journal. The rest is waiting in the local queue for a
    // handler slot, dispatch and CPU.
    let path = |r: &Report| -> Option<u64> {
        ["record_step", "plan_step", "get_run", "journal"]
            .iter()
            .map(|op| r.ops.get(op).and_then(|v| mean(v)))
            .sum()
    };
    row(
        "  of which store calls (means)",
        cells(&|r| fmt_us(path(r))),
    );
    row(
        "  rest: queue wait, dispatch, CPU",
        cells(&|r| fmt_us(mean(&r.hop).zip(path(r)).map(|(h, p)| h.saturating_sub(p)))),
    );
    row(
        "event -> 1st step  p50",
        cells(&|r| pct(&r.first_step, 0.50)),
    );
    row(
        "event -> 1st step  p99",
        cells(&|r| pct(&r.first_step, 0.99)),
    );
    row(
        "  event -> run created  p50",
        cells(&|r| pct(&r.run_created, 0.50)),
    );
    row(
        "  run created -> 1st step  p50",
        cells(&|r| pct(&r.created_to_first_step, 0.50)),
    );
    row(
        "in step (start->end)  p50",
        cells(&|r| pct(&r.in_step, 0.50)),
    );
    row(
        "last step -> run end  p50",
        cells(&|r| pct(&r.run_end, 0.50)),
    );
    row("messages sent", cells(&|r| r.messages.to_string()));
    row(
        "messages / step",
        cells(&|r| {
            if r.steps_completed == 0 {
                "-".into()
            } else {
                format!("{:.2}", r.messages as f64 / r.steps_completed as f64)
            }
        }),
    );
    row(
        "store calls / step",
        cells(&|r| {
            let calls: usize = r.ops.values().map(Vec::len).sum();
            format!("{:.2}", calls as f64 / r.steps_completed.max(1) as f64)
        }),
    );
    row(
        "store writes / step",
        cells(&|r| {
            let writes: usize = r
                .ops
                .iter()
                .filter(|(op, _)| is_write(op))
                .map(|(_, v)| v.len())
                .sum();
            format!("{:.2}", writes as f64 / r.steps_completed.max(1) as f64)
        }),
    );
    row(
        "store commits (fsyncs) / step",
        cells(&|r| format!("{:.2}", r.commits as f64 / r.steps_completed.max(1) as f64)),
    );
    row(
        "RSS before -> peak (VmHWM)",
        cells(&|r| match (r.rss_before, r.peak_rss) {
            (Some(before), Some(peak)) => format!(
                "{:.0} -> {:.0} MiB",
                before as f64 / 1048576.0,
                peak as f64 / 1048576.0
            ),
            (_, None) => "-".into(),
            (None, Some(peak)) => mib(peak),
        }),
    );
    row(
        "CPU user+sys, % of one core",
        cells(&|r| match r.cpu {
            Some((user, sys)) => format!(
                "{:.1}+{:.1}s {:.0}%",
                user.as_secs_f64(),
                sys.as_secs_f64(),
                100.0 * (user + sys).as_secs_f64() / r.wall.as_secs_f64().max(1e-9)
            ),
            None => "-".into(),
        }),
    );
    row(
        "OS threads at end",
        cells(&|r| r.threads.map_or("-".into(), |t| t.to_string())),
    );
    row("db file", cells(&|r| mib(r.db_bytes)));
    row("db-wal file", cells(&|r| mib(r.wal_bytes)));
}

/// Where the engine's store time went: per operation, the latency it saw (waiting for the
/// connection + blocking pool hop + SQLite, including any fsync).
fn print_ops(report: &Report) {
    println!(
        "\nstore calls, {} ({} durability, {} runs, {} steps):",
        report.title, report.durability, report.runs_sent, report.steps_completed
    );
    println!(
        "  {:<16}{:>8}{:>10}{:>11}{:>11}{:>11}{:>11}{:>10}",
        "op", "calls", "per step", "mean", "p50", "p99", "max", "total s"
    );
    let mut ops: Vec<_> = report.ops.iter().collect();
    ops.sort_by_key(|(_, v)| std::cmp::Reverse(v.iter().sum::<u64>()));
    for (op, samples) in ops {
        let mut sorted = samples.clone();
        sorted.sort_unstable();
        let total: u64 = sorted.iter().sum();
        println!(
            "  {:<16}{:>8}{:>10.2}{:>11}{:>11}{:>11}{:>11}{:>10.2}",
            format!("{op}{}", if is_write(op) { " (w)" } else { "" }),
            sorted.len(),
            sorted.len() as f64 / report.steps_completed.max(1) as f64,
            fmt_us(mean(&sorted)),
            fmt_us(percentile(&sorted, 0.5)),
            fmt_us(percentile(&sorted, 0.99)),
            fmt_us(percentile(&sorted, 1.0)),
            total as f64 / 1e6,
        );
    }
}

fn main() {
    // `cargo test --all-targets` builds and runs benches too, without `--bench`: building is
    // the check there.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let options = match parse_args() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());

    println!("baton local-mode benchmark");
    println!(
        "  function: {} sequential steps per run; SQLite store in a temp dir ({}); in-process queue",
        STEPS.len(),
        std::env::temp_dir().display()
    );
    println!(
        "  load: {} runs sent in batches of {} via Engine::send_events, handler concurrency {}; \
         steady: {} runs, {} going at once, one event per send_events call; \
         sequential: {} runs one at a time",
        options.runs,
        options.batch,
        options.concurrency,
        options.runs,
        options.in_flight,
        options.sequential
    );
    println!(
        "  {cores} cores, tokio multi-thread runtime with {cores} workers; load average {}",
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "?".into())
    );
    for durability in &options.durabilities {
        println!("  {}", describe(*durability));
    }
    println!();
    print!("single-row SQLite commit on this disk (no engine, 200 commits):");
    let mut commit_rate = BTreeMap::new();
    for durability in &options.durabilities {
        match calibrate(*durability, 200) {
            Some(d) => {
                let rate = 1.0 / d.as_secs_f64().max(1e-9);
                commit_rate.insert(durability.as_str(), rate);
                print!(
                    "  {durability}: {} ({rate:.0} commits/s)",
                    fmt_us(Some(d.as_micros() as u64)),
                )
            }
            None => print!("  {durability}: failed"),
        }
    }
    println!("\n");

    let mut reports = Vec::new();
    for &durability in &options.durabilities {
        for (mode, runs) in [
            (Mode::Load, options.runs),
            (
                Mode::Steady,
                if options.in_flight > 0 {
                    options.runs
                } else {
                    0
                },
            ),
            (Mode::Sequential, options.sequential),
        ] {
            if runs == 0 {
                continue;
            }
            eprintln!("running {mode:?} with {durability} durability, {runs} runs ...");
            match runtime.block_on(scenario(mode, durability, runs, &options)) {
                Ok(report) => reports.push(report),
                Err(e) => {
                    eprintln!("scenario failed: {e}");
                    std::process::exit(1);
                }
            }
        }
    }

    print_table(&reports, &commit_rate);
    for report in &reports {
        print_ops(report);
    }
    println!();
    println!(
        "step -> step: next step's started_at minus previous step's ended_at (journal times)."
    );
    println!(
        "event -> 1st step: first step's started_at minus the start of its send_events call \
         (load: includes storing the events ahead of it in its batch: event -> run created; \
         steady: each event is its own call); \
         run created -> 1st step: from the run's started_at, set as its event is stored."
    );
    println!(
        "store call latency = wait for a reader or the next group commit + blocking-pool hop + SQLite (+ fsync); (w) = writes."
    );
    println!(
        "RSS: VmHWM is reset (/proc/self/clear_refs) before each scenario; the allocator keeps freed memory, so later \
         scenarios start higher."
    );
}
