//! What `${...}` expressions see of a workflow: `${workflow.*}` ([`workflow_root`]) and `${ref.*}` for each task
//! ([`task_root`]), and a workflow's output built from its `outputParameters` ([`workflow_output`]).
//!
//! Owns: the names and shape of those documents (Conductor's). Must not touch: resolving expressions
//! ([`expr`](super::expr)) or the workflow itself (read only).

use serde_json::{json, Map, Value};

use super::expr::{self, Oversize};
use super::model::{Task, Workflow};
use super::size;

/// The document `${workflow.*}` expressions see.
pub fn workflow_root(wf: &Workflow) -> Value {
    json!({
        "workflowId": wf.workflow_id,
        "workflowType": wf.workflow_name,
        "version": wf.workflow_version,
        "status": wf.status.as_str(),
        "input": wf.input,
        "output": wf.output,
        "variables": wf.variables,
        "correlationId": wf.correlation_id,
        "parentWorkflowId": wf.parent_workflow_id,
        "parentWorkflowTaskId": wf.parent_workflow_task_id,
        "reasonForIncompletion": wf.reason_for_incompletion,
        "priority": wf.priority,
        "createTime": wf.create_time,
        "startTime": wf.start_time,
        "taskToDomain": wf.task_to_domain,
        "schemaVersion": 2,
    })
}

/// The document `${ref.*}` expressions see for a task.
pub fn task_root(t: &Task) -> Value {
    json!({
        "taskId": t.task_id,
        "taskType": t.task_type,
        "referenceTaskName": t.reference_task_name,
        "status": t.status.as_str(),
        "input": t.input_data,
        "output": t.output_data,
        "retryCount": t.retry_count,
        "reasonForIncompletion": t.reason_for_incompletion,
        "scheduledTime": t.scheduled_time,
        "startTime": t.start_time,
        "endTime": t.end_time,
        "workerId": t.worker_id,
        "iteration": t.iteration,
        "subWorkflowId": t.sub_workflow_id,
        "pollCount": t.poll_count,
        "taskDefName": t.task_def_name,
        "workflowInstanceId": t.workflow_instance_id,
        "callbackAfterSeconds": t.callback_after_seconds,
    })
}

/// Expression roots of a workflow: `workflow` and each task reference (the latest execution; inside a loop,
/// the reference without its `__N` suffix means the latest iteration).
pub(super) struct WorkflowRoots<'a> {
    /// The workflow.
    pub(super) wf: &'a Workflow,
}

impl expr::Roots for WorkflowRoots<'_> {
    fn root(&self, name: &str) -> Option<Value> {
        if name == "workflow" {
            return Some(workflow_root(self.wf));
        }
        self.wf
            .latest_by_ref(name)
            .or_else(|| self.wf.tasks.iter().rev().find(|t| t.workflow_task.task_reference_name == name))
            .map(task_root)
    }
}

/// A workflow's output: its outputParameters resolved, or the last task's output when it has none; at most
/// `cap` bytes.
pub fn workflow_output(wf: &Workflow, cap: usize) -> Result<Map<String, Value>, Oversize> {
    if wf.workflow_definition.output_parameters.is_empty() {
        let output = wf.tasks.last().map(|t| &t.output_data);
        return match output {
            Some(output) if size::map_within(output, cap).is_none() => Err(Oversize),
            Some(output) => Ok(output.clone()),
            None => Ok(Map::new()),
        };
    }
    expr::resolve_map_within(&wf.workflow_definition.output_parameters, &WorkflowRoots { wf }, cap)
}
