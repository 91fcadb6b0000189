//! The app's own backend: `POST /{kind}` stores a JSON record (clips, transcripts,
//! embeddings, notifications, usage, failures, ...) and answers `{"id"}`; `GET /{kind}/{id}`
//! reads one back; `GET /videos/{id}` describes an uploaded video. A store with an
//! `Idempotency-Key` seen before answers the first one's id and stores nothing (a step body
//! may run more than once; its writes must not double).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{FakeState, error};

pub(crate) fn router() -> Router<Arc<FakeState>> {
    Router::new()
        .route("/videos/{id}", get(video))
        .route("/{kind}", post(store))
        .route("/{kind}/{id}", get(read))
}

async fn video(State(state): State<Arc<FakeState>>, Path(id): Path<String>) -> Response {
    if let Some(fault) = state.enter("app/video").await {
        return fault;
    }
    if id.contains("missing") {
        return error(StatusCode::NOT_FOUND, &format!("video {id} does not exist"));
    }
    Json(json!({
        "video_id": id,
        "audio_url": format!("https://media.example/{id}.m4a"),
        "duration_s": 600,
    }))
    .into_response()
}

async fn store(
    State(state): State<Arc<FakeState>>,
    Path(kind): Path<String>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(fault) = state.enter(&format!("app/{kind}")).await {
        return fault;
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| format!("{kind}:{k}"));
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
