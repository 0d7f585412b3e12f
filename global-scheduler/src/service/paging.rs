//! List paging as in AIP-158: `page_size` (0: the default; above the
//! maximum: the maximum), `page_token` (opaque to clients; refused when
//! it was made for other filters) and `next_page_token` (empty on the last
//! page), and AIP-style checks of enum values in requests.

use sched_core::error::SpecError;

/// ListJobs: jobs per page when `page_size` is 0, and at most.
pub const JOBS_DEFAULT: usize = 100;
pub const JOBS_MAX: usize = 1000;
/// ListTasks: tasks per page when `page_size` is 0, and at most. A task is
/// under 200 bytes encoded (its reason aside, which is bounded): a full
/// page stays well under gRPC's usual 4 MiB limit.
pub const TASKS_DEFAULT: usize = 1000;
pub const TASKS_MAX: usize = 10_000;
/// GetJob with JOB_VIEW_FULL: the largest job whose tasks come inline.
pub const FULL_VIEW_MAX_TASKS: usize = 10_000;

/// The page size asked for, bounded.
pub fn size(asked: i32, default: usize, max: usize) -> Result<usize, SpecError> {
    match asked {
        n if n < 0 => Err(SpecError::new(
            "page_size",
            format!("{n} is negative; 0 means the default ({default}), at most {max}"),
        )),
        0 => Ok(default),
        n => Ok((n as usize).min(max)),
    }
}

/// A token for the page after `last`, bound to `scope` (the list and its
/// filters): hex, so that clients see no structure to rely on.
pub fn token(scope: &[&str], last: &str) -> String {
    let mut text = scope.join("\u{0}");
    text.push('\u{0}');
    text.push_str(last);
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Where the page after `token` starts (`None`: the first page). A token
/// that this server did not make, or made for other filters, is refused.
pub fn resume(scope: &[&str], token: &str) -> Result<Option<String>, SpecError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = |why: &str| SpecError::new("page_token", why.to_string());
    if !token.len().is_multiple_of(2) {
        return Err(bad("not a token this server made"));
    }
    let bytes: Result<Vec<u8>, _> = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(())
        })
        .collect();
    let text = bytes
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| bad("not a token this server made"))?;
    let mut prefix = scope.join("\u{0}");
    prefix.push('\u{0}');
    match text.strip_prefix(&prefix) {
        Some(last) => Ok(Some(last.to_string())),
        None => Err(bad(
            "made for another list or other filters: send the same filters as the call that returned it",
        )),
    }
}

/// An enum field's value, refused when this server does not know it
/// (proto3 keeps unknown values; "unspecified" passes).
pub fn known<E: TryFrom<i32>>(field: &str, value: i32) -> Result<(), SpecError> {
    match E::try_from(value) {
        Ok(_) => Ok(()),
        Err(_) => Err(SpecError::new(
            field,
            format!("{value} is not a known value"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_their_filters() {
        let t = token(&["jobs", "2", "web-"], "web-17");
        assert_eq!(
            resume(&["jobs", "2", "web-"], &t).unwrap().as_deref(),
            Some("web-17")
        );
        assert_eq!(resume(&["jobs", "2", "web-"], "").unwrap(), None);
        let e = resume(&["jobs", "3", "web-"], &t).unwrap_err();
        assert_eq!(e.field, "page_token");
        assert!(resume(&["jobs"], "zz").is_err());
        assert!(resume(&["jobs"], "abc").is_err());
    }

    #[test]
    fn sizes_default_and_cap() {
        assert_eq!(size(0, 100, 1000).unwrap(), 100);
        assert_eq!(size(5, 100, 1000).unwrap(), 5);
        assert_eq!(size(5000, 100, 1000).unwrap(), 1000);
        assert_eq!(size(-1, 100, 1000).unwrap_err().field, "page_size");
    }

    #[test]
    fn unknown_enum_values_are_refused() {
        use sched_proto::pb::JobState;
        assert!(known::<JobState>("state", 0).is_ok());
        assert!(known::<JobState>("state", 2).is_ok());
        assert_eq!(known::<JobState>("state", 99).unwrap_err().field, "state");
    }
}
