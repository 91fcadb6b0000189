//! The SQS queue: how a run is handed on between Lambda handlers on AWS.
//!
//! One standard SQS queue per declared step (consumed by that step's own handler) and one
//! *continue* queue per function (start, wake-ups, re-drives). A message body is the JSON of a
//! [`Message`]; delays use `DelaySeconds`, which SQS caps at 15 minutes, so
//! [`Queue::max_delay`] says so and the engine chains longer waits (see [`Message::not_before`]).
//!
//! Queue names and URLs are computed, never looked up: [`queue_name`] is a pure function of
//! the deployment prefix and the [`QueueName`], shared with the template generator, and a URL
//! is `{url_prefix}{name}` (see [`QueueNaming`]). Sending costs one `SendMessageBatch` per ten
//! messages of one queue and nothing else.
//!
//! The client is built by the caller (region, credentials, HTTP client, endpoint): this module
//! pulls in no HTTP or TLS stack of its own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchOutput;
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use futures::StreamExt;
use futures::future::join_all;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use baton::error::QueueError;
use baton::model::{Message, QueueName};
use baton::queue::{Envelope, Queue};

/// The longest delay SQS accepts (`DelaySeconds` ≤ 900).
pub const MAX_DELAY: Duration = Duration::from_secs(900);
/// Entries per `SendMessageBatch` (an SQS limit).
pub const MAX_BATCH_ENTRIES: usize = 10;
/// Total body bytes per `SendMessageBatch`. SQS allows 1 MiB since 2025 (256 KiB before);
/// Baton messages are a few hundred bytes, so the older, smaller limit is only a guard.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// SQS queue names: 1-80 characters of `[A-Za-z0-9_-]`.
pub const MAX_SQS_NAME_LEN: usize = 80;
/// The stack's one dead-letter queue is `{prefix}{DEAD_LETTER_QUEUE}` ([`dlq_name`]): every
/// queue's redrive policy points at it.
pub const DEAD_LETTER_QUEUE: &str = "dead-letters";
/// No step may be named with this suffix (once each queue had its own `{name}-dlq`).
pub const DLQ_SUFFIX: &str = "-dlq";
/// The longest name [`queue_name`] returns: 4 short of SQS's limit, room once kept for a
/// per-queue `-dlq` and still kept, so that no deployed queue's name changes.
pub const MAX_QUEUE_NAME_LEN: usize = MAX_SQS_NAME_LEN - DLQ_SUFFIX.len();
/// Receives before SQS moves a message to the DLQ, as [`SqsQueue::create_queues`] sets it.
pub const MAX_RECEIVE_COUNT: u32 = 5;
/// The tail of a function's continue queue name.
pub const CONTINUE_SUFFIX: &str = "continue";

/// Hex digits of the hash that shortened (or disambiguated) names end with.
const HASH_LEN: usize = 8;
/// `SendMessageBatch` calls one [`Queue::send`] keeps in flight at once.
const CONCURRENT_BATCHES: usize = 8;

/// How queue names and URLs are made for one deployment.
///
/// - `prefix`: put in front of every queue name, e.g. `"myapp-prod-"` (give each deployment
///   sharing an account and region its own; keep it short and to `[A-Za-z0-9_-]`).
/// - `url_prefix`: a queue's URL is `{url_prefix}{name}`. On AWS that is
///   `https://sqs.{region}.amazonaws.com/{account id}/` ([`QueueNaming::aws`]); on a local
///   moto server `http://127.0.0.1:5005/123456789012/`. A missing trailing `/` is added.
///
/// Names follow [`queue_name`]: `{prefix}{function_id}--{step}` for a step's queue and
/// `{prefix}{function_id}--continue` for a function's continue queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueNaming {
    pub prefix: String,
    pub url_prefix: String,
}

impl QueueNaming {
    pub fn new(prefix: impl Into<String>, url_prefix: impl Into<String>) -> Self {
        let mut url_prefix = url_prefix.into();
        if !url_prefix.ends_with('/') {
            url_prefix.push('/');
        }
        QueueNaming {
            prefix: prefix.into(),
            url_prefix,
        }
    }

    /// Naming on AWS (the `aws` partition: `https://sqs.{region}.amazonaws.com/{account}/`).
    pub fn aws(prefix: impl Into<String>, region: &str, account_id: &str) -> Self {
        QueueNaming::new(
            prefix,
            format!("https://sqs.{region}.amazonaws.com/{account_id}/"),
        )
    }

    /// The queue's name ([`queue_name`] with this prefix).
    pub fn name(&self, q: &QueueName) -> String {
        queue_name(&self.prefix, q)
    }

    /// The name of the deployment's dead-letter queue.
    pub fn dlq_name(&self) -> String {
        dlq_name(&self.prefix)
    }

    /// The queue's URL.
    pub fn url(&self, q: &QueueName) -> String {
        self.url_of(&self.name(q))
    }

    /// The URL of the deployment's dead-letter queue.
    pub fn dlq_url(&self) -> String {
        self.url_of(&self.dlq_name())
    }

    /// The URL of a queue by name.
    pub fn url_of(&self, name: &str) -> String {
        if self.url_prefix.ends_with('/') {
            format!("{}{name}", self.url_prefix)
        } else {
            format!("{}/{name}", self.url_prefix)
        }
    }
}

/// The SQS queue name of a Baton queue. Pure and deterministic: the template generator and
/// the handlers must agree on it.
///
/// The plain form is `{prefix}{function_id}--{step}` for a step's queue and
/// `{prefix}{function_id}--continue` for the continue queue. It is used when it is at most
/// [`MAX_QUEUE_NAME_LEN`] (76) characters (80, SQS's limit, less 4: see there), all of
/// `[A-Za-z0-9_-]`, and cannot be mistaken for another queue's
/// name: the function id has no `--` and does not end with `-`, and the step is not named
/// `continue` and does not end with `-dlq`.
///
/// Otherwise the name is shortened (and disambiguated): `{readable}-{hash}`, where `hash` is 8
/// hex digits of the SHA-256 of (prefix, queue) and `readable` is the plain name, characters
/// outside the alphabet replaced by `_`, cut to fit 76 characters: the function id and the
/// step are truncated (each keeps at least half of the room left after the prefix and `--`,
/// or all of itself if shorter), so both stay recognisable. Thus distinct queues get distinct
/// names (up to a 32-bit hash collision between two shortened names), and none is the
/// dead-letter queue's ([`dlq_name`]: no `--`, no hash).
pub fn queue_name(prefix: &str, q: &QueueName) -> String {
    let (function_id, tail, is_step) = match q {
        QueueName::Step { function_id, step } => (function_id.as_str(), step.as_str(), true),
        QueueName::Continue { function_id } => (function_id.as_str(), CONTINUE_SUFFIX, false),
    };
    let plain = format!("{prefix}{function_id}--{tail}");
    let unambiguous = !function_id.contains("--")
        && !function_id.ends_with('-')
        && !(is_step && (tail == CONTINUE_SUFFIX || tail.ends_with(DLQ_SUFFIX)));
    if unambiguous && plain.len() <= MAX_QUEUE_NAME_LEN && plain.bytes().all(valid_name_byte) {
        return plain;
    }

    let digest = Sha256::digest(serde_json::to_vec(&(prefix, q)).expect("plain data"));
    let hash: String = digest
        .iter()
        .take(HASH_LEN / 2)
        .map(|b| format!("{b:02x}"))
        .collect();
    let room = MAX_QUEUE_NAME_LEN - 1 - HASH_LEN;
    let (prefix, function_id, tail) = (sanitize(prefix), sanitize(function_id), sanitize(tail));
    let readable = if prefix.len() + 2 + 2 > room {
        // A prefix this long leaves no room for the ids: cut the whole thing.
        let mut all = format!("{prefix}{function_id}--{tail}");
        all.truncate(room);
        all
    } else {
        let avail = room - prefix.len() - 2;
        let (f, t) = split_room(function_id.len(), tail.len(), avail);
        format!("{prefix}{}--{}", &function_id[..f], &tail[..t])
    };
    format!("{readable}-{hash}")
}

/// The name of the dead-letter queue every queue of a deployment shares:
/// `{prefix}dead-letters`. One queue, so one event source mapping polls it when idle, not one
/// per queue.
pub fn dlq_name(prefix: &str) -> String {
    format!("{prefix}{DEAD_LETTER_QUEUE}")
}

/// Whether SQS accepts `name` as a (standard) queue name.
pub fn is_valid_sqs_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_SQS_NAME_LEN && name.bytes().all(valid_name_byte)
}

fn valid_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// ASCII only, so byte offsets are char boundaries.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii() && valid_name_byte(c as u8) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// How many characters of two parts of lengths `a` and `b` to keep within `avail`: all of
/// both if they fit, else each at least half (or all of itself when shorter).
fn split_room(a: usize, b: usize, avail: usize) -> (usize, usize) {
    if a + b <= avail {
        return (a, b);
    }
    let half = avail / 2;
    if a <= half {
        (a, avail - a)
    } else if b <= avail - half {
        (avail - b, b)
    } else {
        (half, avail - half)
    }
}

/// `DelaySeconds` for a delay: whole seconds rounded up (a message must never be due early;
/// the engine re-sends messages that arrive before [`Message::not_before`] anyway), capped at
/// 900 (SQS's maximum).
pub fn delay_seconds(delay: Duration) -> i32 {
    let secs = delay
        .as_secs()
        .saturating_add(u64::from(delay.subsec_nanos() > 0));
    secs.min(MAX_DELAY.as_secs()) as i32
}

/// The SQS message body of a message: its JSON.
pub fn encode_message(message: &Message) -> Result<String, QueueError> {
    serde_json::to_string(message)
        .map_err(|e| QueueError::Backend(format!("cannot encode a queue message: {e}")))
}

/// A message from an SQS message body (what the step and continue handlers receive).
pub fn decode_message(body: &str) -> Result<Message, QueueError> {
    serde_json::from_str(body).map_err(|e| {
        let shown: String = body.chars().take(200).collect();
        let more = if shown.len() < body.len() { "…" } else { "" };
        QueueError::Backend(format!(
            "not a Baton queue message ({e}); body ({} bytes): {shown:?}{more}",
            body.len()
        ))
    })
}

/// The [`Queue`] on Amazon SQS. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    naming: Arc<QueueNaming>,
    batch_requests: Arc<AtomicU64>,
    outboxes: Arc<Mutex<HashMap<String, Outbox>>>,
}

/// A queue's messages waiting for a `SendMessageBatch`. Sends to one queue share requests, as
/// writes share a group commit: a send finding no request in flight starts one at once; sends
/// arriving while one is in flight go together in the next (ten a request), so handlers of
/// one Lambda batch that hand on at about the same time pay for one request, not one each.
#[derive(Debug, Default)]
struct Outbox {
    in_flight: bool,
    waiting: Vec<(Entry, oneshot::Sender<Result<(), String>>)>,
}

/// One message ready to go: its body and `DelaySeconds`.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    run_id: String,
    body: String,
    delay_seconds: i32,
}

impl SqsQueue {
    pub fn new(client: Client, naming: QueueNaming) -> Self {
        SqsQueue {
            client,
            naming: Arc::new(naming),
            batch_requests: Arc::new(AtomicU64::new(0)),
            outboxes: Arc::default(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn naming(&self) -> &QueueNaming {
        &self.naming
    }

    /// The SQS name of a Baton queue (see [`queue_name`]).
    pub fn queue_name(&self, q: &QueueName) -> String {
        self.naming.name(q)
    }

    /// The URL of a Baton queue.
    pub fn queue_url(&self, q: &QueueName) -> String {
        self.naming.url(q)
    }

    /// The URL of the deployment's dead-letter queue.
    pub fn dlq_url(&self) -> String {
        self.naming.dlq_url()
    }

    /// `SendMessageBatch` requests made so far (each SDK call counts once, whatever the
    /// SDK's own retries).
    pub fn batch_requests(&self) -> u64 {
        self.batch_requests.load(Ordering::Relaxed)
    }

    /// Creates the queues (idempotent when they exist with the same attributes), for tests and
    /// local setup; on AWS the template creates them. With `dlq`, the deployment's dead-letter
    /// queue [`dlq_name`] (14 days' retention) is created first, and each queue gets a redrive
    /// policy moving a message there after [`MAX_RECEIVE_COUNT`] receives. Fails when SQS
    /// returns a URL other than the computed one (a wrong `url_prefix`).
    pub async fn create_queues(&self, names: &[QueueName], dlq: bool) -> Result<(), QueueError> {
        let names: BTreeSet<&QueueName> = names.iter().collect();
        let redrive = if dlq {
            let dlq_name = self.naming.dlq_name();
            let dlq_url = self
                .create_one(
                    self.client
                        .create_queue()
                        .queue_name(&dlq_name)
                        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600"),
                    &dlq_name,
                )
                .await?;
            let arn = queue_arn(&self.client, &dlq_url).await?;
            let policy = serde_json::json!({
                "deadLetterTargetArn": arn,
                "maxReceiveCount": MAX_RECEIVE_COUNT,
            });
            Some(policy.to_string())
        } else {
            None
        };
        for q in names {
            let mut create = self.client.create_queue().queue_name(self.queue_name(q));
            if let Some(policy) = &redrive {
                create = create.attributes(QueueAttributeName::RedrivePolicy, policy);
            }
            self.create_one(create, &self.queue_name(q)).await?;
        }
        Ok(())
    }

    async fn create_one(
        &self,
        create: aws_sdk_sqs::operation::create_queue::builders::CreateQueueFluentBuilder,
        name: &str,
    ) -> Result<String, QueueError> {
        let out = create
            .send()
            .await
            .map_err(|e| backend(format!("CreateQueue {name}: {}", describe(&e))))?;
        let url = out
            .queue_url()
            .ok_or_else(|| backend(format!("CreateQueue {name}: SQS returned no queue URL")))?;
        let expected = self.naming.url_of(name);
        if url != expected {
            return Err(backend(format!(
                "CreateQueue {name}: SQS says the queue URL is {url}, but the naming computes \
                 {expected}; fix QueueNaming::url_prefix"
            )));
        }
        Ok(url.to_owned())
    }

    /// Queues `entries` in `url`'s outbox and waits until each went out (or failed). The
    /// first sender to find no request in flight starts a task that sends what is waiting
    /// until nothing is; a task, so that a sender dropped midway strands no one.
    async fn send_coalesced(&self, name: String, url: String, entries: Vec<Entry>) -> Vec<String> {
        let mut answers = Vec::with_capacity(entries.len());
        let lead = {
            let mut outboxes = lock(&self.outboxes);
            let outbox = outboxes.entry(url.clone()).or_default();
            for entry in entries {
                let (tx, rx) = oneshot::channel();
                outbox.waiting.push((entry, tx));
                answers.push(rx);
            }
            !std::mem::replace(&mut outbox.in_flight, true)
        };
        if lead {
            tokio::spawn(self.clone().drain(name, url));
        }
        let mut errors = Vec::new();
        for answer in answers {
            let error = match answer.await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(_) => "the sending task ended without an answer".to_owned(),
            };
            if !errors.contains(&error) {
                errors.push(error);
            }
        }
        errors
    }

    /// Sends `url`'s waiting messages, a few batches at once, until none wait.
    async fn drain(self, name: String, url: String) {
        // Dropped on the way out before the outbox is empty (a panic, a runtime shutting
        // down): the outbox goes, so that its senders are answered (with an error) and the
        // next send starts afresh. No other task sends for this queue meanwhile.
        struct Abandon<'a>(&'a SqsQueue, &'a str, bool);
        impl Drop for Abandon<'_> {
            fn drop(&mut self) {
                if self.2 {
                    lock(&self.0.outboxes).remove(self.1);
                }
            }
        }
        let mut abandon = Abandon(&self, &url, true);
        loop {
            let waiting = {
                let mut outboxes = lock(&self.outboxes);
                let outbox = outboxes.entry(url.clone()).or_default();
                if outbox.waiting.is_empty() {
                    outboxes.remove(&url);
                    abandon.2 = false;
                    return;
                }
                std::mem::take(&mut outbox.waiting)
            };
            let (entries, answers): (Vec<Entry>, Vec<_>) = waiting.into_iter().unzip();
            let mut answers = answers.into_iter();
            let chunks: Vec<(Vec<Entry>, Vec<_>)> = chunk_entries(entries)
                .into_iter()
                .map(|chunk| {
                    let senders = answers.by_ref().take(chunk.len()).collect();
                    (chunk, senders)
                })
                .collect();
            futures::stream::iter(chunks)
                .map(|(chunk, senders)| {
                    let (name, url) = (&name, &url);
                    let queue = &self;
                    async move {
                        let result = queue.send_chunk(name, url, &chunk).await;
                        for sender in senders {
                            let _ = sender.send(result.clone());
                        }
                    }
                })
                .buffer_unordered(CONCURRENT_BATCHES)
                .collect::<()>()
                .await;
        }
    }

    async fn send_chunk(&self, name: &str, url: &str, chunk: &[Entry]) -> Result<(), String> {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, e)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(&e.body)
                    .delay_seconds(e.delay_seconds)
                    .build()
                    .expect("id and body are set")
            })
            .collect::<Vec<_>>();
        self.batch_requests.fetch_add(1, Ordering::Relaxed);
        let out = self
            .client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| {
                let missing = e
                    .as_service_error()
                    .is_some_and(|s| s.is_queue_does_not_exist());
                let hint = if missing {
                    " (create the queues: deploy template.yaml, or SqsQueue::create_queues)"
                } else {
                    ""
                };
                format!("SendMessageBatch to {name}: {}{hint}", describe(&e))
            })?;
        check_batch_result(name, chunk, &out)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A queue's ARN (`GetQueueAttributes`).
pub async fn queue_arn(client: &Client, queue_url: &str) -> Result<String, QueueError> {
    let attributes = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| {
            backend(format!(
                "GetQueueAttributes of {queue_url}: {}",
                describe(&e)
            ))
        })?;
    attributes
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .ok_or_else(|| backend(format!("SQS returned no QueueArn for {queue_url}")))
}

pub fn backend(message: String) -> QueueError {
    QueueError::Backend(message)
}

/// An SDK error in one line: SQS's code and message for a service error, the whole chain of
/// causes otherwise (connection refused, timeouts, …).
pub fn describe<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("unknown error"),
            service.message().unwrap_or("no message")
        ),
        None => DisplayErrorContext(e).to_string(),
    }
}

/// Every entry of a batch must be listed as successful; the failed ones (and any SQS forgot
/// to list) make the error, with SQS's reasons.
fn check_batch_result(
    name: &str,
    chunk: &[Entry],
    out: &SendMessageBatchOutput,
) -> Result<(), String> {
    let ok: BTreeSet<&str> = out.successful().iter().map(|s| s.id()).collect();
    let mut problems = Vec::new();
    for f in out.failed() {
        let run = f
            .id()
            .parse::<usize>()
            .ok()
            .and_then(|i| chunk.get(i))
            .map(|e| format!(" (run {})", e.run_id))
            .unwrap_or_default();
        let fault = if f.sender_fault() {
            "sender fault"
        } else {
            "SQS fault"
        };
        problems.push(format!(
            "entry {}{run}: {} ({fault}): {}",
            f.id(),
            f.code(),
            f.message().unwrap_or("no message")
        ));
    }
    let failed: BTreeSet<&str> = out.failed().iter().map(|f| f.id()).collect();
    for (i, e) in chunk.iter().enumerate() {
        let id = i.to_string();
        if !ok.contains(id.as_str()) && !failed.contains(id.as_str()) {
            problems.push(format!(
                "entry {id} (run {}): neither sent nor failed in SQS's answer",
                e.run_id
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "SendMessageBatch to {name}: {} of {} messages not sent: {}",
            problems.len(),
            chunk.len(),
            problems.join("; ")
        ))
    }
}

/// Splits one queue's entries into batches of at most [`MAX_BATCH_ENTRIES`] entries and
/// [`MAX_BATCH_BYTES`] body bytes (an entry bigger than that alone goes in a batch of its own,
/// for SQS to judge).
fn chunk_entries(entries: Vec<Entry>) -> Vec<Vec<Entry>> {
    let mut chunks: Vec<Vec<Entry>> = Vec::new();
    let mut bytes = 0;
    for e in entries {
        let fits = chunks.last().is_some_and(|c| {
            c.len() < MAX_BATCH_ENTRIES && bytes + e.body.len() <= MAX_BATCH_BYTES
        });
        if !fits {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += e.body.len();
        chunks.last_mut().expect("pushed").push(e);
    }
    chunks
}

#[async_trait]
impl Queue for SqsQueue {
    /// One `SendMessageBatch` per ten messages of a queue, a few in flight at once, shared with
    /// the sends to the same queue that wait for a request in flight ([`Outbox`]). Every batch
    /// is tried; any failure (a request error, or entries SQS lists as failed) fails the call
    /// with every reason, and the caller delivers its message again (messages that did go out
    /// are then sent twice, which the engine tolerates).
    async fn send(&self, batch: Vec<Envelope>) -> Result<(), QueueError> {
        let mut by_queue: BTreeMap<QueueName, Vec<Entry>> = BTreeMap::new();
        for Envelope { message, delay } in batch {
            by_queue.entry(message.queue()).or_default().push(Entry {
                body: encode_message(&message)?,
                run_id: message.run_id,
                delay_seconds: delay_seconds(delay),
            });
        }
        let errors: Vec<String> = join_all(by_queue.into_iter().map(|(q, entries)| {
            let name = self.naming.name(&q);
            let url = self.naming.url_of(&name);
            self.send_coalesced(name, url, entries)
        }))
        .await
        .into_iter()
        .flatten()
        .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(QueueError::Backend(errors.join("; ")))
        }
    }

    fn max_delay(&self) -> Duration {
        MAX_DELAY
    }

    fn send_batch_size(&self) -> usize {
        MAX_BATCH_ENTRIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::types::{BatchResultErrorEntry, SendMessageBatchResultEntry};

    fn entry(i: usize, body_len: usize) -> Entry {
        Entry {
            run_id: format!("run{i}"),
            body: "x".repeat(body_len),
            delay_seconds: 0,
        }
    }

    #[test]
    fn chunks_hold_at_most_ten_entries() {
        let sizes: Vec<usize> = chunk_entries((0..25).map(|i| entry(i, 100)).collect())
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, vec![10, 10, 5]);
        assert!(chunk_entries(Vec::new()).is_empty());
        let order: Vec<String> = chunk_entries((0..12).map(|i| entry(i, 1)).collect())
            .into_iter()
            .flatten()
            .map(|e| e.run_id)
            .collect();
        assert_eq!(
            order,
            (0..12).map(|i| format!("run{i}")).collect::<Vec<_>>()
        );
    }

    #[test]
    fn chunks_hold_at_most_256_kib() {
        // 100 KiB bodies: two fit, a third would not.
        let sizes: Vec<usize> = chunk_entries((0..5).map(|i| entry(i, 100 * 1024)).collect())
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        // Exactly the limit fits; an oversized entry goes alone.
        let sizes: Vec<usize> = chunk_entries(vec![
            entry(0, 128 * 1024),
            entry(1, 128 * 1024),
            entry(2, 300 * 1024),
            entry(3, 10),
        ])
        .iter()
        .map(Vec::len)
        .collect();
        assert_eq!(sizes, vec![2, 1, 1]);
    }

    #[test]
    fn failed_entries_are_reported_with_reasons() {
        let chunk: Vec<Entry> = (0..3).map(|i| entry(i, 10)).collect();
        let ok = |id: &str| {
            SendMessageBatchResultEntry::builder()
                .id(id)
                .message_id("m")
                .md5_of_message_body("x")
                .build()
                .unwrap()
        };
        let all_ok = SendMessageBatchOutput::builder()
            .successful(ok("0"))
            .successful(ok("1"))
            .successful(ok("2"))
            .set_failed(Some(vec![]))
            .build()
            .unwrap();
        assert_eq!(check_batch_result("q", &chunk, &all_ok), Ok(()));

        let one_failed = SendMessageBatchOutput::builder()
            .successful(ok("0"))
            .failed(
                BatchResultErrorEntry::builder()
                    .id("1")
                    .sender_fault(false)
                    .code("InternalError")
                    .message("try later")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let err = check_batch_result("q", &chunk, &one_failed).unwrap_err();
        assert!(err.contains("2 of 3 messages not sent"), "{err}");
        assert!(
            err.contains("entry 1 (run run1): InternalError (SQS fault): try later"),
            "{err}"
        );
        assert!(
            err.contains("entry 2 (run run2): neither sent nor failed"),
            "{err}"
        );
    }
}
