//! An operator's requests on a whole workflow: terminate, pause, resume, retry (from the failed tasks), restart
//! (from the beginning) and rerun (from one task).
//!
//! Owns: from which statuses each request applies, and what a workflow keeps when it runs again. Must not touch:
//! how a workflow ends ([`Exec::end_workflow`](crate::engine::exec::Exec::end_workflow)) or what it runs next (the
//! decider).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::not_found;
use crate::engine::exec::{derive_id, Exec, OpResult};
use crate::engine::model::{too_deep, Workflow, WorkflowStatus};
use crate::engine::{Rejection, StateView};

/// A finished workflow made RUNNING again (restart, rerun): its outcome cleared; its tasks are the caller's to
/// keep or drop.
fn reopen(wf: &mut Workflow, now_ms: u64) {
    wf.status = WorkflowStatus::Running;
    wf.output = Map::new();
    wf.reason_for_incompletion = None;
    wf.failed_reference_task_names.clear();
    wf.end_time = 0;
    wf.update_time = now_ms;
}

impl<S: StateView> Exec<'_, S> {
    /// Terminates a running or paused workflow.
    pub fn op_terminate(&mut self, workflow_id: &str, reason: &str) -> OpResult<()> {
        let now = self.now_ms;
        let Some(wf) = self.workflow(workflow_id)? else { return Ok(Err(not_found("workflow", workflow_id))) };
        match wf.status {
            WorkflowStatus::Completed => {
                return Ok(Err(Rejection::conflict(format!("Cannot terminate a COMPLETED workflow ({workflow_id})"))))
            }
            WorkflowStatus::Terminated => return Ok(Ok(())),
            WorkflowStatus::Failed | WorkflowStatus::TimedOut => {
                // A finished but unsuccessful workflow may still be marked TERMINATED.
                wf.status = WorkflowStatus::Terminated;
                wf.update_time = now;
                if !reason.is_empty() {
                    wf.reason_for_incompletion = Some(reason.to_string());
                }
                return Ok(Ok(()));
            }
            WorkflowStatus::Running | WorkflowStatus::Paused => {}
        }
        self.terminate_by_operator(workflow_id, reason)?;
        Ok(Ok(()))
    }

    /// Pauses a running workflow: nothing new is scheduled until it is resumed.
    pub fn op_pause(&mut self, workflow_id: &str) -> OpResult<()> {
        let now = self.now_ms;
        let Some(wf) = self.workflow(workflow_id)? else { return Ok(Err(not_found("workflow", workflow_id))) };
        match wf.status {
            WorkflowStatus::Running => {
                wf.status = WorkflowStatus::Paused;
                wf.update_time = now;
                Ok(Ok(()))
            }
            WorkflowStatus::Paused => Ok(Ok(())),
            other => Ok(Err(Rejection::conflict(format!(
                "Workflow {workflow_id} has ended ({}), status cannot be updated",
                other.as_str()
            )))),
        }
    }

    /// Resumes a paused workflow.
    pub fn op_resume(&mut self, workflow_id: &str) -> OpResult<()> {
        let now = self.now_ms;
        let Some(wf) = self.workflow(workflow_id)? else { return Ok(Err(not_found("workflow", workflow_id))) };
        match wf.status {
            WorkflowStatus::Paused => {
                wf.status = WorkflowStatus::Running;
                wf.update_time = now;
                self.schedule_decide(workflow_id);
                Ok(Ok(()))
            }
            other => Ok(Err(Rejection::conflict(format!(
                "The workflow {workflow_id} is not PAUSED so cannot resume. Current status is {}",
                other.as_str()
            )))),
        }
    }

    /// Retries a failed, timed-out or terminated workflow from its failed (and canceled) tasks.
    pub fn op_retry(&mut self, workflow_id: &str) -> OpResult<()> {
        let now = self.now_ms;
        let Some(wf) = self.workflow(workflow_id)? else { return Ok(Err(not_found("workflow", workflow_id))) };
        if !matches!(wf.status, WorkflowStatus::Failed | WorkflowStatus::TimedOut | WorkflowStatus::Terminated) {
            return Ok(Err(Rejection::conflict(format!(
                "workflow {workflow_id} is {}; only FAILED, TIMED_OUT or TERMINATED workflows can be retried",
                wf.status.as_str()
            ))));
        }
        // The latest execution of each reference that did not succeed is scheduled again.
        let mut latest: BTreeMap<String, usize> = BTreeMap::new();
        for (i, t) in wf.tasks.iter().enumerate() {
            latest.insert(t.reference_task_name.clone(), i);
        }
        let mut again = Vec::new();
        for &i in latest.values() {
            let t = &wf.tasks[i];
            if !t.status.is_successful() {
                again.push(i);
            }
        }
        if again.is_empty() {
            return Ok(Err(Rejection::conflict(format!("workflow {workflow_id} has no failed task to retry"))));
        }
        again.sort_unstable();
        wf.status = WorkflowStatus::Running;
        wf.reason_for_incompletion = None;
        wf.failed_reference_task_names.clear();
        wf.end_time = 0;
        wf.update_time = now;
        let mut copies = Vec::new();
        for i in again {
            let t = &mut wf.tasks[i];
            t.retried = true;
            t.executed = true;
            let mut copy = t.clone();
            copy.reset_for_new_attempt(now);
            copy.retried_task_id = Some(t.task_id.clone());
            copy.retry_count += 1;
            copies.push(copy);
        }
        for copy in copies {
            let wf = self.workflow(workflow_id)?.expect("loaded above");
            wf.next_seq = wf.next_seq.max(wf.tasks.len() as u32) + 1;
            let mut copy = copy;
            copy.seq = wf.next_seq;
            copy.task_id = derive_id(&format!("{}/task/{}", wf.workflow_id, copy.seq));
            wf.tasks.push(copy);
        }
        self.schedule_decide(workflow_id);
        Ok(Ok(()))
    }

    /// Restarts a terminal workflow from the beginning with the same input.
    pub fn op_restart(&mut self, workflow_id: &str, use_latest_definition: bool) -> OpResult<()> {
        let now = self.now_ms;
        let Some(wf) = self.workflow(workflow_id)? else { return Ok(Err(not_found("workflow", workflow_id))) };
        if !wf.status.is_terminal() {
            return Ok(Err(Rejection::conflict(format!(
                "workflow {workflow_id} is {}; only a finished workflow can be restarted",
                wf.status.as_str()
            ))));
        }
        if !wf.workflow_definition.restartable && wf.status == WorkflowStatus::Completed {
            return Ok(Err(Rejection::conflict(format!(
                "workflow {workflow_id}: its definition is not restartable (restartable=false)"
            ))));
        }
        let (name, current) = (wf.workflow_name.clone(), wf.workflow_definition.clone());
        let latest = if use_latest_definition { self.workflow_def(&name, None)? } else { None };
        let def = latest.unwrap_or(current);
        let wf = self.workflow(workflow_id)?.expect("loaded above");
        wf.workflow_version = u32::try_from(def.version).unwrap_or(wf.workflow_version);
        wf.workflow_definition = def;
        reopen(wf, now);
        let gone: Vec<String> = wf.tasks.drain(..).map(|t| t.task_id).collect();
        wf.start_time = now;
        self.forget_tasks(gone);
        self.count_start();
        self.start(workflow_id)?;
        Ok(Ok(()))
    }

    /// Reruns a finished workflow from one of its tasks: that task and everything after it are dropped and the
    /// task is scheduled again (with new input when given).
    pub fn op_rerun(
        &mut self,
        workflow_id: &str,
        from_task_id: &str,
        task_input: Option<&Map<String, Value>>,
        workflow_input: Option<&Map<String, Value>>,
    ) -> OpResult<()> {
        let now = self.now_ms;
        let deep = [("taskInput", task_input), ("workflowInput", workflow_input)]
            .into_iter()
            .find_map(|(what, input)| input.and_then(|input| too_deep(what, input)));
        if let Some(reason) = deep {
            return Ok(Err(Rejection::invalid(reason)));
        }
        let limits = self.limits().clone();
        let sized = [
            ("taskInput", task_input, "maxTaskInputBytes", limits.max_task_input_bytes),
            ("workflowInput", workflow_input, "maxWorkflowInputBytes", limits.max_workflow_input_bytes),
        ];
        for (what, input, name, limit) in sized {
            if let Some(reason) = input.and_then(|input| self.map_refusal(what, input, name, limit)) {
                return Ok(Err(Rejection::invalid(reason)));
            }
        }
        let Some(wf) = self.workflow(workflow_id)? else { return Ok(Err(not_found("workflow", workflow_id))) };
        if !wf.status.is_terminal() {
            return Ok(Err(Rejection::conflict(format!(
                "workflow {workflow_id} is {}; only a finished workflow can be rerun",
                wf.status.as_str()
            ))));
        }
        if from_task_id.is_empty() {
            // Conductor's rerun without a task: every task goes, the workflow runs again from its first one.
            if let Some(input) = workflow_input {
                wf.input = input.clone();
            }
            reopen(wf, now);
            let gone: Vec<String> = wf.tasks.drain(..).map(|t| t.task_id).collect();
            self.forget_tasks(gone);
            self.count_start();
            self.start(workflow_id)?;
            return Ok(Ok(()));
        }
        let Some(i) = wf.task_index(from_task_id) else { return Ok(Err(not_found("task", from_task_id))) };
        let mut task = wf.tasks[i].clone();
        let seq = task.seq;
        // The task itself stays (as a new attempt, under its id); everything after it goes.
        let gone: Vec<String> = wf.tasks.iter().filter(|t| t.seq > seq).map(|t| t.task_id.clone()).collect();
        wf.tasks.retain(|t| t.seq < seq);
        if let Some(input) = workflow_input {
            wf.input = input.clone();
        }
        reopen(wf, now);
        if let Some(input) = task_input {
            task.input_data = input.clone();
        }
        task.reset_for_new_attempt(now);
        task.retry_count = 0;
        wf.tasks.push(task);
        self.forget_tasks(gone);
        self.schedule_decide(workflow_id);
        Ok(Ok(()))
    }
}
