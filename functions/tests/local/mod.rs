//! The example workloads in local mode against the fake outside services: a `LocalRuntime`
//! on the in-memory store (the periodic sweeper off, so a lost message shows up as a stuck
//! run), or an `Engine` driven by hand, one message at a time, for the tests that watch each
//! invocation or kill one mid-step.
//!
//! The tests run on paused tokio time: sleeps, backoffs, `Retry-After` and the fakes' slow
//! answers take no real time. The fakes' sockets are real (loopback, in the same runtime).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use app::fakes::Fakes;
use app::services::Services;
use baton::engine::run_id_for;
use baton::local::{LocalOptions, LocalRuntime};
use baton::model::{Message, RunQuery, RunRecord, RunSummary, StepRecord};
use baton::queue::local::{LocalQueue, LocalReceiver};
use baton::store::memory::MemoryStore;
use baton::{Engine, EngineConfig, NewEvent, Store};
use serde_json::Value;

/// Long enough for any run here (virtual time).
pub const PATIENCE: Duration = Duration::from_secs(7 * 86400);

pub async fn fakes() -> Fakes {
    Fakes::start().await.expect("the fakes start on 127.0.0.1")
}

pub fn registry(fakes: &Fakes) -> baton::Registry {
    app::registry_with(Services::at(&fakes.base_url))
}

/// The fakes and a local runtime on `store` calling them.
pub struct Local {
    pub fakes: Fakes,
    pub rt: LocalRuntime,
}

impl Local {
    pub async fn start() -> Local {
        let fakes = fakes().await;
        let rt = runtime(&fakes, Arc::new(MemoryStore::new())).await;
        Local { fakes, rt }
    }

    pub fn engine(&self) -> &Engine {
        self.rt.engine()
    }

    pub async fn send(&self, name: &str, data: Value) -> String {
        send(self.engine(), name, data).await
    }

    /// The run `event_id` started for `function_id`, once it has ended.
    pub async fn finish(&self, event_id: &str, function_id: &str) -> RunRecord {
        self.wait(&run_id_for(event_id, function_id)).await
    }

    pub async fn wait(&self, run_id: &str) -> RunRecord {
        self.rt
            .wait_for_run(run_id, PATIENCE)
            .await
            .unwrap_or_else(|| panic!("run {run_id} did not end"))
    }

    /// The one run of `function_id` (a failure handler's), once it has ended.
    pub async fn only_run_of(&self, function_id: &str) -> RunRecord {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let runs = runs_of(self.engine(), function_id).await;
            assert!(
                runs.len() <= 1,
                "more than one run of {function_id}: {runs:?}"
            );
            if let Some(run) = runs.into_iter().next() {
                return self.wait(&run.run_id).await;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no run of {function_id}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn steps(&self, run_id: &str) -> Vec<StepRecord> {
        self.engine().store().journal(run_id).await.unwrap()
    }
}

pub async fn runtime(fakes: &Fakes, store: Arc<dyn Store>) -> LocalRuntime {
    let options = LocalOptions {
        sweep_interval: Duration::from_secs(1000 * 86400),
        ..LocalOptions::default()
    };
    LocalRuntime::start(registry(fakes), store, options)
        .await
        .expect("the runtime starts")
}

pub async fn send(engine: &Engine, name: &str, data: Value) -> String {
    engine
        .send_events(vec![NewEvent::new(name, data)])
        .await
        .expect("the event is accepted")
        .remove(0)
}

/// Every run of `function_id`, newest first.
pub async fn runs_of(engine: &Engine, function_id: &str) -> Vec<RunSummary> {
    let query = RunQuery {
        function_id: Some(function_id.to_owned()),
        limit: 100,
        ..RunQuery::default()
    };
    engine.store().list_runs(&query).await.unwrap().runs
}

/// The journal entry of `step_id`.
pub fn step<'a>(steps: &'a [StepRecord], step_id: &str) -> &'a StepRecord {
    steps
        .iter()
        .find(|s| s.step_id == step_id)
        .unwrap_or_else(|| panic!("no step {step_id} in {steps:#?}"))
}

/// An engine whose messages the test receives and hands to `engine.handle` itself: what a
/// queue consumer does, one invocation at a time.
pub struct Driven {
    pub engine: Engine,
    pub store: Arc<dyn Store>,
    pub rx: LocalReceiver,
}

impl Driven {
    pub fn new(fakes: &Fakes, store: Arc<dyn Store>) -> Driven {
        let (queue, rx) = LocalQueue::new();
        let engine = Engine::new(
            registry(fakes),
            store.clone(),
            Arc::new(queue),
            EngineConfig::default(),
        );
        Driven { engine, store, rx }
    }

    /// The next message, when it is due (None: nothing within `within`).
    pub async fn next(&mut self, within: Duration) -> Option<Message> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Handles messages one by one until `run_id` has ended (`after_each` sees the run after
    /// every invocation).
    pub async fn run_to_end(
        &mut self,
        run_id: &str,
        mut after_each: impl FnMut(&RunRecord),
    ) -> RunRecord {
        loop {
            let run = self.store.get_run(run_id).await.unwrap().expect("the run");
            if run.status.is_terminal() {
                return run;
            }
            let message = self
                .next(PATIENCE)
                .await
                .unwrap_or_else(|| panic!("run {run_id} is stuck: no message in flight"));
            self.engine.handle(message).await.expect("the handler ends");
            if let Some(run) = self.store.get_run(run_id).await.unwrap() {
                after_each(&run);
            }
        }
    }
}
