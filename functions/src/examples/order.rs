//! `process-order`: an example that needs no outside service and shows every core primitive:
//! steps, parallel steps, a retry that succeeds, progress, a durable sleep, a non-retriable
//! failure and a failure handler.
//!
//! Deployed, `charge-card` and `send-receipt` run as Vercel functions (`Host::Vercel`: short
//! steps that call an outside HTTP API, the kind worth hosting next to the app), reached
//! through the relay Lambda on their queues; the other steps run on Lambda.
//!
//! ```text
//! curl -s localhost:8288/e/dev -d '{"name":"demo/order.placed","data":{"order_id":"o-1","items":["book"],"flaky_payment":true}}'
//! ```

use std::time::Duration;

use baton::prelude::*;
use serde::{Deserialize, Serialize};

pub const EVENT: &str = "demo/order.placed";

steps! {
    /// The steps of `process-order`.
    pub const STEPS = [
        VALIDATE = Step::new("validate").timeout(Duration::from_secs(10)).memory_mb(128),
        RESERVE_STOCK = Step::new("reserve-stock").timeout(Duration::from_secs(30)),
        CHARGE_CARD = Step::new("charge-card")
            .timeout(Duration::from_secs(30))
            .retries(4)
            .host(Host::Vercel),
        SEND_RECEIPT = Step::new("send-receipt")
            .timeout(Duration::from_secs(15))
            .memory_mb(128)
            .host(Host::Vercel),
    ];
}

steps! {
    /// The steps of its failure handler.
    pub const FAILURE_STEPS = [RECORD_FAILURE = Step::new("record-failure")];
}

#[derive(Debug, Clone, Deserialize)]
pub struct Order {
    pub order_id: String,
    #[serde(default)]
    pub items: Vec<String>,
    /// The payment gateway fails the first two attempts (a transient outage).
    #[serde(default)]
    pub flaky_payment: bool,
    /// Cool-down before the receipt, in seconds (default 2; make it longer to watch the run
    /// sleep, or to kill the dev server mid-sleep).
    #[serde(default)]
    pub cool_down_s: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub order_id: String,
    pub reservation: String,
    pub payment: String,
    pub charged_on_attempt: u32,
    pub receipt: String,
}

pub fn function() -> Function {
    Function::new("process-order")
        .name("Process an order")
        .trigger(EVENT)
        .retries(3)
        .steps(STEPS)
        .failure_steps(FAILURE_STEPS)
        .handler(process_order)
        .on_failure(record_failure)
}

async fn process_order(ctx: Ctx, event: Event<Order>) -> Result<Receipt, Error> {
    let order = &event.data;
    let count: usize = ctx
        .step(VALIDATE, async |_| {
            if order.items.is_empty() {
                return Err(StepError::non_retriable("order has no items"));
            }
            Ok(order.items.len())
        })
        .await?;
    ctx.progress(20, format!("validated {count} items"));

    let (reservation, payment) = futures::join!(
        ctx.step(RESERVE_STOCK, async |s| Ok(format!(
            "rsv-{}",
            s.idempotency_key
        ))),
        ctx.step(CHARGE_CARD, async |s| {
            if order.flaky_payment && s.attempt < 3 {
                return Err(StepError::retriable(format!(
                    "payment gateway unavailable (attempt {})",
                    s.attempt
                )));
            }
            Ok((format!("pay-{}", order.order_id), s.attempt))
        }),
    );
    let reservation: String = reservation?;
    let (payment, charged_on_attempt): (String, u32) = payment?;
    ctx.progress(60, "stock reserved and card charged");

    let cool_down = Duration::from_secs(order.cool_down_s.unwrap_or(2));
    ctx.sleep("cool-down", cool_down).await?;
    ctx.progress(80, "sending receipt");

    let receipt: String = ctx
        .step(SEND_RECEIPT, async |_| {
            Ok(format!("receipt for {}", order.order_id))
        })
        .await?;
    ctx.progress(100, "done");
    Ok(Receipt {
        order_id: order.order_id.clone(),
        reservation,
        payment,
        charged_on_attempt,
        receipt,
    })
}

async fn record_failure(ctx: Ctx, event: Event<FailureData>) -> Result<String, Error> {
    let failure = &event.data;
    ctx.step(RECORD_FAILURE, async |_| {
        Ok(format!(
            "run {} failed: {}: {}",
            failure.run_id, failure.error.name, failure.error.message
        ))
    })
    .await
}

/// `order-report`: a cron trigger. Every day at 06:00 UTC a run starts with the tick in
/// `data.scheduled_at` (the dev server's scheduler fires it; on AWS, the `cron` Lambda).
pub fn daily_report() -> Function {
    Function::new("order-report")
        .name("Daily order report")
        .cron("0 6 * * *")
        .handler(async |_ctx: Ctx, event: Event<serde_json::Value>| {
            let day = event.data["scheduled_at"].as_str().unwrap_or("?");
            Ok::<_, Error>(format!("order report for {day}"))
        })
}
