//! The `baton` CLI as a user runs it: the real binary against a real `baton dev` on 127.0.0.1
//! (ephemeral port, temporary database): `send`, `runs`, `run --follow`, `cancel`, `replay`,
//! `functions`, the keys from the environment, and exit codes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

struct DevServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl DevServer {
    fn start(env: &[(&str, &str)]) -> DevServer {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
        command
            .args(["dev", "--port", "0", "--durability", "normal", "--db"])
            .arg(dir.path().join("baton.db"))
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
            _dir: dir,
        }
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
    let sent = server
        .baton(
            &["send", ORDER, "--data", r#"{"order_id":"o-2","items":[]}"#],
            &[],
        )
        .ok();
    let run_id = sent.id_after("run", "process-order");
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
    let failed = server
        .baton(
            &["send", ORDER, "--data", r#"{"order_id":"bad","items":[]}"#],
            &[],
        )
        .ok()
        .id_after("run", "process-order");
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
