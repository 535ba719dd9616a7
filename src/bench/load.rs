//! The workflow load of `baton bench workflow` and `baton bench failover`: a three-task sequential workflow, workers
//! over gRPC that complete every task at once, and starts either closed-loop (a fixed number of workflows in flight,
//! the highest rate the cluster sustains) or open-loop (a fixed rate, each start sent on schedule whether or not
//! earlier ones were answered, so a slow answer cannot hide the ones behind it).
//!
//! What is measured, in a window opened after a warm-up:
//! - start: from sending `WorkflowService.Start` to its answer (committed and applied);
//! - dispatch: from a task's scheduled time (the leader's clock when it accepted the command that made the task
//!   ready) to the task's arrival at a worker: the commit of that command, the lease's commit, the poll's answer;
//! - end to end: from sending the start to the answer of the last task's completion.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::Samples;
use crate::api::grpc_workflows::LEADER_HEADER;
use crate::client::Client;
use crate::pb::v1 as pb;
use crate::pb::v1::task_service_client::TaskServiceClient;

/// The workflow's name.
pub const WORKFLOW: &str = "bench_chain";
/// Its tasks' types, in order.
pub const TASK_TYPES: [&str; 3] = ["bench_a", "bench_b", "bench_c"];
/// Most tasks one poll asks for.
const POLL_BATCH: u32 = 64;
/// How long one poll waits for a task, ms.
const POLL_WAIT_MS: u32 = 500;
/// Pause before a worker tries the next node after its node failed a poll.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// A task whose completion was lost (a leader died) is handed out again after this long.
const RESPONSE_TIMEOUT_SECONDS: u64 = 5;

fn mutex<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("bench tally locks are never poisoned")
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Registers the task definitions and the workflow.
pub async fn register(client: &Client) -> anyhow::Result<()> {
    let defs = TASK_TYPES
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t, "retryCount": 3, "retryDelaySeconds": 0,
                "responseTimeoutSeconds": RESPONSE_TIMEOUT_SECONDS, "timeoutSeconds": 0,
            })
            .to_string()
        })
        .collect();
    client.put_task_defs(defs).await.context("registering the bench task definitions")?;
    let tasks: Vec<_> = TASK_TYPES
        .iter()
        .map(|t| serde_json::json!({"name": t, "taskReferenceName": t, "type": "SIMPLE", "inputParameters": {"n": "${workflow.input.n}"}}))
        .collect();
    let def = serde_json::json!({"name": WORKFLOW, "version": 1, "tasks": tasks, "schemaVersion": 2});
    client.put_workflow_defs(vec![def.to_string()]).await.context("registering the bench workflow")?;
    Ok(())
}

/// What a measurement window saw.
#[derive(Debug, Default)]
pub struct Window {
    /// Its length, seconds.
    pub seconds: f64,
    /// Starts answered.
    pub started: u64,
    /// Tasks whose completion was answered.
    pub tasks_done: u64,
    /// Workflows whose last completion was answered.
    pub workflows_done: u64,
    /// Starts refused or failed.
    pub start_errors: u64,
    /// Completions refused or failed.
    pub update_errors: u64,
    /// Start latencies.
    pub start: Samples,
    /// Dispatch latencies.
    pub dispatch: Samples,
    /// End-to-end latencies.
    pub e2e: Samples,
}

/// A leader kill being watched: the first task dispatched by another leader after it.
#[derive(Debug)]
struct KillWatch {
    killed_addr: String,
    at: Instant,
    first_after: Option<Instant>,
}

/// What starters and workers record, shared.
#[derive(Debug, Default)]
pub struct Tally {
    window: Mutex<(Option<Instant>, Window)>,
    /// Workflow id -> when its start was sent.
    begun: Mutex<HashMap<String, Instant>>,
    in_flight: AtomicI64,
    kill: Mutex<Option<KillWatch>>,
}

impl Tally {
    /// Forgets what was recorded and opens a new window now.
    pub fn open_window(&self) {
        *mutex(&self.window) = (Some(Instant::now()), Window::default());
    }

    /// Closes the window and answers what it saw.
    pub fn close_window(&self) -> Window {
        let (opened, mut window) = std::mem::take(&mut *mutex(&self.window));
        window.seconds = opened.map_or(0.0, |o| o.elapsed().as_secs_f64());
        window
    }

    fn record(&self, f: impl FnOnce(&mut Window)) {
        let mut window = mutex(&self.window);
        if window.0.is_some() {
            f(&mut window.1);
        }
    }

    /// Workflows started and not yet seen to end.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Watches for the first task dispatched by a leader other than `killed_addr` from now on.
    pub fn watch_kill(&self, killed_addr: &str) {
        *mutex(&self.kill) = Some(KillWatch { killed_addr: killed_addr.into(), at: Instant::now(), first_after: None });
    }

    /// Kill to the first task dispatched by another leader, once seen.
    pub fn kill_to_dispatch(&self) -> Option<Duration> {
        mutex(&self.kill).as_ref().and_then(|k| Some(k.first_after?.saturating_duration_since(k.at)))
    }

    fn dispatched_by(&self, leader: Option<&str>, at: Instant) {
        if let (Some(watch), Some(leader)) = (mutex(&self.kill).as_mut(), leader) {
            if leader != watch.killed_addr && at > watch.at && watch.first_after.is_none() {
                watch.first_after = Some(at);
            }
        }
    }
}

/// Starts one workflow; answers whether it was started.
async fn start_one(client: &Client, n: u64, tally: &Tally) -> bool {
    let request =
        pb::StartWorkflowRequest { name: WORKFLOW.into(), input_json: format!("{{\"n\":{n}}}"), ..Default::default() };
    let sent = Instant::now();
    match client.start_workflow(request).await {
        Ok(id) => {
            let took = sent.elapsed();
            mutex(&tally.begun).insert(id, sent);
            tally.in_flight.fetch_add(1, Ordering::Relaxed);
            tally.record(|w| {
                w.started += 1;
                w.start.push(took);
            });
            true
        }
        Err(_) => {
            tally.record(|w| w.start_errors += 1);
            false
        }
    }
}

/// Clients for starts: a few, so the starts spread over several connections.
pub fn start_clients(addrs: &[String], n: usize) -> anyhow::Result<Vec<Arc<Client>>> {
    (0..n.max(1)).map(|_| Ok(Arc::new(Client::new(addrs.to_vec())?))).collect()
}

/// Closed loop: `starters` tasks keep starting workflows while `permits` has any (one per workflow in flight; a
/// finished workflow gives its permit back).
pub fn closed_loop(
    clients: &[Arc<Client>],
    starters: usize,
    permits: Arc<Semaphore>,
    tally: Arc<Tally>,
    stop: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let counter = Arc::new(AtomicU64::new(0));
    (0..starters)
        .map(|i| {
            let (client, permits, tally, stop, counter) =
                (clients[i % clients.len()].clone(), permits.clone(), tally.clone(), stop.clone(), counter.clone());
            tokio::spawn(async move {
                loop {
                    let permit = tokio::select! {
                        p = permits.acquire() => match p { Ok(p) => p, Err(_) => return },
                        _ = stop.cancelled() => return,
                    };
                    permit.forget();
                    if !start_one(&client, counter.fetch_add(1, Ordering::Relaxed), &tally).await {
                        permits.add_permits(1);
                    }
                }
            })
        })
        .collect()
}

/// Open loop: starts at `rate` per second, each on its own schedule.
pub fn open_loop(clients: &[Arc<Client>], rate: f64, tally: Arc<Tally>, stop: CancellationToken) -> JoinHandle<()> {
    let clients = clients.to_vec();
    tokio::spawn(async move {
        let began = tokio::time::Instant::now();
        for n in 0u64.. {
            let at = began + Duration::from_secs_f64(n as f64 / rate);
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = stop.cancelled() => return,
            }
            let (client, tally) = (clients[n as usize % clients.len()].clone(), tally.clone());
            tokio::spawn(async move {
                start_one(&client, n, &tally).await;
            });
        }
    })
}

/// `workers` workers, each polling every task type, the first starting on node 0, the next on node 1, ...; like
/// Baton's own worker client, each moves to the leader once a reply names it (a follower would forward every poll
/// and completion to it), and a worker whose node fails a poll moves to the next node. A finished workflow gives a permit back to `permits`, if any.
pub fn workers(
    addrs: &[String],
    workers: usize,
    tally: Arc<Tally>,
    permits: Option<Arc<Semaphore>>,
    stop: CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut handles = Vec::new();
    for w in 0..workers {
        let clients: Vec<TaskServiceClient<Channel>> = addrs
            .iter()
            .map(|a| Ok(TaskServiceClient::new(crate::raft::network::channel(a)?)))
            .collect::<anyhow::Result<_>>()?;
        for task_type in TASK_TYPES {
            let poller = Poller {
                addrs: addrs.to_vec(),
                clients: clients.clone(),
                at: w % addrs.len(),
                worker_id: format!("bench-worker-{w}"),
                task_type,
                tally: tally.clone(),
                permits: permits.clone(),
            };
            handles.push(tokio::spawn(poller.run(stop.clone())));
        }
    }
    Ok(handles)
}

struct Poller {
    addrs: Vec<String>,
    clients: Vec<TaskServiceClient<Channel>>,
    at: usize,
    worker_id: String,
    task_type: &'static str,
    tally: Arc<Tally>,
    permits: Option<Arc<Semaphore>>,
}

impl Poller {
    async fn run(mut self, stop: CancellationToken) {
        let last = self.task_type == TASK_TYPES[TASK_TYPES.len() - 1];
        while !stop.is_cancelled() {
            let request = pb::PollRequest {
                task_type: self.task_type.into(),
                worker_id: self.worker_id.clone(),
                count: POLL_BATCH,
                timeout_ms: POLL_WAIT_MS,
                ..Default::default()
            };
            let mut client = self.clients[self.at].clone();
            let reply = tokio::select! {
                r = client.poll(request) => r,
                _ = stop.cancelled() => return,
            };
            let reply = match reply {
                Ok(reply) => reply,
                Err(_) => {
                    self.at = (self.at + 1) % self.clients.len();
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            let (arrived, arrived_ms) = (Instant::now(), now_ms());
            let leader = reply.metadata().get(LEADER_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
            let tasks = reply.into_inner().tasks;
            // Like Baton's own client: once a reply names the leader, poll it directly (no forwarding hop).
            if let Some(i) = leader.as_ref().and_then(|l| self.addrs.iter().position(|a| a == l)) {
                self.at = i;
            }
            if !tasks.is_empty() {
                self.tally.dispatched_by(leader.as_deref(), arrived);
            }
            for task in tasks {
                let waited = Duration::from_millis(arrived_ms.saturating_sub(task.scheduled_time_ms));
                self.tally.record(|w| w.dispatch.push(waited));
                let (tally, permits) = (self.tally.clone(), self.permits.clone());
                tokio::spawn(complete(client.clone(), task, last, tally, permits));
            }
        }
    }
}

/// Reports `task` completed; when it was the workflow's last, the workflow is done.
async fn complete(
    mut client: TaskServiceClient<Channel>,
    task: pb::WorkerTask,
    last: bool,
    tally: Arc<Tally>,
    permits: Option<Arc<Semaphore>>,
) {
    let update = pb::UpdateTaskRequest {
        workflow_id: task.workflow_id.clone(),
        task_id: task.task_id,
        lease_token: task.lease_token,
        status: pb::TaskResultStatus::Completed as i32,
        output_json: "{\"ok\":true}".into(),
        worker_id: "bench".into(),
        ..Default::default()
    };
    if client.update_task(update).await.is_err() {
        // The task is handed out again after its response timeout.
        tally.record(|w| w.update_errors += 1);
        return;
    }
    tally.record(|w| w.tasks_done += 1);
    if last {
        let begun = mutex(&tally.begun).remove(&task.workflow_id);
        tally.in_flight.fetch_sub(1, Ordering::Relaxed);
        tally.record(|w| {
            w.workflows_done += 1;
            if let Some(begun) = begun {
                w.e2e.push(begun.elapsed());
            }
        });
        if let Some(permits) = permits {
            permits.add_permits(1);
        }
    }
}
