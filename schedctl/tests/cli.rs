//! `schedctl` end to end: the real binary on the example files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn schedctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_schedctl"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("schedctl runs")
}

const TOPOLOGY: &str = "config/examples/topology.yaml";

/// Runs `simulate` on the example topology and a job file holding `jobs`.
fn simulate_jobs(jobs: &str, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.yaml");
    std::fs::write(&path, jobs).unwrap();
    let mut args = vec![
        "simulate",
        "--topology",
        TOPOLOGY,
        "--workload",
        path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    schedctl(&args)
}
const JOBS: &str = "config/examples/jobs.yaml";

#[test]
fn simulate_json_has_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("placements.csv");
    let out = schedctl(&[
        "simulate",
        "--topology",
        TOPOLOGY,
        "--workload",
        JOBS,
        "--json",
        "--placements",
        csv.to_str().unwrap(),
        "--explain",
        "web",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in [
        "tasks_total",
        "tasks_placed",
        "tasks_unplaced",
        "machines_total",
        "machines_used",
        "lower_bound_machines",
        "scheduling_seconds",
        "placements_per_second",
        "gpu_milli_total",
        "gpu_milli_arrived",
        "gpu_milli_allocated",
        "clusters",
        "unplaced",
    ] {
        assert!(v.get(field).is_some(), "missing {field}");
    }
    assert_eq!(v["tasks_total"], 600);
    assert_eq!(v["tasks_placed"], 600);
    assert_eq!(v["lower_bound_machines"], serde_json::Value::Null); // machines differ
    let c = &v["clusters"][0];
    for field in [
        "name",
        "location",
        "tasks_placed",
        "machines_used",
        "cpu_utilization",
        "memory_utilization",
    ] {
        assert!(c.get(field).is_some(), "cluster missing {field}");
    }
    // web prefers us-east and needs ssd: east-a is the only such cluster.
    assert_eq!(v["explain"]["rounds"][0]["chosen"], "east-a");

    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    // `gpus`: device indexes (`0+1`, `3:460`), empty for cpu-only tasks.
    assert_eq!(lines.next(), Some("job,task,cluster,machine,gpus"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 600);
    // Every task of every job appears once.
    let mut seen = std::collections::BTreeSet::new();
    for r in &rows {
        let f: Vec<&str> = r.split(',').collect();
        assert_eq!(f.len(), 5);
        assert!(
            f[4].chars()
                .all(|c| c.is_ascii_digit() || c == '+' || c == ':'),
            "{r}"
        );
        assert!(
            seen.insert((f[0].to_string(), f[1].to_string())),
            "duplicate {r}"
        );
    }
    assert!(rows
        .iter()
        .any(|r| r.starts_with("train,") && r.contains(",east-a,gpu-")));
}

#[test]
fn simulate_table_and_explanation() {
    let out = schedctl(&[
        "simulate",
        "--topology",
        TOPOLOGY,
        "--workload",
        JOBS,
        "--explain",
        "train",
    ]);
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("CLUSTER"), "{s}");
    assert!(s.contains("600 placed of 600"), "{s}");
    assert!(
        s.contains("filtered by machine_large_enough: constraint accel=a100 unmet"),
        "{s}"
    );
}

#[test]
fn unplaceable_work_is_reported_with_a_reason() {
    let out = simulate_jobs(
        "jobs:\n  - {name: huge, tasks: 100, resources: {cpu: 60, memory: 400Gi}}\n",
        &["--json"],
    );
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Only the 20 GPU machines (64 cores, 512Gi) hold one such task each.
    assert_eq!(v["tasks_placed"], 20);
    assert_eq!(v["tasks_unplaced"], 80);
    let reason = v["unplaced"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("no machine with enough"), "{reason}");
}

#[test]
fn bad_input_names_the_field_and_exits_1() {
    let out = simulate_jobs(
        "jobs:\n  - {name: web, tasks: 2, resources: {cpu: \"-1\", memory: 1Gi}}\n",
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("jobs[0].resources.cpu"), "{err}");
    assert!(err.contains("negative"), "{err}");

    let out = simulate_jobs(
        "jobs:\n  - {name: web, tasks: 2, resources: {cpu: 1, memory: 1Gi}, locality: mars}\n",
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("jobs[0].locality: unknown location \"mars\""));

    // Usage errors exit 2.
    let out = schedctl(&["simulate", "--topology", TOPOLOGY]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn policy_check_validates_and_prints_the_effective_policy() {
    let out = schedctl(&["policy", "check", "config/policy.yaml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("strategy: best_fit"), "{s}");
    assert!(s.contains("search_budget: 2000"), "{s}");

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("policy.yaml");
    std::fs::write(
        &p,
        "global:\n  scorers:\n    - {name: locality, weight: 0}\n",
    )
    .unwrap();
    let out = schedctl(&["policy", "check", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("global.scorers[0].weight"), "{err}");
}

#[test]
fn simulate_refuses_jobs_over_quota_as_admission_would() {
    let dir = tempfile::tempdir().unwrap();
    let quotas = dir.path().join("quotas.yaml");
    std::fs::write(
        &quotas,
        "quotas:\n  - {tenant: team-a, band: production, cpu: \"4\"}\n",
    )
    .unwrap();
    // 3 production cpus fit the quota of 4; 2 more do not; batch and
    // another tenant have no quota.
    let jobs = "jobs:\n\
        - {name: p1, tasks: 3, resources: {cpu: 1, memory: 1Gi}, band: production, tenant: team-a}\n\
        - {name: p2, tasks: 2, resources: {cpu: 1, memory: 1Gi}, band: production, tenant: team-a}\n\
        - {name: b1, tasks: 2, resources: {cpu: 1, memory: 1Gi}, band: batch, tenant: team-a}\n\
        - {name: o1, tasks: 2, resources: {cpu: 1, memory: 1Gi}, band: production, tenant: team-b}\n";
    let out = simulate_jobs(jobs, &["--quotas", quotas.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let refused = v["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{v}");
    assert_eq!(refused[0]["job"], "p2");
    let reason = refused[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("team-a")
            && reason.contains("production quota of cpu")
            && reason.contains("limit 4"),
        "{reason}"
    );
    assert_eq!(v["tasks_placed"], 7, "{v}");
}

/// A loopback port nobody listens on: a stopped scheduler.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `schedctl args`, killed if it has not finished within `limit` (a bound
/// far above what it should take, so that a regression fails instead of
/// hanging; the assertions are on what it printed).
fn schedctl_within(args: &[&str], limit: std::time::Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_schedctl"))
        .args(args)
        .current_dir(repo())
        .env_remove("SCHEDCTL_SERVER")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("schedctl {args:?} still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[&[&str]] = &[
        &["get", "jobs", "-o", "xml"],
        &["get"],
        &["--server", "ftp://x", "get", "jobs"],
        &["get", "jobs", "--server", "ftp://x"],
        &["logs", "job/x"],
        &["logs", "job", "-f"],
        &[
            "run",
            "x",
            "--cpu",
            "1",
            "--memory",
            "1Gi",
            "--constraints",
            "=a",
            "--",
            "true",
        ],
        // Connection flags belong to the commands that connect.
        &[
            "--server",
            "http://127.0.0.1:1",
            "simulate",
            "--topology",
            TOPOLOGY,
        ],
        &["policy", "check", "config/policy.yaml", "--server", "x"],
        &["completion", "tcsh"],
        &[
            "simulate",
            "--json",
            "-o",
            "yaml",
            "--topology",
            TOPOLOGY,
            "--workload",
            JOBS,
        ],
    ];
    for args in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_schedctl"))
            .args(*args)
            .current_dir(repo())
            .env("HOME", dir.path())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn an_unreachable_server_fails_a_read_at_once_with_one_line() {
    let port = closed_port();
    for args in [
        vec!["get", "jobs"],
        vec!["describe", "job", "x"],
        vec!["logs", "x/0"],
        vec!["watch"],
    ] {
        // No scheme: http:// is meant.
        let server = format!("127.0.0.1:{port}");
        let mut all = vec!["--server", server.as_str()];
        all.extend(&args);
        // It used to retry for two minutes.
        let out = schedctl_within(&all, std::time::Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert_eq!(
            lines[0],
            format!("UNAVAILABLE: cannot reach http://127.0.0.1:{port}: connection refused"),
            "{args:?}"
        );
    }
}

#[test]
fn a_server_without_a_scheme_is_https_with_tls_flags() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().to_str().unwrap();
    let out = schedctl(&["certs", "init", ca]);
    assert!(out.status.success());
    let out = schedctl(&[
        "certs", "issue", "--ca", ca, "--kind", "user", "--name", "alice",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = |f: &str| dir.path().join(f).display().to_string();
    let port = closed_port();
    let server = format!("127.0.0.1:{port}");
    let out = schedctl_within(
        &[
            "get",
            "clusters",
            "--server",
            &server,
            "--tls-ca",
            &file("ca.crt"),
            "--tls-cert",
            &file("alice.crt"),
            "--tls-key",
            &file("alice.key"),
        ],
        std::time::Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with(&format!(
            "UNAVAILABLE: cannot reach https://127.0.0.1:{port}: "
        )),
        "{err}"
    );
}

#[test]
fn simulate_prints_yaml_and_keeps_json_as_an_alias() {
    let json = schedctl(&[
        "simulate",
        "--topology",
        TOPOLOGY,
        "--workload",
        JOBS,
        "--json",
    ]);
    let o_json = schedctl(&[
        "simulate",
        "--topology",
        TOPOLOGY,
        "--workload",
        JOBS,
        "-o",
        "json",
    ]);
    let yaml = schedctl(&[
        "simulate",
        "--topology",
        TOPOLOGY,
        "--workload",
        JOBS,
        "-o",
        "yaml",
    ]);
    for out in [&json, &o_json, &yaml] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let a: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&o_json.stdout).unwrap();
    let c: serde_json::Value = serde_yaml::from_slice(&yaml.stdout).unwrap();
    // The same report, but for the time it took (and the last digit of
    // a float, which YAML writes shorter).
    let fields = ["tasks_total", "tasks_placed", "machines_used", "unplaced"];
    for f in fields {
        assert_eq!(a[f], b[f], "{f}");
        assert_eq!(a[f], c[f], "{f}");
    }
    let clusters = |v: &serde_json::Value| -> Vec<(String, u64)> {
        v["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].to_string(), c["tasks_placed"].as_u64().unwrap()))
            .collect()
    };
    assert_eq!(clusters(&a), clusters(&c));
    assert_eq!(clusters(&a), clusters(&b));
}

#[test]
fn completion_scripts_for_the_usual_shells() {
    for shell in ["bash", "zsh", "fish"] {
        let out = schedctl(&["completion", shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("schedctl"), "{shell}: {script}");
        // The commands are in it.
        assert!(script.contains("describe"), "{shell}");
    }
}

#[test]
fn a_closed_stdout_ends_quietly() {
    // `schedctl completion bash | head -1`: the script is far longer than
    // a pipe holds, so schedctl writes into a closed pipe.
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_schedctl"))
        .args(["completion", "bash"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is gone (dropped above).
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(err.is_empty(), "{err}");
    assert!(!first.is_empty());
}
