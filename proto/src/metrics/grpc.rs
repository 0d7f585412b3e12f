//! gRPC calls by method and status code: a tower layer on tonic's server.
//!
//! A call's code is in the `grpc-status` of its response headers when the
//! server answers with an error and no body ("trailers-only"), and in the
//! trailers after the body otherwise; so the response body is wrapped and
//! the call counted when its trailers go by. A body dropped before its
//! trailers (the client went away, the server stopped a stream) counts as
//! `CANCELLED`. Streams count when they end.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tower_layer::Layer;
use tower_service::Service;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    grpc_method: Arc<str>,
    grpc_code: &'static str,
}

/// The layer, and the family it counts in (`sched_grpc_server_handled_total`).
#[derive(Debug, Clone)]
pub struct GrpcMetrics {
    handled: Family<CallLabels, Counter>,
}

impl GrpcMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let handled = Family::<CallLabels, Counter>::default();
        registry.register(
            "sched_grpc_server_handled",
            "gRPC calls completed by this server, by method and status code",
            handled.clone(),
        );
        GrpcMetrics { handled }
    }

    /// Calls of `method` that ended with `code` so far (for tests).
    pub fn handled(&self, method: &str, code: tonic::Code) -> u64 {
        self.handled
            .get_or_create(&CallLabels {
                grpc_method: method.into(),
                grpc_code: code_name(code),
            })
            .get()
    }

    fn record(&self, method: &Arc<str>, code: tonic::Code) {
        // A client may call any path; unknown ones share one label so that
        // the family's size stays bounded.
        let grpc_method = if code == tonic::Code::Unimplemented {
            Arc::from("unknown")
        } else {
            method.clone()
        };
        self.handled
            .get_or_create(&CallLabels {
                grpc_method,
                grpc_code: code_name(code),
            })
            .inc();
    }
}

/// The code's name as the gRPC specification spells it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The `grpc-status` in `headers`, if any.
fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let v = headers.get("grpc-status")?;
    let n: i32 = v.to_str().ok()?.parse().ok()?;
    Some(tonic::Code::from_i32(n))
}

impl<S> Layer<S> for GrpcMetrics {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            metrics: self.clone(),
        }
    }
}

/// A service whose calls are counted.
#[derive(Debug, Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: GrpcMetrics,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Counted<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body + Unpin,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method: Arc<str> = Arc::from(req.uri().path());
        let metrics = self.metrics.clone();
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = match call.await {
                Ok(r) => r,
                Err(e) => {
                    metrics.record(&method, tonic::Code::Unknown);
                    return Err(e);
                }
            };
            let pending = match status_in(response.headers()) {
                // Trailers-only: the call is over.
                Some(code) => {
                    metrics.record(&method, code);
                    None
                }
                None => Some(Pending { metrics, method }),
            };
            Ok(response.map(|inner| CountedBody { inner, pending }))
        })
    }
}

/// A call not counted yet.
struct Pending {
    metrics: GrpcMetrics,
    method: Arc<str>,
}

/// A response body that counts its call when its trailers pass.
pub struct CountedBody<B> {
    inner: B,
    pending: Option<Pending>,
}

impl<B: Body + Unpin> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &frame {
            if let Some(trailers) = f.trailers_ref() {
                if let Some(p) = this.pending.take() {
                    let code = status_in(trailers).unwrap_or(tonic::Code::Unknown);
                    p.metrics.record(&p.method, code);
                }
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for CountedBody<B> {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.metrics.record(&p.method, tonic::Code::Cancelled);
        }
    }
}
