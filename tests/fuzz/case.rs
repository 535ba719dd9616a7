//! A fuzz case: what the generator makes, the driver plays, and a finding records.
//!
//! A case is a list of steps, each a concrete command or an action that picks its target (a workflow, a task)
//! by index among what exists when the step runs, the way a worker or an operator only ever acts on what it can
//! see. Cases are plain data, serialised as JSON: the parent sends them to the child process that plays them,
//! prints and writes a failing one under `target/fuzz-findings/`, and `tests/fuzz_findings.rs` replays it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use baton::engine::evaluation::EvalOutcome;
use baton::engine::model::TaskStatus;
use baton::engine::Command;

/// One case: steps played in order from an empty state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    /// The steps.
    pub steps: Vec<Step>,
    /// Outcomes the leader's evaluator commits instead of running the code: the n-th evaluation of the case takes
    /// `forged_outcomes[n]` when it is `Some`, and runs in the sandbox otherwise. They stand for what the sandbox
    /// could in principle answer (a list of thousands of tasks, a value nested 120 deep) without the code that
    /// would take long to build it, and for a leader whose evaluator misbehaves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forged_outcomes: Vec<Option<EvalOutcome>>,
}

/// What one step does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Step {
    /// A client's command: proposed only if the gateway would let it through (`Command::validate`, then
    /// `Command::validate_code`, as `api::gateway::Gateway::write` does).
    Client(Command),
    /// A command written to the log as it is, unchecked: what an older gateway, a leader's own machinery or a
    /// bug upstream could put there. Apply must be total for it too.
    Raw(Command),
    /// Client commands proposed as one log entry (the group commit's `Command::Batch`), each checked as
    /// [`Step::Client`] is; the refused ones are left out.
    Batch(Vec<Command>),
    /// A worker's, operator's or leader's action on what exists when the step runs.
    Act(Act),
    /// The leader's clock moves by this many milliseconds (negative: a new leader whose clock is behind); the
    /// timers that are then due fire.
    Advance(i64),
}

/// An action whose target is picked when it runs: `workflow` indexes the workflows in id order, `task` the
/// candidates the action has in that workflow (modulo their number, so every index picks something).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Act {
    /// The dispatcher leases up to `count` ready tasks of one queue (picked by index) to a worker.
    Poll {
        /// Which queue, among those with ready tasks.
        queue: usize,
        /// Most tasks handed out.
        count: usize,
    },
    /// A worker reports on one of the open worker tasks (scheduled or in progress), with the task's current
    /// lease when it has one and `with_lease` is set.
    Report {
        /// The workflow.
        workflow: usize,
        /// Which open worker task.
        task: usize,
        /// The status reported: IN_PROGRESS, COMPLETED, FAILED or FAILED_WITH_TERMINAL_ERROR (others are refused).
        status: TaskStatus,
        /// The output.
        output: Map<String, Value>,
        /// For IN_PROGRESS: poll again after this many seconds.
        callback_after_seconds: u64,
        /// Send the lease the task holds (what gRPC workers do).
        with_lease: bool,
    },
    /// A late or repeated report for any task, finished or not, with a lease number that may be stale.
    Redeliver {
        /// The workflow.
        workflow: usize,
        /// Which task, among all of the workflow's.
        task: usize,
        /// COMPLETED when true, FAILED otherwise.
        completed: bool,
        /// The lease number sent (none: a REST update).
        lease_seq: Option<u64>,
    },
    /// A worker takes a task without a lease (Conductor's REST `ack`).
    StartTask {
        /// The workflow.
        workflow: usize,
        /// Which task, among all of the workflow's.
        task: usize,
    },
    /// Complete or fail the pending task with a reference name (WAIT, HUMAN), by its name.
    Signal {
        /// The workflow.
        workflow: usize,
        /// Which task's reference name, among all of the workflow's tasks.
        task: usize,
        /// The status sent.
        status: TaskStatus,
        /// The output.
        output: Map<String, Value>,
    },
    /// A lease holder's heartbeat, with the task's current lease number plus `offset` (0: the right one).
    ExtendLease {
        /// The workflow.
        workflow: usize,
        /// Which task, among all of the workflow's.
        task: usize,
        /// Added to the current lease number.
        offset: u64,
    },
    /// A line of a task's log.
    AppendLog {
        /// The workflow.
        workflow: usize,
        /// Which task, among all of the workflow's.
        task: usize,
        /// The line.
        line: String,
    },
    /// An operator's command on a workflow.
    Operate {
        /// The workflow.
        workflow: usize,
        /// What the operator does.
        operation: Operation,
    },
    /// An evaluation outcome for a task and round it may no longer wait for (a deposed leader's, or a replayed
    /// one).
    LateEvaluation {
        /// The workflow.
        workflow: usize,
        /// Which task, among all of the workflow's.
        task: usize,
        /// The round claimed.
        round: u32,
        /// The outcome.
        outcome: EvalOutcome,
    },
}

/// An operator's command on one workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Operation {
    /// Terminate it.
    Terminate {
        /// Why.
        reason: String,
    },
    /// Pause it.
    Pause,
    /// Resume it.
    Resume,
    /// Retry it from its failed tasks.
    Retry,
    /// Restart it from the beginning.
    Restart {
        /// With the latest registered definition.
        use_latest_definition: bool,
    },
    /// Rerun it from one of its tasks (none: from the beginning).
    Rerun {
        /// Which task, among all of the workflow's.
        task: Option<usize>,
        /// New input for that task.
        task_input: Option<Map<String, Value>>,
        /// New input for the workflow.
        workflow_input: Option<Map<String, Value>>,
    },
    /// Skip a step of its definition, picked among its reference names.
    Skip {
        /// Which reference name.
        reference: usize,
        /// The output recorded.
        output: Map<String, Value>,
    },
    /// A timer tick for it, whether due or not.
    Tick,
}
