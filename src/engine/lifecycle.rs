//! A workflow's life: created ([`new_workflow`]) and started ([`Exec::start`]), started as a child by a
//! SUB_WORKFLOW or START_WORKFLOW task, and ended ([`Exec::end_workflow`]): its pending tasks canceled, its
//! children terminated, its parent told and its failure workflow started.
//!
//! Owns: the fields of a new workflow, the child's id, definition and input, what a parent's task records when its
//! child ends, and the failure workflow's input. Must not touch: what runs next inside a workflow
//! ([`decide`](super::decide)), or the operators' requests to end, retry or restart one ([`ops`](super::ops)).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::definitions::WorkflowDef;
use super::exec::{derive_id, Exec};
use super::expr;
use super::limits::Limits;
use super::model::{map_nests_deeper_than, TaskStatus, Workflow, WorkflowStatus, MAX_VALUE_DEPTH};
use super::roots::WorkflowRoots;
use super::system_tasks::single;
use super::{size, StateError, StateView};

/// A new RUNNING workflow with nothing scheduled yet.
pub fn new_workflow(
    workflow_id: String,
    def: std::sync::Arc<WorkflowDef>,
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
        workflow_definition: def,
        tasks: Vec::new(),
        next_seq: 0,
        failure_workflow_id: None,
        next_tick_ms: 0,
        start_depth: 0,
        decision_pending: false,
    }
}

/// The most bytes a SUB_WORKFLOW's `subWorkflowParam` name or version may resolve to: more than any definition's
/// name (512 bytes) or version takes.
const MAX_NAME_TEMPLATE_BYTES: usize = 1024;

impl<S: StateView> Exec<'_, S> {
    /// Starts a workflow that has no tasks yet: its first decision schedules its first step (or completes it when
    /// it has none). Like any decision, it is left to a follow-up Tick when the command has taken all its steps.
    pub fn start(&mut self, id: &str) -> Result<(), StateError> {
        self.decide(id)
    }

    /// Starts the child workflow of the SUB_WORKFLOW or START_WORKFLOW task at `i` (or fails the task when the
    /// child cannot be started).
    pub(super) fn start_child(&mut self, id: &str, i: usize) -> Result<(), StateError> {
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
            // A name or version longer than any definition's is none (a `${workflow.input}` in their place is not
            // copied whole).
            let roots = WorkflowRoots::new(wf);
            let resolve = |template: &Value| {
                expr::resolve_within(template, &roots, MAX_NAME_TEMPLATE_BYTES).map_or(Value::Null, |(value, _)| value)
            };
            let name = param.get("name").map(resolve);
            let version = param.get("version").map(resolve);
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
            Some(Value::Object(_)) => {
                serde_json::from_value::<WorkflowDef>(inline.unwrap_or(Value::Null)).ok().map(std::sync::Arc::new)
            }
            _ => match &name {
                Some(n) => self.workflow_def(n, version)?,
                None => None,
            },
        };
        let depth = self.workflow(id)?.expect("caller loaded it").start_depth.saturating_add(1);
        let mut refused = self.start_refusal(depth);
        if refused.is_none() {
            // The child's input was counted as this task's input; measured again against the workflow limit.
            let limit = self.limits().max_workflow_input_bytes;
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
        let quietly = std::mem::take(&mut self.skip_failure_workflow);
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
        let failure_workflow = wf.workflow_definition.failure_workflow.clone().filter(|s| !s.is_empty()).filter(|_| {
            !quietly && matches!(status, WorkflowStatus::Failed | WorkflowStatus::TimedOut | WorkflowStatus::Terminated)
        });
        // The workflow as it ended, for its parent and its failure workflow (copied only when one needs it).
        let snapshot = (parent.is_some() || failure_workflow.is_some()).then(|| wf.clone());
        // A terminated or failed parent terminates its running children, which start no failure workflow of their
        // own (Conductor terminates them with none).
        if status != WorkflowStatus::Completed {
            for child in children {
                let reason = format!("parent workflow {id} ended: {}", status.as_str());
                if self.workflow(&child)?.is_some() {
                    self.skip_failure_workflow = true;
                    self.end_workflow(child, WorkflowStatus::Terminated, reason, None)?;
                }
            }
        }
        let Some(snapshot) = snapshot else { return Ok(()) };
        if let Some((parent_id, parent_task)) = parent {
            self.child_ended(&parent_id, &parent_task, &snapshot)?;
        }
        if let Some(name) = failure_workflow {
            self.start_failure_workflow(snapshot, &name, status)?;
        }
        Ok(())
    }

    /// Ends a workflow at an operator's request (terminate API): like [`Exec::end_workflow`], but Conductor starts
    /// no failure workflow for it.
    pub fn terminate_by_operator(&mut self, id: &str, reason: &str) -> Result<(), StateError> {
        self.skip_failure_workflow = true;
        let result = self.end_workflow(id.to_string(), WorkflowStatus::Terminated, reason.to_string(), None);
        self.skip_failure_workflow = false;
        result
    }

    /// A child workflow ended: the parent's task takes its status and output, and the parent is decided again.
    fn child_ended(&mut self, parent_id: &str, task_id: &str, child: &Workflow) -> Result<(), StateError> {
        let now = self.now_ms;
        let cap = self.cap("maxTaskOutputBytes", self.limits().max_task_output_bytes);
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

    /// Starts the failure workflow `name` of a workflow that ended with `status`, with Conductor's input (the failed
    /// workflow, its reason, its failed task); when a limit refuses it, the failed workflow's reason says why.
    /// Everything is measured before it is copied: the failed workflow may be as large as its record limit.
    fn start_failure_workflow(
        &mut self,
        mut failed: Workflow,
        name: &str,
        status: WorkflowStatus,
    ) -> Result<(), StateError> {
        let Some(def) = self.workflow_def(name, None)? else { return Ok(()) };
        let id = derive_id(&format!("{}/failure-workflow", failed.workflow_id));
        if self.exists(&id)? {
            return Ok(());
        }
        let input_limit = self.limits().max_workflow_input_bytes;
        let cap = self.cap("maxWorkflowInputBytes", input_limit);
        let depth = failed.start_depth.saturating_add(1);
        let mut refused = self.start_refusal(depth);
        // The input: the failed workflow's own, a few fields, and the failed workflow whole when it takes at most
        // half of what is left, else without its tasks.
        let own = size::map_within(&failed.input, cap.bytes);
        let room = own.map_or(0, |own| cap.bytes.saturating_sub(own + 512));
        let failed_task_id = failed
            .tasks
            .iter()
            .rev()
            .find(|t| {
                matches!(t.status, TaskStatus::Failed | TaskStatus::FailedWithTerminalError | TaskStatus::TimedOut)
            })
            .map(|t| t.task_id.clone());
        let mut whole = size::record_within(&failed, room);
        if whole.is_none_or(|bytes| bytes > room / 2) {
            failed.tasks = Vec::new();
            whole = size::record_within(&failed, room);
        }
        if refused.is_none() && (own.is_none() || whole.is_none()) {
            refused = Some(cap.breach("its input"));
        }
        if let Some(reason) = refused {
            self.spend(own.unwrap_or(cap.bytes));
            if let Some(failed_wf) = self.workflow(&failed.workflow_id)? {
                let said = failed_wf.reason_for_incompletion.take().unwrap_or_default();
                failed_wf.reason_for_incompletion =
                    Some(format!("{said} (failure workflow '{name}' not started: {reason})").trim_start().to_string());
            }
            return Ok(());
        }
        let mut input = failed.input.clone();
        input.insert("workflowId".into(), json!(failed.workflow_id));
        input.insert("reason".into(), json!(failed.reason_for_incompletion.clone().unwrap_or_default()));
        input.insert("failureStatus".into(), json!(status.as_str()));
        if let Some(task_id) = failed_task_id {
            input.insert("failureTaskId".into(), json!(task_id));
        }
        input.insert("failedWorkflow".into(), serde_json::to_value(&failed).unwrap_or(Value::Null));
        // A failure workflow's input holds the failed workflow, whose own values may already nest close to
        // MAX_VALUE_DEPTH, hence the looser bound; a chain of failing failure workflows nests a few levels more
        // each time and ends at it, well before the state machine could no longer read the input back.
        if map_nests_deeper_than(&input, 4 * MAX_VALUE_DEPTH) {
            return Ok(());
        }
        self.spend(own.unwrap_or(0).saturating_add(whole.unwrap_or(0)));
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
