//! Conductor's task endpoints for HTTP workers (`/api/tasks/...`): polls, results, logs and lookups. Polls go
//! through the same [`Dispatcher`] as gRPC polls, so a follower forwards them to the leader.
//!
//! Conductor's REST results carry no lease token: a result is accepted for the attempt named by its task id while
//! the attempt is IN_PROGRESS, whoever polled it; each attempt is still finished at most once.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::api::error::ApiError;
use crate::api::http::{HttpState, ReadParams};
use crate::api::metadata::{parse_document, Consistency};
use crate::api::query::Query;
use crate::api::workflows::TaskResult;
use crate::engine::model::{LeaseRef, TaskStatus};
use crate::engine::Command;
use crate::runtime::dispatch::{Dispatched, PollArgs};

/// How long Conductor's polls wait for a task unless told otherwise, ms.
const DEFAULT_POLL_TIMEOUT_MS: u32 = 100;

/// The task routes, merged into the node's router.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/tasks", post(update_task))
        .route("/api/tasks/update-v2", post(update_task_v2))
        .route("/api/tasks/poll/{task_type}", get(poll))
        .route("/api/tasks/poll/batch/{task_type}", get(batch_poll))
        .route("/api/tasks/{task_id}", get(get_task))
        .route("/api/tasks/{task_id}/log", post(append_log))
}

/// Query parameters of the poll endpoints (Conductor's names, lower case).
#[derive(Debug, Deserialize)]
struct PollParams {
    workerid: Option<String>,
    domain: Option<String>,
    count: Option<i64>,
    timeout: Option<i64>,
}

impl PollParams {
    fn args(&self, task_type: String, count: u32) -> Result<PollArgs, ApiError> {
        let timeout_ms = match self.timeout {
            None => DEFAULT_POLL_TIMEOUT_MS,
            Some(t) => {
                u32::try_from(t).map_err(|_| ApiError::invalid(format!("timeout: must be 0 or more ms, got {t}")))?
            }
        };
        Ok(PollArgs {
            task_type,
            domain: self.domain.clone().filter(|d| !d.is_empty()),
            worker_id: self.workerid.clone().unwrap_or_default(),
            count,
            timeout_ms,
            poll_id: None,
        })
    }
}

/// `GET /api/tasks/poll/{type}`: one task, or 204 when there is none.
async fn poll(
    State(state): State<HttpState>,
    Path(task_type): Path<String>,
    Query(params): Query<PollParams>,
) -> Result<Response, ApiError> {
    let tasks = state.dispatcher.poll(&params.args(task_type, 1)?).await?;
    Ok(first_or_no_content(tasks))
}

/// The first task polled as Conductor's Task document, or 204 when the poll found none.
fn first_or_no_content(tasks: Vec<Dispatched>) -> Response {
    match tasks.into_iter().next() {
        Some(d) => Json(d.task).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

/// `GET /api/tasks/poll/batch/{type}?count=&timeout=`: up to `count` tasks (an empty list when there are none).
async fn batch_poll(
    State(state): State<HttpState>,
    Path(task_type): Path<String>,
    Query(params): Query<PollParams>,
) -> Result<Response, ApiError> {
    let count = match params.count {
        None => 1,
        Some(c) => u32::try_from(c)
            .ok()
            .filter(|c| *c >= 1)
            .ok_or_else(|| ApiError::invalid(format!("count: must be at least 1, got {c}")))?,
    };
    let tasks = state.dispatcher.poll(&params.args(task_type, count)?).await?;
    Ok(Json(tasks.into_iter().map(|d| d.task).collect::<Vec<_>>()).into_response())
}

/// Applies a TaskResult: a lease extension, or an update.
async fn apply_result(state: &HttpState, result: &TaskResult) -> Result<(), ApiError> {
    if result.task_id.is_empty() {
        return Err(ApiError::invalid("taskId: must not be empty"));
    }
    if result.extend_lease && result.status == TaskStatus::InProgress {
        let task = state.workflows.task(&result.task_id, Consistency::Local).await?;
        let command = Command::ExtendLease {
            workflow_id: task.workflow_instance_id,
            task_id: task.task_id,
            lease: LeaseRef { lease_seq: task.lease_seq },
        };
        return state.workflows.command(command).await;
    }
    let mut result = result.clone();
    if result.workflow_instance_id.is_empty() {
        let task = state.workflows.task(&result.task_id, Consistency::Local).await?;
        result.workflow_instance_id = task.workflow_instance_id;
    }
    for line in &result.logs {
        let command = Command::AppendTaskLog {
            workflow_id: result.workflow_instance_id.clone(),
            task_id: result.task_id.clone(),
            log: line.log.clone(),
        };
        state.workflows.command(command).await?;
    }
    state.workflows.update_task(&result).await
}

/// `POST /api/tasks`: a worker's TaskResult; answers the task id as text.
async fn update_task(State(state): State<HttpState>, body: String) -> Result<String, ApiError> {
    let result: TaskResult = parse_document(&body, "")?;
    apply_result(&state, &result).await?;
    Ok(result.task_id)
}

/// `POST /api/tasks/update-v2`: a TaskResult, answered with the next task of the same type for the same worker
/// (without waiting), or 204 when there is none.
async fn update_task_v2(State(state): State<HttpState>, body: String) -> Result<Response, ApiError> {
    let result: TaskResult = parse_document(&body, "")?;
    apply_result(&state, &result).await?;
    let task = state.workflows.task(&result.task_id, Consistency::Local).await?;
    let args = PollArgs {
        task_type: task.task_type,
        domain: None,
        worker_id: result.worker_id.clone().unwrap_or_default(),
        count: 1,
        timeout_ms: 0,
        poll_id: None,
    };
    // The update is applied: a poll that fails now (no leader for a moment) must not make the worker report it again.
    match state.dispatcher.poll(&args).await {
        Ok(tasks) => Ok(first_or_no_content(tasks)),
        Err(e) => {
            tracing::debug!(error = %e, task_id = %result.task_id, "update-v2: update applied, next-task poll failed");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
    }
}

/// `GET /api/tasks/{id}[?consistency=linearizable]`.
async fn get_task(
    State(state): State<HttpState>,
    Path(task_id): Path<String>,
    Query(params): Query<ReadParams>,
) -> Result<Response, ApiError> {
    Ok(Json(state.workflows.task(&task_id, params.consistency()?).await?).into_response())
}

/// `POST /api/tasks/{id}/log`: the body is the line, as a JSON string or as plain text.
async fn append_log(
    State(state): State<HttpState>,
    Path(task_id): Path<String>,
    body: String,
) -> Result<StatusCode, ApiError> {
    let log = match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(serde_json::Value::String(line)) => line,
        _ => body,
    };
    if log.is_empty() {
        return Err(ApiError::invalid("log: the body must be the log line"));
    }
    let task = state.workflows.task(&task_id, Consistency::Local).await?;
    let command = Command::AppendTaskLog { workflow_id: task.workflow_instance_id, task_id, log };
    state.workflows.command(command).await?;
    Ok(StatusCode::OK)
}
