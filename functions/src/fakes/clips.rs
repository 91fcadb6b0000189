//! The clip service (Klap in the write-ups): a task per video, rendered in the background,
//! read by polling `GET /tasks/{id}` or told by a signed webhook when it ends. The real
//! service takes 10-15 minutes a video ([`REAL_RENDER_TIME`], what the tests use on paused
//! time); the fake `baton dev` runs takes [`DEV_RENDER_TIME`] so a try-out ends quickly. A
//! video URL containing `corrupt` fails its task with the service's message; one that is not
//! http(s) is refused with 400.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{FakeState, error};

/// How long the real service takes for a typical video (12 minutes: the write-ups see 10-15).
pub const REAL_RENDER_TIME: Duration = Duration::from_secs(12 * 60);
/// How long the fake takes unless told otherwise ([`super::FakeState::set_clip_render_time`]).
pub const DEV_RENDER_TIME: Duration = Duration::from_secs(3);

/// Where task callbacks go: `{baton_url}/v1/webhooks/clips`, signed with `secret`.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub baton_url: String,
    pub secret: String,
}

#[derive(Default)]
pub(crate) struct Tasks {
    tasks: HashMap<String, Task>,
    /// Idempotency key -> task id: a retried create returns the same task.
    by_key: HashMap<String, String>,
    pub(crate) webhook: Option<WebhookTarget>,
    pub(crate) render_time: Option<Duration>,
}

#[derive(Clone)]
struct Task {
    video_url: String,
    state: &'static str,
    error: Option<String>,
}

pub(crate) fn router() -> Router<Arc<FakeState>> {
    Router::new()
        .route("/tasks", post(create))
        .route("/tasks/{id}", get(status))
        .route("/tasks/{id}/clips", get(clips))
}

async fn create(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(fault) = state.enter("clips/create").await {
        return fault;
    }
    let Some(video_url) = body["video_url"].as_str().map(str::to_owned) else {
        return error(StatusCode::BAD_REQUEST, "video_url is required");
    };
    if !(video_url.starts_with("http://") || video_url.starts_with("https://")) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("video_url {video_url:?} is not an http(s) URL"),
        );
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let task_id = {
        let mut inner = state.lock();
        if let Some(existing) = key.as_ref().and_then(|k| inner.clips.by_key.get(k)) {
            return Json(json!({"task_id": existing})).into_response();
        }
        let task_id = format!("task-{}", ulid::Ulid::new());
        inner.clips.tasks.insert(
            task_id.clone(),
            Task {
                video_url: video_url.clone(),
                state: "processing",
                error: None,
            },
        );
        if let Some(k) = key {
            inner.clips.by_key.insert(k, task_id.clone());
        }
        task_id
    };
    tokio::spawn(render(state.clone(), task_id.clone()));
    Json(json!({"task_id": task_id})).into_response()
}

/// Renders a task, then tells the webhook target (if any), signed like the real service.
async fn render(state: Arc<FakeState>, task_id: String) {
    let render_time = state.lock().clips.render_time.unwrap_or(DEV_RENDER_TIME);
    tokio::time::sleep(render_time).await;
    let (body, target) = {
        let mut inner = state.lock();
        let webhook = inner.clips.webhook.clone();
        let Some(task) = inner.clips.tasks.get_mut(&task_id) else {
            return;
        };
        if task.video_url.contains("corrupt") {
            task.state = "failed";
            task.error = Some("video could not be decoded: no video stream found".into());
        } else {
            task.state = "done";
        }
        (task_json(&task_id, task), webhook)
    };
    let Some(target) = target else {
        return;
    };
    let body = body.to_string();
    let ts = state.clock.now().timestamp();
    let signature = baton::webhook::sign(target.secret.as_bytes(), Some(ts), body.as_bytes());
    let delivery = format!("delivery-{task_id}");
    let result = reqwest::Client::new()
        .post(format!("{}/v1/webhooks/clips", target.baton_url))
        .header("content-type", "application/json")
        .header("x-clips-signature", signature)
        .header("x-clips-timestamp", ts.to_string())
        .header("x-clips-delivery", delivery)
        .body(body)
        .send()
        .await;
    if let Err(e) = result {
        tracing::warn!("clip webhook for {task_id} failed: {e}");
    }
}

fn task_json(task_id: &str, task: &Task) -> Value {
    json!({"task_id": task_id, "state": task.state, "error": task.error})
}

async fn status(State(state): State<Arc<FakeState>>, Path(id): Path<String>) -> Response {
    if let Some(fault) = state.enter("clips/status").await {
        return fault;
    }
    let inner = state.lock();
    match inner.clips.tasks.get(&id) {
        Some(task) => Json(task_json(&id, task)).into_response(),
        None => error(StatusCode::NOT_FOUND, &format!("no task {id}")),
    }
}

async fn clips(State(state): State<Arc<FakeState>>, Path(id): Path<String>) -> Response {
    if let Some(fault) = state.enter("clips/clips").await {
        return fault;
    }
    let inner = state.lock();
    match inner.clips.tasks.get(&id) {
        Some(task) if task.state == "done" => {
            let clips: Vec<Value> = (0..3)
                .map(|n| {
                    json!({
                        "clip_id": format!("{id}-clip-{n}"),
                        "url": format!("{}#clip-{n}", task.video_url),
                        "start_s": n * 30,
                        "end_s": n * 30 + 25,
                    })
                })
                .collect();
            Json(json!({"clips": clips})).into_response()
        }
        Some(_) => error(StatusCode::CONFLICT, &format!("task {id} has no clips")),
        None => error(StatusCode::NOT_FOUND, &format!("no task {id}")),
    }
}
