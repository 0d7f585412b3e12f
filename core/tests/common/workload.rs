//! The large synthetic case of the benchmarks: clusters × machines × tasks.

use std::collections::BTreeMap;

use sched_core::cluster::{Cluster, ClusterId};
use sched_core::job::{Job, JobId, JobSpec};
use sched_core::locality::{Locality, LocationId};
use sched_core::machine::MachineClass;
use sched_core::resources::Resources;
use sched_core::topology::Topology;

use super::Rng;

pub const LOCATIONS: u32 = 5;

/// `clusters` clusters of `machines` machines (64 cores, 256Gi) spread over
/// five locations joined in a ring of 20-60 ms links.
pub fn topology(clusters: u32, machines: u32) -> Topology {
    let names: Vec<String> = (0..LOCATIONS).map(|i| format!("loc-{i}")).collect();
    let links: Vec<(LocationId, LocationId, u64)> = (0..LOCATIONS)
        .map(|i| {
            (
                LocationId(i),
                LocationId((i + 1) % LOCATIONS),
                20 + 10 * u64::from(i),
            )
        })
        .collect();
    Topology {
        locality: Locality::new(names, &links),
        clusters: (0..clusters)
            .map(|i| Cluster {
                id: ClusterId(i),
                name: format!("cluster-{i}"),
                location: LocationId(i % LOCATIONS),
                classes: vec![MachineClass {
                    name: "std".into(),
                    count: machines,
                    capacity: Resources::new(64_000, 256 << 30),
                    labels: BTreeMap::new(),
                }],
            })
            .collect(),
    }
}

/// `jobs` jobs of `tasks` tasks each, with requests drawn from a small menu
/// (cpu 250m-750m, memory 1-3Gi: about 62% of the cpu and 64% of the memory
/// of 100 × 100 machines at 800,000 tasks), half of them with a locality.
pub fn jobs(jobs: u32, tasks: u32, seed: u64) -> Vec<Job> {
    let mut rng = Rng::new(seed);
    (0..jobs)
        .map(|i| {
            let cpu = 250 * rng.range(1, 3);
            let memory = rng.range(1, 3) << 30;
            let locality = (rng.range(0, 1) == 1)
                .then(|| LocationId(rng.range(0, u64::from(LOCATIONS) - 1) as u32));
            Job {
                id: JobId(i),
                spec: JobSpec {
                    name: format!("job-{i}"),
                    tasks,
                    request: Resources::new(cpu, memory),
                    priority: 0,
                    locality: locality.map(|l| format!("loc-{}", l.0)),
                    constraints: BTreeMap::new(),
                    command: vec![],
                    restart: Default::default(),
                    ttl_after_finished: None,
                    tenant: sched_core::job::DEFAULT_TENANT.to_string(),
                    band: None,
                },
                locality,
            }
        })
        .collect()
}
