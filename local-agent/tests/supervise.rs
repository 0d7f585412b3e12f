//! `local-agent supervise`, the parent of every task process.

use std::process::Command;
use std::time::{Duration, Instant};

fn supervise(
    lease: &std::path::Path,
    exit: &std::path::Path,
    lease_ms: u64,
    cmd: &[&str],
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_local-agent"))
        .arg("supervise")
        .arg("--lease")
        .arg(lease)
        .arg("--lease-ms")
        .arg(lease_ms.to_string())
        .arg("--exit-file")
        .arg(exit)
        .arg("--")
        .args(cmd)
        .spawn()
        .unwrap()
}

#[test]
fn the_exit_code_is_written_to_the_exit_file() {
    let dir = tempfile::tempdir().unwrap();
    let lease = dir.path().join("lease");
    std::fs::write(&lease, "").unwrap();
    let exit = dir.path().join("exit");
    let status = supervise(&lease, &exit, 60_000, &["sh", "-c", "exit 7"])
        .wait()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&exit).unwrap(), "7");
}

#[test]
fn a_command_that_cannot_start_fails_with_the_shells_codes() {
    // 127: not found; 126: found but not executable. The task's stderr
    // (the supervisor's) says why.
    let dir = tempfile::tempdir().unwrap();
    let lease = dir.path().join("lease");
    std::fs::write(&lease, "").unwrap();
    let not_executable = dir.path().join("data.txt");
    std::fs::write(&not_executable, "not a program").unwrap();
    for (cmd, code) in [
        ("/no/such/binary", "127"),
        ("slep", "127"),
        (not_executable.to_str().unwrap(), "126"),
    ] {
        let exit = dir.path().join(format!("exit-{code}"));
        let _ = std::fs::remove_file(&exit);
        let out = Command::new(env!("CARGO_BIN_EXE_local-agent"))
            .arg("supervise")
            .arg("--lease")
            .arg(&lease)
            .args(["--lease-ms", "60000"])
            .arg("--exit-file")
            .arg(&exit)
            .args(["--", cmd, "1"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {out:?}");
        assert_eq!(std::fs::read_to_string(&exit).unwrap(), code, "{cmd}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("cannot start"), "{cmd}: {stderr}");
    }
}

#[test]
fn a_stale_lease_kills_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let lease = dir.path().join("lease");
    std::fs::write(&lease, "").unwrap();
    let exit = dir.path().join("exit");
    let start = Instant::now();
    // Nobody renews the lease: after 500 ms the task (a 60 s sleep) is
    // killed with SIGKILL, exit code 128 + 9.
    supervise(&lease, &exit, 500, &["sleep", "60"])
        .wait()
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(20));
    assert_eq!(std::fs::read_to_string(&exit).unwrap(), "137");
}

/// Polls every 10 ms until `path` exists; panics after 20 s.
fn wait_for_file(path: &std::path::Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_reaches_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let lease = dir.path().join("lease");
    std::fs::write(&lease, "").unwrap();
    let exit = dir.path().join("exit");
    let started = dir.path().join("started");
    // The supervisor listens for SIGTERM before it starts the task, so once
    // the task runs a stop is passed on.
    let script = format!("touch '{}'; exec sleep 60", started.display());
    let mut child = supervise(&lease, &exit, 60_000, &["sh", "-c", &script]);
    wait_for_file(&started);
    sched_proto::process::terminate(&child).unwrap();
    child.wait().unwrap();
    assert_eq!(std::fs::read_to_string(&exit).unwrap(), "143");
}
