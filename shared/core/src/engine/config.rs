use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// Every limit the engine enforces. Documented in the README; each one is tested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// One event's JSON (default 256 KiB).
    pub max_event_bytes: usize,
    /// One `POST /e/{key}` body (default 3 MiB).
    pub max_request_bytes: usize,
    /// Events in one request (default 5000).
    pub max_events_per_request: usize,
    /// Event name length in chars (default 256).
    pub max_event_name_len: usize,
    /// A step's (or a run's) serialized output (default 256 KiB). Larger outputs fail the step
    /// with `OutputTooLarge`, non-retriable: store big data elsewhere and return a reference.
    pub max_output_bytes: usize,
    /// Steps (sleeps and sends included) in one run (default 1000, as in Inngest).
    pub max_steps_per_run: u32,
    /// Longest sleep (default 366 days).
    pub max_sleep: Duration,
    /// How long a run may live from its start (default 400 days): a sleep past it is refused,
    /// a run found older fails with `RunTooOld`. The DynamoDB store lets a run's journal
    /// expire this long (plus retention) after it is written.
    pub max_run_age: Duration,
    /// How long an event's `id` deduplicates sends (default 24 h).
    pub idempotency_window: Duration,
    /// How deeply an event's `data` and `user`, and a step's or run's output, may nest
    /// (default 64 levels of arrays and objects). The engine wraps a run's event in the data
    /// of its own events (`baton/function.failed`), so a bound well under the JSON parser's
    /// own (128) keeps everything it stores readable.
    pub max_json_depth: usize,
    /// An event's `id` (its idempotency key), in bytes (default 256).
    pub max_event_id_len: usize,
    /// The longest `Retry-After` an outside service can ask of a step (default 1 h): a longer
    /// one is cut to this.
    pub max_retry_after: Duration,
    /// Runs one bulk cancellation or bulk replay request acts on (default 1000); more matching
    /// runs are left for the next request (its `cursor`).
    pub max_bulk_runs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 256 * 1024,
            max_request_bytes: 3 * 1024 * 1024,
            max_events_per_request: 5000,
            max_event_name_len: 256,
            max_output_bytes: 256 * 1024,
            max_steps_per_run: 1000,
            max_sleep: Duration::from_secs(366 * 24 * 3600),
            max_run_age: Duration::from_secs(400 * 24 * 3600),
            idempotency_window: Duration::from_secs(24 * 3600),
            max_json_depth: 64,
            max_event_id_len: 256,
            max_retry_after: Duration::from_secs(3600),
            max_bulk_runs: 1000,
        }
    }
}

/// `t + d`, saturating at the latest time chrono represents: durations come from code and
/// from outside services (a sleep, a timeout, a `Retry-After`), and a huge one must reach the
/// limit checks as a far-off time, never overflow.
pub fn later(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Retry backoff: exponential from `base`, capped, with full jitter in `[delay/2, delay]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// Delay before attempt `failed_attempt + 1`.
    pub fn delay(&self, failed_attempt: u32, jitter: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << failed_attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.max);
        capped.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub limits: Limits,
    pub backoff: Backoff,
    /// Final journal entries kept in memory across invocations (default 20,000, a few MB;
    /// 0 turns the cache off): see the engine's journal cache.
    pub journal_cache_entries: usize,
    /// Seeds the random part of new event and run ids (ULIDs), so a test that replays one
    /// history gets the same ids (and so the same order wherever ids sort). None (the
    /// default): from entropy.
    pub id_seed: Option<u64>,
    /// The wall-clock time the engine's clock starts at (with `id_seed`, a test replays one
    /// history to the id). None (the default): now.
    pub clock_start: Option<DateTime<Utc>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            limits: Limits::default(),
            backoff: Backoff::default(),
            journal_cache_entries: 20_000,
            id_seed: None,
            clock_start: None,
        }
    }
}

/// Wall-clock time that follows tokio's clock, so tests with paused time see sleeps and
/// backoffs end exactly when tokio's timers fire.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_utc: DateTime<Utc>,
    base_instant: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock::starting_at(Utc::now())
    }
    /// A clock that reads `start` now and follows tokio's clock from there.
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        Clock {
            base_utc: start,
            base_instant: Instant::now(),
        }
    }
    pub fn now(&self) -> DateTime<Utc> {
        later(
            self.base_utc,
            Instant::now().saturating_duration_since(self.base_instant),
        )
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
