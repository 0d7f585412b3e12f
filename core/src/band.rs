//! Priority bands, Borg-style (Verma et al., "Large-scale cluster
//! management at Google with Borg", EuroSys 2015, section 2.5): the numeric
//! `priority` of a job falls into a band (`monitoring`, `production`,
//! `batch`, `best-effort` by default), and the bands say which may preempt
//! which. As in Borg, production does not preempt production, so that
//! preemption cannot cascade; the lowest band runs without quota and may
//! always be preempted.
//!
//! ```yaml
//! priority:
//!   bands:
//!     - {name: monitoring,  min: 9000, max: 10000, preempts: [batch, best-effort]}
//!     - {name: production,  min: 6000, max: 8999,  preempts: [batch, best-effort]}
//!     - {name: batch,       min: 1000, max: 5999,  preempts: [best-effort]}
//!     - {name: best-effort, min: 0,    max: 999,   preempts: []}
//! ```

use serde::{Deserialize, Serialize};

use crate::error::SpecError;
use crate::job::MAX_PRIORITY;
use crate::names::check_name;

/// One band: a range of priorities, and the bands its tasks may evict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Band {
    pub name: String,
    /// Lowest priority of the band; what `band: NAME` in a job spec means.
    pub min: u32,
    pub max: u32,
    /// Bands whose tasks this band's tasks may preempt (always of a lower
    /// priority than the preemptor's).
    #[serde(default)]
    pub preempts: Vec<String>,
}

/// The `priority` section of the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorityPolicy {
    #[serde(default = "default_bands")]
    pub bands: Vec<Band>,
}

impl Default for PriorityPolicy {
    fn default() -> Self {
        PriorityPolicy {
            bands: default_bands(),
        }
    }
}

fn band(name: &str, min: u32, max: u32, preempts: &[&str]) -> Band {
    Band {
        name: name.to_string(),
        min,
        max,
        preempts: preempts.iter().map(|s| s.to_string()).collect(),
    }
}

/// Borg's four bands over 0..=10,000; monitoring and production preempt
/// batch and best effort, batch preempts best effort.
fn default_bands() -> Vec<Band> {
    vec![
        band("monitoring", 9000, 10_000, &["batch", "best-effort"]),
        band("production", 6000, 8999, &["batch", "best-effort"]),
        band("batch", 1000, 5999, &["best-effort"]),
        band("best-effort", 0, 999, &[]),
    ]
}

impl PriorityPolicy {
    /// Checks names, ranges (inside 0..=10,000, not overlapping) and that
    /// `preempts` names bands of lower priorities.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.bands.is_empty() {
            return Err(SpecError::new(
                "priority.bands",
                "at least one band is required",
            ));
        }
        for (i, b) in self.bands.iter().enumerate() {
            let at = |f: &str| format!("priority.bands[{i}].{f}");
            check_name(&at("name"), &b.name)?;
            if self.bands[..i].iter().any(|o| o.name == b.name) {
                return Err(SpecError::new(
                    at("name"),
                    format!("duplicate band {:?}", b.name),
                ));
            }
            if b.min > b.max || i64::from(b.max) > MAX_PRIORITY {
                return Err(SpecError::new(
                    at("max"),
                    format!(
                        "{}..={} is not a range inside 0..={MAX_PRIORITY}",
                        b.min, b.max
                    ),
                ));
            }
            if let Some(o) = self.bands[..i]
                .iter()
                .find(|o| o.min <= b.max && b.min <= o.max)
            {
                return Err(SpecError::new(
                    at("min"),
                    format!("{}..={} overlaps band {}", b.min, b.max, o.name),
                ));
            }
        }
        for (i, b) in self.bands.iter().enumerate() {
            for (j, p) in b.preempts.iter().enumerate() {
                let field = format!("priority.bands[{i}].preempts[{j}]");
                let Some(v) = self.bands.iter().find(|o| &o.name == p) else {
                    return Err(SpecError::new(field, format!("{p:?} is not a band")));
                };
                if v.max >= b.min {
                    return Err(SpecError::new(
                        field,
                        format!(
                            "band {p} is not below band {}: a band preempts only lower ones",
                            b.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The band `priority` falls in, if any.
    pub fn band_of(&self, priority: u32) -> Option<&Band> {
        self.bands
            .iter()
            .find(|b| (b.min..=b.max).contains(&priority))
    }

    /// The band called `name`.
    pub fn named(&self, name: &str) -> Option<&Band> {
        self.bands.iter().find(|b| b.name == name)
    }

    /// The name of `priority`'s band, `-` outside every band.
    pub fn band_name(&self, priority: u32) -> &str {
        self.band_of(priority).map_or("-", |b| b.name.as_str())
    }

    /// Whether a task of `priority` may evict any other: its band lists
    /// another band.
    pub fn evicts(&self, priority: u32) -> bool {
        self.band_of(priority)
            .is_some_and(|b| !b.preempts.is_empty())
    }

    /// Whether a task of priority `preemptor` may evict one of `victim`:
    /// its band lists the victim's, and the victim's priority is lower.
    pub fn may_preempt(&self, preemptor: u32, victim: u32) -> bool {
        if victim >= preemptor {
            return false;
        }
        match (self.band_of(preemptor), self.band_of(victim)) {
            (Some(p), Some(v)) => p.preempts.contains(&v.name),
            _ => false,
        }
    }

    /// The lowest band: admitted without quota, always preemptible.
    pub fn lowest(&self) -> &Band {
        self.bands
            .iter()
            .min_by_key(|b| b.min)
            .expect("a validated policy has a band")
    }

    /// Whether `priority` is in the lowest band.
    pub fn is_lowest(&self, priority: u32) -> bool {
        self.band_of(priority)
            .is_some_and(|b| b.name == self.lowest().name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_bands_are_borgs() {
        let p = PriorityPolicy::default();
        p.validate().unwrap();
        assert_eq!(p.band_name(7000), "production");
        assert_eq!(p.band_name(0), "best-effort");
        assert_eq!(p.band_name(10_000), "monitoring");
        // Production evicts batch and best effort, never production.
        assert!(p.may_preempt(7000, 3000));
        assert!(p.may_preempt(7000, 10));
        assert!(!p.may_preempt(8000, 6000));
        // Batch evicts best effort only; nothing evicts upwards.
        assert!(p.may_preempt(2000, 500));
        assert!(!p.may_preempt(3000, 2000));
        assert!(!p.may_preempt(500, 7000));
        assert!(p.is_lowest(999) && !p.is_lowest(1000));
    }

    #[test]
    fn bad_bands_name_their_field() {
        let mut p = PriorityPolicy::default();
        // Production down to 5000 overlaps batch (1000..=5999): the later
        // band of the two is named.
        p.bands[1].min = 5000;
        let e = p.validate().unwrap_err();
        assert_eq!(e.field, "priority.bands[2].min");
        assert!(e.reason.contains("overlaps band production"), "{e:?}");
        let mut p = PriorityPolicy::default();
        p.bands[2].preempts.push("production".into());
        assert_eq!(
            p.validate().unwrap_err().field,
            "priority.bands[2].preempts[1]"
        );
        let mut p = PriorityPolicy::default();
        p.bands[0].preempts.push("gold".into());
        assert!(p.validate().unwrap_err().reason.contains("not a band"));
        let mut p = PriorityPolicy::default();
        p.bands[0].max = 20_000;
        assert_eq!(p.validate().unwrap_err().field, "priority.bands[0].max");
    }
}
