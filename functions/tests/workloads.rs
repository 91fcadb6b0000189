//! The clip generation and transcription workloads end to end in local mode: the engine on
//! SQLite, the API served on 127.0.0.1, the outside services faked by local HTTP servers
//! (`app::fakes`), real time.

use std::sync::Arc;
use std::time::Duration;

use app::fakes::{Fakes, Fault as Fake, WebhookTarget};
use app::services::Services;
use baton::engine::run_id_for;
use baton::local::{LocalOptions, LocalRuntime};
use baton::model::{RunRecord, StepStatus};
use baton::{NewEvent, RunStatus};
use baton_http::Keys;
use baton_sqlite::SqliteStore;
use serde_json::{Value, json};

const SECRET: &str = "test-clips-secret";

struct App {
    rt: LocalRuntime,
    fakes: Fakes,
    url: String,
    _server: tokio::task::JoinHandle<()>,
}

async fn app() -> App {
    let fakes = Fakes::start().await.unwrap();
    let registry = app::registry_with(Services::at(&fakes.base_url));
    let store = SqliteStore::in_memory().unwrap();
    let rt = LocalRuntime::start(registry, Arc::new(store), LocalOptions::default())
        .await
        .unwrap();
    let keys = Keys::open().with_webhook_secret("clips", SECRET);
    let router = baton_http::router(rt.engine().clone(), keys);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    fakes.set_clip_webhook(WebhookTarget {
        baton_url: url.clone(),
        secret: SECRET.into(),
    });
    App {
        rt,
        fakes,
        url,
        _server: server,
    }
}

impl App {
    async fn send(&self, name: &str, data: Value) -> String {
        self.rt
            .engine()
            .send_events(vec![NewEvent::new(name, data)])
            .await
            .unwrap()
            .remove(0)
    }

    async fn finish(&self, event_id: &str, function_id: &str) -> RunRecord {
        self.rt
            .wait_for_run(&run_id_for(event_id, function_id), Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("{function_id} did not end within 60 s"))
    }
}

// ---- clip generation ----

fn clip_request(video: &str, mode: &str) -> Value {
    json!({
        "video_id": video,
        "creator_id": "creator-1",
        "video_url": format!("https://cdn.example/{video}.mp4"),
        "mode": mode,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn clips_via_the_signed_webhook() {
    let app = app().await;
    let event = app
        .send(
            "clips/generate.requested",
            clip_request("v-hook", "webhook"),
        )
        .await;
    let run = app.finish(&event, "generate-clips").await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(run.output.as_ref().unwrap()["clips"], json!(3));
    assert_eq!(run.progress.as_ref().unwrap().percent, 100);
    let detail = app.rt.engine().get_run(&run.run_id).await.unwrap().unwrap();
    let wait = detail
        .steps
        .iter()
        .find(|s| s.step_id == "task-finished")
        .unwrap();
    assert_eq!(wait.status, StepStatus::Completed);
    assert_eq!(
        wait.output.as_ref().unwrap()["name"],
        json!("clips/task.updated")
    );
    assert_eq!(
        app.fakes.state.calls("clips/status"),
        0,
        "no polling in webhook mode"
    );
    let stored = app.fakes.state.records("clips");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["clips"].as_array().unwrap().len(), 3);
    assert_eq!(app.fakes.state.records("notifications").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn clips_by_polling_with_durable_sleeps_and_a_flaky_status_api() {
    let app = app().await;
    app.fakes.state.inject(
        "clips/status",
        [
            Fake::Status(500, "status backend down".into()),
            Fake::RetryAfter(1),
        ],
    );
    let event = app
        .send("clips/generate.requested", clip_request("v-poll", "poll"))
        .await;
    let run = app.finish(&event, "generate-clips").await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert!(
        app.fakes.state.calls("clips/status") >= 3,
        "the 500 and the 429 were retried"
    );
    assert_eq!(app.fakes.state.records("clips").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_video_fails_with_the_services_message() {
    let app = app().await;
    for mode in ["webhook", "poll"] {
        let mut req = clip_request(&format!("corrupt-{mode}"), mode);
        req["video_url"] = json!(format!("https://cdn.example/corrupt-{mode}.mp4"));
        let event = app.send("clips/generate.requested", req).await;
        let run = app.finish(&event, "generate-clips").await;
        assert_eq!(run.status, RunStatus::Failed, "{mode}");
        let error = run.error.unwrap();
        assert_eq!(error.name, "ClipFailed", "{mode}");
        assert!(
            error.message.contains("no video stream found"),
            "{mode}: {}",
            error.message
        );
    }
    // Invalid input is refused by the service at once: not retried.
    let mut req = clip_request("v-ftp", "poll");
    req["video_url"] = json!("ftp://cdn.example/v.mp4");
    let event = app.send("clips/generate.requested", req).await;
    let run = app.finish(&event, "generate-clips").await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap();
    assert!(
        error.message.contains("is not an http(s) URL"),
        "{}",
        error.message
    );
    assert!(app.fakes.state.records("clips").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_with_a_bad_signature_is_401_and_resumes_nothing() {
    let app = app().await;
    // No callbacks from the fake: this test sends them itself.
    app.fakes.set_clip_webhook(WebhookTarget {
        baton_url: "http://127.0.0.1:9".into(),
        secret: SECRET.into(),
    });
    let event = app
        .send("clips/generate.requested", clip_request("v-sig", "webhook"))
        .await;
    let run_id = run_id_for(&event, "generate-clips");
    let task_id = loop {
        let detail = app.rt.engine().get_run(&run_id).await.unwrap().unwrap();
        let waiting = detail
            .steps
            .iter()
            .any(|s| s.step_id == "task-finished" && s.status == StepStatus::Waiting);
        let task = detail.steps.iter().find(|s| s.step_id == "create-task");
        if let (true, Some(task)) = (waiting, task) {
            break task.output.clone().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let body = json!({"task_id": task_id, "state": "done"}).to_string();
    let ts = chrono::Utc::now().timestamp();
    let post = |signature: String, ts: i64| {
        reqwest::Client::new()
            .post(format!("{}/v1/webhooks/clips", app.url))
            .header("content-type", "application/json")
            .header("x-clips-signature", signature)
            .header("x-clips-timestamp", ts.to_string())
            .body(body.clone())
            .send()
    };
    let forged = baton::webhook::sign(b"not-the-secret", Some(ts), body.as_bytes());
    assert_eq!(post(forged, ts).await.unwrap().status(), 401);
    let stale_ts = ts - 3600;
    let stale = baton::webhook::sign(SECRET.as_bytes(), Some(stale_ts), body.as_bytes());
    assert_eq!(post(stale, stale_ts).await.unwrap().status(), 401);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let detail = app.rt.engine().get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(
        detail.run.status,
        RunStatus::Running,
        "refused callbacks resume nothing"
    );
    let wait = detail
        .steps
        .iter()
        .find(|s| s.step_id == "task-finished")
        .unwrap();
    assert_eq!(wait.status, StepStatus::Waiting);
    // The genuine callback resumes it.
    let good = baton::webhook::sign(SECRET.as_bytes(), Some(ts), body.as_bytes());
    assert_eq!(post(good, ts).await.unwrap().status(), 200);
    let run = app.finish(&event, "generate-clips").await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
}

// ---- transcription pipeline ----

#[tokio::test(flavor = "multi_thread")]
async fn the_transcription_pipeline_transcribes_chunks_and_embeds() {
    let app = app().await;
    app.fakes.state.inject(
        "whisper/transcribe",
        [Fake::Status(503, "overloaded".into()), Fake::RetryAfter(1)],
    );
    app.fakes
        .state
        .inject("embeddings/embed", [Fake::Status(500, "blip".into())]);
    let event = app
        .send(
            "video/uploaded",
            json!({"video_id": "vid-1", "creator_id": "c-1"}),
        )
        .await;
    let run = app.finish(&event, "transcribe-video").await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    assert_eq!(
        app.fakes.state.calls("whisper/transcribe"),
        3,
        "two faults, then success"
    );
    let out = run.output.unwrap();
    assert_eq!(out["words"], json!(1800));
    // The completion event started the embeddings run.
    let runs = loop {
        let query = baton::model::RunQuery {
            function_id: Some("generate-embeddings".into()),
            ..Default::default()
        };
        let runs = app
            .rt
            .engine()
            .store()
            .list_runs(&query)
            .await
            .unwrap()
            .runs;
        if runs.iter().any(|r| r.status.is_terminal()) {
            break runs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let embed = &runs[0];
    assert_eq!(embed.status, RunStatus::Completed, "{:?}", embed.error);
    // 1,800 words: chunks 0..800, 700..1500, 1300..1800.
    assert_eq!(embed.output.as_ref().unwrap()["chunks"], json!(3));
    let stored = app.fakes.state.records("embeddings");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["chunks"], json!(3));
    assert_eq!(app.fakes.state.records("usage").len(), 1);
    assert_eq!(app.fakes.state.records("transcripts").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_go_in_batches_of_twenty_and_reprocessing_fans_out() {
    let app = app().await;
    // 20,000 words: 29 chunks (the last one balanced to 500 words), so 2 batches (20 + 9).
    let text = (0..20_000)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let client = reqwest::Client::new();
    let mut videos = Vec::new();
    for n in 0..3 {
        let saved: Value = client
            .post(format!("{}/app/transcripts", app.fakes.base_url))
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
    let event = app
        .send("video/reprocess.requested", json!({"videos": videos}))
        .await;
    let run = app.finish(&event, "batch-reprocess-embeddings").await;
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
    let out = run.output.unwrap();
    assert_eq!(out["videos"], json!(4));
    assert_eq!(out["succeeded"], json!(3), "{out}");
    assert_eq!(out["failed"].as_array().unwrap().len(), 1);
    // 3 videos x 2 batches, each at most 20 inputs (the fake refuses more).
    assert_eq!(app.fakes.state.calls("embeddings/embed"), 6);
    assert!(
        app.fakes
            .state
            .records("embeddings")
            .iter()
            .all(|r| r["chunks"] == json!(29))
    );
    // The failed child's failure handler recorded it.
    let failures = app.fakes.state.records("failures");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["function_id"], json!("generate-embeddings"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_transcription_is_recorded_by_its_failure_handler() {
    let app = app().await;
    let event = app
        .send(
            "video/uploaded",
            json!({"video_id": "missing-1", "creator_id": "c-1"}),
        )
        .await;
    let run = app.finish(&event, "transcribe-video").await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        run.error
            .as_ref()
            .unwrap()
            .message
            .contains("does not exist")
    );
    for _ in 0..200 {
        if !app.fakes.state.records("failures").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let failures = app.fakes.state.records("failures");
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0]["video_id"], json!("missing-1"));
}
