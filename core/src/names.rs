//! The naming rule shared by jobs, clusters, locations and machine classes.

use crate::error::SpecError;

/// The longest name accepted, as for a Kubernetes DNS label (RFC 1123).
pub const MAX_NAME_LEN: usize = 63;

/// Checks `name` against the rule: lowercase letters, digits and '-', at most
/// 63 characters, starting and ending with a letter or digit.
pub fn check_name(field: &str, name: &str) -> Result<(), SpecError> {
    let reason = if name.is_empty() {
        Some("must not be empty".to_string())
    } else if name.len() > MAX_NAME_LEN {
        Some(format!(
            "{name:?} is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        ))
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some(format!(
            "{name:?} may contain only lowercase letters, digits and '-'"
        ))
    } else if name.starts_with('-') || name.ends_with('-') {
        Some(format!(
            "{name:?} must start and end with a letter or digit"
        ))
    } else {
        None
    };
    match reason {
        Some(r) => Err(SpecError::new(field, r)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels_and_refuses_the_rest() {
        assert!(check_name("name", "web-1").is_ok());
        assert!(check_name("name", "a").is_ok());
        for bad in ["", "Web", "web_1", "-web", "web-", "wéb", &"a".repeat(64)] {
            let err = check_name("jobs[0].name", bad).unwrap_err();
            assert_eq!(err.field, "jobs[0].name");
        }
    }
}
