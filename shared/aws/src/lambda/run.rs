//! The Lambda runners: what an app's generated handler mains call. Each is one artifact per
//! handler *kind*, deployed as many Lambda functions (each with its own queue, timeout and
//! memory) as the template gives it:
//!
//! - [`run_worker`]: every step's queue, every function's continue queue, the dead-letter
//!   queues, the sweeper and the cron schedule; `BATON_HANDLER` (set by the template) says
//!   which one this Lambda is.
//! - [`run_api`]: every HTTP route of the API behind API Gateway (HTTP API, payload v2).
//! - [`run_dashboard`]: the dashboard's pages (the API's router with the dashboard).
//! - [`run_relay`] (feature `relay`): the queue of a step hosted on Vercel: each batch is
//!   posted, signed, to the step's Vercel function ([`crate::relay`]).
//!
//! Configuration, all from the environment (template.yaml sets it):
//!
//! | variable                 | |
//! |--------------------------|---|
//! | `BATON_HANDLER`          | worker only: `queue` (default), `dead-letters`, `sweeper` or `cron` |
//! | `BATON_TABLE`            | the DynamoDB table ([`crate::dynamodb::DynamoStore`]) |
//! | `BATON_QUEUE_PREFIX`     | put in front of every queue name ([`crate::sqs::queue_name`]) |
//! | `BATON_QUEUE_URL_PREFIX` | a queue's URL is `{url prefix}{name}`, e.g. `https://sqs.us-east-1.amazonaws.com/123456789012/` |
//! | `BATON_STALE_AFTER_S`    | the sweeper re-drives runs idle this long (default 900) |
//! | `BATON_EVENT_KEY`, `BATON_SIGNING_KEY` | the HTTP routes' keys ([`baton_http::Keys::from_env`]) |
//! | `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ENDPOINT_URL` | what Lambda sets (the endpoint only when given): [`sdk_config_from_env`] |

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use baton::{Engine, Registry};
use lambda_runtime::{LambdaEvent, service_fn};

use crate::dynamodb::DynamoStore;
use crate::sqs::{QueueNaming, SqsQueue};

/// The sweeper's default `BATON_STALE_AFTER_S`.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(900);
/// The variable that tells a worker Lambda which handler it is.
pub const HANDLER_ENV: &str = "BATON_HANDLER";

/// What a worker Lambda handles (`BATON_HANDLER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerKind {
    /// A step's queue or a function's continue queue: SQS batches, partial batch failures.
    Queue,
    /// The dead-letter queues: each message fails its run.
    DeadLetters,
    /// The sweeper's schedule: re-drives stale runs.
    Sweeper,
    /// The cron schedule, every minute: fires the functions' cron ticks.
    Cron,
}

impl WorkerKind {
    pub const ALL: [WorkerKind; 4] = [
        WorkerKind::Queue,
        WorkerKind::DeadLetters,
        WorkerKind::Sweeper,
        WorkerKind::Cron,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerKind::Queue => "queue",
            WorkerKind::DeadLetters => "dead-letters",
            WorkerKind::Sweeper => "sweeper",
            WorkerKind::Cron => "cron",
        }
    }

    /// `BATON_HANDLER`; unset means [`WorkerKind::Queue`].
    pub fn from_env() -> anyhow::Result<Self> {
        let value = std::env::var(HANDLER_ENV).unwrap_or_default();
        let value = value.trim();
        if value.is_empty() {
            return Ok(WorkerKind::Queue);
        }
        WorkerKind::ALL
            .into_iter()
            .find(|k| k.as_str() == value)
            .with_context(|| {
                format!("{HANDLER_ENV}={value:?}: expected queue, dead-letters, sweeper or cron")
            })
    }
}

fn required(name: &str) -> anyhow::Result<String> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => Ok(value),
        _ => bail!(
            "{name} is not set (template.yaml sets it on every Baton Lambda; on Vercel, set it in the project's environment variables from the stack's outputs)"
        ),
    }
}

/// The engine over the DynamoDB table and the SQS queues the environment names, running
/// `registry`'s functions (refused when it fails [`Registry::check`]).
pub async fn engine_from_env(registry: Registry) -> anyhow::Result<Engine> {
    registry.check()?;
    let table = required("BATON_TABLE")?;
    let prefix = std::env::var("BATON_QUEUE_PREFIX").unwrap_or_default();
    let url_prefix = required("BATON_QUEUE_URL_PREFIX")?;
    let config = sdk_config_from_env()?;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&config), table);
    let queue = SqsQueue::new(
        aws_sdk_sqs::Client::new(&config),
        QueueNaming::new(prefix, url_prefix),
    );
    Ok(Engine::new(
        registry,
        Arc::new(store),
        Arc::new(queue),
        Default::default(),
    ))
}

/// The SDK clients' configuration as Lambda (and a Vercel project's environment) gives it:
/// `AWS_REGION`, the credentials in `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
/// `AWS_SESSION_TOKEN`, and `AWS_ENDPOINT_URL` when set. Not aws-config's default chain:
/// Lambda always sets these, and the chain (profiles, SSO, STS web identity, IMDS) would add
/// its code to every handler and its probes to every cold start.
pub fn sdk_config_from_env() -> anyhow::Result<aws_config::SdkConfig> {
    use aws_config::environment::EnvironmentVariableCredentialsProvider;
    use aws_sdk_dynamodb::config::{Region, SharedCredentialsProvider};
    let region = std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .ok()
        .filter(|r| !r.trim().is_empty())
        .context("AWS_REGION is not set (Lambda sets it; on Vercel, set the stack's region)")?;
    let mut config = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(Region::new(region))
        .credentials_provider(SharedCredentialsProvider::new(
            EnvironmentVariableCredentialsProvider::new(),
        ))
        .http_client(https_client());
    if let Ok(url) = std::env::var("AWS_ENDPOINT_URL") {
        if !url.trim().is_empty() {
            config = config.endpoint_url(url.trim());
        }
    }
    Ok(config.build())
}

/// The SDK configuration of a developer's machine or a CI job, for tools run outside Lambda
/// (`baton deploy-check`): aws-config's default chain (the environment, `~/.aws` profiles
/// with static keys or roles to assume, web identity, container and instance roles), the
/// region from `AWS_REGION` or the profile, and `AWS_ENDPOINT_URL` when set. SSO profiles
/// need their credentials exported first (`aws configure export-credentials --format env`).
pub async fn sdk_config_default_chain() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(https_client())
        .load()
        .await
}

/// The SDK clients' HTTPS client: rustls on ring, the system's root certificates.
fn https_client() -> aws_sdk_dynamodb::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// `BATON_STALE_AFTER_S`, or [`DEFAULT_STALE_AFTER`].
pub fn stale_after_from_env() -> anyhow::Result<Duration> {
    match std::env::var("BATON_STALE_AFTER_S") {
        Ok(s) if !s.trim().is_empty() => {
            let secs: u64 = s
                .trim()
                .parse()
                .with_context(|| format!("BATON_STALE_AFTER_S={s:?} is not a number of seconds"))?;
            Ok(Duration::from_secs(secs))
        }
        _ => Ok(DEFAULT_STALE_AFTER),
    }
}

/// Logs to stdout (CloudWatch, Vercel's function logs) without colours or timestamps (both
/// add their own); `RUST_LOG` filters (`info`, or targets and levels as in
/// `baton=debug,info`), `info` by default. (A `Targets` filter, not `EnvFilter`: no regex
/// engine in every handler.)
pub(crate) fn init_tracing() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .without_time()
                .with_filter(filter),
        )
        .try_init();
}

fn lambda_error(e: lambda_runtime::Error) -> anyhow::Error {
    anyhow::anyhow!("lambda runtime: {e}")
}

/// A worker Lambda: a queue consumer, the dead letters, the sweeper or the cron schedule, as
/// `BATON_HANDLER` says.
pub async fn run_worker(registry: Registry) -> anyhow::Result<()> {
    init_tracing();
    let kind = WorkerKind::from_env()?;
    let engine = engine_from_env(registry).await?;
    let engine = &engine;
    match kind {
        WorkerKind::Queue => {
            lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
                let deadline = deadline_of(&event.context);
                Ok::<SqsBatchResponse, lambda_runtime::Error>(
                    super::handle_queue_batch(engine, event.payload, Some(deadline)).await,
                )
            }))
            .await
        }
        WorkerKind::DeadLetters => {
            lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
                Ok::<SqsBatchResponse, lambda_runtime::Error>(
                    super::handle_dead_letters(engine, event.payload).await,
                )
            }))
            .await
        }
        WorkerKind::Sweeper => {
            let stale_after = stale_after_from_env()?;
            lambda_runtime::run(service_fn(
                move |event: LambdaEvent<EventBridgeEvent>| async move {
                    let redriven = super::handle_schedule(engine, event.payload, stale_after)
                        .await
                        .map_err(|e| lambda_runtime::Error::from(e.to_string()))?;
                    Ok::<_, lambda_runtime::Error>(serde_json::json!({ "redriven": redriven }))
                },
            ))
            .await
        }
        WorkerKind::Cron => {
            lambda_runtime::run(service_fn(
                move |event: LambdaEvent<EventBridgeEvent>| async move {
                    let fired = super::handle_cron_schedule(engine, event.payload)
                        .await
                        .map_err(|e| lambda_runtime::Error::from(e.to_string()))?;
                    Ok::<_, lambda_runtime::Error>(serde_json::json!({ "fired": fired }))
                },
            ))
            .await
        }
    }
    .map_err(lambda_error)
}

/// The invocation's deadline (milliseconds since the epoch in the context) as an instant.
fn deadline_of(context: &lambda_runtime::Context) -> tokio::time::Instant {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    tokio::time::Instant::now()
        + std::time::Duration::from_millis(context.deadline.saturating_sub(now_ms))
}

/// Every HTTP route of the API behind API Gateway (HTTP API, payload format 2.0): the API's
/// router, so every route Lambda answers the same way; API Gateway sends each only its own.
#[cfg(feature = "http")]
pub async fn run_api(registry: Registry) -> anyhow::Result<()> {
    init_tracing();
    let engine = engine_from_env(registry).await?;
    let keys = baton_http::Keys::from_env(engine.registry());
    lambda_http::run(baton_http::api_router(engine, keys))
        .await
        .map_err(lambda_error)
}

/// The dashboard's route: the API's router with the dashboard's pages.
#[cfg(feature = "http")]
pub async fn run_dashboard(registry: Registry) -> anyhow::Result<()> {
    init_tracing();
    let engine = engine_from_env(registry).await?;
    let keys = baton_http::Keys::from_env(engine.registry());
    lambda_http::run(baton_http::router(engine, keys))
        .await
        .map_err(lambda_error)
}

/// The queue of a step hosted on Vercel: each batch goes, signed, to `BATON_RELAY_URL`; the
/// messages the step function reports failed, or all of them when the call fails or times out,
/// go back to the queue. The call's timeout is `BATON_RELAY_TIMEOUT_S`, cut to what is left of
/// the invocation (less 2 s to answer Lambda).
#[cfg(feature = "relay")]
pub async fn run_relay() -> anyhow::Result<()> {
    init_tracing();
    let relay = crate::relay::Relay::new(crate::relay::RelayConfig::from_env()?);
    let relay = &relay;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let left = deadline_of(&event.context)
            .saturating_duration_since(tokio::time::Instant::now())
            .saturating_sub(Duration::from_secs(2));
        let delivery = relay.deliver(&event.payload, left).await;
        Ok::<SqsBatchResponse, lambda_runtime::Error>(delivery.response)
    }))
    .await
    .map_err(lambda_error)
}
