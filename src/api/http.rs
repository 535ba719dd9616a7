//! The HTTP front end: cluster status, health and readiness, and Conductor's metadata REST API
//! (`/api/metadata/...`). [`router`] builds the whole app so tests can call it in-process.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use crate::api::error::ApiError;
use crate::api::metadata::{parse_document, Consistency, MetadataApi};
use crate::api::query::Query;
use crate::api::status::NodeStatus;
use crate::api::workflows::{RerunWorkflowRequest, StartWorkflowRequest, WorkflowApi};
use crate::engine::definitions::{TaskDef, WorkflowDef};
use crate::engine::model::Workflow;
use crate::engine::Command;
use crate::raft::Raft;
use crate::runtime::dispatch::Dispatcher;
use crate::storage::StateReader;

/// What every handler may use.
#[derive(Clone)]
pub struct HttpState {
    /// This node's Raft.
    pub raft: Raft,
    /// Read access to the applied state.
    pub reader: StateReader,
    /// Metadata operations.
    pub metadata: MetadataApi,
    /// Workflow operations.
    pub workflows: WorkflowApi,
    /// Worker dispatch (for its gauges).
    pub dispatcher: Arc<Dispatcher>,
    /// The cluster's id.
    pub cluster_id: Arc<str>,
}

/// The HTTP app of one node.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/api/cluster/status", get(cluster_status))
        .route("/api/admin/limits", get(get_limits).put(set_limits))
        .route("/metrics", get(prometheus_metrics))
        .route("/api/metadata/taskdefs", get(list_task_defs).post(register_task_defs).put(update_task_def))
        .route("/api/metadata/taskdefs/{name}", get(get_task_def).delete(delete_task_def))
        .route("/api/metadata/workflow", get(list_workflow_defs).post(register_workflow_def).put(update_workflow_defs))
        .route("/api/metadata/workflow/{name}", get(get_workflow_def))
        .route("/api/metadata/workflow/{name}/{version}", delete(delete_workflow_def))
        .route("/api/workflow", post(start_workflow))
        .route("/api/workflow/{id}", get(get_workflow).post(start_workflow_by_name).delete(terminate_workflow))
        .route("/api/workflow/{id}/status", get(workflow_status))
        .route("/api/workflow/{id}/pause", put(pause_workflow))
        .route("/api/workflow/{id}/resume", put(resume_workflow))
        .route("/api/workflow/{id}/retry", post(retry_workflow))
        .route("/api/workflow/{id}/restart", post(restart_workflow))
        .route("/api/workflow/{id}/rerun", post(rerun_workflow))
        .route("/api/workflow/{id}/skiptask/{task_ref}", put(skip_task))
        .merge(crate::api::http_tasks::routes())
        .merge(crate::api::search::routes())
        .merge(crate::api::http_cluster::routes())
        .merge(crate::api::http_ui::routes())
        .route_layer(axum::middleware::from_fn(count_request))
        .with_state(state)
}

/// Counts each request and its latency under its route (the path pattern, so ids do not make new series).
async fn count_request(
    route: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", |r| r.as_str());
    let metrics = crate::metrics::metrics();
    metrics.http_requests.with_label_values(&[method.as_str(), route, response.status().as_str()]).inc();
    metrics.http_request_seconds.with_label_values(&[method.as_str(), route]).observe(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: Prometheus's text format. Raft's indexes and the queue depths are sampled now.
async fn prometheus_metrics(State(state): State<HttpState>) -> Response {
    let metrics = crate::metrics::metrics();
    let (term, is_leader, last_log, applied) = {
        let raft = state.raft.metrics();
        let raft = raft.borrow();
        (
            raft.current_term,
            raft.current_leader == Some(raft.id),
            raft.last_log_index.unwrap_or(0),
            raft.last_applied.map_or(0, |id| id.index),
        )
    };
    let committed = state.raft.with_raft_state(|st| st.committed.map_or(0, |id| id.index)).await.unwrap_or(applied);
    let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    metrics.raft_term.set(gauge(term));
    metrics.raft_is_leader.set(i64::from(is_leader));
    metrics.raft_last_log_index.set(gauge(last_log));
    metrics.raft_applied_index.set(gauge(applied));
    metrics.raft_commit_index.set(gauge(committed));
    metrics.set_queue_depths(&state.reader.pending().with(|ix| ix.depths()));
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], crate::metrics::render())
        .into_response()
}

/// 200 `ok` while this node's Raft runs. 503 with `{"healthy": false, "reason": ...}` once its Raft core has stopped
/// on a fatal error (a storage error such as a full disk): the node then shuts down and exits with
/// [`RAFT_FAILED_EXIT_CODE`](crate::node::RAFT_FAILED_EXIT_CODE), and answers this until it has stopped listening.
async fn health(State(state): State<HttpState>) -> Response {
    match crate::raft::failure(&state.raft) {
        None => "ok".into_response(),
        Some(reason) => unhealthy(&reason),
    }
}

/// The reply of `/health` for a node whose Raft core stopped on `reason`.
fn unhealthy(reason: &str) -> Response {
    let reason = format!("raft stopped on a fatal error: {reason}");
    (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"healthy": false, "reason": reason}))).into_response()
}

/// 200 when a leader is known and this node has applied everything it knows committed; 503 otherwise, and always
/// once this node's Raft core has stopped on a fatal error (as `/health`).
async fn ready(State(state): State<HttpState>) -> Response {
    if let Some(reason) = crate::raft::failure(&state.raft) {
        return not_ready(format!("raft stopped on a fatal error: {reason}"));
    }
    let (leader, applied) = {
        let metrics = state.raft.metrics();
        let metrics = metrics.borrow();
        (metrics.current_leader, metrics.last_applied.map_or(0, |id| id.index))
    };
    let progress = state.raft.with_raft_state(|st| st.committed.map_or(0, |id| id.index)).await.map(|c| (c, applied));
    match (leader, progress) {
        (Some(leader), Ok((committed, applied))) if applied >= committed => {
            (StatusCode::OK, Json(serde_json::json!({"ready": true, "leader_id": leader}))).into_response()
        }
        (None, _) => not_ready("no leader is known".into()),
        (_, Ok((committed, applied))) => not_ready(format!("applied {applied} of {committed} committed entries")),
        (_, Err(e)) => not_ready(format!("raft is not running: {e}")),
    }
}

fn not_ready(reason: String) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"ready": false, "reason": reason}))).into_response()
}

#[derive(Debug, Deserialize)]
struct StatusParams {
    /// Recompute the state hash from a full scan and fail if it disagrees with the running one.
    #[serde(default, deserialize_with = "crate::api::query::lenient_bool")]
    verify: Option<bool>,
}

async fn cluster_status(
    State(state): State<HttpState>,
    Query(params): Query<StatusParams>,
) -> Result<Json<NodeStatus>, ApiError> {
    let verify = params.verify.unwrap_or(false);
    Ok(Json(NodeStatus::collect(&state.raft, &state.reader, &state.dispatcher, &state.cluster_id, verify).await?))
}

/// `?consistency=local|linearizable&version=N` of the read endpoints.
#[derive(Debug, Deserialize)]
pub(crate) struct ReadParams {
    pub(crate) consistency: Option<String>,
    pub(crate) version: Option<String>,
}

impl ReadParams {
    pub(crate) fn consistency(&self) -> Result<Consistency, ApiError> {
        match self.consistency.as_deref() {
            None | Some("local") => Ok(Consistency::Local),
            Some("linearizable") => Ok(Consistency::Linearizable),
            Some(other) => {
                Err(ApiError::invalid(format!("consistency: expected 'local' or 'linearizable', got '{other}'")))
            }
        }
    }

    fn version(&self) -> Result<Option<u32>, ApiError> {
        self.version
            .as_deref()
            .map(|v| {
                v.parse::<u32>()
                    .ok()
                    .filter(|v| *v >= 1)
                    .ok_or_else(|| ApiError::invalid(format!("version: expected a positive integer, got '{v}'")))
            })
            .transpose()
    }
}

#[derive(Debug, Deserialize)]
struct RegisterParams {
    #[serde(default, deserialize_with = "crate::api::query::lenient_bool")]
    overwrite: Option<bool>,
}

async fn register_task_defs(State(state): State<HttpState>, body: String) -> Result<StatusCode, ApiError> {
    let defs: Vec<TaskDef> = parse_document(&body, "")?;
    state.metadata.register_task_defs(defs).await?;
    Ok(StatusCode::OK)
}

async fn update_task_def(State(state): State<HttpState>, body: String) -> Result<StatusCode, ApiError> {
    let def: TaskDef = parse_document(&body, "")?;
    state.metadata.update_task_def(def).await?;
    Ok(StatusCode::OK)
}

async fn get_task_def(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    Query(params): Query<ReadParams>,
) -> Result<Json<TaskDef>, ApiError> {
    Ok(Json(state.metadata.task_def(&name, params.consistency()?).await?))
}

async fn delete_task_def(State(state): State<HttpState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    state.metadata.delete_task_def(name).await?;
    Ok(StatusCode::OK)
}

/// `GET /api/admin/limits`: the engine's limits every replica applies with (docs/adr/0010-total-apply.md).
async fn get_limits(
    State(state): State<HttpState>,
    Query(params): Query<ReadParams>,
) -> Result<Json<crate::engine::limits::Limits>, ApiError> {
    Ok(Json(state.metadata.limits(params.consistency()?).await?))
}

/// `PUT /api/admin/limits`: replaces the engine's limits (all of them; a field left out takes its default).
async fn set_limits(State(state): State<HttpState>, body: String) -> Result<StatusCode, ApiError> {
    // serde would also read a struct from a JSON array, by position: `[1, 2]` must not set two limits.
    if !body.trim_start().starts_with('{') {
        let message = "the limits must be a JSON object of named limits (see GET /api/admin/limits)";
        let error = crate::engine::definitions::FieldError { path: String::new(), message: message.into() };
        return Err(ApiError::invalid_field(error));
    }
    let limits: crate::engine::limits::Limits = parse_document(&body, "")?;
    state.metadata.set_limits(limits).await?;
    Ok(StatusCode::OK)
}

async fn list_task_defs(
    State(state): State<HttpState>,
    Query(params): Query<ReadParams>,
) -> Result<Json<Vec<TaskDef>>, ApiError> {
    Ok(Json(state.metadata.task_defs(params.consistency()?).await?))
}

async fn register_workflow_def(
    State(state): State<HttpState>,
    Query(params): Query<RegisterParams>,
    body: String,
) -> Result<StatusCode, ApiError> {
    let def: WorkflowDef = parse_document(&body, "")?;
    state.metadata.register_workflow_def(def, params.overwrite.unwrap_or(false)).await?;
    Ok(StatusCode::OK)
}

async fn update_workflow_defs(State(state): State<HttpState>, body: String) -> Result<StatusCode, ApiError> {
    let defs: Vec<WorkflowDef> = parse_document(&body, "")?;
    state.metadata.update_workflow_defs(defs).await?;
    Ok(StatusCode::OK)
}

async fn get_workflow_def(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    Query(params): Query<ReadParams>,
) -> Result<Json<WorkflowDef>, ApiError> {
    Ok(Json(state.metadata.workflow_def(&name, params.version()?, params.consistency()?).await?))
}

async fn delete_workflow_def(
    State(state): State<HttpState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let version = ReadParams { consistency: None, version: Some(version) }
        .version()?
        .ok_or_else(|| ApiError::invalid("version: required"))?;
    state.metadata.delete_workflow_def(name, version).await?;
    Ok(StatusCode::OK)
}

async fn list_workflow_defs(
    State(state): State<HttpState>,
    Query(params): Query<ReadParams>,
) -> Result<Json<Vec<WorkflowDef>>, ApiError> {
    Ok(Json(state.metadata.workflow_defs(params.consistency()?).await?))
}

// ---------------------------------------------------------------------------------------------- workflows

async fn start_workflow(State(state): State<HttpState>, body: String) -> Result<String, ApiError> {
    let req: StartWorkflowRequest = parse_document(&body, "")?;
    state.workflows.start(req).await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartByNameParams {
    version: Option<u32>,
    correlation_id: Option<String>,
    priority: Option<u32>,
}

/// `POST /api/workflow/{name}`: the body is the input.
async fn start_workflow_by_name(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    Query(params): Query<StartByNameParams>,
    body: String,
) -> Result<String, ApiError> {
    let input = if body.trim().is_empty() { Default::default() } else { parse_document(&body, "input")? };
    let req = StartWorkflowRequest {
        name,
        version: params.version,
        correlation_id: params.correlation_id,
        input,
        priority: params.priority.unwrap_or(0),
        ..Default::default()
    };
    state.workflows.start(req).await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GetWorkflowParams {
    #[serde(default, deserialize_with = "crate::api::query::lenient_bool")]
    include_tasks: Option<bool>,
    consistency: Option<String>,
}

async fn get_workflow(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    Query(params): Query<GetWorkflowParams>,
) -> Result<Json<Workflow>, ApiError> {
    let consistency = ReadParams { consistency: params.consistency, version: None }.consistency()?;
    Ok(Json(state.workflows.get(&id, params.include_tasks.unwrap_or(true), consistency).await?))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusSummaryParams {
    #[serde(default, deserialize_with = "crate::api::query::lenient_bool")]
    include_output: Option<bool>,
    #[serde(default, deserialize_with = "crate::api::query::lenient_bool")]
    include_variables: Option<bool>,
    consistency: Option<String>,
}

/// `GET /api/workflow/{id}/status`: Conductor's `WorkflowStatus` summary (id, correlation id, status, and output
/// and variables when asked for).
async fn workflow_status(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    Query(params): Query<StatusSummaryParams>,
) -> Result<Json<Value>, ApiError> {
    let consistency = ReadParams { consistency: params.consistency, version: None }.consistency()?;
    let wf = state.workflows.get(&id, false, consistency).await?;
    let mut summary = serde_json::json!({
        "workflowId": wf.workflow_id,
        "correlationId": wf.correlation_id,
        "status": wf.status.as_str(),
    });
    if params.include_output.unwrap_or(false) {
        summary["output"] = Value::Object(wf.output);
    }
    if params.include_variables.unwrap_or(false) {
        summary["variables"] = Value::Object(wf.variables);
    }
    Ok(Json(summary))
}

#[derive(Debug, Deserialize)]
struct ReasonParams {
    reason: Option<String>,
}

async fn terminate_workflow(
    State(state): State<HttpState>,
    Path(workflow_id): Path<String>,
    Query(params): Query<ReasonParams>,
) -> Result<StatusCode, ApiError> {
    let reason = params.reason.unwrap_or_default();
    state.workflows.command(Command::Terminate { workflow_id, reason }).await?;
    Ok(StatusCode::OK)
}

async fn pause_workflow(
    State(state): State<HttpState>,
    Path(workflow_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.workflows.command(Command::Pause { workflow_id }).await?;
    Ok(StatusCode::OK)
}

async fn resume_workflow(
    State(state): State<HttpState>,
    Path(workflow_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.workflows.command(Command::Resume { workflow_id }).await?;
    Ok(StatusCode::OK)
}

async fn retry_workflow(
    State(state): State<HttpState>,
    Path(workflow_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.workflows.command(Command::Retry { workflow_id }).await?;
    Ok(StatusCode::OK)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RestartParams {
    #[serde(default, deserialize_with = "crate::api::query::lenient_bool")]
    use_latest_definitions: Option<bool>,
}

async fn restart_workflow(
    State(state): State<HttpState>,
    Path(workflow_id): Path<String>,
    Query(params): Query<RestartParams>,
) -> Result<StatusCode, ApiError> {
    let use_latest_definition = params.use_latest_definitions.unwrap_or(false);
    state.workflows.command(Command::Restart { workflow_id, use_latest_definition }).await?;
    Ok(StatusCode::OK)
}

async fn rerun_workflow(
    State(state): State<HttpState>,
    Path(workflow_id): Path<String>,
    body: String,
) -> Result<String, ApiError> {
    let req: RerunWorkflowRequest = parse_document(&body, "")?;
    let command = Command::Rerun {
        workflow_id: workflow_id.clone(),
        from_task_id: req.re_run_from_task_id,
        task_input: req.task_input,
        workflow_input: req.workflow_input,
    };
    state.workflows.command(command).await?;
    Ok(workflow_id)
}

async fn skip_task(
    State(state): State<HttpState>,
    Path((workflow_id, task_ref)): Path<(String, String)>,
    body: String,
) -> Result<StatusCode, ApiError> {
    let output = match serde_json::from_str::<Value>(&body) {
        Ok(Value::Object(req)) => req.get("taskOutput").and_then(Value::as_object).cloned().unwrap_or_default(),
        _ => Default::default(),
    };
    state.workflows.command(Command::SkipTask { workflow_id, task_ref, output }).await?;
    Ok(StatusCode::OK)
}
