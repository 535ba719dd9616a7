//! The engine's limits (issue 25, "apply is total"): chains of starts, fan-out, loops and long decisions end in a
//! deterministic, reported outcome instead of unbounded work in one command.

use serde_json::json;

use super::World;
use crate::engine::definitions::{parse_json, WorkflowDef};
use crate::engine::limits::Limits;
use crate::engine::model::{TaskStatus, WorkflowStatus};
use crate::engine::{Command, CommandResponse};

fn rejection_messages(response: CommandResponse) -> Vec<(String, String)> {
    let CommandResponse::Rejected(rejection) = response else { panic!("expected a rejection, got {response:?}") };
    rejection.field_errors.into_iter().map(|e| (e.path, e.message)).collect()
}

fn def(json: serde_json::Value) -> WorkflowDef {
    parse_json(&json.to_string()).expect("parses")
}

/// The poison of issue 25: a START_WORKFLOW that starts its own definition used to recurse on the stack until
/// every replica aborted. Registering it is refused, with the path of the name.
#[test]
fn a_start_workflow_naming_its_own_definition_is_refused_at_registration() {
    let mut w = World::new();
    let selfstart = def(json!({"name": "selfstart", "tasks": [
        {"name": "again", "taskReferenceName": "again", "type": "START_WORKFLOW",
         "inputParameters": {"startWorkflow": {"name": "selfstart", "input": {}}}}]}));
    let errors = rejection_messages(w.run(Command::RegisterWorkflowDef { def: selfstart, overwrite: false }));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "tasks[0].inputParameters.startWorkflow.name");
    assert!(errors[0].1.contains("starts itself with START_WORKFLOW"), "{errors:?}");
}

#[test]
fn a_start_cycle_through_other_definitions_is_refused_with_its_path() {
    let mut w = World::new();
    let starts = |name: &str, next: &str| {
        def(json!({"name": name, "tasks": [
            {"name": "s", "taskReferenceName": "s", "type": "START_WORKFLOW",
             "inputParameters": {"startWorkflow": {"name": next}}}]}))
    };
    let sub = |name: &str, next: &str| {
        def(json!({"name": name, "tasks": [
            {"name": "s", "taskReferenceName": "s", "type": "SUB_WORKFLOW", "subWorkflowParam": {"name": next}}]}))
    };
    // c starts a (a is not registered yet: START_WORKFLOW targets may come later), b runs c as a sub-workflow.
    assert_eq!(w.run(Command::UpdateWorkflowDefs { defs: vec![starts("c", "a")] }), CommandResponse::Done);
    assert_eq!(w.run(Command::UpdateWorkflowDefs { defs: vec![sub("b", "c")] }), CommandResponse::Done);
    let errors = rejection_messages(w.run(Command::UpdateWorkflowDefs { defs: vec![starts("a", "b")] }));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "tasks[0].inputParameters.startWorkflow.name");
    assert!(errors[0].1.contains("a -> b -> c -> a"), "{errors:?}");
}

/// A SUB_WORKFLOW whose name comes from the input can name its own definition: registration cannot see it, so the
/// chain runs until the start depth bound, where the task that would start one more fails with a reason naming it.
#[test]
fn a_sub_workflow_chain_from_an_expression_stops_at_the_start_depth_limit() {
    let mut w = World::new();
    w.workflow_def(json!({"name": "recurse", "tasks": [
        {"name": "s", "taskReferenceName": "s", "type": "SUB_WORKFLOW",
         "subWorkflowParam": {"name": "${workflow.input.name}"},
         "inputParameters": {"name": "${workflow.input.name}"}}]}));
    // The child's input is the step's input: it names the same definition again.
    let id = w.start("recurse", json!({"name": "recurse"}));
    let max = Limits::default().max_start_depth;
    // Walk down the chain of children: each is a RUNNING workflow one level deeper.
    let mut depth = 0;
    let mut current = id.clone();
    loop {
        let wf = w.wf(&current).clone();
        assert_eq!(wf.start_depth, depth);
        let task = wf.tasks.last().expect("the SUB_WORKFLOW task");
        match &task.sub_workflow_id {
            Some(child) => {
                current = child.clone();
                depth += 1;
            }
            None => {
                assert_eq!(task.status, TaskStatus::FailedWithTerminalError);
                let reason = task.reason_for_incompletion.clone().unwrap_or_default();
                assert!(reason.contains(&format!("maxStartDepth = {max}")), "{reason}");
                break;
            }
        }
    }
    assert_eq!(depth, max);
    // The failure travels back up: every workflow of the chain failed, the root last.
    assert_eq!(w.status(&id), WorkflowStatus::Failed, "{}", w.dump(&id));
}

#[test]
fn a_fork_of_self_starts_stops_at_the_starts_per_command_limit() {
    let mut w = World::new();
    // Four START_WORKFLOWs of a definition that does the same: 4^depth workflows without a bound.
    let lanes: Vec<_> = (0..4)
        .map(|i| {
            json!([{"name": "s", "taskReferenceName": format!("s{i}"), "type": "START_WORKFLOW",
                    "inputParameters": {"startWorkflow": {"name": "${workflow.input.me}", "input": {"me": "${workflow.input.me}"}}}}])
        })
        .collect();
    w.workflow_def(json!({"name": "bomb", "tasks": [
        {"name": "f", "taskReferenceName": "f", "type": "FORK_JOIN", "forkTasks": lanes},
        {"name": "j", "taskReferenceName": "j", "type": "JOIN"}]}));
    let before = w.state.workflows.len();
    w.start("bomb", json!({"me": "bomb"}));
    let started = w.state.workflows.len() - before;
    assert_eq!(started as u32, Limits::default().max_starts_per_command);
    let refused = w
        .state
        .workflows
        .values()
        .flat_map(|wf| wf.tasks.iter())
        .filter(|t| t.reason_for_incompletion.as_deref().is_some_and(|r| r.contains("maxStartsPerCommand")))
        .count();
    assert!(refused > 0, "some START_WORKFLOW tasks were refused");
}

/// A long run of system tasks is not a failure: the decision stops at the step limit and goes on in the next Tick.
#[test]
fn a_long_run_of_system_tasks_continues_in_follow_up_ticks() {
    let mut w = World::new();
    let limits = Limits { max_steps_per_command: 1000, ..Limits::default() };
    assert_eq!(w.run(Command::SetLimits { limits }), CommandResponse::Done);
    let steps = 2500;
    let tasks: Vec<_> = (0..steps)
        .map(|i| {
            json!({"name": "v", "taskReferenceName": format!("v{i}"), "type": "SET_VARIABLE",
                        "inputParameters": {"last": i}})
        })
        .collect();
    w.workflow_def(json!({"name": "long", "tasks": tasks}));
    let id = w.start("long", json!({}));
    let mut ticks = 0;
    while w.status(&id) == WorkflowStatus::Running {
        let wf = w.wf(&id);
        assert!(wf.decision_pending, "a running workflow with nothing to wait for is marked: {}", w.dump(&id));
        assert_eq!(wf.next_tick_ms, w.now_ms, "and its Tick is due at once");
        w.tick(&id);
        ticks += 1;
        assert!(ticks < 10, "no progress");
    }
    assert_eq!(w.status(&id), WorkflowStatus::Completed, "{}", w.dump(&id));
    assert_eq!(w.wf(&id).variables["last"], json!(steps - 1));
    assert!(ticks >= 2, "the run took several commands: {ticks}");
}

/// Fuzz finding 5: one command could start `maxStartsPerCommand` workflows, each creating all the tasks of its first
/// step, with no bound on their total. The steps and tasks of every workflow a command touches now count against
/// one budget; the starts and decisions past it go on in follow-up Ticks, and nothing fails for it.
#[test]
fn a_wide_fan_out_of_wide_children_is_paced_across_commands_not_failed() {
    let mut w = World::new();
    w.simple_tasks(&["leaf"]);
    let width = 200;
    let leaves: Vec<_> = (0..width).map(|i| json!([{"name": "leaf", "taskReferenceName": format!("l{i}")}])).collect();
    w.workflow_def(json!({"name": "child", "tasks": [
        {"name": "f", "taskReferenceName": "f", "type": "FORK_JOIN", "forkTasks": leaves},
        {"name": "j", "taskReferenceName": "j", "type": "JOIN"}]}));
    let children: Vec<_> = (0..width)
        .map(|i| {
            json!([{"name": "s", "taskReferenceName": format!("s{i}"), "type": "SUB_WORKFLOW",
                    "subWorkflowParam": {"name": "child"}}])
        })
        .collect();
    w.workflow_def(json!({"name": "parent", "tasks": [
        {"name": "f", "taskReferenceName": "f", "type": "FORK_JOIN", "forkTasks": children},
        {"name": "j", "taskReferenceName": "j", "type": "JOIN"}]}));
    let tasks = |w: &World| w.state.workflows.values().map(|wf| wf.tasks.len()).sum::<usize>();
    let root = w.start("parent", json!({}));
    let budget = usize::try_from(Limits::default().max_steps_per_command).expect("fits");
    // The start created at most the budget, and one step's tasks over it (a FORK is scheduled whole).
    let created = tasks(&w);
    assert!(created <= budget + width + 1, "one command created {created} tasks");
    let waiting = |w: &World| -> Vec<String> {
        w.state.workflows.values().filter(|wf| wf.decision_pending).map(|wf| wf.workflow_id.clone()).collect()
    };
    assert!(
        !waiting(&w).is_empty(),
        "the rest waits for Ticks: {created} tasks in {} workflows",
        w.state.workflows.len()
    );
    // The leader's timers tick every workflow that waits; each Tick is one command with a budget of its own.
    let mut ticks = 0;
    while let Some(id) = waiting(&w).into_iter().next() {
        assert_eq!(w.wf(&id).next_tick_ms, w.now_ms, "a workflow that waits is due at once");
        w.tick(&id);
        ticks += 1;
        assert!(ticks < 1000, "no progress");
    }
    assert_eq!(w.state.workflows.len(), width + 1, "every child started");
    for wf in w.state.workflows.values() {
        assert_eq!(wf.status, WorkflowStatus::Running, "{}", w.dump(&wf.workflow_id));
        assert!(wf.tasks.iter().all(|t| !t.status.is_terminal() || t.status == TaskStatus::Completed));
    }
    // 200 children of 202 tasks each, the parent's 202: all there, none failed.
    assert_eq!(tasks(&w), (width + 1) * (width + 2));
    assert_eq!(w.wf(&root).tasks.len(), width + 2);
}

/// The budgets hold per log entry: the commands batched in one share them. A batch of three starts, each of a
/// workflow whose first step is a FORK of 6,000 tasks: the first two fit (the second starting while the entry has
/// spent less than the budget), the third waits for its Tick.
#[test]
fn the_commands_of_one_log_entry_share_the_step_budget() {
    let mut w = World::new();
    w.simple_tasks(&["leaf"]);
    let width = 6000;
    let leaves: Vec<_> = (0..width).map(|i| json!([{"name": "leaf", "taskReferenceName": format!("l{i}")}])).collect();
    w.workflow_def(json!({"name": "wide", "tasks": [
        {"name": "f", "taskReferenceName": "f", "type": "FORK_JOIN", "forkTasks": leaves},
        {"name": "j", "taskReferenceName": "j", "type": "JOIN"}]}));
    let starts: Vec<Command> = (0..3)
        .map(|_| {
            let request = w.start_request("wide", json!({}));
            Command::StartWorkflow(request)
        })
        .collect();
    let ids: Vec<String> = starts
        .iter()
        .map(|c| match c {
            Command::StartWorkflow(request) => request.workflow_id.clone(),
            _ => unreachable!("starts"),
        })
        .collect();
    let CommandResponse::Batch(responses) = w.run(Command::Batch(starts)) else { panic!("a batch answers a batch") };
    assert!(responses.iter().all(|r| matches!(r, CommandResponse::WorkflowStarted { .. })), "{responses:?}");
    let tasks: Vec<usize> = ids.iter().map(|id| w.wf(id).tasks.len()).collect();
    assert_eq!(tasks, [width + 2, width + 2, 0], "the third start waits");
    assert!(w.wf(&ids[2]).decision_pending);
    assert_eq!(w.wf(&ids[2]).next_tick_ms, w.now_ms, "and is due at once");
    w.tick(&ids[2]);
    assert_eq!(w.wf(&ids[2]).tasks.len(), width + 2);
    assert_eq!(w.status(&ids[2]), WorkflowStatus::Running);
}

#[test]
fn a_do_while_that_never_ends_fails_at_the_iteration_limit() {
    let mut w = World::new();
    w.workflow_def(json!({"name": "forever", "tasks": [
        {"name": "loop", "taskReferenceName": "loop", "type": "DO_WHILE", "loopCondition": "true",
         "loopOver": [{"name": "n", "taskReferenceName": "n", "type": "NOOP"}]}]}));
    let id = w.start("forever", json!({}));
    let mut ticks = 0;
    while w.status(&id) == WorkflowStatus::Running {
        w.tick(&id);
        ticks += 1;
        assert!(ticks < 100, "no progress: {}", w.dump(&id));
    }
    let max = Limits::default().max_do_while_iterations;
    assert_eq!(w.status(&id), WorkflowStatus::Failed);
    let reason = w.task(&id, "loop").reason_for_incompletion.clone().unwrap_or_default();
    assert!(reason.contains(&format!("maxDoWhileIterations = {max}")), "{reason}");
}

#[test]
fn a_dynamic_fork_wider_than_the_limit_fails_before_parsing_its_list() {
    let mut w = World::new();
    w.workflow_def(json!({"name": "wide", "tasks": [
        {"name": "f", "taskReferenceName": "f", "type": "FORK_JOIN_DYNAMIC",
         "dynamicForkTasksParam": "tasks", "dynamicForkTasksInputParamName": "inputs",
         "inputParameters": {"tasks": "${workflow.input.tasks}", "inputs": {}}},
        {"name": "j", "taskReferenceName": "j", "type": "JOIN"}]}));
    let max = Limits::default().max_dynamic_fork_tasks as usize;
    let tasks: Vec<_> =
        (0..=max).map(|i| json!({"name": "n", "taskReferenceName": format!("n{i}"), "type": "NOOP"})).collect();
    let id = w.start("wide", json!({"tasks": tasks}));
    assert_eq!(w.status(&id), WorkflowStatus::Failed);
    let fork = w.task(&id, "f");
    assert_eq!(fork.status, TaskStatus::FailedWithTerminalError);
    let reason = fork.reason_for_incompletion.clone().unwrap_or_default();
    assert!(
        reason.contains(&format!("{} tasks to fork", max + 1)) && reason.contains("maxDynamicForkTasks"),
        "{reason}"
    );
    assert_eq!(w.wf(&id).tasks.len(), 1, "nothing was forked");
}

#[test]
fn a_workflow_that_would_pass_the_task_limit_fails_naming_it() {
    let mut w = World::new();
    // Twelve tasks an iteration: the task limit comes before the iteration limit.
    let body: Vec<_> =
        (0..12).map(|i| json!({"name": "n", "taskReferenceName": format!("n{i}"), "type": "NOOP"})).collect();
    w.workflow_def(json!({"name": "grow", "tasks": [
        {"name": "loop", "taskReferenceName": "loop", "type": "DO_WHILE", "loopCondition": "true", "loopOver": body}]}));
    let id = w.start("grow", json!({}));
    let mut ticks = 0;
    while w.status(&id) == WorkflowStatus::Running {
        w.tick(&id);
        ticks += 1;
        assert!(ticks < 100, "no progress: {}", w.dump(&id));
    }
    let max = Limits::default().max_tasks_per_workflow;
    let wf = w.wf(&id);
    assert_eq!(wf.status, WorkflowStatus::Failed);
    assert_eq!(wf.tasks.len(), max as usize);
    let reason = wf.reason_for_incompletion.clone().unwrap_or_default();
    assert!(reason.contains(&format!("maxTasksPerWorkflow = {max}")), "{reason}");
}

/// The limits are a cluster setting: a command through the log changes them for every replica; values out of range
/// are refused, naming each field.
#[test]
fn limits_are_a_replicated_setting_and_values_out_of_range_are_refused() {
    let mut w = World::new();
    let bad = Limits { max_start_depth: 0, max_do_while_iterations: 2_000_000, ..Limits::default() };
    let CommandResponse::Rejected(rejection) = w.run(Command::SetLimits { limits: bad }) else {
        panic!("out-of-range limits were accepted")
    };
    let paths: Vec<_> = rejection.field_errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["maxStartDepth", "maxDoWhileIterations"]);
    assert_eq!(w.state.limits, None);

    let small = Limits { max_do_while_iterations: 5, ..Limits::default() };
    assert_eq!(w.run(Command::SetLimits { limits: small.clone() }), CommandResponse::Done);
    assert_eq!(w.state.limits, Some(small));
    w.workflow_def(json!({"name": "forever", "tasks": [
        {"name": "loop", "taskReferenceName": "loop", "type": "DO_WHILE", "loopCondition": "true",
         "loopOver": [{"name": "n", "taskReferenceName": "n", "type": "NOOP"}]}]}));
    let id = w.start("forever", json!({}));
    assert_eq!(w.status(&id), WorkflowStatus::Failed);
    let reason = w.task(&id, "loop").reason_for_incompletion.clone().unwrap_or_default();
    assert!(reason.contains("maxDoWhileIterations = 5"), "{reason}");
}
