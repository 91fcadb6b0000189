//! The relay: how a step hosted on Vercel ([`baton::Host::Vercel`]) gets its messages. Vercel
//! functions cannot consume SQS, so the step's queue is consumed by a relay Lambda (the
//! generated `Relay{Function}{Step}Function` of template.yaml, binary `relay`) that posts each
//! batch, as Lambda received it (the `SqsEvent` JSON), to the step's Vercel function
//! (`crate::vercel::run_step`) and hands back that function's answer: the messages it
//! reports failed, or all of them when the call fails, times out, or is refused. SQS then
//! redelivers exactly those (`ReportBatchItemFailures`); after `maxReceiveCount` they go to the
//! step's dead-letter queue and the `dead-letters` Lambda fails the run, as for a Lambda step.
//!
//! Requests are signed: HMAC-SHA256 (hex) over `{timestamp}.{body}` with the shared secret
//! `BATON_RELAY_SECRET`, in [`SIGNATURE_HEADER`], the Unix time in [`TIMESTAMP_HEADER`]. The
//! step function refuses (401, nothing handled) a missing, wrong or altered signature and a
//! timestamp more than [`TOLERANCE`] away from its clock, so a captured request cannot be
//! replayed later; one replayed within the tolerance only delivers the same messages again,
//! which the engine treats as the duplicates SQS may send anyway. The signing and checking are
//! [`baton::webhook`]'s, the same as for webhooks.
//!
//! Configuration of the relay Lambda (template.yaml sets it):
//!
//! | variable | |
//! |---|---|
//! | `BATON_RELAY_URL` | the step's Vercel function, `https://{deployment}/api/step-{function}--{step}` |
//! | `BATON_RELAY_SECRET` | the shared secret (at least [`MIN_SECRET_LEN`] characters) |
//! | `BATON_RELAY_TIMEOUT_S` | how long to wait for the answer: the function's maxDuration + 10 s |

use std::time::Duration;

#[cfg(feature = "relay")]
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use baton::webhook::{SignatureError, WebhookSource};
use chrono::{DateTime, Utc};

/// The hex HMAC-SHA256 of `{timestamp}.{body}`.
pub const SIGNATURE_HEADER: &str = "x-baton-signature";
/// The Unix time (seconds) the relay signed at.
pub const TIMESTAMP_HEADER: &str = "x-baton-timestamp";
/// How far a signed timestamp may be from the step function's clock.
pub const TOLERANCE: Duration = baton::webhook::DEFAULT_TOLERANCE;
pub const SECRET_ENV: &str = "BATON_RELAY_SECRET";
pub const URL_ENV: &str = "BATON_RELAY_URL";
pub const TIMEOUT_ENV: &str = "BATON_RELAY_TIMEOUT_S";
/// The shortest secret accepted (the template's `RelaySecret` has the same minimum).
pub const MIN_SECRET_LEN: usize = 32;

/// The relay's signature scheme, as a webhook source: `{timestamp}.{body}`, [`TOLERANCE`].
pub fn signature_scheme() -> WebhookSource {
    WebhookSource::new("relay", "step")
        .signature_header(SIGNATURE_HEADER)
        .timestamp_header(TIMESTAMP_HEADER)
        .tolerance(TOLERANCE)
}

/// The headers signing `body` at `at`: `[(timestamp header, ts), (signature header, hex)]`.
pub fn sign(secret: &str, body: &[u8], at: DateTime<Utc>) -> [(&'static str, String); 2] {
    let ts = at.timestamp();
    [
        (TIMESTAMP_HEADER, ts.to_string()),
        (
            SIGNATURE_HEADER,
            baton::webhook::sign(secret.as_bytes(), Some(ts), body),
        ),
    ]
}

/// Checks a relayed request (`header` looks a header up by its lower-case name).
pub fn verify<'a>(
    secret: &str,
    header: impl Fn(&str) -> Option<&'a str>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), SignatureError> {
    signature_scheme().verify(secret.as_bytes(), header, body, now)
}

/// `BATON_RELAY_SECRET`, checked to be long enough.
#[cfg(feature = "lambda")]
pub fn secret_from_env() -> anyhow::Result<String> {
    use anyhow::bail;
    let secret = std::env::var(SECRET_ENV).unwrap_or_default();
    let secret = secret.trim();
    if secret.is_empty() {
        bail!(
            "{SECRET_ENV} is not set: the relay Lambda (template parameter RelaySecret) and the \
             Vercel step functions (project environment variable) must share it"
        );
    }
    if secret.len() < MIN_SECRET_LEN {
        bail!(
            "{SECRET_ENV} has {} characters; at least {MIN_SECRET_LEN} are required",
            secret.len()
        );
    }
    Ok(secret.to_owned())
}

#[cfg(feature = "relay")]
/// Where and how one relay delivers.
#[derive(Clone)]
pub struct RelayConfig {
    pub url: String,
    pub secret: String,
    /// How long to wait for the step function's answer (the invocation's remaining time may
    /// cut it shorter).
    pub timeout: Duration,
}

#[cfg(feature = "relay")]
impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("url", &self.url)
            .field("secret", &"redacted")
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[cfg(feature = "relay")]
impl RelayConfig {
    /// `BATON_RELAY_URL`, `BATON_RELAY_SECRET`, `BATON_RELAY_TIMEOUT_S`.
    pub fn from_env() -> anyhow::Result<Self> {
        use anyhow::{Context as _, bail};
        let url = std::env::var(URL_ENV).unwrap_or_default().trim().to_owned();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            bail!("{URL_ENV}={url:?} is not an http(s) URL (template.yaml sets it from VercelUrl)");
        }
        let timeout = std::env::var(TIMEOUT_ENV).unwrap_or_default();
        let timeout: u64 = timeout
            .trim()
            .parse()
            .with_context(|| format!("{TIMEOUT_ENV}={timeout:?} is not a number of seconds"))?;
        Ok(RelayConfig {
            url,
            secret: secret_from_env()?,
            timeout: Duration::from_secs(timeout),
        })
    }
}

#[cfg(feature = "relay")]
/// What one delivery did.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// The step function's status, `None` when no answer came (connection error, timeout).
    pub status: Option<u16>,
    /// What goes back to Lambda: the messages to leave on the queue.
    pub response: SqsBatchResponse,
}

#[cfg(feature = "relay")]
impl Delivery {
    pub fn failed_ids(&self) -> Vec<&str> {
        self.response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect()
    }
}

#[cfg(feature = "relay")]
/// Posts batches to one step function.
#[derive(Clone)]
pub struct Relay {
    client: reqwest::Client,
    config: RelayConfig,
}

#[cfg(feature = "relay")]
impl Relay {
    pub fn new(config: RelayConfig) -> Self {
        let client = reqwest::Client::builder()
            // A redirect would re-send the body to another URL: not something to follow.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a reqwest client with rustls builds");
        Relay { client, config }
    }

    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Delivers `event` signed now, waiting at most `timeout` (at most the configured one).
    pub async fn deliver(&self, event: &SqsEvent, timeout: Duration) -> Delivery {
        self.deliver_at(event, timeout, Utc::now()).await
    }

    /// [`Relay::deliver`], signed as of `at`.
    pub async fn deliver_at(
        &self,
        event: &SqsEvent,
        timeout: Duration,
        at: DateTime<Utc>,
    ) -> Delivery {
        let ids: Vec<String> = event
            .records
            .iter()
            .filter_map(|r| r.message_id.clone())
            .collect();
        if event.records.is_empty() {
            return Delivery::default();
        }
        let all_failed = |status: Option<u16>| {
            let mut response = SqsBatchResponse::default();
            for id in &ids {
                response.add_failure(id.clone());
            }
            Delivery { status, response }
        };
        let body = match serde_json::to_vec(event) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "the batch does not serialize; leaving it on the queue");
                return all_failed(None);
            }
        };
        let mut request = self
            .client
            .post(&self.config.url)
            .timeout(timeout.min(self.config.timeout))
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in sign(&self.config.secret, &body, at) {
            request = request.header(name, value);
        }
        let response = match request.body(body).send().await {
            Ok(response) => response,
            Err(e) => {
                let what = if e.is_timeout() {
                    "timed out"
                } else {
                    "failed"
                };
                tracing::warn!(url = %self.config.url, error = %e, messages = ids.len(), "the step function call {what}; the batch stays on the queue");
                return all_failed(None);
            }
        };
        let status = response.status().as_u16();
        let text = match response.text().await {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(status, error = %e, "the step function's answer was cut off; the batch stays on the queue");
                return all_failed(Some(status));
            }
        };
        if status != 200 {
            let level_error = status == 401 || status == 503;
            if level_error {
                // A refused signature or a missing secret: every delivery will fail until
                // the configuration is fixed.
                tracing::error!(status, body = %snippet(&text), "the step function refused the batch (check BATON_RELAY_SECRET on both sides and the clocks); it stays on the queue");
            } else {
                tracing::warn!(status, body = %snippet(&text), "the step function failed; the batch stays on the queue");
            }
            return all_failed(Some(status));
        }
        match serde_json::from_str::<SqsBatchResponse>(&text) {
            Ok(answer) => {
                // Only identifiers of this batch count (an unknown one would fail Lambda's
                // whole batch).
                let mut response = SqsBatchResponse::default();
                for failure in answer.batch_item_failures {
                    if ids.contains(&failure.item_identifier) {
                        response.add_failure(failure.item_identifier);
                    }
                }
                Delivery {
                    status: Some(status),
                    response,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, body = %snippet(&text), "the step function's answer is not a batch response; the batch stays on the queue");
                all_failed(Some(status))
            }
        }
    }
}

#[cfg(feature = "relay")]
fn snippet(text: &str) -> &str {
    let end = text.char_indices().nth(300).map_or(text.len(), |(i, _)| i);
    &text[..end]
}

#[cfg(all(test, feature = "relay"))]
mod tests {
    use aws_lambda_events::event::sqs::SqsMessage;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const SECRET: &str = "relay-secret-0123456789-0123456789";

    fn batch(ids: &[&str]) -> SqsEvent {
        let mut event = SqsEvent::default();
        for id in ids {
            let mut m = SqsMessage::default();
            m.message_id = Some((*id).to_owned());
            m.body = Some(format!("{{\"id\":\"{id}\"}}"));
            event.records.push(m);
        }
        event
    }

    /// A step function stand-in on 127.0.0.1: answers `answer` to a request whose signature
    /// checks out, 401 otherwise; counts the requests.
    async fn endpoint(answer: (u16, &'static str)) -> (String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .fallback(
                |State((calls, answer)): State<(Arc<AtomicUsize>, (u16, &'static str))>,
                 headers: HeaderMap,
                 body: axum::body::Bytes| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
                    if verify(SECRET, header, &body, Utc::now()).is_err() {
                        return (StatusCode::UNAUTHORIZED, "bad signature".to_owned());
                    }
                    (StatusCode::from_u16(answer.0).unwrap(), answer.1.to_owned())
                },
            )
            .with_state((calls.clone(), answer));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/step", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, calls)
    }

    fn relay(url: &str, secret: &str) -> Relay {
        Relay::new(RelayConfig {
            url: url.to_owned(),
            secret: secret.to_owned(),
            timeout: Duration::from_secs(30),
        })
    }

    #[tokio::test]
    async fn the_step_functions_failures_are_reported_and_only_this_batchs() {
        let (url, calls) = endpoint((
            200,
            r#"{"batchItemFailures":[{"itemIdentifier":"m2"},{"itemIdentifier":"not-ours"}]}"#,
        ))
        .await;
        let delivery = relay(&url, SECRET)
            .deliver(&batch(&["m1", "m2", "m3"]), Duration::from_secs(30))
            .await;
        assert_eq!(delivery.status, Some(200));
        assert_eq!(delivery.failed_ids(), ["m2"]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refused_failed_or_garbled_answer_leaves_the_whole_batch() {
        for (answer, status) in [
            ((500, "boom"), Some(500)),
            ((200, "not json"), Some(200)),
            ((503, "no secret"), Some(503)),
        ] {
            let (url, _) = endpoint(answer).await;
            let delivery = relay(&url, SECRET)
                .deliver(&batch(&["m1", "m2"]), Duration::from_secs(30))
                .await;
            assert_eq!(delivery.status, status, "{answer:?}");
            assert_eq!(delivery.failed_ids(), ["m1", "m2"], "{answer:?}");
        }
        // The wrong secret: the stand-in refuses it, and the relay keeps the batch.
        let (url, _) = endpoint((200, r#"{"batchItemFailures":[]}"#)).await;
        let delivery = relay(&url, "another-secret-0123456789-0123456789")
            .deliver(&batch(&["m1"]), Duration::from_secs(30))
            .await;
        assert_eq!(delivery.status, Some(401));
        assert_eq!(delivery.failed_ids(), ["m1"]);
        // Signed ten minutes ago: stale.
        let delivery = relay(&url, SECRET)
            .deliver_at(
                &batch(&["m1"]),
                Duration::from_secs(30),
                Utc::now() - chrono::Duration::minutes(10),
            )
            .await;
        assert_eq!(delivery.status, Some(401));
        assert_eq!(delivery.failed_ids(), ["m1"]);
    }

    #[tokio::test]
    async fn no_answer_in_time_or_nobody_listening_leaves_the_whole_batch() {
        // Accepts connections and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/step", silent.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            loop {
                let (socket, _) = silent.accept().await.unwrap();
                open.push(socket);
            }
        });
        let delivery = relay(&url, SECRET)
            .deliver(&batch(&["m1", "m2"]), Duration::from_millis(300))
            .await;
        assert_eq!(delivery.status, None);
        assert_eq!(delivery.failed_ids(), ["m1", "m2"]);
        held.abort();

        // A port nobody listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/step", closed.local_addr().unwrap());
        drop(closed);
        let delivery = relay(&url, SECRET)
            .deliver(&batch(&["m1"]), Duration::from_secs(5))
            .await;
        assert_eq!(delivery.status, None);
        assert_eq!(delivery.failed_ids(), ["m1"]);
    }

    #[test]
    fn signatures_cover_body_and_timestamp() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let body = br#"{"Records":[]}"#;
        let headers = sign(SECRET, body, at);
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(verify(SECRET, header, body, at), Ok(()));
        assert_eq!(
            verify(SECRET, header, br#"{"Records":[{}]}"#, at),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify(SECRET, header, body, at + chrono::Duration::seconds(301)),
            Err(SignatureError::Stale { .. })
        ));
        assert_eq!(
            verify("another-secret-0123456789-0123456789", header, body, at),
            Err(SignatureError::Mismatch)
        );
    }
}
