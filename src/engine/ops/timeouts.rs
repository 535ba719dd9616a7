//! Timeouts: when a workflow's next `Tick` is due ([`Workflow::next_tick_ms`], computed when a command finishes)
//! and what a tick does ([`Exec::op_tick`]): the workflow's own timeout, a WAIT's end, and a task's poll, response
//! and execution timeouts, each with its policy. The two must agree: a tick due too late leaves a timeout unapplied.
//!
//! Owns: the timeout rules and their messages (Conductor's). Must not touch: the timers themselves (the leader's
//! runtime proposes the ticks) or what follows a timed-out task (the decider retries or fails).

use super::not_found;
use crate::engine::definitions::{TaskTimeoutPolicy, WorkflowTimeoutPolicy};
use crate::engine::exec::{Exec, OpResult};
use crate::engine::model::{TaskStatus, Workflow, WorkflowStatus};
use crate::engine::system_tasks::is_system_type;
use crate::engine::{StateError, StateView};

impl<S: StateView> Exec<'_, S> {
    /// The earliest time a `Tick` could change this workflow: its own timeout, a WAIT's end, or a task's poll,
    /// response or execution timeout. 0 when nothing is timed.
    pub(in crate::engine) fn next_tick(&mut self, wf: &Workflow) -> Result<u64, StateError> {
        if wf.status != WorkflowStatus::Running {
            return Ok(0);
        }
        if wf.decision_pending {
            return Ok(self.now_ms);
        }
        let mut due = u64::MAX;
        let def = &wf.workflow_definition;
        if def.timeout_seconds > 0 && def.timeout_policy == WorkflowTimeoutPolicy::TimeOutWf {
            due = due.min(wf.start_time.saturating_add(seconds_ms(def.timeout_seconds)));
        }
        for task in wf.tasks.iter().filter(|t| !t.status.is_terminal()) {
            if task.task_type == "WAIT" {
                if task.visible_from > 0 {
                    due = due.min(task.visible_from);
                }
                continue;
            }
            if is_system_type(&task.task_type) {
                continue;
            }
            let Some(td) = self.effective_task_def(task)? else { continue };
            let secs = seconds_ms;
            if task.status == TaskStatus::Scheduled && task.start_time == 0 {
                if let Some(poll) = td.poll_timeout_seconds.filter(|s| *s > 0) {
                    due = due.min(task.scheduled_time.max(task.visible_from).saturating_add(secs(poll)));
                }
            }
            if task.status == TaskStatus::InProgress && task.response_timeout_seconds > 0 {
                let limit_ms =
                    task.response_timeout_seconds.saturating_add(task.callback_after_seconds).saturating_mul(1000);
                due = due.min(task.update_time.saturating_add(limit_ms));
            }
            if task.start_time > 0 && td.timeout_seconds > 0 && td.timeout_policy != TaskTimeoutPolicy::AlertOnly {
                due = due.min(task.start_time.saturating_add(secs(td.timeout_seconds)));
            }
        }
        Ok(if due == u64::MAX { 0 } else { due })
    }

    /// Applies every timeout that is due at the command's time, then lets the decider act (retries, failures).
    pub fn op_tick(&mut self, workflow_id: &str) -> OpResult<()> {
        let now = self.now_ms;
        let Some(wf) = self.workflow(workflow_id)? else { return Ok(Err(not_found("workflow", workflow_id))) };
        if wf.status != WorkflowStatus::Running {
            return Ok(Ok(()));
        }
        // The workflow's own timeout.
        let def = wf.workflow_definition.clone();
        if def.timeout_seconds > 0 && def.timeout_policy == WorkflowTimeoutPolicy::TimeOutWf {
            let deadline = wf.start_time.saturating_add(seconds_ms(def.timeout_seconds));
            if now >= deadline {
                let reason = format!(
                    "Workflow timed out after {} seconds. Timeout configured as {} seconds. Timeout policy configured to TIME_OUT_WF",
                    (now - wf.start_time) / 1000,
                    def.timeout_seconds
                );
                self.end_workflow(workflow_id.to_string(), WorkflowStatus::TimedOut, reason, None)?;
                return Ok(Ok(()));
            }
        }
        let pending: Vec<usize> =
            wf.tasks.iter().enumerate().filter(|(_, t)| !t.status.is_terminal()).map(|(i, _)| i).collect();
        let mut timeout_wf = None;
        for i in pending {
            let task = self.workflow(workflow_id)?.expect("loaded above").tasks[i].clone();
            if task.task_type == "WAIT" {
                if task.visible_from > 0 && now >= task.visible_from {
                    let t = &mut self.workflow(workflow_id)?.expect("loaded above").tasks[i];
                    t.status = TaskStatus::Completed;
                    t.end_time = now;
                    t.update_time = now;
                }
                continue;
            }
            if is_system_type(&task.task_type) {
                continue;
            }
            // The same definition `next_tick` timed the task with (Conductor's defaults when none is registered
            // any more): a Tick that skipped it would leave the workflow due at once, and the leader ticking it
            // forever (fuzz finding 1).
            let Some(def) = self.effective_task_def(&task)? else { continue };
            let secs = seconds_ms;
            let mut timed_out = None;
            let policy = serde_json::to_value(def.timeout_policy)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            if task.status == TaskStatus::Scheduled && task.start_time == 0 {
                if let Some(poll) = def.poll_timeout_seconds.filter(|s| *s > 0) {
                    let since = task.scheduled_time.max(task.visible_from);
                    if now >= since.saturating_add(secs(poll)) {
                        timed_out = Some(format!(
                            "Task poll timed out after {} seconds. Poll timeout configured as {poll} seconds. Timeout policy configured to {policy}",
                            (now - since) / 1000
                        ));
                    }
                }
            }
            if task.status == TaskStatus::InProgress && task.response_timeout_seconds > 0 {
                let limit_ms =
                    task.response_timeout_seconds.saturating_add(task.callback_after_seconds).saturating_mul(1000);
                if now >= task.update_time.saturating_add(limit_ms) {
                    timed_out = Some(format!(
                        "responseTimeout: {} exceeded for the taskId: {} with Task Definition: {}",
                        task.response_timeout_seconds, task.task_id, task.task_def_name
                    ));
                }
            }
            let timeout_at = task.start_time.saturating_add(secs(def.timeout_seconds));
            if task.start_time > 0 && def.timeout_seconds > 0 && now >= timeout_at {
                let reason = format!(
                    "Task timed out after {} seconds. Timeout configured as {} seconds. Timeout policy configured to {policy}",
                    (now - task.start_time) / 1000,
                    def.timeout_seconds
                );
                match def.timeout_policy {
                    TaskTimeoutPolicy::AlertOnly => {}
                    TaskTimeoutPolicy::Retry => timed_out = Some(reason),
                    TaskTimeoutPolicy::TimeOutWf => {
                        timed_out = Some(reason);
                        timeout_wf = Some(task.reference_task_name.clone());
                    }
                }
            }
            if let Some(reason) = timed_out {
                let t = &mut self.workflow(workflow_id)?.expect("loaded above").tasks[i];
                t.status = TaskStatus::TimedOut;
                t.reason_for_incompletion = Some(reason);
                t.end_time = now;
                t.update_time = now;
                if timeout_wf.as_deref() == Some(t.reference_task_name.as_str()) {
                    t.executed = true;
                }
            }
        }
        if let Some(reference) = timeout_wf {
            let wf = self.workflow(workflow_id)?.expect("loaded above");
            wf.failed_reference_task_names.insert(reference.clone());
            let reason = self
                .workflow(workflow_id)?
                .expect("loaded above")
                .latest_by_ref(&reference)
                .and_then(|t| t.reason_for_incompletion.clone())
                .unwrap_or_default();
            self.end_workflow(workflow_id.to_string(), WorkflowStatus::TimedOut, reason, None)?;
            return Ok(Ok(()));
        }
        self.schedule_decide(workflow_id);
        Ok(Ok(()))
    }
}

/// Seconds from a definition (any `i64`; negative counts as 0) in ms, saturating: a timeout of `i64::MAX` seconds
/// means never, not a wrapped time in the past (fuzz finding 4).
fn seconds_ms(seconds: i64) -> u64 {
    u64::try_from(seconds).unwrap_or(0).saturating_mul(1000)
}
