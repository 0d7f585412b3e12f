//! How soon to retry a call that a failover of the global scheduler turned
//! away.
//!
//! While the leader changes, a call fails in one of three ways: the
//! connection to the old leader breaks or is refused; a standby refuses it
//! naming the leader it knows ([`LEADER_HEADER`]: until the old leader's
//! lease expires, the dead one); or a standby refuses it naming none (an
//! election under way). Either way [`LeaderChannel`](crate::leader::LeaderChannel)
//! has already pointed the next call at the leader named or at the next
//! replica; [`Pace`] says when to send it:
//! - a leader named that this run of failures had not named yet: at once,
//!   on the first sign of a new leader;
//! - a connection that failed again, or the same leader named again (its
//!   lease has not run out yet): after [`POLL`], a short fixed wait, during
//!   the first [`WINDOW`] of the run. A failover ends within about one lease
//!   TTL (3 s by default) of the leader's death, and a client should see
//!   the new leader within a poll of it, not after an exponential backoff
//!   that grew meanwhile. A refusal is a cheap answer, and a refused
//!   connection cheaper still;
//! - anything else (an overloaded or etcd-less leader, or a failover that
//!   outlasted the window: the service is down): `None`, the caller's own
//!   backoff.

use std::time::{Duration, Instant};

use tonic::Status;

use crate::leader::{normalize, LEADER_HEADER};

/// The fixed wait between retries while a failover is under way.
pub const POLL: Duration = Duration::from_millis(50);

/// How long after a run of failures began [`POLL`] applies: a few lease
/// TTLs of the default policy.
pub const WINDOW: Duration = Duration::from_secs(10);

/// The most leaders a run remembers (a replica list is short).
const MAX_NAMED: usize = 16;

/// The pace of one run of retries (one per call retried).
#[derive(Debug, Default)]
pub struct Pace {
    /// When the run's first failure came.
    since: Option<Instant>,
    /// The leaders the run's refusals named.
    named: Vec<String>,
}

impl Pace {
    pub fn new() -> Self {
        Pace::default()
    }

    /// The wait before retrying after `s`, when a failover sets it; `None`
    /// when the caller's backoff should.
    pub fn wait(&mut self, s: &Status) -> Option<Duration> {
        let since = *self.since.get_or_insert_with(Instant::now);
        let leader = s
            .metadata()
            .get(LEADER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(normalize)
            .filter(|l| !l.is_empty());
        if let Some(leader) = leader {
            if !self.named.iter().any(|n| n == leader) {
                if self.named.len() < MAX_NAMED {
                    self.named.push(leader.to_string());
                }
                return Some(Duration::ZERO);
            }
        }
        let failing_over = leader.is_some() || from_transport(s);
        (failing_over && since.elapsed() < WINDOW).then_some(POLL)
    }
}

/// Whether a `tonic::transport::Error` is in `s`'s chain of sources: the
/// call failed in the connection (refused, broken), not in a server.
pub fn from_transport(s: &Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naming(leader: &str) -> Status {
        let mut s = Status::unavailable("this replica is a standby");
        s.metadata_mut()
            .insert(LEADER_HEADER, leader.parse().unwrap());
        s
    }

    /// A `tonic::transport::Error` behind UNAVAILABLE, as a refused
    /// connection produces.
    fn refused() -> Status {
        let e = tonic::transport::Endpoint::from_shared("not a uri").unwrap_err();
        let mut s = Status::unavailable("connection refused");
        s.set_source(std::sync::Arc::new(e));
        s
    }

    #[test]
    fn a_new_leader_is_tried_at_once_and_a_known_one_polled() {
        let mut pace = Pace::new();
        assert_eq!(pace.wait(&naming("http://a:1")), Some(Duration::ZERO));
        // The old leader's connection is refused; the standby names it
        // again: its lease has not expired yet.
        assert_eq!(pace.wait(&refused()), Some(POLL));
        assert_eq!(pace.wait(&naming("http://a:1/")), Some(POLL));
        // Then it names the new one.
        assert_eq!(pace.wait(&naming("http://c:1")), Some(Duration::ZERO));
        assert_eq!(pace.wait(&naming("http://c:1")), Some(POLL));
    }

    #[test]
    fn other_failures_are_left_to_the_backoff() {
        let mut pace = Pace::new();
        assert_eq!(pace.wait(&Status::unavailable("etcd is down")), None);
        assert_eq!(pace.wait(&Status::resource_exhausted("queue full")), None);
    }

    #[test]
    fn past_the_window_a_failover_backs_off() {
        let mut pace = Pace::new();
        pace.since = Some(Instant::now() - WINDOW);
        assert_eq!(pace.wait(&refused()), None);
        assert_eq!(pace.wait(&naming("http://a:1")), Some(Duration::ZERO));
        assert_eq!(pace.wait(&naming("http://a:1")), None);
    }
}
