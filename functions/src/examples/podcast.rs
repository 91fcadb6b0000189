//! Podcast episodes in three formats, as the podcast team's Inngest functions made them:
//! `generate-interview`, `generate-debate` and `generate-adventure`, on
//! `episode/generate.{interview,debate,adventure}`. One pipeline, the format picking the
//! prompts, the voices and how many lines are recorded at once:
//!
//! - outline and script: the LLM (structured output, a schema per format); audio:
//!   text-to-speech, one call per line or story node (the TTS API takes at most 4,096
//!   characters), 4 at a time (an adventure's nodes 3 at a time, as the write-up batched
//!   them), each its own step; upload and complete: the app's backend.
//! - The app's `episodes` row goes `GENERATING_OUTLINE` (10%) → `GENERATING_SCRIPT` (40%) →
//!   `GENERATING_AUDIO` (70%) → `UPLOADING` (90%) → `COMPLETED` (100%), as the write-up's
//!   status steps set it (`generationStatus`, `generationProgress`); the same stages are the
//!   run's progress in Baton's status API.
//! - One retry per step (the write-up's `retries: 1`), a step timeout and memory each; 429s
//!   wait for their `Retry-After`; a 4xx (a bad voice, say) fails the run at once with the
//!   service's message.
//! - A step's output is journaled, so it stays small: the TTS service stores the audio and
//!   answers its URL; the upload hands the URLs to the app, not megabytes of audio.
//! - A run that has not ended 10 minutes after its event is cancelled (`FinishTimeout`).
//! - The failure handlers mark the episode `FAILED` with the error
//!   (`generationError`), and so does `generate-episode-cancelled` for a cancelled run
//!   (the finish timeout, or a `DELETE /v1/runs/{id}`): no episode stays generating.
//!
//! ```text
//! curl -s localhost:8288/e/dev -d '{"name":"episode/generate.interview","data":{"episode_id":"e-1","user_id":"u-1","topic":"The Apollo program","guest":"Margaret Hamilton"}}'
//! ```

use std::sync::Arc;
use std::time::Duration;

use baton::function::FUNCTION_CANCELLED;
use baton::model::ErrorInfo;
use baton::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::llm;
use crate::services::Services;

/// How long an episode may take, from its event to its end.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(600);
/// The cancellation handler's id.
pub const CANCELLED_ID: &str = "generate-episode-cancelled";

steps! {
    /// The steps of each format's function.
    pub const STEPS = [
        /// Sets the episode's generation status in the app, at each stage.
        UPDATE_STATUS = Step::new("update-status").timeout(Duration::from_secs(15)).memory_mb(128),
        OUTLINE = Step::new("outline").timeout(Duration::from_secs(120)),
        SCRIPT = Step::new("script").timeout(Duration::from_secs(180)),
        /// One line or story node through text-to-speech.
        AUDIO = Step::new("audio").timeout(Duration::from_secs(120)).memory_mb(512),
        UPLOAD = Step::new("upload").timeout(Duration::from_secs(300)).memory_mb(1024),
        COMPLETE = Step::new("complete").timeout(Duration::from_secs(30)).memory_mb(128),
    ];
}

steps! {
    /// The failure and cancellation handlers' step.
    pub const FAILURE_STEPS = [
        MARK_FAILED = Step::new("mark-failed").timeout(Duration::from_secs(30)).memory_mb(128),
    ];
}

/// The three formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A host interviews a guest.
    Interview,
    /// A moderator and two sides argue a motion.
    Debate,
    /// A choose-your-own-adventure story: narrated nodes and the choices between them.
    Adventure,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Interview, Format::Debate, Format::Adventure];

    pub fn name(self) -> &'static str {
        match self {
            Format::Interview => "interview",
            Format::Debate => "debate",
            Format::Adventure => "adventure",
        }
    }

    /// The function's id: `generate-interview`, ...
    pub fn function_id(self) -> String {
        format!("generate-{}", self.name())
    }

    /// Its event: `episode/generate.interview`, ...
    pub fn event(self) -> String {
        format!("episode/generate.{}", self.name())
    }

    /// Lines recorded at once.
    fn audio_parallelism(self) -> usize {
        match self {
            Format::Adventure => 3,
            _ => 4,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpisodeRequest {
    pub episode_id: String,
    pub user_id: String,
    pub topic: String,
    #[serde(default)]
    pub angle: Option<String>,
    /// Interview: who the host talks to (the model picks when absent).
    #[serde(default)]
    pub guest: Option<String>,
    /// Debate: who argues for and against.
    #[serde(default, rename = "for")]
    pub side_for: Option<String>,
    #[serde(default)]
    pub against: Option<String>,
    /// Adventure: whose story it is.
    #[serde(default)]
    pub protagonist: Option<String>,
    /// Voices: the host (interview), the moderator (debate), the narrator (adventure) ...
    #[serde(default)]
    pub host_voice: Option<String>,
    /// ... and the guest (interview) or the side for (debate).
    #[serde(default)]
    pub guest_voice: Option<String>,
    /// The side against (debate).
    #[serde(default)]
    pub third_voice: Option<String>,
}

impl EpisodeRequest {
    /// The voice of a speaker of `format`'s script.
    fn voice(&self, format: Format, speaker: &str) -> String {
        let pick = |given: &Option<String>, default: &str| {
            given.clone().unwrap_or_else(|| default.to_owned())
        };
        match (format, speaker) {
            (Format::Interview, "guest") => pick(&self.guest_voice, "echo"),
            (Format::Debate, "for") => pick(&self.guest_voice, "echo"),
            (Format::Debate, "against") => pick(&self.third_voice, "nova"),
            (Format::Adventure, _) => pick(&self.host_voice, "fable"),
            _ => pick(&self.host_voice, "onyx"),
        }
    }
}

/// One line to record: who says it, what, and (adventure) which story node it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub speaker: String,
    pub text: String,
    #[serde(default)]
    pub node: Option<String>,
}

/// The script, whatever the format: the lines in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Script {
    pub lines: Vec<Line>,
    pub total_words: u32,
}

/// One recorded line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Audio {
    pub audio_url: String,
    pub duration_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    pub episode_id: String,
    pub format: String,
    pub title: String,
    pub upload_id: String,
    pub duration_s: f64,
    pub lines: usize,
}

/// The function of one format.
pub fn function(format: Format, services: Arc<Services>) -> Function {
    Function::new(format.function_id())
        .name(format!("Generate a {} episode", format.name()))
        .trigger(format.event())
        .retries(1)
        .finish_timeout(FINISH_TIMEOUT)
        .steps(STEPS)
        .failure_steps(FAILURE_STEPS)
        .handler_with(services.clone(), move |ctx, event, services| {
            generate(format, ctx, event, services)
        })
        .on_failure_with(
            services,
            async |ctx: Ctx, event: Event<FailureData>, services: Arc<Services>| {
                let failure = &event.data;
                let error = format!("{}: {}", failure.error.name, failure.error.message);
                mark_failed(&services, &ctx, &failure.event, &failure.run_id, error).await
            },
        )
}

/// `generate-episode-cancelled`: an episode run that was cancelled (its finish timeout, or a
/// `DELETE /v1/runs/{id}`) marks the episode failed too, so the app never shows it
/// generating forever. (`on_failure` runs for failed runs only.)
pub fn on_cancelled(services: Arc<Services>) -> Function {
    let mut function = Function::new(CANCELLED_ID)
        .name("Mark a cancelled episode failed")
        .failure_steps(&[])
        .step(MARK_FAILED);
    for format in Format::ALL {
        function = function.trigger_if(
            FUNCTION_CANCELLED,
            "data.function_id",
            json!(format.function_id()),
        );
    }
    function.handler_with(
        services,
        async |ctx: Ctx, event: Event<Cancelled>, services: Arc<Services>| {
            let cancelled = &event.data;
            let error = format!("{}: {}", cancelled.error.name, cancelled.error.message);
            mark_failed(&services, &ctx, &cancelled.event, &cancelled.run_id, error).await
        },
    )
}

/// `data` of `baton/function.cancelled`.
#[derive(Debug, Clone, Deserialize)]
pub struct Cancelled {
    pub run_id: String,
    pub event: Value,
    /// Why: `FinishTimeout`, `StartTimeout`, or `Cancelled` (by request or by an event).
    pub error: ErrorInfo,
}

fn episode_row(id: &str) -> String {
    format!("/rows/episodes/{id}")
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

async fn generate(
    format: Format,
    ctx: Ctx,
    event: Event<EpisodeRequest>,
    services: Arc<Services>,
) -> Result<Episode, Error> {
    let request = &event.data;
    // The app's row and the run's progress, at each stage.
    let stage = async |status: &str, percent: u8, message: String| {
        ctx.progress(percent, message);
        ctx.step(UPDATE_STATUS, async |s| {
            let mut fields = json!({"generationStatus": status, "generationProgress": percent});
            if percent == 10 {
                fields["generationStartedAt"] = json!(now());
            }
            services
                .app
                .patch::<Value>(
                    &episode_row(&request.episode_id),
                    &fields,
                    Some(&s.idempotency_key),
                )
                .await
                .map(drop)
        })
        .await
    };

    stage("GENERATING_OUTLINE", 10, "writing the outline".into()).await?;
    let outline: Value = ctx
        .step(OUTLINE, async |s| {
            let input = json!({
                "topic": request.topic,
                "angle": request.angle,
                "guest": request.guest,
                "for": request.side_for,
                "against": request.against,
                "protagonist": request.protagonist,
            });
            llm::structured(
                &services.llm,
                &format!("{}_outline", format.name()),
                outline_schema(format),
                &format!(
                    "You plan {} podcast episodes. Answer the episode's outline.",
                    format.name()
                ),
                Value::String(input.to_string()),
                &s.idempotency_key,
            )
            .await
        })
        .await?;
    let title = outline["title"]
        .as_str()
        .unwrap_or(&request.topic)
        .to_owned();

    stage(
        "GENERATING_SCRIPT",
        40,
        format!("writing the script of \"{title}\""),
    )
    .await?;
    let script: Script = ctx
        .step(SCRIPT, async |s| {
            let answer: Value = llm::structured(
                &services.llm,
                &format!("{}_script", format.name()),
                script_schema(format),
                &format!("You write {} podcast scripts, line by line.", format.name()),
                Value::String(json!({"outline": outline}).to_string()),
                &s.idempotency_key,
            )
            .await?;
            script_of(format, &answer)
        })
        .await?;

    stage(
        "GENERATING_AUDIO",
        70,
        format!("recording {} lines of audio", script.lines.len()),
    )
    .await?;
    let audio: Vec<Audio> = ctx
        .map(
            AUDIO,
            &script.lines,
            format.audio_parallelism(),
            |s, line: &Line| {
                let body = json!({
                    "model": "tts-1",
                    "input": line.text,
                    "voice": request.voice(format, &line.speaker),
                    "format": "mp3",
                });
                let tts = &services.tts;
                async move {
                    tts.post("/v1/speech", &body, Some(&s.idempotency_key))
                        .await
                }
            },
        )
        .await?;
    let duration_s = (audio.iter().map(|a| a.duration_s).sum::<f64>() * 10.0).round() / 10.0;

    stage("UPLOADING", 90, "uploading the episode".into()).await?;
    let upload_id: String = ctx
        .step(UPLOAD, async |s| {
            let body = json!({
                "episode_id": request.episode_id,
                "user_id": request.user_id,
                "filename": format!("{}-{}.mp3", format.name(), request.episode_id),
                "content_type": "audio/mpeg",
                "parts": audio.iter().map(|a| &a.audio_url).collect::<Vec<_>>(),
                "duration_s": duration_s,
            });
            let stored: Value = services
                .app
                .post("/uploads", &body, Some(&s.idempotency_key))
                .await?;
            Ok(stored["id"].as_str().unwrap_or_default().to_owned())
        })
        .await?;

    ctx.step(COMPLETE, async |s| {
        let transcript = script
            .lines
            .iter()
            .map(|l| format!("{}: {}", l.speaker, l.text))
            .collect::<Vec<_>>()
            .join("\n\n");
        let fields = json!({
            "title": title,
            "format": format.name(),
            "uploadId": upload_id,
            "duration": duration_s,
            "transcript": transcript,
            "totalWords": script.total_words,
            "sources": outline["sources"],
            "status": "PUBLISHED",
            "publishedAt": now(),
            "generationStatus": "COMPLETED",
            "generationProgress": 100,
            "generationCompletedAt": now(),
        });
        services
            .app
            .patch::<Value>(
                &episode_row(&request.episode_id),
                &fields,
                Some(&s.idempotency_key),
            )
            .await
            .map(drop)
    })
    .await?;
    ctx.progress(100, format!("published \"{title}\""));

    Ok(Episode {
        episode_id: request.episode_id.clone(),
        format: format.name().to_owned(),
        title,
        upload_id,
        duration_s,
        lines: script.lines.len(),
    })
}

/// The model's script as lines: interview and debate scripts are lines already; an
/// adventure's nodes are narrated, one line a node.
fn script_of(format: Format, answer: &Value) -> Result<Script, StepError> {
    let invalid = |why: &str| {
        StepError::non_retriable(format!(
            "the model's {} script is not usable: {why}",
            format.name()
        ))
        .named("InvalidModelOutput")
    };
    let total_words = answer["total_words"].as_u64().unwrap_or(0) as u32;
    let lines: Vec<Line> = match format {
        Format::Adventure => answer["nodes"]
            .as_array()
            .ok_or_else(|| invalid("no nodes"))?
            .iter()
            .map(|n| Line {
                speaker: "narrator".into(),
                text: n["narration"].as_str().unwrap_or_default().to_owned(),
                node: n["id"].as_str().map(str::to_owned),
            })
            .collect(),
        _ => {
            serde_json::from_value(answer["lines"].clone()).map_err(|e| invalid(&e.to_string()))?
        }
    };
    if lines.is_empty() || lines.iter().any(|l| l.text.trim().is_empty()) {
        return Err(invalid("it has an empty line"));
    }
    Ok(Script { lines, total_words })
}

/// Marks the episode `FAILED` with why it did not finish.
async fn mark_failed(
    services: &Services,
    ctx: &Ctx,
    run_event: &Value,
    run_id: &str,
    error: String,
) -> Result<(), Error> {
    let episode_id = run_event["data"]["episode_id"].as_str().unwrap_or_default();
    ctx.step(MARK_FAILED, async |s| {
        let fields = json!({
            "generationStatus": "FAILED",
            "generationError": error,
            "generationRunId": run_id,
        });
        services
            .app
            .patch::<Value>(&episode_row(episode_id), &fields, Some(&s.idempotency_key))
            .await
            .map(drop)
    })
    .await
}

fn string_list() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}

fn outline_schema(format: Format) -> Value {
    let headed = json!({"type": "array", "items": {"type": "object", "required": ["heading", "points"], "properties": {
        "heading": {"type": "string"}, "points": string_list()}}});
    match format {
        Format::Interview => json!({
            "type": "object",
            "required": ["title", "angle", "guest", "segments", "sources"],
            "properties": {
                "title": {"type": "string"},
                "angle": {"type": "string"},
                "guest": {"type": "object", "required": ["name", "role"], "properties": {
                    "name": {"type": "string"}, "role": {"type": "string"}}},
                "segments": headed,
                "sources": string_list(),
            },
        }),
        Format::Debate => json!({
            "type": "object",
            "required": ["title", "motion", "sides", "rounds", "sources"],
            "properties": {
                "title": {"type": "string"},
                "motion": {"type": "string"},
                "sides": {"type": "array", "items": {"type": "object", "required": ["name", "position"], "properties": {
                    "name": {"type": "string"}, "role": {"type": "string"}, "position": {"type": "string", "enum": ["for", "against"]}}}},
                "rounds": headed,
                "sources": string_list(),
            },
        }),
        Format::Adventure => json!({
            "type": "object",
            "required": ["title", "premise", "nodes"],
            "properties": {
                "title": {"type": "string"},
                "premise": {"type": "string"},
                "nodes": {"type": "array", "items": {"type": "object", "required": ["id", "title", "summary", "choices"], "properties": {
                    "id": {"type": "string"}, "title": {"type": "string"}, "summary": {"type": "string"},
                    "choices": {"type": "array", "items": {"type": "object", "required": ["label", "next"], "properties": {
                        "label": {"type": "string"}, "next": {"type": "string"}}}}}}},
            },
        }),
    }
}

fn script_schema(format: Format) -> Value {
    let speakers: &[&str] = match format {
        Format::Interview => &["host", "guest"],
        Format::Debate => &["moderator", "for", "against"],
        Format::Adventure => {
            return json!({
                "type": "object",
                "required": ["nodes", "total_words"],
                "properties": {
                    "nodes": {"type": "array", "items": {"type": "object", "required": ["id", "narration", "choices"], "properties": {
                        "id": {"type": "string"}, "narration": {"type": "string"}, "choices": {"type": "array"}}}},
                    "total_words": {"type": "integer"},
                },
            });
        }
    };
    json!({
        "type": "object",
        "required": ["lines", "total_words"],
        "properties": {
            "lines": {"type": "array", "items": {"type": "object", "required": ["speaker", "text"], "properties": {
                "speaker": {"type": "string", "enum": speakers}, "text": {"type": "string"}}}},
            "total_words": {"type": "integer"},
        },
    })
}
