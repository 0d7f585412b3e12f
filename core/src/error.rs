//! Errors in user input: they name the field and the reason.

use thiserror::Error;

/// A refused input document (topology, job file or policy).
///
/// `field` is a path into the document, such as `jobs[2].resources.cpu`, so
/// that the user can find the offending line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SpecError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
