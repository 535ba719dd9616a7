//! What workers and operators report for a task: a worker takes it ([`Exec::op_start_task`]) or updates it
//! ([`Exec::op_update_task`]), an operator signals a WAIT or HUMAN task by reference name ([`Exec::op_signal`]) or
//! skips a step not reached yet ([`Exec::op_skip`]), and anyone appends to its log ([`Exec::op_append_log`]).
//!
//! Owns: which updates a task accepts, from whom (a lease holder's update is checked against its lease), and what
//! they record. Must not touch: handing tasks out (`leases.rs`) or what follows the task (the
//! decider).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{not_found, stale};
use crate::engine::decide::DefIndex;
use crate::engine::exec::{Exec, OpResult};
use crate::engine::model::{too_deep, LeaseRef, TaskStatus, WorkflowStatus};
use crate::engine::system_tasks::is_system_type;
use crate::engine::{size, Rejection, StateView};

/// What a worker (or an operator) reports for a task (Conductor's `TaskResult`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskUpdate {
    /// The new status: IN_PROGRESS, COMPLETED, FAILED or FAILED_WITH_TERMINAL_ERROR.
    pub status: TaskStatus,
    /// Output data (replaces the task's output).
    pub output: Map<String, Value>,
    /// Why it failed.
    pub reason: Option<String>,
    /// For IN_PROGRESS: hand the task out again after this many seconds.
    pub callback_after_seconds: u64,
    /// The reporting worker.
    pub worker_id: Option<String>,
    /// The lease the worker holds (workers over gRPC always send it; Conductor's REST updates have none).
    #[serde(default)]
    pub lease: Option<LeaseRef>,
}

impl<S: StateView> Exec<'_, S> {
    /// A worker took a scheduled task.
    pub fn op_start_task(&mut self, workflow_id: &str, task_id: &str, worker_id: &str) -> OpResult<()> {
        let now = self.now_ms;
        let Some(wf) = self.workflow(workflow_id)? else { return Ok(Err(not_found("workflow", workflow_id))) };
        let Some(i) = wf.task_index(task_id) else { return Ok(Err(not_found("task", task_id))) };
        let t = &mut wf.tasks[i];
        if is_system_type(&t.task_type) {
            return Ok(Err(Rejection::conflict(format!(
                "task {task_id} is a {} task, run by the engine",
                t.task_type
            ))));
        }
        if t.status.is_terminal() {
            return Ok(Err(Rejection::conflict(format!("task {task_id} is {}", t.status.as_str()))));
        }
        t.mark_taken(now, worker_id);
        Ok(Ok(()))
    }

    /// Appends a line to a task's log (kept with the attempt, bounded).
    pub fn op_append_log(&mut self, workflow_id: &str, task_id: &str, log: &str) -> OpResult<()> {
        use crate::engine::model::{TaskLog, MAX_TASK_LOGS, MAX_TASK_LOG_BYTES};
        let now = self.now_ms;
        let Some(wf) = self.workflow(workflow_id)? else { return Ok(Err(not_found("workflow", workflow_id))) };
        let Some(i) = wf.task_index(task_id) else { return Ok(Err(not_found("task", task_id))) };
        let mut end = log.len().min(MAX_TASK_LOG_BYTES);
        while !log.is_char_boundary(end) {
            end -= 1;
        }
        let logs = &mut wf.tasks[i].logs;
        logs.push(TaskLog { log: log[..end].to_string(), created_time: now });
        if logs.len() > MAX_TASK_LOGS {
            let excess = logs.len() - MAX_TASK_LOGS;
            logs.drain(..excess);
        }
        Ok(Ok(()))
    }

    /// Applies a worker's (or operator's) update to a task.
    pub fn op_update_task(&mut self, workflow_id: &str, task_id: &str, update: &TaskUpdate) -> OpResult<()> {
        let now = self.now_ms;
        let allowed = matches!(
            update.status,
            TaskStatus::InProgress | TaskStatus::Completed | TaskStatus::Failed | TaskStatus::FailedWithTerminalError
        );
        if !allowed {
            return Ok(Err(Rejection::invalid(format!(
                "status: a task update may be IN_PROGRESS, COMPLETED, FAILED or FAILED_WITH_TERMINAL_ERROR, not {}",
                update.status.as_str()
            ))));
        }
        if let Some(reason) = too_deep("outputData", &update.output) {
            return Ok(Err(Rejection::invalid(reason)));
        }
        // An output past the limit fails the task terminally, with its output left empty (as Conductor does for a
        // payload past its maximum): the worker's update is taken, its output is not kept.
        let cap = self.cap("maxTaskOutputBytes", self.limits().max_task_output_bytes);
        let output_bytes = size::map_within(&update.output, cap.bytes);
        let Some(wf) = self.workflow(workflow_id)? else { return Ok(Err(not_found("workflow", workflow_id))) };
        let Some(i) = wf.task_index(task_id) else { return Ok(Err(not_found("task", task_id))) };
        let t = &mut wf.tasks[i];
        if let Some(lease) = update.lease {
            // A lease holder's update: acknowledged again if it repeats the update that finished the attempt,
            // refused if someone else holds (or held) the task since.
            if t.status.is_terminal() {
                return Ok(if t.finished_by_lease == Some(lease.lease_seq) {
                    Ok(())
                } else {
                    Err(stale(task_id, lease, t.lease_seq))
                });
            }
            if t.lease_seq != lease.lease_seq || t.status != TaskStatus::InProgress {
                return Ok(Err(stale(task_id, lease, t.lease_seq)));
            }
        }
        // Conductor ignores updates to finished tasks (a worker retrying an update it already made): acknowledged,
        // nothing changes.
        if t.status.is_terminal() {
            return Ok(Ok(()));
        }
        if t.start_time == 0 {
            t.start_time = now;
        }
        t.update_time = now;
        if let Some(w) = &update.worker_id {
            t.worker_id = Some(w.clone());
        }
        let Some(output_bytes) = output_bytes else {
            t.output_data = Map::new();
            t.status = TaskStatus::FailedWithTerminalError;
            t.end_time = now;
            t.reason_for_incompletion =
                Some(cap.breach(format_args!("the output of task '{}'", t.reference_task_name)));
            t.finished_by_lease = update.lease.map(|l| l.lease_seq);
            self.schedule_decide(workflow_id);
            return Ok(Ok(()));
        };
        t.output_data = update.output.clone();
        match update.status {
            TaskStatus::InProgress => {
                // A worker task that reports progress goes back to the queue, to be polled again after
                // callbackAfterSeconds; WAIT and HUMAN stay IN_PROGRESS.
                t.status = if is_system_type(&t.task_type) { TaskStatus::InProgress } else { TaskStatus::Scheduled };
                t.callback_after_seconds = update.callback_after_seconds;
                t.visible_from = if update.callback_after_seconds > 0 {
                    now.saturating_add(update.callback_after_seconds.saturating_mul(1000))
                } else {
                    0
                };
            }
            status => {
                t.status = status;
                t.end_time = now;
                t.reason_for_incompletion = update.reason.clone();
                t.finished_by_lease = update.lease.map(|l| l.lease_seq);
            }
        }
        self.spend(output_bytes);
        self.schedule_decide(workflow_id);
        Ok(Ok(()))
    }

    /// Completes (or fails) the pending task with this reference name: how WAIT and HUMAN tasks are signalled.
    pub fn op_signal(&mut self, workflow_id: &str, task_ref: &str, update: &TaskUpdate) -> OpResult<()> {
        let Some(wf) = self.workflow(workflow_id)? else { return Ok(Err(not_found("workflow", workflow_id))) };
        let Some(task) = wf.tasks.iter().rev().find(|t| t.reference_task_name == task_ref && !t.status.is_terminal())
        else {
            return Ok(Err(Rejection::not_found(format!("no pending task '{task_ref}' in workflow {workflow_id}"))));
        };
        let task_id = task.task_id.clone();
        self.op_update_task(workflow_id, &task_id, update)
    }

    /// Skips a step that has not been scheduled yet in a running workflow: when the workflow reaches it, it is
    /// recorded SKIPPED (with the given output) and the workflow carries on after it.
    pub fn op_skip(&mut self, workflow_id: &str, task_ref: &str, output: &Map<String, Value>) -> OpResult<()> {
        let now = self.now_ms;
        if let Some(reason) = too_deep("taskOutput", output) {
            return Ok(Err(Rejection::invalid(reason)));
        }
        let limit = self.limits().max_task_output_bytes;
        if let Some(reason) = self.map_refusal("taskOutput", output, "maxTaskOutputBytes", limit) {
            return Ok(Err(Rejection::invalid(reason)));
        }
        let Some(wf) = self.workflow(workflow_id)? else { return Ok(Err(not_found("workflow", workflow_id))) };
        if wf.status != WorkflowStatus::Running {
            return Ok(Err(Rejection::conflict(format!(
                "The workflow {workflow_id} is not running so the task referenced by {task_ref} cannot be skipped"
            ))));
        }
        let def = std::sync::Arc::clone(&wf.workflow_definition);
        let index = DefIndex::new(&def);
        let Some(step) = index.step(task_ref).cloned() else {
            return Ok(Err(Rejection::not_found(format!(
                "The task referenced by {task_ref} does not exist in the workflow definition {}",
                wf.workflow_name
            ))));
        };
        if wf.tasks.iter().any(|t| t.reference_task_name == task_ref) {
            return Ok(Err(Rejection::conflict(format!(
                "The task referenced {task_ref} has already been processed, cannot be skipped"
            ))));
        }
        let mut task = self.new_task(workflow_id, &step, 0, Map::new(), step.name.clone())?;
        task.status = TaskStatus::Skipped;
        task.output_data = output.clone();
        task.end_time = now;
        self.push_task(workflow_id, task)?;
        Ok(Ok(()))
    }
}
