//! Changing code under live runs:
//!
//! - [`Engine::check_run`]: a dry replay of one run's journal against this engine's registry
//!   (no step body runs, nothing is read or written), sorted into compatible, would fail
//!   (where and why) or function removed;
//! - [`Engine::deploy_check`]: the same over every unfinished run in the store, which is what
//!   `baton deploy-check` prints before a deploy;
//! - [`Engine::replay_from`]: a new run on the same event that reuses the recorded results of
//!   the steps before a given step, and runs that step and the rest again.
//!
//! Patch markers themselves ([`crate::Ctx::patched`]) live with the rest of the function API.

use std::sync::Arc;

use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;

use super::{Engine, PassEnd};
use crate::engine::ctx::Ctx;
use crate::error::EngineError;
use crate::model::{ErrorInfo, RunRecord, RunStatus, StepKind, StepRecord};
use crate::store::MAX_PAGE;

/// Why a run would fail under the new code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Incompatibility {
    /// The code reaches its steps in another order, or no longer reaches a journaled step.
    Order,
    /// The code calls a step, wait or invoke its function no longer declares.
    Undeclared,
    /// A journaled output (or a received event) no longer deserializes into the code's type.
    OutputType,
    /// The code invokes a function the registry no longer has.
    RemovedFunction,
    /// Anything else the replay ran into (a panic, a limit).
    Other,
}

impl Incompatibility {
    /// From the name of the definition error a replay raised.
    fn of(error_name: &str) -> Self {
        match error_name {
            "NonDeterministic" => Incompatibility::Order,
            "UndeclaredStep" | "UndeclaredWait" | "UndeclaredInvoke" => Incompatibility::Undeclared,
            "OutputTypeMismatch" | "EventTypeMismatch" => Incompatibility::OutputType,
            "UnknownFunction" => Incompatibility::RemovedFunction,
            _ => Incompatibility::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Incompatibility::Order => "order",
            Incompatibility::Undeclared => "undeclared",
            Incompatibility::OutputType => "output type",
            Incompatibility::RemovedFunction => "removed function",
            Incompatibility::Other => "other",
        }
    }
}

/// What the new code would do with one unfinished run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// It replays its journal and goes on.
    Compatible,
    /// Its next handler would fail it: at `step_id` (when the error is about one), for
    /// `reason`, with `error` as the run would record it.
    WouldFail {
        step_id: Option<String>,
        reason: Incompatibility,
        error: ErrorInfo,
    },
    /// Its function is not in the new registry: it would end with `FunctionRemoved`.
    FunctionRemoved,
}

/// One run, checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunCheck {
    pub run_id: String,
    pub function_id: String,
    pub status: RunStatus,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Patch markers (step ids) at which this run takes the old branch: a patch can be
    /// retired once no unfinished run lists it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub old_branches: Vec<String>,
}

impl RunCheck {
    /// A run whose function the registry no longer has.
    fn removed(run_id: String, function_id: String, status: RunStatus) -> Self {
        RunCheck {
            run_id,
            function_id,
            status,
            verdict: Verdict::FunctionRemoved,
            old_branches: Vec::new(),
        }
    }

    pub fn breaks(&self) -> bool {
        !matches!(self.verdict, Verdict::Compatible)
    }
}

/// Every unfinished run, checked ([`Engine::deploy_check`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeployCheck {
    pub runs: Vec<RunCheck>,
    /// Runs whose stored rows could not be read.
    pub unreadable: Vec<String>,
}

impl DeployCheck {
    pub fn compatible(&self) -> usize {
        self.runs.iter().filter(|r| !r.breaks()).count()
    }
    pub fn would_fail(&self) -> usize {
        self.runs
            .iter()
            .filter(|r| matches!(r.verdict, Verdict::WouldFail { .. }))
            .count()
    }
    pub fn removed(&self) -> usize {
        self.runs
            .iter()
            .filter(|r| r.verdict == Verdict::FunctionRemoved)
            .count()
    }
    /// Some run would break (or could not be read): the deploy should wait.
    pub fn breaks(&self) -> bool {
        self.runs.iter().any(RunCheck::breaks) || !self.unreadable.is_empty()
    }
}

/// One listed run, as the check found it.
enum Checked {
    Run(RunCheck),
    /// Its run or journal rows could not be read.
    Unreadable(String),
    Ended,
}

/// How many runs [`Engine::deploy_check`] reads and replays at once.
pub const DEPLOY_CHECK_CONCURRENCY: usize = 16;

impl Engine {
    /// Dry-replays `run` over `journal` (the whole of it, as [`crate::Store::journal`] reads
    /// it) against this engine's registry: what its next handler would do with it. No step
    /// body runs and nothing is written.
    pub async fn check_run(&self, run: &RunRecord, journal: Vec<StepRecord>) -> RunCheck {
        let Some(function) = self.registry().get(&run.function_id).cloned() else {
            return RunCheck::removed(run.run_id.clone(), run.function_id.clone(), run.status);
        };
        let handler = function
            .handler
            .clone()
            .expect("registered functions have a handler");
        let seqs: std::collections::HashMap<String, u32> =
            journal.iter().map(|s| (s.step_id.clone(), s.seq)).collect();
        let ctx = Ctx::dry(
            self.clone(),
            run.clone(),
            Arc::clone(&function),
            journal,
            self.now(),
        );
        let pass = ctx.share().run_pass(handler(ctx, run.event.clone())).await;
        let old_branches = pass
            .patches
            .iter()
            .filter(|(_, taken)| !taken)
            .map(|(id, _)| id.clone())
            .collect();
        let verdict = if let Some(fatal) = pass.fatal {
            Verdict::WouldFail {
                step_id: pass.fatal_at,
                reason: Incompatibility::of(&fatal.name),
                error: fatal.info(),
            }
        } else if let Some(error) = pass.interrupted {
            // A dry replay neither reads nor writes: this is a bug, reported as such.
            Verdict::WouldFail {
                step_id: None,
                reason: Incompatibility::Other,
                error: ErrorInfo::new("CheckFailed", error.to_string()),
            }
        } else if let Some(first) = pass
            .unvisited
            .iter()
            .min_by_key(|id| seqs.get(*id).copied().unwrap_or(u32::MAX))
        {
            let new_step = pass
                .pending
                .iter()
                .find(|p| p.is_new)
                .map(|p| p.record.step_id.clone());
            let how = match (&pass.end, new_step) {
                (PassEnd::Finished(_), _) => "the function returns before it".to_string(),
                (PassEnd::Blocked, Some(step)) => {
                    format!("it goes to a step the journal does not have, {step:?}, first")
                }
                (PassEnd::Blocked, None) => "the replay stops at another step first".to_string(),
            };
            Verdict::WouldFail {
                step_id: Some(first.clone()),
                reason: Incompatibility::Order,
                error: ErrorInfo::new(
                    "NonDeterministic",
                    format!(
                        "the journal has step {first:?}, which the new code does not reach ({how})"
                    ),
                ),
            }
        } else {
            Verdict::Compatible
        };
        RunCheck {
            run_id: run.run_id.clone(),
            function_id: run.function_id.clone(),
            status: run.status,
            verdict,
            old_branches,
        }
    }

    /// Checks every unfinished (Queued or Running) run in the store against this engine's
    /// registry ([`Engine::check_run`]), [`DEPLOY_CHECK_CONCURRENCY`] at a time. Reads each
    /// run with its journal ([`crate::Store::run_with_journal`]); writes nothing. Runs come newest first within each status.
    pub async fn deploy_check(&self) -> Result<DeployCheck, EngineError> {
        let mut report = DeployCheck::default();
        let mut pages = std::pin::pin!(self.live_pages(MAX_PAGE));
        while let Some(page) = pages.try_next().await? {
            report.unreadable.extend(page.unreadable);
            let checks: Vec<Result<Checked, EngineError>> = futures::stream::iter(page.runs)
                .map(|summary| async move {
                    // No read: the listing says all the check needs.
                    if self.registry().get(&summary.function_id).is_none() {
                        return Ok(Checked::Run(RunCheck::removed(
                            summary.run_id,
                            summary.function_id,
                            summary.status,
                        )));
                    }
                    match self.store().run_with_journal(&summary.run_id).await {
                        Ok(Some((run, journal))) if !run.status.is_terminal() => {
                            Ok(Checked::Run(self.check_run(&run, journal).await))
                        }
                        // Ended (or gone) since the listing.
                        Ok(_) => Ok(Checked::Ended),
                        Err(e) if e.is_corrupt() => Ok(Checked::Unreadable(summary.run_id)),
                        Err(e) => Err(e.into()),
                    }
                })
                .buffered(DEPLOY_CHECK_CONCURRENCY)
                .collect()
                .await;
            for check in checks {
                match check? {
                    Checked::Run(check) => report.runs.push(check),
                    Checked::Unreadable(run_id) => report.unreadable.push(run_id),
                    Checked::Ended => {}
                }
            }
        }
        Ok(report)
    }
}

/// The entries of `journal` a restart from `from` reuses: every final one planned before it
/// (by `seq`), with their recorded results. `from` itself and everything after run again.
pub(crate) fn reused_before(journal: &[StepRecord], from: &StepRecord) -> Vec<StepRecord> {
    journal
        .iter()
        .filter(|s| s.status.is_final() && s.step_id != from.step_id)
        // A patch marker takes the seq of the step after it.
        .filter(|s| s.seq < from.seq || (s.kind == StepKind::Patch && s.seq == from.seq))
        .cloned()
        .collect()
}
