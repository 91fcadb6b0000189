//! `parse-transcript` end to end in local mode against the fake LLM and app backend, on
//! paused time. Its requirement: a transcript never stays stuck at "parsing". Shown here:
//! transient faults retried; bad model output or a refused request failing the run at once
//! and marking the transcript failed; a failed parse brought back by a replay; and a run
//! whose handler died mid-step recovered by the sweeper (and by a restarted runtime).

mod local;

use std::sync::Arc;
use std::time::Duration;

use app::examples::transcripts::{EVENT, FUNCTION_ID};
use app::fakes::{FakeState, Fakes, Fault};
use baton::engine::{EXECUTOR_GRACE, run_id_for};
use baton::model::{MessageKind, Progress};
use baton::store::memory::MemoryStore;
use baton::{RunStatus, StepStatus, Store};
use local::{Driven, Local, PATIENCE, step};
use serde_json::{Value, json};

const CALL: &str = "Alex: Thanks for joining today.\n\
                    Sam: Happy to. We need the pilot live before the quarter ends.\n\
                    Alex: Then we send the contract on Friday.\n\
                    Sam: Agreed, and I'll loop in our security team.";

fn request(transcript_id: &str) -> Value {
    json!({
        "transcript_id": transcript_id,
        "user_id": "u-1",
        "opportunity_id": "opp-9",
        "text": CALL,
    })
}

/// The call's parsing status in the app, every value it took.
fn statuses(state: &FakeState, transcript_id: &str) -> Vec<String> {
    state
        .history("gong_calls", transcript_id, "parsing_status")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_transcript_is_parsed_saved_and_added_to_the_history() {
    let local = Local::start().await;
    let event_id = local.send(EVENT, request("t-1")).await;
    let run = local.finish(&event_id, FUNCTION_ID).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(
        run.progress,
        Some(Progress {
            percent: 100,
            message: "parsed".into()
        })
    );
    let output = run.output.clone().unwrap();
    assert_eq!(output["speakers"], json!(["Alex", "Sam"]));
    assert_eq!(output["segments"], 4);
    assert_eq!(output["saved_as"], "transcripts-1");

    let steps = local.steps(&run.run_id).await;
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "update-status",
            "parse",
            "save",
            "update-history",
            "update-status"
        ]
    );
    assert!(steps.iter().all(|s| s.attempts == 1));

    let state = &local.fakes.state;
    let saved = state.records("transcripts");
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!(saved[0]["transcript_id"], "t-1");
    assert_eq!(saved[0]["speakers"], json!(["Alex", "Sam"]));
    let segments = saved[0]["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 4);
    assert_eq!(segments[1]["speaker"], "Sam");
    assert_eq!(segments[0]["start_s"], 0.0);
    assert!(segments[1]["start_s"].as_f64().unwrap() > 0.0);
    assert_eq!(
        saved[0]["action_items"],
        json!([
            "Happy to. We need the pilot live before the quarter ends.",
            "Then we send the contract on Friday.",
            "Agreed, and I'll loop in our security team."
        ])
    );
    let history = state.records("transcript_history");
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["opportunity_id"], "opp-9");
    assert_eq!(history[0]["summary"], saved[0]["summary"]);
    assert_eq!(statuses(state, "t-1"), ["parsing", "completed"]);
}

/// Given a URL instead of the text, the model gets it as a file part and fetches it.
#[tokio::test(start_paused = true)]
async fn a_transcript_given_by_url_is_parsed_from_the_file() {
    let local = Local::start().await;
    let data = json!({"transcript_id": "t-2", "user_id": "u-1", "url": "https://files.example/calls/t-2.txt"});
    let event_id = local.send(EVENT, data).await;
    let run = local.finish(&event_id, FUNCTION_ID).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    let saved = local.fakes.state.records("transcripts");
    assert_eq!(saved[0]["speakers"], json!(["Alex", "Sam"]));
    assert!(
        saved[0]["segments"][0]["text"]
            .as_str()
            .unwrap()
            .contains("https://files.example/calls/t-2.txt")
    );
    assert_eq!(
        statuses(&local.fakes.state, "t-2"),
        ["parsing", "completed"]
    );
}

#[tokio::test(start_paused = true)]
async fn transient_llm_faults_are_retried_and_the_parse_completes() {
    let local = Local::start().await;
    let state = &local.fakes.state;
    state.inject(
        "llm/chat",
        [
            Fault::Status(500, "internal error".into()),
            Fault::RetryAfter(20),
            Fault::Status(503, "overloaded".into()),
        ],
    );
    state.inject(
        "app/transcripts",
        [Fault::Status(502, "bad gateway".into())],
    );
    let event_id = local.send(EVENT, request("t-3")).await;
    let run = local.finish(&event_id, FUNCTION_ID).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    let steps = local.steps(&run.run_id).await;
    let parse = step(&steps, "parse");
    assert_eq!((parse.status, parse.attempts), (StepStatus::Completed, 4));
    assert!(
        parse.ended_at.unwrap() - parse.started_at.unwrap() >= chrono::Duration::seconds(20),
        "the 429's Retry-After was honoured: {parse:?}"
    );
    assert_eq!(step(&steps, "save").attempts, 2);
    assert_eq!(state.calls("llm/chat"), 4);
    assert_eq!(state.records("transcripts").len(), 1);
    assert_eq!(statuses(state, "t-3"), ["parsing", "completed"]);
}

/// The model ignores the schema (prose instead of JSON): refused at once, not retried; the
/// run fails with what it said, and the failure handler marks the transcript failed.
#[tokio::test(start_paused = true)]
async fn garbled_model_output_fails_the_run_and_marks_the_transcript_failed() {
    let local = Local::start().await;
    let mut data = request("t-4");
    data["text"] = json!("Alex: garble garble.\nSam: Sure.");
    let event_id = local.send(EVENT, data).await;
    let run = local.finish(&event_id, FUNCTION_ID).await;
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    let error = run.error.clone().unwrap();
    assert_eq!(error.name, "InvalidModelOutput");
    assert!(
        error
            .message
            .starts_with("the model's transcript_parse output is not usable: expected value"),
        "{error:?}"
    );
    assert!(
        error.message.contains("Sure! Here is a summary"),
        "{error:?}"
    );
    let steps = local.steps(&run.run_id).await;
    assert_eq!(step(&steps, "parse").attempts, 1, "not retried");
    assert_eq!(local.fakes.state.calls("llm/chat"), 1);

    let handler = local.only_run_of(&format!("{FUNCTION_ID}-failure")).await;
    assert_eq!(handler.status, RunStatus::Completed, "{handler:?}");
    let state = &local.fakes.state;
    assert_eq!(statuses(state, "t-4"), ["parsing", "failed"]);
    let failed = state.row("gong_calls", "t-4").unwrap();
    assert_eq!(failed["run_id"], run.run_id.as_str());
    assert_eq!(
        failed["error"],
        format!("InvalidModelOutput: {}", error.message)
    );
    assert!(state.records("transcripts").is_empty());
}

/// A request the LLM refuses (it cannot fetch the file): 400, the run fails with the
/// service's message.
#[tokio::test(start_paused = true)]
async fn a_refused_request_fails_the_run_with_the_services_message() {
    let local = Local::start().await;
    let url = "https://files.example/missing/t-5.txt";
    let data = json!({"transcript_id": "t-5", "user_id": "u-1", "url": url});
    let event_id = local.send(EVENT, data).await;
    let run = local.finish(&event_id, FUNCTION_ID).await;
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    let error = run.error.clone().unwrap();
    assert_eq!(error.name, "ServiceRejected");
    assert_eq!(
        error.message,
        format!("llm answered 400 Bad Request: could not fetch file_url {url}: 404 Not Found")
    );
    local.only_run_of(&format!("{FUNCTION_ID}-failure")).await;
    assert_eq!(statuses(&local.fakes.state, "t-5"), ["parsing", "failed"]);
}

/// (a) The LLM answers the first parse with a 422 (non-retriable): the run fails and the
/// transcript is marked failed. Once the service is fixed (the fault was one-shot), a replay
/// of the failed run (`POST /v1/runs/{id}/replay`) parses and saves it.
#[tokio::test(start_paused = true)]
async fn a_replay_brings_back_a_failed_parse() {
    let local = Local::start().await;
    let state = &local.fakes.state;
    state.inject(
        "llm/chat",
        [Fault::Status(
            422,
            "the output did not match the schema transcript_parse".into(),
        )],
    );
    let event_id = local.send(EVENT, request("t-6")).await;
    let failed = local.finish(&event_id, FUNCTION_ID).await;
    assert_eq!(failed.status, RunStatus::Failed, "{failed:?}");
    assert_eq!(
        failed.error.as_ref().unwrap().message,
        "llm answered 422 Unprocessable Entity: the output did not match the schema transcript_parse"
    );
    local.only_run_of(&format!("{FUNCTION_ID}-failure")).await;
    assert_eq!(statuses(state, "t-6"), ["parsing", "failed"]);

    let replay_id = local.engine().replay(&failed.run_id, None).await.unwrap();
    assert_ne!(replay_id, failed.run_id);
    let replayed = local.wait(&replay_id).await;
    assert_eq!(replayed.status, RunStatus::Completed, "{replayed:?}");
    assert_eq!(replayed.replay_of.as_deref(), Some(failed.run_id.as_str()));
    assert_eq!(replayed.event_id, event_id);
    assert_eq!(replayed.output.as_ref().unwrap()["segments"], 4);
    assert_eq!(state.records("transcripts").len(), 1);
    assert_eq!(state.records("transcript_history").len(), 1);
    assert_eq!(
        statuses(state, "t-6"),
        ["parsing", "failed", "parsing", "completed"]
    );
    // The failed run stays as it was; both runs belong to the event.
    let runs = local
        .engine()
        .store()
        .runs_for_event(&event_id)
        .await
        .unwrap();
    let by_status: Vec<_> = runs.iter().map(|r| (r.run_id.as_str(), r.status)).collect();
    assert_eq!(
        by_status,
        [
            (failed.run_id.as_str(), RunStatus::Failed),
            (replay_id.as_str(), RunStatus::Completed)
        ]
    );
}

/// Drives the run by hand up to its `parse` step and kills that step's handler while the
/// LLM call is in flight: the step stays Running, attempt 1, with no message anywhere (what
/// a serverless platform freezing or killing the function leaves behind).
async fn die_mid_parse(fakes: &Fakes, driven: &mut Driven, transcript_id: &str) -> String {
    // The first LLM call hangs (for longer than the test lets it).
    fakes
        .state
        .inject("llm/chat", [Fault::Slow(Duration::from_secs(100))]);
    let event_id = local::send(&driven.engine, EVENT, request(transcript_id)).await;
    let run_id = run_id_for(&event_id, FUNCTION_ID);
    let parse = loop {
        let message = driven.next(PATIENCE).await.expect("a message");
        if matches!(&message.kind, MessageKind::Step { name, .. } if name == "parse") {
            break message;
        }
        driven.engine.handle(message).await.unwrap();
    };
    let engine = driven.engine.clone();
    let handler = tokio::spawn(async move { engine.handle(parse).await });
    while fakes.state.calls("llm/chat") == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    handler.abort();
    assert!(handler.await.unwrap_err().is_cancelled());

    let journal = driven.store.journal(&run_id).await.unwrap();
    let parse = step(&journal, "parse");
    assert_eq!((parse.status, parse.attempts), (StepStatus::Running, 1));
    assert_eq!(
        statuses(&fakes.state, transcript_id),
        ["parsing"],
        "the app shows it parsing"
    );
    run_id
}

/// (b) The sweeper finds the run once the dead step's timeout and the executor's grace have
/// passed, and the step runs again (the same attempt: it never ended).
#[tokio::test(start_paused = true)]
async fn the_sweeper_recovers_a_run_whose_handler_died_mid_step() {
    let fakes = local::fakes().await;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut driven = Driven::new(&fakes, store.clone());
    let run_id = die_mid_parse(&fakes, &mut driven, "t-7").await;

    // Nothing would ever move it on: no message comes, the run stays Running.
    let timeout = driven.engine.registry().get(FUNCTION_ID).unwrap().steps["parse"].timeout;
    let stale_after = Duration::from_secs(600);
    let past = timeout + EXECUTOR_GRACE + stale_after;
    assert!(driven.next(past).await.is_none(), "nothing is in flight");
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Running);

    // The sweeper re-drives it (the local runtime and the AWS `sweeper` Lambda call this).
    assert_eq!(driven.engine.sweep(Some(stale_after)).await.unwrap(), 1);
    let run = driven.run_to_end(&run_id, |_| {}).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(fakes.state.calls("llm/chat"), 2, "the parse ran again");
    let journal = store.journal(&run_id).await.unwrap();
    let parse = step(&journal, "parse");
    assert_eq!((parse.status, parse.attempts), (StepStatus::Completed, 1));
    assert!(journal.iter().all(|s| s.status == StepStatus::Completed));
    assert_eq!(fakes.state.records("transcripts").len(), 1);
    assert_eq!(statuses(&fakes.state, "t-7"), ["parsing", "completed"]);
}

/// (b) The process died with it: a local runtime started on the same store re-drives every
/// run that had not ended, and the parse completes.
#[tokio::test(start_paused = true)]
async fn a_restarted_runtime_recovers_a_run_whose_handler_died_mid_step() {
    let fakes = local::fakes().await;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut driven = Driven::new(&fakes, store.clone());
    let run_id = die_mid_parse(&fakes, &mut driven, "t-8").await;
    drop(driven);

    let rt = local::runtime(&fakes, store.clone()).await;
    let run = rt.wait_for_run(&run_id, PATIENCE).await.expect("it ends");
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(fakes.state.calls("llm/chat"), 2, "the parse ran again");
    assert_eq!(statuses(&fakes.state, "t-8"), ["parsing", "completed"]);
}
