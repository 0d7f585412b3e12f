//! The status page (issue 14, part 8), loaded the way a person would: the
//! real scheduler with `--http-listen`, two clusters and a few jobs, the
//! page rendered by a real headless Chromium (its script run, its JSON
//! fetched), and the DOM checked for what is on screen: cluster names,
//! job names, state counts, a job's tasks. A command full of markup is
//! shown as text, never run. A standby's page says it is one and links to
//! the leader.
//!
//! Needs Chromium (Debian's `chromium` package; `.ci/run` installs it): the
//! test fails, saying so, without it.

use std::time::Duration;

use sched_proto::pb;
use sched_tests::{eventually, free_port, start_etcd, ClusterSpec, Scheduler, TestCluster};

const TOPOLOGY: &str = "config/examples/topology.yaml";

/// Markup that would run (or add an element) if the page parsed it.
const HOSTILE: &str =
    "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">";

fn job(name: &str, tasks: u32, command: &[&str]) -> pb::JobSpec {
    pb::JobSpec {
        name: name.to_string(),
        tasks,
        resources: Some(pb::ResourceRequest {
            cpu: "1".into(),
            memory: "1Gi".into(),
            disk: None,
            gpu: None,
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// The DOM of `url` after its scripts ran for (virtual) 3 s.
fn chromium_dom(url: &str) -> String {
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=3000",
            "--dump-dom",
            url,
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run chromium ({e}): install it (`apt-get install -y chromium`) to run this test"
            )
        });
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn the_page_shows_clusters_jobs_and_tasks_and_never_runs_a_jobs_markup() {
    let etcd = start_etcd();
    let http = format!("127.0.0.1:{}", free_port());
    let sched = Scheduler::start(
        &etcd.url(),
        &["--topology", TOPOLOGY, "--http-listen", &http],
    )
    .await;
    let mut small = ClusterSpec::new("east-a", "us-east");
    // Room for two 1-core tasks only: the rest of `wide` waits, with a
    // reason.
    small.machines = 1;
    small.cpu_millis = 2000;
    small.memory_bytes = 4 << 30;
    let _east = TestCluster::start(&sched.url(), small.clone());
    let mut west = small;
    west.name = "west-a".into();
    west.location = "us-west".into();
    let _west = TestCluster::start(&sched.url(), west);
    sched.wait_machines_up(2, Duration::from_secs(20)).await;
    sched
        .client()
        .await
        .submit(pb::SubmitRequest {
            submission_id: "sample".into(),
            jobs: vec![
                job("web-frontend", 2, &["sleep", "600"]),
                job("wide", 5, &["sleep", "600"]),
                job("markup", 1, &["echo", HOSTILE]),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    // 2 + 2 cores: four tasks are placed, the other four wait.
    eventually("four tasks placed", Duration::from_secs(20), || async {
        let jobs = sched.jobs().await?;
        let placed: u32 = jobs
            .iter()
            .filter_map(|j| j.counts.as_ref())
            .map(|c| c.placed + c.assigned + c.running)
            .sum();
        (placed == 4).then_some(())
    })
    .await;

    let dom = chromium_dom(&format!("http://{http}/"));
    for seen in [
        "east-a",
        "west-a",
        "web-frontend",
        "wide",
        "markup",
        "Clusters",
        "Recent jobs",
    ] {
        assert!(dom.contains(seen), "{seen:?} is not on the page:\n{dom}");
    }
    // The state counts: three jobs, none finished; tasks by state.
    assert!(dom.contains("<span class=\"n\">0</span>succeeded"), "{dom}");
    assert!(dom.contains("Tasks: "), "{dom}");
    assert!(dom.contains("pending"), "{dom}");
    // Why `wide` waits (the scheduler's own reason, as describe gives it).
    assert!(dom.contains("class=\"reason\">"), "{dom}");
    // The command is text: escaped in the DOM, no element made of it,
    // nothing run.
    assert!(
        dom.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt;&lt;img src=x"),
        "the markup is not shown as text:\n{dom}"
    );
    assert!(
        !dom.contains("<img"),
        "an element was made of a job's command:\n{dom}"
    );
    assert!(!dom.contains("<title>pwned"), "a job's command ran:\n{dom}");
    assert!(dom.contains("<title>Scheduler status</title>"), "{dom}");

    // A job's page: its tasks, where they are.
    let dom = chromium_dom(&format!("http://{http}/job/wide"));
    assert!(dom.contains("Tasks"), "{dom}");
    for seen in ["wide", "pending"] {
        assert!(
            dom.contains(seen),
            "{seen:?} is not on the job page:\n{dom}"
        );
    }
    assert!(
        dom.contains("east-a") || dom.contains("west-a"),
        "no task's cluster on the job page:\n{dom}"
    );

    // A standby says so and links to the leader.
    let standby_http = format!("127.0.0.1:{}", free_port());
    let _standby = Scheduler::start_standby(
        &etcd.url(),
        &["--topology", TOPOLOGY, "--http-listen", &standby_http],
    )
    .await;
    let leader = sched.url();
    let dom = eventually(
        "the standby names the leader",
        Duration::from_secs(20),
        || {
            let url = format!("http://{standby_http}/");
            let leader = leader.clone();
            async move {
                let dom = tokio::task::spawn_blocking(move || chromium_dom(&url))
                    .await
                    .unwrap();
                dom.contains(&format!("href=\"{leader}\"")).then_some(dom)
            }
        },
    )
    .await;
    assert!(dom.contains("standby"), "{dom}");
}

/// One HTTP/1.1 exchange with the page's server: the whole answer (status
/// line, headers, body).
fn http(addr: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn get(addr: &str, path: &str, header: &str) -> String {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{header}\r\n"),
    )
}

/// With tokens in force the page asks for one (a header, or a cookie set
/// from `?token=` or the login form), and each tenant sees only its jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd"]
async fn with_tokens_each_tenant_sees_only_its_own_jobs() {
    if sched_tests::tls_mode() {
        // The page is plain HTTP whatever the API runs; the users' gRPC
        // calls here carry no certificates, so this test is plaintext only.
        eprintln!("plaintext only: skipped in the TLS mode");
        return;
    }
    use sched_security::tokens::sha256_hex;
    let etcd = start_etcd();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n\
             - {{user: alice, tenant: team-a, role: submitter, sha256: {}}}\n\
             - {{user: bob, tenant: team-b, role: submitter, sha256: {}}}\n",
            sha256_hex("alice-token"),
            sha256_hex("bob-token"),
        ),
    )
    .unwrap();
    let http_addr = format!("127.0.0.1:{}", free_port());
    let t = tokens.display().to_string();
    let sched = Scheduler::start(
        &etcd.url(),
        &[
            "--topology",
            TOPOLOGY,
            "--tokens",
            &t,
            "--http-listen",
            &http_addr,
        ],
    )
    .await;
    for (token, name) in [("alice-token", "alice-job"), ("bob-token", "bob-job")] {
        sched_tests::user_client(&sched.url(), None, Some(token))
            .submit(pb::SubmitRequest {
                submission_id: name.into(),
                jobs: vec![job(name, 1, &["true"])],
                ..Default::default()
            })
            .await
            .unwrap();
    }

    // No token: refused; the page offers the login form.
    let r = get(&http_addr, "/api/status", "");
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    let r = get(&http_addr, "/", "");
    assert!(
        r.starts_with("HTTP/1.1 401") && r.contains("name=\"token\""),
        "{r}"
    );
    let r = get(&http_addr, "/api/status", "Authorization: Bearer wrong\r\n");
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");

    // A bearer token: that tenant's jobs only.
    let r = get(
        &http_addr,
        "/api/status",
        "Authorization: Bearer alice-token\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("\"alice-job\"") && !r.contains("bob-job"), "{r}");
    let r = get(
        &http_addr,
        "/api/jobs/bob-job",
        "Authorization: Bearer alice-token\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 404"), "another tenant's job: {r}");

    // `?token=`: an HttpOnly cookie and the page without the token.
    let r = get(&http_addr, "/?token=bob-token", "");
    assert!(r.starts_with("HTTP/1.1 303"), "{r}");
    let lower = r.to_ascii_lowercase();
    assert!(lower.contains("location: /\r\n"), "{r}");
    assert!(
        lower.contains("set-cookie: sched_token=bob-token; httponly; samesite=strict; path=/"),
        "{r}"
    );
    let r = get(
        &http_addr,
        "/api/status",
        "Cookie: sched_token=bob-token\r\n",
    );
    assert!(r.contains("\"bob-job\"") && !r.contains("alice-job"), "{r}");

    // The login form sets the same cookie.
    let body = "token=alice-token";
    let r = http(
        &http_addr,
        &format!(
            "POST /login HTTP/1.1\r\nHost: {http_addr}\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(r.starts_with("HTTP/1.1 303"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("set-cookie: sched_token=alice-token; httponly"),
        "{r}"
    );

    // A browser with the cookie sees its tenant's job on the page.
    let dom = eventually("alice's job on the page", Duration::from_secs(10), || {
        let url = format!("http://{http_addr}/?token=alice-token");
        async move {
            let dom = tokio::task::spawn_blocking(move || chromium_dom(&url))
                .await
                .unwrap();
            dom.contains("alice-job").then_some(dom)
        }
    })
    .await;
    assert!(!dom.contains("bob-job"), "{dom}");
}
