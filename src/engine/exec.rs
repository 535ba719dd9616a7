//! The context one command executes in ([`Exec`]): the state as of before the command, every workflow the
//! command loaded or created, the bounds it applies with and what it has built so far, and [`Exec::finish`], which
//! runs the queued starts and decisions and hands every changed workflow back as a [`Mutation`].
//!
//! `impl Exec` is spread over the engine by meaning: the decider in [`decide`](super::decide), creating a task
//! from a step in [`schedule`](super::schedule), the system tasks in [`system_tasks`](super::system_tasks) and
//! [`do_while`](super::do_while), starting and ending workflows in [`lifecycle`](super::lifecycle), user code in
//! [`evaluation`](super::evaluation), and one operation per command in [`ops`](super::ops).
//!
//! Everything is deterministic: "now" is the command's `at_ms`, new ids are derived from existing ids
//! ([`derive_id`]), JavaScript sees a frozen clock, and maps are ordered.
//!
//! Owns: loading and caching what the command reads, the command's limits and byte budget ([`Cap`]), the bound on
//! starts per command, id derivation, and turning what changed into mutations, counters and [`Transitions`].
//! Must not touch: storage (it reads through [`StateView`] and hands back mutations), or the rules of what runs
//! next (the files named above).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::definitions::{TaskDef, WorkflowDef};
use super::limits::Limits;
use super::model::{Task, TaskStatus, TypeStats, Workflow, WorkflowStatus};
use super::{size, Mutation, Rejection, StateError, StateView, Transitions};

// Also reachable here, where callers outside the engine (tests/fuzz) found it before the split.
pub use super::system_tasks::is_system_type;

/// A deterministic UUID-shaped id derived from `seed` (sub-workflow and task ids).
pub fn derive_id(seed: &str) -> String {
    let digest = Sha256::digest(seed.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid().hyphenated().to_string()
}

/// The context one command executes in: the state as of before the command, the command's time, and every
/// workflow the command loaded or created (written back as mutations at the end).
pub struct Exec<'s, S: StateView> {
    state: &'s S,
    /// The command's time, ms since the Unix epoch.
    pub now_ms: u64,
    workflows: BTreeMap<String, Workflow>,
    dirty: BTreeSet<String>,
    task_defs: BTreeMap<String, Option<TaskDef>>,
    /// Workflow definitions this command read, by name and version (`None`: the latest).
    workflow_defs: BTreeMap<(String, Option<u32>), Option<Arc<WorkflowDef>>>,
    /// Workflows whose status or tasks changed and must be decided again (parents of finished children...).
    to_decide: BTreeSet<String>,
    /// Workflows created by this command whose first step is still to be scheduled, in creation order. Children
    /// start from this queue, never from inside their parent's decision, so a chain of starts uses no stack.
    to_start: VecDeque<String>,
    /// Workflows this command started (bounded by [`Limits::max_starts_per_command`]).
    starts: u32,
    /// Decision steps this command took and tasks it created, for every workflow together (bounded by
    /// [`Limits::max_steps_per_command`]).
    steps: u32,
    /// Bytes of values (task inputs and outputs, workflow inputs and outputs) this command has built so far, for
    /// every workflow it touches: at most [`Limits::max_bytes_per_command`].
    built: usize,
    /// Tasks this command removed from their workflows (a DO_WHILE's `keepLastN`): their task index entries go.
    forgotten_tasks: Vec<String>,
    /// The bounds this command applies with.
    limits: Limits,
    /// What the commands before this one in the same log entry spent: this one takes no decision step once the
    /// entry has spent its budget (its own values are still held to the whole byte budget, see [`Exec::cap`]).
    earlier: Spent,
    /// The workflow being ended starts no failure workflow: an operator ended it, or its parent's end did.
    pub(super) skip_failure_workflow: bool,
    /// Idempotency keys recorded by this command.
    idempotency_keys: BTreeMap<String, String>,
    /// Per loaded workflow, its worker tasks IN_PROGRESS by type before this command (to keep counters exact).
    original_in_progress: BTreeMap<String, BTreeMap<String, u64>>,
    /// Per loaded workflow, the highest task seq before this command: tasks above it are new and get indexed.
    original_max_seq: BTreeMap<String, u32>,
    /// Per loaded workflow, its status and the seqs of its tasks not yet ended before this command (for
    /// [`Transitions`]; few per workflow: only its open tasks).
    original_open: BTreeMap<String, (WorkflowStatus, BTreeSet<u32>)>,
    /// Dispatch counters read or changed by this command.
    type_stats: BTreeMap<String, TypeStats>,
    /// Counters to write back.
    dirty_stats: BTreeSet<String>,
}

/// A workflow's worker tasks IN_PROGRESS, by type.
fn in_progress_by_type(wf: &Workflow) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for t in wf.tasks.iter().filter(|t| t.status == TaskStatus::InProgress && !is_system_type(&t.task_type)) {
        *counts.entry(t.task_type.clone()).or_insert(0) += 1;
    }
    counts
}

/// Result of an operation: Ok, a refusal (the engine's deterministic "no", answered as it is), or a fatal state
/// read error.
pub type OpResult<T> = Result<Result<T, Rejection>, StateError>;

/// What commands spent of the budgets the commands of one log entry share: decision steps and tasks created
/// ([`Limits::max_steps_per_command`]) and bytes built ([`Limits::max_bytes_per_command`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    /// Decision steps taken and tasks created.
    pub steps: u32,
    /// Bytes of values built.
    pub bytes: usize,
}

impl Spent {
    /// Both together.
    pub fn plus(self, other: Spent) -> Spent {
        Spent { steps: self.steps.saturating_add(other.steps), bytes: self.bytes.saturating_add(other.bytes) }
    }
}

/// How many bytes a value may take, and the limit that says so (to name it when the value is too large).
#[derive(Debug, Clone, Copy)]
pub struct Cap {
    /// The most bytes, compact JSON.
    pub bytes: usize,
    /// The limit's name, as the limits are shown (`maxTaskInputBytes`).
    pub name: &'static str,
    /// The limit's value.
    pub value: u32,
}

impl Cap {
    /// The reason given when `what` would not fit.
    pub fn breach(&self, what: impl std::fmt::Display) -> String {
        Limits::breach(format_args!("{what} is over {} bytes", self.bytes), self.name, self.value)
    }
}

impl<'s, S: StateView> Exec<'s, S> {
    /// A context over `state` at time `now_ms`.
    pub fn new(state: &'s S, now_ms: u64) -> Self {
        Exec {
            state,
            now_ms,
            workflows: BTreeMap::new(),
            dirty: BTreeSet::new(),
            task_defs: BTreeMap::new(),
            workflow_defs: BTreeMap::new(),
            to_decide: BTreeSet::new(),
            to_start: VecDeque::new(),
            starts: 0,
            steps: 0,
            built: 0,
            forgotten_tasks: Vec::new(),
            limits: Limits::default(),
            earlier: Spent::default(),
            skip_failure_workflow: false,
            idempotency_keys: BTreeMap::new(),
            original_in_progress: BTreeMap::new(),
            original_max_seq: BTreeMap::new(),
            original_open: BTreeMap::new(),
            type_stats: BTreeMap::new(),
            dirty_stats: BTreeSet::new(),
        }
    }

    /// The same context for a command that follows others in one log entry, which spent `earlier`.
    pub fn after(mut self, earlier: Spent) -> Self {
        self.earlier = earlier;
        self
    }

    /// What this command has spent so far.
    pub fn spent(&self) -> Spent {
        Spent { steps: self.steps, bytes: self.built }
    }

    /// The same context applying with `limits` (the cluster setting) instead of the defaults.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The state as of before this command.
    pub fn state(&self) -> &'s S {
        self.state
    }

    /// The workflow, loading it on first use.
    pub fn workflow(&mut self, id: &str) -> Result<Option<&mut Workflow>, StateError> {
        if !self.workflows.contains_key(id) {
            match self.state.workflow(id)? {
                Some(wf) => {
                    self.original_in_progress.insert(id.to_string(), in_progress_by_type(&wf));
                    self.original_max_seq.insert(id.to_string(), wf.tasks.iter().map(|t| t.seq).max().unwrap_or(0));
                    let open = wf.tasks.iter().filter(|t| !t.status.is_terminal()).map(|t| t.seq).collect();
                    self.original_open.insert(id.to_string(), (wf.status, open));
                    self.workflows.insert(id.to_string(), wf);
                }
                None => return Ok(None),
            }
        }
        self.dirty.insert(id.to_string());
        Ok(self.workflows.get_mut(id))
    }

    /// Adds a workflow created by this command.
    pub fn insert(&mut self, workflow: Workflow) {
        self.dirty.insert(workflow.workflow_id.clone());
        self.workflows.insert(workflow.workflow_id.clone(), workflow);
    }

    /// Whether a workflow id is taken (in the state or created by this command).
    pub fn exists(&mut self, id: &str) -> Result<bool, StateError> {
        Ok(self.workflows.contains_key(id) || self.state.workflow(id)?.is_some())
    }

    /// The registered task definition of that name.
    pub fn task_def(&mut self, name: &str) -> Result<Option<TaskDef>, StateError> {
        if let Some(def) = self.task_defs.get(name) {
            return Ok(def.clone());
        }
        let def = self.state.task_def(name)?;
        self.task_defs.insert(name.to_string(), def.clone());
        Ok(def)
    }

    /// The registered workflow definition: that version, or the latest. Read once per command and shared: a
    /// FORK of hundreds of sub-workflows of one definition copies it once, not once per child.
    pub fn workflow_def(&mut self, name: &str, version: Option<u32>) -> Result<Option<Arc<WorkflowDef>>, StateError> {
        let key = (name.to_string(), version);
        if let Some(def) = self.workflow_defs.get(&key) {
            return Ok(def.clone());
        }
        let def = match version {
            Some(v) => self.state.workflow_def(name, v)?,
            None => self.state.latest_workflow_def(name)?,
        }
        .map(Arc::new);
        self.workflow_defs.insert(key, def.clone());
        Ok(def)
    }

    /// A task type's dispatch counters as this command sees them.
    pub fn stats(&mut self, task_type: &str) -> Result<TypeStats, StateError> {
        if let Some(s) = self.type_stats.get(task_type) {
            return Ok(*s);
        }
        let s = self.state.type_stats(task_type)?.unwrap_or_default();
        self.type_stats.insert(task_type.to_string(), s);
        Ok(s)
    }

    /// Changes a task type's dispatch counters.
    pub fn set_stats(&mut self, task_type: &str, stats: TypeStats) {
        self.type_stats.insert(task_type.to_string(), stats);
        self.dirty_stats.insert(task_type.to_string());
    }

    /// The workflow a start with this idempotency key created, if any.
    pub fn idempotent_start(&self, key: &str) -> Result<Option<String>, StateError> {
        match self.idempotency_keys.get(key) {
            Some(id) => Ok(Some(id.clone())),
            None => self.state.idempotency_key(key),
        }
    }

    /// Remembers that this command's start used `key`.
    pub fn record_idempotency_key(&mut self, key: &str, workflow_id: &str) {
        self.idempotency_keys.insert(key.to_string(), workflow_id.to_string());
    }

    /// Marks a workflow for another decision round before the command ends.
    pub fn schedule_decide(&mut self, id: &str) {
        self.to_decide.insert(id.to_string());
    }

    /// The bounds this command applies with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The most bytes a value about to be built may take: its own limit (`name`, of value `limit`), or what is
    /// left of this command's budget for building values when that is less.
    pub fn cap(&self, name: &'static str, limit: u32) -> Cap {
        let budget = self.limits.max_bytes_per_command;
        let left = Limits::bytes(budget).saturating_sub(self.built);
        if left < Limits::bytes(limit) {
            Cap { bytes: left, name: "maxBytesPerCommand", value: budget }
        } else {
            Cap { bytes: Limits::bytes(limit), name, value: limit }
        }
    }

    /// Tasks removed from their workflow by this command: their task index entries are deleted with it.
    pub fn forget_tasks(&mut self, task_ids: impl IntoIterator<Item = String>) {
        self.forgotten_tasks.extend(task_ids);
    }

    /// Counts `bytes` of a value this command built against its budget.
    pub fn spend(&mut self, bytes: usize) {
        self.built = self.built.saturating_add(bytes);
    }

    /// Measures an output about to be recorded for a task against [`Limits::max_task_output_bytes`] (and the
    /// command's budget) and counts it; the reason it may not be recorded otherwise (`what` names it).
    pub fn output_refusal(&mut self, what: impl std::fmt::Display, output: &Map<String, Value>) -> Option<String> {
        self.map_refusal(what, output, "maxTaskOutputBytes", self.limits.max_task_output_bytes)
    }

    /// Measures a map about to be recorded against the limit `name` of value `limit` (and the command's budget)
    /// and counts it; the reason it may not be recorded otherwise.
    pub fn map_refusal(
        &mut self,
        what: impl std::fmt::Display,
        map: &Map<String, Value>,
        name: &'static str,
        limit: u32,
    ) -> Option<String> {
        let cap = self.cap(name, limit);
        match size::map_within(map, cap.bytes) {
            Some(bytes) => {
                self.spend(bytes);
                None
            }
            None => Some(cap.breach(what)),
        }
    }

    /// Runs pending starts and decisions (cascading to parents), then hands back every changed workflow and what
    /// the command spent.
    ///
    /// Starts are drained first: each one was counted against [`Limits::max_starts_per_command`] when it was
    /// queued. Once the command has taken [`Limits::max_steps_per_command`] steps, what is left to start or decide
    /// is left to a follow-up `Tick` (the workflow is marked [`Workflow::decision_pending`]; a workflow not yet
    /// started has no tasks, and its decision starts it).
    pub fn finish(mut self) -> Result<(Vec<Mutation>, Transitions, Spent), StateError> {
        loop {
            loop {
                let id = match self.to_start.pop_front() {
                    Some(id) => id,
                    None => match self.to_decide.pop_first() {
                        Some(id) => id,
                        None => break,
                    },
                };
                // A start is a decision of a workflow with no tasks yet (see [`Exec::decide`]).
                self.decide(&id)?;
            }
            // A workflow this command left larger than its record may be fails; ending it may start or decide
            // others (its parent, its failure workflow), so the loop goes round again.
            if !self.fail_oversized_records()? {
                break;
            }
        }
        let dirty: Vec<String> = self.dirty.iter().cloned().collect();
        let mut mutations = Vec::with_capacity(dirty.len());
        let mut transitions = Transitions::default();
        for id in dirty {
            let Some(mut wf) = self.workflows.remove(&id) else { continue };
            self.record_transitions(&wf, &mut transitions);
            wf.next_tick_ms = self.next_tick(&wf)?;
            // Keep the per-type IN_PROGRESS counters exact: the difference this command made to this workflow.
            let before = self.original_in_progress.remove(&id).unwrap_or_default();
            let after = in_progress_by_type(&wf);
            let types: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
            for task_type in types {
                let (b, a) = (before.get(task_type).copied().unwrap_or(0), after.get(task_type).copied().unwrap_or(0));
                if a != b {
                    let mut stats = self.stats(task_type)?;
                    stats.in_progress = (stats.in_progress + a).saturating_sub(b);
                    self.set_stats(task_type, stats);
                }
            }
            let indexed_up_to = self.original_max_seq.remove(&id).unwrap_or(0);
            let new_tasks: Vec<Mutation> = wf
                .tasks
                .iter()
                .filter(|t| t.seq > indexed_up_to)
                .map(|t| Mutation::PutTaskIndex { task_id: t.task_id.clone(), workflow_id: id.clone() })
                .collect();
            mutations.push(Mutation::PutWorkflow(std::sync::Arc::new(wf)));
            mutations.extend(new_tasks);
        }
        for task_type in std::mem::take(&mut self.dirty_stats) {
            if let Some(stats) = self.type_stats.get(&task_type) {
                mutations.push(Mutation::PutTypeStats { task_type, stats: *stats });
            }
        }
        for (key, workflow_id) in std::mem::take(&mut self.idempotency_keys) {
            mutations.push(Mutation::PutIdempotencyKey { key, workflow_id });
        }
        for task_id in std::mem::take(&mut self.forgotten_tasks) {
            mutations.push(Mutation::DeleteTaskIndex { task_id });
        }
        Ok((mutations, transitions, self.spent()))
    }

    /// Fails every running workflow this command changed whose record is now larger than
    /// [`Limits::max_workflow_record_bytes`]. True when one failed.
    fn fail_oversized_records(&mut self) -> Result<bool, StateError> {
        let limit = self.limits.max_workflow_record_bytes;
        let oversized: Vec<String> = self
            .dirty
            .iter()
            .filter_map(|id| self.workflows.get(id))
            .filter(|wf| !wf.status.is_terminal() && size::record_within(wf, Limits::bytes(limit)).is_none())
            .map(|wf| wf.workflow_id.clone())
            .collect();
        for id in &oversized {
            let reason = Limits::breach(
                format_args!("the workflow's record is over {limit} bytes"),
                "maxWorkflowRecordBytes",
                limit,
            );
            self.end_workflow(id.clone(), WorkflowStatus::Failed, reason, None)?;
        }
        Ok(!oversized.is_empty())
    }

    /// What this command changed in `wf`'s status and its tasks' statuses.
    fn record_transitions(&self, wf: &Workflow, transitions: &mut Transitions) {
        let id = &wf.workflow_id;
        let max_seq = self.original_max_seq.get(id).copied().unwrap_or(0);
        let (before, open) = match self.original_open.get(id) {
            Some((status, open)) => (Some(*status), Some(open)),
            None => (None, None),
        };
        if before != Some(wf.status) {
            transitions.workflows.push((before, wf.status));
        }
        for t in wf.tasks.iter().filter(|t| t.status.is_terminal()) {
            if t.seq > max_seq || open.is_some_and(|open| open.contains(&t.seq)) {
                transitions.tasks_ended.push((t.task_type.clone(), t.status));
            }
        }
    }

    /// The task definition that governs a task: the registered one, the inline `taskDefinition`, or for a worker
    /// task with neither, Conductor's defaults (3 retries, FIXED 60 s, response timeout 3600 s). System tasks
    /// without a definition are never retried.
    pub(crate) fn effective_task_def(&mut self, task: &Task) -> Result<Option<TaskDef>, StateError> {
        if let Some(def) = self.task_def(&task.task_def_name)?.or_else(|| task.workflow_task.embedded_task_def()) {
            return Ok(Some(def));
        }
        if is_system_type(&task.task_type) {
            return Ok(None);
        }
        Ok(serde_json::from_value(json!({ "name": task.task_def_name })).ok())
    }

    /// Why a workflow at start depth `depth` may not be started by this command, if it may not: the chain is too
    /// long ([`Limits::max_start_depth`]) or the command started too many ([`Limits::max_starts_per_command`]).
    pub(super) fn start_refusal(&self, depth: u32) -> Option<String> {
        if depth > self.limits.max_start_depth {
            return Some(Limits::breach("a chain of workflow starts", "maxStartDepth", self.limits.max_start_depth));
        }
        if self.starts >= self.limits.max_starts_per_command {
            let limit = self.limits.max_starts_per_command;
            return Some(Limits::breach("too many workflows started by one command", "maxStartsPerCommand", limit));
        }
        None
    }

    /// Whether this command has taken all the steps it may ([`Limits::max_steps_per_command`]), or built half the
    /// bytes it may ([`Limits::max_bytes_per_command`]: the other half is room for the step in progress).
    pub(super) fn out_of_steps(&self) -> bool {
        let entry = self.earlier.plus(self.spent());
        entry.steps >= self.limits.max_steps_per_command
            || entry.bytes >= Limits::bytes(self.limits.max_bytes_per_command) / 2
    }

    /// Counts a decision step or a task created against this command's bound.
    pub(super) fn count_step(&mut self) {
        self.steps = self.steps.saturating_add(1);
    }

    /// Counts a start against this command's bound. Call before [`Exec::start`] or [`Exec::queue_start`].
    pub fn count_start(&mut self) {
        self.starts = self.starts.saturating_add(1);
    }

    /// Queues a workflow created by this command to be started once the current decision is done.
    pub(super) fn queue_start(&mut self, id: &str) {
        self.count_start();
        self.to_start.push_back(id.to_string());
    }
}
