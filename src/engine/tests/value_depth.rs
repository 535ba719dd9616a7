//! How deep values may nest: what arrives from outside is refused beyond [`MAX_VALUE_DEPTH`], what the engine
//! composes fails the step (or the workflow) that would have stored it. Every workflow these tests write is also
//! decoded again by the in-memory state, so a value the state machine could not read back fails them.

use serde_json::{json, Value};

use super::World;
use crate::engine::model::{TaskStatus, WorkflowStatus, MAX_VALUE_DEPTH};
use crate::engine::ops::TaskUpdate;
use crate::engine::{Command, CommandResponse, RejectionKind};

/// An object nested `levels` deep (`{"v": {"v": ... 0}}`), `levels` counting the outermost.
fn nested(levels: usize) -> Value {
    (0..levels).fold(json!(0), |inner, _| json!({ "v": inner }))
}

fn refusal(response: CommandResponse) -> String {
    match response {
        CommandResponse::Rejected(r) if r.kind == RejectionKind::Invalid => r.message,
        other => panic!("expected an invalid-input rejection, got {other:?}"),
    }
}

#[test]
fn a_start_input_nested_deeper_than_the_limit_is_refused_and_one_at_the_limit_runs() {
    let mut w = World::new();
    w.simple_tasks(&["a"]);
    w.workflow_def(json!({"name": "one", "tasks": [
        {"name": "a", "taskReferenceName": "a", "inputParameters": {"x": "${workflow.input.x}"}}]}));
    // The input object is one level, its "x" the rest.
    let req = w.start_request("one", json!({ "x": nested(MAX_VALUE_DEPTH) }));
    let message = refusal(w.run(Command::StartWorkflow(req)));
    assert_eq!(message, format!("input nests arrays and objects more than {MAX_VALUE_DEPTH} levels deep"));
    let id = w.start("one", json!({ "x": nested(MAX_VALUE_DEPTH - 1) }));
    assert_eq!(w.pending(&id), ["a"], "{}", w.dump(&id));
    assert_eq!(w.task(&id, "a").input_data["x"], nested(MAX_VALUE_DEPTH - 1));
}

#[test]
fn a_worker_output_nested_deeper_than_the_limit_is_refused_and_the_task_stays_with_the_worker() {
    let mut w = World::new();
    w.simple_tasks(&["a"]);
    w.workflow_def(json!({"name": "one", "tasks": [{"name": "a", "taskReferenceName": "a"}]}));
    let id = w.start("one", json!({}));
    let task_id = w.task(&id, "a").task_id.clone();
    let start = Command::StartTask { workflow_id: id.clone(), task_id: task_id.clone(), worker_id: "w1".into() };
    assert_eq!(w.run(start), CommandResponse::Done);
    let update = |output: Value| TaskUpdate {
        status: TaskStatus::Completed,
        output: output.as_object().cloned().expect("an object"),
        reason: None,
        callback_after_seconds: 0,
        worker_id: Some("w1".into()),
        lease: None,
    };
    let deep = Command::UpdateTask {
        workflow_id: id.clone(),
        task_id: task_id.clone(),
        update: update(json!({ "r": nested(MAX_VALUE_DEPTH) })),
    };
    assert_eq!(
        refusal(w.run(deep)),
        format!("outputData nests arrays and objects more than {MAX_VALUE_DEPTH} levels deep")
    );
    assert_eq!(w.task(&id, "a").status, TaskStatus::InProgress, "a refused update changes nothing");
    w.complete(&id, "a", json!({ "r": nested(MAX_VALUE_DEPTH - 1) }));
    assert_eq!(w.status(&id), WorkflowStatus::Completed, "{}", w.dump(&id));
}

#[test]
fn a_loop_that_wraps_a_variable_in_itself_fails_the_step_that_would_nest_too_deep() {
    let mut w = World::new();
    // Each iteration stores {"v": <the variable as it was>}: one level deeper per pass, without end.
    w.workflow_def(json!({"name": "grow", "tasks": [
        {"name": "init", "taskReferenceName": "init", "type": "SET_VARIABLE", "inputParameters": {"x": 0}},
        {"name": "loop", "taskReferenceName": "loop", "type": "DO_WHILE",
         "loopCondition": "true",
         "loopOver": [{"name": "wrap", "taskReferenceName": "wrap", "type": "SET_VARIABLE",
                       "inputParameters": {"x": {"v": "${workflow.variables.x}"}}}]}
    ]}));
    let id = w.start("grow", json!({}));
    assert_eq!(w.status(&id), WorkflowStatus::Failed, "{}", w.dump(&id));
    // Iteration i stores the variable i + 1 levels deep inside its input map: iteration 100 is the first over.
    let failed = w.task(&id, &format!("wrap__{MAX_VALUE_DEPTH}"));
    assert_eq!(failed.status, TaskStatus::FailedWithTerminalError);
    assert_eq!(
        failed.reason_for_incompletion.as_deref(),
        Some(format!("the resolved input nests arrays and objects more than {MAX_VALUE_DEPTH} levels deep").as_str())
    );
    assert!(failed.input_data.is_empty(), "the input that could not be kept is not kept");
    assert_eq!(w.wf(&id).variables["x"], nested(MAX_VALUE_DEPTH - 1), "the last variable whose input fitted");
    let reason = w.wf(&id).reason_for_incompletion.clone().unwrap_or_default();
    assert!(reason.contains(&format!("more than {MAX_VALUE_DEPTH} levels deep")), "the workflow names why: {reason}");
}

#[test]
fn an_output_template_that_nests_too_deep_fails_the_workflow_instead_of_completing_it() {
    let mut w = World::new();
    w.simple_tasks(&["a"]);
    w.workflow_def(json!({"name": "out", "tasks": [{"name": "a", "taskReferenceName": "a"}],
                          "outputParameters": {"wrapped": {"twice": "${a.output.r}"}}}));
    let id = w.start("out", json!({}));
    w.complete(&id, "a", json!({ "r": nested(MAX_VALUE_DEPTH - 1) }));
    assert_eq!(w.status(&id), WorkflowStatus::Failed, "{}", w.dump(&id));
    assert_eq!(
        w.wf(&id).reason_for_incompletion.as_deref(),
        Some(
            format!("the workflow's output nests arrays and objects more than {MAX_VALUE_DEPTH} levels deep").as_str()
        )
    );
    assert!(w.wf(&id).output.is_empty());

    let id = w.start("out", json!({}));
    w.complete(&id, "a", json!({ "r": nested(MAX_VALUE_DEPTH - 3) }));
    assert_eq!(w.status(&id), WorkflowStatus::Completed, "{}", w.dump(&id));
    assert_eq!(w.wf(&id).output["wrapped"]["twice"], nested(MAX_VALUE_DEPTH - 3));
}

#[test]
fn a_dynamic_step_whose_resolved_input_nests_too_deep_fails_on_the_depth_and_keeps_no_input() {
    let mut w = World::new();
    // The input map and "wrapped" around a value of 99 levels: 101.
    w.workflow_def(json!({"name": "dyn", "tasks": [
        {"name": "d", "taskReferenceName": "d", "type": "DYNAMIC", "dynamicTaskNameParam": "which",
         "inputParameters": {"wrapped": {"x": "${workflow.input.x}"}}}]}));
    let id = w.start("dyn", json!({ "x": nested(MAX_VALUE_DEPTH - 1) }));
    assert_eq!(w.status(&id), WorkflowStatus::Failed, "{}", w.dump(&id));
    let failed = w.task(&id, "d");
    assert_eq!(
        failed.reason_for_incompletion.as_deref(),
        Some(format!("the resolved input nests arrays and objects more than {MAX_VALUE_DEPTH} levels deep").as_str())
    );
    assert!(failed.input_data.is_empty());
}
