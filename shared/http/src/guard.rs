//! What an open server (no signing key: `baton dev`) refuses, because any web page its user
//! visits can make the browser call it:
//!
//! - a request addressed to any host name but a loopback one (`localhost`, `*.localhost`,
//!   `127.0.0.1`, `[::1]`): a DNS-rebinding page reaches the server under its own name;
//! - a write (any method but GET, HEAD, OPTIONS) that the browser marks as coming from
//!   another site (`Sec-Fetch-Site: cross-site` or `same-site`) or whose `Origin` is not a
//!   loopback host: a page can POST `text/plain` to `/e` or `/v1` without a CORS preflight.
//!
//! A server with a signing key (every deployment on AWS and Vercel) checks credentials
//! instead, so it answers any host name.

use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The middleware; see the module docs.
pub(crate) async fn open_server(request: Request, next: Next) -> Response {
    if let Err(message) = check(request.method(), request.headers()) {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(json!({ "error": message })),
        )
            .into_response();
    }
    next.run(request).await
}

fn check(method: &Method, headers: &HeaderMap) -> Result<(), &'static str> {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"));
    // HTTP/1.1 clients always send Host; an in-process caller (a test's `oneshot`) may not.
    if let Some(host) = header(header::HOST.as_str()) {
        if !is_loopback_host(host) {
            return Err(
                "this server has no signing key, so it answers only loopback host names \
                 (localhost, 127.0.0.1, [::1]); set BATON_SIGNING_KEY to serve others",
            );
        }
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let cross_site = header("sec-fetch-site").is_some_and(|site| {
        site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site")
    });
    let foreign_origin = header(header::ORIGIN.as_str()).is_some_and(|origin| {
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        !authority.is_some_and(|a| is_loopback_host(a.trim_end_matches('/')))
    });
    if cross_site || foreign_origin {
        return Err("a write from another site is refused: this server has no signing key");
    }
    Ok(())
}

/// `localhost`, `*.localhost`, a loopback IP, each with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [::1] or [::1]:8288
        match rest.split_once(']') {
            Some((ip, port)) if port.is_empty() || port.starts_with(':') => ip,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "localhost:8288",
            "LOCALHOST.",
            "app.localhost:3000",
            "127.0.0.1",
            "127.0.0.1:8288",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8288",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8288",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.5:8288",
            "[::2]:8288",
            "[::1]x",
            "0.0.0.0:8288",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn cross_site_writes() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (k, v) in pairs {
                headers.insert(*k, HeaderValue::from_static(v));
            }
            headers
        };
        let local = ("host", "127.0.0.1:8288");
        assert!(check(&Method::POST, &h(&[local])).is_ok());
        assert!(
            check(
                &Method::POST,
                &h(&[local, ("origin", "http://localhost:8288")])
            )
            .is_ok()
        );
        assert!(
            check(
                &Method::POST,
                &h(&[local, ("origin", "http://evil.example")])
            )
            .is_err()
        );
        assert!(check(&Method::POST, &h(&[local, ("origin", "null")])).is_err());
        assert!(
            check(
                &Method::DELETE,
                &h(&[local, ("sec-fetch-site", "cross-site")])
            )
            .is_err()
        );
        assert!(check(&Method::GET, &h(&[local, ("sec-fetch-site", "cross-site")])).is_ok());
        assert!(check(&Method::GET, &h(&[("host", "rebound.evil.example:8288")])).is_err());
    }
}
