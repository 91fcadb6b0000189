//! `baton`: the command line.
//!
//! - `baton dev`: the local dev server (engine, embedded SQLite store, in-process queue, the
//!   API and the dashboard) with the app's functions registered.
//! - `baton generate`: the deployment files from the function registry.
//! - `baton send`, `runs`, `run` (`--follow`), `cancel`, `replay`, `functions`: the API's
//!   operations against the dev server or, with `--url`, a deployment ([`remote`]).

mod remote;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use baton::api::{self, Keys};
use baton::local::{LocalOptions, LocalRuntime};
use baton::store::sqlite::{Durability, SqliteStore};
use baton_functions::fakes::{Fakes, WebhookTarget};
use baton_functions::services::Services;
use clap::{Parser, Subcommand};

/// The clip webhook secret `baton dev` uses with its fake clip service when
/// BATON_WEBHOOK_SECRET_CLIPS is not set.
const DEV_CLIPS_SECRET: &str = "dev-clips-secret";

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
    /// Write the deployment files generated from the function registry: the handler binaries
    /// (functions/src/bin, functions/Cargo.toml's [[bin]] section), template.yaml, and the
    /// Vercel functions (vercel/api, vercel/Cargo.toml's [[bin]] section, vercel/vercel.json).
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
    /// The workspace root (holding template.yaml, functions/ and vercel/).
    #[arg(long, default_value = ".")]
    root: PathBuf,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,baton=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Dev(args) => dev(args).await,
        Command::Generate(args) => generate(args),
        Command::Send(args) => {
            let client = args.remote.client()?;
            remote::send(&client, &args.name, &args.data, args.id.as_deref()).await
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
        }
        Command::Run(args) => {
            let client = args.remote.client()?;
            match remote::run(&client, &args.id, args.follow, args.interval, args.json).await? {
                remote::RunEnd::Ok => Ok(()),
                remote::RunEnd::NotCompleted => std::process::exit(1),
            }
        }
        Command::Cancel(args) => remote::cancel(&args.remote.client()?, &args.id).await,
        Command::Replay(args) => {
            let client = args.remote.client()?;
            match (&args.id, &args.function, args.since) {
                (Some(id), _, _) => remote::replay_one(&client, id).await,
                (None, Some(function), Some(since)) => {
                    remote::replay_many(&client, function, &args.status, since, args.until).await
                }
                _ => anyhow::bail!("give a run id, or --function and --since"),
            }
        }
        Command::Functions(args) => remote::functions(&args.remote.client()?, &args.window).await,
    }
}

fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    use baton_functions::generate;
    let registry = baton_functions::registry();
    if !args.root.join(generate::FUNCTIONS_MANIFEST).is_file() {
        anyhow::bail!(
            "{} is not the workspace root (no {}); pass --root",
            args.root.display(),
            generate::FUNCTIONS_MANIFEST
        );
    }
    if args.check {
        let drift = generate::check(&args.root, &registry)?;
        if drift.is_empty() {
            println!("generated files are up to date");
            return Ok(());
        }
        for d in &drift {
            eprintln!("{d}");
        }
        eprintln!(
            "{} generated file(s) differ from the registry: run `cargo run -- generate`",
            drift.len()
        );
        std::process::exit(1);
    }
    let changed = generate::write(&args.root, &registry)?;
    if changed.is_empty() {
        println!("generated files are up to date");
    }
    for d in &changed {
        println!("{d}");
    }
    Ok(())
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let store = SqliteStore::open(&args.db, args.durability)
        .with_context(|| format!("opening the store at {}", args.db.display()))?;
    // The examples' outside services: the built-in fakes unless BATON_{SERVICE}_URL is set.
    let fakes = if Services::configured_in_env() {
        None
    } else {
        let fakes = match Fakes::start_on(baton_functions::FAKES_PORT).await {
            Ok(fakes) => fakes,
            Err(_) => Fakes::start().await.context("starting the fake services")?,
        };
        Some(fakes)
    };
    let registry = match &fakes {
        Some(fakes) => baton_functions::registry_with(Services::at(&fakes.base_url)),
        None => baton_functions::registry(),
    };
    let mut registry = registry;
    for (id, pattern) in &args.crons {
        registry = registry.override_cron(id, pattern)?;
    }
    let runtime = LocalRuntime::start(registry, Arc::new(store), LocalOptions::default())
        .await
        .context("starting the local runtime")?;
    let mut keys = Keys::from_env(runtime.engine().registry());
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let url = format!("http://{}", listener.local_addr()?);
    if let Some(fakes) = &fakes {
        // The fake clip service calls back this server, signed with the source's secret.
        let secret = keys
            .webhook_secrets
            .entry("clips".into())
            .or_insert_with(|| DEV_CLIPS_SECRET.into())
            .clone();
        fakes.set_clip_webhook(WebhookTarget {
            baton_url: url.clone(),
            secret,
        });
    }
    let app = api::router(runtime.engine().clone(), keys);
    println!(
        "Baton dev server: {url}  (store: {}, durability: {})",
        args.db.display(),
        args.durability.as_str()
    );
    if let Some(fakes) = &fakes {
        println!(
            "Outside services: fakes at {} (set BATON_<SERVICE>_URL to use real ones)",
            fakes.base_url
        );
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
    println!("Send an event:");
    println!(
        "  baton send demo/order.placed{url_flag} --data '{{\"order_id\":\"o-1\",\"items\":[\"book\"],\"flaky_payment\":true}}'"
    );
    println!(
        "  curl -s {url}/e/dev -H 'content-type: application/json' \\\n    -d '{{\"name\":\"demo/order.placed\",\"data\":{{\"order_id\":\"o-1\",\"items\":[\"book\"],\"flaky_payment\":true}}}}'"
    );
    println!("Then: baton run <run id> --follow{url_flag}   (or curl -s {url}/v1/runs/<run id>)");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

async fn shutdown() {
    let _ = tokio::signal::ctrl_c().await;
}
