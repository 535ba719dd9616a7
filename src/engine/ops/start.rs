//! Starting a workflow ([`Command::StartWorkflow`](crate::engine::Command::StartWorkflow)): by name and version or
//! with an inline definition, under the caller's idempotency key.
//!
//! Owns: the start request, what a repeated idempotency key does, and the refusals of a start (input too deep or
//! too large, unknown definition, id taken). Must not touch: what the new workflow runs first
//! ([`Exec::start`](crate::engine::exec::Exec::start)).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::engine::definitions::{validate_workflow_def, WorkflowDef};
use crate::engine::exec::{Exec, OpResult};
use crate::engine::lifecycle::new_workflow;
use crate::engine::model::{too_deep, WorkflowStatus};
use crate::engine::{Rejection, StateView};

/// A start request, with the id the leader chose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartWorkflow {
    /// The new workflow's id (a UUID drawn by the leader).
    pub workflow_id: String,
    /// The definition's name (ignored when `definition` is given).
    pub name: String,
    /// The version; the latest when absent.
    pub version: Option<u32>,
    /// An inline definition (a routing slip): run this instead of a registered one.
    pub definition: Option<WorkflowDef>,
    /// The input.
    pub input: Map<String, Value>,
    /// The caller's correlation id.
    pub correlation_id: Option<String>,
    /// Priority 0-99.
    pub priority: u32,
    /// Task type -> domain.
    pub task_to_domain: BTreeMap<String, String>,
    /// The caller's idempotency key: what a start with a key already used does is `idempotency_strategy`.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// What a start does when its key started a workflow before. Entries written before it existed decode as
    /// `ReturnExisting`, the only behaviour they knew.
    #[serde(default)]
    pub idempotency_strategy: IdempotencyStrategy,
}

/// What a start does when its idempotency key already started a workflow (Conductor's `idempotencyStrategy`).
///
/// Conductor's default is `FAIL`; Baton's is `RETURN_EXISTING`, because a start whose outcome is unknown (the
/// leader died before answering) is retried with the same key and must answer the workflow it may have started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IdempotencyStrategy {
    /// Answer the id of the workflow the key started.
    #[default]
    ReturnExisting,
    /// Refuse the start (409).
    Fail,
    /// Refuse while the workflow the key started is RUNNING or PAUSED; otherwise start a new one under the key.
    FailOnRunning,
}

impl<S: StateView> Exec<'_, S> {
    /// Starts a workflow.
    pub fn op_start(&mut self, req: &StartWorkflow) -> OpResult<String> {
        if let Some(reason) = too_deep("input", &req.input) {
            return Ok(Err(Rejection::invalid(reason)));
        }
        let limit = self.limits().max_workflow_input_bytes;
        if let Some(reason) = self.map_refusal("input", &req.input, "maxWorkflowInputBytes", limit) {
            return Ok(Err(Rejection::invalid(reason)));
        }
        if let Some(key) = req.idempotency_key.as_deref().filter(|k| !k.is_empty()) {
            if let Some(existing) = self.idempotent_start(key)? {
                match req.idempotency_strategy {
                    IdempotencyStrategy::ReturnExisting => return Ok(Ok(existing)),
                    IdempotencyStrategy::Fail => {
                        return Ok(Err(Rejection::conflict(format!(
                            "idempotency key '{key}' already started workflow {existing}"
                        ))))
                    }
                    IdempotencyStrategy::FailOnRunning => {
                        let status = self.workflow(&existing)?.map(|wf| wf.status);
                        if let Some(status @ (WorkflowStatus::Running | WorkflowStatus::Paused)) = status {
                            return Ok(Err(Rejection::conflict(format!(
                                "idempotency key '{key}' started workflow {existing}, which is {}",
                                status.as_str()
                            ))));
                        }
                    }
                }
            }
        }
        let def = match &req.definition {
            Some(def) => {
                let mut problems = validate_workflow_def(def);
                problems.extend(crate::engine::references::check(self.state(), def, &[])?);
                if let Some(p) = problems.first() {
                    return Ok(Err(Rejection::invalid(format!("workflowDef.{}: {}", p.path, p.message))));
                }
                std::sync::Arc::new(def.clone())
            }
            None => match self.workflow_def(&req.name, req.version)? {
                Some(def) => def,
                None => {
                    let version = req.version.map_or("latest".to_string(), |v| v.to_string());
                    return Ok(Err(Rejection::not_found(format!(
                        "workflow definition '{}' version {version} not found",
                        req.name
                    ))));
                }
            },
        };
        if self.exists(&req.workflow_id)? {
            return Ok(Err(Rejection::conflict(format!("workflow {} already exists", req.workflow_id))));
        }
        let mut wf = new_workflow(
            req.workflow_id.clone(),
            def,
            req.input.clone(),
            req.correlation_id.clone(),
            req.priority,
            None,
            self.now_ms,
        );
        wf.task_to_domain = req.task_to_domain.clone();
        self.insert(wf);
        if let Some(key) = req.idempotency_key.as_deref().filter(|k| !k.is_empty()) {
            self.record_idempotency_key(key, &req.workflow_id);
        }
        self.count_start();
        self.start(&req.workflow_id)?;
        Ok(Ok(req.workflow_id.clone()))
    }
}
