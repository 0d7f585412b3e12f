//! Task processes on a node: the table of the tasks it runs, their starts,
//! stops and exits, and finding them again after a restart.
//!
//! Each attempt of a task runs in its own directory (see [`super::dirs`]
//! for the layout and how long directories are kept). The process is
//! started through `local-agent supervise` (see [`crate::supervise`]), which
//! writes the exit file even when the node agent is gone, and kills the task
//! if the node agent stays gone longer than its lease. After a restart the
//! node agent reads the directories back: running tasks are adopted,
//! finished ones reported. A task the node stopped for its own reasons (the
//! fence, its shutdown) is marked on disk, so that it is reported lost, not
//! failed, even after a restart.
//!
//! # Isolation
//! Each task runs as the user [`RunAs`] gives it (with `dynamic`, a uid of
//! its own from [`UidPool`], given back once its supervisor has exited),
//! in a directory only that user can enter, with an environment of its own
//! (nothing of the node agent's but `PATH`), under the limits of the
//! node's [`Limits`] mechanism.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sched_proto::pb;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::task::TaskTracker;

use super::dirs::{self, read_end, Meta, Swept, EXIT_FILE, LOST_FILE, META_FILE, TASKS_DIR};
use super::gpus::gpu_env;
use super::run_as::{Identity, RunAs, UidClaims, UidPool};
use super::NodeConfig;
use crate::error::AgentError;
use crate::limits::Limits;

/// The `PATH` tasks get when the node agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long old directories are kept when the local agent does not say.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct Entry {
    /// Unique in this node agent's life. It tells an entry from a later
    /// one of the same job, index and attempt (the job forgotten, then
    /// started again), so that the old process's exit cannot end the new
    /// task.
    id: u64,
    attempt: u64,
    machine: String,
    state: pb::TaskState,
    exit_code: Option<i32>,
    /// Why it ended so, when the exit code does not say it all.
    reason: String,
    /// The supervisor's pid while running.
    pid: Option<u32>,
    /// `None` for hollow tasks.
    dir: Option<PathBuf>,
    /// Stops a hollow task.
    hollow_stop: Option<tokio_util::sync::CancellationToken>,
    /// Stopped by the node itself (the fence, its shutdown): it ends lost,
    /// whatever its exit code.
    lost: bool,
}

impl Entry {
    /// Asks the task to stop: the supervisor forwards SIGTERM to the task's
    /// group and escalates to SIGKILL after its grace period.
    fn signal_stop(&self) {
        if let Some(stop) = &self.hollow_stop {
            stop.cancel();
        }
        if let Some(pid) = self.pid {
            let _ =
                sched_proto::process::signal_pid(pid, sched_proto::process::Signal::SIGTERM, false);
        }
    }
}

pub struct Tasks {
    work_dir: PathBuf,
    lease_file: PathBuf,
    lease: Duration,
    supervisor: PathBuf,
    hollow: Option<Duration>,
    report: UnboundedSender<pb::NodeTask>,
    run_as: RunAs,
    /// With `--run-as dynamic`: the uids in use, and their claims.
    uids: Mutex<UidPool>,
    claims: Option<UidClaims>,
    limits: Limits,
    entries: Mutex<BTreeMap<(String, u32), Entry>>,
    next_id: AtomicU64,
    /// How long old directories are kept, in milliseconds.
    retention_ms: AtomicU64,
    /// Wakes the sweep when the retention changes.
    retention_changed: tokio::sync::Notify,
    waiters: TaskTracker,
    shutting_down: AtomicBool,
    /// Each machine's GPU device count: a start naming a device the
    /// machine does not have is refused, not run on the wrong one.
    gpu_devices: BTreeMap<String, u32>,
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
            run_as: config.run_as.clone(),
            uids: Mutex::new(UidPool::new(match config.run_as {
                RunAs::Dynamic(range) => range,
                _ => super::run_as::DEFAULT_UID_RANGE,
            })),
            claims: match (&config.run_as, config.hollow) {
                (RunAs::Dynamic(_), None) => Some(
                    UidClaims::open()
                        .map_err(|e| AgentError::io("the claims on dynamic uids", e))?,
                ),
                _ => None,
            },
            limits: config.limits.clone(),
            entries: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            retention_ms: AtomicU64::new(DEFAULT_RETENTION.as_millis() as u64),
            retention_changed: tokio::sync::Notify::new(),
            waiters: TaskTracker::new(),
            shutting_down: AtomicBool::new(false),
            // A machine started with `--gpu Q` (no `--gpus N`) has its
            // devices modelled from the capacity, as the local agent does:
            // the whole devices that cover it.
            gpu_devices: config
                .machines
                .iter()
                .map(|m| {
                    let modelled = m
                        .capacity
                        .get(sched_core::resources::ResourceKind::Gpu)
                        .div_ceil(1000);
                    let modelled = u32::try_from(modelled).unwrap_or(u32::MAX);
                    (m.name.clone(), m.gpu_devices.max(modelled))
                })
                .collect(),
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

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sets how long old directories are kept, as the local agent said at
    /// registration (0: it did not say; [`DEFAULT_RETENTION`]).
    pub fn set_retention_ms(&self, ms: u64) {
        let ms = if ms == 0 {
            DEFAULT_RETENTION.as_millis() as u64
        } else {
            ms
        };
        if self.retention_ms.swap(ms, Ordering::Relaxed) != ms {
            self.retention_changed.notify_one();
        }
    }

    pub fn retention(&self) -> Duration {
        Duration::from_millis(self.retention_ms.load(Ordering::Relaxed))
    }

    /// Waits until the retention changes.
    pub async fn retention_changed(&self) {
        self.retention_changed.notified().await;
    }

    pub fn renew_lease(&self) {
        if let Err(e) = dirs::touch_lease(&self.lease_file) {
            tracing::error!(cause = %e, "cannot renew the task lease");
        }
    }

    /// Reads back task directories after a restart.
    fn recover(self: &Arc<Self>) -> Result<(), AgentError> {
        // Only `tasks/`: deleted jobs in the trash are never adopted.
        let root = self.work_dir.join(TASKS_DIR);
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
                let latest = dirs::attempts(&index.path())
                    .map_err(|e| AgentError::io(index.path().display().to_string(), e))?
                    .last()
                    .map(|(n, _)| *n);
                let Some(attempt) = latest else { continue };
                let dir = index.path().join(attempt.to_string());
                let Some(meta) = dirs::read_meta(&dir) else {
                    continue;
                };
                let lost = dir.join(LOST_FILE).exists();
                let (state, exit_code, reason, pid) = match read_end(&dir) {
                    Some((code, reason)) if lost => (pb::TaskState::Lost, Some(code), reason, None),
                    Some((code, reason)) => (final_state(code), Some(code), reason, None),
                    None if dirs::supervises(meta.pid, &dir) => {
                        (pb::TaskState::Running, None, String::new(), Some(meta.pid))
                    }
                    // The supervisor died without writing an exit code:
                    // the machine went down under it.
                    None => (pb::TaskState::Lost, None, String::new(), None),
                };
                // A running task keeps its dynamic uid until it ends.
                let uid = match (pid, meta.uid) {
                    (Some(_), Some(uid)) => {
                        if !self.uid_pool().reserve(uid) {
                            tracing::warn!(job = %job_name, index = i, uid, "a task found running has a uid outside the range, or in use twice");
                        }
                        Some(uid)
                    }
                    _ => None,
                };
                tracing::info!(job = %job_name, index = i, attempt, state = ?state, "task found after restart");
                let id = self.next_id();
                self.lock().insert(
                    (job_name.clone(), i),
                    Entry {
                        id,
                        attempt,
                        machine: meta.machine,
                        state,
                        exit_code,
                        reason,
                        pid,
                        dir: Some(dir.clone()),
                        hollow_stop: None,
                        lost,
                    },
                );
                if let Some(pid) = pid {
                    self.adopt(job_name.clone(), i, id, pid, dir, uid);
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
        let dir = dirs::attempt_dir(&self.work_dir, &s.job, s.index, s.attempt);
        let identity = self.identity();
        let spawned = identity.and_then(|(identity, uid)| {
            self.spawn(&s, &dir, identity, uid)
                .inspect_err(|_| self.give_back(uid, &dir, std::process::id()))
                .map(|child| (child, uid))
        });
        match spawned {
            Ok((child, uid)) => {
                let pid = child.id().unwrap_or_default();
                let id = self.next_id();
                let entry = Entry {
                    id,
                    attempt: s.attempt,
                    machine: s.machine.clone(),
                    state: pb::TaskState::Running,
                    exit_code: None,
                    reason: String::new(),
                    pid: Some(pid),
                    dir: Some(dir.clone()),
                    hollow_stop: None,
                    lost: false,
                };
                let _ = self.report.send(node_task(&s.job, s.index, &entry));
                self.lock().insert(key, entry);
                crate::metrics::node().started(crate::metrics::Start::Started);
                tracing::info!(job = %s.job, index = s.index, attempt = s.attempt, machine = %s.machine, pid, "task started");
                // Only now that the entry is in: a task that exits at once
                // must find it, or its exit would go unreported.
                self.wait_for(child, s.job, s.index, id, dir, uid);
            }
            Err(e) => {
                tracing::warn!(job = %s.job, index = s.index, cause = %e, "task did not start");
                let reason = format!("the task could not start: {e}");
                let _ = dirs::make_attempt_dir(&self.work_dir, &s.job, s.index, s.attempt, None);
                let _ = dirs::write_atomic(
                    &dir.join("stderr"),
                    format!("{reason}\n").as_bytes(),
                    dirs::PRIVATE_FILE_MODE,
                );
                let _ = dirs::write_atomic(&dir.join(EXIT_FILE), b"127", dirs::PRIVATE_FILE_MODE);
                let entry = Entry {
                    id: self.next_id(),
                    attempt: s.attempt,
                    machine: s.machine.clone(),
                    state: pb::TaskState::Failed,
                    exit_code: Some(127),
                    reason: String::new(),
                    pid: None,
                    dir: Some(dir),
                    hollow_stop: None,
                    lost: false,
                };
                let _ = self.report.send(node_task(&s.job, s.index, &entry));
                self.lock().insert(key, entry);
                crate::metrics::node().started(crate::metrics::Start::Refused);
            }
        }
    }

    fn uid_pool(&self) -> std::sync::MutexGuard<'_, UidPool> {
        // A set of numbers changed in one step per call.
        self.uids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Who the next task runs as (`None`: the node agent's own user, no
    /// switch), and the dynamic uid taken for it, if it is one.
    fn identity(&self) -> Result<(Option<Identity>, Option<u32>), AgentError> {
        match &self.run_as {
            RunAs::Dynamic(range) => {
                let me = std::process::id();
                let claims = self.claims.as_ref();
                let uid = self
                    .uid_pool()
                    .take(|uid| claims.is_some_and(|c| c.claim(uid, me)))
                    .ok_or_else(|| AgentError::UidsExhausted(range.to_string()))?;
                Ok((Some(Identity { uid, gid: uid }), Some(uid)))
            }
            RunAs::User { identity, .. } => Ok((Some(*identity), None)),
            RunAs::Myself(_) => Ok((None, None)),
        }
    }

    /// Starts the task's supervisor; [`Tasks::wait_for`] then reports its
    /// exit. The task runs as `identity` (the node agent's user when
    /// `None`); `dynamic_uid` is its own uid, which no other process uses.
    fn spawn(
        &self,
        s: &pb::TaskStart,
        dir: &Path,
        identity: Option<Identity>,
        dynamic_uid: Option<u32>,
    ) -> Result<tokio::process::Child, AgentError> {
        if s.command.is_empty() {
            return Err(
                sched_core::error::SpecError::new("command", "the job has no command").into(),
            );
        }
        let devices = self.gpu_devices.get(&s.machine).copied().unwrap_or(0);
        super::gpus::check_slots(&s.gpus, devices)
            .map_err(|why| sched_core::error::SpecError::new("gpus", why))?;
        let io = |what: &str, e| AgentError::io(format!("{what} in {}", dir.display()), e);
        dirs::make_attempt_dir(&self.work_dir, &s.job, s.index, s.attempt, identity)
            .map_err(|e| io("the task directory", e))?;
        let stdout =
            dirs::create_output(&dir.join("stdout"), identity).map_err(|e| io("stdout", e))?;
        let stderr =
            dirs::create_output(&dir.join("stderr"), identity).map_err(|e| io("stderr", e))?;
        let mut cmd = std::process::Command::new(&self.supervisor);
        cmd.arg("supervise")
            .arg("--lease")
            .arg(&self.lease_file)
            .arg("--lease-ms")
            .arg(self.lease.as_millis().to_string())
            // Relative to the supervisor's working directory, the attempt's
            // own: when a forgotten job's directory moves to the trash, the
            // exit code follows it, and never lands in the directory of a
            // new task with the same job, index and attempt.
            .arg("--exit-file")
            .arg(EXIT_FILE);
        if let Some(i) = identity {
            cmd.args(["--uid", &i.uid.to_string(), "--gid", &i.gid.to_string()]);
        }
        if dynamic_uid.is_some() {
            cmd.arg("--sole-user");
        }
        let request = s.request.unwrap_or_default();
        if request.memory_bytes > 0 || request.cpu_millis > 0 {
            cmd.args(["--limits", self.limits.mechanism.arg()])
                .args(["--memory-bytes", &request.memory_bytes.to_string()])
                .args(["--cpu-millis", &request.cpu_millis.to_string()]);
            if let Some(parent) = &self.limits.parent {
                cmd.arg("--cgroup-parent").arg(parent);
            }
        }
        // Nothing of the node agent's environment (credentials, tokens)
        // reaches the task but where to find programs.
        let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
        let home = std::path::absolute(dir).map_err(|e| io("the task directory", e))?;
        cmd.arg("--")
            .args(&s.command)
            .current_dir(dir)
            .env_clear()
            .env("PATH", path)
            .env("HOME", home)
            .env("SCHED_JOB", &s.job)
            .env("SCHED_TASK_INDEX", s.index.to_string())
            .env("SCHED_CLUSTER", &s.cluster)
            .env("SCHED_MACHINE", &s.machine)
            .env("SCHED_ATTEMPT", s.attempt.to_string())
            .envs(gpu_env(&s.gpus))
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
        if let (Some(uid), Some(claims)) = (dynamic_uid, &self.claims) {
            // The supervisor holds the uid now: if the node agent dies, the
            // uid stays taken as long as the task runs.
            claims
                .hand_to(uid, pid)
                .map_err(|e| io("the claim on its uid", e))?;
        }
        let meta = Meta {
            machine: s.machine.clone(),
            pid,
            uid: dynamic_uid,
        };
        let meta = serde_json::to_vec(&meta).expect("task metadata serializes");
        dirs::write_atomic(&dir.join(META_FILE), &meta, 0o644).map_err(|e| io(META_FILE, e))?;
        Ok(child)
    }

    /// Gives a dynamic uid back once `holder`, the supervisor of its task,
    /// has exited (or the node agent itself, when the task did not start).
    /// The supervisor killed the task's strays and took its directory back;
    /// if it was killed before it could (no exit file), that is done here,
    /// so that the next task of that uid finds nothing of this one.
    fn give_back(&self, uid: Option<u32>, dir: &Path, holder: u32) {
        let (Some(uid), Some(claims)) = (uid, &self.claims) else {
            return;
        };
        let still_held = claims.holder(uid) == Some(holder);
        if still_held && read_end(dir).is_none() {
            crate::supervise::kill_user(uid);
        }
        if dir.exists() {
            if let Err(e) = dirs::reclaim(dir) {
                tracing::warn!(dir = %dir.display(), cause = %e, "cannot take an ended task's directory back");
            }
        }
        self.uid_pool().give_back(uid);
        claims.release(uid, holder);
    }

    /// Reports the task's end when its supervisor exits.
    fn wait_for(
        self: &Arc<Self>,
        mut child: tokio::process::Child,
        job: String,
        index: u32,
        id: u64,
        dir: PathBuf,
        uid: Option<u32>,
    ) {
        let this = self.clone();
        let pid = child.id().unwrap_or_default();
        self.waiters.spawn(async move {
            let _ = child.wait().await;
            // Whether or not the task is still known (its job may have
            // been forgotten), its uid is free again.
            this.give_back(uid, &dir, pid);
            this.finish(&job, index, id, &dir);
        });
    }

    /// Polls a process that is not our child (found after a restart).
    fn adopt(
        self: &Arc<Self>,
        job: String,
        index: u32,
        id: u64,
        pid: u32,
        dir: PathBuf,
        uid: Option<u32>,
    ) {
        crate::metrics::node().adopted();
        let this = self.clone();
        self.waiters.spawn(async move {
            while dirs::alive(pid) {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            this.give_back(uid, &dir, pid);
            this.finish(&job, index, id, &dir);
        });
    }

    /// Records the end of entry `id`; nothing if it is no longer the task's
    /// entry (a later attempt, or its job was forgotten).
    fn finish(&self, job: &str, index: u32, id: u64, dir: &Path) {
        crate::metrics::node().running_tasks.dec();
        let (code, reason) = read_end(dir).map_or((None, String::new()), |(c, r)| (Some(c), r));
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(&(job.to_string(), index)) else {
            return;
        };
        if e.id != id {
            return;
        }
        e.pid = None;
        e.exit_code = code;
        e.reason = reason;
        e.state = match code {
            _ if e.lost || self.shutting_down.load(Ordering::SeqCst) => pb::TaskState::Lost,
            Some(c) => final_state(c),
            None => pb::TaskState::Lost,
        };
        crate::metrics::node().exited(e.state);
        let attempt = e.attempt;
        tracing::info!(job, index, attempt, exit_code = ?code, state = ?e.state, reason = %e.reason, "task exited");
        let _ = self.report.send(node_task(job, index, e));
    }

    fn start_hollow(self: &Arc<Self>, s: pb::TaskStart, default: Duration) {
        let duration = hollow_duration(&s.command, default);
        let stop = tokio_util::sync::CancellationToken::new();
        let id = self.next_id();
        let entry = Entry {
            id,
            attempt: s.attempt,
            machine: s.machine.clone(),
            state: pb::TaskState::Running,
            exit_code: None,
            reason: String::new(),
            pid: None,
            dir: None,
            hollow_stop: Some(stop.clone()),
            lost: false,
        };
        let _ = self.report.send(node_task(&s.job, s.index, &entry));
        self.lock().insert((s.job.clone(), s.index), entry);
        crate::metrics::node().started(crate::metrics::Start::Started);
        let this = self.clone();
        self.waiters.spawn(async move {
            let code = tokio::select! {
                _ = tokio::time::sleep(duration) => 0,
                _ = stop.cancelled() => 143,
            };
            this.finish_hollow(&s.job, s.index, id, code);
        });
    }

    fn finish_hollow(&self, job: &str, index: u32, id: u64, code: i32) {
        crate::metrics::node().running_tasks.dec();
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(&(job.to_string(), index)) else {
            return;
        };
        if e.id != id {
            return;
        }
        e.hollow_stop = None;
        e.exit_code = Some(code);
        e.state = if e.lost || self.shutting_down.load(Ordering::SeqCst) {
            pb::TaskState::Lost
        } else {
            final_state(code)
        };
        crate::metrics::node().exited(e.state);
        let _ = self.report.send(node_task(job, index, e));
    }

    /// Stops a task (its job was cancelled, or it was moved).
    pub fn stop(&self, job: &str, index: u32) {
        if let Some(e) = self.lock().get(&(job.to_string(), index)) {
            e.signal_stop();
        }
    }

    /// Stops every running task for the node's own reasons (the fence, its
    /// shutdown): each ends lost, and says so on disk for a restart.
    /// Returns how many it stopped.
    pub fn stop_all_lost(&self) -> usize {
        let mut entries = self.lock();
        let mut stopped = 0;
        for e in entries.values_mut() {
            if e.state != pb::TaskState::Running {
                continue;
            }
            e.lost = true;
            if let Some(dir) = &e.dir {
                // Before the signal, so that a restart in between finds it.
                if let Err(err) = dirs::write_atomic(&dir.join(LOST_FILE), b"", 0o644) {
                    tracing::warn!(dir = %dir.display(), cause = %err, "cannot mark a stopped task lost");
                }
            }
            e.signal_stop();
            stopped += 1;
        }
        stopped
    }

    /// Stops every task and waits up to `grace` for them to exit.
    pub async fn stop_all(&self, grace: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.stop_all_lost();
        self.waiters.close();
        let _ = tokio::time::timeout(grace, self.waiters.wait()).await;
    }

    /// A deleted job: stops its tasks, forgets them (a later start of the
    /// same name is a new task, whatever its attempt), so its output is no
    /// longer served, and moves its directory to the trash at once, so a
    /// new job of the same name starts in a fresh one. [`dirs::sweep`]
    /// removes the trash after the retention.
    pub fn forget(&self, job: &str) {
        // The name becomes a path: nothing but a job name may reach it.
        if let Err(e) = sched_core::names::check_name("forget_jobs", job) {
            tracing::warn!(cause = %e, "not a job name; nothing forgotten");
            return;
        }
        let gone: Vec<Entry> = {
            let mut entries = self.lock();
            let keys: Vec<(String, u32)> = entries
                .range((job.to_string(), 0)..=(job.to_string(), u32::MAX))
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| entries.remove(k)).collect()
        };
        let running = gone.iter().filter(|e| e.state == pb::TaskState::Running);
        let running = running.map(Entry::signal_stop).count();
        match dirs::move_to_trash(&self.work_dir, job, dirs::unix_ms(SystemTime::now())) {
            Ok(Some(to)) => {
                tracing::info!(job, tasks = gone.len(), running, trash = %to.display(), "job forgotten")
            }
            Ok(None) => tracing::info!(job, tasks = gone.len(), running, "job forgotten"),
            Err(e) => {
                tracing::warn!(job, tasks = gone.len(), running, cause = %e, "job forgotten, but its directory could not move to the trash")
            }
        }
    }

    /// Removes old directories (see [`dirs::sweep`]) with this node's
    /// retention.
    pub fn sweep(&self) -> Swept {
        dirs::sweep(&self.work_dir, self.retention(), SystemTime::now())
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
        reason: e.reason.clone(),
    }
}

#[cfg(test)]
mod tests {
    //! Forget and the fence over hollow tasks. The sweep and the trash:
    //! [`super::super::dirs`]. Real processes: `tests/tasks.rs`,
    //! `tests/node_lifecycle.rs`.

    use super::super::dirs::tests::{attempt, exists, DEAD};
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn hollow(
        work: &Path,
    ) -> (
        Arc<Tasks>,
        tokio::sync::mpsc::UnboundedReceiver<pb::NodeTask>,
    ) {
        let config = NodeConfig {
            agent: String::new(),
            name: "n1".into(),
            machines: Vec::new(),
            work_dir: work.to_path_buf(),
            hollow: Some(HOUR),
            lease: Duration::from_secs(60),
            listen: String::new(),
            advertise: None,
            supervisor: PathBuf::new(),
            tls: None,
            insecure: false,
            run_as: RunAs::Myself(dirs::own_identity()),
            limits: Limits::rlimits(),
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Tasks::new(&config, tx).unwrap(), rx)
    }

    fn start(job: &str, attempt: u64) -> pb::TaskStart {
        pb::TaskStart {
            job: job.into(),
            index: 0,
            machine: "m1".into(),
            command: vec!["sleep".into(), "3600".into()],
            request: None,
            attempt,
            cluster: "c1".into(),
            gpus: Vec::new(),
        }
    }

    async fn next_state(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<pb::NodeTask>,
    ) -> (String, pb::TaskState) {
        let t = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a report")
            .expect("the channel is open");
        (t.job, pb::TaskState::try_from(t.state).unwrap())
    }

    #[tokio::test]
    async fn a_fenced_hollow_task_is_reported_lost() {
        let work = tempfile::tempdir().unwrap();
        let (tasks, mut rx) = hollow(work.path());
        tasks.start(start("j", 1));
        assert_eq!(
            next_state(&mut rx).await,
            ("j".into(), pb::TaskState::Running)
        );
        assert_eq!(tasks.stop_all_lost(), 1);
        assert_eq!(next_state(&mut rx).await, ("j".into(), pb::TaskState::Lost));
        let known = tasks.known();
        assert_eq!(known.len(), 1);
        assert_eq!(known[0].state, pb::TaskState::Lost as i32);
        // Nothing runs any more: a second fence stops nothing.
        assert_eq!(tasks.stop_all_lost(), 0);
    }

    #[tokio::test]
    async fn after_a_forget_a_start_of_attempt_one_is_a_new_task() {
        let work = tempfile::tempdir().unwrap();
        let (tasks, mut rx) = hollow(work.path());
        tasks.start(start("j", 1));
        tasks.start(start("other", 1));
        assert_eq!(next_state(&mut rx).await.1, pb::TaskState::Running);
        assert_eq!(next_state(&mut rx).await.1, pb::TaskState::Running);

        // Before the forget, a start of a known attempt is a resend.
        tasks.start(start("j", 1));
        assert_eq!(
            next_state(&mut rx).await,
            ("j".into(), pb::TaskState::Running)
        );
        assert_eq!(tasks.known().len(), 2);

        tasks.forget("j");
        assert_eq!(tasks.known().len(), 1, "{:?}", tasks.known());
        // The old task's stop is not reported: the job is gone.
        tasks.start(start("j", 1));
        assert_eq!(
            next_state(&mut rx).await,
            ("j".into(), pb::TaskState::Running)
        );
        // The new task is not ended by the old one's stop.
        tasks.stop("j", 0);
        assert_eq!(
            next_state(&mut rx).await,
            ("j".into(), pb::TaskState::Failed)
        );
        assert!(rx.try_recv().is_err());
        let j: Vec<_> = tasks.known().into_iter().filter(|t| t.job == "j").collect();
        assert_eq!(j.len(), 1);
        assert_eq!(j[0].exit_code, Some(143));
    }

    #[test]
    fn a_name_that_is_not_a_job_name_moves_nothing() {
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        attempt(w, "j", 0, 1, DEAD, Some(0));
        let (tasks, _rx) = hollow(w);
        // As paths, these would move the whole work dir, or part of a job.
        for name in ["..", "j/0", ""] {
            tasks.forget(name);
        }
        assert!(exists(w, "tasks/j/0/1/exit"));
        assert!(!exists(w, "trash"));
    }
}
