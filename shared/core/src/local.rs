//! Local mode: the engine, the embedded store and the in-process queue in one process, with
//! every handler as a task. What `baton dev` runs, and what tests and small installs use.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::engine::{Engine, EngineConfig};
use crate::error::EngineError;
use crate::function::Registry;
use crate::model::{Message, RunRecord};
use crate::queue::local::{LocalQueue, LocalReceiver};
use crate::queue::{Envelope, Queue};
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub engine: EngineConfig,
    /// Handlers running at once.
    pub concurrency: usize,
    /// How often the sweeper looks for stalled runs.
    pub sweep_interval: Duration,
    /// A run with no progress for this long is re-driven.
    pub stale_after: Duration,
    /// A failed handler invocation is delivered again after this delay (the stand-in for an
    /// SQS visibility timeout), up to `max_deliveries` times; the sweeper covers the rest.
    pub redelivery_delay: Duration,
    pub max_deliveries: u32,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            engine: EngineConfig::default(),
            concurrency: 64,
            sweep_interval: Duration::from_secs(30),
            stale_after: Duration::from_secs(600),
            redelivery_delay: Duration::from_secs(1),
            max_deliveries: 10,
        }
    }
}

/// A running local engine. Dropping it stops its tasks.
pub struct LocalRuntime {
    engine: Engine,
    queue: LocalQueue,
    tasks: Vec<JoinHandle<()>>,
}

impl LocalRuntime {
    /// Starts the dispatcher and the sweeper, and re-drives every run that had not ended
    /// (the in-process queue does not survive a restart; the journal does). A registry that
    /// fails [`Registry::check`] is refused.
    pub async fn start(
        registry: Registry,
        store: Arc<dyn Store>,
        options: LocalOptions,
    ) -> Result<Self, EngineError> {
        registry
            .check()
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let (queue, receiver) = LocalQueue::new();
        let engine = Engine::new(
            registry,
            store,
            Arc::new(queue.clone()),
            options.engine.clone(),
        );
        let recovered = engine.sweep(None).await?;
        if recovered > 0 {
            tracing::info!(runs = recovered, "re-driving runs that had not ended");
        }
        let dispatcher = tokio::spawn(dispatch(
            engine.clone(),
            queue.clone(),
            receiver,
            options.clone(),
        ));
        // Never re-drive a step that may still be inside its own timeout.
        let longest_step = engine
            .registry()
            .functions()
            .flat_map(|f| f.steps.values().map(|s| s.timeout))
            .max()
            .unwrap_or_default();
        let stale_after = options
            .stale_after
            .max(longest_step * 2 + Duration::from_secs(60));
        let sweeper = tokio::spawn(sweep_forever(
            engine.clone(),
            LocalOptions {
                stale_after,
                ..options
            },
        ));
        let scheduler = tokio::spawn(fire_crons_forever(engine.clone()));
        Ok(LocalRuntime {
            engine,
            queue,
            tasks: vec![dispatcher, sweeper, scheduler],
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Messages sent so far.
    pub fn messages_sent(&self) -> u64 {
        self.queue.sent()
    }

    /// Polls until the run has ended (tests and the CLI use it).
    pub async fn wait_for_run(&self, run_id: &str, timeout: Duration) -> Option<RunRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(run)) = self.engine.store().get_run(run_id).await {
                if run.status.is_terminal() {
                    return Some(run);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for LocalRuntime {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Delivery attempt counts ride along in memory; they are not part of the message contract.
async fn dispatch(
    engine: Engine,
    queue: LocalQueue,
    mut receiver: LocalReceiver,
    options: LocalOptions,
) {
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let deliveries = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        Message,
        u32,
    >::new()));
    while let Some(message) = receiver.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (engine, queue, options, deliveries) = (
            engine.clone(),
            queue.clone(),
            options.clone(),
            deliveries.clone(),
        );
        tokio::spawn(async move {
            let result = engine.handle_local(message.clone()).await;
            drop(permit);
            let error = match result {
                Ok(()) => {
                    deliveries
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&message);
                    return;
                }
                Err(error) => error,
            };
            let delivered = {
                let mut counts = deliveries.lock().unwrap_or_else(|e| e.into_inner());
                let n = counts.entry(message.clone()).or_insert(0);
                *n += 1;
                let n = *n;
                if n >= options.max_deliveries {
                    counts.remove(&message);
                }
                n
            };
            if delivered >= options.max_deliveries {
                tracing::error!(?message, %error, delivered, "handler keeps failing; leaving the run to the sweeper");
                return;
            }
            tracing::warn!(?message, %error, "handler failed; delivering again");
            let envelope = Envelope {
                message,
                delay: options.redelivery_delay,
            };
            if let Err(e) = queue.send(vec![envelope]).await {
                tracing::error!(%e, "could not re-queue a message");
            }
        });
    }
}

async fn sweep_forever(engine: Engine, options: LocalOptions) {
    let mut interval = tokio::time::interval(options.sweep_interval);
    interval.tick().await;
    loop {
        interval.tick().await;
        match engine.sweep(Some(options.stale_after)).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(runs = n, "re-drove stalled runs"),
            Err(e) => tracing::error!(%e, "sweep failed"),
        }
    }
}

/// The cron scheduler: sleeps until the next tick of any function's crons and fires it.
/// Ticks missed while the process was down are not made up.
async fn fire_crons_forever(engine: Engine) {
    let mut after = engine.now();
    loop {
        let next = engine
            .registry()
            .functions()
            .filter_map(|f| f.next_tick(after).map(|t| (t, f.id.clone())))
            .min();
        let Some((tick, _)) = next else {
            return;
        };
        let wait = (tick - engine.now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        // Every function due at this tick.
        let due: Vec<String> = engine
            .registry()
            .functions()
            .filter(|f| f.next_tick(after) == Some(tick))
            .map(|f| f.id.clone())
            .collect();
        for function_id in due {
            if let Err(error) = engine.fire_cron(&function_id, tick).await {
                tracing::error!(%function_id, %tick, %error, "cron tick not fired");
            }
        }
        after = tick;
    }
}
