//! Where the local agent keeps things in the store: everything of cluster
//! `C` under `P/placements/C/`, so one consistent read gives it all back
//! after a restart. Values are JSON.
//!
//! | key | value | written |
//! | --- | --- | --- |
//! | `P/placements/C/<job>/spec` | [`JobSpec`](super::specs::JobSpec): request, constraints, priority, command | once per job, in the commit of its first placement or an earlier one |
//! | `P/placements/C/<job>/<index>` | [`PlacementRecord`](super::intent::PlacementRecord): machine, attempt, state, exit code | when placed (before any node hears of it), and when final or lost |
//!
//! The command is stored once per job, not in every placement: a job of
//! 10,000 tasks with a long command would otherwise store it 10,000 times,
//! and a commit of placements would outgrow etcd's request limit. The agent
//! needs it after a restart only for tasks it placed and no node started
//! yet, or that it must place again; the global scheduler does not resend
//! the assignments of tasks already placed.

/// A task: its job's name and its index.
pub type TaskKey = (String, u32);

/// What a key under the prefix holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    Spec(String),
    Placement(TaskKey),
}

/// Key builder for one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The keys of `cluster` under `prefix` (the global scheduler's, such
    /// as `/sched`).
    pub fn new(prefix: &str, cluster: &str) -> Self {
        Keys {
            prefix: format!("{}/placements/{cluster}/", prefix.trim_end_matches('/')),
        }
    }

    /// The prefix of every key of this cluster.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Task indices are zero-padded to seven digits, so that etcd's lexical
    /// order is task order.
    pub fn placement(&self, k: &TaskKey) -> String {
        format!("{}{}/{:07}", self.prefix, k.0, k.1)
    }

    /// The prefix of everything stored of a job: its spec and placements.
    pub fn job(&self, job: &str) -> String {
        format!("{}{job}/", self.prefix)
    }

    pub fn spec(&self, job: &str) -> String {
        format!("{}{job}/spec", self.prefix)
    }

    pub fn parse(&self, key: &str) -> Option<Stored> {
        let (job, last) = key.strip_prefix(&self.prefix)?.split_once('/')?;
        if last == "spec" {
            return Some(Stored::Spec(job.to_string()));
        }
        Some(Stored::Placement((job.to_string(), last.parse().ok()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_as_what_they_hold() {
        let keys = Keys::new("/sched/", "east-a");
        let p = keys.placement(&("web".into(), 42));
        assert_eq!(p, "/sched/placements/east-a/web/0000042");
        assert_eq!(keys.parse(&p), Some(Stored::Placement(("web".into(), 42))));
        let s = keys.spec("web");
        assert_eq!(s, "/sched/placements/east-a/web/spec");
        assert_eq!(keys.parse(&s), Some(Stored::Spec("web".into())));
        assert_eq!(keys.parse("/sched/placements/east-a/web/x"), None);
        assert_eq!(keys.parse("/sched/placements/west-b/web/0000001"), None);
    }
}
