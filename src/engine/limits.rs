//! The engine's limits: how much one command may build, so that applying any command takes bounded time and
//! memory on every replica ("apply is total", docs/adr/0010-total-apply.md).
//!
//! Owns: the names, defaults and meaning of each bound. A breach is never an error of the node: it becomes a
//! deterministic outcome, recorded alike by every replica: the task or workflow that would pass the bound fails
//! with a reason that names the limit and its value (see [`Limits::breach`]), or the command is refused.
//! Must not touch: anything but plain data. The values every replica applies with are part of the replicated
//! state; a node's own configuration never decides them at apply time.

use serde::{Deserialize, Serialize};

use super::definitions::FieldError;

/// Every bound the engine enforces while applying a command. Serialised with Conductor-style camelCase names, which
/// are also the names reasons quote (`maxStartDepth`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Limits {
    /// Longest chain of starts: a sub-workflow, START_WORKFLOW child or failure workflow of a workflow at this
    /// depth is not started (a client's start is depth 0). The task that would start it fails.
    pub max_start_depth: u32,
    /// Most workflows one command may start, client start included (a FORK of START_WORKFLOWs of itself grows
    /// exponentially with the depth). The task that would start one more fails.
    pub max_starts_per_command: u32,
    /// Most task executions one workflow may hold, retries and loop iterations included. The workflow fails when a
    /// task would pass it.
    pub max_tasks_per_workflow: u32,
    /// Most steps the decider takes in one command, for all the workflows the command touches together; each task
    /// created counts as a step too (a FORK of 500 lanes is 501). Reaching it is not an error: the decisions left
    /// go on in a follow-up `Tick`, due at once, so that no command does unbounded work and no legitimate workflow
    /// fails for being long or wide. The commands batched into one log entry share it: a command of the batch
    /// takes no step once the ones before it have taken them all. (Called `maxStepsPerDecision`, per workflow, before 0.x; that name is read
    /// as this one.)
    #[serde(alias = "maxStepsPerDecision")]
    pub max_steps_per_command: u32,
    /// Most tasks one FORK_JOIN_DYNAMIC may fork. The fork task fails terminally beyond it.
    pub max_dynamic_fork_tasks: u32,
    /// Most iterations of one DO_WHILE. The loop task fails when its condition asks for one more.
    pub max_do_while_iterations: u32,
    /// Most bytes (compact JSON) of a task's input, as its parameters resolve. The task fails terminally, with its
    /// input left empty.
    pub max_task_input_bytes: u32,
    /// Most bytes of a task's output, whoever writes it (a worker, a script, a JOIN, a loop, a sub-workflow). The
    /// task fails terminally, with its output left empty.
    pub max_task_output_bytes: u32,
    /// Most bytes of a workflow's input. A client's start is refused; a child's start fails the task starting it.
    pub max_workflow_input_bytes: u32,
    /// Most bytes of a workflow's output. The workflow fails, with its output left empty.
    pub max_workflow_output_bytes: u32,
    /// Most bytes of a workflow's variables. The SET_VARIABLE task that would pass it fails terminally and the
    /// variables stay as they were.
    pub max_workflow_variables_bytes: u32,
    /// Most bytes of a workflow's whole record (its tasks with their inputs and outputs, its input, output and
    /// variables). The workflow fails when a command leaves it larger.
    pub max_workflow_record_bytes: u32,
    /// Most bytes of values one command builds, for all the workflows it touches together (task inputs and
    /// outputs, workflow inputs and outputs, what templates copy). Past half of it, the command takes no new
    /// decision step: the decisions left go on in a follow-up `Tick` (that half is shared by the commands batched
    /// into one log entry, as [`Limits::max_steps_per_command`] is). A value that would pass it fails its task or
    /// workflow, naming it (a single step, a FORK of many lanes copying a large input, can get there).
    pub max_bytes_per_command: u32,
}

const KIB: u32 = 1024;
const MIB: u32 = 1024 * KIB;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_start_depth: 32,
            max_starts_per_command: 256,
            max_tasks_per_workflow: 10_000,
            max_steps_per_command: 10_000,
            max_dynamic_fork_tasks: 1000,
            max_do_while_iterations: 1000,
            // Conductor's thresholds past which it moves a payload out of its database
            // (conductor.app.taskInputPayloadSizeThreshold and the like): 3 MiB per task, 5 MiB per workflow,
            // 256 KiB of variables (conductor.app.maxWorkflowVariablesPayloadSizeThreshold).
            max_task_input_bytes: 3 * MIB,
            max_task_output_bytes: 3 * MIB,
            max_workflow_input_bytes: 5 * MIB,
            max_workflow_output_bytes: 5 * MIB,
            max_workflow_variables_bytes: 256 * KIB,
            max_workflow_record_bytes: 32 * MIB,
            // About half a second of one core for the worst shapes of values (millions of small nodes, each built,
            // measured, copied and dropped), with room for legitimate large steps.
            max_bytes_per_command: 16 * MIB,
        }
    }
}

/// The largest value each limit may be set to: beyond these, one command could again take unbounded time or memory
/// (the start depth is also the depth of the recursion that ends a chain of sub-workflows).
pub const CEILINGS: Limits = Limits {
    max_start_depth: 256,
    max_starts_per_command: 10_000,
    max_tasks_per_workflow: 1_000_000,
    max_steps_per_command: 100_000,
    max_dynamic_fork_tasks: 100_000,
    max_do_while_iterations: 1_000_000,
    max_task_input_bytes: 64 * MIB,
    max_task_output_bytes: 64 * MIB,
    max_workflow_input_bytes: 64 * MIB,
    max_workflow_output_bytes: 64 * MIB,
    max_workflow_variables_bytes: 64 * MIB,
    max_workflow_record_bytes: 256 * MIB,
    max_bytes_per_command: 256 * MIB,
};

impl Limits {
    /// Every limit out of its range (1 to its [`CEILINGS`] value), naming the field.
    pub fn problems(&self) -> Vec<FieldError> {
        let fields = [
            ("maxStartDepth", self.max_start_depth, CEILINGS.max_start_depth),
            ("maxStartsPerCommand", self.max_starts_per_command, CEILINGS.max_starts_per_command),
            ("maxTasksPerWorkflow", self.max_tasks_per_workflow, CEILINGS.max_tasks_per_workflow),
            ("maxStepsPerCommand", self.max_steps_per_command, CEILINGS.max_steps_per_command),
            ("maxDynamicForkTasks", self.max_dynamic_fork_tasks, CEILINGS.max_dynamic_fork_tasks),
            ("maxDoWhileIterations", self.max_do_while_iterations, CEILINGS.max_do_while_iterations),
            ("maxTaskInputBytes", self.max_task_input_bytes, CEILINGS.max_task_input_bytes),
            ("maxTaskOutputBytes", self.max_task_output_bytes, CEILINGS.max_task_output_bytes),
            ("maxWorkflowInputBytes", self.max_workflow_input_bytes, CEILINGS.max_workflow_input_bytes),
            ("maxWorkflowOutputBytes", self.max_workflow_output_bytes, CEILINGS.max_workflow_output_bytes),
            ("maxWorkflowVariablesBytes", self.max_workflow_variables_bytes, CEILINGS.max_workflow_variables_bytes),
            ("maxWorkflowRecordBytes", self.max_workflow_record_bytes, CEILINGS.max_workflow_record_bytes),
            ("maxBytesPerCommand", self.max_bytes_per_command, CEILINGS.max_bytes_per_command),
        ];
        fields
            .into_iter()
            .filter(|(_, value, ceiling)| *value < 1 || value > ceiling)
            .map(|(name, value, ceiling)| FieldError {
                path: name.to_string(),
                message: format!("must be between 1 and {ceiling} (got {value})"),
            })
            .collect()
    }

    /// The reason given when `what` would pass the limit `name` of value `value`: names both, so an operator knows
    /// which setting to look at.
    pub fn breach(what: impl std::fmt::Display, name: &str, value: impl std::fmt::Display) -> String {
        format!("{what}: limit {name} = {value} reached")
    }

    /// A byte limit as a `usize` cap.
    pub fn bytes(limit: u32) -> usize {
        usize::try_from(limit).unwrap_or(usize::MAX)
    }
}
