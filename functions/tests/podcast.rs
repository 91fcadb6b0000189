//! The podcast episodes (`generate-interview`, `generate-debate`, `generate-adventure`) end to
//! end in local mode against the fake LLM, TTS and app backend, on paused time: each format's
//! happy path with its progress and the episode row's status transitions, transient faults
//! retried once, a 4xx failing the run with the service's message and the episode marked
//! failed, and the 10-minute finish timeout.

mod local;

use std::sync::Arc;
use std::time::Duration;

use app::examples::podcast::{CANCELLED_ID, Format};
use app::fakes::Fault;
use baton::engine::run_id_for;
use baton::model::Progress;
use baton::store::memory::MemoryStore;
use baton::{RunStatus, StepStatus};
use local::{Driven, Local, step};
use serde_json::{Value, json};

const INTERVIEW: Format = Format::Interview;

fn request(episode_id: &str) -> Value {
    json!({
        "episode_id": episode_id,
        "topic": "The Apollo program",
        "user_id": "u-1",
        "guest": "Margaret Hamilton",
    })
}

/// The fake's interview script: an intro, a question and an answer per outline segment (3),
/// an outro.
const LINES: usize = 8;
/// The episode's `generationStatus` through a run that completes.
const STAGES: [&str; 5] = [
    "GENERATING_OUTLINE",
    "GENERATING_SCRIPT",
    "GENERATING_AUDIO",
    "UPLOADING",
    "COMPLETED",
];

fn statuses(local: &Local, episode: &str) -> Vec<Value> {
    local
        .fakes
        .state
        .history("episodes", episode, "generationStatus")
}

/// Waits (virtual time) until the episode's row has `n` statuses.
async fn until_statuses(local: &Local, episode: &str, n: usize) {
    for _ in 0..10_000 {
        if statuses(local, episode).len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{episode}: {:?}", statuses(local, episode));
}

#[tokio::test(start_paused = true)]
async fn an_interview_is_outlined_scripted_recorded_uploaded_and_published() {
    let local = Local::start().await;
    let event_id = local.send(&INTERVIEW.event(), request("e-1")).await;
    let run = local.finish(&event_id, &INTERVIEW.function_id()).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");

    let title = "The Apollo program, with Margaret Hamilton";
    let output = run.output.clone().unwrap();
    assert_eq!(output["episode_id"], "e-1");
    assert_eq!(output["format"], "interview");
    assert_eq!(output["title"], title);
    assert_eq!(output["lines"], LINES);
    assert_eq!(
        run.progress,
        Some(Progress {
            percent: 100,
            message: format!("published \"{title}\""),
        })
    );

    // Every stage ran once: 4 status updates, outline, script, one TTS step per line, upload,
    // complete.
    let steps = local.steps(&run.run_id).await;
    assert_eq!(steps.len(), 4 + 2 + LINES + 2, "{steps:#?}");
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

    // The app: the upload of every line's audio, and the episode row through every stage.
    let uploads = state.records("uploads");
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_eq!(uploads[0]["episode_id"], "e-1");
    assert_eq!(uploads[0]["parts"].as_array().unwrap().len(), LINES);
    assert_eq!(statuses(&local, "e-1"), STAGES.map(|s| json!(s)));
    assert_eq!(
        state.history("episodes", "e-1", "generationProgress"),
        [10, 40, 70, 90, 100].map(|p| json!(p))
    );
    let episode = state.row("episodes", "e-1").unwrap();
    assert_eq!(episode["status"], "PUBLISHED");
    assert_eq!(episode["title"], title);
    assert_eq!(episode["uploadId"], uploads[0]["id"]);
    assert_eq!(output["upload_id"], uploads[0]["id"]);
    assert!(episode["generationStartedAt"].is_string());
    assert!(
        episode["transcript"]
            .as_str()
            .unwrap()
            .starts_with("host: Welcome to")
    );
    assert!(episode.get("generationError").is_none());
}

/// The other two formats: a debate (a moderator and two sides, three voices) and an
/// adventure (seven narrated story nodes, recorded three at a time).
#[tokio::test(start_paused = true)]
async fn a_debate_and_an_adventure_are_published_with_their_own_voices() {
    let local = Local::start().await;
    let debate = local
        .send(
            &Format::Debate.event(),
            json!({"episode_id": "d-1", "user_id": "u-1", "topic": "Steam power", "for": "Watt", "against": "Luddite"}),
        )
        .await;
    let adventure = local
        .send(
            &Format::Adventure.event(),
            json!({"episode_id": "a-1", "user_id": "u-1", "topic": "The Silk Road", "protagonist": "a caravan guard"}),
        )
        .await;
    let debate = local.finish(&debate, "generate-debate").await;
    let adventure = local.finish(&adventure, "generate-adventure").await;
    for run in [&debate, &adventure] {
        assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    }
    // Debate: the motion, three rounds of moderator, for and against, a close.
    assert_eq!(debate.output.as_ref().unwrap()["lines"], 11);
    assert_eq!(
        debate.output.as_ref().unwrap()["title"],
        "Debate: Steam power"
    );
    // Adventure: a start, two paths, four endings.
    assert_eq!(adventure.output.as_ref().unwrap()["lines"], 7);
    for episode in ["d-1", "a-1"] {
        assert_eq!(statuses(&local, episode), STAGES.map(|s| json!(s)));
    }
    let transcript = local.fakes.state.row("episodes", "d-1").unwrap()["transcript"]
        .as_str()
        .unwrap()
        .to_owned();
    for speaker in ["moderator:", "for:", "against:"] {
        assert!(transcript.contains(speaker), "{transcript}");
    }
    assert_eq!(
        local.fakes.state.row("episodes", "a-1").unwrap()["format"],
        "adventure"
    );
    assert_eq!(local.fakes.state.calls("tts/speech"), 11 + 7);
}

/// Handled one invocation at a time, the run's progress moves 10 → 40 → 70 → 90 → 100 with a
/// message for each stage (what `GET /v1/runs/{id}` shows while it runs).
#[tokio::test(start_paused = true)]
async fn progress_reports_each_stage_as_it_goes() {
    let fakes = local::fakes().await;
    let mut driven = Driven::new(&fakes, Arc::new(MemoryStore::new()));
    let event_id = local::send(&driven.engine, &INTERVIEW.event(), request("e-2")).await;
    let run_id = run_id_for(&event_id, &INTERVIEW.function_id());
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
async fn transient_faults_are_retried_once_and_the_episode_is_published() {
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
    let event_id = local.send(&INTERVIEW.event(), request("e-3")).await;
    let run = local.finish(&event_id, &INTERVIEW.function_id()).await;
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
    assert_eq!(statuses(&local, "e-3"), STAGES.map(|s| json!(s)));
}

#[tokio::test(start_paused = true)]
async fn a_fault_past_the_one_retry_fails_the_run_and_marks_the_episode_failed() {
    let local = Local::start().await;
    let state = &local.fakes.state;
    state.inject(
        "llm/chat",
        [
            Fault::Status(500, "the model is overloaded".into()),
            Fault::Status(502, "bad gateway".into()),
        ],
    );
    let event_id = local.send(&INTERVIEW.event(), request("e-4")).await;
    let run = local.finish(&event_id, &INTERVIEW.function_id()).await;
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    let error = run.error.clone().unwrap();
    assert_eq!(error.name, "ServiceUnavailable");
    assert_eq!(error.message, "llm answered 502 Bad Gateway: bad gateway");
    let steps = local.steps(&run.run_id).await;
    let outline = step(&steps, "outline");
    assert_eq!((outline.status, outline.attempts), (StepStatus::Failed, 2));
    assert!(!steps.iter().any(|s| s.name == "script"), "{steps:#?}");

    let handler = local
        .only_run_of(&format!("{}-failure", INTERVIEW.function_id()))
        .await;
    assert_eq!(handler.status, RunStatus::Completed, "{handler:?}");
    until_statuses(&local, "e-4", 2).await;
    assert_eq!(
        statuses(&local, "e-4"),
        [json!("GENERATING_OUTLINE"), json!("FAILED")]
    );
    let episode = state.row("episodes", "e-4").unwrap();
    assert_eq!(episode["generationRunId"], run.run_id.as_str());
    assert_eq!(
        episode["generationError"],
        "ServiceUnavailable: llm answered 502 Bad Gateway: bad gateway"
    );
    assert_eq!(state.calls("tts/speech"), 0);
}

/// A voice the TTS service does not have: 400, not retried; the run fails with the
/// service's own message and the episode is marked failed with it.
#[tokio::test(start_paused = true)]
async fn an_invalid_voice_fails_the_run_with_the_services_message() {
    let local = Local::start().await;
    let mut data = request("e-5");
    data["host_voice"] = json!("robot");
    let event_id = local.send(&INTERVIEW.event(), data).await;
    let run = local.finish(&event_id, &INTERVIEW.function_id()).await;
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

    until_statuses(&local, "e-5", 4).await;
    assert_eq!(
        statuses(&local, "e-5"),
        [
            "GENERATING_OUTLINE",
            "GENERATING_SCRIPT",
            "GENERATING_AUDIO",
            "FAILED"
        ]
        .map(|s| json!(s))
    );
    let episode = local.fakes.state.row("episodes", "e-5").unwrap();
    assert_eq!(
        episode["generationError"],
        format!("ServiceRejected: {message}")
    );
    assert!(local.fakes.state.records("uploads").is_empty());
}

/// Slow services push the run past its 10-minute finish timeout: it is cancelled with
/// `FinishTimeout` (the steps executing then finish, nothing after them runs) and the
/// episode is marked failed by the cancellation handler.
#[tokio::test(start_paused = true)]
async fn a_run_past_its_finish_timeout_is_cancelled_and_the_episode_marked_failed() {
    let local = Local::start().await;
    let state = &local.fakes.state;
    // Timeline (a step's timeout stops a call too slow; a retry waits about 1 s): the
    // outline's first call outlives its 120 s timeout, the retry answers in 110 s (≈ 231 s);
    // the script's first call outlives its 180 s, the retry answers in 110 s (≈ 522 s); every
    // line answers in 40 s, 4 at a time: the second four run from ≈ 562 s to ≈ 602 s, and
    // the deadline (600 s) falls among them.
    let slow = |s| Fault::Slow(Duration::from_secs(s));
    state.inject("llm/chat", [slow(130), slow(110), slow(190), slow(110)]);
    state.inject("tts/speech", vec![slow(40); LINES]);
    let event_id = local.send(&INTERVIEW.event(), request("e-6")).await;
    let run = local.finish(&event_id, &INTERVIEW.function_id()).await;
    assert_eq!(run.status, RunStatus::Cancelled, "{run:?}");
    let error = run.error.clone().unwrap();
    assert_eq!(error.name, "FinishTimeout", "{error:?}");
    assert_eq!(
        run.progress.as_ref().map(|p| p.percent),
        Some(70),
        "cancelled while recording"
    );

    let recorder = local.only_run_of(CANCELLED_ID).await;
    assert_eq!(recorder.status, RunStatus::Completed, "{recorder:?}");
    until_statuses(&local, "e-6", 4).await;
    assert_eq!(
        statuses(&local, "e-6"),
        [
            "GENERATING_OUTLINE",
            "GENERATING_SCRIPT",
            "GENERATING_AUDIO",
            "FAILED"
        ]
        .map(|s| json!(s))
    );
    let episode = state.row("episodes", "e-6").unwrap();
    assert!(
        episode["generationError"]
            .as_str()
            .unwrap()
            .starts_with("FinishTimeout: "),
        "{episode}"
    );

    // Let the audio calls in flight end: they are recorded, and nothing after them runs (the
    // last one may still plan the next stage; its message finds the run ended).
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
    assert!(
        local::runs_of(
            local.engine(),
            &format!("{}-failure", INTERVIEW.function_id())
        )
        .await
        .is_empty(),
        "a cancelled run is not a failed one"
    );
}
