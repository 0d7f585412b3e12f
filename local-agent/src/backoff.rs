//! Jittered exponential backoff for reconnects and retries.
//!
//! "Full jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter",
//! 2015): wait a random time in `[0, min(cap, base * 2^attempt)]`, so that
//! agents that lost the same server do not come back in step.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

const BASE: Duration = Duration::from_millis(100);
const CAP: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn new() -> Self {
        Backoff::default()
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = BASE.saturating_mul(1 << self.attempt.min(16)).min(CAP);
        self.attempt += 1;
        jitter(ceiling)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A random duration in `[0, max]`.
pub fn jitter(max: Duration) -> Duration {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let ms = max.as_millis() as u64;
    Duration::from_millis(h.finish() % (ms + 1))
}
