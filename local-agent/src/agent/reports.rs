//! What the global scheduler is to hear: task reports (placed, running,
//! finished, lost) and hand-backs (tasks this cluster cannot place), in the
//! order they happened, until a call carries them.
//!
//! Rules kept here:
//! - a call that fails puts its reports back ahead of the newer ones;
//! - a resync (each new session) supersedes the queued task reports with
//!   one per stored placement, but keeps the losses: the global scheduler
//!   keeps the last report of a task in a call, and tells a job's events of
//!   a task lost and placed again. However often sessions fail and start
//!   again, the queue holds one report per placement plus the losses;
//! - hand-backs are never superseded: each is the only word of its tasks.

use sched_proto::pb;

/// Reports taken for one call.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outgoing {
    pub tasks: Vec<pb::TaskReport>,
    pub hand_backs: Vec<pb::HandBack>,
}

impl Outgoing {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.hand_backs.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct Reports {
    tasks: Vec<pb::TaskReport>,
    hand_backs: Vec<pb::HandBack>,
}

impl Reports {
    pub fn push(&mut self, report: pb::TaskReport) {
        self.tasks.push(report);
    }

    /// A task lost with its machine.
    pub fn lost(&mut self, job: &str, index: u32) {
        self.tasks.push(pb::TaskReport {
            job: job.to_string(),
            index,
            state: pb::TaskState::Lost as i32,
            machine: String::new(),
            exit_code: None,
            reason: String::new(),
            gpus: String::new(),
        });
    }

    pub fn hand_back(&mut self, job: &str, indices: Vec<u32>, reason: String) {
        if indices.is_empty() {
            return;
        }
        self.hand_backs.push(pb::HandBack {
            job: job.to_string(),
            indices,
            reason,
        });
    }

    /// Replaces the queued task reports but the losses with `current`.
    pub fn resync(&mut self, current: impl IntoIterator<Item = pb::TaskReport>) {
        self.tasks.retain(|r| r.state == pb::TaskState::Lost as i32);
        self.tasks.extend(current);
    }

    /// Up to `max` task reports and every hand-back, oldest first.
    pub fn take(&mut self, max: usize) -> Outgoing {
        let n = self.tasks.len().min(max);
        Outgoing {
            tasks: self.tasks.drain(..n).collect(),
            hand_backs: std::mem::take(&mut self.hand_backs),
        }
    }

    /// A call that carried `out` failed: it goes first next time.
    pub fn put_back(&mut self, mut out: Outgoing) {
        out.tasks.append(&mut self.tasks);
        self.tasks = out.tasks;
        out.hand_backs.append(&mut self.hand_backs);
        self.hand_backs = out.hand_backs;
    }

    /// Task reports waiting.
    pub fn pending(&self) -> usize {
        self.tasks.len()
    }

    #[cfg(test)]
    pub fn tasks(&self) -> &[pb::TaskReport] {
        &self.tasks
    }

    #[cfg(test)]
    pub fn hand_backs(&self) -> &[pb::HandBack] {
        &self.hand_backs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(index: u32, state: pb::TaskState) -> pb::TaskReport {
        pb::TaskReport {
            job: "web".into(),
            index,
            state: state as i32,
            machine: "m0".into(),
            exit_code: None,
            reason: String::new(),
            gpus: String::new(),
        }
    }

    fn indices(r: &Reports) -> Vec<(u32, i32)> {
        r.tasks().iter().map(|t| (t.index, t.state)).collect()
    }

    #[test]
    fn a_resync_supersedes_reports_but_keeps_losses_and_hand_backs() {
        let mut r = Reports::default();
        r.push(report(0, pb::TaskState::Placed));
        r.lost("web", 1);
        r.push(report(2, pb::TaskState::Running));
        r.hand_back("web", vec![3], "no machine".into());
        let now = [
            report(0, pb::TaskState::Running),
            report(1, pb::TaskState::Placed),
        ];
        r.resync(now.clone());
        // And again: a second failed session piles nothing up.
        r.resync(now);
        let (lost, placed, running) = (
            pb::TaskState::Lost as i32,
            pb::TaskState::Placed as i32,
            pb::TaskState::Running as i32,
        );
        assert_eq!(indices(&r), [(1, lost), (0, running), (1, placed)]);
        assert_eq!(r.hand_backs().len(), 1);
    }

    #[test]
    fn a_failed_call_puts_its_reports_back_first() {
        let mut r = Reports::default();
        for i in 0..5 {
            r.push(report(i, pb::TaskState::Placed));
        }
        r.hand_back("web", vec![9], "full".into());
        let out = r.take(3);
        assert_eq!(out.tasks.len(), 3);
        assert_eq!(out.hand_backs.len(), 1);
        assert_eq!(r.pending(), 2);
        // Newer reports arrive while the call is out; then it fails.
        r.push(report(5, pb::TaskState::Placed));
        r.hand_back("web", vec![10], "full".into());
        r.put_back(out);
        let order: Vec<u32> = r.tasks().iter().map(|t| t.index).collect();
        assert_eq!(order, [0, 1, 2, 3, 4, 5]);
        let backs: Vec<u32> = r.hand_backs().iter().map(|h| h.indices[0]).collect();
        assert_eq!(backs, [9, 10]);
    }

    #[test]
    fn an_empty_hand_back_is_not_queued() {
        let mut r = Reports::default();
        r.hand_back("web", Vec::new(), "nothing".into());
        assert!(r.take(10).is_empty());
    }
}
