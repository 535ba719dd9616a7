//! The system tasks the engine runs itself: SWITCH and DECISION (unless JavaScript decides the case: see
//! [`evaluation`](super::evaluation)), FORK and its JOIN, FORK_JOIN_DYNAMIC, TERMINATE, SET_VARIABLE, WAIT,
//! HUMAN and NOOP. `Exec::run_system_task` dispatches on the task type; DO_WHILE is in
//! [`do_while`](super::do_while), SUB_WORKFLOW and START_WORKFLOW in [`lifecycle`](super::lifecycle), INLINE and
//! JSON_JQ_TRANSFORM in [`evaluation`](super::evaluation).
//!
//! Owns: which task types are system tasks ([`is_system_type`]) and what each of the above does when the decider
//! reaches it, including when a JOIN completes. Must not touch: what follows the task ([`decide`](super::decide)),
//! or user code (never run in apply).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::decide::{DefIndex, Next};
use super::definitions::WorkflowTask;
use super::do_while::set_loop_item;
use super::exec::Exec;
use super::limits::Limits;
use super::model::{Task, TaskStatus, WorkflowStatus};
use super::schedule::iteration_suffix;
use super::time::{parse_duration_ms, parse_until_ms};
use super::{script, size, StateError, StateView};

/// What running a system task came to.
enum SystemOutcome {
    /// Completed with this output.
    Completed(Map<String, Value>),
    /// In progress until this time (0: until updated or completed by the engine).
    InProgress(u64),
    /// Failed (retried as its definition says), with this reason and output.
    Failed(String, Map<String, Value>),
    /// Failed, never to be retried, with no output.
    FailedTerminally(String),
}

impl<S: StateView> Exec<'_, S> {
    /// Runs the system task at `i`, scheduled and waiting for the engine, as its type says.
    pub(super) fn run_system_task(&mut self, id: &str, i: usize, index: &DefIndex<'_>) -> Result<(), StateError> {
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
                let limit = self.limits().max_workflow_variables_bytes;
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

    /// FORK_JOIN_DYNAMIC: schedules the tasks its input lists, each with its own input, and the JOIN after it to
    /// wait for them all.
    fn start_dynamic_fork(&mut self, id: &str, i: usize, index: &DefIndex<'_>) -> Result<(), StateError> {
        let now = self.now_ms;
        let max_forked = self.limits().max_dynamic_fork_tasks;
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

    /// Completes (or fails) a JOIN whose joined tasks are done. True when one moved.
    pub(super) fn progress_joins(&mut self, id: &str) -> Result<bool, StateError> {
        let now = self.now_ms;
        let cap = self.cap("maxTaskOutputBytes", self.limits().max_task_output_bytes);
        let wf = self.workflow(id)?.expect("caller loaded it");
        let joins: Vec<usize> = (0..wf.tasks.len())
            .filter(|&i| wf.tasks[i].status == TaskStatus::InProgress && wf.tasks[i].task_type == "JOIN")
            .collect();
        if joins.is_empty() {
            return Ok(false);
        }
        // Each reference's latest execution, found once: a JOIN of thousands of lanes looks each one up.
        let mut latest: HashMap<&str, usize> = HashMap::with_capacity(wf.tasks.len());
        for (i, t) in wf.tasks.iter().enumerate() {
            latest.insert(t.reference_task_name.as_str(), i);
        }
        let mut moved = None;
        for i in joins {
            let t = &wf.tasks[i];
            let join_on: Vec<String> = match t.input_data.get("joinOn") {
                Some(Value::Array(refs)) => refs.iter().filter_map(|r| r.as_str().map(str::to_string)).collect(),
                _ => t.workflow_task.join_on(),
            };
            let suffix = iteration_suffix(t.iteration);
            let joined: Vec<(&String, Option<&Task>)> = join_on
                .iter()
                .map(|r| (r, latest.get(format!("{r}{suffix}").as_str()).map(|&j| &wf.tasks[j])))
                .collect();
            let mut all_done = true;
            let mut with_errors = false;
            let mut failures = Vec::new();
            for (_, joined) in &joined {
                match joined {
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
                moved = Some((i, JoinEnd::Failed(failures.join(" "))));
                break;
            }
            if all_done {
                // The joined outputs, each measured before it is copied: together they may not pass the cap.
                let mut output = Map::new();
                let mut left = Some(cap.bytes.saturating_sub(2));
                for (r, joined) in &joined {
                    let Some(joined) = joined else { continue };
                    if joined.output_data.is_empty() {
                        continue;
                    }
                    let room = left.and_then(|left| left.checked_sub(size::string_len(r) + 2));
                    left = room.and_then(|room| Some(room - size::map_within(&joined.output_data, room)?));
                    if left.is_none() {
                        break;
                    }
                    output.insert((*r).clone(), Value::Object(joined.output_data.clone()));
                }
                let end = match left {
                    None => JoinEnd::Oversized,
                    Some(left) => JoinEnd::Joined { output, with_errors, built: cap.bytes - left },
                };
                moved = Some((i, end));
                break;
            }
        }
        let Some((i, end)) = moved else { return Ok(false) };
        let t = &mut wf.tasks[i];
        t.end_time = now;
        t.update_time = now;
        match end {
            JoinEnd::Failed(reason) => {
                t.status = TaskStatus::Failed;
                t.reason_for_incompletion = Some(reason);
            }
            JoinEnd::Oversized => {
                t.status = TaskStatus::FailedWithTerminalError;
                t.reason_for_incompletion =
                    Some(cap.breach(format_args!("the output of JOIN '{}'", t.reference_task_name)));
            }
            JoinEnd::Joined { output, with_errors, built } => {
                t.status = if with_errors { TaskStatus::CompletedWithErrors } else { TaskStatus::Completed };
                t.output_data = output;
                self.spend(built);
            }
        }
        Ok(true)
    }

    /// TERMINATE: ends the workflow with the status, reason and output its input gives.
    fn terminate_task(&mut self, id: &str, i: usize) -> Result<(), StateError> {
        let now = self.now_ms;
        let limit = self.limits().max_workflow_output_bytes;
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
}

/// A map of one entry.
pub(super) fn single(key: &str, value: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(key.to_string(), value);
    m
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

/// Whether the engine runs this task itself.
pub(super) fn is_engine_task(task: &Task) -> bool {
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
        return parse_duration_ms(d)
            .map(|ms| now_ms.saturating_add(ms))
            .ok_or_else(|| format!("WAIT: bad duration '{d}'"));
    }
    if let Some(u) = input.get("until").and_then(Value::as_str) {
        return parse_until_ms(u).ok_or_else(|| format!("WAIT: bad until '{u}'"));
    }
    Ok(0)
}

/// How a JOIN whose joined tasks are done ends.
enum JoinEnd {
    /// A joined task failed: the JOIN fails with its reasons.
    Failed(String),
    /// The joined outputs together would pass the task output limit.
    Oversized,
    /// Every joined task succeeded: their outputs, by reference.
    Joined { output: Map<String, Value>, with_errors: bool, built: usize },
}
