//! Preemption in the cluster (issue 13): tasks that fit no machine evict
//! tasks of lower bands, as `sched_core::preempt` decides (the fewest
//! victims per task placed, lowest priorities, least work lost).
//!
//! Fenced like every placement: a victim's new state (`preempted`) is
//! written before, or in the same commit as, the placement that takes its
//! room, and its node is told to stop it only once that write is in
//! ([`AgentState::applied`]); the capacity moves in the agent's cell at
//! decision time, so the cell never counts more than a machine holds.
//!
//! A victim gives back exactly its GPU devices. Tasks asking for GPUs do
//! not preempt (yet): eviction is chosen by summed capacity, and the room
//! it makes may not be room on one device; they wait for devices to free.

use std::collections::BTreeMap;

use sched_core::job::JobId;
use sched_core::pack::TaskGroup;
use sched_core::preempt::{preempt_batch, Occupancy, Running};
use sched_proto::pb;

use super::AgentState;
use crate::agent::change::Change;
use crate::agent::intent::{self, Placement, PlacementState};
use crate::agent::keys::TaskKey;

/// Tasks of a job that found no machine, and why.
pub(super) type Unplaced = (String, Vec<u32>, String);

impl AgentState {
    /// Places what it can of `unplaced` by evicting lower-priority tasks.
    /// Returns the writes, victims' states first, then the preemptors'
    /// specs and placements; what is still unplaced stays in `unplaced`.
    pub(super) fn preempt_for(&mut self, unplaced: &mut Vec<Unplaced>) -> Vec<Change> {
        let bands = &self.bands;
        let may_evict = |job: &str| {
            self.specs.get(job).is_some_and(|s| {
                bands
                    .band_of(s.priority)
                    .is_some_and(|b| !b.preempts.is_empty())
            })
        };
        if !unplaced.iter().any(|(job, _, _)| may_evict(job)) {
            return Vec::new();
        }
        // Every counted placement, as preemption sees it. The store's
        // revision of its record stands for its start time: later writes
        // have larger revisions, so "least work lost" prefers the tasks
        // placed last.
        let mut keys: Vec<TaskKey> = Vec::new();
        let mut occupancy = Occupancy::new();
        let mut now = 0i64;
        for (k, p) in self.intent.iter() {
            let Some((m, request)) = p.counted else {
                continue;
            };
            if !p.record.state.is_active() {
                continue;
            }
            let priority = self.specs.get(&k.0).map_or(0, |s| s.priority);
            now = now.max(p.rev + 1);
            occupancy.add(
                m,
                Running {
                    id: keys.len(),
                    priority,
                    request,
                    started_unix_ms: p.rev,
                    gpus: p.record.gpus.clone(),
                },
            );
            keys.push(k.clone());
        }
        let victims_end = keys.len();
        let specs = &self.specs;
        let waiting: Vec<(TaskGroup<'_>, u32)> = unplaced
            .iter()
            .enumerate()
            .filter_map(|(i, (job, indices, _))| {
                let spec = specs.get(job).filter(|s| s.gpu_millis == 0)?;
                let group = TaskGroup {
                    job: JobId(i as u32),
                    request: spec.request(),
                    constraints: &spec.constraints,
                    priority: spec.priority,
                    count: indices.len() as u32,
                };
                Some((group, indices.len() as u32))
            })
            .collect();
        let groups: Vec<usize> = waiting.iter().map(|(g, _)| g.job.0 as usize).collect();
        let mut preemptors: Vec<TaskKey> = Vec::new();
        let made = preempt_batch(
            self.inventory.cell_mut(),
            &mut occupancy,
            &waiting,
            bands,
            now,
            |g, k| {
                let (job, indices, _) = &unplaced[groups[g]];
                preemptors.push((job.clone(), indices[k as usize]));
                victims_end + preemptors.len() - 1
            },
        );
        let requests: Vec<_> = waiting.iter().map(|(g, _)| g.request).collect();
        drop(waiting);
        let mut states = Vec::new();
        let mut places = Vec::new();
        let mut placed: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (g, p) in made {
            let key = preemptors[p.preemptor - victims_end].clone();
            let machine = self.inventory.name(p.machine).to_string();
            let spec_priority = self.specs.get(&key.0).map_or(0, |s| s.priority);
            for v in &p.victims {
                // Victims are placements counted before this call: tasks
                // placed by it are of bands no later preemptor may evict.
                let Some(victim) = keys.get(v.id).filter(|_| v.id < victims_end) else {
                    unreachable!("a preemptor of this pass was chosen as a victim");
                };
                let reason = format!(
                    "preempted by {}/{} (priority {spec_priority}, band {}) on machine {machine}",
                    key.0,
                    key.1,
                    self.bands.band_name(spec_priority),
                );
                tracing::info!(job = %victim.0, index = victim.1, %machine, by = %format!("{}/{}", key.0, key.1), "preempting a task");
                if let Some(write) = self.intent.preempt(victim, reason) {
                    states.push(Change::State {
                        key: victim.clone(),
                        write,
                    });
                }
            }
            if let Some(write) = self.specs.write(&key.0, self.keys.spec(&key.0)) {
                if !places
                    .iter()
                    .any(|c| matches!(c, Change::Spec { job, .. } if *job == key.0))
                {
                    places.push(Change::Spec {
                        job: key.0.clone(),
                        write,
                    });
                }
            }
            let (record, write) = self.intent.next(&key, &machine, p.gpus.clone());
            self.queue.remove(&key);
            placed.entry(key.0.clone()).or_default().push(key.1);
            let placement = Placement {
                record,
                rev: 0,
                counted: Some((p.machine, requests[g])),
            };
            places.push(Change::Place {
                key,
                placement,
                write,
            });
        }
        for (job, indices, _) in unplaced.iter_mut() {
            if let Some(done) = placed.get(job.as_str()) {
                indices.retain(|i| !done.contains(i));
            }
        }
        unplaced.retain(|(_, indices, _)| !indices.is_empty());
        states.extend(places);
        states
    }

    /// A preempted placement's state is in the store: its node stops it,
    /// and the global scheduler hears that it was preempted (and by whom).
    pub(super) fn preempted_written(&mut self, key: &TaskKey) {
        let Some(p) = self
            .intent
            .get(key)
            .filter(|p| p.record.state == PlacementState::Preempted)
        else {
            return;
        };
        let report = intent::report(key, &p.record);
        let machine = p.record.machine.clone();
        if let Some(node) = self.inventory.machine(&machine).map(|m| m.node.clone()) {
            let stop = pb::TaskStop {
                job: key.0.clone(),
                index: key.1,
                machine,
            };
            self.links.stop(&node, stop);
        }
        self.reports.push(report);
    }

    /// The capacity of the counted placements, by the priority of their
    /// tasks (lowest first), for the global scheduler's ranking.
    pub(super) fn by_priority(&self) -> Vec<pb::PriorityUsage> {
        let mut sums: BTreeMap<u32, sched_core::resources::Resources> = BTreeMap::new();
        for (k, p) in self.intent.iter() {
            let Some((_, request)) = p.counted else {
                continue;
            };
            let priority = self.specs.get(&k.0).map_or(0, |s| s.priority);
            let sum = sums.entry(priority).or_default();
            *sum = sum.saturating_add(&request);
        }
        sums.into_iter()
            .map(|(priority, r)| pb::PriorityUsage {
                priority,
                allocated: Some(crate::to_pb(&r)),
            })
            .collect()
    }
}
