//! Baton's test harnesses, kept out of the framework's production crates:
//!
//! - [`conformance`]: the [`baton::Store`] contract as executable checks; every backend runs
//!   [`conformance::run_all`] in its own tests.
//! - [`chaos`]: fault injection: a store and a queue that crash, drop, duplicate and reorder
//!   around every operation, and a driver that delivers a run to its end through them.
//! - [`cost`]: what a deployment is billed for, metered on the DynamoDB and SQS clients.
//! - [`sqs_trigger`]: Lambda's SQS event source mapping against any SQS endpoint (moto), to
//!   drive the Lambda handlers' code with the batches Lambda would build.
//! - [`moto`]: a whole deployment on a moto server (table, queues, engine, the HTTP routes fed
//!   API Gateway events, one consumer per queue as Lambda runs them), metered.
//! - [`upgrade`]: changing code under live runs (v1 and v2 registries over one store): patch
//!   markers, the pre-deploy check, removed functions, restarts from a step.
//! - [`fixtures`]: real AWS event JSON (`sam local generate-event`).

pub mod chaos;
pub mod conformance;
pub mod cost;
pub mod moto;
pub mod sqs_trigger;
pub mod upgrade;

/// Real event JSON as AWS sends it, generated offline with `sam local generate-event` (see
/// `fixtures/README.md`): tests replace only what must name Baton's own data.
pub mod fixtures {
    /// `sam local generate-event apigateway http-api-proxy`.
    pub const API_GATEWAY_HTTP: &str = include_str!("../fixtures/apigateway-http-api-proxy.json");
    /// `sam local generate-event sqs receive-message`.
    pub const SQS_RECEIVE_MESSAGE: &str = include_str!("../fixtures/sqs-receive-message.json");
    /// `sam local generate-event cloudwatch scheduled-event`.
    pub const EVENTBRIDGE_SCHEDULED: &str =
        include_str!("../fixtures/eventbridge-scheduled-event.json");
}
