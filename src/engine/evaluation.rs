//! User code in workflows, evaluated outside apply: INLINE scripts, JSON_JQ_TRANSFORM queries, a SWITCH's or
//! DECISION's JavaScript, and DO_WHILE's `loopCondition` (docs/adr/0010-total-apply.md).
//!
//! Apply never runs user code. A task that needs code run is left waiting with an evaluation round
//! ([`Task::awaiting_evaluation`]); the leader builds the [`EvalRequest`] from the applied state
//! ([`request_for`]), runs it in a sandboxed child process with OS-enforced memory and time limits, and proposes
//! the [`EvalOutcome`] as a [`Command::Evaluated`](super::Command::Evaluated). Every replica applies that outcome,
//! so followers never run user code, a crash or runaway in the code costs one child process on one node, and
//! replicas cannot disagree about what the code returned, even across interpreter versions.
//!
//! Owns: what is evaluated for which task ([`request_for`]), leaving a task waiting for an evaluation
//! (`Exec::await_evaluation`), the evaluation itself as a pure function ([`evaluate`], which the sandbox child
//! calls and the engine's tests call in-process), and applying an outcome ([`Exec::op_evaluated`]). Must not touch:
//! processes, clocks or I/O (the sandbox module owns the child).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::exec::{Exec, OpResult};
use super::model::{too_deep, Task, TaskStatus, Workflow, WorkflowStatus};
use super::size;
use super::system_tasks::single;
use super::{jq, script, Rejection, StateError, StateView};

/// The language of a piece of user code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// JavaScript (QuickJS): INLINE, SWITCH/DECISION expressions, DO_WHILE conditions.
    Js,
    /// jq (jaq): JSON_JQ_TRANSFORM.
    Jq,
}

/// One evaluation: code, the value bound to its input (`$` in JavaScript, `.` in jq) and the time scripts see.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvalRequest {
    /// The language.
    pub language: Language,
    /// The code.
    pub expression: String,
    /// The input.
    pub input: Value,
    /// What `Date.now()` returns, ms since the Unix epoch (the leader's clock when it evaluates).
    pub now_ms: u64,
}

/// What an evaluation gave: committed through Raft as it is, so every replica applies the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EvalOutcome {
    /// The code's values: one for JavaScript, every output for jq.
    Values(Vec<Value>),
    /// The code gave no value.
    Failed {
        /// Why, for `reasonForIncompletion` and `output.error`.
        message: String,
        /// The code's own fault (a syntax error, an exception): no retry helps, as in Conductor. Limits (steps,
        /// memory, time, output size) are ordinary failures, retried like a worker task's.
        terminal: bool,
    },
}

/// The task's code and its input, if the task waits for an evaluation.
pub fn request_for(task: &Task, now_ms: u64) -> Option<EvalRequest> {
    if task.awaiting_evaluation == 0 {
        return None;
    }
    let (language, expression, input) = match task.task_type.as_str() {
        "INLINE" => (Language::Js, str_field(&task.input_data, "expression"), Value::Object(task.input_data.clone())),
        "JSON_JQ_TRANSFORM" => {
            (Language::Jq, str_field(&task.input_data, "queryExpression"), Value::Object(task.input_data.clone()))
        }
        "SWITCH" | "DECISION" => {
            let step = &task.workflow_task;
            let expression = step.extra_str("expression").or_else(|| step.extra_str("caseExpression"))?;
            (Language::Js, expression, Value::Object(task.input_data.clone()))
        }
        "DO_WHILE" => (
            Language::Js,
            task.workflow_task.extra_str("loopCondition").unwrap_or_default(),
            Value::Object(loop_scope(task)),
        ),
        _ => return None,
    };
    Some(EvalRequest { language, expression, input, now_ms })
}

fn str_field(input: &Map<String, Value>, key: &str) -> String {
    input.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

/// `$` for a DO_WHILE condition after iteration N: the loop's input, the loop itself under its reference
/// (`{iteration, "1": {...}, ...}`), and each body task's output of this iteration by reference name.
fn loop_scope(loop_task: &Task) -> Map<String, Value> {
    let owner = &loop_task.workflow_task.task_reference_name;
    let iteration = loop_task.awaiting_evaluation;
    let mut scope = loop_task.input_data.clone();
    scope.insert(owner.clone(), Value::Object(loop_task.output_data.clone()));
    if let Some(Value::Object(outputs)) = loop_task.output_data.get(&iteration.to_string()) {
        for (reference, output) in outputs {
            scope.insert(reference.clone(), output.clone());
        }
    }
    scope
}

/// Runs a request in this process. Pure: the same request gives the same outcome. Call it only where a crash or
/// a runaway costs nothing shared: the sandbox child, or a test.
pub fn evaluate(request: &EvalRequest) -> EvalOutcome {
    match request.language {
        Language::Js => {
            match script::eval(&request.expression, &request.input, request.now_ms, &script::ScriptLimits::default()) {
                Ok(value) => EvalOutcome::Values(vec![value]),
                Err(e) => {
                    let terminal = matches!(e, script::ScriptError::Syntax(_) | script::ScriptError::Runtime(_));
                    EvalOutcome::Failed { message: e.to_string(), terminal }
                }
            }
        }
        Language::Jq => match jq::eval(&request.expression, &request.input) {
            Ok(values) => EvalOutcome::Values(values),
            Err(e) => EvalOutcome::Failed { message: e.to_string(), terminal: false },
        },
    }
}

/// Tasks of a workflow waiting for an evaluation: (task id, round).
pub fn awaiting(wf: &Workflow) -> impl Iterator<Item = (&str, u32)> {
    wf.tasks.iter().filter(|t| t.awaiting_evaluation > 0).map(|t| (t.task_id.as_str(), t.awaiting_evaluation))
}

impl<S: StateView> Exec<'_, S> {
    /// Leaves task `i` waiting for the leader to evaluate its code, in evaluation round `round`.
    pub(super) fn await_evaluation(&mut self, id: &str, i: usize, round: u32) -> Result<(), StateError> {
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

    /// Applies an evaluation's outcome to the task that waited for it in round `round`. Refused (and nothing
    /// changes) when the task no longer waits for that round: another leader's outcome came first, or the
    /// workflow moved on.
    pub fn op_evaluated(
        &mut self,
        workflow_id: &str,
        task_id: &str,
        round: u32,
        outcome: &EvalOutcome,
    ) -> OpResult<()> {
        let now = self.now_ms;
        let Some(wf) = self.workflow(workflow_id)? else {
            return Ok(Err(Rejection::not_found(format!("workflow {workflow_id} not found"))));
        };
        let Some(i) = wf.task_index(task_id) else {
            return Ok(Err(Rejection::not_found(format!("task {task_id} not found"))));
        };
        let t = &mut wf.tasks[i];
        if round == 0 || t.awaiting_evaluation != round || wf.status.is_terminal() {
            return Ok(Err(Rejection::conflict(format!("task {task_id} is not waiting for evaluation round {round}"))));
        }
        t.awaiting_evaluation = 0;
        t.update_time = now;
        let values = match outcome {
            EvalOutcome::Values(values) => Ok(values.as_slice()),
            EvalOutcome::Failed { message, terminal } => Err((message.clone(), *terminal)),
        };
        let task_type = t.task_type.clone();
        match task_type.as_str() {
            "DO_WHILE" => {
                let verdict = values.map(|v| v.first().is_some_and(script::loop_condition)).map_err(|(m, _)| m);
                self.loop_condition_known(workflow_id, i, round, verdict)?;
            }
            "SWITCH" | "DECISION" => {
                let what = if task_type == "SWITCH" { "SWITCH expression" } else { "DECISION caseExpression" };
                let outcome = match values {
                    Ok(v) => Ok(script::switch_case(v.first().unwrap_or(&Value::Null))),
                    Err((message, _)) => Err(format!("{what} failed: {message}")),
                };
                self.switch_case_known(workflow_id, i, outcome)?;
            }
            "INLINE" | "JSON_JQ_TRANSFORM" => {
                // Measured before the output is built from the values: `result` holds the first, and jq's
                // `resultList` all of them again.
                let cap = self.cap("maxTaskOutputBytes", self.limits().max_task_output_bytes);
                let with_list = task_type == "JSON_JQ_TRANSFORM";
                let output_bytes = match values {
                    Ok(values) => output_bytes_within(values, with_list, cap.bytes),
                    Err(_) => Some(0),
                };
                let Some(output_bytes) = output_bytes else {
                    let wf = self.workflow(workflow_id)?.expect("loaded above");
                    let t = &mut wf.tasks[i];
                    t.start_time = if t.start_time == 0 { now } else { t.start_time };
                    t.end_time = now;
                    t.status = TaskStatus::FailedWithTerminalError;
                    t.reason_for_incompletion =
                        Some(cap.breach(format_args!("the output of task '{}'", t.reference_task_name)));
                    self.schedule_decide(workflow_id);
                    return Ok(Ok(()));
                };
                self.spend(output_bytes);
                let result = match values {
                    Ok(values) if task_type == "INLINE" => {
                        Ok(single("result", values.first().cloned().unwrap_or(Value::Null)))
                    }
                    Ok(values) => {
                        let mut out = single("result", values.first().cloned().unwrap_or(Value::Null));
                        out.insert("resultList".into(), Value::Array(values.to_vec()));
                        Ok(out)
                    }
                    Err(failure) => Err(failure),
                };
                let wf = self.workflow(workflow_id)?.expect("loaded above");
                let t = &mut wf.tasks[i];
                t.start_time = if t.start_time == 0 { now } else { t.start_time };
                t.end_time = now;
                match result {
                    Ok(out) => match too_deep("the result", &out) {
                        None => {
                            t.output_data = out;
                            t.status = TaskStatus::Completed;
                        }
                        Some(reason) => {
                            t.status = TaskStatus::Failed;
                            t.reason_for_incompletion = Some(reason);
                        }
                    },
                    Err((message, terminal)) => {
                        t.output_data = single("error", json!(message));
                        t.status = if terminal { TaskStatus::FailedWithTerminalError } else { TaskStatus::Failed };
                        t.reason_for_incompletion = Some(message);
                    }
                }
            }
            other => {
                return Ok(Err(Rejection::invalid(format!("a {other} task has no code to evaluate"))));
            }
        }
        if self.workflow(workflow_id)?.is_some_and(|wf| wf.status == WorkflowStatus::Running) {
            self.schedule_decide(workflow_id);
        }
        Ok(Ok(()))
    }
}

/// The bytes of the output an evaluation's values make (`{"result": first}`, plus `"resultList": [all]` for jq),
/// if at most `cap`; measured without building it.
fn output_bytes_within(values: &[Value], with_list: bool, cap: usize) -> Option<usize> {
    let overhead = r#"{"result":,"resultList":[]}"#.len() + values.len();
    let mut left = cap.checked_sub(overhead)?;
    let first = values.first().unwrap_or(&Value::Null);
    left -= size::value_within(first, left)?;
    if with_list {
        for value in values {
            left -= size::value_within(value, left)?;
        }
    }
    Some(cap - left)
}
