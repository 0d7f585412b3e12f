//! Policy changes by outcome, for the services that take a `--policy`
//! (the global scheduler and the local agents): `sched_policy_changes_total`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// What became of each policy reload (SIGHUP) or apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new policy is in force.
    Applied,
    /// The file or request held the policy already in force.
    Unchanged,
    /// Invalid (or not stored): the policy in force stays.
    Refused,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Refused => "refused",
        }
    }
}

/// The family, registered once per process.
#[derive(Debug, Clone)]
pub struct PolicyMetrics {
    changes: Family<OutcomeLabel, Counter>,
}

impl PolicyMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let changes = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "sched_policy_changes",
            "Policy reloads (SIGHUP) and applies by outcome: applied, unchanged or refused",
            changes.clone(),
        );
        // Every outcome shown from the start, at zero, so a rate over a
        // refusal is defined before the first one.
        for o in [Outcome::Applied, Outcome::Unchanged, Outcome::Refused] {
            let _ = changes.get_or_create(&OutcomeLabel { outcome: o.label() });
        }
        PolicyMetrics { changes }
    }

    pub fn observe(&self, outcome: Outcome) {
        self.changes
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            })
            .inc();
    }
}
