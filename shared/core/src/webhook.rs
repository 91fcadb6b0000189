//! Webhooks: an outside service's signed callback (`POST /v1/webhooks/{source}`) becomes the
//! event `{source}/{event}` with the body as its data, so a run waiting on that service goes
//! on. Sources are declared in the registry ([`crate::Registry::register_webhook`]); their
//! secrets come from the environment (`BATON_WEBHOOK_SECRET_{SOURCE}`, see
//! [`WebhookSource::secret_env`]), never from code.
//!
//! The signature is HMAC-SHA256, hex, in the source's signature header (a `sha256=` prefix,
//! as GitHub sends it, is accepted), over the raw body, or over `{timestamp}.{body}` when the
//! source sends a timestamp header (Unix seconds, as Stripe and Svix do): then a timestamp more
//! than the tolerance away from now is refused, so a captured request cannot be replayed
//! later. The comparison is constant-time ([`hmac::Mac::verify_slice`]).
//!
//! Replays within the tolerance: the event's id is derived from the signed material (a digest
//! of `{timestamp}.{body}`), so sending a captured request again, with any unsigned header
//! changed, stores nothing new (the idempotency window, 24 h, covers it; for a source without
//! timestamps, that window is the whole protection: prefer sources that sign a timestamp).

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Where a signature is expected when the source does not say.
pub const DEFAULT_SIGNATURE_HEADER: &str = "x-baton-signature";
/// How far a signed timestamp may be from now (default 5 minutes).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// One outside service that calls back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSource {
    /// The `{source}` of the path, and the first part of the event name.
    pub source: String,
    /// The event emitted is `{source}/{event}`.
    pub event: String,
    /// Header with the hex HMAC-SHA256 signature (lower case).
    pub signature_header: String,
    /// Header with the Unix time the source signed at; when set, it is required and signed.
    pub timestamp_header: Option<String>,
    /// Header with the source's delivery id: required when set, it becomes the event id, so
    /// the source's own retries of one callback (re-signed or not) start runs once. The id is
    /// not signed, so a signed request already seen under one delivery id is refused under
    /// another (409).
    pub id_header: Option<String>,
    pub tolerance: Duration,
}

/// Why a callback was refused (answered 401 with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing signature header {0}")]
    MissingSignature(String),
    #[error("the signature in {0} is not hex")]
    MalformedSignature(String),
    #[error("signature does not match the body")]
    Mismatch,
    #[error("missing timestamp header {0}")]
    MissingTimestamp(String),
    #[error("the timestamp in {0} is not a number of seconds")]
    MalformedTimestamp(String),
    #[error("timestamp {timestamp} is more than {tolerance_s} s away from now ({now})")]
    Stale {
        timestamp: i64,
        now: i64,
        tolerance_s: u64,
    },
}

impl WebhookSource {
    pub fn new(source: impl Into<String>, event: impl Into<String>) -> Self {
        WebhookSource {
            source: source.into(),
            event: event.into(),
            signature_header: DEFAULT_SIGNATURE_HEADER.to_owned(),
            timestamp_header: None,
            id_header: None,
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    pub fn signature_header(mut self, header: impl Into<String>) -> Self {
        self.signature_header = header.into().to_ascii_lowercase();
        self
    }

    pub fn timestamp_header(mut self, header: impl Into<String>) -> Self {
        self.timestamp_header = Some(header.into().to_ascii_lowercase());
        self
    }

    pub fn id_header(mut self, header: impl Into<String>) -> Self {
        self.id_header = Some(header.into().to_ascii_lowercase());
        self
    }

    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// The name of the event a callback becomes.
    pub fn event_name(&self) -> String {
        format!("{}/{}", self.source, self.event)
    }

    /// The environment variable holding this source's secret: `BATON_WEBHOOK_SECRET_` and the
    /// source in upper case, `-` as `_` (source `clip-service`: `BATON_WEBHOOK_SECRET_CLIP_SERVICE`).
    pub fn secret_env(&self) -> String {
        secret_env(&self.source)
    }

    /// Checks a callback: `header` looks a header up by its lower-case name.
    pub fn verify<'a>(
        &self,
        secret: &[u8],
        header: impl Fn(&str) -> Option<&'a str>,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), SignatureError> {
        let presented = header(&self.signature_header)
            .ok_or_else(|| SignatureError::MissingSignature(self.signature_header.clone()))?;
        let presented = presented.trim();
        let presented = presented.strip_prefix("sha256=").unwrap_or(presented);
        let presented = hex::decode(presented)
            .map_err(|_| SignatureError::MalformedSignature(self.signature_header.clone()))?;
        let timestamp = match &self.timestamp_header {
            None => None,
            Some(name) => {
                let value =
                    header(name).ok_or_else(|| SignatureError::MissingTimestamp(name.clone()))?;
                let ts: i64 = value
                    .trim()
                    .parse()
                    .map_err(|_| SignatureError::MalformedTimestamp(name.clone()))?;
                if ts.abs_diff(now.timestamp()) > self.tolerance.as_secs() {
                    return Err(SignatureError::Stale {
                        timestamp: ts,
                        now: now.timestamp(),
                        tolerance_s: self.tolerance.as_secs(),
                    });
                }
                Some(ts)
            }
        };
        mac(secret, timestamp, body)
            .verify_slice(&presented)
            .map_err(|_| SignatureError::Mismatch)
    }
}

impl WebhookSource {
    /// Hex SHA-256 of what the signature covers (`{timestamp}.{body}`, or the body): the same
    /// signed request always has the same digest, whatever unsigned headers come with it.
    /// Call after [`WebhookSource::verify`].
    pub fn signed_digest<'a>(
        &self,
        header: impl Fn(&str) -> Option<&'a str>,
        body: &[u8],
    ) -> String {
        let mut digest = Sha256::new();
        if let Some(ts) = self.timestamp_header.as_deref().and_then(header) {
            digest.update(format!("{}.", ts.trim()).as_bytes());
        }
        digest.update(body);
        hex::encode(digest.finalize())
    }
}

/// See [`WebhookSource::secret_env`].
pub fn secret_env(source: &str) -> String {
    format!(
        "BATON_WEBHOOK_SECRET_{}",
        source.to_ascii_uppercase().replace('-', "_")
    )
}

fn mac(secret: &[u8], timestamp: Option<i64>, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
    if let Some(ts) = timestamp {
        mac.update(format!("{ts}.").as_bytes());
    }
    mac.update(body);
    mac
}

/// The signature a source sends (hex), for senders and tests.
pub fn sign(secret: &[u8], timestamp: Option<i64>, body: &[u8]) -> String {
    hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    #[test]
    fn known_answer() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign(b"Jefe", None, b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signatures_and_timestamps_are_checked() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let plain = WebhookSource::new("clips", "task.updated");
        let body = br#"{"task_id":"t1"}"#;
        let good = sign(b"s3cret", None, body);
        let prefixed = format!("sha256={good}");
        assert_eq!(
            plain.verify(
                b"s3cret",
                headers(&[("x-baton-signature", &good)]),
                body,
                now
            ),
            Ok(())
        );
        assert_eq!(
            plain.verify(
                b"s3cret",
                headers(&[("x-baton-signature", &prefixed)]),
                body,
                now
            ),
            Ok(())
        );
        assert_eq!(
            plain.verify(
                b"other",
                headers(&[("x-baton-signature", &good)]),
                body,
                now
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            plain.verify(
                b"s3cret",
                headers(&[("x-baton-signature", &good)]),
                b"{}",
                now
            ),
            Err(SignatureError::Mismatch),
            "an altered body"
        );
        assert_eq!(
            plain.verify(b"s3cret", headers(&[]), body, now),
            Err(SignatureError::MissingSignature("x-baton-signature".into()))
        );
        assert_eq!(
            plain.verify(
                b"s3cret",
                headers(&[("x-baton-signature", "zz")]),
                body,
                now
            ),
            Err(SignatureError::MalformedSignature(
                "x-baton-signature".into()
            ))
        );

        let timed = plain.clone().timestamp_header("X-Clips-Timestamp");
        let ts = now.timestamp() - 100;
        let signed = sign(b"s3cret", Some(ts), body);
        let ts_s = ts.to_string();
        let ok = [
            ("x-baton-signature", signed.as_str()),
            ("x-clips-timestamp", ts_s.as_str()),
        ];
        assert_eq!(timed.verify(b"s3cret", headers(&ok), body, now), Ok(()));
        // The timestamp is signed: changing it breaks the signature.
        let later = (ts + 1).to_string();
        let moved = [
            ("x-baton-signature", signed.as_str()),
            ("x-clips-timestamp", later.as_str()),
        ];
        assert_eq!(
            timed.verify(b"s3cret", headers(&moved), body, now),
            Err(SignatureError::Mismatch)
        );
        // A replay after the tolerance is refused even with a valid signature.
        let late = now + chrono::Duration::seconds(301);
        assert!(matches!(
            timed.verify(b"s3cret", headers(&ok), body, late),
            Err(SignatureError::Stale { .. })
        ));
        assert_eq!(
            timed.verify(b"s3cret", headers(&ok[..1]), body, now),
            Err(SignatureError::MissingTimestamp("x-clips-timestamp".into()))
        );
        assert_eq!(
            secret_env("clip-service"),
            "BATON_WEBHOOK_SECRET_CLIP_SERVICE"
        );
    }
}
