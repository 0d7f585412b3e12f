//! Flags checked at start: a bad value stops `local-agent serve` or `node`
//! with clap's usage error (exit 2) naming the flag.

use std::process::Command;

#[test]
fn bad_flag_values_are_refused_naming_the_flag() {
    let serve = ["serve", "--cluster", "c", "--location", "l"];
    let node = ["node", "--name", "n"];
    for (base, extra, flag) in [
        (&serve[..], &["--etcd", "notaurl"][..], "--etcd"),
        (
            &serve[..],
            &["--node-heartbeat-ms", "0"][..],
            "--node-heartbeat-ms",
        ),
        (
            &serve[..],
            &["--machine-timeout-ms", "0"][..],
            "--machine-timeout-ms",
        ),
        (&serve[..], &["--advertise", "x"][..], "--advertise"),
        (&node[..], &["--labels", "=x"][..], "--labels"),
        (&node[..], &["--labels", "zone=a,novalue"][..], "--labels"),
        (&node[..], &["--agent", "127.0.0.1:7080"][..], "--agent"),
        (&node[..], &["--lease-ms", "0"][..], "--lease-ms"),
        (&node[..], &["--hollow", "0"][..], "--hollow"),
        // GPU devices: 1..=64, with a model, not beside --gpu.
        (
            &node[..],
            &["--gpus", "0", "--gpu-model", "T4"][..],
            "--gpus",
        ),
        (
            &node[..],
            &["--gpus", "65", "--gpu-model", "T4"][..],
            "--gpus",
        ),
        (&node[..], &["--gpus", "2"][..], "--gpu-model"),
        (&node[..], &["--gpu-model", "T4"][..], "--gpus"),
        (
            &node[..],
            &["--gpus", "2", "--gpu-model", ""][..],
            "--gpu-model",
        ),
        (
            &node[..],
            &["--gpus", "2", "--gpu-model", "a b"][..],
            "--gpu-model",
        ),
        (
            &node[..],
            &["--gpus", "2", "--gpu-model", "T4", "--gpu", "2"][..],
            "--gpu",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_local-agent"))
            .args(base)
            .args(extra)
            .output()
            .expect("local-agent runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(
            err.contains(flag),
            "{extra:?}: the error does not name {flag}: {err}"
        );
    }
}
