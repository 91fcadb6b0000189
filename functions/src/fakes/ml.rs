//! Machine-learning APIs: a Whisper-style transcription endpoint and an embeddings endpoint.
//! Deterministic: the transcript's length follows the audio URL (`...-words{N}...` gives N
//! words, default 1,800), and an embedding is derived from its text.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{FakeState, error};

/// Dimensions of the fake embeddings.
pub const DIMENSIONS: usize = 8;
/// The most inputs one embeddings call takes (as real APIs cap batches).
pub const MAX_BATCH: usize = 20;

pub(crate) fn whisper_router() -> Router<Arc<FakeState>> {
    Router::new().route("/v1/audio/transcriptions", post(transcribe))
}

pub(crate) fn embeddings_router() -> Router<Arc<FakeState>> {
    Router::new().route("/v1/embeddings", post(embed))
}

async fn transcribe(State(state): State<Arc<FakeState>>, Json(body): Json<Value>) -> Response {
    if let Some(fault) = state.enter("whisper/transcribe").await {
        return fault;
    }
    let Some(url) = body["url"].as_str() else {
        return error(StatusCode::BAD_REQUEST, "url is required");
    };
    if url.contains("silent") {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "audio has no speech");
    }
    let words = url
        .split("-words")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1800);
    let text = (0..words)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    Json(json!({"text": text, "language": "en", "duration": words as f64 / 2.5})).into_response()
}

async fn embed(State(state): State<Arc<FakeState>>, Json(body): Json<Value>) -> Response {
    if let Some(fault) = state.enter("embeddings/embed").await {
        return fault;
    }
    let Some(inputs) = body["input"].as_array() else {
        return error(StatusCode::BAD_REQUEST, "input must be an array of strings");
    };
    if inputs.len() > MAX_BATCH {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("at most {MAX_BATCH} inputs per call, got {}", inputs.len()),
        );
    }
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let text = text.as_str().unwrap_or_default();
            let embedding: Vec<f64> = (0..DIMENSIONS)
                .map(|d| ((text.len() + d * 31) % 97) as f64 / 97.0)
                .collect();
            json!({"index": index, "embedding": embedding})
        })
        .collect();
    Json(json!({"data": data})).into_response()
}
