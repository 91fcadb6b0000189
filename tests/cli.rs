//! The `baton` CLI as a user runs it: the real binary against a real `baton dev` on 127.0.0.1
//! (ephemeral port, temporary database): `send`, `runs`, `run --follow`, `cancel`, `replay`
//! (`--from STEP`), `functions`, `deploy-check`, the keys from the environment, and exit codes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

struct DevServer {
    child: Child,
    url: String,
    db: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl DevServer {
    fn start(env: &[(&str, &str)]) -> DevServer {
        let dir = tempfile::tempdir().unwrap();
        let mut server = DevServer::start_on(&dir.path().join("baton.db"), env);
        server._dir = Some(dir);
        server
    }

    /// A server on the database at `db` (kept by the caller).
    fn start_on(db: &Path, env: &[(&str, &str)]) -> DevServer {
        let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
        command
            .args(["dev", "--port", "0", "--durability", "normal", "--db"])
            .arg(db)
            .env("RUST_LOG", "warn")
            .env_remove("BATON_EVENT_KEY")
            .env_remove("BATON_SIGNING_KEY")
            .env_remove("BATON_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("baton dev starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a banner line").unwrap();
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("the URL")
            .to_string();
        std::thread::spawn(move || for _ in lines {});
        DevServer {
            child,
            url,
            db: db.to_owned(),
            _dir: None,
        }
    }

    /// `baton send` of an order with `data` (no keys): the id of the process-order run it
    /// started.
    fn order_run(&self, data: &str) -> String {
        self.baton(&["send", ORDER, "--data", data], &[])
            .ok()
            .id_after("run", "process-order")
    }

    /// Runs `baton ARGS --url <this server>` with only the given BATON_* variables.
    fn baton(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
        command
            .args(args)
            .args(["--url", &self.url])
            .env_remove("BATON_EVENT_KEY")
            .env_remove("BATON_SIGNING_KEY")
            .env_remove("BATON_URL")
            .env("RUST_LOG", "warn");
        for (k, v) in env {
            command.env(k, v);
        }
        Run::from(command.output().expect("baton runs"))
    }
}

/// Runs `baton ARGS` (no server URL: a command on local files).
fn baton_local(args: &[&str]) -> Run {
    Run::from(
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(args)
            .env_remove("BATON_DB")
            .env_remove("BATON_TABLE")
            .env("RUST_LOG", "warn")
            .output()
            .expect("baton runs"),
    )
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(
            self.code,
            Some(0),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
    fn failed(self) -> Run {
        assert_eq!(
            self.code,
            Some(1),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
    /// The id after `word ` on the first line that has it (`run 01K…`).
    fn id_after(&self, word: &str, function: &str) -> String {
        self.stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&format!("{word} ")) && l.contains(function))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no `{word} … {function}` in:\n{}", self.stdout))
            .to_string()
    }
}

const ORDER: &str = "demo/order.placed";

/// The percentages `--follow` printed, in order.
fn percents(out: &str) -> Vec<u32> {
    out.lines()
        .filter_map(|l| l.strip_prefix('['))
        .filter_map(|l| l.split_once("%]"))
        .filter_map(|(p, _)| p.trim().parse().ok())
        .collect()
}

#[test]
fn follow_shows_progress_to_100_and_exits_0_on_completion() {
    let server = DevServer::start(&[]);
    let sent = server
        .baton(
            &[
                "send",
                ORDER,
                "--data",
                r#"{"order_id":"o-1","items":["book"],"flaky_payment":true,"cool_down_s":2}"#,
            ],
            &[],
        )
        .ok();
    assert!(sent.stdout.starts_with("event "), "{}", sent.stdout);
    let run_id = sent.id_after("run", "process-order");
    let follow = server
        .baton(&["run", &run_id, "--follow", "--interval", "100ms"], &[])
        .ok();
    let out = &follow.stdout;
    let seen = percents(out);
    assert_eq!(seen.last(), Some(&100), "{out}");
    assert!(
        seen.iter().any(|p| *p > 0 && *p < 100),
        "progress moved through the middle: {seen:?}\n{out}"
    );
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(out.contains("[100%] Completed: done"), "{out}");
    // The live step lines and the final timeline.
    assert!(out.contains("↻ charge-card attempt 1 failed"), "{out}");
    assert!(out.contains("✓ charge-card"), "{out}");
    assert!(out.contains(&format!("run {run_id}  process-order  Completed")));
    let charge = out
        .lines()
        .find(|l| l.trim_start().starts_with("2   charge-card"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        charge.contains("Completed") && charge.contains(" 3 "),
        "{charge}"
    );
    assert!(out.contains("\"receipt\": \"receipt for o-1\""), "{out}");

    // Without --follow: the same timeline, exit 0.
    let shown = server.baton(&["run", &run_id], &[]).ok();
    assert!(shown.stdout.contains("progress  100% done"));
    assert!(shown.stdout.contains("cool-down"));
    let json = server.baton(&["run", &run_id, "--json"], &[]).ok();
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["status"], "Completed");
}

/// A podcast episode (outline, script, audio, upload, complete against the dev server's
/// fake services) followed while it runs reports each stage's progress up to 100.
#[test]
fn follow_on_a_running_podcast_shows_each_stage_up_to_100() {
    let server = DevServer::start(&[]);
    let sent = server
        .baton(
            &[
                "send",
                "episode/generate.interview",
                "--data",
                r#"{"episode_id":"e-cli","topic":"Lighthouses","user_id":"u-1"}"#,
            ],
            &[],
        )
        .ok();
    let run_id = sent.id_after("run", "generate-interview");
    let follow = server
        .baton(&["run", &run_id, "--follow", "--interval", "20ms"], &[])
        .ok();
    let out = &follow.stdout;
    let seen = percents(out);
    assert_eq!(seen.last(), Some(&100), "{out}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(
        seen.iter().filter(|p| **p > 0 && **p < 100).count() >= 1,
        "progress moved through the stages: {seen:?}\n{out}"
    );
    assert!(
        out.contains(&format!("run {run_id}  generate-interview  Completed")),
        "{out}"
    );
}

#[test]
fn follow_exits_non_zero_with_the_error_when_the_run_fails() {
    let server = DevServer::start(&[]);
    let run_id = server.order_run(r#"{"order_id":"o-2","items":[]}"#);
    let follow = server
        .baton(&["run", &run_id, "--follow", "--interval", "100ms"], &[])
        .failed();
    assert!(
        follow.stderr.contains(&format!(
            "run {run_id} Failed: NonRetriableError: order has no items"
        )),
        "{}",
        follow.stderr
    );
    assert!(follow.stdout.contains("✗ validate: NonRetriableError"));
    assert!(
        follow
            .stdout
            .contains("error     NonRetriableError: order has no items")
    );
}

#[test]
fn runs_cancel_replay_and_bulk_replay() {
    let server = DevServer::start(&[]);
    let failed = server.order_run(r#"{"order_id":"bad","items":[]}"#);
    let sleeping = server
        .baton(
            &[
                "send",
                ORDER,
                "--data",
                r#"{"order_id":"slow","items":["a"],"cool_down_s":3600}"#,
                "--id",
                "slow-1",
            ],
            &[],
        )
        .ok()
        .id_after("run", "process-order");
    server.baton(&["run", &failed, "--follow"], &[]).failed();

    // Filters.
    let listed = server
        .baton(
            &["runs", "--function", "process-order", "--status", "Failed"],
            &[],
        )
        .ok();
    assert!(listed.stdout.contains(&failed), "{}", listed.stdout);
    assert!(!listed.stdout.contains(&sleeping));
    assert!(
        listed
            .stdout
            .contains("NonRetriableError: order has no items")
    );
    let all = server.baton(&["runs"], &[]).ok();
    assert!(all.stdout.contains(&failed) && all.stdout.contains(&sleeping));
    // Paging: one a page, then the cursor it prints.
    let first = server.baton(&["runs", "--limit", "1"], &[]).ok();
    let more = first
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("more: "))
        .unwrap_or_else(|| panic!("{}", first.stdout))
        .to_string();
    let cursor = more.rsplit(' ').next().unwrap();
    let second = server
        .baton(&["runs", "--limit", "1", "--cursor", cursor], &[])
        .ok();
    assert_ne!(first.stdout.lines().nth(1), second.stdout.lines().nth(1));
    let bad = server.baton(&["runs", "--status", "Nope"], &[]).failed();
    assert!(
        bad.stderr.contains("status must be one of"),
        "{}",
        bad.stderr
    );

    // Cancel the sleeping run; cancelling it again fails.
    let cancelled = server.baton(&["cancel", &sleeping], &[]).ok();
    assert!(
        cancelled
            .stdout
            .contains(&format!("cancelled run {sleeping} (Cancelled)"))
    );
    let again = server.baton(&["cancel", &sleeping], &[]).failed();
    assert!(
        again.stderr.contains("409") && again.stderr.contains("already ended"),
        "{}",
        again.stderr
    );
    let follow = server.baton(&["run", &sleeping, "--follow"], &[]).failed();
    assert!(follow.stderr.contains("Cancelled"), "{}", follow.stderr);

    // Replay one run: a new run, which fails again (same event).
    let replayed = server.baton(&["replay", &failed], &[]).ok();
    assert!(
        replayed
            .stdout
            .starts_with(&format!("replayed run {failed} as run "))
    );
    let new_run = replayed
        .stdout
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    assert_ne!(new_run, failed);
    let shown = server.baton(&["run", &new_run, "--follow"], &[]).failed();
    assert!(shown.stdout.contains(&format!("replay of {failed}")));

    // Bulk: both failed runs of the last hour; none in a window that ended before them.
    let bulk = server
        .baton(
            &[
                "replay",
                "--function",
                "process-order",
                "--status",
                "Failed",
                "--since",
                "1h",
            ],
            &[],
        )
        .ok();
    assert!(
        bulk.stdout
            .starts_with("replayed 2 Failed runs of process-order started in the last 1h"),
        "{}",
        bulk.stdout
    );
    assert_eq!(
        bulk.stdout
            .lines()
            .filter(|l| l.starts_with("  run "))
            .count(),
        2
    );
    let none = server
        .baton(
            &[
                "replay",
                "--function",
                "process-order",
                "--since",
                "2h",
                "--until",
                "1h",
            ],
            &[],
        )
        .ok();
    assert!(
        none.stdout.starts_with("replayed 0 Failed runs"),
        "{}",
        none.stdout
    );
    let cancelled = server
        .baton(
            &[
                "replay",
                "--function",
                "process-order",
                "--status",
                "Cancelled",
                "--since",
                "1h",
            ],
            &[],
        )
        .ok();
    assert!(
        cancelled.stdout.starts_with("replayed 1 Cancelled run "),
        "{}",
        cancelled.stdout
    );
    // Usage errors.
    let usage = server.baton(&["replay", "--function", "process-order"], &[]);
    assert_eq!(usage.code, Some(2), "{}", usage.stderr);
    let usage = server.baton(&["replay"], &[]);
    assert_eq!(usage.code, Some(2), "{}", usage.stderr);

    // Functions with their figures.
    let functions = server.baton(&["functions", "--window", "1h"], &[]).ok();
    let line = functions
        .stdout
        .lines()
        .find(|l| l.starts_with("process-order "))
        .unwrap_or_else(|| panic!("{}", functions.stdout));
    assert!(line.contains("demo/order.placed"), "{line}");
    assert!(functions.stdout.contains("cron 0 6 * * *"));
}

#[test]
fn keys_come_from_the_environment() {
    let server = DevServer::start(&[
        ("BATON_SIGNING_KEY", "sk-cli-test-0123456789"),
        ("BATON_EVENT_KEY", "ek-cli-test-0123456789"),
    ]);
    let keys = [
        ("BATON_SIGNING_KEY", "sk-cli-test-0123456789"),
        ("BATON_EVENT_KEY", "ek-cli-test-0123456789"),
    ];
    // No keys: refused, saying which variable to set.
    let refused = server.baton(&["runs"], &[]).failed();
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("set BATON_SIGNING_KEY"),
        "{}",
        refused.stderr
    );
    let refused = server.baton(&["send", ORDER, "--data", "{}"], &[]).failed();
    assert!(
        refused.stderr.contains("BATON_EVENT_KEY"),
        "{}",
        refused.stderr
    );
    let wrong = server
        .baton(&["runs"], &[("BATON_SIGNING_KEY", "not-the-key")])
        .failed();
    assert!(
        wrong.stderr.contains("is not this server's signing key"),
        "{}",
        wrong.stderr
    );
    // With them: everything works.
    let sent = server
        .baton(
            &[
                "send",
                ORDER,
                "--data",
                r#"{"order_id":"k","items":["a"],"cool_down_s":1}"#,
            ],
            &keys,
        )
        .ok();
    let run_id = sent.id_after("run", "process-order");
    server.baton(&["run", &run_id, "--follow"], &keys).ok();
    let listed = server.baton(&["runs"], &keys).ok();
    assert!(listed.stdout.contains(&run_id));
    // BATON_EVENT_KEY may list several keys: the first is used.
    server
        .baton(
            &["send", ORDER, "--data", "{}"],
            &[("BATON_EVENT_KEY", "ek-cli-test-0123456789, other")],
        )
        .ok();
}

#[test]
fn bad_input_and_an_unreachable_server_fail_clearly() {
    let server = DevServer::start(&[]);
    let bad = server
        .baton(&["send", ORDER, "--data", "{nope"], &[])
        .failed();
    assert!(
        bad.stderr.contains("--data is not valid JSON"),
        "{}",
        bad.stderr
    );
    let bad = server
        .baton(&["send", ORDER, "--data", "[1]"], &[])
        .failed();
    assert!(
        bad.stderr.contains("must be a JSON object"),
        "{}",
        bad.stderr
    );
    let missing = server
        .baton(&["run", "01J00000000000000000000000"], &[])
        .failed();
    assert!(missing.stderr.contains("404"), "{}", missing.stderr);
    // Nothing listens on port 9 of loopback.
    let down = Run::from(
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["runs", "--url", "http://127.0.0.1:9"])
            .env_remove("BATON_SIGNING_KEY")
            .output()
            .unwrap(),
    )
    .failed();
    assert!(
        down.stderr.contains("could not reach http://127.0.0.1:9"),
        "{}",
        down.stderr
    );
}

/// Changing code under live runs through the binaries: `baton deploy-check` on the dev
/// server's database (compatible; then a run of a function this build no longer has, which
/// it flags and the dev server, restarted, ends with `FunctionRemoved`), and `baton replay
/// --from` restarting a run from its third step.
#[test]
fn deploy_check_restart_from_a_step_and_a_removed_function() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("baton.db");
    let server = DevServer::start_on(&db, &[]);
    let done = server.order_run(r#"{"order_id":"ok","items":["a"]}"#);
    let sleeping = server.order_run(r#"{"order_id":"slow","items":["a"],"cool_down_s":3600}"#);
    server.baton(&["run", &done, "--follow"], &[]).ok();

    // Every unfinished run replays under this build: exit 0.
    let db_arg = server.db.to_str().unwrap().to_owned();
    let check = baton_local(&["deploy-check", "--db", &db_arg]).ok();
    assert!(
        check.stdout.contains("compatible        1"),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains("OK: every unfinished run replays"),
        "{}",
        check.stdout
    );
    let json: serde_json::Value = serde_json::from_str(
        &baton_local(&["deploy-check", "--db", &db_arg, "--json"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["checked"], 1, "{json}");

    // Restart the completed run from its third step.
    let restarted = server
        .baton(&["replay", &done, "--from", "charge-card"], &[])
        .ok();
    assert!(
        restarted.stdout.starts_with(&format!(
            "restarted run {done} from step charge-card as run "
        )),
        "{}",
        restarted.stdout
    );
    let new_run = restarted
        .stdout
        .split_whitespace()
        .last()
        .unwrap()
        .to_string();
    server.baton(&["run", &new_run, "--follow"], &[]).ok();
    let shown: serde_json::Value =
        serde_json::from_str(&server.baton(&["run", &new_run, "--json"], &[]).ok().stdout).unwrap();
    assert_eq!(shown["replay_of"], done.as_str(), "{shown}");
    assert_eq!(shown["replay_from"], "charge-card", "{shown}");
    // validate and reserve-stock were reused: their outputs are the first run's.
    let first: serde_json::Value =
        serde_json::from_str(&server.baton(&["run", &done, "--json"], &[]).ok().stdout).unwrap();
    let output_of = |run: &serde_json::Value, step: &str| {
        run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == step)
            .unwrap_or_else(|| panic!("no {step} in {run}"))["output"]
            .clone()
    };
    assert_eq!(
        output_of(&shown, "reserve-stock"),
        output_of(&first, "reserve-stock")
    );
    let bad = server
        .baton(&["replay", &done, "--from", "nope"], &[])
        .failed();
    assert!(
        bad.stderr.contains("404") && bad.stderr.contains("nope"),
        "{}",
        bad.stderr
    );
    drop(server);

    // A run of a function this build does not have (as if an older build had started it).
    let orphan = "01J0000000000000000000ORPH";
    insert_orphan_run(&db, orphan);
    let check = baton_local(&["deploy-check", "--db", &db_arg]).failed();
    assert!(
        check.stdout.contains("function removed  1"),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains(&format!("{orphan} retired-report")),
        "{}",
        check.stdout
    );
    let json: serde_json::Value = serde_json::from_str(
        &baton_local(&["deploy-check", "--db", &db_arg, "--json"])
            .failed()
            .stdout,
    )
    .unwrap();
    assert_eq!(json["function_removed"], 1, "{json}");
    assert_eq!(json["runs"][0]["verdict"], "function_removed", "{json}");

    // The dev server, started again on it, ends that run (its sweep at start) and nothing else.
    let server = DevServer::start_on(&db, &[]);
    let ended = server.baton(&["run", orphan, "--follow"], &[]).failed();
    assert!(
        ended.stderr.contains("FunctionRemoved"),
        "{}\n{}",
        ended.stdout,
        ended.stderr
    );
    let shown = server.baton(&["run", &sleeping, "--json"], &[]).ok();
    assert!(shown.stdout.contains("\"Running\""), "{}", shown.stdout);
    let missing = baton_local(&["deploy-check", "--db", "/nonexistent/baton.db"]).failed();
    assert!(
        missing.stderr.contains("does not exist"),
        "{}",
        missing.stderr
    );
}

/// Writes [`orphan_run`] into the store at `db`.
fn insert_orphan_run(db: &Path, run_id: &str) {
    use baton::Store as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = baton_sqlite::SqliteStore::open(db, baton_sqlite::Durability::Normal).unwrap();
        assert!(store.create_run(&orphan_run(run_id)).await.unwrap());
    });
}

/// A Running run of function `retired-report`, which this build does not have (as if an older
/// build had started it).
fn orphan_run(run_id: &str) -> baton::model::RunRecord {
    let event = baton::model::EventRecord {
        id: format!("{run_id}-event"),
        name: "demo/report.requested".into(),
        data: serde_json::json!({}),
        ts: 1_700_000_000_000,
        user: serde_json::json!({}),
        v: None,
        idempotency_id: None,
    };
    baton::model::RunRecord {
        run_id: run_id.into(),
        function_id: "retired-report".into(),
        event_id: event.id.clone(),
        event,
        status: baton::RunStatus::Running,
        started_at: chrono::Utc::now(),
        ended_at: None,
        output: None,
        error: None,
        progress: None,
        replay_of: None,
        replay_from: None,
    }
}

/// `baton deploy-check --table` against a DynamoDB table on moto, with the usual AWS
/// configuration from the environment (the endpoint in AWS_ENDPOINT_URL): an empty table
/// passes, a run of a function this build lacks fails the check.
#[test]
fn deploy_check_reads_a_dynamodb_table() {
    use baton::Store as _;
    let endpoint = baton_testkit::moto::endpoint();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = runtime.block_on(baton_testkit::moto::fresh_store());
    let table = store.table().to_owned();
    let check = |json: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
        command
            .args(["deploy-check", "--table", &table])
            .env_remove("BATON_DB")
            .env_remove("AWS_PROFILE")
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "warn");
        if json {
            command.arg("--json");
        }
        Run::from(command.output().expect("baton runs"))
    };
    let empty = check(false).ok();
    assert!(
        empty
            .stdout
            .contains(&format!("0 unfinished runs in DynamoDB table {table}")),
        "{}",
        empty.stdout
    );
    let orphan = "01J0000000000000000000DYNM";
    runtime.block_on(async { assert!(store.create_run(&orphan_run(orphan)).await.unwrap()) });
    let found = check(true).failed();
    let json: serde_json::Value = serde_json::from_str(&found.stdout).unwrap();
    assert_eq!(json["function_removed"], 1, "{json}");
    assert_eq!(json["runs"][0]["run_id"], orphan, "{json}");
}
