//! A client channel that finds the leader among global scheduler replicas.
//!
//! A standby answers every call with UNAVAILABLE and names the leader in the
//! [`LEADER_HEADER`] metadata. [`LeaderChannel`] reads that header off each
//! response and sends the next call to the leader it names; a replica that
//! cannot be reached, or answers UNAVAILABLE without naming a leader (an
//! election in progress), makes it try the next one in the list. Callers
//! keep their own retry loop; this only decides where the retry goes, so
//! it reaches the leader on the first retry instead of wandering over
//! standbys. [`crate::retry::Pace`] says when a retry should go during a
//! failover.
//!
//! Connections are pinged (HTTP/2 PING, every [`KEEP_ALIVE_INTERVAL`] while
//! a call is open): a leader whose host vanished without resetting the
//! connection fails the call within [`KEEP_ALIVE_INTERVAL`] +
//! [`KEEP_ALIVE_TIMEOUT`], rather than at its timeout. (A leader killed
//! on a live host is noticed at once: its kernel resets the connection.)

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use sched_security::tls::{self, Tls, UrlError};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::Service;
use tonic::transport::Channel;

/// The metadata key in which a standby names the leader's address.
pub const LEADER_HEADER: &str = "x-sched-leader";

/// gRPC's code for UNAVAILABLE, as carried in a `grpc-status` header.
const UNAVAILABLE: &str = "14";

/// How long a connection with a call open may stay silent before it is
/// pinged.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a ping may go unanswered before the connection, and its calls,
/// are dropped.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Channels to every replica; calls go to the one believed to lead.
#[derive(Clone)]
pub struct LeaderChannel {
    replicas: Arc<Mutex<Replicas>>,
    connect_timeout: Duration,
    timeout: Duration,
    tls: Option<Tls>,
}

struct Replicas {
    urls: Vec<String>,
    channels: Vec<Channel>,
    current: usize,
}

impl Replicas {
    /// The call that went to `index` failed or was turned away: move on,
    /// unless another call already did.
    fn skip(&mut self, index: usize) {
        if self.current == index {
            self.current = (index + 1) % self.channels.len();
        }
    }
}

/// The same address however it is written (`http://h:1` and `http://h:1/`).
pub(crate) fn normalize(url: &str) -> &str {
    url.trim().trim_end_matches('/')
}

/// A replica list that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{0:?} is not a URL (like http://127.0.0.1:7070)")]
    NotAUrl(String),
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("no address given")]
    Empty,
}

impl LeaderChannel {
    /// Lazily connecting channels to `urls` (a comma-separated list), each
    /// with the given connect and per-call timeouts. Errors name the bad
    /// address.
    pub fn new(
        urls: &str,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<LeaderChannel, AddressError> {
        LeaderChannel::with_tls(urls, None, connect_timeout, timeout)
    }

    /// As [`LeaderChannel::new`], over mutual TLS when `tls` is given
    /// (every `http://` dialled as `https://`; `https://` without it is an
    /// error, never plaintext).
    pub fn with_tls(
        urls: &str,
        tls: Option<Tls>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<LeaderChannel, AddressError> {
        let mut replicas = Replicas {
            urls: Vec::new(),
            channels: Vec::new(),
            current: 0,
        };
        for url in urls.split(',').map(normalize).filter(|u| !u.is_empty()) {
            let channel = lazy(url, tls.as_ref(), connect_timeout, timeout)?;
            replicas.urls.push(url.to_string());
            replicas.channels.push(channel);
        }
        if replicas.channels.is_empty() {
            return Err(AddressError::Empty);
        }
        Ok(LeaderChannel {
            replicas: Arc::new(Mutex::new(replicas)),
            connect_timeout,
            timeout,
            tls,
        })
    }

    /// The address calls go to now.
    pub fn current(&self) -> String {
        let r = self.replicas.lock().expect("replicas lock");
        r.urls[r.current].clone()
    }

    /// Sends later calls to `leader`, adding it if the list lacks it (a
    /// replica may advertise a name the list spells differently).
    fn follow(&self, leader: &str) {
        let leader = normalize(leader);
        let mut r = self.replicas.lock().expect("replicas lock");
        if let Some(i) = r.urls.iter().position(|u| u == leader) {
            r.current = i;
            return;
        }
        // Bounded: a list grows by the leaders it is told of, which are few.
        if r.urls.len() >= 64 {
            return;
        }
        if let Ok(channel) = lazy(
            leader,
            self.tls.as_ref(),
            self.connect_timeout,
            self.timeout,
        ) {
            r.urls.push(leader.to_string());
            r.channels.push(channel);
            r.current = r.channels.len() - 1;
        }
    }
}

fn lazy(
    url: &str,
    tls: Option<&Tls>,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<Channel, AddressError> {
    Ok(tls::endpoint(url, tls)
        .map_err(|e| match e {
            UrlError::NotAUrl(u) => AddressError::NotAUrl(u),
            e => AddressError::Url(e),
        })?
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .connect_lazy())
}

impl Service<http::Request<Body>> for LeaderChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the chosen replica's, awaited in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (index, mut channel) = {
            let r = self.replicas.lock().expect("replicas lock");
            (r.current, r.channels[r.current].clone())
        };
        let this = self.clone();
        Box::pin(async move {
            let result = match std::future::poll_fn(|cx| channel.poll_ready(cx)).await {
                Ok(()) => channel.call(request).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(response) => {
                    let headers = response.headers();
                    if let Some(leader) = headers.get(LEADER_HEADER).and_then(|v| v.to_str().ok()) {
                        this.follow(leader);
                    } else if headers
                        .get("grpc-status")
                        .is_some_and(|v| v.as_bytes() == UNAVAILABLE.as_bytes())
                    {
                        this.replicas.lock().expect("replicas lock").skip(index);
                    }
                    Ok(response)
                }
                Err(e) => {
                    this.replicas.lock().expect("replicas lock").skip(index);
                    Err(e)
                }
            }
        })
    }
}
