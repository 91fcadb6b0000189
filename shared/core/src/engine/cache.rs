//! The journal cache: final journal entries this process has seen, per run, so a replay does
//! not read the whole journal again on every step (which would make a run's reads grow with
//! the square of its length). A final entry never changes (the store refuses to overwrite a
//! recorded outcome, and a replayed run is a new run), so a cached one is always right; an
//! entry the cache lacks is read on its own ([`crate::Store::get_step`]) when the replay
//! reaches it. On Lambda a warm container keeps its cache between invocations: temporal's
//! "sticky" workers, without the stickiness.
//!
//! Bounded by entries; the least recently used runs go first.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::model::StepRecord;

#[derive(Debug, Default)]
struct Run {
    last_used: u64,
    steps: HashMap<String, StepRecord>,
}

#[derive(Debug, Default)]
struct Inner {
    runs: HashMap<String, Run>,
    entries: usize,
    tick: u64,
}

#[derive(Debug, Default)]
pub(crate) struct JournalCache {
    inner: Mutex<Inner>,
    max_entries: usize,
}

impl JournalCache {
    pub(crate) fn new(max_entries: usize) -> Self {
        JournalCache {
            inner: Mutex::default(),
            max_entries,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached final entries of a run, or None when the cache knows nothing of it.
    pub(crate) fn get(&self, run_id: &str) -> Option<Vec<StepRecord>> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let run = inner.runs.get_mut(run_id)?;
        run.last_used = tick;
        Some(run.steps.values().cloned().collect())
    }

    /// Remembers the final entries among `steps` (others are ignored: they still change).
    pub(crate) fn remember<'a>(
        &self,
        run_id: &str,
        steps: impl IntoIterator<Item = &'a StepRecord>,
    ) {
        if self.max_entries == 0 {
            return;
        }
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let run = inner.runs.entry(run_id.to_owned()).or_default();
        run.last_used = tick;
        let mut added = 0;
        for step in steps {
            if step.status.is_final() && !run.steps.contains_key(&step.step_id) {
                run.steps.insert(step.step_id.clone(), step.clone());
                added += 1;
            }
        }
        inner.entries += added;
        if inner.entries > self.max_entries {
            Self::evict(&mut inner, self.max_entries * 3 / 4, run_id);
        }
    }

    /// Forgets an ended run.
    pub(crate) fn forget(&self, run_id: &str) {
        let mut inner = self.lock();
        if let Some(run) = inner.runs.remove(run_id) {
            inner.entries -= run.steps.len();
        }
    }

    /// Drops least recently used runs (never `keep`) until at most `target` entries remain.
    fn evict(inner: &mut Inner, target: usize, keep: &str) {
        let mut by_age: Vec<(u64, String)> = inner
            .runs
            .iter()
            .filter(|(id, _)| id.as_str() != keep)
            .map(|(id, run)| (run.last_used, id.clone()))
            .collect();
        by_age.sort_unstable();
        for (_, id) in by_age {
            if inner.entries <= target {
                break;
            }
            if let Some(run) = inner.runs.remove(&id) {
                inner.entries -= run.steps.len();
            }
        }
    }

    #[cfg(test)]
    fn entries(&self) -> usize {
        self.lock().entries
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::model::{StepKind, StepStatus};

    fn step(run: &str, id: &str, status: StepStatus) -> StepRecord {
        StepRecord {
            run_id: run.into(),
            step_id: id.into(),
            name: id.into(),
            kind: StepKind::Run,
            status,
            attempts: 1,
            seq: 0,
            planned_at: Utc::now(),
            started_at: None,
            ended_at: None,
            wake_at: None,
            output: None,
            error: None,
            planned: Vec::new(),
        }
    }

    #[test]
    fn keeps_final_entries_only_and_evicts_least_recently_used_runs() {
        let cache = JournalCache::new(4);
        assert!(cache.get("r1").is_none());
        cache.remember(
            "r1",
            &[
                step("r1", "a", StepStatus::Completed),
                step("r1", "b", StepStatus::Running),
            ],
        );
        let r1 = cache.get("r1").unwrap();
        assert_eq!(r1.len(), 1, "a running step is not cached");
        cache.remember(
            "r2",
            &[
                step("r2", "a", StepStatus::Failed),
                step("r2", "b", StepStatus::Completed),
            ],
        );
        cache.remember("r1", &[step("r1", "a", StepStatus::Completed)]);
        assert_eq!(cache.entries(), 3, "an entry is counted once");
        // r2 was used less recently than r1: it goes when the bound is passed.
        cache.remember(
            "r3",
            &[
                step("r3", "a", StepStatus::Completed),
                step("r3", "b", StepStatus::Completed),
            ],
        );
        assert!(cache.get("r2").is_none());
        assert!(cache.get("r1").is_some() && cache.get("r3").is_some());
        assert_eq!(cache.entries(), 3);
        cache.forget("r3");
        assert_eq!(cache.entries(), 1);
        let off = JournalCache::new(0);
        off.remember("r1", &[step("r1", "a", StepStatus::Completed)]);
        assert!(off.get("r1").is_none(), "a zero bound turns the cache off");
    }
}
