//! The scheduling core: every decision, and nothing else.
//!
//! No I/O, no async, no clocks: state comes in, decisions come out,
//! deterministically, so the same code runs in the daemons, in the simulator
//! and under property tests.
//!
//! # Layout
//!
//! - Model: [`resources`] (integer units) and [`quantity`] (Kubernetes-style
//!   parsing), [`machine`], [`cluster`], [`job`], [`task`], [`placement`],
//!   [`labels`], [`lifecycle`] (restarts, backoff, retention).
//! - Files users write: [`topology`] (with the [`locality`] graph), the job
//!   file in [`job`], the [`policy`]; all parsed through [`yaml`] and refused
//!   with a [`error::SpecError`] that names the field.
//! - Global decision (which cluster): [`filter`] and [`scorer`], combined in
//!   [`rank`]; [`assign`] holds the pending tasks and splits them over the
//!   ranked clusters, pass by pass, for the daemon and the simulator alike.
//! - Local decision (which machine): [`cell`] (machines and the
//!   fragmentation index) and [`pack`] (batch packing). See
//!   `core/README.md` for the goals, the abstraction and the phases.
//! - [`gpu`]: GPUs as devices (shares of one device, whole devices, models)
//!   and the fragmentation strategy; [`replay`]: tasks arriving and
//!   departing in time order, the Alibaba openb trace files, the paper's
//!   inflate protocol.
//! - [`simulate`]: both levels over a topology and a workload, as
//!   `schedctl simulate` runs them.
//! - [`baseline`]: Kubernetes' MostAllocated and Nomad's binpack scoring,
//!   written from their published formulas, for comparison.

pub mod assign;
pub mod band;
pub mod baseline;
pub mod cell;
pub mod cluster;
pub mod error;
pub mod filter;
pub mod gpu;
pub mod job;
pub mod labels;
pub mod lifecycle;
pub mod locality;
pub mod machine;
pub mod names;
pub mod pack;
pub mod placement;
pub mod policy;
pub mod preempt;
pub mod quantity;
pub mod quota;
pub mod rank;
pub mod replay;
pub mod resources;
pub mod room;
pub mod score;
pub mod scorer;
pub mod simulate;
pub mod task;
pub mod topology;
pub mod yaml;

#[cfg(test)]
mod test_support;

pub use error::SpecError;
