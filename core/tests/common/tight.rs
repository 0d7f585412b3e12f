//! Tight mixed workloads: cpu-heavy and memory-heavy jobs whose total
//! request is close to the whole capacity, the case where a global level
//! that hands clusters runs of same-shaped jobs strands one resource.
//!
//! At the default size (100 clusters × 100 machines of 64 cpu / 256Gi,
//! 800,000 tasks, tightness 85%) this is the case of issue 15: requests
//! from 100m to 1.5 cpu and from 128Mi to 8Gi, half of the jobs with a
//! preferred location among five. Everything is drawn from one seed, so a
//! workload is reproducible from its parameters.

use sched_core::job::Job;
use sched_core::locality::LocationId;
use sched_core::resources::Resources;
use sched_core::topology::Topology;

use super::workload::{topology, LOCATIONS};
use super::Rng;

/// The request bounds of the workload.
pub const MIN_CPU: u64 = 100;
pub const MAX_CPU: u64 = 1500;
pub const MIN_MEMORY: u64 = 128 << 20;
pub const MAX_MEMORY: u64 = 8 << 30;
const MIB: u64 = 1 << 20;

/// The parameters of a tight mixed workload.
#[derive(Debug, Clone, Copy)]
pub struct TightMixed {
    pub clusters: u32,
    pub machines: u32,
    pub tasks: u64,
    /// The total request of the resource asked most, as a share of the
    /// whole capacity, in percent.
    pub tightness_pct: u64,
    pub seed: u64,
}

impl Default for TightMixed {
    /// The case of issue 15.
    fn default() -> Self {
        TightMixed {
            clusters: 100,
            machines: 100,
            tasks: 800_000,
            tightness_pct: 85,
            seed: 15,
        }
    }
}

impl TightMixed {
    /// `SCHED_TIGHT_CLUSTERS`, `_MACHINES`, `_TASKS`, `_TIGHTNESS` (percent)
    /// and `_SEED` override the defaults.
    pub fn from_env() -> Self {
        let d = TightMixed::default();
        let get = |name: &str, default: u64| -> u64 {
            match std::env::var(format!("SCHED_TIGHT_{name}")) {
                Ok(v) => v
                    .parse()
                    .unwrap_or_else(|e| panic!("SCHED_TIGHT_{name}={v:?}: {e}")),
                Err(_) => default,
            }
        };
        TightMixed {
            clusters: get("CLUSTERS", u64::from(d.clusters)) as u32,
            machines: get("MACHINES", u64::from(d.machines)) as u32,
            tasks: get("TASKS", d.tasks),
            tightness_pct: get("TIGHTNESS", d.tightness_pct),
            seed: get("SEED", d.seed),
        }
    }

    pub fn label(&self) -> String {
        format!(
            "{}x{}x{}@{}%",
            self.clusters, self.machines, self.tasks, self.tightness_pct
        )
    }

    /// The topology (five locations in a ring, machines of 64 cpu / 256Gi)
    /// and the jobs, in submission order.
    pub fn generate(&self) -> (Topology, Vec<Job>) {
        let topology = topology(self.clusters, self.machines);
        let mut rng = Rng::new(self.seed);
        // Job sizes 20..=180 tasks (mean 100), the last one cut to the total.
        let mut sizes = Vec::new();
        let mut left = self.tasks;
        while left > 0 {
            let n = rng.range(20, 180).min(left);
            sizes.push(n as u32);
            left -= n;
        }
        // Shapes: cpu and memory drawn independently, 100m-1.5 cpu and
        // 128Mi-8Gi, so that jobs range from cpu-heavy (1.5 cpu, 128Mi) to
        // memory-heavy (100m, 8Gi) around a mix that asks memory a little
        // more than cpu of a 64 cpu / 256Gi machine.
        let mut raw: Vec<(u64, u64)> = sizes
            .iter()
            .map(|_| {
                (
                    rng.range(MIN_CPU, MAX_CPU),
                    rng.range(MIN_MEMORY / MIB, MAX_MEMORY / MIB) * MIB,
                )
            })
            .collect();
        // Scale every request so that the resource asked most is asked at
        // `tightness_pct` of the capacity, kept within the bounds.
        let cap_cpu = u128::from(self.clusters) * u128::from(self.machines) * 64_000;
        let cap_mem = u128::from(self.clusters) * u128::from(self.machines) * (256 << 30);
        let (mut cpu, mut mem) = (0u128, 0u128);
        for (&(c, m), &n) in raw.iter().zip(&sizes) {
            cpu += u128::from(c) * u128::from(n);
            mem += u128::from(m) * u128::from(n);
        }
        // factor = tightness / max(cpu / cap_cpu, mem / cap_mem), in ppm.
        let share_ppm = (cpu * 1_000_000 / cap_cpu)
            .max(mem * 1_000_000 / cap_mem)
            .max(1);
        let factor_ppm = u128::from(self.tightness_pct) * 10_000 * 1_000_000 / share_ppm;
        for (c, m) in raw.iter_mut() {
            *c = ((u128::from(*c) * factor_ppm / 1_000_000) as u64).clamp(MIN_CPU, MAX_CPU);
            let mib = (u128::from(*m / MIB) * factor_ppm / 1_000_000) as u64;
            *m = (mib * MIB).clamp(MIN_MEMORY, MAX_MEMORY);
        }
        let jobs = sizes
            .iter()
            .zip(raw)
            .enumerate()
            .map(|(i, (&tasks, (cpu, memory)))| {
                let locality = (rng.range(0, 1) == 1)
                    .then(|| LocationId(rng.range(0, u64::from(LOCATIONS) - 1) as u32));
                let mut j = super::job(
                    i as u32,
                    format!("job-{i}"),
                    tasks,
                    Resources::new(cpu, memory),
                );
                j.spec.locality = locality.map(|l| format!("loc-{}", l.0));
                j.locality = locality;
                j
            })
            .collect();
        (topology, jobs)
    }
}
