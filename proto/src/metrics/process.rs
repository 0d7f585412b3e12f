//! Build information and the process's start time, registered with every
//! service's families.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    service: &'static str,
    version: &'static str,
}

/// Registers `sched_build_info{service, version} 1` and
/// `process_start_time_seconds` (now) in `registry`.
pub fn register(registry: &mut Registry, service: &'static str) {
    let build = Family::<BuildLabels, Gauge>::default();
    build
        .get_or_create(&BuildLabels {
            service,
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
    registry.register(
        "sched_build_info",
        "The running binary: its service and version (always 1)",
        build,
    );
    let start = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    start.set(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    registry.register(
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch, in seconds",
        start,
    );
}
