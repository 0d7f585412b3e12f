//! The status page (`--http-listen`): a read-only view of clusters and
//! jobs for a browser.
//!
//! - this module: the routes and the server;
//! - [`auth`]: who is looking (the same tokens as the API: a bearer header,
//!   or a cookie set from `?token=` or the login form);
//! - [`view`]: what the page shows, as JSON, from the leader's state with
//!   the same tenant filtering as `ListJobs`.
//!
//! The page itself is static HTML, CSS and a small script (embedded with
//! `include_str!`, no build step) that fetches `/api/status` (or
//! `/api/jobs/NAME`) every two seconds and renders it with `textContent`
//! only, so that no job name or command is ever parsed as HTML.

pub mod auth;
pub mod view;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::service::Role;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

type App = Arc<Role>;

/// Serves the status page on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    role: Arc<Role>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "serving the status page");
    axum::serve(listener, router(role))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// The routes: the page (for `/` and `/job/NAME`), its script and style,
/// the JSON it reads, and the login form.
pub fn router(role: Arc<Role>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/job/{name}", get(page))
        .route(
            "/app.js",
            get(|| async { asset("text/javascript", SCRIPT) }),
        )
        .route("/style.css", get(|| async { asset("text/css", STYLE) }))
        .route("/api/status", get(status))
        .route("/api/jobs/{name}", get(job))
        .route("/login", get(auth::login_form).post(auth::login))
        .with_state(role)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Headers every page and answer carries: no framing, no sniffing, and a
/// policy that runs only our own script.
fn hardened(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    r
}

async fn page(State(role): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    hardened(match auth::check(&role, &headers, &uri) {
        auth::Outcome::User(_) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            PAGE,
        )
            .into_response(),
        auth::Outcome::Redirect(r) => r,
        auth::Outcome::Denied(why) => auth::login_page(StatusCode::UNAUTHORIZED, &why),
    })
}

async fn status(State(role): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    hardened(match auth::check(&role, &headers, &uri) {
        auth::Outcome::User(user) => json(StatusCode::OK, &view::status(&role, &user)),
        auth::Outcome::Redirect(_) | auth::Outcome::Denied(_) => unauthorized(),
    })
}

async fn job(
    State(role): State<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    hardened(match auth::check(&role, &headers, &uri) {
        auth::Outcome::User(user) => match view::job(&role, &user, &name) {
            Some(j) => json(StatusCode::OK, &j),
            None => json(
                StatusCode::NOT_FOUND,
                &view::Problem::new(format!("no job {name:?} that you may see")),
            ),
        },
        auth::Outcome::Redirect(_) | auth::Outcome::Denied(_) => unauthorized(),
    })
}

fn unauthorized() -> Response {
    json(
        StatusCode::UNAUTHORIZED,
        &view::Problem::new("a valid token is required".to_string()),
    )
}

fn json<T: serde::Serialize>(code: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            code,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
