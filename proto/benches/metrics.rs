//! What metrics cost on the paths they sit on.
//!
//! `cargo bench -p sched-proto --bench metrics`
//!
//! - `grpc_layer/counted` against `grpc_layer/bare`: one unary call through
//!   the counting layer (a trivial inner service; the response body read
//!   to its trailers, where the call is counted) and without it;
//! - `histogram_observe`: one observation, as a pass or a placement makes;
//! - `encode`: one scrape's encoding of a registry of the size the global
//!   scheduler has.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use criterion::{criterion_group, criterion_main, Criterion};
use http_body::{Body, Frame};
use prometheus_client::metrics::histogram::Histogram;
use sched_proto::metrics::grpc::GrpcMetrics;
use sched_proto::metrics::Registry;
use tower_layer::Layer;
use tower_service::Service;

/// A body of one data frame and `grpc-status: 0` trailers.
struct Reply {
    sent: u8,
}

impl Body for Reply {
    type Data = std::io::Cursor<Vec<u8>>;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Infallible>>> {
        self.sent += 1;
        Poll::Ready(match self.sent {
            1 => Some(Ok(Frame::data(std::io::Cursor::new(Vec::new())))),
            2 => {
                let mut t = http::HeaderMap::new();
                t.insert("grpc-status", http::HeaderValue::from_static("0"));
                Some(Ok(Frame::trailers(t)))
            }
            _ => None,
        })
    }
}

#[derive(Clone)]
struct Echo;

impl Service<http::Request<()>> for Echo {
    type Response = http::Response<Reply>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<()>) -> Self::Future {
        ready(Ok(http::Response::new(Reply { sent: 0 })))
    }
}

fn request() -> http::Request<()> {
    http::Request::builder()
        .uri("/clustersched.v1.SchedulerService/GetJob")
        .body(())
        .expect("a valid request")
}

async fn drain<B: Body + Unpin>(mut body: B) {
    while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let _ = f;
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let mut registry = Registry::default();
    let metrics = GrpcMetrics::new(&mut registry);
    let mut counted = metrics.layer(Echo);
    let mut bare = Echo;
    c.bench_function("grpc_layer/bare", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = bare.call(request()).await.expect("infallible");
                drain(r.into_body()).await;
            })
        })
    });
    c.bench_function("grpc_layer/counted", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = counted.call(request()).await.expect("infallible");
                drain(r.into_body()).await;
            })
        })
    });
    let h = Histogram::new(sched_proto::metrics::latency_buckets());
    c.bench_function("histogram_observe", |b| b.iter(|| h.observe(0.003)));
    let store = sched_proto::metrics::store::StoreMetrics::new(&mut registry);
    use sched_store::observe::{CommitObserver, Outcome};
    c.bench_function("store_commit_observed", |b| {
        b.iter(|| {
            store.committed(
                127,
                40_000,
                std::time::Duration::from_millis(3),
                Outcome::Ok,
            )
        })
    });
    for i in 0..40 {
        let _ = metrics.handled(
            &format!("/clustersched.v1.SchedulerService/M{i}"),
            tonic::Code::Ok,
        );
    }
    c.bench_function("encode", |b| {
        b.iter(|| sched_proto::metrics::encode(&registry).len())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
