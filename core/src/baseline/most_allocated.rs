//! Kubernetes' `MostAllocated` node score (the `NodeResourcesFit` plugin
//! with the MostAllocated scoring strategy).
//!
//! Formula, from pkg/scheduler/framework/plugins/noderesources/most_allocated.go
//! (MaxNodeScore = 100), with `requested` the allocation including the
//! incoming pod:
//!
//! ```text
//! score_r = min(requested_r, capacity_r) × 100 / capacity_r     (integer division)
//! node    = Σ_r score_r × weight_r / Σ_r weight_r              (integer division)
//! ```
//!
//! over cpu and memory with weight 1 each (the default), plus an extended
//! resource (here the GPU) with weight 1 when the pod requests it.

use super::NodeScorer;
use crate::resources::Resources;

pub struct MostAllocated;

fn resource_score(requested: u64, capacity: u64) -> u64 {
    if capacity == 0 {
        return 0;
    }
    requested.min(capacity) * 100 / capacity
}

impl NodeScorer for MostAllocated {
    fn name(&self) -> &'static str {
        "kube-most-allocated"
    }

    fn score(&self, request: &Resources, used: &Resources, capacity: &Resources) -> f64 {
        let req = used.saturating_add(request);
        let mut sum = resource_score(req.cpu.0, capacity.cpu.0)
            + resource_score(req.memory.0, capacity.memory.0);
        let mut weights = 2;
        if request.gpu.0 > 0 {
            sum += resource_score(req.gpu.0, capacity.gpu.0);
            weights += 1;
        }
        (sum / weights) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cases MA1, MA3, MA4, MA7 and MA8 of Kubernetes' most_allocated_test.go
    /// (transcribed in shared data `scoring-cases`). `used` is what exists on
    /// the node before the incoming pod.
    #[test]
    fn reproduces_kubernetes_expected_scores() {
        let s = MostAllocated;
        let r = |c, m| Resources::new(c, m);
        // MA1: n1 (4000,10000), requested (3000,5000):
        // cpu 3000*100/4000 = 75, mem 5000*100/10000 = 50, (75+50)/2 = 62
        assert_eq!(s.score(&r(3000, 5000), &r(0, 0), &r(4000, 10000)), 62.0);
        // n2 (6000,10000): cpu 50, mem 50 -> 50
        assert_eq!(s.score(&r(3000, 5000), &r(0, 0), &r(6000, 10000)), 50.0);
        // MA3: n1 (10000,20000) with (6000,5000): cpu 60, mem 25 -> 42
        assert_eq!(s.score(&r(0, 0), &r(6000, 5000), &r(10000, 20000)), 42.0);
        // n2 with (6000,10000): cpu 60, mem 50 -> 55
        assert_eq!(s.score(&r(0, 0), &r(6000, 10000), &r(10000, 20000)), 55.0);
        // MA4: n1 (5000,10000) with (5000,9000): 100, 90 -> 95
        assert_eq!(s.score(&r(5000, 9000), &r(0, 0), &r(5000, 10000)), 95.0);
        // n2 (10000,9000): cpu 50, mem min(9000,9000)=100 -> 75
        assert_eq!(s.score(&r(5000, 9000), &r(0, 0), &r(10000, 9000)), 75.0);
        // MA7: ext as gpu: n1 (6000,10000,4) with (3000,5000,2): 50, 50, 50 -> 50
        let g = |c, m, x| Resources::new(c, m).with_gpu(x);
        assert_eq!(
            s.score(&g(3000, 5000, 2), &g(0, 0, 0), &g(6000, 10000, 4)),
            50.0
        );
        // n2 (6000,10000,10): 50, 50, 20 -> 40
        assert_eq!(
            s.score(&g(3000, 5000, 2), &g(0, 0, 0), &g(6000, 10000, 10)),
            40.0
        );
        // MA8: the pod requests no ext, so it is not scored: (3000,4000) on
        // (6000,10000[,4]): cpu 50, mem 40 -> 45 on both
        assert_eq!(s.score(&r(3000, 4000), &r(0, 0), &g(6000, 10000, 4)), 45.0);
        assert_eq!(s.score(&r(3000, 4000), &r(0, 0), &r(6000, 10000)), 45.0);
    }
}
