//! The work a chaos run keeps the cluster busy with: the definitions (six workflow shapes), in-process workers
//! pinned to each node, and a steady stream of workflow starts.
//!
//! Workers compute a deterministic output from the input (`x`), so each shape's final output is known in advance;
//! they count how often each task id reaches them (at-least-once delivery makes a second time legal, and worth
//! reporting) and when each dispatch arrived under which leader (the `x-baton-leader` reply metadata), which is how
//! the time from a fault to the first task dispatched by the new leader is measured.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;

use crate::api::grpc_workflows::LEADER_HEADER;
use crate::client::Client;
use crate::pb::v1 as pb;
use crate::pb::v1::task_service_client::TaskServiceClient;

/// Task type computing `x + 1`.
const ADD: &str = "chaos_add";
/// Task type computing `3 * x`.
const MUL: &str = "chaos_mul";
/// Task type whose first attempt fails on purpose; a retry computes `x + 7`.
const FLAKY: &str = "chaos_flaky";
/// Every task type the workers serve.
pub const TASK_TYPES: [&str; 3] = [ADD, MUL, FLAKY];
/// How long a worker's long poll waits for a task, ms.
const POLL_WAIT_MS: u32 = 500;
/// How long a start is retried (with the same idempotency key) before it counts as not acknowledged.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Starts waiting for an answer at once; beyond this the rate drops rather than memory growing.
const MAX_STARTS_IN_FLIGHT: usize = 256;

/// The workflow shapes a run starts, in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// add, mul, add in a row.
    Sequential,
    /// add and mul in parallel branches, then a JOIN.
    ForkJoin,
    /// One task that fails its first attempt (retryCount 2, no delay).
    Retry,
    /// A SUB_WORKFLOW running the sequential shape.
    SubWorkflow,
    /// add, a one-second WAIT, mul.
    Wait,
    /// add, then user code the leader evaluates outside apply: an INLINE, a jq transform, a JavaScript SWITCH and
    /// a DO_WHILE of three iterations whose condition is JavaScript (a leader killed mid-evaluation must leave each
    /// evaluated once, by whichever leader's outcome commits first).
    Evaluated,
}

impl Shape {
    /// Every shape.
    pub const ALL: [Shape; 6] =
        [Shape::Sequential, Shape::ForkJoin, Shape::Retry, Shape::SubWorkflow, Shape::Wait, Shape::Evaluated];

    /// The workflow definition's name.
    pub fn workflow_name(self) -> &'static str {
        match self {
            Shape::Sequential => "chaos_sequential",
            Shape::ForkJoin => "chaos_fork_join",
            Shape::Retry => "chaos_retry",
            Shape::SubWorkflow => "chaos_sub_workflow",
            Shape::Wait => "chaos_wait",
            Shape::Evaluated => "chaos_evaluated",
        }
    }

    /// The output a run of this shape with input `x` must end with.
    pub fn expected_output(self, x: i64) -> Value {
        match self {
            Shape::Sequential | Shape::SubWorkflow => json!({"result": (x + 1) * 3 + 1}),
            Shape::ForkJoin => json!({"a": x + 1, "b": 3 * x}),
            Shape::Retry => json!({"result": x + 7}),
            Shape::Wait => json!({"result": (x + 1) * 3}),
            Shape::Evaluated => json!({"result": (x + 1) * 2 + 5, "parity": "odd", "loops": 3}),
        }
    }

    /// The workflow definition (Conductor JSON).
    fn definition(self) -> Value {
        let task = |name: &str, reference: &str, x: &str| json!({"name": name, "taskReferenceName": reference, "type": "SIMPLE", "inputParameters": {"x": x}});
        let (tasks, output) = match self {
            Shape::Sequential => (
                json!([
                    task(ADD, "first", "${workflow.input.x}"),
                    task(MUL, "second", "${first.output.x}"),
                    task(ADD, "third", "${second.output.x}")
                ]),
                json!({"result": "${third.output.x}"}),
            ),
            Shape::ForkJoin => (
                json!([
                    {"name": "fork", "taskReferenceName": "fork", "type": "FORK_JOIN", "forkTasks": [
                        [task(ADD, "left", "${workflow.input.x}")],
                        [task(MUL, "right", "${workflow.input.x}")]]},
                    {"name": "join", "taskReferenceName": "join", "type": "JOIN", "joinOn": ["left", "right"]}
                ]),
                json!({"a": "${left.output.x}", "b": "${right.output.x}"}),
            ),
            Shape::Retry => {
                (json!([task(FLAKY, "flaky", "${workflow.input.x}")]), json!({"result": "${flaky.output.x}"}))
            }
            Shape::SubWorkflow => (
                json!([{"name": "child", "taskReferenceName": "child", "type": "SUB_WORKFLOW",
                    "subWorkflowParam": {"name": Shape::Sequential.workflow_name(), "version": 1},
                    "inputParameters": {"x": "${workflow.input.x}"}}]),
                json!({"result": "${child.output.result}"}),
            ),
            Shape::Wait => (
                json!([
                    task(ADD, "before", "${workflow.input.x}"),
                    {"name": "pause", "taskReferenceName": "pause", "type": "WAIT", "inputParameters": {"duration": "1s"}},
                    task(MUL, "after", "${before.output.x}")
                ]),
                json!({"result": "${after.output.x}"}),
            ),
            Shape::Evaluated => (
                json!([
                    task(ADD, "first", "${workflow.input.x}"),
                    {"name": "double", "taskReferenceName": "double", "type": "INLINE", "inputParameters": {
                        "evaluatorType": "javascript", "expression": "$.v * 2", "v": "${first.output.x}"}},
                    {"name": "shift", "taskReferenceName": "shift", "type": "JSON_JQ_TRANSFORM", "inputParameters": {
                        "queryExpression": "{y: (.v + 5)}", "v": "${double.output.result}"}},
                    {"name": "parity", "taskReferenceName": "parity", "type": "SWITCH", "evaluatorType": "javascript",
                     "expression": "$.y % 2 == 0 ? 'even' : 'odd'", "inputParameters": {"y": "${shift.output.result.y}"},
                     "decisionCases": {
                        "even": [{"name": "even", "taskReferenceName": "even", "type": "SET_VARIABLE",
                                  "inputParameters": {"parity": "even"}}],
                        "odd": [{"name": "odd", "taskReferenceName": "odd", "type": "SET_VARIABLE",
                                 "inputParameters": {"parity": "odd"}}]}},
                    {"name": "count", "taskReferenceName": "count", "type": "DO_WHILE",
                     "loopCondition": "$.count['iteration'] < 3",
                     "loopOver": [{"name": "step", "taskReferenceName": "step", "type": "INLINE", "inputParameters": {
                        "evaluatorType": "javascript", "expression": "$.y + 1", "y": "${shift.output.result.y}"}}]}
                ]),
                json!({"result": "${shift.output.result.y}", "parity": "${workflow.variables.parity}",
                       "loops": "${count.output.iteration}"}),
            ),
        };
        json!({"name": self.workflow_name(), "version": 1, "schemaVersion": 2, "tasks": tasks, "outputParameters": output})
    }
}

/// Registers the task definitions and every shape's workflow definition (the sequential one first: the
/// sub-workflow shape refers to it).
pub async fn register_definitions(client: &Client) -> anyhow::Result<()> {
    // A short response timeout, so a task lost with a killed worker is handed out again within seconds.
    let task_defs = TASK_TYPES
        .iter()
        .map(|name| {
            let retries = if *name == FLAKY { 2 } else { 3 };
            json!({"name": name, "retryCount": retries, "retryDelaySeconds": 0, "timeoutSeconds": 0,
                   "responseTimeoutSeconds": 3})
            .to_string()
        })
        .collect();
    client.put_task_defs(task_defs).await.context("registering the chaos task definitions")?;
    for shape in Shape::ALL {
        client
            .put_workflow_defs(vec![shape.definition().to_string()])
            .await
            .with_context(|| format!("registering workflow definition {}", shape.workflow_name()))?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------- workers

/// One poll reply that carried tasks.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// When the reply arrived.
    pub at: Instant,
    /// The leader the answering node named (`x-baton-leader`), if any.
    pub leader: Option<String>,
}

/// What the workers observed, shared by all of them.
#[derive(Debug, Default)]
pub struct Tally {
    /// Task id -> times it reached a worker.
    deliveries: Mutex<HashMap<String, u32>>,
    /// Poll replies with tasks, in arrival order (trimmed by [`Tally::forget_dispatches_before`]).
    dispatches: Mutex<Vec<Dispatch>>,
    /// Completions the cluster acknowledged.
    pub completed: AtomicU64,
    /// Completions refused because the lease was stale (the task had been handed out again).
    pub refused: AtomicU64,
    /// Tasks held by a killed worker and never reported.
    pub abandoned: AtomicU64,
}

impl Tally {
    fn delivered(&self, tasks: &[pb::WorkerTask]) -> Vec<u32> {
        let mut deliveries = self.deliveries.lock().unwrap_or_else(|e| e.into_inner());
        tasks
            .iter()
            .map(|t| {
                let n = deliveries.entry(t.task_id.clone()).or_insert(0);
                *n += 1;
                *n
            })
            .collect()
    }

    /// Deliveries beyond the first, summed over every task id.
    pub fn duplicate_deliveries(&self) -> u64 {
        let deliveries = self.deliveries.lock().unwrap_or_else(|e| e.into_inner());
        deliveries.values().map(|n| u64::from(n.saturating_sub(1))).sum()
    }

    /// The first dispatch after `since` named as coming from the leader at `leader` (a gRPC address).
    pub fn first_dispatch_by(&self, leader: &str, since: Instant) -> Option<Instant> {
        let dispatches = self.dispatches.lock().unwrap_or_else(|e| e.into_inner());
        dispatches.iter().find(|d| d.at >= since && d.leader.as_deref() == Some(leader)).map(|d| d.at)
    }

    /// Drops the dispatches older than `before` (they can no longer answer a question).
    pub fn forget_dispatches_before(&self, before: Instant) {
        self.dispatches.lock().unwrap_or_else(|e| e.into_inner()).retain(|d| d.at >= before);
    }
}

/// Set on a worker to make it die holding its next tasks: it sends their ids and never reports them.
type Doom = Arc<Mutex<Option<oneshot::Sender<Vec<String>>>>>;

/// One running worker: one task type, pinned to one node.
struct WorkerSlot {
    node: usize,
    task_type: &'static str,
    abort: AbortHandle,
    doom: Doom,
}

/// The in-process workers: one per task type on every node.
pub struct Workers {
    channels: Vec<Channel>,
    tally: Arc<Tally>,
    tasks: JoinSet<()>,
    slots: Vec<WorkerSlot>,
    spawned: usize,
}

impl Workers {
    /// Starts a worker for every task type on every node (`channels`, one per node).
    pub fn start(channels: Vec<Channel>, tally: Arc<Tally>) -> Workers {
        let mut workers = Workers { channels, tally, tasks: JoinSet::new(), slots: Vec::new(), spawned: 0 };
        for node in 0..workers.channels.len() {
            for task_type in TASK_TYPES {
                workers.spawn(node, task_type);
            }
        }
        workers
    }

    fn spawn(&mut self, node: usize, task_type: &'static str) {
        self.spawned += 1;
        let worker_id = format!("chaos-w{}-n{}-{task_type}", self.spawned, node + 1);
        let doom: Doom = Arc::default();
        let work = work(self.channels[node].clone(), task_type, worker_id, self.tally.clone(), doom.clone());
        let abort = self.tasks.spawn(work);
        self.slots.push(WorkerSlot { node, task_type, abort, doom });
    }

    /// Kills a random worker once it holds tasks, without reporting them, and starts a replacement on the same
    /// node. Answers which worker, and the abandoned task ids (`None` if it got no task before `deadline`).
    pub async fn kill_one_holding(&mut self, deadline: Instant) -> (String, Option<Vec<String>>) {
        let slot = self.slots.remove(super::faults::random_below(self.slots.len()));
        let (tx, rx) = oneshot::channel();
        *slot.doom.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        let held = tokio::time::timeout_at(deadline.into(), rx).await.ok().and_then(Result::ok);
        slot.abort.abort();
        if let Some(tasks) = &held {
            self.tally.abandoned.fetch_add(tasks.len() as u64, Ordering::Relaxed);
        }
        self.spawn(slot.node, slot.task_type);
        (format!("{} worker on node {}", slot.task_type, slot.node + 1), held)
    }

    /// Stops every worker.
    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

/// The output of a task of `task_type` for input `x`; `None` when the attempt must fail.
fn compute(task_type: &str, x: i64, retry_count: u32) -> Option<i64> {
    match task_type {
        ADD => Some(x + 1),
        MUL => Some(3 * x),
        _ if retry_count == 0 => None,
        _ => Some(x + 7),
    }
}

/// A worker loop pinned to one node: long-polls `task_type` there (waiting while the node is down) and reports each
/// task under its lease, to the same node.
async fn work(channel: Channel, task_type: &'static str, worker_id: String, tally: Arc<Tally>, doom: Doom) {
    let mut tasks_client = TaskServiceClient::new(channel);
    loop {
        let mut poll = tonic::Request::new(pb::PollRequest {
            task_type: task_type.to_string(),
            worker_id: worker_id.clone(),
            count: 8,
            timeout_ms: POLL_WAIT_MS,
            ..Default::default()
        });
        poll.set_timeout(Duration::from_secs(5));
        let reply = match tasks_client.poll(poll).await {
            Ok(reply) => reply,
            Err(_) => {
                // The node is down, paused or without a leader: wait for it.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let leader = reply.metadata().get(LEADER_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let tasks = reply.into_inner().tasks;
        if tasks.is_empty() {
            continue;
        }
        let at = Instant::now();
        tally.dispatches.lock().unwrap_or_else(|e| e.into_inner()).push(Dispatch { at, leader });
        let deliveries = tally.delivered(&tasks);
        let doomed = doom.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(doomed) = doomed {
            let _ = doomed.send(tasks.iter().map(|t| t.task_id.clone()).collect());
            // Hold the tasks until aborted, as a worker process that hung or died would.
            std::future::pending::<()>().await;
        }
        let reports = tasks.iter().zip(deliveries).map(|(task, delivery)| {
            let tasks_client = tasks_client.clone();
            report(tasks_client, task, delivery, &worker_id, &tally)
        });
        futures::future::join_all(reports).await;
    }
}

/// Reports one task's outcome, retrying through the node's absence until the lease could have expired.
async fn report(
    mut client: TaskServiceClient<Channel>,
    task: &pb::WorkerTask,
    delivery: u32,
    worker_id: &str,
    tally: &Tally,
) {
    let input: Value = serde_json::from_str(&task.input_json).unwrap_or_default();
    let x = input["x"].as_i64().unwrap_or(0);
    let (status, output, reason) = match compute(&task.task_type, x, task.retry_count) {
        Some(value) => (pb::TaskResultStatus::Completed, json!({"x": value, "delivery": delivery}), String::new()),
        None => (pb::TaskResultStatus::Failed, json!({}), "chaos: the first attempt fails on purpose".to_string()),
    };
    let update = pb::UpdateTaskRequest {
        workflow_id: task.workflow_id.clone(),
        task_id: task.task_id.clone(),
        lease_token: task.lease_token.clone(),
        status: status as i32,
        output_json: output.to_string(),
        reason_for_incompletion: reason,
        callback_after_seconds: 0,
        worker_id: worker_id.to_string(),
    };
    let deadline = Instant::now() + Duration::from_secs(task.response_timeout_seconds.max(1) + 2);
    while Instant::now() < deadline {
        let mut request = tonic::Request::new(update.clone());
        request.set_timeout(Duration::from_secs(5));
        match client.update_task(request).await {
            Ok(_) => {
                if status == pb::TaskResultStatus::Completed {
                    tally.completed.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            Err(s) if s.code() == Code::FailedPrecondition => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // A malformed report: nothing to retry; the workflow then stalls and the final checks name it.
            Err(s) if matches!(s.code(), Code::InvalidArgument | Code::NotFound) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

// ------------------------------------------------------------------------------------------------- load

/// A workflow start the cluster acknowledged.
#[derive(Debug, Clone, Serialize)]
pub struct Started {
    /// The workflow id the cluster answered.
    pub workflow_id: String,
    /// Which definition.
    pub shape: Shape,
    /// The input's `x`.
    pub x: i64,
}

/// What the load generator did.
#[derive(Debug, Default)]
pub struct LoadTally {
    /// Acknowledged starts.
    pub started: Mutex<Vec<Started>>,
    /// Starts that got no acknowledgment within [`START_DEADLINE`] (they need not survive).
    pub unacknowledged: AtomicU64,
    /// Starts refused outright (a bad request: a bug in the runner or the server).
    pub refused: Mutex<Vec<String>>,
}

/// Starts workflows at `rate` per second until `stop` is cancelled, then waits for the starts in flight to be
/// answered. Each start carries an idempotency key and is retried with it until acknowledged.
pub async fn generate(client: Arc<Client>, rate: f64, stop: CancellationToken, tally: Arc<LoadTally>) {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let in_flight = Arc::new(Semaphore::new(MAX_STARTS_IN_FLIGHT));
    let mut starts = JoinSet::new();
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    for seq in 0u64.. {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
        let shape = Shape::ALL[(seq % Shape::ALL.len() as u64) as usize];
        let x = i64::try_from(seq % 1000).unwrap_or(0);
        let key = format!("chaos-{}-{seq}", &run_id[..8]);
        let (client, tally) = (client.clone(), tally.clone());
        starts.spawn(async move {
            start_one(&client, shape, x, key, &tally).await;
            drop(permit);
        });
        while starts.try_join_next().is_some() {}
    }
    while starts.join_next().await.is_some() {}
}

async fn start_one(client: &Client, shape: Shape, x: i64, key: String, tally: &LoadTally) {
    let request = pb::StartWorkflowRequest {
        name: shape.workflow_name().to_string(),
        version: 1,
        input_json: json!({"x": x}).to_string(),
        correlation_id: key.clone(),
        idempotency_key: key.clone(),
        ..Default::default()
    };
    let deadline = Instant::now() + START_DEADLINE;
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), client.start_workflow(request.clone())).await {
            Ok(Ok(workflow_id)) => {
                let started = Started { workflow_id, shape, x };
                tally.started.lock().unwrap_or_else(|e| e.into_inner()).push(started);
                return;
            }
            Ok(Err(crate::client::ClientError::Status(s)))
                if matches!(s.code(), Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition) =>
            {
                let refusal =
                    format!("start {key} of {} refused: {:?} {}", shape.workflow_name(), s.code(), s.message());
                tally.refused.lock().unwrap_or_else(|e| e.into_inner()).push(refusal);
                return;
            }
            // Unknown outcome (node down, no leader, timeout): retry under the same key.
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    tally.unacknowledged.fetch_add(1, Ordering::Relaxed);
}
