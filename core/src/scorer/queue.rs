//! Queue: clusters with fewer tasks waiting to be placed score higher, so a
//! cluster whose local agent is falling behind gets less new work.

use super::ClusterScorer;
use crate::cluster::ClusterSummary;
use crate::job::Job;
use crate::policy::{ScorerName, Shape};
use crate::score::Score;

pub struct QueueLength {
    pub shape: Shape,
}

impl ClusterScorer for QueueLength {
    fn name(&self) -> ScorerName {
        ScorerName::Queue
    }

    fn score(&self, _: &Job, c: &ClusterSummary) -> Score {
        self.shape.apply(c.queue_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{cluster_summary, job};

    #[test]
    fn table() {
        let j = job("j", 1, 1000, 1 << 30);
        let s = QueueLength {
            shape: Shape::Linear { zero_at: 1000 },
        };
        let cases = [
            (0, 1000),  // 1000 * (1000 - 0) / 1000 = 1000
            (250, 750), // 1000 * (1000 - 250) / 1000 = 750
            (999, 1),   // 1000 * 1 / 1000 = 1
            (5000, 0),  // past zero_at: 0
        ];
        for (q, expected) in cases {
            let mut c = cluster_summary(0, 10_000, 1000);
            c.queue_len = q;
            assert_eq!(s.score(&j, &c).get(), expected, "queue {q}");
        }
    }
}
