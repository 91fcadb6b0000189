//! The in-memory store: the reference semantics of the [`Store`] contract, and the backend of
//! the fault-injection property tests. One mutex around plain maps; every operation touches
//! only the items it names, so it stays fast however many runs a test creates.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Store, StoreResult, expect_holds, page_size};
use crate::model::{
    Entry, ErrorInfo, EventRecord, Expect, ListedRun, Progress, RunPage, RunQuery, RunRecord,
    RunSummary, RunTransition, StepOutcome, StepRecord, StepStatus,
};

#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    events: HashMap<String, EventRecord>,
    /// idempotency id -> (event id, expires at)
    idempotency: HashMap<String, (String, DateTime<Utc>)>,
    /// Ordered by run id, so listing newest first is a reverse range scan.
    runs: BTreeMap<String, RunRecord>,
    /// event id -> its run ids, in order.
    runs_by_event: HashMap<String, BTreeSet<String>>,
    /// run id -> step id -> step.
    steps: HashMap<String, HashMap<String, StepRecord>>,
    /// run id -> step id -> a step planned in another step's result and not started: kept
    /// beside that result, not as an entry of its own, as DynamoDB keeps it (so the engine's
    /// tests on this store take the path a DynamoDB deployment takes).
    plans: HashMap<String, HashMap<String, StepRecord>>,
    /// (key, id) -> entry, ordered so a key's entries are one range.
    entries: BTreeMap<(String, String), Entry>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every operation is a single map update, so a panic elsewhere cannot leave the
        // maps half-changed: a poisoned lock is safe to keep using.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The step if it exists and is not final.
    fn open_step<'a>(
        state: &'a mut State,
        run_id: &str,
        step_id: &str,
    ) -> Option<&'a mut StepRecord> {
        state
            .steps
            .get_mut(run_id)
            .and_then(|steps| steps.get_mut(step_id))
            .filter(|step| !step.status.is_final())
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn claim_idempotency_id(
        &self,
        idempotency_id: &str,
        event_id: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<Option<String>> {
        let mut state = self.state();
        // A claim holds until `expires_at`: at that instant it is free again.
        let held = state
            .idempotency
            .get(idempotency_id)
            .filter(|(_, until)| *until > now);
        if let Some((holder, _)) = held {
            return Ok(Some(holder.clone()));
        }
        state
            .idempotency
            .insert(idempotency_id.to_owned(), (event_id.to_owned(), expires_at));
        Ok(None)
    }

    async fn put_event(&self, event: &EventRecord) -> StoreResult<bool> {
        let mut state = self.state();
        if state.events.contains_key(&event.id) {
            return Ok(false);
        }
        state.events.insert(event.id.clone(), event.clone());
        Ok(true)
    }

    async fn get_event(&self, event_id: &str) -> StoreResult<Option<EventRecord>> {
        Ok(self.state().events.get(event_id).cloned())
    }

    async fn create_run(&self, run: &RunRecord) -> StoreResult<bool> {
        let mut state = self.state();
        if state.runs.contains_key(&run.run_id) {
            return Ok(false);
        }
        state.runs.insert(run.run_id.clone(), run.clone());
        state
            .runs_by_event
            .entry(run.event_id.clone())
            .or_default()
            .insert(run.run_id.clone());
        Ok(true)
    }

    async fn get_run(&self, run_id: &str) -> StoreResult<Option<RunRecord>> {
        Ok(self.state().runs.get(run_id).cloned())
    }

    async fn transition_run(&self, run_id: &str, t: &RunTransition) -> StoreResult<bool> {
        let mut state = self.state();
        let Some(run) = state
            .runs
            .get_mut(run_id)
            .filter(|r| t.from.contains(&r.status))
        else {
            return Ok(false);
        };
        run.status = t.to;
        run.ended_at = t.ended_at;
        run.output = t.output.clone();
        run.error = t.error.clone();
        Ok(true)
    }

    async fn set_progress(&self, run_id: &str, progress: &Progress) -> StoreResult<bool> {
        let mut state = self.state();
        let Some(run) = state
            .runs
            .get_mut(run_id)
            .filter(|r| !r.status.is_terminal())
        else {
            return Ok(false);
        };
        run.progress = Some(progress.clone());
        Ok(true)
    }

    async fn list_runs(&self, query: &RunQuery) -> StoreResult<RunPage> {
        let limit = page_size(query.limit);
        let upper = match &query.cursor {
            Some(cursor) => Bound::Excluded(cursor.as_str()),
            None => Bound::Unbounded,
        };
        let state = self.state();
        // One extra row tells whether another page exists.
        let runs: Vec<ListedRun> = state
            .runs
            .range::<str, _>((Bound::Unbounded, upper))
            .rev()
            .map(|(_, run)| run.summary(query.with_output))
            .filter(|run| query.matches(run))
            .take(limit + 1)
            .map(Ok)
            .collect();
        Ok(RunPage::from_overfetch(runs, limit))
    }

    async fn runs_for_event(&self, event_id: &str) -> StoreResult<Vec<RunSummary>> {
        let state = self.state();
        let Some(ids) = state.runs_by_event.get(event_id) else {
            return Ok(Vec::new());
        };
        Ok(ids
            .iter()
            .filter_map(|id| state.runs.get(id))
            .map(|run| run.summary(true))
            .collect())
    }

    async fn journal(&self, run_id: &str) -> StoreResult<Vec<StepRecord>> {
        let state = self.state();
        let entries = state.steps.get(run_id);
        let mut steps: Vec<StepRecord> = entries
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default();
        if let Some(plans) = state.plans.get(run_id) {
            steps.extend(
                plans
                    .values()
                    .filter(|p| entries.is_none_or(|e| !e.contains_key(&p.step_id)))
                    .cloned(),
            );
        }
        // step_id breaks ties so the order is deterministic even if seq were reused.
        steps.sort_by(|a, b| (a.seq, &a.step_id).cmp(&(b.seq, &b.step_id)));
        Ok(steps)
    }

    async fn get_step(&self, run_id: &str, step_id: &str) -> StoreResult<Option<StepRecord>> {
        let state = self.state();
        Ok(state
            .steps
            .get(run_id)
            .and_then(|s| s.get(step_id))
            .cloned())
    }

    async fn plan_step(&self, step: &StepRecord) -> StoreResult<bool> {
        let mut state = self.state();
        let steps = state.steps.entry(step.run_id.clone()).or_default();
        if steps.contains_key(&step.step_id) {
            return Ok(false);
        }
        steps.insert(step.step_id.clone(), step.clone());
        Ok(true)
    }

    async fn begin_attempt(
        &self,
        step: &StepRecord,
        attempt: u32,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut state = self.state();
        let steps = state.steps.entry(step.run_id.clone()).or_default();
        let current = steps
            .entry(step.step_id.clone())
            .or_insert_with(|| StepRecord {
                attempts: 0,
                ..step.clone()
            });
        if current.status.is_final() || current.attempts > attempt {
            return Ok(false);
        }
        current.status = StepStatus::Running;
        current.attempts = attempt;
        current.started_at.get_or_insert(at);
        Ok(true)
    }

    async fn retry_step(
        &self,
        step: &StepRecord,
        attempt: u32,
        error: &ErrorInfo,
        next_at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut state = self.state();
        let steps = state.steps.entry(step.run_id.clone()).or_default();
        let step = steps
            .entry(step.step_id.clone())
            .or_insert_with(|| StepRecord {
                attempts: attempt,
                ..step.clone()
            });
        if step.status.is_final() || step.attempts != attempt {
            return Ok(false);
        }
        step.status = StepStatus::Planned;
        step.error = Some(error.clone());
        step.wake_at = Some(next_at);
        Ok(true)
    }

    async fn finish_step(
        &self,
        run_id: &str,
        step_id: &str,
        outcome: &StepOutcome,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut state = self.state();
        let Some(step) = Self::open_step(&mut state, run_id, step_id) else {
            return Ok(false);
        };
        // The journaled result is exactly the outcome: an earlier attempt's error does not
        // linger on a completed step.
        match outcome {
            StepOutcome::Completed(output) => {
                step.status = StepStatus::Completed;
                step.output = Some(output.clone());
                step.error = None;
            }
            StepOutcome::Failed(error) => {
                step.status = StepStatus::Failed;
                step.output = None;
                step.error = Some(error.clone());
            }
        }
        step.ended_at = Some(at);
        Ok(true)
    }

    async fn record_step(&self, step: &StepRecord, next: &[StepRecord]) -> StoreResult<bool> {
        let mut state = self.state();
        let steps = state.steps.entry(step.run_id.clone()).or_default();
        let planned = next.to_vec();
        match steps.get_mut(&step.step_id) {
            Some(current) if current.status.is_final() => return Ok(false),
            Some(current) => {
                current.status = step.status;
                current.attempts = step.attempts;
                current.started_at = current.started_at.or(step.started_at);
                current.ended_at = step.ended_at;
                current.output = step.output.clone();
                current.error = step.error.clone();
                current.planned = planned;
            }
            None => {
                steps.insert(
                    step.step_id.clone(),
                    StepRecord {
                        planned,
                        ..step.clone()
                    },
                );
            }
        }
        let plans = state.plans.entry(step.run_id.clone()).or_default();
        for n in next {
            plans.entry(n.step_id.clone()).or_insert_with(|| n.clone());
        }
        Ok(true)
    }

    async fn put_entry(
        &self,
        entry: &Entry,
        expect: Expect,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut state = self.state();
        let k = (entry.key.clone(), entry.id.clone());
        if !expect_holds(expect, state.entries.get(&k), now) {
            return Ok(false);
        }
        state.entries.insert(k, entry.clone());
        Ok(true)
    }

    async fn list_entries(
        &self,
        key: &str,
        prefix: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<Entry>> {
        let state = self.state();
        let from = (key.to_owned(), prefix.to_owned());
        Ok(state
            .entries
            .range(from..)
            .take_while(|((k, id), _)| k == key && id.starts_with(prefix))
            .map(|(_, e)| e)
            .filter(|e| e.expires_at > now)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn delete_entry(
        &self,
        key: &str,
        id: &str,
        expect: Expect,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut state = self.state();
        let k = (key.to_owned(), id.to_owned());
        let current = state.entries.get(&k);
        if current.is_none() || !expect_holds(expect, current, now) {
            return Ok(false);
        }
        state.entries.remove(&k);
        Ok(true)
    }
}
