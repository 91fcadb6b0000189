//! The one route table: every HTTP route the API and the dashboard serve, and the handler
//! that serves it when deployed. [`crate::api_router`] and [`crate::router`] are built from
//! it, and `baton generate` writes each route's Lambda (template.yaml) and Vercel function
//! (vercel.json) from it, so a route cannot be served without being deployed or the reverse.

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (`/health`, the dashboard's sign-in page and assets).
    Open,
    /// The event key in the path (`POST /e/{event_key}`).
    EventKey,
    /// The source's signature over the body (`POST /v1/webhooks/{source}`).
    Signature,
    /// `Authorization: Bearer <signing key>` (the `/v1` REST API).
    SigningKey,
    /// The signing key as a bearer token or a session cookie (the dashboard's pages).
    Session,
}

/// Which part of the HTTP layer serves a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The API: JSON in and out ([`crate::api`]).
    Api,
    /// The dashboard: HTML pages and forms ([`crate::dashboard`]).
    Dashboard,
}

/// One method and path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The deployed handler: one Lambda (and one Vercel function) per name. Every dashboard
    /// path shares one, `route-dashboard`.
    pub handler: &'static str,
    pub method: &'static str,
    /// In axum's syntax, which is API Gateway's too (`/v1/runs/{run_id}`).
    pub path: &'static str,
    pub access: Access,
    pub part: Part,
}

const fn api(
    handler: &'static str,
    method: &'static str,
    path: &'static str,
    access: Access,
) -> Route {
    Route {
        handler,
        method,
        path,
        access,
        part: Part::Api,
    }
}

const fn page(method: &'static str, path: &'static str, access: Access) -> Route {
    Route {
        handler: DASHBOARD_HANDLER,
        method,
        path,
        access,
        part: Part::Dashboard,
    }
}

/// The handler serving every dashboard path.
pub const DASHBOARD_HANDLER: &str = "route-dashboard";

/// Every route, API first.
pub const ROUTES: &[Route] = &[
    api("route-events", "POST", "/e/{event_key}", Access::EventKey),
    api(
        "route-functions",
        "GET",
        "/v1/functions",
        Access::SigningKey,
    ),
    api(
        "route-function-stats",
        "GET",
        "/v1/functions/{function_id}/stats",
        Access::SigningKey,
    ),
    api(
        "route-runs-get",
        "GET",
        "/v1/runs/{run_id}",
        Access::SigningKey,
    ),
    api("route-runs-list", "GET", "/v1/runs", Access::SigningKey),
    api(
        "route-event-runs",
        "GET",
        "/v1/events/{event_id}/runs",
        Access::SigningKey,
    ),
    api(
        "route-runs-cancel",
        "DELETE",
        "/v1/runs/{run_id}",
        Access::SigningKey,
    ),
    api(
        "route-runs-replay",
        "POST",
        "/v1/runs/{run_id}/replay",
        Access::SigningKey,
    ),
    api(
        "route-cancellations",
        "POST",
        "/v1/cancellations",
        Access::SigningKey,
    ),
    api("route-replays", "POST", "/v1/replays", Access::SigningKey),
    api("route-health", "GET", "/health", Access::Open),
    api(
        "route-webhooks",
        "POST",
        "/v1/webhooks/{source}",
        Access::Signature,
    ),
    page("GET", "/", Access::Session),
    page("GET", "/runs", Access::Session),
    page("GET", "/runs/{run_id}", Access::Session),
    page("POST", "/runs/{run_id}/cancel", Access::Session),
    page("POST", "/runs/{run_id}/replay", Access::Session),
    page("GET", "/events/{event_id}", Access::Session),
    page("GET", "/functions", Access::Session),
    page("GET", "/functions/{function_id}", Access::Session),
    page("GET", "/send", Access::Session),
    page("POST", "/send", Access::Session),
    page("GET", "/replays", Access::Session),
    page("POST", "/replays", Access::Session),
    page("POST", "/logout", Access::Session),
    page("GET", "/login", Access::Open),
    page("POST", "/login", Access::Open),
    page("GET", "/assets/{file}", Access::Open),
];

/// The deployed HTTP handlers, each with its routes, in table order.
pub fn handlers() -> Vec<(&'static str, Vec<&'static Route>)> {
    let mut out: Vec<(&'static str, Vec<&'static Route>)> = Vec::new();
    for route in ROUTES {
        match out.iter_mut().find(|(h, _)| *h == route.handler) {
            Some((_, routes)) => routes.push(route),
            None => out.push((route.handler, vec![route])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_unique_and_its_handler_serves_one_part() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    (a.method, a.path) != (b.method, b.path),
                    "{} {} is listed twice",
                    a.method,
                    a.path
                );
            }
        }
        for (handler, routes) in handlers() {
            assert!(
                routes.iter().all(|r| r.part == routes[0].part),
                "{handler} mixes the API and the dashboard"
            );
        }
    }
}
