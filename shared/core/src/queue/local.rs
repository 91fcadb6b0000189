//! The in-process delayed queue of local mode. Messages live in memory only: after a crash
//! the journal is the truth, and [`crate::Engine::sweep`] re-sends what was lost.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Envelope, Queue};
use crate::error::QueueError;
use crate::model::Message;

/// The sending half: cheap to clone, handed to the engine.
#[derive(Clone)]
pub struct LocalQueue {
    tx: mpsc::UnboundedSender<(Instant, Message)>,
    sent: Arc<AtomicU64>,
}

/// The receiving half: yields each message when it is due.
pub struct LocalReceiver {
    rx: mpsc::UnboundedReceiver<(Instant, Message)>,
    heap: BinaryHeap<Reverse<(Instant, u64, MessageOrd)>>,
    seq: u64,
}

/// Messages have no natural order; the heap orders by (due, seq) and never compares these.
struct MessageOrd(Message);

impl PartialEq for MessageOrd {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for MessageOrd {}
impl PartialOrd for MessageOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for MessageOrd {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl LocalQueue {
    pub fn new() -> (LocalQueue, LocalReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = LocalQueue {
            tx,
            sent: Arc::new(AtomicU64::new(0)),
        };
        (
            queue,
            LocalReceiver {
                rx,
                heap: BinaryHeap::new(),
                seq: 0,
            },
        )
    }

    /// Messages sent so far (for benchmarks).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Queue for LocalQueue {
    async fn send(&self, batch: Vec<Envelope>) -> Result<(), QueueError> {
        let now = Instant::now();
        for Envelope { message, delay } in batch {
            let due = now
                .checked_add(delay)
                .unwrap_or(now + std::time::Duration::from_secs(3 * 366 * 86400));
            self.tx
                .send((due, message))
                .map_err(|_| QueueError::Backend("local queue is closed".into()))?;
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl LocalReceiver {
    /// The next due message; None once every sender is gone and nothing is left.
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            if let Some(Reverse((due, _, _))) = self.heap.peek() {
                if *due <= Instant::now() {
                    let Reverse((_, _, MessageOrd(message))) = self.heap.pop().expect("peeked");
                    return Some(message);
                }
            }
            let next_due = self.heap.peek().map(|Reverse((due, _, _))| *due);
            tokio::select! {
                received = self.rx.recv() => match received {
                    Some((due, message)) => {
                        self.seq += 1;
                        self.heap.push(Reverse((due, self.seq, MessageOrd(message))));
                    }
                    None if self.heap.is_empty() => return None,
                    None => tokio::time::sleep_until(next_due.expect("non-empty")).await,
                },
                _ = sleep_until_opt(next_due) => {}
            }
        }
    }
}

async fn sleep_until_opt(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
