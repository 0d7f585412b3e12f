//! The paper's protocol (Weng et al., USENIX ATC 2023, §6.1): tasks drawn
//! at random from a trace and submitted, with no departures, until the GPUs
//! they request reach a fraction of the cluster's GPU capacity.
//!
//! Draws are uniform, with replacement, from a seeded generator (SplitMix64,
//! Steele et al., OOPSLA 2014), so a seed names one workload on every
//! machine. The k-th draw of pod `P` becomes the job `P-k` (from 1); task
//! `i` arrives at `i` ms, so the replay keeps the draw order.

use crate::replay::ReplayTask;

/// SplitMix64: a small, fast, well-mixed generator; enough to draw tasks.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias for the few
    /// thousand tasks of a trace is below 2^-50).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Tasks drawn from `trace` with `seed` until the requested milli-GPUs
/// reach `fraction` of `gpu_capacity_milli` (the draw that crosses the line
/// is the last). Every drawn task runs to the end. Empty when the trace
/// asks for no GPU at all.
pub fn inflate(
    trace: &[ReplayTask],
    gpu_capacity_milli: u64,
    fraction: f64,
    seed: u64,
) -> Vec<ReplayTask> {
    let target = (gpu_capacity_milli as f64 * fraction).ceil() as u64;
    if trace.is_empty() || trace.iter().all(|t| t.request.gpu.0 == 0) {
        return Vec::new();
    }
    let mut rng = SplitMix64::new(seed);
    let mut draws = vec![0u32; trace.len()];
    let mut out = Vec::new();
    let mut requested = 0u64;
    while requested < target {
        let i = rng.below(trace.len());
        draws[i] += 1;
        let t = &trace[i];
        requested += t.request.gpu.0;
        out.push(ReplayTask {
            job: format!("{}-{}", t.job, draws[i]),
            task: 0,
            request: t.request,
            constraints: t.constraints.clone(),
            arrival_ms: out.len() as u64,
            departure_ms: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Resources;

    #[test]
    fn draws_until_the_fraction_and_names_each_draw() {
        let task = |name: &str, gpu| ReplayTask {
            job: name.into(),
            task: 0,
            request: Resources::new(1000, 1).with_gpu(gpu),
            constraints: Default::default(),
            arrival_ms: 7,
            departure_ms: Some(9),
        };
        let trace = [task("a", 500), task("b", 0)];
        let w = inflate(&trace, 4000, 1.0, 42);
        let gpu: u64 = w.iter().map(|t| t.request.gpu.0).sum();
        assert!((4000..4500).contains(&gpu), "{gpu}");
        assert!(w.iter().any(|t| t.job == "a-8"));
        assert!(w.iter().all(|t| t.departure_ms.is_none()));
        assert_eq!(
            inflate(&trace, 4000, 1.0, 42),
            w,
            "a seed names one workload"
        );
        assert_ne!(inflate(&trace, 4000, 1.0, 43), w);
    }
}
