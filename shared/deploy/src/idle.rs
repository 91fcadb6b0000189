//! What the generated stack costs in a month with no traffic at all, from AWS's pricing rules
//! (us-east-1 list prices; `baton generate --idle-cost` prints it for an app).
//!
//! With nothing happening, three things are still billed:
//! - **Queue pollers.** Every SQS event source mapping is polled by Lambda, which long-polls
//!   the queue whether or not anything is in it; each empty `ReceiveMessage` is a billed SQS
//!   request. At rest Lambda keeps [`IDLE_POLLERS`] pollers per mapping, each waiting
//!   [`LONG_POLL_S`] seconds per request: 15 requests a minute per mapping (the figure users
//!   of SQS triggers report; the queue's `NumberOfEmptyReceives` in CloudWatch shows the
//!   real one for a deployed stack).
//! - **Schedules.** The sweeper every 5 minutes and, when a function has crons, the cron
//!   Lambda every minute: Lambda requests and a few milliseconds of compute each, plus the
//!   sweeper's index queries (one per function and live status, Queued and Running).
//! - Free tiers (1 million SQS requests, 1 million Lambda requests and 400,000 GB-s a month,
//!   per account) are left out of the total: they are shared with everything else in the
//!   account. The table's on-demand capacity and the HTTP API cost nothing at rest; storage is
//!   what the app stores.

use std::fmt;

use baton::Registry;

/// Pollers Lambda keeps on an SQS event source mapping with nothing to read.
pub const IDLE_POLLERS: f64 = 5.0;
/// Seconds each poller's `ReceiveMessage` waits (long polling) before it returns empty.
pub const LONG_POLL_S: f64 = 20.0;
/// SQS standard queue requests, dollars per million (first 100 billion a month).
pub const SQS_PER_MILLION: f64 = 0.40;
/// Lambda requests, dollars per million.
pub const LAMBDA_REQUESTS_PER_MILLION: f64 = 0.20;
/// Lambda compute on arm64, dollars per GB-second.
pub const LAMBDA_ARM_GB_S: f64 = 0.000_013_333_4;
/// DynamoDB on-demand read request units, dollars per million.
pub const DYNAMODB_READS_PER_MILLION: f64 = 0.125;
/// A scheduled invocation's billed time at rest (the handler's own time against DynamoDB is a
/// few milliseconds; Lambda bills by the millisecond): a generous round figure.
pub const SCHEDULED_MS: f64 = 50.0;
/// Memory of the scheduled Lambdas (the template's), GB.
pub const SCHEDULED_GB: f64 = 0.256;

const MINUTES_PER_MONTH: f64 = 60.0 * 24.0 * 30.0;

/// The idle month of a generated stack.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleCost {
    /// SQS event source mappings: one per queue (step, continue) and one for the stack's
    /// dead-letter queue.
    pub mappings: usize,
    /// Empty receives a month, all mappings together.
    pub receives: f64,
    /// Scheduled invocations a month (sweeper, cron).
    pub invocations: f64,
    pub sqs_usd: f64,
    pub lambda_usd: f64,
    pub dynamodb_usd: f64,
}

impl IdleCost {
    pub fn total_usd(&self) -> f64 {
        self.sqs_usd + self.lambda_usd + self.dynamodb_usd
    }
}

/// The idle cost of the stack `baton generate` writes for `registry`.
pub fn idle_cost(registry: &Registry) -> IdleCost {
    let queues = super::all_queues(registry).len();
    // Each queue has its consumer's mapping; the dead letters Lambda has one for the stack's
    // one dead-letter queue.
    let mappings = queues + 1;
    let receives_per_minute = IDLE_POLLERS * 60.0 / LONG_POLL_S;
    let receives = mappings as f64 * receives_per_minute * MINUTES_PER_MONTH;
    let sweeps = MINUTES_PER_MONTH / 5.0;
    let crons = if registry.functions().any(|f| !f.crons.is_empty()) {
        MINUTES_PER_MONTH
    } else {
        0.0
    };
    let invocations = sweeps + crons;
    let compute_gb_s = invocations * SCHEDULED_MS / 1000.0 * SCHEDULED_GB;
    // Per sweep, an index query per function and live status that finds nothing: half a
    // read unit each (eventually consistent).
    let reads = sweeps * registry.functions().count() as f64 * 2.0 * 0.5;
    IdleCost {
        mappings,
        receives,
        invocations,
        sqs_usd: receives / 1e6 * SQS_PER_MILLION,
        lambda_usd: invocations / 1e6 * LAMBDA_REQUESTS_PER_MILLION
            + compute_gb_s * LAMBDA_ARM_GB_S,
        dynamodb_usd: reads / 1e6 * DYNAMODB_READS_PER_MILLION,
    }
}

impl fmt::Display for IdleCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "idle month of the generated stack (no traffic; us-east-1 list prices, before free tiers):"
        )?;
        writeln!(
            f,
            "  SQS       {:>8.2} $  {} event source mappings x {IDLE_POLLERS} pollers x {:.0} empty receives/min = {:.1} M requests",
            self.sqs_usd,
            self.mappings,
            60.0 / LONG_POLL_S,
            self.receives / 1e6
        )?;
        writeln!(
            f,
            "  Lambda    {:>8.2} $  {:.0} scheduled invocations (sweeper every 5 min, cron every minute when used)",
            self.lambda_usd, self.invocations
        )?;
        writeln!(
            f,
            "  DynamoDB  {:>8.2} $  the sweeper's empty index queries",
            self.dynamodb_usd
        )?;
        writeln!(f, "  total     {:>8.2} $ a month", self.total_usd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton::{Ctx, Error, Event, Function};

    fn noop(id: &str) -> Function {
        Function::new(id)
            .handler(|_ctx: Ctx, _ev: Event<serde_json::Value>| async move { Ok::<_, Error>(()) })
    }

    #[test]
    fn polling_dominates_and_scales_with_queues() {
        let one = Registry::new()
            .register(noop("a").trigger("app/a"))
            .unwrap();
        let cost = idle_cost(&one);
        // One function, no steps: its continue queue and the stack's dead letters.
        assert_eq!(cost.mappings, 2);
        let two = Registry::new()
            .register(noop("a").trigger("app/a"))
            .unwrap()
            .register(noop("b").trigger("app/b"))
            .unwrap();
        assert_eq!(
            idle_cost(&two).mappings,
            3,
            "one dead-letter queue for both"
        );
        // 2 mappings x 5 pollers x 3 receives a minute x 43,200 minutes.
        assert_eq!(cost.receives, 1_296_000.0);
        assert!((cost.sqs_usd - 0.5184).abs() < 1e-9, "{cost:?}");
        assert_eq!(cost.invocations, 8_640.0, "the sweeper only: no crons");

        let with_cron = Registry::new()
            .register(noop("a").trigger("app/a").cron("0 6 * * *"))
            .unwrap();
        assert_eq!(idle_cost(&with_cron).invocations, 8_640.0 + 43_200.0);
        assert!(cost.total_usd() > cost.sqs_usd);
    }
}
