//! Scorers: the normalized terms of a cluster's score.
//!
//! Each term is in `0..=Score::MAX`; the ranking's total is the sum of
//! weight × term over the terms the policy configures.

mod alignment;
mod headroom;
mod locality;
mod queue;

pub use alignment::Alignment;
pub use headroom::Headroom;
pub use locality::LocalityScorer;
pub use queue::QueueLength;

use crate::cluster::ClusterSummary;
use crate::job::Job;
use crate::policy::{ScorerName, Shape};
use crate::score::Score;

/// A normalized term of the cluster score.
pub trait ClusterScorer {
    fn name(&self) -> ScorerName;
    fn score(&self, job: &Job, c: &ClusterSummary) -> Score;
}

impl Shape {
    /// Maps a measure (milliseconds, tasks) to a score that falls as it grows.
    pub fn apply(&self, x: u64) -> Score {
        match *self {
            // MAX * (zero_at - x) / zero_at, clamped at 0.
            Shape::Linear { zero_at } => Score::ratio(zero_at.saturating_sub(x), zero_at),
            // MAX * half_at / (half_at + x).
            Shape::Reciprocal { half_at } => Score::ratio(half_at, half_at.saturating_add(x)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let lin = Shape::Linear { zero_at: 200 };
        // 1000 * (200 - 0) / 200 = 1000
        assert_eq!(lin.apply(0).get(), 1000);
        // 1000 * (200 - 70) / 200 = 650
        assert_eq!(lin.apply(70).get(), 650);
        // past zero_at: 0
        assert_eq!(lin.apply(500).get(), 0);
        let rec = Shape::Reciprocal { half_at: 10 };
        // 1000 * 10 / (10 + 0) = 1000
        assert_eq!(rec.apply(0).get(), 1000);
        // 1000 * 10 / (10 + 10) = 500
        assert_eq!(rec.apply(10).get(), 500);
        // 1000 * 10 / (10 + 70) = 125
        assert_eq!(rec.apply(70).get(), 125);
        // 1000 * 10 / (10 + 3) = 769.2 -> 769 (rounded down)
        assert_eq!(rec.apply(3).get(), 769);
    }
}
