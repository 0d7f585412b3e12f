use crate::{Expect, Revision};

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A write's expectation did not hold; nothing was written.
    #[error("conflict on {key}: expected {expected:?}, found revision {actual:?}")]
    Conflict {
        key: String,
        expected: Expect,
        /// The key's modification revision, `None` if absent.
        actual: Option<Revision>,
    },
    /// The store cannot be reached (or lost its quorum); the call may be
    /// retried. Whether a commit that failed this way applied is unknown:
    /// expectations make the retry safe.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A commit over the store's limits.
    #[error("commit too large: {size} {what}, limit {limit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    /// The same key twice in one commit (etcd refuses it too).
    #[error("key {0} written twice in one commit")]
    DuplicateKey(String),
    /// The lease is gone (expired or revoked).
    #[error("lease {0} expired")]
    LeaseExpired(i64),
    /// A fenced commit found its fence moved: this writer lost the right
    /// to write (a leader that was deposed).
    #[error("fenced off: {0} changed; this process is no longer the leader")]
    Fenced(String),
    /// Anything else the backend reported.
    #[error("store error: {0}")]
    Backend(String),
}
