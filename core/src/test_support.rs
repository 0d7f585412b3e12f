//! Builders for test fixtures.

use std::collections::BTreeMap;

use crate::cluster::{ClassSummary, ClusterId, ClusterSummary};
use crate::job::{Job, JobId, JobSpec};
use crate::locality::{Locality, LocationId};
use crate::resources::Resources;

/// A job of `tasks` tasks of `cpu` millicores and `memory` bytes.
pub fn job(name: &str, tasks: u32, cpu: u64, memory: u64) -> Job {
    Job {
        id: JobId(0),
        spec: JobSpec {
            name: name.into(),
            tasks,
            request: Resources::new(cpu, memory),
            priority: 0,
            locality: None,
            constraints: BTreeMap::new(),
            command: vec![],
            restart: Default::default(),
            ttl_after_finished: None,
            tenant: crate::job::DEFAULT_TENANT.to_string(),
            band: None,
        },
        locality: None,
    }
}

/// An empty, healthy cluster with one machine of the given size, at location 0.
pub fn cluster_summary(id: u32, cpu: u64, memory: u64) -> ClusterSummary {
    let capacity = Resources::new(cpu, memory);
    ClusterSummary {
        id: ClusterId(id),
        name: format!("c{id}"),
        location: LocationId(0),
        up: true,
        classes: vec![ClassSummary {
            capacity,
            labels: BTreeMap::new(),
            count: 1,
        }],
        capacity,
        allocated: Resources::ZERO,
        queued: Resources::ZERO,
        queue_len: 0,
        by_priority: Vec::new(),
    }
}

/// Two locations, east (0) and west (1), 70 ms apart.
pub fn east_west() -> Locality {
    Locality::new(
        vec!["east".into(), "west".into()],
        &[(LocationId(0), LocationId(1), 70)],
    )
}
