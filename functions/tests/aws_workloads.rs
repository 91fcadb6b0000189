//! The clip webhook path and the transcription pipeline on DynamoDB + SQS (moto server),
//! delivered the way Lambda delivers, with duplicate deliveries injected; the outside services
//! are the local fakes, and the clip service's signed callback reaches the API over HTTP.
//!
//! Needs a moto server: `scripts/moto` starts one (scripts/test does).

use std::time::Duration;

use app::fakes::{Fakes, WebhookTarget};
use app::services::Services;
use baton::EngineConfig;
use baton_http::Keys;
use baton_testkit::moto::{ConsumeOptions, Deployment};
use serde_json::json;

const SECRET: &str = "moto-clips-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clips_by_webhook_and_the_transcription_pipeline_run_on_dynamodb_and_sqs() {
    let fakes = Fakes::start().await.unwrap();
    let registry = app::registry_with(Services::at(&fakes.base_url));
    let deployment = Deployment::start(registry, EngineConfig::default()).await;
    // The webhooks route, as its Lambda would serve it: the same router and engine.
    let router = baton_http::router(
        deployment.engine.clone(),
        Keys::open().with_webhook_secret("clips", SECRET),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    fakes.set_clip_webhook(WebhookTarget {
        baton_url: url,
        secret: SECRET.into(),
    });
    let consumers = deployment
        .consume(ConsumeOptions {
            redeliver: 0.2,
            duplicate: 0.2,
            visibility_timeout: 1,
            seed: 11,
            ..ConsumeOptions::default()
        })
        .await;

    let mut events = vec![json!({"name": "clips/generate.requested", "data": {
        "project_id": "p-aws", "creator_id": "c-aws",
        "video_url": "https://cdn.example/p-aws.mp4", "mode": "webhook"}})];
    for n in 0..12 {
        events.push(json!({"name": "video/transcribe.requested", "data": {
            "video_id": format!("vid-{n}"), "creator_id": "c-aws"}}));
    }
    let ids = deployment.send(&json!(events)).await;
    let timeout = Duration::from_secs(180);

    let clips = deployment.wait_for_event_runs(&ids[0], 1, timeout).await;
    assert_eq!(clips[0]["status"], "Completed", "{}", clips[0]);
    assert_eq!(clips[0]["output"]["clips"], 3);
    assert_eq!(
        fakes.state.calls("clips/status"),
        0,
        "resumed by the webhook, no polling"
    );
    assert_eq!(
        fakes.state.calls("clips/create"),
        1,
        "the task was created once"
    );
    assert_eq!(
        fakes.state.records("clips").len(),
        1,
        "stored once despite duplicates"
    );

    for id in &ids[1..] {
        let runs = deployment.wait_for_event_runs(id, 1, timeout).await;
        assert_eq!(runs[0]["status"], "Completed", "{}", runs[0]);
    }
    // Each transcription emitted its completion event, which started an embeddings run.
    let mut embedded = 0;
    for _ in 0..600 {
        embedded = fakes.state.records("embeddings").len();
        if embedded >= 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(embedded, 12, "one embeddings record per video");
    assert_eq!(fakes.state.records("transcripts").len(), 12);
    // Every status change made once, in order, despite the duplicates.
    let statuses = ["transcribing", "processing", "embedding", "completed"].map(|s| json!(s));
    for n in 0..12 {
        for _ in 0..100 {
            if fakes
                .state
                .history("videos", &format!("vid-{n}"), "status")
                .len()
                == 4
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            fakes.state.history("videos", &format!("vid-{n}"), "status"),
            statuses,
            "vid-{n}"
        );
    }
    assert_eq!(
        fakes.state.history("projects", "p-aws", "klap_status"),
        [json!("processing"), json!("completed")]
    );
    let stats = consumers.stop().await;
    assert!(stats.get(&stats.redelivered) > 0 && stats.get(&stats.duplicated) > 0);
}
