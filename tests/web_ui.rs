//! The web UI on a real three-node cluster: `GET /api/cluster/nodes` (every member's status from one node, a killed
//! member reported, not waited for), and a headless-Chromium run of tests/browser/ui_check.py that opens the
//! cluster view, starts a workflow through the definitions page and watches it complete on the detail page. Its
//! screenshots land in `<target dir>/screenshots/`.
//!
//! The browser test needs Debian's `chromium` and `chromium-driver` and Python's `selenium`; scripts/setup-tests.sh
//! installs them. Without them the test fails (it never skips).

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use support::*;

/// The Selenium script.
const UI_CHECK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/ui_check.py");
/// The screenshots the script must leave, each a PNG.
const SCREENSHOTS: [&str; 4] = ["cluster.png", "definitions.png", "workflow.png", "workflows.png"];
/// The PNG signature.
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
/// How long the browser run may take in all (Chromium's start on a busy two-core machine included).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(240);

/// `<target dir>/screenshots`: Cargo puts `CARGO_TARGET_TMPDIR` at `<target dir>/tmp`, wherever the target dir is.
fn screenshot_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("screenshots")
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// Fails, naming scripts/setup-tests.sh, unless chromium, chromedriver and selenium are all there.
fn require_browser_tools() -> Result<()> {
    let mut missing = Vec::new();
    if !on_path("chromium") && !on_path("chromium-browser") {
        missing.push("chromium (apt: chromium)");
    }
    if !on_path("chromedriver") {
        missing.push("chromedriver (apt: chromium-driver)");
    }
    let selenium = std::process::Command::new("python3").args(["-c", "import selenium"]).output();
    if !selenium.is_ok_and(|o| o.status.success()) {
        missing.push("python3 with selenium (pip: selenium)");
    }
    if !missing.is_empty() {
        bail!(
            "the browser test needs {}: run `source scripts/setup-tests.sh`, which installs them",
            missing.join(", ")
        );
    }
    Ok(())
}

/// An HTTP worker for `task_type`, as the Conductor SDKs poll: batch polls of one task through `via`, each
/// answered COMPLETED with the file's size. Runs until `stop`; counts the tasks it completed.
fn spawn_worker(
    via: String,
    task_type: &'static str,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<()>, Arc<AtomicUsize>) {
    let done = Arc::new(AtomicUsize::new(0));
    let counter = done.clone();
    let handle = tokio::spawn(async move {
        let poll = format!("/api/tasks/poll/batch/{task_type}?count=1&timeout=500&workerid=rust-test-worker");
        while !stop.load(Ordering::Relaxed) {
            let Ok(tasks) = get(&via, &poll).await.and_then(|r| r.ok()).and_then(|r| r.json()) else {
                // The node refused or is restarting: back off a little, as a worker would.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            for task in tasks.as_array().into_iter().flatten() {
                let file = task["inputData"]["file"].as_str().unwrap_or_default();
                let result = json!({
                    "workflowInstanceId": task["workflowInstanceId"],
                    "taskId": task["taskId"],
                    "status": "COMPLETED",
                    "workerId": "rust-test-worker",
                    "outputData": {"size": 2048 * file.len(), "location": format!("s3://encoded/{file}")}
                });
                if post_json(&via, "/api/tasks", &result).await.and_then(|r| r.ok()).is_ok() {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    (handle, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_nodes_answers_every_member_from_one_node_and_reports_a_killed_one() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let follower = cluster.nodes().iter().find(|n| n.id != leader).context("a follower")?;

    let view = get(follower, "/api/cluster/nodes").await?.ok()?.json()?;
    ensure!(view["node_id"] == follower.id && view["cluster_id"] == "t1", "{view}");
    let nodes = view["nodes"].as_array().context("nodes")?;
    let ids: Vec<u64> = nodes.iter().filter_map(|n| n["id"].as_u64()).collect();
    ensure!(ids == [1, 2, 3], "{view}");
    for n in nodes {
        let status = &n["status"];
        ensure!(n["error"].is_null() && status["node_id"] == n["id"], "{n}");
        ensure!(status["leader_id"] == leader && status["term"].as_u64() >= Some(1), "{n}");
        let http = cluster.node(n["id"].as_u64().context("id")?).http_addr.clone();
        ensure!(n["http_addr"] == http.as_str(), "{n}");
    }
    let roles: Vec<&str> = nodes.iter().filter_map(|n| n["status"]["role"].as_str()).collect();
    ensure!(roles.iter().filter(|r| **r == "leader").count() == 1, "{roles:?}");
    ensure!(nodes[leader as usize - 1]["status"]["role"] == "leader", "{view}");

    // A killed leader is an entry with an error, answered without waiting for it; a new leader shows up.
    cluster.node(leader).kill()?;
    let killed = leader;
    let view = wait_until(secs(10), "the killed node reported and a new leader", || async {
        let asked = Instant::now();
        let view = get(follower, "/api/cluster/nodes").await?.ok()?.json()?;
        let took = asked.elapsed();
        ensure!(took < Duration::from_secs(3), "GET /api/cluster/nodes took {took:?}");
        let nodes = view["nodes"].as_array().context("nodes")?;
        let dead = &nodes[killed as usize - 1];
        ensure!(dead["status"].is_null() && dead["error"].is_string(), "{dead}");
        let leaders: Vec<&Value> = nodes.iter().filter(|n| n["status"]["role"] == "leader").collect();
        ensure!(leaders.len() == 1 && leaders[0]["id"] != killed, "{view}");
        Ok(view)
    })
    .await?;
    println!("after killing node {killed}: {view}");
    cluster.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_starts_a_workflow_from_the_ui_and_sees_it_complete() -> Result<()> {
    require_browser_tools()?;
    let shots = screenshot_dir();
    std::fs::create_dir_all(&shots)?;
    for name in SCREENSHOTS.iter().chain(&["failure.png"]) {
        let _ = std::fs::remove_file(shots.join(name));
    }

    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let followers: Vec<&Node> = cluster.nodes().iter().filter(|n| n.id != leader).collect();
    let (ui_node, worker_node) = (followers[0], followers[1]);

    // A SIMPLE task served by this test's worker, then an INLINE (JavaScript) system task.
    let encode = json!([{"name": "ui_encode", "description": "Encodes one file", "retryCount": 2,
        "timeoutSeconds": 60, "responseTimeoutSeconds": 30}]);
    post_json(ui_node, "/api/metadata/taskdefs", &encode).await?.ok()?;
    let def = json!({
        "name": "ui_demo", "version": 1, "description": "Encode a file, then summarise its size",
        "inputParameters": ["file"],
        "tasks": [
            {"name": "ui_encode", "taskReferenceName": "encode", "type": "SIMPLE",
             "inputParameters": {"file": "${workflow.input.file}"}},
            {"name": "summarise", "taskReferenceName": "summarise", "type": "INLINE",
             "inputParameters": {"evaluatorType": "javascript", "size": "${encode.output.size}",
                                 "expression": "function f() { return {kb: $.size / 1024}; } f();"}}
        ],
        "outputParameters": {"kb": "${summarise.output.result.kb}", "location": "${encode.output.location}"}
    });
    post_json(ui_node, "/api/metadata/workflow", &def).await?.ok()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (worker, completed) = spawn_worker(worker_node.http_base(), "ui_encode", stop.clone());

    // Markup in the input must be shown as text: the script checks that it never runs.
    let input = json!({"file": "<img src=x onerror=window.__xss=1>movie.mov"}).to_string();
    let started = Instant::now();
    let mut script = tokio::process::Command::new("python3");
    script
        .arg(UI_CHECK)
        .args(["--base", &ui_node.http_base()])
        .arg("--out")
        .arg(&shots)
        .args(["--workflow", "ui_demo", "--version", "1", "--input", &input, "--tasks", "2", "--members", "3"])
        .args(["--correlation-id", "web-ui-test"])
        .kill_on_drop(true);
    let run = tokio::time::timeout(BROWSER_TIMEOUT, script.output()).await;
    stop.store(true, Ordering::Relaxed);
    let output = run.with_context(|| format!("ui_check.py still running after {BROWSER_TIMEOUT:?}"))??;
    let took = started.elapsed();
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    ensure!(
        output.status.success(),
        "ui_check.py failed ({}); see its output above and {}",
        output.status,
        shots.display()
    );
    println!("browser run took {took:.1?}");

    // What the browser saw is what the cluster holds: found by the search the list page uses.
    let found =
        get(worker_node, "/api/workflow/search?query=correlationId%20%3D%20%27web-ui-test%27").await?.ok()?.json()?;
    ensure!(found["totalHits"] == 1 && found["results"][0]["status"] == "COMPLETED", "{found}");
    let output = serde_json::from_str::<Value>(found["results"][0]["output"].as_str().context("output")?)?;
    ensure!(output["kb"].as_f64().is_some_and(|kb| kb > 0.0), "{output}");
    ensure!(completed.load(Ordering::Relaxed) == 1, "the worker completed {} tasks", completed.load(Ordering::Relaxed));
    worker.await?;

    for name in SCREENSHOTS {
        let path = shots.join(name);
        let bytes = std::fs::read(&path).with_context(|| format!("screenshot {} missing", path.display()))?;
        ensure!(bytes.len() > 10_000 && bytes.starts_with(PNG_MAGIC), "{} is not a PNG of a page", path.display());
        println!("screenshot: {} ({} bytes)", path.display(), bytes.len());
    }
    cluster.pass();
    Ok(())
}
