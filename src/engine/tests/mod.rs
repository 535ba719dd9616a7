//! Engine scenario tests: Conductor's documented behaviour, one scenario per task type and operation, run against
//! an in-memory state (no tokio, RocksDB or network). [`World`] is the test kit.

mod conductor_documents;
mod leases;
mod limits;
mod operations;
mod payloads;
mod properties;
mod task_types;
mod timeouts;
mod value_depth;

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::definitions::{parse_json, TaskDef, WorkflowDef};
use super::evaluation::{evaluate, request_for};
use super::model::{Task, TaskStatus, Workflow, WorkflowStatus};
use super::ops::{StartWorkflow, TaskUpdate};
use super::{apply, Command, CommandResponse, Proposal};

pub use crate::engine::memory::MemoryState as MemState;

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

    /// Applies one command at the current time, then plays the leader's evaluator: every task left waiting for
    /// its code (INLINE, JSON_JQ_TRANSFORM, a SWITCH's JavaScript, a DO_WHILE's condition) is evaluated in-process
    /// and its outcome applied as a `Command::Evaluated`, until none waits.
    pub fn run(&mut self, command: Command) -> CommandResponse {
        let response = self.apply_only(command);
        self.evaluate_waiting();
        response
    }

    /// Applies one command at the current time and nothing else.
    pub fn apply_only(&mut self, command: Command) -> CommandResponse {
        let applied = apply(&self.state, &Proposal { at_ms: self.now_ms, command }).expect("memory state never fails");
        self.state.write(applied.mutations);
        applied.response
    }

    /// Evaluates, as the leader would, every task of a running workflow that waits for its code.
    pub fn evaluate_waiting(&mut self) {
        loop {
            let next = self.state.workflows.values().filter(|wf| wf.status == WorkflowStatus::Running).find_map(|wf| {
                let task = wf.tasks.iter().find(|t| t.awaiting_evaluation > 0)?;
                let request = request_for(task, self.now_ms).expect("a waiting task has a request");
                Some((wf.workflow_id.clone(), task.task_id.clone(), task.awaiting_evaluation, request))
            });
            let Some((workflow_id, task_id, round, request)) = next else { return };
            let outcome = evaluate(&request);
            let response = self.apply_only(Command::Evaluated { workflow_id, task_id, round, outcome });
            assert_eq!(response, CommandResponse::Done);
        }
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
            idempotency_strategy: Default::default(),
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
            .filter(|t| !t.status.is_terminal() && !super::system_tasks::is_system_type(&t.task_type))
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
