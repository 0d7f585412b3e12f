//! The local agent (one per cluster) and the node agent (one per machine).
//!
//! Placement decisions live in `sched-core` ([`sched_core::pack`] over a
//! [`sched_core::cell::Cell`]); the services that wrap them are still to come.

pub use sched_core::pack::pack;
