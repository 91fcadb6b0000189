//! Baton on Vercel: Vercel's limits (which `baton generate` checks a step hosted on Vercel
//! against), and (feature `vercel`) what each generated binary in the app's `vercel/api/`
//! calls from `main`, on `vercel_runtime` 2.x (which serves HTTP on
//! 127.0.0.1:`$VERCEL_DEV_PORT`; on Vercel, its IPC bridge passes requests in).
//!
//! - [`run_http`]: an HTTP route of the API (or the dashboard): the same axum router as the
//!   dev server and the Lambda routes ([`baton_http::router`]); vercel.json routes each
//!   method and path to its function, and every function answers any route the same way.
//! - [`run_step`]: a step hosted on Vercel ([`baton::Host::Vercel`]): takes the batches the
//!   relay Lambda posts from the step's SQS queue ([`crate::relay`]), checks their signature
//!   and hands them to the engine as a queue consumer would
//!   ([`crate::lambda::handle_queue_batch`]).
//!
//! Configuration, from the Vercel project's environment variables:
//!
//! | variable | |
//! |---|---|
//! | `BATON_TABLE`, `BATON_QUEUE_PREFIX`, `BATON_QUEUE_URL_PREFIX` | as on Lambda ([`crate::lambda`]); the stack's outputs give them |
//! | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` | credentials allowed by the stack's `VercelAccessPolicy`, and the stack's region (Vercel presets `AWS_REGION` to its own region's) |
//! | `BATON_EVENT_KEY`, `BATON_SIGNING_KEY` | required: a Vercel deployment is never open |
//! | `BATON_WEBHOOK_SECRET_{SOURCE}` | each webhook source's secret |
//! | `BATON_RELAY_SECRET` | steps only: the secret the relay signs with |

use std::time::Duration;

use baton::StepConfig;
use baton::engine::EXECUTOR_GRACE;
#[cfg(feature = "vercel")]
pub use run::*;

/// Engine time over a step's own timeout in its function's maxDuration: the engine stops the
/// body at the timeout, then records the outcome and hands the run on (as on Lambda).
pub const STEP_MARGIN: Duration = EXECUTOR_GRACE;
/// The longest maxDuration Vercel allows (Pro and Enterprise, Fluid compute).
pub const MAX_DURATION: Duration = Duration::from_secs(800);
/// Vercel's memory range (MB; above 2048 needs Pro or Enterprise).
pub const MIN_MEMORY_MB: u32 = 128;
pub const MAX_MEMORY_MB: u32 = 4096;
/// The HTTP routes' maxDuration and memory.
pub const HTTP_MAX_DURATION: Duration = Duration::from_secs(30);
pub const HTTP_MEMORY_MB: u32 = 1024;
/// How much longer than the step function's maxDuration the relay waits for its answer
/// (Vercel answers 504 at maxDuration).
pub const RELAY_GRACE: Duration = Duration::from_secs(10);
/// The relay Lambda's timeout over its HTTP timeout.
pub const RELAY_LAMBDA_MARGIN: Duration = Duration::from_secs(10);

/// A Vercel-hosted step's maxDuration: its timeout + [`STEP_MARGIN`].
pub fn step_max_duration(config: &StepConfig) -> Duration {
    config.timeout + STEP_MARGIN
}

/// How long the relay waits for a step function's answer.
pub fn relay_timeout(config: &StepConfig) -> Duration {
    step_max_duration(config) + RELAY_GRACE
}

/// The relay Lambda's timeout for a step.
pub fn relay_lambda_timeout(config: &StepConfig) -> Duration {
    relay_timeout(config) + RELAY_LAMBDA_MARGIN
}

/// The function path of a Vercel-hosted step (`vercel/api/{this}.rs`; its URL is
/// `https://{deployment}/api/{this}`).
pub fn step_function_name(function_id: &str, step: &str) -> String {
    format!("step-{function_id}--{step}")
}

#[cfg(feature = "vercel")]
mod run {
    use std::time::Duration;

    use anyhow::bail;
    use aws_lambda_events::event::sqs::SqsEvent;
    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, Method, StatusCode};
    use axum::response::{IntoResponse, Response};
    use baton::model::Message;
    use baton::{Engine, Registry};
    use baton_http::Keys;
    use serde_json::json;
    use tower::Layer as _;
    use vercel_runtime::axum::VercelLayer;

    use super::step_max_duration;
    use crate::lambda::{engine_from_env, init_tracing};

    fn runtime_error(e: vercel_runtime::Error) -> anyhow::Error {
        anyhow::anyhow!("vercel runtime: {e}")
    }

    /// The keys of a Vercel deployment from the environment, both required ([`require_keys`]).
    pub fn keys_from_env(registry: &Registry) -> anyhow::Result<Keys> {
        require_keys(Keys::from_env(registry))
    }

    /// `keys`, if they name an event key and a signing key: there is no template to insist on
    /// them, as template.yaml does on AWS, and a deployment is never open.
    pub fn require_keys(keys: Keys) -> anyhow::Result<Keys> {
        if keys.event_keys.is_empty() {
            bail!(
                "BATON_EVENT_KEY is not set: set it (and BATON_SIGNING_KEY) in the Vercel project's environment variables; a deployment is never open"
            );
        }
        if keys.signing_key.is_none() {
            bail!(
                "BATON_SIGNING_KEY is not set: set it in the Vercel project's environment variables; a deployment is never open"
            );
        }
        Ok(keys)
    }

    /// An HTTP route: the whole router (API and dashboard), served by vercel_runtime.
    pub async fn run_http(registry: Registry) -> anyhow::Result<()> {
        init_tracing();
        let engine = engine_from_env(registry).await?;
        let keys = keys_from_env(engine.registry())?;
        let router = baton_http::router(engine, keys);
        vercel_runtime::run(VercelLayer::new().layer(router))
            .await
            .map_err(runtime_error)
    }

    /// Step `step` of function `function_id`: relayed batches in, the messages that failed out.
    pub async fn run_step(registry: Registry, function_id: &str, step: &str) -> anyhow::Result<()> {
        init_tracing();
        let engine = engine_from_env(registry).await?;
        let Some(config) = engine
            .registry()
            .get(function_id)
            .and_then(|f| f.steps.get(step))
            .cloned()
        else {
            bail!(
                "function {function_id:?} declares no step {step:?} (regenerate: `cargo run -- generate`)"
            );
        };
        let secret = crate::relay::secret_from_env()?;
        let router = step_router(engine, secret, step_max_duration(&config));
        vercel_runtime::run(VercelLayer::new().layer(router))
            .await
            .map_err(runtime_error)
    }

    #[derive(Clone)]
    struct StepState {
        engine: Engine,
        secret: std::sync::Arc<str>,
        max_duration: Duration,
    }

    /// The step endpoint, any path: `POST` with a relay-signed body, either the `SqsEvent` the
    /// relay received (`{"Records": [...]}`) or one Baton message.
    ///
    /// Answers:
    /// - 200 `{"batchItemFailures": [{"itemIdentifier"}...]}`: the batch was handled; the listed
    ///   messages failed and go back to the queue (a single message: 200 when handled);
    /// - 401: the signature is missing, wrong, or over a different body, or its timestamp is
    ///   stale: nothing was handled;
    /// - 400: not a batch nor a message; 405: not a POST;
    /// - 500: a single message whose handling failed (the relay leaves it on the queue).
    ///
    /// The engine may go on with the run's next step in the same call while it fits in
    /// `max_duration` (the function's maxDuration), as a Lambda consumer does within its timeout.
    pub fn step_router(engine: Engine, secret: String, max_duration: Duration) -> Router {
        Router::new().fallback(step).with_state(StepState {
            engine,
            secret: secret.into(),
            max_duration,
        })
    }

    fn error(status: StatusCode, message: impl Into<String>) -> Response {
        (status, axum::Json(json!({"error": message.into()}))).into_response()
    }

    async fn step(
        State(state): State<StepState>,
        method: Method,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let started = tokio::time::Instant::now();
        if method != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "POST a relayed batch");
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Err(e) = crate::relay::verify(&state.secret, header, &body, chrono::Utc::now()) {
            tracing::warn!(error = %e, "refused a relayed request");
            return error(StatusCode::UNAUTHORIZED, e.to_string());
        }
        let deadline = started + state.max_duration;
        let value: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(value) => value,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not JSON: {e}"),
                );
            }
        };
        if value.get("Records").is_some() {
            let event: SqsEvent = match serde_json::from_value(value) {
                Ok(event) => event,
                Err(e) => {
                    return error(StatusCode::BAD_REQUEST, format!("not an SQS batch: {e}"));
                }
            };
            let response =
                crate::lambda::handle_queue_batch(&state.engine, event, Some(deadline)).await;
            return (StatusCode::OK, axum::Json(response)).into_response();
        }
        let message: Message = match serde_json::from_value(value) {
            Ok(message) => message,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("neither an SQS batch nor a Baton message: {e}"),
                );
            }
        };
        match state.engine.handle_within(message, Some(deadline)).await {
            Ok(()) => (
                StatusCode::OK,
                axum::Json(aws_lambda_events::event::sqs::SqsBatchResponse::default()),
            )
                .into_response(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

#[cfg(all(test, feature = "vercel"))]
mod tests {
    use std::sync::Arc;

    use std::time::Duration;

    use aws_lambda_events::event::sqs::SqsEvent;
    use axum::Router;
    use axum::http::StatusCode;
    use baton::model::{Message, MessageKind, QueueName, StepStatus};
    use baton::queue::local::LocalQueue;
    use baton::store::memory::MemoryStore;
    use baton::{Ctx, Engine, Error, Event, Function, Registry, Step, StepError, Store as _};
    use baton_http::Keys;
    use chrono::Utc;
    use serde_json::{Value, json};
    use tower::ServiceExt as _;

    use super::run::{require_keys, step_router};

    /// An order: validated on Lambda, then a card charge hosted on Vercel that fails its
    /// first attempt.
    fn registry() -> Registry {
        Registry::new()
            .register(
                Function::new("process-order")
                    .trigger("demo/order.placed")
                    .step(Step::new("validate"))
                    .step(Step::new("charge-card").host(baton::Host::Vercel))
                    .handler(|ctx: Ctx, _event: Event<Value>| async move {
                        ctx.step(Step::new("validate"), |_| async { Ok(1) }).await?;
                        ctx.step(Step::new("charge-card"), |s| async move {
                            if s.attempt < 2 {
                                return Err(StepError::retriable("gateway unavailable"));
                            }
                            Ok("paid".to_owned())
                        })
                        .await?;
                        Ok::<_, Error>(())
                    }),
            )
            .unwrap()
    }

    const SECRET: &str = "relay-secret-0123456789-0123456789";

    fn record(message_id: &str, body: &str) -> aws_lambda_events::event::sqs::SqsMessage {
        let mut m = aws_lambda_events::event::sqs::SqsMessage::default();
        m.message_id = Some(message_id.to_owned());
        m.body = Some(body.to_owned());
        m
    }

    /// The order example on an in-memory store, run until charge-card's first message is
    /// queued (every other queue handled in-process); returns the engine, the store, that
    /// message, the run id, and the queue's receiver (kept, so the queue stays open).
    async fn charge_card_pending() -> (
        Engine,
        Arc<MemoryStore>,
        Message,
        String,
        baton::queue::local::LocalReceiver,
    ) {
        let store = Arc::new(MemoryStore::new());
        let (queue, mut receiver) = LocalQueue::new();
        let engine = Engine::new(
            registry(),
            store.clone(),
            Arc::new(queue),
            Default::default(),
        );
        let ids = engine
            .send_events(vec![baton::NewEvent::new(
                "demo/order.placed",
                json!({"order_id": "o-1", "items": ["book"], "flaky_payment": true}),
            )])
            .await
            .unwrap();
        let run_id = store.runs_for_event(&ids[0]).await.unwrap()[0]
            .run_id
            .clone();
        let charge = QueueName::Step {
            function_id: "process-order".into(),
            step: "charge-card".into(),
        };
        loop {
            let message = receiver.recv().await.expect("a message");
            if message.queue() == charge {
                return (engine, store, message, run_id, receiver);
            }
            engine.handle(message).await.unwrap();
        }
    }

    async fn post(
        router: &Router,
        body: &str,
        headers: &[(&str, String)],
    ) -> (u16, serde_json::Value) {
        let mut request = axum::http::Request::post("/api/step-process-order--charge-card")
            .header("content-type", "application/json");
        for (k, v) in headers {
            request = request.header(*k, v);
        }
        let response = router
            .clone()
            .oneshot(
                request
                    .body(axum::body::Body::from(body.to_owned()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    fn signed(body: &str, at: chrono::DateTime<Utc>) -> Vec<(&'static str, String)> {
        crate::relay::sign(SECRET, body.as_bytes(), at).to_vec()
    }

    #[tokio::test]
    async fn a_signed_batch_is_handled_and_a_bad_or_stale_one_changes_nothing() {
        let (engine, store, message, run_id, _receiver) = charge_card_pending().await;
        assert!(
            matches!(&message.kind, MessageKind::Step { name, attempt: 1, .. } if name == "charge-card")
        );
        let router = step_router(engine, SECRET.to_owned(), Duration::from_secs(60));
        let mut event = SqsEvent::default();
        event
            .records
            .push(record("m-1", &serde_json::to_string(&message).unwrap()));
        let body = serde_json::to_string(&event).unwrap();
        let journal = store.journal(&run_id).await.unwrap();
        let run = store.get_run(&run_id).await.unwrap();

        let now = Utc::now();
        let other_secret =
            crate::relay::sign("another-secret-0123456789-0123456789", body.as_bytes(), now)
                .to_vec();
        let stale = signed(&body, now - chrono::Duration::minutes(6));
        // Another attempt number in the (JSON-escaped) message body.
        let altered = body.replace(r#"\"attempt\":1"#, r#"\"attempt\":2"#);
        assert_ne!(altered, body);
        for (what, body, headers) in [
            ("no signature", body.as_str(), vec![]),
            ("another secret", body.as_str(), other_secret),
            ("stale", body.as_str(), stale),
            ("altered body", altered.as_str(), signed(&body, now)),
        ] {
            let (status, answer) = post(&router, body, &headers).await;
            assert_eq!(status, 401, "{what}: {answer}");
            assert!(answer["error"].is_string(), "{what}: {answer}");
            assert_eq!(store.journal(&run_id).await.unwrap(), journal, "{what}");
            assert_eq!(store.get_run(&run_id).await.unwrap(), run, "{what}");
        }
        let step = journal.iter().find(|s| s.step_id == "charge-card").unwrap();
        assert_eq!(step.status, StepStatus::Planned);

        // Signed now: handled. The payment fails its first attempt (flaky), and that is the
        // step's retry, not a failed message: nothing goes back.
        let (status, answer) = post(&router, &body, &signed(&body, Utc::now())).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer, json!({"batchItemFailures": []}));
        let after = store.journal(&run_id).await.unwrap();
        let step = after.iter().find(|s| s.step_id == "charge-card").unwrap();
        assert_eq!(step.attempts, 1, "{step:?}");
    }

    #[tokio::test]
    async fn one_message_not_a_batch_and_wrong_methods() {
        let (engine, store, message, run_id, _receiver) = charge_card_pending().await;
        let router = step_router(engine, SECRET.to_owned(), Duration::from_secs(60));
        let body = serde_json::to_string(&message).unwrap();
        let (status, answer) = post(&router, &body, &signed(&body, Utc::now())).await;
        assert_eq!(status, 200, "{answer}");
        let journal = store.journal(&run_id).await.unwrap();
        let step = journal.iter().find(|s| s.step_id == "charge-card").unwrap();
        assert_eq!(step.attempts, 1, "{step:?}");

        let junk = r#"{"hello":"world"}"#;
        let (status, answer) = post(&router, junk, &signed(junk, Utc::now())).await;
        assert_eq!(status, 400, "{answer}");
        let (status, _) = post(&router, "[", &signed("[", Utc::now())).await;
        assert_eq!(status, 400);

        let response = router
            .clone()
            .oneshot(
                axum::http::Request::get("/api/step-process-order--charge-card")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn deployments_are_never_open() {
        assert!(require_keys(Keys::parse(None, Some("signing-key"))).is_err());
        assert!(require_keys(Keys::parse(Some("event-key"), None)).is_err());
        assert!(require_keys(Keys::parse(Some(" , "), Some("signing-key"))).is_err());
        let keys = require_keys(Keys::parse(Some("event-key"), Some("signing-key"))).unwrap();
        assert_eq!(keys.event_keys, ["event-key"]);
    }
}
