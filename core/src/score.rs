//! Scores: bounded integers, so that ranking never depends on float rounding.

use serde::Serialize;

/// A term's score in `0..=Score::MAX`.
///
/// Kubernetes scores nodes in 0..=100 (`MaxNodeScore`); clusters here are
/// scored in thousandths instead, because whole percents cannot tell apart
/// two large clusters whose utilization differs by half a percent, and ties
/// then fall to the cluster id rather than to the better cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Score(u32);

impl Score {
    pub const MAX: Score = Score(1000);
    pub const ZERO: Score = Score(0);

    /// `value`, clamped to `0..=MAX`.
    pub fn new(value: u64) -> Score {
        Score(value.min(u64::from(Score::MAX.0)) as u32)
    }

    /// `num / den` of the maximum, rounded down; `den` must not be zero.
    pub fn ratio(num: u64, den: u64) -> Score {
        debug_assert!(den > 0);
        let num = num.min(den);
        // In u64 when the product fits: the same quotient, cheaper.
        let v = match num.checked_mul(u64::from(Score::MAX.0)) {
            Some(p) => p / den,
            None => (u128::from(num) * u128::from(Score::MAX.0) / u128::from(den)) as u64,
        };
        Score(v as u32)
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for Score {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
