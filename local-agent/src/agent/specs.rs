//! What every task of a job needs to run (request, constraints, priority,
//! command), once per job: learnt from the global scheduler's assignments
//! and stored once per job (see [`super::keys`]).
//!
//! Rules kept here:
//! - a spec is written once: a write is due only while the store does not
//!   hold the spec we know;
//! - a spec that changes (a job of the same name with another spec) is
//!   written again, over the stored one;
//! - after a write whose outcome is unknown, what the store holds decides.

use std::collections::BTreeMap;

use sched_core::labels::Labels;
use sched_core::resources::Resources;
use sched_proto::pb;
use sched_store::{Expect, KeyValue, Revision, Write};
use serde::{Deserialize, Serialize};

use crate::from_pb;

/// A job's spec as stored at `P/placements/<cluster>/<job>/spec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    #[serde(default)]
    pub disk_bytes: u64,
    #[serde(default)]
    pub gpu_millis: u64,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub constraints: Labels,
    #[serde(default)]
    pub priority: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
}

impl JobSpec {
    pub fn request(&self) -> Resources {
        Resources::from_array([
            self.cpu_millis,
            self.memory_bytes,
            self.disk_bytes,
            self.gpu_millis,
        ])
    }
}

impl From<&pb::Assignment> for JobSpec {
    fn from(a: &pb::Assignment) -> Self {
        let [cpu_millis, memory_bytes, disk_bytes, gpu_millis] =
            from_pb(a.request.as_ref()).as_array();
        JobSpec {
            cpu_millis,
            memory_bytes,
            disk_bytes,
            gpu_millis,
            constraints: a.constraints.clone().into_iter().collect(),
            priority: a.priority,
            command: a.command.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    spec: JobSpec,
    /// `mod_revision` of the stored key; 0 when absent.
    rev: Revision,
    /// Whether the store holds `spec`.
    stored: bool,
}

#[derive(Debug, Default)]
pub struct Specs {
    jobs: BTreeMap<String, Entry>,
}

impl Specs {
    /// A job's spec from an assignment (or a record of an older agent).
    pub fn learn(&mut self, job: &str, spec: JobSpec) {
        match self.jobs.get_mut(job) {
            Some(e) if e.spec == spec => {}
            Some(e) => {
                e.spec = spec;
                e.stored = false;
            }
            None => {
                self.jobs.insert(
                    job.to_string(),
                    Entry {
                        spec,
                        rev: 0,
                        stored: false,
                    },
                );
            }
        }
    }

    /// A spec read back from the store.
    pub fn load(&mut self, job: &str, spec: JobSpec, rev: Revision) {
        self.jobs.insert(
            job.to_string(),
            Entry {
                spec,
                rev,
                stored: true,
            },
        );
    }

    /// Forgets a deleted job's spec.
    pub fn forget(&mut self, job: &str) {
        self.jobs.remove(job);
    }

    /// The jobs whose specs are known.
    pub fn jobs(&self) -> impl Iterator<Item = &String> {
        self.jobs.keys()
    }

    pub fn get(&self, job: &str) -> Option<&JobSpec> {
        self.jobs.get(job).map(|e| &e.spec)
    }

    /// The write that stores the job's spec at `key`, if one is due.
    pub fn write(&self, job: &str, key: String) -> Option<Write> {
        let e = self.jobs.get(job).filter(|e| !e.stored)?;
        let expect = match e.rev {
            0 => Expect::Absent,
            rev => Expect::ModRevision(rev),
        };
        let value = serde_json::to_vec(&e.spec).expect("job specs serialize");
        Some(Write::put(key, value, expect))
    }

    /// The write is in, at `rev`.
    pub fn stored(&mut self, job: &str, rev: Revision) {
        if let Some(e) = self.jobs.get_mut(job) {
            e.rev = rev;
            e.stored = true;
        }
    }

    /// What the store holds after a write with an unknown outcome.
    pub fn refresh(&mut self, job: &str, kv: Option<KeyValue>) {
        let Some(e) = self.jobs.get_mut(job) else {
            return;
        };
        match kv {
            None => {
                e.rev = 0;
                e.stored = false;
            }
            Some(kv) => {
                e.rev = kv.mod_revision;
                e.stored = serde_json::from_slice::<JobSpec>(&kv.value).is_ok_and(|s| s == e.spec);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(command: &str) -> JobSpec {
        JobSpec {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            disk_bytes: 0,
            gpu_millis: 0,
            constraints: Labels::default(),
            priority: 0,
            command: vec![command.to_string()],
        }
    }

    fn kv(spec: &JobSpec, rev: Revision) -> KeyValue {
        KeyValue {
            key: "k".into(),
            value: serde_json::to_vec(spec).unwrap(),
            mod_revision: rev,
            create_revision: rev,
        }
    }

    #[test]
    fn a_spec_is_written_once() {
        let mut s = Specs::default();
        s.learn("web", spec("a"));
        let w = s.write("web", "k".into()).unwrap();
        assert_eq!(w.expect, Expect::Absent);
        s.stored("web", 7);
        assert_eq!(s.write("web", "k".into()), None);
        // The same spec again (a resync) changes nothing.
        s.learn("web", spec("a"));
        assert_eq!(s.write("web", "k".into()), None);
        assert_eq!(s.write("unknown", "k".into()), None);
    }

    #[test]
    fn a_changed_spec_is_written_over_the_stored_one() {
        let mut s = Specs::default();
        s.load("web", spec("a"), 5);
        assert_eq!(s.write("web", "k".into()), None);
        s.learn("web", spec("b"));
        assert_eq!(s.get("web"), Some(&spec("b")));
        assert_eq!(
            s.write("web", "k".into()).unwrap().expect,
            Expect::ModRevision(5)
        );
    }

    #[test]
    fn after_an_unknown_outcome_the_store_decides() {
        let mut s = Specs::default();
        s.learn("web", spec("a"));
        // The write landed after all.
        s.refresh("web", Some(kv(&spec("a"), 9)));
        assert_eq!(s.write("web", "k".into()), None);
        // Someone else's spec is there: ours goes over it.
        s.learn("api", spec("a"));
        s.refresh("api", Some(kv(&spec("z"), 4)));
        assert_eq!(
            s.write("api", "k".into()).unwrap().expect,
            Expect::ModRevision(4)
        );
        // Nothing there: written as new.
        s.refresh("api", None);
        assert_eq!(s.write("api", "k".into()).unwrap().expect, Expect::Absent);
    }
}
