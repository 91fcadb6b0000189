//! Function definitions and the registry: the single source of truth from which handlers,
//! queues and (later) template.yaml and vercel.json are generated.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::Ctx;
use crate::error::{Error, ErrorKind};
use crate::model::{ErrorInfo, EventRecord, QueueName};

/// The event a function was triggered by, with typed `data`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event<D> {
    pub id: String,
    pub name: String,
    pub data: D,
    pub ts: i64,
    #[serde(default)]
    pub user: Value,
}

/// `data` of the `baton/function.failed` event a failure handler receives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailureData {
    pub function_id: String,
    pub run_id: String,
    pub error: ErrorInfo,
    /// The event of the run that failed.
    pub event: Value,
}

/// Name of the event emitted when a run fails for good.
pub const FUNCTION_FAILED: &str = "baton/function.failed";
/// Name of the event emitted when a run is cancelled.
pub const FUNCTION_CANCELLED: &str = "baton/function.cancelled";
/// Name of the event a cron trigger fires: `{"function_id", "scheduled_at"}`, one event id per
/// function and scheduled time, so a tick fired twice (two schedulers, a retry) runs once.
pub const SCHEDULED: &str = "baton/scheduled";
/// Name of the event [`crate::Ctx::invoke`] sends to start a child run: its `data` is the
/// payload plus [`INVOKE_META`] `{"function_id", "parent_run_id"}`; it starts only that function.
pub const FUNCTION_INVOKED: &str = "baton/function.invoked";
/// Name of the event emitted when an invoked run ends: `{"function_id", "run_id", "status",
/// "output" | "error"}`. The parent's wait matches it on `data.run_id`.
pub const FUNCTION_FINISHED: &str = "baton/function.finished";
/// The field of an invoked run's event data that says who invoked it.
pub const INVOKE_META: &str = "_baton";

/// The largest concurrency limit, and the largest throttle or rate-limit count.
pub const MAX_FLOW_LIMIT: u32 = 1000;
/// The longest throttle, rate-limit or debounce period.
pub const MAX_FLOW_PERIOD: Duration = Duration::from_secs(7 * 24 * 3600);

/// At most `limit` runs of the function at once per value of the event's field at `key`
/// (all runs share one limit without a key). A run holds its slot from its start to its end,
/// sleeps and waits included; runs over the limit stay Queued and start in order as slots free.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concurrency {
    pub limit: u32,
    pub key: Option<String>,
}

/// `limit` runs per `period` per key: for a throttle, runs over it start later (spaced
/// evenly); for a rate limit, events over it start no run at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub limit: u32,
    pub period: Duration,
    pub key: Option<String>,
}

/// One run per key for a burst of events: each event pushes the start back to `period`
/// after it, and the run gets the last event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Debounce {
    pub period: Duration,
    pub key: Option<String>,
}

/// Flow control of one function ([`Function::concurrency`], [`Function::throttle`],
/// [`Function::rate_limit`], [`Function::debounce`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowControl {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Rate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Rate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debounce: Option<Debounce>,
}

impl FlowControl {
    pub fn is_empty(&self) -> bool {
        *self == FlowControl::default()
    }
}

/// Where a declared step's handler is deployed (`baton generate` reads it). Every step has its
/// own SQS queue either way; only who consumes it differs. Local mode ignores it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Host {
    /// A Lambda function consumes the step's queue (`step-{function}--{step}`).
    #[default]
    Lambda,
    /// A Vercel function executes the step (`vercel/api/step-{function}--{step}.rs`); a relay
    /// Lambda consumes the step's queue and posts each batch to it, signed.
    Vercel,
}

impl Host {
    pub fn as_str(self) -> &'static str {
        match self {
            Host::Lambda => "lambda",
            Host::Vercel => "vercel",
        }
    }
}

/// Resources and retry policy of one declared step: the unit that becomes its own Lambda (or
/// Vercel) function and queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepConfig {
    pub timeout: Duration,
    pub memory_mb: u32,
    /// Retries after the first attempt; `None` takes the function's default.
    pub retries: Option<u32>,
    /// Where the step runs when deployed ([`Host::Lambda`] unless said).
    #[serde(default)]
    pub host: Host,
}

impl Default for StepConfig {
    fn default() -> Self {
        StepConfig::DEFAULT
    }
}

impl StepConfig {
    /// 60 s, 256 MB, the function's retries, on Lambda.
    pub const DEFAULT: StepConfig = StepConfig {
        timeout: Duration::from_secs(60),
        memory_mb: 256,
        retries: None,
        host: Host::Lambda,
    };

    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    pub const fn memory_mb(mut self, memory_mb: u32) -> Self {
        self.memory_mb = memory_mb;
        self
    }
    pub const fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }
    /// Deploys the step as a Vercel function ([`Host::Vercel`]) instead of a Lambda.
    pub const fn host(mut self, host: Host) -> Self {
        self.host = host;
        self
    }
}

/// A step, declared once with its resources and retries, as a value (usually a `const`, or
/// one of a [`steps!`] list): the function's definition lists it ([`Function::steps`]) and the
/// code runs it by the same value ([`Ctx::step`]), so a misspelt step does not compile.
///
/// Its declaration is what becomes its own Lambda function and queue when deployed; where the
/// code and the function's list disagree (a step run that the function does not list), the run
/// fails with `UndeclaredStep`. [`steps!`] makes that impossible: it declares the constants
/// and the list together.
///
/// ```
/// use std::time::Duration;
/// use baton::Step;
///
/// const TRANSCRIBE: Step = Step::new("transcribe")
///     .timeout(Duration::from_secs(600))
///     .memory_mb(1024)
///     .retries(5);
/// assert_eq!(TRANSCRIBE.name(), "transcribe");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    name: &'static str,
    config: StepConfig,
}

impl Step {
    /// A step named `name` (1-64 characters of `[A-Za-z0-9_-]`; it names the step's queue and
    /// Lambda) with [`StepConfig::DEFAULT`].
    pub const fn new(name: &'static str) -> Self {
        Step {
            name,
            config: StepConfig::DEFAULT,
        }
    }
    /// How long one attempt may run: the body is stopped then and the attempt fails
    /// (retriable, `StepTimeout`). The step's Lambda gets this plus the engine's margin.
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.config = self.config.timeout(timeout);
        self
    }
    /// The memory of the step's Lambda (128-10240 MB; 128-4096 on Vercel).
    pub const fn memory_mb(mut self, memory_mb: u32) -> Self {
        self.config = self.config.memory_mb(memory_mb);
        self
    }
    /// Retries after the first attempt (the function's [`Function::retries`] when not set).
    pub const fn retries(mut self, retries: u32) -> Self {
        self.config = self.config.retries(retries);
        self
    }
    /// Deploys the step as a Vercel function ([`Host::Vercel`]) instead of a Lambda.
    pub const fn host(mut self, host: Host) -> Self {
        self.config = self.config.host(host);
        self
    }
    /// All of the step's settings at once.
    pub const fn with_config(mut self, config: StepConfig) -> Self {
        self.config = config;
        self
    }
    pub const fn name(&self) -> &'static str {
        self.name
    }
    pub const fn config(&self) -> StepConfig {
        self.config
    }
}

/// Declares steps and the list of them in one place: every step the list's function may run,
/// once, with its settings.
///
/// ```
/// use std::time::Duration;
/// use baton::{Step, steps};
///
/// steps! {
///     /// The steps of `transcribe-video`.
///     pub const STEPS = [
///         DOWNLOAD = Step::new("download").timeout(Duration::from_secs(120)),
///         /// Whisper: slow, and worth more retries.
///         TRANSCRIBE = Step::new("transcribe").timeout(Duration::from_secs(600)).retries(5),
///     ];
/// }
/// assert_eq!(STEPS, [DOWNLOAD, TRANSCRIBE]);
/// ```
///
/// expands to `pub const DOWNLOAD: Step = ...;`, `pub const TRANSCRIBE: Step = ...;` and
/// `pub const STEPS: &[Step] = &[DOWNLOAD, TRANSCRIBE];`, which the function's definition takes
/// ([`Function::steps`]).
///
/// A misspelt step does not compile:
///
/// ```compile_fail
/// use baton::{Ctx, Error, Step, steps};
///
/// steps! {
///     const STEPS = [DOWNLOAD = Step::new("download")];
/// }
///
/// async fn code(ctx: Ctx) -> Result<u32, Error> {
///     ctx.step(DOWNLAOD, async |_| Ok(1)).await
/// }
/// ```
///
/// nor does a step named by a string instead of its declaration:
///
/// ```compile_fail
/// use baton::{Ctx, Error};
///
/// async fn code(ctx: Ctx) -> Result<u32, Error> {
///     ctx.step("download", async |_| Ok(1)).await
/// }
/// ```
#[macro_export]
macro_rules! steps {
    (
        $(#[$list_meta:meta])*
        $vis:vis const $list:ident = [
            $( $(#[$meta:meta])* $name:ident = $step:expr ),+ $(,)?
        ];
    ) => {
        $( $(#[$meta])* $vis const $name: $crate::Step = $step; )+
        $(#[$list_meta])*
        $vis const $list: &[$crate::Step] = &[ $( $name ),+ ];
    };
}

/// How a wait picks its event: by a value the code gives, or by the run's own event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    /// The event's field equals a value given at the wait ([`Ctx::wait_for_event`]).
    Value,
    /// The event's field equals the same field of the run's own event ([`Ctx::wait_for_match`];
    /// Inngest's `match`).
    RunEvent,
}

/// A wait for an event, declared once as a value: the journal name of the wait, the event's
/// name, the field it is matched on, and how long to wait. The function's definition lists it
/// ([`Function::wait`]: events of that name are then indexed by that field as they arrive, so
/// an event that beats the wait is still seen), and the code waits by the same value. `D` is
/// the event's `data` type.
///
/// ```
/// use std::time::Duration;
/// use baton::Wait;
///
/// #[derive(serde::Deserialize)]
/// struct TaskUpdate { task_id: String, state: String }
///
/// const TASK_FINISHED: Wait<TaskUpdate> = Wait::new("task-finished", "clips/task.updated")
///     .on("data.task_id")
///     .timeout(Duration::from_secs(30 * 60));
/// ```
pub struct Wait<D = Value> {
    name: &'static str,
    event: &'static str,
    field: &'static str,
    matching: Matching,
    timeout: Duration,
    data: std::marker::PhantomData<fn() -> D>,
}

impl<D> Clone for Wait<D> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<D> Copy for Wait<D> {}

impl<D> std::fmt::Debug for Wait<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wait")
            .field("name", &self.name)
            .field("event", &self.event)
            .field("field", &self.field)
            .field("matching", &self.matching)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The default timeout of a wait: a day.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl<D> Wait<D> {
    /// A wait named `name` (its journal entry) for an event named `event`, matched on
    /// `data.id` until [`Wait::on`] says otherwise, for [`DEFAULT_WAIT_TIMEOUT`].
    pub const fn new(name: &'static str, event: &'static str) -> Self {
        Wait {
            name,
            event,
            field: "data.id",
            matching: Matching::Value,
            timeout: DEFAULT_WAIT_TIMEOUT,
            data: std::marker::PhantomData,
        }
    }
    /// The event's field (dotted, e.g. `data.task_id`) that must equal the value given at the
    /// wait.
    pub const fn on(mut self, field: &'static str) -> Self {
        self.field = field;
        self.matching = Matching::Value;
        self
    }
    /// The event's field (dotted) that must equal the same field of the run's own event.
    pub const fn matching_run_event(mut self, field: &'static str) -> Self {
        self.field = field;
        self.matching = Matching::RunEvent;
        self
    }
    /// How long to wait; then the wait returns `None`. At most a sleep's limit.
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    pub const fn name(&self) -> &'static str {
        self.name
    }
    pub const fn event(&self) -> &'static str {
        self.event
    }
    pub const fn field(&self) -> &'static str {
        self.field
    }
    pub const fn matching(&self) -> Matching {
        self.matching
    }
    pub const fn timeout_duration(&self) -> Duration {
        self.timeout
    }
}

/// Another function run as a child ([`Ctx::invoke`]), declared once as a value: the journal
/// name of the call, the function's id and how long to wait for it; `I` is the child's event
/// data, `O` its output. The calling function's definition lists it ([`Function::invokes`]),
/// so the registry checks the target exists ([`Registry::check`]).
///
/// ```
/// use std::time::Duration;
/// use baton::Invoke;
///
/// const REEMBED: Invoke<serde_json::Value, serde_json::Value> =
///     Invoke::new("reembed", "generate-embeddings").timeout(Duration::from_secs(3600));
/// ```
pub struct Invoke<I = Value, O = Value> {
    name: &'static str,
    function_id: &'static str,
    timeout: Duration,
    types: std::marker::PhantomData<fn(I) -> O>,
}

impl<I, O> Clone for Invoke<I, O> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<I, O> Copy for Invoke<I, O> {}

impl<I, O> std::fmt::Debug for Invoke<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invoke")
            .field("name", &self.name)
            .field("function_id", &self.function_id)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<I, O> Invoke<I, O> {
    /// A call named `name` (its journal entries) of function `function_id`, waiting at most
    /// [`DEFAULT_WAIT_TIMEOUT`].
    pub const fn new(name: &'static str, function_id: &'static str) -> Self {
        Invoke {
            name,
            function_id,
            timeout: DEFAULT_WAIT_TIMEOUT,
            types: std::marker::PhantomData,
        }
    }
    /// How long to wait for the child to end; past it the call fails with `InvokeTimedOut`.
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    pub const fn name(&self) -> &'static str {
        self.name
    }
    pub const fn function_id(&self) -> &'static str {
        self.function_id
    }
    pub const fn timeout_duration(&self) -> Duration {
        self.timeout
    }
}

/// What starts a function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    pub event: String,
    /// Only events whose field at this dotted path (e.g. `data.function_id`) equals the value.
    pub filter: Option<(String, Value)>,
}

impl Trigger {
    pub fn matches(&self, event: &EventRecord) -> bool {
        if self.event != event.name {
            return false;
        }
        match &self.filter {
            None => true,
            Some((path, want)) => lookup(&event.to_json(), path) == Some(want),
        }
    }

    /// The filter as the API shows it, e.g. `event.data.function_id == "x"`.
    pub fn expression(&self) -> Option<String> {
        self.filter
            .as_ref()
            .map(|(path, value)| format!("event.{path} == {value}"))
    }
}

/// An event that cancels runs: its field at `path` must equal the run's event's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelOn {
    pub event: String,
    pub path: String,
}

impl CancelOn {
    /// Whether `event` cancels the run started by `run_event`: same name, and the field is
    /// present and equal in both.
    pub fn matches(&self, event: &EventRecord, run_event: &EventRecord) -> bool {
        if event.name != self.event {
            return false;
        }
        match lookup(&event.to_json(), &self.path) {
            Some(value) if !value.is_null() => {
                lookup(&run_event.to_json(), &self.path) == Some(value)
            }
            _ => false,
        }
    }
}

/// Follows a dotted path (`data.user.id`) into a JSON value.
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

pub(crate) type Handler =
    Arc<dyn Fn(Ctx, EventRecord) -> BoxFuture<'static, Result<Value, Error>> + Send + Sync>;

/// A durable function: id, triggers, declared steps and the code.
#[derive(Clone)]
pub struct Function {
    pub id: String,
    pub name: String,
    pub triggers: Vec<Trigger>,
    /// Cron patterns (UTC) that start the function ([`Function::cron`]).
    pub crons: Vec<String>,
    /// At most one run per value of this field of the event per 24 h ([`Function::idempotency`]).
    pub idempotency: Option<String>,
    /// Events that cancel a live run of this function ([`Function::cancel_on`]).
    pub cancel_on: Vec<CancelOn>,
    /// A run not started this long after its event is cancelled ([`Function::start_timeout`]).
    pub start_timeout: Option<Duration>,
    /// A run not ended this long after its event is cancelled ([`Function::finish_timeout`]).
    pub finish_timeout: Option<Duration>,
    /// Its declared steps by name ([`Function::steps`]).
    pub steps: BTreeMap<String, StepConfig>,
    /// Events the code waits for, as `(event name, matched field)` ([`Function::wait`]).
    pub waits: Vec<(String, String)>,
    /// Functions the code runs as children ([`Function::invokes`]).
    pub invokes: Vec<String>,
    pub flow: FlowControl,
    /// Default retries for steps that do not set their own.
    pub retries: u32,
    /// For a failure handler: the id of the function whose failures it handles.
    pub failure_of: Option<String>,
    pub(crate) handler: Option<Handler>,
    pub(crate) on_failure: Option<Handler>,
    /// Steps the failure handler uses (it is its own function, with its own handlers).
    pub failure_steps: BTreeMap<String, StepConfig>,
    /// The failure handler's default retries ([`DEFAULT_RETRIES`] unless set).
    pub failure_retries: u32,
    /// What the builder found wrong (a step declared twice), reported by [`Registry::register`].
    problems: Vec<String>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function")
            .field("id", &self.id)
            .field("triggers", &self.triggers)
            .field("steps", &self.steps)
            .field("retries", &self.retries)
            .finish()
    }
}

/// Default retries after the first attempt, as in Inngest (5 attempts in all).
pub const DEFAULT_RETRIES: u32 = 4;

impl Function {
    pub fn new(id: impl Into<String>) -> Self {
        let id = id.into();
        Function {
            name: id.clone(),
            id,
            triggers: Vec::new(),
            crons: Vec::new(),
            idempotency: None,
            cancel_on: Vec::new(),
            start_timeout: None,
            finish_timeout: None,
            steps: BTreeMap::new(),
            waits: Vec::new(),
            invokes: Vec::new(),
            flow: FlowControl::default(),
            retries: DEFAULT_RETRIES,
            failure_of: None,
            handler: None,
            on_failure: None,
            failure_steps: BTreeMap::new(),
            failure_retries: DEFAULT_RETRIES,
            problems: Vec::new(),
        }
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Runs on every event with this name.
    pub fn trigger(mut self, event: impl Into<String>) -> Self {
        self.triggers.push(Trigger {
            event: event.into(),
            filter: None,
        });
        self
    }

    /// Runs on events with this name whose field at `path` equals `value`.
    pub fn trigger_if(
        mut self,
        event: impl Into<String>,
        path: impl Into<String>,
        value: Value,
    ) -> Self {
        self.triggers.push(Trigger {
            event: event.into(),
            filter: Some((path.into(), value)),
        });
        self
    }

    /// Makes this function the failure handler of `function_id`: it runs on each
    /// [`FUNCTION_FAILED`] event of that function (its handler takes `Event<FailureData>`).
    /// What [`Function::on_failure`] declares, as a function of its own: for a function that is
    /// removed while runs of it are live, keep its failure handler as
    /// `Function::new("{id}-failure").handles_failures_of("{id}")` (the same id, so the same
    /// Lambda and queue): the runs the removal ends (`FunctionRemoved`) reach it.
    pub fn handles_failures_of(mut self, function_id: impl Into<String>) -> Self {
        let function_id = function_id.into();
        self.triggers.push(Trigger {
            event: FUNCTION_FAILED.into(),
            filter: Some((
                "data.function_id".into(),
                Value::String(function_id.clone()),
            )),
        });
        self.failure_of = Some(function_id);
        self
    }

    /// Declares a step. Only declared names may be used with `ctx.step`.
    /// Starts the function on a schedule: a POSIX cron pattern in UTC (`"*/15 * * * *"`,
    /// `"0 6 * * MON-FRI"`, `@hourly`; a sixth leading field for seconds). Each tick is the
    /// event [`SCHEDULED`] for this function.
    pub fn cron(mut self, pattern: impl Into<String>) -> Self {
        self.crons.push(pattern.into());
        self
    }

    /// At most one run per value of the event's field at `path` (dotted, e.g.
    /// `data.order_id`) within the engine's idempotency window (24 h): later events with the
    /// same value start nothing for this function. Events without the field are not limited.
    pub fn idempotency(mut self, path: impl Into<String>) -> Self {
        self.idempotency = Some(path.into());
        self
    }

    /// Cancels a live run when the event `event` arrives whose field at `path` (dotted, e.g.
    /// `data.order_id`) equals the same field of the run's own event.
    pub fn cancel_on(mut self, event: impl Into<String>, path: impl Into<String>) -> Self {
        self.cancel_on.push(CancelOn {
            event: event.into(),
            path: path.into(),
        });
        self
    }

    /// A run that has not started `timeout` after its event (a backlog, a stalled queue) is
    /// cancelled instead, with the error `StartTimeout`.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = Some(timeout);
        self
    }

    /// A run that has not ended `timeout` after its event is cancelled, with the error
    /// `FinishTimeout`, even while it sleeps or waits; a step already executing finishes,
    /// nothing after it runs.
    pub fn finish_timeout(mut self, timeout: Duration) -> Self {
        self.finish_timeout = Some(timeout);
        self
    }

    /// Declares a wait the code makes ([`Ctx::wait_for_event`], [`Ctx::wait_for_match`]):
    /// events with its name are indexed by its field as they arrive, so a wait finds one that
    /// came before it was registered. A wait the function does not declare fails the run
    /// (`UndeclaredWait`).
    pub fn wait<D>(mut self, wait: Wait<D>) -> Self {
        let declared = (wait.event().to_owned(), wait.field().to_owned());
        if !self.waits.contains(&declared) {
            self.waits.push(declared);
        }
        self
    }

    /// Declares a function the code runs as a child ([`Ctx::invoke`]); the registry checks it
    /// exists ([`Registry::check`]).
    pub fn invokes<I, O>(mut self, invoke: Invoke<I, O>) -> Self {
        let id = invoke.function_id().to_owned();
        if !self.invokes.contains(&id) {
            self.invokes.push(id);
        }
        self
    }

    /// At most `limit` runs at once per value of the event's field at `key` ([`Concurrency`]).
    pub fn concurrency(mut self, limit: u32, key: Option<&str>) -> Self {
        self.flow.concurrency = Some(Concurrency {
            limit,
            key: key.map(str::to_owned),
        });
        self
    }

    /// At most `limit` run starts per `period` per key; runs over it are delayed, not dropped.
    pub fn throttle(mut self, limit: u32, period: Duration, key: Option<&str>) -> Self {
        self.flow.throttle = Some(Rate {
            limit,
            period,
            key: key.map(str::to_owned),
        });
        self
    }

    /// At most `limit` runs per `period` per key; events over it start no run (skipped).
    pub fn rate_limit(mut self, limit: u32, period: Duration, key: Option<&str>) -> Self {
        self.flow.rate_limit = Some(Rate {
            limit,
            period,
            key: key.map(str::to_owned),
        });
        self
    }

    /// Starts one run per key `period` after the last of a burst of events, with that event.
    pub fn debounce(mut self, period: Duration, key: Option<&str>) -> Self {
        self.flow.debounce = Some(Debounce {
            period,
            key: key.map(str::to_owned),
        });
        self
    }

    /// The first tick of the function's crons strictly after `after`.
    pub fn next_tick(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.crons
            .iter()
            .filter_map(|p| croner::Cron::from_str(p).ok())
            .filter_map(|c| c.find_next_occurrence(&after, false).ok())
            .min()
    }

    /// Declares the function's steps (usually a [`steps!`] list): only these may run
    /// ([`Ctx::step`]), and each becomes its own Lambda and queue when deployed.
    pub fn steps(mut self, steps: &[Step]) -> Self {
        for step in steps {
            self = self.step(*step);
        }
        self
    }

    /// Declares one step (see [`Function::steps`]).
    pub fn step(mut self, step: Step) -> Self {
        if self
            .steps
            .insert(step.name().to_owned(), step.config())
            .is_some()
        {
            self.problems
                .push(format!("step {:?} is declared twice", step.name()));
        }
        self
    }

    /// Declares the failure handler's steps (it runs as its own function, `{id}-failure`).
    pub fn failure_steps(mut self, steps: &[Step]) -> Self {
        for step in steps {
            self = self.failure_step(*step);
        }
        self
    }

    /// Declares one step of the failure handler.
    pub fn failure_step(mut self, step: Step) -> Self {
        if self
            .failure_steps
            .insert(step.name().to_owned(), step.config())
            .is_some()
        {
            self.problems
                .push(format!("failure step {:?} is declared twice", step.name()));
        }
        self
    }

    /// Retries after a step's first attempt, for steps that do not set their own
    /// ([`DEFAULT_RETRIES`] unless set).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The failure handler's retries for its steps ([`DEFAULT_RETRIES`] unless set): it is a
    /// function of its own, as Inngest's `onFailure` is.
    pub fn failure_retries(mut self, retries: u32) -> Self {
        self.failure_retries = retries;
        self
    }

    /// The function's code: `async fn(Ctx, Event<D>) -> Result<O, Error>`.
    pub fn handler<D, O, F, Fut>(mut self, f: F) -> Self
    where
        D: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(Ctx, Event<D>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Error>> + Send + 'static,
    {
        self.handler = Some(erase(f));
        self
    }

    /// The function's code with shared state (the app's service clients, say):
    /// `async fn(Ctx, Event<D>, S) -> Result<O, Error>`, handed a clone of `state` per run
    /// (make `S` cheap to clone: an `Arc`).
    pub fn handler_with<S, D, O, F, Fut>(self, state: S, f: F) -> Self
    where
        S: Clone + Send + Sync + 'static,
        D: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(Ctx, Event<D>, S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Error>> + Send + 'static,
    {
        self.handler(move |ctx: Ctx, event: Event<D>| f(ctx, event, state.clone()))
    }

    /// Runs (as its own function, `{id}-failure`) when a run of this function fails for good.
    pub fn on_failure<O, F, Fut>(mut self, f: F) -> Self
    where
        O: Serialize + Send + 'static,
        F: Fn(Ctx, Event<FailureData>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Error>> + Send + 'static,
    {
        self.on_failure = Some(erase(f));
        self
    }

    /// [`Function::on_failure`] with shared state, as [`Function::handler_with`].
    pub fn on_failure_with<S, O, F, Fut>(self, state: S, f: F) -> Self
    where
        S: Clone + Send + Sync + 'static,
        O: Serialize + Send + 'static,
        F: Fn(Ctx, Event<FailureData>, S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Error>> + Send + 'static,
    {
        self.on_failure(move |ctx: Ctx, event: Event<FailureData>| f(ctx, event, state.clone()))
    }

    /// Retries allowed for a declared step (after its first attempt).
    pub fn step_retries(&self, name: &str) -> u32 {
        self.steps
            .get(name)
            .and_then(|s| s.retries)
            .unwrap_or(self.retries)
    }

    pub fn has_failure_handler(&self) -> bool {
        self.on_failure.is_some()
    }
}

fn erase<D, O, F, Fut>(f: F) -> Handler
where
    D: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
    F: Fn(Ctx, Event<D>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, Error>> + Send + 'static,
{
    let f = Arc::new(f);
    Arc::new(move |ctx: Ctx, event: EventRecord| {
        let f = f.clone();
        Box::pin(async move {
            let data: D = serde_json::from_value(event.data.clone()).map_err(|e| {
                Error::with_kind(
                    ErrorKind::Definition,
                    "InvalidEventData",
                    format!(
                        "event {} data does not match the function's type: {e}",
                        event.name
                    ),
                )
            })?;
            let typed = Event {
                id: event.id,
                name: event.name,
                data,
                ts: event.ts,
                user: event.user,
            };
            let output = f(ctx, typed).await?;
            serde_json::to_value(output).map_err(|e| {
                Error::with_kind(
                    ErrorKind::Definition,
                    "OutputNotSerializable",
                    e.to_string(),
                )
            })
        })
    })
}

/// Checks flow-control settings against their limits.
fn check_flow(flow: &FlowControl) -> Result<(), String> {
    let key_ok = |key: &Option<String>| key.as_ref().is_none_or(|k| !k.is_empty());
    let period_ok = |p: Duration| p >= Duration::from_secs(1) && p <= MAX_FLOW_PERIOD;
    if let Some(c) = &flow.concurrency {
        if c.limit == 0 || c.limit > MAX_FLOW_LIMIT || !key_ok(&c.key) {
            return Err(format!(
                "concurrency limit must be 1-{MAX_FLOW_LIMIT} with a non-empty key path"
            ));
        }
    }
    for (what, rate) in [
        ("throttle", &flow.throttle),
        ("rate_limit", &flow.rate_limit),
    ] {
        if let Some(r) = rate {
            if r.limit == 0 || r.limit > MAX_FLOW_LIMIT || !period_ok(r.period) || !key_ok(&r.key) {
                return Err(format!(
                    "{what}: limit must be 1-{MAX_FLOW_LIMIT}, period 1 s to {MAX_FLOW_PERIOD:?}, key non-empty"
                ));
            }
        }
    }
    if let Some(d) = &flow.debounce {
        if !period_ok(d.period) || !key_ok(&d.key) {
            return Err(format!(
                "debounce: period must be 1 s to {MAX_FLOW_PERIOD:?}, key non-empty"
            ));
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DefinitionError {
    #[error("function id {0:?} is registered twice")]
    DuplicateId(String),
    #[error("function {function:?}: {problem}")]
    Invalid { function: String, problem: String },
}

/// Every function the app defines, failure handlers included.
#[derive(Clone, Default)]
pub struct Registry {
    functions: Vec<Arc<Function>>,
    /// Event name -> the fields waits match it on (every function's [`Function::wait`]).
    waits: BTreeMap<String, std::collections::BTreeSet<String>>,
    webhooks: Vec<crate::webhook::WebhookSource>,
    by_id: HashMap<String, usize>,
}

/// Step names become queue and binary names: keep them to `[A-Za-z0-9_-]`, at most 64 chars.
pub const MAX_NAME_LEN: usize = 64;

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds a function (and its failure handler, as `{id}-failure`) after checking it.
    pub fn register(mut self, mut function: Function) -> Result<Self, DefinitionError> {
        let id = function.id.clone();
        let invalid = |problem: String| DefinitionError::Invalid {
            function: id.clone(),
            problem,
        };
        if !valid_name(&function.id) {
            return Err(invalid("ids are 1-64 chars of [A-Za-z0-9_-]".into()));
        }
        if let Some(problem) = function.problems.first() {
            return Err(invalid(problem.clone()));
        }
        if function.handler.is_none() {
            return Err(invalid("has no handler".into()));
        }
        for pattern in &function.crons {
            if let Err(e) = croner::Cron::from_str(pattern) {
                return Err(invalid(format!("cron pattern {pattern:?}: {e}")));
            }
        }
        if !function.crons.is_empty() {
            function.triggers.push(Trigger {
                event: SCHEDULED.into(),
                filter: Some((
                    "data.function_id".into(),
                    Value::String(function.id.clone()),
                )),
            });
        }
        if function.triggers.is_empty() {
            return Err(invalid("has no trigger".into()));
        }
        if let Some(bad) = function
            .steps
            .keys()
            .chain(function.failure_steps.keys())
            .find(|s| !valid_name(s))
        {
            return Err(invalid(format!(
                "step name {bad:?}: names are 1-64 chars of [A-Za-z0-9_-]"
            )));
        }
        check_flow(&function.flow).map_err(invalid)?;
        if let Some((event, field)) = function
            .waits
            .iter()
            .find(|(e, f)| e.is_empty() || f.is_empty())
        {
            return Err(invalid(format!(
                "wait for {event:?} on {field:?}: both the event and the field are required"
            )));
        }
        if let Some(on_failure) = function.on_failure.clone() {
            let handler_fn = Function {
                name: format!("{} (on failure)", function.name),
                steps: function.failure_steps.clone(),
                retries: function.failure_retries,
                handler: Some(on_failure),
                ..Function::new(format!("{}-failure", function.id))
                    .handles_failures_of(function.id.clone())
            };
            self = self.insert(handler_fn)?;
        }
        self.insert(function)
    }

    fn insert(mut self, function: Function) -> Result<Self, DefinitionError> {
        if self.by_id.contains_key(&function.id) {
            return Err(DefinitionError::DuplicateId(function.id));
        }
        for (event, field) in &function.waits {
            self.waits
                .entry(event.clone())
                .or_default()
                .insert(field.clone());
        }
        self.by_id.insert(function.id.clone(), self.functions.len());
        self.functions.push(Arc::new(function));
        Ok(self)
    }

    /// Declares an outside service that calls back (`POST /v1/webhooks/{source}`).
    pub fn register_webhook(
        mut self,
        source: crate::webhook::WebhookSource,
    ) -> Result<Self, DefinitionError> {
        let invalid = |problem: String| DefinitionError::Invalid {
            function: format!("webhook {}", source.source),
            problem,
        };
        if !valid_name(&source.source) {
            return Err(invalid("sources are 1-64 chars of [A-Za-z0-9_-]".into()));
        }
        if source.event.is_empty() || source.event.contains('/') {
            return Err(invalid("the event is a non-empty name without '/'".into()));
        }
        if self.webhook_source(&source.source).is_some() {
            return Err(invalid("is registered twice".into()));
        }
        self.webhooks.push(source);
        Ok(self)
    }

    /// Replaces the cron schedule of function `id` (what `baton dev --cron` does, to run a
    /// daily job every few seconds while developing). The pattern is checked like
    /// [`Function::cron`]'s.
    pub fn override_cron(mut self, id: &str, pattern: &str) -> Result<Self, DefinitionError> {
        let invalid = |problem: String| DefinitionError::Invalid {
            function: id.to_owned(),
            problem,
        };
        let index = *self
            .by_id
            .get(id)
            .ok_or_else(|| invalid("is not registered".into()))?;
        if let Err(e) = croner::Cron::from_str(pattern) {
            return Err(invalid(format!("cron pattern {pattern:?}: {e}")));
        }
        let function = Arc::make_mut(&mut self.functions[index]);
        if function.crons.is_empty() {
            return Err(invalid("has no cron trigger to override".into()));
        }
        function.crons = vec![pattern.to_owned()];
        Ok(self)
    }

    /// Checks what only the whole registry can tell: every function invoked as a child
    /// ([`Function::invokes`]) is registered. The local runtime, the Lambda handlers and
    /// `baton generate` refuse a registry that fails it.
    pub fn check(&self) -> Result<(), DefinitionError> {
        for function in &self.functions {
            if let Some(missing) = function.invokes.iter().find(|id| self.get(id).is_none()) {
                return Err(DefinitionError::Invalid {
                    function: function.id.clone(),
                    problem: format!("invokes {missing:?}, which is not registered"),
                });
            }
        }
        Ok(())
    }

    pub fn webhook_source(&self, source: &str) -> Option<&crate::webhook::WebhookSource> {
        self.webhooks.iter().find(|w| w.source == source)
    }

    pub fn webhooks(&self) -> impl Iterator<Item = &crate::webhook::WebhookSource> {
        self.webhooks.iter()
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Function>> {
        self.by_id.get(id).map(|&i| &self.functions[i])
    }

    pub fn functions(&self) -> impl Iterator<Item = &Arc<Function>> {
        self.functions.iter()
    }

    /// Every queue the registry's handlers consume: per function its continue queue, then
    /// one per declared step (the generated template creates exactly these).
    pub fn queues(&self) -> Vec<QueueName> {
        let mut out = Vec::new();
        for f in &self.functions {
            out.push(QueueName::Continue {
                function_id: f.id.clone(),
            });
            out.extend(f.steps.keys().map(|step| QueueName::Step {
                function_id: f.id.clone(),
                step: step.clone(),
            }));
        }
        out
    }

    /// The fields waits match events named `event` on: declared ones, and `data.run_id` of
    /// [`FUNCTION_FINISHED`] (what `invoke` waits for).
    pub fn wait_fields<'a>(&'a self, event: &str) -> impl Iterator<Item = &'a str> + 'a {
        let builtin = (event == FUNCTION_FINISHED).then_some("data.run_id");
        self.waits
            .get(event)
            .into_iter()
            .flatten()
            .map(String::as_str)
            .filter(move |f| Some(*f) != builtin)
            .chain(builtin)
    }

    /// The functions an event starts, in registration order. [`FUNCTION_INVOKED`] starts only
    /// the function it names.
    pub fn triggered_by<'a>(
        &'a self,
        event: &'a EventRecord,
    ) -> impl Iterator<Item = &'a Arc<Function>> + 'a {
        let invoked = (event.name == FUNCTION_INVOKED).then(|| {
            lookup(&event.data, &format!("{INVOKE_META}.function_id"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        });
        self.functions.iter().filter(move |f| match &invoked {
            Some(id) => &f.id == id,
            None => f.triggers.iter().any(|t| t.matches(event)),
        })
    }
}
