//! Lambda's SQS event source mapping, reproduced against any SQS endpoint (moto in tests),
//! so tests and benchmarks drive the Lambda handlers' code with the batches Lambda would build.

use std::time::Duration;

use aws_lambda_events::event::sqs::SqsMessage;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use baton::error::QueueError;
use baton_aws::sqs::{MAX_BATCH_ENTRIES, backend, describe, queue_arn};

/// Lambda's SQS event source mapping, reproduced against any SQS endpoint: [`receive`]
/// gives a batch as the records of the `SqsEvent` Lambda would build, [`delete`] removes the
/// ones a handler did not report as failed (the others come back after the visibility
/// timeout, as on Lambda). Tests and benchmarks drive the handlers' code with it against
/// moto .
///
/// [`receive`]: SqsTrigger::receive
/// [`delete`]: SqsTrigger::delete
#[derive(Debug, Clone)]
pub struct SqsTrigger {
    client: Client,
    queue_url: String,
    queue_arn: String,
    region: String,
    /// Messages per batch, 1-10 (Lambda's `BatchSize` for standard queues goes higher, but
    /// one `ReceiveMessage` returns at most ten).
    pub batch_size: i32,
    /// Seconds a received message stays hidden before it is delivered again.
    pub visibility_timeout: i32,
}

impl SqsTrigger {
    /// A trigger on the queue at `queue_url` (its ARN is read once, for the records'
    /// `eventSourceARN`).
    pub async fn new(client: Client, queue_url: String, region: &str) -> Result<Self, QueueError> {
        let queue_arn = queue_arn(&client, &queue_url).await?;
        Ok(SqsTrigger {
            client,
            queue_url,
            queue_arn,
            region: region.to_owned(),
            batch_size: MAX_BATCH_ENTRIES as i32,
            visibility_timeout: 30,
        })
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Receives up to `batch_size` messages, long-polling up to `wait` (whole seconds), as
    /// Lambda's records: body, receipt handle, MD5, the system attributes
    /// (`ApproximateReceiveCount`, `SentTimestamp`, ...) and the event source fields.
    pub async fn receive(&self, wait: Duration) -> Result<Vec<SqsMessage>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(self.batch_size)
            .visibility_timeout(self.visibility_timeout)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| {
                backend(format!(
                    "ReceiveMessage from {}: {}",
                    self.queue_url,
                    describe(&e)
                ))
            })?;
        Ok(out
            .messages()
            .iter()
            .map(|m| {
                let mut record = SqsMessage::default();
                record.message_id = m.message_id().map(str::to_owned);
                record.receipt_handle = m.receipt_handle().map(str::to_owned);
                record.body = m.body().map(str::to_owned);
                record.md5_of_body = m.md5_of_body().map(str::to_owned);
                record.attributes = m
                    .attributes()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                    .collect();
                record.event_source = Some("aws:sqs".to_owned());
                record.event_source_arn = Some(self.queue_arn.clone());
                record.aws_region = Some(self.region.clone());
                record
            })
            .collect())
    }

    /// Deletes these messages (one `DeleteMessageBatch` per ten), as Lambda does with the
    /// ones a batch did not report as failed.
    pub async fn delete(&self, records: &[SqsMessage]) -> Result<(), QueueError> {
        for chunk in records.chunks(MAX_BATCH_ENTRIES) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r.receipt_handle.clone().unwrap_or_default())
                        .build()
                        .expect("id and receipt handle are set")
                })
                .collect::<Vec<_>>();
            let out = self
                .client
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| {
                    backend(format!(
                        "DeleteMessageBatch on {}: {}",
                        self.queue_url,
                        describe(&e)
                    ))
                })?;
            if let Some(f) = out.failed().first() {
                return Err(backend(format!(
                    "DeleteMessageBatch on {}: {} of {} not deleted: {}: {}",
                    self.queue_url,
                    out.failed().len(),
                    chunk.len(),
                    f.code(),
                    f.message().unwrap_or("no message")
                )));
            }
        }
        Ok(())
    }
}
