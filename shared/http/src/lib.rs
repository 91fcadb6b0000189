//! Baton's HTTP layer: the API (docs/API.md: Inngest-compatible events, the `/v1` REST API,
//! webhooks) and the dashboard, as one axum [`Router`] over an [`Engine`]. Plain request in,
//! response out: the same Router serves the local dev server, the Lambda routes behind API
//! Gateway and the Vercel functions.
//!
//! - [`routes`]: the one route table: every method and path, who may call it, and which
//!   deployed handler serves it. The routers are built from it, and so are the deployments.
//! - [`api`]: the API's handlers, [`Keys`], errors.
//! - [`dashboard`] (feature `dashboard`): the server-rendered pages.
//! - [`stats`]: a function's figures over a window (the dashboard and `/v1/functions/{id}/stats`).
//! - `guard`: what a server without a signing key refuses (other host names, cross-site
//!   writes).

pub mod api;
#[cfg(feature = "dashboard")]
pub mod dashboard;
mod guard;
pub mod routes;
pub mod stats;

use axum::Router;
use baton::Engine;

pub use api::Keys;

/// The whole HTTP layer over `engine`: the API's routes and, with the `dashboard` feature
/// (default), the dashboard's.
pub fn router(engine: Engine, keys: Keys) -> Router {
    let state = api::AppState::new(engine, &keys);
    let routes = api::routes(&state);
    #[cfg(feature = "dashboard")]
    let routes = routes.merge(dashboard::routes(&state));
    api::finish(routes, state)
}

/// The API's routes only (what an API route's Lambda serves; the dashboard's pages answer
/// 404 here).
pub fn api_router(engine: Engine, keys: Keys) -> Router {
    let state = api::AppState::new(engine, &keys);
    let routes = api::routes(&state);
    api::finish(routes, state)
}
