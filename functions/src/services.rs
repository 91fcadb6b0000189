//! The outside services the example workloads call, over HTTP with reqwest: each has a base
//! URL and an optional API key from the environment (`BATON_{NAME}_URL`, `BATON_{NAME}_KEY`).
//!
//! Responses become step errors a retry policy understands:
//! - 429: retriable, not before its `Retry-After` (seconds; 1 s when absent);
//! - 5xx, timeouts, refused connections: retriable (the step's backoff);
//! - other 4xx: non-retriable (`ServiceRejected`), with the service's own message, so a bad
//!   video ends the run Failed with what the service said.

use std::time::Duration;

use baton::StepError;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The services of the examples. `baton dev` points them at the built-in fakes
/// ([`crate::fakes`]) unless their URLs are set.
#[derive(Debug, Clone)]
pub struct Services {
    /// The clip generation API (tasks, status, clips).
    pub clips: Service,
    /// A Whisper-style transcription API.
    pub whisper: Service,
    /// An embeddings API.
    pub embeddings: Service,
    /// An LLM chat API (outlines, scripts, transcript parsing).
    pub llm: Service,
    /// A text-to-speech API.
    pub tts: Service,
    /// The app's own backend: where results are stored and users notified.
    pub app: Service,
}

/// Every service's env name, as in `BATON_{NAME}_URL`.
pub const NAMES: [&str; 6] = ["CLIPS", "WHISPER", "EMBEDDINGS", "LLM", "TTS", "APP"];

impl Services {
    /// Each service from `BATON_{NAME}_URL` / `BATON_{NAME}_KEY`, else `{fallback}/{name}`
    /// (lowercase), e.g. the fakes' base URL.
    pub fn from_env(fallback: &str) -> Services {
        let get = |name: &str| {
            let base = std::env::var(format!("BATON_{name}_URL"))
                .unwrap_or_else(|_| format!("{fallback}/{}", name.to_lowercase()));
            let key = std::env::var(format!("BATON_{name}_KEY")).ok();
            Service::new(name, base, key)
        };
        Services {
            clips: get("CLIPS"),
            whisper: get("WHISPER"),
            embeddings: get("EMBEDDINGS"),
            llm: get("LLM"),
            tts: get("TTS"),
            app: get("APP"),
        }
    }

    /// Every service at `{base}/{name}` (the fakes' layout), without keys.
    pub fn at(base: &str) -> Services {
        let at = |name: &str| Service::new(name, format!("{base}/{}", name.to_lowercase()), None);
        Services {
            clips: at("CLIPS"),
            whisper: at("WHISPER"),
            embeddings: at("EMBEDDINGS"),
            llm: at("LLM"),
            tts: at("TTS"),
            app: at("APP"),
        }
    }

    /// Whether any service URL is configured in the environment.
    pub fn configured_in_env() -> bool {
        NAMES
            .iter()
            .any(|n| std::env::var_os(format!("BATON_{n}_URL")).is_some())
    }
}

/// One outside service.
#[derive(Debug, Clone)]
pub struct Service {
    name: String,
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

/// How long one call may take at most (Lambda's longest invocation); each step's own timeout is
/// the real bound.
const CALL_TIMEOUT: Duration = Duration::from_secs(900);

impl Service {
    pub fn new(name: &str, base: impl Into<String>, key: Option<String>) -> Service {
        Service {
            name: name.to_lowercase(),
            base: base.into().trim_end_matches('/').to_owned(),
            key,
            http: reqwest::Client::builder()
                .timeout(CALL_TIMEOUT)
                .build()
                .expect("a default HTTP client builds"),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST {base}{path}` with a JSON body. `idempotency_key` goes out as `Idempotency-Key`,
    /// so a retried step does not create a second task.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
        idempotency_key: Option<&str>,
    ) -> Result<T, StepError> {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        self.send(request).await
    }

    /// `PATCH {base}{path}` with a JSON body (updating one of the app's rows, say), with an
    /// `Idempotency-Key` as [`Service::post`].
    pub async fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
        idempotency_key: Option<&str>,
    ) -> Result<T, StepError> {
        let mut request = self.http.patch(format!("{}{path}", self.base)).json(body);
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        self.send(request).await
    }

    /// `GET {base}{path}`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, StepError> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        mut request: reqwest::RequestBuilder,
    ) -> Result<T, StepError> {
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| {
            StepError::retriable(format!("{} unreachable: {e}", self.name))
                .named("ServiceUnavailable")
        })?;
        let status = response.status();
        if status.is_success() {
            return response.json::<T>().await.map_err(|e| {
                StepError::retriable(format!("{} answered unreadable JSON: {e}", self.name))
                    .named("ServiceUnavailable")
            });
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or(body);
        let message = format!("{} answered {status}: {message}", self.name);
        Err(match status.as_u16() {
            429 => StepError::retry_after(retry_after.unwrap_or(Duration::from_secs(1)), message)
                .named("RateLimited"),
            500..=599 => StepError::retriable(message).named("ServiceUnavailable"),
            _ => StepError::non_retriable(message).named("ServiceRejected"),
        })
    }
}
