//! What a local agent is told at start.

use std::time::Duration;

use sched_core::policy::Policy;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub cluster: String,
    pub location: String,
    /// The global scheduler's URL (several, comma-separated: its replicas).
    pub global: String,
    pub prefix: String,
    pub policy: Policy,
    /// Where `policy` was read from: read again on SIGHUP.
    pub policy_file: Option<std::path::PathBuf>,
    /// How often node agents heartbeat.
    pub node_heartbeat: Duration,
    /// A node silent this long is lost, with its machines.
    pub machine_timeout: Duration,
    /// The address node agents and the global scheduler reach us at
    /// (defaults to the listener's).
    pub advertise: Option<String>,
    /// Mutual TLS: the server for nodes and the global scheduler, and the
    /// calls to the global scheduler and to nodes.
    pub tls: Option<sched_security::Tls>,
}
