//! The gRPC API shared by `schedctl`, the global scheduler and the agents.
//!
//! The messages and services are generated from `proto/clustersched/v1/`
//! (the public API) and `proto/clustersched/internal/v1/` (the components'
//! own services) by `build.rs`. Conversions to and from the core's domain types live at each
//! service's boundary, so `sched-core` never sees these types.

/// The generated code, one module per proto package (the internal package's
/// code names the public one's types by relative paths, so the modules
/// mirror the packages).
pub mod clustersched {
    /// Version 1 of the public API (`package clustersched.v1`).
    pub mod v1 {
        tonic::include_proto!("clustersched.v1");
    }
    /// The components' internal services (`package clustersched.internal.v1`).
    pub mod internal {
        pub mod v1 {
            tonic::include_proto!("clustersched.internal.v1");
        }
    }
}

/// Both packages under one name, for the crates that speak both.
pub mod pb {
    pub use crate::clustersched::internal::v1::*;
    pub use crate::clustersched::v1::*;
    /// The well-known types the messages hold (see [`crate::wkt`]).
    pub use prost_types::{Duration, Timestamp};
}

impl pb::EventKind {
    /// The short name `describe` and `watch` print: `handed_back`, `lost`.
    pub fn name(self) -> &'static str {
        use pb::EventKind as K;
        match self {
            K::Unspecified => "unspecified",
            K::Submitted => "submitted",
            K::Recovered => "recovered",
            K::Assigned => "assigned",
            K::HandedBack => "handed_back",
            K::Placed => "placed",
            K::Succeeded => "succeeded",
            K::Failed => "failed",
            K::Lost => "lost",
            K::Cancelled => "cancelled",
            K::Unschedulable => "unschedulable",
            K::Lagged => "lagged",
            K::Restarting => "restarting",
            K::Deleted => "deleted",
            K::TakenBack => "taken_back",
            K::Running => "running",
            K::Preempted => "preempted",
            K::PolicyChanged => "policy_changed",
        }
    }
}

pub mod backoff;
pub mod flags;
pub mod leader;
pub mod metrics;
pub mod process;
pub mod reflection;
pub mod retry;
pub mod wkt;

/// The well-known types' crate, for the users of [`wkt`]'s types.
pub use prost_types;

/// Resource amounts between the core's units and the wire's (the same
/// integers, named).
pub mod convert {
    use sched_core::resources::Resources;

    use super::pb;

    pub fn to_pb(r: &Resources) -> pb::Resources {
        let [cpu_millis, memory_bytes, disk_bytes, gpu_millis] = r.as_array();
        pb::Resources {
            cpu_millis,
            memory_bytes,
            disk_bytes,
            gpu_millis,
        }
    }

    /// A missing message is zero.
    pub fn from_pb(r: Option<&pb::Resources>) -> Resources {
        r.map_or(Resources::ZERO, |r| {
            Resources::from_array([r.cpu_millis, r.memory_bytes, r.disk_bytes, r.gpu_millis])
        })
    }
}

/// Server streams that end when the server shuts down.
///
/// tonic's graceful shutdown waits for every open response stream, and
/// ours (assignments, work, events) never end on their own; wrapping them
/// in [`Until`] ends them when the shutdown token fires.
pub mod shutdown {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio_stream::Stream;
    use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

    /// `inner` until `token` is cancelled.
    pub struct Until<S> {
        inner: S,
        stop: Pin<Box<WaitForCancellationFutureOwned>>,
    }

    impl<S> Until<S> {
        pub fn new(inner: S, token: CancellationToken) -> Self {
            Until {
                inner,
                stop: Box::pin(token.cancelled_owned()),
            }
        }
    }

    impl<S: Stream + Unpin> Stream for Until<S> {
        type Item = S::Item;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
            if self.stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Pin::new(&mut self.inner).poll_next(cx)
        }
    }
}
