//! `generate-clips`: clip generation against a slow outside video API. Create a task at the
//! clip service, then learn that it finished either from its signed webhook (a
//! `clips/task.updated` event the run waits for, race-free) or by polling its status with
//! durable sleeps (bounded); fetch the clips, store them, notify the creator. A video the
//! service cannot decode ends the run Failed with the service's own message.
//!
//! ```text
//! curl -s localhost:8288/e/dev -d '{"name":"clips/generate.requested","data":{"video_id":"v1","creator_id":"c1","video_url":"https://cdn.example/v1.mp4","mode":"webhook"}}'
//! ```

use std::sync::Arc;
use std::time::Duration;

use baton::{Ctx, Error, Event, Function, StepConfig, StepError, WaitFor};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::services::Services;

pub const EVENT: &str = "clips/generate.requested";
/// What the webhook source `clips` emits for the clip service's callbacks.
pub const TASK_UPDATED: &str = "clips/task.updated";
/// How long a webhook-mode run waits for the callback.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Polling mode: the wait between status checks, and how many checks at most.
pub const POLL_EVERY: Duration = Duration::from_secs(2);
pub const MAX_POLLS: u32 = 30;

#[derive(Debug, Clone, Deserialize)]
pub struct ClipRequest {
    pub video_id: String,
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
    let quick = StepConfig::default().timeout(Duration::from_secs(30));
    Function::new("generate-clips")
        .name("Generate clips from a video")
        .trigger(EVENT)
        .step("create-task", quick.clone())
        .step("check-status", quick.clone())
        .step("fetch-clips", quick.clone())
        .step("store-clips", quick.clone())
        .step("notify", quick)
        .waits_for(TASK_UPDATED, "data.task_id")
        // One clip job per video at a time, and the service's task limit per creator.
        .idempotency("data.video_id")
        .concurrency(5, Some("data.creator_id"))
        .handler(move |ctx: Ctx, event: Event<ClipRequest>| {
            let services = services.clone();
            async move { run(ctx, event.data, services).await }
        })
}

async fn run(ctx: Ctx, req: ClipRequest, services: Arc<Services>) -> Result<ClipsDone, Error> {
    let clips_api = services.clips.clone();
    let video_url = req.video_url.clone();
    let task_id: String = ctx
        .step("create-task", |s| async move {
            let created: Value = clips_api
                .post(
                    "/tasks",
                    &json!({"video_url": video_url}),
                    Some(&s.idempotency_key),
                )
                .await?;
            created["task_id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| StepError::retriable("the clip service returned no task_id"))
        })
        .await?;
    ctx.progress(20, "task created").await?;

    let status = if req.mode.as_deref() == Some("poll") {
        poll(&ctx, &services, &task_id).await?
    } else {
        let update: Option<Event<TaskStatus>> = ctx
            .wait_for_event(
                "task-finished",
                WaitFor::event(TASK_UPDATED, CALLBACK_TIMEOUT).matching("data.task_id", &task_id),
            )
            .await?;
        match update {
            Some(update) => update.data,
            None => {
                return Err(Error::new(
                    "ClipTimeout",
                    format!("task {task_id} sent no callback within {CALLBACK_TIMEOUT:?}"),
                ));
            }
        }
    };
    if status.state != "done" {
        return Err(Error::new(
            "ClipFailed",
            status
                .error
                .unwrap_or_else(|| format!("task {task_id} ended {}", status.state)),
        ));
    }
    ctx.progress(60, "clips rendered").await?;

    let clips_api = services.clips.clone();
    let path = format!("/tasks/{task_id}/clips");
    let clips: Vec<Clip> = ctx
        .step("fetch-clips", |_| async move {
            let body: Value = clips_api.get(&path).await?;
            serde_json::from_value(body["clips"].clone())
                .map_err(|e| StepError::retriable(format!("unreadable clips: {e}")))
        })
        .await?;

    let app = services.app.clone();
    let record = json!({"video_id": req.video_id, "task_id": task_id, "clips": clips});
    let stored_as: String = ctx
        .step("store-clips", |s| async move {
            let stored: Value = app
                .post("/clips", &record, Some(&s.idempotency_key))
                .await?;
            Ok::<_, StepError>(stored["id"].as_str().unwrap_or_default().to_owned())
        })
        .await?;
    ctx.progress(90, "clips stored").await?;

    let app = services.app.clone();
    let note = json!({
        "creator_id": req.creator_id,
        "message": format!("{} clips are ready for video {}", clips.len(), req.video_id),
    });
    ctx.step("notify", |s| async move {
        app.post::<Value>("/notifications", &note, Some(&s.idempotency_key))
            .await
            .map(|_| ())
    })
    .await?;
    ctx.progress(100, "creator notified").await?;
    Ok(ClipsDone {
        task_id,
        clips: clips.len(),
        stored_as,
    })
}

/// Polls the task until it ends: a durable sleep, then a status check, at most
/// [`MAX_POLLS`] times.
async fn poll(ctx: &Ctx, services: &Arc<Services>, task_id: &str) -> Result<TaskStatus, Error> {
    for _ in 0..MAX_POLLS {
        ctx.sleep("poll-wait", POLL_EVERY).await?;
        let clips_api = services.clips.clone();
        let path = format!("/tasks/{task_id}");
        let status: TaskStatus = ctx
            .step(
                "check-status",
                |_| async move { clips_api.get(&path).await },
            )
            .await?;
        if status.state != "processing" {
            return Ok(status);
        }
    }
    Err(Error::new(
        "ClipTimeout",
        format!("task {task_id} still processing after {MAX_POLLS} checks"),
    ))
}
