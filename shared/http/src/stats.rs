//! A function's recent runs in numbers: how many ended in each status, the success rate and
//! the p50/p95 duration over a window (`1h`, `24h`, `7d`, ...).
//!
//! Computed from the store's run listing ([`Store::list_runs`] filtered by function and
//! `started_after`, newest first, cursor paging), so it works the same on every backend and
//! needs no extra index or counter. The work is bounded: at most `max_runs` runs (default
//! [`MAX_STATS_RUNS`]) are read; past that the figures describe the newest `max_runs` runs of
//! the window and say so (`truncated`).

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use baton::error::StoreError;
use baton::model::{RunQuery, RunStatus};
use baton::store::Store;

/// The most runs one computation reads (ten pages of 1000).
pub const MAX_STATS_RUNS: usize = 10_000;
/// Runs per store page while computing.
const PAGE: usize = 1000;
/// The windows the dashboard offers.
pub const WINDOWS: [&str; 3] = ["1h", "24h", "7d"];
/// The longest window accepted (the longest a run may live).
const MAX_WINDOW_S: i64 = 400 * 86_400;

/// One function's figures over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionStats {
    pub function_id: String,
    /// The window as given (`24h`).
    pub window: String,
    /// Runs started after this time were counted.
    pub since: DateTime<Utc>,
    /// Runs read.
    pub runs: usize,
    /// More runs started in the window than were read (see [`MAX_STATS_RUNS`]).
    pub truncated: bool,
    pub max_runs: usize,
    pub queued: usize,
    pub running: usize,
    pub completed: usize,
    pub failed: usize,
    pub cancelled: usize,
    /// Stored runs that could not be read (skipped, not counted above).
    pub unreadable: usize,
    /// Completed runs among those that ended (`None` when none ended).
    pub success_rate: Option<f64>,
    /// Median and 95th percentile of run duration (start to end) of the runs that ended.
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
}

impl FunctionStats {
    pub fn ended(&self) -> usize {
        self.completed + self.failed + self.cancelled
    }

    /// `GET /v1/functions/{id}/stats`'s `data`.
    pub fn to_json(&self) -> Value {
        json!({
            "function_id": self.function_id,
            "window": self.window,
            "since": self.since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "runs": self.runs,
            "truncated": self.truncated,
            "max_runs": self.max_runs,
            "queued": self.queued,
            "running": self.running,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "unreadable": self.unreadable,
            "success_rate": self.success_rate,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
        })
    }
}

/// Parses a duration such as `90s`, `30m`, `1h`, `24h`, `7d`, `2w` or `1h30m` (units s, m, h,
/// d, w; whole numbers). `None` for anything else or zero.
pub fn parse_window(s: &str) -> Option<chrono::Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: i64 = number.parse().ok()?;
        number.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    if !number.is_empty() || total <= 0 || total > MAX_WINDOW_S {
        return None;
    }
    Some(chrono::Duration::seconds(total))
}

/// The figures of `function_id` over the runs started in `(now - window, now]`, reading at
/// most `max_runs` runs.
pub async fn function_stats(
    store: &dyn Store,
    function_id: &str,
    window_label: &str,
    window: chrono::Duration,
    now: DateTime<Utc>,
    max_runs: usize,
) -> Result<FunctionStats, StoreError> {
    let since = now - window;
    let mut query = RunQuery {
        function_id: Some(function_id.to_string()),
        started_after: Some(since),
        limit: PAGE.min(max_runs.max(1)),
        ..RunQuery::default()
    };
    let mut stats = FunctionStats {
        function_id: function_id.to_string(),
        window: window_label.to_string(),
        since,
        runs: 0,
        truncated: false,
        max_runs,
        queued: 0,
        running: 0,
        completed: 0,
        failed: 0,
        cancelled: 0,
        unreadable: 0,
        success_rate: None,
        p50_ms: None,
        p95_ms: None,
    };
    let mut durations: Vec<u64> = Vec::new();
    'pages: loop {
        let page = store.list_runs(&query).await?;
        stats.unreadable += page.unreadable.len();
        for run in &page.runs {
            if stats.runs == max_runs {
                stats.truncated = true;
                break 'pages;
            }
            stats.runs += 1;
            match run.status {
                RunStatus::Queued => stats.queued += 1,
                RunStatus::Running => stats.running += 1,
                RunStatus::Completed => stats.completed += 1,
                RunStatus::Failed => stats.failed += 1,
                RunStatus::Cancelled => stats.cancelled += 1,
            }
            if let Some(ended) = run.ended_at {
                let ms = (ended - run.started_at).num_milliseconds().max(0);
                durations.push(ms as u64);
            }
        }
        match page.cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
        if stats.runs == max_runs {
            // A next page exists: the window holds more runs than were read.
            stats.truncated = true;
            break;
        }
    }
    let ended = stats.ended();
    if ended > 0 {
        stats.success_rate = Some(stats.completed as f64 / ended as f64);
    }
    durations.sort_unstable();
    stats.p50_ms = percentile(&durations, 50);
    stats.p95_ms = percentile(&durations, 95);
    Ok(stats)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: usize) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse() {
        let secs = |s: &str| parse_window(s).map(|d| d.num_seconds());
        assert_eq!(secs("1h"), Some(3600));
        assert_eq!(secs("24h"), Some(86_400));
        assert_eq!(secs("7d"), Some(604_800));
        assert_eq!(secs("1h30m"), Some(5400));
        assert_eq!(secs(" 90s "), Some(90));
        assert_eq!(secs("2w"), Some(1_209_600));
        for bad in [
            "",
            "h",
            "1",
            "1x",
            "0h",
            "-1h",
            "1.5h",
            "9999d",
            "99999999999999999999h",
        ] {
            assert_eq!(secs(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 95), Some(95));
        assert_eq!(percentile(&[7], 95), Some(7));
        assert_eq!(percentile(&[1, 2], 50), Some(1));
        assert_eq!(percentile(&[], 50), None);
    }
}
