//! Nomad's binpack score, `ScoreFitBinPack` in nomad/structs/funcs.go.
//!
//! ```text
//! free_r = 1 - used_r / available_r     (used includes the candidate task)
//! total  = 10^free_cpu + 10^free_memory
//! score  = clamp(20 - total, 0, 18)
//! ```
//!
//! The exponent penalizes free capacity sharply, so fuller machines win.
//! (Nomad computes it in floating point; so does this baseline, to match.)

use super::NodeScorer;
use crate::resources::Resources;

pub struct NomadBinPack;

impl NodeScorer for NomadBinPack {
    fn name(&self) -> &'static str {
        "nomad-binpack"
    }

    fn score(&self, request: &Resources, used: &Resources, capacity: &Resources) -> f64 {
        let after = used.saturating_add(request);
        let free = |u: u64, c: u64| {
            if c == 0 {
                0.0
            } else {
                1.0 - u as f64 / c as f64
            }
        };
        let total = 10f64.powf(free(after.cpu.0, capacity.cpu.0))
            + 10f64.powf(free(after.memory.0, capacity.memory.0));
        (20.0 - total).clamp(0.0, 18.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cases N1-N3 of Nomad's TestScoreFitBinPack: node 4096 cpu / 8192 MB
    /// with 2048 / 4096 reserved, so 2048 / 4096 available.
    #[test]
    fn reproduces_nomad_expected_scores() {
        let s = NomadBinPack;
        let avail = Resources::new(2048, 4096);
        let zero = Resources::ZERO;
        // N1: full: free 0, 0 -> 20 - (1 + 1) = 18
        assert_eq!(s.score(&Resources::new(2048, 4096), &zero, &avail), 18.0);
        // N2: empty: free 1, 1 -> 20 - 20 = 0
        assert_eq!(s.score(&zero, &zero, &avail), 0.0);
        // N3: half: 20 - 2 * 10^0.5 = 13.675
        let half = s.score(&Resources::new(1024, 2048), &zero, &avail);
        assert!((half - 13.675).abs() < 0.001, "{half}");
    }
}
