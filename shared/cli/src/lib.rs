//! Baton's command line as a library. An app's `baton` binary is a few lines that hand it the
//! app's registry and its development hooks:
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     baton_cli::App::new(app::registry).dev(app::dev::start).main()
//! }
//! ```
//!
//! and gets every command:
//!
//! - `baton dev`: the local dev server (engine, embedded SQLite store, in-process queue, the
//!   API and the dashboard) with the app's functions.
//! - `baton generate [--check | --idle-cost]`: the deployment files from the registry
//!   (`baton_deploy`), or what the stack costs idle.
//! - `baton send`, `runs`, `run` (`--follow`), `cancel`, `replay` (`--from STEP`),
//!   `functions`: the API's operations against the dev server or, with `--url`, a deployment
//!   ([`remote`]).
//! - `baton deploy-check [--table T] [--json]`: every unfinished run dry-replayed against the
//!   app's functions before a deploy ([`deploy_check`]).

pub mod deploy_check;
pub mod remote;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;
use std::future::Future;
use std::process::ExitCode;

use anyhow::Context as _;
use baton::Registry;
use baton::local::{LocalOptions, LocalRuntime};
use baton_http::Keys;
use baton_sqlite::{Durability, SqliteStore};
use clap::{Parser, Subcommand};
use futures::future::BoxFuture;
use serde_json::Value;

// ---- what an app hands the CLI ----

/// An app, as its `baton` binary hands it to the CLI: its registry and, for `baton dev`, its
/// development hooks.
pub struct App {
    registry: fn() -> Registry,
    dev: Option<DevHook>,
}

type DevHook = Box<dyn Fn(DevContext) -> BoxFuture<'static, anyhow::Result<DevSetup>>>;

/// What `baton dev` tells the app's dev hook before it serves.
#[derive(Debug, Clone)]
pub struct DevContext {
    /// Where the dev server listens (`http://127.0.0.1:8288`): fakes of outside services that
    /// call back (webhooks) point here.
    pub url: String,
}

/// What the app's dev hook gives `baton dev`: the registry to run (e.g. with its outside
/// services pointed at local fakes), webhook secrets to use where the environment sets none,
/// lines for the banner, an example event, and whatever must live as long as the server
/// (the fakes).
pub struct DevSetup {
    pub registry: Registry,
    pub webhook_secrets: BTreeMap<String, String>,
    pub notes: Vec<String>,
    pub example: Option<(String, Value)>,
    pub keep: Option<Box<dyn std::any::Any + Send>>,
}

impl DevSetup {
    pub fn new(registry: Registry) -> Self {
        DevSetup {
            registry,
            webhook_secrets: BTreeMap::new(),
            notes: Vec::new(),
            example: None,
            keep: None,
        }
    }

    /// The secret of webhook source `source` when `BATON_WEBHOOK_SECRET_{SOURCE}` is not set.
    pub fn webhook_secret(mut self, source: &str, secret: &str) -> Self {
        self.webhook_secrets
            .insert(source.to_owned(), secret.to_owned());
        self
    }

    /// A line for the dev server's banner.
    pub fn note(mut self, line: impl Into<String>) -> Self {
        self.notes.push(line.into());
        self
    }

    /// The event the banner shows how to send.
    pub fn example_event(mut self, name: &str, data: Value) -> Self {
        self.example = Some((name.to_owned(), data));
        self
    }

    /// Kept alive while the server runs.
    pub fn keep(mut self, value: impl std::any::Any + Send) -> Self {
        self.keep = Some(Box::new(value));
        self
    }
}

impl App {
    /// The app's functions: `registry` builds them (outside services from the environment),
    /// for `baton generate` and, without a dev hook, for `baton dev`.
    pub fn new(registry: fn() -> Registry) -> Self {
        App {
            registry,
            dev: None,
        }
    }

    /// What `baton dev` runs before it serves: e.g. start fakes of the app's outside services
    /// and return the registry pointed at them ([`DevSetup`]).
    pub fn dev<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(DevContext) -> Fut + 'static,
        Fut: Future<Output = anyhow::Result<DevSetup>> + Send + 'static,
    {
        self.dev = Some(Box::new(move |cx| Box::pin(hook(cx))));
        self
    }

    /// Parses the command line and runs the command: the `baton` binary's whole `main`.
    pub fn main(self) -> ExitCode {
        let cli = Cli::parse();
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("error: starting the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(self.run(cli)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "Durable functions for serverless Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the local dev server with the app's functions (embedded store, no AWS account).
    Dev(DevArgs),
    /// Write the deployment files generated from the function registry: the Lambda handler
    /// mains (functions/src/bin, functions/Cargo.toml's [[bin]] section), template.yaml, and
    /// the Vercel functions (vercel/api, vercel/Cargo.toml's [[bin]] section, vercel.json).
    Generate(GenerateArgs),
    /// Send an event: every function it triggers starts a run.
    Send(SendArgs),
    /// List runs, newest first.
    Runs(RunsArgs),
    /// Show a run and its step timeline; --follow until it ends.
    Run(RunArgs),
    /// Cancel a run that has not ended.
    Cancel(CancelArgs),
    /// Replay a run, or every failed (or cancelled) run of a function in a time window.
    Replay(ReplayArgs),
    /// List functions with their triggers, success rate and p50/p95 duration.
    Functions(FunctionsArgs),
    /// Before deploying this binary: dry-replay every unfinished run in the store (SQLite, or
    /// a stack's DynamoDB table with --table) against its functions. Exit 1 when a run would
    /// break.
    DeployCheck(deploy_check::DeployCheckArgs),
}

/// Where the API is. Keys come from the environment: BATON_SIGNING_KEY (sent as
/// `Authorization: Bearer` on /v1 calls) and BATON_EVENT_KEY (events; default `local`).
#[derive(clap::Args)]
struct Remote {
    /// The API's base URL: the dev server, or a deployment (the stack's ApiUrl).
    #[arg(long, env = "BATON_URL", default_value = remote::DEFAULT_URL)]
    url: String,
}

impl Remote {
    fn client(&self) -> anyhow::Result<remote::Client> {
        remote::Client::from_env(&self.url)
    }
}

#[derive(clap::Args)]
struct SendArgs {
    /// The event name, e.g. demo/order.placed.
    name: String,
    /// The event's data: a JSON object.
    #[arg(long, default_value = "{}")]
    data: String,
    /// An idempotency id: the same id within 24 h starts nothing new.
    #[arg(long)]
    id: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

#[derive(clap::Args)]
struct RunsArgs {
    /// Only runs of this function.
    #[arg(long)]
    function: Option<String>,
    /// Only runs in this status: Queued, Running, Completed, Failed or Cancelled.
    #[arg(long)]
    status: Option<String>,
    /// Runs per page (1-1000).
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// The page after this cursor (printed at the end of a full page).
    #[arg(long)]
    cursor: Option<String>,
    /// Print the API's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The run id.
    id: String,
    /// Show live progress until the run ends; exit 0 if it completed, 1 if it failed or was
    /// cancelled (the error is printed).
    #[arg(long)]
    follow: bool,
    /// How often --follow asks, e.g. 500ms or 2s.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Print the API's JSON (after following, the final run).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: Remote,
}

#[derive(clap::Args)]
struct CancelArgs {
    /// The run id.
    id: String,
    #[command(flatten)]
    remote: Remote,
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// The run to replay (a new run of the same function on the same event).
    #[arg(required_unless_present = "function", conflicts_with_all = ["function", "since", "until"])]
    id: Option<String>,
    /// Bulk replay: the function whose runs to replay.
    #[arg(long, requires = "since")]
    function: Option<String>,
    /// Bulk replay: runs in this status (Failed or Cancelled).
    #[arg(long, default_value = "Failed", value_parser = ["Failed", "Cancelled"])]
    status: String,
    /// Bulk replay: runs started within this long before now, e.g. 1h, 30m, 7days.
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Bulk replay: and at least this long ago (the window's end), e.g. 10m.
    #[arg(long, value_parser = humantime::parse_duration)]
    until: Option<Duration>,
    /// Restart the run from this step (its id, as `baton run ID` lists it): the steps before
    /// it keep their recorded results; it and the rest run again.
    #[arg(long = "from", value_name = "STEP", requires = "id")]
    from_step: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

#[derive(clap::Args)]
struct FunctionsArgs {
    /// The window of the figures, e.g. 1h, 24h, 7d.
    #[arg(long, default_value = "24h")]
    window: String,
    #[command(flatten)]
    remote: Remote,
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Compare instead of writing: exit non-zero listing the files that differ.
    #[arg(long)]
    check: bool,
    /// Print what the generated stack costs in a month with no traffic, and nothing else.
    #[arg(long, conflicts_with = "check")]
    idle_cost: bool,
    /// The workspace root (holding template.yaml, the app's package and vercel/).
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// The app's package directory, relative to the root.
    #[arg(long, default_value = baton_deploy::DEFAULT_APP_DIR)]
    app: PathBuf,
}

#[derive(clap::Args)]
struct DevArgs {
    /// Port to listen on.
    #[arg(long, env = "BATON_PORT", default_value_t = 8288)]
    port: u16,
    /// Address to bind. Keep 127.0.0.1 unless you mean to expose the server.
    #[arg(long, env = "BATON_HOST", default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// The embedded database file.
    #[arg(long, env = "BATON_DB", default_value = ".baton/baton.db")]
    db: PathBuf,
    /// `full`: every commit is fsynced (survives power loss). `normal`: survives a killed
    /// process, may lose the last commits on power loss; faster.
    #[arg(long, env = "BATON_DURABILITY", default_value = "full")]
    durability: Durability,
    /// Run a cron function on another schedule while developing, e.g.
    /// `--cron 'order-report=*/10 * * * * *'` (every 10 s; a sixth leading field is seconds).
    #[arg(long = "cron", value_name = "FUNCTION=PATTERN", value_parser = parse_cron_override)]
    crons: Vec<(String, String)>,
}

fn parse_cron_override(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(id, pattern)| (id.trim().to_owned(), pattern.trim().to_owned()))
        .filter(|(id, pattern)| !id.is_empty() && !pattern.is_empty())
        .ok_or_else(|| format!("expected FUNCTION=PATTERN, got {s:?}"))
}

impl App {
    async fn run(self, cli: Cli) -> anyhow::Result<ExitCode> {
        init_tracing();
        let ok = |()| ExitCode::SUCCESS;
        match cli.command {
            Command::Dev(args) => self.serve(args).await.map(ok),
            Command::Generate(args) => generate(args, &(self.registry)()),
            Command::Send(args) => {
                let client = args.remote.client()?;
                remote::send(&client, &args.name, &args.data, args.id.as_deref())
                    .await
                    .map(ok)
            }
            Command::Runs(args) => {
                if !(1..=1000).contains(&args.limit) {
                    anyhow::bail!("--limit must be from 1 to 1000");
                }
                let client = args.remote.client()?;
                remote::runs(
                    &client,
                    args.function.as_deref(),
                    args.status.as_deref(),
                    args.limit,
                    args.cursor.as_deref(),
                    args.json,
                )
                .await
                .map(ok)
            }
            Command::Run(args) => {
                let client = args.remote.client()?;
                match remote::run(&client, &args.id, args.follow, args.interval, args.json).await? {
                    remote::RunEnd::Ok => Ok(ExitCode::SUCCESS),
                    remote::RunEnd::NotCompleted => Ok(ExitCode::FAILURE),
                }
            }
            Command::Cancel(args) => remote::cancel(&args.remote.client()?, &args.id)
                .await
                .map(ok),
            Command::Replay(args) => {
                let client = args.remote.client()?;
                match (&args.id, &args.function, args.since) {
                    (Some(id), _, _) => remote::replay_one(&client, id, args.from_step.as_deref())
                        .await
                        .map(ok),
                    (None, Some(function), Some(since)) => {
                        remote::replay_many(&client, function, &args.status, since, args.until)
                            .await
                            .map(ok)
                    }
                    _ => anyhow::bail!("give a run id, or --function and --since"),
                }
            }
            Command::Functions(args) => remote::functions(&args.remote.client()?, &args.window)
                .await
                .map(ok),
            Command::DeployCheck(args) => deploy_check::run(args, (self.registry)()).await,
        }
    }
}

/// Logs to stderr; `RUST_LOG` filters (`info` by default). Colours only on a terminal.
fn init_tracing() {
    use std::io::IsTerminal as _;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn generate(args: GenerateArgs, registry: &Registry) -> anyhow::Result<ExitCode> {
    registry.check()?;
    if args.idle_cost {
        print!("{}", baton_deploy::idle::idle_cost(registry));
        return Ok(ExitCode::SUCCESS);
    }
    let layout = baton_deploy::Layout::discover_in(&args.root, &args.app)?;
    if args.check {
        let drift = baton_deploy::check(&args.root, &layout, registry)?;
        if drift.is_empty() {
            println!("generated files are up to date");
            return Ok(ExitCode::SUCCESS);
        }
        for d in &drift {
            eprintln!("{d}");
        }
        eprintln!(
            "{} generated file(s) differ from the registry: run `cargo run -- generate`",
            drift.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    let changes = baton_deploy::write(&args.root, &layout, registry)?;
    if changes.is_empty() {
        println!("generated files are up to date");
    }
    for change in &changes {
        println!("{change}");
    }
    Ok(ExitCode::SUCCESS)
}

impl App {
    /// `baton dev`: binds, lets the app set up its development services, starts the local
    /// runtime on the embedded store and serves the API and the dashboard until Ctrl-C.
    async fn serve(&self, args: DevArgs) -> anyhow::Result<()> {
        let addr = SocketAddr::new(args.host, args.port);
        // Off loopback, anyone who reaches the address could drive the server: it must
        // check a signing key, and the dev webhook secrets (printed in the source) are off.
        let exposed = !args.host.is_loopback();
        if exposed && std::env::var_os("BATON_SIGNING_KEY").is_none_or(|k| k.is_empty()) {
            anyhow::bail!(
                "refusing to serve on {addr} without a signing key: set BATON_SIGNING_KEY \
                 (and BATON_EVENT_KEY) to expose the server, or keep --host 127.0.0.1"
            );
        }
        let store = SqliteStore::open(&args.db, args.durability)
            .with_context(|| format!("opening the store at {}", args.db.display()))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let url = format!("http://{}", listener.local_addr()?);
        let setup = match &self.dev {
            Some(hook) => hook(DevContext { url: url.clone() })
                .await
                .context("the app's dev hook")?,
            None => DevSetup::new((self.registry)()),
        };
        let mut registry = setup.registry;
        for (id, pattern) in &args.crons {
            registry = registry.override_cron(id, pattern)?;
        }
        let runtime = LocalRuntime::start(registry, Arc::new(store), LocalOptions::default())
            .await
            .context("starting the local runtime")?;
        let mut keys = Keys::from_env(runtime.engine().registry());
        if exposed {
            if keys.event_keys.is_empty() {
                eprintln!(
                    "warning: serving on {addr} with no BATON_EVENT_KEY: anyone who reaches it may send events"
                );
            }
        } else {
            for (source, secret) in setup.webhook_secrets {
                keys.webhook_secrets.entry(source).or_insert(secret);
            }
        }
        let app = baton_http::router(runtime.engine().clone(), keys);
        println!(
            "Baton dev server: {url}  (store: {}, durability: {})",
            args.db.display(),
            args.durability.as_str()
        );
        for note in &setup.notes {
            println!("{note}");
        }
        println!("Functions:");
        for function in runtime.engine().registry().functions() {
            let triggers: Vec<_> = function.triggers.iter().map(|t| t.event.as_str()).collect();
            println!("  {:<28} on {}", function.id, triggers.join(", "));
        }
        println!("Dashboard: {url}/");
        let url_flag = if url == remote::DEFAULT_URL {
            String::new()
        } else {
            format!(" --url {url}")
        };
        if let Some((name, data)) = &setup.example {
            println!("Send an event:");
            println!("  baton send {name}{url_flag} --data '{data}'");
            let event = serde_json::json!({"name": name, "data": data});
            println!(
                "  curl -s {url}/e/dev -H 'content-type: application/json' \\\n    -d '{event}'"
            );
            println!(
                "Then: baton run <run id> --follow{url_flag}   (or curl -s {url}/v1/runs/<run id>)"
            );
        }
        let _keep = setup.keep;
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown())
            .await?;
        Ok(())
    }
}

async fn shutdown() {
    let _ = tokio::signal::ctrl_c().await;
}
