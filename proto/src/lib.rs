//! The gRPC API shared by `schedctl`, the global scheduler and the agents.
//!
//! The messages and services are generated from `proto/sched/v1/*.proto` by
//! `build.rs`. Conversions to and from the core's domain types live at each
//! service's boundary, so `sched-core` never sees these types.

/// Version 1 of the API (`package sched.v1`).
pub mod pb {
    tonic::include_proto!("sched.v1");
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
