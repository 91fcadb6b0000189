//! The dashboard: server-rendered HTML pages to watch, debug and steer runs, served by the
//! same axum Router as the API ([`crate::router`]): by `baton dev` and, on AWS, by the
//! `route-dashboard` Lambda (every dashboard path of [`crate::routes::ROUTES`]).
//!
//! # Pages
//!
//! | path | |
//! |---|---|
//! | `/`, `/runs?function_id=&status=&cursor=` | runs, newest first, filtered, cursor-paged (never an offset), live |
//! | `/runs/{run_id}` | a run: step timeline (attempts, start, duration, sleeps), outputs and errors, progress, event, output; cancel and replay buttons; live until it ends |
//! | `/events/{event_id}` | an event and the runs it started, live |
//! | `/functions?window=24h` | every function: triggers, steps, flow control, success rate, p50/p95 |
//! | `/functions/{function_id}?window=` | one function in full, its newest runs, a bulk replay form |
//! | `/send` | send an event (name + JSON data) |
//! | `/replays` | bulk replay of a function's failed (or cancelled) runs in a time window |
//! | `/login`, `/logout` | the signing-key form (only needed when a key is configured) |
//!
//! Actions are plain HTML forms posting to the dashboard's own paths (`POST /runs/{id}/cancel`,
//! `POST /runs/{id}/replay`, `POST /send`, `POST /replays`), answered with a redirect, so
//! every page works without JavaScript. The one script ([`JS`], served from `/assets/`)
//! adds live updates: a page's live part (`<div id="live">`) is fetched again every second
//! with the header `x-baton-fragment: live`, and the server answers with just that part
//! (rendered by the same code as the page; `x-baton-done: 1` stops the polling once a run
//! has ended). No build step, no framework: strings and [`html::esc`].
//!
//! # Access
//!
//! The rule of `/v1`: with no signing key configured (the local dev server's default) the
//! dashboard is open. With a key (`BATON_SIGNING_KEY`, always on AWS) a request needs either
//! `Authorization: Bearer <key>` (scripts, curl) or the session cookie that `/login` sets
//! after checking the key posted to it: `baton_session`, `HttpOnly`, `SameSite=Strict`,
//! `Secure` behind HTTPS, valid 12 hours, an HMAC (keyed by the signing key's digest) of its
//! expiry time, so any instance verifies it without shared state and changing the key ends
//! every session. Without either, a page answers 401 with the login form.
//!
//! Forms are protected against cross-site posting: a POST whose `Origin` is not the host
//! itself (or whose `Sec-Fetch-Site` is cross-site) is refused, and with a session cookie
//! every form carries a CSRF token derived from the session, checked on submit. Every page is
//! sent with a Content-Security-Policy that allows only the dashboard's own script and style
//! (no inline script), on top of escaping all user data (event data is untrusted).

pub mod html;
mod session;

use std::fmt::Write as _;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use chrono::{DateTime, Utc};
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::api::{ApiError, AppState, BodyError, bearer, read_body};
use crate::routes::{self, Part, ROUTES, Route};
use crate::stats::{self, FunctionStats, MAX_STATS_RUNS, function_stats, parse_window};
use baton::engine::NewEvent;
use baton::engine::{BulkOutcome, RunSelection};
use baton::function::Function;
use baton::model::{RunQuery, RunRecord, RunStatus, RunSummary, StepKind, StepRecord, StepStatus};
use html::{badge, duration, enc, esc, json_block, json_inline, opt_time, progress, query, time};

/// `1 retry`, `4 retries`, `no retries`.
fn retries(n: u32) -> String {
    match n {
        0 => "no retries".to_owned(),
        1 => "1 retry".to_owned(),
        n => format!("{n} retries"),
    }
}

/// Runs per page of the runs list.
pub const RUNS_PER_PAGE: usize = 50;
/// Newest runs shown on a function's page.
const FUNCTION_RUNS: usize = 20;
/// The most new runs a bulk replay's result page lists.
const REPLAYS_LISTED: usize = 100;
/// How often a live part is fetched again, in milliseconds.
const POLL_MS: u32 = 1000;
pub use session::SESSION_COOKIE;
/// The request header asking for a page's live part only, and the answer's "stop polling".
pub const FRAGMENT_HEADER: &str = "x-baton-fragment";
pub const DONE_HEADER: &str = "x-baton-done";
/// The largest form body; the send form may add three times the event size limit (an
/// urlencoded byte takes up to three).
const FORM_OVERHEAD: usize = 16 * 1024;

/// The dashboard's script: live updates, confirmations, auto-submitting filters.
pub const JS: &str = include_str!("dashboard/assets/dashboard.js");
/// The dashboard's style sheet.
pub const CSS: &str = include_str!("dashboard/assets/dashboard.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The handler of a dashboard route of the table ([`crate::routes::ROUTES`]).
fn handler(route: &Route) -> MethodRouter<AppState> {
    match (route.method, route.path) {
        ("GET", "/" | "/runs") => get(runs_page),
        ("GET", "/runs/{run_id}") => get(run_page),
        ("POST", "/runs/{run_id}/cancel") => post(cancel_action),
        ("POST", "/runs/{run_id}/replay") => post(replay_action),
        ("GET", "/events/{event_id}") => get(event_page),
        ("GET", "/functions") => get(functions_page),
        ("GET", "/functions/{function_id}") => get(function_page),
        ("GET", "/send") => get(send_page),
        ("POST", "/send") => post(send_action),
        ("GET", "/replays") => get(replays_page),
        ("POST", "/replays") => post(replays_action),
        ("POST", "/logout") => post(logout),
        ("GET", "/login") => get(login_page),
        ("POST", "/login") => post(login_action),
        ("GET", "/assets/{file}") => get(asset),
        (method, path) => unreachable!("the route table lists {method} {path} without a page"),
    }
}

/// The dashboard's routes of the table, with its own access check (the API's `/v1` layer
/// answers JSON; these answer the login page).
pub(crate) fn routes(state: &AppState) -> Router<AppState> {
    let mut open = Router::new();
    let mut guarded = Router::new();
    for route in ROUTES.iter().filter(|r| r.part == Part::Dashboard) {
        match route.access {
            routes::Access::Open => open = open.route(route.path, handler(route)),
            _ => guarded = guarded.route(route.path, handler(route)),
        }
    }
    let guarded = guarded.route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    open.merge(guarded)
        .method_not_allowed_fallback(crate::api::method_not_allowed)
}

// ---- access ----

/// How a request got in; pages use it for the CSRF token in their forms.
#[derive(Clone, Debug)]
enum Access {
    /// No signing key is configured.
    Open,
    /// `Authorization: Bearer <signing key>`.
    Bearer,
    /// The session cookie; forms must carry `csrf`.
    Session { id: String, csrf: String },
}

async fn authorize(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let access = match state.keys.signing_key_digest() {
        None => Access::Open,
        Some(key) => {
            let headers = request.headers();
            if let Some(token) = bearer(headers) {
                if state.keys.signing_key_ok(Some(token)).is_err() {
                    return login_response(
                        StatusCode::UNAUTHORIZED,
                        &local_path(request.uri()),
                        Some("invalid signing key"),
                    );
                }
                Access::Bearer
            } else {
                let now = state.engine.now();
                let id = session::cookie(headers, SESSION_COOKIE)
                    .and_then(|token| session::verify(key, token, now));
                let live = match &id {
                    Some(id) => {
                        match session::is_live(state.engine.store().as_ref(), id, now).await {
                            Ok(live) => live,
                            Err(e) => return PageError::from(e).into_response(),
                        }
                    }
                    None => false,
                };
                match id.filter(|_| live) {
                    Some(id) => Access::Session {
                        csrf: session::csrf(key, &id),
                        id,
                    },
                    None => {
                        return login_response(
                            StatusCode::UNAUTHORIZED,
                            &local_path(request.uri()),
                            None,
                        );
                    }
                }
            }
        }
    };
    request.extensions_mut().insert(access);
    next.run(request).await
}

/// The request's path and query, for `next` after logging in.
fn local_path(uri: &axum::http::Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string())
}

/// Only a path on this site may follow a login (`/x`, not `//evil` or `https://...`).
/// Browsers drop tabs and newlines from a URL and read `\` as `/`, so `/\t/evil` would be
/// `//evil`: any whitespace, control character or backslash sends the user home instead.
fn safe_next(next: &str) -> &str {
    let plain = !next
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\');
    if plain && next.starts_with('/') && !next.starts_with("//") {
        next
    } else {
        "/"
    }
}

/// Whether a POST comes from the dashboard's own pages: its `Origin` (when sent) is this
/// host, and the browser does not call it cross-site.
fn same_origin(headers: &HeaderMap) -> bool {
    let header_str = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if header_str("sec-fetch-site").is_some_and(|site| {
        site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site")
    }) {
        return false;
    }
    let Some(origin) = header_str(header::ORIGIN.as_str()) else {
        return true;
    };
    let Some(authority) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .map(|a| a.trim_end_matches('/'))
    else {
        return false;
    };
    // The host as the browser addressed it: a proxy in front may pass it on as
    // X-Forwarded-Host.
    [
        header_str(header::HOST.as_str()),
        header_str("x-forwarded-host"),
    ]
    .into_iter()
    .flatten()
    .any(|host| authority.eq_ignore_ascii_case(host.trim()))
}

/// Checks a form post: same origin, and the CSRF token with a session cookie.
fn check_post(headers: &HeaderMap, access: &Access, form: &Form) -> Result<(), PageError> {
    if !same_origin(headers) {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "This form was posted from another site.",
        ));
    }
    if let Access::Session { csrf, .. } = access {
        let sent = form.get("csrf");
        if !bool::from(sent.as_bytes().ct_eq(csrf.as_bytes())) {
            return Err(PageError::new(
                StatusCode::FORBIDDEN,
                "The form's token is missing or stale: reload the page and try again.",
            ));
        }
    }
    Ok(())
}

/// The hidden CSRF field of a form (empty without a session).
fn csrf_field(access: &Access) -> String {
    match access {
        Access::Session { csrf, .. } => {
            format!(
                "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
                esc(csrf)
            )
        }
        _ => String::new(),
    }
}

// ---- forms ----

/// A urlencoded form body.
struct Form(Vec<(String, String)>);

impl Form {
    async fn read(headers: &HeaderMap, body: Body, limit: usize) -> Result<Form, PageError> {
        let bytes = read_body(headers, body, limit).await.map_err(|e| match e {
            BodyError::TooLarge => PageError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("The form is over the limit of {limit} bytes."),
            ),
            BodyError::Unreadable(e) => {
                PageError::bad_request(format!("Could not read the form: {e}"))
            }
        })?;
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
            .map(Form)
            .map_err(|e| PageError::bad_request(format!("The form is not urlencoded: {e}")))
    }

    fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Query parameters, empty values counting as absent.
struct Params(Vec<(String, String)>);

impl Params {
    fn from(params: Result<Query<Vec<(String, String)>>, QueryRejection>) -> Params {
        Params(params.map(|Query(p)| p).unwrap_or_default())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim())
    }
}

fn parse_status(s: &str) -> Result<RunStatus, PageError> {
    RunStatus::ALL
        .into_iter()
        .find(|st| st.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            PageError::bad_request(format!(
                "Unknown status {s:?}: one of Queued, Running, Completed, Failed, Cancelled."
            ))
        })
}

// ---- responses ----

/// An error answered as an HTML page.
#[derive(Debug)]
pub(crate) struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        PageError {
            status,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        PageError::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        PageError::new(StatusCode::NOT_FOUND, message)
    }
}

impl<E: Into<ApiError>> From<E> for PageError {
    fn from(e: E) -> Self {
        let e: ApiError = e.into();
        PageError {
            status: e.status,
            message: e.message,
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = self
            .status
            .canonical_reason()
            .unwrap_or("Error")
            .to_string();
        let body = format!(
            "<h1>{}</h1><p class=\"error\" role=\"alert\">{}</p><p><a href=\"/runs\">Runs</a> · <a href=\"/functions\">Functions</a></p>",
            esc(&title),
            esc(&self.message)
        );
        html_response(self.status, layout(&title, "", None, &body))
    }
}

fn html_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    security_headers(headers);
    response
}

fn security_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::VARY, HeaderValue::from_static(FRAGMENT_HEADER));
}

fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    security_headers(response.headers_mut());
    response
}

fn wants_fragment(headers: &HeaderMap) -> bool {
    headers
        .get(FRAGMENT_HEADER)
        .is_some_and(|v| v.as_bytes() == b"live")
}

/// A page with a live part (`<div id="live">`, fetched again by the script).
struct LivePage<'a> {
    title: &'a str,
    /// The navigation entry to mark.
    nav: &'a str,
    before: &'a str,
    live: &'a str,
    after: &'a str,
    /// Stop polling (a run that ended).
    done: bool,
}

impl LivePage<'_> {
    /// The whole page, or only the live part when the script asks for it.
    fn render(&self, headers: &HeaderMap, access: &Access) -> Response {
        if wants_fragment(headers) {
            let mut response = html_response(StatusCode::OK, self.live.to_string());
            response.headers_mut().insert(
                DONE_HEADER,
                HeaderValue::from_static(if self.done { "1" } else { "0" }),
            );
            return response;
        }
        let body = format!(
            "{}<div id=\"live\" data-poll=\"{POLL_MS}\" data-done=\"{}\" aria-live=\"polite\">{}</div>{}",
            self.before, self.done, self.live, self.after
        );
        html_response(
            StatusCode::OK,
            layout(self.title, self.nav, Some(access), &body),
        )
    }
}

fn page(title: &str, nav: &str, access: &Access, body: &str) -> Response {
    html_response(StatusCode::OK, layout(title, nav, Some(access), body))
}

/// The page around `body`: head, navigation (with `current` marked), sign-out when signed in
/// with the cookie.
fn layout(title: &str, current: &str, access: Option<&Access>, body: &str) -> String {
    let version = env!("CARGO_PKG_VERSION");
    let mut nav = String::new();
    for (href, label) in [
        ("/runs", "Runs"),
        ("/functions", "Functions"),
        ("/send", "Send event"),
        ("/replays", "Bulk replay"),
    ] {
        let current_attr = if href == current {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(nav, "<a href=\"{href}\"{current_attr}>{label}</a>");
    }
    let account = match access {
        Some(access @ Access::Session { .. }) => format!(
            "<form class=\"logout\" method=\"post\" action=\"/logout\">{}<button type=\"submit\" class=\"link\">Sign out</button></form>",
            csrf_field(access)
        ),
        _ => String::new(),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} · Baton</title>\n\
         <link rel=\"icon\" href=\"data:,\">\n\
         <link rel=\"stylesheet\" href=\"/assets/dashboard.css?v={version}\">\n\
         <script src=\"/assets/dashboard.js?v={version}\" defer></script>\n\
         </head>\n<body>\n<header class=\"top\"><a class=\"brand\" href=\"/\">Baton</a><nav>{nav}</nav>{account}</header>\n\
         <main>\n{body}\n</main>\n</body>\n</html>\n",
        title = esc(title),
    )
}

/// A notice after an action (`?notice=`), from a fixed list: the URL never carries text.
fn notice(params: &Params) -> String {
    let text = match params.get("notice") {
        Some("sent") => "Event sent.",
        Some("cancelled") => {
            "Run cancelled: a step already executing finishes, nothing after it runs."
        }
        Some("replayed") => "Replay started: a new run of the same function on the same event.",
        _ => return String::new(),
    };
    format!("<p class=\"notice\" role=\"status\">{text}</p>")
}

// ---- assets, login ----

async fn asset(file: Result<Path<String>, PathRejection>) -> Response {
    let (content_type, body) = match file.as_ref().map(|Path(f)| f.as_str()) {
        Ok("dashboard.js") => ("text/javascript; charset=utf-8", JS),
        Ok("dashboard.css") => ("text/css; charset=utf-8", CSS),
        _ => return PageError::not_found("No such file.").into_response(),
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn login_response(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let error = error.map_or_else(String::new, |e| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e))
    });
    let body = format!(
        "<section class=\"login\"><h1>Sign in</h1>\
         <p>This Baton deployment has a signing key (<code>BATON_SIGNING_KEY</code>). \
         Enter it to open the dashboard; scripts can send <code>Authorization: Bearer &lt;key&gt;</code> instead.</p>\
         {error}\
         <form method=\"post\" action=\"/login\" class=\"stack\">\
         <input type=\"hidden\" name=\"next\" value=\"{next}\">\
         <label>Signing key <input type=\"password\" name=\"key\" autocomplete=\"current-password\" required autofocus></label>\
         <button type=\"submit\">Sign in</button></form></section>",
        next = esc(safe_next(next)),
    );
    html_response(status, layout("Sign in", "", None, &body))
}

async fn login_page(
    State(state): State<AppState>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let params = Params::from(params);
    let next = params.get("next").unwrap_or("/");
    if state.keys.signing_key_digest().is_none() {
        return redirect(safe_next(next));
    }
    login_response(StatusCode::OK, next, None)
}

async fn login_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PageError> {
    let form = Form::read(&headers, body, FORM_OVERHEAD).await?;
    check_post(&headers, &Access::Open, &form)?;
    let next = safe_next(form.get("next")).to_string();
    let Some(key) = state.keys.signing_key_digest() else {
        return Ok(redirect(&next));
    };
    let store = state.engine.store().as_ref();
    let now = state.engine.now();
    if let Some(until) = session::throttled(store, &headers, now).await? {
        let wait = (until - now).num_seconds().max(1);
        let mut response = login_response(
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            Some(&format!(
                "Too many failed sign-ins from here: try again in {} minutes.",
                (wait + 59) / 60
            )),
        );
        if let Ok(value) = HeaderValue::from_str(&wait.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return Ok(response);
    }
    if state.keys.signing_key_ok(Some(form.get("key"))).is_err() {
        session::count_failure(store, &headers, now).await?;
        return Ok(login_response(
            StatusCode::UNAUTHORIZED,
            &next,
            Some("That is not the signing key."),
        ));
    }
    let token = session::start(store, key, now).await?;
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{SESSION_COOKIE}={token}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
        session::SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    let mut response = redirect(&next);
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

async fn logout(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PageError> {
    let form = Form::read(&headers, body, FORM_OVERHEAD).await?;
    check_post(&headers, &access, &form)?;
    // The session ends everywhere, not just in this browser.
    if let Access::Session { id, .. } = &access {
        session::end(state.engine.store().as_ref(), id, state.engine.now()).await?;
    }
    let mut response = redirect("/login");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("baton_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"),
    );
    Ok(response)
}

// ---- runs ----

fn run_duration(run: &RunSummary, now: DateTime<Utc>) -> String {
    match run.ended_at {
        Some(end) => duration(end - run.started_at),
        None => format!("{} …", duration(now - run.started_at)),
    }
}

fn run_progress(run: &RunSummary) -> String {
    match &run.progress {
        Some(p) => progress(p.percent, &p.message),
        None if run.status == RunStatus::Completed => progress(100, ""),
        None => "—".to_string(),
    }
}

/// Says which runs of a listing could not be read (their rows are skipped, the page stays up).
fn unreadable_note(run_ids: &[String]) -> String {
    if run_ids.is_empty() {
        return String::new();
    }
    format!(
        "<p class=\"error\" role=\"alert\" data-unreadable=\"{n}\">{n} stored run{s} could not be read and {are} not listed: \
         <span class=\"mono\">{ids}</span>. See the server log.</p>",
        n = run_ids.len(),
        s = if run_ids.len() == 1 { "" } else { "s" },
        are = if run_ids.len() == 1 { "is" } else { "are" },
        ids = esc(&run_ids.join(", "))
    )
}

/// The runs table (no steps).
fn runs_table(runs: &[RunSummary], now: DateTime<Utc>) -> String {
    if runs.is_empty() {
        return "<p class=\"empty\">No runs.</p>".to_string();
    }
    let mut rows = String::new();
    for run in runs {
        let _ = write!(
            rows,
            "<tr data-run-id=\"{id}\" data-status=\"{status}\">\
             <td><a class=\"mono\" href=\"/runs/{id_enc}\">{id}</a>{replay}</td>\
             <td><a href=\"/functions/{function_enc}\">{function}</a></td>\
             <td class=\"status\">{badge}</td>\
             <td><a href=\"/events/{event_enc}\">{event}</a></td>\
             <td>{started}</td><td class=\"num\">{duration}</td><td>{progress}</td></tr>",
            id = esc(&run.run_id),
            id_enc = enc(&run.run_id),
            replay = if run.replay_of.is_some() {
                " <span class=\"tag\">replay</span>"
            } else {
                ""
            },
            function_enc = enc(&run.function_id),
            function = esc(&run.function_id),
            status = run.status.as_str(),
            badge = badge(run.status.as_str()),
            event_enc = enc(&run.event_id),
            event = esc(&run.event_name),
            started = time(run.started_at),
            duration = run_duration(run, now),
            progress = run_progress(run),
        );
    }
    format!(
        "<table class=\"runs\"><thead><tr><th>Run</th><th>Function</th><th>Status</th><th>Event</th>\
         <th>Started</th><th>Duration</th><th>Progress</th></tr></thead><tbody>{rows}</tbody></table>"
    )
}

fn function_options(state: &AppState, selected: Option<&str>, any: Option<&str>) -> String {
    let mut ids: Vec<&str> = state
        .engine
        .registry()
        .functions()
        .map(|f| f.id.as_str())
        .collect();
    ids.sort_unstable();
    let mut out = any.map_or_else(String::new, |label| {
        format!("<option value=\"\">{}</option>", esc(label))
    });
    for id in ids {
        let sel = if Some(id) == selected {
            " selected"
        } else {
            ""
        };
        let _ = write!(out, "<option value=\"{0}\"{sel}>{0}</option>", esc(id));
    }
    out
}

fn status_options(statuses: &[RunStatus], selected: Option<RunStatus>, any: bool) -> String {
    let mut out = if any {
        "<option value=\"\">Any status</option>".to_string()
    } else {
        String::new()
    };
    for s in statuses {
        let sel = if Some(*s) == selected {
            " selected"
        } else {
            ""
        };
        let _ = write!(out, "<option{sel}>{}</option>", s.as_str());
    }
    out
}

/// `GET /` and `GET /runs?function_id=&status=&cursor=`.
async fn runs_page(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, PageError> {
    let params = Params::from(params);
    let function_id = params.get("function_id").map(str::to_string);
    let status = params.get("status").map(parse_status).transpose()?;
    let cursor = params.get("cursor").map(str::to_string);
    let run_query = RunQuery {
        function_id: function_id.clone(),
        status,
        limit: RUNS_PER_PAGE,
        cursor: cursor.clone(),
        ..RunQuery::default()
    };
    let runs = state.engine.store().list_runs(&run_query).await?;
    let now = state.engine.now();
    let f = function_id.as_deref().unwrap_or("");
    let s = status.map_or("", RunStatus::as_str);
    let mut pager = String::new();
    if cursor.is_some() {
        let _ = write!(
            pager,
            "<a href=\"/runs{}\" data-newest>« Newest</a>",
            query(&[("function_id", f), ("status", s)])
        );
    }
    if let Some(next) = &runs.cursor {
        let _ = write!(
            pager,
            "<a href=\"/runs{}\" rel=\"next\" data-older>Older »</a>",
            query(&[("function_id", f), ("status", s), ("cursor", next)])
        );
    }
    let unknown = match &function_id {
        Some(id) if state.engine.registry().get(id).is_none() => format!(
            "<p class=\"note\">No function {} is registered (runs of it may still be stored).</p>",
            esc(id)
        ),
        _ => String::new(),
    };
    let live = format!(
        "{unknown}{}{}<nav class=\"pager\">{pager}</nav>",
        unreadable_note(&runs.unreadable),
        runs_table(&runs.runs, now)
    );
    let before = format!(
        "<div class=\"title\"><h1>Runs</h1><a class=\"button\" href=\"/send\">Send event</a></div>\
         <form class=\"filters\" method=\"get\" action=\"/runs\" data-autosubmit>\
         <label>Function <select name=\"function_id\">{}</select></label>\
         <label>Status <select name=\"status\">{}</select></label>\
         <button type=\"submit\">Filter</button></form>\
         <p class=\"note\">Newest first, {RUNS_PER_PAGE} a page; {}.</p>",
        function_options(&state, function_id.as_deref(), Some("All functions")),
        status_options(&RunStatus::ALL, status, true),
        if cursor.is_some() {
            "an older page (its rows update live; new runs appear on the newest page)"
        } else {
            "updates live"
        },
    );
    Ok(LivePage {
        title: "Runs",
        nav: "/runs",
        before: &before,
        live: &live,
        after: "",
        done: false,
    }
    .render(&headers, &access))
}

/// Where a step's bar starts and ends.
fn step_span(
    step: &StepRecord,
    run_end: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>) {
    let planned = step.planned_at;
    let start = match step.kind {
        StepKind::Sleep => planned,
        _ => step.started_at.unwrap_or(planned),
    };
    let end = match (step.ended_at, step.status) {
        (Some(end), _) => end,
        // Still going (asleep or waiting too: a year-long sleep would squash every other
        // bar): up to now; the wake-up time is in the text.
        (None, _) => run_end.max(start),
    };
    (planned, start, end)
}

/// The step timeline: one row per step, a bar on a shared time axis from the run's start.
/// The step timeline; `csrf`: the session's form field, for each step's "Replay from here".
fn timeline(run: &RunRecord, steps: &[StepRecord], now: DateTime<Utc>, csrf: &str) -> String {
    if steps.is_empty() {
        return "<p class=\"empty\">No steps yet.</p>".to_string();
    }
    let t0 = run.started_at;
    let run_end = run.ended_at.unwrap_or(now);
    let spans: Vec<_> = steps.iter().map(|s| step_span(s, run_end)).collect();
    let axis_end = spans
        .iter()
        .map(|(_, _, e)| *e)
        .fold(run_end, DateTime::max);
    let total_ms = (axis_end - t0).num_milliseconds().max(1) as f64;
    let x = |t: DateTime<Utc>| (t - t0).num_milliseconds().max(0) as f64 / total_ms * 1000.0;
    let mut rows = String::new();
    for (step, (planned, start, end)) in steps.iter().zip(&spans) {
        let status = step.status.as_str();
        let (qx, sx, ex) = (x(*planned), x(*start), x(*end));
        let bar = format!(
            "<svg class=\"bar\" viewBox=\"0 0 1000 12\" preserveAspectRatio=\"none\" aria-hidden=\"true\">\
             <rect class=\"track\" x=\"0\" y=\"0\" width=\"1000\" height=\"12\"/>\
             <rect class=\"queued\" x=\"{qx:.1}\" y=\"4\" width=\"{qw:.1}\" height=\"4\"/>\
             <rect class=\"b-{cls}\" x=\"{sx:.1}\" y=\"0\" width=\"{sw:.1}\" height=\"12\"/></svg>",
            qw = (sx - qx).max(0.0),
            sw = (ex - sx).max(3.0),
            // A sleep or a wait keeps its colour once over; other steps show their status.
            cls = match (step.kind, step.status) {
                (_, StepStatus::Failed) => "failed".to_string(),
                (StepKind::Sleep, _) => "sleeping".to_string(),
                (StepKind::Wait, _) => "waiting".to_string(),
                _ => status.to_ascii_lowercase(),
            },
        );
        let attempts = match step.kind {
            StepKind::Run => step.attempts.to_string(),
            _ => "—".to_string(),
        };
        let open_ended = step.ended_at.is_none() && !run.status.is_terminal();
        let took = match step.kind {
            StepKind::Sleep if step.ended_at.is_none() => String::new(),
            _ => format!(
                "{}{}",
                duration(*end - *start),
                if open_ended { " …" } else { "" }
            ),
        };
        let mut result = String::new();
        match (step.status, step.wake_at) {
            (StepStatus::Sleeping, Some(wake)) => {
                let _ = write!(
                    result,
                    "<span class=\"waiting\">sleeping until {}{}</span>",
                    time(wake),
                    if wake > now {
                        format!(" (in {})", duration(wake - now))
                    } else {
                        String::new()
                    }
                );
            }
            (StepStatus::Waiting, wake) => {
                let _ = write!(
                    result,
                    "<span class=\"waiting\">waiting{}</span>",
                    wake.map_or_else(String::new, |w| format!(" until {}", time(w)))
                );
            }
            (StepStatus::Planned, Some(wake)) if step.attempts > 0 => {
                let _ = write!(
                    result,
                    "<span class=\"waiting\">attempt {} at {}</span> ",
                    step.attempts + 1,
                    time(wake)
                );
            }
            _ => {}
        }
        if let Some(error) = &step.error {
            let _ = write!(
                result,
                "<div class=\"error\"><strong>{}</strong>: {}{}</div>",
                esc(&error.name),
                esc(&error.message),
                if step.status.is_final() {
                    ""
                } else {
                    " <span class=\"note\">(last attempt; retrying)</span>"
                }
            );
        }
        if let Some(output) = step
            .output
            .as_ref()
            .filter(|o| !o.is_null() || step.kind == StepKind::Run)
        {
            let _ = write!(
                result,
                "<details id=\"output-{seq}\"><summary>output <code>{inline}</code></summary>{block}</details>",
                seq = step.seq,
                inline = json_inline(output, 60),
                block = json_block(output, &format!("/v1/runs/{}", enc(&run.run_id))),
            );
        }
        // A new run on the same event that reuses the steps before this one.
        let restart = if step.kind == StepKind::Patch {
            String::new()
        } else {
            format!(
                "<form method=\"post\" action=\"/runs/{run_enc}/replay\" class=\"restart\">{csrf}{key}\
                 <input type=\"hidden\" name=\"from_step\" value=\"{id}\">\
                 <button type=\"submit\" class=\"quiet\" title=\"A new run on the same event: the steps before this one keep their recorded results; this one and the rest run again\">Replay from here</button></form>",
                run_enc = enc(&run.run_id),
                id = esc(&step.step_id),
                key = key_field(),
            )
        };
        let _ = write!(
            rows,
            "<tr data-step=\"{id}\" data-status=\"{status}\"><td class=\"num\">{seq}</td>\
             <td><span class=\"mono\">{id}</span>{kind}</td><td>{badge}</td><td class=\"num\">{attempts}</td>\
             <td class=\"num\">+{offset}</td><td class=\"num\">{took}</td><td class=\"gantt\">{bar}</td><td class=\"result\">{result}</td><td>{restart}</td></tr>",
            id = esc(&step.step_id),
            seq = step.seq,
            kind = match step.kind {
                StepKind::Run => String::new(),
                other => format!(" <span class=\"tag\">{}</span>", other.as_str()),
            },
            badge = badge(status),
            offset = duration(*start - t0),
        );
    }
    format!(
        "<table class=\"timeline\"><thead><tr><th>#</th><th>Step</th><th>Status</th><th>Attempts</th>\
         <th>Start</th><th>Duration</th><th class=\"gantt\">Timeline (0 – {total})</th><th>Output / error</th><th></th></tr></thead>\
         <tbody>{rows}</tbody></table>",
        total = duration(axis_end - t0),
    )
}

/// `GET /runs/{run_id}`.
async fn run_page(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    run_id: Result<Path<String>, PathRejection>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, PageError> {
    let Path(run_id) = run_id.map_err(|e| PageError::bad_request(e.body_text()))?;
    let params = Params::from(params);
    let detail = state
        .engine
        .get_run(&run_id)
        .await?
        .ok_or_else(|| PageError::not_found(format!("Run {run_id} not found.")))?;
    let run = &detail.run;
    let now = state.engine.now();
    let id_enc = enc(&run.run_id);
    let csrf = csrf_field(&access);
    let mut actions = String::new();
    if !run.status.is_terminal() {
        let _ = write!(
            actions,
            "<form method=\"post\" action=\"/runs/{id_enc}/cancel\" data-confirm=\"Cancel this run? A step already executing finishes; nothing after it runs.\">{csrf}<button type=\"submit\" class=\"danger\">Cancel run</button></form>"
        );
    }
    let _ = write!(
        actions,
        "<form method=\"post\" action=\"/runs/{id_enc}/replay\">{csrf}{key}<button type=\"submit\">Replay</button></form>",
        key = key_field()
    );
    let outcome = match (&run.error, &run.output) {
        (Some(error), _) => format!(
            "<section><h2>Error</h2><p class=\"error\" role=\"alert\"><strong>{}</strong>: {}</p></section>",
            esc(&error.name),
            esc(&error.message)
        ),
        (None, Some(output)) => format!(
            "<section><h2>Output</h2>{}</section>",
            json_block(output, &format!("/v1/runs/{id_enc}"))
        ),
        _ => String::new(),
    };
    let replay_of = run.replay_of.as_ref().map_or_else(String::new, |old| {
        let from = run.replay_from.as_ref().map_or_else(String::new, |step| {
            format!(
                " from step <span class=\"mono\" id=\"replay-from\">{}</span>",
                esc(step)
            )
        });
        format!(
            "<dt>Replay of</dt><dd><a class=\"mono\" href=\"/runs/{}\">{}</a>{from}</dd>",
            enc(old),
            esc(old)
        )
    });
    let live = format!(
        "<div class=\"title\"><h1>Run <span class=\"mono\">{id}</span></h1>{badge}<div class=\"actions\">{actions}</div></div>\
         {notice}\
         <dl class=\"facts\">\
         <dt>Function</dt><dd><a href=\"/functions/{function_enc}\">{function}</a></dd>\
         <dt>Event</dt><dd><a href=\"/events/{event_enc}\">{event_name}</a> <span class=\"mono note\">{event_id}</span></dd>\
         {replay_of}\
         <dt>Started</dt><dd>{started}</dd><dt>Ended</dt><dd>{ended}</dd>\
         <dt>Duration</dt><dd>{duration}</dd>\
         <dt>Progress</dt><dd class=\"run-progress\">{progress}</dd></dl>\
         <section><h2>Steps</h2>{timeline}</section>{outcome}\
         <section><h2>Event</h2>{event}</section>",
        id = esc(&run.run_id),
        badge = badge(run.status.as_str()),
        notice = notice(&params),
        function_enc = enc(&run.function_id),
        function = esc(&run.function_id),
        event_enc = enc(&run.event_id),
        event_name = esc(&run.event.name),
        event_id = esc(&run.event_id),
        started = time(run.started_at),
        ended = opt_time(run.ended_at),
        duration = run_duration(&run.summary(false), now),
        progress = run_progress(&run.summary(false)),
        timeline = timeline(run, &detail.steps, now, &csrf),
        event = json_block(&run.event.to_json(), &format!("/v1/runs/{id_enc}")),
    );
    Ok(LivePage {
        title: &format!("Run {}", run.run_id),
        nav: "/runs",
        before: "",
        live: &live,
        after: "",
        done: run.status.is_terminal(),
    }
    .render(&headers, &access))
}

/// `POST /runs/{run_id}/cancel`.
async fn cancel_action(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    run_id: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, PageError> {
    let Path(run_id) = run_id.map_err(|e| PageError::bad_request(e.body_text()))?;
    let form = Form::read(&headers, body, FORM_OVERHEAD).await?;
    check_post(&headers, &access, &form)?;
    state.engine.cancel(&run_id).await?;
    Ok(redirect(&format!(
        "/runs/{}?notice=cancelled",
        enc(&run_id)
    )))
}

/// `POST /runs/{run_id}/replay`: to the new run.
async fn replay_action(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    run_id: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, PageError> {
    let Path(run_id) = run_id.map_err(|e| PageError::bad_request(e.body_text()))?;
    let form = Form::read(&headers, body, FORM_OVERHEAD).await?;
    check_post(&headers, &access, &form)?;
    let key = form_key(&form)?;
    let new_run = match form.get("from_step") {
        "" => state.engine.replay(&run_id, key.as_deref()).await?,
        step => {
            state
                .engine
                .replay_from(&run_id, step, key.as_deref())
                .await?
        }
    };
    Ok(redirect(&format!(
        "/runs/{}?notice=replayed",
        enc(&new_run)
    )))
}

/// `GET /events/{event_id}`: the event and the runs it started.
async fn event_page(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    event_id: Result<Path<String>, PathRejection>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, PageError> {
    let Path(event_id) = event_id.map_err(|e| PageError::bad_request(e.body_text()))?;
    let params = Params::from(params);
    let store = state.engine.store();
    let event = store
        .get_event(&event_id)
        .await?
        .ok_or_else(|| PageError::not_found(format!("Event {event_id} not found.")))?;
    let runs = store.runs_for_event(&event_id).await?;
    let now = state.engine.now();
    let done = runs.iter().all(|r| r.status.is_terminal());
    let runs_html = if runs.is_empty() {
        "<p class=\"empty\">No function is triggered by this event, so it started no run.</p>"
            .to_string()
    } else {
        runs_table(&runs, now)
    };
    let before = format!(
        "<div class=\"title\"><h1>Event <span class=\"mono\">{}</span></h1></div>{}\
         <dl class=\"facts\"><dt>Name</dt><dd>{}</dd><dt>Received</dt><dd>{}</dd></dl>",
        esc(&event.id),
        notice(&params),
        esc(&event.name),
        DateTime::<Utc>::from_timestamp_millis(event.ts).map_or_else(|| "—".into(), time),
    );
    let live = format!("<section><h2>Runs it started</h2>{runs_html}</section>");
    let after = format!(
        "<section><h2>Event JSON</h2>{}</section>",
        json_block(
            &event.to_json(),
            &format!("/v1/events/{}/runs", enc(&event.id))
        )
    );
    Ok(LivePage {
        title: &format!("Event {}", event.id),
        nav: "/runs",
        before: &before,
        live: &live,
        after: &after,
        done,
    }
    .render(&headers, &access))
}

// ---- functions ----

fn window_param(params: &Params) -> Result<(String, chrono::Duration), PageError> {
    let label = params.get("window").unwrap_or("24h").to_string();
    let window = parse_window(&label).ok_or_else(|| {
        PageError::bad_request(format!(
            "Window {label:?} is not a duration such as 1h, 24h or 7d."
        ))
    })?;
    Ok((label, window))
}

fn window_links(base: &str, current: &str) -> String {
    let mut out = String::from("<nav class=\"pills\" aria-label=\"Window\">");
    for w in stats::WINDOWS {
        let attr = if w == current {
            " aria-current=\"true\""
        } else {
            ""
        };
        let _ = write!(
            out,
            "<a href=\"{base}{}\"{attr}>{w}</a>",
            query(&[("window", w)])
        );
    }
    out.push_str("</nav>");
    out
}

fn secs(d: std::time::Duration) -> String {
    duration(chrono::Duration::from_std(d).unwrap_or_default())
}

fn triggers_html(f: &Function) -> String {
    let mut items: Vec<String> = f
        .triggers
        .iter()
        .filter(|t| t.event != baton::function::SCHEDULED || f.crons.is_empty())
        .map(|t| match t.expression() {
            Some(e) => format!("<code>{}</code> if <code>{}</code>", esc(&t.event), esc(&e)),
            None => format!("<code>{}</code>", esc(&t.event)),
        })
        .collect();
    items.extend(
        f.crons
            .iter()
            .map(|c| format!("cron <code>{}</code> (UTC)", esc(c))),
    );
    if items.is_empty() {
        "—".into()
    } else {
        items.join("<br>")
    }
}

/// ` per <code>key</code>`, or nothing without a key.
fn per_key(key: &Option<String>) -> String {
    key.as_ref()
        .map_or_else(String::new, |k| format!(" per <code>{}</code>", esc(k)))
}

/// Retries, concurrency, throttle, rate limit, debounce, idempotency, cancel-on, waits,
/// timeouts, failure handler.
fn flow_control(f: &Function) -> Vec<(&'static str, String)> {
    let flow = &f.flow;
    let mut out = vec![
        (
            "Retries",
            format!("{} per step (default)", retries(f.retries)),
        ),
        (
            "Concurrency",
            flow.concurrency.as_ref().map_or_else(
                || "no limit".to_string(),
                |c| format!("{} at once{}", c.limit, per_key(&c.key)),
            ),
        ),
    ];
    if let Some(t) = &flow.throttle {
        out.push((
            "Throttle",
            format!("{} per {}{}", t.limit, secs(t.period), per_key(&t.key)),
        ));
    }
    if let Some(r) = &flow.rate_limit {
        out.push((
            "Rate limit",
            format!("{} per {}{}", r.limit, secs(r.period), per_key(&r.key)),
        ));
    }
    if let Some(d) = &flow.debounce {
        out.push(("Debounce", format!("{}{}", secs(d.period), per_key(&d.key))));
    }
    for (event, field) in &f.waits {
        out.push((
            "Waits for",
            format!(
                "<code>{}</code> matching <code>{}</code>",
                esc(event),
                esc(field)
            ),
        ));
    }
    if let Some(key) = &f.idempotency {
        out.push((
            "Idempotency",
            format!("one run per <code>{}</code> per 24 h", esc(key)),
        ));
    }
    for c in &f.cancel_on {
        out.push((
            "Cancel on",
            format!(
                "<code>{}</code> matching <code>{}</code>",
                esc(&c.event),
                esc(&c.path)
            ),
        ));
    }
    if let Some(t) = f.start_timeout {
        out.push(("Start timeout", secs(t)));
    }
    if let Some(t) = f.finish_timeout {
        out.push(("Finish timeout", secs(t)));
    }
    if f.has_failure_handler() {
        let handler = format!("{}-failure", f.id);
        out.push((
            "On failure",
            format!(
                "<a href=\"/functions/{}\">{}</a>",
                enc(&handler),
                esc(&handler)
            ),
        ));
    }
    if let Some(of) = &f.failure_of {
        out.push((
            "Handles failures of",
            format!("<a href=\"/functions/{}\">{}</a>", enc(of), esc(of)),
        ));
    }
    out
}

fn rate(s: &FunctionStats) -> String {
    s.success_rate
        .map_or_else(|| "—".into(), |r| format!("{:.1}%", r * 100.0))
}

fn ms(v: Option<u64>) -> String {
    v.map_or_else(|| "—".into(), html::millis)
}

fn scanned_note(s: &FunctionStats) -> String {
    if s.truncated {
        format!(
            " <span class=\"note\" title=\"the newest {} runs of the window were read\">(newest {} read)</span>",
            s.max_runs, s.max_runs
        )
    } else {
        String::new()
    }
}

/// `GET /functions?window=`.
async fn functions_page(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, PageError> {
    let params = Params::from(params);
    let (label, window) = window_param(&params)?;
    let now = state.engine.now();
    let mut functions: Vec<_> = state.engine.registry().functions().collect();
    functions.sort_by(|a, b| a.id.cmp(&b.id));
    let mut rows = String::new();
    for f in functions {
        let s = function_stats(
            state.engine.store().as_ref(),
            &f.id,
            &label,
            window,
            now,
            MAX_STATS_RUNS,
        )
        .await?;
        let steps: Vec<String> = f
            .steps
            .iter()
            .map(|(name, c)| {
                format!(
                    "<code>{}</code> <span class=\"note\">{} · {} MB · {}{}</span>",
                    esc(name),
                    secs(c.timeout),
                    c.memory_mb,
                    retries(f.step_retries(name)),
                    if c.host == baton::function::Host::Vercel {
                        " · on Vercel"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        let flow: Vec<String> = flow_control(f)
            .into_iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = write!(
            rows,
            "<tr data-function=\"{id}\"><td><a href=\"/functions/{id_enc}\">{name}</a><div class=\"mono note\">{id}</div></td>\
             <td>{triggers}</td><td>{steps}</td><td class=\"flow\">{flow}</td>\
             <td class=\"num\"><a href=\"/runs{runs_q}\">{runs}</a>{scanned}</td><td class=\"num\" data-stat=\"success\">{rate}</td>\
             <td class=\"num\" data-stat=\"p50\">{p50}</td><td class=\"num\" data-stat=\"p95\">{p95}</td></tr>",
            id = esc(&f.id),
            id_enc = enc(&f.id),
            name = esc(&f.name),
            triggers = triggers_html(f),
            steps = if steps.is_empty() {
                "—".into()
            } else {
                steps.join("<br>")
            },
            flow = flow.join("<br>"),
            runs_q = query(&[("function_id", &f.id)]),
            runs = s.runs,
            scanned = scanned_note(&s),
            rate = rate(&s),
            p50 = ms(s.p50_ms),
            p95 = ms(s.p95_ms),
        );
    }
    let body = format!(
        "<div class=\"title\"><h1>Functions</h1>{pills}</div>\
         <table class=\"functions\"><thead><tr><th>Function</th><th>Triggers</th><th>Steps (timeout · memory · retries)</th>\
         <th>Flow control</th><th>Runs ({label})</th><th>Success</th><th>p50</th><th>p95</th></tr></thead><tbody>{rows}</tbody></table>\
         <p class=\"note\">Figures over the runs started in the last {label}: success is the share of ended runs that completed; \
         p50/p95 is the time from start to end of the runs that ended. At most the newest {MAX_STATS_RUNS} runs of each function are read.</p>",
        pills = window_links("/functions", &label),
        label = esc(&label),
    );
    Ok(page("Functions", "/functions", &access, &body))
}

/// `GET /functions/{function_id}?window=`.
async fn function_page(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    function_id: Result<Path<String>, PathRejection>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, PageError> {
    let Path(function_id) = function_id.map_err(|e| PageError::bad_request(e.body_text()))?;
    let params = Params::from(params);
    let f = state
        .engine
        .registry()
        .get(&function_id)
        .cloned()
        .ok_or_else(|| PageError::not_found(format!("No function {function_id} is registered.")))?;
    let (label, window) = window_param(&params)?;
    let now = state.engine.now();
    let runs = state
        .engine
        .store()
        .list_runs(&RunQuery {
            function_id: Some(f.id.clone()),
            limit: FUNCTION_RUNS,
            ..RunQuery::default()
        })
        .await?;
    let live = format!(
        "{}{}<p><a href=\"/runs{}\">All runs of {} »</a></p>",
        unreadable_note(&runs.unreadable),
        runs_table(&runs.runs, now),
        query(&[("function_id", &f.id)]),
        esc(&f.id)
    );
    if wants_fragment(&headers) {
        return Ok(LivePage {
            title: "",
            nav: "",
            before: "",
            live: &live,
            after: "",
            done: false,
        }
        .render(&headers, &access));
    }
    let s = function_stats(
        state.engine.store().as_ref(),
        &f.id,
        &label,
        window,
        now,
        MAX_STATS_RUNS,
    )
    .await?;
    let mut steps = String::new();
    for (name, c) in &f.steps {
        let _ = write!(
            steps,
            "<tr><td class=\"mono\">{}</td><td class=\"num\">{}</td><td class=\"num\">{} MB</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(name),
            secs(c.timeout),
            c.memory_mb,
            f.step_retries(name),
            match c.host {
                baton::function::Host::Lambda => "Lambda",
                baton::function::Host::Vercel => "Vercel",
            }
        );
    }
    let steps = if steps.is_empty() {
        "<p class=\"empty\">No declared steps (sleeps and events need none).</p>".to_string()
    } else {
        format!(
            "<table><thead><tr><th>Step</th><th>Timeout</th><th>Memory</th><th>Retries</th><th>Host</th></tr></thead><tbody>{steps}</tbody></table>"
        )
    };
    let flow: String = flow_control(&f)
        .into_iter()
        .map(|(k, v)| format!("<dt>{k}</dt><dd>{v}</dd>"))
        .collect();
    let before = format!(
        "<div class=\"title\"><h1>{name}</h1><span class=\"mono note\">{id}</span></div>\
         <div class=\"columns\">\
         <section><h2>Triggers</h2><p>{triggers}</p><h2>Steps</h2>{steps}</section>\
         <section><h2>Flow control</h2><dl class=\"facts\">{flow}</dl></section>\
         <section class=\"stats\"><h2>Last {label}</h2>{pills}\
         <dl class=\"facts\"><dt>Runs</dt><dd data-stat=\"runs\">{runs}{scanned}</dd>\
         <dt>Completed</dt><dd>{completed}</dd><dt>Failed</dt><dd><a href=\"/runs{failed_q}\">{failed}</a></dd>\
         <dt>Cancelled</dt><dd>{cancelled}</dd><dt>Running / queued</dt><dd>{running} / {queued}</dd>\
         <dt>Success</dt><dd data-stat=\"success\">{rate}</dd><dt>p50</dt><dd data-stat=\"p50\">{p50}</dd><dt>p95</dt><dd data-stat=\"p95\">{p95}</dd></dl>\
         <p><a class=\"button\" href=\"/replays{replay_q}\">Bulk replay failed runs…</a></p></section>\
         </div><h2>Newest runs</h2>",
        name = esc(&f.name),
        id = esc(&f.id),
        triggers = triggers_html(&f),
        label = esc(&label),
        pills = window_links(&format!("/functions/{}", enc(&f.id)), &label),
        runs = s.runs,
        scanned = scanned_note(&s),
        completed = s.completed,
        failed = s.failed,
        failed_q = query(&[("function_id", &f.id), ("status", "Failed")]),
        cancelled = s.cancelled,
        running = s.running,
        queued = s.queued,
        rate = rate(&s),
        p50 = ms(s.p50_ms),
        p95 = ms(s.p95_ms),
        replay_q = query(&[
            ("function_id", &f.id),
            ("status", "Failed"),
            ("since", &label)
        ]),
    );
    Ok(LivePage {
        title: &f.name,
        nav: "/functions",
        before: &before,
        live: &live,
        after: "",
        done: false,
    }
    .render(&headers, &access))
}

// ---- send ----

fn send_form(
    state: &AppState,
    access: &Access,
    name: &str,
    data: &str,
    id: &str,
    error: Option<&str>,
) -> String {
    let mut events: Vec<&str> = state
        .engine
        .registry()
        .functions()
        .flat_map(|f| f.triggers.iter().map(|t| t.event.as_str()))
        .filter(|e| !e.starts_with("baton/"))
        .collect();
    events.sort_unstable();
    events.dedup();
    let options: String = events
        .iter()
        .map(|e| format!("<option value=\"{}\">", esc(e)))
        .collect();
    let error = error.map_or_else(String::new, |e| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e))
    });
    format!(
        "<div class=\"title\"><h1>Send an event</h1></div>\
         <p>Every function triggered by the event's name starts a run, as with <code>POST /e/{{event_key}}</code>.</p>{error}\
         <form method=\"post\" action=\"/send\" class=\"stack\" id=\"send-event\">{csrf}\
         <label>Event name <input name=\"name\" list=\"event-names\" required maxlength=\"256\" value=\"{name}\" placeholder=\"app/thing.happened\"></label>\
         <datalist id=\"event-names\">{options}</datalist>\
         <label>Data (a JSON object) <textarea name=\"data\" rows=\"10\" spellcheck=\"false\">{data}</textarea></label>\
         <label>Id <span class=\"note\">(optional: the same id within 24 h starts nothing new)</span> <input name=\"id\" value=\"{id}\"></label>\
         <button type=\"submit\">Send event</button></form>",
        csrf = csrf_field(access),
        name = esc(name),
        data = esc(data),
        id = esc(id),
    )
}

/// `GET /send?name=`.
async fn send_page(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let params = Params::from(params);
    let body = send_form(
        &state,
        &access,
        params.get("name").unwrap_or(""),
        "{}",
        "",
        None,
    );
    page("Send an event", "/send", &access, &body)
}

/// `POST /send`: to the event's page.
async fn send_action(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PageError> {
    let limit = state.engine.limits().max_event_bytes * 3 + FORM_OVERHEAD;
    let form = Form::read(&headers, body, limit).await?;
    check_post(&headers, &access, &form)?;
    let (name, data_text, id) = (
        form.get("name").trim(),
        form.get("data"),
        form.get("id").trim(),
    );
    let refuse = |message: String| {
        let body = send_form(&state, &access, name, data_text, id, Some(&message));
        html_response(
            StatusCode::BAD_REQUEST,
            layout("Send an event", "/send", Some(&access), &body),
        )
    };
    let data: Value = if data_text.trim().is_empty() {
        Value::Object(Default::default())
    } else {
        match serde_json::from_str(data_text) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return Ok(refuse("Data must be a JSON object.".into())),
            Err(e) => return Ok(refuse(format!("Data is not valid JSON: {e}"))),
        }
    };
    let mut event = NewEvent::new(name, data);
    if !id.is_empty() {
        event = event.with_id(id);
    }
    if let Err(e) = state.engine.validate_event(&event, false) {
        return Ok(refuse(ApiError::from(e).message));
    }
    let ids = state.engine.send_events(vec![event]).await?;
    let id = ids.first().cloned().unwrap_or_default();
    Ok(redirect(&format!("/events/{}?notice=sent", enc(&id))))
}

// ---- bulk replay ----

/// A hidden idempotency key for a replay form: submitting the same form twice (a double
/// click, a browser retry) starts its runs once.
fn key_field() -> String {
    format!(
        "<input type=\"hidden\" name=\"key\" value=\"{:032x}\">",
        rand::random::<u128>()
    )
}

/// The form's idempotency key, if it sent one.
fn form_key(form: &Form) -> Result<Option<String>, PageError> {
    match form.get("key") {
        "" => Ok(None),
        key if key.len() <= 256 => Ok(Some(key.to_string())),
        _ => Err(PageError::bad_request("The form's key is too long.")),
    }
}

/// When a bulk replay stopped at its limit: a form replaying the next page of the same window.
fn next_replay_form(
    access: &Access,
    function_id: &str,
    status: RunStatus,
    after: DateTime<Utc>,
    before: Option<DateTime<Utc>>,
    outcome: &BulkOutcome,
) -> String {
    let mut html = String::new();
    if !outcome.unreadable.is_empty() {
        let _ = write!(
            html,
            "<p class=\"error\" role=\"alert\">{} run{} could not be read and {} skipped: {}</p>",
            outcome.unreadable.len(),
            if outcome.unreadable.len() == 1 {
                ""
            } else {
                "s"
            },
            if outcome.unreadable.len() == 1 {
                "was"
            } else {
                "were"
            },
            esc(&outcome.unreadable.join(", "))
        );
    }
    if let Some(cursor) = &outcome.cursor {
        let _ = write!(
            html,
            "<form method=\"post\" action=\"/replays\" id=\"replay-next\">{csrf}{key}\
             <input type=\"hidden\" name=\"function_id\" value=\"{f}\">\
             <input type=\"hidden\" name=\"status\" value=\"{status}\">\
             <input type=\"hidden\" name=\"after\" value=\"{after}\">\
             <input type=\"hidden\" name=\"before\" value=\"{before}\">\
             <input type=\"hidden\" name=\"cursor\" value=\"{cursor}\">\
             <p class=\"note\">More runs may match.</p><button type=\"submit\">Replay the next runs</button></form>",
            csrf = csrf_field(access),
            key = key_field(),
            f = esc(function_id),
            status = status.as_str(),
            after = esc(&after.to_rfc3339()),
            before = esc(&before.map(|b| b.to_rfc3339()).unwrap_or_default()),
            cursor = esc(cursor),
        );
    }
    html
}

fn replays_form(state: &AppState, access: &Access, params: &Params, error: Option<&str>) -> String {
    let status = params
        .get("status")
        .and_then(|s| parse_status(s).ok())
        .unwrap_or(RunStatus::Failed);
    let error = error.map_or_else(String::new, |e| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e))
    });
    format!(
        "<div class=\"title\"><h1>Bulk replay</h1></div>\
         <p>Starts a new run, on the same event, for every run of a function that ended in the status \
         and started in the window (e.g. after fixing a bug). The old runs stay as they are.</p>{error}\
         <form method=\"post\" action=\"/replays\" class=\"stack\" id=\"bulk-replay\" data-confirm=\"Replay every matching run?\">{csrf}\
         <label>Function <select name=\"function_id\" required>{functions}</select></label>\
         <label>Status <select name=\"status\">{statuses}</select></label>\
         <label>Started within the last <input name=\"since\" value=\"{since}\" required placeholder=\"1h, 30m, 7d\"></label>\
         <label>and at least this long ago <span class=\"note\">(optional)</span> <input name=\"until\" value=\"{until}\" placeholder=\"e.g. 10m\"></label>\
         {key}<button type=\"submit\">Replay runs</button></form>",
        csrf = csrf_field(access),
        key = key_field(),
        functions = function_options(state, params.get("function_id"), None),
        statuses = status_options(
            &[RunStatus::Failed, RunStatus::Cancelled],
            Some(status),
            false
        ),
        since = esc(params.get("since").unwrap_or("1h")),
        until = esc(params.get("until").unwrap_or("")),
    )
}

/// `GET /replays?function_id=&status=&since=`.
async fn replays_page(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let params = Params::from(params);
    let body = replays_form(&state, &access, &params, None);
    page("Bulk replay", "/replays", &access, &body)
}

/// `POST /replays`: the new runs.
async fn replays_action(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PageError> {
    let form = Form::read(&headers, body, FORM_OVERHEAD).await?;
    check_post(&headers, &access, &form)?;
    let params = Params(form.0.clone());
    let refuse = |message: &str| {
        let body = replays_form(&state, &access, &params, Some(message));
        html_response(
            StatusCode::BAD_REQUEST,
            layout("Bulk replay", "/replays", Some(&access), &body),
        )
    };
    let function_id = form.get("function_id");
    if state.engine.registry().get(function_id).is_none() {
        return Ok(refuse(&format!(
            "No function {function_id:?} is registered."
        )));
    }
    let status = match form.get("status") {
        "Failed" => RunStatus::Failed,
        "Cancelled" => RunStatus::Cancelled,
        other => {
            return Ok(refuse(&format!(
                "Status must be Failed or Cancelled, not {other:?}."
            )));
        }
    };
    let now = state.engine.now();
    let key = form_key(&form)?;
    // A continuation ("Replay the next ...") carries the window as times and a cursor.
    let continued = (
        DateTime::parse_from_rfc3339(form.get("after")).map(|t| t.with_timezone(&Utc)),
        form.get("before"),
        form.get("cursor"),
    );
    let (after, before, cursor) = if let (Ok(after), before, cursor) = continued {
        let before = DateTime::parse_from_rfc3339(before)
            .ok()
            .map(|t| t.with_timezone(&Utc));
        (
            after,
            before,
            Some(cursor.to_string()).filter(|c| !c.is_empty()),
        )
    } else {
        let Some(since) = parse_window(form.get("since")) else {
            return Ok(refuse(
                "\"Started within the last\" must be a duration such as 1h, 30m or 7d.",
            ));
        };
        let until = match form.get("until").trim() {
            "" => None,
            text => match parse_window(text) {
                Some(d) => Some(d),
                None => {
                    return Ok(refuse(
                        "\"At least this long ago\" must be a duration such as 10m, or empty.",
                    ));
                }
            },
        };
        (now - since, until.map(|d| now - d), None)
    };
    if before.is_some_and(|b| b <= after) {
        return Ok(refuse(
            "The window is empty: \"at least this long ago\" must be shorter than \"within the last\".",
        ));
    }
    let selection = RunSelection {
        function_id: function_id.to_string(),
        started_after: Some(after),
        started_before: before,
        limit: 0,
        cursor,
    };
    let outcome = state
        .engine
        .replay_many(&selection, status, key.as_deref())
        .await?;
    let new_runs = &outcome.run_ids;
    let mut shown = Vec::new();
    for id in new_runs.iter().take(REPLAYS_LISTED) {
        if let Some(run) = state.engine.store().get_run(id).await? {
            shown.push(run.summary(false));
        }
    }
    let mut listed = if shown.is_empty() {
        String::new()
    } else {
        runs_table(&shown, state.engine.now())
    };
    if new_runs.len() > REPLAYS_LISTED {
        let _ = write!(
            listed,
            "<p class=\"note\">and {} more (the first {REPLAYS_LISTED} are listed)</p>",
            new_runs.len() - REPLAYS_LISTED
        );
    }
    let body = format!(
        "<div class=\"title\"><h1>Bulk replay</h1></div>\
         <p class=\"notice\" role=\"status\" id=\"replayed\" data-count=\"{n}\">Replayed {n} {status} run{plural} of \
         <a href=\"/functions/{f_enc}\">{f}</a> started between {after} and {before}.</p>\
         {listed}{more}\
         <p><a href=\"/runs{runs_q}\">Runs of {f} »</a> · <a href=\"/replays{again_q}\">Another bulk replay</a></p>",
        more = next_replay_form(&access, function_id, status, after, before, &outcome),
        n = new_runs.len(),
        status = status.as_str(),
        plural = if new_runs.len() == 1 { "" } else { "s" },
        f_enc = enc(function_id),
        f = esc(function_id),
        after = time(after),
        before = before.map_or_else(|| "now".to_string(), time),
        runs_q = query(&[("function_id", function_id)]),
        again_q = query(&[("function_id", function_id)]),
    );
    Ok(page("Bulk replay", "/replays", &access, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_follow_a_login() {
        assert_eq!(safe_next("/runs?status=Failed"), "/runs?status=Failed");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "evil",
            "/\\evil",
            "",
        ] {
            assert_eq!(safe_next(bad), "/", "{bad:?}");
        }
    }

    #[test]
    fn cross_site_posts_are_refused() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8288")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8288"),
            ("origin", "http://127.0.0.1:8288")
        ])));
        assert!(same_origin(&headers(&[
            ("host", "abc.execute-api.us-east-1.amazonaws.com"),
            ("origin", "https://abc.execute-api.us-east-1.amazonaws.com"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8288"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8288"),
            ("origin", "null")
        ])));
        assert!(same_origin(&headers(&[
            ("host", "internal:3000"),
            ("x-forwarded-host", "baton.example.com"),
            ("origin", "https://baton.example.com")
        ])));
        assert!(!same_origin(&headers(&[(
            "origin",
            "http://127.0.0.1:8288"
        )])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8288"),
            ("sec-fetch-site", "cross-site")
        ])));
    }
}
