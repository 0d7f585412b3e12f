//! Task isolation on a node (issue 12), end to end with real etcd, the
//! real global scheduler, local agent and node agent running real
//! processes: tasks run as a uid of their own (when the node agent runs as
//! root), cannot read each other's output or touch the node agent's lease,
//! get none of its environment, and a task that allocates twice its memory
//! request is killed, its reason saying why (with a memory cgroup).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sched_proto::pb;
use sched_security::Kind;
use sched_tests::{bin, eventually, start_etcd, Guarded, LocalAgent, Scheduler};

const TOPOLOGY: &str = "config/examples/topology.yaml";

/// systemd's dynamic range, the node agent's default `--uid-range`.
const DYNAMIC_UIDS: std::ops::RangeInclusive<u32> = 61184..=65519;

fn spec(name: &str, memory: &str, script: &str) -> pb::JobSpec {
    pb::JobSpec {
        name: name.to_string(),
        tasks: 1,
        resources: Some(pb::ResourceRequest {
            cpu: "100m".to_string(),
            memory: memory.to_string(),
            disk: None,
            gpu: None,
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        restart: Some(pb::RestartPolicy {
            policy: "never".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn submit(j: pb::JobSpec) -> pb::SubmitRequest {
    pb::SubmitRequest {
        submission_id: j.name.clone(),
        jobs: vec![j],
        ..Default::default()
    }
}

async fn task_in(s: &Scheduler, name: &str, states: &[pb::TaskState]) -> pb::TaskStatus {
    eventually(
        &format!("job {name}'s task {states:?}"),
        Duration::from_secs(30),
        || async {
            let t = s.job(name).await?.tasks.into_iter().next()?;
            states.iter().any(|w| t.state == *w as i32).then_some(t)
        },
    )
    .await
}

/// The node agent, with its log in `log` and a secret in its environment
/// that no task may see.
fn node_agent(agent: &str, work: &Path, log: &Path) -> Guarded {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"log=$1; shift; exec "$@" 2>>"$log""#)
        .arg("sh")
        .arg(log)
        .arg(bin("local-agent"))
        .args(["node", "--agent", agent, "--name", "n1"])
        .args(sched_tests::tls_flags(Kind::Node, "n1"))
        .args(["--cpu", "2", "--memory", "2Gi", "--lease-ms", "1000"])
        .arg("--work-dir")
        .arg(work)
        .env("RUST_LOG", "info")
        .env("SCHED_TEST_SECRET", "hunter2")
        .current_dir(sched_tests::repo());
    Guarded::spawn_named(cmd, "node-isolation").expect("start local-agent node")
}

fn attempt_dir(work: &Path, job: &str) -> PathBuf {
    work.join("tasks").join(job).join("0/1")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn tasks_are_isolated_from_each_other_and_held_to_their_memory_request() {
    let etcd = start_etcd();
    let sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY]).await;
    let east = LocalAgent::start("east-a", "us-east", &sched.url(), &etcd.url()).await;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("n1");
    let log = dir.path().join("node.log");
    let _node = node_agent(&east.url(), &work, &log);
    sched.wait_machines_up(1, Duration::from_secs(20)).await;

    let said = || std::fs::read_to_string(&log).unwrap_or_default();
    let limits = eventually("the limits line", Duration::from_secs(10), || async {
        said()
            .lines()
            .find(|l| l.contains("task limits:"))
            .map(str::to_string)
    })
    .await;
    let mechanism = ["cgroup v2", "cgroup v1 memory", "rlimits"]
        .into_iter()
        .find(|m| limits.contains(&format!("task limits: {m}")))
        .unwrap_or_else(|| panic!("no mechanism in {limits:?}"));
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    eprintln!("limits: {mechanism}; the node agent runs as root: {root}");
    if !root {
        eprintln!("not root: tasks run as the agent's own user; only what holds then is checked");
        assert!(
            said().contains("not isolated from each other"),
            "{}",
            said()
        );
    }

    let mut c = sched.client().await;
    // The victim keeps a secret in its output, and runs.
    c.submit(submit(spec(
        "victim",
        "64Mi",
        "echo victim-secret; exec sleep 600",
    )))
    .await
    .unwrap();
    task_in(&sched, "victim", &[pb::TaskState::Running]).await;
    let victim = attempt_dir(&work, "victim");
    eventually("the victim's output", Duration::from_secs(10), || async {
        let out = std::fs::read_to_string(victim.join("stdout")).ok()?;
        out.contains("victim-secret").then_some(())
    })
    .await;

    // The snoop says who it is and tries the victim's output and the lease.
    let lease = work.join("lease");
    let script = format!(
        "id -u; id -G; echo \"HOME=$HOME\"; env | sed 's/^/env: /'; \
         cat ../../../victim/0/1/stdout && echo READ-BY-PATH; \
         cat {victim}/stdout && echo READ-VICTIM; \
         touch {lease} && echo TOUCHED-LEASE; \
         ls ../../.. && echo LISTED-JOBS; exit 0",
        victim = victim.display(),
        lease = lease.display()
    );
    c.submit(submit(spec("snoop", "64Mi", &script)))
        .await
        .unwrap();
    let t = task_in(
        &sched,
        "snoop",
        &[pb::TaskState::Succeeded, pb::TaskState::Failed],
    )
    .await;
    let snoop = attempt_dir(&work, "snoop");
    let out = std::fs::read_to_string(snoop.join("stdout")).unwrap();
    let err = std::fs::read_to_string(snoop.join("stderr")).unwrap_or_default();
    eprintln!("--- snoop's stdout ---\n{out}--- stderr ---\n{err}");
    assert_eq!(t.state, pb::TaskState::Succeeded as i32, "{t:?}");
    let mut lines = out.lines();
    let uid: u32 = lines.next().unwrap().trim().parse().unwrap();
    let groups = lines.next().unwrap().trim().to_string();
    assert!(
        out.contains(&format!("HOME={}", snoop.display())),
        "HOME is the task's directory: {out}"
    );
    assert!(!out.contains("hunter2"), "the agent's environment leaked");
    assert!(out.contains("env: SCHED_JOB=snoop"), "{out}");

    if root {
        assert_ne!(uid, 0, "a task runs as root");
        assert!(DYNAMIC_UIDS.contains(&uid), "uid {uid}");
        // Its own gid only: root's supplementary groups were dropped.
        assert_eq!(groups, uid.to_string());
        // Another uid than the victim's, whose directory is its own.
        let v = std::fs::metadata(&victim).unwrap();
        assert_ne!(v.uid(), uid);
        assert!(DYNAMIC_UIDS.contains(&v.uid()));
        assert_eq!(mode(&victim), 0o700);
        let out_meta = std::fs::metadata(victim.join("stdout")).unwrap();
        assert_eq!(
            (out_meta.uid(), mode(&victim.join("stdout"))),
            (v.uid(), 0o600)
        );
        for denied in [
            "READ-BY-PATH",
            "READ-VICTIM",
            "TOUCHED-LEASE",
            "LISTED-JOBS",
        ] {
            assert!(!out.contains(denied), "{denied}: {out}");
        }
        assert!(!out.contains("victim-secret"), "{out}");
        assert!(err.contains("Permission denied"), "{err}");
        // The parents are root's and only passable; the lease root's, 0644.
        assert_eq!(mode(&work), 0o711);
        assert_eq!(mode(&work.join("tasks")), 0o711);
        assert_eq!(mode(&work.join("tasks/victim")), 0o711);
        let l = std::fs::metadata(&lease).unwrap();
        assert_eq!((l.uid(), mode(&lease)), (0, 0o644));
        // The snoop has ended: its directory is root's again, for its uid
        // may go to the next task.
        eventually(
            "the snoop's directory back to root",
            Duration::from_secs(10),
            || async { (std::fs::metadata(&snoop).ok()?.uid() == 0).then_some(()) },
        )
        .await;
    }

    // Within its request: 16 MiB held in memory under a 64 MiB limit.
    c.submit(submit(spec(
        "fits",
        "64Mi",
        "head -c 16777216 /dev/zero | tail > /dev/null",
    )))
    .await
    .unwrap();
    let t = task_in(
        &sched,
        "fits",
        &[pb::TaskState::Succeeded, pb::TaskState::Failed],
    )
    .await;
    assert_eq!(t.state, pb::TaskState::Succeeded as i32, "{t:?}");

    // Twice its request: `tail` keeps a line of 128 MiB (no newline) in
    // memory.
    c.submit(submit(spec(
        "hog",
        "64Mi",
        "head -c 134217728 /dev/zero | tail > /dev/null",
    )))
    .await
    .unwrap();
    let t = task_in(
        &sched,
        "hog",
        &[pb::TaskState::Succeeded, pb::TaskState::Failed],
    )
    .await;
    eprintln!(
        "hog ({mechanism}): exit code {:?}, reason {:?}",
        t.exit_code, t.reason
    );
    assert_eq!(t.state, pb::TaskState::Failed as i32, "{t:?}");
    match mechanism {
        "rlimits" => {
            // The allocation fails inside the task; the kernel kills nothing.
            assert_ne!(t.exit_code, Some(0), "{t:?}");
        }
        m => {
            assert_eq!(t.exit_code, Some(137), "{t:?}");
            let want = format!("killed for exceeding its memory request of 64Mi ({m})");
            assert!(t.reason.contains(&want), "{t:?}");
            let out = sched_tests::schedctl_command()
                .args(["--server", &sched.url(), "describe", "job", "hog"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(&want), "{text}");
            // The task's cgroup is gone with it.
            let parent = limits
                .split(" under ")
                .nth(1)
                .and_then(|r| r.split([';', ')']).next())
                .map(PathBuf::from)
                .expect("the cgroup in the limits line");
            eventually("no task cgroup left", Duration::from_secs(10), || async {
                let left = std::fs::read_dir(&parent)
                    .ok()?
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("task-"))
                    .count();
                // The victim's is the only one left.
                (left == 1).then_some(())
            })
            .await;
        }
    }
}
