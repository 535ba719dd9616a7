//! An in-memory state: the engine's twin of the RocksDB store, for tests and benchmarks. Same [`StateView`], and
//! [`MemoryState::write`] applies mutations the way storage does.

use std::collections::BTreeMap;

use super::definitions::{TaskDef, WorkflowDef};
use super::limits::Limits;
use super::model::{TypeStats, Workflow};
use super::{workflow_version, Mutation, StateError, StateView};

/// Definitions, workflows and idempotency keys in ordered maps.
#[derive(Debug, Default, Clone)]
pub struct MemoryState {
    /// Task definitions by name.
    pub task_defs: BTreeMap<String, TaskDef>,
    /// Workflow definitions by name and version.
    pub workflow_defs: BTreeMap<(String, u32), WorkflowDef>,
    /// Workflow executions by id.
    pub workflows: BTreeMap<String, Workflow>,
    /// Idempotency key -> workflow id.
    pub idempotency_keys: BTreeMap<String, String>,
    /// Dispatch counters by task type.
    pub type_stats: BTreeMap<String, TypeStats>,
    /// Task id -> the workflow holding it.
    pub task_index: BTreeMap<String, String>,
    /// The bench table.
    pub bench_values: BTreeMap<String, Vec<u8>>,
    /// The engine's limits, once set.
    pub limits: Option<Limits>,
}

impl StateView for MemoryState {
    fn task_def(&self, name: &str) -> Result<Option<TaskDef>, StateError> {
        Ok(self.task_defs.get(name).cloned())
    }
    fn workflow_def(&self, name: &str, version: u32) -> Result<Option<WorkflowDef>, StateError> {
        Ok(self.workflow_defs.get(&(name.to_string(), version)).cloned())
    }
    fn latest_workflow_def(&self, name: &str) -> Result<Option<WorkflowDef>, StateError> {
        Ok(self
            .workflow_defs
            .range((name.to_string(), 0)..=(name.to_string(), u32::MAX))
            .last()
            .map(|(_, d)| d.clone()))
    }
    fn workflow_def_versions(&self, name: &str) -> Result<Vec<u32>, StateError> {
        Ok(self
            .workflow_defs
            .range((name.to_string(), 0)..=(name.to_string(), u32::MAX))
            .map(|((_, v), _)| *v)
            .collect())
    }
    fn workflow(&self, id: &str) -> Result<Option<Workflow>, StateError> {
        Ok(self.workflows.get(id).cloned())
    }
    fn idempotency_key(&self, key: &str) -> Result<Option<String>, StateError> {
        Ok(self.idempotency_keys.get(key).cloned())
    }
    fn type_stats(&self, task_type: &str) -> Result<Option<TypeStats>, StateError> {
        Ok(self.type_stats.get(task_type).copied())
    }
    fn limits(&self) -> Result<Limits, StateError> {
        Ok(self.limits.clone().unwrap_or_default())
    }
}

impl MemoryState {
    /// Writes what an applied command changed.
    pub fn write(&mut self, mutations: Vec<Mutation>) {
        for m in mutations {
            match m {
                Mutation::PutTaskDef(d) => {
                    self.task_defs.insert(d.name.clone(), d);
                }
                Mutation::PutWorkflowDef(d) => {
                    self.workflow_defs.insert((d.name.clone(), workflow_version(&d)), d);
                }
                Mutation::PutWorkflow(w) => {
                    #[cfg(test)]
                    assert_round_trips(&w);
                    self.workflows.insert(w.workflow_id.clone(), std::sync::Arc::unwrap_or_clone(w));
                }
                Mutation::PutIdempotencyKey { key, workflow_id } => {
                    self.idempotency_keys.insert(key, workflow_id);
                }
                Mutation::PutTypeStats { task_type, stats } => {
                    self.type_stats.insert(task_type, stats);
                }
                Mutation::PutTaskIndex { task_id, workflow_id } => {
                    self.task_index.insert(task_id, workflow_id);
                }
                Mutation::DeleteTaskIndex { task_id } => {
                    self.task_index.remove(&task_id);
                }
                Mutation::DeleteTaskDef { name } => {
                    self.task_defs.remove(&name);
                }
                Mutation::DeleteWorkflowDef { name, version } => {
                    self.workflow_defs.remove(&(name, version));
                }
                Mutation::PutBenchValue { key, value } => {
                    self.bench_values.insert(key, value);
                }
                Mutation::PutLimits(limits) => self.limits = Some(limits),
            }
        }
    }
}

/// The state machine keeps running workflows in memory as the engine left them (storage::hot_workflows), while a
/// replica that restarted, or evicted one, decodes them from RocksDB: the two must be the same workflow, or
/// replicas could apply the next command differently. Every workflow the engine's tests write is checked here.
#[cfg(test)]
fn assert_round_trips(workflow: &Workflow) {
    use crate::storage::codec;
    let bytes = codec::encode(workflow).expect("a workflow encodes");
    let decoded: Workflow = codec::decode(&bytes).expect("a workflow decodes");
    assert_eq!(&decoded, workflow, "a workflow must decode to exactly what was encoded");
}
