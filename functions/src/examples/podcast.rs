//! `generate-podcast`: an interview episode from a topic, as the podcast team's Inngest
//! function did it (outline → script → audio → upload → publish), on `podcast/generate.requested`.
//!
//! - outline and script: the LLM (structured output); audio: text-to-speech, one call per
//!   script line (the TTS API takes at most 4,096 characters), 4 at a time with `ctx.map`,
//!   each its own step; upload and complete: the app's backend.
//! - Progress 10/40/70/90/100 with a message per stage, in the run's status
//!   (`GET /v1/runs/{id}`): no "update status" steps between the real ones.
//! - One retry per step, a step timeout and memory each; 429s wait for their `Retry-After`;
//!   a 4xx (a bad voice, say) fails the run at once with the service's message.
//! - A step's output is journaled, so it stays small: the TTS service stores the audio and
//!   answers its URL; the upload hands the URLs to the app, not megabytes of audio.
//! - A run that has not ended 10 minutes after its event is cancelled (`FinishTimeout`).
//! - Failure handler: records the error on the podcast (`POST /app/podcast_failures`), and a
//!   cancelled run is recorded the same way ([`on_cancelled`]), so no podcast stays
//!   "generating" forever.
//!
//! ```text
//! curl -s localhost:8288/e/dev -d '{"name":"podcast/generate.requested","data":{"podcast_id":"p-1","topic":"The Apollo program","user_id":"u-1"}}'
//! ```

use std::sync::Arc;
use std::time::Duration;

use baton::function::FUNCTION_CANCELLED;
use baton::model::ErrorInfo;
use baton::{Ctx, Error, Event, FailureData, Function, StepConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::llm;
use crate::services::Services;

pub const EVENT: &str = "podcast/generate.requested";
pub const FUNCTION_ID: &str = "generate-podcast";
/// How long a podcast may take, from its event to its end.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(600);
/// TTS calls at once.
pub const AUDIO_PARALLELISM: usize = 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodcastRequest {
    pub podcast_id: String,
    pub topic: String,
    pub user_id: String,
    #[serde(default)]
    pub angle: Option<String>,
    /// Who the host interviews (the model picks when absent).
    #[serde(default)]
    pub guest: Option<String>,
    #[serde(default = "default_host_voice")]
    pub host_voice: String,
    #[serde(default = "default_guest_voice")]
    pub guest_voice: String,
}

fn default_host_voice() -> String {
    "onyx".into()
}
fn default_guest_voice() -> String {
    "echo".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outline {
    pub title: String,
    pub angle: String,
    pub guest: Guest,
    pub segments: Vec<Segment>,
    #[serde(default)]
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guest {
    pub name: String,
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub heading: String,
    pub points: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Script {
    pub lines: Vec<Line>,
    pub total_words: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// `host` or `guest`.
    pub speaker: String,
    pub text: String,
}

/// One rendered line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Audio {
    pub audio_url: String,
    pub duration_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upload {
    pub upload_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Podcast {
    pub podcast_id: String,
    pub title: String,
    pub upload_id: String,
    pub duration_s: f64,
    pub lines: usize,
}

pub fn function(services: Arc<Services>) -> Function {
    let failure_services = services.clone();
    Function::new(FUNCTION_ID)
        .name("Generate a podcast episode")
        .trigger(EVENT)
        .retries(1)
        .finish_timeout(FINISH_TIMEOUT)
        .step(
            "outline",
            StepConfig::default()
                .timeout(Duration::from_secs(120))
                .memory_mb(256),
        )
        .step(
            "script",
            StepConfig::default()
                .timeout(Duration::from_secs(180))
                .memory_mb(256),
        )
        .step(
            "audio",
            StepConfig::default()
                .timeout(Duration::from_secs(120))
                .memory_mb(512),
        )
        .step(
            "upload",
            StepConfig::default()
                .timeout(Duration::from_secs(300))
                .memory_mb(1024),
        )
        .step(
            "complete",
            StepConfig::default()
                .timeout(Duration::from_secs(30))
                .memory_mb(128),
        )
        .failure_step(
            "record-failure",
            StepConfig::default()
                .timeout(Duration::from_secs(30))
                .memory_mb(128),
        )
        .handler(move |ctx: Ctx, event: Event<PodcastRequest>| {
            generate(services.clone(), ctx, event)
        })
        .on_failure(move |ctx: Ctx, event: Event<FailureData>| {
            let services = failure_services.clone();
            async move {
                let failure = event.data;
                let error = format!("{}: {}", failure.error.name, failure.error.message);
                record_failure(
                    &services,
                    &ctx,
                    &failure.event,
                    &failure.run_id,
                    "failed",
                    error,
                )
                .await
            }
        })
}

/// `generate-podcast-cancelled`: a podcast run that was cancelled (its finish timeout, or a
/// `DELETE /v1/runs/{id}`) is recorded as a failure too, so the app never shows it
/// generating forever. (`on_failure` runs for failed runs only.)
pub fn on_cancelled(services: Arc<Services>) -> Function {
    Function::new(format!("{FUNCTION_ID}-cancelled"))
        .name("Record a cancelled podcast")
        .trigger_if(FUNCTION_CANCELLED, "data.function_id", json!(FUNCTION_ID))
        .retries(3)
        .step(
            "record-failure",
            StepConfig::default()
                .timeout(Duration::from_secs(30))
                .memory_mb(128),
        )
        .handler(move |ctx: Ctx, event: Event<Cancelled>| {
            let services = services.clone();
            async move {
                let cancelled = event.data;
                let error = match &cancelled.error {
                    Some(e) => format!("{}: {}", e.name, e.message),
                    // Cancelled by hand (DELETE /v1/runs/{id}, a cancel-on event).
                    None => "Cancelled: the run was cancelled".to_owned(),
                };
                record_failure(
                    &services,
                    &ctx,
                    &cancelled.event,
                    &cancelled.run_id,
                    "cancelled",
                    error,
                )
                .await
            }
        })
}

/// `data` of `baton/function.cancelled`.
#[derive(Debug, Clone, Deserialize)]
pub struct Cancelled {
    pub run_id: String,
    pub event: Value,
    /// Why, when the engine cancelled it (`FinishTimeout`, `StartTimeout`).
    #[serde(default)]
    pub error: Option<ErrorInfo>,
}

async fn generate(
    services: Arc<Services>,
    ctx: Ctx,
    event: Event<PodcastRequest>,
) -> Result<Podcast, Error> {
    let request = event.data;

    ctx.progress(10, "writing the outline").await?;
    let llm_service = services.llm.clone();
    let input = json!({"topic": request.topic, "angle": request.angle, "guest": request.guest});
    let outline: Outline = ctx
        .step("outline", |s| async move {
            llm::structured(
                &llm_service,
                "podcast_outline",
                outline_schema(),
                "You plan interview podcast episodes. Answer the episode's outline.",
                Value::String(input.to_string()),
                &s.idempotency_key,
            )
            .await
        })
        .await?;

    ctx.progress(40, format!("writing the script of \"{}\"", outline.title))
        .await?;
    let llm_service = services.llm.clone();
    let input = json!({"outline": outline});
    let script: Script = ctx
        .step("script", |s| async move {
            llm::structured(
                &llm_service,
                "podcast_script",
                script_schema(),
                "You write interview podcast scripts: a host and a guest, line by line.",
                Value::String(input.to_string()),
                &s.idempotency_key,
            )
            .await
        })
        .await?;

    ctx.progress(
        70,
        format!("recording {} lines of audio", script.lines.len()),
    )
    .await?;
    let voices = (request.host_voice.clone(), request.guest_voice.clone());
    let audio: Vec<Audio> = ctx
        .map(
            "audio",
            script.lines.clone(),
            AUDIO_PARALLELISM,
            |s, line: Line| {
                let tts = services.tts.clone();
                let voice = if line.speaker == "guest" {
                    voices.1.clone()
                } else {
                    voices.0.clone()
                };
                async move {
                    let body = json!({"model": "tts-1", "input": line.text, "voice": voice, "format": "mp3"});
                    tts.post("/v1/speech", &body, Some(&s.idempotency_key))
                        .await
                }
            },
        )
        .await?;
    let duration_s = (audio.iter().map(|a| a.duration_s).sum::<f64>() * 10.0).round() / 10.0;

    ctx.progress(90, "uploading the episode").await?;
    let app = services.app.clone();
    let body = json!({
        "podcast_id": request.podcast_id,
        "user_id": request.user_id,
        "filename": format!("podcast-{}.mp3", request.podcast_id),
        "content_type": "audio/mpeg",
        "parts": audio.iter().map(|a| a.audio_url.clone()).collect::<Vec<_>>(),
        "duration_s": duration_s,
    });
    let upload: Upload = ctx
        .step("upload", |s| async move {
            let stored: Value = app
                .post("/uploads", &body, Some(&s.idempotency_key))
                .await?;
            Ok(Upload {
                upload_id: stored["id"].as_str().unwrap_or_default().to_owned(),
            })
        })
        .await?;

    let app = services.app.clone();
    let transcript = script
        .lines
        .iter()
        .map(|l| format!("{}: {}", l.speaker, l.text))
        .collect::<Vec<_>>()
        .join("\n\n");
    let body = json!({
        "podcast_id": request.podcast_id,
        "user_id": request.user_id,
        "status": "complete",
        "title": outline.title,
        "subtitle": outline.angle,
        "guest": outline.guest,
        "upload_id": upload.upload_id,
        "duration_s": duration_s,
        "total_words": script.total_words,
        "transcript": transcript,
        "sources": outline.sources,
    });
    ctx.step("complete", |s| async move {
        app.post::<Value>("/podcasts", &body, Some(&s.idempotency_key))
            .await
            .map(|_| ())
    })
    .await?;
    ctx.progress(100, format!("published \"{}\"", outline.title))
        .await?;

    Ok(Podcast {
        podcast_id: request.podcast_id,
        title: outline.title,
        upload_id: upload.upload_id,
        duration_s,
        lines: script.lines.len(),
    })
}

/// Records on the podcast why it did not finish (`reason`: `failed` or `cancelled`).
async fn record_failure(
    services: &Services,
    ctx: &Ctx,
    run_event: &Value,
    run_id: &str,
    reason: &str,
    error: String,
) -> Result<String, Error> {
    let app = services.app.clone();
    let body = json!({
        "podcast_id": run_event["data"]["podcast_id"],
        "user_id": run_event["data"]["user_id"],
        "run_id": run_id,
        "status": reason,
        "error": error,
    });
    ctx.step("record-failure", |s| async move {
        let stored: Value = app
            .post("/podcast_failures", &body, Some(&s.idempotency_key))
            .await?;
        Ok(stored["id"].as_str().unwrap_or_default().to_owned())
    })
    .await
}

fn outline_schema() -> Value {
    json!({
        "type": "object",
        "required": ["title", "angle", "guest", "segments", "sources"],
        "properties": {
            "title": {"type": "string"},
            "angle": {"type": "string"},
            "guest": {"type": "object", "required": ["name", "role"], "properties": {
                "name": {"type": "string"}, "role": {"type": "string"}}},
            "segments": {"type": "array", "items": {"type": "object", "required": ["heading", "points"], "properties": {
                "heading": {"type": "string"}, "points": {"type": "array", "items": {"type": "string"}}}}},
            "sources": {"type": "array", "items": {"type": "string"}},
        },
    })
}

fn script_schema() -> Value {
    json!({
        "type": "object",
        "required": ["lines", "total_words"],
        "properties": {
            "lines": {"type": "array", "items": {"type": "object", "required": ["speaker", "text"], "properties": {
                "speaker": {"type": "string", "enum": ["host", "guest"]}, "text": {"type": "string"}}}},
            "total_words": {"type": "integer"},
        },
    })
}
