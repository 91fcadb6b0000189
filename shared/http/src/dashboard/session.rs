//! Dashboard sessions and sign-in throttling, kept in the store's coordination entries so
//! every instance (every Lambda) agrees without other shared state.
//!
//! - A session is a random id. Its cookie is `{id}.{expires}.{hmac}` (HMAC-SHA256 keyed by
//!   the signing key's digest, so changing the key ends every session), and the id must also
//!   be listed in the store: signing out deletes it there, so a copied cookie dies with it.
//! - Failed sign-ins are counted per client (the last `X-Forwarded-For` hop, which API
//!   Gateway and proxies append; the direct peer otherwise) in a window: after
//!   [`MAX_SIGN_IN_FAILURES`] within [`SIGN_IN_WINDOW`], that client is answered 429 until the
//!   window ends.

use std::time::Duration;

use axum::http::{HeaderMap, header};
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::{Digest, Sha256};

use baton::engine::later;
use baton::error::StoreError;
use baton::model::{Entry, Expect};
use baton::store::Store;

/// The session cookie's name and lifetime.
pub const SESSION_COOKIE: &str = "baton_session";
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Failed sign-ins one client may make per window.
pub const MAX_SIGN_IN_FAILURES: u64 = 5;
pub const SIGN_IN_WINDOW: Duration = Duration::from_secs(15 * 60);

const SESSIONS: &str = "dashboard:sessions";
const FAILURES: &str = "dashboard:sign-in-failures";

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8; 32], message: &str) -> HmacSha256 {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message.as_bytes());
    mac
}

fn tag(key: &[u8; 32], id: &str, expires: i64) -> String {
    hex::encode(
        mac(key, &format!("baton-dashboard-session:{id}:{expires}"))
            .finalize()
            .into_bytes(),
    )
}

/// A session's cookie value.
pub fn token(key: &[u8; 32], id: &str, expires: i64) -> String {
    format!("{id}.{expires}.{}", tag(key, id, expires))
}

/// The session id of a well-signed, unexpired token (not yet checked against the store).
pub fn verify(key: &[u8; 32], token: &str, now: DateTime<Utc>) -> Option<String> {
    let mut parts = token.split('.');
    let (id, expires, presented) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let expires: i64 = expires.parse().ok()?;
    let now = now.timestamp();
    if expires <= now || expires > now + SESSION_TTL.as_secs() as i64 + 60 {
        return None;
    }
    let presented = hex::decode(presented).ok()?;
    mac(key, &format!("baton-dashboard-session:{id}:{expires}"))
        .verify_slice(&presented)
        .ok()
        .map(|()| id.to_owned())
}

/// The CSRF token of a session's forms.
pub fn csrf(key: &[u8; 32], session_id: &str) -> String {
    let tag = mac(key, &format!("baton-dashboard-csrf:{session_id}"))
        .finalize()
        .into_bytes();
    hex::encode(&tag[..16])
}

/// Starts a session: a random id, listed in the store until it expires. Returns the cookie
/// value.
pub async fn start(
    store: &dyn Store,
    key: &[u8; 32],
    now: DateTime<Utc>,
) -> Result<String, StoreError> {
    let id = format!("{:032x}", rand::random::<u128>());
    let expires = later(now, SESSION_TTL);
    let entry = Entry {
        key: SESSIONS.into(),
        id: id.clone(),
        value: json!({"started_at": now}),
        version: 1,
        expires_at: expires,
    };
    store.put_entry(&entry, Expect::Absent, now).await?;
    Ok(token(key, &id, expires.timestamp()))
}

/// Whether the session is still listed (not signed out).
pub async fn is_live(store: &dyn Store, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
    let found = store.list_entries(SESSIONS, id, now, 1).await?;
    Ok(found.first().is_some_and(|e| e.id == id))
}

/// Ends a session everywhere.
pub async fn end(store: &dyn Store, id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
    store.delete_entry(SESSIONS, id, Expect::Any, now).await?;
    Ok(())
}

/// The value of cookie `name`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Who is signing in, as far as the server can tell: the hop the nearest proxy appended to
/// `X-Forwarded-For`, else one bucket for direct callers (the local dev server).
fn client(headers: &HeaderMap) -> String {
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .last();
    let who = forwarded.unwrap_or("direct");
    // Hashed: the entry id stays short whatever the header holds.
    format!("c:{}", &hex::encode(Sha256::digest(who.as_bytes()))[..32])
}

/// When this client may try again, if it has used up its failed sign-ins.
pub async fn throttled(
    store: &dyn Store,
    headers: &HeaderMap,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let id = client(headers);
    let found = store.list_entries(FAILURES, &id, now, 1).await?;
    Ok(found
        .into_iter()
        .find(|e| e.id == id)
        .filter(|e| e.value["failures"].as_u64().unwrap_or(0) >= MAX_SIGN_IN_FAILURES)
        .map(|e| e.expires_at))
}

/// Counts a failed sign-in of this client (a versioned write, retried on a race).
pub async fn count_failure(
    store: &dyn Store,
    headers: &HeaderMap,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let id = client(headers);
    for _ in 0..8 {
        let current = store
            .list_entries(FAILURES, &id, now, 1)
            .await?
            .into_iter()
            .find(|e| e.id == id);
        let (entry, expect) = match current {
            Some(e) => {
                let failures = e.value["failures"].as_u64().unwrap_or(0) + 1;
                let expect = Expect::Version(e.version);
                (
                    Entry {
                        value: json!({"failures": failures}),
                        version: e.version + 1,
                        ..e
                    },
                    expect,
                )
            }
            None => (
                Entry {
                    key: FAILURES.into(),
                    id: id.clone(),
                    value: json!({"failures": 1}),
                    version: 1,
                    expires_at: later(now, SIGN_IN_WINDOW),
                },
                Expect::Absent,
            ),
        };
        if store.put_entry(&entry, expect, now).await? {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_expire() {
        let key = [7u8; 32];
        let now = Utc::now();
        let id = format!("{:032x}", 42u128);
        let good = token(&key, &id, now.timestamp() + 60);
        assert_eq!(verify(&key, &good, now), Some(id.clone()));
        // Expired, from another key, tampered, far-future, malformed.
        assert_eq!(
            verify(&key, &good, now + chrono::Duration::seconds(61)),
            None
        );
        assert_eq!(verify(&[8u8; 32], &good, now), None);
        let other_id = format!("{:032x}", 43u128);
        let moved = good.replacen(&id, &other_id, 1);
        assert_eq!(verify(&key, &moved, now), None);
        let far = token(
            &key,
            &id,
            now.timestamp() + 10 * SESSION_TTL.as_secs() as i64,
        );
        assert_eq!(verify(&key, &far, now), None);
        for bad in ["", ".", "x.y", "123", "123.zz", "a.1.b.c"] {
            assert_eq!(verify(&key, bad, now), None, "{bad:?}");
        }
        assert_ne!(csrf(&key, &id), csrf(&key, &other_id));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            axum::http::HeaderValue::from_static("a=1; baton_session=123.abc; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("123.abc"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
