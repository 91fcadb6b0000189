//! Starting your own app, as the README's "Start your own app" says, outside the examples:
//! a scratch workspace in a temp dir with one new function written against Baton's public
//! API only (its crates by path), its `baton` binary a line handing the CLI its registry. The
//! test generates its handler mains and template with `baton generate`, builds them, runs
//! the app with `baton dev` and completes a run over HTTP; then it adds a second function
//! without regenerating and checks that `baton generate --check` catches the drift.
//!
//! It builds the scratch app with the cargo running the tests, offline, into a target
//! directory of its own beside this one (`target/new-app`: its binaries have the same names as
//! the repo's app's), which a cached target directory keeps between runs.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FUNCTIONS_CARGO_TOML: &str = r#"[package]
name = "my-app"
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
baton = { path = "{shared}/core" }
baton-aws = { path = "{shared}/aws", features = ["lambda", "http"] }
serde = { version = "1", features = ["derive"] }
serde_json = "1"
tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
anyhow = "1"
"#;

const ROOT_CARGO_TOML: &str = r#"[workspace]
members = [".", "functions"]
default-members = [".", "functions"]
resolver = "3"

[package]
name = "my-app-cli"
version = "0.1.0"
edition = "2024"
publish = false

[[bin]]
name = "baton"
path = "src/main.rs"

[dependencies]
my-app = { path = "functions" }
baton-cli = { path = "{shared}/cli" }
"#;

const MAIN_RS: &str = r#"fn main() -> std::process::ExitCode {
    baton_cli::App::new(my_app::registry).main()
}
"#;

/// The one function: a greeting in two steps, the second on the first's output.
const LIB_RS: &str = r#"use std::time::Duration;

use baton::prelude::*;
use serde::Deserialize;

steps! {
    pub const STEPS = [
        NORMALIZE = Step::new("normalize").timeout(Duration::from_secs(5)),
        GREET = Step::new("greet").memory_mb(128),
    ];
}

#[derive(Deserialize)]
pub struct Signup {
    pub name: String,
}

pub fn welcome() -> Function {
    Function::new("welcome")
        .trigger("app/user.signed-up")
        .steps(STEPS)
        .handler(async |ctx: Ctx, event: Event<Signup>| {
            let name: String = ctx
                .step(NORMALIZE, async |_| Ok(event.data.name.trim().to_owned()))
                .await?;
            ctx.progress(50, "normalized");
            let greeting: String = ctx
                .step(GREET, async |s| Ok(format!("welcome, {name} ({})", s.step_id)))
                .await?;
            Ok::<_, Error>(greeting)
        })
}

pub fn registry() -> Registry {
    Registry::new().register(welcome()).expect("valid functions")
}
"#;

/// What the test adds later, without regenerating.
const SECOND_FUNCTION: &str = r#"
pub fn goodbye() -> Function {
    Function::new("goodbye")
        .trigger("app/user.left")
        .step(Step::new("farewell"))
        .handler(async |ctx: Ctx, _event: Event<serde_json::Value>| {
            ctx.step(Step::new("farewell"), async |_| Ok(1)).await
        })
}
"#;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The scratch app's target directory: `new-app` in the one this test binary was built into
/// (…/target/debug/deps/new_app-…).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "debug"))
        .and_then(Path::parent)
        .expect("the test runs from target/debug/deps")
        .join("new-app")
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn cargo(app: &Path, args: &[&str]) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // `cargo <command> --offline <the rest>`: after `--` it would be the program's.
    Command::new(cargo)
        .arg(args[0])
        .arg("--offline")
        .args(&args[1..])
        .current_dir(app)
        .env("CARGO_TARGET_DIR", target_dir())
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap()
}

fn ok(what: &str, output: Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `baton dev` of the scratch app, killed when dropped.
struct Dev(Child, String);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dev(baton: &Path, db: &Path) -> Dev {
    let mut child = Command::new(baton)
        .args(["dev", "--port", "0", "--db"])
        .arg(db)
        .env_remove("BATON_EVENT_KEY")
        .env_remove("BATON_SIGNING_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("baton dev printed its URL").unwrap();
        if let Some(rest) = line.strip_prefix("Baton dev server: ") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep reading what it prints, so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Dev(child, url)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_app_generates_builds_runs_and_catches_drift() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("my-app");
    let shared = repo().join("shared");
    let shared = shared.to_str().unwrap();
    write(
        &app.join("Cargo.toml"),
        &ROOT_CARGO_TOML.replace("{shared}", shared),
    );
    write(
        &app.join("functions/Cargo.toml"),
        &FUNCTIONS_CARGO_TOML.replace("{shared}", shared),
    );
    write(&app.join("functions/src/lib.rs"), LIB_RS);
    write(&app.join("src/main.rs"), MAIN_RS);
    // The framework's dependency versions, so the build reuses what is compiled (and needs
    // no network).
    std::fs::copy(repo().join("Cargo.lock"), app.join("Cargo.lock")).unwrap();

    let started = Instant::now();
    let generated = ok(
        "baton generate",
        cargo(&app, &["run", "-q", "--bin", "baton", "--", "generate"]),
    );
    for file in [
        "template.yaml",
        "functions/src/bin/lambda-worker.rs",
        "functions/src/bin/lambda-api.rs",
        "functions/src/bin/lambda-dashboard.rs",
    ] {
        assert!(
            generated.contains(&format!("created {file}")),
            "{generated}"
        );
        assert!(app.join(file).is_file(), "{file}");
    }
    assert!(
        !app.join("vercel").exists(),
        "no Vercel project unless asked"
    );
    let template = std::fs::read_to_string(app.join("template.yaml")).unwrap();
    for resource in [
        "ContinueWelcomeFunction:",
        "StepWelcomeNormalizeFunction:",
        "StepWelcomeGreetQueue:",
        "RouteEventsFunction:",
    ] {
        assert!(
            template.contains(resource),
            "{resource} not in the template"
        );
    }
    let worker = std::fs::read_to_string(app.join("functions/src/bin/lambda-worker.rs")).unwrap();
    assert!(
        worker.contains("run_worker(my_app::registry())"),
        "{worker}"
    );
    assert_eq!(
        ok(
            "generate --check",
            cargo(
                &app,
                &["run", "-q", "--bin", "baton", "--", "generate", "--check"]
            ),
        )
        .trim(),
        "generated files are up to date"
    );

    // Its handlers build (the Lambda mains and the CLI).
    ok("cargo build", cargo(&app, &["build", "-q", "--bins"]));
    let bins = target_dir().join("debug");
    for bin in ["lambda-worker", "lambda-api", "lambda-dashboard", "baton"] {
        assert!(bins.join(bin).is_file(), "{bin} was not built");
    }
    eprintln!("scratch app generated and built in {:?}", started.elapsed());

    // `baton dev` runs it: an event in, a completed run out.
    let server = dev(&bins.join("baton"), &dir.path().join("baton.db"));
    let client = reqwest::Client::new();
    let sent: serde_json::Value = client
        .post(format!("{}/e/dev", server.1))
        .json(&serde_json::json!({"name": "app/user.signed-up", "data": {"name": "  Ada "}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let event_id = sent["ids"][0].as_str().expect("an event id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let run = loop {
        let runs: serde_json::Value = client
            .get(format!("{}/v1/events/{event_id}/runs", server.1))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(run) = runs["data"]
            .as_array()
            .and_then(|r| r.first())
            .filter(|r| r["status"] == "Completed" || r["status"] == "Failed")
        {
            break run.clone();
        }
        assert!(Instant::now() < deadline, "no ended run: {runs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(run["status"], "Completed", "{run}");
    assert_eq!(run["output"], "welcome, Ada (greet)");
    drop(server);

    // A second function, registered but not generated: the drift check says so.
    let lib = LIB_RS.replace(
        "Registry::new().register(welcome())",
        "Registry::new().register(welcome()).and_then(|r| r.register(goodbye()))",
    ) + SECOND_FUNCTION;
    write(&app.join("functions/src/lib.rs"), &lib);
    let check = cargo(
        &app,
        &["run", "-q", "--bin", "baton", "--", "generate", "--check"],
    );
    assert!(!check.status.success(), "the drift went unnoticed");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(stderr.contains("out of date: template.yaml"), "{stderr}");
    assert!(stderr.contains("run `cargo run -- generate`"), "{stderr}");
}
