//! Packing waiting tasks onto the cluster's machines: the tasks of one job
//! share a request, so each job is one group for `sched_core::pack`
//! (fragmentation-ordered best fit); what fits nowhere comes back with the
//! packer's most common reasons. Each placed task names the GPU devices
//! the packer gave it.

use sched_core::gpu::GpuSlot;
use sched_core::job::JobId;
use sched_core::machine::MachineId;
use sched_core::pack::TaskGroup;
use sched_core::placement::Unschedulable;
use sched_core::policy::LocalPolicy;
use sched_core::resources::Resources;

use super::inventory::Inventory;
use super::keys::TaskKey;
use super::specs::Specs;

/// What one packing decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Packed {
    /// Each placed task, by job then index: its machine, the request now
    /// counted there and its GPU devices (none without GPUs).
    pub placed: Vec<(TaskKey, MachineId, Resources, Vec<GpuSlot>)>,
    /// Per job, the tasks that fit nowhere and why.
    pub unplaced: Vec<(String, Vec<u32>, String)>,
}

/// Packs `jobs` (by name, their waiting task indices, in arrival order:
/// the packer breaks ties between equal groups by this order), whose specs
/// are all in `specs`; the placed tasks' capacity is taken in `inventory`.
pub fn pack(
    jobs: &[(String, Vec<u32>)],
    specs: &Specs,
    inventory: &mut Inventory,
    policy: &LocalPolicy,
) -> Packed {
    let specs: Vec<_> = jobs.iter().filter_map(|(job, _)| specs.get(job)).collect();
    debug_assert_eq!(specs.len(), jobs.len(), "a job without a spec");
    let groups: Vec<TaskGroup<'_>> = specs
        .iter()
        .zip(jobs.iter().map(|(_, indices)| indices))
        .enumerate()
        .map(|(i, (spec, indices))| TaskGroup {
            job: JobId(i as u32),
            request: spec.request(),
            constraints: &spec.constraints,
            priority: spec.priority,
            count: indices.len() as u32,
        })
        .collect();
    let outcomes = inventory.pack(&groups, policy);
    let mut packed = Packed::default();
    for (((job, indices), o), group) in jobs.iter().zip(outcomes).zip(&groups) {
        let job: &String = job;
        // `gpus` lists one entry per placed task (empty ones without GPUs).
        let gpus = o.gpus.iter().cloned().chain(std::iter::repeat(Vec::new()));
        for ((&index, &m), slots) in indices.iter().zip(&o.placed).zip(gpus) {
            packed
                .placed
                .push(((job.clone(), index), m, group.request, slots));
        }
        let unplaced = indices[o.placed.len()..].to_vec();
        if !unplaced.is_empty() {
            let reason = unplaced_reason(o.why.as_ref());
            packed.unplaced.push((job.clone(), unplaced, reason));
        }
    }
    packed
}

/// Why no machine took a task, as the global scheduler and `schedctl
/// describe` show it: the three most common rejections.
fn unplaced_reason(why: Option<&Unschedulable>) -> String {
    let Some(w) = why else {
        return "no machine can take it".to_string();
    };
    let top: Vec<String> = w
        .top_reasons()
        .into_iter()
        .take(3)
        .map(|(r, n)| format!("{n} machine(s): {r}"))
        .collect();
    format!(
        "0/{} machines fit: {}",
        w.machines_considered,
        top.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use sched_proto::pb;

    use super::*;
    use crate::agent::inventory::tests::{machine, GIB};
    use crate::agent::specs::JobSpec;

    fn spec(cpu_millis: u64) -> JobSpec {
        JobSpec {
            cpu_millis,
            memory_bytes: GIB,
            disk_bytes: 0,
            gpu_millis: 0,
            constraints: Default::default(),
            priority: 0,
            command: Vec::new(),
        }
    }

    fn inventory(machines: &[pb::MachineSpec]) -> Inventory {
        let mut inv = Inventory::new("east-a", Duration::from_secs(5));
        inv.register("n0", "", machines, Instant::now());
        inv
    }

    #[test]
    fn tasks_fill_the_machines_and_the_rest_comes_back_with_the_reason() {
        // m0 takes two tasks of 1000m (2000m), m1 one (1500m): the fourth
        // fits nowhere.
        let mut inv = inventory(&[machine("m0", 2000), machine("m1", 1500)]);
        let mut specs = Specs::default();
        specs.learn("web", spec(1000));
        let jobs = [("web".to_string(), vec![0, 1, 2, 3])];
        let packed = pack(&jobs, &specs, &mut inv, &LocalPolicy::default());
        let mut on: Vec<&str> = packed
            .placed
            .iter()
            .map(|(_, m, _, _)| inv.name(*m))
            .collect();
        on.sort();
        assert_eq!(on, ["m0", "m0", "m1"]);
        let placed: Vec<u32> = packed.placed.iter().map(|(k, _, _, _)| k.1).collect();
        assert_eq!(placed, [0, 1, 2]);
        let (job, indices, reason) = &packed.unplaced[0];
        assert_eq!((job.as_str(), indices.as_slice()), ("web", &[3][..]));
        assert!(
            reason.starts_with("0/2 machines fit: 2 machine(s): "),
            "{reason}"
        );
        assert_eq!(inv.allocated().cpu.0, 3000);
    }

    #[test]
    fn shares_go_two_to_a_device_and_name_it() {
        let mut g = machine("g0", 8000);
        g.gpu_devices = 2;
        g.gpu_model = "V100M16".into();
        let mut inv = inventory(&[g]);
        let mut specs = Specs::default();
        specs.learn(
            "half",
            JobSpec {
                gpu_millis: 500,
                ..spec(1000)
            },
        );
        let jobs = [("half".to_string(), vec![0, 1, 2, 3, 4])];
        let packed = pack(&jobs, &specs, &mut inv, &LocalPolicy::default());
        let mut per_device = [0u32; 2];
        for (_, _, _, slots) in &packed.placed {
            assert_eq!(slots.len(), 1, "{slots:?}");
            assert_eq!(slots[0].milli, 500);
            per_device[slots[0].device as usize] += 1;
        }
        assert_eq!(per_device, [2, 2]);
        // The fifth finds no device with room.
        assert_eq!(packed.unplaced[0].1, [4]);
    }

    #[test]
    fn each_job_packs_with_its_own_request() {
        let mut inv = inventory(&[machine("m0", 4000)]);
        let mut specs = Specs::default();
        specs.learn("big", spec(3000));
        specs.learn("small", spec(500));
        let jobs = [
            ("big".to_string(), vec![0]),
            ("small".to_string(), vec![0, 1]),
        ];
        let packed = pack(&jobs, &specs, &mut inv, &LocalPolicy::default());
        let requests: Vec<(&str, u64)> = packed
            .placed
            .iter()
            .map(|(k, _, r, _)| (k.0.as_str(), r.cpu.0))
            .collect();
        assert_eq!(requests, [("big", 3000), ("small", 500), ("small", 500)]);
        assert!(packed.unplaced.is_empty());
    }
}
