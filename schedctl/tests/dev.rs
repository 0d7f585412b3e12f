//! `schedctl dev` when its port is taken: another process (another stack,
//! say) already listens on `--listen`. dev must start nothing, so that no
//! agent of it registers with the other stack, and say so in one line.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOPOLOGY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../config/examples/topology.yaml"
);

/// Processes whose environment holds `marker` (`NAME=VALUE`): everything
/// schedctl started inherits it.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Processes that exited, or that are not ours to read, are skipped.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|&b| b == 0).any(|v| v == marker.as_bytes()) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push(format!(
                "{pid}: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    found
}

#[test]
fn a_taken_port_is_one_line_and_starts_nothing() {
    let other_stack = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = other_stack.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let stack_dir = dir.path().join("stack");
    let marker = format!("SCHED_DEV_TEST_MARKER={}-{port}", std::process::id());
    let (key, value) = marker.split_once('=').unwrap();

    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_schedctl"))
        .args(["dev", "--topology", TOPOLOGY, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--dir")
        .arg(&stack_dir)
        .env(key, value)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It must give up at once, not after a start-up timeout.
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            panic!("schedctl dev still running after 10 s with its port taken");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status {}", out.status);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].contains(&port.to_string()),
        "the error does not name port {port}: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Nothing started: no process carries the marker it would inherit, and
    // not even the log directory was made.
    let left = processes_with(&marker);
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    assert!(
        !Path::new(&stack_dir).exists(),
        "{} was created",
        stack_dir.display()
    );
    // The other stack's listener was not disturbed.
    drop(other_stack);
}
