//! The connection to the global scheduler, and retries.
//!
//! Calls that fail with UNAVAILABLE (the scheduler is down or restarting,
//! or etcd is) or RESOURCE_EXHAUSTED (its queues are full) are retried with
//! "full jitter" exponential backoff: sleep a random time in
//! `[0, min(cap, base * 2^attempt)]` (AWS Architecture Blog, "Exponential
//! Backoff And Jitter", 2015), so that many clients do not retry in step.

use std::future::Future;
use std::time::{Duration, Instant};

use sched_proto::backoff::delay;
pub use sched_proto::backoff::random_u64;
use sched_proto::leader::{LeaderChannel, LEADER_HEADER};
use sched_proto::pb::scheduler_client::SchedulerClient;
use tonic::{Code, Status};

/// The client type every command uses.
pub type Client = SchedulerClient<LeaderChannel>;

/// Connects lazily: an unreachable server shows up as UNAVAILABLE on the
/// first call, where it is retried like any other. `server` may list
/// several replicas, comma-separated: calls go to the one that leads (a
/// standby names the leader, and the retry goes there).
pub fn connect(server: &str) -> anyhow::Result<Client> {
    let channel = LeaderChannel::new(server, Duration::from_secs(3), Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("--server: {e}"))?;
    Ok(SchedulerClient::new(channel).max_decoding_message_size(256 << 20))
}

pub fn retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::ResourceExhausted)
}

/// Whether `s` is worth retrying: the transient codes, and tonic's report
/// of a connection that could not be made or broke (`UNKNOWN: transport
/// error`), which is the server being down, not a refusal.
pub fn transient(s: &Status) -> bool {
    retryable(s.code()) || (s.code() == Code::Unknown && s.message().contains("transport error"))
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
    let mut redirected = false;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            // A standby named the leader: the channel now points there, so
            // try it at once (once in a row; then back off as usual).
            Err(s) if s.metadata().contains_key(LEADER_HEADER) && !redirected => {
                redirected = true;
            }
            Err(s) if transient(&s) && start.elapsed() < deadline => {
                redirected = false;
                let wait = delay(attempt);
                note_retry(&s, attempt, wait);
                tokio::time::sleep(wait).await;
                attempt += 1;
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

/// An error for the user: the code and the server's message.
pub fn status_error(s: Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", code_name(s.code()), s.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_codes_are_retried() {
        assert!(retryable(Code::Unavailable));
        assert!(retryable(Code::ResourceExhausted));
        assert!(!retryable(Code::InvalidArgument));
        assert!(!retryable(Code::NotFound));
    }
}
