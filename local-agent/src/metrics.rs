//! The local agent's and the node agent's metrics, served at
//! `--metrics-listen`'s `/metrics`.
//!
//! Two sets of families, each registered once per process: [`agent`] for
//! `local-agent serve`, [`node`] for `local-agent node`. The cluster agent
//! updates its families once per packing pass; the node agent once per
//! task start or exit.

use std::sync::{Arc, LazyLock};

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

/// `local-agent serve`'s families.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    pub grpc: GrpcMetrics,
    pub store: Arc<StoreMetrics>,
    /// One packing pass: expire silent nodes, pack the queue, plan commits.
    pub pass_duration: Histogram,
    /// Tasks waiting to be packed, after the last pass.
    pub queued_tasks: Gauge,
    /// Placements planned by passes.
    pub tasks_placed: Counter,
    /// Policy reloads (SIGHUP) by outcome.
    pub policy: PolicyMetrics,
}

/// `local-agent node`'s families.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Registry,
    pub grpc: GrpcMetrics,
    /// Task processes (or hollow tasks) running now.
    pub running_tasks: Gauge,
    starts: Family<OutcomeLabel, Counter>,
    exits: Family<OutcomeLabel, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

static AGENT: LazyLock<AgentMetrics> = LazyLock::new(AgentMetrics::new);
static NODE: LazyLock<NodeMetrics> = LazyLock::new(NodeMetrics::new);

/// The process's cluster agent families.
pub fn agent() -> &'static AgentMetrics {
    &AGENT
}

/// The process's node agent families.
pub fn node() -> &'static NodeMetrics {
    &NODE
}

impl AgentMetrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        sched_proto::metrics::process::register(&mut registry, "local-agent");
        let grpc = GrpcMetrics::new(&mut registry);
        let store = Arc::new(StoreMetrics::new(&mut registry));
        let pass_duration = Histogram::new(sched_proto::metrics::latency_buckets());
        registry.register_with_unit(
            "sched_local_pass_duration",
            "Time of one local packing pass: expire silent nodes, pack the queue, plan the commits",
            Unit::Seconds,
            pass_duration.clone(),
        );
        let queued_tasks = Gauge::default();
        registry.register(
            "sched_local_queued_tasks",
            "Tasks handed to this cluster and waiting to be placed on a machine",
            queued_tasks.clone(),
        );
        let tasks_placed = Counter::default();
        registry.register(
            "sched_local_tasks_placed",
            "Tasks placed on machines by packing passes",
            tasks_placed.clone(),
        );
        let policy = PolicyMetrics::new(&mut registry);
        AgentMetrics {
            registry,
            grpc,
            store,
            pass_duration,
            queued_tasks,
            tasks_placed,
            policy,
        }
    }

    /// What `/metrics` answers.
    pub fn exposition(&'static self) -> Exposition {
        Arc::new(move || sched_proto::metrics::encode(&self.registry))
    }
}

/// How a task start went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Started,
    /// The process could not be started (reported failed, exit code 127).
    Refused,
}

impl NodeMetrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        sched_proto::metrics::process::register(&mut registry, "node-agent");
        let grpc = GrpcMetrics::new(&mut registry);
        let running_tasks = Gauge::default();
        registry.register(
            "sched_node_running_tasks",
            "Tasks running on this node's machines",
            running_tasks.clone(),
        );
        let starts = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "sched_node_task_starts",
            "Task starts by outcome: started, or refused (the process could not start)",
            starts.clone(),
        );
        let exits = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "sched_node_task_exits",
            "Task exits by outcome: succeeded, failed or lost",
            exits.clone(),
        );
        NodeMetrics {
            registry,
            grpc,
            running_tasks,
            starts,
            exits,
        }
    }

    pub fn started(&self, how: Start) {
        let outcome = match how {
            Start::Started => {
                self.running_tasks.inc();
                "started"
            }
            Start::Refused => "refused",
        };
        self.starts.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// A task found running after a restart: running, not started.
    pub fn adopted(&self) {
        self.running_tasks.inc();
    }

    /// A task's end was recorded as `state` (the process's end lowers
    /// `running_tasks` itself, recorded or not).
    pub fn exited(&self, state: sched_proto::pb::TaskState) {
        use sched_proto::pb::TaskState as S;
        let outcome = match state {
            S::Succeeded => "succeeded",
            S::Failed => "failed",
            _ => "lost",
        };
        self.exits.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// What `/metrics` answers.
    pub fn exposition(&'static self) -> Exposition {
        Arc::new(move || sched_proto::metrics::encode(&self.registry))
    }
}
