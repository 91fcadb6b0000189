//! Operations over many runs, each bounded in what it reads and holds:
//!
//! - bulk cancel and bulk replay act on at most [`Limits::max_bulk_runs`] runs per call and
//!   return a cursor for the rest;
//! - a replay given an idempotency key derives its new run's id from the key, so a retried
//!   request starts nothing twice;
//! - the runs an event cancels ([`Function::cancel_on`]) are found through index entries
//!   written when each run starts, not by reading every live run of the function;
//! - the sweeper reads one page of runs at a time.
//!
//! All of them read run summaries ([`RunSummary`]), never events: a page of a thousand runs
//! of 200 KB events stays small.
//!
//! [`Limits::max_bulk_runs`]: super::Limits::max_bulk_runs

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use ulid::Ulid;

use super::config::later;
use super::{Engine, start_message};
use crate::error::EngineError;
use crate::function::{CancelOn, Function, lookup};
use crate::model::{
    Entry, ErrorInfo, EventRecord, Expect, Message, MessageKind, RunPage, RunQuery, RunRecord,
    RunStatus, StepKind, StepRecord,
};
use crate::queue::Envelope;

/// Runs the sweeper reads per page.
const SWEEP_PAGE: usize = 200;
/// Index entries read per page when an event cancels runs.
const CANCEL_PAGE: usize = 500;
const LIVE: [RunStatus; 2] = [RunStatus::Queued, RunStatus::Running];

/// Which runs of a function a bulk action (or the sweeper) reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSelection {
    pub function_id: String,
    pub started_after: Option<DateTime<Utc>>,
    pub started_before: Option<DateTime<Utc>>,
    /// Runs acted on at most; 0 or more than [`Limits::max_bulk_runs`] means that limit.
    ///
    /// [`Limits::max_bulk_runs`]: super::Limits::max_bulk_runs
    pub limit: usize,
    /// Where the previous call stopped (its [`BulkOutcome::cursor`]).
    pub cursor: Option<String>,
}

impl RunSelection {
    pub fn function(function_id: impl Into<String>) -> Self {
        RunSelection {
            function_id: function_id.into(),
            ..RunSelection::default()
        }
    }
}

/// What one bulk call did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BulkOutcome {
    /// The runs cancelled, or the new runs a replay started.
    pub run_ids: Vec<String>,
    /// More matching runs may remain: call again with this cursor.
    pub cursor: Option<String>,
    /// Runs whose stored rows could not be read; skipped.
    pub unreadable: Vec<String>,
}

impl Engine {
    /// One page of `selection`'s runs with one of `statuses`: each status's runs newest
    /// first, one status after the other. The cursor is `{status}.{run id}`, opaque to
    /// callers.
    pub async fn page_of_runs(
        &self,
        selection: &RunSelection,
        statuses: &[RunStatus],
    ) -> Result<RunPage, EngineError> {
        let max = self.limits().max_bulk_runs;
        let limit = match selection.limit {
            0 => max,
            n => n.min(max),
        };
        let (mut index, mut inner) = match &selection.cursor {
            None => (0, None),
            Some(cursor) => parse_cursor(cursor, statuses)?,
        };
        let mut page = RunPage::default();
        while index < statuses.len() {
            let query = RunQuery {
                function_id: Some(selection.function_id.clone()),
                status: Some(statuses[index]),
                started_after: selection.started_after,
                started_before: selection.started_before,
                limit: limit - page.runs.len() - page.unreadable.len(),
                cursor: inner.take(),
                with_output: false,
            };
            let part = self.store().list_runs(&query).await?;
            page.runs.extend(part.runs);
            page.unreadable.extend(part.unreadable);
            if let Some(next) = part.cursor {
                page.cursor = Some(format!("{}.{next}", statuses[index].as_str()));
                return Ok(page);
            }
            index += 1;
            if page.runs.len() + page.unreadable.len() >= limit {
                if let Some(status) = statuses.get(index) {
                    page.cursor = Some(format!("{}.", status.as_str()));
                }
                return Ok(page);
            }
        }
        Ok(page)
    }

    /// Bulk cancel of a function's Queued and Running runs: one page per call.
    pub async fn cancel_many(&self, selection: &RunSelection) -> Result<BulkOutcome, EngineError> {
        let page = self.page_of_runs(selection, &LIVE).await?;
        let mut outcome = BulkOutcome {
            cursor: page.cursor,
            unreadable: page.unreadable,
            ..BulkOutcome::default()
        };
        for run in page.runs {
            match self.cancel(&run.run_id).await {
                Ok(_) => outcome.run_ids.push(run.run_id),
                // Ended meanwhile.
                Err(EngineError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(outcome)
    }

    /// Bulk replay of a function's Failed or Cancelled runs: one page per call. With a key,
    /// calling again with the same key and selection starts nothing new.
    pub async fn replay_many(
        &self,
        selection: &RunSelection,
        status: RunStatus,
        key: Option<&str>,
    ) -> Result<BulkOutcome, EngineError> {
        if !matches!(status, RunStatus::Failed | RunStatus::Cancelled) {
            return Err(EngineError::Invalid(
                "status must be Failed or Cancelled".into(),
            ));
        }
        let page = self.page_of_runs(selection, &[status]).await?;
        let at = match key {
            Some(key) => Some(self.replay_time(key).await?),
            None => None,
        };
        let mut outcome = BulkOutcome {
            cursor: page.cursor,
            unreadable: page.unreadable,
            ..BulkOutcome::default()
        };
        for run in page.runs {
            let new_id = key.zip(at).map(|(key, at)| replay_id(key, at, &run.run_id));
            match self.replay_as(&run.run_id, new_id, None).await {
                Ok(id) => outcome.run_ids.push(id),
                // The row went unreadable or the function was removed: reported, not fatal.
                Err(EngineError::Store(e)) if e.is_corrupt() => outcome.unreadable.push(run.run_id),
                Err(e) => return Err(e),
            }
        }
        Ok(outcome)
    }

    /// Starts a new run of the same function on the same event. Returns the new run id.
    /// With a key, the same key replaying the same run returns the same new run and starts
    /// nothing twice.
    pub async fn replay(&self, run_id: &str, key: Option<&str>) -> Result<String, EngineError> {
        let new_id = match key {
            Some(key) => Some(replay_id(key, self.replay_time(key).await?, run_id)),
            None => None,
        };
        self.replay_as(run_id, new_id, None).await
    }

    /// Restarts `run_id` from its step `from_step`: a new run of the same function on the
    /// same event, whose journal starts with the recorded results of the steps before that
    /// step (copied), so only that step and the ones after it run again. The new run records
    /// where it came from (`replay_of`, `replay_from`). A key makes it idempotent, as for
    /// [`Engine::replay`].
    pub async fn replay_from(
        &self,
        run_id: &str,
        from_step: &str,
        key: Option<&str>,
    ) -> Result<String, EngineError> {
        let new_id = match key {
            Some(key) => Some(replay_id(
                &format!("{key}@{from_step}"),
                self.replay_time(key).await?,
                run_id,
            )),
            None => None,
        };
        self.replay_as(run_id, new_id, Some(from_step)).await
    }

    async fn replay_as(
        &self,
        run_id: &str,
        new_id: Option<String>,
        from_step: Option<&str>,
    ) -> Result<String, EngineError> {
        let old = self
            .store()
            .get_run(run_id)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("run {run_id}")))?;
        let function = self.registry().get(&old.function_id).ok_or_else(|| {
            EngineError::Conflict(format!(
                "function {:?} is no longer registered",
                old.function_id
            ))
        })?;
        let reused = match from_step {
            None => Vec::new(),
            Some(from_step) => {
                let journal = self.store().journal(run_id).await?;
                let Some(from) = journal.iter().find(|s| s.step_id == from_step) else {
                    return Err(EngineError::NotFound(format!(
                        "step {from_step:?} of run {run_id} (GET /v1/runs/{run_id} lists its steps)"
                    )));
                };
                if from.kind == StepKind::Patch {
                    return Err(EngineError::Invalid(format!(
                        "{from_step:?} is a patch marker, not a step to restart from"
                    )));
                }
                super::upgrade::reused_before(&journal, from)
            }
        };
        let new_id = new_id.unwrap_or_else(|| self.new_id(self.now()));
        let mut run = self.new_run(new_id, function, old.event, Some(old.run_id));
        run.replay_from = from_step.map(str::to_string);
        // The reused results go in before the run exists, so no handler ever sees the run
        // with part of them (a crash in between leaves entries no run reads).
        for step in reused {
            let step = StepRecord {
                run_id: run.run_id.clone(),
                planned: Vec::new(),
                ..step
            };
            self.store().record_step(&step, &[]).await?;
        }
        // An existing run (a retried request) gets its start again: harmless.
        self.create_run(function, &run).await?;
        self.send(self.start_messages(function, &run, Duration::ZERO))
            .await?;
        Ok(run.run_id)
    }

    /// The time part of the runs a replay key starts: fixed by the key's first use (kept for
    /// the idempotency window), so every retry derives the same run ids.
    async fn replay_time(&self, key: &str) -> Result<u64, EngineError> {
        let now = self.now();
        let entry = Entry {
            key: format!("replay:{}", hex::encode(Sha256::digest(key.as_bytes()))),
            id: "at".into(),
            value: json!(now.timestamp_millis().max(0)),
            version: 1,
            expires_at: later(now, self.limits().idempotency_window),
        };
        if self.store().put_entry(&entry, Expect::Absent, now).await? {
            return Ok(now.timestamp_millis().max(0) as u64);
        }
        let held = self.store().list_entries(&entry.key, "at", now, 1).await?;
        held.first()
            .and_then(|e| e.value.as_u64())
            // Expired between the two calls: this use starts the key afresh.
            .map_or_else(|| Ok(now.timestamp_millis().max(0) as u64), Ok)
    }

    /// Creates a run, indexing it first under the values its cancelling events must carry
    /// (a crash in between leaves an index entry for no run: skipped when read).
    pub(crate) async fn create_run(
        &self,
        function: &Function,
        run: &RunRecord,
    ) -> Result<bool, EngineError> {
        let now = self.now();
        let event = run.event.to_json();
        for cancel_on in &function.cancel_on {
            let Some(value) = lookup(&event, &cancel_on.path).filter(|v| !v.is_null()) else {
                continue;
            };
            let entry = Entry {
                key: cancel_key(&function.id, cancel_on, value),
                id: run.run_id.clone(),
                value: Value::Null,
                version: 1,
                expires_at: later(now, self.limits().max_run_age),
            };
            self.store().put_entry(&entry, Expect::Any, now).await?;
        }
        Ok(self.store().create_run(run).await?)
    }

    /// Drops an ended run's cancel index entries.
    pub(crate) async fn unindex_cancel(
        &self,
        function: &Function,
        run: &RunRecord,
    ) -> Result<(), EngineError> {
        let now = self.now();
        let event = run.event.to_json();
        for cancel_on in &function.cancel_on {
            if let Some(value) = lookup(&event, &cancel_on.path).filter(|v| !v.is_null()) {
                let key = cancel_key(&function.id, cancel_on, value);
                self.store()
                    .delete_entry(&key, &run.run_id, Expect::Any, now)
                    .await?;
            }
        }
        Ok(())
    }

    /// Cancels the live runs that `event` cancels ([`Function::cancel_on`]), found through
    /// the index entries their starts wrote under the value `event` carries.
    pub(crate) async fn cancel_on_event(&self, event: &EventRecord) -> Result<(), EngineError> {
        let json = event.to_json();
        let listening: Vec<(String, CancelOn)> = self
            .registry()
            .functions()
            .flat_map(|f| f.cancel_on.iter().map(|c| (f.id.clone(), c.clone())))
            .filter(|(_, c)| c.event == event.name)
            .collect();
        for (function_id, cancel_on) in listening {
            let Some(value) = lookup(&json, &cancel_on.path).filter(|v| !v.is_null()) else {
                continue;
            };
            let key = cancel_key(&function_id, &cancel_on, value);
            // Each entry read is cancelled or dropped, so the next read sees the rest.
            loop {
                let now = self.now();
                let entries = self
                    .store()
                    .list_entries(&key, "", now, CANCEL_PAGE)
                    .await?;
                let full = entries.len() == CANCEL_PAGE;
                for entry in entries {
                    let run = match self.store().get_run(&entry.id).await {
                        Ok(run) => run,
                        Err(e) if e.is_corrupt() => {
                            tracing::warn!(run_id = entry.id, %e, "unreadable run not cancelled");
                            None
                        }
                        Err(e) => return Err(e.into()),
                    };
                    let live = run
                        .filter(|r| !r.status.is_terminal() && cancel_on.matches(event, &r.event));
                    match live {
                        Some(run) => {
                            let error = ErrorInfo::new(
                                "Cancelled",
                                format!("cancelled by the event {} ({})", event.name, event.id),
                            );
                            // Ending the run drops its entry.
                            if !self.cancel_run(&run, error).await? {
                                self.store()
                                    .delete_entry(&key, &entry.id, Expect::Any, now)
                                    .await?;
                            }
                        }
                        None => {
                            self.store()
                                .delete_entry(&key, &entry.id, Expect::Any, now)
                                .await?;
                        }
                    }
                }
                if !full {
                    break;
                }
            }
        }
        Ok(())
    }

    // ---- the sweeper ----

    /// Re-drives runs that have not ended and made no progress for `stale_after` (None: every
    /// run that has not ended, as after a restart that lost the in-process queue). Such a run
    /// of a function the registry no longer has ends with `FunctionRemoved` instead. A re-drive
    /// replays the run and re-sends the message of every step it is blocked on; duplicates
    /// are harmless. Reads one page of runs at a time. Returns how many runs were re-driven.
    pub async fn sweep(&self, stale_after: Option<Duration>) -> Result<usize, EngineError> {
        let now = self.now();
        let mut count = 0;
        let mut pages = std::pin::pin!(self.live_pages(SWEEP_PAGE));
        while let Some(page) = pages.try_next().await? {
            for run_id in &page.unreadable {
                tracing::warn!(run_id, "unreadable run skipped by the sweeper");
            }
            let mut batch = Vec::new();
            for run in &page.runs {
                if let Some(stale_after) = stale_after {
                    let journal = self.store().journal(&run.run_id).await?;
                    let last = journal
                        .iter()
                        .flat_map(|s| {
                            [
                                Some(s.planned_at),
                                s.started_at,
                                s.ended_at,
                                s.wake_at.filter(|_| !s.status.is_final()),
                            ]
                        })
                        .flatten()
                        .fold(run.started_at, DateTime::max);
                    if (now - last)
                        .to_std()
                        .map_or(true, |idle| idle < stale_after)
                    {
                        continue;
                    }
                }
                if self.registry().get(&run.function_id).is_none() {
                    // Its queues went with it: no message would ever reach it again. Only
                    // once stale: during a rolling deploy, a sweeper still on the old code
                    // sees the new code's new functions as unknown, and their runs move.
                    self.end_removed(&run.run_id).await?;
                    count += 1;
                    continue;
                }
                let message = Message {
                    kind: MessageKind::Redrive,
                    ..start_message(&run.run_id, &run.function_id)
                };
                batch.push(Envelope {
                    message,
                    delay: Duration::ZERO,
                });
            }
            count += batch.len();
            self.send(batch).await?;
        }
        Ok(count)
    }

    /// Every function's unfinished runs (Queued, then Running), newest first, one page of at
    /// most `limit` at a time: what the sweeper and the deploy check walk.
    pub(super) fn live_pages(
        &self,
        limit: usize,
    ) -> impl futures::Stream<Item = Result<RunPage, EngineError>> + '_ {
        futures::stream::try_unfold(
            (0, None),
            move |(index, cursor): (usize, Option<String>)| async move {
                let Some(status) = LIVE.get(index) else {
                    return Ok(None);
                };
                let query = RunQuery {
                    status: Some(*status),
                    limit,
                    cursor,
                    ..RunQuery::default()
                };
                let page = self.store().list_runs(&query).await?;
                let next = match &page.cursor {
                    Some(cursor) => (index, Some(cursor.clone())),
                    None => (index + 1, None),
                };
                Ok(Some((page, next)))
            },
        )
    }

    /// Fails a run whose function is no longer registered with `FunctionRemoved` (its
    /// failure event goes out, so handlers of `baton/function.failed` run).
    async fn end_removed(&self, run_id: &str) -> Result<(), EngineError> {
        // The listing reads summaries: the failure event carries the run's event.
        match self.store().get_run(run_id).await? {
            Some(run) if !run.status.is_terminal() => {
                self.fail_run(&run, removed_error(&run.function_id)).await
            }
            _ => Ok(()),
        }
    }
}

/// The error a run of a function no longer registered ends with.
pub(super) fn removed_error(function_id: &str) -> ErrorInfo {
    ErrorInfo::new(
        "FunctionRemoved",
        format!(
            "function {function_id:?} is not in the deployed code (removed or renamed): the run cannot go on"
        ),
    )
}

/// `{status}.{run id}` back into the index of the status and the run-id cursor.
fn parse_cursor(
    cursor: &str,
    statuses: &[RunStatus],
) -> Result<(usize, Option<String>), EngineError> {
    let invalid =
        || EngineError::Invalid(format!("cursor {cursor:?} is not one this call returned"));
    let (status, run_id) = cursor.split_once('.').ok_or_else(invalid)?;
    let index = statuses
        .iter()
        .position(|s| s.as_str() == status)
        .ok_or_else(invalid)?;
    Ok((index, (!run_id.is_empty()).then(|| run_id.to_string())))
}

/// The index key of the runs of `function_id` that an event carrying `value` at
/// `cancel_on.path` cancels.
fn cancel_key(function_id: &str, cancel_on: &CancelOn, value: &Value) -> String {
    let canonical = serde_json::to_vec(&json!([
        function_id,
        cancel_on.event,
        cancel_on.path,
        value
    ]))
    .unwrap_or_default();
    format!("cancel:{}", hex::encode(Sha256::digest(&canonical)))
}

/// The run a replay key starts for `old_run_id`: its time part fixed by the key's first use,
/// its random part derived from both.
fn replay_id(key: &str, at_ms: u64, old_run_id: &str) -> String {
    let digest = Sha256::digest(format!("{key}/{old_run_id}").as_bytes());
    let random = u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"));
    Ulid::from_parts(at_ms, random).to_string()
}
