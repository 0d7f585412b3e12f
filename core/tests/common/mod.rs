//! Instance generators shared by the packing tests and the benchmarks.
#![allow(dead_code)]

use std::collections::BTreeMap;

use sched_core::cell::Cell;
use sched_core::cluster::{Cluster, ClusterId};
use sched_core::job::{Job, JobId, JobSpec};
use sched_core::labels::Labels;
use sched_core::locality::LocationId;
use sched_core::machine::MachineClass;
use sched_core::pack::TaskGroup;
use sched_core::resources::Resources;

/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
/// generators", OOPSLA 2014): tiny, seeded, reproducible across platforms.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.range(0, i as u64) as usize;
            v.swap(i, j);
        }
    }
}

/// A cell of `count` identical machines of `capacity`.
pub fn uniform_cell(count: u32, capacity: Resources) -> Cell {
    Cell::new(&Cluster {
        id: ClusterId(0),
        name: "bench".into(),
        location: LocationId(0),
        classes: vec![MachineClass {
            name: "m".into(),
            count,
            capacity,
            labels: BTreeMap::new(),
        }],
    })
}

/// One group per request, each of one task, in the given order.
pub fn singletons<'a>(requests: &[Resources], none: &'a Labels) -> Vec<TaskGroup<'a>> {
    requests
        .iter()
        .enumerate()
        .map(|(i, &request)| TaskGroup {
            job: JobId(i as u32),
            request,
            constraints: none,
            priority: 0,
            count: 1,
        })
        .collect()
}

/// Falkenauer's uniform class ("A hybrid grouping genetic algorithm for bin
/// packing", Journal of Heuristics, 1996): item sizes uniform in 20..=100,
/// bin capacity 150. One dimension, carried by cpu (in cores); memory is
/// one byte a task on a machine with a terabyte, so it never binds.
pub const FALKENAUER_CAPACITY: u64 = 150;

pub fn falkenauer_machine() -> Resources {
    Resources::new(FALKENAUER_CAPACITY * 1000, 1 << 40)
}

pub fn falkenauer_u(n: usize, rng: &mut Rng) -> Vec<Resources> {
    (0..n)
        .map(|_| Resources::new(rng.range(20, 100) * 1000, 1))
        .collect()
}

/// The L1 lower bound: ceil(total size / capacity).
pub fn falkenauer_bound(items: &[Resources]) -> u64 {
    let total: u64 = items.iter().map(|r| r.cpu.0).sum();
    total.div_ceil(FALKENAUER_CAPACITY * 1000)
}

/// Two-resource instances that pack perfectly: each of `machines` machines
/// has its cpu and its memory cut at random into the same number (2 to 5) of
/// pieces, paired at random. The optimum is `machines`.
pub const PERFECT_CPU: u64 = 64_000;
pub const PERFECT_MEMORY: u64 = 256 << 30;

pub fn perfect_machine() -> Resources {
    Resources::new(PERFECT_CPU, PERFECT_MEMORY)
}

pub fn perfect_2d(machines: usize, rng: &mut Rng) -> Vec<Resources> {
    let mut items = Vec::new();
    for _ in 0..machines {
        let k = rng.range(2, 5) as usize;
        let cpu = cut(PERFECT_CPU / 1000, k, rng); // whole millicores x 1000 steps
        let mut mem = cut(PERFECT_MEMORY >> 20, k, rng); // MiB
        rng.shuffle(&mut mem);
        for i in 0..k {
            items.push(Resources::new(cpu[i] * 1000, mem[i] << 20));
        }
    }
    rng.shuffle(&mut items);
    items
}

/// `total` cut at `k - 1` distinct random points into `k` positive pieces.
fn cut(total: u64, k: usize, rng: &mut Rng) -> Vec<u64> {
    let mut points = std::collections::BTreeSet::new();
    while points.len() < k - 1 {
        points.insert(rng.range(1, total - 1));
    }
    let mut prev = 0;
    let mut out = Vec::with_capacity(k);
    for p in points.into_iter().chain([total]) {
        out.push(p - prev);
        prev = p;
    }
    out
}

pub mod flat;
pub mod tight;
pub mod workload;

/// Job `id` of `tasks` tasks of `request`, named `name`, with every other
/// field at its default (priority 0, no locality, no constraints): callers
/// set what their case needs on the result.
pub fn job(id: u32, name: String, tasks: u32, request: Resources) -> Job {
    Job {
        id: JobId(id),
        spec: JobSpec {
            name,
            tasks,
            request,
            priority: 0,
            locality: None,
            constraints: BTreeMap::new(),
            command: vec![],
            restart: Default::default(),
            ttl_after_finished: None,
            tenant: sched_core::job::DEFAULT_TENANT.to_string(),
            band: None,
        },
        locality: None,
    }
}
