//! The dashboard's pages and forms through the axum Router (request in, response out): what
//! each page shows, escaping of untrusted data, the live fragments, the actions, sign-in with
//! the signing key, the stats endpoint, and cursor paging over 100,000 runs in SQLite.
//! (The real-browser test is tests/dashboard.rs at the workspace root.)

use baton::{Step, Wait};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use baton::engine::Engine;
use baton::local::{LocalOptions, LocalRuntime};
use baton::model::{ErrorInfo, EventRecord, RunQuery, RunRecord, RunStatus};
use baton::queue::local::LocalQueue;
use baton::store::Store;
use baton::store::memory::MemoryStore;
use baton::{Ctx, EngineConfig, Event, Function, Registry, StepError};
use baton_http::dashboard::{FRAGMENT_HEADER, RUNS_PER_PAGE};
use baton_http::routes::{Access, Part, ROUTES, Route};
use baton_http::{Keys, router};
use baton_sqlite::{Durability, SqliteStore};
use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const WAIT: Duration = Duration::from_secs(10);

fn registry() -> Registry {
    let greet = Function::new("greet")
        .name("Greet someone")
        .trigger("test/greet")
        .step(Step::new("hello").memory_mb(512))
        .handler(|ctx: Ctx, ev: Event<Value>| async move {
            let who = ev.data["who"].as_str().unwrap_or("nobody").to_string();
            let s: String = ctx
                .step(Step::new("hello"), |_| async move {
                    Ok::<_, StepError>(format!("hi {who}"))
                })
                .await?;
            ctx.progress(100, format!("greeted {s}"));
            Ok(s)
        });
    let napper = Function::new("napper").trigger("test/nap").handler(
        |ctx: Ctx, _ev: Event<Value>| async move {
            ctx.progress(10, "napping");
            ctx.sleep("nap", Duration::from_secs(3600)).await?;
            Ok("woke")
        },
    );
    let failer = Function::new("failer")
        .trigger("test/fail")
        .step(Step::new("boom").retries(0))
        .handler(|ctx: Ctx, ev: Event<Value>| async move {
            let why = ev.data["why"].as_str().unwrap_or("it broke").to_string();
            let s: String = ctx
                .step(Step::new("boom"), |_| async move {
                    Err::<String, _>(StepError::non_retriable(why))
                })
                .await?;
            Ok(s)
        });
    let other = Function::new("other")
        .trigger("test/other")
        .idempotency("data.id")
        .cancel_on("test/other.cancelled", "data.id")
        .finish_timeout(Duration::from_secs(600))
        .handler(|_ctx: Ctx, ev: Event<Value>| async move { Ok(ev.data) });
    let limited = Function::new("limited")
        .trigger("test/limited")
        .concurrency(5, Some("data.customer"))
        .throttle(10, Duration::from_secs(60), None)
        .rate_limit(100, Duration::from_secs(3600), Some("data.customer"))
        .wait(Wait::<Value>::new("approved", "test/approved").on("data.id"))
        .handler(|_ctx: Ctx, ev: Event<Value>| async move { Ok(ev.data) });
    let debounced = Function::new("debounced")
        .trigger("test/typed")
        .debounce(Duration::from_secs(5), Some("data.doc"))
        .handler(|_ctx: Ctx, ev: Event<Value>| async move { Ok(ev.data) });
    Registry::new()
        .register(greet)
        .and_then(|r| r.register(napper))
        .and_then(|r| r.register(failer))
        .and_then(|r| r.register(other))
        .and_then(|r| r.register(limited))
        .and_then(|r| r.register(debounced))
        .unwrap()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    /// The run a redirect to `/runs/{id}?…` names.
    fn redirected_run(&self) -> String {
        self.location()["/runs/".len()..]
            .split('?')
            .next()
            .unwrap()
            .to_string()
    }

    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .unwrap_or_else(|| panic!("no Location ({}): {}", self.status, self.text))
            .to_str()
            .unwrap()
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}), {}: {}", self.status, self.text))
    }
    fn assert_page(&self) {
        assert_eq!(self.status, StatusCode::OK, "{}", self.text);
        let ct = self.headers[header::CONTENT_TYPE].to_str().unwrap();
        assert!(ct.starts_with("text/html"), "{ct}");
        assert!(self.text.starts_with("<!doctype html>"), "{}", self.text);
        let csp = self.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
    }
}

struct Dash {
    runtime: LocalRuntime,
    router: Router,
}

async fn start_with(keys: Keys) -> Dash {
    let runtime = LocalRuntime::start(
        registry(),
        Arc::new(MemoryStore::new()),
        LocalOptions::default(),
    )
    .await
    .unwrap();
    let router = router(runtime.engine().clone(), keys);
    Dash { runtime, router }
}

async fn start() -> Dash {
    start_with(Keys::open()).await
}

async fn call(router: &Router, request: Request<Body>) -> Reply {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        text: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

fn form_body(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap()
}

impl Dash {
    fn engine(&self) -> &Engine {
        self.runtime.engine()
    }

    async fn get(&self, uri: &str) -> Reply {
        self.get_with(uri, &[]).await
    }

    async fn get_with(&self, uri: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::get(uri);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        call(&self.router, request.body(Body::empty()).unwrap()).await
    }

    async fn post_form(
        &self,
        uri: &str,
        pairs: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::HOST, "127.0.0.1:8288");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        call(
            &self.router,
            request.body(Body::from(form_body(pairs))).unwrap(),
        )
        .await
    }

    /// Sends one event through the engine; returns the one run it started.
    async fn run_of(&self, name: &str, data: Value) -> String {
        let ids = self
            .engine()
            .send_events(vec![baton::NewEvent::new(name, data)])
            .await
            .unwrap();
        let runs = self.engine().store().runs_for_event(&ids[0]).await.unwrap();
        assert_eq!(runs.len(), 1);
        runs[0].run_id.clone()
    }

    async fn finish(&self, run_id: &str) -> RunRecord {
        self.runtime
            .wait_for_run(run_id, WAIT)
            .await
            .expect("the run ends")
    }

    async fn wait_sleeping(&self, run_id: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let journal = self.engine().store().journal(run_id).await.unwrap();
            if journal
                .iter()
                .any(|s| s.status == baton::StepStatus::Sleeping)
            {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "never slept");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The value of `name="csrf"` in a page.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no csrf field: {page}"));
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

// ---- pages ----

#[tokio::test]
async fn every_page_shows_real_data() {
    let dash = start().await;
    let ok = dash.run_of("test/greet", json!({"who": "ada"})).await;
    dash.finish(&ok).await;
    let failed = dash
        .run_of("test/fail", json!({"why": "card declined"}))
        .await;
    dash.finish(&failed).await;
    let sleeping = dash.run_of("test/nap", json!({})).await;
    dash.wait_sleeping(&sleeping).await;

    for uri in ["/", "/runs"] {
        let page = dash.get(uri).await;
        page.assert_page();
        for id in [&ok, &failed, &sleeping] {
            assert!(page.text.contains(&format!("href=\"/runs/{id}\"")), "{uri}");
        }
        assert!(page.text.contains("<div id=\"live\""));
        assert!(page.text.contains("s-completed") && page.text.contains("s-failed"));
        assert!(page.text.contains("greeted hi ada"), "progress message");
    }

    // Filters.
    let page = dash.get("/runs?function_id=failer&status=Failed").await;
    page.assert_page();
    assert!(page.text.contains(&failed) && !page.text.contains(&ok));
    let page = dash.get("/runs?status=Completed").await;
    assert!(page.text.contains(&ok) && !page.text.contains(&failed));
    let page = dash.get("/runs?status=bogus").await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.text.contains("Unknown status"));

    // A completed run: its step with attempts and output, progress, the output, the event.
    let page = dash.get(&format!("/runs/{ok}")).await;
    page.assert_page();
    assert!(
        page.text
            .contains("data-step=\"hello\" data-status=\"Completed\"")
    );
    assert!(page.text.contains("&quot;hi ada&quot;"), "step output");
    assert!(page.text.contains("<h2>Output</h2>"));
    assert!(page.text.contains("value=\"100\""), "progress bar");
    assert!(
        page.text.contains("\"who\": \"ada\"")
            || page.text.contains("&quot;who&quot;: &quot;ada&quot;")
    );
    assert!(
        page.text.contains("data-done=\"true\""),
        "an ended run is not polled"
    );
    assert!(page.text.contains(&format!("action=\"/runs/{ok}/replay\"")));
    assert!(
        !page.text.contains("/cancel\""),
        "no cancel for an ended run"
    );

    // A failed run shows its error on the step and the run.
    let page = dash.get(&format!("/runs/{failed}")).await;
    page.assert_page();
    assert!(
        page.text
            .contains("NonRetriableError</strong>: card declined")
    );
    assert!(page.text.contains("<h2>Error</h2>"));

    // A sleeping run: the sleep, when it wakes, a cancel button, polled.
    let page = dash.get(&format!("/runs/{sleeping}")).await;
    page.assert_page();
    assert!(
        page.text
            .contains("data-step=\"nap\" data-status=\"Sleeping\"")
    );
    assert!(page.text.contains("sleeping until"));
    assert!(
        page.text
            .contains(&format!("action=\"/runs/{sleeping}/cancel\""))
    );
    assert!(page.text.contains("data-done=\"false\""));

    // The event page lists its run.
    let run = dash.engine().store().get_run(&ok).await.unwrap().unwrap();
    let page = dash.get(&format!("/events/{}", run.event_id)).await;
    page.assert_page();
    assert!(page.text.contains(&format!("href=\"/runs/{ok}\"")));
    assert!(page.text.contains("test/greet"));

    // Functions: triggers, steps with config, flow control, stats.
    let page = dash.get("/functions").await;
    page.assert_page();
    for needle in [
        "Greet someone",
        "<code>test/greet</code>",
        "<code>hello</code>",
        "512 MB",
        "Idempotency: one run per <code>data.id</code>",
        "Cancel on: <code>test/other.cancelled</code>",
        "Finish timeout: 10 m 0 s",
        "data-function=\"greet\"",
        "Concurrency: no limit",
        "Concurrency: 5 at once per <code>data.customer</code>",
        "Throttle: 10 per 1 m 0 s",
        "Rate limit: 100 per 1 h 0 m per <code>data.customer</code>",
        "Waits for: <code>test/approved</code> matching <code>data.id</code>",
        "Debounce: 5.0 s per <code>data.doc</code>",
        // Counted in words: `boom` has none, the others the default 4.
        "no retries",
        "4 retries",
    ] {
        assert!(page.text.contains(needle), "{needle:?} missing");
    }
    assert!(!page.text.contains("0 retries") && !page.text.contains("1 retries"));
    assert!(page.text.contains("data-stat=\"success\">100.0%"), "greet");
    assert!(page.text.contains("data-stat=\"success\">0.0%"), "failer");
    let page = dash.get("/functions?window=1h").await;
    page.assert_page();
    assert_eq!(
        dash.get("/functions?window=forever").await.status,
        StatusCode::BAD_REQUEST
    );

    let page = dash.get("/functions/greet").await;
    page.assert_page();
    assert!(page.text.contains(&format!("href=\"/runs/{ok}\"")));
    assert!(page.text.contains("data-stat=\"runs\">1"));
    assert_eq!(
        dash.get("/functions/nope").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        dash.get("/runs/01J00000000000000000000000").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        dash.get("/events/01J00000000000000000000000").await.status,
        StatusCode::NOT_FOUND
    );

    // The forms.
    let page = dash.get("/send?name=test/greet").await;
    page.assert_page();
    assert!(page.text.contains("value=\"test/greet\""));
    assert!(
        page.text.contains("<option value=\"test/fail\">"),
        "datalist of events"
    );
    let page = dash.get("/replays?function_id=failer").await;
    page.assert_page();
    assert!(page.text.contains("<option value=\"failer\" selected>"));

    // Assets are served (public), anything else there is not.
    let js = dash.get("/assets/dashboard.js").await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(
        js.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(js.text.contains("x-baton-fragment"));
    let css = dash.get("/assets/dashboard.css").await;
    assert_eq!(css.status, StatusCode::OK);
    assert_eq!(
        dash.get("/assets/secret").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn untrusted_data_is_escaped() {
    let dash = start().await;
    let evil = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>";
    let run = dash
        .run_of("test/greet", json!({"who": evil, "<b>key</b>": evil}))
        .await;
    dash.finish(&run).await;
    let failed = dash.run_of("test/fail", json!({"why": evil})).await;
    dash.finish(&failed).await;
    for uri in [
        "/runs".to_string(),
        format!("/runs/{run}"),
        format!("/runs/{failed}"),
        "/functions/greet".to_string(),
    ] {
        let page = dash.get(&uri).await;
        page.assert_page();
        assert!(!page.text.contains("<script>alert"), "{uri}: {}", page.text);
        assert!(!page.text.contains("<img src=x"), "{uri}");
        assert!(!page.text.contains("<b>key"), "{uri}");
    }
    let page = dash.get(&format!("/runs/{run}")).await;
    assert!(page.text.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    // Query values are escaped when echoed into the page.
    let page = dash.get("/runs?function_id=%22%3E%3Cscript%3Ex").await;
    page.assert_page();
    assert!(!page.text.contains("\"><script>x"));
}

#[tokio::test]
async fn live_fragments_carry_only_the_live_part() {
    let dash = start().await;
    let done = dash.run_of("test/greet", json!({"who": "x"})).await;
    dash.finish(&done).await;
    let sleeping = dash.run_of("test/nap", json!({})).await;
    dash.wait_sleeping(&sleeping).await;
    let live = [(FRAGMENT_HEADER, "live")];

    let fragment = dash.get_with("/runs", &live).await;
    assert_eq!(fragment.status, StatusCode::OK);
    assert!(!fragment.text.contains("<html"), "{}", fragment.text);
    assert!(fragment.text.starts_with("<table class=\"runs\">"));
    assert!(fragment.text.contains(&done) && fragment.text.contains(&sleeping));
    assert_eq!(fragment.headers["x-baton-done"], "0");

    let fragment = dash.get_with(&format!("/runs/{done}"), &live).await;
    assert!(!fragment.text.contains("<html"));
    assert!(fragment.text.contains("data-step=\"hello\""));
    assert_eq!(
        fragment.headers["x-baton-done"], "1",
        "an ended run stops polling"
    );
    let fragment = dash.get_with(&format!("/runs/{sleeping}"), &live).await;
    assert_eq!(fragment.headers["x-baton-done"], "0");

    // The same page, fetched again, shows the change.
    dash.engine().cancel(&sleeping).await.unwrap();
    let fragment = dash.get_with(&format!("/runs/{sleeping}"), &live).await;
    assert!(fragment.text.contains("s-cancelled"));
    assert_eq!(fragment.headers["x-baton-done"], "1");
    let fragment = dash.get_with("/functions/napper", &live).await;
    assert!(fragment.text.starts_with("<table class=\"runs\">"));
}

// ---- actions ----

#[tokio::test]
async fn send_cancel_replay_and_bulk_replay_from_the_forms() {
    let dash = start().await;
    // Send: to the event's page, which lists the run it started.
    let reply = dash
        .post_form(
            "/send",
            &[
                ("name", "test/greet"),
                ("data", r#"{"who":"form"}"#),
                ("id", ""),
            ],
            &[("origin", "http://127.0.0.1:8288")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text);
    let location = reply.location().to_string();
    assert!(
        location.starts_with("/events/") && location.ends_with("?notice=sent"),
        "{location}"
    );
    let event_id = location["/events/".len()..location.find('?').unwrap()].to_string();
    let runs = dash
        .engine()
        .store()
        .runs_for_event(&event_id)
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].function_id, "greet");
    let page = dash.get(&location).await;
    page.assert_page();
    assert!(page.text.contains("Event sent."));
    assert!(page.text.contains(&runs[0].run_id));

    // The same idempotency id twice is one event.
    let send = |id: &'static str| {
        let dash = &dash;
        async move {
            dash.post_form(
                "/send",
                &[("name", "test/greet"), ("data", "{}"), ("id", id)],
                &[],
            )
            .await
            .location()
            .to_string()
        }
    };
    assert_eq!(send("same").await, send("same").await);

    // Bad input: the form again with the error, nothing stored.
    let before = dash
        .engine()
        .store()
        .list_runs(&RunQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .runs
        .len();
    for (name, data, needle) in [
        ("test/greet", "{not json", "not valid JSON"),
        ("test/greet", "[1,2]", "must be a JSON object"),
        ("", "{}", "event name is required"),
        ("baton/x", "{}", "reserved"),
    ] {
        let reply = dash
            .post_form("/send", &[("name", name), ("data", data)], &[])
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{name} {data}");
        assert!(reply.text.contains(needle), "{needle}: {}", reply.text);
        assert!(reply.text.contains("id=\"send-event\""), "the form again");
    }
    let after = dash
        .engine()
        .store()
        .list_runs(&RunQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .runs
        .len();
    assert_eq!(before, after);

    // Cancel a sleeping run; a second cancel is 409.
    let sleeping = dash.run_of("test/nap", json!({})).await;
    dash.wait_sleeping(&sleeping).await;
    let reply = dash
        .post_form(&format!("/runs/{sleeping}/cancel"), &[], &[])
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(
        reply.location(),
        format!("/runs/{sleeping}?notice=cancelled")
    );
    let run = dash
        .engine()
        .store()
        .get_run(&sleeping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    let reply = dash
        .post_form(&format!("/runs/{sleeping}/cancel"), &[], &[])
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.text.contains("already ended"));

    // Replay a failed run: to the new run, which says what it replays.
    let failed = dash.run_of("test/fail", json!({})).await;
    dash.finish(&failed).await;
    let reply = dash
        .post_form(&format!("/runs/{failed}/replay"), &[], &[])
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let new_run = reply.redirected_run();
    assert_ne!(new_run, failed);
    let replayed = dash.finish(&new_run).await;
    assert_eq!(replayed.replay_of.as_deref(), Some(failed.as_str()));
    let page = dash.get(&format!("/runs/{new_run}?notice=replayed")).await;
    assert!(page.text.contains("Replay started"));
    assert!(page.text.contains(&format!("href=\"/runs/{failed}\"")));

    // "Replay from here" on a step of the timeline: a restart from that step.
    let page = dash.get(&format!("/runs/{failed}")).await;
    assert!(
        page.text
            .contains("<input type=\"hidden\" name=\"from_step\" value=\"boom\">"),
        "{}",
        page.text
    );
    assert!(page.text.contains("Replay from here"));
    let reply = dash
        .post_form(
            &format!("/runs/{failed}/replay"),
            &[("from_step", "boom")],
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text);
    let restarted = reply.redirected_run();
    let run = dash.finish(&restarted).await;
    assert_eq!(run.replay_of.as_deref(), Some(failed.as_str()));
    assert_eq!(run.replay_from.as_deref(), Some("boom"));
    let page = dash.get(&format!("/runs/{restarted}")).await;
    assert!(
        page.text
            .contains("from step <span class=\"mono\" id=\"replay-from\">boom</span>"),
        "{}",
        page.text
    );
    let reply = dash
        .post_form(
            &format!("/runs/{failed}/replay"),
            &[("from_step", "nope")],
            &[],
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text);
    assert!(reply.text.contains("nope"), "{}", reply.text);

    // Bulk replay: the failer's three failed runs of the last hour (the restart failed too).
    let reply = dash
        .post_form(
            "/replays",
            &[
                ("function_id", "failer"),
                ("status", "Failed"),
                ("since", "1h"),
                ("until", ""),
            ],
            &[],
        )
        .await;
    reply.assert_page();
    assert!(reply.text.contains("data-count=\"3\""), "{}", reply.text);
    assert!(reply.text.contains("Replayed 3 Failed runs"));
    // A window that ends before the runs started replays nothing.
    let reply = dash
        .post_form(
            "/replays",
            &[
                ("function_id", "failer"),
                ("status", "Failed"),
                ("since", "2h"),
                ("until", "1h"),
            ],
            &[],
        )
        .await;
    assert!(reply.text.contains("data-count=\"0\""));
    for (pairs, needle) in [
        (
            vec![
                ("function_id", "nope"),
                ("status", "Failed"),
                ("since", "1h"),
            ],
            "No function",
        ),
        (
            vec![
                ("function_id", "failer"),
                ("status", "Completed"),
                ("since", "1h"),
            ],
            "Failed or Cancelled",
        ),
        (
            vec![
                ("function_id", "failer"),
                ("status", "Failed"),
                ("since", "soon"),
            ],
            "duration",
        ),
        (
            vec![
                ("function_id", "failer"),
                ("status", "Failed"),
                ("since", "1h"),
                ("until", "2h"),
            ],
            "window is empty",
        ),
    ] {
        let reply = dash.post_form("/replays", &pairs, &[]).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{pairs:?}");
        assert!(reply.text.contains(needle), "{needle}: {}", reply.text);
    }
}

#[tokio::test]
async fn posts_from_other_sites_are_refused() {
    let dash = start().await;
    for headers in [
        vec![("origin", "http://evil.example")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "cross-site")],
    ] {
        let reply = dash
            .post_form("/send", &[("name", "test/greet"), ("data", "{}")], &headers)
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{headers:?}");
    }
    assert!(
        dash.engine()
            .store()
            .list_runs(&RunQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .runs
            .is_empty()
    );
}

// ---- access ----

#[tokio::test]
async fn with_a_signing_key_the_dashboard_needs_it() {
    let key = "sk-dashboard-0123456789";
    let dash = start_with(Keys::parse(None, Some(key))).await;
    // Every page: 401 with the sign-in form (remembering where to go).
    let pages = ROUTES
        .iter()
        .filter(|r| r.part == Part::Dashboard && r.access == Access::Session);
    for Route { method, path, .. } in pages {
        let uri = path
            .replace("{run_id}", "r")
            .replace("{event_id}", "e")
            .replace("{function_id}", "greet");
        let reply = if *method == "GET" {
            dash.get(&uri).await
        } else {
            dash.post_form(&uri, &[], &[]).await
        };
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        assert!(reply.text.contains("action=\"/login\""), "{method} {uri}");
    }
    let page = dash.get("/runs?status=Failed").await;
    assert!(
        page.text
            .contains("name=\"next\" value=\"/runs?status=Failed\"")
    );
    // The sign-in page and the assets are public.
    assert_eq!(dash.get("/login").await.status, StatusCode::OK);
    assert_eq!(
        dash.get("/assets/dashboard.css").await.status,
        StatusCode::OK
    );

    // A wrong key, a wrong bearer, a forged cookie.
    let reply = dash
        .post_form("/login", &[("key", "wrong"), ("next", "/runs")], &[])
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.text.contains("not the signing key"));
    assert!(reply.headers.get(header::SET_COOKIE).is_none());
    let reply = dash
        .get_with("/runs", &[("authorization", "Bearer wrong")])
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let forged = format!(
        "baton_session={}.{}",
        Utc::now().timestamp() + 600,
        "00".repeat(32)
    );
    let reply = dash.get_with("/runs", &[("cookie", &forged)]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    // The bearer key works for scripts.
    let reply = dash
        .get_with("/runs", &[("authorization", &format!("Bearer {key}"))])
        .await;
    reply.assert_page();

    // Sign in: a cookie, then back where we were going (never to another site).
    let reply = dash
        .post_form("/login", &[("key", key), ("next", "/functions")], &[])
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.location(), "/functions");
    let set = reply.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    for attr in [
        "baton_session=",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=43200",
    ] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP on loopback");
    assert!(!set.contains(key), "the cookie is not the key");
    let cookie = set.split(';').next().unwrap().to_string();
    let reply = dash
        .post_form("/login", &[("key", key), ("next", "//evil.example")], &[])
        .await;
    assert_eq!(reply.location(), "/");
    let reply = dash
        .post_form(
            "/login",
            &[("key", key), ("next", "/")],
            &[("x-forwarded-proto", "https")],
        )
        .await;
    assert!(
        reply.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );

    let page = dash.get_with("/send", &[("cookie", &cookie)]).await;
    page.assert_page();
    assert!(page.text.contains("Sign out"));
    let csrf = csrf_of(&page.text);
    // A form without the token, or with another, is refused; with it, it goes through.
    let with_cookie = [("cookie", cookie.as_str())];
    for token in ["", "0123456789abcdef0123456789abcdef"] {
        let reply = dash
            .post_form(
                "/send",
                &[("name", "test/greet"), ("data", "{}"), ("csrf", token)],
                &with_cookie,
            )
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{token:?}");
    }
    let reply = dash
        .post_form(
            "/send",
            &[("name", "test/greet"), ("data", "{}"), ("csrf", &csrf)],
            &with_cookie,
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text);
    // Bearer callers need no token (no browser sends that header on its own).
    let bearer = format!("Bearer {key}");
    let reply = dash
        .post_form(
            "/send",
            &[("name", "test/greet"), ("data", "{}")],
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);

    // The live fragment with an expired session is a 401, so the script reloads to sign in.
    let reply = dash
        .get_with(
            "/runs",
            &[("cookie", "baton_session=1.00"), (FRAGMENT_HEADER, "live")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    // Sign out clears the cookie.
    let reply = dash
        .post_form("/logout", &[("csrf", &csrf)], &with_cookie)
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert!(
        reply.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    // ... and ends the session itself: a copy of the cookie no longer opens anything.
    let reply = dash.get_with("/runs", &[("cookie", &cookie)]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

/// Sessions carry a random id (two sign-ins in the same second differ), and failed sign-ins
/// are throttled per client.
#[tokio::test(start_paused = true)]
async fn sessions_are_random_and_sign_in_is_throttled() {
    let key = "dashboard-signing-key-0123456789";
    let dash = start_with(Keys::parse(None, Some(key))).await;
    let sign_in = |from: &'static str| {
        let dash = &dash;
        async move {
            dash.post_form(
                "/login",
                &[("key", key), ("next", "/")],
                &[("x-forwarded-for", from)],
            )
            .await
        }
    };
    let first = sign_in("203.0.113.7").await;
    let second = sign_in("203.0.113.7").await;
    let cookie = |reply: &Reply| {
        reply.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_ne!(
        cookie(&first),
        cookie(&second),
        "two sign-ins, two sessions"
    );

    let wrong = |from: &'static str| {
        let dash = &dash;
        async move {
            dash.post_form(
                "/login",
                &[("key", "guess"), ("next", "/")],
                &[("x-forwarded-for", from)],
            )
            .await
        }
    };
    for _ in 0..5 {
        assert_eq!(wrong("198.51.100.1").await.status, StatusCode::UNAUTHORIZED);
    }
    // The sixth try, even with the right key, waits.
    let throttled = wrong("198.51.100.1").await;
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(throttled.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(
        sign_in("198.51.100.1").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client is not held up.
    assert_eq!(sign_in("192.0.2.5").await.status, StatusCode::SEE_OTHER);
    // After the window, the client may try again.
    tokio::time::advance(std::time::Duration::from_secs(16 * 60)).await;
    assert_eq!(sign_in("198.51.100.1").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn without_a_signing_key_it_is_open() {
    let dash = start().await;
    dash.get("/runs").await.assert_page();
    // Nothing to sign in to.
    let reply = dash.get("/login?next=/functions").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.location(), "/functions");
    assert!(!dash.get("/runs").await.text.contains("Sign out"));
    // Only paths on this site follow: what browsers would read as another host goes home.
    for next in [
        "/%09/evil.example",
        "/%0A/evil.example",
        "/%0d%0a/evil.example",
        "//evil.example",
        "/%5Cevil.example",
        "https://evil.example",
        "/%20/evil.example",
    ] {
        let reply = dash.get(&format!("/login?next={next}")).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{next}");
        assert_eq!(reply.location(), "/", "{next}");
    }
}

// ---- stats ----

fn event(id: &str, at: DateTime<Utc>) -> EventRecord {
    EventRecord {
        id: id.to_string(),
        name: "test/greet".into(),
        data: json!({}),
        ts: at.timestamp_millis(),
        user: json!({}),
        v: None,
        idempotency_id: None,
    }
}

/// A stored run of `function_id` started at `started` (ULID from it), ended `took` later.
fn run_record(
    n: u128,
    function_id: &str,
    status: RunStatus,
    started: DateTime<Utc>,
    took: Option<chrono::Duration>,
) -> RunRecord {
    let run_id = ulid::Ulid::from_parts(started.timestamp_millis() as u64, n).to_string();
    RunRecord {
        event_id: run_id.clone(),
        event: event(&run_id, started),
        run_id,
        function_id: function_id.to_string(),
        status,
        started_at: started,
        ended_at: took.map(|d| started + d),
        output: None,
        error: (status == RunStatus::Failed).then(|| ErrorInfo::new("E", "boom")),
        progress: None,
        replay_of: None,
        replay_from: None,
    }
}

#[tokio::test]
async fn function_stats_count_statuses_and_take_percentiles() {
    let store = Arc::new(MemoryStore::new());
    let now = Utc::now();
    // 20 ended runs of greet in the last hour, 1 s to 20 s long; 2 of them failed, 1 cancelled.
    for i in 1..=20u128 {
        let status = match i {
            5 | 6 => RunStatus::Failed,
            7 => RunStatus::Cancelled,
            _ => RunStatus::Completed,
        };
        let started = now - chrono::Duration::minutes(50) + chrono::Duration::seconds(i as i64);
        let took = Some(chrono::Duration::seconds(i as i64));
        assert!(
            store
                .create_run(&run_record(i, "greet", status, started, took))
                .await
                .unwrap()
        );
    }
    // One running, and one ended long before the window.
    store
        .create_run(&run_record(
            100,
            "greet",
            RunStatus::Running,
            now - chrono::Duration::minutes(1),
            None,
        ))
        .await
        .unwrap();
    store
        .create_run(&run_record(
            101,
            "greet",
            RunStatus::Completed,
            now - chrono::Duration::hours(3),
            Some(chrono::Duration::hours(1)),
        ))
        .await
        .unwrap();

    let (queue, _receiver) = LocalQueue::new();
    let engine = Engine::new(
        registry(),
        store.clone(),
        Arc::new(queue),
        EngineConfig::default(),
    );
    let app = router(engine, Keys::open());
    let reply = call(
        &app,
        Request::get("/v1/functions/greet/stats?window=1h")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let data = reply.json()["data"].clone();
    assert_eq!(data["runs"], 21);
    assert_eq!(data["completed"], 17);
    assert_eq!(data["failed"], 2);
    assert_eq!(data["cancelled"], 1);
    assert_eq!(data["running"], 1);
    assert_eq!(data["truncated"], false);
    assert_eq!(data["success_rate"], 0.85);
    assert_eq!(data["p50_ms"], 10_000);
    assert_eq!(data["p95_ms"], 19_000);
    // The 7-day window counts the old run too.
    let reply = call(
        &app,
        Request::get("/v1/functions/greet/stats?window=7d")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.json()["data"]["runs"], 22);
    // Default 24h; bad window 400; unknown function 404; a function with no runs.
    let reply = call(
        &app,
        Request::get("/v1/functions/greet/stats")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.json()["data"]["window"], "24h");
    let reply = call(
        &app,
        Request::get("/v1/functions/greet/stats?window=soon")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"].as_str().unwrap().contains("window"));
    let reply = call(
        &app,
        Request::get("/v1/functions/nope/stats")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = call(
        &app,
        Request::get("/v1/functions/napper/stats")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let data = reply.json()["data"].clone();
    assert_eq!(
        (
            data["runs"].clone(),
            data["success_rate"].clone(),
            data["p95_ms"].clone()
        ),
        (json!(0), Value::Null, Value::Null)
    );

    // The work is bounded: past max_runs the newest are counted and it says so.
    let stats = baton_http::stats::function_stats(
        store.as_ref(),
        "greet",
        "1h",
        chrono::Duration::hours(1),
        now,
        5,
    )
    .await
    .unwrap();
    assert_eq!(stats.runs, 5);
    assert!(stats.truncated);
    let stats = baton_http::stats::function_stats(
        store.as_ref(),
        "greet",
        "1h",
        chrono::Duration::hours(1),
        now,
        21,
    )
    .await
    .unwrap();
    assert_eq!(stats.runs, 21);
    assert!(!stats.truncated);
}

// ---- paging at scale ----

/// 100,000 runs stored directly in SQLite; the API's and the dashboard's cursors reach deep
/// pages with the right runs (content, not timing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_paging_holds_at_100k_runs() {
    const RUNS: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(SqliteStore::open(dir.path().join("runs.db"), Durability::Normal).unwrap());
    let base = Utc::now() - chrono::Duration::days(2);
    let function = |i: usize| if i % 2 == 1 { "other" } else { "greet" };
    let status = |i: usize| RunStatus::ALL[i % 5];
    // Run i starts i ms after `base`: newest first is i descending.
    let records: Vec<RunRecord> = (0..RUNS)
        .map(|i| {
            let started = base + chrono::Duration::milliseconds(i as i64);
            let took = status(i)
                .is_terminal()
                .then(|| chrono::Duration::milliseconds(5));
            run_record(i as u128, function(i), status(i), started, took)
        })
        .collect();
    let ids: Vec<String> = records.iter().map(|r| r.run_id.clone()).collect();
    let mut chunks = Vec::new();
    for chunk in records.chunks(RUNS / 8) {
        let store = store.clone();
        let chunk = chunk.to_vec();
        chunks.push(tokio::spawn(async move {
            for run in &chunk {
                assert!(store.create_run(run).await.unwrap());
            }
        }));
    }
    for c in chunks {
        c.await.unwrap();
    }

    let (queue, _receiver) = LocalQueue::new();
    let engine = Engine::new(
        registry(),
        store.clone(),
        Arc::new(queue),
        EngineConfig::default(),
    );
    let app = router(engine, Keys::open());
    let get_json = |uri: String| {
        let app = app.clone();
        async move {
            let reply = call(&app, Request::get(&uri).body(Body::empty()).unwrap()).await;
            assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.text);
            reply.json()
        }
    };

    // The API, 1000 a page, all the way down: every run once, newest first.
    let mut seen: Vec<String> = Vec::with_capacity(RUNS);
    let mut cursor: Option<String> = None;
    let mut cursors = Vec::new();
    loop {
        let uri = match &cursor {
            Some(c) => format!("/v1/runs?limit=1000&cursor={c}"),
            None => "/v1/runs?limit=1000".to_string(),
        };
        let page = get_json(uri).await;
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["run_id"].as_str().unwrap().to_string()),
        );
        match page["cursor"].as_str() {
            Some(c) => {
                cursor = Some(c.to_string());
                cursors.push(c.to_string());
            }
            None => break,
        }
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen.len(), RUNS);
    assert_eq!(seen, newest_first);
    assert_eq!(cursors.len(), RUNS / 1000 - 1);

    // The dashboard's page after the 90,000 newest runs: runs 9,999 down to 9,950.
    let deep = &cursors[89];
    let page = call(
        &app,
        Request::get(format!("/runs?cursor={deep}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    page.assert_page();
    let shown: Vec<&str> = page
        .text
        .match_indices("data-run-id=\"")
        .map(|(at, m)| &page.text[at + m.len()..at + m.len() + 26])
        .collect();
    let want: Vec<&str> = (RUNS - 90_000 - RUNS_PER_PAGE..RUNS - 90_000)
        .rev()
        .map(|i| ids[i].as_str())
        .collect();
    assert_eq!(shown, want);
    // Its "older" link goes on from the last run shown; "newest" goes back to the top.
    let older = format!(
        "href=\"/runs?cursor={}\" rel=\"next\"",
        want.last().unwrap()
    );
    assert!(page.text.contains(&older), "{older}");
    assert!(page.text.contains("href=\"/runs\" data-newest"));

    // Filtered paging deep down: failed runs of `other` (i % 10 == 3), through the API then the page.
    let expected: Vec<&str> = (0..RUNS)
        .rev()
        .filter(|i| i % 10 == 3)
        .map(|i| ids[i].as_str())
        .collect();
    assert_eq!(expected.len(), RUNS / 10);
    let mut cursor = String::new();
    let mut pages = 0;
    let mut got: Vec<String> = Vec::new();
    while got.len() < 9_000 {
        let page = get_json(format!(
            "/v1/runs?function_id=other&status=Failed&limit=1000&cursor={cursor}"
        ))
        .await;
        got.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["run_id"].as_str().unwrap().to_string()),
        );
        cursor = page["cursor"].as_str().unwrap().to_string();
        pages += 1;
    }
    assert_eq!(pages, 9);
    assert_eq!(got, expected[..9_000]);
    let page = call(
        &app,
        Request::get(format!(
            "/runs?function_id=other&status=Failed&cursor={cursor}"
        ))
        .body(Body::empty())
        .unwrap(),
    )
    .await;
    page.assert_page();
    let shown: Vec<&str> = page
        .text
        .match_indices("data-run-id=\"")
        .map(|(at, m)| &page.text[at + m.len()..at + m.len() + 26])
        .collect();
    assert_eq!(shown, expected[9_000..9_000 + RUNS_PER_PAGE]);
    assert!(page.text.contains(&format!(
        "href=\"/runs?function_id=other&amp;status=Failed&amp;cursor={}\" rel=\"next\"",
        expected[9_000 + RUNS_PER_PAGE - 1]
    )));
}
