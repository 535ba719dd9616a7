//! What `${...}` expressions see of a workflow: `${workflow.*}` ([`workflow_root`]) and `${ref.*}` for each task
//! ([`task_root`]), and a workflow's output built from its `outputParameters` ([`workflow_output`]).
//!
//! Owns: the names and shape of those documents (Conductor's). Must not touch: resolving expressions
//! ([`expr`](super::expr)) or the workflow itself (read only).

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::expr::{self, Member, Oversize};
use super::model::{Task, Workflow};
use super::size;

/// The document `${workflow.*}` expressions see.
pub fn workflow_root(wf: &Workflow) -> Value {
    let mut root = Map::new();
    for key in WORKFLOW_MEMBERS {
        if let Some(value) = workflow_member(wf, key).and_then(Member::into_value) {
            root.insert(key.to_string(), value);
        }
    }
    Value::Object(root)
}

/// The members of `${workflow}`, in the order [`workflow_member`] knows them.
const WORKFLOW_MEMBERS: [&str; 16] = [
    "workflowId",
    "workflowType",
    "version",
    "status",
    "input",
    "output",
    "variables",
    "correlationId",
    "parentWorkflowId",
    "parentWorkflowTaskId",
    "reasonForIncompletion",
    "priority",
    "createTime",
    "startTime",
    "taskToDomain",
    "schemaVersion",
];

/// One member of `${workflow}`, read in place where it is kept as JSON (input, output, variables).
fn workflow_member<'w>(wf: &'w Workflow, key: &str) -> Option<Member<'w>> {
    let owned = |value: Value| Some(Member::Owned(value));
    match key {
        "workflowId" => owned(json!(wf.workflow_id)),
        "workflowType" => owned(json!(wf.workflow_name)),
        "version" => owned(json!(wf.workflow_version)),
        "status" => owned(json!(wf.status.as_str())),
        "input" => Some(Member::Map(&wf.input)),
        "output" => Some(Member::Map(&wf.output)),
        "variables" => Some(Member::Map(&wf.variables)),
        "correlationId" => owned(json!(wf.correlation_id)),
        "parentWorkflowId" => owned(json!(wf.parent_workflow_id)),
        "parentWorkflowTaskId" => owned(json!(wf.parent_workflow_task_id)),
        "reasonForIncompletion" => owned(json!(wf.reason_for_incompletion)),
        "priority" => owned(json!(wf.priority)),
        "createTime" => owned(json!(wf.create_time)),
        "startTime" => owned(json!(wf.start_time)),
        "taskToDomain" => owned(json!(wf.task_to_domain)),
        "schemaVersion" => owned(json!(2)),
        _ => None,
    }
}

/// The document `${ref.*}` expressions see for a task.
pub fn task_root(t: &Task) -> Value {
    let mut root = Map::new();
    for key in TASK_MEMBERS {
        if let Some(value) = task_member(t, key).and_then(Member::into_value) {
            root.insert(key.to_string(), value);
        }
    }
    Value::Object(root)
}

/// The members of `${ref}`, in the order [`task_member`] knows them.
const TASK_MEMBERS: [&str; 18] = [
    "taskId",
    "taskType",
    "referenceTaskName",
    "status",
    "input",
    "output",
    "retryCount",
    "reasonForIncompletion",
    "scheduledTime",
    "startTime",
    "endTime",
    "workerId",
    "iteration",
    "subWorkflowId",
    "pollCount",
    "taskDefName",
    "workflowInstanceId",
    "callbackAfterSeconds",
];

/// One member of `${ref}`, read in place where it is kept as JSON (input, output).
fn task_member<'t>(t: &'t Task, key: &str) -> Option<Member<'t>> {
    let owned = |value: Value| Some(Member::Owned(value));
    match key {
        "taskId" => owned(json!(t.task_id)),
        "taskType" => owned(json!(t.task_type)),
        "referenceTaskName" => owned(json!(t.reference_task_name)),
        "status" => owned(json!(t.status.as_str())),
        "input" => Some(Member::Map(&t.input_data)),
        "output" => Some(Member::Map(&t.output_data)),
        "retryCount" => owned(json!(t.retry_count)),
        "reasonForIncompletion" => owned(json!(t.reason_for_incompletion)),
        "scheduledTime" => owned(json!(t.scheduled_time)),
        "startTime" => owned(json!(t.start_time)),
        "endTime" => owned(json!(t.end_time)),
        "workerId" => owned(json!(t.worker_id)),
        "iteration" => owned(json!(t.iteration)),
        "subWorkflowId" => owned(json!(t.sub_workflow_id)),
        "pollCount" => owned(json!(t.poll_count)),
        "taskDefName" => owned(json!(t.task_def_name)),
        "workflowInstanceId" => owned(json!(t.workflow_instance_id)),
        "callbackAfterSeconds" => owned(json!(t.callback_after_seconds)),
        _ => None,
    }
}

/// Expression roots of a workflow: `workflow` and each task reference (the latest execution; inside a loop,
/// the reference without its `__N` suffix means the latest iteration). Paths read the members they name in place;
/// only a path over a whole root (`${workflow}`, `${ref..x}`) builds it.
pub(super) struct WorkflowRoots<'a> {
    wf: &'a Workflow,
    /// The task each name asked for means (a name is looked up once, however many expressions use it).
    tasks: RefCell<HashMap<String, Option<&'a Task>>>,
}

impl<'a> WorkflowRoots<'a> {
    /// The roots of `wf`.
    pub(super) fn new(wf: &'a Workflow) -> Self {
        WorkflowRoots { wf, tasks: RefCell::default() }
    }

    /// The task a reference name means.
    fn task(&self, name: &str) -> Option<&'a Task> {
        if let Some(task) = self.tasks.borrow().get(name) {
            return *task;
        }
        let wf = self.wf;
        let task = wf
            .latest_by_ref(name)
            .or_else(|| wf.tasks.iter().rev().find(|t| t.workflow_task.task_reference_name == name));
        self.tasks.borrow_mut().insert(name.to_string(), task);
        task
    }
}

impl expr::Roots for WorkflowRoots<'_> {
    fn root(&self, name: &str) -> Option<Value> {
        if name == "workflow" {
            return Some(workflow_root(self.wf));
        }
        self.task(name).map(task_root)
    }

    fn member(&self, name: &str, key: &str) -> Member<'_> {
        let member = if name == "workflow" {
            workflow_member(self.wf, key)
        } else {
            match self.task(name) {
                Some(task) => task_member(task, key),
                None => return Member::NoRoot,
            }
        };
        member.unwrap_or(Member::Absent)
    }

    fn whole_bytes(&self, name: &str, cap: usize) -> Option<usize> {
        // The documents kept as JSON are what costs; the other members are a few hundred bytes at most.
        let (maps, members) = if name == "workflow" {
            (vec![&self.wf.input, &self.wf.output, &self.wf.variables], WORKFLOW_MEMBERS.len())
        } else {
            match self.task(name) {
                Some(task) => (vec![&task.input_data, &task.output_data], TASK_MEMBERS.len()),
                None => return Some(0),
            }
        };
        let mut bytes = members.saturating_mul(64);
        for map in maps {
            bytes = bytes.saturating_add(size::map_within(map, cap.saturating_sub(bytes))?);
        }
        (bytes <= cap).then_some(bytes)
    }
}

/// A workflow's output: its outputParameters resolved, or the last task's output when it has none; at most
/// `cap` bytes. Gives the bytes counted against the cap with it (see [`expr::resolve_map_within`]).
pub fn workflow_output(wf: &Workflow, cap: usize) -> Result<(Map<String, Value>, usize), Oversize> {
    if wf.workflow_definition.output_parameters.is_empty() {
        let output = wf.tasks.last().map(|t| &t.output_data);
        return match output {
            Some(output) => match size::map_within(output, cap) {
                Some(bytes) => Ok((output.clone(), bytes)),
                None => Err(Oversize),
            },
            None => Ok((Map::new(), 0)),
        };
    }
    expr::resolve_map_within(&wf.workflow_definition.output_parameters, &WorkflowRoots::new(wf), cap)
}
