//! The DynamoDB store: the backend for running on AWS. One table; every state change is one
//! single-item conditional write (`ConditionExpression`), and `ConditionalCheckFailed` is the
//! "not applied" answer. No transactions: they buy nothing here, and moto does not isolate
//! them (see DESIGN.md).
//!
//! # Single-table layout
//!
//! | item        | `PK`              | `SK`                  | notable attributes                                 |
//! |-------------|-------------------|-----------------------|----------------------------------------------------|
//! | event       | `EV#{event_id}`   | `EVENT`               | `data`, `user` (payloads), TTL                     |
//! | idempotency | `IDEM#{id}`       | `IDEM`                | `event_id`, `expires_at`, TTL = `expires_at`       |
//! | run         | `RUN#{run_id}`    | `RUN`                 | `status`, `event` copy, `output`, `error`, GSI keys |
//! | step        | `RUN#{run_id}`    | `STEP#{step_id}`      | `seq`, `status`, `attempts`, `output`, `error`     |
//! | entry       | `KV#{key}`        | `E#{id}`              | `value` (JSON text), `version`, `expires_at`, TTL  |
//! | blob chunk  | `RUN#{run_id}` or `EV#{event_id}` | `BLOB#{blob_id}#{n:05}` | `part`: a slice of a large payload's JSON text |
//!
//! A run's steps share its partition, so [`Store::journal`] is one strongly consistent Query
//! (`begins_with(SK, "STEP#")`, sorted by `seq` client side). A step's result may carry `next`
//! (JSON): the steps planned with it ([`Store::record_step`]), which have no item of their own
//! until they start; the journal lists them. `get_run`, `get_event` and
//! `journal` read strongly consistent; so do the `BatchGetItem` calls that fetch listed runs.
//!
//! Global secondary indexes, all on run items only (sort key = run id, a ULID: newest first is
//! `ScanIndexForward = false`):
//!
//! | index  | partition key         | sort key | projection                      | serves                     |
//! |--------|-----------------------|----------|---------------------------------|----------------------------|
//! | `GSI1` | `FN#{function_id}#{shard}` | run id | keys + `status`, `started_at` | runs of a function         |
//! | `GSI2` | `ST#{status}#{shard}` | run id   | keys + `started_at`             | runs by status (moved on every transition) |
//! | `GSI3` | `EVR#{event_id}`      | run id   | keys only                       | [`Store::runs_for_event`]  |
//!
//! The function and status keys are write-sharded: a run's entries go to one of
//! [`INDEX_SHARDS`] partitions per key, chosen by its run id ([`index_shard`]), so no single
//! partition takes every write of a busy function or of every run entering a status; a
//! listing reads all the shards and merges them.
//!
//! Indexes only find run ids; the runs themselves are then read with a strongly consistent
//! `BatchGetItem` and filtered again, so a listing never shows a stale status. (On AWS an
//! index lags its table: a run created or moved a moment ago may be missing from a listing for
//! that moment. moto updates indexes at once.) Small projections also keep progress updates
//! and large payloads out of the indexes' write costs.
//!
//! # Listing runs and the cursor
//!
//! [`Store::list_runs`] picks its sources: with a function id, `GSI1`'s shards of it (a status
//! filter and the `started_*` window become a `FilterExpression`); with only a status, `GSI2`'s
//! shards of it; with neither, `GSI2`'s shards of each of the five statuses, merged newest
//! first (no `Scan`). Each source
//! is read lazily page by page (filtered pages can be short or empty), merged by run id, and
//! the candidates confirmed against the consistent read until `limit + 1` runs are found. The
//! cursor is the last run id of the page, as in the other backends: the next page reads index
//! entries whose sort key is below it, so a cursor is a position and runs created meanwhile
//! do not shift the pages.
//!
//! # Payloads and the 400 KB item limit
//!
//! JSON-shaped fields (an event's `data` and `user`, a run's `event` copy, `output`, `error`
//! and `progress`, a step's `output` and `error`) are stored as JSON text, never as native
//! DynamoDB maps: maps would cap nesting at 32 levels and numbers at 38 digits / 1e125, and
//! their size is harder to predict. A payload up to [`DEFAULT_INLINE_LIMIT`] (32 KiB,
//! configurable up to [`MAX_INLINE_LIMIT`]) is stored inline as a string; a larger one is split into `BLOB#` chunk items
//! of at most [`CHUNK_BYTES`] in the same partition, and the field holds a reference
//! `{blob, chunks, bytes}`. So a run item stays far below 400 KB however large its event copy
//! and output (each up to 256 KiB in the engine's default limits), and a progress update on
//! it costs a few write units, not hundreds. Payloads above the store's own hard limit
//! ([`DEFAULT_MAX_PAYLOAD`], 4 MiB, configurable) are refused with [`StoreError::TooLarge`]
//! before anything is written.
//!
//! Chunks are written before the conditional write that references them, under a fresh blob
//! id (a ULID), so a strongly consistent reader never sees a reference without its chunks and
//! concurrent writers never overwrite each other's chunks. A writer whose condition fails
//! deletes its chunks. A payload replaced later (an output changed by `transition_run`, a
//! retry's error) leaves its old chunks in place: deleting them could break a reader that
//! holds the old reference. They expire with the run (below).
//!
//! # Retention (TTL)
//!
//! The table's TTL attribute is `expires_at_epoch` (seconds). Events get now + retention when
//! stored; idempotency claims expire at their `expires_at`; a run gets `ended_at` + retention
//! when it reaches a terminal status (none while it is live). Every other item of a run's
//! partition (steps, payload chunks) gets, when written, now + the engine's maximum run age
//! ([`baton::Limits::max_run_age`], 400 days) + retention: the run has ended by then, and
//! nothing is written again when it ends (stamping each step would cost one write unit per
//! step). Retention defaults to [`DEFAULT_RETENTION`] (30 days). DynamoDB deletes expired items
//! lazily (within days); the store never relies on that for correctness: idempotency claims
//! compare `expires_at` in the condition.
//!
//! Timestamps are RFC 3339 strings with nanoseconds and a `Z` suffix, fixed width, so string
//! comparison in conditions and filters is time order.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, IndexStatus,
    KeySchemaElement, KeyType, KeysAndAttributes, Projection, ProjectionType,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
    TimeToLiveStatus,
};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use baton::error::StoreError;
use baton::model::{
    Entry, ErrorInfo, EventRecord, Expect, ListedRun, Progress, RunPage, RunQuery, RunRecord,
    RunStatus, RunSummary, RunTransition, StepKind, StepOutcome, StepRecord, StepStatus,
};
use baton::store::page_size;
use baton::store::{Store, StoreResult};

/// How long ended runs, their journals and events are kept (DynamoDB TTL).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Payloads up to this many bytes of JSON are stored inside their item.
pub const DEFAULT_INLINE_LIMIT: usize = 32 * 1024;
/// The largest inline limit: a run item holds up to four payloads (event copy, output, error,
/// progress), and 4 x 64 KiB plus keys stays under DynamoDB's 400 KB item limit.
pub const MAX_INLINE_LIMIT: usize = 64 * 1024;
/// The largest payload (JSON bytes) the store accepts; larger ones are `TooLarge`.
pub const DEFAULT_MAX_PAYLOAD: usize = 4 * 1024 * 1024;
/// JSON text per chunk item: with its keys, well under DynamoDB's 400 KB item limit.
pub const CHUNK_BYTES: usize = 300 * 1024;
/// The table's TTL attribute (seconds since the epoch).
pub const TTL_ATTRIBUTE: &str = "expires_at_epoch";

const EVENT_SK: &str = "EVENT";
const IDEM_SK: &str = "IDEM";
const RUN_SK: &str = "RUN";
const STEP_PREFIX: &str = "STEP#";
/// Parallel requests for fan-out work (chunks, listed runs).
const FAN_OUT: usize = 8;
/// `BatchGetItem` takes at most 100 keys.
const BATCH_GET_MAX: usize = 100;

/// A [`Store`] on one DynamoDB table (layout in the module docs). Cloning shares the client.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    retention: chrono::Duration,
    max_run_age: chrono::Duration,
    inline_limit: usize,
    max_payload: usize,
}

impl DynamoStore {
    /// A store on `table`, which must exist with the layout of [`DynamoStore::create_table`]
    /// (on AWS: the table in template.yaml).
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoStore {
            client,
            table: table.into(),
            retention: chrono::Duration::from_std(DEFAULT_RETENTION).expect("30 days fits"),
            max_run_age: chrono::Duration::from_std(baton::engine::Limits::default().max_run_age)
                .expect("a year fits"),
            inline_limit: DEFAULT_INLINE_LIMIT,
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }

    /// How long ended runs (with their steps) and events are kept before DynamoDB's TTL may
    /// delete them.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        self
    }

    /// The engine's [`baton::Limits::max_run_age`], if changed there: a run's steps and
    /// chunks expire `max_run_age` + retention after they are written.
    pub fn with_max_run_age(mut self, max_run_age: Duration) -> Self {
        self.max_run_age = chrono::Duration::from_std(max_run_age).unwrap_or(chrono::Duration::MAX);
        self
    }

    /// Payloads larger than this many JSON bytes go to chunk items. Capped at
    /// [`MAX_INLINE_LIMIT`], so that a run item with four inline payloads still fits in one
    /// item.
    pub fn with_inline_limit(mut self, bytes: usize) -> Self {
        self.inline_limit = bytes.min(MAX_INLINE_LIMIT);
        self
    }

    /// The largest payload accepted, in JSON bytes.
    pub fn with_max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the table with its indexes (on-demand billing) and TTL, and waits until it is
    /// active. For tests and local setup; on AWS the template creates it. A table that already
    /// exists is waited for and left as it is (its TTL enabled if it was not).
    pub async fn create_table(&self) -> StoreResult<()> {
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build_error)
        };
        let key = |name: &str, key_type: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(key_type)
                .build()
                .map_err(build_error)
        };
        let index = |name: &str, projection: Projection| {
            GlobalSecondaryIndex::builder()
                .index_name(name)
                .key_schema(key(&format!("{name}PK"), KeyType::Hash)?)
                .key_schema(key(&format!("{name}SK"), KeyType::Range)?)
                .projection(projection)
                .build()
                .map_err(build_error)
        };
        let include = |attrs: &[&str]| {
            Projection::builder()
                .projection_type(ProjectionType::Include)
                .set_non_key_attributes(Some(attrs.iter().map(|a| a.to_string()).collect()))
                .build()
        };
        let mut definitions = Vec::new();
        for name in [
            "PK", "SK", "GSI1PK", "GSI1SK", "GSI2PK", "GSI2SK", "GSI3PK", "GSI3SK",
        ] {
            definitions.push(attr(name)?);
        }
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .set_attribute_definitions(Some(definitions))
            .key_schema(key("PK", KeyType::Hash)?)
            .key_schema(key("SK", KeyType::Range)?)
            .global_secondary_indexes(index("GSI1", include(&["status", "started_at"]))?)
            .global_secondary_indexes(index("GSI2", include(&["started_at"]))?)
            .global_secondary_indexes(index(
                "GSI3",
                Projection::builder()
                    .projection_type(ProjectionType::KeysOnly)
                    .build(),
            )?)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e) if error_code(&e) == Some("ResourceInUseException") => {}
            Err(e) => return Err(backend("CreateTable", e)),
        }
        self.wait_until_active().await?;

        let ttl = self
            .client
            .describe_time_to_live()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| backend("DescribeTimeToLive", e))?;
        let status = ttl
            .time_to_live_description()
            .and_then(|d| d.time_to_live_status());
        if !matches!(
            status,
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
        ) {
            self.client
                .update_time_to_live()
                .table_name(&self.table)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .attribute_name(TTL_ATTRIBUTE)
                        .enabled(true)
                        .build()
                        .map_err(build_error)?,
                )
                .send()
                .await
                .map_err(|e| backend("UpdateTimeToLive", e))?;
        }
        Ok(())
    }

    async fn wait_until_active(&self) -> StoreResult<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            let out = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| backend("DescribeTable", e))?;
            let active = out.table().is_some_and(|t| {
                t.table_status() == Some(&TableStatus::Active)
                    && t.global_secondary_indexes()
                        .iter()
                        .all(|i| i.index_status() == Some(&IndexStatus::Active))
            });
            if active {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(StoreError::Backend(format!(
                    "table {} did not become active within 5 minutes",
                    self.table
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // ---- payloads ----

    /// Encodes `value` as a payload of an item in partition `blobs.pk`: inline, or chunks
    /// queued on `blobs` (written by [`DynamoStore::write_blobs`] before the item).
    fn payload<T: Serialize + ?Sized>(
        &self,
        what: &str,
        value: &T,
        blobs: &mut Blobs,
    ) -> StoreResult<Payload> {
        let text = serde_json::to_string(value)
            .map_err(|e| StoreError::Backend(format!("encoding {what} as JSON: {e}")))?;
        if text.len() > self.max_payload {
            return Err(StoreError::TooLarge {
                what: what.to_owned(),
                size: text.len(),
                limit: self.max_payload,
            });
        }
        if text.len() <= self.inline_limit {
            return Ok(Payload::Inline(text));
        }
        let blob = ulid::Ulid::new().to_string();
        let mut rest = text.as_str();
        let mut n = 0u32;
        while !rest.is_empty() {
            let mut cut = rest.len().min(CHUNK_BYTES);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (part, tail) = rest.split_at(cut);
            blobs.chunks.push(ChunkItem {
                pk: blobs.pk.clone(),
                sk: chunk_sk(&blob, n),
                part: part.to_owned(),
                expires_at_epoch: blobs.ttl,
            });
            rest = tail;
            n += 1;
        }
        Ok(Payload::Blob(BlobRef {
            blob,
            chunks: n,
            bytes: text.len() as u64,
        }))
    }

    fn opt_payload<T: Serialize>(
        &self,
        what: &str,
        value: Option<&T>,
        blobs: &mut Blobs,
    ) -> StoreResult<Option<Payload>> {
        value.map(|v| self.payload(what, v, blobs)).transpose()
    }

    async fn write_blobs(&self, blobs: &Blobs) -> StoreResult<()> {
        let puts: Vec<_> = blobs.chunks.iter().map(|c| self.put_chunk(c)).collect();
        stream::iter(puts)
            .buffer_unordered(FAN_OUT)
            .try_collect::<()>()
            .await
    }

    async fn put_chunk(&self, chunk: &ChunkItem) -> StoreResult<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(chunk)?))
            .send()
            .await
            .map_err(|e| backend("PutItem (payload chunk)", e))?;
        Ok(())
    }

    /// Deletes chunks that no item references (the write they were for did not apply). Best
    /// effort: a chunk left behind is garbage that expires with its partition.
    async fn discard_blobs(&self, blobs: &Blobs) {
        let deletes: Vec<_> = blobs.chunks.iter().map(|c| self.delete_chunk(c)).collect();
        stream::iter(deletes)
            .buffer_unordered(FAN_OUT)
            .collect::<()>()
            .await
    }

    async fn delete_chunk(&self, chunk: &ChunkItem) {
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(&chunk.pk, &chunk.sk)))
            .send()
            .await;
        if let Err(e) = deleted {
            tracing::warn!(pk = %chunk.pk, sk = %chunk.sk, error = %error_chain(&e), "could not delete an unused payload chunk");
        }
    }

    /// Runs a conditional write whose payload chunks are in `blobs`: chunks first, then the
    /// write; when the condition fails, the chunks are deleted again.
    async fn with_blobs<F, Fut>(&self, blobs: &Blobs, write: F) -> StoreResult<bool>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = StoreResult<bool>>,
    {
        self.write_blobs(blobs).await?;
        let applied = write().await;
        // Only a refused write leaves the chunks unreferenced: after an error the write may
        // still have applied, so they stay.
        if matches!(applied, Ok(false)) && !blobs.chunks.is_empty() {
            self.discard_blobs(blobs).await;
        }
        applied
    }

    /// The JSON value of a payload stored in partition `pk`.
    async fn load<T: DeserializeOwned>(
        &self,
        pk: &str,
        what: &str,
        payload: &Payload,
    ) -> StoreResult<T> {
        let text = match payload {
            Payload::Inline(text) => Cow::Borrowed(text.as_str()),
            Payload::Blob(blob) => Cow::Owned(self.read_blob(pk, what, blob).await?),
        };
        serde_json::from_str(&text).map_err(|e| corrupt(what, e))
    }

    async fn load_opt<T: DeserializeOwned>(
        &self,
        pk: &str,
        what: &str,
        payload: Option<&Payload>,
    ) -> StoreResult<Option<T>> {
        match payload {
            Some(p) => self.load(pk, what, p).await.map(Some),
            None => Ok(None),
        }
    }

    async fn read_blob(&self, pk: &str, what: &str, blob: &BlobRef) -> StoreResult<String> {
        let items = self
            .query_partition(pk, &format!("BLOB#{}#", blob.blob), None)
            .await?;
        let mut text = String::with_capacity(blob.bytes as usize);
        let mut parts = 0u32;
        for item in items {
            let chunk: ChunkItem = from_item(&format!("{what} chunk"), item)?;
            // Chunks come back in sort key order, which is chunk order.
            if chunk.sk != chunk_sk(&blob.blob, parts) {
                return Err(corrupt(
                    what,
                    format!("chunk {} found where {parts} was expected", chunk.sk),
                ));
            }
            text.push_str(&chunk.part);
            parts += 1;
        }
        if parts != blob.chunks || text.len() as u64 != blob.bytes {
            return Err(corrupt(
                what,
                format!(
                    "payload {} has {parts} chunks and {} bytes, expected {} and {}",
                    blob.blob,
                    text.len(),
                    blob.chunks,
                    blob.bytes
                ),
            ));
        }
        Ok(text)
    }

    // ---- reads ----

    /// Every item of partition `pk` whose sort key starts with `prefix`, strongly consistent,
    /// in sort key order. `projection` limits the attributes read.
    /// The journal from the run partition's step items (see [`Store::journal`]).
    async fn journal_of(&self, run_id: &str, items: Vec<Item>) -> StoreResult<Vec<StepRecord>> {
        let items = items
            .into_iter()
            .map(|item| from_item::<StepItem>(&format!("step of run {run_id}"), item))
            .collect::<StoreResult<Vec<_>>>()?;
        // Steps planned in another step's result and not started have no item of their own.
        let mut planned = Vec::new();
        for item in &items {
            planned.extend(item.planned()?);
        }
        let mut steps: Vec<StepRecord> = stream::iter(items)
            .map(|item| self.step_record(item))
            .buffered(FAN_OUT)
            .try_collect()
            .await?;
        // Each once (two results may plan the same step: a join), and not over its own item.
        let mut seen: HashSet<String> = steps.iter().map(|s| s.step_id.clone()).collect();
        steps.extend(
            planned
                .into_iter()
                .filter(|p| seen.insert(p.step_id.clone())),
        );
        // step_id breaks ties so the order is deterministic even if seq were reused.
        steps.sort_by(|a, b| (a.seq, &a.step_id).cmp(&(b.seq, &b.step_id)));
        Ok(steps)
    }

    async fn query_partition(
        &self,
        pk: &str,
        prefix: &str,
        projection: Option<&[&str]>,
    ) -> StoreResult<Vec<Item>> {
        self.query_keys(pk, SortKeys::Prefix(prefix), projection)
            .await
    }

    /// The items of partition `pk` whose sort keys `sort_keys` selects, every page.
    async fn query_keys(
        &self,
        pk: &str,
        sort_keys: SortKeys<'_>,
        projection: Option<&[&str]>,
    ) -> StoreResult<Vec<Item>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let mut expr = Expr::default();
            let pk_name = expr.name("PK");
            let pk_value = expr.value("pk", AttributeValue::S(pk.to_owned()));
            let mut key_condition = format!("{pk_name} = {pk_value}");
            match sort_keys {
                SortKeys::Prefix("") => {}
                SortKeys::Prefix(prefix) => {
                    let sk_name = expr.name("SK");
                    let prefix = expr.value("prefix", AttributeValue::S(prefix.to_owned()));
                    key_condition.push_str(&format!(" AND begins_with({sk_name}, {prefix})"));
                }
                SortKeys::From(first) => {
                    let sk_name = expr.name("SK");
                    let first = expr.value("first", AttributeValue::S(first.to_owned()));
                    key_condition.push_str(&format!(" AND {sk_name} >= {first}"));
                }
            }
            let projection = projection.map(|attrs| {
                attrs
                    .iter()
                    .map(|a| expr.name(a))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression(key_condition)
                .set_expression_attribute_names(Some(expr.names))
                .set_expression_attribute_values(Some(expr.values))
                .set_projection_expression(projection)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| backend("Query", e))?;
            start = out.last_evaluated_key().cloned();
            items.extend(out.items.unwrap_or_default());
            if start.is_none() {
                return Ok(items);
            }
        }
    }

    async fn get_item(&self, pk: &str, sk: &str) -> StoreResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| backend("GetItem", e))?;
        Ok(out.item)
    }

    async fn run_record(&self, item: RunItem) -> StoreResult<RunRecord> {
        let pk = &item.pk;
        let what = |field: &str| format!("run {} {field}", item.run_id);
        Ok(RunRecord {
            event: self.load(pk, &what("event"), &item.event).await?,
            output: self
                .load_opt(pk, &what("output"), item.output.as_ref())
                .await?,
            error: self
                .load_opt(pk, &what("error"), item.error.as_ref())
                .await?,
            progress: self
                .load_opt(pk, &what("progress"), item.progress.as_ref())
                .await?,
            run_id: item.run_id.clone(),
            function_id: item.function_id.clone(),
            event_id: item.event_id.clone(),
            status: item.status,
            started_at: item.started_at,
            ended_at: item.ended_at,
            replay_of: item.replay_of.clone(),
            replay_from: item.replay_from.clone(),
        })
    }

    async fn step_record(&self, item: StepItem) -> StoreResult<StepRecord> {
        let pk = &item.pk;
        let what = |field: &str| format!("step {}/{} {field}", item.run_id, item.step_id);
        Ok(StepRecord {
            output: self
                .load_opt(pk, &what("output"), item.output.as_ref())
                .await?,
            error: self
                .load_opt(pk, &what("error"), item.error.as_ref())
                .await?,
            run_id: item.run_id.clone(),
            step_id: item.step_id.clone(),
            name: item.name.clone(),
            kind: item.kind,
            status: item.status,
            attempts: item.attempts,
            seq: item.seq,
            planned_at: item.planned_at,
            started_at: item.started_at,
            ended_at: item.ended_at,
            wake_at: item.wake_at,
            planned: item.planned()?,
        })
    }

    /// Run items by id, read strongly consistent with `projection`; ids with no run are left
    /// out.
    async fn batch_get_runs(
        &self,
        run_ids: &[String],
        projection: &[&str],
    ) -> StoreResult<Vec<Item>> {
        let mut items = Vec::new();
        let names: HashMap<String, String> = projection
            .iter()
            .enumerate()
            .map(|(i, attr)| (format!("#p{i}"), (*attr).to_owned()))
            .collect();
        let projection_expression = (0..projection.len())
            .map(|i| format!("#p{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        for ids in run_ids.chunks(BATCH_GET_MAX) {
            let mut keys: Vec<Item> = ids.iter().map(|id| key(&run_pk(id), RUN_SK)).collect();
            let mut tries = 0u32;
            while !keys.is_empty() {
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .projection_expression(&projection_expression)
                    .set_expression_attribute_names(Some(names.clone()))
                    .build()
                    .map_err(build_error)?;
                let mut out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(|e| backend("BatchGetItem", e))?;
                if let Some(found) = out.responses.as_mut().and_then(|r| r.remove(&self.table)) {
                    items.extend(found);
                }
                keys = out
                    .unprocessed_keys
                    .as_mut()
                    .and_then(|u| u.remove(&self.table))
                    .map(|k| k.keys)
                    .unwrap_or_default();
                if !keys.is_empty() {
                    // Throttled: back off as the SDK docs advise for unprocessed keys.
                    tries += 1;
                    if tries > 8 {
                        return Err(StoreError::Backend(format!(
                            "BatchGetItem left {} keys unprocessed after {tries} tries",
                            keys.len()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(25 << tries.min(6))).await;
                }
            }
        }
        Ok(items)
    }

    /// Listed runs by id: summaries read with a projection (never the event copy). An item
    /// that cannot be read is reported by its run id.
    async fn summaries(
        &self,
        run_ids: &[String],
        with_output: bool,
    ) -> StoreResult<HashMap<String, ListedRun>> {
        let mut projection = SUMMARY_ATTRIBUTES.to_vec();
        if with_output {
            projection.push("output");
        }
        let items = self.batch_get_runs(run_ids, &projection).await?;
        stream::iter(items)
            .map(|item| async move {
                let run_id = match item.get("run_id") {
                    Some(AttributeValue::S(id)) => id.clone(),
                    _ => return Err(corrupt("run", "an item without run_id")),
                };
                let listed = match self.summary(item).await {
                    Ok(run) => Ok(run),
                    Err(e) if e.is_corrupt() => {
                        tracing::warn!(run_id, %e, "unreadable run item skipped");
                        Err(run_id.clone())
                    }
                    Err(e) => return Err(e),
                };
                Ok((run_id, listed))
            })
            .buffer_unordered(FAN_OUT)
            .try_collect()
            .await
    }

    async fn summary(&self, item: Item) -> StoreResult<RunSummary> {
        let item: SummaryItem = from_item("run", item)?;
        let pk = &item.pk;
        let what = |field: &str| format!("run {} {field}", item.run_id);
        let event_name = match item.event_name.clone() {
            Some(name) => name,
            // An item written before `event_name` existed.
            None => {
                let run = self.get_run(&item.run_id).await?;
                run.map(|r| r.event.name).unwrap_or_default()
            }
        };
        Ok(RunSummary {
            event_name,
            output: self
                .load_opt(pk, &what("output"), item.output.as_ref())
                .await?,
            error: self
                .load_opt(pk, &what("error"), item.error.as_ref())
                .await?,
            progress: self
                .load_opt(pk, &what("progress"), item.progress.as_ref())
                .await?,
            run_id: item.run_id.clone(),
            function_id: item.function_id.clone(),
            event_id: item.event_id.clone(),
            status: item.status,
            started_at: item.started_at,
            ended_at: item.ended_at,
            replay_of: item.replay_of.clone(),
            replay_from: item.replay_from.clone(),
        })
    }

    // ---- writes ----

    async fn put_if_absent(&self, item: Item) -> StoreResult<bool> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", "PK")
            .send()
            .await;
        applied("PutItem", put)
    }

    /// One conditional `UpdateItem`. The condition always includes `attribute_exists(PK)`, so
    /// an update never creates an item.
    async fn update_if(&self, pk: &str, sk: &str, update: Update) -> StoreResult<bool> {
        let Update {
            mut expr,
            set,
            remove,
            condition,
            create,
        } = update;
        let pk_name = expr.name("PK");
        let condition = match (condition, create) {
            (Some(c), false) => format!("attribute_exists({pk_name}) AND {c}"),
            (None, false) => format!("attribute_exists({pk_name})"),
            (Some(c), true) => format!("attribute_not_exists({pk_name}) OR ({c})"),
            (None, true) => return Err(StoreError::Backend("an upsert needs a condition".into())),
        };
        let mut update_expression = String::new();
        if !set.is_empty() {
            update_expression.push_str(&format!("SET {}", set.join(", ")));
        }
        if !remove.is_empty() {
            update_expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .update_expression(update_expression.trim())
            .condition_expression(condition)
            .set_expression_attribute_names(Some(expr.names))
            .set_expression_attribute_values((!expr.values.is_empty()).then_some(expr.values))
            .send()
            .await;
        applied("UpdateItem", out)
    }

    fn ttl_after(&self, t: DateTime<Utc>) -> i64 {
        epoch_ceil(
            t.checked_add_signed(self.retention)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        )
    }

    /// The TTL of a run in `status` that ended at `ended_at`: none while it is live.
    fn run_ttl(&self, status: RunStatus, ended_at: Option<DateTime<Utc>>) -> Option<i64> {
        status
            .is_terminal()
            .then(|| self.ttl_after(ended_at.unwrap_or_else(Utc::now)))
    }

    /// The TTL of a live run's other items (steps, payload chunks), set when they are
    /// written: the run ends within `max_run_age` of its start (the engine enforces it), so
    /// they outlive it by at least the retention, without touching them again when it ends.
    fn live_ttl(&self) -> i64 {
        epoch_ceil(
            Utc::now()
                .checked_add_signed(self.max_run_age)
                .and_then(|t| t.checked_add_signed(self.retention))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        )
    }
}

// ---- items ----

type Item = HashMap<String, AttributeValue>;

fn key(pk: &str, sk: &str) -> Item {
    HashMap::from([
        ("PK".to_owned(), AttributeValue::S(pk.to_owned())),
        ("SK".to_owned(), AttributeValue::S(sk.to_owned())),
    ])
}

/// DynamoDB's key size limits (bytes): a partition key value up to 2048, a sort key value
/// (tables and indexes) up to 1024.
const MAX_PARTITION_KEY: usize = 2048;
const MAX_SORT_KEY: usize = 1024;

/// A key built from an id of any length, within DynamoDB's limit: a longer one keeps its
/// start and ends in the SHA-256 of the whole, so it stays unique and every backend answers
/// the same for it (absent, or stored) instead of a `ValidationException` here only.
fn bounded(key: String, max: usize) -> String {
    if key.len() <= max {
        return key;
    }
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    let mut keep = max - digest.len() - 2;
    while !key.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}#~{digest}", &key[..keep])
}

fn event_pk(event_id: &str) -> String {
    bounded(format!("EV#{event_id}"), MAX_PARTITION_KEY)
}

fn idem_pk(idempotency_id: &str) -> String {
    bounded(format!("IDEM#{idempotency_id}"), MAX_PARTITION_KEY)
}

/// Which sort keys of a partition a query reads.
#[derive(Debug, Clone, Copy)]
enum SortKeys<'a> {
    /// Those starting with this ("": all).
    Prefix(&'a str),
    /// This one and every later one.
    From(&'a str),
}

fn run_pk(run_id: &str) -> String {
    bounded(format!("RUN#{run_id}"), MAX_PARTITION_KEY)
}

fn step_sk(step_id: &str) -> String {
    bounded(format!("{STEP_PREFIX}{step_id}"), MAX_SORT_KEY)
}

fn chunk_sk(blob: &str, n: u32) -> String {
    format!("BLOB#{blob}#{n:05}")
}

/// A JSON-shaped field: JSON text inline, or a reference to chunk items in the same partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Payload {
    Inline(String),
    Blob(BlobRef),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct BlobRef {
    /// A ULID naming the chunks: `BLOB#{blob}#{n:05}`.
    blob: String,
    chunks: u32,
    /// Total JSON bytes, checked on reading.
    bytes: u64,
}

/// Chunk items queued for one partition.
struct Blobs {
    pk: String,
    ttl: Option<i64>,
    chunks: Vec<ChunkItem>,
}

impl Blobs {
    fn new(pk: &str, ttl: Option<i64>) -> Self {
        Blobs {
            pk: pk.to_owned(),
            ttl,
            chunks: Vec::new(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct ChunkItem {
    #[serde(rename = "PK")]
    pk: String,
    #[serde(rename = "SK")]
    sk: String,
    part: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at_epoch: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct EventItem {
    #[serde(rename = "PK")]
    pk: String,
    #[serde(rename = "SK")]
    sk: String,
    id: String,
    name: String,
    data: Payload,
    ts: i64,
    user: Payload,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idempotency_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at_epoch: Option<i64>,
}

/// A coordination entry; TTL = `expires_at`.
#[derive(Debug, Serialize, Deserialize)]
struct EntryItem {
    #[serde(rename = "PK")]
    pk: String,
    #[serde(rename = "SK")]
    sk: String,
    /// The entry's id when `SK` could not hold it whole ([`bounded`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    value: String,
    version: u64,
    #[serde(with = "ts")]
    expires_at: DateTime<Utc>,
    expires_at_epoch: i64,
}

fn entry_pk(key: &str) -> String {
    bounded(format!("KV#{key}"), MAX_PARTITION_KEY)
}

fn entry_sk(id: &str) -> String {
    bounded(format!("E#{id}"), MAX_SORT_KEY)
}

/// The condition expression for `expect` at `now`, if any.
fn entry_condition(expr: &mut Expr, expect: Expect, now: DateTime<Utc>) -> Option<String> {
    let expires = |expr: &mut Expr| {
        (
            expr.name("expires_at"),
            expr.value("now", AttributeValue::S(ts_string(now))),
        )
    };
    match expect {
        Expect::Any => None,
        Expect::Absent => {
            let (expires_at, now) = expires(expr);
            let pk = expr.name("PK");
            Some(format!(
                "attribute_not_exists({pk}) OR {expires_at} <= {now}"
            ))
        }
        Expect::Version(v) => {
            let (expires_at, now) = expires(expr);
            let version = expr.name("version");
            let v = expr.value("v", AttributeValue::N(v.to_string()));
            Some(format!("{version} = {v} AND {expires_at} > {now}"))
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct IdemItem {
    #[serde(rename = "PK")]
    pk: String,
    #[serde(rename = "SK")]
    sk: String,
    event_id: String,
    #[serde(with = "ts")]
    expires_at: DateTime<Utc>,
    expires_at_epoch: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct RunItem {
    #[serde(rename = "PK")]
    pk: String,
    #[serde(rename = "SK")]
    sk: String,
    #[serde(rename = "GSI1PK")]
    gsi1pk: String,
    #[serde(rename = "GSI1SK")]
    gsi1sk: String,
    #[serde(rename = "GSI2PK")]
    gsi2pk: String,
    #[serde(rename = "GSI2SK")]
    gsi2sk: String,
    #[serde(rename = "GSI3PK")]
    gsi3pk: String,
    #[serde(rename = "GSI3SK")]
    gsi3sk: String,
    run_id: String,
    function_id: String,
    event_id: String,
    status: RunStatus,
    #[serde(with = "ts")]
    started_at: DateTime<Utc>,
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    ended_at: Option<DateTime<Utc>>,
    event: Payload,
    /// The event's name, so a listing never reads the event copy (items written before it
    /// existed lack it: a listing then reads their event once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<Payload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<Payload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    progress: Option<Payload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replay_of: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replay_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at_epoch: Option<i64>,
}

/// The attributes of a run item a listing reads ([`SUMMARY_ATTRIBUTES`]).
#[derive(Debug, Deserialize)]
struct SummaryItem {
    #[serde(rename = "PK")]
    pk: String,
    run_id: String,
    function_id: String,
    event_id: String,
    #[serde(default)]
    event_name: Option<String>,
    status: RunStatus,
    #[serde(with = "ts")]
    started_at: DateTime<Utc>,
    #[serde(default, with = "ts::option")]
    ended_at: Option<DateTime<Utc>>,
    #[serde(default)]
    output: Option<Payload>,
    #[serde(default)]
    error: Option<Payload>,
    #[serde(default)]
    progress: Option<Payload>,
    #[serde(default)]
    replay_of: Option<String>,
    #[serde(default)]
    replay_from: Option<String>,
}

/// What `BatchGetItem` reads of a listed run (`output` only when asked): never the event.
const SUMMARY_ATTRIBUTES: [&str; 12] = [
    "PK",
    "run_id",
    "function_id",
    "event_id",
    "event_name",
    "status",
    "started_at",
    "ended_at",
    "error",
    "progress",
    "replay_of",
    "replay_from",
];

/// How many partitions the function and status indexes spread each key over. Every run of a
/// function, and every run that enters or leaves a status, writes that key: unsharded, one
/// partition (about 1,000 write units a second) would bound the whole stack. A run's entries
/// go to shard [`index_shard`]`(run_id)`; listings read every shard and merge them by run id.
pub const INDEX_SHARDS: u8 = 8;

/// The index shard of a run: the first byte of its id's SHA-256, modulo [`INDEX_SHARDS`]
/// (stable across versions: changing it would hide runs from listings).
pub fn index_shard(run_id: &str) -> u8 {
    Sha256::digest(run_id.as_bytes())[0] % INDEX_SHARDS
}

/// `FN#{function_id}#{shard}`.
fn gsi1pk(function_id: &str, shard: u8) -> String {
    let key = bounded(format!("FN#{function_id}"), MAX_PARTITION_KEY - 4);
    format!("{key}#{shard}")
}

/// `ST#{status}#{shard}`.
fn gsi2pk(status: RunStatus, shard: u8) -> String {
    format!("ST#{}#{shard}", status.as_str())
}

fn gsi3pk(event_id: &str) -> String {
    bounded(format!("EVR#{event_id}"), MAX_PARTITION_KEY)
}

#[derive(Debug, Serialize, Deserialize)]
struct StepItem {
    #[serde(rename = "PK")]
    pk: String,
    #[serde(rename = "SK")]
    sk: String,
    run_id: String,
    step_id: String,
    name: String,
    kind: StepKind,
    status: StepStatus,
    attempts: u32,
    seq: u32,
    #[serde(with = "ts")]
    planned_at: DateTime<Utc>,
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    started_at: Option<DateTime<Utc>>,
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    ended_at: Option<DateTime<Utc>>,
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    wake_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<Payload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<Payload>,
    /// The steps planned in the same write as this step's result, until each starts and has
    /// an item of its own ([`Store::record_step`]): JSON, a list of step records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at_epoch: Option<i64>,
}

impl StepItem {
    /// The steps this item's result planned ([`StepItem::next`]).
    fn planned(&self) -> StoreResult<Vec<StepRecord>> {
        match &self.next {
            None => Ok(Vec::new()),
            Some(next) => serde_json::from_str(next).map_err(|e| {
                corrupt(
                    &format!("steps planned by {}/{}", self.run_id, self.step_id),
                    e,
                )
            }),
        }
    }
}

/// Fixed-width RFC 3339 with nanoseconds: string order is time order.
fn ts_string(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

mod ts {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::ts_string(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }

    pub mod option {
        use chrono::{DateTime, Utc};
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|s| {
                    DateTime::parse_from_rfc3339(&s)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(serde::de::Error::custom)
                })
                .transpose()
        }
    }
}

/// Seconds since the epoch, rounded up: a TTL never fires before the instant it stands for.
fn epoch_ceil(t: DateTime<Utc>) -> i64 {
    t.timestamp() + i64::from(t.timestamp_subsec_nanos() > 0)
}

fn to_item<T: Serialize>(value: &T) -> StoreResult<Item> {
    serde_dynamo::to_item(value).map_err(|e| StoreError::Backend(format!("encoding item: {e}")))
}

fn from_item<T: DeserializeOwned>(what: &str, item: Item) -> StoreResult<T> {
    serde_dynamo::from_item(item).map_err(|e| corrupt(what, e))
}

fn av<T: Serialize + ?Sized>(value: &T) -> StoreResult<AttributeValue> {
    serde_dynamo::to_attribute_value(value)
        .map_err(|e| StoreError::Backend(format!("encoding attribute: {e}")))
}

// ---- expressions ----

/// Names and values of one request's expressions. DynamoDB refuses unused ones, so they are
/// added only where an expression uses them.
#[derive(Default)]
struct Expr {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expr {
    /// `#attr`, standing for the attribute (every name is aliased: `status` is reserved).
    fn name(&mut self, attr: &str) -> String {
        let alias = format!("#{attr}");
        self.names.insert(alias.clone(), attr.to_owned());
        alias
    }

    /// `:label`, standing for `value`.
    fn value(&mut self, label: &str, value: AttributeValue) -> String {
        let alias = format!(":{label}");
        self.values.insert(alias.clone(), value);
        alias
    }

    /// `#attr IN (:label0, :label1, ...)`.
    fn one_of(
        &mut self,
        attr: &str,
        label: &str,
        values: impl IntoIterator<Item = AttributeValue>,
    ) -> String {
        let name = self.name(attr);
        let list: Vec<String> = values
            .into_iter()
            .enumerate()
            .map(|(i, v)| self.value(&format!("{label}{i}"), v))
            .collect();
        format!("{name} IN ({})", list.join(", "))
    }
}

/// An `UpdateItem`: SET and REMOVE clauses and a condition (besides `attribute_exists(PK)`,
/// or with `create`, `attribute_not_exists(PK) OR` the condition: the write creates the item).
#[derive(Default)]
struct Update {
    expr: Expr,
    set: Vec<String>,
    remove: Vec<String>,
    condition: Option<String>,
    create: bool,
}

impl Update {
    /// SET unless the item has the attribute.
    fn set_if_absent(&mut self, attr: &str, value: AttributeValue) {
        let name = self.expr.name(attr);
        let value = self.expr.value(attr, value);
        self.set
            .push(format!("{name} = if_not_exists({name}, {value})"));
    }

    /// What a write that may create a step item sets on it (an existing item keeps its own).
    fn step_identity(&mut self, step: &StepRecord, ttl: i64) -> StoreResult<()> {
        self.set_if_absent("run_id", AttributeValue::S(step.run_id.clone()));
        self.set_if_absent("step_id", AttributeValue::S(step.step_id.clone()));
        self.set_if_absent("name", AttributeValue::S(step.name.clone()));
        self.set_if_absent("kind", av(&step.kind)?);
        self.set_if_absent("seq", av(&step.seq)?);
        self.set_if_absent("planned_at", AttributeValue::S(ts_string(step.planned_at)));
        self.set_if_absent("expires_at_epoch", AttributeValue::N(ttl.to_string()));
        Ok(())
    }

    fn set(&mut self, attr: &str, value: AttributeValue) {
        let name = self.expr.name(attr);
        let value = self.expr.value(attr, value);
        self.set.push(format!("{name} = {value}"));
    }

    /// SET when `Some`, REMOVE when `None`.
    fn set_or_remove(&mut self, attr: &str, value: Option<AttributeValue>) {
        match value {
            Some(value) => self.set(attr, value),
            None => {
                let name = self.expr.name(attr);
                self.remove.push(name);
            }
        }
    }

    /// `NOT (#status IN (final statuses))`: the step is not final.
    fn step_not_final(&mut self) -> StoreResult<String> {
        let finals = [
            StepStatus::Planned,
            StepStatus::Running,
            StepStatus::Completed,
            StepStatus::Failed,
            StepStatus::Sleeping,
            StepStatus::Waiting,
        ]
        .iter()
        .filter(|s| s.is_final())
        .map(av)
        .collect::<StoreResult<Vec<_>>>()?;
        Ok(format!(
            "NOT ({})",
            self.expr.one_of("status", "final", finals)
        ))
    }
}

// ---- errors ----

fn backend<E, R>(op: &str, e: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    match e.as_service_error() {
        Some(service) => service_backend(op, service),
        None => StoreError::Backend(format!("DynamoDB {op}: {}", error_chain(&e))),
    }
}

/// An error DynamoDB answered with: its code and message (not the whole raw response).
fn service_backend(op: &str, e: &impl ProvideErrorMetadata) -> StoreError {
    StoreError::Backend(format!(
        "DynamoDB {op}: {}: {}",
        e.code().unwrap_or("error"),
        e.message().unwrap_or("(no message)")
    ))
}

/// `error: cause: cause ...`, for errors that never reached DynamoDB (connection, timeout).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn build_error(e: impl fmt::Display) -> StoreError {
    StoreError::Backend(format!("building a DynamoDB request: {e}"))
}

fn corrupt(what: &str, e: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn error_code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<&str> {
    e.as_service_error().and_then(|e| e.code())
}

fn condition_failed<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    error_code(e) == Some("ConditionalCheckFailedException")
}

/// A conditional write's answer: true when applied, false when its condition failed.
fn applied<T, E, R>(op: &str, result: Result<T, SdkError<E, R>>) -> StoreResult<bool>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    match result {
        Ok(_) => Ok(true),
        Err(e) if condition_failed(&e) => Ok(false),
        Err(e) => Err(backend(op, e)),
    }
}

// ---- listing ----

/// One index partition read newest first, a page at a time.
struct Source {
    index: &'static str,
    pk: String,
    /// Status filter (GSI1 only) and time window, as a `FilterExpression`.
    status: Option<RunStatus>,
    after: Option<DateTime<Utc>>,
    before: Option<DateTime<Utc>>,
    cursor: Option<String>,
    page: i32,
    /// Run ids read and not yet taken, newest first.
    buffered: VecDeque<String>,
    start: Option<Item>,
    exhausted: bool,
}

impl Source {
    /// Reads pages until a run id is buffered or the partition is exhausted.
    async fn fill(&mut self, store: &DynamoStore) -> StoreResult<()> {
        while self.buffered.is_empty() && !self.exhausted {
            let mut expr = Expr::default();
            let pk_name = expr.name(&format!("{}PK", self.index));
            let pk_value = expr.value("pk", AttributeValue::S(self.pk.clone()));
            let mut key_condition = format!("{pk_name} = {pk_value}");
            if let Some(cursor) = &self.cursor {
                let sk_name = expr.name(&format!("{}SK", self.index));
                let cursor = expr.value("cursor", AttributeValue::S(cursor.clone()));
                key_condition.push_str(&format!(" AND {sk_name} < {cursor}"));
            }
            let mut filters = Vec::new();
            if let Some(status) = self.status {
                let name = expr.name("status");
                let value = expr.value("status", av(&status)?);
                filters.push(format!("{name} = {value}"));
            }
            if let Some(after) = self.after {
                let name = expr.name("started_at");
                let value = expr.value("after", AttributeValue::S(ts_string(after)));
                filters.push(format!("{name} > {value}"));
            }
            if let Some(before) = self.before {
                let name = expr.name("started_at");
                let value = expr.value("before", AttributeValue::S(ts_string(before)));
                filters.push(format!("{name} < {value}"));
            }
            let out = store
                .client
                .query()
                .table_name(&store.table)
                .index_name(self.index)
                .key_condition_expression(key_condition)
                .set_filter_expression((!filters.is_empty()).then(|| filters.join(" AND ")))
                .set_expression_attribute_names(Some(expr.names))
                .set_expression_attribute_values(Some(expr.values))
                .scan_index_forward(false)
                .limit(self.page)
                .set_exclusive_start_key(self.start.take())
                .send()
                .await
                .map_err(|e| backend("Query (index)", e))?;
            self.start = out.last_evaluated_key().cloned();
            self.exhausted = self.start.is_none();
            let sk_attr = format!("{}SK", self.index);
            for item in out.items() {
                match item.get(&sk_attr) {
                    Some(AttributeValue::S(run_id)) => self.buffered.push_back(run_id.clone()),
                    _ => return Err(corrupt(self.index, format!("entry without {sk_attr}"))),
                }
            }
        }
        Ok(())
    }
}

fn matches(run: &RunSummary, query: &RunQuery) -> bool {
    query.matches(run) && query.cursor.as_ref().is_none_or(|c| run.run_id < *c)
}

// ---- the contract ----

#[async_trait]
impl Store for DynamoStore {
    fn backend(&self) -> &'static str {
        "dynamodb"
    }

    async fn claim_idempotency_id(
        &self,
        idempotency_id: &str,
        event_id: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<Option<String>> {
        let item = to_item(&IdemItem {
            pk: idem_pk(idempotency_id),
            sk: IDEM_SK.to_owned(),
            event_id: event_id.to_owned(),
            expires_at,
            expires_at_epoch: epoch_ceil(expires_at),
        })?;
        // Free, or held by a claim that has expired at `now`; a failed condition returns the
        // item that holds the claim, read atomically with the check.
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk) OR #expires_at <= :now")
            .expression_attribute_names("#pk", "PK")
            .expression_attribute_names("#expires_at", "expires_at")
            .expression_attribute_values(":now", AttributeValue::S(ts_string(now)))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let held = match put {
            Ok(_) => return Ok(None),
            Err(SdkError::ServiceError(e)) => match e.into_err() {
                PutItemError::ConditionalCheckFailedException(failed) => failed.item,
                other => return Err(service_backend("PutItem", &other)),
            },
            Err(e) => return Err(backend("PutItem", e)),
        };
        let held = match held {
            Some(item) => item,
            // A DynamoDB that does not return the item: read the holder. The claim was
            // unexpired at the check, and an item is never deleted before its TTL.
            None => self
                .get_item(&idem_pk(idempotency_id), IDEM_SK)
                .await?
                .ok_or_else(|| {
                    StoreError::Backend(format!(
                        "idempotency claim {idempotency_id:?} refused, but no claim found"
                    ))
                })?,
        };
        let held: IdemItem = from_item(&format!("idempotency claim {idempotency_id}"), held)?;
        Ok(Some(held.event_id))
    }

    async fn put_event(&self, event: &EventRecord) -> StoreResult<bool> {
        let pk = event_pk(&event.id);
        let ttl = Some(self.ttl_after(Utc::now()));
        let mut blobs = Blobs::new(&pk, ttl);
        let what = |field: &str| format!("event {} {field}", event.id);
        let item = to_item(&EventItem {
            data: self.payload(&what("data"), &event.data, &mut blobs)?,
            user: self.payload(&what("user"), &event.user, &mut blobs)?,
            pk,
            sk: EVENT_SK.to_owned(),
            id: event.id.clone(),
            name: event.name.clone(),
            ts: event.ts,
            v: event.v.clone(),
            idempotency_id: event.idempotency_id.clone(),
            expires_at_epoch: ttl,
        })?;
        self.with_blobs(&blobs, || self.put_if_absent(item)).await
    }

    async fn get_event(&self, event_id: &str) -> StoreResult<Option<EventRecord>> {
        let pk = event_pk(event_id);
        let Some(item) = self.get_item(&pk, EVENT_SK).await? else {
            return Ok(None);
        };
        let what = |field: &str| format!("event {event_id} {field}");
        let item: EventItem = from_item(&what("item"), item)?;
        Ok(Some(EventRecord {
            data: self.load(&pk, &what("data"), &item.data).await?,
            user: self.load(&pk, &what("user"), &item.user).await?,
            id: item.id,
            name: item.name,
            ts: item.ts,
            v: item.v,
            idempotency_id: item.idempotency_id,
        }))
    }

    async fn create_run(&self, run: &RunRecord) -> StoreResult<bool> {
        let pk = run_pk(&run.run_id);
        let ttl = self.run_ttl(run.status, run.ended_at);
        let mut blobs = Blobs::new(&pk, ttl.or(Some(self.live_ttl())));
        let what = |field: &str| format!("run {} {field}", run.run_id);
        let shard = index_shard(&run.run_id);
        let item = to_item(&RunItem {
            event: self.payload(&what("event"), &run.event, &mut blobs)?,
            event_name: Some(run.event.name.clone()),
            output: self.opt_payload(&what("output"), run.output.as_ref(), &mut blobs)?,
            error: self.opt_payload(&what("error"), run.error.as_ref(), &mut blobs)?,
            progress: self.opt_payload(&what("progress"), run.progress.as_ref(), &mut blobs)?,
            pk,
            sk: RUN_SK.to_owned(),
            gsi1pk: gsi1pk(&run.function_id, shard),
            gsi1sk: bounded(run.run_id.clone(), MAX_SORT_KEY),
            gsi2pk: gsi2pk(run.status, shard),
            gsi2sk: bounded(run.run_id.clone(), MAX_SORT_KEY),
            gsi3pk: gsi3pk(&run.event_id),
            gsi3sk: bounded(run.run_id.clone(), MAX_SORT_KEY),
            run_id: run.run_id.clone(),
            function_id: run.function_id.clone(),
            event_id: run.event_id.clone(),
            status: run.status,
            started_at: run.started_at,
            ended_at: run.ended_at,
            replay_of: run.replay_of.clone(),
            replay_from: run.replay_from.clone(),
            expires_at_epoch: ttl,
        })?;
        self.with_blobs(&blobs, || self.put_if_absent(item)).await
    }

    async fn get_run(&self, run_id: &str) -> StoreResult<Option<RunRecord>> {
        let Some(item) = self.get_item(&run_pk(run_id), RUN_SK).await? else {
            return Ok(None);
        };
        let item: RunItem = from_item(&format!("run {run_id}"), item)?;
        self.run_record(item).await.map(Some)
    }

    async fn transition_run(&self, run_id: &str, t: &RunTransition) -> StoreResult<bool> {
        if t.from.is_empty() {
            return Ok(false);
        }
        let pk = run_pk(run_id);
        let ttl = self.run_ttl(t.to, t.ended_at);
        let mut blobs = Blobs::new(&pk, ttl.or(Some(self.live_ttl())));
        let what = |field: &str| format!("run {run_id} {field}");
        let output = self.opt_payload(&what("output"), t.output.as_ref(), &mut blobs)?;
        let error = self.opt_payload(&what("error"), t.error.as_ref(), &mut blobs)?;

        let mut update = Update::default();
        update.set("status", av(&t.to)?);
        update.set(
            "GSI2PK",
            AttributeValue::S(gsi2pk(t.to, index_shard(run_id))),
        );
        update.set_or_remove(
            "ended_at",
            t.ended_at.map(|e| AttributeValue::S(ts_string(e))),
        );
        update.set_or_remove("output", output.as_ref().map(av).transpose()?);
        update.set_or_remove("error", error.as_ref().map(av).transpose()?);
        update.set_or_remove(TTL_ATTRIBUTE, ttl.map(|s| AttributeValue::N(s.to_string())));
        let from = t.from.iter().map(av).collect::<StoreResult<Vec<_>>>()?;
        update.condition = Some(update.expr.one_of("status", "from", from));

        self.with_blobs(&blobs, || self.update_if(&pk, RUN_SK, update))
            .await
    }

    async fn set_progress(&self, run_id: &str, progress: &Progress) -> StoreResult<bool> {
        let pk = run_pk(run_id);
        let mut blobs = Blobs::new(&pk, Some(self.live_ttl()));
        let payload = self.payload(&format!("run {run_id} progress"), progress, &mut blobs)?;
        let mut update = Update::default();
        update.set("progress", av(&payload)?);
        let terminal = RunStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .map(|s| av(&s))
            .collect::<StoreResult<Vec<_>>>()?;
        update.condition = Some(format!(
            "NOT ({})",
            update.expr.one_of("status", "terminal", terminal)
        ));
        self.with_blobs(&blobs, || self.update_if(&pk, RUN_SK, update))
            .await
    }

    async fn list_runs(&self, query: &RunQuery) -> StoreResult<RunPage> {
        let limit = page_size(query.limit);
        let page = i32::try_from(limit + 1).unwrap_or(i32::MAX).min(1000);
        let source = |index: &'static str, pk: String, status: Option<RunStatus>| Source {
            index,
            pk,
            status,
            after: query.started_after,
            before: query.started_before,
            cursor: query.cursor.clone(),
            page,
            buffered: VecDeque::new(),
            start: None,
            exhausted: false,
        };
        // Every shard of the index partition (or partitions) the query reads.
        let shards = 0..INDEX_SHARDS;
        let mut sources: Vec<Source> = match (&query.function_id, query.status) {
            (Some(function_id), status) => shards
                .map(|shard| source("GSI1", gsi1pk(function_id, shard), status))
                .collect(),
            (None, Some(status)) => shards
                .map(|shard| source("GSI2", gsi2pk(status, shard), None))
                .collect(),
            (None, None) => RunStatus::ALL
                .into_iter()
                .flat_map(|status| {
                    shards
                        .clone()
                        .map(move |shard| source("GSI2", gsi2pk(status, shard), None))
                })
                .collect(),
        };

        // Merge the sources newest first; confirm each candidate against a consistent read
        // (an index may lag on AWS) until one run more than the page is found.
        let mut runs: Vec<ListedRun> = Vec::new();
        let mut seen = HashSet::new();
        while runs.len() <= limit {
            let wanted = limit + 1 - runs.len();
            let mut candidates = Vec::new();
            while candidates.len() < wanted {
                futures::future::try_join_all(sources.iter_mut().map(|s| s.fill(self))).await?;
                let newest = sources
                    .iter_mut()
                    .filter(|s| !s.buffered.is_empty())
                    .max_by(|a, b| a.buffered[0].cmp(&b.buffered[0]));
                let Some(newest) = newest else { break };
                let run_id = newest.buffered.pop_front().expect("not empty");
                if seen.insert(run_id.clone()) {
                    candidates.push(run_id);
                }
            }
            if candidates.is_empty() {
                break;
            }
            let mut found = self.summaries(&candidates, query.with_output).await?;
            runs.extend(
                candidates
                    .iter()
                    .filter_map(|id| found.remove(id))
                    .filter(|run| run.as_ref().map_or(true, |run| matches(run, query))),
            );
        }
        Ok(RunPage::from_overfetch(runs, limit))
    }

    async fn runs_for_event(&self, event_id: &str) -> StoreResult<Vec<RunSummary>> {
        let mut run_ids = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name("GSI3")
                .key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", "GSI3PK")
                .expression_attribute_values(":pk", AttributeValue::S(gsi3pk(event_id)))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| backend("Query (GSI3)", e))?;
            for item in out.items() {
                if let Some(AttributeValue::S(run_id)) = item.get("GSI3SK") {
                    run_ids.push(run_id.clone());
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        let mut found = self.summaries(&run_ids, true).await?;
        let mut runs: Vec<RunSummary> = run_ids
            .iter()
            .filter_map(|id| found.remove(id).and_then(Result::ok))
            .filter(|run| run.event_id == event_id)
            .collect();
        runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        Ok(runs)
    }

    async fn run_with_journal(
        &self,
        run_id: &str,
    ) -> StoreResult<Option<(RunRecord, Vec<StepRecord>)>> {
        // The run's partition sorts its chunks (`BLOB#…`) before the run (`RUN`) and its steps
        // (`STEP#…`) after it: one query from `RUN` on reads the run and every step.
        let mut items = self
            .query_keys(&run_pk(run_id), SortKeys::From(RUN_SK), None)
            .await?;
        fn sort_key(item: &Item) -> &str {
            item.get("SK")
                .and_then(|sk| sk.as_s().ok())
                .map_or("", String::as_str)
        }
        let Some(at) = items.iter().position(|item| sort_key(item) == RUN_SK) else {
            return Ok(None);
        };
        let run: RunItem = from_item(&format!("run {run_id}"), items.remove(at))?;
        items.retain(|item| sort_key(item).starts_with(STEP_PREFIX));
        let journal = self.journal_of(run_id, items).await?;
        Ok(Some((self.run_record(run).await?, journal)))
    }

    async fn journal(&self, run_id: &str) -> StoreResult<Vec<StepRecord>> {
        let items = self
            .query_partition(&run_pk(run_id), STEP_PREFIX, None)
            .await?;
        self.journal_of(run_id, items).await
    }

    async fn get_step(&self, run_id: &str, step_id: &str) -> StoreResult<Option<StepRecord>> {
        let Some(item) = self.get_item(&run_pk(run_id), &step_sk(step_id)).await? else {
            return Ok(None);
        };
        let item: StepItem = from_item(&format!("step {run_id}/{step_id}"), item)?;
        self.step_record(item).await.map(Some)
    }

    async fn plan_step(&self, step: &StepRecord) -> StoreResult<bool> {
        let pk = run_pk(&step.run_id);
        let mut blobs = Blobs::new(&pk, Some(self.live_ttl()));
        let what = |field: &str| format!("step {}/{} {field}", step.run_id, step.step_id);
        let item = to_item(&StepItem {
            output: self.opt_payload(&what("output"), step.output.as_ref(), &mut blobs)?,
            error: self.opt_payload(&what("error"), step.error.as_ref(), &mut blobs)?,
            pk,
            sk: step_sk(&step.step_id),
            run_id: step.run_id.clone(),
            step_id: step.step_id.clone(),
            name: step.name.clone(),
            kind: step.kind,
            status: step.status,
            attempts: step.attempts,
            seq: step.seq,
            planned_at: step.planned_at,
            started_at: step.started_at,
            ended_at: step.ended_at,
            wake_at: step.wake_at,
            next: None,
            expires_at_epoch: Some(self.live_ttl()),
        })?;
        self.with_blobs(&blobs, || self.put_if_absent(item)).await
    }

    async fn begin_attempt(
        &self,
        step: &StepRecord,
        attempt: u32,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut update = Update {
            create: true,
            ..Update::default()
        };
        update.step_identity(step, self.live_ttl())?;
        update.set("status", av(&StepStatus::Running)?);
        let attempts = update.expr.name("attempts");
        let n = update.expr.value("attempt", av(&attempt)?);
        update.set.push(format!("{attempts} = {n}"));
        update.set_if_absent("started_at", AttributeValue::S(ts_string(at)));
        let not_final = update.step_not_final()?;
        update.condition = Some(format!("{not_final} AND {attempts} <= {n}"));
        self.update_if(&run_pk(&step.run_id), &step_sk(&step.step_id), update)
            .await
    }

    async fn retry_step(
        &self,
        step: &StepRecord,
        attempt: u32,
        error: &ErrorInfo,
        next_at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let (run_id, step_id) = (&step.run_id, &step.step_id);
        let pk = run_pk(run_id);
        let mut blobs = Blobs::new(&pk, Some(self.live_ttl()));
        let error = self.payload(&format!("step {run_id}/{step_id} error"), error, &mut blobs)?;
        let mut update = Update {
            create: true,
            ..Update::default()
        };
        update.step_identity(step, self.live_ttl())?;
        if let Some(started) = step.started_at {
            update.set_if_absent("started_at", AttributeValue::S(ts_string(started)));
        }
        update.set("status", av(&StepStatus::Planned)?);
        update.set("error", av(&error)?);
        update.set("wake_at", AttributeValue::S(ts_string(next_at)));
        let not_final = update.step_not_final()?;
        let attempts = update.expr.name("attempts");
        let attempt = update.expr.value("attempt", av(&attempt)?);
        update
            .set
            .push(format!("{attempts} = if_not_exists({attempts}, {attempt})"));
        update.condition = Some(format!("{not_final} AND {attempts} = {attempt}"));
        let sk = step_sk(step_id);
        self.with_blobs(&blobs, || self.update_if(&pk, &sk, update))
            .await
    }

    async fn finish_step(
        &self,
        run_id: &str,
        step_id: &str,
        outcome: &StepOutcome,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let pk = run_pk(run_id);
        let mut blobs = Blobs::new(&pk, Some(self.live_ttl()));
        let what = |field: &str| format!("step {run_id}/{step_id} {field}");
        let mut update = Update::default();
        // The journaled result is exactly the outcome: an earlier attempt's error does not
        // linger on a completed step.
        match outcome {
            StepOutcome::Completed(output) => {
                let output = self.payload(&what("output"), output, &mut blobs)?;
                update.set("status", av(&StepStatus::Completed)?);
                update.set("output", av(&output)?);
                update.set_or_remove("error", None);
            }
            StepOutcome::Failed(error) => {
                let error = self.payload(&what("error"), error, &mut blobs)?;
                update.set("status", av(&StepStatus::Failed)?);
                update.set("error", av(&error)?);
                update.set_or_remove("output", None);
            }
        }
        update.set("ended_at", AttributeValue::S(ts_string(at)));
        update.condition = Some(update.step_not_final()?);
        let sk = step_sk(step_id);
        self.with_blobs(&blobs, || self.update_if(&pk, &sk, update))
            .await
    }

    async fn record_step(&self, step: &StepRecord, next: &[StepRecord]) -> StoreResult<bool> {
        let pk = run_pk(&step.run_id);
        let mut blobs = Blobs::new(&pk, Some(self.live_ttl()));
        let what = |field: &str| format!("step {}/{} {field}", step.run_id, step.step_id);
        let mut update = Update {
            create: true,
            ..Update::default()
        };
        update.step_identity(step, self.live_ttl())?;
        update.set("status", av(&step.status)?);
        let output = self.opt_payload(&what("output"), step.output.as_ref(), &mut blobs)?;
        update.set_or_remove("output", output.map(|o| av(&o)).transpose()?);
        let error = self.opt_payload(&what("error"), step.error.as_ref(), &mut blobs)?;
        update.set_or_remove("error", error.map(|e| av(&e)).transpose()?);
        update.set("attempts", av(&step.attempts)?);
        if let Some(started) = step.started_at {
            update.set_if_absent("started_at", AttributeValue::S(ts_string(started)));
        }
        update.set_or_remove(
            "ended_at",
            step.ended_at.map(|t| AttributeValue::S(ts_string(t))),
        );
        let next = (!next.is_empty())
            .then(|| serde_json::to_string(next))
            .transpose()
            .map_err(|e| corrupt(&what("next steps"), e))?;
        update.set_or_remove("next", next.map(AttributeValue::S));
        update.condition = Some(update.step_not_final()?);
        let sk = step_sk(&step.step_id);
        self.with_blobs(&blobs, || self.update_if(&pk, &sk, update))
            .await
    }

    async fn put_entry(
        &self,
        entry: &Entry,
        expect: Expect,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let sk = entry_sk(&entry.id);
        let item = to_item(&EntryItem {
            pk: entry_pk(&entry.key),
            id: (sk != format!("E#{}", entry.id)).then(|| entry.id.clone()),
            sk,
            value: serde_json::to_string(&entry.value).map_err(|e| corrupt("entry value", e))?,
            version: entry.version,
            expires_at: entry.expires_at,
            expires_at_epoch: epoch_ceil(entry.expires_at),
        })?;
        let mut expr = Expr::default();
        let condition = entry_condition(&mut expr, expect, now);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .set_condition_expression(condition)
            .set_expression_attribute_names((!expr.names.is_empty()).then_some(expr.names))
            .set_expression_attribute_values((!expr.values.is_empty()).then_some(expr.values))
            .send()
            .await;
        applied("PutItem", put)
    }

    async fn list_entries(
        &self,
        key: &str,
        prefix: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<Entry>> {
        let items = self
            .query_partition(&entry_pk(key), &entry_sk(prefix), None)
            .await?;
        let mut out = Vec::new();
        for item in items {
            let item: EntryItem = from_item(&format!("entry under {key}"), item)?;
            if item.expires_at <= now {
                continue;
            }
            if out.len() >= limit {
                break;
            }
            out.push(Entry {
                key: key.to_owned(),
                id: item
                    .id
                    .unwrap_or_else(|| item.sk.strip_prefix("E#").unwrap_or(&item.sk).to_owned()),
                value: serde_json::from_str(&item.value).map_err(|e| corrupt("entry value", e))?,
                version: item.version,
                expires_at: item.expires_at,
            });
        }
        Ok(out)
    }

    async fn delete_entry(
        &self,
        key: &str,
        id: &str,
        expect: Expect,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut expr = Expr::default();
        let pk = expr.name("PK");
        let exists = format!("attribute_exists({pk})");
        let condition = match entry_condition(&mut expr, expect, now) {
            Some(c) if expect != Expect::Absent => format!("{exists} AND ({c})"),
            Some(_) => return Ok(false),
            None => exists,
        };
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(self::key(&entry_pk(key), &entry_sk(id))))
            .condition_expression(condition)
            .set_expression_attribute_names(Some(expr.names))
            .set_expression_attribute_values((!expr.values.is_empty()).then_some(expr.values))
            .send()
            .await;
        applied("DeleteItem", out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_chunks_split_on_char_boundaries() {
        let client = Client::from_conf(
            aws_sdk_dynamodb::Config::builder()
                .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
                .build(),
        );
        let store = DynamoStore::new(client, "t").with_inline_limit(16);
        // Multi-byte characters straddling every chunk boundary.
        let value = serde_json::Value::String("é🎉".repeat(CHUNK_BYTES / 3));
        let mut blobs = Blobs::new("RUN#r", None);
        let payload = store.payload("x", &value, &mut blobs).unwrap();
        let text: String = blobs.chunks.iter().map(|c| c.part.as_str()).collect();
        assert_eq!(text, serde_json::to_string(&value).unwrap());
        let Payload::Blob(blob) = payload else {
            panic!("a large payload goes to chunks")
        };
        assert_eq!(blob.chunks as usize, blobs.chunks.len());
        assert!(blobs.chunks.len() >= 2);
        assert!(blobs.chunks.iter().all(|c| c.part.len() <= CHUNK_BYTES));
        assert_eq!(blobs.chunks[1].sk, chunk_sk(&blob.blob, 1));
    }

    #[test]
    fn timestamps_are_fixed_width() {
        let whole = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let fraction = DateTime::from_timestamp(1_700_000_000, 500_000_000).unwrap();
        assert_eq!(ts_string(whole).len(), ts_string(fraction).len());
        assert!(ts_string(whole) < ts_string(fraction));
        assert_eq!(epoch_ceil(whole), 1_700_000_000);
        assert_eq!(epoch_ceil(fraction), 1_700_000_001);
    }
}
