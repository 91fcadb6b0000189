//! The dashboard in a real browser: a real `baton dev` (with a signing key, so signing in is
//! part of it) on 127.0.0.1, driven by `node tests/browser/dashboard.mjs` (playwright-core and
//! Debian's headless Chromium): send an order from the page, watch its run complete live, open
//! its timeline, restart it from a step, replay a failed run, cancel, bulk replay, the functions. A screenshot of every
//! page is kept in `target/dashboard-screenshots/` (or `$BATON_SCREENSHOT_DIR`).
//!
//! Needs /usr/bin/chromium (or `$BATON_CHROMIUM`), Node.js 20+ and tests/browser/node_modules:
//! `scripts/install-browser-test` installs them (scripts/test runs it). Missing, the test
//! fails saying so; it does not skip.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SIGNING_KEY: &str = "sk-dashboard-browser-test-0123456789";
/// The whole browser flow takes about 15 s; past this something hangs.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(180);

struct DevServer {
    child: Child,
    url: String,
}

impl DevServer {
    fn start(db: &Path) -> DevServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["dev", "--port", "0", "--durability", "normal", "--db"])
            .arg(db)
            .env("RUST_LOG", "warn")
            .env("BATON_SIGNING_KEY", SIGNING_KEY)
            .env_remove("BATON_EVENT_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("baton dev starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a banner line").unwrap();
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("the URL")
            .to_string();
        std::thread::spawn(move || for _ in lines {});
        DevServer { child, url }
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn missing(what: &str) -> ! {
    panic!(
        "the browser test needs {what}: run scripts/install-browser-test \
         (it installs Debian's chromium and `npm ci`s playwright-core into tests/browser/)"
    )
}

/// Reads a pipe to the end on its own thread.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = pipe.read_to_string(&mut out);
        out
    })
}

#[test]
fn the_dashboard_works_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var_os("BATON_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() {
        missing(&format!("Chromium at {}", chromium.display()));
    }
    let browser_dir = root.join("tests/browser");
    if !browser_dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        missing("playwright-core in tests/browser/node_modules");
    }
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => missing("Node.js (`node`)"),
    }
    let shots = std::env::var_os("BATON_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/dashboard-screenshots"));
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(&dir.path().join("baton.db"));
    let started = Instant::now();
    let mut node = Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .arg(&server.url)
        .arg(&shots)
        .current_dir(&browser_dir)
        .env("BATON_SIGNING_KEY", SIGNING_KEY)
        .env("BATON_CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node starts");
    let stdout = drain(node.stdout.take().unwrap());
    let stderr = drain(node.stderr.take().unwrap());
    let status = loop {
        if let Some(status) = node.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > BROWSER_TIMEOUT {
            let _ = node.kill();
            let _ = node.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    println!("{stdout}");
    eprintln!("{stderr}");
    let status = status.unwrap_or_else(|| {
        panic!("the browser test did not finish within {BROWSER_TIMEOUT:?}:\n{stdout}\n{stderr}")
    });
    assert!(
        status.success(),
        "the browser test failed ({status}):\n{stdout}\n{stderr}"
    );

    // A screenshot of every page, each a real PNG with something on it.
    let mut pngs: Vec<(String, u64)> = std::fs::read_dir(&shots)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().extension().is_some_and(|x| x == "png"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    pngs.sort();
    let names: Vec<&str> = pngs.iter().map(|(n, _)| n.as_str()).collect();
    for page in [
        "sign-in",
        "send-event",
        "event",
        "runs",
        "run-timeline",
        "run-restarted",
        "run-failed",
        "run-replayed",
        "run-cancelled",
        "bulk-replay",
        "functions",
        "function",
        "runs-failed",
    ] {
        assert!(
            names.iter().any(|n| n.ends_with(&format!("-{page}.png"))),
            "no screenshot of {page}: {names:?}"
        );
    }
    for (name, size) in &pngs {
        let bytes = std::fs::read(shots.join(name)).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{name} is not a PNG"
        );
        assert!(*size > 10_000, "{name} is only {size} bytes");
    }
    println!(
        "browser test passed in {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
}
