//! Flow control ([`crate::function::FlowControl`]), kept in the store's coordination entries
//! so limits hold across every handler of every process (DynamoDB conditional writes).
//!
//! - **Concurrency**: `limit` slot entries per key (`slot:0000`…), each naming the run holding
//!   it. A run takes a slot when it starts (its first message) and frees it when it ends.
//!   A run that finds them all taken queues itself (`q:{start time}:{run_id}`), looks once
//!   more (a release in between would otherwise wake nobody), and waits: the run that frees a
//!   slot wakes the longest-queued runs (the first to come takes it), and a re-check every
//!   [`SLOT_RECHECK`] covers a wake-up lost in a crash. A slot held by a run that has ended
//!   (its handler died between ending the run and freeing the slot) is taken over, so a crash
//!   cannot leak a slot.
//! - **Throttle / rate limit**: one entry per key holds the start times of the last `limit`
//!   runs, updated by versioned writes. A new run may start at the later of now and the
//!   `limit`-th last start + `period`, so any window of `period` holds at most `limit` starts.
//!   A throttle delays the start to then; a rate limit skips the event when that is later
//!   than now.
//! - **Debounce**: one entry per key names the last event; each event sends a `Debounce`
//!   message due `period` later, and only the message of the event still named then creates
//!   the run.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::config::later;
use super::{Engine, run_id_for};
use crate::error::EngineError;
use crate::function::{Function, Rate, lookup};
use crate::model::{Entry, EventRecord, Expect, Message, MessageKind, RunRecord};
use crate::queue::Envelope;

/// How often a run waiting for a concurrency slot looks again on its own.
pub const SLOT_RECHECK: Duration = Duration::from_secs(30);
/// Queued runs woken when a slot frees: the oldest few, so a stale queue entry (its run
/// ended meanwhile) does not cost the slot a round of re-checks; the first to come takes it.
const WAKE_PER_RELEASE: usize = 3;
/// Versioned writes retried this often before the handler gives up (and is redelivered).
const MAX_CONFLICTS: usize = 20;

/// How a new event's run starts, per flow control.
pub(crate) enum Admission {
    /// Now, or after a throttle's delay.
    Start(Duration),
    /// Over the rate limit: no run.
    Skip,
}

/// The entry key of one flow-control kind for one function and key value.
fn flow_key(kind: &str, function: &Function, path: Option<&str>, event: &EventRecord) -> String {
    let value = path
        .and_then(|p| lookup(&event.to_json(), p).cloned())
        .unwrap_or(Value::Null);
    let canonical = serde_json::to_vec(&value).unwrap_or_default();
    let digest = hex::encode(Sha256::digest(&canonical));
    format!("{kind}:{}:{}", function.id, &digest[..32])
}

/// A slot's version names its holder: a takeover expecting the version of the ended run it
/// replaces can never overwrite a slot another run took meanwhile (no ABA with a counter that
/// restarts at 1 for every fresh slot).
fn holder_version(run_id: &str) -> u64 {
    let digest = Sha256::digest(run_id.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) >> 1
}

/// A run's place in a concurrency queue: by start time, then id.
fn queue_id(run: &RunRecord) -> String {
    format!(
        "q:{:020}:{}",
        run.started_at.timestamp_micros().max(0),
        run.run_id
    )
}

fn holder(entry: &Entry) -> &str {
    entry
        .value
        .get("run_id")
        .and_then(Value::as_str)
        .unwrap_or("")
}

impl Engine {
    fn long_expiry(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        later(
            later(now, self.limits().max_run_age),
            Duration::from_secs(86_400),
        )
    }

    // ---- concurrency ----

    /// Takes a concurrency slot for `run` (true), or queues it (false: the run that frees a
    /// slot starts it again).
    pub(crate) async fn acquire_slot(
        &self,
        function: &Function,
        run: &RunRecord,
    ) -> Result<bool, EngineError> {
        let Some(c) = &function.flow.concurrency else {
            return Ok(true);
        };
        let key = flow_key("conc", function, c.key.as_deref(), &run.event);
        if self.try_slot(&key, c.limit, run).await? {
            return Ok(true);
        }
        let now = self.now();
        let queued = Entry {
            key: key.clone(),
            id: queue_id(run),
            value: json!({"run_id": run.run_id}),
            version: 1,
            expires_at: self.long_expiry(now),
        };
        self.store().put_entry(&queued, Expect::Any, now).await?;
        if self.try_slot(&key, c.limit, run).await? {
            return Ok(true);
        }
        Ok(false)
    }

    async fn try_slot(&self, key: &str, limit: u32, run: &RunRecord) -> Result<bool, EngineError> {
        let store = self.store();
        let now = self.now();
        let slots = store
            .list_entries(key, "slot:", now, limit as usize + 1)
            .await?;
        let mine = || async {
            store
                .delete_entry(key, &queue_id(run), Expect::Any, now)
                .await
                .map(|_| true)
        };
        if slots.iter().any(|s| holder(s) == run.run_id) {
            return Ok(mine().await?);
        }
        let slot = |id: String| Entry {
            key: key.to_owned(),
            id,
            value: json!({"run_id": run.run_id}),
            version: holder_version(&run.run_id),
            expires_at: self.long_expiry(now),
        };
        let taken: HashSet<&str> = slots.iter().map(|s| s.id.as_str()).collect();
        for i in 0..limit {
            let id = format!("slot:{i:04}");
            if !taken.contains(id.as_str())
                && store.put_entry(&slot(id), Expect::Absent, now).await?
            {
                return Ok(mine().await?);
            }
        }
        // A slot whose run has ended was not freed (its handler died): take it over.
        for s in &slots {
            let ended = store
                .get_run(holder(s))
                .await?
                .is_none_or(|r| r.status.is_terminal());
            if ended
                && store
                    .put_entry(&slot(s.id.clone()), Expect::Version(s.version), now)
                    .await?
            {
                return Ok(mine().await?);
            }
        }
        Ok(false)
    }

    /// Frees `run`'s slot (and its place in the queue) and starts the longest-queued run.
    pub(crate) async fn release_slot(
        &self,
        function: &Function,
        run: &RunRecord,
    ) -> Result<(), EngineError> {
        let Some(c) = &function.flow.concurrency else {
            return Ok(());
        };
        let store = self.store();
        let key = flow_key("conc", function, c.key.as_deref(), &run.event);
        let now = self.now();
        store
            .delete_entry(&key, &queue_id(run), Expect::Any, now)
            .await?;
        for s in store
            .list_entries(&key, "slot:", now, c.limit as usize + 1)
            .await?
        {
            if holder(&s) == run.run_id {
                store
                    .delete_entry(&key, &s.id, Expect::Version(s.version), now)
                    .await?;
            }
        }
        let next = store
            .list_entries(&key, "q:", now, WAKE_PER_RELEASE)
            .await?;
        let starts = next
            .iter()
            .map(|q| Envelope {
                // A re-drive, not a start: it sends no re-check of its own.
                message: Message {
                    run_id: holder(q).to_owned(),
                    function_id: function.id.clone(),
                    kind: MessageKind::Redrive,
                    not_before: None,
                },
                delay: Duration::ZERO,
            })
            .collect();
        self.send(starts).await
    }

    // ---- throttle and rate limit ----

    /// What flow control says about a new run of `function` for `event`.
    pub(crate) async fn admit(
        &self,
        function: &Function,
        event: &EventRecord,
    ) -> Result<Admission, EngineError> {
        if let Some(rate) = &function.flow.rate_limit {
            if self
                .reserve("rate", function, rate, event, false)
                .await?
                .is_none()
            {
                return Ok(Admission::Skip);
            }
        }
        if let Some(rate) = &function.flow.throttle {
            let at = self
                .reserve("throttle", function, rate, event, true)
                .await?
                .unwrap_or_else(|| self.now());
            let delay = (at - self.now()).to_std().unwrap_or_default();
            return Ok(Admission::Start(delay));
        }
        Ok(Admission::Start(Duration::ZERO))
    }

    /// Records a start in the key's window of the last `limit` starts: at the earliest time
    /// that keeps `limit` per `period`, or only now (`wait` false; None when now is too soon).
    async fn reserve(
        &self,
        kind: &str,
        function: &Function,
        rate: &Rate,
        event: &EventRecord,
        wait: bool,
    ) -> Result<Option<DateTime<Utc>>, EngineError> {
        let store = self.store();
        let key = flow_key(kind, function, rate.key.as_deref(), event);
        let limit = rate.limit as usize;
        for _ in 0..MAX_CONFLICTS {
            let now = self.now();
            let current = store.list_entries(&key, "window", now, 1).await?.pop();
            let mut starts: Vec<i64> = current
                .as_ref()
                .and_then(|e| serde_json::from_value(e.value.clone()).ok())
                .unwrap_or_default();
            let earliest = match starts.len().checked_sub(limit) {
                Some(i) => {
                    let oldest = DateTime::from_timestamp_millis(starts[i]).unwrap_or(now);
                    later(oldest, rate.period).max(now)
                }
                None => now,
            };
            if earliest > now && !wait {
                return Ok(None);
            }
            starts.push(earliest.timestamp_millis());
            let keep = starts.len().saturating_sub(limit);
            starts.drain(..keep);
            let entry = Entry {
                key: key.clone(),
                id: "window".into(),
                value: json!(starts),
                version: current.as_ref().map_or(1, |e| e.version + 1),
                expires_at: later(later(earliest, rate.period), Duration::from_secs(86_400)),
            };
            let expect = current
                .as_ref()
                .map_or(Expect::Absent, |e| Expect::Version(e.version));
            if store.put_entry(&entry, expect, now).await? {
                return Ok(Some(earliest));
            }
        }
        Err(EngineError::Conflict(format!(
            "{kind} of {}: too many concurrent updates",
            function.id
        )))
    }

    // ---- debounce ----

    /// Names `event` as the last of its key and sends its `Debounce` message, due `period`
    /// from now.
    pub(crate) async fn debounce(
        &self,
        function: &Function,
        event: &EventRecord,
    ) -> Result<Envelope, EngineError> {
        let debounce = function.flow.debounce.as_ref().expect("debounced function");
        let key = flow_key("debounce", function, debounce.key.as_deref(), event);
        let now = self.now();
        let due = later(now, debounce.period);
        let last = Entry {
            key,
            id: "last".into(),
            value: json!({"event_id": event.id}),
            version: now.timestamp_micros().max(0) as u64,
            expires_at: later(due, Duration::from_secs(86_400)),
        };
        self.store().put_entry(&last, Expect::Any, now).await?;
        Ok(Envelope {
            message: Message {
                run_id: run_id_for(&event.id, &function.id),
                function_id: function.id.clone(),
                kind: MessageKind::Debounce {
                    event_id: event.id.clone(),
                },
                not_before: Some(due),
            },
            delay: debounce.period,
        })
    }

    /// A `Debounce` message is due: when its event is still the last of its key, create and
    /// start the run, then clear the key. Otherwise a later event's message will.
    pub(crate) async fn debounce_due(
        &self,
        function: &Function,
        event_id: &str,
    ) -> Result<(), EngineError> {
        let Some(debounce) = &function.flow.debounce else {
            return Ok(());
        };
        let store = self.store();
        let Some(event) = store.get_event(event_id).await? else {
            return Ok(());
        };
        let key = flow_key("debounce", function, debounce.key.as_deref(), &event);
        let now = self.now();
        let Some(last) = store.list_entries(&key, "last", now, 1).await?.pop() else {
            return Ok(());
        };
        if last.value.get("event_id").and_then(Value::as_str) != Some(event_id) {
            return Ok(());
        }
        let starts = self.start_run(function, &event).await?;
        self.send(starts).await?;
        store
            .delete_entry(&key, "last", Expect::Version(last.version), now)
            .await?;
        Ok(())
    }
}
