//! The Lambda handlers: what each generated binary in `src/bin/` calls from `main`.
//!
//! Configuration, all from the environment (template.yaml sets it):
//!
//! | variable                 | |
//! |--------------------------|---|
//! | `BATON_TABLE`            | the DynamoDB table ([`baton::store::dynamodb::DynamoStore`]) |
//! | `BATON_QUEUE_PREFIX`     | put in front of every queue name ([`baton::queue::sqs::queue_name`]) |
//! | `BATON_QUEUE_URL_PREFIX` | a queue's URL is `{url prefix}{name}`, e.g. `https://sqs.us-east-1.amazonaws.com/123456789012/` |
//! | `BATON_STALE_AFTER_S`    | the sweeper re-drives runs idle this long (default 900) |
//! | `BATON_EVENT_KEY`, `BATON_SIGNING_KEY` | the HTTP routes' keys ([`Keys::from_env`]) |
//! | `AWS_ENDPOINT_URL`, `AWS_REGION`, credentials | read by aws-config itself (default chain) |
//!
//! Runners:
//! - [`run_queue_consumer`]: a step's or a function's continue queue (SQS batch in, partial
//!   batch failures out).
//! - [`run_dead_letters`]: every dead-letter queue: fails the message's run.
//! - [`run_sweeper`]: the EventBridge schedule re-driving stale runs.
//! - [`run_http`]: an API Gateway HTTP API (payload v2) route, served by the axum router.
//! - [`run_relay`]: the queue of a step hosted on Vercel: each batch is posted, signed, to the
//!   step's Vercel function ([`crate::relay`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use baton::Engine;
use baton::api::Keys;
use baton::queue::sqs::{QueueNaming, SqsQueue};
use baton::store::dynamodb::DynamoStore;
use lambda_runtime::{LambdaEvent, service_fn};

/// The sweeper's default `BATON_STALE_AFTER_S`.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(900);

fn required(name: &str) -> anyhow::Result<String> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => Ok(value),
        _ => anyhow::bail!(
            "{name} is not set (template.yaml sets it on every Baton Lambda; on Vercel, set it in the project's environment variables from the stack's outputs)"
        ),
    }
}

/// The engine over the DynamoDB table and the SQS queues the environment names, with the
/// app's functions ([`crate::registry`]).
pub async fn engine_from_env() -> anyhow::Result<Engine> {
    let table = required("BATON_TABLE")?;
    let prefix = std::env::var("BATON_QUEUE_PREFIX").unwrap_or_default();
    let url_prefix = required("BATON_QUEUE_URL_PREFIX")?;
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&config), table);
    let queue = SqsQueue::new(
        aws_sdk_sqs::Client::new(&config),
        QueueNaming::new(prefix, url_prefix),
    );
    Ok(Engine::new(
        crate::registry(),
        Arc::new(store),
        Arc::new(queue),
        Default::default(),
    ))
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

/// Logs to stdout (CloudWatch) without colours or timestamps (CloudWatch adds its own);
/// `RUST_LOG` filters, `info` by default.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .without_time()
        .try_init();
}

fn lambda_error(e: lambda_runtime::Error) -> anyhow::Error {
    anyhow::anyhow!("lambda runtime: {e}")
}

/// A step's or a function's continue queue: each message is handled by the engine; the ones
/// that failed go back to the queue (`ReportBatchItemFailures`).
pub async fn run_queue_consumer() -> anyhow::Result<()> {
    init_tracing();
    let engine = engine_from_env().await?;
    let engine = &engine;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let deadline = deadline_of(&event.context);
        Ok::<SqsBatchResponse, lambda_runtime::Error>(
            baton::aws::handle_queue_batch(engine, event.payload, Some(deadline)).await,
        )
    }))
    .await
    .map_err(lambda_error)
}

/// The queue of a step hosted on Vercel: each batch goes, signed, to `BATON_RELAY_URL`; the
/// messages the step function reports failed, or all of them when the call fails or times out,
/// go back to the queue. The call's timeout is `BATON_RELAY_TIMEOUT_S`, cut to what is left of
/// the invocation (less 2 s to answer Lambda).
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

/// The invocation's deadline (milliseconds since the epoch in the context) as an instant.
fn deadline_of(context: &lambda_runtime::Context) -> tokio::time::Instant {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    tokio::time::Instant::now()
        + std::time::Duration::from_millis(context.deadline.saturating_sub(now_ms))
}

/// The dead-letter queues: every message fails its run with the reason.
pub async fn run_dead_letters() -> anyhow::Result<()> {
    init_tracing();
    let engine = engine_from_env().await?;
    let engine = &engine;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, lambda_runtime::Error>(
            baton::aws::handle_dead_letters(engine, event.payload).await,
        )
    }))
    .await
    .map_err(lambda_error)
}

/// The sweeper, on an EventBridge schedule: re-drives runs idle for `BATON_STALE_AFTER_S`.
/// Answers `{"redriven": n}`; a failed sweep fails the invocation (the next one tries again).
pub async fn run_sweeper() -> anyhow::Result<()> {
    init_tracing();
    let engine = engine_from_env().await?;
    let stale_after = stale_after_from_env()?;
    let engine = &engine;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<EventBridgeEvent>| async move {
            let redriven = baton::aws::handle_schedule(engine, event.payload, stale_after)
                .await
                .map_err(|e| lambda_runtime::Error::from(e.to_string()))?;
            Ok::<_, lambda_runtime::Error>(serde_json::json!({ "redriven": redriven }))
        },
    ))
    .await
    .map_err(lambda_error)
}

/// The cron schedule, every minute on EventBridge: fires the ticks of the minute before.
pub async fn run_cron() -> anyhow::Result<()> {
    init_tracing();
    let engine = engine_from_env().await?;
    let engine = &engine;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<EventBridgeEvent>| async move {
            let fired = baton::aws::handle_cron_schedule(engine, event.payload)
                .await
                .map_err(|e| lambda_runtime::Error::from(e.to_string()))?;
            Ok::<_, lambda_runtime::Error>(serde_json::json!({ "fired": fired }))
        },
    ))
    .await
    .map_err(lambda_error)
}

/// An HTTP route behind API Gateway (HTTP API, payload format 2.0): the whole API router, so
/// every route binary answers the same way; API Gateway sends each one only its own route.
pub async fn run_http() -> anyhow::Result<()> {
    init_tracing();
    let engine = engine_from_env().await?;
    let keys = Keys::from_env(engine.registry());
    let router = baton::api::router(engine, keys);
    lambda_http::run(router).await.map_err(lambda_error)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use baton::queue::local::LocalQueue;
    use baton::store::memory::MemoryStore;
    use lambda_http::IntoResponse;
    use tower::ServiceExt as _;

    use super::*;

    /// An API Gateway HTTP API (v2) event, as `sam local generate-event` writes it, with only
    /// its method and path changed, goes through lambda_http's request conversion into the
    /// router and comes back as a response with its JSON body.
    async fn call(method: &str, path: &str) -> (u16, serde_json::Value) {
        let fixture = include_str!("../../tests/fixtures/apigateway-http-api-proxy.json");
        let mut event: serde_json::Value = serde_json::from_str(fixture).unwrap();
        event["rawPath"] = path.into();
        event["rawQueryString"] = "".into();
        event["queryStringParameters"] = serde_json::json!({});
        event["requestContext"]["http"]["method"] = method.into();
        event["requestContext"]["http"]["path"] = path.into();
        event["body"] = serde_json::Value::Null;
        event["isBase64Encoded"] = false.into();
        let request = lambda_http::request::from_str(&event.to_string()).unwrap();
        let (queue, _receiver) = LocalQueue::new();
        let engine = Engine::new(
            crate::registry(),
            Arc::new(MemoryStore::new()),
            Arc::new(queue),
            Default::default(),
        );
        let router = baton::api::router(engine, Keys::parse(None, Some("secret-signing-key")));
        let response = router.oneshot(request).await.unwrap();
        let response = response.into_response().await;
        let status = response.status().as_u16();
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        (status, body)
    }

    #[tokio::test]
    async fn an_http_api_event_reaches_the_router() {
        let (status, body) = call("GET", "/health").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "ok");
        // The fixture carries no bearer key: /v1 refuses it.
        let (status, body) = call("GET", "/v1/functions").await;
        assert_eq!(status, 401, "{body}");
    }
}
