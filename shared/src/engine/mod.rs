//! The executor: ingesting events, handling continuation messages by replay, and the run
//! operations of the API (cancel, replay).

mod config;
mod ctx;

pub use config::{Backoff, Clock, EngineConfig, Limits};
pub use ctx::{Ctx, StepCtx};

/// An event as a sender submits it (before it has an id).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NewEvent {
    pub name: String,
    #[serde(default)]
    pub data: serde_json::Value,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub ts: Option<i64>,
    #[serde(default)]
    pub user: Option<serde_json::Value>,
    #[serde(default)]
    pub v: Option<String>,
}

#[derive(Clone)]
pub struct Engine {}
