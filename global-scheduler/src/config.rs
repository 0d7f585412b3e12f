//! What a global scheduler replica is started with.

use std::time::Duration;

use sched_core::policy::Policy;
use sched_core::topology::Topology;

/// Everything `run` needs besides the listener and the store.
#[derive(Debug, Clone)]
pub struct Config {
    pub prefix: String,
    pub policy: Policy,
    /// Where `policy` was read from: read again on SIGHUP.
    pub policy_file: Option<std::path::PathBuf>,
    pub topology: Option<Topology>,
    pub heartbeat_interval: Duration,
    /// A cluster silent for this long is marked down.
    pub heartbeat_timeout: Duration,
    pub queue: usize,
    pub max_pending_tasks: u64,
    pub max_jobs_per_submit: usize,
    /// Where this replica serves, as other replicas and clients reach it
    /// (for standbys to name the leader).
    pub advertise: Option<String>,
    /// Mutual TLS for the server and for calls to agents and nodes.
    pub tls: Option<sched_security::Tls>,
    /// User tokens; `None`: no tokens in force.
    pub tokens: Option<sched_security::Tokens>,
    /// Where to serve the status page (`None`: not served).
    pub http_listen: Option<std::net::SocketAddr>,
    /// Quotas from the `--quotas` file (those set live are in the store).
    pub quotas: sched_core::quota::Quotas,
}

impl Config {
    pub fn new(policy: Policy) -> Self {
        Config {
            prefix: "/sched".to_string(),
            policy,
            policy_file: None,
            topology: None,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
            // Each command is one call; 4,096 calls of 100-task jobs keep
            // 400k tasks in flight, seconds of etcd writes, before refusing.
            queue: 4096,
            max_pending_tasks: 2_000_000,
            max_jobs_per_submit: 10_000,
            advertise: None,
            tls: None,
            tokens: None,
            http_listen: None,
            quotas: Default::default(),
        }
    }
}
