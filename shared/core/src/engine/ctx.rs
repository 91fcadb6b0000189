//! [`Ctx`]: what function code talks to. Each method assigns the next step id, looks the step
//! up in the journal, and either returns the journaled result, executes it (only the step this
//! invocation was sent to run), or plans it and never resolves, so the invocation ends there.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Notify;

use super::config::later;
use super::wait::{WAIT_LOOKBACK, WaitSpec, wait_key};
use super::{Engine, NewEvent};
use crate::error::{EngineError, Error, ErrorKind, StepError};
use crate::function::{
    Event, FUNCTION_FINISHED, FUNCTION_INVOKED, Function, INVOKE_META, Invoke, Matching, Step, Wait,
};
use crate::model::{
    ErrorInfo, Message, MessageKind, Progress, RunRecord, RunTransition, StepKind, StepOutcome,
    StepRecord, StepStatus,
};

/// The longest progress message kept (bytes).
pub const MAX_PROGRESS_MESSAGE: usize = 1024;

/// Handed to a step body: who it is, for logs and for idempotency keys of outside calls
/// (a body may run more than once; a recorded output never changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepCtx {
    pub run_id: String,
    pub step_id: String,
    /// 1-based.
    pub attempt: u32,
    /// `{run_id}:{step_id}`: pass it to outside APIs that deduplicate.
    pub idempotency_key: String,
}

/// The step this invocation executes (one per invocation).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub step_id: String,
    pub attempt: u32,
    /// Planned already started by this invocation (inline): no attempt start to write.
    pub claimed: bool,
}

/// A step the run is blocked on, found while replaying.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub record: StepRecord,
    /// Not yet in the journal: plan it (and enqueue it when this handler wins the plan).
    pub is_new: bool,
    /// For a wait: where it meets its event.
    pub wait: Option<WaitSpec>,
}

/// Function code's handle on its run.
///
/// Cloning gives a *branch*: its step ids carry the clone's position (`0/part`, `1/part`, …),
/// so parallel branches keep their own ids on every replay, however far each branch got.
/// Clone once per branch (as `join_all(items.map(|i| { let ctx = ctx.clone(); … }))` does);
/// clones happen in the same order on every replay because code outside steps is deterministic.
pub struct Ctx {
    inner: Arc<Inner>,
    /// Step id prefix of this branch ("" at the top).
    scope: String,
    /// Branches cloned from this one so far.
    branches: Arc<AtomicU32>,
}

impl Clone for Ctx {
    fn clone(&self) -> Ctx {
        let n = self.branches.fetch_add(1, Ordering::Relaxed);
        Ctx {
            inner: self.inner.clone(),
            scope: format!("{}{n}/", self.scope),
            branches: Arc::new(AtomicU32::new(0)),
        }
    }
}

struct Inner {
    engine: Engine,
    run: RunRecord,
    function: Arc<Function>,
    /// The journal given holds only some entries (the cache's final ones): a step not in it
    /// may still be in the store, and is read when the replay reaches it.
    partial: bool,
    target: Option<Target>,
    /// The step the message is about (its target, or the sleep it woke): a replay that does
    /// not reach it is not deterministic. (With a partial journal, this is what catches it.)
    expected: Option<String>,
    /// The run's start (Queued to Running), not written yet: the pass's first write makes it
    /// first ([`Ctx::ensure_started`]); when the pass writes nothing, the engine writes it with
    /// what the pass leads to ([`PassResult::start`]).
    start: tokio::sync::Mutex<Option<RunTransition>>,
    now: DateTime<Utc>,
    /// A dry replay ([`Engine::check_run`]): no step body runs, nothing is read or written;
    /// whatever would act blocks instead.
    dry: bool,
    wake: Arc<Notify>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    journal: HashMap<String, StepRecord>,
    /// The sequence number the replay gave each step id.
    seqs: HashMap<String, u32>,
    name_counts: HashMap<String, u32>,
    visited: HashSet<String>,
    next_seq: u32,
    pending: Vec<Pending>,
    /// Step bodies (and inline sends) in progress: while any runs, the pass is not blocked.
    active: usize,
    /// A definition error (undeclared step, non-determinism): fails the run whatever the code does.
    fatal: Option<Error>,
    /// The step id where `fatal` arose, when it is about one.
    fatal_at: Option<String>,
    /// The whole journal is in `journal` (read when a patch marker needed it).
    complete: bool,
    /// The patch markers the pass reached, and the branch each took (true: the new code).
    patches: Vec<(String, bool)>,
    /// The store or queue failed: the invocation stops and the message is delivered again.
    interrupted: Option<EngineError>,
    progress: Option<Progress>,
    /// Messages to send once the pass ends (retries).
    outbox: Vec<(Message, Duration)>,
    /// The result of the target step, final, not yet written: the engine writes it when the
    /// pass ends, with the steps the run goes on to ([`crate::Store::record_step`]).
    finished: Option<StepRecord>,
    /// The scope (branch) of the target step once its body ended in this pass: the steps after
    /// it in that scope are new unless the journal has them (nothing could plan them before
    /// the target's result, and that result is written after this pass, or the pass is lost).
    after_target: Option<String>,
    /// The target's result was written during the pass (before a journaled send): true when
    /// this pass recorded it, false when another handler had (the pass then stops).
    recorded: Option<bool>,
}

/// Decrements the active count when a body ends, however it ends, and wakes the driver.
struct ActiveGuard<'a>(&'a Ctx);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.state().active -= 1;
        self.0.inner.wake.notify_one();
    }
}

/// How a replay pass ended.
pub(crate) enum PassEnd {
    Finished(Result<Value, Error>),
    Blocked,
}

/// Everything the executor needs after a pass.
pub(crate) struct PassResult {
    pub end: PassEnd,
    pub fatal: Option<Error>,
    pub fatal_at: Option<String>,
    /// Patch markers reached: step id, and whether the run took the new branch.
    pub patches: Vec<(String, bool)>,
    pub interrupted: Option<EngineError>,
    pub pending: Vec<Pending>,
    pub progress: Option<Progress>,
    pub outbox: Vec<(Message, Duration)>,
    /// Journal entries the pass never reached.
    pub unvisited: Vec<String>,
    /// The target step's result, to be written ([`State::finished`]).
    pub finished: Option<StepRecord>,
    /// This invocation recorded the result of its target step.
    pub target_recorded: bool,
    /// Another handler had recorded the target step: the pass went on with an output that is
    /// not the journal's, and must be replayed.
    pub lost: bool,
    /// The run's deferred start ([`Ctx::deferring_start`]), still to be written.
    pub start: Option<RunTransition>,
}

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        engine: Engine,
        run: RunRecord,
        function: Arc<Function>,
        journal: Vec<StepRecord>,
        partial: bool,
        target: Option<Target>,
        woken: Option<String>,
        now: DateTime<Utc>,
    ) -> Ctx {
        Ctx::build(
            engine, run, function, journal, partial, target, woken, now, false,
        )
    }

    /// A context for a dry replay of `run` over its whole journal: step bodies never run and
    /// nothing is read or written (see [`Engine::check_run`]).
    pub(crate) fn dry(
        engine: Engine,
        run: RunRecord,
        function: Arc<Function>,
        journal: Vec<StepRecord>,
        now: DateTime<Utc>,
    ) -> Ctx {
        Ctx::build(engine, run, function, journal, false, None, None, now, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        engine: Engine,
        run: RunRecord,
        function: Arc<Function>,
        journal: Vec<StepRecord>,
        partial: bool,
        target: Option<Target>,
        woken: Option<String>,
        now: DateTime<Utc>,
        dry: bool,
    ) -> Ctx {
        let expected = target.as_ref().map(|t| t.step_id.clone()).or(woken);
        let state = State {
            journal: journal
                .into_iter()
                .map(|s| (s.step_id.clone(), s))
                .collect(),
            progress: run.progress.clone(),
            complete: !partial,
            ..State::default()
        };
        Ctx {
            inner: Arc::new(Inner {
                engine,
                run,
                function,
                partial,
                target,
                expected,
                start: tokio::sync::Mutex::new(None),
                now,
                dry,
                wake: Arc::new(Notify::new()),
                state: Mutex::new(state),
            }),
            scope: String::new(),
            branches: Arc::new(AtomicU32::new(0)),
        }
    }

    /// This context's run is Queued and starts with this pass: `start` (its move to Running) is
    /// written before the pass's first write, or, when the pass writes nothing, left to the
    /// engine, which folds it into the write that plans the run's first step.
    pub(crate) fn deferring_start(mut self, start: RunTransition) -> Ctx {
        let inner = Arc::get_mut(&mut self.inner).expect("a context not shared yet");
        *inner.start.get_mut() = Some(start);
        self
    }

    /// Writes the run's deferred start, if any, before the pass writes anything else; the
    /// branches of a pass wait for the one that writes it.
    async fn ensure_started(&self) -> Result<(), EngineError> {
        let mut start = self.inner.start.lock().await;
        if let Some(t) = start.as_ref() {
            self.inner
                .engine
                .store()
                .transition_run(&self.inner.run.run_id, t)
                .await?;
            *start = None;
        }
        Ok(())
    }

    /// The same branch (for the engine's own handle: no new step ids).
    pub(crate) fn share(&self) -> Ctx {
        Ctx {
            inner: self.inner.clone(),
            scope: self.scope.clone(),
            branches: self.branches.clone(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn run_id(&self) -> &str {
        &self.inner.run.run_id
    }

    pub fn function_id(&self) -> &str {
        &self.inner.run.function_id
    }

    /// Runs `body` once, durably: its output is journaled and returned on every replay.
    ///
    /// `step` must be declared on the function ([`Function::steps`]); its declaration's
    /// timeout and retries apply. The body is an async closure (`async |s| ...`, or
    /// `|s| async move { ... }`) that may borrow from the function's code: it is awaited
    /// here. Errors from the body are retried per the step's policy; when retries are exhausted
    /// (or the error is non-retriable) this returns an error of kind
    /// [`ErrorKind::StepFailed`], which the code may handle.
    pub async fn step<T, F, Fut>(&self, step: Step, body: F) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(StepCtx) -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
    {
        let name = step.name();
        let (step_id, existing) = self.enter(name, StepKind::Run).await?;
        if let Some(done) = existing.as_ref().and_then(|r| self.replayed::<T>(r)) {
            return done;
        }
        let record =
            existing.unwrap_or_else(|| self.new_record(&step_id, name, StepKind::Run, None));
        let (attempt, claimed) = match &self.inner.target {
            Some(t) if t.step_id == step_id => (t.attempt, t.claimed),
            _ => return self.block(record).await,
        };
        let _active = self.activate();
        let engine = &self.inner.engine;
        let run_id = self.run_id();
        let started = engine.now();
        let begun = if claimed {
            Ok(true)
        } else {
            engine
                .store()
                .begin_attempt(&record, attempt, started)
                .await
        };
        match begun {
            Err(e) => return self.interrupt(e.into()).await,
            // Final already, or a stale attempt number: defer to the journal.
            Ok(false) => return self.reread::<T>(&step_id, name, _active).await,
            Ok(true) => {}
        }
        let config = self
            .inner
            .function
            .steps
            .get(name)
            .cloned()
            .unwrap_or_default();
        let step_ctx = StepCtx {
            run_id: run_id.to_string(),
            step_id: step_id.clone(),
            attempt,
            idempotency_key: format!("{run_id}:{step_id}"),
        };
        let result = match tokio::time::timeout(
            config.timeout,
            AssertUnwindSafe(body(step_ctx)).catch_unwind(),
        )
        .await
        {
            Err(_) => Err(StepError::retriable(format!(
                "step timed out after {:?}",
                config.timeout
            ))
            .named("StepTimeout")),
            Ok(Err(panic)) => {
                Err(StepError::non_retriable(panic_message(&panic)).named("StepPanicked"))
            }
            Ok(Ok(r)) => r,
        };
        let result = result.and_then(|output| {
            let value = serde_json::to_value(&output).map_err(|e| {
                StepError::non_retriable(format!("output is not serializable: {e}"))
                    .named("OutputNotSerializable")
            })?;
            engine.check_output(&value)?;
            Ok(value)
        });
        let ended = engine.now();
        let outcome = match result {
            Ok(value) => StepOutcome::Completed(value),
            Err(err) if err.retriable && attempt <= self.inner.function.step_retries(name) => {
                let delay = engine.retry_delay(attempt, err.retry_after);
                let next_at = later(ended, delay);
                match engine
                    .store()
                    .retry_step(&record, attempt, &err.info(), next_at)
                    .await
                {
                    Err(e) => return self.interrupt(e.into()).await,
                    Ok(false) => return self.reread::<T>(&step_id, name, _active).await,
                    Ok(true) => {}
                }
                let message = Message {
                    run_id: run_id.to_string(),
                    function_id: self.function_id().to_string(),
                    kind: MessageKind::Step {
                        step_id: step_id.clone(),
                        name: name.to_string(),
                        attempt: attempt + 1,
                    },
                    not_before: Some(next_at),
                };
                self.state().outbox.push((message, delay));
                drop(_active);
                return std::future::pending().await;
            }
            Err(err) => StepOutcome::Failed(err.info()),
        };
        // The result is written when the pass ends, in one write with the steps the run goes
        // on to: the code after this step runs first, so that write knows them.
        let mut record = record;
        record.attempts = attempt;
        record.started_at.get_or_insert(started);
        record.ended_at = Some(ended);
        set_outcome(&mut record, outcome);
        let result = journaled::<T>(&record).expect("a finished step is final");
        let mut state = self.state();
        state.journal.insert(step_id, record.clone());
        state.finished = Some(record);
        state.after_target = Some(self.scope.clone());
        result
    }

    /// Fan-out: runs `step` once per item, at most `parallelism` (at least 1) at a time,
    /// and returns the outputs in the items' order. Each item is a step of its own (a branch:
    /// id `{n}/{name}`), journaled and retried on its own; as items finish, the next ones
    /// start. Every item runs; the error of the first item (in item order) that failed for
    /// good is returned. Each item counts toward `max_steps_per_run`.
    ///
    /// ```ignore
    /// let vectors: Vec<Vec<f32>> = ctx
    ///     .map(EMBED, chunks.chunks(20).map(<[_]>::to_vec), 4, |_, batch| embed(batch))
    ///     .await?;
    /// ```
    pub async fn map<I, T, F, Fut>(
        &self,
        step: Step,
        items: impl IntoIterator<Item = I>,
        parallelism: usize,
        f: F,
    ) -> Result<Vec<T>, Error>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(StepCtx, I) -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
    {
        use futures::StreamExt as _;
        // Branches are made here, in item order, so every replay gives item k the same id
        // however the items' steps interleave.
        let work: Vec<(Ctx, I)> = items.into_iter().map(|item| (self.clone(), item)).collect();
        let f = &f;
        let results: Vec<Result<T, Error>> = futures::stream::iter(work)
            .map(|(branch, item)| async move { branch.step(step, |s| f(s, item)).await })
            .buffered(parallelism.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Sleeps durably for `duration` (up to the engine's `max_sleep`, a year by default).
    pub async fn sleep(&self, name: &str, duration: Duration) -> Result<(), Error> {
        let until = later(self.inner.now, duration);
        self.sleep_step(name, until).await
    }

    /// Sleeps durably until `until` (at most `max_sleep` from when the sleep is first planned).
    pub async fn sleep_until(&self, name: &str, until: DateTime<Utc>) -> Result<(), Error> {
        self.sleep_step(name, until).await
    }

    async fn sleep_step(&self, name: &str, until: DateTime<Utc>) -> Result<(), Error> {
        let (step_id, existing) = self.enter(name, StepKind::Sleep).await?;
        if let Some(record) = existing {
            if record.status.is_final() {
                return Ok(());
            }
            return self.block(record).await;
        }
        self.check_wake_time("sleep", name, until)?;
        let record = self.new_record(&step_id, name, StepKind::Sleep, Some(until));
        self.block(record).await
    }

    /// A sleep or wait may last up to `max_sleep` and must end within the run's maximum age.
    fn check_wake_time(&self, what: &str, name: &str, until: DateTime<Utc>) -> Result<(), Error> {
        let max = self.inner.engine.limits().max_sleep;
        let longest = later(self.inner.now, max);
        if until > longest {
            return Err(self.fail_definition(
                "SleepTooLong",
                format!("{what} {name:?} until {until} is longer than the limit of {max:?}"),
            ));
        }
        let max_age = self.inner.engine.limits().max_run_age;
        let end_of_life = later(self.inner.run.started_at, max_age);
        if until > end_of_life {
            return Err(self.fail_definition(
                "SleepTooLong",
                format!(
                    "{what} {name:?} until {until} ends after the run's maximum age of {max_age:?} (at {end_of_life})"
                ),
            ));
        }
        Ok(())
    }

    /// Waits durably for `wait`'s event whose field equals `value`; `None` when the timeout
    /// came first.
    ///
    /// Race-free: an event that arrived after the run started but before this wait was
    /// registered (the outside service answered fast) is found. The wait must be declared on
    /// the function ([`Function::wait`]); its timeout counts toward the same limits as a sleep.
    pub async fn wait_for_event<D: DeserializeOwned>(
        &self,
        wait: Wait<D>,
        value: impl Serialize,
    ) -> Result<Option<Event<D>>, Error> {
        let value = serde_json::to_value(value).unwrap_or(Value::Null);
        self.wait_declared(wait, value).await
    }

    /// Waits durably for `wait`'s event whose field equals the same field of this run's own
    /// event (Inngest's `match`; the wait is declared with [`Wait::matching_run_event`]).
    pub async fn wait_for_match<D: DeserializeOwned>(
        &self,
        wait: Wait<D>,
    ) -> Result<Option<Event<D>>, Error> {
        let value = crate::function::lookup(&self.inner.run.event.to_json(), wait.field())
            .cloned()
            .unwrap_or(Value::Null);
        self.wait_declared(wait, value).await
    }

    async fn wait_declared<D: DeserializeOwned>(
        &self,
        wait: Wait<D>,
        value: Value,
    ) -> Result<Option<Event<D>>, Error> {
        let (name, event, field) = (wait.name(), wait.event(), wait.field());
        let declared = self
            .inner
            .function
            .waits
            .iter()
            .any(|(e, f)| e == event && f == field);
        if !declared {
            return Err(self.fail_at(
                &format!("{}{name}", self.scope),
                "UndeclaredWait",
                format!(
                    "wait {name:?} for {event:?} on {field:?} is not declared on function {:?} (Function::wait)",
                    self.inner.function.id
                ),
            ));
        }
        if wait.matching() == Matching::RunEvent && value.is_null() {
            return Err(self.fail_definition(
                "InvalidWait",
                format!("wait {name:?} matches the run's own {field:?}, which its event lacks"),
            ));
        }
        let received = self
            .wait_step(name, event, field, value, wait.timeout_duration())
            .await?;
        received
            .map(|event| {
                serde_json::from_value(event).map_err(|e| {
                    self.fail_at(
                        &format!("{}{name}", self.scope),
                        "EventTypeMismatch",
                        format!("the event wait {name:?} received does not match its type: {e}"),
                    )
                })
            })
            .transpose()
    }

    /// The wait step: the event as JSON, or `None` at the timeout.
    async fn wait_step(
        &self,
        name: &str,
        event: &str,
        field: &str,
        value: Value,
        timeout: Duration,
    ) -> Result<Option<Value>, Error> {
        let (step_id, existing) = self.enter(name, StepKind::Wait).await?;
        if let Some(done) = existing
            .as_ref()
            .and_then(|r| self.replayed::<Option<Value>>(r))
        {
            return done;
        }
        if value.is_null() {
            return Err(self.fail_definition(
                "InvalidWait",
                format!("wait {name:?} matches {field:?} on a missing or null value"),
            ));
        }
        let spec = WaitSpec {
            key: wait_key(event, field, &value),
            since: self.inner.run.started_at - WAIT_LOOKBACK,
        };
        let record = match existing {
            Some(record) => record,
            None => {
                let until = later(self.inner.now, timeout);
                self.check_wake_time("wait", name, until)?;
                self.new_record(&step_id, name, StepKind::Wait, Some(until))
            }
        };
        self.block_on(record, Some(spec)).await
    }

    /// Runs `invoke`'s function as a child with `data` (it must serialize to a JSON object)
    /// and returns its output, or its error as a failed step. The child is an ordinary run
    /// (its own retries, flow control and status) started by a [`FUNCTION_INVOKED`] event;
    /// this run waits for its [`FUNCTION_FINISHED`] event, at most the invoke's timeout (then
    /// it fails with `InvokeTimedOut`). Journaled as two entries: the event sent (the invoke's
    /// name) and the wait (`{name}.finished`).
    pub async fn invoke<I: Serialize, O: DeserializeOwned>(
        &self,
        invoke: Invoke<I, O>,
        data: &I,
    ) -> Result<O, Error> {
        let (name, function_id, timeout) = (
            invoke.name(),
            invoke.function_id(),
            invoke.timeout_duration(),
        );
        if !self.inner.function.invokes.iter().any(|f| f == function_id) {
            return Err(self.fail_definition(
                "UndeclaredInvoke",
                format!(
                    "invoke {name:?} of {function_id:?} is not declared on function {:?} (Function::invokes)",
                    self.inner.function.id
                ),
            ));
        }
        if self.inner.engine.registry().get(function_id).is_none() {
            return Err(self.fail_definition(
                "UnknownFunction",
                format!("invoke {name:?}: function {function_id:?} is not registered"),
            ));
        }
        let mut data = match serde_json::to_value(data) {
            Ok(Value::Object(map)) => Value::Object(map),
            _ => {
                return Err(self.fail_definition(
                    "InvalidInvokeData",
                    format!("invoke {name:?}: data must serialize to a JSON object"),
                ));
            }
        };
        data[INVOKE_META] = serde_json::json!({
            "function_id": function_id,
            "parent_run_id": self.run_id(),
        });
        let ids = self
            .send_events_step(name, vec![NewEvent::new(FUNCTION_INVOKED, data)], true)
            .await?;
        let event_id = ids.first().cloned().unwrap_or_default();
        let child = super::run_id_for(&event_id, function_id);
        let wait_name = format!("{name}.finished");
        let finished = self
            .wait_step(
                &wait_name,
                FUNCTION_FINISHED,
                "data.run_id",
                Value::String(child.clone()),
                timeout,
            )
            .await?;
        let step_id = format!("{}{wait_name}", self.scope);
        let Some(finished) = finished else {
            return Err(Error::with_kind(
                ErrorKind::StepFailed { step_id },
                "InvokeTimedOut",
                format!("{function_id} run {child} did not finish within {timeout:?}"),
            ));
        };
        let data = finished.get("data").cloned().unwrap_or(Value::Null);
        if let Some(error) = data.get("error").filter(|e| !e.is_null()) {
            let info: ErrorInfo = serde_json::from_value(error.clone())
                .unwrap_or_else(|_| ErrorInfo::new("InvokeFailed", error.to_string()));
            return Err(Error::with_kind(
                ErrorKind::StepFailed { step_id },
                info.name,
                format!("{function_id} run {child}: {}", info.message),
            ));
        }
        let output = data.get("output").cloned().unwrap_or(Value::Null);
        serde_json::from_value(output).map_err(|e| {
            Error::with_kind(
                ErrorKind::Definition,
                "OutputTypeMismatch",
                format!("output of invoked {function_id} does not match its type: {e}"),
            )
        })
    }

    /// Sends events from function code, journaled: a replay returns the same event ids and
    /// sends nothing. Returns the event ids.
    pub async fn send_event(
        &self,
        name: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<String>, Error> {
        self.send_events_step(name, events, false).await
    }

    /// [`Ctx::send_event`]; `internal` allows the engine's own event names.
    async fn send_events_step(
        &self,
        name: &str,
        events: Vec<NewEvent>,
        internal: bool,
    ) -> Result<Vec<String>, Error> {
        let (step_id, existing) = self.enter(name, StepKind::SendEvent).await?;
        if let Some(done) = existing
            .as_ref()
            .and_then(|r| self.replayed::<Vec<String>>(r))
        {
            return done;
        }
        if self.inner.dry {
            let record = existing
                .unwrap_or_else(|| self.new_record(&step_id, name, StepKind::SendEvent, None));
            return self.block(record).await;
        }
        let _active = self.activate();
        if let Err(e) = self.ensure_started().await {
            return self.interrupt(e).await;
        }
        self.record_finished().await;
        let engine = &self.inner.engine;
        let record =
            existing.unwrap_or_else(|| self.new_record(&step_id, name, StepKind::SendEvent, None));
        if let Err(e) = engine.store().plan_step(&record).await {
            return self.interrupt(e.into()).await;
        }
        // Idempotency ids derived from the step make a re-send after a crash a no-op.
        let events = events
            .into_iter()
            .enumerate()
            .map(|(i, mut ev)| {
                ev.id = Some(format!("{}:{step_id}:{i}", self.run_id()));
                ev
            })
            .collect::<Vec<_>>();
        let outcome = match engine.submit(events, internal).await {
            Ok(ids) => StepOutcome::Completed(Value::from(ids)),
            Err(EngineError::Invalid(msg)) => {
                StepOutcome::Failed(ErrorInfo::new("InvalidEvent", msg))
            }
            Err(e) => return self.interrupt(e).await,
        };
        match engine
            .store()
            .finish_step(self.run_id(), &step_id, &outcome, engine.now())
            .await
        {
            Err(e) => self.interrupt(e.into()).await,
            Ok(false) => self.reread::<Vec<String>>(&step_id, name, _active).await,
            Ok(true) => {
                let mut record = record;
                set_outcome(&mut record, outcome);
                let result = journaled::<Vec<String>>(&record).expect("final");
                self.remember(&record);
                self.state().journal.insert(step_id, record);
                result
            }
        }
    }

    /// Reports progress, shown in the run's status (`GET /v1/runs/{id}`, the dashboard, `baton
    /// run --follow`). It only sets a value: the last one a replay reaches is stored once per
    /// invocation, with the invocation's other writes.
    pub fn progress(&self, percent: u8, message: impl Into<String>) {
        self.state().progress = Some(Progress {
            percent: percent.min(100),
            message: crate::model::cut(message.into(), MAX_PROGRESS_MESSAGE),
        });
    }

    /// A patch marker, so code can change under live runs: true when this run reaches `id`
    /// for the first time (the new code), false when its journal had already passed this
    /// point without it (a run started under the old code, to take the old branch). The
    /// answer is journaled when first given, so every replay of a run gets the same one.
    ///
    /// ```ignore
    /// if ctx.patched("summary-step").await {
    ///     ctx.step(SUMMARIZE, async |_| summarize(&doc).await).await?;   // the new code
    /// }
    /// ctx.step(PUBLISH, async |_| publish(&doc).await).await?;
    /// ```
    ///
    /// "Passed this point" means: in this branch, the journal has a step this replay has not
    /// reached yet (a step after the marker, or in a branch cloned after it). Call it from a
    /// branch's sequential code, not from within a `join` of the same `ctx`.
    ///
    /// To retire a patch once no live run needs the old branch: `baton deploy-check` lists
    /// the runs that took it; when none is left, delete the call and the old branch. A marker
    /// the code no longer reaches is ignored. `id`: letters, digits, `-` and `_`.
    pub async fn patched(&self, id: &str) -> bool {
        let step_id = format!("{}@{id}", self.scope);
        if !crate::function::valid_name(id) {
            self.fail_at(
                &step_id,
                "InvalidPatch",
                format!("patch id {id:?} must be 1-64 letters, digits, '-' or '_'"),
            );
            return false;
        }
        if let Some(taken) = self.known_patch(&step_id) {
            return taken;
        }
        let at_frontier = self.state().after_target.as_ref() == Some(&self.scope);
        if !at_frontier && !self.state().complete {
            // The journal came from the cache: whether the run passed here needs all of it.
            let _active = self.activate();
            match self.inner.engine.store().journal(self.run_id()).await {
                Err(e) => {
                    drop(_active);
                    return self.interrupt(e.into()).await;
                }
                Ok(journal) => {
                    let mut state = self.state();
                    for record in journal {
                        state
                            .journal
                            .entry(record.step_id.clone())
                            .or_insert(record);
                    }
                    state.complete = true;
                }
            }
            if let Some(taken) = self.known_patch(&step_id) {
                return taken;
            }
        }
        let taken = at_frontier || !self.passed_here();
        let mut marker = self.new_record(&step_id, id, StepKind::Patch, None);
        marker.seq = self.state().next_seq;
        marker.status = StepStatus::Completed;
        marker.output = Some(Value::Bool(taken));
        marker.started_at = Some(self.inner.now);
        marker.ended_at = Some(self.inner.now);
        if self.inner.dry {
            return self.note_patch(marker);
        }
        let _active = self.activate();
        if let Err(e) = self.ensure_started().await {
            drop(_active);
            return self.interrupt(e).await;
        }
        // Written before the target's result when the pass has one (unlike a journaled send):
        // the answer does not depend on that result, and a replay that finds the marker
        // without the result re-runs the step and reads the same answer.
        match self.inner.engine.store().record_step(&marker, &[]).await {
            Err(e) => {
                drop(_active);
                self.interrupt(e.into()).await
            }
            Ok(true) => {
                self.remember(&marker);
                self.note_patch(marker)
            }
            // Another handler recorded it first: its answer holds.
            Ok(false) => match self
                .inner
                .engine
                .store()
                .get_step(self.run_id(), &step_id)
                .await
            {
                Err(e) => {
                    drop(_active);
                    self.interrupt(e.into()).await
                }
                Ok(Some(record)) => {
                    self.remember(&record);
                    self.note_patch(record)
                }
                Ok(None) => {
                    drop(_active);
                    self.interrupt(EngineError::Store(crate::error::StoreError::Backend(
                        format!("patch marker {step_id:?} was recorded but cannot be read"),
                    )))
                    .await
                }
            },
        }
    }

    /// The journaled answer of patch marker `step_id`, if any (noted as reached).
    fn known_patch(&self, step_id: &str) -> Option<bool> {
        let record = self.state().journal.get(step_id).cloned()?;
        if record.kind != StepKind::Patch {
            self.fail_at(
                step_id,
                "NonDeterministic",
                format!(
                    "replay reached patch marker {step_id:?} where the journal has a {:?} step",
                    record.kind
                ),
            );
            return Some(false);
        }
        let taken = patch_answer(&record);
        let mut state = self.state();
        state.visited.insert(step_id.to_string());
        if !state.patches.iter().any(|(id, _)| id == step_id) {
            state.patches.push((step_id.to_string(), taken));
        }
        Some(taken)
    }

    /// Puts a marker just recorded (or read back) in this pass's journal; returns its answer.
    fn note_patch(&self, marker: StepRecord) -> bool {
        let taken = patch_answer(&marker);
        let mut state = self.state();
        state.visited.insert(marker.step_id.clone());
        state.patches.push((marker.step_id.clone(), taken));
        state.journal.insert(marker.step_id.clone(), marker);
        taken
    }

    /// Whether this branch's journal has a step the replay has not reached yet: directly in
    /// this branch, or in a branch cloned from it after this point.
    fn passed_here(&self) -> bool {
        let cloned_so_far = self.branches.load(Ordering::Relaxed);
        let state = self.state();
        state
            .journal
            .values()
            .flat_map(|s| std::iter::once(s).chain(&s.planned))
            .filter(|s| s.kind != StepKind::Patch && !state.visited.contains(&s.step_id))
            .any(|s| {
                let Some(rest) = s.step_id.strip_prefix(self.scope.as_str()) else {
                    return false;
                };
                match rest.split_once('/') {
                    None => true,
                    Some((branch, _)) => branch.parse::<u32>().is_ok_and(|n| n >= cloned_so_far),
                }
            })
    }

    // ---- internals ----

    /// Assigns the next step id for `name` and checks it against the journal (reading its
    /// entry from the store when the journal given is partial).
    async fn enter(
        &self,
        name: &str,
        kind: StepKind,
    ) -> Result<(String, Option<StepRecord>), Error> {
        let (step_id, mut existing) = self.assign(name, kind)?;
        // The target's entry is not read: starting its attempt tells whether it may run.
        let is_target = self
            .inner
            .target
            .as_ref()
            .is_some_and(|t| t.step_id == step_id);
        let after_target = self.state().after_target.as_ref() == Some(&self.scope);
        if existing.is_none() && self.inner.partial && !is_target && !after_target {
            // The journal came from the cache, which holds final entries only: read this one.
            // Counted as active, so the pass does not end while the read is in flight.
            let _active = self.activate();
            match self
                .inner
                .engine
                .store()
                .get_step(self.run_id(), &step_id)
                .await
            {
                Err(e) => {
                    drop(_active);
                    return self.interrupt(e.into()).await;
                }
                Ok(Some(record)) => {
                    self.remember(&record);
                    self.state().journal.insert(step_id.clone(), record.clone());
                    existing = Some(record);
                }
                // Planned in the result of a step the replay passed (kept on that step's entry
                // until it starts): planned, not new.
                Ok(None) => {
                    if let Some(record) = self.planned_by_known(&step_id) {
                        self.state().journal.insert(step_id.clone(), record.clone());
                        existing = Some(record);
                    }
                }
            }
        }
        if let Some(record) = &existing {
            if record.kind != kind || record.name != name {
                return Err(self.fail_at(
                    &step_id,
                    "NonDeterministic",
                    format!(
                        "replay reached {kind:?} step {step_id:?} where the journal has a {:?} step named {:?}: \
                         code outside steps must be deterministic",
                        record.kind, record.name
                    ),
                ));
            }
        }
        Ok((step_id, existing))
    }

    /// `step_id` as planned in the result of a step this pass knows ([`StepRecord::planned`]).
    fn planned_by_known(&self, step_id: &str) -> Option<StepRecord> {
        self.state()
            .journal
            .values()
            .flat_map(|s| &s.planned)
            .find(|p| p.step_id == step_id)
            .cloned()
    }

    /// Assigns the next step id (and sequence number) for `name`; its journal entry if known.
    fn assign(&self, name: &str, kind: StepKind) -> Result<(String, Option<StepRecord>), Error> {
        if kind == StepKind::Run && !self.inner.function.steps.contains_key(name) {
            let declared = self
                .inner
                .function
                .steps
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            return Err(self.fail_at(
                &format!("{}{name}", self.scope),
                "UndeclaredStep",
                format!(
                    "step {name:?} is not declared on function {:?} (declared: {declared})",
                    self.inner.function.id
                ),
            ));
        }
        let mut state = self.state();
        let base = format!("{}{name}", self.scope);
        let count = state.name_counts.entry(base.clone()).or_insert(0);
        let step_id = if *count == 0 {
            base
        } else {
            format!("{base}:{count}")
        };
        *count += 1;
        state.next_seq += 1;
        if state.next_seq > self.inner.engine.limits().max_steps_per_run {
            let max = self.inner.engine.limits().max_steps_per_run;
            drop(state);
            return Err(self.fail_definition(
                "TooManySteps",
                format!("a run may have at most {max} steps"),
            ));
        }
        state.visited.insert(step_id.clone());
        let seq = state.next_seq - 1;
        state.seqs.insert(step_id.clone(), seq);
        let existing = state.journal.get(&step_id).cloned();
        Ok((step_id, existing))
    }

    fn new_record(
        &self,
        step_id: &str,
        name: &str,
        kind: StepKind,
        wake_at: Option<DateTime<Utc>>,
    ) -> StepRecord {
        let seq = self.state().seqs.get(step_id).copied().unwrap_or_default();
        StepRecord {
            run_id: self.run_id().to_string(),
            step_id: step_id.to_string(),
            name: name.to_string(),
            kind,
            status: match kind {
                StepKind::Sleep => StepStatus::Sleeping,
                StepKind::Wait => StepStatus::Waiting,
                StepKind::Run | StepKind::SendEvent | StepKind::Patch => StepStatus::Planned,
            },
            attempts: 0,
            seq,
            planned_at: self.inner.now,
            started_at: None,
            ended_at: None,
            wake_at,
            output: None,
            error: None,
            planned: Vec::new(),
        }
    }

    /// The run is blocked on this step: note it and never resolve.
    async fn block<T>(&self, record: StepRecord) -> T {
        self.block_on(record, None).await
    }

    async fn block_on<T>(&self, record: StepRecord, wait: Option<WaitSpec>) -> T {
        {
            let mut state = self.state();
            if !state
                .pending
                .iter()
                .any(|p| p.record.step_id == record.step_id)
            {
                let is_new = !state.journal.contains_key(&record.step_id);
                state.pending.push(Pending {
                    record,
                    is_new,
                    wait,
                });
            }
        }
        std::future::pending().await
    }

    /// Writes the target step's result now, not when the pass ends, because code after it is
    /// about to journal a step of its own: a later step is never final before an earlier one.
    /// Returns when the pass may go on (never when another handler had recorded the step).
    async fn record_finished(&self) {
        let Some(step) = self.state().finished.take() else {
            return;
        };
        match self.inner.engine.store().record_step(&step, &[]).await {
            Err(e) => self.interrupt(e.into()).await,
            Ok(true) => {
                self.remember(&step);
                self.state().recorded = Some(true);
            }
            Ok(false) => {
                self.state().recorded = Some(false);
                self.inner.wake.notify_one();
                std::future::pending().await
            }
        }
    }

    /// Puts a final entry in the engine's journal cache.
    fn remember(&self, record: &StepRecord) {
        self.inner
            .engine
            .journal_cache()
            .remember(self.run_id(), std::iter::once(record));
    }

    fn activate(&self) -> ActiveGuard<'_> {
        self.state().active += 1;
        ActiveGuard(self)
    }

    fn fail_definition(&self, name: &str, message: String) -> Error {
        let error = Error::with_kind(ErrorKind::Definition, name, message);
        self.state().fatal.get_or_insert_with(|| error.clone());
        error
    }

    /// [`Ctx::fail_definition`] about step `step_id`.
    fn fail_at(&self, step_id: &str, name: &str, message: String) -> Error {
        let mut state = self.state();
        if state.fatal.is_none() {
            state.fatal_at = Some(step_id.to_string());
        }
        drop(state);
        self.fail_definition(name, message)
    }

    /// A journaled step's result, typed. An output the code's type no longer reads (the code
    /// changed under a live run) fails the run with `OutputTypeMismatch`, whatever the code
    /// does with the error.
    fn replayed<T: DeserializeOwned>(&self, record: &StepRecord) -> Option<Result<T, Error>> {
        let result = journaled::<T>(record)?;
        if let Err(e) = &result {
            if e.kind == ErrorKind::Definition {
                self.fail_at(&record.step_id, &e.name, e.message.clone());
            }
        }
        Some(result)
    }

    /// Stops the invocation: the pass reports the error and the message is redelivered.
    async fn interrupt<T>(&self, error: EngineError) -> T {
        self.state().interrupted.get_or_insert(error);
        self.inner.wake.notify_one();
        std::future::pending().await
    }

    /// Another handler finished this step (or a newer attempt owns it): use the journal.
    async fn reread<T: DeserializeOwned>(
        &self,
        step_id: &str,
        name: &str,
        active: ActiveGuard<'_>,
    ) -> Result<T, Error> {
        let record = match self
            .inner
            .engine
            .store()
            .get_step(self.run_id(), step_id)
            .await
        {
            Ok(record) => record,
            Err(e) => return self.interrupt(e.into()).await,
        };
        match record {
            Some(record) if record.status.is_final() => {
                let result = journaled::<T>(&record).expect("final");
                self.remember(&record);
                self.state().journal.insert(step_id.to_string(), record);
                result
            }
            Some(record) => {
                drop(active);
                self.block(record).await
            }
            None => {
                drop(active);
                let record = self.new_record(step_id, name, StepKind::Run, None);
                self.block(record).await
            }
        }
    }

    /// Drives the function to its end or until it is blocked on planned steps.
    pub(crate) async fn run_pass(
        self,
        handler_fut: futures::future::BoxFuture<'static, Result<Value, Error>>,
    ) -> PassResult {
        let wake = self.inner.wake.clone();
        let waker = futures::task::waker(Arc::new(NotifyWaker(wake.clone())));
        let mut fut = AssertUnwindSafe(handler_fut).catch_unwind();
        let end = loop {
            let polled = fut.poll_unpin(&mut std::task::Context::from_waker(&waker));
            match polled {
                std::task::Poll::Ready(Ok(result)) => break PassEnd::Finished(result),
                std::task::Poll::Ready(Err(panic)) => {
                    break PassEnd::Finished(Err(
                        self.fail_definition("FunctionPanicked", panic_message(&panic))
                    ));
                }
                std::task::Poll::Pending => {}
            }
            {
                let state = self.state();
                if state.interrupted.is_some()
                    || state.fatal.is_some()
                    || state.recorded == Some(false)
                {
                    break PassEnd::Blocked;
                }
                // Blocked: nothing runs and the run waits on planned steps or a retry.
                if state.active == 0 && (!state.pending.is_empty() || !state.outbox.is_empty()) {
                    break PassEnd::Blocked;
                }
            }
            wake.notified().await;
        };
        drop(fut);
        let mut state = self.state();
        let unvisited = state
            .journal
            .values()
            // A patch marker the code no longer reaches is a retired patch: harmless.
            .filter(|s| s.kind != StepKind::Patch)
            .map(|s| &s.step_id)
            .chain(self.inner.expected.iter())
            .filter(|id| !state.visited.contains(*id))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        PassResult {
            end,
            fatal: state.fatal.take(),
            fatal_at: state.fatal_at.take(),
            patches: std::mem::take(&mut state.patches),
            interrupted: state.interrupted.take(),
            pending: std::mem::take(&mut state.pending),
            progress: state.progress.take(),
            outbox: std::mem::take(&mut state.outbox),
            unvisited,
            finished: state.finished.take(),
            target_recorded: state.recorded == Some(true),
            lost: state.recorded == Some(false),
            // Nothing holds it once the pass has ended (its futures are dropped).
            start: self.inner.start.try_lock().ok().and_then(|mut s| s.take()),
        }
    }
}

struct NotifyWaker(Arc<Notify>);

impl futures::task::ArcWake for NotifyWaker {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.notify_one();
    }
}

/// The journaled result of a final step, typed; None while it is not final.
fn journaled<T: DeserializeOwned>(record: &StepRecord) -> Option<Result<T, Error>> {
    match record.status {
        StepStatus::Completed => {
            let value = record.output.clone().unwrap_or(Value::Null);
            Some(serde_json::from_value(value).map_err(|e| {
                Error::with_kind(
                    ErrorKind::Definition,
                    "OutputTypeMismatch",
                    format!(
                        "journaled output of step {:?} does not match its type: {e}",
                        record.step_id
                    ),
                )
            }))
        }
        StepStatus::Failed => {
            let info = record
                .error
                .clone()
                .unwrap_or_else(|| ErrorInfo::new("StepFailed", "step failed"));
            Some(Err(Error::with_kind(
                ErrorKind::StepFailed {
                    step_id: record.step_id.clone(),
                },
                info.name,
                info.message,
            )))
        }
        _ => None,
    }
}

/// Which branch a journaled patch marker says its run took (true: the new code).
fn patch_answer(marker: &StepRecord) -> bool {
    marker.output == Some(Value::Bool(true))
}

fn set_outcome(record: &mut StepRecord, outcome: StepOutcome) {
    match outcome {
        StepOutcome::Completed(v) => {
            record.status = StepStatus::Completed;
            record.output = Some(v);
            record.error = None;
        }
        StepOutcome::Failed(e) => {
            record.status = StepStatus::Failed;
            record.error = Some(e);
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_string()
    }
}
