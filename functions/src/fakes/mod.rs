//! Fake outside services for the example workloads: one local HTTP server (127.0.0.1, an
//! ephemeral port) with each service under its own path (`/clips`, `/whisper`,
//! `/embeddings`, `/llm`, `/tts`, `/app`), as [`crate::services::Services::at`] expects.
//!
//! The tests run the workloads against it, and `baton dev` starts it when no service URL is
//! configured, so every example works on a fresh clone. Faults are injected per route
//! ([`FakeState::inject`]): a status with a message (500, 400 for invalid input), 429 with
//! `Retry-After`, or a slow answer. The app backend (`/app`) records what the workloads store
//! and keeps the app's rows (a video's, a project's, an episode's status), each with the
//! history of its changes, for assertions.

mod app;
mod clips;
mod llm;
mod ml;
mod tts;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub use clips::{DEV_RENDER_TIME, REAL_RENDER_TIME, WebhookTarget};

/// A fault a route answers with instead of its normal response (once per injection).
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// This status, with `{"error": message}`.
    Status(u16, String),
    /// 429 with `Retry-After: {seconds}`.
    RetryAfter(u64),
    /// Answers normally after this long.
    Slow(Duration),
}

/// The fakes' shared state: injected faults, call counts and what the app backend stored.
#[derive(Default)]
pub struct FakeState {
    inner: Mutex<Inner>,
    /// The fakes' wall clock: tokio's, as the engine's is, so a test on paused time sees the
    /// services' timestamps (a webhook's signature) move with its clock.
    pub(crate) clock: baton::engine::Clock,
}

#[derive(Default)]
struct Inner {
    faults: HashMap<String, VecDeque<Fault>>,
    calls: HashMap<String, u32>,
    /// App backend records by kind (`clips`, `transcripts`, `notifications`, ...).
    records: HashMap<String, Vec<Value>>,
    /// `{kind}:{idempotency key}` -> the record id it created.
    app_keys: HashMap<String, String>,
    /// The app's rows: `(table, id)` -> the row, with every change in order.
    rows: HashMap<(String, String), app::Row>,
    clips: clips::Tasks,
}

impl FakeState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues faults for `route` (e.g. `"whisper/transcribe"`): each answers one call.
    pub fn inject(&self, route: &str, faults: impl IntoIterator<Item = Fault>) {
        self.lock()
            .faults
            .entry(route.to_owned())
            .or_default()
            .extend(faults);
    }

    /// How many calls `route` received (faulted ones included).
    pub fn calls(&self, route: &str) -> u32 {
        self.lock().calls.get(route).copied().unwrap_or(0)
    }

    /// What the app backend stored under `kind`, in arrival order.
    pub fn records(&self, kind: &str) -> Vec<Value> {
        self.lock().records.get(kind).cloned().unwrap_or_default()
    }

    /// The app's row `id` of `table` as it is now (`PATCH /app/rows/{table}/{id}` merges
    /// fields into it).
    pub fn row(&self, table: &str, id: &str) -> Option<Value> {
        self.lock()
            .rows
            .get(&(table.to_owned(), id.to_owned()))
            .map(|r| r.fields.clone())
    }

    /// Every value `field` of row `id` of `table` took, in order (a status's transitions).
    pub fn history(&self, table: &str, id: &str, field: &str) -> Vec<Value> {
        self.lock()
            .rows
            .get(&(table.to_owned(), id.to_owned()))
            .map(|r| {
                r.changes
                    .iter()
                    .filter_map(|change| change.get(field).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How long the clip service takes to render a task ([`clips::DEV_RENDER_TIME`] unless
    /// set; the real service takes 10-15 minutes, [`clips::REAL_RENDER_TIME`]).
    pub fn set_clip_render_time(&self, render_time: Duration) {
        self.lock().clips.render_time = Some(render_time);
    }

    pub(crate) fn record(&self, kind: &str, value: Value) {
        self.lock()
            .records
            .entry(kind.to_owned())
            .or_default()
            .push(value);
    }

    /// Counts a call of `route` and applies its next fault: an error response to return
    /// instead, or a delay before answering normally.
    pub(crate) async fn enter(&self, route: &str) -> Option<Response> {
        let fault = {
            let mut inner = self.lock();
            *inner.calls.entry(route.to_owned()).or_default() += 1;
            inner.faults.get_mut(route).and_then(VecDeque::pop_front)
        };
        match fault? {
            Fault::Status(code, message) => Some(error(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                &message,
            )),
            Fault::RetryAfter(seconds) => Some(
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", seconds.to_string())],
                    axum::Json(json!({"error": "rate limited"})),
                )
                    .into_response(),
            ),
            Fault::Slow(delay) => {
                tokio::time::sleep(delay).await;
                None
            }
        }
    }
}

pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

/// A running fake server.
pub struct Fakes {
    /// `http://127.0.0.1:{port}`: pass it to [`crate::services::Services::at`].
    pub base_url: String,
    pub state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl Fakes {
    /// Starts the fakes on 127.0.0.1 (an ephemeral port).
    pub async fn start() -> std::io::Result<Fakes> {
        Self::start_on(0).await
    }

    /// Starts the fakes on 127.0.0.1:`port` (0: any free port).
    pub async fn start_on(port: u16) -> std::io::Result<Fakes> {
        let state = Arc::new(FakeState::default());
        let router = Router::new()
            .nest("/clips", clips::router())
            .nest("/whisper", ml::whisper_router())
            .nest("/embeddings", ml::embeddings_router())
            .nest("/llm", llm::router())
            .nest("/tts", tts::router())
            .nest("/app", app::router())
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!("fake services stopped: {e}");
            }
        });
        Ok(Fakes {
            base_url,
            state,
            task,
        })
    }

    /// Where the clip service sends its signed task callbacks (none until set).
    pub fn set_clip_webhook(&self, target: WebhookTarget) {
        self.state.lock().clips.webhook = Some(target);
    }
}

impl Drop for Fakes {
    fn drop(&mut self) {
        self.task.abort();
    }
}
