//! Leases (docs/adr/0006-dispatch-and-leases.md): the leader's dispatcher proposes which tasks a polling worker
//! gets ([`Exec::op_lease`]); each becomes IN_PROGRESS under a new lease number, the worker's proof when it
//! reports. A lease holder's heartbeat ([`Exec::op_extend_lease`]) restarts the response-timeout clock.
//!
//! Owns: which tasks may still be leased when the command applies, and a task definition's concurrency and rate
//! limits. Must not touch: choosing the tasks (the leader's ready index, in `runtime`) or the worker's updates
//! (`tasks.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{not_found, stale};
use crate::engine::exec::{Exec, OpResult};
use crate::engine::model::{LeaseRef, TaskStatus, WorkflowStatus};
use crate::engine::system_tasks::is_system_type;
use crate::engine::StateView;

/// A task to lease: which workflow, which task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRef {
    /// The workflow.
    pub workflow_id: String,
    /// The task.
    pub task_id: String,
}

/// A lease granted to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// The workflow.
    pub workflow_id: String,
    /// The task.
    pub task_id: String,
    /// The lease's number, the worker's proof when it reports.
    pub lease_seq: u64,
}

/// Leases of `task_type` this command granted so far.
fn granted_here(granted: &BTreeMap<String, u64>, task_type: &str) -> u64 {
    granted.get(task_type).copied().unwrap_or(0)
}

impl<S: StateView> Exec<'_, S> {
    /// Hands visible, scheduled worker tasks to a worker: each becomes IN_PROGRESS under a new lease. Tasks that
    /// stopped qualifying since the leader picked them (taken, canceled, not yet visible) are left out.
    pub fn op_lease(&mut self, worker_id: &str, poll_id: Option<&str>, tasks: &[TaskRef]) -> OpResult<Vec<LeaseGrant>> {
        let now = self.now_ms;
        let mut granted = Vec::new();
        // Leases granted by this command per type (its IN_PROGRESS counts are only added up when it finishes).
        let mut granted_types: BTreeMap<String, u64> = BTreeMap::new();
        for r in tasks {
            let Some(wf) = self.workflow(&r.workflow_id)? else { continue };
            if wf.status != WorkflowStatus::Running {
                continue;
            }
            let Some(i) = wf.task_index(&r.task_id) else { continue };
            let t = &wf.tasks[i];
            if t.status != TaskStatus::Scheduled || is_system_type(&t.task_type) || t.visible_from > now {
                continue;
            }
            // The task definition's limits: attempts in progress, dispatches per window.
            let task = t.clone();
            if let Some(def) = self.effective_task_def(&task)? {
                let mut stats = self.stats(&task.task_type)?;
                let in_progress_now = stats.in_progress + granted_here(&granted_types, &task.task_type);
                if let Some(limit) = def.concurrent_exec_limit.filter(|l| *l > 0) {
                    if in_progress_now >= u64::try_from(limit).unwrap_or(u64::MAX) {
                        continue;
                    }
                }
                let per = def.rate_limit_per_frequency.unwrap_or(0);
                let window_s = def.rate_limit_frequency_in_seconds.unwrap_or(0);
                if per > 0 && window_s > 0 {
                    let window_ms = u64::try_from(window_s).unwrap_or(0) * 1000;
                    if now >= stats.window_start_ms + window_ms {
                        stats.window_start_ms = now;
                        stats.dispatched_in_window = 0;
                    }
                    if stats.dispatched_in_window >= u64::try_from(per).unwrap_or(u64::MAX) {
                        continue;
                    }
                    stats.dispatched_in_window += 1;
                    self.set_stats(&task.task_type, stats);
                }
            }
            *granted_types.entry(task.task_type.clone()).or_insert(0) += 1;
            let Some(wf) = self.workflow(&r.workflow_id)? else { continue };
            let t = &mut wf.tasks[i];
            t.mark_taken(now, worker_id);
            t.callback_after_seconds = 0;
            t.poll_id = poll_id.map(str::to_string);
            t.lease_seq += 1;
            granted.push(LeaseGrant {
                workflow_id: r.workflow_id.clone(),
                task_id: r.task_id.clone(),
                lease_seq: t.lease_seq,
            });
        }
        Ok(Ok(granted))
    }

    /// A lease holder's heartbeat: the response-timeout clock starts again.
    pub fn op_extend_lease(&mut self, workflow_id: &str, task_id: &str, lease: LeaseRef) -> OpResult<()> {
        let now = self.now_ms;
        let Some(wf) = self.workflow(workflow_id)? else { return Ok(Err(not_found("workflow", workflow_id))) };
        let Some(i) = wf.task_index(task_id) else { return Ok(Err(not_found("task", task_id))) };
        let t = &mut wf.tasks[i];
        if t.status != TaskStatus::InProgress || t.lease_seq != lease.lease_seq {
            return Ok(Err(stale(task_id, lease, t.lease_seq)));
        }
        t.update_time = now;
        Ok(Ok(()))
    }
}
