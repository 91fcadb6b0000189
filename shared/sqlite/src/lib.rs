//! The SQLite store: the embedded, durable default. Every conditional write of the
//! [`Store`] contract is one `INSERT ... ON CONFLICT DO NOTHING` or `UPDATE ... WHERE`, and
//! whether a row changed is the answer.
//!
//! Writes go to one connection on a thread of its own ([`writer`]) that group-commits them:
//! what arrives while a commit is syncing shares the next transaction and its one fsync, and
//! nothing is answered before its commit. Reads use a few other connections (WAL), so they
//! never wait for a write.
//!
//! Timestamps are stored as RFC 3339 text with nanoseconds and a `Z` suffix: fixed width, so
//! text order is time order (for years 0000-9999), readable in the `sqlite3` shell, and a
//! `DateTime<Utc>` reads back equal to what was written.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use serde::Serialize;
use serde::de::DeserializeOwned;

use baton::error::StoreError;
use baton::model::{
    Entry, ErrorInfo, EventRecord, Expect, ListedRun, Progress, RunPage, RunQuery, RunRecord,
    RunStatus, RunSummary, RunTransition, StepKind, StepOutcome, StepRecord, StepStatus,
};
use baton::store::{Store, StoreResult};
use baton::store::{expect_holds, page_size};

mod writer;

/// How hard a commit tries to reach the disk. The journal is always in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Durability {
    /// `synchronous=FULL`: every commit is fsynced before it returns, so a recorded step
    /// survives power loss and OS crashes.
    #[default]
    Full,
    /// `synchronous=NORMAL`: commits survive the process being killed (even `kill -9`), but
    /// the last few may be lost on power loss or an OS crash. The database never corrupts.
    Normal,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Full => "full",
            Durability::Normal => "normal",
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Durability::Full, Durability::Normal]
            .into_iter()
            .find(|d| d.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown durability {s:?} (expected \"full\" or \"normal\")"))
    }
}

/// A SQLite database: one writer connection on its own thread, where concurrent writes are
/// group-committed (see [`writer`]), and a few reader connections that never wait for it (WAL
/// lets readers see the last commit while a write is in progress). Cloning shares them.
#[derive(Clone)]
pub struct SqliteStore {
    writer: writer::Writer,
    /// `None` for an in-memory database, which only its one connection can see: reads then
    /// go through the writer.
    readers: Option<Arc<Readers>>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("readers", &self.readers.as_ref().map(|r| r.path.clone()))
            .finish_non_exhaustive()
    }
}

/// Reader connections, opened on demand (one per thread reading at once), at most
/// [`READERS`] kept open when idle.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// Idle reader connections kept open.
const READERS: usize = 4;

/// How long a statement waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    event_id       TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    data           TEXT NOT NULL,
    ts             INTEGER NOT NULL,
    user           TEXT NOT NULL,
    v              TEXT,
    idempotency_id TEXT
);
CREATE TABLE IF NOT EXISTS idempotency (
    idempotency_id TEXT PRIMARY KEY,
    event_id       TEXT NOT NULL,
    expires_at     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    function_id TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    status      TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    ended_at    TEXT,
    output      TEXT,
    error       TEXT,
    progress    TEXT,
    replay_of   TEXT,
    event       TEXT NOT NULL,
    event_name  TEXT,
    replay_from TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_function_status ON runs (function_id, status, run_id DESC);
CREATE INDEX IF NOT EXISTS runs_by_function ON runs (function_id, run_id DESC);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, run_id DESC);
CREATE INDEX IF NOT EXISTS runs_by_event ON runs (event_id, run_id);
CREATE TABLE IF NOT EXISTS steps (
    run_id     TEXT NOT NULL,
    step_id    TEXT NOT NULL,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    status     TEXT NOT NULL,
    attempts   INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    planned_at TEXT NOT NULL,
    started_at TEXT,
    ended_at   TEXT,
    wake_at    TEXT,
    output     TEXT,
    error      TEXT,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX IF NOT EXISTS steps_by_seq ON steps (run_id, seq);
CREATE TABLE IF NOT EXISTS entries (
    key        TEXT NOT NULL,
    id         TEXT NOT NULL,
    value      TEXT NOT NULL,
    version    INTEGER NOT NULL,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (key, id)
);
";

/// SQL for `StepStatus::is_final` and `RunStatus::is_terminal` (checked by a unit test).
const FINAL_STEP: &str = "('Completed', 'Failed')";
const TERMINAL_RUN: &str = "('Completed', 'Failed', 'Cancelled')";

const RUN_COLUMNS: &str = "run_id, function_id, event_id, status, started_at, ended_at, output, error, progress, replay_of, event, event_name, replay_from";
/// What a listing reads: never the event copy; `{output}` is `output` or `NULL`.
const SUMMARY_COLUMNS: &str = "run_id, function_id, event_id, event_name, status, started_at, ended_at, {output}, error, progress, replay_of, replay_from";
const STEP_COLUMNS: &str = "run_id, step_id, name, kind, status, attempts, seq, planned_at, started_at, \
     ended_at, wake_at, output, error";

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, and its parent directory.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Backend(format!("creating {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path).map_err(backend)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(backend)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "{}: could not enable WAL mode (journal_mode is {mode})",
                path.display()
            )));
        }
        let synchronous = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(backend)?;
        let readers = Readers {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
        };
        Self::init(conn, Some(Arc::new(readers)))
    }

    /// A private in-memory database, for tests. Nothing is durable.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(backend)?, None)
    }

    fn init(conn: Connection, readers: Option<Arc<Readers>>) -> Result<Self, StoreError> {
        conn.execute_batch(SCHEMA).map_err(backend)?;
        migrate(&conn)?;
        Ok(SqliteStore {
            writer: writer::Writer::start(conn)?,
            readers,
        })
    }

    /// Transactions the writer has committed since the store was opened (each is one fsync
    /// under [`Durability::Full`]; concurrent writes share them).
    pub fn commits(&self) -> u64 {
        self.writer.commits()
    }

    /// Runs a write on the writer's connection, in the transaction of the next group commit;
    /// answers once that transaction is on disk (or failed: then with its error). `f` is
    /// atomic: an error it returns undoes what it wrote, and only that.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let answer = self.writer.submit(f);
        // Waited for on the blocking pool rather than as a bare future: while it waits, a
        // runtime on paused time (the tests') must not think itself idle and jump the clock.
        let task = tokio::task::spawn_blocking(move || answer.wait());
        match task.await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(e) => Err(StoreError::Backend(format!("store task failed: {e}"))),
        }
    }

    /// Runs a read on a reader connection (never behind the writer), on the calling thread:
    /// a read in WAL mode waits for no lock, and a point read takes microseconds, less than
    /// handing it to another thread and back.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let Some(readers) = &self.readers else {
            return self.write(f).await;
        };
        let idle = readers.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => open_reader(&readers.path)?,
        };
        let result = f(&conn);
        let mut idle = readers.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < READERS {
            idle.push(conn);
        }
        result
    }
}

fn open_reader(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(backend)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
    Ok(conn)
}

/// Brings a database written by an earlier version up to [`SCHEMA`].
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let has_event_name = conn
        .prepare("SELECT 1 FROM pragma_table_info('runs') WHERE name = 'event_name'")
        .and_then(|mut stmt| stmt.exists([]))
        .map_err(backend)?;
    if !has_event_name {
        // Listings read the event's name from its own column, never the event copy. Rows
        // whose copy is not valid JSON keep NULL and are reported as unreadable.
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE runs ADD COLUMN event_name TEXT;
             UPDATE runs SET event_name = json_extract(event, '$.name') WHERE json_valid(event);
             COMMIT;",
        )
        .map_err(backend)?;
    }
    let has_replay_from = conn
        .prepare("SELECT 1 FROM pragma_table_info('runs') WHERE name = 'replay_from'")
        .and_then(|mut stmt| stmt.exists([]))
        .map_err(backend)?;
    if !has_replay_from {
        conn.execute_batch("ALTER TABLE runs ADD COLUMN replay_from TEXT;")
            .map_err(backend)?;
    }
    Ok(())
}

fn summary_columns(with_output: bool) -> String {
    SUMMARY_COLUMNS.replace("{output}", if with_output { "output" } else { "NULL" })
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn corrupt(what: &str, e: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn opt_ts(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(ts)
}

fn parse_ts(what: &str, s: &str) -> StoreResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| corrupt(what, e))
}

fn parse_opt_ts(what: &str, s: Option<String>) -> StoreResult<Option<DateTime<Utc>>> {
    s.map(|s| parse_ts(what, &s)).transpose()
}

fn json<T: Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(format!("encoding JSON: {e}")))
}

/// `None` stays SQL NULL, so `Some(Value::Null)` and `None` remain distinct.
fn opt_json<T: Serialize>(value: Option<&T>) -> StoreResult<Option<String>> {
    value.map(json).transpose()
}

fn parse_json<T: DeserializeOwned>(what: &str, s: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| corrupt(what, e))
}

fn parse_opt_json<T: DeserializeOwned>(what: &str, s: Option<String>) -> StoreResult<Option<T>> {
    s.map(|s| parse_json(what, &s)).transpose()
}

/// A `runs` row as stored; decoded outside rusqlite's row callback so that bad data maps to
/// `Corrupt` rather than a backend error.
struct RunRow {
    run_id: String,
    function_id: String,
    event_id: String,
    status: String,
    started_at: String,
    ended_at: Option<String>,
    output: Option<String>,
    error: Option<String>,
    progress: Option<String>,
    replay_of: Option<String>,
    event: String,
    event_name: Option<String>,
    replay_from: Option<String>,
}

impl RunRow {
    fn new(run: &RunRecord) -> StoreResult<Self> {
        Ok(RunRow {
            run_id: run.run_id.clone(),
            function_id: run.function_id.clone(),
            event_id: run.event_id.clone(),
            status: run.status.as_str().to_owned(),
            started_at: ts(run.started_at),
            ended_at: opt_ts(run.ended_at),
            output: opt_json(run.output.as_ref())?,
            error: opt_json(run.error.as_ref())?,
            progress: opt_json(run.progress.as_ref())?,
            replay_of: run.replay_of.clone(),
            event: json(&run.event)?,
            event_name: Some(run.event.name.clone()),
            replay_from: run.replay_from.clone(),
        })
    }

    /// Inserts the run unless one with its id exists. True when written.
    fn insert(&self, conn: &Connection) -> StoreResult<bool> {
        let n = conn
            .exec_cached(
                &format!(
                    "INSERT INTO runs ({RUN_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) ON CONFLICT DO NOTHING"
                ),
                params![
                    self.run_id,
                    self.function_id,
                    self.event_id,
                    self.status,
                    self.started_at,
                    self.ended_at,
                    self.output,
                    self.error,
                    self.progress,
                    self.replay_of,
                    self.event,
                    self.event_name,
                    self.replay_from
                ],
            )
            .map_err(backend)?;
        Ok(n == 1)
    }

    fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(RunRow {
            run_id: row.get(0)?,
            function_id: row.get(1)?,
            event_id: row.get(2)?,
            status: row.get(3)?,
            started_at: row.get(4)?,
            ended_at: row.get(5)?,
            output: row.get(6)?,
            error: row.get(7)?,
            progress: row.get(8)?,
            replay_of: row.get(9)?,
            event: row.get(10)?,
            event_name: row.get(11)?,
            replay_from: row.get(12)?,
        })
    }

    fn decode(self) -> StoreResult<RunRecord> {
        let what = |field: &str| format!("run {} {field}", self.run_id);
        Ok(RunRecord {
            status: RunStatus::parse(&self.status)
                .ok_or_else(|| corrupt(&what("status"), &self.status))?,
            started_at: parse_ts(&what("started_at"), &self.started_at)?,
            ended_at: parse_opt_ts(&what("ended_at"), self.ended_at)?,
            output: parse_opt_json(&what("output"), self.output)?,
            error: parse_opt_json(&what("error"), self.error)?,
            progress: parse_opt_json(&what("progress"), self.progress)?,
            event: parse_json(&what("event"), &self.event)?,
            function_id: self.function_id,
            event_id: self.event_id,
            replay_of: self.replay_of,
            replay_from: self.replay_from,
            run_id: self.run_id,
        })
    }
}

/// An `events` row as it is written.
struct EventRow {
    event_id: String,
    name: String,
    data: String,
    ts: i64,
    user: String,
    v: Option<String>,
    idempotency_id: Option<String>,
}

impl EventRow {
    fn new(event: &EventRecord) -> StoreResult<Self> {
        Ok(EventRow {
            event_id: event.id.clone(),
            name: event.name.clone(),
            data: json(&event.data)?,
            ts: event.ts,
            user: json(&event.user)?,
            v: event.v.clone(),
            idempotency_id: event.idempotency_id.clone(),
        })
    }

    /// Inserts the event unless one with its id exists. True when written.
    fn insert(&self, conn: &Connection) -> StoreResult<bool> {
        let n = conn
            .exec_cached(
                "INSERT INTO events (event_id, name, data, ts, user, v, idempotency_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                params![
                    self.event_id,
                    self.name,
                    self.data,
                    self.ts,
                    self.user,
                    self.v,
                    self.idempotency_id
                ],
            )
            .map_err(backend)?;
        Ok(n == 1)
    }
}

/// A `runs` row as a listing reads it.
struct SummaryRow {
    run_id: String,
    function_id: String,
    event_id: String,
    event_name: Option<String>,
    status: String,
    started_at: String,
    ended_at: Option<String>,
    output: Option<String>,
    error: Option<String>,
    progress: Option<String>,
    replay_of: Option<String>,
    replay_from: Option<String>,
}

impl SummaryRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(SummaryRow {
            run_id: row.get(0)?,
            function_id: row.get(1)?,
            event_id: row.get(2)?,
            event_name: row.get(3)?,
            status: row.get(4)?,
            started_at: row.get(5)?,
            ended_at: row.get(6)?,
            output: row.get(7)?,
            error: row.get(8)?,
            progress: row.get(9)?,
            replay_of: row.get(10)?,
            replay_from: row.get(11)?,
        })
    }

    fn decode(self) -> StoreResult<RunSummary> {
        let what = |field: &str| format!("run {} {field}", self.run_id);
        Ok(RunSummary {
            event_name: self
                .event_name
                .ok_or_else(|| corrupt(&what("event"), "not valid JSON"))?,
            status: RunStatus::parse(&self.status)
                .ok_or_else(|| corrupt(&what("status"), &self.status))?,
            started_at: parse_ts(&what("started_at"), &self.started_at)?,
            ended_at: parse_opt_ts(&what("ended_at"), self.ended_at)?,
            output: parse_opt_json(&what("output"), self.output)?,
            error: parse_opt_json(&what("error"), self.error)?,
            progress: parse_opt_json(&what("progress"), self.progress)?,
            function_id: self.function_id,
            event_id: self.event_id,
            replay_of: self.replay_of,
            replay_from: self.replay_from,
            run_id: self.run_id,
        })
    }

    /// The summary, or the run id of a row that cannot be read (logged).
    fn listed(self) -> ListedRun {
        let run_id = self.run_id.clone();
        self.decode().map_err(|e| {
            tracing::warn!(run_id, %e, "unreadable run row skipped");
            run_id
        })
    }
}

struct StepRow {
    run_id: String,
    step_id: String,
    name: String,
    kind: String,
    status: String,
    attempts: i64,
    seq: i64,
    planned_at: String,
    started_at: Option<String>,
    ended_at: Option<String>,
    wake_at: Option<String>,
    output: Option<String>,
    error: Option<String>,
}

impl StepRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(StepRow {
            run_id: row.get(0)?,
            step_id: row.get(1)?,
            name: row.get(2)?,
            kind: row.get(3)?,
            status: row.get(4)?,
            attempts: row.get(5)?,
            seq: row.get(6)?,
            planned_at: row.get(7)?,
            started_at: row.get(8)?,
            ended_at: row.get(9)?,
            wake_at: row.get(10)?,
            output: row.get(11)?,
            error: row.get(12)?,
        })
    }

    fn decode(self) -> StoreResult<StepRecord> {
        let what = |field: &str| format!("step {}/{} {field}", self.run_id, self.step_id);
        Ok(StepRecord {
            kind: StepKind::parse(&self.kind).ok_or_else(|| corrupt(&what("kind"), &self.kind))?,
            status: StepStatus::parse(&self.status)
                .ok_or_else(|| corrupt(&what("status"), &self.status))?,
            attempts: u32::try_from(self.attempts).map_err(|e| corrupt(&what("attempts"), e))?,
            seq: u32::try_from(self.seq).map_err(|e| corrupt(&what("seq"), e))?,
            planned_at: parse_ts(&what("planned_at"), &self.planned_at)?,
            started_at: parse_opt_ts(&what("started_at"), self.started_at)?,
            ended_at: parse_opt_ts(&what("ended_at"), self.ended_at)?,
            wake_at: parse_opt_ts(&what("wake_at"), self.wake_at)?,
            output: parse_opt_json(&what("output"), self.output)?,
            error: parse_opt_json(&what("error"), self.error)?,
            planned: Vec::new(),
            run_id: self.run_id,
            step_id: self.step_id,
            name: self.name,
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn claim_idempotency_id(
        &self,
        idempotency_id: &str,
        event_id: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<Option<String>> {
        let (idempotency_id, event_id) = (idempotency_id.to_owned(), event_id.to_owned());
        let (now, expires_at) = (ts(now), ts(expires_at));
        self.write(move |conn| {
            // The upsert takes a free or expired claim; when it changes nothing, an unexpired
            // claim exists and is read in the same transaction, so it is the one that won.
            let claimed = conn
                .exec_cached(
                    "INSERT INTO idempotency (idempotency_id, event_id, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (idempotency_id) DO UPDATE
                     SET event_id = excluded.event_id, expires_at = excluded.expires_at
                     WHERE idempotency.expires_at <= ?4",
                    params![idempotency_id, event_id, expires_at, now],
                )
                .map_err(backend)?
                == 1;
            let holder = if claimed {
                None
            } else {
                Some(
                    conn.query_row_cached(
                        "SELECT event_id FROM idempotency WHERE idempotency_id = ?1",
                        [&idempotency_id],
                        |row| row.get(0),
                    )
                    .map_err(backend)?,
                )
            };
            Ok(holder)
        })
        .await
    }

    async fn put_event(&self, event: &EventRecord) -> StoreResult<bool> {
        let row = EventRow::new(event)?;
        self.write(move |conn| row.insert(conn)).await
    }

    async fn put_event_with_runs(
        &self,
        event: &EventRecord,
        runs: &[RunRecord],
    ) -> StoreResult<()> {
        let event = EventRow::new(event)?;
        let runs = runs
            .iter()
            .map(RunRow::new)
            .collect::<StoreResult<Vec<_>>>()?;
        self.write(move |conn| {
            event.insert(conn)?;
            for run in &runs {
                run.insert(conn)?;
            }
            Ok(())
        })
        .await
    }

    async fn get_event(&self, event_id: &str) -> StoreResult<Option<EventRecord>> {
        let event_id = event_id.to_owned();
        self.read(move |conn| {
            let row = conn
                .query_row_cached(
                    "SELECT event_id, name, data, ts, user, v, idempotency_id FROM events WHERE event_id = ?1",
                    [&event_id],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, String>(2)?,
                            row.get::<_, i64>(3)?,
                            row.get::<_, String>(4)?,
                            row.get::<_, Option<String>>(5)?,
                            row.get::<_, Option<String>>(6)?,
                        ))
                    },
                )
                .optional()
                .map_err(backend)?;
            row.map(|(id, name, data, ts, user, v, idempotency_id)| {
                Ok(EventRecord {
                    data: parse_json(&format!("event {id} data"), &data)?,
                    user: parse_json(&format!("event {id} user"), &user)?,
                    id,
                    name,
                    ts,
                    v,
                    idempotency_id,
                })
            })
            .transpose()
        })
        .await
    }

    async fn create_run(&self, run: &RunRecord) -> StoreResult<bool> {
        let row = RunRow::new(run)?;
        self.write(move |conn| row.insert(conn)).await
    }

    async fn get_run(&self, run_id: &str) -> StoreResult<Option<RunRecord>> {
        let run_id = run_id.to_owned();
        self.read(move |conn| {
            conn.query_row_cached(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?1"),
                [&run_id],
                RunRow::read,
            )
            .optional()
            .map_err(backend)?
            .map(RunRow::decode)
            .transpose()
        })
        .await
    }

    async fn transition_run(&self, run_id: &str, t: &RunTransition) -> StoreResult<bool> {
        let transition = TransitionSql::new(run_id, t)?;
        self.write(move |conn| transition.apply(conn)).await
    }

    async fn set_progress(&self, run_id: &str, progress: &Progress) -> StoreResult<bool> {
        let (run_id, progress) = (run_id.to_owned(), json(progress)?);
        self.write(move |conn| {
            let n = conn
                .exec_cached(
                    &format!(
                        "UPDATE runs SET progress = ?2 WHERE run_id = ?1 AND status NOT IN {TERMINAL_RUN}"
                    ),
                    params![run_id, progress],
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn list_runs(&self, query: &RunQuery) -> StoreResult<RunPage> {
        let limit = page_size(query.limit);
        let mut conditions = Vec::new();
        let mut values = Vec::new();
        let mut filter = |condition: &'static str, value: String| {
            conditions.push(condition);
            values.push(SqlValue::Text(value));
        };
        if let Some(function_id) = &query.function_id {
            filter("function_id = ?", function_id.clone());
        }
        if let Some(status) = query.status {
            filter("status = ?", status.as_str().to_owned());
        }
        if let Some(after) = query.started_after {
            filter("started_at > ?", ts(after));
        }
        if let Some(before) = query.started_before {
            filter("started_at < ?", ts(before));
        }
        if let Some(cursor) = &query.cursor {
            filter("run_id < ?", cursor.clone());
        }
        let where_clause = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        // One extra row tells whether another page exists.
        values.push(SqlValue::Integer((limit + 1) as i64));
        let columns = summary_columns(query.with_output);
        let sql = format!("SELECT {columns} FROM runs {where_clause} ORDER BY run_id DESC LIMIT ?");
        let rows = self
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
                let rows = stmt
                    .query_map(params_from_iter(values), SummaryRow::read)
                    .map_err(backend)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
            })
            .await?;
        let runs = rows.into_iter().map(SummaryRow::listed).collect();
        Ok(RunPage::from_overfetch(runs, limit))
    }

    async fn runs_for_event(&self, event_id: &str) -> StoreResult<Vec<RunSummary>> {
        let event_id = event_id.to_owned();
        let rows = self
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT {} FROM runs WHERE event_id = ?1 ORDER BY run_id",
                        summary_columns(true)
                    ))
                    .map_err(backend)?;
                let rows = stmt
                    .query_map([&event_id], SummaryRow::read)
                    .map_err(backend)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| row.listed().ok())
            .collect())
    }

    async fn journal(&self, run_id: &str) -> StoreResult<Vec<StepRecord>> {
        let run_id = run_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {STEP_COLUMNS} FROM steps WHERE run_id = ?1 ORDER BY seq, step_id"
                ))
                .map_err(backend)?;
            let rows = stmt.query_map([&run_id], StepRow::read).map_err(backend)?;
            rows.map(|row| row.map_err(backend)?.decode()).collect()
        })
        .await
    }

    async fn get_step(&self, run_id: &str, step_id: &str) -> StoreResult<Option<StepRecord>> {
        let (run_id, step_id) = (run_id.to_owned(), step_id.to_owned());
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {STEP_COLUMNS} FROM steps WHERE run_id = ?1 AND step_id = ?2"
                ))
                .map_err(backend)?;
            let mut rows = stmt
                .query_map([&run_id, &step_id], StepRow::read)
                .map_err(backend)?;
            rows.next()
                .map(|row| row.map_err(backend)?.decode())
                .transpose()
        })
        .await
    }

    async fn plan_step(&self, step: &StepRecord) -> StoreResult<bool> {
        let row = StepRow::of(step)?;
        self.write(move |conn| insert_step(conn, &row, "ON CONFLICT DO NOTHING"))
            .await
    }

    async fn start_run_with_step(
        &self,
        step: &StepRecord,
        start: &RunTransition,
    ) -> StoreResult<bool> {
        let row = StepRow::of(step)?;
        let transition = TransitionSql::new(&step.run_id, start)?;
        self.write(move |conn| {
            transition.apply(conn)?;
            insert_step(conn, &row, "ON CONFLICT DO NOTHING")
        })
        .await
    }

    async fn begin_attempt(
        &self,
        step: &StepRecord,
        attempt: u32,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut row = StepRow::of(step)?;
        row.status = StepStatus::Running.as_str().to_owned();
        row.attempts = attempt.into();
        row.started_at = Some(ts(at));
        self.write(move |conn| {
            insert_step(
                conn,
                &row,
                &format!(
                    "ON CONFLICT (run_id, step_id) DO UPDATE SET status = 'Running',
                     attempts = excluded.attempts, started_at = COALESCE(started_at, excluded.started_at)
                     WHERE status NOT IN {FINAL_STEP} AND attempts <= excluded.attempts"
                ),
            )
        })
        .await
    }

    async fn retry_step(
        &self,
        step: &StepRecord,
        attempt: u32,
        error: &ErrorInfo,
        next_at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut row = StepRow::of(step)?;
        row.status = StepStatus::Planned.as_str().to_owned();
        row.attempts = attempt.into();
        row.error = Some(json(error)?);
        row.wake_at = Some(ts(next_at));
        self.write(move |conn| {
            insert_step(
                conn,
                &row,
                &format!(
                    "ON CONFLICT (run_id, step_id) DO UPDATE SET status = 'Planned',
                     error = excluded.error, wake_at = excluded.wake_at
                     WHERE status NOT IN {FINAL_STEP} AND attempts = excluded.attempts"
                ),
            )
        })
        .await
    }

    async fn finish_step(
        &self,
        run_id: &str,
        step_id: &str,
        outcome: &StepOutcome,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        // The journaled result is exactly the outcome: an earlier attempt's error does not
        // linger on a completed step.
        let (status, output, error) = match outcome {
            StepOutcome::Completed(output) => (StepStatus::Completed, Some(json(output)?), None),
            StepOutcome::Failed(error) => (StepStatus::Failed, None, Some(json(error)?)),
        };
        let (run_id, step_id, at) = (run_id.to_owned(), step_id.to_owned(), ts(at));
        self.write(move |conn| {
            let n = conn
                .exec_cached(
                    &format!(
                        "UPDATE steps SET status = ?3, output = ?4, error = ?5, ended_at = ?6
                         WHERE run_id = ?1 AND step_id = ?2 AND status NOT IN {FINAL_STEP}"
                    ),
                    params![run_id, step_id, status.as_str(), output, error, at],
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn record_step(&self, step: &StepRecord, next: &[StepRecord]) -> StoreResult<bool> {
        let row = StepRow::of(step)?;
        let next = next
            .iter()
            .map(StepRow::of)
            .collect::<StoreResult<Vec<_>>>()?;
        self.write(move |conn| {
            let recorded = insert_step(conn, &row, &record_on_conflict())?;
            if recorded {
                for row in &next {
                    insert_step(conn, row, "ON CONFLICT DO NOTHING")?;
                }
            }
            Ok(recorded)
        })
        .await
    }

    async fn record_step_and_end(
        &self,
        step: &StepRecord,
        end: &RunTransition,
    ) -> StoreResult<bool> {
        let row = StepRow::of(step)?;
        let transition = TransitionSql::new(&step.run_id, end)?;
        self.write(move |conn| {
            let recorded = insert_step(conn, &row, &record_on_conflict())?;
            if recorded {
                transition.apply(conn)?;
            }
            Ok(recorded)
        })
        .await
    }

    async fn put_entry(
        &self,
        entry: &Entry,
        expect: Expect,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let entry = entry.clone();
        let value = json(&entry.value)?;
        self.write(move |conn| {
            let current = read_entry(conn, &entry.key, &entry.id)?;
            if !expect_holds(expect, current.as_ref(), now) {
                return Ok(false);
            }
            conn.exec_cached(
                "INSERT INTO entries (key, id, value, version, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (key, id) DO UPDATE SET value = excluded.value,
                 version = excluded.version, expires_at = excluded.expires_at",
                params![entry.key, entry.id, value, entry.version as i64, ts(entry.expires_at)],
            )
            .map_err(backend)?;
            Ok(true)
        })
        .await
    }

    async fn list_entries(
        &self,
        key: &str,
        prefix: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<Entry>> {
        let (key, prefix, now) = (key.to_owned(), prefix.to_owned(), ts(now));
        self.read(move |conn| {
            // `id >= prefix` plus a prefix check: LIKE would treat `_` and `%` in ids as patterns.
            let mut stmt = conn
                .prepare_cached(
                    "SELECT key, id, value, version, expires_at FROM entries
                     WHERE key = ?1 AND id >= ?2 AND expires_at > ?3 ORDER BY id",
                )
                .map_err(backend)?;
            let mut rows = stmt.query(params![key, prefix, now]).map_err(backend)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(backend)? {
                let entry = decode_entry(row)?;
                if !entry.id.starts_with(&prefix) || out.len() >= limit {
                    break;
                }
                out.push(entry);
            }
            Ok(out)
        })
        .await
    }

    async fn delete_entry(
        &self,
        key: &str,
        id: &str,
        expect: Expect,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let (key, id) = (key.to_owned(), id.to_owned());
        self.write(move |conn| {
            let current = read_entry(conn, &key, &id)?;
            if current.is_none() || !expect_holds(expect, current.as_ref(), now) {
                return Ok(false);
            }
            conn.exec_cached(
                "DELETE FROM entries WHERE key = ?1 AND id = ?2",
                params![key, id],
            )
            .map_err(backend)?;
            Ok(true)
        })
        .await
    }
}

fn read_entry(conn: &Connection, key: &str, id: &str) -> StoreResult<Option<Entry>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT key, id, value, version, expires_at FROM entries WHERE key = ?1 AND id = ?2",
        )
        .map_err(backend)?;
    let mut rows = stmt.query(params![key, id]).map_err(backend)?;
    match rows.next().map_err(backend)? {
        Some(row) => Ok(Some(decode_entry(row)?)),
        None => Ok(None),
    }
}

fn decode_entry(row: &Row<'_>) -> StoreResult<Entry> {
    let (key, id, value, version, expires_at): (String, String, String, i64, String) = (
        row.get(0).map_err(backend)?,
        row.get(1).map_err(backend)?,
        row.get(2).map_err(backend)?,
        row.get(3).map_err(backend)?,
        row.get(4).map_err(backend)?,
    );
    Ok(Entry {
        value: parse_json("entry value", &value)?,
        version: version as u64,
        expires_at: parse_ts("entry expires_at", &expires_at)?,
        key,
        id,
    })
}

/// Every statement goes through SQLite's prepared-statement cache: the SQL strings are
/// constant per call site, so parsing them once saves a good share of each call's CPU.
trait Cached {
    fn exec_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }
    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_sets_match_the_model() {
        let final_steps: Vec<_> = [
            StepStatus::Planned,
            StepStatus::Running,
            StepStatus::Completed,
            StepStatus::Failed,
            StepStatus::Sleeping,
            StepStatus::Waiting,
        ]
        .into_iter()
        .filter(|s| s.is_final())
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
        assert_eq!(FINAL_STEP, format!("({})", final_steps.join(", ")));

        let terminal_runs: Vec<_> = RunStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        assert_eq!(TERMINAL_RUN, format!("({})", terminal_runs.join(", ")));
    }

    #[test]
    fn durability_parses() {
        assert_eq!("full".parse::<Durability>(), Ok(Durability::Full));
        assert_eq!("NORMAL".parse::<Durability>(), Ok(Durability::Normal));
        assert!("off".parse::<Durability>().is_err());
        assert_eq!(
            Durability::Normal.to_string().parse::<Durability>(),
            Ok(Durability::Normal)
        );
    }
}

impl StepRow {
    fn of(step: &StepRecord) -> StoreResult<StepRow> {
        Ok(StepRow {
            run_id: step.run_id.clone(),
            step_id: step.step_id.clone(),
            name: step.name.clone(),
            kind: step.kind.as_str().to_owned(),
            status: step.status.as_str().to_owned(),
            attempts: step.attempts.into(),
            seq: step.seq.into(),
            planned_at: ts(step.planned_at),
            started_at: opt_ts(step.started_at),
            ended_at: opt_ts(step.ended_at),
            wake_at: opt_ts(step.wake_at),
            output: opt_json(step.output.as_ref())?,
            error: opt_json(step.error.as_ref())?,
        })
    }
}

/// Inserts a step row; `on_conflict` says what an existing row gets. True when a row was
/// written (inserted, or updated by the conflict clause).
/// A step's result over whatever the journal holds for it, unless that is final already.
fn record_on_conflict() -> String {
    format!(
        "ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status,
         attempts = excluded.attempts, started_at = COALESCE(started_at, excluded.started_at),
         ended_at = excluded.ended_at, output = excluded.output, error = excluded.error
         WHERE status NOT IN {FINAL_STEP}"
    )
}

/// A run's status change, only from one of `t.from`, as an UPDATE built off the writer thread.
struct TransitionSql {
    sql: String,
    values: Vec<SqlValue>,
    /// False when `t.from` is empty: nothing to change.
    applies: bool,
}

impl TransitionSql {
    fn new(run_id: &str, t: &RunTransition) -> StoreResult<TransitionSql> {
        let mut values: Vec<SqlValue> = vec![
            SqlValue::Text(t.to.as_str().to_owned()),
            opt_ts(t.ended_at).map_or(SqlValue::Null, SqlValue::Text),
            opt_json(t.output.as_ref())?.map_or(SqlValue::Null, SqlValue::Text),
            opt_json(t.error.as_ref())?.map_or(SqlValue::Null, SqlValue::Text),
            SqlValue::Text(run_id.to_owned()),
        ];
        values.extend(t.from.iter().map(|s| SqlValue::Text(s.as_str().to_owned())));
        let from = vec!["?"; t.from.len()].join(", ");
        let sql = format!(
            "UPDATE runs SET status = ?1, ended_at = ?2, output = ?3, error = ?4
             WHERE run_id = ?5 AND status IN ({from})"
        );
        Ok(TransitionSql {
            sql,
            values,
            applies: !t.from.is_empty(),
        })
    }

    /// True when applied (never with an empty `from`).
    fn apply(&self, conn: &rusqlite::Connection) -> StoreResult<bool> {
        if !self.applies {
            return Ok(false);
        }
        Ok(conn
            .exec_cached(&self.sql, params_from_iter(self.values.iter()))
            .map_err(backend)?
            == 1)
    }
}

fn insert_step(conn: &rusqlite::Connection, row: &StepRow, on_conflict: &str) -> StoreResult<bool> {
    let n = conn
        .exec_cached(
            &format!(
                "INSERT INTO steps ({STEP_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) {on_conflict}"
            ),
            params![
                row.run_id,
                row.step_id,
                row.name,
                row.kind,
                row.status,
                row.attempts,
                row.seq,
                row.planned_at,
                row.started_at,
                row.ended_at,
                row.wake_at,
                row.output,
                row.error
            ],
        )
        .map_err(backend)?;
    Ok(n == 1)
}
