//! Baton on AWS: the backends and the Lambda handlers.
//!
//! - [`dynamodb`]: the DynamoDB store (one table, single-item conditional writes).
//! - [`sqs`]: the SQS queue (one queue per step and per function, names computed).
//! - [`lambda`]: the Lambda handlers as plain async functions over the AWS event types, and
//!   (feature `lambda`) the runners an app's generated handler mains call.
//! - [`relay`]: how a step hosted on Vercel gets its messages: the relay's signatures and
//!   (feature `relay`) the relay itself.
//! - [`vercel`]: Vercel's limits and (feature `vercel`) the Vercel functions' runners.
//!
//! The SDK clients are built by the caller (region, credentials, HTTP client, endpoint): the
//! store and queue pull in no HTTP or TLS stack; the runners use aws-config's.

pub mod dynamodb;
pub mod lambda;
pub mod relay;
pub mod sqs;
pub mod vercel;
