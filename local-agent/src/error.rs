//! What can go wrong in the local agent and the node agent, and the one
//! mapping of it onto gRPC status codes.

use sched_core::error::SpecError;
use sched_store::StoreError;
use tonic::{Code, Status};

/// Why a call, a session or the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A request or a setting with a bad field: names the field and why.
    #[error(transparent)]
    InvalidArgument(#[from] SpecError),
    /// A node called before registering (or after being forgotten).
    #[error("node {0:?} is not registered; register first")]
    NotRegistered(String),
    /// No such task here.
    #[error("task {job}/{index} {why}")]
    TaskNotFound {
        job: String,
        index: u32,
        /// "is not placed in cluster east-a", "has no output on this node".
        why: String,
    },
    /// The store refused or could not be reached.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A write that no commit can hold, even alone.
    #[error(transparent)]
    TooLarge(#[from] sched_store::TooLarge),
    /// A stored record this agent cannot read.
    #[error("stored record {key}: {reason}")]
    BadRecord { key: String, reason: String },
    /// A peer (the global scheduler, the local agent, a node agent) cannot
    /// be reached.
    #[error("cannot reach {peer}: {source}")]
    Unreachable {
        peer: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// A call to a peer failed; its status is passed on as it came.
    #[error("{}: {}", .0.code(), .0.message())]
    Peer(#[from] Status),
    /// The peer ended the session (a stream closed, or it asked us to
    /// register again); the caller connects again.
    #[error("session ended: {0}")]
    SessionEnded(&'static str),
    /// The gRPC server failed.
    #[error("server: {0}")]
    Serve(#[source] tonic::transport::Error),
    /// A local file or socket.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A rule of the agent's own state does not hold (a bug).
    #[error("invariant broken: {0}")]
    Invariant(String),
    /// Every uid of `--uid-range` runs a task: no task can start until
    /// one ends.
    #[error("every uid of the dynamic range {0} is in use on this node")]
    UidsExhausted(String),
    /// `--run-as` or `--uid-range` cannot be used.
    #[error(transparent)]
    RunAs(#[from] crate::node::run_as::RunAsError),
}

impl AgentError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io {
            context: context.into(),
            source,
        }
    }

    /// The gRPC code a caller sees; retries are decided on it.
    pub fn code(&self) -> Code {
        match self {
            AgentError::InvalidArgument(_) | AgentError::TooLarge(_) => Code::InvalidArgument,
            AgentError::NotRegistered(_) | AgentError::RunAs(_) => Code::FailedPrecondition,
            AgentError::UidsExhausted(_) => Code::ResourceExhausted,
            AgentError::TaskNotFound { .. } => Code::NotFound,
            AgentError::Store(e) => match e {
                StoreError::Conflict { .. } | StoreError::Fenced(_) => Code::Aborted,
                StoreError::Unavailable(_) => Code::Unavailable,
                StoreError::TooLarge { .. } => Code::InvalidArgument,
                StoreError::DuplicateKey(_)
                | StoreError::LeaseExpired(_)
                | StoreError::Backend(_) => Code::Internal,
            },
            AgentError::Peer(s) => s.code(),
            AgentError::Unreachable { .. } | AgentError::SessionEnded(_) => Code::Unavailable,
            AgentError::BadRecord { .. } => Code::DataLoss,
            AgentError::Serve(_) | AgentError::Io { .. } | AgentError::Invariant(_) => {
                Code::Internal
            }
        }
    }

    /// The status a peer answered with, if this is one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            AgentError::Peer(s) => Some(s),
            _ => None,
        }
    }
}

impl From<AgentError> for Status {
    fn from(e: AgentError) -> Status {
        match e {
            // A peer's answer goes on unchanged, with its metadata (a
            // standby's leader hint, a retry hint).
            AgentError::Peer(s) => s,
            e => Status::new(e.code(), e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use sched_store::Expect;

    use super::*;

    #[test]
    fn each_kind_maps_to_its_code() {
        let cases: Vec<(AgentError, Code)> = vec![
            (
                SpecError::new("node", "must not be empty").into(),
                Code::InvalidArgument,
            ),
            (
                AgentError::NotRegistered("n0".into()),
                Code::FailedPrecondition,
            ),
            (
                AgentError::TaskNotFound {
                    job: "web".into(),
                    index: 3,
                    why: "is not placed in cluster east-a".into(),
                },
                Code::NotFound,
            ),
            (
                StoreError::Conflict {
                    key: "k".into(),
                    expected: Expect::Absent,
                    actual: Some(3),
                }
                .into(),
                Code::Aborted,
            ),
            (
                StoreError::Unavailable("down".into()).into(),
                Code::Unavailable,
            ),
            (
                AgentError::SessionEnded("work stream ended"),
                Code::Unavailable,
            ),
            (AgentError::Invariant("x".into()), Code::Internal),
        ];
        for (e, code) in cases {
            let text = e.to_string();
            let s = Status::from(e);
            assert_eq!(s.code(), code, "{text}");
            assert_eq!(s.message(), text);
        }
    }

    #[test]
    fn a_peer_status_keeps_its_metadata() {
        let mut s = Status::unavailable("standby");
        s.metadata_mut()
            .insert("x-sched-leader", "http://a:1".parse().unwrap());
        let e = AgentError::from(s);
        assert_eq!(e.code(), Code::Unavailable);
        let back = Status::from(e);
        assert_eq!(back.code(), Code::Unavailable);
        assert_eq!(back.message(), "standby");
        assert!(back.metadata().contains_key("x-sched-leader"));
    }
}
