//! Workflow executions and their tasks, in Conductor's JSON shape (`Workflow`, `Task`), with the statuses and the
//! few internal fields Baton needs to decide what happens next and when.
//!
//! Owns: the data of a running workflow. Must not touch: storage, clocks (times are stamped from the command), or
//! the scheduling rules (those live in `decide`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::definitions::{WorkflowDef, WorkflowTask};

/// A workflow execution's status (Conductor's `Workflow.WorkflowStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkflowStatus {
    /// Tasks are being scheduled and run.
    Running,
    /// Every task finished successfully.
    Completed,
    /// A task failed beyond its retries, or a TERMINATE task said so.
    Failed,
    /// The workflow's timeoutSeconds passed with policy TIME_OUT_WF.
    TimedOut,
    /// Terminated by an operator or a TERMINATE task.
    Terminated,
    /// No new task is scheduled until resumed.
    Paused,
}

impl WorkflowStatus {
    /// Every status.
    pub const ALL: [WorkflowStatus; 6] = [
        WorkflowStatus::Running,
        WorkflowStatus::Completed,
        WorkflowStatus::Failed,
        WorkflowStatus::TimedOut,
        WorkflowStatus::Terminated,
        WorkflowStatus::Paused,
    ];

    /// COMPLETED, FAILED, TIMED_OUT or TERMINATED.
    pub fn is_terminal(self) -> bool {
        !matches!(self, WorkflowStatus::Running | WorkflowStatus::Paused)
    }

    /// Conductor's name for the status.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowStatus::Running => "RUNNING",
            WorkflowStatus::Completed => "COMPLETED",
            WorkflowStatus::Failed => "FAILED",
            WorkflowStatus::TimedOut => "TIMED_OUT",
            WorkflowStatus::Terminated => "TERMINATED",
            WorkflowStatus::Paused => "PAUSED",
        }
    }
}

/// A task execution's status (Conductor's `Task.Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    /// Waiting for a worker (or, for system tasks, for the engine).
    Scheduled,
    /// A worker (or the engine, for WAIT, JOIN, DO_WHILE, SUB_WORKFLOW ...) is on it.
    InProgress,
    /// Done.
    Completed,
    /// Done, but an optional task failed or a JOIN saw optional failures.
    CompletedWithErrors,
    /// Failed; may be retried.
    Failed,
    /// Failed; never retried.
    FailedWithTerminalError,
    /// A timeout fired.
    TimedOut,
    /// The workflow ended while the task was pending.
    Canceled,
    /// Skipped by an operator.
    Skipped,
}

impl TaskStatus {
    /// Everything but SCHEDULED and IN_PROGRESS.
    pub fn is_terminal(self) -> bool {
        !matches!(self, TaskStatus::Scheduled | TaskStatus::InProgress)
    }

    /// COMPLETED, COMPLETED_WITH_ERRORS or SKIPPED: the workflow may carry on after it.
    pub fn is_successful(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::CompletedWithErrors | TaskStatus::Skipped)
    }

    /// Conductor's name for the status.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Scheduled => "SCHEDULED",
            TaskStatus::InProgress => "IN_PROGRESS",
            TaskStatus::Completed => "COMPLETED",
            TaskStatus::CompletedWithErrors => "COMPLETED_WITH_ERRORS",
            TaskStatus::Failed => "FAILED",
            TaskStatus::FailedWithTerminalError => "FAILED_WITH_TERMINAL_ERROR",
            TaskStatus::TimedOut => "TIMED_OUT",
            TaskStatus::Canceled => "CANCELED",
            TaskStatus::Skipped => "SKIPPED",
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One execution of one step (Conductor's `Task`). Times are ms since the Unix epoch, from the leader's clock as
/// carried by the command that changed the task; 0 means "not yet".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// Unique id, derived deterministically from the workflow id and `seq`.
    pub task_id: String,
    /// For SIMPLE tasks the task definition's name (what workers poll); otherwise the system type (SWITCH, ...).
    pub task_type: String,
    /// Current status.
    pub status: TaskStatus,
    /// The step's reference name; inside a DO_WHILE suffixed `__N` for iteration N.
    pub reference_task_name: String,
    /// The task definition's name.
    pub task_def_name: String,
    /// 0 for the first attempt, +1 per retry.
    pub retry_count: u32,
    /// Position in the workflow's task list, from 1.
    pub seq: u32,
    /// The resolved input.
    pub input_data: Map<String, Value>,
    /// The output reported by the worker or computed by the engine.
    pub output_data: Map<String, Value>,
    /// The owning workflow.
    pub workflow_instance_id: String,
    /// The owning workflow's name.
    pub workflow_type: String,
    /// When the task was scheduled.
    pub scheduled_time: u64,
    /// When a worker (or the engine) started it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_time: u64,
    /// When it reached a terminal status.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub end_time: u64,
    /// Last change.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub update_time: u64,
    /// Not visible to workers before this time (retry delay, startDelay, callbackAfterSeconds).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub visible_from: u64,
    /// Seconds a worker asked to be called back after (IN_PROGRESS updates) or the retry delay.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub callback_after_seconds: u64,
    /// The task this one retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_task_id: Option<String>,
    /// A retry of this task was scheduled.
    #[serde(default)]
    pub retried: bool,
    /// The engine has acted on this task's terminal status (scheduled what follows, or failed the workflow).
    #[serde(default)]
    pub executed: bool,
    /// Times a worker received it.
    #[serde(default)]
    pub poll_count: u32,
    /// The worker holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// The poll that took the current lease: a worker whose poll answer was lost repeats the poll under this id and
    /// gets the same task and lease back instead of waiting out the response timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_id: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_for_incompletion: Option<String>,
    /// From the task definition (0: no response timeout).
    #[serde(default)]
    pub response_timeout_seconds: u64,
    /// DO_WHILE iteration this task belongs to (0 outside loops).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub iteration: u32,
    /// For SUB_WORKFLOW and START_WORKFLOW: the started workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_workflow_id: Option<String>,
    /// The step's definition (for dynamic and forked tasks, the generated one). Shared, never changed in place:
    /// copying a workflow (every command on it does) then copies no step definitions.
    pub workflow_task: Arc<WorkflowTask>,
    /// Leases granted for this attempt so far; the current lease's number (0: never leased).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease_seq: u64,
    /// The lease whose holder finished this attempt (a repeat of that update is acknowledged, not applied again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_by_lease: Option<u64>,
    /// Lines the worker logged for this attempt (at most [`MAX_TASK_LOGS`], the oldest dropped first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<TaskLog>,
    /// The evaluation round this task waits for (its code runs on the leader, outside apply: see
    /// [`evaluation`](super::evaluation)); 0 when it waits for none. 1 for INLINE, JSON_JQ_TRANSFORM, SWITCH and
    /// DECISION; the iteration just finished for a DO_WHILE's condition.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub awaiting_evaluation: u32,
}

impl Task {
    /// A worker took this attempt at `now_ms`: IN_PROGRESS, visible to no one else, started (once), polled once more.
    pub fn mark_taken(&mut self, now_ms: u64, worker_id: &str) {
        self.status = TaskStatus::InProgress;
        if self.start_time == 0 {
            self.start_time = now_ms;
        }
        self.update_time = now_ms;
        self.poll_count += 1;
        self.visible_from = 0;
        self.worker_id = Some(worker_id.to_string());
    }

    /// Turns this (copy of a) task into a fresh SCHEDULED attempt at `now_ms`: no output, reason, worker, times,
    /// polls, finishing lease or log; the caller sets what distinguishes the attempt (retry count, id, input, visibility).
    pub fn reset_for_new_attempt(&mut self, now_ms: u64) {
        self.status = TaskStatus::Scheduled;
        self.output_data = Map::new();
        self.reason_for_incompletion = None;
        self.worker_id = None;
        self.poll_id = None;
        self.start_time = 0;
        self.end_time = 0;
        self.scheduled_time = now_ms;
        self.update_time = now_ms;
        self.visible_from = 0;
        self.callback_after_seconds = 0;
        self.poll_count = 0;
        self.executed = false;
        self.retried = false;
        // lease_seq stays: it only ever grows for a task id, so a lease handed out before a rerun (which reuses
        // the id) can never match a lease handed out after it.
        self.finished_by_lease = None;
        self.logs.clear();
        self.awaiting_evaluation = 0;
    }
}

/// Deepest nesting of arrays and objects a value the engine stores may have (a workflow's input, variables and
/// output, a task's input and output). Values that arrive over the API or from workers are refused beyond it; a
/// step whose resolved input (or a workflow whose output) would nest deeper fails, naming the limit. Without it the
/// engine could compose a value (a SET_VARIABLE in a loop wrapping the variable it read) that the state machine
/// encodes but cannot decode again: the workflow would be written and then unreadable on every replica that has
/// to read it back. serde_json refuses JSON nested 128 deep, so this also keeps every stored value readable as
/// JSON with a few levels of document around it.
pub const MAX_VALUE_DEPTH: usize = 100;

/// Whether `value` nests arrays and objects more than `limit` levels deep (a scalar has 0 levels, `{}` one).
/// Stops descending at the limit, so its recursion is bounded whatever the value.
pub fn nests_deeper_than(value: &Value, limit: usize) -> bool {
    match value {
        Value::Array(items) => limit == 0 || items.iter().any(|v| nests_deeper_than(v, limit - 1)),
        Value::Object(map) => map_nests_deeper_than(map, limit),
        _ => false,
    }
}

/// [`nests_deeper_than`] for an object held as its map.
pub fn map_nests_deeper_than(map: &Map<String, Value>, limit: usize) -> bool {
    limit == 0 || map.values().any(|v| nests_deeper_than(v, limit - 1))
}

/// Why a value named `what` is not kept, when it nests deeper than [`MAX_VALUE_DEPTH`].
pub fn too_deep(what: &str, map: &Map<String, Value>) -> Option<String> {
    map_nests_deeper_than(map, MAX_VALUE_DEPTH)
        .then(|| format!("{what} nests arrays and objects more than {MAX_VALUE_DEPTH} levels deep"))
}

/// Most log lines kept per task attempt.
pub const MAX_TASK_LOGS: usize = 100;
/// Longest log line kept, bytes (longer lines are cut).
pub const MAX_TASK_LOG_BYTES: usize = 4096;

/// One line of a task's execution log (Conductor's `TaskExecLog`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskLog {
    /// The text.
    pub log: String,
    /// When it was appended, ms since the Unix epoch (the leader's clock).
    pub created_time: u64,
}

/// Per task type, what dispatch limits need: attempts in progress (concurrentExecLimit) and dispatches in the
/// current rate-limit window (rateLimitPerFrequency per rateLimitFrequencyInSeconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeStats {
    /// Worker tasks of this type that are IN_PROGRESS.
    pub in_progress: u64,
    /// Start of the current rate-limit window, ms.
    pub window_start_ms: u64,
    /// Dispatches in the current window.
    pub dispatched_in_window: u64,
}

/// Proof that a worker holds a task: the attempt's id and the lease number it was handed. A completion carrying
/// an older lease number (the task was handed to someone else since, or timed out and was retried under a new id)
/// is refused, so each attempt's result is applied at most once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRef {
    /// Which lease of the attempt.
    pub lease_seq: u64,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// A workflow execution (Conductor's `Workflow`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workflow {
    /// Unique id (a UUID chosen by the leader, or derived from the parent for sub-workflows).
    pub workflow_id: String,
    /// The definition's name.
    pub workflow_name: String,
    /// The definition's version.
    pub workflow_version: u32,
    /// Current status.
    pub status: WorkflowStatus,
    /// The input, with the definition's inputTemplate defaults applied.
    pub input: Map<String, Value>,
    /// The output once completed (or as far as computed).
    pub output: Map<String, Value>,
    /// Workflow variables (SET_VARIABLE).
    #[serde(default)]
    pub variables: Map<String, Value>,
    /// Caller's correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Why it did not complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_for_incompletion: Option<String>,
    /// Scheduling priority 0-99.
    #[serde(default)]
    pub priority: u32,
    /// Task type -> domain.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub task_to_domain: BTreeMap<String, String>,
    /// Parent, for sub-workflows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_workflow_id: Option<String>,
    /// The parent's SUB_WORKFLOW task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_workflow_task_id: Option<String>,
    /// References of the tasks that failed the workflow.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub failed_reference_task_names: BTreeSet<String>,
    /// When created.
    pub create_time: u64,
    /// When started (equals createTime).
    pub start_time: u64,
    /// Last change.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub update_time: u64,
    /// When it reached a terminal status.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub end_time: u64,
    /// The definition it runs: a copy, so later changes to the registered definition do not affect it. Shared,
    /// replaced whole (restart with the latest definition), never changed in place.
    pub workflow_definition: Arc<WorkflowDef>,
    /// Every task execution, in `seq` order.
    pub tasks: Vec<Task>,
    /// The next task's `seq`.
    #[serde(default)]
    pub next_seq: u32,
    /// The failure workflow started when this one failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_workflow_id: Option<String>,
    /// When the leader must next apply a `Tick` (a timeout, a WAIT's end), ms since the Unix epoch; 0 when none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub next_tick_ms: u64,
    /// How many starts led to this workflow: 0 for one started by a client, its starter's depth + 1 for a
    /// sub-workflow, a START_WORKFLOW child or a failure workflow. Bounded by the `maxStartDepth` limit.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub start_depth: u32,
    /// The decider stopped at its per-command step limit with work left: the next `Tick` (due at once) goes on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub decision_pending: bool,
}

impl Workflow {
    /// The task with this id.
    pub fn task(&self, task_id: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.task_id == task_id)
    }

    /// The index of the task with this id.
    pub fn task_index(&self, task_id: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.task_id == task_id)
    }

    /// The latest execution (highest seq) of a reference name.
    pub fn latest_by_ref(&self, reference: &str) -> Option<&Task> {
        self.tasks.iter().rev().find(|t| t.reference_task_name == reference)
    }

    /// Tasks that are SCHEDULED or IN_PROGRESS.
    pub fn active_tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.iter().filter(|t| !t.status.is_terminal())
    }
}
