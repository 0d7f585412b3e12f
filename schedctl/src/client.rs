//! The connection to the global scheduler, and retries.
//!
//! Calls that fail with UNAVAILABLE (the scheduler is down or restarting,
//! or etcd is) or RESOURCE_EXHAUSTED (its queues are full), or that never
//! reached it (a `tonic::transport::Error` behind the status), are retried
//! with "full jitter" exponential backoff: sleep a random time in
//! `[0, min(cap, base * 2^attempt)]` (AWS Architecture Blog, "Exponential
//! Backoff And Jitter", 2015), so that many clients do not retry in step;
//! but never sooner than the server's retry hint (a `google.rpc.RetryInfo`).
//! During a failover of the scheduler's leader the retry goes at once, or
//! after a short fixed wait, instead ([`sched_proto::retry::Pace`]).

use std::error::Error as _;
use std::future::Future;
use std::time::{Duration, Instant};

use sched_proto::backoff::delay;
pub use sched_proto::backoff::random_u64;
use sched_proto::leader::LeaderChannel;
use sched_proto::pb::scheduler_service_client::SchedulerServiceClient;
use sched_proto::retry::{from_transport, Pace};
use sched_security::{Bearer, Tls};
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Status};

/// The client type every command uses.
pub type Client = SchedulerServiceClient<InterceptedService<LeaderChannel, Bearer>>;

/// Where the scheduler is and how to prove who we are.
#[derive(Debug, Clone)]
pub struct Target {
    /// One URL, or several replicas comma-separated.
    pub server: String,
    /// Mutual TLS (a `user` certificate).
    pub tls: Option<Tls>,
    /// A bearer token.
    pub token: Option<String>,
}

/// Connects lazily: an unreachable server shows up as UNAVAILABLE on the
/// first call, where it is retried like any other. `server` may list
/// several replicas, comma-separated: calls go to the one that leads (a
/// standby names the leader, and the retry goes there).
pub fn connect(target: &Target) -> anyhow::Result<Client> {
    let channel = LeaderChannel::with_tls(
        &target.server,
        target.tls.clone(),
        Duration::from_secs(3),
        Duration::from_secs(30),
    )
    .map_err(|e| anyhow::anyhow!("--server: {e}"))?;
    let bearer =
        Bearer::new(target.token.as_deref()).map_err(|e| anyhow::anyhow!("--token: {e}"))?;
    Ok(SchedulerServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(256 << 20))
}

/// The longest retry hint honoured. The server hints 200 ms; a hint of
/// minutes would be a confused server, and waiting it out would stall the
/// command far past its own deadline.
const MAX_RETRY_HINT: Duration = Duration::from_secs(30);

pub fn retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::ResourceExhausted)
}

/// Whether `s` is worth retrying: the transient codes, and UNKNOWN when
/// it stands for a connection that could not be made or broke (tonic's
/// transport error behind it), which is the server being down, not a
/// refusal. A connection refused already arrives as UNAVAILABLE.
pub fn transient(s: &Status) -> bool {
    if quota_refusal(s) {
        return false;
    }
    retryable(s.code()) || (s.code() == Code::Unknown && from_transport(s))
}

/// Whether `s` is a quota refusal (RESOURCE_EXHAUSTED carrying a
/// `google.rpc.ErrorInfo` with reason `QUOTA_EXCEEDED`): retrying cannot
/// help until usage or the quota changes.
pub fn quota_refusal(s: &Status) -> bool {
    use tonic_types::StatusExt;
    s.code() == Code::ResourceExhausted
        && s.get_details_error_info()
            .is_some_and(|i| i.reason == "QUOTA_EXCEEDED")
}

/// The server's hint of how long to wait before retrying: the delay of
/// the `google.rpc.RetryInfo` in its details, if it sent one (capped at
/// [`MAX_RETRY_HINT`]).
pub fn retry_hint(s: &Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    let delay = s.get_details_retry_info()?.retry_delay?;
    Some(delay.min(MAX_RETRY_HINT))
}

/// The wait before retrying after `s`: the drawn backoff `backoff`, but at
/// least the server's hint.
pub fn wait_before_retry(s: &Status, backoff: Duration) -> Duration {
    retry_hint(s).map_or(backoff, |hint| backoff.max(hint))
}

/// Runs `call` until it succeeds, fails with a code that is not worth
/// retrying, or `deadline` passes.
pub async fn retry<T, F, Fut>(deadline: Duration, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let start = Instant::now();
    let mut attempt = 0;
    let mut pace = Pace::new();
    let mut noted = false;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(s) if transient(&s) && start.elapsed() < deadline => {
                // A failover: the channel already points at the leader a
                // standby named, or at the next replica. A new leader is
                // tried at once, and the old one's lease waited out in
                // short polls; anything else backs off.
                let wait = match pace.wait(&s) {
                    Some(wait) => {
                        if !wait.is_zero() && !noted {
                            note_retry(&s, 0, wait);
                        }
                        wait
                    }
                    None => {
                        let wait = wait_before_retry(&s, delay(attempt));
                        note_retry(&s, attempt, wait);
                        attempt += 1;
                        wait
                    }
                };
                noted |= !wait.is_zero();
                tokio::time::sleep(wait).await;
            }
            Err(s) => return Err(s),
        }
    }
}

fn note_retry(s: &Status, attempt: u32, wait: Duration) {
    if attempt == 0 || attempt % 5 == 4 {
        eprintln!(
            "schedctl: {} ({}); retrying in {} ms",
            code_name(s.code()),
            s.message(),
            wait.as_millis()
        );
    }
}

/// `INVALID_ARGUMENT`, as gRPC spells codes.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A call that failed, for the user: `CODE: message`, the code first as
/// gRPC spells it. A call that never reached a server says so, with the
/// address once the command fills it in ([`RpcError::at`]) and the
/// connection's own reason (`connection refused`).
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", code_name(*.code), self.text())]
pub struct RpcError {
    pub code: Code,
    pub message: String,
    /// Why no server could be reached, if that is what happened.
    pub unreachable: Option<String>,
    /// The address tried.
    pub server: Option<String>,
}

impl RpcError {
    fn text(&self) -> String {
        match (&self.unreachable, &self.server) {
            (Some(why), Some(server)) => format!("cannot reach {server}: {why}"),
            (Some(why), None) => format!("cannot reach the scheduler: {why}"),
            (None, _) => self.message.clone(),
        }
    }

    /// `e` with the address that was tried, if it is an unreachable
    /// server's error.
    pub fn at(mut e: anyhow::Error, server: &str) -> anyhow::Error {
        if let Some(r) = e.downcast_mut::<RpcError>() {
            r.server = Some(server.to_string());
        }
        e
    }
}

/// The innermost cause of a failed connection (`connection refused`,
/// `deadline has elapsed`), lower-cased as it reads after a colon.
fn connection_failure(s: &Status) -> Option<String> {
    if !from_transport(s) {
        return None;
    }
    let mut cause = s.source()?;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = match cause.downcast_ref::<std::io::Error>() {
        // "Connection refused (os error 111)": the kind says it plainly.
        Some(io) if io.kind() != std::io::ErrorKind::Other => io.kind().to_string(),
        _ => cause.to_string(),
    };
    Some(text)
}

/// An error for the user: the code and the server's message.
pub fn status_error(s: Status) -> anyhow::Error {
    anyhow::Error::new(RpcError {
        code: s.code(),
        message: s.message().to_string(),
        unreachable: connection_failure(&s),
        server: None,
    })
}

/// How long a read keeps retrying when no server can be reached at all:
/// long enough for a restart on the same port, short enough that a wrong
/// address or a stopped scheduler is said in seconds, not minutes.
pub const READ_UNREACHABLE_FOR: Duration = Duration::from_secs(3);

/// How long a read keeps retrying a server that answers but is not ready
/// (UNAVAILABLE during an election, RESOURCE_EXHAUSTED): an election takes
/// a lease's time to live.
pub const READ_BUSY_FOR: Duration = Duration::from_secs(30);

/// [`retry`] for reads, quietly: gives up after [`READ_UNREACHABLE_FOR`]
/// while no server answers, after [`READ_BUSY_FOR`] while one answers but
/// is busy; the error then says which.
pub async fn retry_read<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        // One attempt (and the hop to a leader a standby names).
        match retry(Duration::ZERO, &mut call).await {
            Err(s) if transient(&s) => {
                let limit = if from_transport(&s) {
                    READ_UNREACHABLE_FOR
                } else {
                    READ_BUSY_FOR
                };
                let left = limit.saturating_sub(start.elapsed());
                if left.is_zero() {
                    return Err(s);
                }
                tokio::time::sleep(wait_before_retry(&s, delay(attempt)).min(left)).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_refusal_is_not_retried() {
        use tonic_types::{ErrorDetails, StatusExt};
        let s = Status::with_error_details(
            Code::ResourceExhausted,
            "over quota",
            ErrorDetails::with_error_info(
                "QUOTA_EXCEEDED",
                "clustersched.v1",
                std::collections::HashMap::new(),
            ),
        );
        assert!(quota_refusal(&s) && !transient(&s));
        assert!(transient(&Status::resource_exhausted("queue full")));
    }

    #[test]
    fn only_transient_codes_are_retried() {
        assert!(retryable(Code::Unavailable));
        assert!(retryable(Code::ResourceExhausted));
        assert!(!retryable(Code::InvalidArgument));
        assert!(!retryable(Code::NotFound));
    }

    /// A `tonic::transport::Error`, as a failed connection produces one.
    fn transport_error() -> tonic::transport::Error {
        tonic::transport::Endpoint::from_shared("not a uri").unwrap_err()
    }

    #[test]
    fn unknown_from_the_transport_is_retried() {
        let s = Status::from_error(Box::new(transport_error()));
        assert_eq!(s.code(), Code::Unknown);
        assert!(transient(&s));
    }

    #[test]
    fn a_transport_error_deeper_in_the_chain_is_found() {
        #[derive(Debug)]
        struct Wrapper(tonic::transport::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let s = Status::from_error(Box::new(Wrapper(transport_error())));
        assert_eq!(s.code(), Code::Unknown);
        assert!(transient(&s));
    }

    #[test]
    fn unknown_from_the_server_is_not_retried_whatever_it_says() {
        // The old test was the text: a server's message is not a transport.
        assert!(!transient(&Status::unknown("transport error")));
        let io = std::io::Error::other("transport error");
        let s = Status::from_error(Box::new(io));
        assert_eq!(s.code(), Code::Unknown);
        assert!(!transient(&s));
    }

    #[test]
    fn refusals_are_not_retried() {
        for s in [
            Status::invalid_argument("bad"),
            Status::not_found("no job"),
            Status::failed_precondition("unschedulable"),
            Status::aborted("conflict"),
        ] {
            assert!(!transient(&s), "{s:?}");
        }
    }

    /// A port nobody listens on: what a stopped scheduler looks like.
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn a_server_that_is_down_is_retried() {
        let target = Target {
            server: format!("http://127.0.0.1:{}", closed_port()),
            tls: None,
            token: None,
        };
        let mut c = connect(&target).unwrap();
        let s = c
            .list_clusters(sched_proto::pb::ListClustersRequest {})
            .await
            .unwrap_err();
        assert!(transient(&s), "{s:?}");
    }

    fn exhausted_with_hint(hint: Option<Duration>) -> Status {
        use tonic_types::{ErrorDetails, StatusExt};
        Status::with_error_details(
            Code::ResourceExhausted,
            "queue full; retry later",
            ErrorDetails::with_retry_info(hint),
        )
    }

    #[test]
    fn the_retry_hint_is_a_floor() {
        // The server hints 200 ms: a shorter backoff draw waits 200 ms, a
        // longer one keeps its own length.
        let s = exhausted_with_hint(Some(Duration::from_millis(200)));
        assert_eq!(retry_hint(&s), Some(Duration::from_millis(200)));
        assert_eq!(
            wait_before_retry(&s, Duration::ZERO),
            Duration::from_millis(200)
        );
        assert_eq!(
            wait_before_retry(&s, Duration::from_millis(700)),
            Duration::from_millis(700)
        );
        for attempt in 0..10 {
            assert!(wait_before_retry(&s, delay(attempt)) >= Duration::from_millis(200));
        }
    }

    #[test]
    fn no_or_unreadable_hint_leaves_the_backoff() {
        let backoff = Duration::from_millis(37);
        for s in [
            Status::resource_exhausted("queue full"),
            exhausted_with_hint(None),
        ] {
            assert_eq!(retry_hint(&s), None);
            assert_eq!(wait_before_retry(&s, backoff), backoff);
        }
    }

    #[test]
    fn an_absurd_hint_is_capped() {
        let s = exhausted_with_hint(Some(Duration::from_secs(86_400)));
        assert_eq!(retry_hint(&s), Some(MAX_RETRY_HINT));
    }
}
