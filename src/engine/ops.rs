//! Operations on workflows: start, worker updates, signals, terminate, pause, resume, retry, restart, rerun, skip,
//! and the timer tick that applies timeouts. Each checks its preconditions, refuses deterministically when they
//! do not hold, changes the workflow and lets the decider carry on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::definitions::{validate_workflow_def, TaskTimeoutPolicy, WorkflowDef, WorkflowTimeoutPolicy};
use super::exec::{is_system_type, new_workflow, DefIndex, Exec, OpResult, Refusal};
use super::model::{too_deep, LeaseRef, TaskStatus, Workflow, WorkflowStatus};
use super::{size, StateView};

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

fn granted_here(granted: &BTreeMap<String, u64>, task_type: &str) -> u64 {
    granted.get(task_type).copied().unwrap_or(0)
}

fn stale(task_id: &str, lease: LeaseRef, current: u64) -> Refusal {
    Refusal::StaleLease(format!(
        "lease {} of task {task_id} is no longer valid (current lease {current}); the task was handed out again or finished",
        lease.lease_seq
    ))
}

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

fn not_found(what: &str, id: &str) -> Refusal {
    Refusal::NotFound(format!("{what} {id} not found"))
}

impl<S: StateView> Exec<'_, S> {
    /// Starts a workflow.
    pub fn op_start(&mut self, req: &StartWorkflow) -> OpResult<String> {
        if let Some(reason) = too_deep("input", &req.input) {
            return Ok(Err(Refusal::Invalid(reason)));
        }
        let limit = self.limits().max_workflow_input_bytes;
        if let Some(reason) = self.map_refusal("input", &req.input, "maxWorkflowInputBytes", limit) {
            return Ok(Err(Refusal::Invalid(reason)));
        }
        if let Some(key) = req.idempotency_key.as_deref().filter(|k| !k.is_empty()) {
            if let Some(existing) = self.idempotent_start(key)? {
                match req.idempotency_strategy {
                    IdempotencyStrategy::ReturnExisting => return Ok(Ok(existing)),
                    IdempotencyStrategy::Fail => {
                        return Ok(Err(Refusal::Conflict(format!(
                            "idempotency key '{key}' already started workflow {existing}"
                        ))))
                    }
                    IdempotencyStrategy::FailOnRunning => {
                        let status = self.workflow(&existing)?.map(|wf| wf.status);
                        if let Some(status @ (WorkflowStatus::Running | WorkflowStatus::Paused)) = status {
                            return Ok(Err(Refusal::Conflict(format!(
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
                problems.extend(super::references::check(self.state(), def, &[])?);
                if let Some(p) = problems.first() {
                    return Ok(Err(Refusal::Invalid(format!("workflowDef.{}: {}", p.path, p.message))));
                }
                def.clone()
            }
            None => match self.workflow_def(&req.name, req.version)? {
                Some(def) => def,
                None => {
                    let version = req.version.map_or("latest".to_string(), |v| v.to_string());
                    return Ok(Err(Refusal::NotFound(format!(
                        "workflow definition '{}' version {version} not found",
                        req.name
                    ))));
                }
            },
        };
        if self.exists(&req.workflow_id)? {
            return Ok(Err(Refusal::Conflict(format!("workflow {} already exists", req.workflow_id))));
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

    /// A worker took a scheduled task.
    pub fn op_start_task(&mut self, workflow_id: &str, task_id: &str, worker_id: &str) -> OpResult<()> {
        let now = self.now_ms;
        let Some(wf) = self.workflow(workflow_id)? else { return Ok(Err(not_found("workflow", workflow_id))) };
        let Some(i) = wf.task_index(task_id) else { return Ok(Err(not_found("task", task_id))) };
        let t = &mut wf.tasks[i];
        if is_system_type(&t.task_type) {
            return Ok(Err(Refusal::Conflict(format!("task {task_id} is a {} task, run by the engine", t.task_type))));
        }
        if t.status.is_terminal() {
            return Ok(Err(Refusal::Conflict(format!("task {task_id} is {}", t.status.as_str()))));
        }
        t.mark_taken(now, worker_id);
        Ok(Ok(()))
    }

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

    /// Appends a line to a task's log (kept with the attempt, bounded).
    pub fn op_append_log(&mut self, workflow_id: &str, task_id: &str, log: &str) -> OpResult<()> {
        use super::model::{TaskLog, MAX_TASK_LOGS, MAX_TASK_LOG_BYTES};
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

    /// Applies a worker's (or operator's) update to a task.
    pub fn op_update_task(&mut self, workflow_id: &str, task_id: &str, update: &TaskUpdate) -> OpResult<()> {
        let now = self.now_ms;
        let allowed = matches!(
            update.status,
            TaskStatus::InProgress | TaskStatus::Completed | TaskStatus::Failed | TaskStatus::FailedWithTerminalError
        );
        if !allowed {
            return Ok(Err(Refusal::Invalid(format!(
                "status: a task update may be IN_PROGRESS, COMPLETED, FAILED or FAILED_WITH_TERMINAL_ERROR, not {}",
                update.status.as_str()
            ))));
        }
        if let Some(reason) = too_deep("outputData", &update.output) {
            return Ok(Err(Refusal::Invalid(reason)));
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
                t.visible_from =
                    if update.callback_after_seconds > 0 { now + update.callback_after_seconds * 1000 } else { 0 };
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
            return Ok(Err(Refusal::NotFound(format!("no pending task '{task_ref}' in workflow {workflow_id}"))));
        };
        let task_id = task.task_id.clone();
        self.op_update_task(workflow_id, &task_id, update)
    }

    /// Terminates a running or paused workflow.
    pub fn op_terminate(&mut self, workflow_id: &str, reason: &str) -> OpResult<()> {
        let now = self.now_ms;
        let Some(wf) = self.workflow(workflow_id)? else { return Ok(Err(not_found("workflow", workflow_id))) };
        match wf.status {
            WorkflowStatus::Completed => {
                return Ok(Err(Refusal::Conflict(format!("Cannot terminate a COMPLETED workflow ({workflow_id})"))))
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
            other => Ok(Err(Refusal::Conflict(format!(
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
            other => Ok(Err(Refusal::Conflict(format!(
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
            return Ok(Err(Refusal::Conflict(format!(
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
            return Ok(Err(Refusal::Conflict(format!("workflow {workflow_id} has no failed task to retry"))));
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
            copy.task_id = super::exec::derive_id(&format!("{}/task/{}", wf.workflow_id, copy.seq));
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
            return Ok(Err(Refusal::Conflict(format!(
                "workflow {workflow_id} is {}; only a finished workflow can be restarted",
                wf.status.as_str()
            ))));
        }
        if !wf.workflow_definition.restartable && wf.status == WorkflowStatus::Completed {
            return Ok(Err(Refusal::Conflict(format!(
                "workflow {workflow_id}: its definition is not restartable (restartable=false)"
            ))));
        }
        let (name, current) = (wf.workflow_name.clone(), wf.workflow_definition.clone());
        let latest = if use_latest_definition { self.workflow_def(&name, None)? } else { None };
        let def = latest.map_or(current, std::sync::Arc::new);
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
            return Ok(Err(Refusal::Invalid(reason)));
        }
        let limits = self.limits().clone();
        let sized = [
            ("taskInput", task_input, "maxTaskInputBytes", limits.max_task_input_bytes),
            ("workflowInput", workflow_input, "maxWorkflowInputBytes", limits.max_workflow_input_bytes),
        ];
        for (what, input, name, limit) in sized {
            if let Some(reason) = input.and_then(|input| self.map_refusal(what, input, name, limit)) {
                return Ok(Err(Refusal::Invalid(reason)));
            }
        }
        let Some(wf) = self.workflow(workflow_id)? else { return Ok(Err(not_found("workflow", workflow_id))) };
        if !wf.status.is_terminal() {
            return Ok(Err(Refusal::Conflict(format!(
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

    /// Skips a step that has not been scheduled yet in a running workflow: when the workflow reaches it, it is
    /// recorded SKIPPED (with the given output) and the workflow carries on after it.
    pub fn op_skip(&mut self, workflow_id: &str, task_ref: &str, output: &Map<String, Value>) -> OpResult<()> {
        let now = self.now_ms;
        if let Some(reason) = too_deep("taskOutput", output) {
            return Ok(Err(Refusal::Invalid(reason)));
        }
        let limit = self.limits().max_task_output_bytes;
        if let Some(reason) = self.map_refusal("taskOutput", output, "maxTaskOutputBytes", limit) {
            return Ok(Err(Refusal::Invalid(reason)));
        }
        let Some(wf) = self.workflow(workflow_id)? else { return Ok(Err(not_found("workflow", workflow_id))) };
        if wf.status != WorkflowStatus::Running {
            return Ok(Err(Refusal::Conflict(format!(
                "The workflow {workflow_id} is not running so the task referenced by {task_ref} cannot be skipped"
            ))));
        }
        let def = std::sync::Arc::clone(&wf.workflow_definition);
        let index = DefIndex::new(&def);
        let Some(step) = index.step(task_ref).cloned() else {
            return Ok(Err(Refusal::NotFound(format!(
                "The task referenced by {task_ref} does not exist in the workflow definition {}",
                wf.workflow_name
            ))));
        };
        if wf.tasks.iter().any(|t| t.reference_task_name == task_ref) {
            return Ok(Err(Refusal::Conflict(format!(
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
            let deadline = wf.start_time + u64::try_from(def.timeout_seconds).unwrap_or(0) * 1000;
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
            let Some(def) = self.task_def(&task.task_def_name)?.or_else(|| task.workflow_task.embedded_task_def())
            else {
                continue;
            };
            let secs = |s: i64| u64::try_from(s).unwrap_or(0) * 1000;
            let mut timed_out = None;
            let policy = serde_json::to_value(def.timeout_policy)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            if task.status == TaskStatus::Scheduled && task.start_time == 0 {
                if let Some(poll) = def.poll_timeout_seconds.filter(|s| *s > 0) {
                    let since = task.scheduled_time.max(task.visible_from);
                    if now >= since + secs(poll) {
                        timed_out = Some(format!(
                            "Task poll timed out after {} seconds. Poll timeout configured as {poll} seconds. Timeout policy configured to {policy}",
                            (now - since) / 1000
                        ));
                    }
                }
            }
            if task.status == TaskStatus::InProgress && task.response_timeout_seconds > 0 {
                let limit_ms = (task.response_timeout_seconds + task.callback_after_seconds) * 1000;
                if now >= task.update_time + limit_ms {
                    timed_out = Some(format!(
                        "responseTimeout: {} exceeded for the taskId: {} with Task Definition: {}",
                        task.response_timeout_seconds, task.task_id, task.task_def_name
                    ));
                }
            }
            if task.start_time > 0 && def.timeout_seconds > 0 && now >= task.start_time + secs(def.timeout_seconds) {
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
