//! AWS Lambda adapters as plain async functions over the event types AWS sends, so a test can
//! feed them the JSON of `sam local generate-event` and a binary's `main` is a few lines.
//!
//! - [`handle_queue_batch`]: a step's (or a function's continue) queue, `SqsEvent` in, partial
//!   batch failures out (`ReportBatchItemFailures`): only the messages whose handling failed
//!   go back to the queue.
//! - [`handle_dead_letters`]: a dead-letter queue: each message fails its run with the reason.
//! - [`handle_schedule`]: the sweeper on an EventBridge schedule.
//! - [`handle_cron_schedule`]: the cron schedule (every minute) firing functions' cron ticks.
//!
//! With the `lambda` feature, the runners an app's handler mains call ([`run_worker`],
//! [`run_api`], [`run_dashboard`], [`run_relay`]) wrap these in `lambda_runtime`.

use std::time::Duration;

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use futures::future::join_all;

#[cfg(feature = "lambda")]
mod run;
#[cfg(feature = "lambda")]
pub use run::*;

use baton::engine::Engine;
use baton::error::EngineError;
use baton::model::Message;

/// Decodes a queue message body.
pub fn decode(body: Option<&str>) -> Result<Message, String> {
    let body = body.ok_or("the SQS message has no body")?;
    serde_json::from_str(body).map_err(|e| format!("not a Baton message ({e}): {body:.200}"))
}

fn message_id(record: &SqsMessage) -> String {
    record.message_id.clone().unwrap_or_default()
}

/// Handles one batch from a step or continue queue, the messages concurrently. A message that
/// is not a Baton message can never succeed: it is logged and dropped rather than retried
/// into the DLQ, where it would not name a run either.
///
/// `deadline` is the invocation's (Lambda's `Context::deadline`): until then a run may go on
/// with its next step in this invocation when that step is on the same queue
/// ([`Engine::handle_within`]); `None` handles each message alone.
pub async fn handle_queue_batch(
    engine: &Engine,
    event: SqsEvent,
    deadline: Option<tokio::time::Instant>,
) -> SqsBatchResponse {
    let results = join_all(event.records.iter().map(|record| async move {
        let message = match decode(record.body.as_deref()) {
            Ok(message) => message,
            Err(reason) => {
                tracing::error!(message_id = %message_id(record), %reason, "dropping a message that is not Baton's");
                return Ok(());
            }
        };
        engine.handle_within(message, deadline).await
    }))
    .await;
    let mut response = SqsBatchResponse::default();
    for (record, result) in event.records.iter().zip(results) {
        if let Err(error) = result {
            tracing::warn!(message_id = %message_id(record), %error, "message goes back to the queue");
            response.add_failure(message_id(record));
        }
    }
    response
}

/// Handles a batch from a dead-letter queue: every message fails its run, with how many times
/// SQS delivered it.
pub async fn handle_dead_letters(engine: &Engine, event: SqsEvent) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    for record in &event.records {
        let Ok(message) = decode(record.body.as_deref()) else {
            tracing::error!(message_id = %message_id(record), "dead letter is not a Baton message; dropped");
            continue;
        };
        let received = record
            .attributes
            .get("ApproximateReceiveCount")
            .map_or("?", String::as_str);
        let reason = format!("SQS delivered it {received} times without a handler finishing");
        if let Err(error) = engine.dead_letter(&message, &reason).await {
            tracing::warn!(message_id = %message_id(record), %error, "dead letter goes back to its queue");
            response.add_failure(message_id(record));
        }
    }
    response
}

/// How often the template's cron schedule runs: each invocation fires the ticks of the minute
/// before its scheduled time.
pub const CRON_WINDOW: Duration = Duration::from_secs(60);

/// The cron schedule (EventBridge, every minute): fires every function's cron ticks in
/// `(time - 1 min, time]` of the event's scheduled `time`, so a late or repeated delivery
/// fires the same ticks, which start nothing new. Returns how many ticks.
pub async fn handle_cron_schedule(
    engine: &Engine,
    event: EventBridgeEvent,
) -> Result<usize, EngineError> {
    // An event without a time (not one EventBridge sends) covers the minute before now.
    let to = event.time.unwrap_or_else(|| engine.now());
    let from = to - chrono::Duration::from_std(CRON_WINDOW).expect("a minute");
    engine.fire_due_crons(from, to).await
}

/// The sweeper: re-drives runs that made no progress for `stale_after`. Returns how many.
pub async fn handle_schedule(
    engine: &Engine,
    event: EventBridgeEvent,
    stale_after: Duration,
) -> Result<usize, EngineError> {
    tracing::info!(id = ?event.id, time = ?event.time, "sweep");
    engine.sweep(Some(stale_after)).await
}
