//! The task directories on a node's disk, and their removal.
//!
//! # Layout
//! ```text
//! WORK/                            root's, 0711: tasks may pass, not list or write
//!   lease                          renewed by the node agent; see crate::supervise
//!                                  (root's, 0644: tasks cannot touch it)
//!   tasks/<job>/<index>/           root's, 0711
//!     <attempt>/                   one per attempt of a task: the task's uid's,
//!                                  0700, its HOME; given back to root when it ends
//!       stdout, stderr             the task's output (its uid's, 0600)
//!       meta.json                  the machine, the supervisor's pid, the task's uid
//!       exit                       its exit code (128+N when killed by signal
//!                                  N), and on a second line why, when the code
//!                                  does not say it all; written by the
//!                                  supervisor once it ended
//!       lost                       the node stopped it for its own reasons (the
//!                                  fence, its shutdown): it ends lost, not failed
//!   trash/<job>.<unix_ms>/         a deleted job's `tasks/<job>`, as it was (0700)
//! ```
//! A task's directory is its own while it runs, so a task could plant a
//! symbolic link where the node agent or the supervisor (root) writes or
//! reads: they write by a new name then rename ([`write_atomic`]) and read
//! without following links ([`open_nofollow`]).
//!
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

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::run_as::Identity;

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
    /// The task's dynamic uid, taken until the supervisor has exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) uid: Option<u32>,
}

/// Modes: parents tasks may pass through but not list or write; a task's
/// own directory; files only their owner reads.
pub(crate) const PARENT_MODE: u32 = 0o711;
pub(crate) const PRIVATE_DIR_MODE: u32 = 0o700;
pub(crate) const PRIVATE_FILE_MODE: u32 = 0o600;
/// The lease: the supervisors (root) read it; nobody else may write it.
pub(crate) const LEASE_MODE: u32 = 0o644;

/// Opens `path` for reading, failing if it is a symbolic link (one a task
/// planted in its directory).
pub(crate) fn open_nofollow(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
}

fn read_small(path: &Path) -> Option<String> {
    let mut text = String::new();
    open_nofollow(path)
        .ok()?
        .take(64 * 1024)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Writes `path` whole, by a new name then a rename: a reader never sees
/// half of it, and a link planted at `path` or at the new name is replaced,
/// never followed (the new name is created exclusively).
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    // A leftover (a crash, or a task's plant) would refuse create_new.
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    std::fs::rename(&tmp, path)
}

/// An attempt's [`Meta`], if it has a readable one.
pub(super) fn read_meta(dir: &Path) -> Option<Meta> {
    read_small(&dir.join(META_FILE)).and_then(|t| serde_json::from_str(&t).ok())
}

/// An attempt's exit code and why it ended so (empty when the code says
/// it all), once it has ended.
pub(super) fn read_end(dir: &Path) -> Option<(i32, String)> {
    let text = read_small(&dir.join(EXIT_FILE))?;
    let (code, reason) = text.split_once('\n').unwrap_or((&text, ""));
    Some((code.trim().parse().ok()?, reason.trim().to_string()))
}

/// The exit file's contents: the code, then the reason if any.
pub(crate) fn exit_text(code: i32, reason: &str) -> String {
    if reason.is_empty() {
        code.to_string()
    } else {
        format!("{code}\n{reason}\n")
    }
}

/// Makes `dir` if it is missing, with `mode` (whatever the umask) and, when
/// given, `owner`.
pub(crate) fn ensure_dir(dir: &Path, mode: u32, owner: Option<Identity>) -> std::io::Result<()> {
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        r => r?,
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} is not a directory", dir.display()),
        ));
    }
    if let Some(o) = owner {
        if (meta.uid(), meta.gid()) != (o.uid, o.gid) {
            std::os::unix::fs::lchown(dir, Some(o.uid), Some(o.gid))?;
        }
    }
    if meta.mode() & 0o7777 != mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// The node agent's own identity: what its directories belong to.
pub(crate) fn own_identity() -> Identity {
    Identity::current()
}

/// Makes the work dir private to the node agent but passable (0711, its
/// own), its lease file its own and 0644, and `tasks/` passable. Returns
/// the ancestors a task cannot pass: its HOME cannot be reached by path
/// then (its working directory still is its own).
pub(super) fn secure_work_dir(work_dir: &Path, lease: &Path) -> std::io::Result<Vec<PathBuf>> {
    let me = Some(own_identity());
    std::fs::create_dir_all(work_dir)?;
    ensure_dir(work_dir, PARENT_MODE, me)?;
    ensure_dir(&work_dir.join(TASKS_DIR), PARENT_MODE, me)?;
    // A lease file that is not the agent's own (an old layout, a plant) is
    // made again.
    if let Ok(meta) = std::fs::symlink_metadata(lease) {
        let own = own_identity();
        if !meta.is_file() || meta.uid() != own.uid || meta.mode() & 0o022 != 0 {
            std::fs::remove_file(lease)?;
        }
    }
    let closed = work_dir
        .canonicalize()?
        .ancestors()
        .skip(1)
        .filter(|a| std::fs::metadata(a).is_ok_and(|m| m.mode() & 0o001 == 0))
        .map(Path::to_path_buf)
        .collect();
    Ok(closed)
}

/// Renews the lease: created 0644 and the node agent's own, then only its
/// time changes.
pub(super) fn touch_lease(lease: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(LEASE_MODE)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(lease)
        .map(drop)
}

/// Makes an attempt's directory, `WORK/tasks/<job>/<index>/<attempt>`:
/// its parents the node agent's and 0711, itself `owner`'s (the agent's
/// when `None`) and 0700.
pub(super) fn make_attempt_dir(
    work_dir: &Path,
    job: &str,
    index: u32,
    attempt: u64,
    owner: Option<Identity>,
) -> std::io::Result<PathBuf> {
    let me = Some(own_identity());
    let dir = attempt_dir(work_dir, job, index, attempt);
    let index_dir = dir.parent().expect("an attempt dir has a parent");
    let job_dir = index_dir.parent().expect("an index dir has a parent");
    ensure_dir(&work_dir.join(TASKS_DIR), PARENT_MODE, me)?;
    ensure_dir(job_dir, PARENT_MODE, me)?;
    ensure_dir(index_dir, PARENT_MODE, me)?;
    ensure_dir(&dir, PRIVATE_DIR_MODE, owner.or(me))?;
    Ok(dir)
}

/// Creates (or empties) an output file of an attempt, `owner`'s and 0600.
pub(super) fn create_output(
    path: &Path,
    owner: Option<Identity>,
) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE_MODE)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))?;
    if let Some(o) = owner {
        std::os::unix::fs::fchown(&file, Some(o.uid), Some(o.gid))?;
    }
    Ok(file)
}

/// Gives an ended attempt's directory back to the node agent (0700): its
/// dynamic uid goes to another task next, which must not reach it.
pub(crate) fn reclaim(dir: &Path) -> std::io::Result<()> {
    ensure_dir(dir, PRIVATE_DIR_MODE, Some(own_identity()))
}

/// Whether `pid` is the supervisor of the attempt in `dir`: alive, the
/// node agent's user's, working in `dir`. meta.json is in the task's own
/// directory, so its pid is not trusted alone: a task could name any
/// process there, which the node agent would then signal.
pub(super) fn supervises(pid: u32, dir: &Path) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    alive(pid)
        && std::fs::metadata(&proc).is_ok_and(|m| m.uid() == own_identity().uid)
        && match (std::fs::read_link(proc.join("cwd")), dir.canonicalize()) {
            (Ok(cwd), Ok(dir)) => cwd == dir,
            _ => false,
        }
}

/// Whether process `pid` runs (a zombie does not).
pub(crate) fn alive(pid: u32) -> bool {
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
    ensure_dir(&trash, PRIVATE_DIR_MODE, Some(own_identity()))?;
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
                let ended =
                    ended_at.is_some() || !read_meta(&dir).is_some_and(|m| supervises(m.pid, &dir));
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
            uid: None,
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
                                              // Still running: a process of ours working in its directory, as a
                                              // supervisor does.
        let dir = attempt_dir(w, "j", 0, 2);
        std::fs::create_dir_all(&dir).unwrap();
        let mut running = std::process::Command::new("sleep")
            .arg("600")
            .current_dir(&dir)
            .spawn()
            .unwrap();
        attempt(w, "j", 0, 2, running.id(), None);
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
        running.kill().unwrap();
        running.wait().unwrap();
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

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn an_attempt_dir_is_its_tasks_and_private_and_its_parents_only_passable() {
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        // As root the directory is given to a dynamic uid; otherwise it
        // stays the agent's (no switch without root).
        let root = own_identity().uid == 0;
        let task = Identity {
            uid: 61184,
            gid: 61184,
        };
        let owner = root.then_some(task);
        let dir = make_attempt_dir(w, "j", 0, 1, owner).unwrap();
        assert_eq!(dir, w.join("tasks/j/0/1"));
        for parent in ["tasks", "tasks/j", "tasks/j/0"] {
            assert_eq!(mode(&w.join(parent)), PARENT_MODE, "{parent}");
        }
        assert_eq!(mode(&dir), PRIVATE_DIR_MODE);
        let out = create_output(&dir.join("stdout"), owner).unwrap();
        drop(out);
        assert_eq!(mode(&dir.join("stdout")), PRIVATE_FILE_MODE);
        let want = owner.unwrap_or(own_identity());
        for path in [dir.clone(), dir.join("stdout")] {
            let m = std::fs::metadata(&path).unwrap();
            assert_eq!((m.uid(), m.gid()), (want.uid, want.gid), "{path:?}");
        }
        if !root {
            eprintln!("not root: ownership by a task's uid is not checked");
        }
        // Once the task has ended, the directory is the agent's again.
        reclaim(&dir).unwrap();
        let m = std::fs::metadata(&dir).unwrap();
        assert_eq!(m.uid(), own_identity().uid);
        assert_eq!(mode(&dir), PRIVATE_DIR_MODE);
    }

    #[test]
    fn the_work_dir_and_the_lease_are_the_agents_and_not_writable_by_others() {
        let work = tempfile::tempdir().unwrap();
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let w = work.path().join("node");
        let lease = w.join("lease");
        std::fs::create_dir_all(&w).unwrap();
        std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o777)).unwrap();
        // A lease someone else could write is made again.
        std::fs::write(&lease, "").unwrap();
        std::fs::set_permissions(&lease, std::fs::Permissions::from_mode(0o666)).unwrap();
        let closed = secure_work_dir(&w, &lease).unwrap();
        // The dir above is 0700: tasks cannot pass it.
        assert!(
            closed.contains(&work.path().canonicalize().unwrap()),
            "{closed:?}"
        );
        assert!(!lease.exists());
        touch_lease(&lease).unwrap();
        assert_eq!(mode(&w), PARENT_MODE);
        assert_eq!(mode(&w.join(TASKS_DIR)), PARENT_MODE);
        assert_eq!(mode(&lease) & 0o022, 0, "{:o}", mode(&lease));
    }

    #[test]
    fn links_planted_in_a_task_dir_are_replaced_or_refused_never_followed() {
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        let target = w.join("precious");
        std::fs::write(&target, "keep").unwrap();
        let dir = w.join("task");
        std::fs::create_dir(&dir).unwrap();
        // A task plants links where root writes (the exit file, its temp
        // name) and reads (its output).
        std::os::unix::fs::symlink(&target, dir.join(EXIT_FILE)).unwrap();
        let tmp = format!("{EXIT_FILE}.{}.tmp", std::process::id());
        std::os::unix::fs::symlink(&target, dir.join(tmp)).unwrap();
        std::os::unix::fs::symlink(&target, dir.join("stdout")).unwrap();
        write_atomic(
            &dir.join(EXIT_FILE),
            exit_text(137, "why").as_bytes(),
            0o644,
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(read_end(&dir), Some((137, "why".to_string())));
        assert!(open_nofollow(&dir.join("stdout")).is_err());
    }

    #[test]
    fn the_exit_file_holds_the_code_and_the_reason_if_any() {
        assert_eq!(exit_text(0, ""), "0");
        let work = tempfile::tempdir().unwrap();
        let dir = work.path();
        std::fs::write(dir.join(EXIT_FILE), "7").unwrap();
        assert_eq!(read_end(dir), Some((7, String::new())));
        std::fs::write(dir.join(EXIT_FILE), exit_text(137, "killed for x")).unwrap();
        assert_eq!(read_end(dir), Some((137, "killed for x".to_string())));
    }

    #[test]
    fn a_pid_planted_in_meta_json_is_not_taken_for_a_supervisor() {
        let work = tempfile::tempdir().unwrap();
        let dir = attempt_dir(work.path(), "j", 0, 1);
        std::fs::create_dir_all(&dir).unwrap();
        // pid 1 lives, but does not work in the task's directory.
        assert!(!supervises(1, &dir));
        assert!(!supervises(DEAD, &dir));
    }
}
