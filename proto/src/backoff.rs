//! Randomness for retries and polls, and jittered exponential backoff.
//!
//! "Full jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter",
//! 2015): wait a random time in `[0, min(cap, base * 2^attempt)]`, so that
//! clients and agents that lost the same server do not come back in step.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

const BASE: Duration = Duration::from_millis(100);
const CAP: Duration = Duration::from_secs(5);

/// A random number, without a dependency: std's hasher keys are random per
/// process, and the time varies per call.
pub fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A random duration in `[0, max]`.
pub fn jitter(max: Duration) -> Duration {
    Duration::from_millis(random_u64() % (max.as_millis() as u64 + 1))
}

/// The wait before retry number `attempt` (0-based).
pub fn delay(attempt: u32) -> Duration {
    jitter(BASE.saturating_mul(1 << attempt.min(16)).min(CAP))
}

/// Counts attempts for [`delay`].
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn new() -> Self {
        Backoff::default()
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_jittered_and_capped() {
        for attempt in 0..40 {
            let b = delay(attempt);
            let ceiling = BASE.saturating_mul(1 << attempt.min(16)).min(CAP);
            assert!(b <= ceiling, "attempt {attempt}: {b:?} > {ceiling:?}");
        }
        // Full jitter: not every draw is the ceiling.
        let draws: std::collections::BTreeSet<_> = (0..20).map(|_| delay(10)).collect();
        assert!(draws.len() > 1);
    }
}
