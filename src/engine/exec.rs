//! Executing workflows: the context one command runs in ([`Exec`]), the decider that schedules what comes next
//! after each change, and the system tasks the engine runs itself (SWITCH, FORK/JOIN, DO_WHILE, SET_VARIABLE, ...).
//!
//! Everything is deterministic: "now" is the command's `at_ms`, new ids are derived from existing ids, JavaScript
//! sees a frozen clock, and maps are ordered. Owns the rules of "what runs next"; must not touch storage (it reads
//! through [`StateView`] and hands back changed workflows as mutations).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::definitions::{TaskDef, WorkflowDef, WorkflowTask};
use super::expr::Oversize;
use super::limits::Limits;
use super::model::{
    map_nests_deeper_than, too_deep, Task, TaskStatus, TypeStats, Workflow, WorkflowStatus, MAX_VALUE_DEPTH,
};
use super::{expr, script, size, Mutation, StateError, StateView, Transitions};

/// A deterministic UUID-shaped id derived from `seed` (sub-workflow and task ids).
pub fn derive_id(seed: &str) -> String {
    let digest = Sha256::digest(seed.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid().hyphenated().to_string()
}

/// Where a step sits in its definition: the list that holds it and what owns that list.
#[derive(Debug, Clone, Copy)]
struct Slot<'d> {
    container: Container<'d>,
    /// The list, in order.
    siblings: &'d [WorkflowTask],
    index: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Container<'d> {
    Top,
    /// A SWITCH/DECISION branch; the owner is the switch's reference.
    Case(&'d str),
    /// A FORK_JOIN lane.
    Fork,
    /// A DO_WHILE body; the owner is the loop's reference.
    Loop(&'d str),
}

/// What follows a finished step.
#[derive(Debug, Clone, PartialEq)]
enum Next {
    /// Schedule this step.
    Step(String),
    /// The end of a DO_WHILE body: evaluate the loop.
    LoopEnd(String),
    /// Nothing (end of the workflow's list, or of a fork lane).
    Nothing,
}

/// Every step of a definition by reference name, with its place. It borrows the definition: every command that
/// decides a workflow builds one, so it copies nothing.
#[derive(Debug, Clone, Default)]
pub struct DefIndex<'d> {
    /// Looked up, never iterated: its order cannot reach the state (the engine's maps that are iterated are ordered).
    steps: HashMap<&'d str, (&'d WorkflowTask, Slot<'d>)>,
}

impl<'d> DefIndex<'d> {
    /// Indexes a definition.
    pub fn new(def: &'d WorkflowDef) -> Self {
        let mut index = DefIndex::default();
        index.add_list(&def.tasks, Container::Top);
        index
    }

    fn add_list(&mut self, list: &'d [WorkflowTask], container: Container<'d>) {
        for (i, task) in list.iter().enumerate() {
            let slot = Slot { container, siblings: list, index: i };
            let reference = task.task_reference_name.as_str();
            self.steps.insert(reference, (task, slot));
            for tasks in task.decision_cases.values() {
                self.add_list(tasks, Container::Case(reference));
            }
            self.add_list(&task.default_case, Container::Case(reference));
            for lane in &task.fork_tasks {
                self.add_list(lane, Container::Fork);
            }
            self.add_list(&task.loop_over, Container::Loop(reference));
        }
    }

    /// The step with this reference name.
    pub fn step(&self, reference: &str) -> Option<&'d WorkflowTask> {
        self.steps.get(reference).map(|(t, _)| *t)
    }

    fn next_after(&self, reference: &str) -> Next {
        let Some((_, slot)) = self.steps.get(reference) else { return Next::Nothing };
        if let Some(sibling) = slot.siblings.get(slot.index + 1) {
            return Next::Step(sibling.task_reference_name.clone());
        }
        match slot.container {
            Container::Top | Container::Fork => Next::Nothing,
            Container::Case(owner) => self.next_after(owner),
            Container::Loop(owner) => Next::LoopEnd(owner.to_string()),
        }
    }
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
    /// Workflows whose status or tasks changed and must be decided again (parents of finished children...).
    to_decide: BTreeSet<String>,
    /// Workflows created by this command whose first step is still to be scheduled, in creation order. Children
    /// start from this queue, never from inside their parent's decision, so a chain of starts uses no stack.
    to_start: VecDeque<String>,
    /// Workflows this command started (bounded by [`Limits::max_starts_per_command`]).
    starts: u32,
    /// Bytes of values (task inputs and outputs, workflow inputs and outputs) this command has built so far, for
    /// every workflow it touches: at most [`Limits::max_workflow_record_bytes`].
    built: usize,
    /// Tasks this command removed from their workflows (a DO_WHILE's `keepLastN`): their task index entries go.
    forgotten_tasks: Vec<String>,
    /// The bounds this command applies with.
    limits: Limits,
    /// The workflow being ended was ended by an operator (no failure workflow).
    ending_by_operator: bool,
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

/// A refusal from an operation: the engine's deterministic "no".
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The workflow or task does not exist.
    NotFound(String),
    /// The operation does not apply in the current state (terminal workflow, wrong task status...).
    Conflict(String),
    /// The request is malformed.
    Invalid(String),
    /// A worker reported with a lease that is no longer the task's.
    StaleLease(String),
}

/// Result of an operation: Ok, a refusal, or a fatal state read error.
pub type OpResult<T> = Result<Result<T, Refusal>, StateError>;

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
            to_decide: BTreeSet::new(),
            to_start: VecDeque::new(),
            starts: 0,
            built: 0,
            forgotten_tasks: Vec::new(),
            limits: Limits::default(),
            ending_by_operator: false,
            idempotency_keys: BTreeMap::new(),
            original_in_progress: BTreeMap::new(),
            original_max_seq: BTreeMap::new(),
            original_open: BTreeMap::new(),
            type_stats: BTreeMap::new(),
            dirty_stats: BTreeSet::new(),
        }
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

    /// The registered workflow definition: that version, or the latest.
    pub fn workflow_def(&mut self, name: &str, version: Option<u32>) -> Result<Option<WorkflowDef>, StateError> {
        match version {
            Some(v) => self.state.workflow_def(name, v),
            None => self.state.latest_workflow_def(name),
        }
    }

    /// The earliest time a `Tick` could change this workflow: its own timeout, a WAIT's end, or a task's poll,
    /// response or execution timeout. 0 when nothing is timed.
    fn next_tick(&mut self, wf: &Workflow) -> Result<u64, StateError> {
        use super::definitions::{TaskTimeoutPolicy, WorkflowTimeoutPolicy};
        if wf.status != WorkflowStatus::Running {
            return Ok(0);
        }
        if wf.decision_pending {
            return Ok(self.now_ms);
        }
        let mut due = u64::MAX;
        let def = &wf.workflow_definition;
        if def.timeout_seconds > 0 && def.timeout_policy == WorkflowTimeoutPolicy::TimeOutWf {
            due = due.min(wf.start_time + u64::try_from(def.timeout_seconds).unwrap_or(0) * 1000);
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
            let secs = |s: i64| u64::try_from(s).unwrap_or(0) * 1000;
            if task.status == TaskStatus::Scheduled && task.start_time == 0 {
                if let Some(poll) = td.poll_timeout_seconds.filter(|s| *s > 0) {
                    due = due.min(task.scheduled_time.max(task.visible_from) + secs(poll));
                }
            }
            if task.status == TaskStatus::InProgress && task.response_timeout_seconds > 0 {
                due = due.min(task.update_time + (task.response_timeout_seconds + task.callback_after_seconds) * 1000);
            }
            if task.start_time > 0 && td.timeout_seconds > 0 && td.timeout_policy != TaskTimeoutPolicy::AlertOnly {
                due = due.min(task.start_time + secs(td.timeout_seconds));
            }
        }
        Ok(if due == u64::MAX { 0 } else { due })
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
        let record = self.limits.max_workflow_record_bytes;
        let left = Limits::bytes(record).saturating_sub(self.built);
        if left < Limits::bytes(limit) {
            Cap { bytes: left, name: "maxWorkflowRecordBytes", value: record }
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

    /// Runs pending starts and decisions (cascading to parents), then hands back every changed workflow.
    ///
    /// Starts are drained first and always completely: each one was counted against
    /// [`Limits::max_starts_per_command`] when it was queued. Decisions past [`Limits::max_steps_per_decision`]
    /// rounds are left to a follow-up `Tick` (the workflow is marked [`Workflow::decision_pending`]).
    pub fn finish(mut self) -> Result<(Vec<Mutation>, Transitions), StateError> {
        let mut rounds = 0u32;
        loop {
            loop {
                if let Some(id) = self.to_start.pop_front() {
                    self.start(&id)?;
                    continue;
                }
                let Some(id) = self.to_decide.pop_first() else { break };
                rounds += 1;
                if rounds > self.limits.max_steps_per_decision {
                    for id in std::iter::once(id).chain(std::mem::take(&mut self.to_decide)) {
                        if let Some(wf) = self.workflow(&id)? {
                            wf.decision_pending = true;
                        }
                    }
                    break;
                }
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
        Ok((mutations, transitions))
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

    // ------------------------------------------------------------------ the decider

    /// Acts on everything that changed in a workflow: schedules what follows finished tasks, retries or fails on
    /// failures, runs system tasks, completes JOINs and loops, and completes the workflow when nothing is left.
    pub fn decide(&mut self, id: &str) -> Result<(), StateError> {
        let Some(wf) = self.workflow(id)? else { return Ok(()) };
        if wf.status != WorkflowStatus::Running {
            return Ok(());
        }
        wf.decision_pending = false;
        let def = std::sync::Arc::clone(&wf.workflow_definition);
        let index = DefIndex::new(&def);
        let mut steps = 0;
        loop {
            steps += 1;
            if steps > self.limits.max_steps_per_decision {
                // Not a failure: a long run of system tasks goes on in the next command (a Tick due at once), so
                // no command does unbounded work and no legitimate workflow fails for being long.
                self.workflow(id)?.expect("loaded above").decision_pending = true;
                return Ok(());
            }
            let wf = self.workflow(id)?.expect("loaded above");
            if wf.status != WorkflowStatus::Running {
                return Ok(());
            }
            // 1. A system task waiting to be run by the engine.
            if let Some(i) = wf
                .tasks
                .iter()
                .position(|t| t.status == TaskStatus::Scheduled && is_engine_task(t) && t.awaiting_evaluation == 0)
            {
                self.run_system_task(id, i, &index)?;
                continue;
            }
            // 2. A JOIN or DO_WHILE whose condition may now hold.
            if self.progress_joins(id)? {
                continue;
            }
            // 3. A finished task the engine has not acted on yet.
            let wf = self.workflow(id)?.expect("loaded above");
            if let Some(i) =
                wf.tasks.iter().position(|t| t.status.is_terminal() && !t.executed && t.status != TaskStatus::Skipped)
            {
                self.act_on_finished(id, i, &index)?;
                continue;
            }
            // 4. Nothing left to do: complete the workflow when nothing is pending.
            let wf = self.workflow(id)?.expect("loaded above");
            if wf.tasks.iter().all(|t| t.status.is_terminal()) {
                let wf_id = wf.workflow_id.clone();
                let cap = self.cap("maxWorkflowOutputBytes", self.limits.max_workflow_output_bytes);
                let wf = self.workflow(id)?.expect("loaded above");
                let outcome = match workflow_output(wf, cap.bytes) {
                    Err(Oversize) => Err(cap.breach("the workflow's output")),
                    Ok(output) => match too_deep("the workflow's output", &output) {
                        Some(reason) => Err(reason),
                        None => Ok(output),
                    },
                };
                match outcome {
                    Ok(output) => {
                        self.spend(size::map_within(&output, usize::MAX).unwrap_or(0));
                        self.end_workflow(wf_id, WorkflowStatus::Completed, String::new(), Some(output))?
                    }
                    Err(reason) => self.end_workflow(wf_id, WorkflowStatus::Failed, reason, None)?,
                }
            }
            return Ok(());
        }
    }

    fn act_on_finished(&mut self, id: &str, i: usize, index: &DefIndex<'_>) -> Result<(), StateError> {
        let wf = self.workflow(id)?.expect("caller loaded it");
        wf.tasks[i].executed = true;
        let task = wf.tasks[i].clone();
        if task.status.is_successful() {
            self.after_success(id, &task, index)
        } else {
            self.after_failure(id, i, index)
        }
    }

    /// Schedules what follows a successful task.
    fn after_success(&mut self, id: &str, task: &Task, index: &DefIndex<'_>) -> Result<(), StateError> {
        let def_ref = task.workflow_task.task_reference_name.clone();
        // A SWITCH continues into its chosen branch.
        if matches!(task.workflow_task.task_type.as_str(), "SWITCH" | "DECISION") && task.status != TaskStatus::Skipped
        {
            let is_decision = task.workflow_task.task_type == "DECISION";
            let key = if is_decision { "caseOutput" } else { "evaluationResult" };
            let case = task.output_data.get(key).and_then(|v| v.get(0)).and_then(Value::as_str);
            // SWITCH: a matching case runs its list, even an empty one (Conductor >= 3.31); DECISION falls back to
            // the default case when the matching list is empty.
            let branch = match case.and_then(|c| task.workflow_task.decision_cases.get(c)) {
                Some(list) if !(is_decision && list.is_empty()) => list,
                _ => &task.workflow_task.default_case,
            };
            if let Some(first) = branch.first() {
                let first = first.clone();
                return self.schedule_step(id, &first, task.iteration, index);
            }
        }
        // A FORK starts every lane (the JOIN after it is scheduled as its successor).
        if task.workflow_task.task_type == "FORK_JOIN" || task.workflow_task.task_type == "FORK" {
            for lane in task.workflow_task.fork_tasks.clone() {
                if let Some(first) = lane.first() {
                    self.schedule_step(id, first, task.iteration, index)?;
                }
            }
        }
        match index.next_after(&def_ref) {
            Next::Step(next) => {
                let step = index.step(&next).cloned().expect("next_after names indexed steps");
                self.schedule_step(id, &step, task.iteration, index)
            }
            Next::LoopEnd(owner) => self.loop_iteration_done(id, &owner),
            Next::Nothing => Ok(()),
        }
    }

    /// Retries a failed task, passes an optional one, or fails the workflow.
    fn after_failure(&mut self, id: &str, i: usize, index: &DefIndex<'_>) -> Result<(), StateError> {
        let task = self.workflow(id)?.expect("caller loaded it").tasks[i].clone();
        let def = self.effective_task_def(&task)?;
        let retries = def.as_ref().map_or(0, |d| u32::try_from(d.retry_count.max(0)).unwrap_or(u32::MAX));
        let built_in = matches!(task.task_type.as_str(), "SWITCH" | "DECISION" | "FORK" | "JOIN" | "DO_WHILE");
        let retryable = !built_in && !matches!(task.status, TaskStatus::FailedWithTerminalError | TaskStatus::Canceled);
        if retryable && task.retry_count < retries {
            let delay_ms = def.as_ref().map_or(0, |d| retry_delay_ms(d, task.retry_count));
            let wf = self.workflow(id)?.expect("caller loaded it");
            wf.tasks[i].retried = true;
            let mut retry = task.clone();
            retry.reset_for_new_attempt(self.now_ms);
            retry.retry_count += 1;
            retry.retried_task_id = Some(task.task_id.clone());
            retry.visible_from = self.now_ms + delay_ms;
            retry.callback_after_seconds = delay_ms / 1000;
            self.push_task(id, retry)?;
            return Ok(());
        }
        if task.workflow_task.optional {
            let wf = self.workflow(id)?.expect("caller loaded it");
            wf.tasks[i].status = TaskStatus::CompletedWithErrors;
            let task = wf.tasks[i].clone();
            return self.after_success(id, &task, index);
        }
        let status = match task.status {
            TaskStatus::TimedOut => WorkflowStatus::TimedOut,
            TaskStatus::Canceled => WorkflowStatus::Terminated,
            _ => WorkflowStatus::Failed,
        };
        let reason = format!(
            "Task {} failed with status: {} and reason: '{}'",
            task.task_id,
            status.as_str(),
            task.reason_for_incompletion.clone().unwrap_or_default()
        );
        let wf = self.workflow(id)?.expect("caller loaded it");
        wf.failed_reference_task_names.insert(task.reference_task_name.clone());
        self.end_workflow(id.to_string(), status, reason, None)
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

    /// Completes JOINs whose joined tasks are done and DO_WHILE tasks whose bodies are done. True when one moved.
    fn progress_joins(&mut self, id: &str) -> Result<bool, StateError> {
        let now = self.now_ms;
        let cap = self.cap("maxTaskOutputBytes", self.limits.max_task_output_bytes);
        let wf = self.workflow(id)?.expect("caller loaded it");
        for i in 0..wf.tasks.len() {
            let t = &wf.tasks[i];
            if t.status != TaskStatus::InProgress || t.task_type != "JOIN" {
                continue;
            }
            let join_on: Vec<String> = match t.input_data.get("joinOn") {
                Some(Value::Array(refs)) => refs.iter().filter_map(|r| r.as_str().map(str::to_string)).collect(),
                _ => t.workflow_task.join_on(),
            };
            let suffix = iteration_suffix(t.iteration);
            let mut all_done = true;
            let mut with_errors = false;
            let mut failures = Vec::new();
            for r in &join_on {
                let full = format!("{r}{suffix}");
                match wf.latest_by_ref(&full) {
                    Some(joined) if joined.status.is_successful() && joined.executed => {
                        with_errors |= joined.status == TaskStatus::CompletedWithErrors;
                    }
                    Some(joined)
                        if joined.status.is_terminal()
                            && !joined.status.is_successful()
                            && joined.executed
                            && !joined.retried
                            && !joined.workflow_task.optional =>
                    {
                        failures.push(joined.reason_for_incompletion.clone().unwrap_or_default());
                    }
                    _ => all_done = false,
                }
            }
            if !failures.is_empty() {
                let t = &mut wf.tasks[i];
                t.status = TaskStatus::Failed;
                t.reason_for_incompletion = Some(failures.join(" "));
                t.end_time = now;
                t.update_time = now;
                return Ok(true);
            }
            if all_done {
                // The joined outputs, each measured before it is copied: together they may not pass the cap.
                let mut output = Map::new();
                let mut left = Some(cap.bytes.saturating_sub(2));
                for r in &join_on {
                    let Some(joined) = wf.latest_by_ref(&format!("{r}{suffix}")) else { continue };
                    if joined.output_data.is_empty() {
                        continue;
                    }
                    let room = left.and_then(|left| left.checked_sub(size::string_len(r) + 2));
                    left = room.and_then(|room| Some(room - size::map_within(&joined.output_data, room)?));
                    if left.is_none() {
                        break;
                    }
                    output.insert(r.clone(), Value::Object(joined.output_data.clone()));
                }
                let built = cap.bytes - left.unwrap_or(0);
                let t = &mut wf.tasks[i];
                t.end_time = now;
                t.update_time = now;
                if left.is_none() {
                    t.status = TaskStatus::FailedWithTerminalError;
                    t.reason_for_incompletion =
                        Some(cap.breach(format_args!("the output of JOIN '{}'", t.reference_task_name)));
                    return Ok(true);
                }
                t.status = if with_errors { TaskStatus::CompletedWithErrors } else { TaskStatus::Completed };
                t.output_data = output;
                self.spend(built);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The last step of a DO_WHILE body finished: record its outputs and wait for the condition's evaluation (a
    /// loop over `items` without a condition goes on at once).
    fn loop_iteration_done(&mut self, id: &str, owner: &str) -> Result<(), StateError> {
        let now = self.now_ms;
        let cap = self.cap("maxTaskOutputBytes", self.limits.max_task_output_bytes);
        let wf = self.workflow(id)?.expect("caller loaded it");
        let Some(li) = wf
            .tasks
            .iter()
            .rposition(|t| t.workflow_task.task_reference_name == owner && t.status == TaskStatus::InProgress)
        else {
            return Ok(());
        };
        // The loop's own counter lives in its output (`iteration`), as Conductor shows it; the task's `iteration`
        // field is the iteration of an enclosing loop, if any.
        let iteration = wf.tasks[li].output_data.get("iteration").and_then(Value::as_u64).unwrap_or(1);
        let iteration = u32::try_from(iteration).unwrap_or(u32::MAX);
        // Record this iteration's outputs, keyed by the body's reference names without the suffix, each measured
        // before it is copied: the loop's output (earlier iterations included) may not pass the cap.
        let body_refs: BTreeSet<String> = collect_refs(&wf.tasks[li].workflow_task.loop_over);
        let key = iteration.to_string();
        let mut left = cap.bytes.checked_sub(size::string_len(&key) + 3).and_then(|room| {
            let output = &wf.tasks[li].output_data;
            let kept = output.iter().filter(|(k, _)| **k != key).map(|(k, v)| (k.clone(), v.clone()));
            room.checked_sub(size::map_within(&kept.collect(), room)?)
        });
        let mut outputs = Map::new();
        for t in wf
            .tasks
            .iter()
            .filter(|t| t.iteration == iteration && body_refs.contains(&t.workflow_task.task_reference_name))
        {
            let reference = &t.workflow_task.task_reference_name;
            let room = left.and_then(|left| left.checked_sub(size::string_len(reference) + 2));
            left = room.and_then(|room| room.checked_sub(size::map_within(&t.output_data, room)?));
            if left.is_none() {
                break;
            }
            outputs.insert(reference.clone(), Value::Object(t.output_data.clone()));
        }
        let loop_task = &mut wf.tasks[li];
        loop_task.update_time = now;
        if left.is_none() {
            loop_task.status = TaskStatus::FailedWithTerminalError;
            loop_task.end_time = now;
            let what =
                format_args!("the output of DO_WHILE '{}' with iteration {iteration}", loop_task.reference_task_name);
            loop_task.reason_for_incompletion = Some(cap.breach(what));
            return Ok(());
        }
        loop_task.output_data.insert(key, Value::Object(outputs));
        loop_task.output_data.insert("iteration".into(), json!(iteration));
        if loop_task.input_data.get("items").is_some() && loop_task.workflow_task.extra_str("loopCondition").is_none() {
            return self.loop_condition_known(id, li, iteration, Ok(true));
        }
        // The condition is user code: the leader evaluates it outside apply and the verdict comes back as a
        // command (engine::evaluation), which continues in `loop_condition_known`.
        self.await_evaluation(id, li, iteration)
    }

    /// The list a DO_WHILE iterates over (`items`: its input parameter, or the step's own `items` expression,
    /// resolved into the input), if it has one: `Some(length)`; the reason the loop cannot run otherwise.
    fn loop_items(&mut self, id: &str, i: usize) -> Result<Result<Option<usize>, String>, StateError> {
        let max_iterations = self.limits.max_do_while_iterations;
        let cap = self.cap("maxTaskInputBytes", self.limits.max_task_input_bytes);
        let wf = self.workflow(id)?.expect("caller loaded it");
        if !wf.tasks[i].input_data.contains_key("items") {
            let Some(expression) = wf.tasks[i].workflow_task.extra.get("items").cloned() else { return Ok(Ok(None)) };
            let input_bytes = size::map_within(&wf.tasks[i].input_data, cap.bytes).unwrap_or(cap.bytes);
            let room = cap.bytes.saturating_sub(input_bytes + 8);
            let Ok(items) = expr::resolve_within(&expression, &WorkflowRoots { wf }, room) else {
                let what = format_args!("the input of DO_WHILE '{}' with its items", wf.tasks[i].reference_task_name);
                return Ok(Err(cap.breach(what)));
            };
            let bytes = size::value_within(&items, usize::MAX).unwrap_or(0);
            wf.tasks[i].input_data.insert("items".into(), items);
            self.spend(bytes);
        }
        let wf = self.workflow(id)?.expect("caller loaded it");
        Ok(match wf.tasks[i].input_data.get("items") {
            Some(Value::Array(items)) if items.len() > usize::try_from(max_iterations).unwrap_or(usize::MAX) => {
                let what = format_args!("DO_WHILE over {} items", items.len());
                Err(Limits::breach(what, "maxDoWhileIterations", max_iterations))
            }
            Some(Value::Array(items)) => Ok(Some(items.len())),
            Some(other) => Err(format!("DO_WHILE items: must be a list, got {}", json_type(other))),
            None => Ok(None),
        })
    }

    /// Forgets a DO_WHILE's iterations before `keep_from` (its `keepLastN`): their tasks leave the workflow's task
    /// list (and the task index) and their outputs the loop's output.
    fn forget_iterations(&mut self, id: &str, li: usize, keep_from: u32) -> Result<(), StateError> {
        let wf = self.workflow(id)?.expect("caller loaded it");
        let def = std::sync::Arc::clone(&wf.workflow_definition);
        let index = DefIndex::new(&def);
        let loop_task = &wf.tasks[li];
        let loop_seq = loop_task.seq;
        let Some(first) = loop_task.workflow_task.loop_over.first() else { return Ok(()) };
        let body_refs = collect_refs(&loop_task.workflow_task.loop_over);
        // The first task of iteration `keep_from`: the loop's tasks before it belong to earlier iterations.
        let Some(boundary) = wf
            .tasks
            .iter()
            .filter(|t| t.seq > loop_seq && t.iteration == keep_from)
            .filter(|t| t.workflow_task.task_reference_name == first.task_reference_name)
            .map(|t| t.seq)
            .min()
        else {
            return Ok(());
        };
        let mut forgotten = Vec::new();
        wf.tasks.retain(|t| {
            let reference = &t.workflow_task.task_reference_name;
            // A body step, or a task a FORK_JOIN_DYNAMIC of the body made up (its reference is in no definition).
            let of_this_loop = body_refs.contains(reference) || (t.iteration > 0 && index.step(reference).is_none());
            let forget = t.seq > loop_seq && t.seq < boundary && t.status.is_terminal() && of_this_loop;
            if forget {
                forgotten.push(t.task_id.clone());
            }
            !forget
        });
        let loop_task = &mut wf.tasks[li];
        loop_task.output_data.retain(|key, _| key.parse::<u32>().map_or(true, |n| n >= keep_from));
        self.forgotten_tasks.extend(forgotten);
        Ok(())
    }

    /// Leaves task `i` waiting for the leader to evaluate its code, in evaluation round `round`.
    fn await_evaluation(&mut self, id: &str, i: usize, round: u32) -> Result<(), StateError> {
        let now = self.now_ms;
        let wf = self.workflow(id)?.expect("caller loaded it");
        let t = &mut wf.tasks[i];
        t.awaiting_evaluation = round.max(1);
        if t.start_time == 0 {
            t.start_time = now;
        }
        t.update_time = now;
        Ok(())
    }

    /// A DO_WHILE's condition after iteration `iteration` was evaluated: start the next iteration, complete the loop,
    /// or fail it (the condition failed, or the loop reached [`Limits::max_do_while_iterations`]).
    pub(crate) fn loop_condition_known(
        &mut self,
        id: &str,
        li: usize,
        iteration: u32,
        verdict: Result<bool, String>,
    ) -> Result<(), StateError> {
        let now = self.now_ms;
        let max_iterations = self.limits.max_do_while_iterations;
        let wf = self.workflow(id)?.expect("caller loaded it");
        let def = std::sync::Arc::clone(&wf.workflow_definition);
        let index = DefIndex::new(&def);
        let loop_task = &mut wf.tasks[li];
        loop_task.update_time = now;
        // A loop over items ends after the last one, whatever its condition says.
        let items = match loop_task.input_data.get("items") {
            Some(Value::Array(items)) => Some(items.len()),
            _ => None,
        };
        let verdict =
            verdict.map(|more| more && items.is_none_or(|n| usize::try_from(iteration).unwrap_or(usize::MAX) < n));
        match verdict {
            Ok(true) if iteration >= max_iterations => {
                loop_task.status = TaskStatus::Failed;
                loop_task.reason_for_incompletion = Some(Limits::breach(
                    "DO_WHILE asked for another iteration",
                    "maxDoWhileIterations",
                    max_iterations,
                ));
                loop_task.end_time = now;
            }
            Ok(true) => {
                let body = loop_task.workflow_task.loop_over.clone();
                loop_task.output_data.insert("iteration".into(), json!(iteration + 1));
                if items.is_some() {
                    set_loop_item(loop_task, iteration);
                }
                let keep_last = keep_last_n(loop_task);
                if let Some(first) = body.first() {
                    self.schedule_step(id, first, iteration + 1, &index)?;
                }
                // keepLastN: the iteration just started and the N - 1 before it stay.
                if let Some(keep) = keep_last.filter(|keep| iteration + 1 > *keep) {
                    self.forget_iterations(id, li, iteration + 2 - keep)?;
                }
            }
            Ok(false) => {
                loop_task.status = TaskStatus::Completed;
                loop_task.end_time = now;
            }
            Err(e) => {
                loop_task.status = TaskStatus::Failed;
                loop_task.reason_for_incompletion = Some(format!("loopCondition failed: {e}"));
                loop_task.end_time = now;
            }
        }
        Ok(())
    }

    /// A SWITCH or DECISION task's case is known (or its expression failed): complete (or fail) the task; the
    /// decider then schedules the chosen branch.
    pub(crate) fn switch_case_known(
        &mut self,
        id: &str,
        i: usize,
        case: Result<String, String>,
    ) -> Result<(), StateError> {
        let now = self.now_ms;
        let wf = self.workflow(id)?.expect("caller loaded it");
        let t = &mut wf.tasks[i];
        if t.start_time == 0 {
            t.start_time = now;
        }
        t.update_time = now;
        t.end_time = now;
        match case {
            Ok(case) if t.task_type == "DECISION" => {
                t.output_data = single("caseOutput", json!([case]));
                t.status = TaskStatus::Completed;
            }
            Ok(case) => {
                let mut out = single("evaluationResult", json!([case]));
                out.insert("selectedCase".into(), json!(case));
                t.output_data = out;
                t.status = TaskStatus::Completed;
            }
            Err(reason) => {
                t.output_data = Map::new();
                t.status = TaskStatus::Failed;
                t.reason_for_incompletion = Some(reason);
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ scheduling

    /// Creates the task execution of a step and queues it (workers' tasks) or leaves it for the engine (system).
    pub fn schedule_step(
        &mut self,
        id: &str,
        step: &WorkflowTask,
        iteration: u32,
        index: &DefIndex<'_>,
    ) -> Result<(), StateError> {
        let now = self.now_ms;
        let wf = self.workflow(id)?.expect("caller loaded it");
        // A step skipped ahead of time (skip-task API) is passed over: the workflow carries on after it.
        let full_ref = format!("{}{}", step.task_reference_name, iteration_suffix(iteration));
        if let Some(k) = wf
            .tasks
            .iter()
            .position(|t| t.reference_task_name == full_ref && t.status == TaskStatus::Skipped && !t.executed)
        {
            wf.tasks[k].executed = true;
            let skipped = wf.tasks[k].clone();
            return self.after_success(id, &skipped, index);
        }
        let mut step = step.clone();
        let mut task_type = match step.task_type.as_str() {
            "SIMPLE" => step.name.clone(),
            "FORK_JOIN" | "FORK" => "FORK".to_string(),
            other => other.to_string(),
        };
        let cap = self.cap("maxTaskInputBytes", self.limits.max_task_input_bytes);
        let wf = self.workflow(id)?.expect("caller loaded it");
        let Ok(input) = expr::resolve_map_within(&step.input_parameters, &WorkflowRoots { wf }, cap.bytes) else {
            let reason = cap.breach(format_args!("the input of task '{full_ref}'"));
            return self.fail_unscheduled(id, &step, iteration, Map::new(), task_type, reason);
        };
        if let Some(reason) = too_deep("the resolved input", &input) {
            // Kept empty: the input is what cannot be stored.
            return self.fail_unscheduled(id, &step, iteration, Map::new(), task_type, reason);
        }
        if step.task_type == "DYNAMIC" {
            let param = step.extra_str("dynamicTaskNameParam").unwrap_or_default();
            match input.get(&param).and_then(Value::as_str) {
                Some(name) => {
                    step.name = name.to_string();
                    task_type = name.to_string();
                }
                None => {
                    let reason = format!("DYNAMIC task: input '{param}' does not name a task definition");
                    return self.fail_unscheduled(id, &step, iteration, input, "DYNAMIC".into(), reason);
                }
            }
        }
        let mut input = input;
        if !is_system_type(&task_type) {
            if let Some(def) = self.task_def(&step.name)?.or_else(|| step.embedded_task_def()) {
                let mut defaulted = false;
                for (k, v) in &def.input_template {
                    input.entry(k.clone()).or_insert_with(|| {
                        defaulted = true;
                        v.clone()
                    });
                }
                // A task definition's inputTemplate can nest deeper than the limit (its JSON allows 128 levels).
                if let Some(reason) = defaulted.then(|| too_deep("the input with its template", &input)).flatten() {
                    return self.fail_unscheduled(id, &step, iteration, Map::new(), task_type, reason);
                }
            }
        }
        let what = format_args!("the input of task '{full_ref}'");
        if let Some(reason) = self.map_refusal(what, &input, "maxTaskInputBytes", self.limits.max_task_input_bytes) {
            return self.fail_unscheduled(id, &step, iteration, Map::new(), task_type, reason);
        }
        let mut task = self.new_task(id, &step, iteration, input, task_type)?;
        if let Some(def) = self.task_def(&step.name)?.or_else(|| step.embedded_task_def()) {
            task.response_timeout_seconds = u64::try_from(def.response_timeout_seconds).unwrap_or(0);
        }
        if let Some(delay) = step.start_delay.filter(|d| *d > 0) {
            task.visible_from = now + u64::try_from(delay).unwrap_or(0) * 1000;
        }
        self.push_task(id, task)
    }

    /// Records a step that could not be scheduled as a task that failed terminally, with `reason`.
    fn fail_unscheduled(
        &mut self,
        id: &str,
        step: &WorkflowTask,
        iteration: u32,
        input: Map<String, Value>,
        task_type: String,
        reason: String,
    ) -> Result<(), StateError> {
        let mut task = self.new_task(id, step, iteration, input, task_type)?;
        task.status = TaskStatus::FailedWithTerminalError;
        task.reason_for_incompletion = Some(reason);
        task.end_time = self.now_ms;
        self.push_task(id, task)
    }

    pub(crate) fn new_task(
        &mut self,
        id: &str,
        step: &WorkflowTask,
        iteration: u32,
        input: Map<String, Value>,
        task_type: String,
    ) -> Result<Task, StateError> {
        let now = self.now_ms;
        let wf = self.workflow(id)?.expect("caller loaded it");
        wf.next_seq = wf.next_seq.max(wf.tasks.len() as u32) + 1;
        let seq = wf.next_seq;
        Ok(Task {
            task_id: derive_id(&format!("{}/task/{seq}", wf.workflow_id)),
            task_type,
            status: TaskStatus::Scheduled,
            reference_task_name: format!("{}{}", step.task_reference_name, iteration_suffix(iteration)),
            task_def_name: step.name.clone(),
            retry_count: 0,
            seq,
            input_data: input,
            output_data: Map::new(),
            workflow_instance_id: wf.workflow_id.clone(),
            workflow_type: wf.workflow_name.clone(),
            scheduled_time: now,
            start_time: 0,
            end_time: 0,
            update_time: now,
            visible_from: 0,
            callback_after_seconds: 0,
            retried_task_id: None,
            retried: false,
            executed: false,
            poll_count: 0,
            worker_id: None,
            poll_id: None,
            reason_for_incompletion: None,
            response_timeout_seconds: 0,
            iteration,
            sub_workflow_id: None,
            workflow_task: std::sync::Arc::new(step.clone()),
            lease_seq: 0,
            finished_by_lease: None,
            logs: Vec::new(),
            awaiting_evaluation: 0,
        })
    }

    pub(crate) fn push_task(&mut self, id: &str, mut task: Task) -> Result<(), StateError> {
        let limit = self.limits.max_tasks_per_workflow;
        let wf = self.workflow(id)?.expect("caller loaded it");
        if wf.tasks.len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
            if wf.status.is_terminal() {
                return Ok(());
            }
            let reason = Limits::breach(
                format_args!("task '{}' not scheduled", task.reference_task_name),
                "maxTasksPerWorkflow",
                limit,
            );
            return self.end_workflow(id.to_string(), WorkflowStatus::Failed, reason, None);
        }
        if task.seq <= wf.tasks.last().map_or(0, |t| t.seq) {
            wf.next_seq = wf.next_seq.max(wf.tasks.len() as u32) + 1;
            task.seq = wf.next_seq;
            task.task_id = derive_id(&format!("{}/task/{}", wf.workflow_id, task.seq));
        }
        wf.tasks.push(task);
        Ok(())
    }

    // ------------------------------------------------------------------ system tasks

    fn run_system_task(&mut self, id: &str, i: usize, index: &DefIndex<'_>) -> Result<(), StateError> {
        let now = self.now_ms;
        let wf = self.workflow(id)?.expect("caller loaded it");
        let task = wf.tasks[i].clone();
        let mut outcome = SystemOutcome::Completed(Map::new());
        match task.task_type.as_str() {
            "SWITCH" | "DECISION" => match switch_case(&task.workflow_task, &task.input_data) {
                Some(case) => return self.switch_case_known(id, i, Ok(case)),
                None => return self.await_evaluation(id, i, 1),
            },
            "FORK" | "NOOP" => {}
            "FORK_JOIN_DYNAMIC" => return self.start_dynamic_fork(id, i, index),
            "TERMINATE" => return self.terminate_task(id, i),
            "JOIN" | "HUMAN" => outcome = SystemOutcome::InProgress(0),
            "WAIT" => {
                outcome = match wait_until(&task.input_data, now) {
                    Ok(until) => SystemOutcome::InProgress(until),
                    Err(e) => SystemOutcome::Failed(e, Map::new()),
                }
            }
            "DO_WHILE" => {
                let body = task.workflow_task.loop_over.clone();
                let items = match self.loop_items(id, i)? {
                    Ok(items) => items,
                    Err(reason) => {
                        let wf = self.workflow(id)?.expect("caller loaded it");
                        let t = &mut wf.tasks[i];
                        (t.start_time, t.end_time, t.update_time) = (now, now, now);
                        t.status = TaskStatus::FailedWithTerminalError;
                        t.reason_for_incompletion = Some(reason);
                        return Ok(());
                    }
                };
                let wf = self.workflow(id)?.expect("caller loaded it");
                let t = &mut wf.tasks[i];
                t.output_data.insert("iteration".into(), json!(1));
                match items {
                    // Nothing to iterate over: the loop is done before its first iteration.
                    Some(0) => outcome = SystemOutcome::Completed(single("iteration", json!(0))),
                    Some(_) => set_loop_item(t, 0),
                    None => {}
                }
                if let (Some(first), false) = (body.first(), items == Some(0)) {
                    t.status = TaskStatus::InProgress;
                    t.start_time = now;
                    t.update_time = now;
                    return self.schedule_step(id, first, 1, index);
                }
            }
            "SET_VARIABLE" => {
                let limit = self.limits.max_workflow_variables_bytes;
                let wf = self.workflow(id)?.expect("caller loaded it");
                // Measured before anything is copied: the variables as they would be, from the current ones not
                // replaced and the task's input (itself at most maxTaskInputBytes).
                let kept = wf.variables.iter().filter(|(k, _)| !task.input_data.contains_key(*k));
                let kept_bytes: usize =
                    kept.map(|(k, v)| size::string_len(k) + 2 + size::value_within(v, usize::MAX).unwrap_or(0)).sum();
                let input_bytes = size::map_within(&task.input_data, usize::MAX).unwrap_or(usize::MAX);
                if kept_bytes.saturating_add(input_bytes) > Limits::bytes(limit) {
                    let what = format_args!("the workflow's variables with those of '{}'", task.reference_task_name);
                    let reason = Limits::breach(
                        format_args!("{what} are over {limit} bytes"),
                        "maxWorkflowVariablesBytes",
                        limit,
                    );
                    outcome = SystemOutcome::FailedTerminally(reason);
                } else {
                    for (k, v) in &task.input_data {
                        wf.variables.insert(k.clone(), v.clone());
                    }
                }
            }
            // User code runs on the leader, outside apply (engine::evaluation); the outcome arrives as a command.
            "INLINE" | "JSON_JQ_TRANSFORM" => return self.await_evaluation(id, i, 1),
            "SUB_WORKFLOW" | "START_WORKFLOW" => return self.start_child(id, i),
            other => {
                outcome = SystemOutcome::Failed(format!("task type {other} is not supported"), Map::new());
            }
        }
        let wf = self.workflow(id)?.expect("caller loaded it");
        let t = &mut wf.tasks[i];
        t.start_time = now;
        t.update_time = now;
        match outcome {
            SystemOutcome::Completed(out) => {
                t.output_data = out;
                t.status = TaskStatus::Completed;
                t.end_time = now;
            }
            SystemOutcome::InProgress(until) => {
                t.status = TaskStatus::InProgress;
                t.visible_from = until;
            }
            SystemOutcome::Failed(reason, out) => {
                t.output_data = out;
                t.status = TaskStatus::Failed;
                t.reason_for_incompletion = Some(reason);
                t.end_time = now;
            }
            SystemOutcome::FailedTerminally(reason) => {
                t.output_data = Map::new();
                t.status = TaskStatus::FailedWithTerminalError;
                t.reason_for_incompletion = Some(reason);
                t.end_time = now;
            }
        }
        Ok(())
    }

    fn terminate_task(&mut self, id: &str, i: usize) -> Result<(), StateError> {
        let now = self.now_ms;
        let limit = self.limits.max_workflow_output_bytes;
        let wf = self.workflow(id)?.expect("caller loaded it");
        let task = wf.tasks[i].clone();
        let status = match task.input_data.get("terminationStatus").and_then(Value::as_str) {
            Some("FAILED") => WorkflowStatus::Failed,
            Some("TERMINATED") => WorkflowStatus::Terminated,
            _ => WorkflowStatus::Completed,
        };
        let reason = match task.input_data.get("terminationReason").and_then(Value::as_str) {
            Some(r) if !r.is_empty() => r.to_string(),
            _ => format!("Workflow is {} by TERMINATE task: {}", status.as_str(), task.task_id),
        };
        let output = match task.input_data.get("workflowOutput") {
            Some(Value::Object(m)) => m.clone(),
            Some(other) => single("output", other.clone()),
            None => Map::new(),
        };
        // Copied from the task's input (at most maxTaskInputBytes); it becomes the workflow's output too.
        let (status, reason, output) = match size::map_within(&output, Limits::bytes(limit)) {
            Some(_) => (status, reason, output),
            None => {
                let what =
                    format_args!("the workflow's output from '{}' is over {limit} bytes", task.reference_task_name);
                (WorkflowStatus::Failed, Limits::breach(what, "maxWorkflowOutputBytes", limit), Map::new())
            }
        };
        let t = &mut wf.tasks[i];
        t.status = TaskStatus::Completed;
        t.output_data = output.clone();
        t.start_time = now;
        t.end_time = now;
        t.update_time = now;
        t.executed = true;
        self.end_workflow(id.to_string(), status, reason, Some(output))
    }

    fn start_dynamic_fork(&mut self, id: &str, i: usize, index: &DefIndex<'_>) -> Result<(), StateError> {
        let now = self.now_ms;
        let max_forked = self.limits.max_dynamic_fork_tasks;
        let wf = self.workflow(id)?.expect("caller loaded it");
        let fork = wf.tasks[i].clone();
        let tasks_param = fork.workflow_task.extra_str("dynamicForkTasksParam").unwrap_or_default();
        let inputs_param = fork.workflow_task.extra_str("dynamicForkTasksInputParamName").unwrap_or_default();
        let parsed: Result<Vec<WorkflowTask>, String> = match fork.input_data.get(&tasks_param) {
            // Counted before parsing: the list was built by an earlier task and may be huge.
            Some(Value::Array(list)) if list.len() > usize::try_from(max_forked).unwrap_or(usize::MAX) => {
                let what = format_args!("{} tasks to fork", list.len());
                Err(Limits::breach(what, "maxDynamicForkTasks", max_forked))
            }
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("{tasks_param}: {e}")),
            None => Err(format!("input '{tasks_param}' (dynamicForkTasksParam) is missing")),
        };
        let inputs = fork.input_data.get(&inputs_param).cloned().unwrap_or(Value::Null);
        let t = &mut wf.tasks[i];
        t.start_time = now;
        t.end_time = now;
        t.update_time = now;
        let steps = match parsed {
            Ok(steps) => steps,
            Err(reason) => {
                t.status = TaskStatus::FailedWithTerminalError;
                t.reason_for_incompletion = Some(format!("FORK_JOIN_DYNAMIC: {reason}"));
                return Ok(());
            }
        };
        let refs: Vec<String> = steps.iter().map(|s| s.task_reference_name.clone()).collect();
        t.status = TaskStatus::Completed;
        t.executed = true;
        t.output_data = single("forkedTasks", json!(refs));
        for step in &steps {
            let mut step = step.clone();
            if let Some(Value::Object(given)) = inputs.get(&step.task_reference_name) {
                step.input_parameters = given.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            }
            self.schedule_step(id, &step, fork.iteration, index)?;
        }
        // The JOIN that follows waits for every forked task.
        if let Next::Step(next) = index.next_after(&fork.workflow_task.task_reference_name) {
            let join = index.step(&next).cloned().expect("indexed");
            self.schedule_step(id, &join, fork.iteration, index)?;
            let wf = self.workflow(id)?.expect("caller loaded it");
            if let Some(last) = wf.tasks.last_mut() {
                last.input_data.insert("joinOn".into(), json!(refs));
            }
        }
        Ok(())
    }

    fn start_child(&mut self, id: &str, i: usize) -> Result<(), StateError> {
        let now = self.now_ms;
        let wf = self.workflow(id)?.expect("caller loaded it");
        let task = wf.tasks[i].clone();
        let (priority, correlation_id) = (wf.priority, wf.correlation_id.clone());
        let fire_and_forget = task.task_type == "START_WORKFLOW";
        let (name, version, inline, input, corr) = if fire_and_forget {
            let req = task.input_data.get("startWorkflow").cloned().unwrap_or(Value::Null);
            (
                req.get("name").and_then(Value::as_str).map(str::to_string),
                req.get("version").and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok()),
                req.get("workflowDefinition").cloned(),
                req.get("input").and_then(Value::as_object).cloned().unwrap_or_default(),
                req.get("correlationId").and_then(Value::as_str).map(str::to_string).or(correlation_id),
            )
        } else {
            let param = task.workflow_task.extra.get("subWorkflowParam").cloned().unwrap_or(Value::Null);
            // The name and version may be expressions, resolved now (Conductor's SubWorkflowTaskMapper); an inline
            // definition's own expressions are the child's, left alone.
            let roots = WorkflowRoots { wf };
            let name = param.get("name").map(|n| expr::resolve(n, &roots));
            let version = param.get("version").map(|v| expr::resolve(v, &roots));
            let version = match version {
                Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
                Some(v) => v.as_u64(),
                None => None,
            };
            (
                name.as_ref().and_then(Value::as_str).map(str::to_string),
                version.and_then(|v| u32::try_from(v).ok()),
                param.get("workflowDefinition").cloned(),
                task.input_data.clone(),
                correlation_id,
            )
        };
        let def = match inline {
            Some(Value::Object(_)) => serde_json::from_value::<WorkflowDef>(inline.unwrap_or(Value::Null)).ok(),
            _ => match &name {
                Some(n) => self.workflow_def(n, version)?,
                None => None,
            },
        };
        let depth = self.workflow(id)?.expect("caller loaded it").start_depth.saturating_add(1);
        let mut refused = self.start_refusal(depth);
        if refused.is_none() {
            // The child's input was counted as this task's input; measured again against the workflow limit.
            let limit = self.limits.max_workflow_input_bytes;
            refused = match size::map_within(&input, Limits::bytes(limit)) {
                Some(_) => None,
                None => Some(Limits::breach("its input is larger", "maxWorkflowInputBytes", limit)),
            };
        }
        let wf = self.workflow(id)?.expect("caller loaded it");
        let t = &mut wf.tasks[i];
        t.start_time = now;
        t.update_time = now;
        let Some(def) = def else {
            t.status = TaskStatus::FailedWithTerminalError;
            t.reason_for_incompletion =
                Some(format!("{}: workflow definition {:?} version {:?} not found", t.task_type, name, version));
            t.end_time = now;
            return Ok(());
        };
        if let Some(reason) = refused {
            t.status = TaskStatus::FailedWithTerminalError;
            t.reason_for_incompletion = Some(format!("{}: workflow '{}' not started: {reason}", t.task_type, def.name));
            t.end_time = now;
            return Ok(());
        }
        let child_id = derive_id(&format!("{}/child/{}", task.workflow_instance_id, task.task_id));
        t.sub_workflow_id = Some(child_id.clone());
        t.output_data.insert("subWorkflowId".into(), json!(child_id));
        if fire_and_forget {
            t.status = TaskStatus::Completed;
            t.output_data = single("workflowId", json!(child_id));
            t.end_time = now;
        } else {
            t.status = TaskStatus::InProgress;
        }
        let parent = (!fire_and_forget).then(|| (id.to_string(), task.task_id.clone()));
        let mut child = new_workflow(child_id.clone(), def, input, corr, priority, parent, now);
        child.start_depth = depth;
        self.insert(child);
        self.queue_start(&child_id);
        Ok(())
    }

    /// Why a workflow at start depth `depth` may not be started by this command, if it may not: the chain is too
    /// long ([`Limits::max_start_depth`]) or the command started too many ([`Limits::max_starts_per_command`]).
    fn start_refusal(&self, depth: u32) -> Option<String> {
        if depth > self.limits.max_start_depth {
            return Some(Limits::breach("a chain of workflow starts", "maxStartDepth", self.limits.max_start_depth));
        }
        if self.starts >= self.limits.max_starts_per_command {
            let limit = self.limits.max_starts_per_command;
            return Some(Limits::breach("too many workflows started by one command", "maxStartsPerCommand", limit));
        }
        None
    }

    /// Counts a start against this command's bound. Call before [`Exec::start`] or [`Exec::queue_start`].
    pub fn count_start(&mut self) {
        self.starts = self.starts.saturating_add(1);
    }

    /// Queues a workflow created by this command to be started once the current decision is done.
    fn queue_start(&mut self, id: &str) {
        self.count_start();
        self.to_start.push_back(id.to_string());
    }

    /// Schedules the first step of a new workflow (or completes it when it has none).
    pub fn start(&mut self, id: &str) -> Result<(), StateError> {
        let wf = self.workflow(id)?.expect("caller inserted it");
        let def = std::sync::Arc::clone(&wf.workflow_definition);
        let index = DefIndex::new(&def);
        if let Some(first) = wf.workflow_definition.tasks.first().cloned() {
            self.schedule_step(id, &first, 0, &index)?;
        }
        self.decide(id)
    }

    // ------------------------------------------------------------------ ending

    /// Ends a workflow: cancels what is pending, sets output and reason, tells the parent, starts the failure
    /// workflow.
    pub fn end_workflow(
        &mut self,
        id: String,
        status: WorkflowStatus,
        reason: String,
        output: Option<Map<String, Value>>,
    ) -> Result<(), StateError> {
        let now = self.now_ms;
        let wf = self.workflow(&id)?.expect("caller loaded it");
        if wf.status.is_terminal() {
            return Ok(());
        }
        wf.status = status;
        wf.end_time = now;
        wf.update_time = now;
        if !reason.is_empty() {
            wf.reason_for_incompletion = Some(reason.clone());
        }
        if let Some(output) = output {
            wf.output = output;
        }
        let mut children = Vec::new();
        for t in wf.tasks.iter_mut().filter(|t| !t.status.is_terminal()) {
            t.status = TaskStatus::Canceled;
            t.awaiting_evaluation = 0;
            t.end_time = now;
            t.update_time = now;
            t.executed = true;
            if t.task_type == "SUB_WORKFLOW" {
                children.extend(t.sub_workflow_id.clone());
            }
        }
        let parent = wf.parent_workflow_id.clone().zip(wf.parent_workflow_task_id.clone());
        let failure_workflow = wf.workflow_definition.failure_workflow.clone().filter(|s| !s.is_empty());
        let snapshot = wf.clone();
        // A terminated or failed parent terminates its running children.
        if status != WorkflowStatus::Completed {
            for child in children {
                let reason = format!("parent workflow {id} ended: {}", status.as_str());
                if self.workflow(&child)?.is_some() {
                    self.end_workflow(child, WorkflowStatus::Terminated, reason, None)?;
                }
            }
        }
        if let Some((parent_id, parent_task)) = parent {
            self.child_ended(&parent_id, &parent_task, &snapshot)?;
        }
        let by_operator = std::mem::take(&mut self.ending_by_operator);
        if !by_operator
            && matches!(status, WorkflowStatus::Failed | WorkflowStatus::TimedOut | WorkflowStatus::Terminated)
        {
            if let Some(name) = failure_workflow {
                self.start_failure_workflow(&snapshot, &name, status)?;
            }
        }
        Ok(())
    }

    /// Ends a workflow at an operator's request (terminate API): like [`Exec::end_workflow`], but Conductor starts
    /// no failure workflow for it.
    pub fn terminate_by_operator(&mut self, id: &str, reason: &str) -> Result<(), StateError> {
        self.ending_by_operator = true;
        let result = self.end_workflow(id.to_string(), WorkflowStatus::Terminated, reason.to_string(), None);
        self.ending_by_operator = false;
        result
    }

    fn child_ended(&mut self, parent_id: &str, task_id: &str, child: &Workflow) -> Result<(), StateError> {
        let now = self.now_ms;
        let cap = self.cap("maxTaskOutputBytes", self.limits.max_task_output_bytes);
        let Some(parent) = self.workflow(parent_id)? else { return Ok(()) };
        let Some(i) = parent.task_index(task_id) else { return Ok(()) };
        let t = &mut parent.tasks[i];
        if t.status.is_terminal() {
            return Ok(());
        }
        t.end_time = now;
        t.update_time = now;
        // The child's output becomes the task's: measured before it is copied.
        let fits = size::map_within(&child.output, cap.bytes.saturating_sub(64 + child.workflow_id.len()));
        if fits.is_none() {
            t.status = TaskStatus::FailedWithTerminalError;
            t.reason_for_incompletion =
                Some(cap.breach(format_args!("the output of task '{}'", t.reference_task_name)));
            self.schedule_decide(parent_id);
            return Ok(());
        }
        t.output_data.insert("subWorkflowId".into(), json!(child.workflow_id));
        for (k, v) in &child.output {
            t.output_data.insert(k.clone(), v.clone());
        }
        t.status = match child.status {
            WorkflowStatus::Completed => TaskStatus::Completed,
            WorkflowStatus::Terminated => TaskStatus::Canceled,
            WorkflowStatus::TimedOut => TaskStatus::TimedOut,
            _ => TaskStatus::Failed,
        };
        self.spend(fits.unwrap_or(0));
        let Some(parent) = self.workflow(parent_id)? else { return Ok(()) };
        let t = &mut parent.tasks[i];
        if child.status != WorkflowStatus::Completed {
            t.reason_for_incompletion = Some(format!(
                "Sub workflow {}.{}/{} failure reason: {}",
                child.workflow_name,
                child.workflow_version,
                child.workflow_id,
                child.reason_for_incompletion.clone().unwrap_or_default()
            ));
        }
        self.schedule_decide(parent_id);
        Ok(())
    }

    fn start_failure_workflow(
        &mut self,
        failed: &Workflow,
        name: &str,
        status: WorkflowStatus,
    ) -> Result<(), StateError> {
        let Some(def) = self.workflow_def(name, None)? else { return Ok(()) };
        let failed_task = failed.tasks.iter().rev().find(|t| {
            matches!(t.status, TaskStatus::Failed | TaskStatus::FailedWithTerminalError | TaskStatus::TimedOut)
        });
        let mut input = failed.input.clone();
        input.insert("workflowId".into(), json!(failed.workflow_id));
        input.insert("reason".into(), json!(failed.reason_for_incompletion.clone().unwrap_or_default()));
        input.insert("failureStatus".into(), json!(status.as_str()));
        if let Some(t) = failed_task {
            input.insert("failureTaskId".into(), json!(t.task_id));
        }
        // The failed workflow whole when it fits the input limit, else without its tasks (measured, not built).
        let input_limit = self.limits.max_workflow_input_bytes;
        let failed_workflow = if size::record_within(failed, Limits::bytes(input_limit) / 2).is_some() {
            serde_json::to_value(failed)
        } else {
            serde_json::to_value(Workflow { tasks: Vec::new(), ..failed.clone() })
        };
        input.insert("failedWorkflow".into(), failed_workflow.unwrap_or(Value::Null));
        let id = derive_id(&format!("{}/failure-workflow", failed.workflow_id));
        // A failure workflow's input holds the failed workflow, whose own values may already nest close to
        // MAX_VALUE_DEPTH, hence the looser bound; a chain of failing failure workflows nests a few levels more
        // each time and ends at it, well before the state machine could no longer read the input back.
        if self.exists(&id)? || map_nests_deeper_than(&input, 4 * MAX_VALUE_DEPTH) {
            return Ok(());
        }
        let depth = failed.start_depth.saturating_add(1);
        let mut refused = self.start_refusal(depth);
        if refused.is_none() {
            refused = self.map_refusal("its input", &input, "maxWorkflowInputBytes", input_limit);
        }
        if let Some(reason) = refused {
            if let Some(failed_wf) = self.workflow(&failed.workflow_id)? {
                let said = failed_wf.reason_for_incompletion.take().unwrap_or_default();
                failed_wf.reason_for_incompletion =
                    Some(format!("{said} (failure workflow '{name}' not started: {reason})").trim_start().to_string());
            }
            return Ok(());
        }
        let mut wf =
            new_workflow(id.clone(), def, input, failed.correlation_id.clone(), failed.priority, None, self.now_ms);
        wf.start_depth = depth;
        self.insert(wf);
        if let Some(failed_wf) = self.workflow(&failed.workflow_id)? {
            failed_wf.failure_workflow_id = Some(id.clone());
            failed_wf.output.insert("conductor.failure_workflow".into(), json!(id));
        }
        self.queue_start(&id);
        Ok(())
    }
}

enum SystemOutcome {
    Completed(Map<String, Value>),
    /// In progress until this time (0: until updated or completed by the engine).
    InProgress(u64),
    Failed(String, Map<String, Value>),
    /// Failed, never to be retried, with no output.
    FailedTerminally(String),
}

fn single(key: &str, value: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(key.to_string(), value);
    m
}

/// A DO_WHILE over items, about to run the item at `index` (0-based): `loopItem` and `loopIndex` in its output.
fn set_loop_item(loop_task: &mut Task, index: u32) {
    let item = match loop_task.input_data.get("items") {
        Some(Value::Array(items)) => items.get(usize::try_from(index).unwrap_or(usize::MAX)).cloned(),
        _ => None,
    };
    loop_task.output_data.insert("loopItem".into(), item.unwrap_or(Value::Null));
    loop_task.output_data.insert("loopIndex".into(), json!(index));
}

/// A DO_WHILE's `keepLastN` input (a positive number, or a string of one).
fn keep_last_n(loop_task: &Task) -> Option<u32> {
    let keep = match loop_task.input_data.get("keepLastN")? {
        Value::String(text) => text.trim().parse::<u64>().ok()?,
        value => value.as_u64()?,
    };
    u32::try_from(keep).ok().filter(|keep| *keep > 0)
}

/// The JSON type of a value, for messages.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// `__N` for loop iteration N, nothing outside loops.
pub fn iteration_suffix(iteration: u32) -> String {
    if iteration == 0 {
        String::new()
    } else {
        format!("__{iteration}")
    }
}

fn collect_refs(list: &[WorkflowTask]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack: Vec<&WorkflowTask> = list.iter().collect();
    while let Some(t) = stack.pop() {
        out.insert(t.task_reference_name.clone());
        stack.extend(t.children().map(|(_, child)| child));
    }
    out
}

/// Task types the engine runs itself; the rest go to workers.
pub fn is_system_type(task_type: &str) -> bool {
    matches!(
        task_type,
        "SWITCH"
            | "DECISION"
            | "FORK"
            | "FORK_JOIN_DYNAMIC"
            | "JOIN"
            | "DO_WHILE"
            | "SUB_WORKFLOW"
            | "START_WORKFLOW"
            | "WAIT"
            | "HUMAN"
            | "SET_VARIABLE"
            | "TERMINATE"
            | "INLINE"
            | "JSON_JQ_TRANSFORM"
            | "NOOP"
    )
}

fn is_engine_task(task: &Task) -> bool {
    is_system_type(&task.task_type)
}

/// The case a SWITCH/DECISION picks (as a string) when no code decides it (`value-param`, `caseValueParam`);
/// `None` when a JavaScript expression does, which the leader evaluates (engine::evaluation).
fn switch_case(step: &WorkflowTask, input: &Map<String, Value>) -> Option<String> {
    let evaluator = step.extra_str("evaluatorType");
    let expression = step.extra_str("expression").or_else(|| step.extra_str("caseExpression"));
    let value = match (evaluator.as_deref(), expression) {
        (Some("javascript") | Some("graaljs"), Some(_)) => return None,
        (None, Some(_)) if step.task_type == "DECISION" => return None,
        (Some("value-param"), Some(param)) => input.get(&param).cloned().unwrap_or(Value::Null),
        _ => {
            let param = step.extra_str("caseValueParam").unwrap_or_default();
            input.get(&param).cloned().unwrap_or(Value::Null)
        }
    };
    Some(script::switch_case(&value))
}

/// When a WAIT task ends: `duration` ("10s", "2m", "1h 30m", "1d") or `until` ("2024-01-31 10:00 UTC" style,
/// RFC 3339); 0 when it waits for a signal.
fn wait_until(input: &Map<String, Value>, now_ms: u64) -> Result<u64, String> {
    if let Some(d) = input.get("duration").and_then(Value::as_str) {
        return parse_duration_ms(d).map(|ms| now_ms + ms).ok_or_else(|| format!("WAIT: bad duration '{d}'"));
    }
    if let Some(u) = input.get("until").and_then(Value::as_str) {
        return parse_until_ms(u).ok_or_else(|| format!("WAIT: bad until '{u}'"));
    }
    Ok(0)
}

/// Parses Conductor's durations: a sequence of `<n><unit>` with units d, h, m, s (and the long forms).
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut number = String::new();
    let mut unit = String::new();
    let mut seen = false;
    let flush = |number: &mut String, unit: &mut String, total: &mut u64| -> Option<()> {
        if number.is_empty() {
            return if unit.is_empty() { Some(()) } else { None };
        }
        let n: u64 = number.parse().ok()?;
        let ms = match unit.trim().to_ascii_lowercase().as_str() {
            "d" | "day" | "days" => 86_400_000,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
            "s" | "" | "sec" | "secs" | "second" | "seconds" => 1000,
            _ => return None,
        };
        *total += n * ms;
        number.clear();
        unit.clear();
        Some(())
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !unit.trim().is_empty() {
                flush(&mut number, &mut unit, &mut total)?;
            }
            number.push(c);
            seen = true;
        } else if c.is_alphabetic() {
            unit.push(c);
        } else if c.is_whitespace() {
            if !unit.is_empty() {
                flush(&mut number, &mut unit, &mut total)?;
            }
        } else {
            return None;
        }
    }
    flush(&mut number, &mut unit, &mut total)?;
    seen.then_some(total)
}

/// Parses an absolute time: `yyyy-MM-dd HH:mm`, `yyyy-MM-dd HH:mm z` (UTC only), `yyyy-MM-dd`, or RFC 3339.
fn parse_until_ms(text: &str) -> Option<u64> {
    let t = text.trim().trim_end_matches(" UTC").trim_end_matches(" GMT").trim_end_matches('Z');
    let (date, time) = match t.split_once(['T', ' ']) {
        Some((d, tm)) => (d, tm),
        None => (t, "00:00"),
    };
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, day) = (d.next()??, d.next()??, d.next()??);
    let mut tm = time.split(':').map(|p| p.split('.').next().and_then(|s| s.parse::<i64>().ok()));
    let (h, mi) = (tm.next()??, tm.next()??);
    let s = tm.next().flatten().unwrap_or(0);
    let days = days_from_civil(y, mo, day)?;
    let secs = days * 86_400 + h * 3600 + mi * 60 + s;
    u64::try_from(secs * 1000).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> Option<i64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The delay before retry number `retry_count + 1`, ms.
pub fn retry_delay_ms(def: &TaskDef, retry_count: u32) -> u64 {
    use super::definitions::RetryLogic;
    let base = u64::try_from(def.retry_delay_seconds.max(0)).unwrap_or(0);
    let factor = u64::try_from(def.backoff_scale_factor.max(1)).unwrap_or(1);
    let secs = match def.retry_logic {
        RetryLogic::Fixed => base,
        RetryLogic::ExponentialBackoff => base.saturating_mul(2u64.saturating_pow(retry_count)),
        RetryLogic::LinearBackoff => base.saturating_mul(factor).saturating_mul(u64::from(retry_count) + 1),
    };
    let capped = match def.max_retry_delay_seconds {
        Some(max) if max > 0 => secs.min(u64::try_from(max).unwrap_or(u64::MAX)),
        _ => secs,
    };
    capped.saturating_mul(1000)
}

/// The document `${workflow.*}` expressions see.
pub fn workflow_root(wf: &Workflow) -> Value {
    json!({
        "workflowId": wf.workflow_id,
        "workflowType": wf.workflow_name,
        "version": wf.workflow_version,
        "status": wf.status.as_str(),
        "input": wf.input,
        "output": wf.output,
        "variables": wf.variables,
        "correlationId": wf.correlation_id,
        "parentWorkflowId": wf.parent_workflow_id,
        "parentWorkflowTaskId": wf.parent_workflow_task_id,
        "reasonForIncompletion": wf.reason_for_incompletion,
        "priority": wf.priority,
        "createTime": wf.create_time,
        "startTime": wf.start_time,
        "taskToDomain": wf.task_to_domain,
        "schemaVersion": 2,
    })
}

/// The document `${ref.*}` expressions see for a task.
pub fn task_root(t: &Task) -> Value {
    json!({
        "taskId": t.task_id,
        "taskType": t.task_type,
        "referenceTaskName": t.reference_task_name,
        "status": t.status.as_str(),
        "input": t.input_data,
        "output": t.output_data,
        "retryCount": t.retry_count,
        "reasonForIncompletion": t.reason_for_incompletion,
        "scheduledTime": t.scheduled_time,
        "startTime": t.start_time,
        "endTime": t.end_time,
        "workerId": t.worker_id,
        "iteration": t.iteration,
        "subWorkflowId": t.sub_workflow_id,
        "pollCount": t.poll_count,
        "taskDefName": t.task_def_name,
        "workflowInstanceId": t.workflow_instance_id,
        "callbackAfterSeconds": t.callback_after_seconds,
    })
}

/// Expression roots of a workflow: `workflow` and each task reference (the latest execution; inside a loop,
/// the reference without its `__N` suffix means the latest iteration).
struct WorkflowRoots<'a> {
    wf: &'a Workflow,
}

impl expr::Roots for WorkflowRoots<'_> {
    fn root(&self, name: &str) -> Option<Value> {
        if name == "workflow" {
            return Some(workflow_root(self.wf));
        }
        self.wf
            .latest_by_ref(name)
            .or_else(|| self.wf.tasks.iter().rev().find(|t| t.workflow_task.task_reference_name == name))
            .map(task_root)
    }
}

/// A workflow's output: its outputParameters resolved, or the last task's output when it has none; at most
/// `cap` bytes.
pub fn workflow_output(wf: &Workflow, cap: usize) -> Result<Map<String, Value>, Oversize> {
    if wf.workflow_definition.output_parameters.is_empty() {
        let output = wf.tasks.last().map(|t| &t.output_data);
        return match output {
            Some(output) if size::map_within(output, cap).is_none() => Err(Oversize),
            Some(output) => Ok(output.clone()),
            None => Ok(Map::new()),
        };
    }
    expr::resolve_map_within(&wf.workflow_definition.output_parameters, &WorkflowRoots { wf }, cap)
}

/// A new RUNNING workflow with nothing scheduled yet.
pub fn new_workflow(
    workflow_id: String,
    def: WorkflowDef,
    mut input: Map<String, Value>,
    correlation_id: Option<String>,
    priority: u32,
    parent: Option<(String, String)>,
    now_ms: u64,
) -> Workflow {
    for (k, v) in &def.input_template {
        input.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let variables = def.variables.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let (parent_workflow_id, parent_workflow_task_id) = match parent {
        Some((w, t)) => (Some(w), Some(t)),
        None => (None, None),
    };
    Workflow {
        workflow_id,
        workflow_name: def.name.clone(),
        workflow_version: u32::try_from(def.version).unwrap_or(1),
        status: WorkflowStatus::Running,
        input,
        output: Map::new(),
        variables,
        correlation_id,
        reason_for_incompletion: None,
        priority,
        task_to_domain: BTreeMap::new(),
        parent_workflow_id,
        parent_workflow_task_id,
        failed_reference_task_names: BTreeSet::new(),
        create_time: now_ms,
        start_time: now_ms,
        update_time: now_ms,
        end_time: 0,
        workflow_definition: std::sync::Arc::new(def),
        tasks: Vec::new(),
        next_seq: 0,
        failure_workflow_id: None,
        next_tick_ms: 0,
        start_depth: 0,
        decision_pending: false,
    }
}
