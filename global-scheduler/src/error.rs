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
}

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
