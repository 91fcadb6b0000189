//! `parse-transcript`: a sales call's transcript parsed by an LLM into speakers, timed
//! segments, a summary and action items, saved, and added to the opportunity's history, on
//! `transcript/parse.requested` (the opportunity tracker's Inngest function,
//! `parseGongTranscriptJob`: mark the call `parsing`, parse, save, update the history, and
//! the call ends `completed` or `failed`).
//!
//! Its write-up's problem was a job killed mid-way by the serverless platform, leaving the
//! call "parsing" forever. Here it must never stay stuck:
//! - each stage is a step, journaled: a handler that dies mid-step is found by the sweeper
//!   once the step's timeout (plus the executor's grace) has passed, and the step runs again
//!   (a restarted `baton dev` re-drives every unfinished run at once);
//! - transient errors (5xx, 429 with `Retry-After`, timeouts) are retried, 3 times;
//! - output the model got wrong (not the schema asked for) or a request the LLM refuses
//!   (4xx) fails the run at once with the reason, and the failure handler marks the call
//!   `failed` with it: the app's `gong_calls` row goes `parsing` → `completed`, or ends
//!   `failed`, never left at `parsing`;
//! - a failed run is brought back with `POST /v1/runs/{id}/replay` once the cause is fixed.
//!
//! ```text
//! curl -s localhost:8288/e/dev -d '{"name":"transcript/parse.requested","data":{"transcript_id":"t-1","user_id":"u-1","text":"Alex: Hi.\nSam: We need the pilot live."}}'
//! ```

use baton::Step;
use std::sync::Arc;
use std::time::Duration;

use baton::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::llm;
use crate::services::Services;

pub const EVENT: &str = "transcript/parse.requested";
pub const FUNCTION_ID: &str = "parse-transcript";

steps! {
    /// The steps of `parse-transcript`.
    pub const STEPS = [
        /// Sets the call's parsing status in the app (at the start and the end).
        UPDATE_STATUS = Step::new("update-status").timeout(Duration::from_secs(15)).memory_mb(128),
        PARSE = Step::new("parse").timeout(Duration::from_secs(120)).memory_mb(512),
        SAVE = Step::new("save").timeout(Duration::from_secs(30)),
        UPDATE_HISTORY = Step::new("update-history").timeout(Duration::from_secs(30)).memory_mb(128),
    ];
}

steps! {
    /// The failure handler's step.
    pub const FAILURE_STEPS = [
        MARK_FAILED = Step::new("mark-failed").timeout(Duration::from_secs(15)).memory_mb(128),
    ];
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParseRequest {
    pub transcript_id: String,
    pub user_id: String,
    /// The transcript itself (lines `Speaker: text`), or
    #[serde(default)]
    pub text: Option<String>,
    /// where it is stored: handed to the model as a file part, which it fetches.
    #[serde(default)]
    pub url: Option<String>,
    /// The opportunity whose history the call joins.
    #[serde(default)]
    pub opportunity_id: Option<String>,
}

/// What the model extracts (the `transcript_parse` schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parsed {
    pub speakers: Vec<String>,
    pub segments: Vec<TimedSegment>,
    pub summary: String,
    #[serde(default)]
    pub action_items: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimedSegment {
    pub speaker: String,
    pub start_s: f64,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParseResult {
    pub transcript_id: String,
    pub speakers: Vec<String>,
    pub segments: usize,
    pub summary: String,
    pub saved_as: String,
}

pub fn function(services: Arc<Services>) -> Function {
    Function::new(FUNCTION_ID)
        .name("Parse a call transcript")
        .trigger(EVENT)
        .retries(3)
        .steps(STEPS)
        .failure_steps(FAILURE_STEPS)
        .handler_with(services.clone(), parse)
        .on_failure_with(services, mark_failed)
}

/// The call's row in the app.
fn call_row(transcript_id: &str) -> String {
    format!("/rows/gong_calls/{transcript_id}")
}

async fn parse(
    ctx: Ctx,
    event: Event<ParseRequest>,
    services: Arc<Services>,
) -> Result<ParseResult, Error> {
    let request = &event.data;
    let app = &services.app;
    let id = &request.transcript_id;
    let status = async |status: &str| {
        ctx.step(UPDATE_STATUS, async |s| {
            let fields = json!({"parsing_status": status, "run_id": ctx.run_id(), "user_id": request.user_id});
            app.patch::<Value>(&call_row(id), &fields, Some(&s.idempotency_key))
                .await
                .map(drop)
        })
        .await
    };
    status("parsing").await?;
    ctx.progress(10, "parsing the transcript");

    let parsed: Parsed = ctx
        .step(PARSE, async |s| {
            let user = match (&request.text, &request.url) {
                (Some(text), _) if !text.trim().is_empty() => Value::String(text.clone()),
                (_, Some(url)) => json!([
                    {"type": "text", "text": "Parse this call transcript."},
                    {"type": "file_url", "file_url": {"url": url}},
                ]),
                _ => {
                    return Err(StepError::non_retriable(
                        "the request has neither a transcript text nor a url",
                    )
                    .named("InvalidRequest"));
                }
            };
            let parsed: Parsed = llm::structured(
                &services.llm,
                "transcript_parse",
                parse_schema(),
                "You parse sales call transcripts: speakers, timed segments, a summary, action items.",
                user,
                &s.idempotency_key,
            )
            .await?;
            if parsed.segments.is_empty() {
                return Err(StepError::non_retriable(
                    "the model's transcript_parse output is not usable: it has no segments",
                )
                .named("InvalidModelOutput"));
            }
            Ok(parsed)
        })
        .await?;
    ctx.progress(
        60,
        format!(
            "saving {} segments from {} speakers",
            parsed.segments.len(),
            parsed.speakers.len()
        ),
    );

    let saved_as: String = ctx
        .step(SAVE, async |s| {
            let body = json!({
                "transcript_id": id,
                "user_id": request.user_id,
                "speakers": parsed.speakers,
                "segments": parsed.segments,
                "summary": parsed.summary,
                "action_items": parsed.action_items,
            });
            let stored: Value = app
                .post("/transcripts", &body, Some(&s.idempotency_key))
                .await?;
            Ok(stored["id"].as_str().unwrap_or_default().to_owned())
        })
        .await?;
    ctx.progress(80, "updating the history");

    ctx.step(UPDATE_HISTORY, async |s| {
        let body = json!({
            "transcript_id": id,
            "user_id": request.user_id,
            "opportunity_id": request.opportunity_id,
            "summary": parsed.summary,
            "speakers": parsed.speakers,
            "next_steps": parsed.action_items,
        });
        app.post::<Value>("/transcript_history", &body, Some(&s.idempotency_key))
            .await
            .map(drop)
    })
    .await?;

    status("completed").await?;
    ctx.progress(100, "parsed");
    Ok(ParseResult {
        transcript_id: request.transcript_id.clone(),
        speakers: parsed.speakers.clone(),
        segments: parsed.segments.len(),
        summary: parsed.summary.clone(),
        saved_as,
    })
}

/// The failure handler: the call's parsing is `failed`, with the reason.
async fn mark_failed(
    ctx: Ctx,
    event: Event<FailureData>,
    services: Arc<Services>,
) -> Result<(), Error> {
    let failure = &event.data;
    let id = failure.event["data"]["transcript_id"]
        .as_str()
        .unwrap_or_default();
    ctx.step(MARK_FAILED, async |s| {
        let fields = json!({
            "parsing_status": "failed",
            "run_id": failure.run_id,
            "error": format!("{}: {}", failure.error.name, failure.error.message),
        });
        services
            .app
            .patch::<Value>(&call_row(id), &fields, Some(&s.idempotency_key))
            .await
            .map(drop)
    })
    .await
}

fn parse_schema() -> Value {
    json!({
        "type": "object",
        "required": ["speakers", "segments", "summary", "action_items"],
        "properties": {
            "speakers": {"type": "array", "items": {"type": "string"}},
            "segments": {"type": "array", "items": {"type": "object", "required": ["speaker", "start_s", "text"], "properties": {
                "speaker": {"type": "string"}, "start_s": {"type": "number"}, "text": {"type": "string"}}}},
            "summary": {"type": "string"},
            "action_items": {"type": "array", "items": {"type": "string"}},
        },
    })
}
