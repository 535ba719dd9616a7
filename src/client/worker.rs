//! The worker runner: polls the cluster for the task types it has handlers for, runs each task's handler with a
//! concurrency limit, sends heartbeats for long tasks, reports the outcome under the task's lease (retrying the
//! report through node failures: a repeated report under the same lease is acknowledged, never applied twice), and
//! on shutdown stops polling and lets in-flight tasks finish.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::Client;
use crate::pb::v1 as pb;
use crate::pb::v1::task_service_client::TaskServiceClient;

/// How a handler's task ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done, with this output.
    Completed(Map<String, Value>),
    /// Failed; the task may be retried per its definition.
    Failed(String),
    /// Failed; never retried.
    FailedTerminal(String),
}

/// A task handed to a handler.
#[derive(Debug, Clone)]
pub struct Job {
    /// The task as dispatched.
    pub task: pb::WorkerTask,
    /// Its input.
    pub input: Map<String, Value>,
}

type HandlerFn = Arc<dyn Fn(Job) -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Send + Sync>;

/// Runs handlers for task types.
pub struct Worker {
    client: Arc<Client>,
    worker_id: String,
    concurrency: usize,
    handlers: BTreeMap<String, HandlerFn>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("worker_id", &self.worker_id).field("types", &self.handlers.keys()).finish()
    }
}

/// How long one poll waits for a task.
const POLL_WAIT_MS: u32 = 1000;
/// Pause after a failed poll before trying the next node.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long past its wait a poll may take before the node counts as unreachable.
const POLL_GRACE: Duration = Duration::from_secs(7);

impl Worker {
    /// A worker named `worker_id` running at most `concurrency` tasks at once.
    pub fn new(client: Arc<Client>, worker_id: impl Into<String>, concurrency: usize) -> Self {
        Worker { client, worker_id: worker_id.into(), concurrency: concurrency.max(1), handlers: BTreeMap::new() }
    }

    /// Handles `task_type` with `handler`.
    pub fn handle<F, Fut>(mut self, task_type: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        self.handlers.insert(task_type.into(), Arc::new(move |job| Box::pin(handler(job))));
        self
    }

    /// Runs until `shutdown` is cancelled, then waits for in-flight tasks to be reported.
    pub async fn run(self, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut pollers = Vec::new();
        for (task_type, handler) in &self.handlers {
            let (client, slots, handler, shutdown) =
                (self.client.clone(), slots.clone(), handler.clone(), shutdown.clone());
            let (task_type, worker_id) = (task_type.clone(), self.worker_id.clone());
            pollers.push(tokio::spawn(poll_loop(client, task_type, worker_id, slots, handler, shutdown)));
        }
        for p in pollers {
            let _ = p.await;
        }
        // Drain: every slot back means every handler finished and reported.
        let _ = slots.acquire_many(u32::try_from(self.concurrency).unwrap_or(u32::MAX)).await;
    }
}

async fn poll_loop(
    client: Arc<Client>,
    task_type: String,
    worker_id: String,
    slots: Arc<Semaphore>,
    handler: HandlerFn,
    shutdown: CancellationToken,
) {
    // The id of a poll whose answer was lost: the next poll repeats it, to get back what it leased.
    let mut unanswered: Option<String> = None;
    while !shutdown.is_cancelled() {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.cancelled() => return,
        };
        let free = slots.available_permits() + 1;
        let (node, mut tasks_client) = client.task_channel();
        let poll_id = unanswered.take().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let req = pb::PollRequest {
            task_type: task_type.clone(),
            worker_id: worker_id.clone(),
            count: u32::try_from(free).unwrap_or(1),
            timeout_ms: POLL_WAIT_MS,
            domain: String::new(),
            poll_id: poll_id.clone(),
        };
        // The node may hold a poll past its wait to recover a lost answer (up to 5 s); beyond that it is unreachable.
        let mut req = tonic::Request::new(req);
        req.set_timeout(Duration::from_millis(u64::from(POLL_WAIT_MS)) + POLL_GRACE);
        let polled = tokio::select! {
            r = tasks_client.poll(req) => r,
            _ = shutdown.cancelled() => return,
        };
        let tasks = match polled {
            Ok(reply) => {
                client.follow_leader(reply.metadata());
                reply.into_inner().tasks
            }
            Err(status) => {
                tracing::debug!(%status, "poll failed; repeating it on the next node");
                unanswered = Some(poll_id);
                client.next_node(node);
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let mut permit = Some(permit);
        for task in tasks {
            let permit = match permit.take() {
                Some(p) => p,
                None => match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let (client, handler, worker_id) = (client.clone(), handler.clone(), worker_id.clone());
            tokio::spawn(async move {
                run_one(&client, handler, task, &worker_id).await;
                drop(permit);
            });
        }
    }
}

async fn run_one(client: &Client, handler: HandlerFn, task: pb::WorkerTask, worker_id: &str) {
    let input = serde_json::from_str(&task.input_json).unwrap_or_default();
    let job = Job { task: task.clone(), input };
    // Heartbeats at a third of the response timeout keep a long task from being handed to someone else.
    let beat = Duration::from_secs(task.response_timeout_seconds.max(3) / 3);
    let heartbeat = {
        let (task, client_addrs) = (task.clone(), client.addrs().to_vec());
        tokio::spawn(async move {
            let Ok(client) = Client::new(client_addrs) else { return };
            loop {
                tokio::time::sleep(beat).await;
                let req = pb::ExtendLeaseRequest {
                    workflow_id: task.workflow_id.clone(),
                    task_id: task.task_id.clone(),
                    lease_token: task.lease_token.clone(),
                };
                let r = client.call(|ch| {
                    let req = req.clone();
                    async move { TaskServiceClient::new(ch).extend_lease(req).await }
                });
                if let Err(e) = r.await.map(|_| ()) {
                    tracing::debug!(error = %e, "heartbeat failed");
                }
            }
        })
    };
    let outcome = handler(job).await;
    heartbeat.abort();
    let (status, output, reason) = match outcome {
        Outcome::Completed(out) => (pb::TaskResultStatus::Completed, out, String::new()),
        Outcome::Failed(r) => (pb::TaskResultStatus::Failed, Map::new(), r),
        Outcome::FailedTerminal(r) => (pb::TaskResultStatus::FailedWithTerminalError, Map::new(), r),
    };
    let req = pb::UpdateTaskRequest {
        workflow_id: task.workflow_id.clone(),
        task_id: task.task_id.clone(),
        lease_token: task.lease_token.clone(),
        status: status as i32,
        output_json: Value::Object(output).to_string(),
        reason_for_incompletion: reason,
        callback_after_seconds: 0,
        worker_id: worker_id.to_string(),
    };
    // The report is safe to repeat under the same lease; keep trying through failovers for a while.
    for attempt in 0..20 {
        let r = client
            .call(|ch| {
                let req = req.clone();
                async move { TaskServiceClient::new(ch).update_task(req).await }
            })
            .await
            .map(|_| ());
        match r {
            Ok(()) => return,
            Err(super::ClientError::Status(s)) if s.code() == Code::FailedPrecondition => {
                tracing::info!(task_id = %task.task_id, "result refused: the lease expired and the task was handed out again");
                return;
            }
            Err(super::ClientError::Status(s)) if matches!(s.code(), Code::InvalidArgument | Code::NotFound) => {
                tracing::warn!(task_id = %task.task_id, %s, "result refused");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, attempt, "report failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
            }
        }
    }
}
