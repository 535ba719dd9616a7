//! Byte limits (issue 25): every value apply builds (task inputs from templates, worker and script outputs, JOIN
//! and loop outputs, variables, workflow inputs and outputs, the whole record) is measured as it is built, and a
//! breach fails the task or workflow with a reason naming the limit, or refuses the request.

use serde_json::{json, Value};

use super::World;
use crate::engine::limits::Limits;
use crate::engine::model::{TaskStatus, WorkflowStatus};
use crate::engine::{Command, CommandResponse};

/// A world applying with `limits` (every other one at its default).
fn world_with(limits: Limits) -> World {
    let mut w = World::new();
    assert_eq!(w.run(Command::SetLimits { limits }), CommandResponse::Done);
    w.simple_tasks(&["work", "after"]);
    w
}

fn reason(w: &World, id: &str, reference: &str) -> String {
    w.task(id, reference).reason_for_incompletion.clone().unwrap_or_default()
}

/// The poison's shape: one large input named by thousands of expressions. Built whole it would take 10 GB; it
/// is refused once the copies pass the limit, and the task fails naming it.
#[test]
fn a_template_copying_a_large_input_thousands_of_times_fails_at_the_task_input_limit() {
    let mut w = world_with(Limits::default());
    let copies: serde_json::Map<String, Value> =
        (0..10_000).map(|i| (format!("k{i}"), json!("${workflow.input.big}"))).collect();
    w.workflow_def(json!({"name": "amplify", "tasks": [
        {"name": "work", "taskReferenceName": "work", "inputParameters": copies}]}));
    let started = std::time::Instant::now();
    let id = w.start("amplify", json!({"big": "x".repeat(1 << 20)}));
    let task = w.task(&id, "work");
    assert_eq!(task.status, TaskStatus::FailedWithTerminalError);
    assert!(task.input_data.is_empty(), "the input that could not be kept is not kept");
    let reason = reason(&w, &id, "work");
    assert_eq!(reason, "the input of task 'work' is over 3145728 bytes: limit maxTaskInputBytes = 3145728 reached");
    assert_eq!(w.status(&id), WorkflowStatus::Failed);
    // Four copies fit before the cap; measuring the fifth stops at the cap: well under a second, not a 10 GB build.
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
}

/// Each copy of a `$..*` over a deep document is counted before it is made.
#[test]
fn a_descendant_query_over_a_nested_input_stops_at_the_limit() {
    let mut w = world_with(Limits { max_task_input_bytes: 64 * 1024, ..Limits::default() });
    w.workflow_def(json!({"name": "descend", "tasks": [
        {"name": "work", "taskReferenceName": "work", "inputParameters": {"all": "${workflow.input..*}"}}]}));
    // 60 levels of {"a": {...}, "s": "xxxx"}: every node is copied once per ancestor.
    let mut doc = json!("x".repeat(1000));
    for _ in 0..60 {
        doc = json!({"a": doc, "s": "y".repeat(1000)});
    }
    let id = w.start("descend", json!({"doc": doc}));
    assert_eq!(w.task(&id, "work").status, TaskStatus::FailedWithTerminalError);
    assert!(reason(&w, &id, "work").ends_with("limit maxTaskInputBytes = 65536 reached"), "{}", w.dump(&id));
}

#[test]
fn a_worker_output_over_the_limit_fails_the_task_and_keeps_no_output() {
    let mut w = world_with(Limits { max_task_output_bytes: 1000, ..Limits::default() });
    w.workflow_def(json!({"name": "one", "tasks": [{"name": "work", "taskReferenceName": "work"}]}));
    let id = w.start("one", json!({}));
    // Exactly at the limit is fine: {"s":"..."} with 992 characters is 1000 bytes.
    w.complete(&id, "work", json!({"s": "x".repeat(992)}));
    assert_eq!(w.status(&id), WorkflowStatus::Completed);
    let id = w.start("one", json!({}));
    // The update is taken (a worker retrying it would only be told the same), its output is not kept.
    w.complete(&id, "work", json!({"s": "x".repeat(993)}));
    let task = w.task(&id, "work");
    assert_eq!(task.status, TaskStatus::FailedWithTerminalError);
    assert!(task.output_data.is_empty());
    assert_eq!(
        reason(&w, &id, "work"),
        "the output of task 'work' is over 1000 bytes: limit maxTaskOutputBytes = 1000 reached"
    );
    assert_eq!(w.status(&id), WorkflowStatus::Failed);
}

/// The acceptance poison: a worker output at the byte limit on every iteration of a loop. The loop's own output
/// keeps every iteration's outputs, so it is the first value to pass the limit: the loop fails there, naming it.
#[test]
fn a_loop_of_outputs_at_the_limit_fails_the_loop_at_the_task_output_limit() {
    let mut w = world_with(Limits { max_task_output_bytes: 10_000, ..Limits::default() });
    w.workflow_def(json!({"name": "grow", "tasks": [
        {"name": "loop", "taskReferenceName": "loop", "type": "DO_WHILE", "loopCondition": "true",
         "loopOver": [{"name": "work", "taskReferenceName": "work"}]}]}));
    let id = w.start("grow", json!({}));
    w.complete(&id, "work__1", json!({"s": "x".repeat(9_992)}));
    assert_eq!(w.status(&id), WorkflowStatus::Failed, "{}", w.dump(&id));
    assert_eq!(w.task(&id, "loop").status, TaskStatus::FailedWithTerminalError);
    assert_eq!(
        reason(&w, &id, "loop"),
        "the output of DO_WHILE 'loop' with iteration 1 is over 10000 bytes: limit maxTaskOutputBytes = 10000 reached"
    );
}

/// The record limit: a loop whose outputs each fit grows the record by one output per iteration (the task's and
/// the loop's copy) until the record passes its limit; the workflow fails there, naming it.
#[test]
fn a_long_loop_fails_the_workflow_at_the_record_limit() {
    let limits = Limits { max_task_output_bytes: 1_000_000, max_workflow_record_bytes: 200_000, ..Limits::default() };
    let mut w = world_with(limits);
    w.workflow_def(json!({"name": "grow", "tasks": [
        {"name": "loop", "taskReferenceName": "loop", "type": "DO_WHILE", "loopCondition": "true",
         "loopOver": [{"name": "work", "taskReferenceName": "work"}]}]}));
    let id = w.start("grow", json!({}));
    let mut iterations = 0;
    while w.status(&id) == WorkflowStatus::Running {
        iterations += 1;
        assert!(iterations < 100, "still running after {iterations} iterations: {}", w.dump(&id));
        w.complete(&id, &format!("work__{iterations}"), json!({"s": "x".repeat(9_992)}));
    }
    let wf = w.wf(&id);
    assert_eq!(wf.status, WorkflowStatus::Failed);
    assert_eq!(
        wf.reason_for_incompletion.as_deref(),
        Some("the workflow's record is over 200000 bytes: limit maxWorkflowRecordBytes = 200000 reached")
    );
    // 20 kB per iteration: about ten fit.
    assert!((8..=11).contains(&iterations), "failed after {iterations} iterations");
}

/// The same loop with `keepLastN` keeps two iterations whatever the count, so it runs to its end.
#[test]
fn keep_last_n_keeps_a_long_loop_within_its_record() {
    let limits = Limits { max_task_output_bytes: 40_000, max_workflow_record_bytes: 200_000, ..Limits::default() };
    let mut w = world_with(limits);
    w.workflow_def(json!({"name": "keep", "tasks": [
        {"name": "loop", "taskReferenceName": "loop", "type": "DO_WHILE",
         "inputParameters": {"keepLastN": 2},
         "loopCondition": "$.loop['iteration'] < 50",
         "loopOver": [{"name": "work", "taskReferenceName": "work"},
                      {"name": "after", "taskReferenceName": "after", "type": "SET_VARIABLE",
                       "inputParameters": {"last": "${work.output.n}"}}]},
        {"name": "after", "taskReferenceName": "final", "inputParameters": {"seen": "${loop.output}"}}]}));
    let id = w.start("keep", json!({}));
    for i in 1..=50 {
        w.complete(&id, &format!("work__{i}"), json!({"n": i, "s": "x".repeat(9_000)}));
        let body: Vec<String> =
            w.wf(&id).tasks.iter().filter(|t| t.iteration > 0).map(|t| t.reference_task_name.clone()).collect();
        // The iteration just finished or running and the one before it, two tasks each.
        assert!(body.len() <= 4, "after iteration {i}: {body:?}");
    }
    let wf = w.wf(&id);
    assert_eq!(wf.status, WorkflowStatus::Running, "{}", w.dump(&id));
    let loop_task = w.task(&id, "loop");
    assert_eq!(loop_task.status, TaskStatus::Completed);
    let mut keys: Vec<&String> = loop_task.output_data.keys().collect();
    keys.sort();
    assert_eq!(keys, ["49", "50", "iteration"]);
    assert_eq!(loop_task.output_data["50"]["work"]["n"], json!(50));
    assert_eq!(w.wf(&id).variables["last"], json!(50));
    // Forgotten tasks leave the task index too.
    assert!(w.state.task_index.len() < 12, "task index holds {} entries", w.state.task_index.len());
    w.complete(&id, "final", json!({}));
    assert_eq!(w.status(&id), WorkflowStatus::Completed);
}

#[test]
fn a_loop_over_items_runs_once_per_item_with_its_item_and_index() {
    let mut w = world_with(Limits::default());
    w.workflow_def(json!({"name": "each", "tasks": [
        {"name": "loop", "taskReferenceName": "loop", "type": "DO_WHILE",
         "inputParameters": {"items": "${workflow.input.files}"},
         "loopOver": [{"name": "work", "taskReferenceName": "work",
                       "inputParameters": {"file": "${loop.output.loopItem}", "at": "${loop.output.loopIndex}"}}]}]}));
    let id = w.start("each", json!({"files": ["a.csv", {"name": "b"}, 3]}));
    for (i, (file, at)) in [(json!("a.csv"), 0), (json!({"name": "b"}), 1), (json!(3), 2)].into_iter().enumerate() {
        let reference = format!("work__{}", i + 1);
        assert_eq!(w.task(&id, &reference).input_data["file"], file);
        assert_eq!(w.task(&id, &reference).input_data["at"], json!(at));
        w.complete(&id, &reference, json!({"done": i}));
    }
    assert_eq!(w.status(&id), WorkflowStatus::Completed, "{}", w.dump(&id));
    assert_eq!(w.task(&id, "loop").output_data["iteration"], json!(3));
}

#[test]
fn a_loop_over_a_step_level_items_expression_and_over_nothing() {
    let mut w = world_with(Limits::default());
    w.workflow_def(json!({"name": "each", "tasks": [
        {"name": "loop", "taskReferenceName": "loop", "type": "DO_WHILE", "items": "${workflow.input.list}",
         "loopOver": [{"name": "work", "taskReferenceName": "work",
                       "inputParameters": {"item": "${loop.output.loopItem}"}}]}]}));
    let id = w.start("each", json!({"list": [10, 20]}));
    assert_eq!(w.task(&id, "work__1").input_data["item"], json!(10));
    w.complete(&id, "work__1", json!({}));
    assert_eq!(w.task(&id, "work__2").input_data["item"], json!(20));
    w.complete(&id, "work__2", json!({}));
    assert_eq!(w.status(&id), WorkflowStatus::Completed, "{}", w.dump(&id));
    // No items: the loop is done before its first iteration.
    let id = w.start("each", json!({"list": []}));
    assert_eq!(w.status(&id), WorkflowStatus::Completed, "{}", w.dump(&id));
    assert_eq!(w.task(&id, "loop").output_data["iteration"], json!(0));
    // Not a list: the loop fails, saying what it got.
    let id = w.start("each", json!({"list": "a,b"}));
    assert_eq!(reason(&w, &id, "loop"), "DO_WHILE items: must be a list, got a string");
}

#[test]
fn a_loop_over_more_items_than_the_iteration_limit_fails_before_it_starts() {
    let mut w = world_with(Limits { max_do_while_iterations: 5, ..Limits::default() });
    w.workflow_def(json!({"name": "each", "tasks": [
        {"name": "loop", "taskReferenceName": "loop", "type": "DO_WHILE",
         "inputParameters": {"items": "${workflow.input.list}"},
         "loopOver": [{"name": "work", "taskReferenceName": "work"}]}]}));
    let id = w.start("each", json!({"list": [1, 2, 3, 4, 5, 6]}));
    assert_eq!(w.task(&id, "loop").status, TaskStatus::FailedWithTerminalError);
    assert_eq!(reason(&w, &id, "loop"), "DO_WHILE over 6 items: limit maxDoWhileIterations = 5 reached");
    assert!(w.wf(&id).latest_by_ref("work__1").is_none(), "no iteration ran: {}", w.dump(&id));
}

#[test]
fn a_start_with_an_input_over_the_limit_is_refused_naming_it() {
    let mut w = world_with(Limits { max_workflow_input_bytes: 100, ..Limits::default() });
    w.workflow_def(json!({"name": "one", "tasks": [{"name": "work", "taskReferenceName": "work"}]}));
    let req = w.start_request("one", json!({"s": "x".repeat(200)}));
    let CommandResponse::Rejected(rejection) = w.run(Command::StartWorkflow(req)) else { panic!("not refused") };
    assert_eq!(rejection.message, "input is over 100 bytes: limit maxWorkflowInputBytes = 100 reached");
    assert!(w.state.workflows.is_empty());
}

#[test]
fn outputs_variables_and_joins_over_their_limits_fail_what_builds_them() {
    let mut w = world_with(Limits {
        max_workflow_output_bytes: 500,
        max_workflow_variables_bytes: 300,
        max_task_output_bytes: 2000,
        ..Limits::default()
    });
    // The workflow's output names a task output of 1,000 bytes twice.
    w.workflow_def(json!({"name": "out", "outputParameters": {"a": "${work.output.s}", "b": "${work.output.s}"},
        "tasks": [{"name": "work", "taskReferenceName": "work"}]}));
    let id = w.start("out", json!({}));
    w.complete(&id, "work", json!({"s": "x".repeat(1000)}));
    let wf = w.wf(&id);
    assert_eq!(wf.status, WorkflowStatus::Failed);
    assert_eq!(
        wf.reason_for_incompletion.as_deref(),
        Some("the workflow's output is over 500 bytes: limit maxWorkflowOutputBytes = 500 reached")
    );
    assert!(wf.output.is_empty());

    // SET_VARIABLE: the variables would pass 300 bytes; they stay as they were.
    w.workflow_def(json!({"name": "vars", "variables": {"kept": 1}, "tasks": [
        {"name": "set", "taskReferenceName": "set", "type": "SET_VARIABLE",
         "inputParameters": {"big": "${workflow.input.s}"}}]}));
    let id = w.start("vars", json!({"s": "x".repeat(400)}));
    assert_eq!(w.task(&id, "set").status, TaskStatus::FailedWithTerminalError);
    assert!(reason(&w, &id, "set").ends_with("limit maxWorkflowVariablesBytes = 300 reached"), "{}", w.dump(&id));
    assert_eq!(w.wf(&id).variables, *json!({"kept": 1}).as_object().expect("object"));

    // A JOIN of two outputs of 1,500 bytes: 3,000 bytes together, over the task output limit.
    w.workflow_def(json!({"name": "join", "tasks": [
        {"name": "fork", "taskReferenceName": "fork", "type": "FORK_JOIN", "forkTasks": [
            [{"name": "work", "taskReferenceName": "left"}], [{"name": "work", "taskReferenceName": "right"}]]},
        {"name": "join", "taskReferenceName": "join", "type": "JOIN", "joinOn": ["left", "right"]}]}));
    let id = w.start("join", json!({}));
    w.complete(&id, "left", json!({"s": "x".repeat(1500)}));
    w.complete(&id, "right", json!({"s": "y".repeat(1500)}));
    assert_eq!(w.task(&id, "join").status, TaskStatus::FailedWithTerminalError);
    assert!(reason(&w, &id, "join").ends_with("limit maxTaskOutputBytes = 2000 reached"), "{}", w.dump(&id));
    assert_eq!(w.status(&id), WorkflowStatus::Failed);
}

#[test]
fn a_script_result_over_the_output_limit_fails_the_task() {
    let mut w = world_with(Limits { max_task_output_bytes: 1000, ..Limits::default() });
    w.workflow_def(json!({"name": "script", "tasks": [
        {"name": "code", "taskReferenceName": "code", "type": "INLINE",
         "inputParameters": {"evaluatorType": "javascript", "expression": "'x'.repeat(2000)"}}]}));
    let id = w.start("script", json!({}));
    assert_eq!(w.task(&id, "code").status, TaskStatus::FailedWithTerminalError, "{}", w.dump(&id));
    assert_eq!(
        reason(&w, &id, "code"),
        "the output of task 'code' is over 1000 bytes: limit maxTaskOutputBytes = 1000 reached"
    );
}

/// Conductor's own input form of the list: `inputParameters._items`.
#[test]
fn a_loop_over_underscore_items() {
    let mut w = world_with(Limits::default());
    w.workflow_def(json!({"name": "each", "tasks": [
        {"name": "loop", "taskReferenceName": "loop", "type": "DO_WHILE",
         "inputParameters": {"_items": ["a", "b"]},
         "loopOver": [{"name": "work", "taskReferenceName": "work",
                       "inputParameters": {"item": "${loop.output.loopItem}"}}]}]}));
    let id = w.start("each", json!({}));
    assert_eq!(w.task(&id, "work__1").input_data["item"], json!("a"));
    w.complete(&id, "work__1", json!({}));
    assert_eq!(w.task(&id, "work__2").input_data["item"], json!("b"));
    w.complete(&id, "work__2", json!({}));
    assert_eq!(w.status(&id), WorkflowStatus::Completed, "{}", w.dump(&id));
}
