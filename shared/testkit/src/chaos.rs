//! Fault injection for property tests: a seeded controller ([`Faults`]), a store wrapper that
//! crashes around every operation and watches recorded step outputs ([`ChaosStore`]), a
//! simulated SQS-like queue ([`ChaosQueue`]) and a [`Driver`] that delivers its messages to an
//! [`Engine`] out of order, sometimes twice, and again after a crashed handler.
//!
//! A crash is modelled as an error the engine cannot tell from a real one
//! (a [`StoreError::Backend`] or [`QueueError::Backend`] saying "injected fault"), injected either *before* the operation
//! (nothing was applied) or *after* it (it was applied, then the handler died). Either way the
//! engine returns an error from [`Engine::handle`] and the driver delivers the message again,
//! as a queue does after a visibility timeout.
//!
//! Everything random comes from one [`rand::rngs::StdRng`] seeded by the caller, and the
//! simulation runs on tokio's paused clock (the driver sleeps until the next due message, which
//! paused time turns into an instant jump), so one seed is one reproducible history. Two
//! engine-side sources of randomness are neutralised: backoff jitter (the queue rounds delays
//! of up to 16 s up to a power of two of seconds, so a jittered delay in `[d/2, d]` always
//! becomes `d`) and ULID randomness (the driver orders due messages by the order in which runs
//! were first seen, never by run id). Reproducibility assumes the wrapped store does no real
//! asynchronous work (the memory store): with a store on blocking threads (SQLite), concurrent
//! handlers ([`DriverConfig::concurrency`] > 1) interleave as the OS schedules them.
//!
//! Concurrent handlers interleave only where the chaos store and queue yield, which is always
//! *before* an operation: a step body therefore starts in the same poll as the
//! `begin_attempt` that allowed it, and a test may check, inside the body, that the step is
//! not final yet.
//!
//! Typical use (see `shared/tests/faults.rs`), inside a current-thread runtime with paused time:
//!
//! ```ignore
//! let faults = Faults::new(seed, FaultConfig::default());
//! let inner = Arc::new(MemoryStore::new());
//! let store = Arc::new(ChaosStore::new(inner.clone(), faults.clone()));
//! let queue = ChaosQueue::new(faults.clone());
//! let engine = Engine::new(registry, store.clone(), Arc::new(queue.clone()), EngineConfig::default());
//! // ... send events (retrying injected failures with the same event ids) ...
//! let report = Driver::new(engine, queue, faults, DriverConfig::default()).run().await;
//! assert!(report.finished() && store.violations().is_empty());
//! ```

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use baton::engine::Engine;
use baton::error::{EngineError, QueueError, StoreError};
use baton::model::{
    ErrorInfo, EventRecord, Message, Progress, RunPage, RunQuery, RunRecord, RunStatus, RunSummary,
    RunTransition, StepOutcome, StepRecord, StepStatus,
};
use baton::queue::{Envelope, Queue};
use baton::store::{Store, StoreResult};

/// A crash, as the engine sees it: a backend error like any other.
fn injected_store_fault() -> StoreError {
    StoreError::Backend("injected fault".into())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- the controller ----

/// Fault probabilities (each in `0.0..=1.0`) and delays.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// A store operation fails without being applied.
    pub store_before: f64,
    /// A store operation is applied, then fails (the handler dies after the write).
    pub store_after: f64,
    /// A queue send fails with nothing sent.
    pub queue_before: f64,
    /// A queue send fails after sending only a prefix of its batch (SQS batches can fail
    /// partially).
    pub queue_partial: f64,
    /// A queue send fails after sending the whole batch.
    pub queue_after: f64,
    /// A delivered message is delivered again later (at-least-once delivery).
    pub duplicate: f64,
    /// A sent message gets a random extra delay of up to `max_extra_delay` (reordering in
    /// time, on top of the driver's random choice among due messages).
    pub delay: f64,
    pub max_extra_delay: Duration,
    /// Before each store or queue operation the caller yields to the scheduler with this
    /// probability (1 to 3 times), so concurrent handlers interleave at operation boundaries.
    /// Not a fault: it stays on when faults are switched off.
    pub interleave: f64,
}

impl FaultConfig {
    /// Nothing injected, nothing delayed, no interleaving.
    pub fn none() -> Self {
        FaultConfig {
            store_before: 0.0,
            store_after: 0.0,
            queue_before: 0.0,
            queue_partial: 0.0,
            queue_after: 0.0,
            duplicate: 0.0,
            delay: 0.0,
            max_extra_delay: Duration::ZERO,
            interleave: 0.0,
        }
    }

    /// High rates, for showing that faults really happen.
    pub fn heavy() -> Self {
        FaultConfig {
            store_before: 0.08,
            store_after: 0.08,
            queue_before: 0.1,
            queue_partial: 0.05,
            queue_after: 0.1,
            duplicate: 0.3,
            delay: 0.3,
            max_extra_delay: Duration::from_secs(20),
            interleave: 0.5,
        }
    }

    /// Every probability (not the delay length) multiplied by `factor`, capped at 1.
    pub fn scaled(&self, factor: f64) -> Self {
        let s = |p: f64| (p * factor).clamp(0.0, 1.0);
        FaultConfig {
            store_before: s(self.store_before),
            store_after: s(self.store_after),
            queue_before: s(self.queue_before),
            queue_partial: s(self.queue_partial),
            queue_after: s(self.queue_after),
            duplicate: s(self.duplicate),
            delay: s(self.delay),
            max_extra_delay: self.max_extra_delay,
            interleave: s(self.interleave),
        }
    }
}

impl Default for FaultConfig {
    /// Moderate rates: most handler invocations succeed, most runs see a few crashes.
    fn default() -> Self {
        FaultConfig {
            store_before: 0.02,
            store_after: 0.02,
            queue_before: 0.03,
            queue_partial: 0.02,
            queue_after: 0.03,
            duplicate: 0.1,
            delay: 0.2,
            max_extra_delay: Duration::from_secs(10),
            interleave: 0.0,
        }
    }
}

/// What happens to one store operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Not applied; the call fails.
    Before,
    /// Applied; the call fails anyway.
    After,
}

/// What happens to one queue send of `n` envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFault {
    None,
    /// Nothing sent; the call fails.
    Before,
    /// The first `k < n` envelopes sent; the call fails.
    Partial(usize),
    /// Everything sent; the call fails anyway.
    After,
}

/// Calls and injected faults of one store operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpStats {
    pub calls: u64,
    pub before: u64,
    pub after: u64,
}

/// What the controller has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub store_calls: u64,
    pub store_before: u64,
    pub store_after: u64,
    /// Per store operation (`"finish_step"`, `"journal"`, ...).
    pub store_ops: BTreeMap<&'static str, OpStats>,
    pub queue_sends: u64,
    pub queue_before: u64,
    pub queue_partial: u64,
    pub queue_after: u64,
    /// Messages that got an extra delay.
    pub delayed: u64,
    /// Times a caller yielded to let other handlers interleave.
    pub yields: u64,
}

impl FaultStats {
    /// Every injected crash, store and queue.
    pub fn crashes(&self) -> u64 {
        self.store_before
            + self.store_after
            + self.queue_before
            + self.queue_partial
            + self.queue_after
    }

    /// Adds another run's counts to these.
    pub fn add(&mut self, other: &FaultStats) {
        self.store_calls += other.store_calls;
        self.store_before += other.store_before;
        self.store_after += other.store_after;
        for (op, s) in &other.store_ops {
            let mine = self.store_ops.entry(op).or_default();
            mine.calls += s.calls;
            mine.before += s.before;
            mine.after += s.after;
        }
        self.queue_sends += other.queue_sends;
        self.queue_before += other.queue_before;
        self.queue_partial += other.queue_partial;
        self.queue_after += other.queue_after;
        self.delayed += other.delayed;
        self.yields += other.yields;
    }
}

/// The shared, seeded fault controller. Every random decision of the harness (faults, which
/// due message is delivered next, duplicates, extra delays, interleaving) is drawn from its
/// one RNG, in the order the simulation asks for them.
pub struct Faults {
    seed: u64,
    state: Mutex<FaultState>,
}

struct FaultState {
    rng: StdRng,
    config: FaultConfig,
    enabled: bool,
    stats: FaultStats,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("Faults")
            .field("seed", &self.seed)
            .field("enabled", &state.enabled)
            .field("config", &state.config)
            .field("stats", &state.stats)
            .finish()
    }
}

impl Faults {
    pub fn new(seed: u64, config: FaultConfig) -> Arc<Faults> {
        Arc::new(Faults {
            seed,
            state: Mutex::new(FaultState {
                rng: StdRng::seed_from_u64(seed),
                config,
                enabled: true,
                stats: FaultStats::default(),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, FaultState> {
        lock(&self.state)
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn config(&self) -> FaultConfig {
        self.state().config.clone()
    }

    /// Switches fault injection (crashes, duplicates, extra delays) on or off. Off is for
    /// draining at the end, so that every run can finish. Reordering and interleaving stay.
    pub fn set_enabled(&self, enabled: bool) {
        self.state().enabled = enabled;
    }

    pub fn enabled(&self) -> bool {
        self.state().enabled
    }

    pub fn stats(&self) -> FaultStats {
        self.state().stats.clone()
    }

    /// True with probability `p`, drawn from the seeded RNG (whether faults are on or not).
    pub fn chance(&self, p: f64) -> bool {
        let p = p.clamp(0.0, 1.0);
        p > 0.0 && self.state().rng.random_bool(p)
    }

    /// A uniform index in `0..n` (`n > 0`).
    pub fn below(&self, n: usize) -> usize {
        self.state().rng.random_range(0..n)
    }

    /// Decides the fate of one store operation named `op`.
    pub fn store_fault(&self, op: &'static str) -> Fault {
        let mut state = self.state();
        let state = &mut *state;
        state.stats.store_calls += 1;
        let per_op = state.stats.store_ops.entry(op).or_default();
        per_op.calls += 1;
        if !state.enabled {
            return Fault::None;
        }
        let x: f64 = state.rng.random();
        if x < state.config.store_before {
            per_op.before += 1;
            state.stats.store_before += 1;
            Fault::Before
        } else if x < state.config.store_before + state.config.store_after {
            per_op.after += 1;
            state.stats.store_after += 1;
            Fault::After
        } else {
            Fault::None
        }
    }

    /// Decides the fate of one queue send of `n` envelopes.
    pub fn send_fault(&self, n: usize) -> SendFault {
        let mut state = self.state();
        let state = &mut *state;
        state.stats.queue_sends += 1;
        if !state.enabled {
            return SendFault::None;
        }
        let c = &state.config;
        let x: f64 = state.rng.random();
        if x < c.queue_before {
            state.stats.queue_before += 1;
            SendFault::Before
        } else if x < c.queue_before + c.queue_partial && n > 1 {
            state.stats.queue_partial += 1;
            SendFault::Partial(state.rng.random_range(1..n))
        } else if x < c.queue_before + c.queue_partial + c.queue_after {
            state.stats.queue_after += 1;
            SendFault::After
        } else {
            SendFault::None
        }
    }

    /// Whether to deliver a message again later (off when faults are off).
    pub fn duplicate(&self) -> bool {
        let p = {
            let state = self.state();
            if !state.enabled {
                return false;
            }
            state.config.duplicate
        };
        self.chance(p)
    }

    /// A random extra delivery delay, whole seconds (zero when faults are off).
    pub fn extra_delay(&self) -> Duration {
        let mut state = self.state();
        let state = &mut *state;
        if !state.enabled || state.config.delay <= 0.0 {
            return Duration::ZERO;
        }
        if !state.rng.random_bool(state.config.delay.clamp(0.0, 1.0)) {
            return Duration::ZERO;
        }
        let max = state.config.max_extra_delay.as_secs();
        if max == 0 {
            return Duration::ZERO;
        }
        state.stats.delayed += 1;
        Duration::from_secs(state.rng.random_range(1..=max))
    }

    /// Maybe yields to the scheduler (1 to 3 times), so that concurrent handlers interleave.
    pub async fn interleave(&self) {
        let times = {
            let mut state = self.state();
            let state = &mut *state;
            let p = state.config.interleave.clamp(0.0, 1.0);
            if p > 0.0 && state.rng.random_bool(p) {
                let n = state.rng.random_range(1..=3u64);
                state.stats.yields += n;
                n
            } else {
                0
            }
        };
        for _ in 0..times {
            tokio::task::yield_now().await;
        }
    }
}

// ---- the store ----

/// A store wrapper that crashes before or after every operation (reads included) as the
/// [`Faults`] decide, and watches [`Store::finish_step`]: the first outcome the inner store
/// reports as recorded is remembered per (run, step); a second "recorded" report for the
/// same step, or a journal read showing a different outcome later, is a violation.
pub struct ChaosStore<S: Store + ?Sized> {
    inner: Arc<S>,
    faults: Arc<Faults>,
    watch: Mutex<Watch>,
}

#[derive(Default)]
struct Watch {
    /// (run id, step id) -> the first outcome recorded.
    recorded: HashMap<(String, String), StepOutcome>,
    /// `finish_step` calls under way: a backend that commits on another thread (SQLite) can
    /// show the outcome to a concurrent reader before the call returns to this wrapper.
    in_flight: HashMap<(String, String), Vec<StepOutcome>>,
    violations: Vec<String>,
}

impl<S: Store + ?Sized> ChaosStore<S> {
    pub fn new(inner: Arc<S>, faults: Arc<Faults>) -> Self {
        ChaosStore {
            inner,
            faults,
            watch: Mutex::new(Watch::default()),
        }
    }

    /// The wrapped store, to look at the truth without faults.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// Every violation seen so far ("recorded step output overwritten", ...).
    pub fn violations(&self) -> Vec<String> {
        lock(&self.watch).violations.clone()
    }

    /// The first recorded outcome of every step, keyed by (run id, step id).
    pub fn recorded(&self) -> HashMap<(String, String), StepOutcome> {
        lock(&self.watch).recorded.clone()
    }

    /// Compares a journal with the recorded outcomes; returns (and remembers) violations: a
    /// final step whose outcome differs from the first one recorded, or that was never
    /// recorded through this wrapper.
    pub fn check_journal(&self, steps: &[StepRecord]) -> Vec<String> {
        let mut watch = lock(&self.watch);
        let mut found = Vec::new();
        for step in steps.iter().filter(|s| s.status.is_final()) {
            let key = (step.run_id.clone(), step.step_id.clone());
            let committing = watch
                .in_flight
                .get(&key)
                .is_some_and(|outcomes| outcomes.iter().any(|o| same_outcome(o, step)));
            match watch.recorded.get(&key) {
                None if committing => {}
                None => found.push(format!(
                    "step {}/{} is {:?} in the journal but finish_step never recorded it",
                    step.run_id, step.step_id, step.status
                )),
                Some(first) if !same_outcome(first, step) => found.push(format!(
                    "recorded step output overwritten: {}/{} was recorded as {first:?}, the journal now has {:?} {:?} {:?}",
                    step.run_id, step.step_id, step.status, step.output, step.error
                )),
                Some(_) => {}
            }
        }
        for v in &found {
            if !watch.violations.contains(v) {
                watch.violations.push(v.clone());
            }
        }
        found
    }

    fn watch_finish(&self, run_id: &str, step_id: &str, outcome: &StepOutcome) {
        let mut watch = lock(&self.watch);
        let key = (run_id.to_string(), step_id.to_string());
        if let Some(first) = watch.recorded.get(&key) {
            let v = format!(
                "recorded step output overwritten: finish_step reported {run_id}/{step_id} recorded twice (first {first:?}, then {outcome:?})"
            );
            watch.violations.push(v);
        } else {
            watch.recorded.insert(key, outcome.clone());
        }
    }

    /// Runs a write that records `outcome` for a step, watching it: in flight while it runs,
    /// then recorded (once) if the store says so.
    async fn watched(
        &self,
        run_id: &str,
        step_id: &str,
        outcome: &StepOutcome,
        write: impl std::future::Future<Output = StoreResult<bool>>,
    ) -> StoreResult<bool> {
        let key = (run_id.to_string(), step_id.to_string());
        lock(&self.watch)
            .in_flight
            .entry(key.clone())
            .or_default()
            .push(outcome.clone());
        let r = write.await;
        if let Ok(true) = r {
            self.watch_finish(run_id, step_id, outcome);
        }
        let mut watch = lock(&self.watch);
        if let Some(outcomes) = watch.in_flight.get_mut(&key) {
            if let Some(i) = outcomes.iter().position(|o| o == outcome) {
                outcomes.remove(i);
            }
            if outcomes.is_empty() {
                watch.in_flight.remove(&key);
            }
        }
        r
    }

    /// Yields (maybe), then decides the operation's fault: Before fails here.
    async fn enter(&self, op: &'static str) -> StoreResult<Fault> {
        self.faults.interleave().await;
        match self.faults.store_fault(op) {
            Fault::Before => Err(injected_store_fault()),
            fault => Ok(fault),
        }
    }
}

/// Applies an After fault to an operation that succeeded.
fn leave<T>(fault: Fault, result: StoreResult<T>) -> StoreResult<T> {
    match (fault, result) {
        (Fault::After, Ok(_)) => Err(injected_store_fault()),
        (_, result) => result,
    }
}

fn same_outcome(outcome: &StepOutcome, step: &StepRecord) -> bool {
    match outcome {
        StepOutcome::Completed(v) => {
            step.status == StepStatus::Completed
                && step.output.as_ref().unwrap_or(&serde_json::Value::Null) == v
        }
        StepOutcome::Failed(e) => {
            step.status == StepStatus::Failed && step.error.as_ref() == Some(e)
        }
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for ChaosStore<S> {
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
        let fault = self.enter("claim_idempotency_id").await?;
        let r = self
            .inner
            .claim_idempotency_id(idempotency_id, event_id, now, expires_at)
            .await;
        leave(fault, r)
    }

    async fn put_event(&self, event: &EventRecord) -> StoreResult<bool> {
        let fault = self.enter("put_event").await?;
        leave(fault, self.inner.put_event(event).await)
    }

    async fn get_event(&self, event_id: &str) -> StoreResult<Option<EventRecord>> {
        let fault = self.enter("get_event").await?;
        leave(fault, self.inner.get_event(event_id).await)
    }

    async fn create_run(&self, run: &RunRecord) -> StoreResult<bool> {
        let fault = self.enter("create_run").await?;
        leave(fault, self.inner.create_run(run).await)
    }

    async fn get_run(&self, run_id: &str) -> StoreResult<Option<RunRecord>> {
        let fault = self.enter("get_run").await?;
        leave(fault, self.inner.get_run(run_id).await)
    }

    async fn transition_run(&self, run_id: &str, t: &RunTransition) -> StoreResult<bool> {
        let fault = self.enter("transition_run").await?;
        leave(fault, self.inner.transition_run(run_id, t).await)
    }

    async fn set_progress(&self, run_id: &str, progress: &Progress) -> StoreResult<bool> {
        let fault = self.enter("set_progress").await?;
        leave(fault, self.inner.set_progress(run_id, progress).await)
    }

    async fn list_runs(&self, query: &RunQuery) -> StoreResult<RunPage> {
        let fault = self.enter("list_runs").await?;
        leave(fault, self.inner.list_runs(query).await)
    }

    async fn runs_for_event(&self, event_id: &str) -> StoreResult<Vec<RunSummary>> {
        let fault = self.enter("runs_for_event").await?;
        leave(fault, self.inner.runs_for_event(event_id).await)
    }

    async fn journal(&self, run_id: &str) -> StoreResult<Vec<StepRecord>> {
        let fault = self.enter("journal").await?;
        let r = self.inner.journal(run_id).await;
        if let Ok(steps) = &r {
            self.check_journal(steps);
        }
        leave(fault, r)
    }

    async fn get_step(&self, run_id: &str, step_id: &str) -> StoreResult<Option<StepRecord>> {
        let fault = self.enter("get_step").await?;
        let r = self.inner.get_step(run_id, step_id).await;
        if let Ok(Some(step)) = &r {
            self.check_journal(std::slice::from_ref(step));
        }
        leave(fault, r)
    }

    async fn put_entry(
        &self,
        entry: &baton::model::Entry,
        expect: baton::model::Expect,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let fault = self.enter("put_entry").await?;
        leave(fault, self.inner.put_entry(entry, expect, now).await)
    }

    async fn list_entries(
        &self,
        key: &str,
        prefix: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<baton::model::Entry>> {
        let fault = self.enter("list_entries").await?;
        leave(
            fault,
            self.inner.list_entries(key, prefix, now, limit).await,
        )
    }

    async fn delete_entry(
        &self,
        key: &str,
        id: &str,
        expect: baton::model::Expect,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let fault = self.enter("delete_entry").await?;
        leave(fault, self.inner.delete_entry(key, id, expect, now).await)
    }

    async fn plan_step(&self, step: &StepRecord) -> StoreResult<bool> {
        let fault = self.enter("plan_step").await?;
        leave(fault, self.inner.plan_step(step).await)
    }

    async fn begin_attempt(
        &self,
        step: &StepRecord,
        attempt: u32,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let fault = self.enter("begin_attempt").await?;
        let r = self.inner.begin_attempt(step, attempt, at).await;
        leave(fault, r)
    }

    async fn retry_step(
        &self,
        step: &StepRecord,
        attempt: u32,
        error: &ErrorInfo,
        next_at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let fault = self.enter("retry_step").await?;
        let r = self.inner.retry_step(step, attempt, error, next_at).await;
        leave(fault, r)
    }

    async fn finish_step(
        &self,
        run_id: &str,
        step_id: &str,
        outcome: &StepOutcome,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let fault = self.enter("finish_step").await?;
        let r = self
            .watched(
                run_id,
                step_id,
                outcome,
                self.inner.finish_step(run_id, step_id, outcome, at),
            )
            .await;
        leave(fault, r)
    }

    async fn record_step(&self, step: &StepRecord, next: &[StepRecord]) -> StoreResult<bool> {
        let fault = self.enter("record_step").await?;
        let outcome = match step.status {
            StepStatus::Failed => StepOutcome::Failed(
                step.error
                    .clone()
                    .unwrap_or_else(|| ErrorInfo::new("Error", "a failed step without an error")),
            ),
            _ => StepOutcome::Completed(step.output.clone().unwrap_or_default()),
        };
        let r = self
            .watched(
                &step.run_id,
                &step.step_id,
                &outcome,
                self.inner.record_step(step, next),
            )
            .await;
        leave(fault, r)
    }
}

// ---- the queue ----

/// A queued message in the simulation.
#[derive(Debug, Clone)]
struct Queued {
    due: Instant,
    /// Push order (deterministic for a seed).
    seq: u64,
    /// Order in which the message's run was first seen: the canonical order of runs, as run
    /// ids themselves carry ULID randomness.
    ordinal: u64,
    message: Message,
}

#[derive(Default)]
struct SimQueue {
    messages: Vec<Queued>,
    seq: u64,
    ordinals: HashMap<String, u64>,
    /// Messages accepted from the engine (injected failures and redeliveries not counted).
    sent: u64,
}

impl SimQueue {
    fn push(&mut self, message: Message, due: Instant) {
        let next = self.ordinals.len() as u64;
        let ordinal = *self.ordinals.entry(message.run_id.clone()).or_insert(next);
        self.seq += 1;
        self.messages.push(Queued {
            due,
            seq: self.seq,
            ordinal,
            message,
        });
    }
}

/// Rounds a delivery delay up: to a power of two of seconds up to 16 s, to whole seconds
/// beyond. Backoff jitter (`[d/2, d]`, `d` a power of two of seconds) then always gives `d`,
/// so a seed's history does not depend on the engine's unseeded jitter, and the clock only
/// ever shows whole seconds since the start.
fn quantize(delay: Duration) -> Duration {
    if delay.is_zero() {
        return Duration::ZERO;
    }
    let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    if secs <= 16 {
        Duration::from_secs(secs.next_power_of_two())
    } else {
        Duration::from_secs(secs)
    }
}

/// An SQS-like queue, simulated in memory: sends may crash before, partway or after (as the
/// [`Faults`] decide); each message is due at now + its delay (rounded, see the module docs)
/// + a random extra delay. Delivery is the [`Driver`]'s job. Clones share the same queue.
#[derive(Clone)]
pub struct ChaosQueue {
    sim: Arc<Mutex<SimQueue>>,
    faults: Arc<Faults>,
    max_delay: Duration,
}

impl ChaosQueue {
    /// A queue with SQS's longest delay, 15 minutes: longer sleeps become chains of capped
    /// delays.
    pub fn new(faults: Arc<Faults>) -> Self {
        ChaosQueue {
            sim: Arc::default(),
            faults,
            max_delay: Duration::from_secs(15 * 60),
        }
    }

    pub fn with_max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// Messages queued now (in flight ones not counted).
    pub fn len(&self) -> usize {
        lock(&self.sim).messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages accepted from the engine so far.
    pub fn sent(&self) -> u64 {
        lock(&self.sim).sent
    }

    /// Queues a message outside the engine (no faults): redeliveries and duplicates.
    fn requeue(&self, message: Message, delay: Duration) {
        let due = Instant::now() + quantize(delay);
        lock(&self.sim).push(message, due);
    }

    /// Takes a random due message, choosing among them in a canonical order.
    fn take_due(&self, now: Instant) -> Option<Queued> {
        let mut sim = lock(&self.sim);
        let mut due: Vec<usize> = (0..sim.messages.len())
            .filter(|&i| sim.messages[i].due <= now)
            .collect();
        if due.is_empty() {
            return None;
        }
        due.sort_by_key(|&i| (sim.messages[i].ordinal, sim.messages[i].seq));
        let pick = due[self.faults.below(due.len())];
        Some(sim.messages.swap_remove(pick))
    }

    /// When the next message is due.
    fn next_due(&self) -> Option<Instant> {
        lock(&self.sim).messages.iter().map(|q| q.due).min()
    }
}

#[async_trait]
impl Queue for ChaosQueue {
    async fn send(&self, batch: Vec<Envelope>) -> Result<(), QueueError> {
        self.faults.interleave().await;
        let fault = self.faults.send_fault(batch.len());
        let keep = match fault {
            SendFault::Before => 0,
            SendFault::Partial(k) => k,
            SendFault::None | SendFault::After => batch.len(),
        };
        let now = Instant::now();
        for Envelope { message, delay } in batch.into_iter().take(keep) {
            let delay = quantize(delay.min(self.max_delay)) + self.faults.extra_delay();
            let mut sim = lock(&self.sim);
            sim.sent += 1;
            sim.push(message, now + delay);
        }
        match fault {
            SendFault::None => Ok(()),
            _ => Err(QueueError::Backend("injected fault".into())),
        }
    }

    fn max_delay(&self) -> Duration {
        self.max_delay
    }
}

// ---- the driver ----

/// Bounds and delivery behaviour of a [`Driver`].
#[derive(Debug, Clone, PartialEq)]
pub struct DriverConfig {
    /// Handler invocations in flight at once (1: strictly one after another).
    pub concurrency: usize,
    /// A message whose handler failed is delivered again after this long.
    pub visibility_timeout: Duration,
    /// A handler invocation still running after this long (virtual time) is abandoned, as a
    /// Lambda timeout would, and reported in [`DriveReport::hung`]: an invocation that never
    /// returns is an engine bug (with paused time, an invocation waiting on nothing trips it
    /// at once).
    pub handler_timeout: Duration,
    /// After this many deliveries faults are switched off (so a seed always converges).
    pub faulty_deliveries: u64,
    /// Sweeps run with faults on; later ones run with faults off.
    pub faulty_sweeps: u32,
    /// Probability, per delivery, of also running the sweeper right then (re-driving every
    /// run that has not ended while its messages are still queued or in flight), as a
    /// periodic sweeper in production races live messages.
    pub stray_sweeps: f64,
    /// Hard bounds: the driver stops and reports unfinished runs past them.
    pub max_deliveries: u64,
    pub max_sweeps: u32,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            concurrency: 1,
            visibility_timeout: Duration::from_secs(30),
            handler_timeout: Duration::from_secs(15 * 60),
            faulty_deliveries: 2_000,
            faulty_sweeps: 3,
            stray_sweeps: 0.0,
            max_deliveries: 10_000,
            max_sweeps: 20,
        }
    }
}

/// What a [`Driver::run`] did, and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriveReport {
    /// Handler invocations (duplicates and redeliveries included).
    pub deliveries: u64,
    /// Invocations that returned an error (a crashed handler); their message came back.
    pub handler_errors: u64,
    /// Messages delivered and also kept queued for a second delivery.
    pub duplicates: u64,
    /// Most handlers in flight at once.
    pub max_in_flight: usize,
    /// Times the queue ran dry and the sweeper was called.
    pub sweeps: u32,
    /// Sweeper calls that failed (injected faults).
    pub sweep_errors: u32,
    /// Sweeps run mid-flight ([`DriverConfig::stray_sweeps`]).
    pub stray_sweeps: u32,
    /// Runs the sweeper re-drove when the queue ran dry, summed over sweeps (stray sweeps
    /// not counted): each is a run that could not finish on its own messages.
    pub redriven: u64,
    /// Times the paused clock was advanced to the next due message.
    pub clock_advances: u64,
    /// Virtual time the drive took.
    pub elapsed: Duration,
    /// The delivery count at which faults were switched off, if they were.
    pub faults_off_at: Option<u64>,
    /// A bound was hit before the queue drained and the sweeper found nothing to do.
    pub exhausted: bool,
    /// Runs not ended when the driver stopped (read with faults off).
    pub unfinished: Vec<String>,
    /// Messages whose handler invocation never returned (abandoned after the handler
    /// timeout, then delivered again like a failed one).
    pub hung: Vec<Message>,
}

impl DriveReport {
    /// Every run ended and no bound was hit.
    pub fn finished(&self) -> bool {
        !self.exhausted && self.unfinished.is_empty() && self.hung.is_empty()
    }
}

/// How one handler invocation ended.
enum Outcome {
    Done(Result<(), EngineError>),
    Hung,
}

type InFlight = Pin<Box<dyn Future<Output = (Message, Outcome)> + Send>>;

/// Delivers the [`ChaosQueue`]'s messages to an [`Engine`] like SQS does: a random due
/// message next (reordering), sometimes a duplicate, a failed handler's message again after
/// the visibility timeout, a success's message deleted. When nothing is due it sleeps until
/// the next due message, which with tokio's paused clock (`#[tokio::test(start_paused =
/// true)]`, or a runtime built with `start_paused(true)`) advances the clock at once; when the queue is empty it calls the sweeper
/// ([`Engine::sweep`]) until it finds no run that has not ended. Everything is bounded
/// (see [`DriverConfig`]).
pub struct Driver {
    engine: Engine,
    queue: ChaosQueue,
    faults: Arc<Faults>,
    config: DriverConfig,
}

impl Driver {
    pub fn new(
        engine: Engine,
        queue: ChaosQueue,
        faults: Arc<Faults>,
        config: DriverConfig,
    ) -> Self {
        Driver {
            engine,
            queue,
            faults,
            config,
        }
    }

    fn faults_off(&self, report: &mut DriveReport) {
        if self.faults.enabled() {
            self.faults.set_enabled(false);
            report.faults_off_at = Some(report.deliveries);
        }
    }

    /// Drives until every run has ended or a bound is hit. Faults are off when it returns.
    pub async fn run(&self) -> DriveReport {
        let started = Instant::now();
        let mut report = DriveReport::default();
        let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
        let concurrency = self.config.concurrency.max(1);
        loop {
            // Start handlers for due messages, up to the concurrency; with some in flight,
            // sometimes let them progress first.
            while in_flight.len() < concurrency && report.deliveries < self.config.max_deliveries {
                if !in_flight.is_empty() && self.faults.chance(0.5) {
                    break;
                }
                let Some(queued) = self.queue.take_due(Instant::now()) else {
                    break;
                };
                report.deliveries += 1;
                if report.deliveries >= self.config.faulty_deliveries {
                    self.faults_off(&mut report);
                }
                if self.faults.chance(self.config.stray_sweeps) {
                    report.stray_sweeps += 1;
                    if self.engine.sweep(None).await.is_err() {
                        report.sweep_errors += 1;
                    }
                }
                if self.faults.duplicate() {
                    report.duplicates += 1;
                    let again = Duration::from_secs(self.faults.below(3) as u64);
                    self.queue.requeue(queued.message.clone(), again);
                }
                let engine = self.engine.clone();
                let message = queued.message;
                let timeout = self.config.handler_timeout;
                in_flight.push(Box::pin(async move {
                    // Handlers get a deadline, as on Lambda: runs go on inline where they can.
                    let deadline = tokio::time::Instant::now() + timeout;
                    let handled = tokio::time::timeout(
                        timeout,
                        engine.handle_within(message.clone(), Some(deadline)),
                    );
                    match handled.await {
                        Ok(result) => (message, Outcome::Done(result)),
                        Err(_) => (message, Outcome::Hung),
                    }
                }));
                report.max_in_flight = report.max_in_flight.max(in_flight.len());
            }
            if let Some((message, outcome)) = in_flight.next().await {
                match outcome {
                    Outcome::Done(Ok(())) => {}
                    Outcome::Done(Err(_)) => {
                        report.handler_errors += 1;
                        self.queue.requeue(message, self.config.visibility_timeout);
                    }
                    Outcome::Hung => {
                        report.hung.push(message.clone());
                        self.queue.requeue(message, self.config.visibility_timeout);
                    }
                }
                continue;
            }
            if report.deliveries >= self.config.max_deliveries {
                report.exhausted = true;
                break;
            }
            if let Some(due) = self.queue.next_due() {
                let now = Instant::now();
                if due > now {
                    report.clock_advances += 1;
                    // With paused time an idle runtime jumps straight to the deadline.
                    tokio::time::sleep_until(due).await;
                }
                continue;
            }
            // The queue is dry: ask the sweeper whether any run has not ended.
            if report.sweeps >= self.config.max_sweeps {
                report.exhausted = true;
                break;
            }
            report.sweeps += 1;
            if report.sweeps > self.config.faulty_sweeps {
                self.faults_off(&mut report);
            }
            match self.engine.sweep(None).await {
                Ok(0) => break,
                Ok(n) => report.redriven += n as u64,
                Err(_) => report.sweep_errors += 1,
            }
        }
        self.faults_off(&mut report);
        report.unfinished = self.unfinished().await;
        report.elapsed = Instant::now() - started;
        report
    }

    /// Runs that have not ended, read through the engine's store (with faults off).
    async fn unfinished(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for status in [RunStatus::Queued, RunStatus::Running] {
            let mut query = RunQuery {
                status: Some(status),
                limit: 1000,
                ..RunQuery::default()
            };
            loop {
                match self.engine.store().list_runs(&query).await {
                    Ok(page) => {
                        ids.extend(page.runs.into_iter().map(|r| r.run_id));
                        match page.cursor {
                            Some(cursor) => query.cursor = Some(cursor),
                            None => break,
                        }
                    }
                    Err(e) => {
                        ids.push(format!("<could not list runs: {e}>"));
                        break;
                    }
                }
            }
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_makes_jittered_backoff_exact() {
        assert_eq!(quantize(Duration::ZERO), Duration::ZERO);
        assert_eq!(quantize(Duration::from_millis(500)), Duration::from_secs(1));
        assert_eq!(
            quantize(Duration::from_millis(1000)),
            Duration::from_secs(1)
        );
        assert_eq!(
            quantize(Duration::from_millis(1001)),
            Duration::from_secs(2)
        );
        assert_eq!(
            quantize(Duration::from_millis(2500)),
            Duration::from_secs(4)
        );
        assert_eq!(
            quantize(Duration::from_millis(3999)),
            Duration::from_secs(4)
        );
        assert_eq!(
            quantize(Duration::from_millis(16_000)),
            Duration::from_secs(16)
        );
        assert_eq!(
            quantize(Duration::from_millis(16_001)),
            Duration::from_secs(17)
        );
        assert_eq!(quantize(Duration::from_secs(900)), Duration::from_secs(900));
    }

    #[test]
    fn the_same_seed_makes_the_same_decisions() {
        let draw = |seed| {
            let f = Faults::new(seed, FaultConfig::heavy());
            (0..200)
                .map(|i| format!("{:?}{:?}", f.store_fault("x"), f.send_fault(i % 4 + 1)))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn disabled_faults_inject_nothing() {
        let f = Faults::new(1, FaultConfig::heavy().scaled(100.0));
        f.set_enabled(false);
        for _ in 0..100 {
            assert_eq!(f.store_fault("x"), Fault::None);
            assert_eq!(f.send_fault(3), SendFault::None);
            assert!(!f.duplicate());
            assert_eq!(f.extra_delay(), Duration::ZERO);
        }
    }
}
