//! Locality: how close a cluster is to the job's preferred location.
//!
//! The measure is the shortest-path latency in the topology's link graph,
//! mapped to a score by the policy's shape. A job without a preference scores
//! every cluster the same (MAX), so the term never decides for it. A cluster
//! with no path to the preferred location scores 0.

use super::ClusterScorer;
use crate::cluster::ClusterSummary;
use crate::job::Job;
use crate::locality::Locality;
use crate::policy::{ScorerName, Shape};
use crate::score::Score;

pub struct LocalityScorer<'a> {
    pub locality: &'a Locality,
    pub shape: Shape,
}

impl ClusterScorer for LocalityScorer<'_> {
    fn name(&self) -> ScorerName {
        ScorerName::Locality
    }

    fn score(&self, job: &Job, c: &ClusterSummary) -> Score {
        match job.locality {
            None => Score::MAX,
            Some(want) => match self.locality.latency_ms(want, c.location) {
                Some(ms) => self.shape.apply(ms),
                None => Score::ZERO,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locality::LocationId;
    use crate::test_support::{cluster_summary, job};

    #[test]
    fn table() {
        // us-east(0) -70ms- us-west(1) -100ms- eu(2); mars(3) unlinked.
        let l = Locality::new(
            vec![
                "us-east".into(),
                "us-west".into(),
                "eu".into(),
                "mars".into(),
            ],
            &[
                (LocationId(0), LocationId(1), 70),
                (LocationId(1), LocationId(2), 100),
            ],
        );
        let s = LocalityScorer {
            locality: &l,
            shape: Shape::Reciprocal { half_at: 10 },
        };
        let cases = [
            // (job locality, cluster location, expected, arithmetic)
            (None, 0, 1000),    // no preference: MAX for every cluster
            (Some(0), 0, 1000), // 1000 * 10 / (10 + 0) = 1000
            (Some(0), 1, 125),  // 1000 * 10 / (10 + 70) = 125
            (Some(0), 2, 55),   // 1000 * 10 / (10 + 170) = 55.5 -> 55
            (Some(0), 3, 0),    // no path: 0
        ];
        for (want, at, expected) in cases {
            let mut j = job("j", 1, 1000, 1 << 30);
            j.locality = want.map(LocationId);
            let mut c = cluster_summary(0, 32_000, 128 << 30);
            c.location = LocationId(at);
            assert_eq!(s.score(&j, &c).get(), expected, "{want:?} -> {at}");
        }
    }
}
