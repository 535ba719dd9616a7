//! The metadata operations (task and workflow definitions), shared by the gRPC and HTTP front ends: parse,
//! validate, propose through Raft, read with the requested consistency.

use crate::api::error::ApiError;
pub use crate::api::gateway::Consistency;
use crate::api::gateway::Gateway;
use crate::engine::definitions::{parse_json, FieldError, TaskDef, WorkflowDef};
use crate::engine::Command;
use crate::raft::proposer::Committed;

/// The metadata service behind both front ends.
#[derive(Debug, Clone)]
pub struct MetadataApi {
    gateway: Gateway,
}

/// Parses one JSON document, prefixing the error path with `prefix` (e.g. `[2]`).
pub fn parse_document<T: serde::de::DeserializeOwned>(text: &str, prefix: &str) -> Result<T, ApiError> {
    parse_json(text).map_err(|e| {
        let path = match (prefix.is_empty(), e.path.is_empty()) {
            (true, _) => e.path,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{}", e.path),
        };
        ApiError::invalid_field(FieldError { path, message: e.message })
    })
}

impl MetadataApi {
    /// The service over this node's gateway.
    pub fn new(gateway: Gateway) -> Self {
        MetadataApi { gateway }
    }

    async fn write(&self, command: Command) -> Result<Committed, ApiError> {
        self.gateway.write(command).await
    }

    async fn barrier(&self, consistency: Consistency) -> Result<(), ApiError> {
        self.gateway.barrier(consistency).await
    }

    /// Creates or replaces task definitions.
    pub async fn register_task_defs(&self, defs: Vec<TaskDef>) -> Result<Committed, ApiError> {
        self.write(Command::RegisterTaskDefs { defs }).await
    }

    /// Replaces an existing task definition.
    pub async fn update_task_def(&self, def: TaskDef) -> Result<Committed, ApiError> {
        self.write(Command::UpdateTaskDef { def }).await
    }

    /// Creates a workflow definition (or replaces it, with `overwrite`).
    pub async fn register_workflow_def(&self, def: WorkflowDef, overwrite: bool) -> Result<Committed, ApiError> {
        self.write(Command::RegisterWorkflowDef { def, overwrite }).await
    }

    /// Creates or replaces workflow definitions.
    pub async fn update_workflow_defs(&self, defs: Vec<WorkflowDef>) -> Result<Committed, ApiError> {
        self.write(Command::UpdateWorkflowDefs { defs }).await
    }

    /// Removes a task definition.
    pub async fn delete_task_def(&self, name: String) -> Result<Committed, ApiError> {
        self.write(Command::DeleteTaskDef { name }).await
    }

    /// Removes one version of a workflow definition.
    pub async fn delete_workflow_def(&self, name: String, version: u32) -> Result<Committed, ApiError> {
        self.write(Command::DeleteWorkflowDef { name, version }).await
    }

    /// The engine's limits (a cluster setting).
    pub async fn limits(&self, consistency: Consistency) -> Result<crate::engine::limits::Limits, ApiError> {
        self.barrier(consistency).await?;
        Ok(self.gateway.reader().limits()?)
    }

    /// Replaces the engine's limits.
    pub async fn set_limits(&self, limits: crate::engine::limits::Limits) -> Result<Committed, ApiError> {
        self.write(Command::SetLimits { limits }).await
    }

    /// One task definition.
    pub async fn task_def(&self, name: &str, consistency: Consistency) -> Result<TaskDef, ApiError> {
        self.barrier(consistency).await?;
        self.gateway
            .reader()
            .task_def(name)?
            .ok_or_else(|| ApiError::not_found(format!("no task definition named '{name}'")))
    }

    /// Every task definition.
    pub async fn task_defs(&self, consistency: Consistency) -> Result<Vec<TaskDef>, ApiError> {
        self.barrier(consistency).await?;
        Ok(self.gateway.reader().task_defs()?)
    }

    /// One workflow definition; the latest version when `version` is None.
    pub async fn workflow_def(
        &self,
        name: &str,
        version: Option<u32>,
        consistency: Consistency,
    ) -> Result<WorkflowDef, ApiError> {
        self.barrier(consistency).await?;
        self.gateway.reader().workflow_def(name, version)?.ok_or_else(|| {
            ApiError::not_found(match version {
                Some(v) => format!("no workflow definition named '{name}' with version {v}"),
                None => format!("no workflow definition named '{name}'"),
            })
        })
    }

    /// Every version of every workflow definition.
    pub async fn workflow_defs(&self, consistency: Consistency) -> Result<Vec<WorkflowDef>, ApiError> {
        self.barrier(consistency).await?;
        Ok(self.gateway.reader().workflow_defs()?)
    }
}
