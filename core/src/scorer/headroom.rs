//! Headroom: the room left in a cluster, as one minus the utilization of its
//! dominant resource (the resource it has least of, relative to capacity;
//! Ghodsi et al., "Dominant Resource Fairness", NSDI 2011).
//!
//! Utilization counts both placed tasks and tasks queued for the cluster, so
//! a burst of jobs does not all go to the cluster that looked emptiest before
//! the burst.

use super::ClusterScorer;
use crate::cluster::ClusterSummary;
use crate::job::Job;
use crate::policy::ScorerName;
use crate::score::Score;

pub struct Headroom;

impl ClusterScorer for Headroom {
    fn name(&self) -> ScorerName {
        ScorerName::Headroom
    }

    fn score(&self, _: &Job, c: &ClusterSummary) -> Score {
        let claimed = c.allocated.saturating_add(&c.queued);
        let used_ppm = claimed.dominant_share_ppm(&c.capacity);
        Score::ratio(1_000_000 - used_ppm, 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Resources;
    use crate::test_support::{cluster_summary, job};

    #[test]
    fn table() {
        let j = job("j", 1, 1000, 1 << 30);
        let cases = [
            // (allocated cpu, mem, queued cpu, mem, expected, arithmetic) on 10000m / 1000
            (0, 0, 0, 0, 1000),        // empty: 1000 * (1 - 0) = 1000
            (2500, 100, 0, 0, 750),    // cpu 25% dominant: 1000 * (1 - 0.25) = 750
            (2500, 600, 0, 0, 400),    // memory 60% dominant: 1000 * (1 - 0.6) = 400
            (2500, 100, 5000, 0, 250), // placed + queued cpu 75%: 1000 * 0.25 = 250
            (10000, 1000, 0, 0, 0),    // full: 0
        ];
        for (ac, am, qc, qm, expected) in cases {
            let mut c = cluster_summary(0, 10_000, 1000);
            c.allocated = Resources::new(ac, am);
            c.queued = Resources::new(qc, qm);
            assert_eq!(
                Headroom.score(&j, &c).get(),
                expected,
                "{ac} {am} {qc} {qm}"
            );
        }
    }
}
