//! The scheduling policy: every tunable, read from YAML and validated.
//!
//! Unknown fields are refused (`deny_unknown_fields`), and [`Policy::validate`]
//! checks values that parse but make no sense (zero or over-large weights,
//! duplicate scorers, zero budgets). Pipelines are built only from a
//! validated policy. The commented default lives in `config/policy.yaml`.

use serde::{Deserialize, Serialize};

pub use crate::band::PriorityPolicy;
use crate::error::SpecError;
pub use crate::lifecycle::LifecyclePolicy;
use crate::yaml;

/// The largest weight of a scoring term; Kubernetes refuses plugin weights
/// over 100 for the same reason: so a sum of weights times scores cannot
/// overflow and no single term can be made to dwarf the rest by a typo.
pub const MAX_WEIGHT: u32 = 100;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub global: GlobalPolicy,
    #[serde(default)]
    pub local: LocalPolicy,
    #[serde(default)]
    pub ha: HaPolicy,
    #[serde(default)]
    pub lifecycle: LifecyclePolicy,
    #[serde(default)]
    pub priority: PriorityPolicy,
}

/// High availability of the global scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaPolicy {
    /// TTL of the etcd lease behind the leader key, in seconds. A leader
    /// renews it every third of the TTL; when it dies, a standby takes over
    /// within about TTL plus a third of it (standbys poll that often).
    #[serde(default = "default_leader_lease_seconds")]
    pub leader_lease_seconds: u32,
}

/// etcd refuses leases shorter than 1.5 election timeouts (about 1.5 s with
/// its defaults); 3 s keeps takeovers under 5 s with room for a slow disk.
fn default_leader_lease_seconds() -> u32 {
    3
}

/// Bounds of `ha.leader_lease_seconds`.
pub const LEADER_LEASE_SECONDS: std::ops::RangeInclusive<u32> = 2..=60;

impl Default for HaPolicy {
    fn default() -> Self {
        HaPolicy {
            leader_lease_seconds: default_leader_lease_seconds(),
        }
    }
}

/// How the global scheduler ranks clusters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalPolicy {
    /// The terms of the cluster score and their weights.
    #[serde(default = "default_scorers")]
    pub scorers: Vec<WeightedScorer>,
    /// How latency to the job's preferred location becomes a score.
    #[serde(default = "default_locality_shape")]
    pub locality: Shape,
    /// How queue length becomes a score.
    #[serde(default = "default_queue_shape")]
    pub queue: Shape,
    /// Sampling limit: score at most this many feasible clusters per job
    /// (0: all of them). Like Borg's relaxed randomization, it bounds the
    /// cost of a decision when there are very many clusters.
    #[serde(default)]
    pub max_clusters_scored: u32,
}

/// A scoring term and its weight (Kubernetes' `{name, weight}` plugin form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedScorer {
    pub name: ScorerName,
    pub weight: i64,
}

/// The cluster scoring terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScorerName {
    /// Closeness of the cluster to the job's preferred location.
    Locality,
    /// Room left in the cluster: one minus its dominant-resource utilization.
    Headroom,
    /// Shortness of the cluster's queue of tasks waiting to be placed.
    Queue,
    /// How closely the cluster's free capacity is shaped like the request
    /// (cosine of the two vectors, as shares of the cluster's capacity).
    Alignment,
}

impl ScorerName {
    pub fn as_str(self) -> &'static str {
        match self {
            ScorerName::Locality => "locality",
            ScorerName::Headroom => "headroom",
            ScorerName::Queue => "queue",
            ScorerName::Alignment => "alignment",
        }
    }
}

/// A decreasing curve from a measure (milliseconds, tasks) to a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "shape", rename_all = "snake_case", deny_unknown_fields)]
pub enum Shape {
    /// `MAX * (zero_at - x) / zero_at`, and 0 from `zero_at` on.
    Linear { zero_at: u64 },
    /// `MAX * half_at / (half_at + x)`: halves at `half_at`, never reaches 0.
    Reciprocal { half_at: u64 },
}

/// How a local agent packs tasks onto machines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalPolicy {
    #[serde(default)]
    pub strategy: Strategy,
    /// The most tasks packed together in one batch (largest first).
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// When a batch opens an empty machine, the packer searches for the set
    /// of waiting tasks that fills it best, visiting at most this many
    /// search nodes per machine (0: no search, plain best fit decreasing).
    #[serde(default = "default_search_budget")]
    pub search_budget: u32,
}

/// The machine-choice strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Fragmentation-ordered best fit: the tightest machine that holds the
    /// task, so that whole machines stay free for large tasks.
    #[default]
    BestFit,
    /// Worst fit: the emptiest machine, for operators who want headroom on
    /// every machine more than free machines.
    Spread,
    /// GPU fragmentation gradient descent: the machine and device whose GPU
    /// fragmentation, measured against the task mix, grows least (Weng et
    /// al., USENIX ATC 2023; see `sched_core::gpu::strategy`), cpu-only
    /// tasks kept off GPU machines while others hold them. Tasks are placed
    /// one at a time, largest first; the mix is the batch's own unless the
    /// caller (the trace replay) knows the workload's.
    Fragmentation,
}

fn default_scorers() -> Vec<WeightedScorer> {
    vec![
        WeightedScorer {
            name: ScorerName::Locality,
            weight: 4,
        },
        WeightedScorer {
            name: ScorerName::Headroom,
            weight: 1,
        },
        WeightedScorer {
            name: ScorerName::Queue,
            weight: 1,
        },
    ]
}

fn default_locality_shape() -> Shape {
    Shape::Reciprocal { half_at: 10 }
}

fn default_queue_shape() -> Shape {
    Shape::Linear { zero_at: 100_000 }
}

fn default_batch_size() -> u32 {
    10_000
}

fn default_search_budget() -> u32 {
    2_000
}

impl Default for GlobalPolicy {
    fn default() -> Self {
        GlobalPolicy {
            scorers: default_scorers(),
            locality: default_locality_shape(),
            queue: default_queue_shape(),
            max_clusters_scored: 0,
        }
    }
}

impl Default for LocalPolicy {
    fn default() -> Self {
        LocalPolicy {
            strategy: Strategy::default(),
            batch_size: default_batch_size(),
            search_budget: default_search_budget(),
        }
    }
}

impl Policy {
    /// Parses and validates a policy file.
    pub fn from_yaml(text: &str) -> Result<Policy, SpecError> {
        let p: Policy = yaml::from_str(text)?;
        p.validate()?;
        Ok(p)
    }

    /// The effective policy as YAML, defaults filled in.
    pub fn to_yaml(&self) -> String {
        yaml::to_string(self)
    }

    /// Checks the values that parse but make no sense.
    pub fn validate(&self) -> Result<(), SpecError> {
        let g = &self.global;
        if g.scorers.is_empty() {
            return Err(SpecError::new(
                "global.scorers",
                "at least one scorer is required",
            ));
        }
        for (i, s) in g.scorers.iter().enumerate() {
            if !(1..=i64::from(MAX_WEIGHT)).contains(&s.weight) {
                return Err(SpecError::new(
                    format!("global.scorers[{i}].weight"),
                    format!(
                        "{} is out of range 1..={MAX_WEIGHT} (remove the scorer to turn it off)",
                        s.weight
                    ),
                ));
            }
            if g.scorers[..i].iter().any(|o| o.name == s.name) {
                return Err(SpecError::new(
                    format!("global.scorers[{i}].name"),
                    format!("duplicate scorer {:?}", s.name.as_str()),
                ));
            }
        }
        check_shape("global.locality", &g.locality)?;
        check_shape("global.queue", &g.queue)?;
        let l = &self.local;
        if l.batch_size == 0 {
            return Err(SpecError::new("local.batch_size", "must be at least 1"));
        }
        let ttl = self.ha.leader_lease_seconds;
        if !LEADER_LEASE_SECONDS.contains(&ttl) {
            return Err(SpecError::new(
                "ha.leader_lease_seconds",
                format!(
                    "{ttl} is out of range {}..={}",
                    LEADER_LEASE_SECONDS.start(),
                    LEADER_LEASE_SECONDS.end()
                ),
            ));
        }
        self.lifecycle.validate()?;
        self.priority.validate()
    }

    /// The weight of a scorer, 0 when it is not configured.
    pub fn weight(&self, name: ScorerName) -> u32 {
        self.global
            .scorers
            .iter()
            .find(|s| s.name == name)
            .map_or(0, |s| s.weight as u32)
    }
}

fn check_shape(field: &str, s: &Shape) -> Result<(), SpecError> {
    match *s {
        Shape::Linear { zero_at: 0 } => Err(SpecError::new(
            format!("{field}.zero_at"),
            "must be greater than zero",
        )),
        Shape::Reciprocal { half_at: 0 } => Err(SpecError::new(
            format!("{field}.half_at"),
            "must be greater than zero",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_gives_the_defaults() {
        assert_eq!(Policy::from_yaml("{}").unwrap(), Policy::default());
    }

    #[test]
    fn the_shipped_policy_is_valid_and_is_the_default() {
        let text = include_str!("../../config/policy.yaml");
        assert_eq!(Policy::from_yaml(text).unwrap(), Policy::default());
    }

    #[test]
    fn the_alignment_scorer_takes_a_weight() {
        let p = Policy::from_yaml(
            "global: {scorers: [{name: locality, weight: 4}, {name: alignment, weight: 2}]}",
        )
        .unwrap();
        assert_eq!(p.weight(ScorerName::Alignment), 2);
        assert_eq!(Policy::default().weight(ScorerName::Alignment), 0);
    }

    #[test]
    fn weights_out_of_range_are_refused() {
        for w in [0, -1, 101] {
            let text = format!("global: {{scorers: [{{name: queue, weight: {w}}}]}}");
            let e = Policy::from_yaml(&text).unwrap_err();
            assert_eq!(e.field, "global.scorers[0].weight", "{e}");
        }
    }

    #[test]
    fn typos_and_bad_values_are_refused() {
        let e = Policy::from_yaml("global: {scorers: [{name: localty, weight: 1}]}").unwrap_err();
        assert!(e.to_string().contains("localty"), "{e}");
        let e = Policy::from_yaml("global: {scorer: []}").unwrap_err();
        assert!(e.to_string().contains("unknown field `scorer`"), "{e}");
        let e = Policy::from_yaml("local: {strategy: first_fit}").unwrap_err();
        assert!(e.to_string().contains("first_fit"), "{e}");
        let e = Policy::from_yaml("local: {batch_size: 0}").unwrap_err();
        assert_eq!(e.field, "local.batch_size");
        let e = Policy::from_yaml("global: {queue: {shape: linear, zero_at: 0}}").unwrap_err();
        assert_eq!(e.field, "global.queue.zero_at");
        let e = Policy::from_yaml("global: {queue: {shape: linear, half_at: 3}}").unwrap_err();
        assert!(e.to_string().contains("half_at"), "{e}");
        let e = Policy::from_yaml("global: {scorers: [{name: alignment, weight: 0}]}").unwrap_err();
        assert_eq!(e.field, "global.scorers[0].weight");
        assert!(e.to_string().contains("out of range 1..=100"), "{e}");
        let e = Policy::from_yaml(
            "global: {scorers: [{name: queue, weight: 1}, {name: queue, weight: 2}]}",
        )
        .unwrap_err();
        assert_eq!(e.field, "global.scorers[1].name");
    }
}
