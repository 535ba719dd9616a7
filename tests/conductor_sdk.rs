//! Netflix Conductor's official Python SDK (conductor-python 2.x from PyPI, unchanged) against a three-node
//! cluster of the real binary: tests/sdk/conductor_python_check.py registers task and workflow definitions with the
//! SDK's metadata client, starts workflows with its workflow executor and serves their three steps with a
//! TaskHandler (two `@worker_task` functions and one WorkerInterface class), all through one follower. The second
//! test SIGKILLs the leader while the SDK's stream of workflows runs. scripts/setup-tests.sh installs the SDK.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/conductor_python_check.py");
const REFS: [(&str, &str); 3] = [("greet", "sdk_greet"), ("square", "sdk_square"), ("combine", "sdk_combine")];
/// The task definitions' retryCount, as the script registers them.
const RETRY_COUNT: usize = 3;

/// Fails (never skips) unless python3 can import conductor-python 2.x.
fn require_sdk() -> Result<()> {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import conductor.client, importlib.metadata as m; print(m.version('conductor-python'))"])
        .output();
    let hint = "python3 with conductor-python 2.x is required (scripts/setup-tests.sh installs it)";
    let out = match probe {
        Ok(out) => out,
        Err(e) => bail!("{hint}: cannot run python3: {e}"),
    };
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(out.status.success(), "{hint}: {}", String::from_utf8_lossy(&out.stderr).trim());
    ensure!(version.starts_with("2."), "{hint}: found conductor-python {version}");
    Ok(())
}

/// The script, running in a process group of its own (the SDK's TaskHandler forks worker processes): killed with
/// all its children when dropped.
struct SdkRun {
    child: tokio::process::Child,
    pgid: i32,
    /// Every JSON line of its stdout so far.
    events: Arc<Mutex<Vec<Value>>>,
    stderr_path: PathBuf,
    started_at: Instant,
}

impl SdkRun {
    fn spawn(cluster: &Cluster, node: &Node, name: &str, args: &[&str]) -> Result<SdkRun> {
        let stderr_path = cluster.dir().join(format!("{name}.stderr.log"));
        let stderr = std::fs::File::create(&stderr_path)?;
        let server = format!("{}/api", node.http_base());
        let mut child = tokio::process::Command::new("python3")
            .arg(SCRIPT)
            .args(["--server", &server, "--run-id", name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("spawning python3")?;
        let pgid = i32::try_from(child.id().context("the script has a pid")?)?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let event = serde_json::from_str(&line).unwrap_or_else(|_| json!({"event": "text", "line": line}));
                sink.lock().expect("events lock is never poisoned").push(event);
            }
        });
        Ok(SdkRun { child, pgid, events, stderr_path, started_at: Instant::now() })
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        let events = self.events.lock().expect("events lock is never poisoned");
        events.iter().filter(|e| e["event"] == kind).cloned().collect()
    }

    /// Workflow id -> index, of every workflow the script has started so far.
    fn started(&self) -> BTreeMap<String, u64> {
        self.events("started")
            .iter()
            .filter_map(|e| Some((e["workflowId"].as_str()?.to_string(), e["i"].as_u64()?)))
            .collect()
    }

    /// The lines the SDK logged at WARNING or above (failed polls and updates while there was no leader).
    fn sdk_complaints(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let levels = [" WARNING ", " ERROR ", " CRITICAL "];
        text.lines().filter(|l| levels.iter().any(|lvl| l.contains(lvl))).map(String::from).collect()
    }

    fn stderr_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `Fatal` if the script has exited (it should still be running).
    fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(fatal(format!("the SDK script exited early ({status}):\n{}", self.stderr_tail(40)))),
        }
    }

    /// Waits for the script to exit 0 and returns how long it ran.
    async fn finish(&mut self, within: Duration) -> Result<Duration> {
        let status: ExitStatus = tokio::time::timeout(within, self.child.wait())
            .await
            .with_context(|| format!("the SDK script still runs after {within:?}:\n{}", self.stderr_tail(40)))??;
        ensure!(status.success(), "the SDK script failed ({status}):\n{}", self.stderr_tail(60));
        Ok(self.started_at.elapsed())
    }
}

impl Drop for SdkRun {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        let _ = killpg(nix::unistd::Pid::from_raw(self.pgid), Signal::SIGKILL);
    }
}

/// What workflow `i` must output.
fn expected_output(i: u64) -> Value {
    let name = format!("user-{i}");
    json!({
        "greeting": format!("Hello, {name}"),
        "square": i * i,
        "summary": format!("Hello, {name}! {name} squared is {}", i * i),
    })
}

/// Checks, over HTTP, that workflow `id` (the script's number `i`) COMPLETED with its expected output, and that
/// each of its steps was completed exactly once by one poll: any other attempt of a step must be a TIMED_OUT one
/// that was retried (a poll whose answer was lost with the leader), within the task definition's retries. Returns
/// how many such timed-out attempts it had.
async fn check_workflow(node: &Node, id: &str, i: u64, run_id: &str) -> Result<usize> {
    let wf = get(node, &format!("/api/workflow/{id}")).await?.ok()?.json()?;
    ensure!(wf["status"] == "COMPLETED", "workflow {id}: {}", wf["status"]);
    ensure!(wf["output"] == expected_output(i), "workflow {id}: output {}", wf["output"]);
    ensure!(wf["input"] == json!({"name": format!("user-{i}"), "n": i}), "workflow {id}: input {}", wf["input"]);
    ensure!(wf["correlationId"] == format!("{run_id}-{i}"), "workflow {id}: correlationId {}", wf["correlationId"]);
    let tasks = wf["tasks"].as_array().context("tasks")?;
    let ids: BTreeSet<&str> = tasks.iter().filter_map(|t| t["taskId"].as_str()).collect();
    ensure!(ids.len() == tasks.len(), "workflow {id}: a task id appears twice");
    let mut timed_out = 0;
    for (reference, task_type) in REFS {
        let attempts: Vec<&Value> = tasks.iter().filter(|t| t["referenceTaskName"] == reference).collect();
        let summary: Vec<String> =
            attempts.iter().map(|t| format!("{}/{}/polls {}", t["taskId"], t["status"], t["pollCount"])).collect();
        let done: Vec<&&Value> = attempts.iter().filter(|t| t["status"] == "COMPLETED").collect();
        ensure!(done.len() == 1, "workflow {id}: step {reference} completed {} times: {summary:?}", done.len());
        let done = done[0];
        ensure!(done["taskType"] == task_type, "workflow {id}: step {reference} has type {}", done["taskType"]);
        ensure!(done["pollCount"] == 1, "workflow {id}: step {reference} was polled more than once: {summary:?}");
        let others: Vec<&&Value> = attempts.iter().filter(|t| t["status"] != "COMPLETED").collect();
        ensure!(
            others.iter().all(|t| t["status"] == "TIMED_OUT" && t["retried"] == true),
            "workflow {id}: step {reference} has attempts that are neither the completed one nor retried timeouts: \
             {summary:?}"
        );
        ensure!(others.len() <= RETRY_COUNT, "workflow {id}: step {reference} ran beyond its retries: {summary:?}");
        ensure!(
            done["retryCount"] == others.len(),
            "workflow {id}: step {reference} completed as retry {} after {} earlier attempts",
            done["retryCount"],
            others.len()
        );
        timed_out += others.len();
    }
    let square = tasks.iter().find(|t| t["referenceTaskName"] == "square" && t["status"] == "COMPLETED");
    ensure!(square.is_some_and(|t| t["inputData"]["n"] == i), "workflow {id}: square's input");
    Ok(timed_out)
}

/// The ids the script reported done, checked against the ones it started: `n` distinct workflows.
fn finished_workflows(run: &SdkRun, n: usize) -> Result<BTreeMap<String, u64>> {
    let started = run.started();
    let done = run.events("done");
    let [done] = done.as_slice() else { bail!("the script reported {} 'done' events", done.len()) };
    let ids: BTreeSet<String> = done["workflows"]
        .as_array()
        .context("workflows")?
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    ensure!(started.len() == n && ids.len() == n, "started {}, done {}, expected {n}", started.len(), ids.len());
    ensure!(ids.iter().all(|id| started.contains_key(id)), "done ids differ from started ids");
    Ok(started)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conductor_python_sdk_runs_workflows_through_a_follower() -> Result<()> {
    require_sdk()?;
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let follower = cluster.nodes().iter().find(|n| n.id != leader).context("a follower")?;

    let n = 6;
    let mut run = SdkRun::spawn(&cluster, follower, "sdk1", &["--workflows", &n.to_string(), "--window", "3"])?;
    let took = run.finish(Duration::from_secs(180)).await?;
    eprintln!("the SDK script ran {n} workflows through follower n{} in {took:.1?}", follower.id);

    let started = finished_workflows(&run, n)?;
    for node in cluster.nodes() {
        for (id, i) in &started {
            let timed_out = check_workflow(node, id, *i, "sdk1").await?;
            ensure!(timed_out == 0, "workflow {id}: {timed_out} timed-out attempts without any failure injected");
        }
    }

    // Regression: booleans in query strings are read as Conductor (Spring) reads them; the SDK sends Python's
    // `True`/`False` (`?overwrite=True` on registration, `?includeTasks=True` on reads).
    let (id, _) = started.iter().next().context("a workflow")?;
    let without = get(follower, &format!("/api/workflow/{id}?includeTasks=False")).await?.ok()?.json()?;
    ensure!(without["tasks"] == json!([]), "includeTasks=False: {}", without["tasks"]);
    let with = get(follower, &format!("/api/workflow/{id}?includeTasks=True")).await?.ok()?.json()?;
    ensure!(with["tasks"].as_array().map(Vec::len) == Some(3), "includeTasks=True: {}", with["tasks"]);
    let mut def = get(follower, "/api/metadata/workflow/sdk_pipeline").await?.ok()?.json()?;
    def["description"] = json!("registered again with overwrite=True");
    post_json(follower, "/api/metadata/workflow?overwrite=True", &def).await?.ok()?;
    let again = get(follower, "/api/metadata/workflow/sdk_pipeline").await?.ok()?.json()?;
    ensure!(again["description"] == def["description"], "overwrite=True did not replace: {}", again["description"]);
    let refused = post_json(follower, "/api/metadata/workflow?overwrite=maybe", &def).await?;
    ensure!(refused.status == 400, "overwrite=maybe: HTTP {} {}", refused.status, refused.body);

    cluster.wait_converged().await?;
    cluster.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conductor_python_sdk_survives_the_leader_killed_mid_stream() -> Result<()> {
    require_sdk()?;
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    // The SDK's clients and workers all talk to this follower, which stays up.
    let follower = cluster.nodes().iter().find(|n| n.id != leader).context("a follower")?;

    let (n, kill_after) = (60, 10);
    let args = ["--workflows", &n.to_string(), "--window", "6", "--response-timeout", "10", "--timeout", "240"];
    let mut run = SdkRun::spawn(&cluster, follower, "sdk2", &args)?;

    // Kill the leader once the follower shows some of the SDK's workflows COMPLETED.
    let started_before_kill = wait_until(secs(120), "some of the SDK's workflows completed", || {
        let started = run.started();
        let running = run.check_running();
        async move {
            running?;
            let mut completed = 0;
            for id in started.keys() {
                let wf = get(follower, &format!("/api/workflow/{id}?includeTasks=false")).await?.ok()?.json()?;
                completed += usize::from(wf["status"] == "COMPLETED");
            }
            ensure!(completed >= kill_after, "{completed} of {} started completed", started.len());
            Ok(started.len())
        }
    })
    .await?;
    ensure!(started_before_kill < n, "the script had started all {n} workflows before the kill");
    cluster.node(leader).kill()?;
    let killed_at = Instant::now();
    let new_leader = cluster.leader_by(secs(20)).await?;
    ensure!(new_leader != leader, "n{leader} was killed but is still named leader");
    eprintln!(
        "killed leader n{leader} after {started_before_kill} of {n} starts; n{new_leader} leads after {:.1?}",
        killed_at.elapsed()
    );

    let took = run.finish(Duration::from_secs(300)).await?;
    let started = finished_workflows(&run, n)?;
    let started_after_kill = n - started_before_kill;
    let mut timed_out = 0;
    for (id, i) in &started {
        timed_out += check_workflow(follower, id, *i, "sdk2").await?;
    }
    let statuses = cluster.wait_converged().await?;
    let complaints = run.sdk_complaints();
    eprintln!(
        "the SDK script ran {n} workflows ({started_after_kill} started after the kill) in {took:.1?}; \
         {timed_out} attempts timed out and were retried; the SDK logged {} warnings or errors{}; converged at {}",
        complaints.len(),
        complaints.first().map(|l| format!(" (first: {l})")).unwrap_or_default(),
        summary(&statuses)
    );
    for node in cluster.live() {
        for (id, i) in &started {
            check_workflow(node, id, *i, "sdk2").await?;
        }
    }
    cluster.pass();
    Ok(())
}
