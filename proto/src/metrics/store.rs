//! etcd commit latency and sizes, from `sched_store::observe::Observed`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use sched_store::observe::{CommitObserver, Outcome};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The store families of one process.
#[derive(Debug)]
pub struct StoreMetrics {
    latency: Histogram,
    writes: Histogram,
    bytes: Histogram,
    commits: Family<OutcomeLabel, Counter>,
}

impl StoreMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let latency = Histogram::new(super::latency_buckets());
        registry.register_with_unit(
            "sched_store_commit_duration",
            "Time of one store commit (an etcd transaction), sent to answered",
            Unit::Seconds,
            latency.clone(),
        );
        let writes = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]);
        registry.register(
            "sched_store_commit_writes",
            "Writes per store commit (etcd allows 128)",
            writes.clone(),
        );
        let bytes = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            256.0, 4.0, 9,
        ));
        registry.register_with_unit(
            "sched_store_commit_size",
            "Keys and values per store commit, in bytes (the limit is 1.4 MB)",
            Unit::Bytes,
            bytes.clone(),
        );
        let commits = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "sched_store_commits",
            "Store commits by outcome: ok, conflict (an expectation failed) or error",
            commits.clone(),
        );
        StoreMetrics {
            latency,
            writes,
            bytes,
            commits,
        }
    }
}

impl CommitObserver for StoreMetrics {
    fn committed(&self, writes: usize, bytes: usize, took: Duration, outcome: Outcome) {
        self.latency.observe(took.as_secs_f64());
        self.writes.observe(writes as f64);
        self.bytes.observe(bytes as f64);
        let outcome = match outcome {
            Outcome::Ok => "ok",
            Outcome::Conflict => "conflict",
            Outcome::Error => "error",
        };
        self.commits.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}
