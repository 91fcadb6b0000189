//! `generate-podcast` end to end in local mode against the fake LLM, TTS and app backend, on
//! paused time: the happy path with its progress, transient faults retried once, a 4xx
//! failing the run with the service's message and the failure handler's record, and the
//! 10-minute finish timeout.

mod local;

use std::sync::Arc;
use std::time::Duration;

use app::examples::podcast::{EVENT, FUNCTION_ID};
use app::fakes::Fault;
use baton::engine::run_id_for;
use baton::model::Progress;
use baton::store::memory::MemoryStore;
use baton::{RunStatus, StepStatus};
use local::{Driven, Local, step};
use serde_json::{Value, json};

fn request(podcast_id: &str) -> Value {
    json!({
        "podcast_id": podcast_id,
        "topic": "The Apollo program",
        "user_id": "u-1",
        "guest": "Margaret Hamilton",
    })
}

/// The fake's script: an intro, a question and an answer per outline segment (3), an outro.
const LINES: usize = 8;

#[tokio::test(start_paused = true)]
async fn a_podcast_is_outlined_scripted_recorded_uploaded_and_published() {
    let local = Local::start().await;
    let event_id = local.send(EVENT, request("p-1")).await;
    let run = local.finish(&event_id, FUNCTION_ID).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");

    let title = "The Apollo program, with Margaret Hamilton";
    let output = run.output.clone().unwrap();
    assert_eq!(output["podcast_id"], "p-1");
    assert_eq!(output["title"], title);
    assert_eq!(output["lines"], LINES);
    assert_eq!(
        run.progress,
        Some(Progress {
            percent: 100,
            message: format!("published \"{title}\""),
        })
    );

    // Every stage ran once: outline, script, one TTS step per line, upload, complete.
    let steps = local.steps(&run.run_id).await;
    assert_eq!(steps.len(), 2 + LINES + 2, "{steps:#?}");
    assert!(
        steps
            .iter()
            .all(|s| s.status == StepStatus::Completed && s.attempts == 1),
        "{steps:#?}"
    );
    let audio: Vec<&str> = steps
        .iter()
        .filter(|s| s.name == "audio")
        .map(|s| s.step_id.as_str())
        .collect();
    assert_eq!(audio.len(), LINES);
    assert!(audio.contains(&"0/audio") && audio.contains(&"7/audio"));
    let state = &local.fakes.state;
    assert_eq!(state.calls("llm/chat"), 2);
    assert_eq!(state.calls("tts/speech"), LINES as u32);

    // What the app backend holds: the upload of every line's audio, the published podcast.
    let uploads = state.records("uploads");
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_eq!(uploads[0]["podcast_id"], "p-1");
    assert_eq!(uploads[0]["parts"].as_array().unwrap().len(), LINES);
    let podcasts = state.records("podcasts");
    assert_eq!(podcasts.len(), 1, "{podcasts:?}");
    let podcast = &podcasts[0];
    assert_eq!(podcast["status"], "complete");
    assert_eq!(podcast["podcast_id"], "p-1");
    assert_eq!(podcast["title"], title);
    assert_eq!(podcast["upload_id"], uploads[0]["id"]);
    assert_eq!(output["upload_id"], uploads[0]["id"]);
    assert!(
        podcast["transcript"]
            .as_str()
            .unwrap()
            .starts_with("host: Welcome to")
    );
    assert!(state.records("podcast_failures").is_empty());
}

/// Handled one invocation at a time, the run's progress moves 10 → 40 → 70 → 90 → 100 with a
/// message for each stage (what `GET /v1/runs/{id}` shows while it runs).
#[tokio::test(start_paused = true)]
async fn progress_reports_each_stage_as_it_goes() {
    let fakes = local::fakes().await;
    let mut driven = Driven::new(&fakes, Arc::new(MemoryStore::new()));
    let event_id = local::send(&driven.engine, EVENT, request("p-2")).await;
    let run_id = run_id_for(&event_id, FUNCTION_ID);
    let mut seen: Vec<(u8, String)> = Vec::new();
    let run = driven
        .run_to_end(&run_id, |run| {
            let Some(p) = &run.progress else { return };
            let now = (p.percent, p.message.clone());
            if seen.last() != Some(&now) {
                seen.push(now);
            }
        })
        .await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    let title = "The Apollo program, with Margaret Hamilton";
    assert_eq!(
        seen,
        vec![
            (10, "writing the outline".to_owned()),
            (40, format!("writing the script of \"{title}\"")),
            (70, format!("recording {LINES} lines of audio")),
            (90, "uploading the episode".to_owned()),
            (100, format!("published \"{title}\"")),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn transient_faults_are_retried_once_and_the_podcast_is_published() {
    let local = Local::start().await;
    let state = &local.fakes.state;
    // The outline's first call: 500. One TTS call: 429, come back in 30 s. The upload: 503.
    state.inject(
        "llm/chat",
        [Fault::Status(500, "the model is overloaded".into())],
    );
    state.inject("tts/speech", [Fault::RetryAfter(30)]);
    state.inject(
        "app/uploads",
        [Fault::Status(503, "storage unavailable".into())],
    );
    let event_id = local.send(EVENT, request("p-3")).await;
    let run = local.finish(&event_id, FUNCTION_ID).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.progress.as_ref().map(|p| p.percent), Some(100));

    let steps = local.steps(&run.run_id).await;
    assert_eq!(step(&steps, "outline").attempts, 2);
    assert_eq!(step(&steps, "script").attempts, 1);
    assert_eq!(step(&steps, "upload").attempts, 2);
    let retried_audio: Vec<_> = steps
        .iter()
        .filter(|s| s.name == "audio" && s.attempts == 2)
        .collect();
    assert_eq!(retried_audio.len(), 1, "{steps:#?}");
    assert_eq!(
        steps
            .iter()
            .filter(|s| s.name == "audio" && s.attempts == 1)
            .count(),
        LINES - 1
    );
    // The rate-limited line was tried again no sooner than its Retry-After (journal times).
    let rate_limited = retried_audio[0];
    let waited = rate_limited.ended_at.unwrap() - rate_limited.started_at.unwrap();
    assert!(waited >= chrono::Duration::seconds(30), "{rate_limited:?}");
    assert!(steps.iter().all(|s| s.status == StepStatus::Completed));

    assert_eq!(state.calls("llm/chat"), 3);
    assert_eq!(state.calls("tts/speech"), LINES as u32 + 1);
    assert_eq!(state.records("uploads").len(), 1);
    assert_eq!(state.records("podcasts").len(), 1);
    assert!(state.records("podcast_failures").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_fault_past_the_one_retry_fails_the_run_and_the_failure_is_recorded() {
    let local = Local::start().await;
    let state = &local.fakes.state;
    state.inject(
        "llm/chat",
        [
            Fault::Status(500, "the model is overloaded".into()),
            Fault::Status(502, "bad gateway".into()),
        ],
    );
    let event_id = local.send(EVENT, request("p-4")).await;
    let run = local.finish(&event_id, FUNCTION_ID).await;
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    let error = run.error.clone().unwrap();
    assert_eq!(error.name, "ServiceUnavailable");
    assert_eq!(error.message, "llm answered 502 Bad Gateway: bad gateway");
    let steps = local.steps(&run.run_id).await;
    assert_eq!(steps.len(), 1, "nothing after the outline ran: {steps:#?}");
    assert_eq!(
        (steps[0].status, steps[0].attempts),
        (StepStatus::Failed, 2)
    );

    let handler = local.only_run_of(&format!("{FUNCTION_ID}-failure")).await;
    assert_eq!(handler.status, RunStatus::Completed, "{handler:?}");
    let failures = state.records("podcast_failures");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["podcast_id"], "p-4");
    assert_eq!(failures[0]["run_id"], run.run_id.as_str());
    assert_eq!(failures[0]["status"], "failed");
    assert_eq!(
        failures[0]["error"],
        "ServiceUnavailable: llm answered 502 Bad Gateway: bad gateway"
    );
    assert_eq!(state.calls("tts/speech"), 0);
    assert!(state.records("podcasts").is_empty());
}

/// A voice the TTS service does not have: 400, not retried; the run fails with the
/// service's own message and the failure handler records it on the podcast.
#[tokio::test(start_paused = true)]
async fn an_invalid_voice_fails_the_run_with_the_services_message() {
    let local = Local::start().await;
    let mut data = request("p-5");
    data["host_voice"] = json!("robot");
    let event_id = local.send(EVENT, data).await;
    let run = local.finish(&event_id, FUNCTION_ID).await;
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    let error = run.error.clone().unwrap();
    let message = "tts answered 400 Bad Request: voice \"robot\" is not supported \
                   (one of: alloy, echo, fable, onyx, nova, shimmer)";
    assert_eq!(
        (error.name.as_str(), error.message.as_str()),
        ("ServiceRejected", message)
    );
    // The host's lines failed once each (a 4xx is not retried); the guest's were recorded.
    let steps = local.steps(&run.run_id).await;
    let audio: Vec<_> = steps.iter().filter(|s| s.name == "audio").collect();
    assert_eq!(audio.len(), LINES);
    assert!(audio.iter().all(|s| s.attempts == 1), "{audio:#?}");
    assert_eq!(
        audio
            .iter()
            .filter(|s| s.status == StepStatus::Failed)
            .count(),
        5,
        "intro, 3 questions, outro"
    );
    assert!(!steps.iter().any(|s| s.name == "upload"));

    local.only_run_of(&format!("{FUNCTION_ID}-failure")).await;
    let failures = local.fakes.state.records("podcast_failures");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["podcast_id"], "p-5");
    assert_eq!(failures[0]["user_id"], "u-1");
    assert_eq!(failures[0]["error"], format!("ServiceRejected: {message}"));
    assert!(local.fakes.state.records("uploads").is_empty());
    assert!(local.fakes.state.records("podcasts").is_empty());
}

/// Slow services push the run past its 10-minute finish timeout: it is cancelled with
/// `FinishTimeout` (the steps executing then finish, nothing after them runs) and the
/// cancellation is recorded on the podcast.
#[tokio::test(start_paused = true)]
async fn a_run_past_its_finish_timeout_is_cancelled_and_recorded() {
    let local = Local::start().await;
    let state = &local.fakes.state;
    // Timeline (the services' client gives up on a call after 120 s; a retry waits ≤ 1 s):
    // outline: a call too slow (gives up at 120 s), a retry answering in 110 s (≈ 231 s);
    // script: the same (≈ 462 s); audio: every line answers in 110 s, 4 at a time, so the
    // second four run from ≈ 572 s to ≈ 682 s. The deadline (600 s) falls in the second four.
    let too_slow = Fault::Slow(Duration::from_secs(130));
    let slow = Fault::Slow(Duration::from_secs(110));
    state.inject(
        "llm/chat",
        [too_slow.clone(), slow.clone(), too_slow, slow.clone()],
    );
    state.inject("tts/speech", vec![slow; LINES]);
    let event_id = local.send(EVENT, request("p-6")).await;
    let run = local.finish(&event_id, FUNCTION_ID).await;
    assert_eq!(run.status, RunStatus::Cancelled, "{run:?}");
    let error = run.error.clone().unwrap();
    assert_eq!(error.name, "FinishTimeout", "{error:?}");
    assert_eq!(
        run.progress.as_ref().map(|p| p.percent),
        Some(70),
        "cancelled while recording"
    );

    let recorder = local.only_run_of(&format!("{FUNCTION_ID}-cancelled")).await;
    assert_eq!(recorder.status, RunStatus::Completed, "{recorder:?}");
    let failures = state.records("podcast_failures");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["podcast_id"], "p-6");
    assert_eq!(failures[0]["status"], "cancelled");
    assert!(
        failures[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("FinishTimeout: "),
        "{failures:?}"
    );

    // Let the audio calls in flight end: they are recorded, and nothing after them runs (the
    // last one may still plan the upload; its message finds the run ended).
    tokio::time::sleep(Duration::from_secs(600)).await;
    let steps = local.steps(&run.run_id).await;
    assert_eq!(step(&steps, "outline").attempts, 2);
    assert_eq!(step(&steps, "script").attempts, 2);
    let audio: Vec<_> = steps.iter().filter(|s| s.name == "audio").collect();
    assert_eq!(audio.len(), LINES);
    assert!(
        audio
            .iter()
            .all(|s| s.status == StepStatus::Completed && s.attempts == 1)
    );
    assert!(
        steps
            .iter()
            .filter(|s| s.name == "upload" || s.name == "complete")
            .all(|s| s.attempts == 0),
        "{steps:#?}"
    );
    assert_eq!(state.calls("tts/speech"), LINES as u32);
    assert!(state.records("uploads").is_empty());
    assert!(state.records("podcasts").is_empty());
    assert!(
        local::runs_of(local.engine(), &format!("{FUNCTION_ID}-failure"))
            .await
            .is_empty(),
        "a cancelled run is not a failed one"
    );
}
