//! Intended placements: where each task handed to this cluster should run
//! (machine, attempt), the state nodes reported for it, and the revision of
//! its record in the store.
//!
//! Rules kept here:
//! - a task placed again gets the next attempt, and its write expects the
//!   record it replaces (or none), so a write cannot apply twice;
//! - only the placement's own attempt on its own machine changes it: a
//!   report of another (an older attempt, another machine) is stale;
//! - final states are final; a lost placement takes no more reports;
//! - placed is written (the placement itself: the durable intent and the
//!   fence, before any node hears of it); running is not: a restart finds
//!   it from the nodes' reports;
//! - succeeded is not written either: it is reported to the global
//!   scheduler, kept here until a report call that carried it returns (the
//!   scheduler has committed it then), and then the placement's key is
//!   deleted (garbage, in batched deletes). Until then a restarted agent
//!   finds the placement `placed`, and its node (which keeps the exit)
//!   says again how it ended. If a report call fails, the succeeded states
//!   not acknowledged are written after all, so that an agent restarting
//!   while the scheduler is away does not depend on its node alone;
//! - failed and lost states are written back to the store (they are
//!   "dirty" until then): a failed task may be placed here again, and its
//!   next attempt's number follows the stored one.
//! - a placement's GPU devices are chosen once, when it is made, and
//!   stored with it: counting it again (after a restart) takes those same
//!   devices, and freeing it gives exactly them back.

use std::collections::{BTreeMap, BTreeSet};

use sched_core::gpu::{GpuSlot, SlotsDisplay};
use sched_core::machine::MachineId;
use sched_core::resources::Resources;
use sched_proto::pb;
use sched_store::{Expect, KeyValue, Revision, Write};
use serde::{Deserialize, Serialize};

use super::keys::{Keys, TaskKey};

/// A placement as stored at `P/placements/<cluster>/<job>/<index>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRecord {
    pub machine: String,
    pub attempt: u64,
    pub state: PlacementState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it ended as it did, when its node said more than the exit code
    /// (killed for exceeding its memory request).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The GPU devices the task was placed on (none without GPUs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuSlot>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementState {
    Placed,
    Running,
    Succeeded,
    Failed,
    Lost,
    /// Evicted for a task of higher priority (the reason names it).
    Preempted,
}

impl PlacementState {
    pub fn is_final(self) -> bool {
        matches!(self, PlacementState::Succeeded | PlacementState::Failed)
    }

    /// Placed or running: it holds capacity on its machine.
    pub fn is_active(self) -> bool {
        matches!(self, PlacementState::Placed | PlacementState::Running)
    }

    pub fn to_pb(self) -> pb::TaskState {
        match self {
            PlacementState::Placed => pb::TaskState::Placed,
            PlacementState::Running => pb::TaskState::Running,
            PlacementState::Succeeded => pb::TaskState::Succeeded,
            PlacementState::Failed => pb::TaskState::Failed,
            PlacementState::Lost => pb::TaskState::Lost,
            PlacementState::Preempted => pb::TaskState::Preempted,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Placement {
    pub record: PlacementRecord,
    /// `mod_revision` of its key; 0 before it is written.
    pub rev: Revision,
    /// The machine and request it is counted with in the inventory's
    /// cell, if it is (on the devices `record.gpus`).
    pub counted: Option<(MachineId, Resources)>,
}

/// Capacity a placement held and gives back: its machine, its request and
/// its GPU devices.
pub type Freed = (MachineId, Resources, Vec<GpuSlot>);

impl Placement {
    /// Stops counting it; what it held, if it was counted.
    pub fn uncount(&mut self) -> Option<Freed> {
        let (m, request) = self.counted.take()?;
        Some((m, request, self.record.gpus.clone()))
    }
}

/// What a node's report of a task did to its placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Not this task's placement (or no longer): the node runs a stale copy.
    Stale,
    /// Nothing new.
    Unchanged,
    /// The node lost it.
    Lost,
    /// A new state; the counted capacity, if final, is for the caller to
    /// give back.
    Changed {
        state: PlacementState,
        freed: Option<Freed>,
    },
}

pub struct Intent {
    keys: Keys,
    placements: BTreeMap<TaskKey, Placement>,
    /// Placements whose state is not in the store yet.
    dirty: BTreeSet<TaskKey>,
    /// Succeeded placements the global scheduler has not acknowledged.
    unacked: BTreeSet<TaskKey>,
    /// Succeeded placements it has: their keys are to be deleted.
    collect: BTreeSet<TaskKey>,
    /// Succeeded placements whose key says so (read back, or written when
    /// a report call failed).
    stored_ends: BTreeSet<TaskKey>,
}

impl Intent {
    pub fn new(keys: Keys) -> Self {
        Intent {
            keys,
            placements: BTreeMap::new(),
            dirty: BTreeSet::new(),
            unacked: BTreeSet::new(),
            collect: BTreeSet::new(),
            stored_ends: BTreeSet::new(),
        }
    }

    pub fn get(&self, k: &TaskKey) -> Option<&Placement> {
        self.placements.get(k)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&TaskKey, &Placement)> {
        self.placements.iter()
    }

    /// A placement read back from the store.
    pub fn load(&mut self, k: TaskKey, record: PlacementRecord, rev: Revision) {
        // Stored succeeded (a report call had failed): reported again with
        // the resync, deleted once acknowledged.
        if record.state == PlacementState::Succeeded {
            self.unacked.insert(k.clone());
            self.stored_ends.insert(k.clone());
        }
        let p = Placement {
            record,
            rev,
            counted: None,
        };
        self.placements.insert(k, p);
    }

    /// The record and the write of the task's next placement, on `machine`
    /// and its GPU devices `gpus`.
    pub fn next(&self, k: &TaskKey, machine: &str, gpus: Vec<GpuSlot>) -> (PlacementRecord, Write) {
        let previous = self.placements.get(k);
        let record = PlacementRecord {
            machine: machine.to_string(),
            attempt: previous.map_or(1, |p| p.record.attempt + 1),
            state: PlacementState::Placed,
            exit_code: None,
            reason: String::new(),
            gpus,
        };
        let expect = match previous.map_or(0, |p| p.rev) {
            0 => Expect::Absent,
            rev => Expect::ModRevision(rev),
        };
        let value = serde_json::to_vec(&record).expect("placement records serialize");
        (record, Write::put(self.keys.placement(k), value, expect))
    }

    /// A new placement is in the store: it replaces the old one, whose
    /// state need not be written any more.
    pub fn placed(&mut self, k: TaskKey, p: Placement) {
        self.dirty.remove(&k);
        self.unacked.remove(&k);
        self.collect.remove(&k);
        self.stored_ends.remove(&k);
        self.placements.insert(k, p);
    }

    /// Counts the placement on a machine, on the devices `gpus` (it was
    /// read back from the store, and its node registered). A record stored
    /// without devices takes those the inventory chose.
    pub fn count(
        &mut self,
        k: &TaskKey,
        machine: MachineId,
        request: Resources,
        gpus: Vec<GpuSlot>,
    ) {
        if let Some(p) = self.placements.get_mut(k) {
            p.counted = Some((machine, request));
            if p.record.gpus.is_empty() {
                p.record.gpus = gpus;
            }
        }
    }

    /// The active placements on these machines.
    pub fn active_on(&self, machines: &BTreeSet<&str>) -> Vec<TaskKey> {
        self.placements
            .iter()
            .filter(|(_, p)| {
                p.record.state.is_active() && machines.contains(p.record.machine.as_str())
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Removes a placement (its task was taken back, or its job deleted).
    pub fn forget(&mut self, k: &TaskKey) -> Option<Placement> {
        self.dirty.remove(k);
        self.unacked.remove(k);
        self.collect.remove(k);
        self.stored_ends.remove(k);
        self.placements.remove(k)
    }

    /// The jobs with placements here.
    pub fn jobs(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for k in self.placements.keys() {
            if !out.contains(&k.0) {
                out.insert(k.0.clone());
            }
        }
        out
    }

    /// The placements of a job.
    pub fn of_job(&self, job: &str) -> Vec<TaskKey> {
        let from = (job.to_string(), 0);
        self.placements
            .range(from..)
            .take_while(|(k, _)| k.0 == job)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The active placements of a job, with their machines.
    pub fn active_of(&self, job: &str) -> Vec<(TaskKey, String)> {
        self.placements
            .iter()
            .filter(|(k, p)| k.0 == job && p.record.state.is_active())
            .map(|(k, p)| (k.clone(), p.record.machine.clone()))
            .collect()
    }

    /// The active placements whose machine `exists` says is gone.
    pub fn orphans(&self, exists: impl Fn(&str) -> bool) -> Vec<TaskKey> {
        self.placements
            .iter()
            .filter(|(_, p)| p.record.state.is_active() && !exists(&p.record.machine))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// A node reports a task: `attempt` on `machine` is now `state`.
    pub fn observe(
        &mut self,
        k: &TaskKey,
        attempt: u64,
        machine: &str,
        state: pb::TaskState,
        exit_code: Option<i32>,
        reason: &str,
    ) -> Observed {
        let Some(p) = self.placements.get_mut(k).filter(|p| {
            p.record.attempt == attempt
                && p.record.machine == machine
                && !matches!(
                    p.record.state,
                    PlacementState::Lost | PlacementState::Preempted
                )
        }) else {
            return Observed::Stale;
        };
        let new = match state {
            pb::TaskState::Running => PlacementState::Running,
            pb::TaskState::Succeeded => PlacementState::Succeeded,
            pb::TaskState::Failed => PlacementState::Failed,
            pb::TaskState::Lost => return Observed::Lost,
            _ => return Observed::Unchanged,
        };
        if p.record.state == new || p.record.state.is_final() {
            return Observed::Unchanged;
        }
        p.record.state = new;
        p.record.exit_code = exit_code;
        p.record.reason = reason.to_string();
        let mut freed = None;
        if new.is_final() {
            freed = p.uncount();
            if new == PlacementState::Succeeded {
                self.unacked.insert(k.clone());
            } else {
                self.dirty.insert(k.clone());
            }
        }
        Observed::Changed { state: new, freed }
    }

    /// The placement's machine is gone: it is lost (a new attempt may be
    /// placed). Returns the capacity to give back, or `None` if it was
    /// not active.
    pub fn lose(&mut self, k: &TaskKey) -> Option<Option<Freed>> {
        let p = self
            .placements
            .get_mut(k)
            .filter(|p| p.record.state.is_active())?;
        p.record.state = PlacementState::Lost;
        self.dirty.insert(k.clone());
        Some(p.uncount())
    }

    /// The active placement `k` is evicted (`reason` names the task it
    /// makes room for). Its capacity was released by the caller, and the
    /// returned write of its new state must reach the store before the
    /// preemptor's placement: the node hears of it only then.
    pub fn preempt(&mut self, k: &TaskKey, reason: String) -> Option<Write> {
        let p = self
            .placements
            .get_mut(k)
            .filter(|p| p.record.state.is_active())?;
        p.record.state = PlacementState::Preempted;
        p.record.reason = reason;
        p.counted = None;
        if p.rev == 0 {
            // Never written (its placement write is still to come): the
            // placement is replaced by the next one, nothing to store.
            return None;
        }
        self.dirty.remove(k);
        let value = serde_json::to_vec(&p.record).expect("placement records serialize");
        Some(Write::put(
            self.keys.placement(k),
            value,
            Expect::ModRevision(p.rev),
        ))
    }

    /// The global scheduler has committed `report` (a report call that
    /// carried it returned): a succeeded placement it names is garbage now.
    pub fn acknowledged(&mut self, report: &pb::TaskReport) {
        if report.state != pb::TaskState::Succeeded as i32 {
            return;
        }
        let k = (report.job.clone(), report.index);
        let current = self.placements.get(&k).is_some_and(|p| {
            p.record.state == PlacementState::Succeeded && p.record.machine == report.machine
        });
        if current && self.unacked.remove(&k) {
            // A write of its state still due is not needed any more.
            self.dirty.remove(&k);
            self.collect.insert(k);
        }
    }

    /// A report call failed: the succeeded states it may not have carried
    /// are written after all (see the module notes).
    pub fn store_unacknowledged(&mut self) {
        for k in &self.unacked {
            let stored = self.stored_ends.contains(k);
            if !stored
                && !self.dirty.contains(k)
                && self.placements.get(k).is_some_and(|p| p.rev != 0)
            {
                self.dirty.insert(k.clone());
            }
        }
    }

    /// Whether the placement's succeeded state waits for the global
    /// scheduler's acknowledgement.
    pub fn unacknowledged(&self, k: &TaskKey) -> bool {
        self.unacked.contains(k)
    }

    /// Writes of the states not in the store yet, and deletes of the
    /// placements that are garbage; they are taken off their sets (see
    /// [`Intent::unwritten`], [`Intent::uncollected`]).
    pub fn state_writes(&mut self) -> Vec<(TaskKey, Write)> {
        let collect = std::mem::take(&mut self.collect);
        let mut out: Vec<(TaskKey, Write)> = collect
            .into_iter()
            .filter_map(|k| {
                // Never written, or deleted already: nothing to delete.
                let p = self.placements.get(&k).filter(|p| p.rev != 0)?;
                let write = Write::delete(self.keys.placement(&k), Expect::ModRevision(p.rev));
                Some((k, write))
            })
            .collect();
        let dirty = std::mem::take(&mut self.dirty);
        let deleting: BTreeSet<TaskKey> = out.iter().map(|(k, _)| k.clone()).collect();
        out.extend(
            dirty
                .into_iter()
                .filter(|k| !deleting.contains(k))
                .filter_map(|k| {
                    // Never written: nothing to update (its placement write
                    // failed, and the task was queued again).
                    let p = self.placements.get(&k).filter(|p| p.rev != 0)?;
                    let value = serde_json::to_vec(&p.record).expect("placement records serialize");
                    let write =
                        Write::put(self.keys.placement(&k), value, Expect::ModRevision(p.rev));
                    Some((k, write))
                }),
        );
        out
    }

    /// A state write is in, at `rev`.
    pub fn written(&mut self, k: &TaskKey, rev: Revision) {
        if let Some(p) = self.placements.get_mut(k) {
            p.rev = rev;
            if p.record.state == PlacementState::Succeeded {
                self.stored_ends.insert(k.clone());
            }
        }
    }

    /// A placement's key is deleted: the placement stays known here (its
    /// next attempt's number follows it) until its job is deleted.
    pub fn collected(&mut self, k: &TaskKey) {
        self.stored_ends.remove(k);
        if let Some(p) = self.placements.get_mut(k) {
            p.rev = 0;
        }
    }

    /// A state write failed: it is due again (unless its key is to be
    /// deleted by now).
    pub fn unwritten(&mut self, k: TaskKey) {
        if !self.collect.contains(&k) {
            self.dirty.insert(k);
        }
    }

    /// A delete failed: it is due again.
    pub fn uncollected(&mut self, k: TaskKey) {
        if self.placements.contains_key(&k) {
            self.collect.insert(k);
        }
    }

    /// What the store holds for a placement whose last write had an unknown
    /// outcome: keep its revision, so the next write's guard matches. A
    /// stored placement we do not know of is one whose write landed after
    /// all; no node was told of it, so it is lost (and written so).
    pub fn refresh(&mut self, k: &TaskKey, stored: Option<KeyValue>) {
        let Some(kv) = stored else {
            if let Some(p) = self.placements.get_mut(k) {
                p.rev = 0;
            }
            return;
        };
        if let Some(p) = self.placements.get_mut(k) {
            p.rev = kv.mod_revision;
            return;
        }
        if let Ok(mut record) = serde_json::from_slice::<PlacementRecord>(&kv.value) {
            record.state = PlacementState::Lost;
            self.load(k.clone(), record, kv.mod_revision);
            self.dirty.insert(k.clone());
        }
    }

    /// Reports of every stored placement (for a resync).
    pub fn stored_reports(&self) -> impl Iterator<Item = pb::TaskReport> + '_ {
        self.placements
            .iter()
            .filter(|(_, p)| p.rev != 0)
            .map(|(k, p)| report(k, &p.record))
    }

    /// Tasks counted on each machine, as `job/index`.
    pub fn tasks_by_machine(&self) -> BTreeMap<&str, Vec<String>> {
        let mut tasks: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (k, p) in &self.placements {
            if p.counted.is_some() {
                tasks
                    .entry(p.record.machine.as_str())
                    .or_default()
                    .push(format!("{}/{}", k.0, k.1));
            }
        }
        tasks
    }
}

/// A report of where a placement stands (a lost or preempted one names no
/// machine).
pub fn report(k: &TaskKey, record: &PlacementRecord) -> pb::TaskReport {
    let lost = matches!(
        record.state,
        PlacementState::Lost | PlacementState::Preempted
    );
    pb::TaskReport {
        job: k.0.clone(),
        index: k.1,
        state: record.state.to_pb() as i32,
        machine: if lost {
            String::new()
        } else {
            record.machine.clone()
        },
        exit_code: record.exit_code,
        reason: record.reason.clone(),
        gpus: if lost {
            String::new()
        } else {
            SlotsDisplay(&record.gpus).to_string()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent() -> Intent {
        Intent::new(Keys::new("/sched", "east-a"))
    }

    fn key(i: u32) -> TaskKey {
        ("web".to_string(), i)
    }

    fn place(intent: &mut Intent, k: &TaskKey, machine: &str, rev: Revision) -> Write {
        let (record, write) = intent.next(k, machine, Vec::new());
        let counted = Some((MachineId(0), Resources::new(1000, 1 << 30)));
        intent.placed(
            k.clone(),
            Placement {
                record,
                rev,
                counted,
            },
        );
        write
    }

    #[test]
    fn a_task_placed_again_gets_the_next_attempt_guarded_by_the_last_write() {
        let mut i = intent();
        let w = place(&mut i, &key(0), "m0", 7);
        assert_eq!(w.key, "/sched/placements/east-a/web/0000000");
        assert_eq!(w.expect, Expect::Absent);
        assert!(i.lose(&key(0)).unwrap().is_some());
        let (record, write) = i.next(&key(0), "m1", Vec::new());
        assert_eq!(record.attempt, 2);
        assert_eq!(write.expect, Expect::ModRevision(7));
        // The record carries no spec: it stays small whatever the command.
        assert!(write.size() < 200, "{}", write.size());
    }

    #[test]
    fn only_the_current_attempt_on_its_machine_changes_a_placement() {
        let mut i = intent();
        place(&mut i, &key(0), "m0", 7);
        let observe = |i: &mut Intent, attempt, machine, state| {
            i.observe(&key(0), attempt, machine, state, None, "")
        };
        use pb::TaskState::*;
        assert_eq!(observe(&mut i, 0, "m0", Running), Observed::Stale);
        assert_eq!(observe(&mut i, 1, "m9", Running), Observed::Stale);
        assert!(matches!(
            observe(&mut i, 1, "m0", Running),
            Observed::Changed {
                state: PlacementState::Running,
                freed: None
            }
        ));
        assert_eq!(observe(&mut i, 1, "m0", Running), Observed::Unchanged);
        // Final: the capacity is given back once, and the state written
        // (a failure; a success waits for the global scheduler's word).
        assert!(matches!(
            observe(&mut i, 1, "m0", Failed),
            Observed::Changed { freed: Some(_), .. }
        ));
        assert_eq!(observe(&mut i, 1, "m0", Succeeded), Observed::Unchanged);
        assert_eq!(i.state_writes().len(), 1);
        assert!(i.state_writes().is_empty());
        // A final placement is not lost with its machine.
        assert_eq!(i.lose(&key(0)), None);
        assert_eq!(observe(&mut i, 1, "m0", Lost), Observed::Lost);
    }

    #[test]
    fn a_lost_placement_takes_no_more_reports_and_is_written_once() {
        let mut i = intent();
        place(&mut i, &key(0), "m0", 7);
        place(&mut i, &key(1), "m0", 7);
        i.lose(&key(0));
        assert_eq!(
            i.observe(&key(0), 1, "m0", pb::TaskState::Running, None, ""),
            Observed::Stale
        );
        assert_eq!(i.orphans(|m| m != "m0"), [key(1)]);
        let writes = i.state_writes();
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].1.expect, Expect::ModRevision(7));
        // The write failed: due again; then it lands.
        i.unwritten(key(0));
        assert_eq!(i.state_writes().len(), 1);
        i.written(&key(0), 9);
        assert_eq!(
            i.next(&key(0), "m1", Vec::new()).1.expect,
            Expect::ModRevision(9)
        );
    }

    #[test]
    fn placed_again_before_its_loss_is_written_the_loss_is_not_written() {
        let mut i = intent();
        place(&mut i, &key(0), "m0", 7);
        i.lose(&key(0));
        place(&mut i, &key(0), "m1", 8);
        assert!(i.state_writes().is_empty());
    }

    fn stored(w: &Write) -> &[u8] {
        match &w.op {
            sched_store::Op::Put(v) => v,
            op => panic!("not a put: {op:?}"),
        }
    }

    #[test]
    fn a_placement_record_keeps_its_gpu_devices_through_the_store() {
        let i = intent();
        let slots = vec![
            GpuSlot {
                device: 0,
                milli: 1000,
            },
            GpuSlot {
                device: 1,
                milli: 1000,
            },
        ];
        let (record, write) = i.next(&key(0), "g0", slots.clone());
        let back: PlacementRecord = serde_json::from_slice(stored(&write)).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.gpus, slots);
        assert_eq!(report(&key(0), &back).gpus, "0+1");
        // A share, and a record without GPUs stores no `gpus` at all (and
        // records written before GPUs read back with none).
        let share = vec![GpuSlot {
            device: 3,
            milli: 460,
        }];
        let (record, write) = i.next(&key(1), "g0", share);
        let back: PlacementRecord = serde_json::from_slice(stored(&write)).unwrap();
        assert_eq!(report(&key(1), &back).gpus, "3:460");
        assert_eq!(back, record);
        let (_, write) = i.next(&key(2), "m0", Vec::new());
        assert!(!String::from_utf8_lossy(stored(&write)).contains("gpus"));
        let old: PlacementRecord =
            serde_json::from_str(r#"{"machine":"m0","attempt":1,"state":"running"}"#).unwrap();
        assert!(old.gpus.is_empty());
        // A lost placement names no devices.
        let mut lost = back;
        lost.state = PlacementState::Lost;
        assert_eq!(report(&key(1), &lost).gpus, "");
    }

    #[test]
    fn freeing_a_placement_gives_back_its_devices() {
        let mut i = intent();
        let slots = vec![GpuSlot {
            device: 1,
            milli: 500,
        }];
        let (record, _) = i.next(&key(0), "g0", slots.clone());
        let request = Resources::new(1000, 1 << 30);
        i.placed(
            key(0),
            Placement {
                record,
                rev: 3,
                counted: Some((MachineId(0), request)),
            },
        );
        assert_eq!(i.lose(&key(0)), Some(Some((MachineId(0), request, slots))));
    }

    #[test]
    fn a_write_that_landed_unseen_is_read_back_as_lost() {
        let mut i = intent();
        let (record, write) = i.next(&key(3), "m0", Vec::new());
        let kv = KeyValue {
            key: write.key.clone(),
            value: serde_json::to_vec(&record).unwrap(),
            mod_revision: 11,
            create_revision: 11,
        };
        i.refresh(&key(3), Some(kv));
        let p = i.get(&key(3)).unwrap();
        assert_eq!((p.record.state, p.rev), (PlacementState::Lost, 11));
        // Written back as lost, so a restart does not start it.
        assert_eq!(i.state_writes().len(), 1);
        let r: Vec<pb::TaskReport> = i.stored_reports().collect();
        assert_eq!(r[0].state, pb::TaskState::Lost as i32);
        assert_eq!(r[0].machine, "");
        // Gone from the store: the next write creates it.
        i.refresh(&key(3), None);
        assert_eq!(i.next(&key(3), "m0", Vec::new()).1.expect, Expect::Absent);
    }

    fn succeeded(index: u32, machine: &str) -> pb::TaskReport {
        pb::TaskReport {
            job: "web".into(),
            index,
            state: pb::TaskState::Succeeded as i32,
            machine: machine.into(),
            exit_code: Some(0),
            reason: String::new(),
            gpus: String::new(),
        }
    }

    /// Issue 15: a success is not written; once the global scheduler has
    /// it, the placement's key is deleted, and the placement stays known.
    #[test]
    fn a_success_is_not_written_and_its_key_goes_once_acknowledged() {
        let mut i = intent();
        place(&mut i, &key(0), "m0", 7);
        let changed = i.observe(&key(0), 1, "m0", pb::TaskState::Succeeded, Some(0), "");
        assert!(matches!(changed, Observed::Changed { freed: Some(_), .. }));
        assert!(i.state_writes().is_empty());
        assert!(i.unacknowledged(&key(0)));
        // A resync reports it until then.
        let r: Vec<pb::TaskReport> = i.stored_reports().collect();
        assert_eq!(r[0].state, pb::TaskState::Succeeded as i32);
        // A report of another machine's copy acknowledges nothing.
        i.acknowledged(&succeeded(0, "m9"));
        assert!(i.state_writes().is_empty());
        i.acknowledged(&succeeded(0, "m0"));
        assert!(!i.unacknowledged(&key(0)));
        let writes = i.state_writes();
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].1.op, sched_store::Op::Delete);
        assert_eq!(writes[0].1.expect, Expect::ModRevision(7));
        // The delete failed: due again; then it lands.
        i.uncollected(key(0));
        assert_eq!(i.state_writes().len(), 1);
        i.collected(&key(0));
        assert!(i.state_writes().is_empty());
        assert_eq!(i.stored_reports().count(), 0);
        // Known still: nothing more to report, and a later placement of
        // the task (a job submitted again) creates its key anew.
        assert_eq!(
            i.get(&key(0)).unwrap().record.state,
            PlacementState::Succeeded
        );
        let (record, write) = i.next(&key(0), "m1", Vec::new());
        assert_eq!((record.attempt, write.expect), (2, Expect::Absent));
    }

    /// When a report call fails, the successes it may not have carried are
    /// written after all (once), then deleted once acknowledged.
    #[test]
    fn a_success_not_acknowledged_is_written_when_a_report_call_fails() {
        let mut i = intent();
        place(&mut i, &key(0), "m0", 7);
        i.observe(&key(0), 1, "m0", pb::TaskState::Succeeded, Some(0), "");
        i.store_unacknowledged();
        let writes = i.state_writes();
        assert_eq!(writes.len(), 1);
        assert!(matches!(writes[0].1.op, sched_store::Op::Put(_)));
        i.written(&key(0), 9);
        // Written already: another failed call writes nothing.
        i.store_unacknowledged();
        assert!(i.state_writes().is_empty());
        i.acknowledged(&succeeded(0, "m0"));
        let writes = i.state_writes();
        assert_eq!(writes[0].1.op, sched_store::Op::Delete);
        assert_eq!(writes[0].1.expect, Expect::ModRevision(9));
    }

    /// A stored success (read back after a restart) is reported, and
    /// deleted once acknowledged, without being written again.
    #[test]
    fn a_success_read_back_is_deleted_once_acknowledged() {
        let mut i = intent();
        let record = PlacementRecord {
            machine: "m0".into(),
            attempt: 1,
            state: PlacementState::Succeeded,
            exit_code: Some(0),
            reason: String::new(),
            gpus: Vec::new(),
        };
        i.load(key(0), record, 5);
        i.store_unacknowledged();
        assert!(i.state_writes().is_empty());
        assert_eq!(i.stored_reports().count(), 1);
        i.acknowledged(&succeeded(0, "m0"));
        let writes = i.state_writes();
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].1.expect, Expect::ModRevision(5));
    }
}
