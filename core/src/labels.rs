//! Machine labels and the constraints that tasks place on them.

use std::collections::BTreeMap;

/// Key/value labels on a machine (`ssd: "true"`, `zone: a`).
pub type Labels = BTreeMap<String, String>;

/// Returns the first constraint that `labels` does not satisfy, as
/// `(key, wanted, found)`. A wanted value may list alternatives joined by
/// `|` (`gpu-model: "V100M16|V100M32"`, as the Alibaba trace writes GPU
/// model constraints): any one of them satisfies it.
pub fn first_unmet<'a>(
    constraints: &'a Labels,
    labels: &'a Labels,
) -> Option<(&'a str, &'a str, Option<&'a str>)> {
    constraints.iter().find_map(|(k, v)| match labels.get(k) {
        Some(found) if v.split('|').any(|alt| alt == found) => None,
        found => Some((k.as_str(), v.as_str(), found.map(String::as_str))),
    })
}

/// True when every constraint is met by `labels`.
pub fn satisfies(constraints: &Labels, labels: &Labels) -> bool {
    first_unmet(constraints, labels).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternatives_match_any_one() {
        let want: Labels = [("gpu-model".into(), "V100M16|V100M32".into())].into();
        let v32: Labels = [("gpu-model".into(), "V100M32".into())].into();
        let t4: Labels = [("gpu-model".into(), "T4".into())].into();
        assert!(satisfies(&want, &v32));
        assert_eq!(
            first_unmet(&want, &t4),
            Some(("gpu-model", "V100M16|V100M32", Some("T4")))
        );
        assert!(!satisfies(&want, &Labels::new()));
    }
}
