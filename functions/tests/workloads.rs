//! The clip generation and transcription workloads end to end in local mode, against the
//! fake outside services over real HTTP (loopback), on paused time: the clip service takes
//! its real 10-15 minutes and polling its 2-minute interval, in no real time. The app's rows
//! (a project's clip job, a video's status) are read back from the fake app backend with
//! every transition they went through.

mod local;

use std::time::Duration;

use app::examples::clips::{MAX_POLLS, POLL_EVERY};
use app::fakes::{Fault as Fake, REAL_RENDER_TIME, WebhookTarget};
use baton::RunStatus;
use baton::engine::run_id_for;
use baton::model::StepStatus;
use baton_http::Keys;
use local::Local;
use serde_json::{Value, json};

const SECRET: &str = "test-clips-secret";

/// The local runtime and the fakes, the API served on 127.0.0.1 (the clip service's
/// webhook calls it), the clip service rendering for its real 12 minutes.
async fn start() -> (Local, String) {
    let local = Local::start().await;
    local.fakes.state.set_clip_render_time(REAL_RENDER_TIME);
    let keys = Keys::open().with_webhook_secret("clips", SECRET);
    let router = baton_http::router(local.engine().clone(), keys);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    local.fakes.set_clip_webhook(WebhookTarget {
        baton_url: url.clone(),
        secret: SECRET.into(),
    });
    (local, url)
}

// ---- clip generation ----

fn clip_request(project: &str, mode: &str) -> Value {
    json!({
        "project_id": project,
        "creator_id": "creator-1",
        "video_url": format!("https://cdn.example/{project}.mp4"),
        "mode": mode,
    })
}

/// The project's clip-job status, every value it took.
fn klap_statuses(local: &Local, project: &str) -> Vec<Value> {
    local
        .fakes
        .state
        .history("projects", project, "klap_status")
}

#[tokio::test(start_paused = true)]
async fn clips_via_the_signed_webhook_after_the_services_twelve_minutes() {
    let (local, _url) = start().await;
    let started = tokio::time::Instant::now();
    let event = local
        .send(
            "clips/generate.requested",
            clip_request("p-hook", "webhook"),
        )
        .await;
    let run = local.finish(&event, "generate-clips").await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert!(
        started.elapsed() >= REAL_RENDER_TIME,
        "the run waited for the render"
    );
    assert_eq!(run.output.as_ref().unwrap()["clips"], json!(3));
    assert_eq!(run.progress.as_ref().unwrap().percent, 100);
    let steps = local.steps(&run.run_id).await;
    let wait = local::step(&steps, "task-finished");
    assert_eq!(wait.status, StepStatus::Completed);
    assert_eq!(
        wait.output.as_ref().unwrap()["name"],
        json!("clips/task.updated")
    );
    assert_eq!(
        local.fakes.state.calls("clips/status"),
        0,
        "no polling in webhook mode"
    );
    let stored = local.fakes.state.records("clips");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["clips"].as_array().unwrap().len(), 3);
    assert_eq!(local.fakes.state.records("notifications").len(), 1);
    // The app's row: processing, then completed, with the task and the clip count.
    assert_eq!(
        klap_statuses(&local, "p-hook"),
        [json!("processing"), json!("completed")]
    );
    let row = local.fakes.state.row("projects", "p-hook").unwrap();
    assert_eq!(
        row["klap_task_id"],
        wait.output.as_ref().unwrap()["data"]["task_id"]
    );
    assert_eq!(row["clips"], json!(3));
    assert!(row["klap_started_at"].is_string() && row["klap_completed_at"].is_string());
}

#[tokio::test(start_paused = true)]
async fn clips_by_polling_every_two_minutes_with_a_flaky_status_api() {
    let (local, _url) = start().await;
    local.fakes.state.inject(
        "clips/status",
        [
            Fake::Status(500, "status backend down".into()),
            Fake::RetryAfter(1),
        ],
    );
    let event = local
        .send("clips/generate.requested", clip_request("p-poll", "poll"))
        .await;
    let run = local.finish(&event, "generate-clips").await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    // 12 minutes of rendering, checked every 2 minutes: the 6th check sees it done. The 500
    // and the 429 were retried within a check.
    let checks = REAL_RENDER_TIME.as_secs().div_ceil(POLL_EVERY.as_secs()) as u32;
    assert!(checks < MAX_POLLS);
    assert_eq!(local.fakes.state.calls("clips/status"), checks + 2);
    let steps = local.steps(&run.run_id).await;
    assert_eq!(
        steps.iter().filter(|s| s.name == "poll-wait").count() as u32,
        checks
    );
    assert_eq!(local.fakes.state.records("clips").len(), 1);
    assert_eq!(
        klap_statuses(&local, "p-poll"),
        [json!("processing"), json!("completed")]
    );
}

#[tokio::test(start_paused = true)]
async fn a_bad_video_fails_with_the_services_message_and_marks_the_job_failed() {
    let (local, _url) = start().await;
    for mode in ["webhook", "poll"] {
        let project = format!("corrupt-{mode}");
        let event = local
            .send("clips/generate.requested", clip_request(&project, mode))
            .await;
        let run = local.finish(&event, "generate-clips").await;
        assert_eq!(run.status, RunStatus::Failed, "{mode}");
        let error = run.error.unwrap();
        assert_eq!(error.name, "ClipFailed", "{mode}");
        assert!(
            error.message.contains("no video stream found"),
            "{mode}: {}",
            error.message
        );
        // The failure handler marked the job failed with the reason.
        for _ in 0..1000 {
            if klap_statuses(&local, &project).len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            klap_statuses(&local, &project),
            [json!("processing"), json!("failed")],
            "{mode}"
        );
        let row = local.fakes.state.row("projects", &project).unwrap();
        assert!(
            row["klap_error"]
                .as_str()
                .unwrap()
                .contains("ClipFailed: video could not be decoded"),
            "{row}"
        );
    }
    // Invalid input is refused by the service at once: not retried.
    let mut req = clip_request("p-ftp", "poll");
    req["video_url"] = json!("ftp://cdn.example/v.mp4");
    let event = local.send("clips/generate.requested", req).await;
    let run = local.finish(&event, "generate-clips").await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap();
    assert!(
        error.message.contains("is not an http(s) URL"),
        "{}",
        error.message
    );
    assert_eq!(local.fakes.state.calls("clips/create"), 3);
    assert!(local.fakes.state.records("clips").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_webhook_with_a_bad_signature_is_401_and_resumes_nothing() {
    let (local, url) = start().await;
    // No callbacks from the fake: this test sends them itself.
    local.fakes.set_clip_webhook(WebhookTarget {
        baton_url: "http://127.0.0.1:9".into(),
        secret: SECRET.into(),
    });
    let event = local
        .send("clips/generate.requested", clip_request("p-sig", "webhook"))
        .await;
    let run_id = run_id_for(&event, "generate-clips");
    let task_id = loop {
        let steps = local.steps(&run_id).await;
        let waiting = steps
            .iter()
            .any(|s| s.step_id == "task-finished" && s.status == StepStatus::Waiting);
        let task = steps.iter().find(|s| s.step_id == "create-task");
        if let (true, Some(task)) = (waiting, task) {
            break task.output.clone().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let body = json!({"task_id": task_id, "state": "done"}).to_string();
    // The server checks timestamps against the engine's clock (tokio's, paused here).
    let ts = local.engine().now().timestamp();
    let post = |signature: String, ts: i64| {
        reqwest::Client::new()
            .post(format!("{url}/v1/webhooks/clips"))
            .header("content-type", "application/json")
            .header("x-clips-signature", signature)
            .header("x-clips-timestamp", ts.to_string())
            .header("x-clips-delivery", "delivery-under-test")
            .body(body.clone())
            .send()
    };
    let forged = baton::webhook::sign(b"not-the-secret", Some(ts), body.as_bytes());
    assert_eq!(post(forged, ts).await.unwrap().status(), 401);
    let stale_ts = ts - 3600;
    let stale = baton::webhook::sign(SECRET.as_bytes(), Some(stale_ts), body.as_bytes());
    assert_eq!(post(stale, stale_ts).await.unwrap().status(), 401);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let run = local
        .engine()
        .store()
        .get_run(&run_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        run.status,
        RunStatus::Running,
        "refused callbacks resume nothing"
    );
    let steps = local.steps(&run_id).await;
    assert_eq!(
        local::step(&steps, "task-finished").status,
        StepStatus::Waiting
    );
    // The genuine callback, once the task is rendered, resumes it.
    tokio::time::sleep(REAL_RENDER_TIME).await;
    let ts = local.engine().now().timestamp();
    let good = baton::webhook::sign(SECRET.as_bytes(), Some(ts), body.as_bytes());
    assert_eq!(post(good, ts).await.unwrap().status(), 200);
    let run = local.finish(&event, "generate-clips").await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
}

// ---- transcription pipeline ----

fn video_statuses(local: &Local, video: &str) -> Vec<Value> {
    local.fakes.state.history("videos", video, "status")
}

#[tokio::test(start_paused = true)]
async fn the_transcription_pipeline_transcribes_chunks_and_embeds() {
    let (local, _url) = start().await;
    local.fakes.state.inject(
        "whisper/transcribe",
        [Fake::Status(503, "overloaded".into()), Fake::RetryAfter(1)],
    );
    local
        .fakes
        .state
        .inject("embeddings/embed", [Fake::Status(500, "blip".into())]);
    let event = local
        .send(
            "video/transcribe.requested",
            json!({"video_id": "vid-1", "creator_id": "c-1", "storage_path": "videos/c-1/vid-1.mp4"}),
        )
        .await;
    let run = local.finish(&event, "transcribe-video").await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(
        local.fakes.state.calls("whisper/transcribe"),
        3,
        "two faults, then success"
    );
    let out = run.output.unwrap();
    assert_eq!(out["words"], json!(1800));
    // The completion event started the embeddings run.
    let embed = local.only_run_of("generate-embeddings").await;
    assert_eq!(embed.status, RunStatus::Completed, "{:?}", embed.error);
    // 1,800 words: chunks 0..800, 700..1500, 1300..1800.
    assert_eq!(embed.output.as_ref().unwrap()["chunks"], json!(3));
    let stored = local.fakes.state.records("embeddings");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["chunks"], json!(3));
    assert_eq!(local.fakes.state.records("chunks")[0]["chunks"], json!(3));
    // Usage of both functions.
    assert_eq!(local.fakes.state.records("usage").len(), 2);
    assert_eq!(local.fakes.state.records("transcripts").len(), 1);
    // The video's status through both functions, as the write-up's dashboard shows it.
    assert_eq!(
        video_statuses(&local, "vid-1"),
        ["transcribing", "processing", "embedding", "completed"].map(|s| json!(s))
    );
}

#[tokio::test(start_paused = true)]
async fn embeddings_go_in_batches_of_twenty_and_reprocessing_fans_out() {
    let (local, _url) = start().await;
    // 20,000 words: 29 chunks (the last one balanced to 500 words), so 2 batches (20 + 9).
    let text = (0..20_000)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let client = reqwest::Client::new();
    let mut videos = Vec::new();
    for n in 0..3 {
        let saved: Value = client
            .post(format!("{}/app/transcripts", local.fakes.base_url))
            .json(&json!({"video_id": format!("long-{n}"), "text": text}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        videos.push(json!({
            "video_id": format!("long-{n}"),
            "creator_id": "c-9",
            "transcript_id": saved["id"],
            "words": 20_000,
        }));
    }
    videos.push(json!({"video_id": "gone", "creator_id": "c-9", "transcript_id": "transcripts-404", "words": 0}));
    let event = local
        .send(
            "video/embeddings.batch-reprocess",
            json!({"videos": videos}),
        )
        .await;
    let run = local.finish(&event, "batch-reprocess-embeddings").await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    let out = run.output.unwrap();
    assert_eq!(out["videos"], json!(4));
    assert_eq!(out["succeeded"], json!(3), "{out}");
    assert_eq!(out["failed"].as_array().unwrap().len(), 1);
    // 3 videos x 2 batches, each at most 20 inputs (the fake refuses more).
    assert_eq!(local.fakes.state.calls("embeddings/embed"), 6);
    assert!(
        local
            .fakes
            .state
            .records("embeddings")
            .iter()
            .all(|r| r["chunks"] == json!(29))
    );
    // The failed child's failure handler recorded it and marked the video failed.
    let failure = local.only_run_of("generate-embeddings-failure").await;
    assert_eq!(failure.status, RunStatus::Completed);
    let failures = local.fakes.state.records("failures");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["function_id"], json!("generate-embeddings"));
    assert_eq!(
        video_statuses(&local, "gone"),
        [json!("processing"), json!("failed")]
    );
    assert_eq!(
        video_statuses(&local, "long-0"),
        ["processing", "embedding", "completed"].map(|s| json!(s))
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_transcription_marks_the_video_failed() {
    let (local, _url) = start().await;
    // A video that does not exist, and one whose audio is over Whisper's 25 MB.
    for (video, message) in [
        ("missing-1", "does not exist"),
        ("huge-1", "over Whisper's 25 MB limit"),
    ] {
        let event = local
            .send(
                "video/transcribe.requested",
                json!({"video_id": video, "creator_id": "c-1"}),
            )
            .await;
        let run = local.finish(&event, "transcribe-video").await;
        assert_eq!(run.status, RunStatus::Failed, "{video}");
        assert!(
            run.error.as_ref().unwrap().message.contains(message),
            "{video}: {:?}",
            run.error
        );
        assert_eq!(
            local.fakes.state.calls("whisper/transcribe"),
            0,
            "nothing was sent to Whisper"
        );
        for _ in 0..1000 {
            if video_statuses(&local, video).len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            video_statuses(&local, video),
            [json!("transcribing"), json!("failed")],
            "{video}"
        );
        let row = local.fakes.state.row("videos", video).unwrap();
        assert!(row["error"].as_str().unwrap().contains(message), "{row}");
    }
    // The download of the missing video failed for good at once (a 404 is not retried), the
    // huge one's too (non-retriable): one call each.
    assert_eq!(local.fakes.state.calls("app/video"), 2);
    assert_eq!(local.fakes.state.records("failures").len(), 2);
}

/// The failure handlers are functions of their own with Inngest's default retries, not
/// their function's: the write-up's `transcribe-video-error` set none (so 4), while
/// `transcribe-video` retries 3 times and `generate-embeddings` twice.
#[test]
fn retries_are_the_write_ups() {
    let registry = app::registry();
    let retries = |id: &str| registry.get(id).unwrap().retries;
    assert_eq!(retries("transcribe-video"), 3);
    assert_eq!(retries("generate-embeddings"), 2);
    assert_eq!(retries("transcribe-video-failure"), 4);
    assert_eq!(retries("generate-embeddings-failure"), 4);
    assert_eq!(retries("parse-transcript"), 3);
    for format in ["interview", "debate", "adventure"] {
        assert_eq!(retries(&format!("generate-{format}")), 1);
    }
}
