//! Every service's `--metrics-listen` endpoint, scraped over HTTP while a
//! small stack runs jobs: the numbers follow what happened, and each
//! exposition passes `promtool check metrics` (Debian's `prometheus`
//! package; the test fails, not skips, without it).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use sched_proto::pb;
use sched_tests::{eventually, free_port, start_etcd, LocalAgent, NodeAgent, Scheduler};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET /metrics` at `addr`: the status line's code, the content type and
/// the body. `accept`: the `Accept` header, if any.
async fn scrape(addr: &str, accept: Option<&str>) -> Option<(u16, String, String)> {
    let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Some((code, content_type, body.to_string()))
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// `promtool check metrics` on `body`; panics with its findings.
fn promtool_check(what: &str, body: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|e| {
        panic!(
            "cannot run promtool ({e}): install it with \
             `apt-get install -y --no-install-recommends prometheus`"
        )
    });
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "{what}: promtool check metrics failed ({}):\n{}{}\n--- exposition ---\n{body}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

fn job(name: &str, tasks: u32) -> pb::SubmitRequest {
    pb::SubmitRequest {
        yaml: String::new(),
        jobs: vec![pb::JobSpec {
            name: name.to_string(),
            tasks,
            resources: Some(pb::ResourceRequest {
                cpu: "500m".to_string(),
                memory: "64Mi".to_string(),
                disk: None,
                gpu: None,
            }),
            command: vec!["true".to_string()],
            ..Default::default()
        }],
        submission_id: name.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn every_service_exposes_metrics_that_promtool_accepts() {
    let etcd = start_etcd();
    let [sched_m, agent_m, node_m] =
        [free_port(), free_port(), free_port()].map(|p| format!("127.0.0.1:{p}"));
    let sched = Scheduler::start(&etcd.url(), &["--metrics-listen", &sched_m]).await;
    let agent = LocalAgent::start_with(
        "east-a",
        "us-east",
        &sched.url(),
        &etcd.url(),
        &["--metrics-listen", &agent_m],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let _node = NodeAgent::start_with(
        &agent.url(),
        "n1",
        "2",
        "1Gi",
        dir.path().join("n1"),
        &["--metrics-listen", &node_m],
    );
    sched.wait_machines_up(1, Duration::from_secs(20)).await;

    let mut client = sched.client().await;
    for name in ["m1", "m2", "m3"] {
        client.submit(job(name, 2)).await.expect("submit");
    }
    // A call that fails, to be counted by its code.
    let missing = client
        .get_job(pb::GetJobRequest {
            name: "no-such-job".to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // All six tasks succeed: the node has seen them exit.
    let node_body = eventually(
        "6 task exits on the node",
        Duration::from_secs(30),
        || async {
            let (_, _, body) = scrape(&node_m, None).await?;
            let exits = value(&body, "sched_node_task_exits_total{outcome=\"succeeded\"}")?;
            (exits >= 6.0).then_some(body)
        },
    )
    .await;
    assert_eq!(
        value(
            &node_body,
            "sched_node_task_starts_total{outcome=\"started\"}"
        ),
        Some(6.0),
        "{node_body}"
    );
    assert_eq!(value(&node_body, "sched_node_running_tasks"), Some(0.0));

    let sched_body = eventually("6 tasks succeeded", Duration::from_secs(30), || async {
        let (_, _, body) = scrape(&sched_m, None).await?;
        let done = value(&body, "sched_tasks{state=\"succeeded\"}")?;
        (done >= 6.0).then_some(body)
    })
    .await;
    assert_eq!(value(&sched_body, "sched_leader"), Some(1.0));
    assert_eq!(value(&sched_body, "sched_tasks_assigned_total"), Some(6.0));
    assert_eq!(
        value(&sched_body, "sched_scheduling_latency_seconds_count"),
        Some(6.0),
        "{sched_body}"
    );
    assert!(value(&sched_body, "sched_global_pass_duration_seconds_count").unwrap() >= 1.0);
    assert_eq!(value(&sched_body, "sched_pending_tasks"), Some(0.0));
    assert_eq!(
        value(&sched_body, "sched_cluster_up{cluster=\"east-a\"}"),
        Some(1.0),
        "{sched_body}"
    );
    // Nothing runs now: the cluster's cpu is free again.
    assert_eq!(
        value(
            &sched_body,
            "sched_cluster_utilization_ratio{cluster=\"east-a\",resource=\"cpu\"}"
        ),
        Some(0.0),
        "{sched_body}"
    );
    assert!(
        value(&sched_body, "sched_store_commits_total{outcome=\"ok\"}").unwrap() >= 3.0,
        "{sched_body}"
    );
    assert!(value(&sched_body, "sched_store_commit_duration_seconds_count").unwrap() >= 3.0);
    let submit = sched_body
        .lines()
        .find(|l| l.contains("/Submit\"") && l.contains("grpc_code=\"OK\""))
        .unwrap_or_else(|| panic!("no Submit calls counted:\n{sched_body}"));
    assert!(submit.ends_with(" 3"), "{submit}");
    let get_job = sched_body
        .lines()
        .find(|l| l.contains("/GetJob\"") && l.contains("grpc_code=\"NOT_FOUND\""))
        .unwrap_or_else(|| panic!("no failed GetJob counted:\n{sched_body}"));
    assert!(get_job.ends_with(" 1"), "{get_job}");

    // A policy applied and a bad one refused: counted by outcome.
    client
        .apply_policy(pb::ApplyPolicyRequest {
            yaml: "global: {scorers: [{name: locality, weight: 7}]}\n".to_string(),
        })
        .await
        .expect("apply a policy");
    let refused = client
        .apply_policy(pb::ApplyPolicyRequest {
            yaml: "global: {scorers: [{name: locality, weight: 0}]}\n".to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let (_, _, policy_body) = scrape(&sched_m, None).await.expect("scheduler metrics");
    for (outcome, n) in [("applied", 1.0), ("unchanged", 0.0), ("refused", 1.0)] {
        let series = format!("sched_policy_changes_total{{outcome=\"{outcome}\"}}");
        assert_eq!(value(&policy_body, &series), Some(n), "{policy_body}");
    }

    let (_, _, agent_body) = scrape(&agent_m, None).await.expect("agent metrics");
    assert_eq!(
        value(
            &agent_body,
            "sched_policy_changes_total{outcome=\"refused\"}"
        ),
        Some(0.0),
        "{agent_body}"
    );
    assert_eq!(
        value(&agent_body, "sched_local_tasks_placed_total"),
        Some(6.0),
        "{agent_body}"
    );
    assert_eq!(value(&agent_body, "sched_local_queued_tasks"), Some(0.0));
    assert!(value(&agent_body, "sched_local_pass_duration_seconds_count").unwrap() >= 1.0);
    assert!(
        agent_body.contains("sched_build_info{service=\"local-agent\""),
        "{agent_body}"
    );

    for (what, addr) in [
        ("global scheduler", &sched_m),
        ("local agent", &agent_m),
        ("node agent", &node_m),
    ] {
        let (code, content_type, body) = scrape(addr, None).await.expect("scrape");
        assert_eq!(code, 200, "{what}");
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{what}: {content_type}"
        );
        promtool_check(what, &body);
        // Prometheus asks for OpenMetrics, and gets it.
        let (_, content_type, body) =
            scrape(addr, Some("application/openmetrics-text;version=1.0.0"))
                .await
                .expect("scrape");
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{what}: {content_type}"
        );
        assert!(body.ends_with("# EOF\n"), "{what}");
    }
}
