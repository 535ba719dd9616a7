//! Workflow operations shared by the front ends: start (by name or with an inline definition: a routing slip),
//! read, terminate, pause, resume, retry, restart, rerun, skip, and task updates, in Conductor's request shapes.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::error::ApiError;
use crate::api::gateway::{Consistency, Gateway};
use crate::engine::definitions::WorkflowDef;
use crate::engine::model::{Task, TaskStatus, Workflow};
use crate::engine::ops::{IdempotencyStrategy, StartWorkflow, TaskUpdate};
use crate::engine::{Command, CommandResponse};

/// Conductor's `StartWorkflowRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartWorkflowRequest {
    /// The registered definition's name (or the inline definition's).
    #[serde(default)]
    pub name: String,
    /// Version; the latest when absent.
    pub version: Option<u32>,
    /// The caller's correlation id.
    pub correlation_id: Option<String>,
    /// The input.
    #[serde(default)]
    pub input: Map<String, Value>,
    /// Task type -> domain.
    #[serde(default)]
    pub task_to_domain: BTreeMap<String, String>,
    /// An inline definition: run it without registering it.
    pub workflow_def: Option<WorkflowDef>,
    /// Priority 0-99.
    #[serde(default)]
    pub priority: u32,
    /// A start retried with the same key answers the same workflow id, also across leader changes (unless
    /// `idempotency_strategy` says otherwise).
    pub idempotency_key: Option<String>,
    /// `RETURN_EXISTING` (Baton's default), `FAIL` or `FAIL_ON_RUNNING`.
    pub idempotency_strategy: Option<IdempotencyStrategy>,
}

/// Conductor's `TaskResult`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskResult {
    /// The workflow; may be left out (empty), the task id finds it.
    #[serde(default)]
    pub workflow_instance_id: String,
    /// The task.
    pub task_id: String,
    /// IN_PROGRESS, COMPLETED, FAILED or FAILED_WITH_TERMINAL_ERROR.
    pub status: TaskStatus,
    /// Output data.
    #[serde(default)]
    pub output_data: Map<String, Value>,
    /// Why it failed.
    pub reason_for_incompletion: Option<String>,
    /// For IN_PROGRESS: poll again after this many seconds.
    #[serde(default)]
    pub callback_after_seconds: u64,
    /// The worker.
    pub worker_id: Option<String>,
    /// With IN_PROGRESS: only push the response timeout back (Conductor's lease extension); the output is ignored.
    #[serde(default)]
    pub extend_lease: bool,
    /// Lines for the task's log, appended before the update (Conductor's `TaskExecLog`s).
    #[serde(default)]
    pub logs: Vec<TaskExecLog>,
}

/// One line of a task's log as Conductor's TaskResult carries it (its other fields, `taskId` and `createdTime`, are
/// the task's and the time the log is applied).
#[derive(Debug, Clone, Deserialize)]
pub struct TaskExecLog {
    /// The line.
    pub log: String,
}

impl From<&TaskResult> for TaskUpdate {
    fn from(r: &TaskResult) -> Self {
        TaskUpdate {
            status: r.status,
            output: r.output_data.clone(),
            reason: r.reason_for_incompletion.clone(),
            callback_after_seconds: r.callback_after_seconds,
            worker_id: r.worker_id.clone(),
            lease: None,
        }
    }
}

/// Conductor's `RerunWorkflowRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RerunWorkflowRequest {
    /// The task to rerun from; absent or empty: the whole workflow, from its first task.
    #[serde(default)]
    pub re_run_from_task_id: String,
    /// New input for that task.
    pub task_input: Option<Map<String, Value>>,
    /// New workflow input.
    pub workflow_input: Option<Map<String, Value>>,
}

/// Which workflows a listing shows.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<String>,
    /// Only this definition name.
    pub name: Option<String>,
    /// Only this correlation id.
    pub correlation_id: Option<String>,
    /// Started at or after, ms.
    pub start_time_from: Option<u64>,
    /// Started before, ms.
    pub start_time_to: Option<u64>,
    /// Matches skipped (paging).
    pub offset: usize,
    /// At most this many.
    pub limit: usize,
}

impl ListFilter {
    /// True when `w` passes every filter (paging aside).
    pub fn matches(&self, w: &Workflow) -> bool {
        self.status.as_deref().is_none_or(|s| w.status.as_str() == s)
            && self.name.as_deref().is_none_or(|n| w.workflow_name == n)
            && self.correlation_id.as_deref().is_none_or(|c| w.correlation_id.as_deref() == Some(c))
            && self.start_time_from.is_none_or(|t| w.start_time >= t)
            && self.start_time_to.is_none_or(|t| w.start_time < t)
    }
}

/// The workflow service behind the front ends.
#[derive(Debug, Clone)]
pub struct WorkflowApi {
    gateway: Gateway,
}

impl WorkflowApi {
    /// The service over this node's gateway.
    pub fn new(gateway: Gateway) -> Self {
        WorkflowApi { gateway }
    }

    /// Starts a workflow; answers its id. The id is drawn here (randomness stays out of the engine).
    pub async fn start(&self, req: StartWorkflowRequest) -> Result<String, ApiError> {
        let start = StartWorkflow {
            workflow_id: uuid::Uuid::new_v4().to_string(),
            name: req.workflow_def.as_ref().map_or(req.name.clone(), |d| d.name.clone()),
            version: req.version,
            definition: req.workflow_def,
            input: req.input,
            correlation_id: req.correlation_id,
            priority: req.priority,
            task_to_domain: req.task_to_domain,
            idempotency_key: req.idempotency_key,
            idempotency_strategy: req.idempotency_strategy.unwrap_or_default(),
        };
        let committed = self.gateway.write(Command::StartWorkflow(start)).await?;
        match committed.response {
            CommandResponse::WorkflowStarted { workflow_id } => Ok(workflow_id),
            other => Err(ApiError::Internal(format!("start answered {other:?}"))),
        }
    }

    /// One workflow, with or without its tasks.
    pub async fn get(&self, id: &str, include_tasks: bool, consistency: Consistency) -> Result<Workflow, ApiError> {
        self.gateway.barrier(consistency).await?;
        let mut wf = self
            .gateway
            .reader()
            .workflow(id)?
            .ok_or_else(|| ApiError::not_found(format!("workflow {id} not found")))?;
        if !include_tasks {
            wf.tasks.clear();
        }
        Ok(wf)
    }

    /// One task, found from its id alone.
    pub async fn task(&self, task_id: &str, consistency: Consistency) -> Result<Task, ApiError> {
        self.gateway.barrier(consistency).await?;
        let reader = self.gateway.reader();
        let workflow_id =
            reader.task_workflow(task_id)?.ok_or_else(|| ApiError::not_found(format!("task {task_id} not found")))?;
        reader
            .workflow(&workflow_id)?
            .and_then(|wf| wf.tasks.into_iter().find(|t| t.task_id == task_id))
            .ok_or_else(|| ApiError::not_found(format!("task {task_id} is no longer part of workflow {workflow_id}")))
    }

    /// Workflows matching the filters, newest first, at most `limit`. A full scan ([`WorkflowApi::find`]): fine for
    /// operators' listing, not for hot paths.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Workflow>, ApiError> {
        let keep = filter.clone();
        let mut all = self.find(move |w| keep.matches(w)).await?;
        all.sort_by(|a, b| b.create_time.cmp(&a.create_time).then_with(|| a.workflow_id.cmp(&b.workflow_id)));
        Ok(all.into_iter().skip(filter.offset).take(filter.limit).collect())
    }

    /// Every workflow this node has applied for which `keep` is true, in id order. A full scan of the state, run
    /// on a blocking thread so that it never holds up the runtime's Raft and API tasks.
    pub async fn find<F>(&self, keep: F) -> Result<Vec<Workflow>, ApiError>
    where
        F: Fn(&Workflow) -> bool + Send + 'static,
    {
        let reader = self.gateway.reader().clone();
        let scan = move || reader.workflows().map(|all| all.into_iter().filter(|w| keep(w)).collect());
        tokio::task::spawn_blocking(scan)
            .await
            .map_err(|e| ApiError::Internal(format!("workflow scan panicked: {e}")))?
            .map_err(ApiError::from)
    }

    /// The leader's gRPC address, if known.
    pub fn leader_grpc_addr(&self) -> Option<String> {
        self.gateway.leader_grpc_addr()
    }

    /// Runs one workflow command.
    pub async fn command(&self, command: Command) -> Result<(), ApiError> {
        self.gateway.write(command).await.map(|_| ())
    }

    /// Applies a worker's task result.
    pub async fn update_task(&self, result: &TaskResult) -> Result<(), ApiError> {
        self.command(Command::UpdateTask {
            workflow_id: result.workflow_instance_id.clone(),
            task_id: result.task_id.clone(),
            update: result.into(),
        })
        .await
    }
}
