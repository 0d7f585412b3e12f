//! The global scheduler's metrics, served at `--metrics-listen`'s
//! `/metrics`.
//!
//! The families are process-wide ([`metrics`]), registered once. Counters
//! and histograms are updated where things happen, once per pass or per
//! commit (task placements are observed per task, a few atomic updates
//! each). Gauges that would cost a write on every task change (tasks by
//! state, pending work, cluster utilization) are sampled from the leader's
//! state when Prometheus scrapes.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use sched_proto::metrics::grpc::GrpcMetrics;
use sched_proto::metrics::http::Exposition;
use sched_proto::metrics::policy::PolicyMetrics;
use sched_proto::metrics::store::StoreMetrics;

use crate::records::TaskState;
use crate::service::Role;
use crate::state::State;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabel {
    cluster: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    cluster: String,
    resource: &'static str,
}

/// Every family of the global scheduler.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The tonic layer counting calls.
    pub grpc: GrpcMetrics,
    /// Told of every store commit (`sched_store::observe::Observed`).
    pub store: Arc<StoreMetrics>,
    /// Submit to placed on a machine, per task's first placement.
    pub scheduling_latency: Histogram,
    /// One scheduling pass: plan, commit, hand over.
    pub pass_duration: Histogram,
    /// Tasks assigned to clusters by passes.
    pub tasks_assigned: Counter,
    /// 1 while this replica leads.
    pub leader: Gauge,
    /// Policy reloads and applies by outcome.
    pub policy: PolicyMetrics,
    pending_jobs: Gauge,
    pending_tasks: Gauge,
    tasks: Family<StateLabel, Gauge>,
    cluster_up: Family<ClusterLabel, Gauge>,
    utilization: Family<ResourceLabels, Gauge<f64, AtomicU64>>,
    /// The replica whose state the scrape-time gauges are sampled from;
    /// also serializes scrapes (a sample clears and refills families).
    role: Mutex<Option<Weak<Role>>>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's families.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        sched_proto::metrics::process::register(&mut registry, "global-scheduler");
        let grpc = GrpcMetrics::new(&mut registry);
        let store = Arc::new(StoreMetrics::new(&mut registry));
        let scheduling_latency = Histogram::new(sched_proto::metrics::latency_buckets());
        registry.register_with_unit(
            "sched_scheduling_latency",
            "Time from a job's submission to its task's first placement on a machine",
            Unit::Seconds,
            scheduling_latency.clone(),
        );
        let pass_duration = Histogram::new(sched_proto::metrics::latency_buckets());
        registry.register_with_unit(
            "sched_global_pass_duration",
            "Time of one global scheduling pass: plan, commit and hand over",
            Unit::Seconds,
            pass_duration.clone(),
        );
        let tasks_assigned = Counter::default();
        registry.register(
            "sched_tasks_assigned",
            "Tasks assigned to clusters by scheduling passes",
            tasks_assigned.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "sched_leader",
            "1 while this replica is the leader, 0 while it stands by",
            leader.clone(),
        );
        let policy = PolicyMetrics::new(&mut registry);
        let pending_jobs = Gauge::default();
        registry.register(
            "sched_pending_jobs",
            "Jobs with tasks waiting for a cluster (leader only)",
            pending_jobs.clone(),
        );
        let pending_tasks = Gauge::default();
        registry.register(
            "sched_pending_tasks",
            "Tasks waiting for a cluster, backoffs included (leader only)",
            pending_tasks.clone(),
        );
        let tasks = Family::<StateLabel, Gauge>::default();
        registry.register(
            "sched_tasks",
            "Tasks of the jobs kept, by state (leader only)",
            tasks.clone(),
        );
        let cluster_up = Family::<ClusterLabel, Gauge>::default();
        registry.register(
            "sched_cluster_up",
            "1 while a cluster's local agent heartbeats (leader only)",
            cluster_up.clone(),
        );
        let utilization = Family::<ResourceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "sched_cluster_utilization",
            "Requests of the tasks placed in a cluster over its capacity, per resource (leader only)",
            Unit::Other("ratio".to_string()),
            utilization.clone(),
        );
        Metrics {
            registry,
            grpc,
            store,
            scheduling_latency,
            pass_duration,
            tasks_assigned,
            leader,
            policy,
            pending_jobs,
            pending_tasks,
            tasks,
            cluster_up,
            utilization,
            role: Mutex::new(None),
        }
    }

    /// Samples the gauges from `role`'s state at each scrape.
    pub fn attach(&self, role: &Arc<Role>) {
        *self.role.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::downgrade(role));
    }

    /// What `/metrics` answers.
    pub fn exposition(&'static self) -> Exposition {
        Arc::new(move || self.encode())
    }

    /// The exposition, the state's gauges sampled now.
    pub fn encode(&self) -> String {
        let role = self.role.lock().unwrap_or_else(|p| p.into_inner());
        self.tasks.clear();
        self.cluster_up.clear();
        self.utilization.clear();
        self.pending_jobs.set(0);
        self.pending_tasks.set(0);
        let shared = role
            .as_ref()
            .and_then(Weak::upgrade)
            .and_then(|r| r.leader().ok());
        if let Some(shared) = shared {
            shared.read(|s| self.sample(s));
        }
        sched_proto::metrics::encode(&self.registry)
    }

    fn sample(&self, s: &State) {
        self.pending_tasks
            .set(i64::try_from(s.pending_tasks()).unwrap_or(i64::MAX));
        let mut counts = [0i64; 8];
        let mut pending_jobs = 0;
        for j in s.jobs() {
            if s.pending_of(j) > 0 {
                pending_jobs += 1;
            }
            for t in &j.tasks {
                counts[t.state as usize] += 1;
            }
        }
        self.pending_jobs.set(pending_jobs);
        for state in ALL_STATES {
            self.tasks
                .get_or_create(&StateLabel {
                    state: state_name(state),
                })
                .set(counts[state as usize]);
        }
        for c in s.registry().entries() {
            let cluster = c.summary.name.clone();
            self.cluster_up
                .get_or_create(&ClusterLabel {
                    cluster: cluster.clone(),
                })
                .set(i64::from(c.summary.up));
            let capacity = c.summary.capacity.as_array();
            let allocated = c.summary.allocated.as_array();
            for (i, resource) in ["cpu", "memory", "disk", "gpu"].into_iter().enumerate() {
                if capacity[i] == 0 {
                    continue;
                }
                self.utilization
                    .get_or_create(&ResourceLabels {
                        cluster: cluster.clone(),
                        resource,
                    })
                    .set(allocated[i] as f64 / capacity[i] as f64);
            }
        }
    }
}

const ALL_STATES: [TaskState; 8] = [
    TaskState::Pending,
    TaskState::Assigned,
    TaskState::Placed,
    TaskState::Running,
    TaskState::Succeeded,
    TaskState::Failed,
    TaskState::Lost,
    TaskState::Cancelled,
];

fn state_name(s: TaskState) -> &'static str {
    match s {
        TaskState::Pending => "pending",
        TaskState::Assigned => "assigned",
        TaskState::Placed => "placed",
        TaskState::Running => "running",
        TaskState::Succeeded => "succeeded",
        TaskState::Failed => "failed",
        TaskState::Lost => "lost",
        TaskState::Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_index_their_counts() {
        for (i, s) in ALL_STATES.into_iter().enumerate() {
            assert_eq!(s as usize, i, "{}", state_name(s));
        }
    }

    #[test]
    fn the_exposition_names_every_family() {
        // Families without a sample are left out: give calls one.
        assert_eq!(
            metrics()
                .grpc
                .handled("/clustersched.v1.SchedulerService/GetJob", tonic::Code::Ok),
            0
        );
        let text = metrics().encode();
        for name in [
            "sched_build_info",
            "sched_grpc_server_handled_total{grpc_method=\"/clustersched.v1.SchedulerService/GetJob\",grpc_code=\"OK\"} 0",
            "sched_store_commit_duration_seconds",
            "sched_scheduling_latency_seconds",
            "sched_global_pass_duration_seconds",
            "sched_leader",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }
}
