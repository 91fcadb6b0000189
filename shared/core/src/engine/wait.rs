//! Waiting for events, race-free (the gap of Inngest #1433 closed by construction).
//!
//! A wait matches an event name and one field's value (`clips/task.updated` where
//! `data.task_id == "t-42"`); the pair hashes to a *wait key*. Both sides meet under that key
//! in the store's coordination entries, each writing first and reading second:
//!
//! - an arriving event is indexed (`e:{event_id}`) under the key of every declared wait field
//!   ([`crate::Function::wait`]), then the registered waiters (`w:{run}:{step}`) are read
//!   and their wait steps finished with the event;
//! - a wait is planned, registered as a waiter, then the events indexed under its key since
//!   its run started are read, and the earliest one finishes it.
//!
//! Both reads are strongly consistent, so whichever side writes last sees the other: an event
//! that lands between the step that triggered the outside work and the wait's registration is
//! still found. Finishing a step is conditional (not final yet), so two events, or an event
//! and the timeout, never both win. The timeout is the wait step's `wake_at`: the `Wake`
//! message due then records `null`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use ulid::Ulid;

use super::Engine;
use super::config::later;
use crate::error::EngineError;
use crate::function::lookup;
use crate::model::{
    Entry, EventRecord, Expect, Message, MessageKind, RunRecord, StepOutcome, StepRecord,
};
use crate::queue::Envelope;

/// How far before its run's start an event may be and still satisfy a wait: clocks of
/// different handlers (the webhook's, the run's) may disagree by this much.
pub const WAIT_LOOKBACK: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
/// Waiters resumed per key and event, and indexed events read per registration.
const MAX_PER_KEY: usize = 1000;
/// How long a waiter entry outlives its wait's timeout.
const WAITER_SLACK: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// A wait as the replay found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WaitSpec {
    pub key: String,
    /// Events indexed before this do not count.
    pub since: DateTime<Utc>,
}

/// What a waiter entry holds: the wait step to finish.
#[derive(Debug, Serialize, Deserialize)]
struct Waiter {
    run_id: String,
    function_id: String,
    step_id: String,
}

/// The key waits on `event` whose `field` equals `value` meet under.
pub(crate) fn wait_key(event: &str, field: &str, value: &Value) -> String {
    let canonical = serde_json::to_vec(&json!([event, field, value])).unwrap_or_default();
    format!("wait:{}", hex::encode(Sha256::digest(&canonical)))
}

impl Engine {
    /// Event side: indexes `event` under the key of every wait field declared for its name,
    /// then finishes the waits already registered under those keys and wakes their runs.
    pub(crate) async fn resume_waits(&self, event: &EventRecord) -> Result<(), EngineError> {
        let fields: Vec<String> = self
            .registry()
            .wait_fields(&event.name)
            .map(str::to_owned)
            .collect();
        if fields.is_empty() {
            return Ok(());
        }
        let store = self.store();
        let json = event.to_json();
        let now = self.now();
        let max_age = self.limits().max_run_age;
        let mut wakes = Vec::new();
        for field in fields {
            let Some(value) = lookup(&json, &field).filter(|v| !v.is_null()) else {
                continue;
            };
            let key = wait_key(&event.name, &field, value);
            let index = Entry {
                key: key.clone(),
                id: format!("e:{}", event.id),
                value: Value::Null,
                version: 1,
                expires_at: later(now, max_age),
            };
            store.put_entry(&index, Expect::Any, now).await?;
            for entry in store.list_entries(&key, "w:", now, MAX_PER_KEY).await? {
                let Ok(waiter) = serde_json::from_value::<Waiter>(entry.value) else {
                    tracing::warn!(key, id = entry.id, "unreadable waiter entry skipped");
                    continue;
                };
                let outcome = StepOutcome::Completed(json.clone());
                if store
                    .finish_step(&waiter.run_id, &waiter.step_id, &outcome, now)
                    .await?
                {
                    wakes.push(wake_now(
                        &waiter.run_id,
                        &waiter.function_id,
                        &waiter.step_id,
                    ));
                }
            }
        }
        self.send(wakes).await
    }

    /// Wait side, once the wait step is planned: registers it, then finishes it with the
    /// earliest event already indexed under its key since `spec.since`. True when this call
    /// recorded an event (the run is then woken at once).
    pub(crate) async fn register_wait(
        &self,
        run: &RunRecord,
        step: &StepRecord,
        spec: &WaitSpec,
    ) -> Result<bool, EngineError> {
        let store = self.store();
        let now = self.now();
        let timeout = step.wake_at.unwrap_or(now);
        let waiter = Entry {
            key: spec.key.clone(),
            id: format!("w:{}:{}", run.run_id, step.step_id),
            value: json!(Waiter {
                run_id: run.run_id.clone(),
                function_id: run.function_id.clone(),
                step_id: step.step_id.clone(),
            }),
            version: 1,
            expires_at: timeout
                .checked_add_signed(WAITER_SLACK)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        };
        store.put_entry(&waiter, Expect::Any, now).await?;
        let since = Ulid::from_parts(spec.since.timestamp_millis().max(0) as u64, 0).to_string();
        for entry in store
            .list_entries(&spec.key, "e:", now, MAX_PER_KEY)
            .await?
        {
            let event_id = entry.id.trim_start_matches("e:");
            if event_id < since.as_str() {
                continue;
            }
            let Some(event) = store.get_event(event_id).await? else {
                continue;
            };
            let outcome = StepOutcome::Completed(event.to_json());
            return Ok(store
                .finish_step(&run.run_id, &step.step_id, &outcome, now)
                .await?);
        }
        Ok(false)
    }
}

/// The message that resumes a run whose wait just finished.
pub(crate) fn wake_now(run_id: &str, function_id: &str, step_id: &str) -> Envelope {
    Envelope {
        message: Message {
            run_id: run_id.to_owned(),
            function_id: function_id.to_owned(),
            kind: MessageKind::Wake {
                step_id: step_id.to_owned(),
            },
            not_before: None,
        },
        delay: std::time::Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_keys_differ_by_event_field_and_value_type() {
        let a = wait_key("clips/task.updated", "data.task_id", &json!("42"));
        assert_eq!(
            a,
            wait_key("clips/task.updated", "data.task_id", &json!("42"))
        );
        assert_ne!(
            a,
            wait_key("clips/task.updated", "data.task_id", &json!(42))
        );
        assert_ne!(a, wait_key("clips/task.updated", "data.id", &json!("42")));
        assert_ne!(
            a,
            wait_key("clips/task.created", "data.task_id", &json!("42"))
        );
        assert!(a.starts_with("wait:") && a.len() == 5 + 64);
    }
}
