//! The app's own backend:
//!
//! - `PATCH /rows/{table}/{id}` merges a JSON object's fields into the app's row (a video's,
//!   a project's, an episode's), creating it; every change is kept, so tests see a status's
//!   transitions ([`super::FakeState::history`]). `GET /rows/{table}/{id}` reads it.
//! - `POST /{kind}` stores a JSON record (clips, transcripts, embeddings, notifications, usage,
//!   failures, ...) and answers `{"id"}`; `GET /{kind}/{id}` reads one back.
//! - `GET /videos/{id}` describes an uploaded video: where its audio is and how big it is.
//!
//! A write with an `Idempotency-Key` seen before changes nothing and answers as the first one
//! did: a step body may run more than once, and its writes must not double.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use super::{FakeState, error};

/// One of the app's rows: its fields now, and each change made to it.
#[derive(Debug, Default)]
pub(crate) struct Row {
    pub(crate) fields: Value,
    pub(crate) changes: Vec<Map<String, Value>>,
}

/// The audio of a video whose id contains `huge` (over Whisper's 25 MB upload limit).
pub const HUGE_AUDIO_MB: u32 = 60;

pub(crate) fn router() -> Router<Arc<FakeState>> {
    Router::new()
        .route("/videos/{id}", get(video))
        .route("/rows/{table}/{id}", get(read_row).patch(patch_row))
        .route("/{kind}", post(store))
        .route("/{kind}/{id}", get(read))
}

fn idempotency_key(headers: &HeaderMap, scope: &str) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| format!("{scope}:{k}"))
}

async fn video(State(state): State<Arc<FakeState>>, Path(id): Path<String>) -> Response {
    if let Some(fault) = state.enter("app/video").await {
        return fault;
    }
    if id.contains("missing") {
        return error(StatusCode::NOT_FOUND, &format!("video {id} does not exist"));
    }
    let size_mb = if id.contains("huge") {
        HUGE_AUDIO_MB
    } else {
        9
    };
    Json(json!({
        "video_id": id,
        "audio_url": format!("https://media.example/{id}.m4a"),
        "audio_bytes": u64::from(size_mb) * 1024 * 1024,
        "duration_s": 600,
    }))
    .into_response()
}

async fn patch_row(
    State(state): State<Arc<FakeState>>,
    Path((table, id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(fault) = state.enter(&format!("app/rows/{table}")).await {
        return fault;
    }
    let Value::Object(changes) = body else {
        return error(StatusCode::BAD_REQUEST, "the body must be a JSON object");
    };
    let key = idempotency_key(&headers, &format!("rows/{table}/{id}"));
    let mut inner = state.lock();
    if let Some(key) = &key {
        if inner.app_keys.contains_key(key) {
            let row = &inner.rows[&(table.clone(), id.clone())];
            return Json(row.fields.clone()).into_response();
        }
    }
    let row = inner.rows.entry((table, id.clone())).or_default();
    if !row.fields.is_object() {
        row.fields = json!({"id": id});
    }
    let fields = row.fields.as_object_mut().expect("an object");
    for (k, v) in &changes {
        fields.insert(k.clone(), v.clone());
    }
    row.changes.push(changes);
    let answer = row.fields.clone();
    if let Some(key) = key {
        inner.app_keys.insert(key, id);
    }
    Json(answer).into_response()
}

async fn read_row(
    State(state): State<Arc<FakeState>>,
    Path((table, id)): Path<(String, String)>,
) -> Response {
    match state.row(&table, &id) {
        Some(row) => Json(row).into_response(),
        None => error(StatusCode::NOT_FOUND, &format!("no {table} row {id}")),
    }
}

async fn store(
    State(state): State<Arc<FakeState>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(fault) = state.enter(&format!("app/{kind}")).await {
        return fault;
    }
    let key = idempotency_key(&headers, &kind);
    if let Some(key) = &key {
        if let Some(id) = state.lock().app_keys.get(key) {
            return Json(json!({"id": id})).into_response();
        }
    }
    let id = format!("{kind}-{}", state.records(&kind).len() + 1);
    if let Some(key) = key {
        state.lock().app_keys.insert(key, id.clone());
    }
    let mut record = body;
    if let Some(map) = record.as_object_mut() {
        map.insert("id".into(), json!(id));
    }
    state.record(&kind, record);
    Json(json!({"id": id})).into_response()
}

async fn read(
    State(state): State<Arc<FakeState>>,
    Path((kind, id)): Path<(String, String)>,
) -> Response {
    match state
        .records(&kind)
        .into_iter()
        .rev()
        .find(|r| r["id"] == json!(id))
    {
        Some(record) => Json(record).into_response(),
        None => error(StatusCode::NOT_FOUND, &format!("no {kind} {id}")),
    }
}
