//! The gRPC API shared by `schedctl`, the global scheduler and the agents.
//!
//! The messages and services are generated from `proto/sched/v1/*.proto` by
//! `build.rs`. Conversions to and from the core's domain types live at each
//! service's boundary, so `sched-core` never sees these types.

/// Version 1 of the API (`package sched.v1`).
pub mod pb {
    tonic::include_proto!("sched.v1");
}
