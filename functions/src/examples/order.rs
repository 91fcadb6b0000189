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

use baton::{Ctx, Error, Event, FailureData, Function, Host, StepConfig, StepError};
use serde::{Deserialize, Serialize};

pub const EVENT: &str = "demo/order.placed";

#[derive(Debug, Clone, Deserialize)]
pub struct Order {
    pub order_id: String,
    #[serde(default)]
    pub items: Vec<String>,
    /// The payment gateway fails the first two attempts (a transient outage).
    #[serde(default)]
    pub flaky_payment: bool,
    /// Cool-down before the receipt, in seconds (default 2).
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
        .step(
            "validate",
            StepConfig::default()
                .timeout(Duration::from_secs(10))
                .memory_mb(128),
        )
        .step(
            "reserve-stock",
            StepConfig::default().timeout(Duration::from_secs(30)),
        )
        .step(
            "charge-card",
            StepConfig::default()
                .timeout(Duration::from_secs(30))
                .retries(4)
                .host(Host::Vercel),
        )
        .step(
            "send-receipt",
            StepConfig::default()
                .timeout(Duration::from_secs(15))
                .memory_mb(128)
                .host(Host::Vercel),
        )
        .failure_step("record-failure", StepConfig::default())
        .handler(process_order)
        .on_failure(record_failure)
}

async fn process_order(ctx: Ctx, event: Event<Order>) -> Result<Receipt, Error> {
    let order = event.data;
    let items = order.items.clone();
    let count: usize = ctx
        .step("validate", |_| async move {
            if items.is_empty() {
                return Err(StepError::non_retriable("order has no items"));
            }
            Ok(items.len())
        })
        .await?;
    ctx.progress(20, format!("validated {count} items")).await?;

    let order_id = order.order_id.clone();
    let flaky = order.flaky_payment;
    let (reservation, payment) = futures::join!(
        ctx.step("reserve-stock", |s| async move {
            Ok(format!("rsv-{}", s.idempotency_key))
        }),
        ctx.step("charge-card", |s| async move {
            if flaky && s.attempt < 3 {
                return Err(StepError::retriable(format!(
                    "payment gateway unavailable (attempt {})",
                    s.attempt
                )));
            }
            Ok((format!("pay-{order_id}"), s.attempt))
        }),
    );
    let reservation: String = reservation?;
    let (payment, charged_on_attempt): (String, u32) = payment?;
    ctx.progress(60, "stock reserved and card charged").await?;

    ctx.sleep(
        "cool-down",
        Duration::from_secs(order.cool_down_s.unwrap_or(2)),
    )
    .await?;
    ctx.progress(80, "sending receipt").await?;

    let order_id = order.order_id.clone();
    let receipt: String = ctx
        .step("send-receipt", |_| async move {
            Ok(format!("receipt for {order_id}"))
        })
        .await?;
    ctx.progress(100, "done").await?;
    Ok(Receipt {
        order_id: order.order_id,
        reservation,
        payment,
        charged_on_attempt,
        receipt,
    })
}

async fn record_failure(ctx: Ctx, event: Event<FailureData>) -> Result<String, Error> {
    let failure = event.data;
    ctx.step("record-failure", |_| async move {
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
        .handler(|_ctx: Ctx, event: Event<serde_json::Value>| async move {
            let day = event.data["scheduled_at"]
                .as_str()
                .unwrap_or("?")
                .to_owned();
            Ok::<_, Error>(format!("order report for {day}"))
        })
}
