//! The decider: after every change to a workflow, [`Exec::decide`] works out what runs next. It runs the system
//! tasks waiting for the engine, completes JOINs, acts on each finished task once (what follows a success, a retry
//! or an optional pass after a failure, or the workflow's failure) and completes the workflow when nothing is
//! pending. [`DefIndex`] answers "what follows this step" from the definition.
//!
//! Owns: the order in which the decider looks at a workflow, what follows a step (branches, fork lanes, loop
//! bodies, the next sibling), and the retry-or-fail rule. Must not touch: how a step becomes a task
//! ([`schedule`](super::schedule)), what each system task does ([`system_tasks`](super::system_tasks),
//! [`do_while`](super::do_while)), or how a workflow ends ([`lifecycle`](super::lifecycle)).

use std::collections::HashMap;

use serde_json::Value;

use super::definitions::{WorkflowDef, WorkflowTask};
use super::exec::Exec;
use super::expr::Oversize;
use super::model::{too_deep, Task, TaskStatus, WorkflowStatus};
use super::roots::workflow_output;
use super::system_tasks::is_engine_task;
use super::time::retry_delay_ms;
use super::{StateError, StateView};

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
pub(super) enum Next {
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

    /// What follows the step with this reference name when it has finished.
    pub(super) fn next_after(&self, reference: &str) -> Next {
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

impl<S: StateView> Exec<'_, S> {
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
        loop {
            if self.out_of_steps() {
                // Not a failure: the rest goes on in the next command (a Tick due at once), so that no command
                // does unbounded work and no legitimate workflow fails for being long or wide.
                self.workflow(id)?.expect("loaded above").decision_pending = true;
                return Ok(());
            }
            self.count_step();
            let wf = self.workflow(id)?.expect("loaded above");
            if wf.status != WorkflowStatus::Running {
                return Ok(());
            }
            // 0. A workflow with no tasks yet (just started, restarted or rerun from the start) starts with its
            // first step.
            if wf.tasks.is_empty() {
                if let Some(first) = def.tasks.first() {
                    self.schedule_step(id, first, 0, &index)?;
                    continue;
                }
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
                let cap = self.cap("maxWorkflowOutputBytes", self.limits().max_workflow_output_bytes);
                let wf = self.workflow(id)?.expect("loaded above");
                let (outcome, charged) = match workflow_output(wf, cap.bytes) {
                    Err(Oversize) => (Err(cap.breach("the workflow's output")), cap.bytes),
                    Ok((output, charged)) => match too_deep("the workflow's output", &output) {
                        Some(reason) => (Err(reason), charged),
                        None => (Ok(output), charged),
                    },
                };
                self.spend(charged);
                match outcome {
                    Ok(output) => self.end_workflow(wf_id, WorkflowStatus::Completed, String::new(), Some(output))?,
                    Err(reason) => self.end_workflow(wf_id, WorkflowStatus::Failed, reason, None)?,
                }
            }
            return Ok(());
        }
    }

    /// Acts once on the finished task at `i`: what follows a success, or a failure's retry or consequence.
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
    pub(super) fn after_success(&mut self, id: &str, task: &Task, index: &DefIndex<'_>) -> Result<(), StateError> {
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
            retry.visible_from = self.now_ms.saturating_add(delay_ms);
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
}
