//! DO_WHILE: a loop over its body, as long as its `loopCondition` holds (evaluated by the leader, see
//! [`evaluation`](super::evaluation)) or for each of its `items`. The decider starts the first iteration
//! (`Exec::run_system_task`); here, the end of an iteration records the body's outputs under the iteration's
//! number, the condition's verdict starts the next iteration or ends the loop, and `keepLastN` forgets the
//! iterations before the last N.
//!
//! Owns: a loop's counter and output, its `items`, `loopItem` and `loopIndex`, `keepLastN`, and the bound
//! [`Limits::max_do_while_iterations`]. Must not touch: the condition's code (never run in apply) or how the body's
//! steps are scheduled ([`schedule`](super::schedule)).

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::decide::DefIndex;
use super::definitions::WorkflowTask;
use super::exec::Exec;
use super::expr;
use super::limits::Limits;
use super::model::{Task, TaskStatus};
use super::roots::WorkflowRoots;
use super::{size, StateError, StateView};

impl<S: StateView> Exec<'_, S> {
    /// The last step of a DO_WHILE body finished: record its outputs and wait for the condition's evaluation (a
    /// loop over `items` without a condition goes on at once).
    pub(super) fn loop_iteration_done(&mut self, id: &str, owner: &str) -> Result<(), StateError> {
        let now = self.now_ms;
        let cap = self.cap("maxTaskOutputBytes", self.limits().max_task_output_bytes);
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
        let mut left = cap
            .bytes
            .checked_sub(size::string_len(&key) + 3)
            .and_then(|room| room.checked_sub(size::map_without_within(&wf.tasks[li].output_data, &key, room)?));
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
        if items_input(&loop_task.input_data).is_some() && loop_task.workflow_task.extra_str("loopCondition").is_none()
        {
            return self.loop_condition_known(id, li, iteration, Ok(true));
        }
        // The condition is user code: the leader evaluates it outside apply and the verdict comes back as a
        // command (engine::evaluation), which continues in `loop_condition_known`.
        self.await_evaluation(id, li, iteration)
    }

    /// The list a DO_WHILE iterates over (`items`: its input parameter, or the step's own `items` expression,
    /// resolved into the input), if it has one: `Some(length)`; the reason the loop cannot run otherwise.
    pub(super) fn loop_items(&mut self, id: &str, i: usize) -> Result<Result<Option<usize>, String>, StateError> {
        let max_iterations = self.limits().max_do_while_iterations;
        let cap = self.cap("maxTaskInputBytes", self.limits().max_task_input_bytes);
        let wf = self.workflow(id)?.expect("caller loaded it");
        if items_input(&wf.tasks[i].input_data).is_none() {
            let Some(expression) = wf.tasks[i].workflow_task.extra.get("items").cloned() else { return Ok(Ok(None)) };
            let input_bytes = size::map_within(&wf.tasks[i].input_data, cap.bytes).unwrap_or(cap.bytes);
            let room = cap.bytes.saturating_sub(input_bytes + 8);
            let Ok((items, charged)) = expr::resolve_within(&expression, &WorkflowRoots::new(wf), room) else {
                let what = format!("the input of DO_WHILE '{}' with its items", wf.tasks[i].reference_task_name);
                self.spend(room);
                return Ok(Err(cap.breach(what)));
            };
            wf.tasks[i].input_data.insert("items".into(), items);
            self.spend(charged);
        }
        let wf = self.workflow(id)?.expect("caller loaded it");
        Ok(match items_input(&wf.tasks[i].input_data) {
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
        self.forget_tasks(forgotten);
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
        let max_iterations = self.limits().max_do_while_iterations;
        let wf = self.workflow(id)?.expect("caller loaded it");
        let def = std::sync::Arc::clone(&wf.workflow_definition);
        let index = DefIndex::new(&def);
        let loop_task = &mut wf.tasks[li];
        loop_task.update_time = now;
        // A loop over items ends after the last one, whatever its condition says.
        let items = match items_input(&loop_task.input_data) {
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
}

/// A DO_WHILE over items, about to run the item at `index` (0-based): `loopItem` and `loopIndex` in its output.
pub(super) fn set_loop_item(loop_task: &mut Task, index: u32) {
    let item = match items_input(&loop_task.input_data) {
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

/// The reference names of the steps in `list`, nested ones included.
fn collect_refs(list: &[WorkflowTask]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack: Vec<&WorkflowTask> = list.iter().collect();
    while let Some(t) = stack.pop() {
        out.insert(t.task_reference_name.clone());
        stack.extend(t.children().map(|(_, child)| child));
    }
    out
}

/// The list a DO_WHILE iterates over, from its input: `items` (as Orkes documents it, and where the step's own
/// `items` expression is resolved to) or `_items` (Conductor's input form).
fn items_input(input: &Map<String, Value>) -> Option<&Value> {
    input.get("items").or_else(|| input.get("_items"))
}
