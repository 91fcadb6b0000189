//! The store: events, runs and their journals. Every state change is one conditional write
//! (one item on DynamoDB: a step's result carries the plan of the steps after it, see
//! [`Store::record_step`]), so duplicated or reordered continuations change nothing, and the
//! same contract maps onto DynamoDB (`ConditionExpression`) as onto SQLite (`... WHERE`).
//!
//! Backends: [`memory::MemoryStore`] here (tests), `baton_sqlite::SqliteStore` (the embedded
//! default) and `baton_aws::dynamodb::DynamoStore`. Every backend passes the one conformance
//! suite, `baton_testkit::conformance`.

pub mod memory;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::model::{
    Entry, ErrorInfo, EventRecord, Expect, Progress, RunPage, RunQuery, RunRecord, RunSummary,
    RunTransition, StepOutcome, StepRecord,
};

pub type StoreResult<T> = Result<T, StoreError>;

/// Page size when a query asks for 0 runs, and the largest page served.
pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 1000;

pub fn page_size(limit: usize) -> usize {
    if limit == 0 {
        DEFAULT_PAGE
    } else {
        limit.min(MAX_PAGE)
    }
}

/// Whether `expect` holds for `current` (expired entries count as absent).
pub fn expect_holds(expect: Expect, current: Option<&Entry>, now: DateTime<Utc>) -> bool {
    let live = current.filter(|e| e.expires_at > now);
    match expect {
        Expect::Any => true,
        Expect::Absent => live.is_none(),
        Expect::Version(v) => live.is_some_and(|e| e.version == v),
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for `/health` ("sqlite", "memory", "dynamodb").
    fn backend(&self) -> &'static str;

    // ---- events ----

    /// Claims a sender's idempotency id for `event_id` until `expires_at`. Returns the event id
    /// that already holds the claim, if an unexpired claim exists (then nothing changes).
    async fn claim_idempotency_id(
        &self,
        idempotency_id: &str,
        event_id: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<Option<String>>;

    /// Stores an event unless one with its id exists. True when written.
    async fn put_event(&self, event: &EventRecord) -> StoreResult<bool>;

    async fn get_event(&self, event_id: &str) -> StoreResult<Option<EventRecord>>;

    /// Stores an event and the runs it starts, each unless one with its id exists: what
    /// [`Store::put_event`] and then [`Store::create_run`] for each run do, in one write where
    /// the backend can (SQLite: one transaction). Never leaves a run without its event.
    async fn put_event_with_runs(
        &self,
        event: &EventRecord,
        runs: &[RunRecord],
    ) -> StoreResult<()> {
        self.put_event(event).await?;
        for run in runs {
            self.create_run(run).await?;
        }
        Ok(())
    }

    // ---- runs ----

    /// Creates a run unless one with its id exists. True when written.
    async fn create_run(&self, run: &RunRecord) -> StoreResult<bool>;

    async fn get_run(&self, run_id: &str) -> StoreResult<Option<RunRecord>>;

    /// Changes the status (and end time, output, error) only when the current status is in
    /// `t.from`. True when applied.
    async fn transition_run(&self, run_id: &str, t: &RunTransition) -> StoreResult<bool>;

    /// Sets the progress of a run that has not ended. True when applied.
    async fn set_progress(&self, run_id: &str, progress: &Progress) -> StoreResult<bool>;

    /// Runs newest first (by run id), filtered, one page at a time. Reads summaries, never
    /// the runs' events (nor their outputs unless `query.with_output`). A row that cannot be
    /// read is reported in [`RunPage::unreadable`] and skipped, never an error.
    async fn list_runs(&self, query: &RunQuery) -> StoreResult<RunPage>;

    /// Every run an event started (including replays), oldest first, as summaries with their
    /// outputs. Unreadable rows are left out (and logged).
    async fn runs_for_event(&self, event_id: &str) -> StoreResult<Vec<RunSummary>>;

    // ---- journal ----

    /// The run's steps ordered by `seq`, read strongly consistent: a handler that just
    /// recorded an output must see every output recorded before it.
    async fn journal(&self, run_id: &str) -> StoreResult<Vec<StepRecord>>;

    /// The run and its journal, as [`Store::get_run`] and [`Store::journal`] read them, in one
    /// request where the backend can (DynamoDB: one query of the run's partition). None when
    /// there is no such run.
    async fn run_with_journal(
        &self,
        run_id: &str,
    ) -> StoreResult<Option<(RunRecord, Vec<StepRecord>)>> {
        let Some(run) = self.get_run(run_id).await? else {
            return Ok(None);
        };
        Ok(Some((run, self.journal(run_id).await?)))
    }

    /// One journal entry, read strongly consistent (a replay whose cached journal lacks it
    /// asks for just this step).
    async fn get_step(&self, run_id: &str, step_id: &str) -> StoreResult<Option<StepRecord>>;

    /// Adds a step to the journal unless it is already there ("schedule only if not already
    /// scheduled"). True when written: the caller then enqueues it.
    async fn plan_step(&self, step: &StepRecord) -> StoreResult<bool>;

    /// Moves the run on (`start`: its move to Running, applied only from a status in
    /// `start.from`) and plans its first step: what [`Store::transition_run`] and then
    /// [`Store::plan_step`] do, in one write where the backend can (SQLite: one transaction).
    /// True when the step was planned.
    async fn start_run_with_step(
        &self,
        step: &StepRecord,
        start: &RunTransition,
    ) -> StoreResult<bool> {
        self.transition_run(&step.run_id, start).await?;
        self.plan_step(step).await
    }

    /// Starts attempt `attempt` (1-based) of `step`, the step as the caller knows it (as planned):
    /// applied when the step is absent (it is then written from `step`: a step planned in the
    /// result of the one before it, see [`Store::record_step`]) or not final with an attempt
    /// counter of at most `attempt`; sets status Running, the counter, and the start time if
    /// unset. A redelivered message may start the same attempt again.
    async fn begin_attempt(
        &self,
        step: &StepRecord,
        attempt: u32,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Records a failed attempt of `step` that will be retried: applied when the step is not
    /// final and its counter equals `attempt`, or absent (a step started by the handler that
    /// planned it, kept on the entry of the step before: it is then written from `step`);
    /// status back to Planned, `error`, `wake_at = next_at`.
    async fn retry_step(
        &self,
        step: &StepRecord,
        attempt: u32,
        error: &ErrorInfo,
        next_at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Journals the step's result: applied only when the step is not final, so a recorded
    /// output is never overwritten. True when this call recorded it.
    async fn finish_step(
        &self,
        run_id: &str,
        step_id: &str,
        outcome: &StepOutcome,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Journals the result of `step` (final: its status, output or error, attempts, start and
    /// end) and plans `next` in one write: the handler's step and the steps its run goes on to.
    /// Applied only when the step is absent (it is written whole: a step started by the
    /// handler that planned it) or not final, so a recorded output is never overwritten; `next`
    /// is planned only then, each step unless already there ([`Store::plan_step`]). True when
    /// this call recorded it.
    ///
    /// A backend may keep `next` on `step`'s own entry until each starts (DynamoDB: one item
    /// written instead of one per step): [`Store::journal`] lists them as planned, while
    /// [`Store::get_step`] does not find them; the entry's [`StepRecord::planned`] holds them.
    async fn record_step(&self, step: &StepRecord, next: &[StepRecord]) -> StoreResult<bool>;

    /// Journals the result of a run's last step and ends the run: what [`Store::record_step`]
    /// (with nothing next) and then, when it recorded, [`Store::transition_run`] do, in one
    /// write where the backend can (SQLite: one transaction). True when this call recorded the
    /// step; the transition is applied, as ever, only from a status in `end.from`.
    async fn record_step_and_end(
        &self,
        step: &StepRecord,
        end: &RunTransition,
    ) -> StoreResult<bool> {
        if !self.record_step(step, &[]).await? {
            return Ok(false);
        }
        self.transition_run(&step.run_id, end).await?;
        Ok(true)
    }

    // ---- coordination entries ----
    //
    // Small items grouped under a key, as a DynamoDB partition holds items by sort key: wait
    // registrations and the events indexed for them, concurrency slots and their queue,
    // throttle and rate-limit buckets, debounce markers. An entry past `expires_at` counts as
    // absent everywhere (DynamoDB deletes expired items only lazily).

    /// Writes `entry` if `expect` holds at `now`. True when written.
    async fn put_entry(
        &self,
        entry: &Entry,
        expect: Expect,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// The unexpired entries under `key` whose id starts with `prefix`, by id ascending, at
    /// most `limit`; read strongly consistent.
    async fn list_entries(
        &self,
        key: &str,
        prefix: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<Entry>>;

    /// Deletes an entry if `expect` holds at `now`. True when deleted.
    async fn delete_entry(
        &self,
        key: &str,
        id: &str,
        expect: Expect,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
}
