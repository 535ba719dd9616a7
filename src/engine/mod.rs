//! The engine: Baton's business semantics as a pure, deterministic function,
//! `apply(state, proposal) -> (mutations, response)`.
//!
//! Every replica applies the same log with this function and must reach byte-identical state, so nothing in here
//! may read a clock, draw randomness, do I/O, or depend on hash-map iteration order. Time and fresh ids arrive
//! inside the [`Proposal`], stamped by the leader. The engine reads the state through [`StateView`] and describes
//! changes as [`Mutation`]s; the storage layer turns those into keys and writes them in one batch with the applied
//! log index.
//!
//! A refusal (a definition that already exists, an update of one that does not) is an ordinary, deterministic
//! [`CommandResponse::Rejected`], recorded alike by every replica, never an `Err`. `Err` means the state could
//! not be read, which is fatal for the node.

pub mod decide;
pub mod definitions;
pub mod do_while;
pub mod evaluation;
pub mod exec;
pub mod expr;
pub mod jq;
pub mod lifecycle;
pub mod limits;
pub mod memory;
pub mod model;
pub mod ops;
pub mod pending;
pub mod references;
pub mod roots;
pub mod schedule;
pub mod script;
pub mod size;
pub mod system_tasks;
#[cfg(test)]
mod tests;
pub mod time;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use definitions::{validate_task_def, validate_workflow_def, FieldError, TaskDef, WorkflowDef};
use exec::{Exec, Spent};
use model::LeaseRef;
use model::Workflow;
use ops::{LeaseGrant, StartWorkflow, TaskRef, TaskUpdate};

/// A state change a client asked for. One variant per operation; each is applied atomically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Create or replace task definitions (Conductor `POST /api/metadata/taskdefs`).
    RegisterTaskDefs {
        /// The definitions, applied in order.
        defs: Vec<TaskDef>,
    },
    /// Replace one existing task definition (Conductor `PUT /api/metadata/taskdefs`).
    UpdateTaskDef {
        /// The new definition; its name must exist.
        def: TaskDef,
    },
    /// Create a workflow definition (Conductor `POST /api/metadata/workflow`).
    RegisterWorkflowDef {
        /// The definition.
        def: WorkflowDef,
        /// Replace an existing definition of the same name and version instead of refusing.
        overwrite: bool,
    },
    /// Create or replace workflow definitions (Conductor `PUT /api/metadata/workflow`).
    UpdateWorkflowDefs {
        /// The definitions, applied in order.
        defs: Vec<WorkflowDef>,
    },
    /// Start a workflow.
    StartWorkflow(StartWorkflow),
    /// A worker took a scheduled task (step 3 adds the lease).
    StartTask {
        /// The workflow.
        workflow_id: String,
        /// The task.
        task_id: String,
        /// The worker.
        worker_id: String,
    },
    /// A worker's or operator's update of a task.
    UpdateTask {
        /// The workflow.
        workflow_id: String,
        /// The task.
        task_id: String,
        /// The update.
        update: TaskUpdate,
    },
    /// Complete or fail the pending task with a reference name (WAIT, HUMAN).
    SignalTask {
        /// The workflow.
        workflow_id: String,
        /// The task's reference name.
        task_ref: String,
        /// The update.
        update: TaskUpdate,
    },
    /// Terminate a workflow.
    Terminate {
        /// The workflow.
        workflow_id: String,
        /// Why.
        reason: String,
    },
    /// Pause a workflow.
    Pause {
        /// The workflow.
        workflow_id: String,
    },
    /// Resume a paused workflow.
    Resume {
        /// The workflow.
        workflow_id: String,
    },
    /// Retry a failed workflow from its failed tasks.
    Retry {
        /// The workflow.
        workflow_id: String,
    },
    /// Restart a finished workflow from the beginning.
    Restart {
        /// The workflow.
        workflow_id: String,
        /// Use the latest registered definition instead of the one it ran.
        use_latest_definition: bool,
    },
    /// Rerun a finished workflow from one of its tasks.
    Rerun {
        /// The workflow.
        workflow_id: String,
        /// The task to run again.
        from_task_id: String,
        /// New input for that task.
        task_input: Option<Map<String, Value>>,
        /// New input for the workflow.
        workflow_input: Option<Map<String, Value>>,
    },
    /// Skip a pending task.
    SkipTask {
        /// The workflow.
        workflow_id: String,
        /// The task's reference name.
        task_ref: String,
        /// The output to record.
        output: Map<String, Value>,
    },
    /// Apply the timeouts that are due (proposed by the leader's timers).
    Tick {
        /// The workflow.
        workflow_id: String,
    },
    /// Hand tasks to a worker under new leases (proposed by the leader's dispatcher).
    LeaseTasks {
        /// The worker.
        worker_id: String,
        /// The poll asking (recorded on each task leased, see `Task::poll_id`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        poll_id: Option<String>,
        /// The tasks.
        tasks: Vec<TaskRef>,
    },
    /// Append a line to a task's log.
    AppendTaskLog {
        /// The workflow.
        workflow_id: String,
        /// The task.
        task_id: String,
        /// The line.
        log: String,
    },
    /// A lease holder's heartbeat.
    ExtendLease {
        /// The workflow.
        workflow_id: String,
        /// The task.
        task_id: String,
        /// The lease held.
        lease: LeaseRef,
    },
    /// Several commands proposed as one log entry (group commit); each is applied in order and answered alone.
    Batch(Vec<Command>),
    // New variants go after this line: the log stores a variant by its position.
    /// Remove a task definition (Conductor `DELETE /api/metadata/taskdefs/{name}`). Workflows already running keep
    /// the copy they need: a worker task without a definition runs with Conductor's defaults.
    DeleteTaskDef {
        /// The definition's name.
        name: String,
    },
    /// Remove one version of a workflow definition (Conductor `DELETE /api/metadata/workflow/{name}/{version}`).
    /// Running workflows keep the definition they started with.
    DeleteWorkflowDef {
        /// The definition's name.
        name: String,
        /// The version.
        version: u32,
    },
    /// Write a value under a key of the bench table (`baton bench raft`): the write path's cost with the smallest
    /// apply, comparable with a key-value store's put. Workflows never read the table.
    BenchWrite {
        /// The key (at most [`MAX_BENCH_KEY_BYTES`] bytes).
        key: String,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Replace the engine's limits (a cluster setting: every replica applies with the same). Invalid values are
    /// refused, naming the field.
    SetLimits {
        /// The new limits, all of them.
        limits: limits::Limits,
    },
    /// The outcome of a task's code, evaluated by the leader outside apply (proposed by the leader's evaluator;
    /// see [`evaluation`]). Applied only while the task still waits for that round.
    Evaluated {
        /// The workflow.
        workflow_id: String,
        /// The task.
        task_id: String,
        /// The evaluation round the task waited for ([`model::Task::awaiting_evaluation`]).
        round: u32,
        /// What the code gave.
        outcome: evaluation::EvalOutcome,
    },
}

/// Longest key a [`Command::BenchWrite`] may name, bytes.
pub const MAX_BENCH_KEY_BYTES: usize = 256;

impl Command {
    /// A short, stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::RegisterTaskDefs { .. } => "register_task_defs",
            Command::UpdateTaskDef { .. } => "update_task_def",
            Command::RegisterWorkflowDef { .. } => "register_workflow_def",
            Command::UpdateWorkflowDefs { .. } => "update_workflow_defs",
            Command::StartWorkflow(_) => "start_workflow",
            Command::StartTask { .. } => "start_task",
            Command::UpdateTask { .. } => "update_task",
            Command::SignalTask { .. } => "signal_task",
            Command::Terminate { .. } => "terminate",
            Command::Pause { .. } => "pause",
            Command::Resume { .. } => "resume",
            Command::Retry { .. } => "retry",
            Command::Restart { .. } => "restart",
            Command::Rerun { .. } => "rerun",
            Command::SkipTask { .. } => "skip_task",
            Command::Tick { .. } => "tick",
            Command::LeaseTasks { .. } => "lease_tasks",
            Command::ExtendLease { .. } => "extend_lease",
            Command::AppendTaskLog { .. } => "append_task_log",
            Command::Batch(_) => "batch",
            Command::DeleteTaskDef { .. } => "delete_task_def",
            Command::DeleteWorkflowDef { .. } => "delete_workflow_def",
            Command::BenchWrite { .. } => "bench_write",
            Command::Evaluated { .. } => "evaluated",
            Command::SetLimits { .. } => "set_limits",
        }
    }

    /// Every validation problem of the command's documents, checked before proposing so that bad input is refused
    /// without writing anything. The engine checks again when applying (a log written by an older version must
    /// not slip an invalid document into the state).
    pub fn validate(&self) -> Vec<FieldError> {
        fn indexed(defs: usize, i: usize, errs: Vec<FieldError>) -> Vec<FieldError> {
            if defs == 1 {
                return errs;
            }
            errs.into_iter().map(|e| FieldError { path: format!("[{i}].{}", e.path), message: e.message }).collect()
        }
        match self {
            Command::RegisterTaskDefs { defs } => {
                let mut errors: Vec<_> =
                    defs.iter().enumerate().flat_map(|(i, d)| indexed(defs.len(), i, validate_task_def(d))).collect();
                if defs.is_empty() {
                    errors.push(FieldError { path: String::new(), message: "no task definitions given".into() });
                }
                errors
            }
            Command::UpdateTaskDef { def } => validate_task_def(def),
            Command::RegisterWorkflowDef { def, .. } => validate_workflow_def(def),
            Command::UpdateWorkflowDefs { defs } => {
                let mut errors: Vec<_> = defs
                    .iter()
                    .enumerate()
                    .flat_map(|(i, d)| indexed(defs.len(), i, validate_workflow_def(d)))
                    .collect();
                if defs.is_empty() {
                    errors.push(FieldError { path: String::new(), message: "no workflow definitions given".into() });
                }
                errors
            }
            Command::StartWorkflow(req) => match &req.definition {
                Some(def) => validate_workflow_def(def)
                    .into_iter()
                    .map(|e| FieldError { path: format!("workflowDef.{}", e.path), message: e.message })
                    .collect(),
                None if req.name.is_empty() => {
                    vec![FieldError {
                        path: "name".into(),
                        message: "a workflow name or an inline workflowDef is required".into(),
                    }]
                }
                None => Vec::new(),
            },
            Command::SetLimits { limits } => limits.problems(),
            Command::BenchWrite { key, .. } if key.is_empty() || key.len() > MAX_BENCH_KEY_BYTES => {
                vec![FieldError {
                    path: "key".into(),
                    message: format!("a bench key is 1 to {MAX_BENCH_KEY_BYTES} bytes long, not {}", key.len()),
                }]
            }
            _ => Vec::new(),
        }
    }
}

impl Command {
    /// Every problem with the code the command's definitions carry (JavaScript that does not parse, jq that does
    /// not compile). Checked before proposing only, never in apply: see
    /// [`validate_workflow_code`](definitions::validate_workflow_code).
    pub fn validate_code(&self) -> Vec<FieldError> {
        let indexed = |i: usize, n: usize, errs: Vec<FieldError>| -> Vec<FieldError> {
            if n == 1 {
                return errs;
            }
            errs.into_iter().map(|e| FieldError { path: format!("[{i}].{}", e.path), message: e.message }).collect()
        };
        match self {
            Command::RegisterWorkflowDef { def, .. } => definitions::validate_workflow_code(def),
            Command::UpdateWorkflowDefs { defs } => defs
                .iter()
                .enumerate()
                .flat_map(|(i, d)| indexed(i, defs.len(), definitions::validate_workflow_code(d)))
                .collect(),
            Command::StartWorkflow(req) => match &req.definition {
                Some(def) => definitions::validate_workflow_code(def)
                    .into_iter()
                    .map(|e| FieldError { path: format!("workflowDef.{}", e.path), message: e.message })
                    .collect(),
                None => Vec::new(),
            },
            _ => Vec::new(),
        }
    }
}

/// What goes into the Raft log: a command plus everything non-deterministic about it, fixed by the leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// The leader's wall clock when it accepted the command, ms since the Unix epoch.
    pub at_ms: u64,
    /// The change.
    pub command: Command,
}

/// The outcome of applying one log entry, returned to the client that proposed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// Applied.
    Done,
    /// A workflow was started with this id.
    WorkflowStarted {
        /// The new workflow's id.
        workflow_id: String,
    },
    /// Leases granted.
    Leased {
        /// One per task handed out.
        granted: Vec<LeaseGrant>,
    },
    /// The answers of a batch, in order.
    Batch(Vec<CommandResponse>),
    /// Refused; nothing changed.
    Rejected(Rejection),
}

/// Why a command was refused. Deterministic: every replica records the same refusal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    /// The category, which decides the status code at the API.
    pub kind: RejectionKind,
    /// A sentence for people.
    pub message: String,
    /// Field-level problems, for invalid input.
    pub field_errors: Vec<FieldError>,
}

/// Categories of refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectionKind {
    /// The input breaks a rule.
    Invalid,
    /// The thing to change does not exist.
    NotFound,
    /// The thing to create exists already.
    AlreadyExists,
    /// The operation does not apply in the current state (e.g. terminating a finished workflow).
    Conflict,
    /// A worker's lease is no longer valid.
    StaleLease,
}

impl Rejection {
    /// A refusal of that kind, with no field errors.
    pub fn new(kind: RejectionKind, message: impl Into<String>) -> Self {
        Rejection { kind, message: message.into(), field_errors: Vec::new() }
    }

    /// The input breaks a rule that `message` names.
    pub fn invalid(message: impl Into<String>) -> Self {
        Rejection::new(RejectionKind::Invalid, message)
    }

    /// The thing to change (or read) does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Rejection::new(RejectionKind::NotFound, message)
    }

    /// The operation does not apply in the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Rejection::new(RejectionKind::Conflict, message)
    }

    /// A worker's lease is no longer valid.
    pub fn stale_lease(message: impl Into<String>) -> Self {
        Rejection::new(RejectionKind::StaleLease, message)
    }

    /// A definition with these problems, each naming its field.
    fn invalid_definition(field_errors: Vec<FieldError>) -> Self {
        Rejection { kind: RejectionKind::Invalid, message: "invalid workflow definition".into(), field_errors }
    }
}

/// A change to the state, in domain terms; storage maps it to keys.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// Write (create or replace) a task definition, keyed by name.
    PutTaskDef(TaskDef),
    /// Write (create or replace) a workflow definition, keyed by name and version.
    PutWorkflowDef(WorkflowDef),
    /// Write (create or replace) a workflow execution, keyed by id. Shared: the batch overlay, the state machine's
    /// hot workflows and the ready index take it as it is, without a copy.
    PutWorkflow(std::sync::Arc<Workflow>),
    /// Write a task type's dispatch counters.
    PutTypeStats {
        /// The task type.
        task_type: String,
        /// The counters.
        stats: model::TypeStats,
    },
    /// Remember which workflow holds a task (written once, when the task is created).
    PutTaskIndex {
        /// The task.
        task_id: String,
        /// Its workflow.
        workflow_id: String,
    },
    /// Remember which workflow a start with this idempotency key created.
    PutIdempotencyKey {
        /// The caller's key.
        key: String,
        /// The workflow it started.
        workflow_id: String,
    },
    /// Remove a task definition.
    DeleteTaskDef {
        /// Its name.
        name: String,
    },
    /// Remove one version of a workflow definition.
    DeleteWorkflowDef {
        /// Its name.
        name: String,
        /// The version.
        version: u32,
    },
    /// Write the engine's limits (a cluster setting).
    PutLimits(limits::Limits),
    /// Forget which workflow held a task: the task left its workflow (a DO_WHILE's `keepLastN`).
    DeleteTaskIndex {
        /// The task.
        task_id: String,
    },
    /// Write a value of the bench table.
    PutBenchValue {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
}

/// The state could not be read. Fatal for the node: applying must stop rather than diverge.
#[derive(Debug, thiserror::Error)]
#[error("state read failed: {0}")]
pub struct StateError(pub String);

/// Read access to the applied state, as the engine needs it.
pub trait StateView {
    /// The task definition of that name.
    fn task_def(&self, name: &str) -> Result<Option<TaskDef>, StateError>;
    /// The workflow definition of that name and version.
    fn workflow_def(&self, name: &str, version: u32) -> Result<Option<WorkflowDef>, StateError>;
    /// The highest version of the workflow definition of that name.
    fn latest_workflow_def(&self, name: &str) -> Result<Option<WorkflowDef>, StateError>;
    /// Every version of the workflow definition of that name, ascending.
    fn workflow_def_versions(&self, name: &str) -> Result<Vec<u32>, StateError>;
    /// The workflow execution with that id.
    fn workflow(&self, id: &str) -> Result<Option<Workflow>, StateError>;
    /// The workflow a start with this idempotency key created.
    fn idempotency_key(&self, key: &str) -> Result<Option<String>, StateError>;
    /// A task type's dispatch counters.
    fn type_stats(&self, task_type: &str) -> Result<Option<model::TypeStats>, StateError>;
    /// The engine's limits: the cluster setting, or the defaults when none was ever set.
    fn limits(&self) -> Result<limits::Limits, StateError>;
}

/// The result of applying one proposal.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// Changes to write, in order, atomically with the log index.
    pub mutations: Vec<Mutation>,
    /// What the proposer is told.
    pub response: CommandResponse,
    /// The status changes the mutations make, for metrics (not written anywhere).
    pub transitions: Transitions,
    /// What applying it spent of the budgets the commands of one log entry share.
    pub(crate) spent: Spent,
}

impl Applied {
    fn rejected(rejection: Rejection) -> Self {
        Applied {
            mutations: Vec::new(),
            response: CommandResponse::Rejected(rejection),
            transitions: Transitions::default(),
            spent: Spent::default(),
        }
    }
}

/// Status changes one applied entry made: what metrics count, derived from the mutations, never read back by the
/// engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transitions {
    /// Each task that reached a terminal status: its type and that status.
    pub tasks_ended: Vec<(String, model::TaskStatus)>,
    /// Each workflow whose status changed: from (None for a new workflow) and to.
    pub workflows: Vec<(Option<model::WorkflowStatus>, model::WorkflowStatus)>,
}

impl Transitions {
    fn extend(&mut self, other: Transitions) {
        self.tasks_ended.extend(other.tasks_ended);
        self.workflows.extend(other.workflows);
    }
}

/// Applies one proposal to the state. Pure: the same state and proposal give the same result on every replica.
pub fn apply(state: &impl StateView, proposal: &Proposal) -> Result<Applied, StateError> {
    if let Command::Batch(commands) = &proposal.command {
        return apply_batch(state, proposal.at_ms, commands);
    }
    apply_one(state, proposal, Spent::default())
}

/// Applies one command that is not a batch. `earlier` is what the commands before it in the same log entry spent
/// of the budgets they share.
fn apply_one(state: &impl StateView, proposal: &Proposal, earlier: Spent) -> Result<Applied, StateError> {
    if matches!(proposal.command, Command::Batch(_)) {
        return Ok(Applied::rejected(Rejection::invalid("a batch cannot contain a batch")));
    }
    let field_errors = proposal.command.validate();
    if !field_errors.is_empty() {
        return Ok(Applied::rejected(Rejection {
            kind: RejectionKind::Invalid,
            message: format!("{} is invalid", proposal.command.kind()),
            field_errors,
        }));
    }
    let at_ms = proposal.at_ms;
    let mut mutations = Vec::new();
    match &proposal.command {
        Command::RegisterTaskDefs { defs } => {
            for def in defs {
                let existing = state.task_def(&def.name)?;
                mutations.push(Mutation::PutTaskDef(stamp(def, existing.as_ref(), at_ms)));
            }
        }
        Command::UpdateTaskDef { def } => {
            let Some(existing) = state.task_def(&def.name)? else {
                return Ok(Applied::rejected(Rejection::not_found(format!("no task definition named '{}'", def.name))));
            };
            mutations.push(Mutation::PutTaskDef(stamp(def, Some(&existing), at_ms)));
        }
        Command::RegisterWorkflowDef { def, overwrite } => {
            let problems = references::check(state, def, &[])?;
            if !problems.is_empty() {
                return Ok(Applied::rejected(Rejection::invalid_definition(problems)));
            }
            let existing = state.workflow_def(&def.name, workflow_version(def))?;
            if existing.is_some() && !overwrite {
                return Ok(Applied::rejected(Rejection::new(
                    RejectionKind::AlreadyExists,
                    format!("workflow definition '{}' version {} already exists", def.name, def.version),
                )));
            }
            mutations.push(Mutation::PutWorkflowDef(stamp(def, existing.as_ref(), at_ms)));
        }
        Command::UpdateWorkflowDefs { defs } => {
            let mut problems = Vec::new();
            for (i, def) in defs.iter().enumerate() {
                let prefix = if defs.len() > 1 { format!("[{i}].") } else { String::new() };
                for e in references::check(state, def, defs)? {
                    problems.push(FieldError { path: format!("{prefix}{}", e.path), message: e.message });
                }
            }
            if !problems.is_empty() {
                return Ok(Applied::rejected(Rejection::invalid_definition(problems)));
            }
            for def in defs {
                let existing = state.workflow_def(&def.name, workflow_version(def))?;
                mutations.push(Mutation::PutWorkflowDef(stamp(def, existing.as_ref(), at_ms)));
            }
        }
        Command::DeleteTaskDef { name } => {
            if state.task_def(name)?.is_none() {
                return Ok(Applied::rejected(Rejection::not_found(format!("no task definition named '{name}'"))));
            }
            mutations.push(Mutation::DeleteTaskDef { name: name.clone() });
        }
        Command::DeleteWorkflowDef { name, version } => {
            if state.workflow_def(name, *version)?.is_none() {
                return Ok(Applied::rejected(Rejection::not_found(format!(
                    "no workflow definition named '{name}' with version {version}"
                ))));
            }
            mutations.push(Mutation::DeleteWorkflowDef { name: name.clone(), version: *version });
        }
        Command::BenchWrite { key, value } => {
            mutations.push(Mutation::PutBenchValue { key: key.clone(), value: value.clone() });
        }
        Command::SetLimits { limits } => mutations.push(Mutation::PutLimits(limits.clone())),
        workflow_command => return apply_workflow_command(state, at_ms, workflow_command, earlier),
    }
    Ok(Applied {
        mutations,
        response: CommandResponse::Done,
        transitions: Transitions::default(),
        spent: Spent::default(),
    })
}

/// Applies a batch's commands in order, each seeing the changes of those before it.
fn apply_batch(state: &impl StateView, at_ms: u64, commands: &[Command]) -> Result<Applied, StateError> {
    let mut overlay = Overlay {
        base: state,
        task_defs: Default::default(),
        workflow_defs: Default::default(),
        workflows: Default::default(),
        idempotency_keys: Default::default(),
        type_stats: Default::default(),
        limits: None,
    };
    let mut mutations = Vec::new();
    let mut responses = Vec::with_capacity(commands.len());
    let mut transitions = Transitions::default();
    // The steps and bytes budgets hold for the whole entry: a batch of 128 commands does not get 128 of each.
    let mut spent = Spent::default();
    for command in commands {
        let applied = apply_one(&overlay, &Proposal { at_ms, command: command.clone() }, spent)?;
        spent = spent.plus(applied.spent);
        for m in &applied.mutations {
            overlay.record(m);
        }
        mutations.extend(applied.mutations);
        responses.push(applied.response);
        transitions.extend(applied.transitions);
    }
    Ok(Applied { mutations, response: CommandResponse::Batch(responses), transitions, spent })
}

/// The state as of before a batch, plus what the batch's earlier commands wrote.
struct Overlay<'s, S: StateView> {
    base: &'s S,
    /// Written (`Some`) or deleted (`None`) by the batch so far.
    task_defs: std::collections::BTreeMap<String, Option<TaskDef>>,
    /// Written (`Some`) or deleted (`None`) by the batch so far.
    workflow_defs: std::collections::BTreeMap<(String, u32), Option<WorkflowDef>>,
    workflows: std::collections::BTreeMap<String, std::sync::Arc<Workflow>>,
    idempotency_keys: std::collections::BTreeMap<String, String>,
    type_stats: std::collections::BTreeMap<String, model::TypeStats>,
    limits: Option<limits::Limits>,
}

impl<S: StateView> Overlay<'_, S> {
    fn record(&mut self, mutation: &Mutation) {
        match mutation {
            Mutation::PutTaskDef(d) => {
                self.task_defs.insert(d.name.clone(), Some(d.clone()));
            }
            Mutation::PutWorkflowDef(d) => {
                self.workflow_defs.insert((d.name.clone(), workflow_version(d)), Some(d.clone()));
            }
            Mutation::DeleteTaskDef { name } => {
                self.task_defs.insert(name.clone(), None);
            }
            Mutation::DeleteWorkflowDef { name, version } => {
                self.workflow_defs.insert((name.clone(), *version), None);
            }
            Mutation::PutWorkflow(w) => {
                self.workflows.insert(w.workflow_id.clone(), w.clone());
            }
            Mutation::PutIdempotencyKey { key, workflow_id } => {
                self.idempotency_keys.insert(key.clone(), workflow_id.clone());
            }
            Mutation::PutTypeStats { task_type, stats } => {
                self.type_stats.insert(task_type.clone(), *stats);
            }
            // The engine never reads the task index or the bench table.
            Mutation::PutLimits(limits) => self.limits = Some(limits.clone()),
            Mutation::PutTaskIndex { .. } | Mutation::DeleteTaskIndex { .. } | Mutation::PutBenchValue { .. } => {}
        }
    }
}

impl<S: StateView> StateView for Overlay<'_, S> {
    fn task_def(&self, name: &str) -> Result<Option<TaskDef>, StateError> {
        match self.task_defs.get(name) {
            Some(d) => Ok(d.clone()),
            None => self.base.task_def(name),
        }
    }
    fn workflow_def(&self, name: &str, version: u32) -> Result<Option<WorkflowDef>, StateError> {
        match self.workflow_defs.get(&(name.to_string(), version)) {
            Some(d) => Ok(d.clone()),
            None => self.base.workflow_def(name, version),
        }
    }
    fn latest_workflow_def(&self, name: &str) -> Result<Option<WorkflowDef>, StateError> {
        // Unless the batch wrote or deleted a version of it, the base answers: it keeps the latest decoded, where
        // listing the versions is a scan of the stored ones (every start of a workflow by name asks this).
        let named = (name.to_string(), 0)..=(name.to_string(), u32::MAX);
        if self.workflow_defs.range(named).next().is_none() {
            return self.base.latest_workflow_def(name);
        }
        match self.workflow_def_versions(name)?.last() {
            Some(version) => self.workflow_def(name, *version),
            None => Ok(None),
        }
    }
    fn workflow_def_versions(&self, name: &str) -> Result<Vec<u32>, StateError> {
        let mut versions: std::collections::BTreeSet<u32> =
            self.base.workflow_def_versions(name)?.into_iter().collect();
        for ((_, version), def) in self.workflow_defs.range((name.to_string(), 0)..=(name.to_string(), u32::MAX)) {
            match def {
                Some(_) => versions.insert(*version),
                None => versions.remove(version),
            };
        }
        Ok(versions.into_iter().collect())
    }
    fn workflow(&self, id: &str) -> Result<Option<Workflow>, StateError> {
        match self.workflows.get(id) {
            Some(w) => Ok(Some(w.as_ref().clone())),
            None => self.base.workflow(id),
        }
    }
    fn idempotency_key(&self, key: &str) -> Result<Option<String>, StateError> {
        match self.idempotency_keys.get(key) {
            Some(id) => Ok(Some(id.clone())),
            None => self.base.idempotency_key(key),
        }
    }
    fn type_stats(&self, task_type: &str) -> Result<Option<model::TypeStats>, StateError> {
        match self.type_stats.get(task_type) {
            Some(s) => Ok(Some(*s)),
            None => self.base.type_stats(task_type),
        }
    }
    fn limits(&self) -> Result<limits::Limits, StateError> {
        match &self.limits {
            Some(l) => Ok(l.clone()),
            None => self.base.limits(),
        }
    }
}

fn apply_workflow_command(
    state: &impl StateView,
    at_ms: u64,
    command: &Command,
    earlier: Spent,
) -> Result<Applied, StateError> {
    let mut exec = Exec::new(state, at_ms).with_limits(state.limits()?).after(earlier);
    let outcome: Result<CommandResponse, Rejection> = match command {
        Command::StartWorkflow(req) => {
            exec.op_start(req)?.map(|workflow_id| CommandResponse::WorkflowStarted { workflow_id })
        }
        Command::StartTask { workflow_id, task_id, worker_id } => {
            exec.op_start_task(workflow_id, task_id, worker_id)?.map(|()| CommandResponse::Done)
        }
        Command::UpdateTask { workflow_id, task_id, update } => {
            exec.op_update_task(workflow_id, task_id, update)?.map(|()| CommandResponse::Done)
        }
        Command::SignalTask { workflow_id, task_ref, update } => {
            exec.op_signal(workflow_id, task_ref, update)?.map(|()| CommandResponse::Done)
        }
        Command::Terminate { workflow_id, reason } => {
            exec.op_terminate(workflow_id, reason)?.map(|()| CommandResponse::Done)
        }
        Command::Pause { workflow_id } => exec.op_pause(workflow_id)?.map(|()| CommandResponse::Done),
        Command::Resume { workflow_id } => exec.op_resume(workflow_id)?.map(|()| CommandResponse::Done),
        Command::Retry { workflow_id } => exec.op_retry(workflow_id)?.map(|()| CommandResponse::Done),
        Command::Restart { workflow_id, use_latest_definition } => {
            exec.op_restart(workflow_id, *use_latest_definition)?.map(|()| CommandResponse::Done)
        }
        Command::Rerun { workflow_id, from_task_id, task_input, workflow_input } => exec
            .op_rerun(workflow_id, from_task_id, task_input.as_ref(), workflow_input.as_ref())?
            .map(|()| CommandResponse::Done),
        Command::SkipTask { workflow_id, task_ref, output } => {
            exec.op_skip(workflow_id, task_ref, output)?.map(|()| CommandResponse::Done)
        }
        Command::Tick { workflow_id } => exec.op_tick(workflow_id)?.map(|()| CommandResponse::Done),
        Command::LeaseTasks { worker_id, poll_id, tasks } => {
            exec.op_lease(worker_id, poll_id.as_deref(), tasks)?.map(|granted| CommandResponse::Leased { granted })
        }
        Command::AppendTaskLog { workflow_id, task_id, log } => {
            exec.op_append_log(workflow_id, task_id, log)?.map(|()| CommandResponse::Done)
        }
        Command::ExtendLease { workflow_id, task_id, lease } => {
            exec.op_extend_lease(workflow_id, task_id, *lease)?.map(|()| CommandResponse::Done)
        }
        Command::Evaluated { workflow_id, task_id, round, outcome } => {
            exec.op_evaluated(workflow_id, task_id, *round, outcome)?.map(|()| CommandResponse::Done)
        }
        Command::Batch(_) => unreachable!("batches are split by apply()"),
        Command::RegisterTaskDefs { .. }
        | Command::UpdateTaskDef { .. }
        | Command::RegisterWorkflowDef { .. }
        | Command::UpdateWorkflowDefs { .. }
        | Command::DeleteTaskDef { .. }
        | Command::DeleteWorkflowDef { .. }
        | Command::SetLimits { .. }
        | Command::BenchWrite { .. } => unreachable!("metadata, settings and bench commands are applied by apply()"),
    };
    match outcome {
        Ok(response) => {
            let (mutations, transitions, spent) = exec.finish()?;
            Ok(Applied { mutations, response, transitions, spent })
        }
        Err(rejection) => Ok(Applied { spent: exec.spent(), ..Applied::rejected(rejection) }),
    }
}

/// A validated definition's version as the key uses it (validation bounds it to 1..=u32::MAX).
pub fn workflow_version(def: &WorkflowDef) -> u32 {
    u32::try_from(def.version).unwrap_or(0)
}

/// Definitions that carry Conductor's `createTime` / `updateTime`.
trait Timestamped: Clone {
    fn create_time(&self) -> Option<u64>;
    fn set_times(&mut self, create_time: Option<u64>, update_time: Option<u64>);
}

impl Timestamped for TaskDef {
    fn create_time(&self) -> Option<u64> {
        self.create_time
    }
    fn set_times(&mut self, create_time: Option<u64>, update_time: Option<u64>) {
        (self.create_time, self.update_time) = (create_time, update_time);
    }
}

impl Timestamped for WorkflowDef {
    fn create_time(&self) -> Option<u64> {
        self.create_time
    }
    fn set_times(&mut self, create_time: Option<u64>, update_time: Option<u64>) {
        (self.create_time, self.update_time) = (create_time, update_time);
    }
}

/// The definition as stored: a new one is created at `at_ms`; a replacement keeps the original creation time and
/// is updated at `at_ms`.
fn stamp<T: Timestamped>(def: &T, existing: Option<&T>, at_ms: u64) -> T {
    let mut def = def.clone();
    match existing {
        Some(old) => def.set_times(old.create_time(), Some(at_ms)),
        None => def.set_times(Some(at_ms), None),
    }
    def
}

#[cfg(test)]
mod metadata_tests {
    use super::definitions::parse_json;
    use super::*;

    type MemState = super::memory::MemoryState;

    fn task_def(name: &str) -> TaskDef {
        parse_json(&format!(r#"{{"name":"{name}"}}"#)).expect("parses")
    }

    fn workflow_def(name: &str, version: i64) -> WorkflowDef {
        parse_json(&format!(
            r#"{{"name":"{name}","version":{version},"tasks":[{{"name":"t","taskReferenceName":"t"}}]}}"#
        ))
        .expect("parses")
    }

    fn run(state: &mut MemState, at_ms: u64, command: Command) -> CommandResponse {
        let applied = apply(state, &Proposal { at_ms, command }).expect("memory state never fails");
        let response = applied.response.clone();
        state.write(applied.mutations);
        response
    }

    #[test]
    fn register_stamps_create_time_and_reregister_keeps_it() {
        let mut state = MemState::default();
        assert_eq!(run(&mut state, 10, Command::RegisterTaskDefs { defs: vec![task_def("a")] }), CommandResponse::Done);
        assert_eq!(run(&mut state, 20, Command::RegisterTaskDefs { defs: vec![task_def("a")] }), CommandResponse::Done);
        let stored = &state.task_defs["a"];
        assert_eq!((stored.create_time, stored.update_time), (Some(10), Some(20)));
    }

    #[test]
    fn update_of_missing_task_def_is_rejected_and_changes_nothing() {
        let mut state = MemState::default();
        let response = run(&mut state, 10, Command::UpdateTaskDef { def: task_def("ghost") });
        assert!(matches!(response, CommandResponse::Rejected(r) if r.kind == RejectionKind::NotFound));
        assert!(state.task_defs.is_empty());
    }

    #[test]
    fn workflow_register_refuses_duplicates_unless_overwrite() {
        let mut state = MemState::default();
        run(&mut state, 0, Command::RegisterTaskDefs { defs: vec![task_def("t")] });
        let register = |overwrite| Command::RegisterWorkflowDef { def: workflow_def("wf", 1), overwrite };
        assert_eq!(run(&mut state, 1, register(false)), CommandResponse::Done);
        let again = run(&mut state, 2, register(false));
        assert!(matches!(again, CommandResponse::Rejected(r) if r.kind == RejectionKind::AlreadyExists));
        assert_eq!(run(&mut state, 3, register(true)), CommandResponse::Done);
        assert_eq!(state.workflow_defs[&("wf".to_string(), 1)].update_time, Some(3));
    }

    #[test]
    fn workflow_defs_naming_unknown_task_defs_or_sub_workflows_are_refused() {
        let mut state = MemState::default();
        let def: WorkflowDef = parse_json(
            r#"{"name":"wf","tasks":[{"name":"ghost","taskReferenceName":"g"},
                {"name":"s","taskReferenceName":"s","type":"SUB_WORKFLOW","subWorkflowParam":{"name":"nowhere"}}]}"#,
        )
        .expect("parses");
        let response = run(&mut state, 1, Command::RegisterWorkflowDef { def, overwrite: false });
        let CommandResponse::Rejected(rejection) = response else { panic!("expected a rejection") };
        let paths: Vec<_> = rejection.field_errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["tasks[0].name", "tasks[1].subWorkflowParam.name"]);
        assert!(state.workflow_defs.is_empty());
    }

    #[test]
    fn recursive_sub_workflow_chains_are_refused() {
        let mut state = MemState::default();
        let sub = |name: &str, child: &str| -> WorkflowDef {
            parse_json(&format!(
                r#"{{"name":"{name}","tasks":[{{"name":"s","taskReferenceName":"s","type":"SUB_WORKFLOW","subWorkflowParam":{{"name":"{child}"}}}}]}}"#
            ))
            .expect("parses")
        };
        // a -> b and b -> a registered together: each names the other.
        let response = run(&mut state, 1, Command::UpdateWorkflowDefs { defs: vec![sub("a", "b"), sub("b", "a")] });
        let CommandResponse::Rejected(rejection) = response else { panic!("expected a rejection") };
        assert!(rejection.field_errors[0].message.contains("recursive"), "{:?}", rejection.field_errors);
        assert!(state.workflow_defs.is_empty());
    }

    #[test]
    fn invalid_documents_are_rejected_at_apply_too() {
        let mut state = MemState::default();
        let response = run(&mut state, 1, Command::RegisterTaskDefs { defs: vec![task_def("")] });
        let CommandResponse::Rejected(rejection) = response else { panic!("expected a rejection") };
        assert_eq!(rejection.kind, RejectionKind::Invalid);
        assert_eq!(rejection.field_errors[0].path, "name");
        assert!(state.task_defs.is_empty());
    }

    #[test]
    fn replaying_the_same_proposals_gives_the_same_state() {
        let proposals = [
            Command::RegisterTaskDefs { defs: vec![task_def("a"), task_def("b")] },
            Command::UpdateWorkflowDefs { defs: vec![workflow_def("w", 1), workflow_def("w", 2)] },
            Command::UpdateTaskDef { def: task_def("a") },
        ];
        let replay = || {
            let mut state = MemState::default();
            for (i, c) in proposals.iter().enumerate() {
                run(&mut state, i as u64, c.clone());
            }
            (state.task_defs, state.workflow_defs)
        };
        assert_eq!(replay(), replay());
    }

    fn start_latest(id: &str, name: &str) -> Command {
        Command::StartWorkflow(StartWorkflow {
            workflow_id: id.to_string(),
            name: name.to_string(),
            version: None,
            definition: None,
            input: Map::new(),
            correlation_id: None,
            priority: 0,
            task_to_domain: Default::default(),
            idempotency_key: None,
            idempotency_strategy: Default::default(),
        })
    }

    /// The state below a batch, counting how often the versions of a definition are listed (a scan in RocksDB).
    struct CountingScans<'a> {
        state: &'a MemState,
        scans: std::cell::Cell<usize>,
    }

    impl StateView for CountingScans<'_> {
        fn task_def(&self, name: &str) -> Result<Option<TaskDef>, StateError> {
            self.state.task_def(name)
        }
        fn workflow_def(&self, name: &str, version: u32) -> Result<Option<WorkflowDef>, StateError> {
            self.state.workflow_def(name, version)
        }
        fn latest_workflow_def(&self, name: &str) -> Result<Option<WorkflowDef>, StateError> {
            self.state.latest_workflow_def(name)
        }
        fn workflow_def_versions(&self, name: &str) -> Result<Vec<u32>, StateError> {
            self.scans.set(self.scans.get() + 1);
            self.state.workflow_def_versions(name)
        }
        fn workflow(&self, id: &str) -> Result<Option<Workflow>, StateError> {
            self.state.workflow(id)
        }
        fn idempotency_key(&self, key: &str) -> Result<Option<String>, StateError> {
            self.state.idempotency_key(key)
        }
        fn type_stats(&self, task_type: &str) -> Result<Option<model::TypeStats>, StateError> {
            self.state.type_stats(task_type)
        }
        fn limits(&self) -> Result<limits::Limits, StateError> {
            self.state.limits()
        }
    }

    fn started_versions(response: &CommandResponse, state: &MemState) -> Vec<Option<u32>> {
        let CommandResponse::Batch(responses) = response else { panic!("a batch answers a batch: {response:?}") };
        responses
            .iter()
            .filter_map(|r| match r {
                CommandResponse::WorkflowStarted { workflow_id } => {
                    Some(state.workflows.get(workflow_id).map(|w| w.workflow_version))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_start_by_name_takes_the_latest_version_as_of_its_place_in_the_batch() {
        let mut state = MemState::default();
        run(&mut state, 0, Command::RegisterTaskDefs { defs: vec![task_def("t")] });
        run(&mut state, 1, Command::UpdateWorkflowDefs { defs: vec![workflow_def("w", 1), workflow_def("w", 2)] });

        // Nothing in the batch touches "w": the state below answers its latest version, without listing versions.
        let view = CountingScans { state: &state, scans: Default::default() };
        let batch = Command::Batch(vec![start_latest("a", "w"), start_latest("b", "w")]);
        let applied = apply(&view, &Proposal { at_ms: 2, command: batch }).expect("memory state never fails");
        assert_eq!(view.scans.get(), 0);
        state.write(applied.mutations);
        assert_eq!(started_versions(&applied.response, &state), [Some(2), Some(2)]);

        // Versions written or deleted earlier in the batch count for the starts after them.
        let batch = Command::Batch(vec![
            Command::DeleteWorkflowDef { name: "w".into(), version: 2 },
            start_latest("c", "w"),
            Command::RegisterWorkflowDef { def: workflow_def("w", 3), overwrite: false },
            start_latest("d", "w"),
        ]);
        let response = run(&mut state, 3, batch);
        assert_eq!(started_versions(&response, &state), [Some(1), Some(3)]);
    }
}
