//! Task processes on a node, and their directories.
//!
//! Each attempt of a task gets `WORK/tasks/<job>/<index>/<attempt>/` with
//! `meta.json` (machine, pid), `stdout`, `stderr` and, once it has exited,
//! `exit` (its exit code; 128+N when killed by signal N). The process is
//! started through `local-agent supervise` (see [`crate::supervise`]), which
//! writes `exit` even when the node agent is gone, and kills the task if the
//! node agent stays gone longer than its lease. After a restart the node
//! agent reads these directories back: running tasks are adopted, finished
//! ones reported.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sched_proto::pb;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::task::TaskTracker;

use super::NodeConfig;
use crate::error::AgentError;

/// What `meta.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    machine: String,
    pid: u32,
}

#[derive(Debug)]
struct Entry {
    attempt: u64,
    machine: String,
    state: pb::TaskState,
    exit_code: Option<i32>,
    /// The supervisor's pid while running.
    pid: Option<u32>,
    /// `None` for hollow tasks.
    dir: Option<PathBuf>,
    /// Stops a hollow task.
    hollow_stop: Option<tokio_util::sync::CancellationToken>,
}

pub struct Tasks {
    work_dir: PathBuf,
    lease_file: PathBuf,
    lease: Duration,
    supervisor: PathBuf,
    hollow: Option<Duration>,
    report: UnboundedSender<pb::NodeTask>,
    entries: Mutex<BTreeMap<(String, u32), Entry>>,
    waiters: TaskTracker,
    shutting_down: AtomicBool,
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; its state letter is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn read_exit(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("exit"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn final_state(code: i32) -> pb::TaskState {
    if code == 0 {
        pb::TaskState::Succeeded
    } else {
        pb::TaskState::Failed
    }
}

/// How long a hollow task pretends to run: the `N` of `sleep N`, else the
/// default.
fn hollow_duration(command: &[String], default: Duration) -> Duration {
    match command {
        [sleep, n] if sleep == "sleep" => n
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map_or(default, Duration::from_secs_f64),
        _ => default,
    }
}

impl Tasks {
    pub fn new(
        config: &NodeConfig,
        report: UnboundedSender<pb::NodeTask>,
    ) -> Result<Arc<Self>, AgentError> {
        let tasks = Tasks {
            work_dir: config.work_dir.clone(),
            lease_file: config.work_dir.join("lease"),
            lease: config.lease,
            supervisor: config.supervisor.clone(),
            hollow: config.hollow,
            report,
            entries: Mutex::new(BTreeMap::new()),
            waiters: TaskTracker::new(),
            shutting_down: AtomicBool::new(false),
        };
        tasks.renew_lease();
        let tasks = Arc::new(tasks);
        if tasks.hollow.is_none() {
            tasks.recover()?;
        }
        Ok(tasks)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, u32), Entry>> {
        // Entries are plain data updated in one step each; a panic
        // elsewhere cannot leave one half-written.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn renew_lease(&self) {
        if let Err(e) = std::fs::write(&self.lease_file, b"") {
            tracing::error!(cause = %e, "cannot renew the task lease");
        }
    }

    /// Reads back task directories after a restart.
    fn recover(self: &Arc<Self>) -> Result<(), AgentError> {
        let root = self.work_dir.join("tasks");
        let Ok(jobs) = std::fs::read_dir(&root) else {
            return Ok(());
        };
        for job in jobs.flatten() {
            let job_name = job.file_name().to_string_lossy().to_string();
            let read = |dir: &Path| {
                std::fs::read_dir(dir).map_err(|e| AgentError::io(dir.display().to_string(), e))
            };
            for index in read(&job.path())?.flatten() {
                let Ok(i) = index.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let latest = read(&index.path())?
                    .flatten()
                    .filter_map(|a| a.file_name().to_string_lossy().parse::<u64>().ok())
                    .max();
                let Some(attempt) = latest else { continue };
                let dir = index.path().join(attempt.to_string());
                let Some(meta) = std::fs::read(dir.join("meta.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
                else {
                    continue;
                };
                let (state, exit_code, pid) = match read_exit(&dir) {
                    Some(code) => (final_state(code), Some(code), None),
                    None if alive(meta.pid) => (pb::TaskState::Running, None, Some(meta.pid)),
                    // The supervisor died without writing an exit code:
                    // the machine went down under it.
                    None => (pb::TaskState::Lost, None, None),
                };
                tracing::info!(job = %job_name, index = i, attempt, state = ?state, "task found after restart");
                self.lock().insert(
                    (job_name.clone(), i),
                    Entry {
                        attempt,
                        machine: meta.machine,
                        state,
                        exit_code,
                        pid,
                        dir: Some(dir.clone()),
                        hollow_stop: None,
                    },
                );
                if let Some(pid) = pid {
                    self.adopt(job_name.clone(), i, attempt, pid, dir);
                }
            }
        }
        Ok(())
    }

    /// Every task the node knows, for its registration.
    pub fn known(&self) -> Vec<pb::NodeTask> {
        self.lock()
            .iter()
            .map(|((job, index), e)| node_task(job, *index, e))
            .collect()
    }

    pub fn start(self: &Arc<Self>, s: pb::TaskStart) {
        let key = (s.job.clone(), s.index);
        {
            let entries = self.lock();
            if let Some(e) = entries.get(&key) {
                if e.attempt >= s.attempt {
                    // Already started (a resent start): say where it is.
                    let _ = self.report.send(node_task(&s.job, s.index, e));
                    return;
                }
            }
        }
        if let Some(default) = self.hollow {
            self.start_hollow(s, default);
            return;
        }
        let dir = self
            .work_dir
            .join("tasks")
            .join(&s.job)
            .join(s.index.to_string())
            .join(s.attempt.to_string());
        match self.spawn(&s, &dir) {
            Ok(child) => {
                let pid = child.id().unwrap_or_default();
                let entry = Entry {
                    attempt: s.attempt,
                    machine: s.machine.clone(),
                    state: pb::TaskState::Running,
                    exit_code: None,
                    pid: Some(pid),
                    dir: Some(dir.clone()),
                    hollow_stop: None,
                };
                let _ = self.report.send(node_task(&s.job, s.index, &entry));
                self.lock().insert(key, entry);
                tracing::info!(job = %s.job, index = s.index, attempt = s.attempt, machine = %s.machine, pid, "task started");
                // Only now that the entry is in: a task that exits at once
                // must find it, or its exit would go unreported.
                self.wait_for(child, s.job, s.index, s.attempt, dir);
            }
            Err(e) => {
                tracing::warn!(job = %s.job, index = s.index, cause = %e, "task did not start");
                let _ = std::fs::create_dir_all(&dir);
                let _ = std::fs::write(
                    dir.join("stderr"),
                    format!("the task could not start: {e:#}\n"),
                );
                let _ = std::fs::write(dir.join("exit"), "127");
                let entry = Entry {
                    attempt: s.attempt,
                    machine: s.machine.clone(),
                    state: pb::TaskState::Failed,
                    exit_code: Some(127),
                    pid: None,
                    dir: Some(dir),
                    hollow_stop: None,
                };
                let _ = self.report.send(node_task(&s.job, s.index, &entry));
                self.lock().insert(key, entry);
            }
        }
    }

    /// Starts the task's supervisor; [`Tasks::wait_for`] then reports its
    /// exit.
    fn spawn(&self, s: &pb::TaskStart, dir: &Path) -> Result<tokio::process::Child, AgentError> {
        if s.command.is_empty() {
            return Err(
                sched_core::error::SpecError::new("command", "the job has no command").into(),
            );
        }
        let io = |what: &str, e| AgentError::io(format!("{what} in {}", dir.display()), e);
        std::fs::create_dir_all(dir).map_err(|e| io("the task directory", e))?;
        let stdout = std::fs::File::create(dir.join("stdout")).map_err(|e| io("stdout", e))?;
        let stderr = std::fs::File::create(dir.join("stderr")).map_err(|e| io("stderr", e))?;
        let mut cmd = std::process::Command::new(&self.supervisor);
        cmd.arg("supervise")
            .arg("--lease")
            .arg(&self.lease_file)
            .arg("--lease-ms")
            .arg(self.lease.as_millis().to_string())
            .arg("--exit-file")
            .arg(dir.join("exit"))
            .arg("--")
            .args(&s.command)
            .current_dir(dir)
            .env("SCHED_JOB", &s.job)
            .env("SCHED_TASK_INDEX", s.index.to_string())
            .env("SCHED_CLUSTER", &s.cluster)
            .env("SCHED_MACHINE", &s.machine)
            .env("SCHED_ATTEMPT", s.attempt.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group: a signal to the node agent's group
            // (Ctrl-C in a terminal) does not reach the tasks directly.
            .process_group(0);
        let child = tokio::process::Command::from(cmd)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| {
                AgentError::io(format!("cannot start {}", self.supervisor.display()), e)
            })?;
        let pid = child
            .id()
            .ok_or_else(|| AgentError::Invariant("a task just started has no pid".into()))?;
        let meta = Meta {
            machine: s.machine.clone(),
            pid,
        };
        let meta = serde_json::to_vec(&meta).expect("task metadata serializes");
        std::fs::write(dir.join("meta.json"), meta).map_err(|e| io("meta.json", e))?;
        Ok(child)
    }

    /// Reports the task's end when its supervisor exits.
    fn wait_for(
        self: &Arc<Self>,
        mut child: tokio::process::Child,
        job: String,
        index: u32,
        attempt: u64,
        dir: PathBuf,
    ) {
        let this = self.clone();
        self.waiters.spawn(async move {
            let _ = child.wait().await;
            this.finish(&job, index, attempt, &dir);
        });
    }

    /// Polls a process that is not our child (found after a restart).
    fn adopt(self: &Arc<Self>, job: String, index: u32, attempt: u64, pid: u32, dir: PathBuf) {
        let this = self.clone();
        self.waiters.spawn(async move {
            while alive(pid) {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            this.finish(&job, index, attempt, &dir);
        });
    }

    fn finish(&self, job: &str, index: u32, attempt: u64, dir: &Path) {
        let code = read_exit(dir);
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(&(job.to_string(), index)) else {
            return;
        };
        if e.attempt != attempt {
            return;
        }
        e.pid = None;
        e.exit_code = code;
        e.state = match code {
            _ if self.shutting_down.load(Ordering::SeqCst) => pb::TaskState::Lost,
            Some(c) => final_state(c),
            None => pb::TaskState::Lost,
        };
        tracing::info!(job, index, attempt, exit_code = ?code, state = ?e.state, "task exited");
        let _ = self.report.send(node_task(job, index, e));
    }

    fn start_hollow(self: &Arc<Self>, s: pb::TaskStart, default: Duration) {
        let duration = hollow_duration(&s.command, default);
        let stop = tokio_util::sync::CancellationToken::new();
        let entry = Entry {
            attempt: s.attempt,
            machine: s.machine.clone(),
            state: pb::TaskState::Running,
            exit_code: None,
            pid: None,
            dir: None,
            hollow_stop: Some(stop.clone()),
        };
        let _ = self.report.send(node_task(&s.job, s.index, &entry));
        self.lock().insert((s.job.clone(), s.index), entry);
        let this = self.clone();
        self.waiters.spawn(async move {
            let code = tokio::select! {
                _ = tokio::time::sleep(duration) => 0,
                _ = stop.cancelled() => 143,
            };
            this.finish_hollow(&s.job, s.index, s.attempt, code);
        });
    }

    fn finish_hollow(&self, job: &str, index: u32, attempt: u64, code: i32) {
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(&(job.to_string(), index)) else {
            return;
        };
        if e.attempt != attempt {
            return;
        }
        e.exit_code = Some(code);
        e.state = if self.shutting_down.load(Ordering::SeqCst) {
            pb::TaskState::Lost
        } else {
            final_state(code)
        };
        let _ = self.report.send(node_task(job, index, e));
    }

    /// Stops a task (its job was cancelled, or it was moved).
    pub fn stop(&self, job: &str, index: u32) {
        let entries = self.lock();
        let Some(e) = entries.get(&(job.to_string(), index)) else {
            return;
        };
        if let Some(stop) = &e.hollow_stop {
            stop.cancel();
        }
        if let Some(pid) = e.pid {
            // The supervisor forwards SIGTERM to the task's group and
            // escalates to SIGKILL after its grace period.
            let _ =
                sched_proto::process::signal_pid(pid, sched_proto::process::Signal::SIGTERM, false);
        }
    }

    /// Stops every task and waits up to `grace` for them to exit.
    pub async fn stop_all(&self, grace: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let keys: Vec<(String, u32)> = self.lock().keys().cloned().collect();
        for (job, index) in &keys {
            self.stop(job, *index);
        }
        self.waiters.close();
        let _ = tokio::time::timeout(grace, self.waiters.wait()).await;
    }

    /// The output files of a task's latest attempt, and its exit file.
    pub fn output(&self, job: &str, index: u32) -> Option<PathBuf> {
        if let Some(dir) = self
            .lock()
            .get(&(job.to_string(), index))
            .and_then(|e| e.dir.clone())
        {
            return Some(dir);
        }
        None
    }
}

fn node_task(job: &str, index: u32, e: &Entry) -> pb::NodeTask {
    pb::NodeTask {
        job: job.to_string(),
        index,
        machine: e.machine.clone(),
        state: e.state as i32,
        exit_code: e.exit_code,
        attempt: e.attempt,
    }
}
