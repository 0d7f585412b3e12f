//! The local agent (one per cluster) and the node agent (one per machine).
//!
//! # Layout
//! - [`agent`]: `local-agent serve`: keeps the cluster's machines from node
//!   agent registrations, packs the tasks the global scheduler hands over
//!   onto them (`sched_core::pack`), persists placements in the store
//!   before any node hears of them, hands back what does not fit.
//! - [`node`]: `local-agent node`: runs tasks as processes (or hollow
//!   machines, for scale tests), keeps their output, reports their states.
//! - [`error`]: [`AgentError`](error::AgentError), what can go wrong in
//!   either, and its one mapping onto gRPC codes.
//! - [`metrics`]: the Prometheus families of both (`--metrics-listen`).
//! - [`supervise`]: `local-agent supervise`, the parent of each task process.
//! - [`limits`]: how tasks' cpu and memory requests are enforced (cgroup
//!   v2, the cgroup v1 memory controller, or rlimits), shared by the node
//!   agent, which picks the mechanism, and the supervisor, which applies it.
//!
//! Reconnects back off with `sched_proto::backoff`.

pub mod agent;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod supervise;

pub use sched_proto::convert::{from_pb, to_pb};
