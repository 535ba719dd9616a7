//! Engine scenario tests: Conductor's documented behaviour, one scenario per task type and operation, run against
//! an in-memory state (no tokio, RocksDB or network). [`World`] is the test kit.

mod conductor_documents;
mod leases;
mod operations;
mod properties;
mod task_types;
mod timeouts;

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::definitions::{parse_json, TaskDef, WorkflowDef};
use super::model::{Task, TaskStatus, Workflow, WorkflowStatus};
use super::ops::{StartWorkflow, TaskUpdate};
use super::{apply, workflow_version, Command, CommandResponse, Mutation, Proposal, StateError, StateView};

/// The engine's in-memory twin of the RocksDB state.
#[derive(Default, Clone)]
pub struct MemState {
    pub task_defs: BTreeMap<String, TaskDef>,
    pub workflow_defs: BTreeMap<(String, u32), WorkflowDef>,
    pub workflows: BTreeMap<String, Workflow>,
    pub idempotency_keys: BTreeMap<String, String>,
}

impl StateView for MemState {
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
    fn workflow(&self, id: &str) -> Result<Option<Workflow>, StateError> {
        Ok(self.workflows.get(id).cloned())
    }
    fn idempotency_key(&self, key: &str) -> Result<Option<String>, StateError> {
        Ok(self.idempotency_keys.get(key).cloned())
    }
}

impl MemState {
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
                    self.workflows.insert(w.workflow_id.clone(), *w);
                }
                Mutation::PutIdempotencyKey { key, workflow_id } => {
                    self.idempotency_keys.insert(key, workflow_id);
                }
            }
        }
    }
}

/// A state, a clock and helpers to drive workflows the way workers and operators would.
pub struct World {
    pub state: MemState,
    pub now_ms: u64,
    next_id: u64,
}

impl World {
    pub fn new() -> Self {
        World { state: MemState::default(), now_ms: 1_700_000_000_000, next_id: 0 }
    }

    /// Applies one command at the current time.
    pub fn run(&mut self, command: Command) -> CommandResponse {
        let applied = apply(&self.state, &Proposal { at_ms: self.now_ms, command }).expect("memory state never fails");
        self.state.write(applied.mutations);
        applied.response
    }

    pub fn task_def(&mut self, json: Value) {
        let def: TaskDef = parse_json(&json.to_string()).expect("task def parses");
        assert_eq!(self.run(Command::RegisterTaskDefs { defs: vec![def] }), CommandResponse::Done);
    }

    /// Registers task definitions with no retries for each name.
    pub fn simple_tasks(&mut self, names: &[&str]) {
        for name in names {
            self.task_def(json!({"name": name, "retryCount": 0}));
        }
    }

    pub fn workflow_def(&mut self, json: Value) {
        let def: WorkflowDef = parse_json(&json.to_string()).expect("workflow def parses");
        let response = self.run(Command::UpdateWorkflowDefs { defs: vec![def] });
        assert_eq!(response, CommandResponse::Done, "registering {json}");
    }

    pub fn start_request(&mut self, name: &str, input: Value) -> StartWorkflow {
        self.next_id += 1;
        StartWorkflow {
            workflow_id: format!("wf-{}", self.next_id),
            name: name.to_string(),
            version: None,
            definition: None,
            input: input.as_object().cloned().unwrap_or_default(),
            correlation_id: None,
            priority: 0,
            task_to_domain: BTreeMap::new(),
            idempotency_key: None,
        }
    }

    /// Starts the latest version of a registered workflow; returns its id.
    pub fn start(&mut self, name: &str, input: Value) -> String {
        let req = self.start_request(name, input);
        match self.run(Command::StartWorkflow(req)) {
            CommandResponse::WorkflowStarted { workflow_id } => workflow_id,
            other => panic!("start {name} failed: {other:?}"),
        }
    }

    pub fn wf(&self, id: &str) -> &Workflow {
        self.state.workflows.get(id).unwrap_or_else(|| panic!("no workflow {id}"))
    }

    pub fn status(&self, id: &str) -> WorkflowStatus {
        self.wf(id).status
    }

    /// The latest execution of a reference name.
    pub fn task(&self, id: &str, reference: &str) -> &Task {
        self.wf(id).latest_by_ref(reference).unwrap_or_else(|| panic!("no task {reference} in {id}: {}", self.dump(id)))
    }

    /// Reference names of the tasks waiting for a worker, in seq order.
    pub fn pending(&self, id: &str) -> Vec<String> {
        self.wf(id)
            .tasks
            .iter()
            .filter(|t| !t.status.is_terminal() && !super::exec::is_system_type(&t.task_type))
            .map(|t| t.reference_task_name.clone())
            .collect()
    }

    /// `ref:STATUS` of every task, for assertion messages.
    pub fn dump(&self, id: &str) -> String {
        let wf = self.wf(id);
        let tasks: Vec<String> =
            wf.tasks.iter().map(|t| format!("{}:{}", t.reference_task_name, t.status.as_str())).collect();
        format!("{} [{}] {:?}", wf.status.as_str(), tasks.join(", "), wf.reason_for_incompletion)
    }

    fn update(
        &mut self,
        id: &str,
        reference: &str,
        status: TaskStatus,
        output: Value,
        reason: Option<&str>,
    ) -> CommandResponse {
        let task_id = self.task(id, reference).task_id.clone();
        if self.task(id, reference).status == TaskStatus::Scheduled {
            let r = self.run(Command::StartTask {
                workflow_id: id.into(),
                task_id: task_id.clone(),
                worker_id: "w1".into(),
            });
            assert_eq!(r, CommandResponse::Done);
        }
        let update = TaskUpdate {
            status,
            output: output.as_object().cloned().unwrap_or_default(),
            reason: reason.map(str::to_string),
            callback_after_seconds: 0,
            worker_id: Some("w1".into()),
            lease: None,
        };
        self.run(Command::UpdateTask { workflow_id: id.into(), task_id, update })
    }

    /// A worker completes the latest execution of `reference` with `output`.
    pub fn complete(&mut self, id: &str, reference: &str, output: Value) {
        let r = self.update(id, reference, TaskStatus::Completed, output, None);
        assert_eq!(r, CommandResponse::Done, "completing {reference}: {}", self.dump(id));
    }

    /// A worker fails the latest execution of `reference`.
    pub fn fail(&mut self, id: &str, reference: &str, reason: &str) {
        let r = self.update(id, reference, TaskStatus::Failed, json!({}), Some(reason));
        assert_eq!(r, CommandResponse::Done, "failing {reference}: {}", self.dump(id));
    }

    /// A worker fails `reference` terminally.
    pub fn fail_terminally(&mut self, id: &str, reference: &str, reason: &str) {
        let r = self.update(id, reference, TaskStatus::FailedWithTerminalError, json!({}), Some(reason));
        assert_eq!(r, CommandResponse::Done);
    }

    pub fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
    }

    pub fn tick(&mut self, id: &str) {
        let r = self.run(Command::Tick { workflow_id: id.into() });
        assert_eq!(r, CommandResponse::Done);
    }
}

/// An object from a `json!` literal.
pub fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("an object literal")
}
