//! Baton: durable functions for serverless Rust.
//!
//! A function is straight-line async Rust over a typed event. Each handler invocation replays
//! it against the run's journal: finished steps return their recorded output, and the first
//! step not yet recorded is planned (or, in that step's own handler, executed and recorded).
//!
//! Module map:
//! - [`model`]: the stored records (events, runs, steps) and continuation messages.
//! - [`function`]: defining functions, declared steps, the [`Registry`].
//! - [`engine`]: the executor ([`Engine`]) and the [`Ctx`] function code talks to.
//! - [`store`]: the [`Store`] trait, its backends and the conformance suite.
//! - [`queue`]: the [`Queue`] trait and the in-process delayed queue.
//! - [`api`]: the HTTP API of API.md as an axum `Router` (plain request in, response out).
//! - [`dashboard`]: the dashboard's server-rendered pages, served by the same Router.
//! - [`aws`]: Lambda adapters over the AWS event types (SQS batches, EventBridge schedules).
//! - [`local`]: the embedded runtime behind `baton dev`.
//! - [`cost`]: a meter on the SDK clients: requests and DynamoDB capacity units, in dollars.
//! - [`webhook`]: outside services' signed callbacks as events.
//! - [`chaos`]: fault-injecting store and queue wrappers for property tests.
//! - [`error`]: error types.

pub mod api;
pub mod aws;
pub mod chaos;
pub mod cost;
pub mod dashboard;
pub mod engine;
pub mod error;
pub mod function;
pub mod local;
pub mod model;
pub mod queue;
pub mod store;
pub mod webhook;

pub use engine::{Ctx, Engine, EngineConfig, Limits, NewEvent, StepCtx, WaitFor};
pub use error::{EngineError, Error, ErrorKind, StepError};
pub use function::{Event, FailureData, Function, Host, Registry, StepConfig};
pub use model::{RunStatus, StepStatus};
pub use queue::Queue;
pub use store::Store;
