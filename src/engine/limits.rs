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
    /// Most steps the decider takes for one workflow in one command. A longer run of system tasks is not an error:
    /// the decision goes on in a follow-up `Tick`, due at once.
    pub max_steps_per_decision: u32,
    /// Most tasks one FORK_JOIN_DYNAMIC may fork. The fork task fails terminally beyond it.
    pub max_dynamic_fork_tasks: u32,
    /// Most iterations of one DO_WHILE. The loop task fails when its condition asks for one more.
    pub max_do_while_iterations: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_start_depth: 32,
            max_starts_per_command: 256,
            max_tasks_per_workflow: 10_000,
            max_steps_per_decision: 1000,
            max_dynamic_fork_tasks: 1000,
            max_do_while_iterations: 1000,
        }
    }
}

/// The largest value each limit may be set to: beyond these, one command could again take unbounded time or memory
/// (the start depth is also the depth of the recursion that ends a chain of sub-workflows).
pub const CEILINGS: Limits = Limits {
    max_start_depth: 256,
    max_starts_per_command: 10_000,
    max_tasks_per_workflow: 1_000_000,
    max_steps_per_decision: 100_000,
    max_dynamic_fork_tasks: 100_000,
    max_do_while_iterations: 1_000_000,
};

impl Limits {
    /// Every limit out of its range (1 to its [`CEILINGS`] value), naming the field.
    pub fn problems(&self) -> Vec<FieldError> {
        let fields = [
            ("maxStartDepth", self.max_start_depth, CEILINGS.max_start_depth),
            ("maxStartsPerCommand", self.max_starts_per_command, CEILINGS.max_starts_per_command),
            ("maxTasksPerWorkflow", self.max_tasks_per_workflow, CEILINGS.max_tasks_per_workflow),
            ("maxStepsPerDecision", self.max_steps_per_decision, CEILINGS.max_steps_per_decision),
            ("maxDynamicForkTasks", self.max_dynamic_fork_tasks, CEILINGS.max_dynamic_fork_tasks),
            ("maxDoWhileIterations", self.max_do_while_iterations, CEILINGS.max_do_while_iterations),
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
}
