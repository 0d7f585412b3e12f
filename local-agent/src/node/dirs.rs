//! The task directories on a node's disk, and their removal.
//!
//! # Layout
//! ```text
//! WORK/
//!   lease                          renewed by the node agent; see crate::supervise
//!   tasks/<job>/<index>/<attempt>/ one per attempt of a task
//!     stdout, stderr               the task's output
//!     meta.json                    the machine, the supervisor's pid
//!     exit                         its exit code (128+N when killed by signal
//!                                  N), written by the supervisor once it ended
//!     lost                         the node stopped it for its own reasons (the
//!                                  fence, its shutdown): it ends lost, not failed
//!   trash/<job>.<unix_ms>/         a deleted job's `tasks/<job>`, as it was
//! ```
//! After a restart the node agent reads `tasks/` back (the latest attempt
//! of each task; see [`super::tasks`]), never `trash/`. A deleted job's
//! directory moves to the trash at once (`move_to_trash`), so that a new
//! job of the same name starts in a fresh one and the old supervisors'
//! exit files, written relative to their own directory, follow the old one.
//!
//! # Retention
//! [`sweep`], every [`sweep_every`] of the retention the local agent gives
//! (else [`DEFAULT_RETENTION`](super::tasks::DEFAULT_RETENTION)), removes
//! what is older than the retention:
//! - trash entries, by the time in their name;
//! - attempts of a task other than its latest whose process has ended, by
//!   the time of their exit file (else of the directory).
//!
//! A task's latest attempt is kept whatever its age, and so is an attempt
//! whose process still runs: they go with their job's trash.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Where the tasks' directories are, under the work dir.
pub(super) const TASKS_DIR: &str = "tasks";
/// Where deleted jobs' directories wait for [`sweep`].
pub(super) const TRASH_DIR: &str = "trash";
/// The exit code file in an attempt's directory.
pub(super) const EXIT_FILE: &str = "exit";
/// Marks an attempt the node stopped for its own reasons: it ends lost.
pub(super) const LOST_FILE: &str = "lost";
/// An attempt's [`Meta`].
pub(super) const META_FILE: &str = "meta.json";

/// What `meta.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Meta {
    pub(super) machine: String,
    /// The supervisor's.
    pub(super) pid: u32,
}

/// An attempt's [`Meta`], if it has a readable one.
pub(super) fn read_meta(dir: &Path) -> Option<Meta> {
    std::fs::read(dir.join(META_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// An attempt's exit code, once it has ended.
pub(super) fn read_exit(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join(EXIT_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Whether process `pid` runs (a zombie does not).
pub(super) fn alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; its state letter is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// `WORK/tasks/<job>/<index>/<attempt>`.
pub(super) fn attempt_dir(work_dir: &Path, job: &str, index: u32, attempt: u64) -> PathBuf {
    work_dir
        .join(TASKS_DIR)
        .join(job)
        .join(index.to_string())
        .join(attempt.to_string())
}

/// The attempts in a task's directory, `WORK/tasks/<job>/<index>`, by
/// number, lowest first; entries not named by a number are not attempts.
pub(super) fn attempts(index_dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut attempts: Vec<(u64, PathBuf)> = std::fs::read_dir(index_dir)?
        .flatten()
        .filter_map(|a| {
            let n = a.file_name().to_string_lossy().parse::<u64>().ok()?;
            Some((n, a.path()))
        })
        .collect();
    attempts.sort();
    Ok(attempts)
}

pub(super) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Renames `WORK/tasks/<job>` to `WORK/trash/<job>.<now_ms>`, or to the
/// next free millisecond; `None` when the job has no directory.
pub(super) fn move_to_trash(
    work_dir: &Path,
    job: &str,
    now_ms: u64,
) -> std::io::Result<Option<PathBuf>> {
    let from = work_dir.join(TASKS_DIR).join(job);
    if std::fs::symlink_metadata(&from).is_err() {
        return Ok(None);
    }
    let trash = work_dir.join(TRASH_DIR);
    std::fs::create_dir_all(&trash)?;
    // Only this process writes the trash, and forgets run one at a time,
    // so a name found free stays free until the rename.
    let mut ms = now_ms;
    loop {
        let to = trash.join(format!("{job}.{ms}"));
        if std::fs::symlink_metadata(&to).is_err() {
            std::fs::rename(&from, &to)?;
            return Ok(Some(to));
        }
        ms += 1;
    }
}

/// What a [`sweep`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub trash: Vec<PathBuf>,
    pub attempts: Vec<PathBuf>,
}

/// How often to sweep for a retention: a directory outlives its retention
/// by at most this. A minute is nothing against the default hour; at least
/// a second, so that a tiny retention (tests) does not turn the walk into a
/// busy loop.
pub fn sweep_every(retention: Duration) -> Duration {
    retention.clamp(Duration::from_secs(1), Duration::from_secs(60))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn older_than(t: Option<SystemTime>, retention: Duration, now: SystemTime) -> bool {
    t.and_then(|t| now.duration_since(t).ok())
        .is_some_and(|age| age > retention)
}

/// Removes what is older than `retention` at `now`:
/// - trash entries, by the time in their name (`<job>.<unix_ms>`);
/// - attempt directories of a task other than its latest whose process
///   has ended, by the time of their exit file (else of the directory).
///
/// It reads three levels of directories and `meta.json` of old attempts
/// without an exit file; it never descends into what it keeps.
pub fn sweep(work_dir: &Path, retention: Duration, now: SystemTime) -> Swept {
    let mut swept = Swept::default();
    let remove =
        |path: PathBuf, what: &str, into: &mut Vec<PathBuf>| match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(dir = %path.display(), what, "removed an old directory");
                into.push(path);
            }
            Err(e) => {
                tracing::warn!(dir = %path.display(), cause = %e, "cannot remove an old directory")
            }
        };
    let entries = |dir: &Path| std::fs::read_dir(dir).into_iter().flatten().flatten();

    for entry in entries(&work_dir.join(TRASH_DIR)) {
        let name = entry.file_name().to_string_lossy().to_string();
        let at = name
            .rsplit_once('.')
            .and_then(|(_, ms)| ms.parse::<u64>().ok())
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
            .or_else(|| modified(&entry.path()));
        if older_than(at, retention, now) {
            remove(entry.path(), "a deleted job's tasks", &mut swept.trash);
        }
    }

    for job in entries(&work_dir.join(TASKS_DIR)) {
        for index in entries(&job.path()) {
            let mut attempts = attempts(&index.path()).unwrap_or_default();
            // The latest stays whatever its age: it is the task.
            attempts.pop();
            for (_, dir) in attempts {
                let ended_at = modified(&dir.join(EXIT_FILE));
                let ended = ended_at.is_some() || !read_meta(&dir).is_some_and(|m| alive(m.pid));
                if ended && older_than(ended_at.or_else(|| modified(&dir)), retention, now) {
                    remove(dir, "an older attempt", &mut swept.attempts);
                }
            }
        }
    }
    swept
}

#[cfg(test)]
pub(super) mod tests {
    //! The sweep and the trash over directories made by hand in a temp
    //! dir, at a chosen "now". The fixtures serve [`super::super::tasks`]'
    //! tests too.

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    /// No process has this pid: Linux's pid_max is at most 2^22.
    pub(in crate::node) const DEAD: u32 = u32::MAX - 1;

    /// An attempt's directory: `meta.json` with `pid`, and `exit` if given.
    pub(in crate::node) fn attempt(
        work: &Path,
        job: &str,
        index: u32,
        attempt: u64,
        pid: u32,
        exit: Option<i32>,
    ) {
        let dir = attempt_dir(work, job, index, attempt);
        std::fs::create_dir_all(&dir).unwrap();
        let meta = Meta {
            machine: "m1".into(),
            pid,
        };
        std::fs::write(dir.join(META_FILE), serde_json::to_vec(&meta).unwrap()).unwrap();
        if let Some(code) = exit {
            std::fs::write(dir.join(EXIT_FILE), code.to_string()).unwrap();
        }
    }

    pub(in crate::node) fn exists(work: &Path, rel: &str) -> bool {
        work.join(rel).exists()
    }

    #[test]
    fn the_sweep_removes_trash_older_than_the_retention() {
        let work = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let ms = unix_ms(now);
        for name in [
            format!("old.{}", ms - 2 * 3_600_000),
            format!("young.{}", ms - 60_000),
        ] {
            std::fs::create_dir_all(work.path().join(TRASH_DIR).join(name).join("0/1")).unwrap();
        }
        let swept = sweep(work.path(), HOUR, now);
        assert_eq!(
            swept.trash,
            [work
                .path()
                .join(TRASH_DIR)
                .join(format!("old.{}", ms - 2 * 3_600_000))]
        );
        assert!(swept.attempts.is_empty());
        assert!(exists(work.path(), &format!("trash/young.{}", ms - 60_000)));
    }

    #[test]
    fn the_sweep_removes_old_ended_attempts_but_never_the_latest_or_a_running_one() {
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        attempt(w, "j", 0, 1, DEAD, Some(1)); // ended
        attempt(w, "j", 0, 2, std::process::id(), None); // still running
        attempt(w, "j", 0, 3, DEAD, None); // ended without an exit file
        attempt(w, "j", 0, 10, DEAD, Some(0)); // latest (10 > 3, numerically)
        attempt(w, "j", 1, 1, DEAD, Some(0)); // the only one: latest
        attempt(w, "k", 0, 4, DEAD, Some(0)); // latest

        // Everything is younger than the retention: nothing goes.
        assert_eq!(sweep(w, HOUR, SystemTime::now()), Swept::default());

        let later = SystemTime::now() + 2 * HOUR;
        let swept = sweep(w, HOUR, later);
        let mut removed = swept.attempts.clone();
        removed.sort();
        assert_eq!(
            removed,
            [w.join("tasks/j/0/1"), w.join("tasks/j/0/3")],
            "{swept:?}"
        );
        for kept in ["tasks/j/0/2", "tasks/j/0/10", "tasks/j/1/1", "tasks/k/0/4"] {
            assert!(exists(w, kept), "{kept} was removed");
        }
        // A second sweep finds nothing more.
        assert_eq!(sweep(w, HOUR, later), Swept::default());
    }

    #[test]
    fn a_job_forgotten_twice_in_one_millisecond_gets_two_trash_entries() {
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        attempt(w, "j", 0, 1, DEAD, Some(0));
        let first = move_to_trash(w, "j", 1_000).unwrap();
        attempt(w, "j", 0, 1, DEAD, Some(0));
        let second = move_to_trash(w, "j", 1_000).unwrap();
        assert_eq!(first, Some(w.join("trash/j.1000")));
        assert_eq!(second, Some(w.join("trash/j.1001")));
        assert!(exists(w, "trash/j.1000/0/1/exit") && exists(w, "trash/j.1001/0/1/exit"));
        assert!(!exists(w, "tasks/j"));
        assert_eq!(move_to_trash(w, "j", 1_000).unwrap(), None);
    }
}
