//! `GET /metrics` over plain HTTP/1.1 (axum), the endpoint of
//! `--metrics-listen`.
//!
//! The endpoint has no TLS and no tokens, as Prometheus endpoints usually
//! do not: listen on loopback or on a network only the monitoring reaches.
//! It tells counts and timings, never a job's spec or a token.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What a scrape answers: the exposition, encoded fresh for each scrape
/// (gauges that are cheaper to read than to keep, such as tasks by state,
/// are sampled here).
pub type Exposition = Arc<dyn Fn() -> String + Send + Sync>;

/// The OpenMetrics text format (what `prometheus_client` encodes), for
/// scrapers that ask for it.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Prometheus text format, for everyone else.
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds the `--metrics-listen` address (`HOST:PORT`).
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    exposition: Exposition,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(a) = listener.local_addr() {
        tracing::info!(addr = %a, "serving metrics at /metrics");
    }
    let app = axum::Router::new()
        .route("/metrics", get(scrape))
        .with_state(exposition);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Spawns [`serve`], logging its failure.
pub fn spawn(listener: TcpListener, exposition: Exposition, shutdown: CancellationToken) {
    tokio::spawn(async move {
        if let Err(e) = serve(listener, exposition, shutdown).await {
            tracing::error!(cause = %e, "the metrics endpoint stopped");
        }
    });
}

async fn scrape(
    State(exposition): State<Exposition>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    // Encoding reads locks the services also take: off the async workers.
    let body = tokio::task::spawn_blocking(move || exposition())
        .await
        .unwrap_or_default();
    if openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], body)
    } else {
        (
            [(header::CONTENT_TYPE, TEXT)],
            super::text::from_openmetrics(&body),
        )
    }
}
