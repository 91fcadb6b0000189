//! The HTTP API (docs/API.md) as axum routes: plain request in, response out.
//!
//! Everything the handlers need (the [`Engine`] and the [`Keys`]) lives in the Router's state,
//! and nothing relies on the connection (no `ConnectInfo`), so the same Router serves the
//! local dev server, the Lambda handlers behind API Gateway and the Vercel functions.
//!
//! Every error is JSON: `{"error": "..."}`, and on the event route
//! `{"ids": [], "status": <code>, "error": "..."}` as Inngest answers. Bad input is never a 500:
//! request bodies and query strings are parsed by hand here, so every rejection has the
//! contract's shape and a message that says what was wrong.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use baton::engine::RunSelection;
use baton::engine::{Engine, NewEvent};
use baton::error::{EngineError, StoreError};
use baton::function::Function;
use baton::model::{RunDetail, RunQuery, RunStatus, RunSummary, StepRecord};

use crate::routes::{Access, Part, ROUTES, Route};

/// Runs per page of `GET /v1/runs` when `limit` is not given.
pub const DEFAULT_LIST_LIMIT: usize = 50;
/// The largest `limit` of `GET /v1/runs`.
pub const MAX_LIST_LIMIT: usize = 1000;
/// The largest body of a `/v1` call (they are small JSON objects).
const MAX_V1_BODY_BYTES: usize = 64 * 1024;
/// The longest `Idempotency-Key` header a replay accepts.
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

// ---- keys ----

/// The keys the API checks. An empty `event_keys` accepts any event key, and no
/// `signing_key` leaves `/v1` and the dashboard open: what the local dev server does when
/// nothing is configured.
#[derive(Clone, Default)]
pub struct Keys {
    /// Accepted event keys (the `{event_key}` of `POST /e/{event_key}`).
    pub event_keys: Vec<String>,
    /// `Authorization: Bearer <signing key>` on `/v1` and the dashboard.
    pub signing_key: Option<String>,
    /// Webhook secrets by source (`BATON_WEBHOOK_SECRET_{SOURCE}`); a source without one
    /// refuses every callback.
    pub webhook_secrets: BTreeMap<String, String>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field(
                "event_keys",
                &format_args!("[{} redacted]", self.event_keys.len()),
            )
            .field(
                "signing_key",
                &self.signing_key.as_ref().map(|_| "redacted"),
            )
            .finish()
    }
}

impl Keys {
    /// No keys: any event key is accepted and `/v1` needs no bearer token.
    pub fn open() -> Self {
        Keys::default()
    }

    /// `BATON_EVENT_KEY` (a comma-separated list is allowed), `BATON_SIGNING_KEY`, and the
    /// secret of each of `registry`'s webhook sources.
    pub fn from_env(registry: &baton::Registry) -> Self {
        let mut keys = Keys::parse(
            std::env::var("BATON_EVENT_KEY").ok().as_deref(),
            std::env::var("BATON_SIGNING_KEY").ok().as_deref(),
        );
        for source in registry.webhooks() {
            if let Ok(secret) = std::env::var(source.secret_env()) {
                if !secret.trim().is_empty() {
                    keys.webhook_secrets
                        .insert(source.source.clone(), secret.trim().to_owned());
                }
            }
        }
        keys
    }

    /// With the secret of one webhook source.
    pub fn with_webhook_secret(mut self, source: &str, secret: &str) -> Self {
        self.webhook_secrets
            .insert(source.to_owned(), secret.to_owned());
        self
    }

    /// What [`Keys::from_env`] does with the two variables' values: event keys are split on
    /// commas and trimmed, and blank values count as not configured.
    pub fn parse(event_keys: Option<&str>, signing_key: Option<&str>) -> Self {
        let event_keys = event_keys
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(String::from)
            .collect();
        let signing_key = signing_key
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(String::from);
        Keys {
            event_keys,
            signing_key,
            webhook_secrets: BTreeMap::new(),
        }
    }
}

/// The keys as the handlers compare them: digests, so the comparison takes the same time
/// whatever the length or content of the key presented.
pub(crate) struct KeyDigests {
    event_keys: Vec<[u8; 32]>,
    signing_key: Option<[u8; 32]>,
    /// HMAC keys: kept as they are (a digest would be another key).
    webhook_secrets: BTreeMap<String, String>,
}

fn digest(key: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(key.as_bytes()));
    out
}

impl KeyDigests {
    fn new(keys: &Keys) -> Self {
        KeyDigests {
            event_keys: keys.event_keys.iter().map(|k| digest(k)).collect(),
            signing_key: keys.signing_key.as_deref().map(digest),
            webhook_secrets: keys.webhook_secrets.clone(),
        }
    }

    fn event_key_ok(&self, presented: &str) -> bool {
        if self.event_keys.is_empty() {
            return true;
        }
        let presented = digest(presented);
        // Every configured key is compared, so the time does not say which one matched.
        let matched = self
            .event_keys
            .iter()
            .fold(Choice::from(0), |acc, k| acc | k.ct_eq(&presented));
        matched.into()
    }

    /// The signing key's digest (the dashboard keys its session cookies with it), `None`
    /// when no key is configured.
    pub(crate) fn signing_key_digest(&self) -> Option<&[u8; 32]> {
        self.signing_key.as_ref()
    }

    pub(crate) fn signing_key_ok(&self, presented: Option<&str>) -> Result<(), &'static str> {
        let Some(expected) = &self.signing_key else {
            return Ok(());
        };
        let Some(presented) = presented else {
            return Err("missing signing key: send Authorization: Bearer <signing key>");
        };
        if bool::from(expected.ct_eq(&digest(presented))) {
            Ok(())
        } else {
            Err("invalid signing key")
        }
    }
}

// ---- the router ----

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) engine: Engine,
    pub(crate) keys: Arc<KeyDigests>,
}

impl AppState {
    pub(crate) fn new(engine: Engine, keys: &Keys) -> Self {
        AppState {
            engine,
            keys: Arc::new(KeyDigests::new(keys)),
        }
    }
}

/// The handler of an API route of the table ([`crate::routes::ROUTES`]).
fn handler(route: &Route) -> MethodRouter<AppState> {
    match (route.method, route.path) {
        ("POST", "/e/{event_key}") => post(send_events),
        ("GET", "/v1/functions") => get(list_functions),
        ("GET", "/v1/functions/{function_id}/stats") => get(function_stats),
        ("GET", "/v1/runs") => get(list_runs),
        ("GET", "/v1/runs/{run_id}") => get(get_run),
        ("DELETE", "/v1/runs/{run_id}") => delete(cancel_run),
        ("POST", "/v1/runs/{run_id}/replay") => post(replay_run),
        ("GET", "/v1/events/{event_id}/runs") => get(event_runs),
        ("POST", "/v1/cancellations") => post(bulk_cancel),
        ("POST", "/v1/replays") => post(bulk_replay),
        ("POST", "/v1/webhooks/{source}") => post(webhook),
        ("GET", "/health") => get(health),
        (method, path) => unreachable!("the route table lists {method} {path} without a handler"),
    }
}

/// The API's routes of the table (webhooks check their own signatures, the event route its
/// key, `/v1` the signing key).
pub(crate) fn routes(state: &AppState) -> Router<AppState> {
    let mut open = Router::new();
    let mut authed = Router::new();
    for route in ROUTES.iter().filter(|r| r.part == Part::Api) {
        match route.access {
            Access::SigningKey => authed = authed.route(route.path, handler(route)),
            _ => open = open.route(route.path, handler(route)),
        }
    }
    let authed = authed
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_signing_key,
        ));
    open.method_not_allowed_fallback(method_not_allowed)
        .merge(authed)
}

/// `routes` with the fallbacks and limits every router has, and its state.
pub(crate) fn finish(routes: Router<AppState>, state: AppState) -> Router {
    let open = state.keys.signing_key_digest().is_none();
    let router = routes
        .fallback(not_found)
        // Bodies are read by the handlers themselves, with the engine's limits, so that a
        // too-large body gets the contract's 413 rather than axum's plain-text one.
        .layer(DefaultBodyLimit::disable())
        .with_state(state);
    if open {
        router.layer(axum::middleware::from_fn(crate::guard::open_server))
    } else {
        router
    }
}

// ---- errors ----

/// An error answered as `{"error": message}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, axum::Json(json!({"error": self.message}))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Invalid(m) => ApiError::bad_request(m),
            EngineError::TooLarge(m) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, m),
            EngineError::NotFound(m) => ApiError::not_found(format!("{m} not found")),
            EngineError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            EngineError::Store(e) => e.into(),
            e @ EngineError::Queue(_) => outage(
                StatusCode::SERVICE_UNAVAILABLE,
                "the queue is unavailable, try again",
                &e,
            ),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // A record over the backend's item size is the sender's input, not an outage.
            e @ StoreError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            }
            e @ StoreError::Corrupt(_) => outage(
                StatusCode::INTERNAL_SERVER_ERROR,
                "a stored record could not be read",
                &e,
            ),
            e @ StoreError::Backend(_) => outage(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store is unavailable, try again",
                &e,
            ),
        }
    }
}

/// A failure of the server's own backends: logged in full under a reference, answered with
/// the reference and nothing of the backend's message (table names, SQL, endpoints).
fn outage(status: StatusCode, what: &str, e: &dyn std::fmt::Display) -> ApiError {
    let reference = format!("{:016x}", rand::random::<u64>());
    tracing::error!(reference, error = %e, "{what}");
    ApiError::new(
        status,
        format!("{what} (reference {reference} in the server log)"),
    )
}

/// The event API's error shape: `{"ids": [], "status": code, "error": message}`.
struct EventError(ApiError);

impl IntoResponse for EventError {
    fn into_response(self) -> Response {
        let ApiError { status, message } = self.0;
        (
            status,
            axum::Json(json!({"ids": [], "status": status.as_u16(), "error": message})),
        )
            .into_response()
    }
}

impl<E: Into<ApiError>> From<E> for EventError {
    fn from(e: E) -> Self {
        EventError(e.into())
    }
}

fn path_error(e: PathRejection) -> ApiError {
    ApiError::bad_request(format!("invalid path: {}", e.body_text()))
}

fn query_error(e: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("invalid query string: {}", e.body_text()))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

async fn require_signing_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let presented = bearer(request.headers());
    match state.keys.signing_key_ok(presented) {
        Ok(()) => next.run(request).await,
        Err(message) => ApiError::new(StatusCode::UNAUTHORIZED, message).into_response(),
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme is case-insensitive).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

// ---- bodies ----

pub(crate) enum BodyError {
    TooLarge,
    Unreadable(String),
}

/// Reads the whole body, refusing (without reading it all) one over `limit` bytes.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Err(e) => Err(BodyError::Unreadable(e.to_string())),
    }
}

/// The JSON object body of a `/v1` call, refusing fields outside `allowed` (a misspelt
/// filter on a bulk operation must not widen it to every run).
async fn json_object(
    headers: &HeaderMap,
    body: Body,
    allowed: &[&str],
) -> Result<Map<String, Value>, ApiError> {
    json_object_or_empty(headers, body, allowed)
        .await?
        .ok_or_else(|| ApiError::bad_request("request body must be a JSON object"))
}

/// [`json_object`], or None for an empty body (an endpoint whose fields are all optional).
async fn json_object_or_empty(
    headers: &HeaderMap,
    body: Body,
    allowed: &[&str],
) -> Result<Option<Map<String, Value>>, ApiError> {
    let bytes = match read_body(headers, body, MAX_V1_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is over the limit of {MAX_V1_BODY_BYTES} bytes"),
            ));
        }
        Err(BodyError::Unreadable(e)) => {
            return Err(ApiError::bad_request(format!(
                "could not read the body: {e}"
            )));
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown field {unknown:?} (allowed: {})",
            allowed.join(", ")
        )));
    }
    Ok(Some(map))
}

fn parse_time(field: &str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::bad_request(format!(
                "{field} must be an RFC 3339 time such as 2025-01-31T12:00:00Z, got {s:?}: {e}"
            ))
        })
}

fn optional_time(map: &Map<String, Value>, field: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_time(field, s).map(Some),
        Some(other) => Err(ApiError::bad_request(format!(
            "{field} must be an RFC 3339 string, got {other}"
        ))),
    }
}

fn check_window(
    after: Option<DateTime<Utc>>,
    before: Option<DateTime<Utc>>,
) -> Result<(), ApiError> {
    match (after, before) {
        (Some(a), Some(b)) if a >= b => Err(ApiError::bad_request(
            "started_after must be before started_before",
        )),
        _ => Ok(()),
    }
}

/// The body's `function_id`, which must name a registered function.
fn function_id(engine: &Engine, map: &Map<String, Value>) -> Result<String, ApiError> {
    match map.get("function_id") {
        Some(Value::String(id)) if engine.registry().get(id).is_some() => Ok(id.clone()),
        Some(Value::String(id)) => Err(ApiError::not_found(format!("function {id:?} not found"))),
        None | Some(Value::Null) => Err(ApiError::bad_request("function_id is required")),
        Some(other) => Err(ApiError::bad_request(format!(
            "function_id must be a string, got {other}"
        ))),
    }
}

// ---- JSON shapes ----

fn time(t: DateTime<Utc>) -> String {
    // Full precision, so a time read here and sent back as a filter round-trips exactly.
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn opt_time(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(time(t)))
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A run as the list endpoints show it (no steps).
fn run_json(run: &RunSummary) -> Map<String, Value> {
    let value = json!({
        "run_id": run.run_id,
        "function_id": run.function_id,
        "event_id": run.event_id,
        "status": run.status.as_str(),
        "run_started_at": time(run.started_at),
        "ended_at": opt_time(run.ended_at),
        "output": run.output.clone().unwrap_or(Value::Null),
        "error": to_value(&run.error),
        "progress": to_value(&run.progress),
        "replay_of": run.replay_of,
        "replay_from": run.replay_from,
        "event_name": run.event_name,
    });
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn step_json(step: &StepRecord) -> Value {
    json!({
        "id": step.step_id,
        "name": step.name,
        "kind": step.kind.as_str(),
        "status": step.status.as_str(),
        "attempts": step.attempts,
        "planned_at": time(step.planned_at),
        "started_at": opt_time(step.started_at),
        "ended_at": opt_time(step.ended_at),
        "wake_at": opt_time(step.wake_at),
        "output": step.output.clone().unwrap_or(Value::Null),
        "error": to_value(&step.error),
    })
}

/// A run with its steps and its event, as `GET /v1/runs/{id}` shows it.
fn run_detail_json(detail: &RunDetail) -> Value {
    let mut run = run_json(&detail.run.summary(true));
    run.insert("event".into(), detail.run.event.to_json());
    run.insert("steps".into(), detail.steps.iter().map(step_json).collect());
    Value::Object(run)
}

fn seconds(d: std::time::Duration) -> Value {
    if d.subsec_nanos() == 0 {
        Value::from(d.as_secs())
    } else {
        Value::from(d.as_secs_f64())
    }
}

fn function_json(f: &Function) -> Value {
    let triggers: Vec<Value> = f
        .triggers
        .iter()
        // A cron's own trigger shows as the cron.
        .filter(|t| t.event != baton::function::SCHEDULED || f.crons.is_empty())
        .map(|t| match t.expression() {
            Some(expression) => json!({"event": t.event, "expression": expression}),
            None => json!({"event": t.event}),
        })
        .chain(f.crons.iter().map(|c| json!({"cron": c})))
        .collect();
    let steps: Vec<Value> = f
        .steps
        .iter()
        .map(|(name, config)| {
            json!({
                "name": name,
                "timeout_s": seconds(config.timeout),
                "memory_mb": config.memory_mb,
                "retries": f.step_retries(name),
                "host": config.host.as_str(),
            })
        })
        .collect();
    json!({
        "id": f.id,
        "name": f.name,
        "triggers": triggers,
        "steps": steps,
        "retries": f.retries,
        "concurrency": f.flow.concurrency.iter().map(|c| json!({"limit": c.limit, "key": c.key})).collect::<Vec<_>>(),
        "throttle": f.flow.throttle.as_ref().map(|r| json!({"limit": r.limit, "period_s": seconds(r.period), "key": r.key})),
        "rate_limit": f.flow.rate_limit.as_ref().map(|r| json!({"limit": r.limit, "period_s": seconds(r.period), "key": r.key})),
        "debounce": f.flow.debounce.as_ref().map(|d| json!({"period_s": seconds(d.period), "key": d.key})),
        "waits_for": f.waits.iter().map(|(event, field)| json!({"event": event, "match": field})).collect::<Vec<_>>(),
        "idempotency": f.idempotency,
        "cancel_on": f.cancel_on.iter().map(|c| json!({"event": c.event, "match": c.path})).collect::<Vec<_>>(),
        "timeouts": {
            "start_s": f.start_timeout.map(seconds),
            "finish_s": f.finish_timeout.map(seconds),
        },
        "on_failure": f.has_failure_handler(),
        "failure_of": f.failure_of,
    })
}

// ---- events ----

/// The body of an event route, at most `limit` bytes: 413 past it, 400 when unreadable.
async fn read_event_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, EventError> {
    read_body(headers, body, limit).await.map_err(|e| match e {
        BodyError::TooLarge => EventError(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is over the limit of {limit} bytes"),
        )),
        BodyError::Unreadable(e) => EventError(ApiError::bad_request(format!(
            "could not read the body: {e}"
        ))),
    })
}

/// `POST /e/{event_key}`: one event or an array of them.
async fn send_events(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, EventError> {
    let Path(key) = key.map_err(path_error)?;
    if !state.keys.event_key_ok(&key) {
        return Err(EventError(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid event key",
        )));
    }
    let engine = &state.engine;
    let limits = engine.limits();
    let bytes = read_event_body(&headers, body, limits.max_request_bytes).await?;
    let body: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
    let (values, batch) = match body {
        Value::Array(values) => (values, true),
        single @ Value::Object(_) => (vec![single], false),
        other => {
            return Err(EventError(ApiError::bad_request(format!(
                "request body must be an event object or an array of events, got {}",
                json_type(&other)
            ))));
        }
    };
    if values.is_empty() {
        return Err(EventError(ApiError::bad_request(
            "the request has no events",
        )));
    }
    if values.len() > limits.max_events_per_request {
        return Err(EventError(ApiError::bad_request(format!(
            "{} events in one request, over the limit of {}",
            values.len(),
            limits.max_events_per_request
        ))));
    }
    let mut events = Vec::with_capacity(values.len());
    for (i, value) in values.into_iter().enumerate() {
        let which = |message: String| {
            if batch {
                format!("event {i}: {message}")
            } else {
                message
            }
        };
        let event = parse_event(value).map_err(|m| ApiError::bad_request(which(m)))?;
        // The engine validates again before storing; checking here names the bad event.
        engine.validate_event(&event, false).map_err(|e| {
            let ApiError { status, message } = ApiError::from(e);
            ApiError::new(status, which(message))
        })?;
        events.push(event);
    }
    let total = events.len();
    let names: Vec<String> = events.iter().map(|e| e.name.clone()).collect();
    let (ids, result) = engine.send_events_partial(events).await;
    if let Err(e) = result {
        let ApiError { status, message } = e.into();
        if ids.is_empty() {
            return Err(EventError(ApiError::new(status, message)));
        }
        // The stored ones are named, so the sender resends only the rest.
        let message = format!(
            "{} of {total} events were stored (their ids are listed; their runs start); the rest were not: {message}",
            ids.len()
        );
        return Ok((
            status,
            axum::Json(json!({"ids": ids, "status": status.as_u16(), "error": message})),
        )
            .into_response());
    }
    engine.cancel_runs_for(&names, &ids).await?;
    Ok((
        StatusCode::OK,
        axum::Json(json!({"ids": ids, "status": 200})),
    )
        .into_response())
}

/// `POST /v1/webhooks/{source}`: a signed callback becomes the event `{source}/{event}` with
/// the body as data. 404 for an unknown source, 503 when its secret is not configured, 401
/// for a bad signature or a stale timestamp (nothing is stored), 400 for a body that is not
/// JSON, 413 past the event size limit. Answers like `POST /e`.
async fn webhook(
    State(state): State<AppState>,
    source: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, EventError> {
    let Path(source) = source.map_err(path_error)?;
    let engine = &state.engine;
    let Some(config) = engine.registry().webhook_source(&source) else {
        return Err(EventError(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown webhook source {source:?}"),
        )));
    };
    let Some(secret) = state.keys.webhook_secrets.get(&source) else {
        return Err(EventError(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "webhook source {source:?} has no secret configured: set {}",
                config.secret_env()
            ),
        )));
    };
    let bytes = read_event_body(&headers, body, engine.limits().max_event_bytes).await?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    config
        .verify(secret.as_bytes(), header, &bytes, engine.now())
        .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()))?;
    let data: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    // The signed material (`{timestamp}.{body}`, or the body) names the callback: the same
    // captured request sent again, with any delivery id or none, is the same event. Only the
    // signature covers it; a delivery id header does not, so it may not move the material to
    // a new event.
    let material = format!("webhook:{source}:{}", config.signed_digest(header, &bytes));
    let event_id = match config.id_header.as_deref() {
        None => material,
        Some(name) => {
            let delivery = header(name)
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .ok_or_else(|| ApiError::bad_request(format!("the {name} header is required")))?;
            let delivery = format!("{source}:{delivery}");
            let now = engine.now();
            let until = baton::engine::later(now, engine.limits().idempotency_window);
            let holder = engine
                .store()
                .claim_idempotency_id(&material, &delivery, now, until)
                .await?;
            if let Some(holder) = holder.filter(|h| *h != delivery) {
                return Err(EventError(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "this signed request was already delivered as {holder:?}: a replay starts nothing"
                    ),
                )));
            }
            delivery
        }
    };
    let event = NewEvent::new(config.event_name(), data).with_id(event_id);
    engine.validate_event(&event, false)?;
    let ids = engine.send_events(vec![event]).await?;
    Ok((
        StatusCode::OK,
        axum::Json(json!({"ids": ids, "status": 200})),
    )
        .into_response())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One event of the request body, with a message naming the field that is wrong.
fn parse_event(value: Value) -> Result<NewEvent, String> {
    let Value::Object(mut map) = value else {
        return Err(format!(
            "an event must be a JSON object, got {}",
            json_type(&value)
        ));
    };
    let name = match map.remove("name") {
        Some(Value::String(name)) => name,
        None | Some(Value::Null) => return Err("event name is required (\"name\": string)".into()),
        Some(other) => {
            return Err(format!(
                "event name must be a string, got {}",
                json_type(&other)
            ));
        }
    };
    let data = match map.remove("data") {
        None | Some(Value::Null) => Value::Null,
        Some(data @ Value::Object(_)) => data,
        Some(other) => {
            return Err(format!(
                "event data must be a JSON object, got {}",
                json_type(&other)
            ));
        }
    };
    let id = match map.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if id.is_empty() => None,
        Some(Value::String(id)) => Some(id),
        Some(other) => {
            return Err(format!(
                "event id must be a string, got {}",
                json_type(&other)
            ));
        }
    };
    let ts = match map.remove("ts") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(ts) if ts >= 0 => Some(ts),
            _ => {
                return Err(format!(
                    "event ts must be a non-negative integer (milliseconds), got {n}"
                ));
            }
        },
        Some(other) => {
            return Err(format!(
                "event ts must be an integer (milliseconds), got {}",
                json_type(&other)
            ));
        }
    };
    let user = match map.remove("user") {
        None | Some(Value::Null) => None,
        Some(user @ Value::Object(_)) => Some(user),
        Some(other) => {
            return Err(format!(
                "event user must be a JSON object, got {}",
                json_type(&other)
            ));
        }
    };
    let v = match map.remove("v") {
        None | Some(Value::Null) => None,
        Some(Value::String(v)) => Some(v),
        Some(other) => {
            return Err(format!(
                "event v must be a string, got {}",
                json_type(&other)
            ));
        }
    };
    // Other fields are ignored, as Inngest does.
    Ok(NewEvent {
        name,
        data,
        id,
        ts,
        user,
        v,
    })
}

// ---- functions and runs ----

/// `GET /v1/functions`
async fn list_functions(State(state): State<AppState>) -> Response {
    let data: Vec<Value> = state
        .engine
        .registry()
        .functions()
        .map(|f| function_json(f))
        .collect();
    axum::Json(json!({ "data": data })).into_response()
}

/// `GET /v1/functions/{function_id}/stats?window=24h`: runs in the window by status, success
/// rate, p50/p95 duration ([`crate::stats`]; at most
/// [`crate::stats::MAX_STATS_RUNS`] runs are read, `truncated` says when there were more).
async fn function_stats(
    State(state): State<AppState>,
    function_id: Result<Path<String>, PathRejection>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(function_id) = function_id.map_err(path_error)?;
    let Query(params) = params.map_err(query_error)?;
    if state.engine.registry().get(&function_id).is_none() {
        return Err(ApiError::not_found(format!(
            "function {function_id:?} not found"
        )));
    }
    let label = params
        .iter()
        .find(|(k, v)| k == "window" && !v.is_empty())
        .map_or("24h", |(_, v)| v.as_str());
    let window = crate::stats::parse_window(label).ok_or_else(|| {
        ApiError::bad_request(format!(
            "window must be a duration such as 1h, 24h or 7d, got {label:?}"
        ))
    })?;
    let stats = crate::stats::function_stats(
        state.engine.store().as_ref(),
        &function_id,
        label,
        window,
        state.engine.now(),
        crate::stats::MAX_STATS_RUNS,
    )
    .await?;
    Ok(axum::Json(json!({ "data": stats.to_json() })).into_response())
}

/// `GET /v1/runs/{run_id}`
async fn get_run(
    State(state): State<AppState>,
    run_id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(run_id) = run_id.map_err(path_error)?;
    let detail = state
        .engine
        .get_run(&run_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {run_id} not found")))?;
    Ok(axum::Json(json!({ "data": run_detail_json(&detail) })).into_response())
}

/// `GET /v1/runs?function_id=&status=&limit=&cursor=&started_after=&started_before=`.
/// Empty parameters count as absent; unknown ones are ignored.
async fn list_runs(
    State(state): State<AppState>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(query_error)?;
    let mut query = RunQuery {
        limit: DEFAULT_LIST_LIMIT,
        with_output: true,
        ..RunQuery::default()
    };
    for (key, value) in params {
        if value.is_empty() {
            continue;
        }
        match key.as_str() {
            "function_id" => query.function_id = Some(value),
            "status" => {
                let status = RunStatus::ALL
                    .into_iter()
                    .find(|s| s.as_str().eq_ignore_ascii_case(&value));
                query.status = Some(status.ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "status must be one of Queued, Running, Completed, Failed, Cancelled; got {value:?}"
                    ))
                })?);
            }
            "limit" => {
                query.limit = match value.trim().parse::<usize>() {
                    Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => n,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "limit must be an integer from 1 to {MAX_LIST_LIMIT}, got {value:?}"
                        )));
                    }
                }
            }
            "cursor" => query.cursor = Some(value),
            "started_after" => query.started_after = Some(parse_time("started_after", &value)?),
            "started_before" => query.started_before = Some(parse_time("started_before", &value)?),
            _ => {}
        }
    }
    check_window(query.started_after, query.started_before)?;
    let page = state.engine.store().list_runs(&query).await?;
    let data: Vec<Value> = page
        .runs
        .iter()
        .map(|r| Value::Object(run_json(r)))
        .collect();
    Ok(axum::Json(json!({
        "data": data,
        "cursor": page.cursor,
        "unreadable": page.unreadable,
    }))
    .into_response())
}

/// `GET /v1/events/{event_id}/runs`: every run the event started (replays included), oldest
/// first. 404 when there is no such event.
async fn event_runs(
    State(state): State<AppState>,
    event_id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(event_id) = event_id.map_err(path_error)?;
    let store = state.engine.store();
    let runs = store.runs_for_event(&event_id).await?;
    if runs.is_empty() && store.get_event(&event_id).await?.is_none() {
        return Err(ApiError::not_found(format!("event {event_id} not found")));
    }
    let data: Vec<Value> = runs.iter().map(|r| Value::Object(run_json(r))).collect();
    Ok(axum::Json(json!({ "data": data })).into_response())
}

/// `DELETE /v1/runs/{run_id}`: 200 with the cancelled run, 409 when it had already ended.
async fn cancel_run(
    State(state): State<AppState>,
    run_id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(run_id) = run_id.map_err(path_error)?;
    let run = state.engine.cancel(&run_id).await?;
    let steps = state.engine.store().journal(&run_id).await?;
    Ok(axum::Json(json!({ "data": run_detail_json(&RunDetail { run, steps }) })).into_response())
}

/// `POST /v1/runs/{run_id}/replay`, body empty or `{"from_step"?}`: 201 with the new run's
/// id. With `from_step` (a step id of the run), the new run reuses the recorded results of
/// the steps before it and runs it and the rest again.
async fn replay_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    run_id: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(run_id) = run_id.map_err(path_error)?;
    let key = idempotency_key(&headers)?;
    let body = json_object_or_empty(&headers, body, &["from_step"]).await?;
    let from_step = match body.as_ref().and_then(|b| b.get("from_step")) {
        None | Some(Value::Null) => None,
        Some(Value::String(step)) if !step.is_empty() => Some(step.as_str()),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "from_step must be a step id (a non-empty string), got {other}"
            )));
        }
    };
    let new_run = match from_step {
        Some(step) => {
            state
                .engine
                .replay_from(&run_id, step, key.as_deref())
                .await?
        }
        None => state.engine.replay(&run_id, key.as_deref()).await?,
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"data": {"run_id": new_run}})),
    )
        .into_response())
}

/// `POST /v1/cancellations` `{"function_id", "started_after"?, "started_before"?, "limit"?,
/// "cursor"?}`: cancels one page of live runs (at most `limit`, default and most
/// [`baton::Limits::max_bulk_runs`]); `cursor` in the answer says more may remain.
async fn bulk_cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let map = json_object(
        &headers,
        body,
        &[
            "function_id",
            "started_after",
            "started_before",
            "limit",
            "cursor",
        ],
    )
    .await?;
    let selection = selection(&state.engine, &map)?;
    let outcome = state.engine.cancel_many(&selection).await?;
    Ok(axum::Json(json!({"data": {
        "cancelled": outcome.run_ids.len(),
        "run_ids": outcome.run_ids,
        "cursor": outcome.cursor,
        "unreadable": outcome.unreadable,
    }}))
    .into_response())
}

/// `POST /v1/replays` `{"function_id", "status": "Failed"|"Cancelled", "started_after"?,
/// "started_before"?, "limit"?, "cursor"?}`: replays one page of runs. With an
/// `Idempotency-Key` header, the same request again starts nothing new.
async fn bulk_replay(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let map = json_object(
        &headers,
        body,
        &[
            "function_id",
            "status",
            "started_after",
            "started_before",
            "limit",
            "cursor",
        ],
    )
    .await?;
    let selection = selection(&state.engine, &map)?;
    let status = match map.get("status") {
        Some(Value::String(s)) if s == "Failed" => RunStatus::Failed,
        Some(Value::String(s)) if s == "Cancelled" => RunStatus::Cancelled,
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "status is required: \"Failed\" or \"Cancelled\"",
            ));
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "status must be \"Failed\" or \"Cancelled\", got {other}"
            )));
        }
    };
    let outcome = state
        .engine
        .replay_many(&selection, status, key.as_deref())
        .await?;
    Ok(axum::Json(json!({"data": {
        "run_ids": outcome.run_ids,
        "cursor": outcome.cursor,
        "unreadable": outcome.unreadable,
    }}))
    .into_response())
}

/// The runs a bulk request names: a registered function, a time window, a page size and
/// where the previous page stopped.
fn selection(engine: &Engine, map: &Map<String, Value>) -> Result<RunSelection, ApiError> {
    let function_id = function_id(engine, map)?;
    let started_after = optional_time(map, "started_after")?;
    let started_before = optional_time(map, "started_before")?;
    check_window(started_after, started_before)?;
    let max = engine.limits().max_bulk_runs;
    let limit = match map.get("limit") {
        None | Some(Value::Null) => max,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) if (1..=max as u64).contains(&n) => n as usize,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit must be an integer from 1 to {max}, got {n}"
                )));
            }
        },
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "limit must be an integer from 1 to {max}, got {other}"
            )));
        }
    };
    let cursor = match map.get("cursor") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => Some(c.clone()),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "cursor must be a string, got {other}"
            )));
        }
    };
    Ok(RunSelection {
        function_id,
        started_after,
        started_before,
        limit,
        cursor,
    })
}

/// The `Idempotency-Key` header of a replay: printable ASCII, 1 to [`MAX_IDEMPOTENCY_KEY`]
/// bytes.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY => Ok(Some(key.to_owned())),
        _ => Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
        ))),
    }
}

// ---- other ----

/// `GET /health`
async fn health(State(state): State<AppState>) -> Response {
    axum::Json(json!({"status": "ok", "backend": state.engine.store().backend()})).into_response()
}
