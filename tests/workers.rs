//! Workers over gRPC against the real binary: long polls on any node, leased dispatch, completions under the
//! lease; the leader SIGKILLed mid-run; a worker that dies holding a task.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use baton::pb::v1::task_service_client::TaskServiceClient;
use baton::pb::v1::workflow_service_client::WorkflowServiceClient;
use baton::pb::v1::{PollRequest, StartWorkflowRequest, TaskResultStatus, UpdateTaskRequest};
use serde_json::{json, Value};
use support::*;
use tonic::transport::Channel;

fn channel(addr: &str) -> Result<Channel> {
    Ok(baton::raft::network::channel(addr)?)
}

async fn setup(via: &Node, response_timeout_s: u64) -> Result<()> {
    for name in ["add_one", "double", "square"] {
        let def = json!([{"name": name, "retryCount": 2, "retryDelaySeconds": 0, "responseTimeoutSeconds": response_timeout_s}]);
        post_json(via, "/api/metadata/taskdefs", &def).await?.ok()?;
    }
    let wf = json!({"name": "math", "version": 1, "tasks": [
        {"name": "add_one", "taskReferenceName": "a", "inputParameters": {"x": "${workflow.input.x}"}},
        {"name": "double", "taskReferenceName": "b", "inputParameters": {"x": "${a.output.x}"}},
        {"name": "square", "taskReferenceName": "c", "inputParameters": {"x": "${b.output.x}"}}],
        "outputParameters": {"result": "${c.output.x}"}});
    post_json(via, "/api/metadata/workflow", &wf).await?.ok()?;
    Ok(())
}

/// The completion of a polled task under its lease.
fn completed(task: &baton::pb::v1::WorkerTask, output: Value) -> UpdateTaskRequest {
    UpdateTaskRequest {
        workflow_id: task.workflow_id.clone(),
        task_id: task.task_id.clone(),
        lease_token: task.lease_token.clone(),
        status: TaskResultStatus::Completed as i32,
        output_json: output.to_string(),
        ..Default::default()
    }
}

/// One long poll for an `add_one` task (`poll_id` empty: none).
fn poll_one(worker: &str, timeout_ms: u32, poll_id: &str) -> PollRequest {
    PollRequest {
        task_type: "add_one".into(),
        worker_id: worker.into(),
        count: 1,
        timeout_ms,
        domain: String::new(),
        poll_id: poll_id.into(),
    }
}

fn compute(task_type: &str, x: i64) -> i64 {
    match task_type {
        "add_one" => x + 1,
        "double" => x * 2,
        _ => x * x,
    }
}

/// What the workers saw.
#[derive(Default)]
struct Tally {
    completed: AtomicUsize,
    refused: AtomicUsize,
    /// When each successful completion returned.
    completions: Mutex<Vec<Instant>>,
    /// (poll started, poll returned) of every poll that returned tasks.
    dispatches: Mutex<Vec<(Instant, Instant)>>,
    /// workflow id -> when its previous task's completion was acknowledged (the next task is ready from then on).
    ready_since: Mutex<BTreeMap<String, Instant>>,
    /// Task ready (previous completion acknowledged) -> handed to a worker, per task.
    dispatch_latency: Mutex<Vec<Duration>>,
}

/// A worker loop: polls all three types on its node, completes what it gets; on a transport error moves to the next
/// node and repeats the unanswered poll there under its id, and the unacknowledged reports (as the SDK does).
async fn worker(addrs: Vec<String>, start: usize, name: String, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut node = start;
    let mut polls = 0u64;
    let mut unanswered: BTreeMap<&str, String> = BTreeMap::new();
    let mut unreported: Vec<UpdateTaskRequest> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(ch) = channel(&addrs[node % addrs.len()]) else {
            node += 1;
            continue;
        };
        let mut client = TaskServiceClient::new(ch);
        let mut broken = false;
        for task_type in ["add_one", "double", "square"] {
            if broken {
                break;
            }
            polls += 1;
            let poll_id = unanswered.remove(task_type).unwrap_or_else(|| format!("{name}-{polls}"));
            let req = PollRequest {
                task_type: task_type.into(),
                worker_id: name.clone(),
                count: 4,
                timeout_ms: 200,
                domain: String::new(),
                poll_id: poll_id.clone(),
            };
            let poll_started = Instant::now();
            let tasks = match client.poll(req).await {
                Ok(r) => {
                    let tasks = r.into_inner().tasks;
                    let now = Instant::now();
                    if !tasks.is_empty() {
                        tally.dispatches.lock().expect("lock").push((poll_started, now));
                        let ready = tally.ready_since.lock().expect("lock");
                        let mut lat = tally.dispatch_latency.lock().expect("lock");
                        for t in &tasks {
                            if let Some(since) = ready.get(&t.workflow_id) {
                                lat.push(now.saturating_duration_since(*since));
                            }
                        }
                    }
                    tasks
                }
                Err(_) => {
                    unanswered.insert(task_type, poll_id);
                    broken = true;
                    break;
                }
            };
            for t in tasks {
                let input: Value = serde_json::from_str(&t.input_json).unwrap_or_default();
                let x = input["x"].as_i64().unwrap_or(0);
                unreported.push(UpdateTaskRequest {
                    worker_id: name.clone(),
                    ..completed(&t, json!({"x": compute(&t.task_type, x)}))
                });
            }
            while let Some(update) = unreported.pop() {
                let workflow_id = update.workflow_id.clone();
                match client.update_task(update.clone()).await {
                    Ok(_) => {
                        tally.completed.fetch_add(1, Ordering::Relaxed);
                        let now = Instant::now();
                        tally.completions.lock().expect("lock").push(now);
                        tally.ready_since.lock().expect("lock").insert(workflow_id, now);
                    }
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                        tally.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        unreported.push(update);
                        broken = true;
                        break;
                    }
                }
            }
        }
        if broken {
            node += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workflows_complete_with_workers_on_every_node_while_the_leader_is_killed() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let follower = cluster.nodes().iter().find(|n| n.id != leader).context("follower")?;
    setup(follower, 10).await?;
    let addrs: Vec<String> = cluster.nodes().iter().map(|n| n.grpc_addr.clone()).collect();

    const WORKFLOWS: i64 = 500;
    let mut wf_client = WorkflowServiceClient::new(channel(&follower.grpc_addr)?);
    let mut ids = BTreeMap::new();
    for x in 0..WORKFLOWS {
        let req =
            StartWorkflowRequest { name: "math".into(), input_json: json!({"x": x}).to_string(), ..Default::default() };
        let id = wf_client.start(req).await?.into_inner().workflow_id;
        ids.insert(id, x);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let workers: Vec<_> =
        (0..8).map(|i| tokio::spawn(worker(addrs.clone(), i, format!("w{i}"), stop.clone(), tally.clone()))).collect();

    // Kill the leader once a third of the work is done.
    let total_tasks = (WORKFLOWS * 3) as usize;
    wait_until(secs(60), "a third of the tasks done", || async {
        let done = tally.completed.load(Ordering::Relaxed);
        if done >= total_tasks / 3 {
            Ok(())
        } else {
            bail!("{done} of {total_tasks}")
        }
    })
    .await?;
    let killed_at = Instant::now();
    cluster.node(leader).kill()?;

    let survivor = cluster.live()[0];
    let mut pending: Vec<String> = ids.keys().cloned().collect();
    let deadline = secs(120);
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in &pending {
            let wf = get(survivor, &format!("/api/workflow/{id}?includeTasks=false")).await?.ok()?.json()?;
            if wf["status"] != "COMPLETED" {
                ensure!(
                    wf["status"] == "RUNNING",
                    "workflow {id} ended {}: {}",
                    wf["status"],
                    wf["reasonForIncompletion"]
                );
                still.push(id.clone());
            }
        }
        pending = still;
        ensure!(Instant::now() < deadline || pending.is_empty(), "{} workflows still running", pending.len());
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }

    // Outputs are right and each task reference completed exactly once (no attempt's result applied twice).
    let statuses = cluster.wait_converged().await?;
    for (id, x) in &ids {
        let wf = get(survivor, &format!("/api/workflow/{id}")).await?.ok()?.json()?;
        let expected = ((x + 1) * 2) * ((x + 1) * 2);
        ensure!(wf["output"]["result"] == expected, "workflow {id} (x={x}) output {}", wf["output"]);
        let mut completed: BTreeMap<String, usize> = BTreeMap::new();
        for t in wf["tasks"].as_array().context("tasks")? {
            if t["status"] == "COMPLETED" {
                *completed.entry(t["referenceTaskName"].as_str().unwrap_or_default().to_string()).or_default() += 1;
            }
        }
        ensure!(completed.values().all(|n| *n == 1) && completed.len() == 3, "workflow {id}: {completed:?}");
    }
    // The first poll begun after the kill that got tasks was served under the new leader (no lease can be
    // committed while there is none).
    let first_dispatch = tally
        .dispatches
        .lock()
        .expect("lock")
        .iter()
        .filter(|(start, _)| *start > killed_at)
        .map(|(_, end)| *end)
        .min();
    let mut lat = tally.dispatch_latency.lock().expect("lock").clone();
    lat.sort();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied();
    // A task whose lease answer died with the leader comes back to the worker that repeats its poll; none may be
    // left to wait out its response timeout (10 s here).
    let waited_out = lat.iter().filter(|l| **l >= Duration::from_secs(10)).count();
    println!(
        "workers: {} completions, {} refused as stale; leader kill -> first task dispatched after it: {:?}; \
         dispatch latency (task ready -> worker) p50 {:?} p99 {:?} over {} tasks, {} of them waited out a \
         response timeout (leased by the killed leader, answer lost); state_hash {}",
        tally.completed.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        first_dispatch.map(|t| t.duration_since(killed_at)),
        pct(0.5),
        pct(0.99),
        lat.len(),
        waited_out,
        &statuses[0].state_hash[..12]
    );
    ensure!(waited_out == 0, "{waited_out} tasks waited out their response timeout after the leader kill");
    cluster.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_task_is_handed_out_again_and_its_late_completion_is_refused() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let node = cluster.nodes().iter().find(|n| n.id != leader).context("follower")?;
    setup(node, 1).await?;
    let mut wf_client = WorkflowServiceClient::new(channel(&node.grpc_addr)?);
    let req =
        StartWorkflowRequest { name: "math".into(), input_json: json!({"x": 1}).to_string(), ..Default::default() };
    let id = wf_client.start(req).await?.into_inner().workflow_id;

    let mut tasks = TaskServiceClient::new(channel(&node.grpc_addr)?);
    let poll = |worker: &str| poll_one(worker, 5000, "");
    let held = tasks.poll(poll("doomed")).await?.into_inner().tasks;
    ensure!(held.len() == 1, "the first worker got {held:?}");
    let held = &held[0];
    // The holder "dies": after responseTimeoutSeconds (1 s) the leader times the attempt out and it is retried.
    let started = Instant::now();
    let again = tasks.poll(poll("rescuer")).await?.into_inner().tasks;
    ensure!(again.len() == 1, "no retry handed out within 5 s");
    let again = &again[0];
    ensure!(again.task_id != held.task_id && again.retry_count == 1, "expected the retry, got {again:?}");
    println!("task handed out again {:?} after the holder went silent", started.elapsed());

    let late = completed(held, json!({"x": 999}));
    let refused = tasks.update_task(late).await.expect_err("a late completion must be refused");
    ensure!(refused.code() == tonic::Code::FailedPrecondition, "{refused:?}");
    let ok = completed(again, json!({"x": 2}));
    tasks.update_task(ok.clone()).await?;
    tasks.update_task(ok).await.context("the same completion repeated is acknowledged")?;
    let wf = get(node, &format!("/api/workflow/{id}")).await?.ok()?.json()?;
    let a: Vec<&Value> =
        wf["tasks"].as_array().context("tasks")?.iter().filter(|t| t["referenceTaskName"] == "a").collect();
    ensure!(a.len() == 2 && a[0]["status"] == "TIMED_OUT" && a[1]["status"] == "COMPLETED", "{a:?}");
    ensure!(a[1]["outputData"]["x"] == 2, "the late result must not have been applied: {}", a[1]["outputData"]);
    let b = wf["tasks"].as_array().context("tasks")?.iter().find(|t| t["referenceTaskName"] == "b").context("b")?;
    ensure!(b["inputData"]["x"] == 2, "{b}");
    cluster.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_stream_sends_ready_tasks_up_to_the_credits_granted() -> Result<()> {
    use baton::pb::v1::{stream_request, StreamRequest, Subscribe};
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let node = cluster.nodes().iter().find(|n| n.id != leader).context("follower")?;
    setup(node, 30).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(StreamRequest {
        kind: Some(stream_request::Kind::Subscribe(Subscribe {
            task_type: "add_one".into(),
            worker_id: "streamer".into(),
            domain: String::new(),
            credits: 2,
        })),
    })
    .await?;
    let mut tasks = TaskServiceClient::new(channel(&node.grpc_addr)?);
    let mut stream = tasks.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let mut wf_client = WorkflowServiceClient::new(channel(&node.grpc_addr)?);
    for x in 0..3 {
        let req =
            StartWorkflowRequest { name: "math".into(), input_json: json!({"x": x}).to_string(), ..Default::default() };
        wf_client.start(req).await?;
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        let t = tokio::time::timeout(Duration::from_secs(10), stream.message()).await??.context("stream ended")?;
        got.push(t);
    }
    // Two credits, two tasks: the third stays queued until the worker grants another credit.
    let early = tokio::time::timeout(Duration::from_millis(700), stream.message()).await;
    ensure!(early.is_err(), "a task was pushed beyond the credits: {early:?}");
    tx.send(StreamRequest { kind: Some(stream_request::Kind::Credits(1)) }).await?;
    let third = tokio::time::timeout(Duration::from_secs(10), stream.message()).await??.context("stream ended")?;
    got.push(third);
    let ids: std::collections::BTreeSet<_> = got.iter().map(|t| t.workflow_id.clone()).collect();
    ensure!(ids.len() == 3, "three different workflows' tasks: {got:?}");
    for t in &got {
        let update = completed(t, json!({"x": 0}));
        tasks.update_task(update).await.context("a pushed task's lease is valid")?;
    }
    drop(tx);
    cluster.pass();
    Ok(())
}

/// Polls reaching a follower are served by the leader. A long poll held by a follower when the leader dies is
/// carried over to the next leader within the poll's own wait: the worker sees no error, only its task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_on_a_follower_outlives_the_leader_and_gets_a_task_from_the_next_one() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let follower = cluster.nodes().iter().find(|n| n.id != leader).context("follower")?;
    setup(follower, 30).await?;
    cluster.wait_converged().await?;

    let mut tasks = TaskServiceClient::new(channel(&follower.grpc_addr)?);
    let poll = poll_one("patient", 20_000, "");
    let waiting = tokio::spawn(async move { tasks.poll(poll).await });
    // The poll is parked on the leader, forwarded by the follower, before the leader dies: nothing is ready yet.
    let gauge = |node: &Node, field: &'static str| {
        let base = node.http_base();
        async move {
            let status = client().get(format!("{base}/api/cluster/status")).send().await?.json::<Value>().await?;
            Ok::<u64, anyhow::Error>(status[field].as_u64().unwrap_or(0))
        }
    };
    wait_until(secs(5), "the poll to be forwarded to the leader", || async {
        let forwarded = gauge(follower, "polls_forwarded").await?;
        let serving = gauge(cluster.node(leader), "polls_serving").await?;
        ensure!(
            forwarded == 1 && serving == 1,
            "forwarded by the follower {forwarded}, served by the leader {serving}"
        );
        Ok(())
    })
    .await?;
    ensure!(!waiting.is_finished(), "the poll returned with nothing ready: {:?}", waiting.await);

    cluster.node(leader).kill()?;
    let next = cluster.leader_by(secs(10)).await?;
    ensure!(next != leader, "a new leader");
    let mut wf_client = WorkflowServiceClient::new(channel(&follower.grpc_addr)?);
    let req =
        StartWorkflowRequest { name: "math".into(), input_json: json!({"x": 41}).to_string(), ..Default::default() };
    let id = wf_client.start(req).await?.into_inner().workflow_id;

    let got = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .context("the poll did not return within its wait")?
        .context("poll task")?
        .context("the worker saw an error across the leader change")?
        .into_inner()
        .tasks;
    ensure!(got.len() == 1 && got[0].workflow_id == id, "expected the new workflow's first task, got {got:?}");
    let input: Value = serde_json::from_str(&got[0].input_json)?;
    ensure!(input["x"] == 41, "{input}");
    cluster.pass();
    Ok(())
}

/// The SDK goes direct: a reply names the leader (`x-baton-leader`), and a client that knows that address sends its
/// next calls there instead of through the follower it started with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_moves_to_the_leader_named_in_replies() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let mut addrs: Vec<String> =
        cluster.nodes().iter().filter(|n| n.id != leader).map(|n| n.grpc_addr.clone()).collect();
    addrs.push(cluster.node(leader).grpc_addr.clone());
    setup(cluster.node(leader), 30).await?;

    let client = baton::client::Client::new(addrs.clone())?;
    ensure!(client.current_addr() == addrs[0], "starts on the first address given");
    let req =
        StartWorkflowRequest { name: "math".into(), input_json: json!({"x": 1}).to_string(), ..Default::default() };
    client.start_workflow(req).await?;
    ensure!(
        client.current_addr() == cluster.node(leader).grpc_addr,
        "after a reply naming the leader the client is on {}, not the leader {}",
        client.current_addr(),
        cluster.node(leader).grpc_addr
    );
    cluster.pass();
    Ok(())
}

/// Idempotent start across a leader change: the retry of a start, carrying the same idempotency key, reaches the
/// new leader through another node and answers the workflow the first attempt created; no second one exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_retried_after_the_leader_dies_answers_the_same_workflow() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let followers: Vec<&Node> = cluster.nodes().iter().filter(|n| n.id != leader).collect();
    setup(followers[0], 30).await?;
    let req = StartWorkflowRequest {
        name: "math".into(),
        input_json: json!({"x": 7}).to_string(),
        idempotency_key: "order-7".into(),
        correlation_id: "order-7".into(),
        ..Default::default()
    };
    let mut first = WorkflowServiceClient::new(channel(&followers[0].grpc_addr)?);
    let id = first.start(req.clone()).await?.into_inner().workflow_id;

    cluster.node(leader).kill()?;
    let next = cluster.leader_by(secs(10)).await?;
    ensure!(next != leader, "a new leader");
    let mut retry = WorkflowServiceClient::new(channel(&followers[1].grpc_addr)?);
    let again = retry.start(req).await?.into_inner().workflow_id;
    ensure!(again == id, "the retried start created {again}, the first one {id}");

    let listed = retry
        .list(baton::pb::v1::ListWorkflowsRequest { correlation_id: "order-7".into(), ..Default::default() })
        .await?
        .into_inner()
        .workflows;
    ensure!(listed.len() == 1 && listed[0].workflow_id == id, "workflows with the key's correlation id: {listed:?}");
    cluster.pass();
    Ok(())
}

/// A poll whose answer was lost with the leader is repeated under its id on another node: the new leader answers
/// the same task under the same lease, at once, instead of leaving it to wait out its response timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_repeated_under_its_id_after_the_leader_dies_gets_back_its_tasks() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let followers: Vec<&Node> = cluster.nodes().iter().filter(|n| n.id != leader).collect();
    setup(followers[0], 3600).await?;
    let mut wf_client = WorkflowServiceClient::new(channel(&followers[0].grpc_addr)?);
    let req =
        StartWorkflowRequest { name: "math".into(), input_json: json!({"x": 5}).to_string(), ..Default::default() };
    let id = wf_client.start(req).await?.into_inner().workflow_id;

    let poll = |poll_id: &str| poll_one("w", 5000, poll_id);
    // The answer arrives here, but stands for one the worker never saw (the leader died as it was sent).
    let mut on_leader = TaskServiceClient::new(channel(&cluster.node(leader).grpc_addr)?);
    let lost = on_leader.poll(poll("poll-1")).await?.into_inner().tasks;
    ensure!(lost.len() == 1 && lost[0].workflow_id == id, "first poll got {lost:?}");
    cluster.wait_converged().await?;
    cluster.node(leader).kill()?;
    cluster.leader_by(secs(10)).await?;

    let mut elsewhere = TaskServiceClient::new(channel(&followers[1].grpc_addr)?);
    let started = Instant::now();
    let again = elsewhere.poll(poll("poll-1")).await?.into_inner().tasks;
    ensure!(again.len() == 1, "the repeated poll got {again:?}");
    ensure!(
        again[0].task_id == lost[0].task_id && again[0].lease_token == lost[0].lease_token,
        "the repeated poll must answer the same task and lease: {:?} vs {:?}",
        again[0],
        lost[0]
    );
    println!("repeated poll answered in {:?}", started.elapsed());
    // A new poll does not get the task a second time: it is leased.
    let fresh = elsewhere.poll(PollRequest { timeout_ms: 300, ..poll("poll-2") }).await?.into_inner().tasks;
    ensure!(fresh.is_empty(), "a new poll got a leased task: {fresh:?}");
    let done = completed(&again[0], json!({"x": 6}));
    elsewhere.update_task(done).await.context("the recovered lease is the valid one")?;
    cluster.pass();
    Ok(())
}

/// A node that cannot reach a leader does not answer a poll with an empty success (a worker would keep polling it
/// forever): once the poll's wait is over it answers UNAVAILABLE, naming the problem, so the worker moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_on_a_node_without_a_leader_answers_unavailable() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let follower = cluster.nodes().iter().find(|n| n.id != leader).context("a follower")?;
    setup(follower, 30).await?;
    for n in cluster.nodes().iter().filter(|n| n.id != follower.id) {
        n.kill()?;
    }
    let mut tasks = TaskServiceClient::new(channel(&follower.grpc_addr)?);
    let poll = poll_one("w", 1000, "");
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(15), tasks.poll(poll)).await.context("the poll hung")?;
    let status = answer.expect_err("a node without a leader must not answer a poll with success");
    ensure!(status.code() == tonic::Code::Unavailable && status.message().contains("no leader"), "{status:?}");
    println!("answered {:?} after {:?}", status.message(), started.elapsed());
    cluster.pass();
    Ok(())
}

/// Regression (found by `baton chaos`, pause-leader): a poll a follower forwarded to a leader that then stopped
/// (SIGSTOP) stayed parked on it until it resumed, so no task was handed out through that follower while the
/// others had long elected a new leader. Now the follower re-sends the poll as soon as it knows another leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_poll_held_by_a_paused_leader_is_resent_to_the_next_one() -> Result<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let followers: Vec<&Node> = cluster.nodes().iter().filter(|n| n.id != leader).collect();
    setup(followers[0], 30).await?;
    cluster.wait_converged().await?;

    let mut tasks = TaskServiceClient::new(channel(&followers[0].grpc_addr)?);
    let poll = poll_one("patient", 25_000, "");
    let waiting = tokio::spawn(async move { tasks.poll(poll).await });
    wait_until(secs(5), "the poll to be parked on the leader", || async {
        let status = get(followers[0], "/api/cluster/status").await?.ok()?.json()?;
        ensure!(status["polls_forwarded"] == 1, "forwarded: {}", status["polls_forwarded"]);
        Ok(())
    })
    .await?;

    let paused = Pid::from_raw(i32::try_from(cluster.node(leader).pid().context("leader pid")?)?);
    kill(paused, Signal::SIGSTOP)?;
    let outcome = async {
        let next = wait_until(secs(10), "the other two to agree on a new leader", || async {
            let (a, b) = (followers[0].status().await?, followers[1].status().await?);
            match (a.leader_id, b.leader_id) {
                (Some(x), Some(y)) if x == y && x != leader => Ok(x),
                _ => bail!("n{} names {:?}, n{} names {:?}", a.node_id, a.leader_id, b.node_id, b.leader_id),
            }
        })
        .await?;
        let mut wf_client = WorkflowServiceClient::new(channel(&followers[1].grpc_addr)?);
        let req =
            StartWorkflowRequest { name: "math".into(), input_json: json!({"x": 1}).to_string(), ..Default::default() };
        let id = wf_client.start(req).await?.into_inner().workflow_id;
        // The old leader is still stopped: the task can only come from n{next}, and at once: the follower already
        // knows n{next}. (Without the re-send, the poll comes free only when HTTP/2 keep-alive gives up on the
        // stopped leader, 3-6 s.)
        let got = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .context("the poll stayed parked on the paused leader")?
            .context("poll task")??
            .into_inner()
            .tasks;
        ensure!(got.len() == 1 && got[0].workflow_id == id, "n{next} answered {got:?}");
        Ok::<(), anyhow::Error>(())
    }
    .await;
    kill(paused, Signal::SIGCONT)?;
    outcome?;
    cluster.pass();
    Ok(())
}
