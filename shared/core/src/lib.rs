//! Baton: durable functions for serverless Rust.
//!
//! A function is straight-line async Rust over a typed event. Each handler invocation replays
//! it against the run's journal: finished steps return their recorded output, and the first
//! step not yet recorded is planned (or, in that step's own handler, executed and recorded).
//!
//! This crate is the core every other Baton crate builds on; it has no AWS, SQLite or HTTP in
//! it. The framework's crates (each under `shared/`):
//!
//! | crate | what |
//! |---|---|
//! | `baton` (this one) | the engine, the function API, the store and queue traits with in-memory backends, the local runtime |
//! | `baton-sqlite` | the embedded store (`baton dev`'s default) |
//! | `baton-aws` | the DynamoDB store, the SQS queue, the Lambda handlers, the relay and the Vercel runners |
//! | `baton-http` | the HTTP API and the dashboard: one axum Router and its route table |
//! | `baton-deploy` | `baton generate`: handler mains, template.yaml and the Vercel project from a registry |
//! | `baton-cli` | the `baton` command line as a library, given an app's registry |
//! | `baton-testkit` | the store conformance suite, fault injection, the AWS cost meter |
//!
//! Arrows point one way: backends and adapters depend on this crate, never the reverse, and no
//! framework crate knows any app.
//!
//! Module map:
//! - [`prelude`]: what function code uses, in one `use`.
//! - [`function`]: defining functions ([`Function`]), their declared steps ([`Step`], [`steps!`]),
//!   waits ([`Wait`]) and invoke targets ([`Invoke`]); the [`Registry`].
//! - [`engine`]: the executor ([`Engine`]) and the [`Ctx`] function code talks to (patch
//!   markers, [`Ctx::patched`]); the dry replay behind `baton deploy-check`
//!   ([`Engine::deploy_check`]) and restarts from a step ([`Engine::replay_from`]).
//! - [`model`]: the stored records (events, runs, steps) and continuation messages.
//! - [`store`]: the [`Store`] trait and the in-memory store.
//! - [`queue`]: the [`Queue`] trait and the in-process delayed queue.
//! - [`local`]: the embedded runtime behind `baton dev`: engine, queue and sweeper in one process.
//! - [`webhook`]: outside services' signed callbacks as events (and the relay's signatures).
//! - [`error`]: error types.

pub mod engine;
pub mod error;
pub mod function;
pub mod local;
pub mod model;
pub mod queue;
pub mod store;
pub mod webhook;

pub use engine::{Ctx, Engine, EngineConfig, Limits, NewEvent, StepCtx};
pub use error::{EngineError, Error, ErrorKind, StepError};
pub use function::{Event, FailureData, Function, Host, Invoke, Registry, Step, StepConfig, Wait};
pub use model::{RunStatus, StepStatus};
pub use queue::Queue;
pub use store::Store;

/// What function code uses, in one `use baton::prelude::*;`.
pub mod prelude {
    pub use crate::function::{Event, FailureData, Function, Host, Invoke, Registry, Step, Wait};
    pub use crate::steps;
    pub use crate::{Ctx, Error, NewEvent, StepCtx, StepError};
}
