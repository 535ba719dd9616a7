//! The public gRPC `WorkflowService` and `TaskService` (proto/baton.proto): thin adapters over [`WorkflowApi`] and
//! the [`Dispatcher`].

use std::sync::Arc;

use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

use crate::api::error::ApiError;
use crate::api::gateway::Consistency;
use crate::api::metadata::parse_document;
use crate::api::workflows::{ListFilter, StartWorkflowRequest, WorkflowApi};
use crate::engine::model::{LeaseRef, TaskStatus};
use crate::engine::ops::{IdempotencyStrategy, TaskUpdate};
use crate::engine::Command;
use crate::pb::v1 as pb;
use crate::pb::v1::task_service_server::TaskService;
use crate::pb::v1::workflow_service_server::WorkflowService;
use crate::runtime::dispatch::{parse_lease_token, Dispatcher, PollArgs};

/// Parses an optional JSON object field (empty text is an empty object), naming the field on failure.
fn object(text: &str, field: &str) -> Result<Map<String, Value>, ApiError> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    parse_document(text, field)
}

/// Response metadata key carrying the leader's gRPC address, so SDKs can send writes straight to it.
pub const LEADER_HEADER: &str = "x-baton-leader";

/// A reply with the leader's address in its metadata.
fn reply<T>(api: &WorkflowApi, message: T) -> Response<T> {
    let mut response = Response::new(message);
    if let Some(addr) = api.leader_grpc_addr().and_then(|a| a.parse().ok()) {
        response.metadata_mut().insert(LEADER_HEADER, addr);
    }
    response
}

/// A task result status from the wire.
fn result_status(value: i32) -> Result<TaskStatus, Status> {
    match pb::TaskResultStatus::try_from(value) {
        Ok(pb::TaskResultStatus::InProgress) => Ok(TaskStatus::InProgress),
        Ok(pb::TaskResultStatus::Completed) => Ok(TaskStatus::Completed),
        Ok(pb::TaskResultStatus::Failed) => Ok(TaskStatus::Failed),
        Ok(pb::TaskResultStatus::FailedWithTerminalError) => Ok(TaskStatus::FailedWithTerminalError),
        _ => Err(Status::invalid_argument(
            "status: must be IN_PROGRESS, COMPLETED, FAILED or FAILED_WITH_TERMINAL_ERROR",
        )),
    }
}

/// `WorkflowService`.
#[derive(Debug, Clone)]
pub struct WorkflowGrpc {
    api: WorkflowApi,
}

impl WorkflowGrpc {
    /// The service over `api`.
    pub fn new(api: WorkflowApi) -> Self {
        WorkflowGrpc { api }
    }
}

#[tonic::async_trait]
impl WorkflowService for WorkflowGrpc {
    async fn start(
        &self,
        request: Request<pb::StartWorkflowRequest>,
    ) -> Result<Response<pb::StartWorkflowReply>, Status> {
        let r = request.into_inner();
        let workflow_def = if r.workflow_def_json.trim().is_empty() {
            None
        } else {
            Some(parse_document(&r.workflow_def_json, "workflow_def_json")?)
        };
        let req = StartWorkflowRequest {
            name: r.name,
            version: (r.version != 0).then_some(r.version),
            correlation_id: (!r.correlation_id.is_empty()).then_some(r.correlation_id),
            input: object(&r.input_json, "input_json")?,
            workflow_def,
            priority: r.priority,
            idempotency_key: (!r.idempotency_key.is_empty()).then_some(r.idempotency_key),
            idempotency_strategy: idempotency_strategy(&r.idempotency_strategy)?,
            ..Default::default()
        };
        let workflow_id = self.api.start(req).await?;
        Ok(reply(&self.api, pb::StartWorkflowReply { workflow_id }))
    }

    async fn get(&self, request: Request<pb::GetWorkflowRequest>) -> Result<Response<pb::WorkflowJson>, Status> {
        let r = request.into_inner();
        let consistency = match pb::Consistency::try_from(r.consistency) {
            Ok(pb::Consistency::Linearizable) => Consistency::Linearizable,
            _ => Consistency::Local,
        };
        let wf = self.api.get(&r.workflow_id, true, consistency).await?;
        let json = serde_json::to_string(&wf).map_err(|e| Status::internal(e.to_string()))?;
        Ok(reply(&self.api, pb::WorkflowJson { json }))
    }

    async fn list(
        &self,
        request: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsReply>, Status> {
        let r = request.into_inner();
        let some = |s: String| (!s.is_empty()).then_some(s);
        let filter = ListFilter {
            status: some(r.status),
            name: some(r.name),
            correlation_id: some(r.correlation_id),
            start_time_from: (r.start_time_from > 0).then_some(r.start_time_from),
            start_time_to: (r.start_time_to > 0).then_some(r.start_time_to),
            offset: r.offset as usize,
            limit: if r.limit == 0 { 100 } else { r.limit.min(10_000) } as usize,
        };
        let workflows = self
            .api
            .list(&filter)
            .await?
            .into_iter()
            .map(|w| pb::WorkflowSummary {
                workflow_id: w.workflow_id,
                name: w.workflow_name,
                version: w.workflow_version,
                status: w.status.as_str().to_string(),
                start_time: w.start_time,
                end_time: w.end_time,
                correlation_id: w.correlation_id.unwrap_or_default(),
            })
            .collect();
        Ok(reply(&self.api, pb::ListWorkflowsReply { workflows }))
    }

    async fn terminate(&self, request: Request<pb::WorkflowOperation>) -> Result<Response<pb::OperationReply>, Status> {
        let r = request.into_inner();
        self.api.command(Command::Terminate { workflow_id: r.workflow_id, reason: r.reason }).await?;
        Ok(reply(&self.api, pb::OperationReply {}))
    }

    async fn pause(&self, request: Request<pb::WorkflowOperation>) -> Result<Response<pb::OperationReply>, Status> {
        self.api.command(Command::Pause { workflow_id: request.into_inner().workflow_id }).await?;
        Ok(reply(&self.api, pb::OperationReply {}))
    }

    async fn resume(&self, request: Request<pb::WorkflowOperation>) -> Result<Response<pb::OperationReply>, Status> {
        self.api.command(Command::Resume { workflow_id: request.into_inner().workflow_id }).await?;
        Ok(reply(&self.api, pb::OperationReply {}))
    }

    async fn retry(&self, request: Request<pb::WorkflowOperation>) -> Result<Response<pb::OperationReply>, Status> {
        self.api.command(Command::Retry { workflow_id: request.into_inner().workflow_id }).await?;
        Ok(reply(&self.api, pb::OperationReply {}))
    }

    async fn rerun(&self, request: Request<pb::RerunRequest>) -> Result<Response<pb::OperationReply>, Status> {
        let r = request.into_inner();
        let optional = |text: &str, field: &str| -> Result<Option<Map<String, Value>>, ApiError> {
            if text.trim().is_empty() {
                Ok(None)
            } else {
                object(text, field).map(Some)
            }
        };
        let command = Command::Rerun {
            workflow_id: r.workflow_id,
            from_task_id: r.from_task_id,
            task_input: optional(&r.task_input_json, "task_input_json")?,
            workflow_input: optional(&r.workflow_input_json, "workflow_input_json")?,
        };
        self.api.command(command).await?;
        Ok(reply(&self.api, pb::OperationReply {}))
    }

    async fn skip_task(&self, request: Request<pb::SkipTaskRequest>) -> Result<Response<pb::OperationReply>, Status> {
        let r = request.into_inner();
        let output = object(&r.output_json, "output_json")?;
        self.api
            .command(Command::SkipTask { workflow_id: r.workflow_id, task_ref: r.task_reference_name, output })
            .await?;
        Ok(reply(&self.api, pb::OperationReply {}))
    }

    async fn signal(&self, request: Request<pb::SignalRequest>) -> Result<Response<pb::OperationReply>, Status> {
        let r = request.into_inner();
        let update = TaskUpdate {
            status: result_status(r.status)?,
            output: object(&r.output_json, "output_json")?,
            reason: (!r.reason_for_incompletion.is_empty()).then_some(r.reason_for_incompletion),
            callback_after_seconds: 0,
            worker_id: None,
            lease: None,
        };
        self.api
            .command(Command::SignalTask { workflow_id: r.workflow_id, task_ref: r.task_reference_name, update })
            .await?;
        Ok(reply(&self.api, pb::OperationReply {}))
    }

    async fn restart(&self, request: Request<pb::WorkflowOperation>) -> Result<Response<pb::OperationReply>, Status> {
        let r = request.into_inner();
        let command = Command::Restart { workflow_id: r.workflow_id, use_latest_definition: r.use_latest_definition };
        self.api.command(command).await?;
        Ok(reply(&self.api, pb::OperationReply {}))
    }
}

/// `TaskService`.
#[derive(Clone)]
pub struct TaskGrpc {
    api: WorkflowApi,
    dispatcher: Arc<Dispatcher>,
}

impl TaskGrpc {
    /// The service over this node's API and dispatcher.
    pub fn new(api: WorkflowApi, dispatcher: Arc<Dispatcher>) -> Self {
        TaskGrpc { api, dispatcher }
    }
}

fn lease(token: &str, task_id: &str) -> Result<LeaseRef, ApiError> {
    match parse_lease_token(token) {
        Some((id, _, lease_seq)) if id == task_id => Ok(LeaseRef { lease_seq }),
        Some(_) => Err(ApiError::invalid(format!("lease_token: belongs to another task than {task_id}"))),
        None => Err(ApiError::invalid(format!("lease_token: expected task_id:attempt:lease, got '{token}'"))),
    }
}

/// A dispatched task in its wire form.
fn worker_task(d: crate::runtime::dispatch::Dispatched) -> pb::WorkerTask {
    let lease_token = d.lease_token();
    let t = d.task;
    pb::WorkerTask {
        input_json: serde_json::to_string(&t.input_data).unwrap_or_else(|_| "{}".into()),
        task_id: t.task_id,
        workflow_id: t.workflow_instance_id,
        task_type: t.task_type,
        reference_task_name: t.reference_task_name,
        retry_count: t.retry_count,
        poll_count: t.poll_count,
        lease_token,
        response_timeout_seconds: t.response_timeout_seconds,
        scheduled_time_ms: t.scheduled_time,
    }
}

/// How long one internal poll of a stream waits before looking at the worker's messages again, ms.
const STREAM_POLL_MS: u32 = 1000;
/// How long a stream waits through an election (no leader answering its polls) before it ends with UNAVAILABLE.
const STREAM_LEADERLESS: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves one push stream: leases and sends tasks while the worker has credits. Credits are read on their own
/// task, so a lease in progress is never abandoned half-way when credits arrive.
async fn serve_stream(
    dispatcher: Arc<Dispatcher>,
    mut incoming: tonic::Streaming<pb::StreamRequest>,
    out: tokio::sync::mpsc::Sender<Result<pb::WorkerTask, Status>>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let subscribe = match incoming.message().await {
        Ok(Some(pb::StreamRequest { kind: Some(pb::stream_request::Kind::Subscribe(s)) })) => s,
        _ => {
            let _ = out.send(Err(Status::invalid_argument("the first message of a stream must be a Subscribe"))).await;
            return;
        }
    };
    let credits = Arc::new(AtomicU64::new(u64::from(subscribe.credits)));
    let more = Arc::new(tokio::sync::Notify::new());
    let closed = tokio_util::sync::CancellationToken::new();
    let reader = {
        let (credits, more, closed) = (credits.clone(), more.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok(Some(msg)) = incoming.message().await {
                if let Some(pb::stream_request::Kind::Credits(n)) = msg.kind {
                    credits.fetch_add(u64::from(n), Ordering::SeqCst);
                    more.notify_one();
                }
            }
            closed.cancel();
        })
    };
    let mut args = PollArgs {
        task_type: subscribe.task_type.clone(),
        domain: (!subscribe.domain.is_empty()).then_some(subscribe.domain.clone()),
        worker_id: subscribe.worker_id.clone(),
        count: 0,
        timeout_ms: STREAM_POLL_MS,
        poll_id: None,
    };
    let mut leaderless_since: Option<std::time::Instant> = None;
    while !closed.is_cancelled() && !out.is_closed() {
        let available = credits.load(Ordering::SeqCst);
        if available == 0 {
            tokio::select! {
                _ = more.notified() => {}
                _ = closed.cancelled() => break,
            }
            continue;
        }
        args.count = u32::try_from(available).unwrap_or(u32::MAX);
        match dispatcher.poll(&args).await {
            Ok(tasks) => {
                leaderless_since = None;
                for task in tasks {
                    credits.fetch_sub(1, Ordering::SeqCst);
                    if out.send(Ok(worker_task(task))).await.is_err() {
                        break;
                    }
                }
            }
            // An election: the stream waits for the next leader, up to a bound, then lets the worker go elsewhere.
            Err(ApiError::Unavailable(_))
                if leaderless_since.get_or_insert_with(std::time::Instant::now).elapsed() < STREAM_LEADERLESS => {}
            Err(e) => {
                let _ = out.send(Err(e.into())).await;
                break;
            }
        }
    }
    reader.abort();
}

#[tonic::async_trait]
impl TaskService for TaskGrpc {
    type StreamStream = tokio_stream::wrappers::ReceiverStream<Result<pb::WorkerTask, Status>>;

    async fn stream(
        &self,
        request: Request<tonic::Streaming<pb::StreamRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(serve_stream(self.dispatcher.clone(), request.into_inner(), tx));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn poll(&self, request: Request<pb::PollRequest>) -> Result<Response<pb::PollReply>, Status> {
        let r = request.into_inner();
        let args = PollArgs {
            domain: (!r.domain.is_empty()).then_some(r.domain),
            task_type: r.task_type,
            worker_id: r.worker_id,
            count: r.count,
            timeout_ms: r.timeout_ms,
            poll_id: (!r.poll_id.is_empty()).then_some(r.poll_id),
        };
        let tasks = self.dispatcher.poll(&args).await?;
        let tasks = tasks.into_iter().map(worker_task).collect();
        Ok(reply(&self.api, pb::PollReply { tasks }))
    }

    async fn update_task(
        &self,
        request: Request<pb::UpdateTaskRequest>,
    ) -> Result<Response<pb::UpdateTaskReply>, Status> {
        let r = request.into_inner();
        let status = result_status(r.status)?;
        let update = TaskUpdate {
            status,
            output: object(&r.output_json, "output_json")?,
            reason: (!r.reason_for_incompletion.is_empty()).then_some(r.reason_for_incompletion),
            callback_after_seconds: r.callback_after_seconds,
            worker_id: (!r.worker_id.is_empty()).then_some(r.worker_id),
            lease: Some(lease(&r.lease_token, &r.task_id)?),
        };
        self.api.command(Command::UpdateTask { workflow_id: r.workflow_id, task_id: r.task_id, update }).await?;
        Ok(reply(&self.api, pb::UpdateTaskReply {}))
    }

    async fn append_log(&self, request: Request<pb::AppendLogRequest>) -> Result<Response<pb::AppendLogReply>, Status> {
        let r = request.into_inner();
        self.api.command(Command::AppendTaskLog { workflow_id: r.workflow_id, task_id: r.task_id, log: r.log }).await?;
        Ok(reply(&self.api, pb::AppendLogReply {}))
    }

    async fn extend_lease(
        &self,
        request: Request<pb::ExtendLeaseRequest>,
    ) -> Result<Response<pb::ExtendLeaseReply>, Status> {
        let r = request.into_inner();
        let lease = lease(&r.lease_token, &r.task_id)?;
        self.api.command(Command::ExtendLease { workflow_id: r.workflow_id, task_id: r.task_id, lease }).await?;
        Ok(reply(&self.api, pb::ExtendLeaseReply {}))
    }
}

/// The `idempotency_strategy` field: empty, or one of Conductor's names.
fn idempotency_strategy(name: &str) -> Result<Option<IdempotencyStrategy>, Status> {
    if name.is_empty() {
        return Ok(None);
    }
    serde_json::from_value(Value::String(name.to_string())).map(Some).map_err(|_| {
        Status::invalid_argument(format!(
            "idempotency_strategy: expected RETURN_EXISTING, FAIL or FAIL_ON_RUNNING, got '{name}'"
        ))
    })
}
