//! The transcription pipeline, as the course platform's write-up runs it on Inngest:
//!
//! - `transcribe-video` (on `video/transcribe.requested`): mark the video `transcribing`,
//!   download its audio reference, transcribe it with a Whisper-style API (25 MB a file at
//!   most, as Whisper takes), save the transcript, record usage, and emit
//!   `video/transcription.completed`. 3 retries; at most 10 runs at once per creator.
//! - `generate-embeddings` (on `video/transcription.completed`): mark the video `processing`,
//!   split the transcript into chunks of 500-1000 words overlapping by 100 and store them, mark
//!   it `embedding`, embed the chunks in batches of 20 (4 batches at a time, each batch a step
//!   of its own), store the embeddings, record usage, mark it `completed`. 2 retries.
//! - `batch-reprocess-embeddings` (on `video/embeddings.batch-reprocess`): re-runs
//!   `generate-embeddings` for many videos as child runs (`invoke`), 5 at a time, and reports
//!   how many succeeded.
//!
//! The first two have failure handlers (their own functions, with Inngest's default of 4
//! retries) that mark the video `failed` with the error, so the app's `videos` row goes
//! `transcribing` → `processing` → `embedding` → `completed`, or ends `failed`: never stuck.
//!
//! ```text
//! curl -s localhost:8288/e/dev -d '{"name":"video/transcribe.requested","data":{"video_id":"v1","creator_id":"c1","storage_path":"videos/c1/v1.mp4"}}'
//! ```

use std::sync::Arc;
use std::time::Duration;

use baton::prelude::*;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::services::Services;

pub const REQUESTED: &str = "video/transcribe.requested";
pub const COMPLETED: &str = "video/transcription.completed";
pub const REPROCESS: &str = "video/embeddings.batch-reprocess";

/// Whisper's upload limit: longer audio must be split before it is sent.
pub const WHISPER_MAX_BYTES: u64 = 25 * 1024 * 1024;
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

steps! {
    /// The steps of `transcribe-video`.
    pub const TRANSCRIBE_STEPS = [
        /// Sets the video's status in the app (used at each stage of both functions).
        UPDATE_STATUS = Step::new("update-status").timeout(Duration::from_secs(15)).memory_mb(128),
        DOWNLOAD = Step::new("download").timeout(Duration::from_secs(120)).memory_mb(512),
        /// Whisper on up to 25 MB of audio: minutes, not seconds.
        TRANSCRIBE = Step::new("transcribe").timeout(Duration::from_secs(600)).memory_mb(512),
        SAVE_TRANSCRIPT = Step::new("save-transcript").timeout(Duration::from_secs(30)),
        RECORD_USAGE = Step::new("record-usage").timeout(Duration::from_secs(15)).memory_mb(128),
    ];
}

steps! {
    /// The steps of `generate-embeddings`.
    pub const EMBEDDING_STEPS = [
        LOAD_TRANSCRIPT = Step::new("load-transcript").timeout(Duration::from_secs(30)),
        STORE_CHUNKS = Step::new("store-chunks").timeout(Duration::from_secs(60)),
        EMBED = Step::new("embed").timeout(Duration::from_secs(120)),
        STORE_EMBEDDINGS = Step::new("store-embeddings").timeout(Duration::from_secs(60)),
    ];
}

steps! {
    /// The failure handlers' step.
    pub const FAILURE_STEPS = [
        MARK_FAILED = Step::new("mark-failed").timeout(Duration::from_secs(15)).memory_mb(128),
    ];
}

/// `batch-reprocess-embeddings` runs `generate-embeddings` for one video.
pub const REEMBED: Invoke<Transcribed, Embedded> =
    Invoke::new("reembed", "generate-embeddings").timeout(Duration::from_secs(3600));

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TranscribeRequest {
    pub video_id: String,
    pub creator_id: String,
    /// Where the upload is stored (the app's storage).
    #[serde(default)]
    pub storage_path: Option<String>,
    #[serde(default)]
    pub original_filename: Option<String>,
    #[serde(default)]
    pub language: Option<String>,
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

/// Sets the video's row in the app: `status` and any other fields.
async fn set_video(
    services: &Services,
    video_id: &str,
    fields: Value,
    key: &str,
) -> Result<(), StepError> {
    services
        .app
        .patch::<Value>(&format!("/rows/videos/{video_id}"), &fields, Some(key))
        .await
        .map(drop)
}

pub fn transcribe_video(services: Arc<Services>) -> Function {
    Function::new("transcribe-video")
        .name("Transcribe an uploaded video")
        .trigger(REQUESTED)
        .retries(3)
        .concurrency(10, Some("data.creator_id"))
        .steps(TRANSCRIBE_STEPS)
        .failure_steps(FAILURE_STEPS)
        .handler_with(services.clone(), transcribe)
        .on_failure_with(services, mark_failed)
}

async fn transcribe(
    ctx: Ctx,
    event: Event<TranscribeRequest>,
    services: Arc<Services>,
) -> Result<Transcribed, Error> {
    let video = &event.data;
    ctx.step(UPDATE_STATUS, async |s| {
        let fields = json!({"status": "transcribing", "error": null});
        set_video(&services, &video.video_id, fields, &s.idempotency_key).await
    })
    .await?;
    ctx.progress(10, "downloading the audio");

    let audio_url: String = ctx
        .step(DOWNLOAD, async |_| {
            let described: Value = services
                .app
                .get(&format!("/videos/{}", video.video_id))
                .await?;
            let bytes = described["audio_bytes"].as_u64().unwrap_or(0);
            if bytes > WHISPER_MAX_BYTES {
                return Err(StepError::non_retriable(format!(
                    "the audio is {} MB, over Whisper's 25 MB limit: split it before transcribing",
                    bytes / (1024 * 1024)
                ))
                .named("AudioTooLarge"));
            }
            described["audio_url"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| StepError::non_retriable("the video has no audio_url"))
        })
        .await?;
    ctx.progress(25, "transcribing");

    let (text, seconds): (String, f64) = ctx
        .step(TRANSCRIBE, async |s| {
            let body = json!({"url": audio_url, "model": "whisper-1", "language": video.language});
            let out: Value = services
                .whisper
                .post("/v1/audio/transcriptions", &body, Some(&s.idempotency_key))
                .await?;
            let text = out["text"].as_str().unwrap_or_default().to_owned();
            Ok((text, out["duration"].as_f64().unwrap_or(0.0)))
        })
        .await?;
    ctx.progress(60, "saving the transcript");

    let transcript_id: String = ctx
        .step(SAVE_TRANSCRIPT, async |s| {
            let record = json!({"video_id": video.video_id, "text": text});
            let saved: Value = services
                .app
                .post("/transcripts", &record, Some(&s.idempotency_key))
                .await?;
            Ok(saved["id"].as_str().unwrap_or_default().to_owned())
        })
        .await?;

    ctx.step(RECORD_USAGE, async |s| {
        let usage = json!({"creator_id": video.creator_id, "video_id": video.video_id, "kind": "transcription", "seconds": seconds});
        services
            .app
            .post::<Value>("/usage", &usage, Some(&s.idempotency_key))
            .await
            .map(drop)
    })
    .await?;
    ctx.progress(90, "transcribed");

    let done = Transcribed {
        video_id: video.video_id.clone(),
        creator_id: video.creator_id.clone(),
        transcript_id,
        words: text.split_whitespace().count(),
    };
    // Chunking and embedding are their own function, started by this event.
    ctx.send_event(
        "emit-completed",
        vec![NewEvent::new(COMPLETED, json!(done))],
    )
    .await?;
    ctx.progress(100, "transcription completed");
    Ok(done)
}

pub fn generate_embeddings(services: Arc<Services>) -> Function {
    Function::new("generate-embeddings")
        .name("Chunk and embed a transcript")
        .trigger(COMPLETED)
        .retries(2)
        .step(UPDATE_STATUS)
        .steps(EMBEDDING_STEPS)
        .failure_steps(FAILURE_STEPS)
        .handler_with(services.clone(), embed)
        .on_failure_with(services, mark_failed)
}

async fn embed(
    ctx: Ctx,
    event: Event<Transcribed>,
    services: Arc<Services>,
) -> Result<Embedded, Error> {
    let done = &event.data;
    let status = async |status: &str| {
        ctx.step(UPDATE_STATUS, async |s| {
            let fields = json!({"status": status});
            set_video(&services, &done.video_id, fields, &s.idempotency_key).await
        })
        .await
    };
    status("processing").await?;
    // The transcript stays in the app backend; the journal keeps only the chunk texts the
    // embedding steps need.
    let text: String = ctx
        .step(LOAD_TRANSCRIPT, async |_| {
            let transcript: Value = services
                .app
                .get(&format!("/transcripts/{}", done.transcript_id))
                .await?;
            Ok(transcript["text"].as_str().unwrap_or_default().to_owned())
        })
        .await?;
    let words: Vec<&str> = text.split_whitespace().collect();
    let chunks: Vec<String> = chunk_ranges(words.len())
        .into_iter()
        .map(|(start, end)| words[start..end].join(" "))
        .collect();
    ctx.step(STORE_CHUNKS, async |s| {
        let record = json!({"video_id": done.video_id, "chunks": chunks.len()});
        services
            .app
            .post::<Value>("/chunks", &record, Some(&s.idempotency_key))
            .await
            .map(drop)
    })
    .await?;
    ctx.progress(30, format!("embedding {} chunks", chunks.len()));

    status("embedding").await?;
    let batches: Vec<Vec<String>> = chunks.chunks(EMBED_BATCH).map(<[_]>::to_vec).collect();
    let vectors: Vec<Vec<Vec<f64>>> = ctx
        .map(EMBED, &batches, EMBED_PARALLELISM, |_, batch| {
            embed_batch(&services, batch)
        })
        .await?;
    let count: usize = vectors.iter().map(Vec::len).sum();
    ctx.progress(80, "storing the embeddings");

    ctx.step(STORE_EMBEDDINGS, async |s| {
        let record = json!({
            "video_id": done.video_id,
            "transcript_id": done.transcript_id,
            "chunks": count,
            "dimensions": vectors.first().and_then(|b| b.first()).map_or(0, Vec::len),
        });
        services
            .app
            .post::<Value>("/embeddings", &record, Some(&s.idempotency_key))
            .await?;
        let usage = json!({"creator_id": done.creator_id, "video_id": done.video_id, "kind": "embeddings", "chunks": count});
        services
            .app
            .post::<Value>("/usage", &usage, Some(&format!("{}:usage", s.idempotency_key)))
            .await
            .map(drop)
    })
    .await?;
    status("completed").await?;
    ctx.progress(100, "embedded");
    Ok(Embedded {
        video_id: done.video_id.clone(),
        chunks: count,
        batches: batches.len(),
    })
}

/// One embeddings call for a batch of chunks.
async fn embed_batch(services: &Services, batch: &[String]) -> Result<Vec<Vec<f64>>, StepError> {
    let out: Value = services
        .embeddings
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

pub fn batch_reprocess() -> Function {
    Function::new("batch-reprocess-embeddings")
        .name("Re-embed many videos")
        .trigger(REPROCESS)
        .invokes(REEMBED)
        .handler(async |ctx: Ctx, event: Event<Reprocess>| {
            // One child run per video, at most REPROCESS_PARALLELISM at a time; branches are
            // cloned in item order so every replay gives each video the same step ids.
            let branches: Vec<(Ctx, Transcribed)> = event
                .data
                .videos
                .into_iter()
                .map(|v| (ctx.clone(), v))
                .collect();
            let results: Vec<Result<Embedded, Error>> = futures::stream::iter(branches)
                .map(|(branch, video)| async move { branch.invoke(REEMBED, &video).await })
                .buffered(REPROCESS_PARALLELISM)
                .collect()
                .await;
            let failed: Vec<&str> = results
                .iter()
                .filter_map(|r| r.as_ref().err().map(|e| e.message.as_str()))
                .collect();
            Ok::<_, Error>(json!({
                "videos": results.len(),
                "succeeded": results.len() - failed.len(),
                "failed": failed,
            }))
        })
}

/// Both failure handlers: the video is `failed`, with the error, and the failure is recorded.
async fn mark_failed(
    ctx: Ctx,
    event: Event<FailureData>,
    services: Arc<Services>,
) -> Result<(), Error> {
    let failure = &event.data;
    let video_id = failure.event["data"]["video_id"]
        .as_str()
        .unwrap_or_default();
    ctx.step(MARK_FAILED, async |s| {
        let error = format!("{}: {}", failure.error.name, failure.error.message);
        set_video(
            &services,
            video_id,
            json!({"status": "failed", "error": error}),
            &s.idempotency_key,
        )
        .await?;
        let record = json!({
            "function_id": failure.function_id,
            "run_id": failure.run_id,
            "video_id": video_id,
            "error": failure.error,
        });
        services
            .app
            .post::<Value>("/failures", &record, Some(&s.idempotency_key))
            .await
            .map(drop)
    })
    .await
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
