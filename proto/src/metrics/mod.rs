//! What every service's `--metrics-listen` endpoint shares.
//!
//! Each service keeps its own metric families in one module of its crate
//! (`global_scheduler::metrics`, `local_agent::metrics`), registered once in
//! a process-wide registry; this module holds what they have in common:
//! - [`http`]: serving `GET /metrics` with axum, in OpenMetrics or (by
//!   [`text`]) in the older Prometheus text format, as the scraper asks;
//! - [`grpc`]: a tower layer counting every gRPC call by method and code;
//! - [`store`]: etcd commit latency and sizes, fed by
//!   `sched_store::observe::Observed`;
//! - [`process`]: build information and the process's start time;
//! - [`policy`]: policy reloads and applies by outcome.
//!
//! Names follow Prometheus' conventions: a `sched_` prefix (the standard
//! `process_` names excepted), base units in the name (`_seconds`,
//! `_bytes`), and `_total` on counters (added by the client library).

pub mod grpc;
pub mod http;
pub mod policy;
pub mod process;
pub mod store;
pub mod text;

pub use prometheus_client::registry::Registry;

/// Buckets for latencies from a millisecond to a minute, in seconds.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ]
    .into_iter()
}

/// Buckets for counts of things from 1 to 10,000.
pub fn count_buckets() -> impl Iterator<Item = f64> {
    [
        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 10_000.0,
    ]
    .into_iter()
}

/// The registry's exposition in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; the error type is fmt's.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(cause = %e, "cannot encode the metrics");
    }
    out
}
