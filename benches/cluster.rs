//! Cluster figures from the real binary (three processes on loopback): task handoff latency and leader failover.
//!
//! `cargo bench --bench cluster` builds the release binary and prints:
//! - handoff latency: from a worker sending a task's completion to the next task of the workflow reaching its
//!   (already waiting) worker: two Raft commits (the completion, the lease) and the poll's answer. Measured with
//!   the workers on the leader and on a follower (their polls forwarded);
//! - failover: the leader SIGKILLed while workflows run, time until a worker holds a task leased by the new
//!   leader; over many kills, the killed node restarted and the cluster converged between kills.
//!
//! - user code: an INLINE or jq evaluation in process (what each replica's apply paid before ADR 0010) against a
//!   round trip to a sandbox child (what the leader pays now), and a workflow of three evaluated tasks end to end.
//!
//! Under `cargo test` (no `--bench` argument) it runs a short version as a smoke test. `BATON_BENCH_KILLS` and
//! `BATON_BENCH_WORKFLOWS` change the sizes.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use baton::pb::v1::task_service_client::TaskServiceClient;
use baton::pb::v1::workflow_service_client::WorkflowServiceClient;
use baton::pb::v1::{PollRequest, StartWorkflowRequest, TaskResultStatus, UpdateTaskRequest, WorkerTask};
use serde_json::json;
use support::*;
use tokio::sync::mpsc;
use tonic::transport::Channel;

const TYPES: [&str; 3] = ["step_a", "step_b", "step_c"];

fn main() -> Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let size = |var: &str, bench: usize, smoke: usize| {
        std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(if full { bench } else { smoke })
    };
    let workflows = size("BATON_BENCH_WORKFLOWS", 300, 10);
    let kills = size("BATON_BENCH_KILLS", 20, 1);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        println!("cluster bench: binary {BIN}");
        user_code(workflows).await?;
        handoff(workflows).await?;
        failover(kills).await
    })
}

fn channel(addr: &str) -> Result<Channel> {
    Ok(baton::raft::network::channel(addr)?)
}

async fn define(via: &Node) -> Result<()> {
    let defs: Vec<_> = TYPES
        .iter()
        .map(|t| json!({"name": t, "retryCount": 3, "retryDelaySeconds": 0, "responseTimeoutSeconds": 5}))
        .collect();
    post_json(via, "/api/metadata/taskdefs", &json!(defs)).await?.ok()?;
    let tasks: Vec<_> = TYPES
        .iter()
        .map(|t| json!({"name": t, "taskReferenceName": t, "inputParameters": {"n": "${workflow.input.n}"}}))
        .collect();
    post_json(via, "/api/metadata/workflow", &json!({"name": "chain", "version": 1, "tasks": tasks})).await?.ok()?;
    Ok(())
}

fn completion(task: &WorkerTask) -> UpdateTaskRequest {
    UpdateTaskRequest {
        workflow_id: task.workflow_id.clone(),
        task_id: task.task_id.clone(),
        lease_token: task.lease_token.clone(),
        status: TaskResultStatus::Completed as i32,
        output_json: json!({"done": task.task_type}).to_string(),
        worker_id: "bench".into(),
        ..Default::default()
    }
}

fn start_request(n: usize) -> StartWorkflowRequest {
    StartWorkflowRequest { name: "chain".into(), input_json: json!({"n": n}).to_string(), ..Default::default() }
}

/// Percentile `p` (0-100) of sorted samples.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    if samples.is_empty() {
        println!("{what}: no samples");
        return;
    }
    println!(
        "{what}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {}",
        percentile(&samples, 50).as_secs_f64() * 1e3,
        percentile(&samples, 90).as_secs_f64() * 1e3,
        percentile(&samples, 99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
        samples.len()
    );
}

// ------------------------------------------------------------------------------------------------- handoff

/// One workflow at a time; one waiting poller per task type, all on `node`.
async fn handoff(workflows: usize) -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    define(cluster.node(leader)).await?;
    cluster.wait_converged().await?;
    let follower = cluster.nodes().iter().find(|n| n.id != leader).context("a follower")?;
    for (label, node) in [("workers on the leader", cluster.node(leader)), ("workers on a follower", follower)] {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let pollers: Vec<_> = TYPES
            .iter()
            .map(|t| {
                let (tx, addr, task_type) = (tx.clone(), node.grpc_addr.clone(), t.to_string());
                tokio::spawn(async move {
                    let mut client = TaskServiceClient::new(channel(&addr)?);
                    loop {
                        let poll = PollRequest {
                            task_type: task_type.clone(),
                            worker_id: "bench".into(),
                            count: 1,
                            timeout_ms: 5000,
                            domain: String::new(),
                            poll_id: String::new(),
                        };
                        for task in client.poll(poll).await?.into_inner().tasks {
                            if tx.send((task, Instant::now())).is_err() {
                                return Ok::<(), anyhow::Error>(());
                            }
                        }
                    }
                })
            })
            .collect();
        let mut starts = WorkflowServiceClient::new(channel(&node.grpc_addr)?);
        let mut updates = TaskServiceClient::new(channel(&node.grpc_addr)?);
        let (mut first, mut next, mut acks) = (Vec::new(), Vec::new(), Vec::new());
        for n in 0..workflows {
            let sent = Instant::now();
            let id = starts.start(start_request(n)).await?.into_inner().workflow_id;
            let mut since = (sent, true);
            for _ in TYPES {
                let (task, received) =
                    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await?.context("pollers stopped")?;
                ensure!(task.workflow_id == id, "a task of another workflow: {task:?}");
                let took = received.saturating_duration_since(since.0);
                if since.1 {
                    first.push(took)
                } else {
                    next.push(took)
                }
                let sent = Instant::now();
                updates.update_task(completion(&task)).await?;
                acks.push(sent.elapsed());
                since = (sent, false);
            }
        }
        for p in pollers {
            p.abort();
        }
        report(&format!("{label}: start sent -> first task at its worker"), first);
        report(&format!("{label}: completion sent -> next task at its worker"), next);
        report(&format!("{label}: completion acknowledged"), acks);
    }
    cluster.pass();
    Ok(())
}

// ------------------------------------------------------------------------------------------------- failover

/// What the workers share: the leader just killed, and when a task leased by a later leader first arrived.
#[derive(Default)]
struct Watch {
    killed: Mutex<Option<(String, Instant)>>,
    first_after: Mutex<Option<Instant>>,
}

/// A worker pinned to one node: polls every type, completes what it gets; waits while its node is down.
async fn pinned_worker(addr: String, stop: Arc<AtomicBool>, watch: Arc<Watch>) -> Result<()> {
    while !stop.load(Ordering::Relaxed) {
        let mut client = TaskServiceClient::new(channel(&addr)?);
        for task_type in TYPES {
            let poll = PollRequest {
                task_type: task_type.into(),
                worker_id: format!("bench@{addr}"),
                count: 8,
                timeout_ms: 100,
                domain: String::new(),
                poll_id: String::new(),
            };
            let Ok(reply) = client.poll(poll).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                break;
            };
            let leader = reply
                .metadata()
                .get(baton::api::grpc_workflows::LEADER_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let tasks = reply.into_inner().tasks;
            if !tasks.is_empty() {
                let killed = watch.killed.lock().expect("lock").clone();
                if let (Some((old, _)), Some(leader)) = (killed, leader) {
                    if leader != old {
                        watch.first_after.lock().expect("lock").get_or_insert_with(Instant::now);
                    }
                }
            }
            for task in tasks {
                // A refused or lost completion is retried by the engine after the response timeout.
                let _ = client.update_task(completion(&task)).await;
            }
        }
    }
    Ok(())
}

async fn failover(kills: usize) -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    define(cluster.node(leader)).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let watch = Arc::new(Watch::default());
    let workers: Vec<_> = cluster
        .nodes()
        .iter()
        .map(|n| tokio::spawn(pinned_worker(n.grpc_addr.clone(), stop.clone(), watch.clone())))
        .collect();
    let addrs: Vec<String> = cluster.nodes().iter().map(|n| n.grpc_addr.clone()).collect();
    let client = baton::client::Client::new(addrs)?;
    let (mut to_dispatch, mut to_elect) = (Vec::new(), Vec::new());
    let mut started = 0;
    for round in 0..kills {
        let old = cluster.leader().await?;
        // Work in flight at the kill: a backlog of workflows started just before.
        for _ in 0..30 {
            client.start_workflow(start_request(started)).await?;
            started += 1;
        }
        *watch.first_after.lock().expect("lock") = None;
        let killed_at = Instant::now();
        *watch.killed.lock().expect("lock") = Some((cluster.node(old).grpc_addr.clone(), killed_at));
        cluster.node(old).kill()?;
        let new = cluster.leader_by(secs(10)).await?;
        let elected = killed_at.elapsed();
        let dispatched = wait_until(secs(10), "a task leased by the new leader", || async {
            (*watch.first_after.lock().expect("lock")).context("not yet")
        })
        .await?;
        let took = dispatched.saturating_duration_since(killed_at);
        println!("kill {round}: n{old} SIGKILLed; n{new} elected (seen) after {elected:?}, first task dispatched after {took:?}");
        to_dispatch.push(took);
        to_elect.push(elected);
        *watch.killed.lock().expect("lock") = None;
        cluster.node(old).restart().await?;
        // Let the backlog drain so the cluster can converge before the next kill.
        let total = started;
        wait_until(secs(60), "every workflow started so far to complete", || async {
            let done = client
                .list_workflows(baton::pb::v1::ListWorkflowsRequest {
                    name: "chain".into(),
                    status: "COMPLETED".into(),
                    limit: 1,
                    offset: u32::try_from(total - 1)?,
                    ..Default::default()
                })
                .await?;
            ensure!(!done.is_empty(), "not all completed yet");
            Ok(())
        })
        .await?;
        cluster.wait_converged().await?;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await??;
    }
    report("leader SIGKILL -> new leader seen by every live node (status polled every 25 ms)", to_elect);
    report("leader SIGKILL -> first task dispatched by the new leader", to_dispatch);
    cluster.pass();
    Ok(())
}

// ------------------------------------------------------------------------------------------------- user code

/// What user code costs now that the leader evaluates it in a sandbox child and commits the outcome: the child's
/// round trip, against the in-process evaluation every replica used to run inside apply; and a workflow of an
/// INLINE, a JSON_JQ_TRANSFORM and a JavaScript SWITCH end to end (its own start and end times, leader clock).
async fn user_code(workflows: usize) -> Result<()> {
    use baton::engine::evaluation::{evaluate, EvalRequest, Language};
    use baton::sandbox::{Sandbox, SandboxLimits};
    let requests = [
        (
            "INLINE",
            EvalRequest {
                language: Language::Js,
                expression: "$.a + $.b".into(),
                input: json!({"a": 1, "b": 2}),
                now_ms: 0,
            },
        ),
        (
            "JSON_JQ_TRANSFORM",
            EvalRequest {
                language: Language::Jq,
                expression: "{sum: (.a + .b)}".into(),
                input: json!({"a": 1, "b": 2}),
                now_ms: 0,
            },
        ),
    ];
    let sandbox = Sandbox::with_program(SandboxLimits::default(), BIN.into());
    for (what, request) in &requests {
        let mut in_process = Vec::new();
        let mut in_child = Vec::new();
        for _ in 0..workflows.max(10) {
            let started = Instant::now();
            std::hint::black_box(evaluate(request));
            in_process.push(started.elapsed());
            let started = Instant::now();
            let outcome = sandbox.evaluate(request).await.map_err(|e| anyhow::anyhow!(e))?;
            in_child.push(started.elapsed());
            ensure!(matches!(outcome, baton::engine::evaluation::EvalOutcome::Values(_)), "{what}: {outcome:?}");
        }
        report(&format!("{what}: evaluated in process (what each replica's apply paid before)"), in_process);
        report(&format!("{what}: evaluated in a sandbox child (the leader, once)"), in_child);
    }

    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let via = cluster.node(leader);
    let def = json!({"name": "code", "tasks": [
        {"name": "add", "taskReferenceName": "add", "type": "INLINE",
         "inputParameters": {"evaluatorType": "javascript", "expression": "$.a + 2", "a": "${workflow.input.n}"}},
        {"name": "shape", "taskReferenceName": "shape", "type": "JSON_JQ_TRANSFORM",
         "inputParameters": {"queryExpression": "{sum: .sum}", "sum": "${add.output.result}"}},
        {"name": "route", "taskReferenceName": "route", "type": "SWITCH", "evaluatorType": "javascript",
         "expression": "$.sum > 2 ? 'big' : 'small'", "inputParameters": {"sum": "${shape.output.result.sum}"},
         "decisionCases": {"big": [{"name": "n", "taskReferenceName": "n", "type": "NOOP"}]}}]});
    post_json(via, "/api/metadata/workflow", &def).await?.ok()?;
    let mut samples = Vec::new();
    for n in 0..workflows {
        let id = post_json(via, "/api/workflow", &json!({"name": "code", "input": {"n": n}})).await?.ok()?.body;
        let wf = wait_until(secs(30), "the workflow to complete", || async {
            let wf = get(via, &format!("/api/workflow/{id}?includeTasks=false")).await?.ok()?.json()?;
            ensure!(wf["status"] == "COMPLETED", "still {}", wf["status"]);
            Ok(wf)
        })
        .await?;
        let ms = wf["endTime"].as_u64().unwrap_or(0).saturating_sub(wf["startTime"].as_u64().unwrap_or(0));
        samples.push(Duration::from_millis(ms));
    }
    report(
        "workflow of INLINE + JSON_JQ_TRANSFORM + JavaScript SWITCH, start to end (leader clock, ms steps)",
        samples,
    );
    cluster.pass();
    Ok(())
}
