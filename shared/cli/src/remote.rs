//! The commands that talk to a Baton API (the local dev server, or a deployment with `--url`):
//! `send`, `runs`, `run` (with `--follow`), `cancel`, `replay`, `functions`.
//!
//! Keys come from the environment, as the server's do: `BATON_SIGNING_KEY` is sent as
//! `Authorization: Bearer` on `/v1` calls, and events go to `POST /e/{BATON_EVENT_KEY}` (the
//! first key of the list; `local` when unset, which the dev server accepts when it has no
//! event keys configured).

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use baton_http::dashboard::html::{duration, millis};
use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The dev server's address, the default of `--url`.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8288";
/// The event key used when `BATON_EVENT_KEY` is not set.
pub const DEFAULT_EVENT_KEY: &str = "local";

/// An API client: base URL and keys.
pub struct Client {
    http: reqwest::Client,
    base: String,
    signing_key: Option<String>,
    event_key: String,
}

/// Percent-encodes a path segment (ids are ULIDs, but a typo should not change the path).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client for `url` with the keys from the environment.
    pub fn from_env(url: &str) -> anyhow::Result<Client> {
        let signing_key = std::env::var("BATON_SIGNING_KEY")
            .ok()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty());
        let event_key = std::env::var("BATON_EVENT_KEY")
            .ok()
            .and_then(|keys| {
                keys.split(',')
                    .map(str::trim)
                    .find(|k| !k.is_empty())
                    .map(String::from)
            })
            .unwrap_or_else(|| DEFAULT_EVENT_KEY.to_string());
        Client::new(url, signing_key, event_key)
    }

    pub fn new(
        url: &str,
        signing_key: Option<String>,
        event_key: String,
    ) -> anyhow::Result<Client> {
        let base = url.trim().trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--url must be an http:// or https:// URL, got {url:?}");
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("baton-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            base,
            signing_key,
            event_key,
        })
    }

    /// One call: the JSON answer of a 2xx, or an error saying what the API said.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if method == Method::POST {
            // Replays honour it: a request that reached the server twice starts its runs once.
            request = request.header("idempotency-key", ulid::Ulid::new().to_string());
        }
        if let Some(key) = self
            .signing_key
            .as_ref()
            .filter(|_| path.starts_with("/v1"))
        {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            let hint = if e.is_connect() || e.is_timeout() {
                if self.base == DEFAULT_URL {
                    " (is `baton dev` running? --url points at another server)"
                } else {
                    " (is --url right?)"
                }
            } else {
                ""
            };
            anyhow::anyhow!("could not reach {}{hint}: {e}", self.base)
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| text.chars().take(200).collect());
        let hint = match status {
            StatusCode::UNAUTHORIZED if path.starts_with("/v1") => {
                if self.signing_key.is_some() {
                    " (BATON_SIGNING_KEY is not this server's signing key)"
                } else {
                    " (set BATON_SIGNING_KEY to the server's signing key)"
                }
            }
            StatusCode::UNAUTHORIZED => " (set BATON_EVENT_KEY to one of the server's event keys)",
            _ => "",
        };
        bail!("{method} {path}: {status}: {message}{hint}")
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub async fn run(&self, run_id: &str) -> anyhow::Result<Value> {
        Ok(self.get(&format!("/v1/runs/{}", segment(run_id))).await?["data"].take())
    }
}

// ---- formatting ----

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn short_time(v: &Value) -> String {
    parse_time(v).map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// Start to end (or to now, with `…`, for a run still going).
fn run_duration(run: &Value) -> String {
    let Some(start) = parse_time(&run["run_started_at"]) else {
        return "-".into();
    };
    match parse_time(&run["ended_at"]) {
        Some(end) => duration(end - start),
        None => format!("{}…", duration(Utc::now() - start)),
    }
}

fn progress_of(run: &Value) -> Option<(u64, String)> {
    let p = &run["progress"];
    let percent = p["percent"].as_u64()?;
    Some((
        percent.min(100),
        p["message"].as_str().unwrap_or("").to_string(),
    ))
}

fn error_of(v: &Value) -> Option<String> {
    let e = &v["error"];
    let message = e["message"].as_str()?;
    Some(match e["name"].as_str() {
        Some(name) => format!("{name}: {message}"),
        None => message.to_string(),
    })
}

fn one_line(v: &Value, max: usize) -> String {
    let s = serde_json::to_string(v).unwrap_or_default();
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max).collect::<String>())
    } else {
        s
    }
}

/// A run's header, progress, step timeline, output or error: what `baton run ID` prints.
pub fn timeline(run: &Value) -> String {
    let mut out = String::new();
    let line = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(
        &mut out,
        format!(
            "run {}  {}  {}",
            str_of(&run["run_id"]),
            str_of(&run["function_id"]),
            str_of(&run["status"])
        ),
    );
    line(
        &mut out,
        format!(
            "  event     {}  {}",
            str_of(&run["event_id"]),
            str_of(&run["event_name"])
        ),
    );
    if let Some(old) = run["replay_of"].as_str() {
        line(&mut out, format!("  replay of {old}"));
    }
    line(
        &mut out,
        format!(
            "  started   {}   ended {}   took {}",
            short_time(&run["run_started_at"]),
            short_time(&run["ended_at"]),
            run_duration(run)
        ),
    );
    if let Some((percent, message)) = progress_of(run) {
        line(&mut out, format!("  progress  {percent}% {message}"));
    }
    let steps = run["steps"].as_array().cloned().unwrap_or_default();
    if !steps.is_empty() {
        let t0 = parse_time(&run["run_started_at"]);
        line(&mut out, "  steps".into());
        line(
            &mut out,
            format!(
                "    {:<3} {:<24} {:<9} {:<10} {:>8} {:>10} {:>10}  result",
                "#", "step", "kind", "status", "attempts", "start", "duration"
            ),
        );
        for (i, step) in steps.iter().enumerate() {
            let kind = str_of(&step["kind"]);
            let begin = if kind == "Sleep" {
                parse_time(&step["planned_at"])
            } else {
                parse_time(&step["started_at"]).or_else(|| parse_time(&step["planned_at"]))
            };
            let start = match (t0, begin) {
                (Some(t0), Some(b)) => format!("+{}", duration(b - t0)),
                _ => "-".into(),
            };
            let took = match (begin, parse_time(&step["ended_at"])) {
                (Some(b), Some(e)) => duration(e - b),
                (Some(b), None) if kind != "Sleep" && step["status"] == "Running" => {
                    format!("{}…", duration(Utc::now() - b))
                }
                _ => "-".into(),
            };
            let attempts = if kind == "Run" {
                step["attempts"].to_string()
            } else {
                "-".into()
            };
            let mut result = String::new();
            match step["status"].as_str() {
                Some("Sleeping") => {
                    result = format!("sleeping until {}", short_time(&step["wake_at"]))
                }
                Some("Waiting") => result = "waiting".into(),
                _ => {}
            }
            if let Some(error) = error_of(step) {
                let retrying = step["status"] != "Failed";
                result = format!("error {error}{}", if retrying { " (retrying)" } else { "" });
            } else if !step["output"].is_null() {
                result = format!("→ {}", one_line(&step["output"], 60));
            }
            line(
                &mut out,
                format!(
                    "    {:<3} {:<24} {:<9} {:<10} {:>8} {:>10} {:>10}  {}",
                    i,
                    str_of(&step["id"]),
                    kind,
                    str_of(&step["status"]),
                    attempts,
                    start,
                    took,
                    result
                ),
            );
        }
    }
    if let Some(error) = error_of(run) {
        line(&mut out, format!("  error     {error}"));
    } else if !run["output"].is_null() {
        line(
            &mut out,
            format!(
                "  output    {}",
                serde_json::to_string_pretty(&run["output"])
                    .unwrap_or_default()
                    .replace('\n', "\n            ")
            ),
        );
    }
    out
}

// ---- commands ----

/// `baton send NAME --data JSON [--id ID]`: prints the event id and the runs it started.
pub async fn send(client: &Client, name: &str, data: &str, id: Option<&str>) -> anyhow::Result<()> {
    let data: Value =
        serde_json::from_str(data).with_context(|| format!("--data is not valid JSON: {data}"))?;
    if !data.is_object() {
        bail!("--data must be a JSON object, e.g. '{{\"order_id\":\"o-1\"}}'");
    }
    let mut event = json!({"name": name, "data": data});
    if let Some(id) = id {
        event["id"] = Value::String(id.to_string());
    }
    let path = format!("/e/{}", segment(&client.event_key));
    let reply = client.call(Method::POST, &path, Some(event)).await?;
    let event_id = reply["ids"][0]
        .as_str()
        .context("the API returned no event id")?
        .to_string();
    println!("event {event_id}  {name}");
    match client
        .get(&format!("/v1/events/{}/runs", segment(&event_id)))
        .await
    {
        Ok(runs) => {
            let runs = runs["data"].as_array().cloned().unwrap_or_default();
            if runs.is_empty() {
                println!("  no function is triggered by {name}");
            }
            for run in runs {
                println!(
                    "  run {}  {}  {}",
                    str_of(&run["run_id"]),
                    str_of(&run["function_id"]),
                    str_of(&run["status"])
                );
            }
        }
        Err(e) => eprintln!("(could not list the runs it started: {e})"),
    }
    Ok(())
}

/// `baton runs [--function F] [--status S] [--limit N] [--cursor C]`.
pub async fn runs(
    client: &Client,
    function: Option<&str>,
    status: Option<&str>,
    limit: usize,
    cursor: Option<&str>,
    as_json: bool,
) -> anyhow::Result<()> {
    let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
    if let Some(f) = function {
        query.push(("function_id", f.to_string()));
    }
    if let Some(s) = status {
        query.push(("status", s.to_string()));
    }
    if let Some(c) = cursor {
        query.push(("cursor", c.to_string()));
    }
    let qs = query
        .iter()
        .map(|(k, v)| format!("{k}={}", segment(v)))
        .collect::<Vec<_>>()
        .join("&");
    let page = client.get(&format!("/v1/runs?{qs}")).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(());
    }
    let runs = page["data"].as_array().cloned().unwrap_or_default();
    if runs.is_empty() {
        println!("no runs");
        return Ok(());
    }
    println!(
        "{:<26}  {:<24}  {:<9}  {:<19}  {:>10}  progress",
        "run", "function", "status", "started (UTC)", "duration"
    );
    for run in &runs {
        let progress = progress_of(run)
            .map(|(p, m)| format!("{p}% {m}"))
            .unwrap_or_default();
        let error = error_of(run).map(|e| format!("  {e}")).unwrap_or_default();
        println!(
            "{:<26}  {:<24}  {:<9}  {:<19}  {:>10}  {progress}{error}",
            str_of(&run["run_id"]),
            str_of(&run["function_id"]),
            str_of(&run["status"]),
            short_time(&run["run_started_at"]),
            run_duration(run),
        );
    }
    if let Some(next) = page["cursor"].as_str() {
        let mut again = String::from("baton runs");
        if let Some(f) = function {
            again.push_str(&format!(" --function {f}"));
        }
        if let Some(s) = status {
            again.push_str(&format!(" --status {s}"));
        }
        println!("more: {again} --cursor {next}");
    }
    Ok(())
}

/// What `baton run` ends with: the process exit code by the run's status.
pub enum RunEnd {
    /// Completed, or (not followed) still Queued or Running.
    Ok,
    /// Failed or Cancelled.
    NotCompleted,
}

/// `baton run ID [--follow]`.
pub async fn run(
    client: &Client,
    run_id: &str,
    follow: bool,
    interval: Duration,
    as_json: bool,
) -> anyhow::Result<RunEnd> {
    let mut run = client.run(run_id).await?;
    if follow {
        run = follow_run(client, run_id, run, interval).await?;
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&run)?);
    } else {
        print!("{}", timeline(&run));
    }
    match run["status"].as_str() {
        Some("Completed") => Ok(RunEnd::Ok),
        // Not ended yet (without --follow): not a failure.
        Some("Queued" | "Running") if !follow => Ok(RunEnd::Ok),
        status => {
            eprintln!(
                "run {run_id} {}: {}",
                status.unwrap_or("ended"),
                error_of(&run).unwrap_or_else(|| "no error recorded".into())
            );
            Ok(RunEnd::NotCompleted)
        }
    }
}

fn ended(run: &Value) -> bool {
    matches!(
        run["status"].as_str(),
        Some("Completed" | "Failed" | "Cancelled")
    )
}

/// One line per step change: started, retried, finished, sleeping.
fn step_events(run: &Value, seen: &mut Vec<(String, String, u64)>) -> Vec<String> {
    let mut lines = Vec::new();
    for step in run["steps"].as_array().into_iter().flatten() {
        let id = str_of(&step["id"]).to_string();
        let status = str_of(&step["status"]).to_string();
        let attempts = step["attempts"].as_u64().unwrap_or(0);
        let key = (id.clone(), status.clone(), attempts);
        if seen.contains(&key) {
            continue;
        }
        seen.retain(|(i, _, _)| *i != id);
        seen.push(key);
        let line = match status.as_str() {
            "Completed" => {
                let took = match (
                    parse_time(&step["started_at"]).or_else(|| parse_time(&step["planned_at"])),
                    parse_time(&step["ended_at"]),
                ) {
                    (Some(b), Some(e)) => format!(" in {}", duration(e - b)),
                    _ => String::new(),
                };
                format!("  ✓ {id}{took}")
            }
            "Failed" => format!(
                "  ✗ {id}: {}",
                error_of(step).unwrap_or_else(|| "failed".into())
            ),
            "Sleeping" => format!("  … {id} sleeping until {}", short_time(&step["wake_at"])),
            "Waiting" => format!(
                "  … {id} waiting for an event{}",
                parse_time(&step["wake_at"]).map_or_else(String::new, |t| format!(
                    " (until {})",
                    t.format("%Y-%m-%d %H:%M:%S")
                ))
            ),
            "Planned" if attempts > 0 => format!(
                "  ↻ {id} attempt {attempts} failed: {} (retrying)",
                error_of(step).unwrap_or_default()
            ),
            "Running" if attempts > 1 => format!("  ▶ {id} attempt {attempts}"),
            "Running" => format!("  ▶ {id}"),
            _ => continue,
        };
        lines.push(line);
    }
    lines
}

/// Polls the run until it ends, drawing its progress: a bar on a terminal, lines otherwise.
async fn follow_run(
    client: &Client,
    run_id: &str,
    mut run: Value,
    interval: Duration,
) -> anyhow::Result<Value> {
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        let bar = indicatif::ProgressBar::new(100);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:40.cyan/blue}] {pos:>3}% {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Some(bar)
    } else {
        None
    };
    let mut seen = Vec::new();
    let mut last: Option<(u64, String, String)> = None;
    let mut failures = 0;
    loop {
        let status = str_of(&run["status"]).to_string();
        let (mut percent, message) = progress_of(&run).unwrap_or((0, String::new()));
        if status == "Completed" {
            percent = 100;
        }
        let now = (percent, message.clone(), status.clone());
        if last.as_ref() != Some(&now) {
            match &bar {
                Some(bar) => {
                    bar.set_position(percent);
                    bar.set_message(if message.is_empty() {
                        status.clone()
                    } else {
                        format!("{status}: {message}")
                    });
                }
                None => println!(
                    "[{percent:>3}%] {status}{}",
                    if message.is_empty() {
                        String::new()
                    } else {
                        format!(": {message}")
                    }
                ),
            }
            last = Some(now);
        }
        // Progress first: the first line says where the run is, then what its steps did.
        for line in step_events(&run, &mut seen) {
            match &bar {
                Some(bar) => bar.println(line),
                None => println!("{line}"),
            }
        }
        if ended(&run) {
            if let Some(bar) = &bar {
                // The final state is in the timeline printed next.
                bar.finish_and_clear();
            }
            return Ok(run);
        }
        tokio::time::sleep(interval).await;
        match client.run(run_id).await {
            Ok(next) => {
                run = next;
                failures = 0;
            }
            // A restarting dev server or a blip: keep following for a while.
            Err(e) if failures < 20 => {
                failures += 1;
                if failures == 1 {
                    let line = format!("  (retrying: {e})");
                    match &bar {
                        Some(bar) => bar.println(line),
                        None => eprintln!("{line}"),
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// `baton cancel ID`.
pub async fn cancel(client: &Client, run_id: &str) -> anyhow::Result<()> {
    let reply = client
        .call(
            Method::DELETE,
            &format!("/v1/runs/{}", segment(run_id)),
            None,
        )
        .await?;
    println!(
        "cancelled run {run_id} ({})",
        str_of(&reply["data"]["status"])
    );
    Ok(())
}

/// `baton replay ID`.
/// `baton replay ID [--from STEP]`: from the start, or restarted from one of its steps (the
/// steps before it keep their recorded results).
pub async fn replay_one(client: &Client, run_id: &str, from: Option<&str>) -> anyhow::Result<()> {
    let body = from.map(|step| serde_json::json!({ "from_step": step }));
    let reply = client
        .call(
            Method::POST,
            &format!("/v1/runs/{}/replay", segment(run_id)),
            body,
        )
        .await?;
    let new_run = str_of(&reply["data"]["run_id"]);
    match from {
        Some(step) => println!("restarted run {run_id} from step {step} as run {new_run}"),
        None => println!("replayed run {run_id} as run {new_run}"),
    }
    Ok(())
}

/// `baton replay --function F --status Failed --since 1h [--until 10m]`.
pub async fn replay_many(
    client: &Client,
    function: &str,
    status: &str,
    since: Duration,
    until: Option<Duration>,
) -> anyhow::Result<()> {
    let now = Utc::now();
    let ago = |d: Duration| -> anyhow::Result<DateTime<Utc>> {
        Ok(now - chrono::Duration::from_std(d).context("duration out of range")?)
    };
    let after = ago(since)?;
    let mut body = json!({
        "function_id": function,
        "status": status,
        "started_after": after.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    if let Some(until) = until {
        let before = ago(until)?;
        if before <= after {
            bail!("--until must be shorter than --since (the window ends before it starts)");
        }
        body["started_before"] =
            Value::String(before.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    }
    // One page per request (the server's bulk limit), until no cursor comes back.
    let mut ids = Vec::new();
    loop {
        let reply = client
            .call(Method::POST, "/v1/replays", Some(body.clone()))
            .await?;
        let data = &reply["data"];
        ids.extend(data["run_ids"].as_array().cloned().unwrap_or_default());
        for unreadable in data["unreadable"].as_array().into_iter().flatten() {
            eprintln!(
                "skipped run {}: its stored row could not be read",
                str_of(unreadable)
            );
        }
        match data["cursor"].as_str() {
            Some(cursor) => body["cursor"] = Value::String(cursor.to_owned()),
            None => break,
        }
    }
    println!(
        "replayed {} {status} run{} of {function} started in the last {}{}",
        ids.len(),
        if ids.len() == 1 { "" } else { "s" },
        humantime::format_duration(since),
        until.map_or_else(String::new, |u| format!(
            " (until {} ago)",
            humantime::format_duration(u)
        )),
    );
    for id in ids {
        println!("  run {}", str_of(&id));
    }
    Ok(())
}

/// `baton functions [--window 24h]`: each function with its triggers and figures.
pub async fn functions(client: &Client, window: &str) -> anyhow::Result<()> {
    let list = client.get("/v1/functions").await?;
    println!(
        "{:<26}  {:>6}  {:>8}  {:>9}  {:>9}  triggers",
        "function", "runs", "success", "p50", "p95"
    );
    for f in list["data"].as_array().into_iter().flatten() {
        let id = str_of(&f["id"]);
        let stats = client
            .get(&format!(
                "/v1/functions/{}/stats?window={}",
                segment(id),
                segment(window)
            ))
            .await?["data"]
            .take();
        let triggers: Vec<String> = f["triggers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| match (t["event"].as_str(), t["cron"].as_str()) {
                (Some(event), _) => event.to_string(),
                (None, Some(cron)) => format!("cron {cron}"),
                _ => t.to_string(),
            })
            .collect();
        let ms = |v: &Value| v.as_u64().map_or_else(|| "-".into(), millis);
        println!(
            "{:<26}  {:>6}  {:>8}  {:>9}  {:>9}  {}",
            id,
            format!(
                "{}{}",
                stats["runs"],
                if stats["truncated"] == true { "+" } else { "" }
            ),
            stats["success_rate"]
                .as_f64()
                .map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0)),
            ms(&stats["p50_ms"]),
            ms(&stats["p95_ms"]),
            triggers.join(", ")
        );
    }
    println!("(runs started in the last {window})");
    Ok(())
}
