//! A text-to-speech API: `POST /v1/speech` `{"model", "input", "voice", "format"?}` renders
//! the input and answers where the audio is stored, `{"audio_url", "duration_s", "bytes",
//! "voice"}` (real TTS APIs answer the audio bytes; a step keeps a URL, not megabytes, in its
//! journaled output). Deterministic: the URL follows the input and voice, the duration its
//! words (2.5 words per second).
//!
//! Refused with 400, as the real services do: an empty input, an input longer than
//! [`MAX_INPUT_CHARS`], a voice not in [`VOICES`]. Faults are injected on `tts/speech`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{FakeState, error};

/// The voices the service has.
pub const VOICES: [&str; 6] = ["alloy", "echo", "fable", "onyx", "nova", "shimmer"];
/// The longest input one call takes (callers split longer scripts).
pub const MAX_INPUT_CHARS: usize = 4096;

pub(crate) fn router() -> Router<Arc<FakeState>> {
    Router::new().route("/v1/speech", post(speech))
}

async fn speech(State(state): State<Arc<FakeState>>, Json(body): Json<Value>) -> Response {
    if let Some(fault) = state.enter("tts/speech").await {
        return fault;
    }
    let input = body["input"].as_str().unwrap_or_default();
    if input.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "input is required");
    }
    let chars = input.chars().count();
    if chars > MAX_INPUT_CHARS {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("input is {chars} characters; at most {MAX_INPUT_CHARS} per request"),
        );
    }
    let voice = body["voice"].as_str().unwrap_or_default();
    if !VOICES.contains(&voice) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "voice {voice:?} is not supported (one of: {})",
                VOICES.join(", ")
            ),
        );
    }
    let format = body["format"].as_str().unwrap_or("mp3");
    let words = input.split_whitespace().count() as f64;
    Json(json!({
        "audio_url": format!("https://media.example/tts/{:016x}.{format}", fnv1a(&[voice, input])),
        "duration_s": (words / 2.5 * 10.0).round() / 10.0,
        "bytes": chars * 320,
        "voice": voice,
    }))
    .into_response()
}

/// A stable hash (FNV-1a) of the parts, for deterministic URLs.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in parts.iter().flat_map(|p| p.bytes().chain([0])) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
