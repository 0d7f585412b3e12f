//! Quotas per tenant and band at admission (issue 13), with real etcd and
//! the real binaries: a tenant at its production quota is refused with an
//! error naming tenant, band, resource, limit and usage (a
//! `google.rpc.ErrorInfo`, no retry hint; schedctl exits 1 at once); its
//! batch jobs still run; another tenant is unaffected; an admin raises the
//! quota live, and the change survives a restart.

use std::time::{Duration, Instant};

use sched_proto::pb;
use sched_tests::{eventually, schedctl_command, start_etcd, LocalAgent, NodeAgent, Scheduler};
use tonic::Code;
use tonic_types::StatusExt;

const TOPOLOGY: &str = "config/examples/topology.yaml";

fn job(name: &str, tenant: &str, band: &str, tasks: u32) -> pb::SubmitRequest {
    pb::SubmitRequest {
        submission_id: name.to_string(),
        jobs: vec![pb::JobSpec {
            name: name.to_string(),
            tasks,
            resources: Some(pb::ResourceRequest {
                cpu: "1".into(),
                memory: "32Mi".into(),
                disk: None,
                gpu: None,
            }),
            command: vec!["sleep".into(), "60".into()],
            tenant: Some(tenant.into()),
            band: Some(band.into()),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn a_tenant_at_its_quota_is_refused_clearly_and_nothing_else_is() {
    let etcd = start_etcd();
    let dir = tempfile::tempdir().unwrap();
    let quotas = dir.path().join("quotas.yaml");
    std::fs::write(
        &quotas,
        "quotas:\n  - {tenant: team-a, band: production, cpu: \"2\"}\n",
    )
    .unwrap();
    let q = quotas.display().to_string();
    let mut sched = Scheduler::start(&etcd.url(), &["--topology", TOPOLOGY, "--quotas", &q]).await;
    let agent = LocalAgent::start("east-a", "us-east", &sched.url(), &etcd.url()).await;
    let _node = NodeAgent::start(&agent.url(), "m1", "8", "4Gi", dir.path().join("m1"));
    sched.wait_machines_up(1, Duration::from_secs(30)).await;

    let mut c = sched.client().await;
    // Two production cpus: exactly the quota.
    c.submit(job("p1", "team-a", "production", 2))
        .await
        .unwrap();
    // One more is refused, with everything said.
    let e = c
        .submit(job("p2", "team-a", "production", 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    let msg = e.message();
    for part in ["team-a", "production", "cpu", "limit 2", "in use 2"] {
        assert!(msg.contains(part), "{part:?} not in {msg:?}");
    }
    let info = e.get_details_error_info().expect("a google.rpc.ErrorInfo");
    assert_eq!(info.reason, "QUOTA_EXCEEDED");
    assert_eq!(
        info.metadata.get("tenant").map(String::as_str),
        Some("team-a")
    );
    assert_eq!(
        info.metadata.get("resource").map(String::as_str),
        Some("cpu")
    );
    assert!(
        e.get_details_retry_info().is_none(),
        "a quota refusal must not ask for a retry"
    );
    // Its batch jobs still run, and another tenant is unaffected.
    c.submit(job("b1", "team-a", "batch", 2)).await.unwrap();
    c.submit(job("other", "team-b", "production", 2))
        .await
        .unwrap();
    for name in ["b1", "other", "p1"] {
        eventually(
            &format!("{name} running"),
            Duration::from_secs(30),
            || async {
                let st = sched.job(name).await?;
                st.tasks
                    .iter()
                    .all(|t| t.state == pb::TaskState::Running as i32)
                    .then_some(())
            },
        )
        .await;
    }

    // schedctl prints the refusal and exits 1 at once, without retrying.
    let start = Instant::now();
    let out = schedctl_command()
        .args(["--server", &sched.url()])
        .args([
            "run",
            "p3",
            "--cpu",
            "1",
            "--memory",
            "32Mi",
            "--tenant",
            "team-a",
            "--band",
            "production",
            "--",
            "sleep",
            "60",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("quota of cpu"), "{stderr}");
    assert!(!stderr.contains("retrying"), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(10));

    // An admin raises the quota live; it holds across a restart.
    let out = schedctl_command()
        .args(["--server", &sched.url()])
        .args([
            "quota",
            "set",
            "--tenant",
            "team-a",
            "--band",
            "production",
            "--cpu",
            "4",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.submit(job("p2", "team-a", "production", 1))
        .await
        .unwrap();
    let out = schedctl_command()
        .args(["--server", &sched.url(), "get", "quotas", "-o", "json"])
        .output()
        .unwrap();
    let quotas: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(quotas[0]["cpu"], "4");
    assert_eq!(quotas[0]["used_tasks"], 3);

    sched.kill9();
    sched.restart().await;
    let mut c = sched.client().await;
    let e = eventually(
        "the restarted scheduler answers",
        Duration::from_secs(30),
        || async {
            match c.clone().submit(job("p4", "team-a", "production", 2)).await {
                Err(e) if e.code() == Code::Unavailable => None,
                r => Some(r),
            }
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("limit 4"), "{}", e.message());
    c.submit(job("p5", "team-a", "production", 1))
        .await
        .unwrap();
}
