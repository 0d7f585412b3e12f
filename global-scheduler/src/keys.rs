//! Where the global scheduler keeps things in the store.
//!
//! Everything lives under one prefix (default `/sched`), so an operator can
//! read it all with `etcdctl get --prefix /sched`. Values are JSON.
//!
//! | key | value | written |
//! | --- | --- | --- |
//! | `P/jobs/<job>` | [`JobRecord`](crate::records::JobRecord): the validated spec, submission id, time, `cancelled` | on submit (before the call returns), on cancel |
//! | `P/tasks/<job>/<index>` | [`TaskRecord`](crate::records::TaskRecord): state, cluster, machine, exit code, clusters that handed it back | when a task changes after it was first assigned (handed back, lost, final); a task with neither this key nor an assignment is pending |
//! | `P/tasks/<job>/assigned-<n>` | [`AssignmentRecord`](crate::records::AssignmentRecord): a cluster and the index ranges a scheduling pass handed it | by the pass, one key for a job's tasks that went to one cluster; where a task's own key is newer (a greater revision) it wins; deleted once every task it names has a newer key |
//! | `P/clusters/<cluster>` | [`ClusterRecord`](crate::records::ClusterRecord): location, machine classes now and every shape seen | when a local agent registers, and when its machine classes change |
//! | `P/policy` | [`PolicyRecord`](crate::policy::PolicyRecord): the policy in force, where it came from, when | by `ApplyPolicy`, a SIGHUP on the leader, a new leader whose own is newer |
//! | `P/events/<job>/<cursor>` | one event of the job (JSON), the last `EVENTS_PER_JOB` kept | in batches by the leader's event writer ([`crate::events`]); the job's go in its delete |
//! | `P/event-marks` | the greatest event cursor given and dropped | with every batch of events |
//! | `P/leader` | `LeaderRecord` (in `leader`): the leading replica's address; on a lease | by the replica that wins the election |
//! | `P/placements/<cluster>/<job>/<index>` | the local agent's placement: machine, attempt, state, exit code | by the cluster's local agent |
//! | `P/placements/<cluster>/<job>/spec` | the job's spec as the cluster got it (request, constraints, priority, command), once per job | by the cluster's local agent, with the job's first placement |
//!
//! Task indices are zero-padded to seven digits (jobs have at most a million
//! tasks) so that etcd's lexical order is task order. Every write carries
//! an expectation: `Absent` for a new key, the last seen `mod_revision`
//! otherwise, so a retried or concurrent write cannot apply twice.

/// A key under `P/tasks/<job>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKey {
    /// A task's own record, by index.
    Task(u32),
    /// An assignment record, by number.
    Assignment(u64),
}

/// Key builder for one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` without a trailing `/` (one is dropped if given).
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    pub fn jobs(&self) -> String {
        format!("{}/jobs/", self.prefix)
    }

    pub fn job(&self, name: &str) -> String {
        format!("{}/jobs/{name}", self.prefix)
    }

    pub fn tasks(&self) -> String {
        format!("{}/tasks/", self.prefix)
    }

    pub fn job_tasks(&self, job: &str) -> String {
        format!("{}/tasks/{job}/", self.prefix)
    }

    pub fn task(&self, job: &str, index: u32) -> String {
        format!("{}/tasks/{job}/{index:07}", self.prefix)
    }

    /// `(job, index)` of a task key.
    pub fn parse_task<'k>(&self, key: &'k str) -> Option<(&'k str, u32)> {
        match self.parse_under_tasks(key)? {
            (job, TaskKey::Task(index)) => Some((job, index)),
            (_, TaskKey::Assignment(_)) => None,
        }
    }

    /// Assignment record `n` of `job`: zero-padded, so that etcd's order
    /// is the order they were made in.
    pub fn assignment(&self, job: &str, n: u64) -> String {
        format!("{}/tasks/{job}/assigned-{n:010}", self.prefix)
    }

    /// What a key under [`Keys::tasks`] is, and its job's name.
    pub fn parse_under_tasks<'k>(&self, key: &'k str) -> Option<(&'k str, TaskKey)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("/tasks/")?;
        let (job, tail) = rest.split_once('/')?;
        if let Some(n) = tail.strip_prefix("assigned-") {
            return Some((job, TaskKey::Assignment(n.parse().ok()?)));
        }
        Some((job, TaskKey::Task(tail.parse().ok()?)))
    }

    /// The leader key (lease-backed; see the `leader` module).
    pub fn leader(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    pub fn clusters(&self) -> String {
        format!("{}/clusters/", self.prefix)
    }

    pub fn cluster(&self, name: &str) -> String {
        format!("{}/clusters/{name}", self.prefix)
    }

    /// The policy in force ([`PolicyRecord`](crate::policy::PolicyRecord)),
    /// written by `ApplyPolicy`, a SIGHUP on the leader, or a new leader
    /// whose own policy is newer.
    pub fn policy(&self) -> String {
        format!("{}/policy", self.prefix)
    }

    /// Quotas set live (`schedctl quota set`), over the `--quotas` file's.
    pub fn quotas(&self) -> String {
        format!("{}/quotas/", self.prefix)
    }

    pub fn quota(&self, tenant: &str, band: &str) -> String {
        format!("{}/quotas/{tenant}/{band}", self.prefix)
    }

    /// Every job's kept events ([`crate::events`]).
    pub fn events(&self) -> String {
        format!("{}/events/", self.prefix)
    }

    /// Job `job`'s kept events (deleted with the job).
    pub fn job_events(&self, job: &str) -> String {
        format!("{}/events/{job}/", self.prefix)
    }

    /// One event; cursors zero-padded to 20 digits so etcd's order is
    /// history order.
    pub fn event(&self, job: &str, cursor: u64) -> String {
        format!("{}/events/{job}/{cursor:020}", self.prefix)
    }

    /// `(job, cursor)` of an event key.
    pub fn parse_event<'k>(&self, key: &'k str) -> Option<(&'k str, u64)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("/events/")?;
        let (job, cursor) = rest.rsplit_once('/')?;
        Some((job, cursor.parse().ok()?))
    }

    /// The event history's marks ([`crate::events::Marks`]): the greatest
    /// cursor given and the greatest dropped, so a new leader never gives a
    /// cursor twice.
    pub fn event_marks(&self) -> String {
        format!("{}/event-marks", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_keys_sort_in_task_order_and_parse_back() {
        let k = Keys::new("/sched/");
        assert_eq!(k.task("web", 7), "/sched/tasks/web/0000007");
        assert!(k.task("web", 9) < k.task("web", 10));
        assert_eq!(k.parse_task(&k.task("web", 123)), Some(("web", 123)));
        assert_eq!(k.parse_task("/sched/jobs/web"), None);
        let a = k.assignment("web", 3);
        assert_eq!(a, "/sched/tasks/web/assigned-0000000003");
        assert!(a.starts_with(&k.job_tasks("web")));
        assert_eq!(k.parse_task(&a), None);
        assert_eq!(
            k.parse_under_tasks(&a),
            Some(("web", TaskKey::Assignment(3)))
        );
        assert!(k.assignment("web", 9) < k.assignment("web", 10));
        assert!(k.task("web", 0).starts_with(&k.job_tasks("web")));
        // "web-2"'s tasks are not under "web"'s prefix.
        assert!(!k.task("web-2", 0).starts_with(&k.job_tasks("web")));
    }
}
