//! The service's errors and their one mapping to gRPC status codes.

use sched_core::error::SpecError;
use sched_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Bad input: names the field and the reason.
    #[error("{0}")]
    Invalid(#[from] SpecError),
    #[error("{what} {name:?} not found")]
    NotFound { what: &'static str, name: String },
    /// A bounded queue is full: the client should back off and retry.
    #[error("{0}; retry later")]
    Busy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the scheduler is shutting down")]
    ShuttingDown,
    /// The request is valid but the object's state forbids it (cancel of a
    /// finished job, delete of a running one).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Over a tenant's quota: RESOURCE_EXHAUSTED with a quota reason and no
    /// retry hint (retrying cannot help until usage or quota changes).
    #[error(transparent)]
    Quota(#[from] Box<sched_core::quota::Exceeded>),
}

/// The `google.rpc.ErrorInfo` reason of a quota refusal.
pub const QUOTA_REASON: &str = "QUOTA_EXCEEDED";

/// The retry hint sent with RESOURCE_EXHAUSTED: about the time the writers
/// take to drain a full queue of group commits.
pub const RETRY_AFTER_MS: u64 = 200;

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        let message = e.to_string();
        match e {
            ServiceError::Invalid(_) => tonic::Status::invalid_argument(message),
            ServiceError::NotFound { .. } => tonic::Status::not_found(message),
            ServiceError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            ServiceError::Busy(_) => {
                // A hint for clients: when to try again.
                let mut s = tonic::Status::resource_exhausted(format!(
                    "{message} (retry after {RETRY_AFTER_MS} ms)"
                ));
                s.metadata_mut().insert(
                    sched_proto::backoff::RETRY_AFTER_HEADER,
                    tonic::metadata::MetadataValue::from(RETRY_AFTER_MS),
                );
                s
            }
            ServiceError::Quota(q) => {
                let q = *q;
                use tonic_types::{ErrorDetails, StatusExt};
                let metadata: std::collections::HashMap<String, String> = [
                    ("tenant", q.tenant),
                    ("band", q.band),
                    ("resource", q.resource.to_string()),
                    ("limit", q.limit),
                    ("usage", q.usage),
                    ("asked", q.asked),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
                tonic::Status::with_error_details(
                    tonic::Code::ResourceExhausted,
                    message,
                    ErrorDetails::with_error_info(QUOTA_REASON, "clustersched.v1", metadata),
                )
            }
            ServiceError::Store(StoreError::Unavailable(_) | StoreError::Fenced(_))
            | ServiceError::ShuttingDown => tonic::Status::unavailable(message),
            ServiceError::Store(StoreError::Conflict { .. }) => tonic::Status::aborted(message),
            ServiceError::Store(_) => tonic::Status::internal(message),
        }
    }
}

/// Why [`run`](crate::run) stopped, or why a term of leadership could not
/// start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A record in the store that this version cannot read.
    #[error("cannot read the stored state: {0}")]
    Load(#[from] crate::state::admission::LoadError),
    #[error("TLS: {0}")]
    Tls(String),
}
