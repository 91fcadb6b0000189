//! `baton deploy-check`: before a deploy, every unfinished run in the store, dry-replayed
//! against the functions of the binary about to be deployed ([`baton::Engine::deploy_check`]).
//! Prints a summary (or JSON with `--json`); the exit status is 1 when a run would break.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use baton::engine::{DeployCheck, Verdict};
use baton::queue::local::LocalQueue;
use baton::{Engine, Registry, Store};
use baton_sqlite::{Durability, SqliteStore};
use serde_json::json;

#[derive(clap::Args)]
pub struct DeployCheckArgs {
    /// The embedded store to check: a dev server's or a small install's database.
    #[arg(long, env = "BATON_DB", default_value = ".baton/baton.db")]
    db: PathBuf,
    /// Check a deployed stack instead: its DynamoDB table (the stack's `TableName` output),
    /// with the usual AWS configuration (AWS_PROFILE or credentials in the environment,
    /// AWS_REGION, AWS_ENDPOINT_URL when set).
    #[arg(long, env = "BATON_TABLE")]
    table: Option<String>,
    /// Print JSON (for CI): counts, every run that would break, the patches still in use.
    #[arg(long)]
    json: bool,
}

/// Where the runs were read from, for the summary.
fn source(args: &DeployCheckArgs) -> String {
    match &args.table {
        Some(table) => format!("DynamoDB table {table}"),
        None => format!("SQLite {}", args.db.display()),
    }
}

async fn open_store(args: &DeployCheckArgs) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(table) = &args.table {
        let config = baton_aws::lambda::sdk_config_default_chain().await;
        let client = aws_sdk_dynamodb::Client::new(&config);
        return Ok(Arc::new(baton_aws::dynamodb::DynamoStore::new(
            client,
            table.clone(),
        )));
    }
    // A store that does not exist has no runs to break; opening it would create one.
    if !args.db.exists() {
        anyhow::bail!(
            "{} does not exist: give the store to check with --db (BATON_DB), or --table (BATON_TABLE) for a deployed stack",
            args.db.display()
        );
    }
    let store = SqliteStore::open(&args.db, Durability::Normal)
        .with_context(|| format!("opening the store at {}", args.db.display()))?;
    Ok(Arc::new(store))
}

pub async fn run(args: DeployCheckArgs, registry: Registry) -> anyhow::Result<ExitCode> {
    registry.check()?;
    let functions = registry.functions().count();
    let store = open_store(&args).await?;
    // A dry replay sends nothing: the queue is never used.
    let (queue, _receiver) = LocalQueue::new();
    let engine = Engine::new(registry, store, Arc::new(queue), Default::default());
    let started = Instant::now();
    let report = engine
        .deploy_check()
        .await
        .with_context(|| format!("reading the unfinished runs from {}", source(&args)))?;
    let took = started.elapsed();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report_json(&report))?);
    } else {
        print!(
            "{}",
            summary(&report, &source(&args), functions, took.as_secs_f64())
        );
    }
    Ok(if report.breaks() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Unfinished runs per patch marker that still take its old branch.
fn old_branches(report: &DeployCheck) -> BTreeMap<String, usize> {
    let mut patches = BTreeMap::new();
    for run in &report.runs {
        for patch in &run.old_branches {
            *patches
                .entry(format!("{} {}", run.function_id, patch))
                .or_default() += 1;
        }
    }
    patches
}

pub fn report_json(report: &DeployCheck) -> serde_json::Value {
    json!({
        "ok": !report.breaks(),
        "checked": report.runs.len(),
        "compatible": report.compatible(),
        "would_fail": report.would_fail(),
        "function_removed": report.removed(),
        "unreadable": report.unreadable,
        "runs": report.runs.iter().filter(|r| r.breaks()).collect::<Vec<_>>(),
        "old_branches": old_branches(report),
    })
}

fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

pub fn summary(report: &DeployCheck, source: &str, functions: usize, secs: f64) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "deploy-check: {} in {source}, replayed against {} in {secs:.2} s",
        count(report.runs.len(), "unfinished run"),
        count(functions, "function"),
    );
    let _ = writeln!(out, "  compatible        {}", report.compatible());
    let _ = writeln!(out, "  would fail        {}", report.would_fail());
    let _ = writeln!(out, "  function removed  {}", report.removed());
    if !report.unreadable.is_empty() {
        let _ = writeln!(out, "  unreadable        {}", report.unreadable.len());
    }
    let failing: Vec<_> = report
        .runs
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::WouldFail { .. }))
        .collect();
    if !failing.is_empty() {
        let _ = writeln!(out, "\nWould fail:");
        for run in failing {
            if let Verdict::WouldFail {
                step_id,
                reason,
                error,
            } = &run.verdict
            {
                let at = step_id
                    .as_ref()
                    .map_or_else(String::new, |s| format!(" at step {s}"));
                let _ = writeln!(
                    out,
                    "  {} {}{at} ({}): {}: {}",
                    run.run_id,
                    run.function_id,
                    reason.as_str(),
                    error.name,
                    error.message
                );
            }
        }
    }
    let removed: Vec<_> = report
        .runs
        .iter()
        .filter(|r| r.verdict == Verdict::FunctionRemoved)
        .collect();
    if !removed.is_empty() {
        let _ = writeln!(
            out,
            "\nFunction removed (these runs would end with FunctionRemoved):"
        );
        for run in removed {
            let _ = writeln!(out, "  {} {}", run.run_id, run.function_id);
        }
    }
    for id in &report.unreadable {
        let _ = writeln!(out, "  unreadable: {id}");
    }
    let patches = old_branches(report);
    if !patches.is_empty() {
        let _ = writeln!(
            out,
            "\nPatches still needed (runs on the old branch; retire a patch once it is not listed):"
        );
        for (patch, runs) in patches {
            let _ = writeln!(out, "  {patch}: {}", count(runs, "run"));
        }
    }
    if report.breaks() {
        let _ = writeln!(
            out,
            "\nFAIL: deploying this code would break the runs above. Keep the old code path behind \
             ctx.patched(\"...\"), let the runs finish, or cancel them."
        );
    } else {
        let _ = writeln!(out, "\nOK: every unfinished run replays under this code.");
    }
    out
}
