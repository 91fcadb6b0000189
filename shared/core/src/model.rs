//! The records the engine stores and the messages it sends. Plain data, serde everywhere:
//! typed values are erased to JSON only here, at the storage boundary.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An event as stored: what an app sent (or the engine emitted), with its assigned id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Baton's event id (a ULID), returned to the sender.
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub data: Value,
    /// Milliseconds since the epoch.
    pub ts: i64,
    #[serde(default)]
    pub user: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<String>,
    /// The sender's idempotency id (`id` in the request body), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_id: Option<String>,
}

impl EventRecord {
    /// The event as function code and the API see it (Inngest's shape).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "data": self.data,
            "ts": self.ts,
            "user": self.user,
            "v": self.v,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RunStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 5] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "Queued",
            RunStatus::Running => "Running",
            RunStatus::Completed => "Completed",
            RunStatus::Failed => "Failed",
            RunStatus::Cancelled => "Cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// `{"name", "message"}`: an error as recorded on a step or a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub name: String,
    pub message: String,
}

/// The longest error name and message kept (bytes): an outside service's error page must not
/// become a megabyte in every journal entry and listing.
pub const MAX_ERROR_NAME: usize = 256;
pub const MAX_ERROR_MESSAGE: usize = 8 * 1024;

impl ErrorInfo {
    /// An error, its name and message cut to [`MAX_ERROR_NAME`] and [`MAX_ERROR_MESSAGE`].
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorInfo {
            name: cut(name.into(), MAX_ERROR_NAME),
            message: cut(message.into(), MAX_ERROR_MESSAGE),
        }
    }
}

/// `s` cut to at most `max` bytes on a character boundary, saying how much went.
pub fn cut(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let cut_bytes = s.len();
    let mut end = max.saturating_sub(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(&format!("… ({} bytes cut)", cut_bytes - end));
    s
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub percent: u8,
    pub message: String,
}

/// One run of one function on one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// A ULID: sorting by id sorts by start time.
    pub run_id: String,
    pub function_id: String,
    pub event_id: String,
    /// A copy of the triggering event, so a handler reads one item, not two.
    pub event: EventRecord,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub output: Option<Value>,
    pub error: Option<ErrorInfo>,
    pub progress: Option<Progress>,
    /// Set on runs started by a replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<String>,
    /// Set on runs restarted from a step of `replay_of`: that step's id. The steps before
    /// it were copied from that run's journal; it and the rest ran again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_from: Option<String>,
}

impl RunRecord {
    /// The run as listings show it; the output only when `with_output`.
    pub fn summary(&self, with_output: bool) -> RunSummary {
        RunSummary {
            run_id: self.run_id.clone(),
            function_id: self.function_id.clone(),
            event_id: self.event_id.clone(),
            event_name: self.event.name.clone(),
            status: self.status,
            started_at: self.started_at,
            ended_at: self.ended_at,
            output: if with_output {
                self.output.clone()
            } else {
                None
            },
            error: self.error.clone(),
            progress: self.progress.clone(),
            replay_of: self.replay_of.clone(),
            replay_from: self.replay_from.clone(),
        }
    }
}

/// A run as listings read it: everything but its event's payload, and its output only when
/// the query asks ([`RunQuery::with_output`]). Listing a thousand runs of 200 KB events reads
/// a thousand small rows, never the events.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub run_id: String,
    pub function_id: String,
    pub event_id: String,
    pub event_name: String,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub output: Option<Value>,
    pub error: Option<ErrorInfo>,
    pub progress: Option<Progress>,
    pub replay_of: Option<String>,
    pub replay_from: Option<String>,
}

/// What a journal entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StepKind {
    /// A user step: a closure run by the step's own handler.
    Run,
    /// A durable timer; `wake_at` says when.
    Sleep,
    /// Events sent from function code, journaled so a replay never sends twice.
    SendEvent,
    /// Waiting for an event (`wake_at`: the timeout); the output is the event, or null when
    /// the wait timed out.
    Wait,
    /// A patch marker ([`crate::Ctx::patched`]): its output says which branch the run took
    /// (true: the new code). Never planned or executed; recorded final when the replay first
    /// reaches it.
    Patch,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Run => "Run",
            StepKind::Sleep => "Sleep",
            StepKind::SendEvent => "SendEvent",
            StepKind::Wait => "Wait",
            StepKind::Patch => "Patch",
        }
    }
    pub fn parse(s: &str) -> Option<StepKind> {
        [
            StepKind::Run,
            StepKind::Sleep,
            StepKind::SendEvent,
            StepKind::Wait,
            StepKind::Patch,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StepStatus {
    /// Scheduled, not started (or waiting for its next attempt, see `wake_at`).
    Planned,
    Running,
    Completed,
    /// Terminally failed (non-retriable, or retries exhausted). The error is journaled and
    /// handed to the function code on every replay.
    Failed,
    Sleeping,
    Waiting,
}

impl StepStatus {
    /// A final step has its result journaled; it never changes again.
    pub fn is_final(self) -> bool {
        matches!(self, StepStatus::Completed | StepStatus::Failed)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Planned => "Planned",
            StepStatus::Running => "Running",
            StepStatus::Completed => "Completed",
            StepStatus::Failed => "Failed",
            StepStatus::Sleeping => "Sleeping",
            StepStatus::Waiting => "Waiting",
        }
    }
    pub fn parse(s: &str) -> Option<StepStatus> {
        [
            StepStatus::Planned,
            StepStatus::Running,
            StepStatus::Completed,
            StepStatus::Failed,
            StepStatus::Sleeping,
            StepStatus::Waiting,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One journal entry: a step of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub run_id: String,
    /// Unique within the run: the step name, or `name:N` for its N-th repeat.
    pub step_id: String,
    /// The declared step name (the unit that has its own handler and queue).
    pub name: String,
    pub kind: StepKind,
    pub status: StepStatus,
    /// Attempts started so far.
    pub attempts: u32,
    /// Order in which the run planned its steps (0-based).
    pub seq: u32,
    pub planned_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Sleeps: when to wake. Steps waiting for a retry: when the next attempt is due.
    pub wake_at: Option<DateTime<Utc>>,
    pub output: Option<Value>,
    /// The final error, or the last attempt's error while retries remain.
    pub error: Option<ErrorInfo>,
    /// Steps planned in the same write as this step's result, as planned, on a backend that
    /// keeps them on this entry until they start (see [`crate::store::Store::record_step`]).
    /// The engine's own bookkeeping: not part of the API's step (the journal lists the steps).
    #[serde(skip)]
    pub planned: Vec<StepRecord>,
}

/// The journaled result of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StepOutcome {
    Completed(Value),
    Failed(ErrorInfo),
}

/// A coordination entry (see [`crate::store::Store::put_entry`]): `id` under `key`, with a
/// version for optimistic updates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub id: String,
    pub value: Value,
    /// Bumped by the writer: `Expect::Version(v)` then writes `v + 1`.
    pub version: u64,
    pub expires_at: DateTime<Utc>,
}

/// The condition of an entry write or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Unconditional.
    Any,
    /// No unexpired entry with this key and id.
    Absent,
    /// An unexpired entry with exactly this version.
    Version(u64),
}

/// A continuation: tiny, because all state is read from the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    pub run_id: String,
    pub function_id: String,
    pub kind: MessageKind,
    /// Not to be acted on before this time. Queues cap their delays (SQS: 15 minutes), so a
    /// handler that gets a message early sends it on again for the remaining time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MessageKind {
    /// A new run: replay from the top and plan the first steps.
    Start,
    /// Execute one attempt of one step (handled by that step's own handler).
    Step {
        step_id: String,
        name: String,
        attempt: u32,
    },
    /// A sleep is due, or a wait's event arrived or its timeout is due.
    Wake { step_id: String },
    /// Re-drive a run that may have lost a message (the sweeper, recovery after a crash).
    Redrive,
    /// The function's finish timeout is due: a run still going is cancelled.
    Deadline,
    /// A debounced function's start is due: when `event_id` is still the last event of its
    /// key, the run (`run_id`, not yet created) is created and started.
    Debounce { event_id: String },
}

/// Where a message goes: a step's own queue, or the function's continue queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum QueueName {
    Step { function_id: String, step: String },
    Continue { function_id: String },
}

impl Message {
    pub fn queue(&self) -> QueueName {
        match &self.kind {
            MessageKind::Step { name, .. } => QueueName::Step {
                function_id: self.function_id.clone(),
                step: name.clone(),
            },
            _ => QueueName::Continue {
                function_id: self.function_id.clone(),
            },
        }
    }
}

/// A run with its journal, as `GET /v1/runs/{id}` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunDetail {
    pub run: RunRecord,
    pub steps: Vec<StepRecord>,
}

/// Filters and paging for listing runs, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunQuery {
    pub function_id: Option<String>,
    pub status: Option<RunStatus>,
    pub started_after: Option<DateTime<Utc>>,
    pub started_before: Option<DateTime<Utc>>,
    pub limit: usize,
    /// Opaque: the `cursor` of the previous page.
    pub cursor: Option<String>,
    /// Read each run's output too (the API's listing shows it; the dashboard, stats and bulk
    /// actions do not need it).
    pub with_output: bool,
}

impl RunQuery {
    /// Whether a run passes the filters (not the cursor).
    pub fn matches(&self, run: &RunSummary) -> bool {
        self.function_id
            .as_ref()
            .is_none_or(|f| *f == run.function_id)
            && self.status.is_none_or(|s| s == run.status)
            && self.started_after.is_none_or(|t| run.started_at > t)
            && self.started_before.is_none_or(|t| run.started_at < t)
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunPage {
    pub runs: Vec<RunSummary>,
    pub cursor: Option<String>,
    /// Ids of runs on this page whose stored rows could not be read: reported and skipped, so
    /// one bad row never takes a listing down.
    pub unreadable: Vec<String>,
}

/// One row of a listing as a backend read it: the run, or the id of a row it could not read.
pub type ListedRun = Result<RunSummary, String>;

impl RunPage {
    /// A page from up to `limit + 1` rows read newest first: the extra row only tells that
    /// more follow, and the cursor is then the last run id of the page (readable or not).
    pub fn from_overfetch(mut rows: Vec<ListedRun>, limit: usize) -> RunPage {
        let cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|r| match r {
                Ok(run) => run.run_id.clone(),
                Err(run_id) => run_id.clone(),
            })
        } else {
            None
        };
        let mut page = RunPage {
            cursor,
            ..RunPage::default()
        };
        for row in rows {
            match row {
                Ok(run) => page.runs.push(run),
                Err(run_id) => page.unreadable.push(run_id),
            }
        }
        page
    }
}

/// A conditional change of a run's status.
#[derive(Debug, Clone, PartialEq)]
pub struct RunTransition {
    /// Applied only when the current status is one of these.
    pub from: Vec<RunStatus>,
    pub to: RunStatus,
    pub ended_at: Option<DateTime<Utc>>,
    pub output: Option<Value>,
    pub error: Option<ErrorInfo>,
}

impl RunTransition {
    /// A run's start: Queued to Running.
    pub fn start() -> RunTransition {
        RunTransition {
            from: vec![RunStatus::Queued],
            to: RunStatus::Running,
            ended_at: None,
            output: None,
            error: None,
        }
    }
}

/// How deeply `value` nests: a scalar is 0, an empty or flat array or object 1, and each level
/// of arrays and objects inside adds one. Iterative: any parsed value is safe to measure.
pub fn json_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    deepest
}
