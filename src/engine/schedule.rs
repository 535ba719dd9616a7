//! Scheduling a step: turning a definition's step into a task execution of the workflow. The step's input is
//! resolved (within its byte limit), a DYNAMIC step picks its task, a task definition's `inputTemplate` fills the
//! gaps, `startDelay` hides the task for a while, and a step that cannot be scheduled is recorded as a task that
//! failed terminally, with the reason.
//!
//! Owns: creating tasks ([`Exec::schedule_step`], [`Exec::new_task`]) and appending them to a workflow within
//! [`Limits::max_tasks_per_workflow`](super::limits::Limits::max_tasks_per_workflow), task ids and reference
//! names with their loop suffix. Must not touch: what follows a task ([`decide`](super::decide)) or running
//! system tasks ([`system_tasks`](super::system_tasks)).

use serde_json::{Map, Value};

use super::decide::DefIndex;
use super::definitions::WorkflowTask;
use super::exec::{derive_id, Exec};
use super::expr;
use super::limits::Limits;
use super::model::{too_deep, Task, TaskStatus, WorkflowStatus};
use super::roots::WorkflowRoots;
use super::system_tasks::is_system_type;
use super::{size, StateError, StateView};

impl<S: StateView> Exec<'_, S> {
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
        let cap = self.cap("maxTaskInputBytes", self.limits().max_task_input_bytes);
        let wf = self.workflow(id)?.expect("caller loaded it");
        // What the resolution copied and built counts against the command's budget, whether or not it fits.
        let Ok((input, charged)) = expr::resolve_map_within(&step.input_parameters, &WorkflowRoots::new(wf), cap.bytes)
        else {
            self.spend(cap.bytes);
            let reason = cap.breach(format_args!("the input of task '{full_ref}'"));
            return self.fail_unscheduled(id, &step, iteration, Map::new(), task_type, reason);
        };
        self.spend(charged);
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
                // The template's defaults count too (the definition is registered, so they are bounded, but they
                // are copied into every task).
                if defaulted {
                    let Some(bytes) = size::map_within(&input, cap.bytes) else {
                        let reason = cap.breach(format_args!("the input of task '{full_ref}' with its template"));
                        return self.fail_unscheduled(id, &step, iteration, Map::new(), task_type, reason);
                    };
                    self.spend(bytes.saturating_sub(charged));
                }
            }
        }
        let mut task = self.new_task(id, &step, iteration, input, task_type)?;
        if let Some(def) = self.task_def(&step.name)?.or_else(|| step.embedded_task_def()) {
            task.response_timeout_seconds = u64::try_from(def.response_timeout_seconds).unwrap_or(0);
        }
        if let Some(delay) = step.start_delay.filter(|d| *d > 0) {
            task.visible_from = now.saturating_add(u64::try_from(delay).unwrap_or(0).saturating_mul(1000));
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

    /// A new SCHEDULED task of workflow `id` for `step` in loop iteration `iteration`, with the workflow's next seq
    /// and an id derived from it; the caller adds it with [`Exec::push_task`].
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

    /// Appends a task to workflow `id` (renumbered when tasks were added since it was made); a workflow that has
    /// [`Limits::max_tasks_per_workflow`] tasks already fails instead.
    pub(crate) fn push_task(&mut self, id: &str, mut task: Task) -> Result<(), StateError> {
        self.count_step();
        let limit = self.limits().max_tasks_per_workflow;
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
}

/// `__N` for loop iteration N, nothing outside loops.
pub fn iteration_suffix(iteration: u32) -> String {
    if iteration == 0 {
        String::new()
    } else {
        format!("__{iteration}")
    }
}
