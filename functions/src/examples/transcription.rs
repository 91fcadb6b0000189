//! The transcription pipeline:
//!
//! - `transcribe-video` (on `video/uploaded`): download the video's audio reference,
//!   transcribe it with a Whisper-style API, save the transcript, record usage, and emit
//!   `video/transcription.completed`. 3 retries per step; at most 10 runs at once per creator.
//! - `generate-embeddings` (on `video/transcription.completed`): split the transcript into
//!   chunks of 500-1000 words overlapping by 100, embed them in batches of 20 (4 batches at a
//!   time, each batch a step of its own), store them.
//! - `batch-reprocess-embeddings` (on `video/reprocess.requested`): re-runs
//!   `generate-embeddings` for many videos as child runs (`invoke`), 5 at a time, and reports
//!   how many succeeded.
//!
//! Each of the first two records its failures in the app backend (a failure handler).
//!
//! ```text
//! curl -s localhost:8288/e/dev -d '{"name":"video/uploaded","data":{"video_id":"v1","creator_id":"c1"}}'
//! ```

use std::sync::Arc;
use std::time::Duration;

use baton::{Ctx, Error, Event, FailureData, Function, NewEvent, StepConfig, StepError};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::services::Services;

pub const UPLOADED: &str = "video/uploaded";
pub const COMPLETED: &str = "video/transcription.completed";
pub const REPROCESS: &str = "video/reprocess.requested";

/// Chunking: a chunk holds `CHUNK_WORDS` words (500-1000 after the last chunk is balanced),
/// consecutive chunks share `OVERLAP_WORDS`.
pub const CHUNK_WORDS: usize = 800;
pub const MIN_CHUNK_WORDS: usize = 500;
pub const MAX_CHUNK_WORDS: usize = 1000;
pub const OVERLAP_WORDS: usize = 100;
/// Chunks per embeddings call, and calls in flight per run.
pub const EMBED_BATCH: usize = 20;
pub const EMBED_PARALLELISM: usize = 4;
/// Child runs in flight per reprocess run.
pub const REPROCESS_PARALLELISM: usize = 5;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Uploaded {
    pub video_id: String,
    pub creator_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transcribed {
    pub video_id: String,
    pub creator_id: String,
    pub transcript_id: String,
    pub words: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Embedded {
    pub video_id: String,
    pub chunks: usize,
    pub batches: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Reprocess {
    pub videos: Vec<Transcribed>,
}

pub fn transcribe_video(services: Arc<Services>) -> Function {
    let failures = services.clone();
    Function::new("transcribe-video")
        .name("Transcribe an uploaded video")
        .trigger(UPLOADED)
        .retries(3)
        .concurrency(10, Some("data.creator_id"))
        .step(
            "download",
            StepConfig::default().timeout(Duration::from_secs(60)),
        )
        .step(
            "transcribe",
            StepConfig::default()
                .timeout(Duration::from_secs(600))
                .memory_mb(512),
        )
        .step("save-transcript", StepConfig::default())
        .step("record-usage", StepConfig::default())
        .failure_step("record-failure", StepConfig::default())
        .handler(move |ctx: Ctx, event: Event<Uploaded>| {
            let services = services.clone();
            async move { transcribe(ctx, event.data, services).await }
        })
        .on_failure(move |ctx: Ctx, event: Event<FailureData>| {
            let services = failures.clone();
            async move { record_failure(ctx, event.data, services).await }
        })
}

async fn transcribe(
    ctx: Ctx,
    video: Uploaded,
    services: Arc<Services>,
) -> Result<Transcribed, Error> {
    let app = services.app.clone();
    let path = format!("/videos/{}", video.video_id);
    let audio_url: String = ctx
        .step("download", |_| async move {
            let described: Value = app.get(&path).await?;
            described["audio_url"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| StepError::non_retriable("the video has no audio_url"))
        })
        .await?;
    ctx.progress(25, "audio downloaded").await?;

    let whisper = services.whisper.clone();
    let (text, seconds): (String, f64) = ctx
        .step("transcribe", |s| async move {
            let body = json!({"url": audio_url, "model": "whisper-1"});
            let out: Value = whisper
                .post("/v1/audio/transcriptions", &body, Some(&s.idempotency_key))
                .await?;
            let text = out["text"].as_str().unwrap_or_default().to_owned();
            Ok::<_, StepError>((text, out["duration"].as_f64().unwrap_or(0.0)))
        })
        .await?;
    ctx.progress(60, "transcribed").await?;

    let app = services.app.clone();
    let record = json!({"video_id": video.video_id, "text": text});
    let transcript_id: String = ctx
        .step("save-transcript", |s| async move {
            let saved: Value = app
                .post("/transcripts", &record, Some(&s.idempotency_key))
                .await?;
            Ok::<_, StepError>(saved["id"].as_str().unwrap_or_default().to_owned())
        })
        .await?;

    let app = services.app.clone();
    let usage =
        json!({"creator_id": video.creator_id, "video_id": video.video_id, "seconds": seconds});
    ctx.step("record-usage", |s| async move {
        app.post::<Value>("/usage", &usage, Some(&s.idempotency_key))
            .await
            .map(|_| ())
    })
    .await?;
    ctx.progress(90, "saved").await?;

    let done = Transcribed {
        video_id: video.video_id,
        creator_id: video.creator_id,
        transcript_id,
        words: text.split_whitespace().count(),
    };
    ctx.send_event(
        "emit-completed",
        vec![NewEvent::new(COMPLETED, json!(done))],
    )
    .await?;
    ctx.progress(100, "transcription completed").await?;
    Ok(done)
}

pub fn generate_embeddings(services: Arc<Services>) -> Function {
    let failures = services.clone();
    Function::new("generate-embeddings")
        .name("Embed a transcript")
        .trigger(COMPLETED)
        .retries(3)
        .step("load-transcript", StepConfig::default())
        .step(
            "embed",
            StepConfig::default().timeout(Duration::from_secs(120)),
        )
        .step("store-embeddings", StepConfig::default())
        .failure_step("record-failure", StepConfig::default())
        .handler(move |ctx: Ctx, event: Event<Transcribed>| {
            let services = services.clone();
            async move { embed(ctx, event.data, services).await }
        })
        .on_failure(move |ctx: Ctx, event: Event<FailureData>| {
            let services = failures.clone();
            async move { record_failure(ctx, event.data, services).await }
        })
}

async fn embed(ctx: Ctx, done: Transcribed, services: Arc<Services>) -> Result<Embedded, Error> {
    let app = services.app.clone();
    let path = format!("/transcripts/{}", done.transcript_id);
    // The transcript stays in the app backend; the journal keeps only the chunk texts the
    // embedding steps need.
    let text: String = ctx
        .step("load-transcript", |_| async move {
            let transcript: Value = app.get(&path).await?;
            Ok::<_, StepError>(transcript["text"].as_str().unwrap_or_default().to_owned())
        })
        .await?;
    let words: Vec<&str> = text.split_whitespace().collect();
    let chunks: Vec<String> = chunk_ranges(words.len())
        .into_iter()
        .map(|(start, end)| words[start..end].join(" "))
        .collect();
    let batches: Vec<Vec<String>> = chunks.chunks(EMBED_BATCH).map(<[_]>::to_vec).collect();
    let embeddings_api = services.embeddings.clone();
    let vectors: Vec<Vec<Vec<f64>>> = ctx
        .map("embed", batches.clone(), EMBED_PARALLELISM, |_, batch| {
            let api = embeddings_api.clone();
            async move {
                let out: Value = api
                    .post(
                        "/v1/embeddings",
                        &json!({"input": batch, "model": "embed-small"}),
                        None,
                    )
                    .await?;
                let data = out["data"].as_array().cloned().unwrap_or_default();
                if data.len() != batch.len() {
                    return Err(StepError::retriable(format!(
                        "asked for {} embeddings, got {}",
                        batch.len(),
                        data.len()
                    )));
                }
                Ok(data
                    .iter()
                    .map(|d| serde_json::from_value(d["embedding"].clone()).unwrap_or_default())
                    .collect())
            }
        })
        .await?;
    let count: usize = vectors.iter().map(Vec::len).sum();
    let app = services.app.clone();
    let record = json!({
        "video_id": done.video_id,
        "transcript_id": done.transcript_id,
        "chunks": count,
        "dimensions": vectors.first().and_then(|b| b.first()).map_or(0, Vec::len),
    });
    ctx.step("store-embeddings", |s| async move {
        app.post::<Value>("/embeddings", &record, Some(&s.idempotency_key))
            .await
            .map(|_| ())
    })
    .await?;
    Ok(Embedded {
        video_id: done.video_id,
        chunks: count,
        batches: batches.len(),
    })
}

/// Word ranges of the chunks of a text of `n` words: `CHUNK_WORDS` each, overlapping by
/// `OVERLAP_WORDS`; a short last chunk is merged into the one before when that stays within
/// `MAX_CHUNK_WORDS`, else it starts earlier so it has `MIN_CHUNK_WORDS`. A text shorter than
/// `MIN_CHUNK_WORDS` is one chunk.
pub fn chunk_ranges(n: usize) -> Vec<(usize, usize)> {
    if n == 0 {
        return Vec::new();
    }
    let stride = CHUNK_WORDS - OVERLAP_WORDS;
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let end = (start + CHUNK_WORDS).min(n);
        out.push((start, end));
        if end == n {
            break;
        }
        start += stride;
    }
    if out.len() > 1 {
        let (last_start, last_end) = out[out.len() - 1];
        if last_end - last_start < MIN_CHUNK_WORDS {
            let (prev_start, _) = out[out.len() - 2];
            if n - prev_start <= MAX_CHUNK_WORDS {
                out.pop();
                let last = out.len() - 1;
                out[last].1 = n;
            } else {
                let last = out.len() - 1;
                out[last].0 = n - MIN_CHUNK_WORDS;
            }
        }
    }
    out
}

pub fn batch_reprocess(_services: Arc<Services>) -> Function {
    Function::new("batch-reprocess-embeddings")
        .name("Re-embed many videos")
        .trigger(REPROCESS)
        .handler(|ctx: Ctx, event: Event<Reprocess>| async move {
            // One child run per video, at most REPROCESS_PARALLELISM at a time; branches are
            // cloned in item order so every replay gives each video the same step ids.
            let branches: Vec<(Ctx, Transcribed)> = event
                .data
                .videos
                .into_iter()
                .map(|v| (ctx.clone(), v))
                .collect();
            let results: Vec<Result<Embedded, Error>> = futures::stream::iter(branches)
                .map(|(branch, video)| async move {
                    branch
                        .invoke(
                            "reembed",
                            "generate-embeddings",
                            json!(video),
                            Duration::from_secs(3600),
                        )
                        .await
                })
                .buffered(REPROCESS_PARALLELISM)
                .collect()
                .await;
            let failed: Vec<String> = results
                .iter()
                .filter_map(|r| r.as_ref().err().map(|e| e.message.clone()))
                .collect();
            Ok::<_, Error>(json!({
                "videos": results.len(),
                "succeeded": results.len() - failed.len(),
                "failed": failed,
            }))
        })
}

async fn record_failure(
    ctx: Ctx,
    failure: FailureData,
    services: Arc<Services>,
) -> Result<(), Error> {
    let app = services.app.clone();
    let record = json!({
        "function_id": failure.function_id,
        "run_id": failure.run_id,
        "video_id": failure.event["data"]["video_id"],
        "error": failure.error,
    });
    ctx.step("record-failure", |s| async move {
        app.post::<Value>("/failures", &record, Some(&s.idempotency_key))
            .await
            .map(|_| ())
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_500_to_1000_words_overlapping_by_at_least_100() {
        for n in [
            500, 799, 800, 801, 1000, 1499, 1500, 1600, 1800, 2000, 2300, 5000, 12_345,
        ] {
            let ranges = chunk_ranges(n);
            assert_eq!(ranges.first().unwrap().0, 0, "n={n}");
            assert_eq!(
                ranges.last().unwrap().1,
                n,
                "n={n}: the text is covered to its end"
            );
            for (start, end) in &ranges {
                let len = end - start;
                assert!(
                    (MIN_CHUNK_WORDS..=MAX_CHUNK_WORDS).contains(&len),
                    "n={n}: chunk {start}..{end} has {len} words"
                );
            }
            for pair in ranges.windows(2) {
                let overlap = pair[0].1 as i64 - pair[1].0 as i64;
                assert!(
                    overlap >= OVERLAP_WORDS as i64,
                    "n={n}: {pair:?} overlap {overlap}"
                );
            }
        }
        assert_eq!(
            chunk_ranges(120),
            vec![(0, 120)],
            "a short text is one chunk"
        );
        assert!(chunk_ranges(0).is_empty());
    }
}
