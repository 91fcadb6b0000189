//! The executor: ingesting events, handling continuation messages by replay, and the run
//! operations of the API (cancel, replay, the sweeper's re-drive). Beside it: `ctx` (what
//! function code talks to), `flow` (concurrency, throttle, rate limit, debounce), `wait`,
//! `bulk` (bulk actions, the sweeper), `upgrade` (dry replay for `baton deploy-check`, restart
//! from a step), `cache` (final journal entries in memory), `config`.
//!
//! One way through the code for a run: [`Engine::handle`] reads the run and its journal,
//! replays the function ([`Ctx`]), then concludes: finish or fail the run, or plan the steps it
//! is blocked on (a conditional write each; only the handler that wins a plan enqueues it).

mod bulk;
mod cache;
mod config;
mod ctx;
mod flow;
mod upgrade;
mod wait;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use ulid::Ulid;

pub use bulk::{BulkOutcome, RunSelection};
use cache::JournalCache;
pub use config::{Backoff, Clock, EngineConfig, Limits, later};
pub use ctx::{Ctx, StepCtx};
use ctx::{PassEnd, PassResult, Pending, Target};
pub use flow::SLOT_RECHECK;
pub use upgrade::{DEPLOY_CHECK_CONCURRENCY, DeployCheck, Incompatibility, RunCheck, Verdict};
pub use wait::WAIT_LOOKBACK;

use crate::error::{EngineError, StepError};
use crate::function::{
    FUNCTION_CANCELLED, FUNCTION_FAILED, FUNCTION_FINISHED, FUNCTION_INVOKED, Function, Registry,
    SCHEDULED,
};
use crate::model::{
    ErrorInfo, EventRecord, Message, MessageKind, RunDetail, RunRecord, RunStatus, RunTransition,
    StepKind, StepOutcome, StepRecord, StepStatus, json_depth,
};
use crate::queue::{Envelope, Queue};
use crate::store::Store;

/// Event names starting with these are the engine's own.
pub const RESERVED_PREFIXES: [&str; 2] = ["baton/", "inngest/"];

/// Extra nesting the engine's own events may have over [`Limits::max_json_depth`].
const INTERNAL_DEPTH_HEADROOM: usize = 4;
/// Extra bytes the engine's own events may have over [`Limits::max_event_bytes`]: the run's
/// error (cut to 8 KiB) and the ids around the wrapped event.
const INTERNAL_SIZE_HEADROOM: usize = 32 * 1024;

/// An event as a sender submits it (before it has an id).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NewEvent {
    pub name: String,
    #[serde(default)]
    pub data: Value,
    /// The sender's idempotency id.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub ts: Option<i64>,
    #[serde(default)]
    pub user: Option<Value>,
    #[serde(default)]
    pub v: Option<String>,
}

impl NewEvent {
    pub fn new(name: impl Into<String>, data: Value) -> Self {
        NewEvent {
            name: name.into(),
            data,
            id: None,
            ts: None,
            user: None,
            v: None,
        }
    }
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    config: EngineConfig,
    clock: Clock,
    journal_cache: JournalCache,
    /// The random part of new ids: seeded ([`EngineConfig::id_seed`]) or from entropy.
    ids: std::sync::Mutex<rand::rngs::StdRng>,
}

/// A step runs inline only when its timeout plus this still fits before the deadline.
const INLINE_MARGIN: Duration = Duration::from_secs(5);
/// How long past a step's timeout its handler may still be alive (the Lambda's extra time).
pub const EXECUTOR_GRACE: Duration = Duration::from_secs(30);

/// Which next steps a handler may run in the same invocation.
#[derive(Debug, Clone, Copy)]
enum InlineScope {
    /// None: every step goes through its queue.
    Never,
    /// Steps of the message's own queue (same handler, same timeout), while their timeout
    /// fits before the invocation's deadline (a Lambda's).
    SameQueue(tokio::time::Instant),
    /// Any step (local mode: one process runs every handler, with no deadline).
    AnyStep,
}

impl InlineScope {
    /// Whether an invocation handling a message of `own` may run a step of `queue` whose
    /// timeout is `timeout`.
    fn allows(
        self,
        own: &crate::model::QueueName,
        queue: &crate::model::QueueName,
        timeout: Duration,
    ) -> bool {
        match self {
            InlineScope::Never => false,
            InlineScope::SameQueue(deadline) => {
                queue == own && tokio::time::Instant::now() + timeout + INLINE_MARGIN <= deadline
            }
            InlineScope::AnyStep => true,
        }
    }
}

/// A step planned already started, to run in this invocation: its message (never sent) and
/// its record as planned.
struct Inlined {
    message: Message,
    record: StepRecord,
}

impl Engine {
    pub fn new(
        registry: Registry,
        store: Arc<dyn Store>,
        queue: Arc<dyn Queue>,
        config: EngineConfig,
    ) -> Self {
        Engine {
            inner: Arc::new(Inner {
                registry,
                store,
                queue,
                journal_cache: JournalCache::new(config.journal_cache_entries),
                ids: std::sync::Mutex::new(match config.id_seed {
                    Some(seed) => rand::SeedableRng::seed_from_u64(seed),
                    None => rand::SeedableRng::from_os_rng(),
                }),
                clock: config
                    .clock_start
                    .map_or_else(Clock::new, Clock::starting_at),
                config,
            }),
        }
    }

    /// Another handler process of the same deployment: the same registry, store, queue,
    /// configuration and clock, with a journal cache of its own, as each Lambda function's
    /// instances have theirs. Ids stay distinct (and reproducible under
    /// [`EngineConfig::id_seed`]).
    pub fn instance(&self) -> Engine {
        let inner = &self.inner;
        let ids = {
            let mut parent = inner.ids.lock().unwrap_or_else(|p| p.into_inner());
            rand::SeedableRng::from_rng(&mut *parent)
        };
        Engine {
            inner: Arc::new(Inner {
                registry: inner.registry.clone(),
                store: inner.store.clone(),
                queue: inner.queue.clone(),
                journal_cache: JournalCache::new(inner.config.journal_cache_entries),
                ids: std::sync::Mutex::new(ids),
                clock: inner.clock,
                config: inner.config.clone(),
            }),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }
    pub(crate) fn journal_cache(&self) -> &JournalCache {
        &self.inner.journal_cache
    }
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.inner.queue
    }
    pub fn limits(&self) -> &Limits {
        &self.inner.config.limits
    }
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    // ---- events ----

    /// Checks one event against the limits. Reserved names are refused unless `internal`.
    pub fn validate_event(&self, event: &NewEvent, internal: bool) -> Result<(), EngineError> {
        let limits = self.limits();
        let len = event.name.chars().count();
        if len == 0 {
            return Err(EngineError::Invalid("event name is required".into()));
        }
        if len > limits.max_event_name_len {
            return Err(EngineError::Invalid(format!(
                "event name is {len} chars, over the limit of {}",
                limits.max_event_name_len
            )));
        }
        if !internal && RESERVED_PREFIXES.iter().any(|p| event.name.starts_with(p)) {
            return Err(EngineError::Invalid(format!(
                "event name {:?} is reserved (names starting with {} are the engine's own)",
                event.name,
                RESERVED_PREFIXES.join(" or ")
            )));
        }
        if !(event.data.is_object() || event.data.is_null()) {
            return Err(EngineError::Invalid(
                "event data must be a JSON object".into(),
            ));
        }
        if let Some(user) = &event.user {
            if !(user.is_object() || user.is_null()) {
                return Err(EngineError::Invalid(
                    "event user must be a JSON object".into(),
                ));
            }
        }
        // The engine's own events wrap a user's event or output a few levels deeper and a few
        // KiB larger (`baton/function.failed` carries the run's event and its error): they
        // get that headroom, so an event accepted at the limit can always fail its run.
        let (depth_limit, size_limit) = if internal {
            (
                limits.max_json_depth + INTERNAL_DEPTH_HEADROOM,
                limits.max_event_bytes + INTERNAL_SIZE_HEADROOM,
            )
        } else {
            (limits.max_json_depth, limits.max_event_bytes)
        };
        for (field, value) in [("data", Some(&event.data)), ("user", event.user.as_ref())] {
            let depth = value.map_or(0, json_depth);
            if depth > depth_limit {
                return Err(EngineError::Invalid(format!(
                    "event {field} nests {depth} levels deep, over the limit of {depth_limit}"
                )));
            }
        }
        if let Some(id) = &event.id {
            if id.is_empty() || id.len() > limits.max_event_id_len {
                return Err(EngineError::Invalid(format!(
                    "event id must be 1-{} bytes, got {}",
                    limits.max_event_id_len,
                    id.len()
                )));
            }
        }
        let size = serde_json::to_vec(event)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > size_limit {
            return Err(EngineError::TooLarge(format!(
                "event {:?} is {size} bytes, over the limit of {size_limit} bytes",
                event.name
            )));
        }
        Ok(())
    }

    /// Stores events and starts every run they trigger. Returns the event ids in order.
    /// All events are validated before anything is stored.
    pub async fn send_events(&self, events: Vec<NewEvent>) -> Result<Vec<String>, EngineError> {
        self.submit(events, false).await
    }

    /// [`Engine::send_events`] that, when the store or queue fails partway through a batch,
    /// also says which events were stored (in order, a prefix of the batch): each of those
    /// has its runs started (or left Queued for the sweeper), so a sender resends only the
    /// rest. Invalid input still stores nothing.
    /// Then call [`Engine::cancel_runs_for`] with the stored events (what
    /// [`Engine::send_events`] does itself).
    pub async fn send_events_partial(
        &self,
        events: Vec<NewEvent>,
    ) -> (Vec<String>, Result<(), EngineError>) {
        self.ingest_partial(events, false).await
    }

    /// [`Engine::send_events`]; `internal` allows the engine's own event names.
    pub(crate) async fn submit(
        &self,
        events: Vec<NewEvent>,
        internal: bool,
    ) -> Result<Vec<String>, EngineError> {
        let names: Vec<String> = events.iter().map(|e| e.name.clone()).collect();
        let (ids, result) = self.ingest_partial(events, internal).await;
        result?;
        self.cancel_runs_for(&names, &ids).await?;
        Ok(ids)
    }

    /// Cancels the runs that stored events (`names` and `ids` in order) cancel
    /// ([`Function::cancel_on`]).
    pub async fn cancel_runs_for(
        &self,
        names: &[String],
        ids: &[String],
    ) -> Result<(), EngineError> {
        // Events that cancel runs ([`Function::cancel_on`]); the engine's own events do not.
        for (name, id) in names.iter().zip(ids) {
            let listened = self
                .registry()
                .functions()
                .any(|f| f.cancel_on.iter().any(|c| &c.event == name));
            if listened {
                if let Some(event) = self.store().get_event(id).await? {
                    self.cancel_on_event(&event).await?;
                }
            }
        }
        Ok(())
    }

    /// A cron tick: the event [`SCHEDULED`] for `function_id` at `scheduled_at`, with an id of
    /// its own per function and time, so firing the same tick again starts nothing new.
    /// Returns the event id.
    pub async fn fire_cron(
        &self,
        function_id: &str,
        scheduled_at: DateTime<Utc>,
    ) -> Result<String, EngineError> {
        let at = scheduled_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let data = json!({"function_id": function_id, "scheduled_at": at});
        self.emit(NewEvent::new(SCHEDULED, data).with_id(format!("baton:cron:{function_id}:{at}")))
            .await
    }

    /// Fires every cron tick in `(from, to]` of every function (what a once-a-minute schedule
    /// calls on AWS). Ticks already fired start nothing new. Returns how many were fired.
    pub async fn fire_due_crons(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<usize, EngineError> {
        let mut fired = 0;
        for function in self.registry().functions() {
            let mut after = from;
            while let Some(tick) = function.next_tick(after).filter(|t| *t <= to) {
                self.fire_cron(&function.id, tick).await?;
                fired += 1;
                after = tick;
            }
        }
        Ok(fired)
    }

    /// The engine's own events (reserved names allowed).
    async fn emit(&self, event: NewEvent) -> Result<String, EngineError> {
        let (mut ids, result) = self.ingest_partial(vec![event], true).await;
        result?;
        Ok(ids.remove(0))
    }

    /// Validates every event, then stores them one by one, in order. The starts of the runs
    /// they create go out as soon as the queue's batch fills ([`Queue::send_batch_size`]: at
    /// once in-process, by ten on SQS), so a run does not wait for the rest of its request.
    /// When a write fails partway, the starts of the events stored so far (a prefix) are sent
    /// before the error is returned with their ids; when a send fails, every event is still
    /// stored and the runs not started are left Queued for the sweeper.
    async fn ingest_partial(
        &self,
        events: Vec<NewEvent>,
        internal: bool,
    ) -> (Vec<String>, Result<(), EngineError>) {
        if events.len() > self.limits().max_events_per_request {
            let error = EngineError::Invalid(format!(
                "{} events in one request, over the limit of {}",
                events.len(),
                self.limits().max_events_per_request
            ));
            return (Vec::new(), Err(error));
        }
        if let Some(error) = events
            .iter()
            .find_map(|e| self.validate_event(e, internal).err())
        {
            return (Vec::new(), Err(error));
        }
        let batch_size = self.queue().send_batch_size().max(1);
        let mut ids = Vec::with_capacity(events.len());
        let mut starts = Vec::new();
        // After a failed send the rest are still stored, their runs left Queued for the
        // sweeper (as a send failing at the end would leave them), and the error returned.
        let mut send_failure = None;
        for event in events {
            let stored = async {
                let (record, event_starts) = self.store_event(event).await?;
                self.resume_waits(&record).await?;
                Ok::<_, EngineError>((record.id, event_starts))
            };
            match stored.await {
                Ok((id, event_starts)) => {
                    ids.push(id);
                    starts.extend(event_starts);
                }
                Err(e) => {
                    if send_failure.is_none() {
                        let _ = self.send(starts).await;
                    }
                    return (ids, Err(e));
                }
            }
            if starts.len() >= batch_size && send_failure.is_none() {
                send_failure = self.send(std::mem::take(&mut starts)).await.err();
            }
        }
        match send_failure {
            Some(e) => (ids, Err(e)),
            None => (ids, self.send(starts).await),
        }
    }

    /// The runs of the functions `event` triggers, with their start messages, for functions
    /// that start unconditionally.
    fn unconditional_runs(&self, event: &EventRecord) -> (Vec<RunRecord>, Vec<Envelope>) {
        let mut runs = Vec::new();
        let mut starts = Vec::new();
        for function in self.registry().triggered_by(event) {
            let run = self.new_run(
                run_id_for(&event.id, &function.id),
                function,
                event.clone(),
                None,
            );
            starts.extend(self.start_messages(function, &run, Duration::ZERO));
            runs.push(run);
        }
        (runs, starts)
    }

    /// The event as stored, with `id`.
    fn event_record(&self, event: NewEvent, id: String, now: DateTime<Utc>) -> EventRecord {
        EventRecord {
            id,
            name: event.name,
            data: if event.data.is_null() {
                json!({})
            } else {
                event.data
            },
            ts: event.ts.unwrap_or(now.timestamp_millis()),
            user: event
                .user
                .filter(|u| !u.is_null())
                .unwrap_or_else(|| json!({})),
            v: event.v,
            idempotency_id: event.id,
        }
    }

    /// Stores one event, honouring its idempotency id, and creates the runs it triggers.
    /// Returns the stored event and the runs' start messages. When every function it triggers
    /// starts a run unconditionally ([`starts_unconditionally`]), the event and its runs are
    /// one store write.
    async fn store_event(
        &self,
        event: NewEvent,
    ) -> Result<(EventRecord, Vec<Envelope>), EngineError> {
        let store = self.store();
        let now = self.now();
        let fresh_id = self.new_id(now);
        let existing = match &event.id {
            Some(key) => {
                let until = later(now, self.limits().idempotency_window);
                store
                    .claim_idempotency_id(key, &fresh_id, now, until)
                    .await?
            }
            None => None,
        };
        let duplicate = existing.is_some();
        let record = self.event_record(event, existing.unwrap_or(fresh_id), now);
        if duplicate {
            if let Some(stored) = store.get_event(&record.id).await? {
                let starts = self.create_runs(&stored, true).await?;
                return Ok((stored, starts));
            }
        }
        if self
            .registry()
            .triggered_by(&record)
            .all(|f| starts_unconditionally(f))
        {
            // Nothing to read or claim first: the event and its runs are one write.
            let (runs, starts) = self.unconditional_runs(&record);
            store.put_event_with_runs(&record, &runs).await?;
            return Ok((record, starts));
        }
        store.put_event(&record).await?;
        let starts = self.create_runs(&record, duplicate).await?;
        Ok((record, starts))
    }

    /// Creates the runs an event triggers (ids derived from the event, so a repeat creates
    /// none) and returns their start messages, also for runs that existed (see
    /// [`Engine::start_run`]).
    async fn create_runs(
        &self,
        event: &EventRecord,
        repeat: bool,
    ) -> Result<Vec<Envelope>, EngineError> {
        let mut starts = Vec::new();
        for function in self.registry().triggered_by(event) {
            if !self.claim_run_key(function, event).await? {
                continue;
            }
            if function.flow.debounce.is_some() {
                // A repeat changes nothing: the first delivery named the event and sent its
                // message.
                if !repeat {
                    starts.push(self.debounce(function, event).await?);
                }
                continue;
            }
            starts.extend(self.start_run(function, event).await?);
        }
        Ok(starts)
    }

    /// Creates `function`'s run for `event` (its id derived from both) unless a rate limit
    /// skips it, and returns its start (delayed by a throttle). The start goes out even when
    /// the run existed already: whoever created it may have died before sending its start
    /// (a duplicate start is harmless). A throttled or rate-limited function's existing run is
    /// left to the sweeper instead: its start time was decided once.
    async fn start_run(
        &self,
        function: &Function,
        event: &EventRecord,
    ) -> Result<Vec<Envelope>, EngineError> {
        let run_id = run_id_for(&event.id, &function.id);
        let limited = function.flow.rate_limit.is_some() || function.flow.throttle.is_some();
        let delay = if limited {
            if self.store().get_run(&run_id).await?.is_some() {
                return Ok(Vec::new());
            }
            match self.admit(function, event).await? {
                flow::Admission::Skip => {
                    tracing::info!(function = %function.id, event = %event.id, "rate limited: no run");
                    return Ok(Vec::new());
                }
                flow::Admission::Start(delay) => delay,
            }
        } else {
            Duration::ZERO
        };
        let run = self.new_run(run_id, function, event.clone(), None);
        self.create_run(function, &run).await?;
        Ok(self.start_messages(function, &run, delay))
    }

    /// A function with an idempotency field runs once per value: the value is claimed for this
    /// event for the idempotency window. False when another event holds it (a repeat of this
    /// event finds its own claim and goes on).
    async fn claim_run_key(
        &self,
        function: &Function,
        event: &EventRecord,
    ) -> Result<bool, EngineError> {
        let Some(path) = &function.idempotency else {
            return Ok(true);
        };
        let Some(value) = crate::function::lookup(&event.to_json(), path)
            .filter(|v| !v.is_null())
            .cloned()
        else {
            return Ok(true);
        };
        let key = format!("baton:run-key:{}:{value}", function.id);
        let now = self.now();
        let until = later(now, self.limits().idempotency_window);
        let holder = self
            .store()
            .claim_idempotency_id(&key, &event.id, now, until)
            .await?;
        Ok(holder.is_none_or(|h| h == event.id))
    }

    /// A new run's start (after `delay`), and its deadline when the function has a finish
    /// timeout.
    fn start_messages(
        &self,
        function: &Function,
        run: &RunRecord,
        delay: Duration,
    ) -> Vec<Envelope> {
        let mut start = start_message(&run.run_id, &run.function_id);
        if !delay.is_zero() {
            start.not_before = Some(later(run.started_at, delay));
        }
        let mut out = vec![Envelope {
            message: start,
            delay,
        }];
        if let Some(timeout) = function.finish_timeout {
            let due = later(run.started_at, timeout);
            out.push(Envelope {
                message: Message {
                    run_id: run.run_id.clone(),
                    function_id: run.function_id.clone(),
                    kind: MessageKind::Deadline,
                    not_before: Some(due),
                },
                delay: timeout,
            });
        }
        out
    }

    /// Why a run is past one of its function's timeouts, if it is.
    fn timed_out(
        &self,
        function: &Function,
        run: &RunRecord,
        now: DateTime<Utc>,
    ) -> Option<ErrorInfo> {
        let age = (now - run.started_at).to_std().unwrap_or_default();
        match (function.start_timeout, function.finish_timeout) {
            (Some(start), _) if run.status == RunStatus::Queued && age >= start => {
                Some(ErrorInfo::new(
                    "StartTimeout",
                    format!("the run did not start within {start:?} of its event"),
                ))
            }
            (_, Some(finish)) if age >= finish => Some(ErrorInfo::new(
                "FinishTimeout",
                format!("the run did not finish within {finish:?} of its event"),
            )),
            _ => None,
        }
    }

    /// Cancels a live run with `error` saying why (`Cancelled`, `FinishTimeout`, ...) and
    /// emits `baton/function.cancelled`. False when the run had already ended. What
    /// `DELETE /v1/runs/{id}`, a timeout and a cancel event all do. A step already executing
    /// finishes; the steps the run was waiting on that had not started (planned, sleeping,
    /// waiting) fail with `Cancelled`, so the journal shows nothing left pending.
    async fn cancel_run(&self, run: &RunRecord, error: ErrorInfo) -> Result<bool, EngineError> {
        let now = self.now();
        let t = RunTransition {
            from: vec![RunStatus::Queued, RunStatus::Running],
            to: RunStatus::Cancelled,
            ended_at: Some(now),
            output: None,
            error: Some(error.clone()),
        };
        if !self.store().transition_run(&run.run_id, &t).await? {
            return Ok(false);
        }
        self.journal_cache().forget(&run.run_id);
        let not_run = ErrorInfo::new("Cancelled", "the run was cancelled before this step ran");
        for step in self.store().journal(&run.run_id).await? {
            let unstarted = matches!(
                step.status,
                StepStatus::Planned | StepStatus::Sleeping | StepStatus::Waiting
            );
            if unstarted {
                // Written whole: a planned step may have no entry of its own yet.
                let cancelled = StepRecord {
                    status: StepStatus::Failed,
                    ended_at: Some(now),
                    output: None,
                    error: Some(not_run.clone()),
                    planned: Vec::new(),
                    ..step
                };
                self.store().record_step(&cancelled, &[]).await?;
            }
        }
        self.tell_invoker(run, RunStatus::Cancelled, None, Some(&error))
            .await?;
        self.after_end(run).await?;
        let data = json!({
            "function_id": run.function_id,
            "run_id": run.run_id,
            "event": run.event.to_json(),
            "error": error,
        });
        self.emit(
            NewEvent::new(FUNCTION_CANCELLED, data)
                .with_id(format!("baton:cancelled:{}", run.run_id)),
        )
        .await?;
        Ok(true)
    }

    fn new_run(
        &self,
        run_id: String,
        function: &Function,
        event: EventRecord,
        replay_of: Option<String>,
    ) -> RunRecord {
        RunRecord {
            run_id,
            function_id: function.id.clone(),
            event_id: event.id.clone(),
            event,
            status: RunStatus::Queued,
            started_at: self.now(),
            ended_at: None,
            output: None,
            error: None,
            progress: None,
            replay_of,
            replay_from: None,
        }
    }

    // ---- continuations ----

    /// One handler invocation: act on one message. An error means "deliver it again".
    pub async fn handle(&self, message: Message) -> Result<(), EngineError> {
        self.handle_within(message, None).await
    }

    /// [`Engine::handle`] for an invocation that may run until `deadline` (a Lambda's): when
    /// the run's next step is on the same queue (the same step, so the same handler and
    /// timeout) and its timeout still fits before the deadline, this invocation runs it too,
    /// instead of a round trip through the queue. Its message is never sent: if this
    /// invocation dies, the message it is handling comes back, and its replay re-sends what
    /// was planned but not started (or started by a handler that must be dead).
    pub async fn handle_within(
        &self,
        message: Message,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), EngineError> {
        let scope = deadline.map_or(InlineScope::Never, InlineScope::SameQueue);
        self.handle_inlining(message, scope).await
    }

    /// [`Engine::handle`] for local mode, where one process runs every step: while the run
    /// waits on exactly one new step that is due now, this call runs it too, whatever its
    /// queue. A sequential run then goes from step to step with no queue hop, and each step
    /// costs one write: its result, which also plans the next step already started.
    pub async fn handle_local(&self, message: Message) -> Result<(), EngineError> {
        self.handle_inlining(message, InlineScope::AnyStep).await
    }

    async fn handle_inlining(
        &self,
        message: Message,
        scope: InlineScope,
    ) -> Result<(), EngineError> {
        let mut message = message;
        let mut claimed = None;
        while let Some(next) = self.handle_one(message, scope, claimed).await? {
            message = next.message;
            claimed = Some(next.record);
        }
        Ok(())
    }

    /// Handles one message; returns the next step when it is to run inline. `claimed`: the
    /// message's step as this invocation planned it, already started (no attempt start, no
    /// read of what was just written).
    async fn handle_one(
        &self,
        message: Message,
        scope: InlineScope,
        claimed: Option<StepRecord>,
    ) -> Result<Option<Inlined>, EngineError> {
        let now = self.now();
        if let Some(due) = message.not_before.filter(|due| *due > now) {
            // A wait's timeout outlives the wait when its event came first: drop it here
            // rather than carry it to its due time, 15 minutes (the queue's longest delay) at
            // a time. A sleep is never final before it is due: it goes on.
            if let MessageKind::Wake { step_id } = &message.kind {
                let step = self.store().get_step(&message.run_id, step_id).await?;
                if step.is_some_and(|s| s.status.is_final()) {
                    return Ok(None);
                }
            }
            return self.send_at(message, due).await.map(|()| None);
        }
        if let MessageKind::Debounce { event_id } = &message.kind {
            if let Some(function) = self.registry().get(&message.function_id).cloned() {
                self.debounce_due(&function, event_id).await?;
            }
            return Ok(None);
        }
        let store = self.store();
        // The cached final entries when this process has them (entries it lacks are read one
        // by one as the replay reaches them). Without them, a message that replays the run
        // reads the run and its whole journal together (one query on DynamoDB). A re-drive
        // reads it all: it is rare and must see everything.
        let cached = match message.kind {
            MessageKind::Redrive => None,
            _ => self.journal_cache().get(&message.run_id),
        };
        let replays = !matches!(message.kind, MessageKind::Deadline);
        let read = match (&cached, replays) {
            (None, true) => match store.run_with_journal(&message.run_id).await {
                Ok(found) => Ok(found.map(|(run, journal)| (run, Some(journal)))),
                // Read again one by one, so that an unreadable run is told apart from an
                // unreadable step (which fails the delivery instead).
                Err(e) if e.is_corrupt() => store
                    .get_run(&message.run_id)
                    .await
                    .map(|r| r.map(|r| (r, None))),
                Err(e) => Err(e),
            },
            _ => store
                .get_run(&message.run_id)
                .await
                .map(|r| r.map(|r| (r, None))),
        };
        let run = match read {
            // A row no version of the engine can read (written by an older one, or changed
            // by hand): delivering again cannot help, and the run is reported by listings.
            Err(e) if e.is_corrupt() => {
                tracing::error!(run_id = message.run_id, %e, "unreadable run: message dropped");
                return Ok(None);
            }
            other => other?,
        };
        let Some((mut run, fetched)) = run else {
            tracing::warn!(run_id = %message.run_id, "message for an unknown run dropped");
            return Ok(None);
        };
        if run.status.is_terminal() {
            return Ok(None);
        }
        let max_age = self.limits().max_run_age;
        if now > later(run.started_at, max_age) {
            let error = ErrorInfo::new(
                "RunTooOld",
                format!(
                    "the run started at {} and may live at most {max_age:?}",
                    run.started_at
                ),
            );
            return self.fail_run(&run, error).await.map(|()| None);
        }
        let Some(function) = self.registry().get(&run.function_id).cloned() else {
            let error = bulk::removed_error(&run.function_id);
            return self.fail_run(&run, error).await.map(|()| None);
        };
        if let Some(error) = self.timed_out(&function, &run, now) {
            return self.cancel_run(&run, error).await.map(|_| None);
        }
        if message.kind == MessageKind::Deadline {
            // Not due yet by this clock: it is re-sent for when it is.
            return Ok(None);
        }
        let mut start = None;
        if run.status == RunStatus::Queued {
            // Over a concurrency limit the run stays Queued: a freed slot starts it again.
            // Only a start sends the periodic re-check (a wake-up or re-drive would start a
            // second chain of them).
            if !self.acquire_slot(&function, &run).await? {
                if message.kind == MessageKind::Start {
                    self.send_recheck(&run).await?;
                }
                return Ok(None);
            }
            // A start's move to Running is written before the first write its pass makes,
            // or with the plan of the step the run starts with (one write instead of two:
            // see `conclude`). Any other message that finds the run Queued writes it at once.
            if message.kind == MessageKind::Start {
                start = Some(RunTransition::start());
            } else {
                store
                    .transition_run(&run.run_id, &RunTransition::start())
                    .await?;
            }
            run.status = RunStatus::Running;
        }
        let (mut journal, mut partial) = match (cached, fetched) {
            (Some(cached), _) => (cached, true),
            (None, fetched) => {
                let journal = match fetched {
                    Some(journal) => journal,
                    None => store.journal(&run.run_id).await?,
                };
                self.journal_cache().remember(&run.run_id, &journal);
                (journal, false)
            }
        };
        let target = match &message.kind {
            MessageKind::Step {
                step_id, attempt, ..
            } => Some(Target {
                step_id: step_id.clone(),
                attempt: *attempt,
                claimed: claimed.is_some(),
            }),
            MessageKind::Wake { step_id } => {
                let sleep = match journal.iter().find(|s| &s.step_id == step_id) {
                    Some(s) => Some(s.clone()),
                    None if partial => store.get_step(&run.run_id, step_id).await?,
                    None => None,
                };
                let sleep = sleep.filter(|s| matches!(s.kind, StepKind::Sleep | StepKind::Wait));
                if let Some(sleep) = sleep.filter(|s| !s.status.is_final()) {
                    if let Some(due) = sleep.wake_at.filter(|due| *due > now) {
                        return self
                            .send_at(
                                Message {
                                    not_before: Some(due),
                                    ..message
                                },
                                due,
                            )
                            .await
                            .map(|()| None);
                    }
                    let recorded = store
                        .finish_step(
                            &run.run_id,
                            step_id,
                            &StepOutcome::Completed(Value::Null),
                            now,
                        )
                        .await?;
                    journal.retain(|s| &s.step_id != step_id);
                    if recorded {
                        // The replay sees the sleep as this call recorded it.
                        let done = StepRecord {
                            status: StepStatus::Completed,
                            output: Some(Value::Null),
                            ended_at: Some(now),
                            ..sleep
                        };
                        self.journal_cache().remember(&run.run_id, [&done]);
                        journal.push(done);
                    } else {
                        // Another handler recorded it: the replay reads it.
                        partial = true;
                    }
                }
                None
            }
            MessageKind::Start
            | MessageKind::Redrive
            | MessageKind::Deadline
            | MessageKind::Debounce { .. } => None,
        };
        if let Some(record) = claimed {
            journal.retain(|s| s.step_id != record.step_id);
            journal.push(record);
        }
        let woken = match &message.kind {
            MessageKind::Wake { step_id } => Some(step_id.clone()),
            _ => None,
        };
        let handler = function
            .handler
            .clone()
            .expect("registered functions have a handler");
        let mut ctx = Ctx::new(
            self.clone(),
            run.clone(),
            function.clone(),
            journal,
            partial,
            target,
            woken,
            now,
        );
        if let Some(start) = start {
            ctx = ctx.deferring_start(start);
        }
        let mut pass = ctx.share().run_pass(handler(ctx, run.event.clone())).await;
        let own_queue = message.queue();
        // The target step's result, with the new steps the run goes on to in the same write.
        let mut planned = Vec::new();
        let mut lost = pass.lost;
        if let Some(step) = pass.finished.take() {
            // A run that ends with this step ends in the same write.
            let end = self.ends_with_step(&run, &pass);
            let next = match end {
                Some(_) => Vec::new(),
                None => self.planned_with_result(&run, &function, &pass, (scope, &own_queue)),
            };
            let recorded = match &end {
                Some(end) => store.record_step_and_end(&step, end).await?,
                None => store.record_step(&step, &next).await?,
            };
            if recorded && end.is_some() {
                self.journal_cache().forget(&run.run_id);
                self.after_end(&run).await?;
                return Ok(None);
            }
            if recorded {
                // As a replay reading it back would see it: with the steps it planned.
                let step = StepRecord {
                    planned: next.clone(),
                    ..step
                };
                self.journal_cache().remember(&run.run_id, [&step]);
                pass.target_recorded = true;
                planned = next;
            } else {
                // Another handler recorded this step first (a duplicate message): what this
                // pass did after it used an output that is not the journal's. Replay again.
                lost = true;
            }
        }
        // This handler recorded its step, but the run waits on parallel steps planned earlier.
        // One of them may have been recorded after our journal read: read again (strongly
        // consistent) and replay, so the last branch to finish always plans the join.
        let recheck = lost
            || (pass.target_recorded
                && matches!(pass.end, PassEnd::Blocked)
                && pass.pending.iter().any(|p| !p.is_new));
        let next = if lost {
            None
        } else {
            self.conclude(
                &run,
                &function,
                pass,
                message.kind == MessageKind::Redrive,
                (scope, &own_queue),
                planned,
            )
            .await?
        };
        if recheck {
            let journal = store.journal(&run.run_id).await?;
            self.journal_cache().remember(&run.run_id, &journal);
            let ctx = Ctx::new(
                self.clone(),
                run.clone(),
                function.clone(),
                journal,
                false,
                None,
                None,
                self.now(),
            );
            let mut pass = ctx.share().run_pass(handler(ctx, run.event.clone())).await;
            // This invocation did move the run on (it recorded its step and sent what the first
            // pass planned): it is not the redelivery of a handler that died before sending,
            // so steps planned but not started are not sent again (a duplicate of a step still
            // running would begin the same attempt twice).
            pass.target_recorded = !lost;
            return self
                .conclude(
                    &run,
                    &function,
                    pass,
                    false,
                    (scope, &own_queue),
                    Vec::new(),
                )
                .await;
        }
        Ok(next)
    }

    /// The transition that ends the run, when the pass that finished its target step went on
    /// to finish the run with nothing to write or send first: no retries, progress, failure
    /// or invoker to tell (an invoked run tells its invoker before it ends, so its step's
    /// result must be journaled first). The step's result and the run's end are then one
    /// write ([`Store::record_step_and_end`]).
    fn ends_with_step(&self, run: &RunRecord, pass: &PassResult) -> Option<RunTransition> {
        let PassEnd::Finished(Ok(output)) = &pass.end else {
            return None;
        };
        let nothing_first = pass.fatal.is_none()
            && pass.interrupted.is_none()
            && pass.unvisited.is_empty()
            && pass.outbox.is_empty()
            && pass
                .progress
                .as_ref()
                .is_none_or(|p| Some(p) == run.progress.as_ref())
            && run.event.name != FUNCTION_INVOKED;
        (nothing_first && self.check_output(output).is_ok()).then(|| RunTransition {
            from: vec![RunStatus::Running],
            to: RunStatus::Completed,
            ended_at: Some(self.now()),
            output: Some(output.clone()),
            error: None,
        })
    }

    /// Steps planned at most in one write with a step's result: beyond them, each is planned
    /// on its own (a DynamoDB item holds them all, and stays small).
    const MAX_PLANNED_WITH_RESULT: usize = 16;

    /// The new steps a pass that recorded its target step plans in the same write: those it
    /// is blocked on, when it ended blocked and sound. The one step that runs next in this
    /// invocation ([`InlineScope`]) is planned already started.
    fn planned_with_result(
        &self,
        run: &RunRecord,
        function: &Function,
        pass: &PassResult,
        (scope, own_queue): (InlineScope, &crate::model::QueueName),
    ) -> Vec<StepRecord> {
        let sound = pass.fatal.is_none() && pass.interrupted.is_none() && pass.unvisited.is_empty();
        if !matches!(pass.end, PassEnd::Blocked) || !sound {
            return Vec::new();
        }
        let now = self.now();
        let inline = self.runs_inline(run, function, &pass.pending, (scope, own_queue), now);
        pass.pending
            .iter()
            .filter(|p| p.is_new && p.wait.is_none() && p.record.kind == StepKind::Run)
            .take(Self::MAX_PLANNED_WITH_RESULT)
            .map(|p| {
                let mut record = p.record.clone();
                if inline {
                    started(&mut record, now);
                }
                record
            })
            .collect()
    }

    /// Whether the one step the run waits on runs in this invocation: it is new, a step of
    /// code, on a queue the scope allows, due now, and its timeout fits.
    fn runs_inline(
        &self,
        run: &RunRecord,
        function: &Function,
        pending: &[Pending],
        (scope, own_queue): (InlineScope, &crate::model::QueueName),
        now: DateTime<Utc>,
    ) -> bool {
        let [
            Pending {
                record,
                is_new: true,
                wait: None,
            },
        ] = pending
        else {
            return false;
        };
        if record.kind != StepKind::Run {
            return false;
        }
        let queue = crate::model::QueueName::Step {
            function_id: run.function_id.clone(),
            step: record.name.clone(),
        };
        let allowed = function
            .steps
            .get(&record.name)
            .is_some_and(|c| scope.allows(own_queue, &queue, c.timeout));
        allowed && record.wake_at.is_none_or(|at| at <= now)
    }

    async fn conclude(
        &self,
        run: &RunRecord,
        function: &Function,
        mut pass: PassResult,
        redrive: bool,
        (scope, own_queue): (InlineScope, &crate::model::QueueName),
        planned: Vec<StepRecord>,
    ) -> Result<Option<Inlined>, EngineError> {
        let store = self.store();
        let progressed = pass.target_recorded || !pass.outbox.is_empty();
        // Retries were journaled during the pass; their messages go out whatever happens next.
        let retries: Vec<_> = pass
            .outbox
            .into_iter()
            .map(|(message, delay)| Envelope { message, delay })
            .collect();
        self.send(retries).await?;
        if let Some(error) = pass.interrupted {
            return Err(error);
        }
        // A run that starts with this pass (see `handle_one`) and goes on with one step run
        // here starts in that step's plan; otherwise it starts first, here.
        let sound = pass.fatal.is_none() && pass.unvisited.is_empty();
        let mut start = pass.start.take();
        let start_with_step = sound
            && matches!(pass.end, PassEnd::Blocked)
            && !pass.target_recorded
            && self.runs_inline(run, function, &pass.pending, (scope, own_queue), self.now());
        if !start_with_step {
            if let Some(t) = start.take() {
                store.transition_run(&run.run_id, &t).await?;
            }
        }
        if let Some(progress) = pass.progress.filter(|p| Some(p) != run.progress.as_ref()) {
            store.set_progress(&run.run_id, &progress).await?;
        }
        if let Some(fatal) = pass.fatal {
            return self.fail_run(run, fatal.info()).await.map(|()| None);
        }
        if !pass.unvisited.is_empty() {
            let message = format!(
                "the journal has steps {:?} that the replay did not reach: code outside steps must be deterministic",
                pass.unvisited
            );
            return self
                .fail_run(run, ErrorInfo::new("NonDeterministic", message))
                .await
                .map(|()| None);
        }
        match pass.end {
            PassEnd::Finished(Ok(output)) => {
                if let Err(e) = self.check_output(&output) {
                    return self.fail_run(run, e.info()).await.map(|()| None);
                }
                self.tell_invoker(run, RunStatus::Completed, Some(&output), None)
                    .await?;
                let t = RunTransition {
                    from: vec![RunStatus::Running],
                    to: RunStatus::Completed,
                    ended_at: Some(self.now()),
                    output: Some(output),
                    error: None,
                };
                store.transition_run(&run.run_id, &t).await?;
                self.journal_cache().forget(&run.run_id);
                self.after_end(run).await?;
                Ok(None)
            }
            PassEnd::Finished(Err(error)) => self.fail_run(run, error.info()).await.map(|()| None),
            PassEnd::Blocked => {
                let now = self.now();
                // The one step the run waits on runs in this invocation when it is new, on
                // the same queue, due now and its timeout fits: it is planned already started
                // (Running, attempt 1: no attempt start to write) and its message is not sent.
                // With a recorded result it was planned in that write.
                let inline_step = if pass.target_recorded {
                    planned.iter().any(|r| r.status == StepStatus::Running)
                } else {
                    self.runs_inline(run, function, &pass.pending, (scope, own_queue), now)
                };
                let mut batch = Vec::new();
                let mut unstarted = Vec::new();
                for Pending {
                    mut record,
                    is_new,
                    wait,
                } in pass.pending
                {
                    if let Some(wait) = &wait {
                        // Planned (or found planned and left so), then registered and checked
                        // for an event that came first; re-registering is harmless.
                        let fresh = is_new && store.plan_step(&record).await?;
                        let idle = record.attempts == 0 && record.status == StepStatus::Waiting;
                        if fresh || (!is_new && idle && (redrive || !progressed)) {
                            if self.register_wait(run, &record, wait).await? {
                                batch.push(wait::wake_now(
                                    &run.run_id,
                                    &run.function_id,
                                    &record.step_id,
                                ));
                            } else {
                                batch.push(self.continuation(run, &record));
                            }
                        }
                        continue;
                    }
                    if let Some(record) = planned.iter().find(|r| r.step_id == record.step_id) {
                        if inline_step {
                            self.send(batch).await?;
                            return Ok(Some(Inlined {
                                message: self.continuation(run, record).message,
                                record: record.clone(),
                            }));
                        }
                        batch.push(self.continuation(run, record));
                    } else if is_new && inline_step {
                        started(&mut record, now);
                        let planned = match start.take() {
                            Some(t) => store.start_run_with_step(&record, &t).await?,
                            None => store.plan_step(&record).await?,
                        };
                        if planned {
                            self.send(batch).await?;
                            return Ok(Some(Inlined {
                                message: self.continuation(run, &record).message,
                                record,
                            }));
                        }
                    } else if is_new {
                        if store.plan_step(&record).await? {
                            batch.push(self.continuation(run, &record));
                        }
                    } else if redrive
                        || (record.attempts == 0
                            && matches!(record.status, StepStatus::Planned | StepStatus::Sleeping))
                        || executor_is_gone(function, &record, now)
                    {
                        unstarted.push(self.continuation(run, &record));
                    }
                }
                // A handler that moved nothing on may be the redelivery of one that died between
                // planning a step and sending its message: send the message of every step not
                // yet started again (a duplicate is harmless; a started step is not re-sent).
                if redrive || (batch.is_empty() && !progressed) {
                    batch.extend(unstarted);
                }
                self.send(batch).await?;
                Ok(None)
            }
        }
    }

    /// The message that moves a pending step on.
    fn continuation(&self, run: &RunRecord, step: &crate::model::StepRecord) -> Envelope {
        let kind = match step.kind {
            StepKind::Sleep | StepKind::Wait => MessageKind::Wake {
                step_id: step.step_id.clone(),
            },
            _ => MessageKind::Step {
                step_id: step.step_id.clone(),
                name: step.name.clone(),
                // A step caught mid-attempt (its handler died) runs that attempt again.
                attempt: if step.status == StepStatus::Running {
                    step.attempts
                } else {
                    step.attempts + 1
                },
            },
        };
        let message = Message {
            run_id: run.run_id.clone(),
            function_id: run.function_id.clone(),
            kind,
            not_before: step.wake_at,
        };
        let delay = step
            .wake_at
            .map(|due| (due - self.now()).to_std().unwrap_or_default())
            .unwrap_or_default();
        Envelope { message, delay }
    }

    /// Fails a run for good: emits `baton/function.failed` (which starts failure handlers),
    /// then records the failure. Emitting first means a crash in between re-emits (an
    /// idempotent no-op) rather than losing the event.
    async fn fail_run(&self, run: &RunRecord, error: ErrorInfo) -> Result<(), EngineError> {
        self.journal_cache().forget(&run.run_id);
        let data = json!({
            "function_id": run.function_id,
            "run_id": run.run_id,
            "error": error,
            "event": run.event.to_json(),
        });
        self.emit(
            NewEvent::new(FUNCTION_FAILED, data).with_id(format!("baton:failed:{}", run.run_id)),
        )
        .await?;
        self.tell_invoker(run, RunStatus::Failed, None, Some(&error))
            .await?;
        let t = RunTransition {
            from: vec![RunStatus::Queued, RunStatus::Running],
            to: RunStatus::Failed,
            ended_at: Some(self.now()),
            output: None,
            error: Some(error),
        };
        self.store().transition_run(&run.run_id, &t).await?;
        self.after_end(run).await
    }

    /// An invoked run's end, as the event its invoker waits for. Sent before the run's
    /// transition, so a crash in between sends it again (the same event id: a no-op).
    async fn tell_invoker(
        &self,
        run: &RunRecord,
        status: RunStatus,
        output: Option<&Value>,
        error: Option<&ErrorInfo>,
    ) -> Result<(), EngineError> {
        if run.event.name != FUNCTION_INVOKED {
            return Ok(());
        }
        let data = json!({
            "function_id": run.function_id,
            "run_id": run.run_id,
            "status": status.as_str(),
            "output": output,
            "error": error,
        });
        self.emit(
            NewEvent::new(FUNCTION_FINISHED, data)
                .with_id(format!("baton:finished:{}", run.run_id)),
        )
        .await
        .map(|_| ())
    }

    /// What follows every end of a run: its concurrency slot is freed.
    async fn after_end(&self, run: &RunRecord) -> Result<(), EngineError> {
        match self.registry().get(&run.function_id).cloned() {
            Some(function) => {
                self.unindex_cancel(&function, run).await?;
                self.release_slot(&function, run).await
            }
            None => Ok(()),
        }
    }

    /// A run waiting for a concurrency slot looks again after [`SLOT_RECHECK`].
    async fn send_recheck(&self, run: &RunRecord) -> Result<(), EngineError> {
        let due = later(self.now(), SLOT_RECHECK);
        let message = Message {
            not_before: Some(due),
            ..start_message(&run.run_id, &run.function_id)
        };
        self.send_at(message, due).await
    }

    async fn send(&self, batch: Vec<Envelope>) -> Result<(), EngineError> {
        if batch.is_empty() {
            return Ok(());
        }
        let max = self.queue().max_delay();
        let batch = batch
            .into_iter()
            .map(|e| Envelope {
                delay: e.delay.min(max),
                ..e
            })
            .collect();
        Ok(self.queue().send(batch).await?)
    }

    async fn send_at(&self, message: Message, due: DateTime<Utc>) -> Result<(), EngineError> {
        let delay = (due - self.now()).to_std().unwrap_or_default();
        self.send(vec![Envelope { message, delay }]).await
    }

    /// A step's or run's output within the limits: `OutputTooLarge` or `OutputTooDeep`,
    /// non-retriable (the same code would give the same output).
    pub(crate) fn check_output(&self, value: &Value) -> Result<(), StepError> {
        let limits = self.limits();
        let size = serde_json::to_vec(value)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > limits.max_output_bytes {
            return Err(StepError::non_retriable(format!(
                "output is {size} bytes, over the limit of {} bytes: store large data elsewhere and return a reference",
                limits.max_output_bytes
            ))
            .named("OutputTooLarge"));
        }
        let depth = json_depth(value);
        if depth > limits.max_json_depth {
            return Err(StepError::non_retriable(format!(
                "output nests {depth} levels deep, over the limit of {}",
                limits.max_json_depth
            ))
            .named("OutputTooDeep"));
        }
        Ok(())
    }

    pub(crate) fn retry_delay(
        &self,
        failed_attempt: u32,
        retry_after: Option<Duration>,
    ) -> Duration {
        let backoff = self
            .inner
            .config
            .backoff
            .delay(failed_attempt, rand::random::<f64>());
        // A service's hint is honoured up to a limit: it is outside input.
        retry_after.map_or(backoff, |after| {
            after.min(self.limits().max_retry_after).max(backoff)
        })
    }

    // ---- runs ----

    pub async fn get_run(&self, run_id: &str) -> Result<Option<RunDetail>, EngineError> {
        Ok(self
            .store()
            .run_with_journal(run_id)
            .await?
            .map(|(run, steps)| RunDetail { run, steps }))
    }

    /// Cancels a run that has not ended: a step already executing finishes, nothing after it
    /// runs, and `baton/function.cancelled` is emitted.
    pub async fn cancel(&self, run_id: &str) -> Result<RunRecord, EngineError> {
        let run = self
            .store()
            .get_run(run_id)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("run {run_id}")))?;
        let error = ErrorInfo::new("Cancelled", "the run was cancelled by request");
        if !self.cancel_run(&run, error).await? {
            let status = self
                .store()
                .get_run(run_id)
                .await?
                .map_or(run.status, |r| r.status);
            return Err(EngineError::Conflict(format!(
                "run {run_id} has already ended ({})",
                status.as_str()
            )));
        }
        self.store()
            .get_run(run_id)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("run {run_id}")))
    }

    /// A message that exhausted its deliveries (it landed in a dead-letter queue): the run
    /// fails with the reason, so no run ever stays Running silently.
    pub async fn dead_letter(&self, message: &Message, reason: &str) -> Result<(), EngineError> {
        let Some(run) = self.store().get_run(&message.run_id).await? else {
            return Ok(());
        };
        if run.status.is_terminal() {
            return Ok(());
        }
        let what = match &message.kind {
            MessageKind::Step {
                step_id, attempt, ..
            } => format!("step {step_id:?} (attempt {attempt})"),
            MessageKind::Wake { step_id } => format!("the wake-up of {step_id:?}"),
            MessageKind::Start => "the start".to_string(),
            MessageKind::Redrive => "a re-drive".to_string(),
            MessageKind::Deadline => "the finish deadline".to_string(),
            MessageKind::Debounce { .. } => "the debounced start".to_string(),
        };
        let error = ErrorInfo::new(
            "DeadLettered",
            format!("{what} could not be delivered: {reason}"),
        );
        self.fail_run(&run, error).await
    }
}

/// A started step whose handler must have died: its attempt began longer ago than the
/// step's timeout plus [`EXECUTOR_GRACE`] (no handler runs a step longer than that).
fn executor_is_gone(function: &Function, step: &StepRecord, now: DateTime<Utc>) -> bool {
    let Some(started) = step.started_at else {
        return false;
    };
    if step.status != StepStatus::Running {
        return false;
    }
    let timeout = function
        .steps
        .get(&step.name)
        .map_or(Duration::ZERO, |c| c.timeout);
    now > later(started, timeout.saturating_add(EXECUTOR_GRACE))
}

/// A step planned already started: by the invocation that planned it, which runs it next.
fn started(record: &mut StepRecord, now: DateTime<Utc>) {
    record.status = StepStatus::Running;
    record.attempts = 1;
    record.started_at = Some(now);
}

fn start_message(run_id: &str, function_id: &str) -> Message {
    Message {
        run_id: run_id.to_owned(),
        function_id: function_id.to_owned(),
        kind: MessageKind::Start,
        not_before: None,
    }
}

impl Engine {
    /// A new ULID at `now`.
    fn new_id(&self, now: DateTime<Utc>) -> String {
        let random: u128 = {
            let mut rng = self.inner.ids.lock().unwrap_or_else(|e| e.into_inner());
            rand::Rng::random(&mut *rng)
        };
        Ulid::from_parts(now.timestamp_millis().max(0) as u64, random).to_string()
    }
}

/// A function whose run an event creates with no store state to consult or claim first: no
/// idempotency key, debounce, rate limit, throttle or cancel index.
fn starts_unconditionally(function: &Function) -> bool {
    function.idempotency.is_none()
        && function.cancel_on.is_empty()
        && function.flow.debounce.is_none()
        && function.flow.rate_limit.is_none()
        && function.flow.throttle.is_none()
}

/// The run an event starts for a function: derived, so re-sending the event (or re-driving its
/// dispatch after a crash) can never start a second run. Its time part is the event's, so
/// run ids still sort by start.
pub fn run_id_for(event_id: &str, function_id: &str) -> String {
    let ms = Ulid::from_string(event_id)
        .map(|u| u.timestamp_ms())
        .unwrap_or(0);
    let digest = Sha256::digest(format!("{event_id}/{function_id}").as_bytes());
    let random = u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"));
    Ulid::from_parts(ms, random).to_string()
}
