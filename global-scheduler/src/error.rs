//! The service's errors and their one mapping to gRPC status codes.

use sched_core::error::SpecError;
use sched_store::StoreError;
use tonic_types::{ErrorDetails, StatusExt};

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
    /// A name in use: ALREADY_EXISTS (the field names where the name was).
    #[error("{0}")]
    AlreadyExists(SpecError),
    /// A `submission_id` already used for jobs with another spec.
    #[error("{0}")]
    SubmissionReused(SpecError),
    /// A request the state of a job forbids, with an ErrorInfo reason.
    #[error("{message}")]
    Precondition {
        reason: &'static str,
        message: String,
    },
    /// Over a tenant's quota: RESOURCE_EXHAUSTED with a quota reason and no
    /// retry hint (retrying cannot help until usage or quota changes).
    #[error(transparent)]
    Quota(#[from] Box<sched_core::quota::Exceeded>),
}

/// The `google.rpc.ErrorInfo` reason of a quota refusal.
pub const QUOTA_REASON: &str = "QUOTA_EXCEEDED";

/// The `google.rpc.ErrorInfo` domain of every error the API gives.
pub const DOMAIN: &str = "clustersched.v1";

/// ErrorInfo reasons: what a client can branch on without reading text.
pub mod reason {
    pub const INVALID_FIELD: &str = "INVALID_FIELD";
    pub const NOT_FOUND: &str = "NOT_FOUND";
    pub const ALREADY_EXISTS: &str = "ALREADY_EXISTS";
    pub const SUBMISSION_ID_REUSED: &str = "SUBMISSION_ID_REUSED";
    pub const BUSY: &str = "BUSY";
    pub const FAILED_PRECONDITION: &str = "FAILED_PRECONDITION";
}

/// The retry hint sent with RESOURCE_EXHAUSTED (as `google.rpc.RetryInfo`):
/// about the time the writers take to drain a full queue of group commits.
pub const RETRY_AFTER_MS: u64 = 200;

/// An ErrorInfo with `reason` in our domain and `metadata`.
fn info(reason: &str, metadata: &[(&str, String)]) -> ErrorDetails {
    let metadata: std::collections::HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    ErrorDetails::with_error_info(reason, DOMAIN, metadata)
}

/// A status with `details` (google.rpc) in its `grpc-status-details-bin`.
fn status(code: tonic::Code, message: String, details: ErrorDetails) -> tonic::Status {
    tonic::Status::with_error_details(code, message, details)
}

/// A bad field, as `google.rpc.BadRequest` and ErrorInfo.
pub fn invalid(e: &SpecError) -> tonic::Status {
    let mut d = info(reason::INVALID_FIELD, &[("field", e.field.clone())]);
    d.add_bad_request_violation(e.field.clone(), e.reason.clone());
    status(tonic::Code::InvalidArgument, e.to_string(), d)
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        let message = e.to_string();
        match e {
            ServiceError::Invalid(e) => invalid(&e),
            ServiceError::NotFound { what, name } => {
                let mut d = info(reason::NOT_FOUND, &[("name", name.clone())]);
                d.set_resource_info(what, name, "", message.clone());
                status(tonic::Code::NotFound, message, d)
            }
            ServiceError::AlreadyExists(e) => {
                let mut d = info(reason::ALREADY_EXISTS, &[("field", e.field.clone())]);
                d.add_bad_request_violation(e.field, e.reason);
                status(tonic::Code::AlreadyExists, message, d)
            }
            ServiceError::SubmissionReused(e) => {
                let mut d = info(reason::SUBMISSION_ID_REUSED, &[("field", e.field.clone())]);
                d.add_precondition_failure_violation("SUBMISSION_ID_REUSED", e.field, e.reason);
                status(tonic::Code::FailedPrecondition, message, d)
            }
            ServiceError::FailedPrecondition(_) => status(
                tonic::Code::FailedPrecondition,
                message,
                info(reason::FAILED_PRECONDITION, &[]),
            ),
            ServiceError::Precondition { reason, .. } => {
                status(tonic::Code::FailedPrecondition, message, info(reason, &[]))
            }
            ServiceError::Busy(_) => {
                // A hint for clients: when to try again.
                let mut d = info(
                    reason::BUSY,
                    &[("retry_after_ms", RETRY_AFTER_MS.to_string())],
                );
                d.set_retry_info(Some(std::time::Duration::from_millis(RETRY_AFTER_MS)));
                status(
                    tonic::Code::ResourceExhausted,
                    format!("{message} (retry after {RETRY_AFTER_MS} ms)"),
                    d,
                )
            }
            ServiceError::Quota(q) => {
                let q = *q;
                status(
                    tonic::Code::ResourceExhausted,
                    message,
                    info(
                        QUOTA_REASON,
                        &[
                            ("tenant", q.tenant),
                            ("band", q.band),
                            ("resource", q.resource.to_string()),
                            ("limit", q.limit),
                            ("usage", q.usage),
                            ("asked", q.asked),
                        ],
                    ),
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
