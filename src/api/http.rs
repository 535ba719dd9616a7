//! The HTTP front end: cluster status, health and readiness, and Conductor's metadata REST API
//! (`/api/metadata/...`). [`router`] builds the whole app so tests can call it in-process.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::api::error::ApiError;
use crate::api::metadata::{parse_document, Consistency, MetadataApi};
use crate::api::status::NodeStatus;
use crate::engine::definitions::{TaskDef, WorkflowDef};
use crate::raft::Raft;
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
    /// The cluster's id.
    pub cluster_id: Arc<str>,
}

/// The HTTP app of one node.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/api/cluster/status", get(cluster_status))
        .route("/api/metadata/taskdefs", get(list_task_defs).post(register_task_defs).put(update_task_def))
        .route("/api/metadata/taskdefs/{name}", get(get_task_def))
        .route("/api/metadata/workflow", get(list_workflow_defs).post(register_workflow_def).put(update_workflow_defs))
        .route("/api/metadata/workflow/{name}", get(get_workflow_def))
        .with_state(state)
}

async fn health() -> &'static str {
    "ok"
}

/// 200 when a leader is known and this node has applied everything it knows committed; 503 otherwise.
async fn ready(State(state): State<HttpState>) -> Response {
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

async fn cluster_status(State(state): State<HttpState>) -> Result<Json<NodeStatus>, ApiError> {
    Ok(Json(NodeStatus::collect(&state.raft, &state.reader, &state.cluster_id).await?))
}

#[derive(Debug, Deserialize)]
struct ReadParams {
    consistency: Option<String>,
    version: Option<String>,
}

impl ReadParams {
    fn consistency(&self) -> Result<Consistency, ApiError> {
        match self.consistency.as_deref() {
            None | Some("local") => Ok(Consistency::Local),
            Some("linearizable") => Ok(Consistency::Linearizable),
            Some(other) => Err(ApiError::Invalid {
                message: format!("consistency: expected 'local' or 'linearizable', got '{other}'"),
                field_errors: Vec::new(),
            }),
        }
    }

    fn version(&self) -> Result<Option<u32>, ApiError> {
        self.version
            .as_deref()
            .map(|v| {
                v.parse::<u32>().ok().filter(|v| *v >= 1).ok_or_else(|| ApiError::Invalid {
                    message: format!("version: expected a positive integer, got '{v}'"),
                    field_errors: Vec::new(),
                })
            })
            .transpose()
    }
}

#[derive(Debug, Deserialize)]
struct RegisterParams {
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

async fn list_workflow_defs(
    State(state): State<HttpState>,
    Query(params): Query<ReadParams>,
) -> Result<Json<Vec<WorkflowDef>>, ApiError> {
    Ok(Json(state.metadata.workflow_defs(params.consistency()?).await?))
}
