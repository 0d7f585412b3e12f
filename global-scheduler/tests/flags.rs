//! Flags checked at start: a bad value stops the binary with clap's usage
//! error (exit 2) naming the flag, before anything is started.

use std::process::Command;

fn global_scheduler(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_global-scheduler"))
        .args(args)
        .output()
        .expect("global-scheduler runs")
}

#[test]
fn bad_flag_values_are_refused_naming_the_flag() {
    for (args, flag) in [
        (&["--etcd", "notaurl"][..], "--etcd"),
        (&["--etcd", "http://127.0.0.1:2379,ftp://x:1"][..], "--etcd"),
        (&["--etcd", "http://127.0.0.1"][..], "--etcd"),
        (&["--advertise", "127.0.0.1:7070"][..], "--advertise"),
        (&["--queue", "0"][..], "--queue"),
        (
            &["--heartbeat-timeout-ms", "0"][..],
            "--heartbeat-timeout-ms",
        ),
        (
            &["--heartbeat-interval-ms", "0"][..],
            "--heartbeat-interval-ms",
        ),
        (&["--max-pending-tasks", "0"][..], "--max-pending-tasks"),
    ] {
        let out = global_scheduler(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(flag),
            "{args:?}: the error does not name {flag}: {err}"
        );
    }
}

#[test]
fn log_lines_have_no_colours_when_stderr_is_not_a_terminal() {
    // 192.0.2.1 (TEST-NET-1) is no address of this machine: the bind fails
    // after the first log lines (the in-memory store's warning).
    let out = global_scheduler(&["--listen", "192.0.2.1:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("WARN"), "no log line: {err}");
    assert!(
        !err.contains('\x1b'),
        "ANSI escapes in a redirected log: {err:?}"
    );
}
