//! Small helpers for writing HTML by hand: escaping, URL encoding, and the formatting of
//! times, durations and JSON the pages share. Everything that comes from a user (event data,
//! outputs, errors, ids in URLs) goes through [`esc`] or [`enc`] before it reaches a page.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Text made safe for an HTML text node or a double-quoted attribute value.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encoding of a path segment or a query value: everything but RFC 3986's
/// unreserved characters is encoded.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A query string (`?a=1&b=2`, or empty) from the pairs whose value is not empty. The result
/// is escaped for use inside an `href="..."`.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        esc(&format!("?{}", parts.join("&")))
    }
}

/// `2025-01-31 12:00:03 UTC` inside a `<time>` element carrying the exact instant.
pub fn time(t: DateTime<Utc>) -> String {
    format!(
        "<time datetime=\"{}\">{}</time>",
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        t.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// `—` for no time.
pub fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "—".to_string(), time)
}

/// A duration for people: `850 ms`, `3.2 s`, `4 m 12 s`, `2 h 3 m`, `3 d 4 h`.
pub fn duration(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds().max(0);
    if ms < 1000 {
        return format!("{ms} ms");
    }
    if ms < 60_000 {
        return format!("{:.1} s", ms as f64 / 1000.0);
    }
    let s = ms / 1000;
    if s < 3600 {
        return format!("{} m {} s", s / 60, s % 60);
    }
    if s < 86_400 {
        return format!("{} h {} m", s / 3600, (s % 3600) / 60);
    }
    format!("{} d {} h", s / 86_400, (s % 86_400) / 3600)
}

/// A duration in milliseconds, as [`duration`] shows it.
pub fn millis(ms: u64) -> String {
    duration(chrono::Duration::milliseconds(
        i64::try_from(ms).unwrap_or(i64::MAX),
    ))
}

/// The most of a JSON value a page shows inline; past it the page links to the API.
pub const MAX_JSON_CHARS: usize = 64 * 1024;

/// Pretty JSON in a `<pre>`, escaped, cut at [`MAX_JSON_CHARS`] with a note saying where the
/// whole value is.
pub fn json_block(value: &Value, whole_at: &str) -> String {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
    if text.chars().count() > MAX_JSON_CHARS {
        let cut: String = text.chars().take(MAX_JSON_CHARS).collect();
        format!(
            "<pre class=\"json\">{}\n…</pre><p class=\"note\">Cut at {} characters: the whole value is at <a href=\"{}\">{}</a>.</p>",
            esc(&cut),
            MAX_JSON_CHARS,
            esc(whole_at),
            esc(whole_at)
        )
    } else {
        format!("<pre class=\"json\">{}</pre>", esc(&text))
    }
}

/// One line of JSON, cut at `max` characters (for table cells).
pub fn json_inline(value: &Value, max: usize) -> String {
    let text = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
    if text.chars().count() > max {
        let cut: String = text.chars().take(max).collect();
        format!("{}…", esc(&cut))
    } else {
        esc(&text)
    }
}

/// A status badge (`Completed`, `Failed`, `Sleeping`, ...); the CSS colours it by class.
pub fn badge(status: &str) -> String {
    format!(
        "<span class=\"badge s-{}\">{}</span>",
        esc(&status.to_ascii_lowercase()),
        esc(status)
    )
}

/// A progress bar with its percentage.
pub fn progress(percent: u8, message: &str) -> String {
    let percent = percent.min(100);
    format!(
        "<span class=\"progress\"><progress max=\"100\" value=\"{percent}\">{percent}%</progress> <span class=\"pct\">{percent}%</span>{}</span>",
        if message.is_empty() {
            String::new()
        } else {
            format!(" <span class=\"msg\">{}</span>", esc(message))
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(enc("a b/c?d=é"), "a%20b%2Fc%3Fd%3D%C3%A9");
        assert_eq!(
            query(&[("function_id", "a&b"), ("status", ""), ("cursor", "01J")]),
            "?function_id=a%26b&amp;cursor=01J"
        );
        assert_eq!(query(&[("status", "")]), "");
    }

    #[test]
    fn durations_read_well() {
        let ms = chrono::Duration::milliseconds;
        assert_eq!(duration(ms(850)), "850 ms");
        assert_eq!(duration(ms(3200)), "3.2 s");
        assert_eq!(duration(ms(252_000)), "4 m 12 s");
        assert_eq!(duration(ms(7_380_000)), "2 h 3 m");
        assert_eq!(duration(ms(273_600_000)), "3 d 4 h");
        assert_eq!(duration(ms(-5)), "0 ms");
    }

    #[test]
    fn long_json_is_cut() {
        let big = Value::String("x".repeat(MAX_JSON_CHARS + 10));
        let html = json_block(&big, "/v1/runs/r");
        assert!(html.contains("Cut at"));
        assert!(html.contains("href=\"/v1/runs/r\""));
        let small = json_block(&serde_json::json!({"a": "<b>"}), "/x");
        assert!(small.contains("&lt;b&gt;"));
    }
}
