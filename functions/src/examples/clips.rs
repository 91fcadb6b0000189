//! `generate-clips`: clip generation against a slow outside video API (Klap in the write-ups:
//! 10-15 minutes a video). Mark the project's clip job `processing`, create a task at the clip
//! service, then learn that it finished either from its signed webhook (a
//! `clips/task.updated` event the run waits for, race-free) or by polling its status with
//! durable sleeps (every 2 minutes, as the write-up's cron did, for at most an hour); fetch
//! the clips, store them, mark the job `completed` and notify the creator.
//!
//! The app's `projects` row carries the job's state as the write-ups kept it (`klap_status`
//! `processing` → `completed`, or `failed` with `klap_error`; `klap_task_id`, and when it
//! started and finished), so the app shows it and no job stays `processing` forever: a
//! failure (a video the service cannot decode, a task that never finishes) marks it `failed`.
//!
//! ```text
//! curl -s localhost:8288/e/dev -d '{"name":"clips/generate.requested","data":{"project_id":"p1","creator_id":"c1","video_url":"https://cdn.example/p1.mp4","mode":"webhook"}}'
//! ```

use std::sync::Arc;
use std::time::Duration;

use baton::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::services::Services;

pub const EVENT: &str = "clips/generate.requested";
pub const FUNCTION_ID: &str = "generate-clips";
/// What the webhook source `clips` emits for the clip service's callbacks.
pub const TASK_UPDATED: &str = "clips/task.updated";
/// Polling mode: the wait between status checks, and how many checks at most (an hour).
pub const POLL_EVERY: Duration = Duration::from_secs(120);
pub const MAX_POLLS: u32 = 30;

steps! {
    /// The steps of `generate-clips`.
    pub const STEPS = [
        MARK_PROCESSING = Step::new("mark-processing").timeout(Duration::from_secs(15)).memory_mb(128),
        CREATE_TASK = Step::new("create-task").timeout(Duration::from_secs(60)),
        CHECK_STATUS = Step::new("check-status").timeout(Duration::from_secs(30)).memory_mb(128),
        FETCH_CLIPS = Step::new("fetch-clips").timeout(Duration::from_secs(60)),
        STORE_CLIPS = Step::new("store-clips").timeout(Duration::from_secs(60)),
        MARK_COMPLETED = Step::new("mark-completed").timeout(Duration::from_secs(15)).memory_mb(128),
        NOTIFY = Step::new("notify").timeout(Duration::from_secs(30)).memory_mb(128),
    ];
}

steps! {
    /// The steps of its failure handler.
    pub const FAILURE_STEPS = [
        MARK_FAILED = Step::new("mark-failed").timeout(Duration::from_secs(15)).memory_mb(128),
    ];
}

/// Webhook mode: the service's callback for the task, an hour at most (the service takes
/// 10-15 minutes).
pub const TASK_FINISHED: Wait<TaskStatus> = Wait::new("task-finished", TASK_UPDATED)
    .on("data.task_id")
    .timeout(Duration::from_secs(3600));

#[derive(Debug, Clone, Deserialize)]
pub struct ClipRequest {
    pub project_id: String,
    pub creator_id: String,
    pub video_url: String,
    /// `webhook` (default) or `poll`.
    #[serde(default)]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task_id: String,
    pub state: String,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Clip {
    pub clip_id: String,
    pub url: String,
    pub start_s: u32,
    pub end_s: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClipsDone {
    pub task_id: String,
    pub clips: usize,
    pub stored_as: String,
}

pub fn function(services: Arc<Services>) -> Function {
    Function::new(FUNCTION_ID)
        .name("Generate clips from a video")
        .trigger(EVENT)
        .steps(STEPS)
        .wait(TASK_FINISHED)
        // One clip job per project, and the service's task limit per creator.
        .idempotency("data.project_id")
        .concurrency(5, Some("data.creator_id"))
        .failure_steps(FAILURE_STEPS)
        .handler_with(services.clone(), generate)
        .on_failure_with(services, mark_failed)
}

/// The project's row in the app.
fn project(id: &str) -> String {
    format!("/rows/projects/{id}")
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

async fn generate(
    ctx: Ctx,
    event: Event<ClipRequest>,
    services: Arc<Services>,
) -> Result<ClipsDone, Error> {
    let req = &event.data;
    let (app, clips_api) = (&services.app, &services.clips);
    ctx.step(MARK_PROCESSING, async |s| {
        let row =
            json!({"klap_status": "processing", "klap_started_at": now(), "klap_error": null});
        app.patch::<Value>(&project(&req.project_id), &row, Some(&s.idempotency_key))
            .await
            .map(drop)
    })
    .await?;

    let task_id: String = ctx
        .step(CREATE_TASK, async |s| {
            let body = json!({"video_url": req.video_url});
            let created: Value = clips_api
                .post("/tasks", &body, Some(&s.idempotency_key))
                .await?;
            let task_id = created["task_id"]
                .as_str()
                .ok_or_else(|| StepError::retriable("the clip service returned no task_id"))?;
            let row = json!({"klap_task_id": task_id});
            app.patch::<Value>(&project(&req.project_id), &row, Some(&s.idempotency_key))
                .await?;
            Ok(task_id.to_owned())
        })
        .await?;
    ctx.progress(20, "rendering clips (10-15 minutes)");

    let status = if req.mode.as_deref() == Some("poll") {
        poll(&ctx, &services, &task_id).await?
    } else {
        match ctx.wait_for_event(TASK_FINISHED, &task_id).await? {
            Some(update) => update.data,
            None => {
                return Err(Error::new(
                    "ClipTimeout",
                    format!(
                        "task {task_id} sent no callback within {:?}",
                        TASK_FINISHED.timeout_duration()
                    ),
                ));
            }
        }
    };
    if status.state != "done" {
        let message = status
            .error
            .unwrap_or_else(|| format!("task {task_id} ended {}", status.state));
        return Err(Error::new("ClipFailed", message));
    }
    ctx.progress(60, "clips rendered");

    let clips: Vec<Clip> = ctx
        .step(FETCH_CLIPS, async |_| {
            let body: Value = clips_api.get(&format!("/tasks/{task_id}/clips")).await?;
            serde_json::from_value(body["clips"].clone())
                .map_err(|e| StepError::retriable(format!("unreadable clips: {e}")))
        })
        .await?;

    let stored_as: String = ctx
        .step(STORE_CLIPS, async |s| {
            let record = json!({"project_id": req.project_id, "task_id": task_id, "clips": clips});
            let stored: Value = app
                .post("/clips", &record, Some(&s.idempotency_key))
                .await?;
            Ok(stored["id"].as_str().unwrap_or_default().to_owned())
        })
        .await?;
    ctx.step(MARK_COMPLETED, async |s| {
        let row =
            json!({"klap_status": "completed", "klap_completed_at": now(), "clips": clips.len()});
        app.patch::<Value>(&project(&req.project_id), &row, Some(&s.idempotency_key))
            .await
            .map(drop)
    })
    .await?;
    ctx.progress(90, "clips stored");

    ctx.step(NOTIFY, async |s| {
        let note = json!({
            "creator_id": req.creator_id,
            "message": format!("{} clips are ready for project {}", clips.len(), req.project_id),
        });
        app.post::<Value>("/notifications", &note, Some(&s.idempotency_key))
            .await
            .map(drop)
    })
    .await?;
    ctx.progress(100, "creator notified");
    Ok(ClipsDone {
        task_id,
        clips: clips.len(),
        stored_as,
    })
}

/// Polls the task until it ends: a durable sleep, then a status check, at most [`MAX_POLLS`]
/// times.
async fn poll(ctx: &Ctx, services: &Services, task_id: &str) -> Result<TaskStatus, Error> {
    for _ in 0..MAX_POLLS {
        ctx.sleep("poll-wait", POLL_EVERY).await?;
        let status: TaskStatus = ctx
            .step(CHECK_STATUS, async |_| {
                services.clips.get(&format!("/tasks/{task_id}")).await
            })
            .await?;
        if status.state != "processing" {
            return Ok(status);
        }
    }
    Err(Error::new(
        "ClipTimeout",
        format!(
            "task {task_id} still processing after {MAX_POLLS} checks, {:?}",
            POLL_EVERY * MAX_POLLS
        ),
    ))
}

/// The failure handler: the project's clip job is `failed`, with the reason.
async fn mark_failed(
    ctx: Ctx,
    event: Event<FailureData>,
    services: Arc<Services>,
) -> Result<(), Error> {
    let failure = &event.data;
    let project_id = failure.event["data"]["project_id"]
        .as_str()
        .unwrap_or_default();
    ctx.step(MARK_FAILED, async |s| {
        let row = json!({
            "klap_status": "failed",
            "klap_error": format!("{}: {}", failure.error.name, failure.error.message),
            "klap_completed_at": now(),
        });
        services
            .app
            .patch::<Value>(&project(project_id), &row, Some(&s.idempotency_key))
            .await
            .map(drop)
    })
    .await
}
