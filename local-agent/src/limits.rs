//! How a task's cpu and memory requests are enforced on its node.
//!
//! The node agent picks one mechanism at startup ([`Limits::detect`]), the
//! first that works here:
//! - **cgroup v2** (a unified hierarchy with the memory controller, and a
//!   cgroup the node agent may delegate from): `memory.max` = the memory
//!   request, `cpu.max` from the cpu request;
//! - **cgroup v1 memory** (the v1 memory controller, writable):
//!   `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes`, so that
//!   swap is no way round it) = the memory request; cpu is not limited;
//! - **rlimits**: `RLIMIT_DATA` = the memory request, so that allocations
//!   past it fail; cpu is not limited.
//!
//! With a cgroup, the node agent makes one cgroup of its own,
//! `sched-node-<hash of its work dir>` under its own, and each supervisor
//! one per task under that (`task-<its pid>`, unique among live ones).
//! The supervisor moves itself in, spawns the task (which inherits it),
//! and moves itself back, so that only the task is charged. When the task
//! ends the supervisor kills what is left in it, reads whether the kernel
//! killed it for memory (`oom_kill`), and removes it.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The mechanism in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mechanism {
    #[value(name = "cgroup-v2")]
    CgroupV2,
    #[value(name = "cgroup-v1-memory")]
    CgroupV1Memory,
    Rlimits,
}

impl Mechanism {
    /// As said in the startup line and in a task's reason.
    pub fn describe(self) -> &'static str {
        match self {
            Mechanism::CgroupV2 => "cgroup v2",
            Mechanism::CgroupV1Memory => "cgroup v1 memory",
            Mechanism::Rlimits => "rlimits",
        }
    }

    /// The supervisor's `--limits` value.
    pub fn arg(self) -> &'static str {
        match self {
            Mechanism::CgroupV2 => "cgroup-v2",
            Mechanism::CgroupV1Memory => "cgroup-v1-memory",
            Mechanism::Rlimits => "rlimits",
        }
    }
}

/// A node's limits: the mechanism, and with a cgroup, the node agent's
/// cgroup under which each task gets its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub mechanism: Mechanism,
    pub parent: Option<PathBuf>,
}

impl Limits {
    pub fn rlimits() -> Self {
        Limits {
            mechanism: Mechanism::Rlimits,
            parent: None,
        }
    }

    /// The first mechanism that works here (see the module's doc); sets up
    /// the node agent's cgroup when it is one.
    pub fn detect(work_dir: &Path) -> Self {
        let name = format!(
            "sched-node-{:016x}",
            fnv1a(work_dir.as_os_str().as_encoded_bytes())
        );
        let found = v2_setup(&name)
            .map(|p| (Mechanism::CgroupV2, p))
            .or_else(|| v1_setup(&name).map(|p| (Mechanism::CgroupV1Memory, p)));
        match found {
            Some((mechanism, parent)) => {
                sweep_stale(&parent);
                Limits {
                    mechanism,
                    parent: Some(parent),
                }
            }
            None => Limits::rlimits(),
        }
    }

    /// What the startup line says.
    pub fn describe(&self) -> String {
        match (&self.parent, self.mechanism) {
            (Some(p), Mechanism::CgroupV2) => format!(
                "task limits: cgroup v2 (memory.max and cpu.max per task under {})",
                p.display()
            ),
            (Some(p), _) => format!(
                "task limits: cgroup v1 memory (memory.limit_in_bytes per task under {}; cpu is not limited)",
                p.display()
            ),
            (None, _) => "task limits: rlimits (RLIMIT_DATA = the memory request; cpu is not limited)".to_string(),
        }
    }
}

/// FNV-1a, 64 bits: a short stable name for a work dir.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The mount point of the first mount of type `fstype` whose super options
/// include `option` (any, for `None`), from `/proc/self/mountinfo`.
fn mount_point(fstype: &str, option: Option<&str>) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split_whitespace();
        if right.next()? != fstype {
            return None;
        }
        let supers = right.nth(1).unwrap_or("");
        if option.is_some_and(|o| !supers.split(',').any(|s| s == o)) {
            return None;
        }
        // id parent dev root mountpoint ...; only whole hierarchies (root
        // "/") map a cgroup path onto a directory by joining.
        let mut left = left.split_whitespace();
        let root = left.nth(3)?;
        let point = left.next()?;
        (root == "/").then(|| PathBuf::from(point))
    })
}

/// This process's cgroup path in the v2 hierarchy (`0::/path`), or in the
/// v1 hierarchy of `controller`.
fn own_cgroup(controller: Option<&str>) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match controller {
            None => id == "0" && controllers.is_empty(),
            Some(c) => controllers.split(',').any(|x| x == c),
        };
        matches.then(|| path.to_string())
    })
}

fn join_cgroup(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    // One write(2) per value: the kernel takes a cgroup file's value whole.
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

fn mkdir(path: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

/// The node agent's cgroup under its own in the v2 hierarchy, with the
/// memory (and cpu, when offered) controllers enabled for its children.
/// v2 lets a cgroup hand controllers down only while no process is in it
/// (but at the root), so the node agent first moves itself into a leaf of
/// its own, `sched-agent`, where its supervisors come back to.
fn v2_setup(name: &str) -> Option<PathBuf> {
    let own = join_cgroup(&mount_point("cgroup2", None)?, &own_cgroup(None)?);
    let offered = std::fs::read_to_string(own.join("cgroup.controllers")).ok()?;
    let offered: Vec<&str> = offered.split_whitespace().collect();
    if !offered.contains(&"memory") {
        return None;
    }
    let enable = if offered.contains(&"cpu") {
        "+memory +cpu"
    } else {
        "+memory"
    };
    if write(&own.join("cgroup.subtree_control"), enable).is_err() {
        let leaf = own.join("sched-agent");
        mkdir(&leaf).ok()?;
        write(&leaf.join("cgroup.procs"), &std::process::id().to_string()).ok()?;
        write(&own.join("cgroup.subtree_control"), enable).ok()?;
    }
    let parent = own.join(name);
    mkdir(&parent).ok()?;
    write(&parent.join("cgroup.subtree_control"), enable).ok()?;
    Some(parent)
}

/// The node agent's cgroup under its own in the v1 memory hierarchy.
fn v1_setup(name: &str) -> Option<PathBuf> {
    let own = join_cgroup(
        &mount_point("cgroup", Some("memory"))?,
        &own_cgroup(Some("memory"))?,
    );
    let parent = own.join(name);
    mkdir(&parent).ok()?;
    // Writable, and a memory cgroup.
    let limit = std::fs::read_to_string(parent.join("memory.limit_in_bytes")).ok()?;
    write(&parent.join("memory.limit_in_bytes"), limit.trim()).ok()?;
    Some(parent)
}

/// Removes the empty task cgroups of supervisors gone without cleaning up
/// (killed); a populated one is refused by the kernel and stays.
fn sweep_stale(parent: &Path) {
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with("task-") {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// One task's cgroup, as its supervisor handles it.
#[derive(Debug)]
pub struct TaskCgroup {
    mechanism: Mechanism,
    dir: PathBuf,
    /// The supervisor's own cgroup, where it goes back to.
    home: PathBuf,
}

impl TaskCgroup {
    /// Makes `parent/task-<pid>` with the task's limits. A directory left
    /// by a dead supervisor of the same pid is emptied and taken over.
    pub fn create(
        mechanism: Mechanism,
        parent: &Path,
        memory_bytes: u64,
        cpu_millis: u64,
    ) -> std::io::Result<TaskCgroup> {
        let not_found = || std::io::Error::new(ErrorKind::NotFound, "no cgroup of this process");
        let home = match mechanism {
            Mechanism::CgroupV2 => join_cgroup(
                &mount_point("cgroup2", None).ok_or_else(not_found)?,
                &own_cgroup(None).ok_or_else(not_found)?,
            ),
            Mechanism::CgroupV1Memory => join_cgroup(
                &mount_point("cgroup", Some("memory")).ok_or_else(not_found)?,
                &own_cgroup(Some("memory")).ok_or_else(not_found)?,
            ),
            Mechanism::Rlimits => {
                return Err(std::io::Error::new(
                    ErrorKind::InvalidInput,
                    "rlimits make no cgroup",
                ))
            }
        };
        let cgroup = TaskCgroup {
            mechanism,
            dir: parent.join(format!("task-{}", std::process::id())),
            home,
        };
        mkdir(&cgroup.dir)?;
        cgroup.kill_all();
        let memory = memory_bytes.to_string();
        match mechanism {
            Mechanism::CgroupV2 => {
                write(&cgroup.dir.join("memory.max"), &memory)?;
                // No swapping past the request (absent without swap).
                let _ = write(&cgroup.dir.join("memory.swap.max"), "0");
                if cpu_millis > 0 && cgroup.dir.join("cpu.max").exists() {
                    write(&cgroup.dir.join("cpu.max"), &cpu_max(cpu_millis))?;
                }
            }
            _ => {
                write(&cgroup.dir.join("memory.limit_in_bytes"), &memory)?;
                // Memory plus swap: set after the memory limit, which it
                // may not be below. Absent without swap accounting.
                let _ = write(&cgroup.dir.join("memory.memsw.limit_in_bytes"), &memory);
            }
        }
        Ok(cgroup)
    }

    fn move_self(to: &Path) -> std::io::Result<()> {
        write(&to.join("cgroup.procs"), &std::process::id().to_string())
    }

    /// Moves the supervisor in: what it spawns next is in the cgroup.
    pub fn enter(&self) -> std::io::Result<()> {
        Self::move_self(&self.dir)
    }

    /// Moves the supervisor back where it was.
    pub fn leave(&self) -> std::io::Result<()> {
        Self::move_self(&self.home)
    }

    fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Kills every process left in the cgroup (the task's strays), and
    /// waits up to a second for them to be gone.
    pub fn kill_all(&self) {
        // `cgroup.kill` (v2, Linux 5.14) kills them all at once, forks
        // racing included; else one by one until none is left.
        let _ = write(&self.dir.join("cgroup.kill"), "1");
        for _ in 0..100 {
            let procs = self.procs();
            if procs.is_empty() {
                return;
            }
            for pid in procs {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many times the kernel killed a process of the cgroup for
    /// exceeding its memory limit.
    pub fn oom_kills(&self) -> u64 {
        let field = |file: &str, name: &str| {
            std::fs::read_to_string(self.dir.join(file))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
        };
        match self.mechanism {
            Mechanism::CgroupV2 => field("memory.events", "oom_kill ").unwrap_or(0),
            // `oom_kill` in memory.oom_control since Linux 4.13.
            _ => field("memory.oom_control", "oom_kill ").unwrap_or(0),
        }
    }

    /// Removes the cgroup (empty by now: see [`TaskCgroup::kill_all`]).
    pub fn remove(self) -> std::io::Result<()> {
        let mut last = Ok(());
        for _ in 0..50 {
            last = std::fs::remove_dir(&self.dir);
            if last.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        last
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// `cpu.max` for a cpu request: the quota per 100 ms period, 1000
/// millicores being one whole period; at least 1 ms (the kernel's minimum).
pub fn cpu_max(cpu_millis: u64) -> String {
    const PERIOD_US: u64 = 100_000;
    let quota = (cpu_millis * PERIOD_US / 1000).max(1000);
    format!("{quota} {PERIOD_US}")
}

/// Lowers `RLIMIT_DATA` to `bytes` until dropped, so that a process spawned
/// meanwhile inherits it. As root both limits are lowered (the task cannot
/// raise them back) and restored after; otherwise only the soft one, as an
/// unprivileged process could not raise its hard limit back.
pub struct DataLimit {
    previous: (u64, u64),
}

impl DataLimit {
    pub fn set(bytes: u64) -> nix::Result<DataLimit> {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let previous = getrlimit(Resource::RLIMIT_DATA)?;
        let hard = if nix::unistd::geteuid().is_root() {
            bytes
        } else {
            previous.1
        };
        setrlimit(Resource::RLIMIT_DATA, bytes.min(hard), hard)?;
        Ok(DataLimit { previous })
    }
}

impl Drop for DataLimit {
    fn drop(&mut self) {
        let (soft, hard) = self.previous;
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_DATA, soft, hard);
    }
}

/// The reason a task killed for memory ends with.
pub fn oom_reason(memory_bytes: u64, mechanism: Mechanism) -> String {
    format!(
        "killed for exceeding its memory request of {} ({})",
        bytes_text(memory_bytes),
        mechanism.describe()
    )
}

/// Bytes in the largest binary unit that divides them (`64Mi`).
fn bytes_text(bytes: u64) -> String {
    for (unit, shift) in [("Gi", 30), ("Mi", 20), ("Ki", 10)] {
        if bytes > 0 && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_gives_the_quota_per_100ms_period() {
        // 500m: half of each 100 ms period, 50 000 µs.
        assert_eq!(cpu_max(500), "50000 100000");
        // 2 cpus: two periods' worth per period.
        assert_eq!(cpu_max(2000), "200000 100000");
        // 1m would be 100 µs: raised to the kernel's 1000 µs minimum.
        assert_eq!(cpu_max(1), "1000 100000");
    }

    #[test]
    fn reasons_name_the_request_in_binary_units_and_the_mechanism() {
        assert_eq!(
            oom_reason(64 << 20, Mechanism::CgroupV1Memory),
            "killed for exceeding its memory request of 64Mi (cgroup v1 memory)"
        );
        assert_eq!(bytes_text(3 << 30), "3Gi");
        assert_eq!(bytes_text(2048), "2Ki");
        assert_eq!(bytes_text(1536), "1536 bytes");
    }

    #[test]
    fn work_dirs_get_distinct_stable_cgroup_names() {
        assert_eq!(fnv1a(b"/a"), fnv1a(b"/a"));
        assert_ne!(fnv1a(b"/a"), fnv1a(b"/b"));
    }
}
