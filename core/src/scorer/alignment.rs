//! Alignment: how closely the cluster's free capacity is shaped like the
//! job's request, so that cpu-heavy jobs go where cpu is left over and
//! memory-heavy jobs where memory is, and no cluster strands one resource
//! while the other runs out.
//!
//! Both vectors are taken as shares of the cluster's capacity, resource by
//! resource, and the score is the cosine of the angle between them (Tetris,
//! Grandl et al., "Multi-resource packing for cluster schedulers", SIGCOMM
//! 2014, scores by the dot product of the same two vectors; the cosine
//! keeps only the shape, and leaves how much room there is to `headroom`):
//! MAX when the free capacity is a multiple of the request, less as they
//! point apart. Free is unclaimed capacity (placed and queued tasks taken
//! off). Resources the cluster lacks are ignored; a request of nothing
//! scores MAX everywhere, a cluster with nothing free 0.

use super::ClusterScorer;
use crate::cluster::ClusterSummary;
use crate::job::Job;
use crate::policy::ScorerName;
use crate::resources::share_ppm;
use crate::score::Score;

pub struct Alignment;

impl ClusterScorer for Alignment {
    fn name(&self) -> ScorerName {
        ScorerName::Alignment
    }

    fn score(&self, job: &Job, c: &ClusterSummary) -> Score {
        let (request, free, cap) = (
            job.spec.request.as_array(),
            c.unclaimed().as_array(),
            c.capacity.as_array(),
        );
        // Shares in ppm (each at most 10^6), so the products fit in u128.
        let (mut dot, mut rr, mut ff) = (0u128, 0u128, 0u128);
        for i in 0..4 {
            if cap[i] == 0 {
                continue;
            }
            let r = u128::from(share_ppm(request[i], cap[i]));
            let f = u128::from(share_ppm(free[i], cap[i]));
            dot += r * f;
            rr += r * r;
            ff += f * f;
        }
        if rr == 0 {
            return Score::MAX;
        }
        if ff == 0 {
            return Score::ZERO;
        }
        // cos = dot / sqrt(rr * ff); MAX * cos = sqrt(MAX^2 * dot^2 / (rr * ff)),
        // in integers (dot^2 < 2^87, times 10^6 < 2^107).
        let max = u128::from(Score::MAX.get());
        let squared = max * max * dot * dot / (rr * ff);
        Score::new(isqrt(squared) as u64)
    }
}

/// The integer square root, rounded down: the float root (exact to within
/// one for the values here, which are below 2^107), corrected in integers.
fn isqrt(n: u128) -> u128 {
    let mut x = (n as f64).sqrt() as u128;
    while x.checked_mul(x).is_none_or(|sq| sq > n) {
        x -= 1;
    }
    while (x + 1).checked_mul(x + 1).is_some_and(|sq| sq <= n) {
        x += 1;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Resources;
    use crate::test_support::{cluster_summary, job};

    #[test]
    fn isqrt_rounds_down() {
        let big = [
            1u128 << 106,
            (1 << 106) - 1,
            999_999_999_999_999_999_999_999,
        ];
        for n in (0u128..2000).chain(big) {
            let r = isqrt(n);
            assert!(r * r <= n && (r + 1) * (r + 1) > n, "{n}");
        }
        assert_eq!(isqrt(1_000_000), 1000);
    }

    #[test]
    fn table() {
        // Cluster of 10000m cpu and 1000 bytes.
        let cases = [
            // (request cpu, mem, allocated cpu, mem, expected, arithmetic)
            // empty cluster, request 10% and 10%: parallel, cos 1
            (1000, 100, 0, 0, 1000),
            // cpu-only request on a cluster with only memory left: cos 0
            (1000, 0, 10_000, 0, 0),
            // request (10%, 10%), free (50%, 100%):
            // cos = (0.05 + 0.1) / (0.1414 * 1.118) = 0.9487 -> 948
            (1000, 100, 5000, 0, 948),
            // request (10%, 2%), free (50%, 100%):
            // cos = (0.05 + 0.02) / (0.10198 * 1.118) = 0.6139 -> 613
            (1000, 20, 5000, 0, 613),
            // same request, free (100%, 20%): cos = (0.1 + 0.004) /
            // (0.10198 * 1.0198) = 1.0000 -> 1000 (the free shape is the request's)
            (1000, 20, 0, 800, 1000),
            // nothing free: 0
            (1000, 100, 10_000, 1000, 0),
        ];
        for (rc, rm, ac, am, expected) in cases {
            let j = job("j", 1, rc, rm);
            let mut c = cluster_summary(0, 10_000, 1000);
            c.allocated = Resources::new(ac, am);
            assert_eq!(
                Alignment.score(&j, &c).get(),
                expected,
                "{rc} {rm} on {ac} {am}"
            );
        }
    }
}
