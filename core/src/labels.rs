//! Machine labels and the constraints that tasks place on them.

use std::collections::BTreeMap;

/// Key/value labels on a machine (`ssd: "true"`, `zone: a`).
pub type Labels = BTreeMap<String, String>;

/// Returns the first constraint that `labels` does not satisfy, as
/// `(key, wanted, found)`.
pub fn first_unmet<'a>(
    constraints: &'a Labels,
    labels: &'a Labels,
) -> Option<(&'a str, &'a str, Option<&'a str>)> {
    constraints.iter().find_map(|(k, v)| match labels.get(k) {
        Some(found) if found == v => None,
        found => Some((k.as_str(), v.as_str(), found.map(String::as_str))),
    })
}

/// True when every constraint is met by `labels`.
pub fn satisfies(constraints: &Labels, labels: &Labels) -> bool {
    first_unmet(constraints, labels).is_none()
}
