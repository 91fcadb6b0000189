//! The queue: how a run is handed on. At-least-once and unordered by contract; the engine
//! never relies on more. Backends: [`local::LocalQueue`] (in-process, delayed) here, and
//! `baton_aws::sqs::SqsQueue`.

pub mod local;

use std::time::Duration;

use async_trait::async_trait;

use crate::error::QueueError;
use crate::model::Message;

/// A message with its delivery delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub message: Message,
    pub delay: Duration,
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Sends every envelope to its message's queue ([`Message::queue`]).
    async fn send(&self, batch: Vec<Envelope>) -> Result<(), QueueError>;

    /// The longest delay the backend accepts (SQS: 15 minutes). The engine caps delays at it
    /// and re-sends early messages, so a sleep of a year is a chain of capped delays.
    fn max_delay(&self) -> Duration {
        Duration::MAX
    }

    /// How many messages the backend sends in one request (SQS: 10, `SendMessageBatch`'s
    /// limit). The engine sends the starts of a batch of events as soon as this many are
    /// ready; 1 (an in-process queue) sends each start as soon as its run is stored.
    fn send_batch_size(&self) -> usize {
        1
    }
}
