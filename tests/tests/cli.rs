//! `schedctl` against a real scheduler (real etcd, the real binaries): the
//! code name leads every error, `-o json` and `-o yaml` print the same
//! value, `submit -f -` reads standard input, and a reader that stops
//! early (`| head -1`) ends it quietly.

use std::io::{BufRead, Write};
use std::process::{Output, Stdio};

use sched_tests::{start_etcd, Scheduler};

/// `schedctl --server URL args`, with `stdin` as its standard input.
fn schedctl_in(url: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = sched_tests::schedctl_command()
        .args(["--server", url])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn schedctl(url: &str, args: &[&str]) -> Output {
    schedctl_in(url, args, "")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// The leading word of an error line, if it is a gRPC code as gRPC spells
/// it (`NOT_FOUND`).
fn code_of(stderr: &str) -> Option<&str> {
    let (code, _) = stderr.split_once(": ")?;
    (!code.is_empty() && code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')).then_some(code)
}

const JOB: &str = "jobs:\n  - {name: piped, tasks: 2, resources: {cpu: 500m, memory: 1536Mi}, command: [\"true\"]}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn errors_lead_with_the_code_and_formats_agree() {
    let etcd = start_etcd();
    let sched = Scheduler::start(&etcd.url(), &[]).await;
    let url = sched.url();

    // `-f -`: the job file from standard input.
    let out = schedctl_in(&url, &["submit", "-f", "-"], JOB);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "job/piped submitted\n");

    // The same name again: refused, the code first.
    let out = schedctl_in(&url, &["submit", "-f", "-"], JOB);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(code_of(&err).is_some(), "no code name first: {err}");
    assert!(err.contains("piped"), "{err}");

    for args in [&["get", "job", "nope"][..], &["get", "cluster", "nope"][..]] {
        let out = schedctl(&url, args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(code_of(&err), Some("NOT_FOUND"), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }

    // -o json and -o yaml: the same value.
    for args in [
        &["get", "job", "piped"][..],
        &["get", "jobs"][..],
        &["describe", "job", "piped"][..],
        &["get", "clusters"][..],
    ] {
        let json = schedctl(&url, &[args, &["-o", "json"][..]].concat());
        let yaml = schedctl(&url, &[args, &["-o", "yaml"][..]].concat());
        assert!(json.status.success(), "{args:?}: {}", text(&json.stderr));
        assert!(yaml.status.success(), "{args:?}: {}", text(&yaml.stderr));
        let a: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        let b: serde_json::Value = serde_yaml::from_slice(&yaml.stdout).unwrap();
        assert_eq!(a, b, "{args:?}");
    }
    let out = schedctl(&url, &["describe", "job", "piped", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "piped");
    assert_eq!(v["tasks"].as_array().unwrap().len(), 2);
    assert!(v["events"].as_array().is_some_and(|e| !e.is_empty()), "{v}");
    // Sizes as people write them.
    assert_eq!(v["request"]["memory"], "1.5Gi", "{v}");

    // The table: placed, running and lost in columns of their own.
    let out = schedctl(&url, &["get", "jobs"]);
    let table = text(&out.stdout);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    for column in ["PLACED", "RUNNING", "LOST"] {
        assert!(header.contains(&column), "{table}");
    }
    let wide = text(&schedctl(&url, &["get", "jobs", "-o", "wide"]).stdout);
    assert!(wide.lines().next().unwrap().contains("MEMORY"), "{wide}");
    assert!(wide.contains("1.5Gi"), "{wide}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn get_jobs_into_a_closed_pipe_ends_quietly() {
    let etcd = start_etcd();
    let sched = Scheduler::start(&etcd.url(), &[]).await;
    let url = sched.url();
    // Enough jobs that `get jobs` prints more than a pipe holds (64 KiB).
    let mut file = String::from("jobs:\n");
    for i in 0..1500 {
        file.push_str(&format!(
            "  - {{name: job-{i:05}, tasks: 1, resources: {{cpu: 100m, memory: 64Mi}}, command: [\"true\"]}}\n"
        ));
    }
    let out = schedctl_in(&url, &["submit", "-f", "-"], &file);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // `schedctl get jobs | head -1`.
    let mut child = sched_tests::schedctl_command()
        .args(["--server", &url, "get", "jobs"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("NAME"), "{first}");
    // The reader is gone: what is left goes into a closed pipe.
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(err.is_empty(), "{err}");
}
