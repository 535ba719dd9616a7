//! One scenario per task type, from Conductor's documentation of each.

use serde_json::json;

use super::World;
use crate::engine::model::{TaskStatus, WorkflowStatus};

#[test]
fn simple_tasks_run_in_order_with_inputs_wired_from_workflow_and_previous_outputs() {
    let mut w = World::new();
    w.simple_tasks(&["encode", "publish"]);
    w.workflow_def(json!({
        "name": "media", "version": 1,
        "tasks": [
            {"name": "encode", "taskReferenceName": "enc", "inputParameters": {"file": "${workflow.input.file}", "fmt": "mp4"}},
            {"name": "publish", "taskReferenceName": "pub",
             "inputParameters": {"url": "s3://bucket/${enc.output.key}.mp4", "size": "${enc.output.meta.size}"}}
        ],
        "outputParameters": {"location": "${pub.output.url}", "id": "${workflow.workflowId}"}
    }));
    let id = w.start("media", json!({"file": "a.mov"}));
    assert_eq!(w.pending(&id), ["enc"]);
    assert_eq!(w.task(&id, "enc").input_data, super::obj(json!({"file": "a.mov", "fmt": "mp4"})));
    w.complete(&id, "enc", json!({"key": "k1", "meta": {"size": 42}}));
    assert_eq!(w.pending(&id), ["pub"]);
    assert_eq!(w.task(&id, "pub").input_data, super::obj(json!({"url": "s3://bucket/k1.mp4", "size": 42})));
    w.complete(&id, "pub", json!({"url": "https://cdn/k1.mp4"}));
    assert_eq!(w.status(&id), WorkflowStatus::Completed);
    assert_eq!(w.wf(&id).output, super::obj(json!({"location": "https://cdn/k1.mp4", "id": id})));
    assert!(w.wf(&id).end_time > 0);
}

#[test]
fn workflow_output_defaults_to_the_last_tasks_output() {
    let mut w = World::new();
    w.simple_tasks(&["a"]);
    w.workflow_def(json!({"name": "one", "tasks": [{"name": "a", "taskReferenceName": "a"}]}));
    let id = w.start("one", json!({}));
    w.complete(&id, "a", json!({"r": 1}));
    assert_eq!(w.wf(&id).output, super::obj(json!({"r": 1})));
}

#[test]
fn switch_value_param_picks_the_case_and_falls_back_to_default() {
    let mut w = World::new();
    w.simple_tasks(&["fedex", "ups", "other", "after"]);
    w.workflow_def(json!({"name": "ship", "tasks": [
        {"name": "sw", "taskReferenceName": "sw", "type": "SWITCH", "evaluatorType": "value-param",
         "expression": "carrier", "inputParameters": {"carrier": "${workflow.input.carrier}"},
         "decisionCases": {"fedex": [{"name": "fedex", "taskReferenceName": "fedex"}],
                           "ups": [{"name": "ups", "taskReferenceName": "ups"}]},
         "defaultCase": [{"name": "other", "taskReferenceName": "other"}]},
        {"name": "after", "taskReferenceName": "after"}
    ]}));
    let id = w.start("ship", json!({"carrier": "ups"}));
    assert_eq!(w.task(&id, "sw").status, TaskStatus::Completed);
    assert_eq!(w.task(&id, "sw").output_data["evaluationResult"], json!(["ups"]));
    assert_eq!(w.pending(&id), ["ups"]);
    w.complete(&id, "ups", json!({}));
    assert_eq!(w.pending(&id), ["after"]);
    w.complete(&id, "after", json!({}));
    assert_eq!(w.status(&id), WorkflowStatus::Completed);

    let id = w.start("ship", json!({"carrier": "dhl"}));
    assert_eq!(w.pending(&id), ["other"]);
}

#[test]
fn switch_javascript_and_decision_case_value_param() {
    let mut w = World::new();
    w.simple_tasks(&["big", "small"]);
    w.workflow_def(json!({"name": "js", "tasks": [
        {"name": "sw", "taskReferenceName": "sw", "type": "SWITCH", "evaluatorType": "javascript",
         "expression": "$.n > 10 ? 'big' : 'small'", "inputParameters": {"n": "${workflow.input.n}"},
         "decisionCases": {"big": [{"name": "big", "taskReferenceName": "big"}],
                           "small": [{"name": "small", "taskReferenceName": "small"}]}}
    ]}));
    let id = w.start("js", json!({"n": 50}));
    assert_eq!(w.pending(&id), ["big"]);
    w.workflow_def(json!({"name": "dec", "tasks": [
        {"name": "d", "taskReferenceName": "d", "type": "DECISION", "caseValueParam": "kind",
         "inputParameters": {"kind": "${workflow.input.kind}"},
         "decisionCases": {"small": [{"name": "small", "taskReferenceName": "small"}]}}
    ]}));
    let id = w.start("dec", json!({"kind": "small"}));
    assert_eq!(w.pending(&id), ["small"]);
    // A case with no branch and no default continues after the decision: here the workflow ends.
    let id = w.start("dec", json!({"kind": "none"}));
    assert_eq!(w.status(&id), WorkflowStatus::Completed, "{}", w.dump(&id));
}

#[test]
fn fork_join_runs_lanes_in_parallel_and_joins_their_outputs() {
    let mut w = World::new();
    w.simple_tasks(&["a1", "a2", "b1", "end"]);
    w.workflow_def(json!({"name": "fj", "tasks": [
        {"name": "fork", "taskReferenceName": "fork", "type": "FORK_JOIN", "forkTasks": [
            [{"name": "a1", "taskReferenceName": "a1"}, {"name": "a2", "taskReferenceName": "a2"}],
            [{"name": "b1", "taskReferenceName": "b1"}]]},
        {"name": "join", "taskReferenceName": "join", "type": "JOIN", "joinOn": ["a2", "b1"]},
        {"name": "end", "taskReferenceName": "end", "inputParameters": {"joined": "${join.output}"}}
    ]}));
    let id = w.start("fj", json!({}));
    assert_eq!(w.pending(&id), ["a1", "b1"]);
    assert_eq!(w.task(&id, "join").status, TaskStatus::InProgress);
    w.complete(&id, "b1", json!({"b": 1}));
    w.complete(&id, "a1", json!({}));
    assert_eq!(w.task(&id, "join").status, TaskStatus::InProgress, "a2 still pending");
    w.complete(&id, "a2", json!({"a": 2}));
    assert_eq!(w.task(&id, "join").status, TaskStatus::Completed);
    assert_eq!(w.task(&id, "join").output_data, super::obj(json!({"a2": {"a": 2}, "b1": {"b": 1}})));
    assert_eq!(w.pending(&id), ["end"]);
    assert_eq!(w.task(&id, "end").input_data["joined"], json!({"a2": {"a": 2}, "b1": {"b": 1}}));
}

#[test]
fn fork_join_dynamic_forks_the_given_tasks_and_joins_them() {
    let mut w = World::new();
    w.simple_tasks(&["resize"]);
    w.workflow_def(json!({"name": "dyn", "tasks": [
        {"name": "fan", "taskReferenceName": "fan", "type": "FORK_JOIN_DYNAMIC",
         "dynamicForkTasksParam": "tasks", "dynamicForkTasksInputParamName": "inputs",
         "inputParameters": {"tasks": "${workflow.input.tasks}", "inputs": "${workflow.input.inputs}"}},
        {"name": "join", "taskReferenceName": "join", "type": "JOIN"}
    ]}));
    let id = w.start(
        "dyn",
        json!({
            "tasks": [{"name": "resize", "taskReferenceName": "r300"}, {"name": "resize", "taskReferenceName": "r600"}],
            "inputs": {"r300": {"width": 300}, "r600": {"width": 600}}
        }),
    );
    assert_eq!(w.pending(&id), ["r300", "r600"]);
    assert_eq!(w.task(&id, "r600").input_data["width"], json!(600));
    w.complete(&id, "r300", json!({"ok": 300}));
    assert_eq!(w.status(&id), WorkflowStatus::Running);
    w.complete(&id, "r600", json!({"ok": 600}));
    assert_eq!(w.status(&id), WorkflowStatus::Completed, "{}", w.dump(&id));
    assert_eq!(w.task(&id, "join").output_data, super::obj(json!({"r300": {"ok": 300}, "r600": {"ok": 600}})));
}

#[test]
fn do_while_repeats_its_body_with_suffixed_references_until_the_condition_is_false() {
    let mut w = World::new();
    w.simple_tasks(&["step", "after"]);
    w.workflow_def(json!({"name": "loop", "tasks": [
        {"name": "loop", "taskReferenceName": "loop", "type": "DO_WHILE",
         "inputParameters": {"max": "${workflow.input.max}"},
         "loopCondition": "if ($.loop['iteration'] < $.max) { true; } else { false; }",
         "loopOver": [{"name": "step", "taskReferenceName": "step", "inputParameters": {"i": "${loop.output.iteration}"}}]},
        {"name": "after", "taskReferenceName": "after"}
    ]}));
    let id = w.start("loop", json!({"max": 3}));
    for i in 1..=3 {
        assert_eq!(w.pending(&id), [format!("step__{i}")], "{}", w.dump(&id));
        w.complete(&id, &format!("step__{i}"), json!({"n": i}));
    }
    assert_eq!(w.pending(&id), ["after"]);
    let lp = w.task(&id, "loop");
    assert_eq!(lp.status, TaskStatus::Completed);
    assert_eq!(lp.output_data["iteration"], json!(3));
    assert_eq!(lp.output_data["2"], json!({"step": {"n": 2}}));
}

#[test]
fn sub_workflow_runs_the_child_and_returns_its_output() {
    let mut w = World::new();
    w.simple_tasks(&["inner", "outer_next"]);
    w.workflow_def(json!({"name": "child", "tasks": [{"name": "inner", "taskReferenceName": "inner"}],
                          "outputParameters": {"got": "${inner.output.v}"}}));
    w.workflow_def(json!({"name": "parent", "tasks": [
        {"name": "sub", "taskReferenceName": "sub", "type": "SUB_WORKFLOW",
         "subWorkflowParam": {"name": "child", "version": 1}, "inputParameters": {"x": "${workflow.input.x}"}},
        {"name": "outer_next", "taskReferenceName": "next", "inputParameters": {"r": "${sub.output.got}"}}
    ]}));
    let id = w.start("parent", json!({"x": 7}));
    let sub = w.task(&id, "sub").clone();
    assert_eq!(sub.status, TaskStatus::InProgress);
    let child = sub.sub_workflow_id.expect("child id");
    assert_eq!(w.wf(&child).parent_workflow_id.as_deref(), Some(id.as_str()));
    assert_eq!(w.wf(&child).input["x"], json!(7));
    w.complete(&child, "inner", json!({"v": "deep"}));
    assert_eq!(w.status(&child), WorkflowStatus::Completed);
    assert_eq!(w.task(&id, "sub").status, TaskStatus::Completed);
    assert_eq!(w.task(&id, "next").input_data["r"], json!("deep"));
}

#[test]
fn sub_workflow_failure_fails_the_parent_and_terminating_the_parent_terminates_the_child() {
    let mut w = World::new();
    w.simple_tasks(&["inner"]);
    w.workflow_def(json!({"name": "child", "tasks": [{"name": "inner", "taskReferenceName": "inner"}]}));
    w.workflow_def(json!({"name": "parent", "tasks": [
        {"name": "sub", "taskReferenceName": "sub", "type": "SUB_WORKFLOW", "subWorkflowParam": {"name": "child"}}]}));
    let id = w.start("parent", json!({}));
    let child = w.task(&id, "sub").sub_workflow_id.clone().expect("child");
    w.fail(&child, "inner", "boom");
    assert_eq!(w.status(&child), WorkflowStatus::Failed);
    assert_eq!(w.status(&id), WorkflowStatus::Failed, "{}", w.dump(&id));

    let id = w.start("parent", json!({}));
    let child = w.task(&id, "sub").sub_workflow_id.clone().expect("child");
    let r = w.run(crate::engine::Command::Terminate { workflow_id: id.clone(), reason: "stop".into() });
    assert_eq!(r, crate::engine::CommandResponse::Done);
    assert_eq!(w.status(&child), WorkflowStatus::Terminated);
}

#[test]
fn start_workflow_fires_and_forgets() {
    let mut w = World::new();
    w.simple_tasks(&["inner"]);
    w.workflow_def(json!({"name": "other", "tasks": [{"name": "inner", "taskReferenceName": "inner"}]}));
    w.workflow_def(json!({"name": "kick", "tasks": [
        {"name": "start", "taskReferenceName": "start", "type": "START_WORKFLOW",
         "inputParameters": {"startWorkflow": {"name": "other", "input": {"a": 1}}}}]}));
    let id = w.start("kick", json!({}));
    assert_eq!(w.status(&id), WorkflowStatus::Completed, "{}", w.dump(&id));
    let started = w.task(&id, "start").output_data["workflowId"].as_str().expect("id").to_string();
    assert_eq!(w.status(&started), WorkflowStatus::Running);
    assert_eq!(w.wf(&started).input["a"], json!(1));
    assert_eq!(w.wf(&started).parent_workflow_id, None);
}

#[test]
fn set_variable_inline_jq_and_noop_run_inside_the_engine() {
    let mut w = World::new();
    w.workflow_def(json!({"name": "sys", "tasks": [
        {"name": "set", "taskReferenceName": "set", "type": "SET_VARIABLE", "inputParameters": {"count": 2}},
        {"name": "js", "taskReferenceName": "js", "type": "INLINE",
         "inputParameters": {"evaluatorType": "javascript", "v": "${workflow.variables.count}",
                             "expression": "function e() { return {double: $.v * 2}; } e();"}},
        {"name": "jq", "taskReferenceName": "jq", "type": "JSON_JQ_TRANSFORM",
         "inputParameters": {"items": [1, 2, 3], "queryExpression": ".items | map(. * 10)"}},
        {"name": "noop", "taskReferenceName": "noop", "type": "NOOP"}
    ], "outputParameters": {"vars": "${workflow.variables}", "js": "${js.output.result.double}", "jq": "${jq.output.result}"}}));
    let id = w.start("sys", json!({}));
    assert_eq!(w.status(&id), WorkflowStatus::Completed, "{}", w.dump(&id));
    assert_eq!(w.wf(&id).output, super::obj(json!({"vars": {"count": 2}, "js": 4, "jq": [10, 20, 30]})));
}

#[test]
fn terminate_task_ends_the_workflow_with_its_status_and_output() {
    let mut w = World::new();
    w.simple_tasks(&["never"]);
    w.workflow_def(json!({"name": "term", "tasks": [
        {"name": "t", "taskReferenceName": "t", "type": "TERMINATE",
         "inputParameters": {"terminationStatus": "FAILED", "terminationReason": "bad input",
                             "workflowOutput": {"why": "${workflow.input.why}"}}},
        {"name": "never", "taskReferenceName": "never"}
    ]}));
    let id = w.start("term", json!({"why": "x"}));
    assert_eq!(w.status(&id), WorkflowStatus::Failed);
    assert_eq!(w.wf(&id).reason_for_incompletion.as_deref(), Some("bad input"));
    assert_eq!(w.wf(&id).output, super::obj(json!({"why": "x"})));
    assert!(w.pending(&id).is_empty());
}

#[test]
fn dynamic_task_runs_the_task_named_by_its_input() {
    let mut w = World::new();
    w.simple_tasks(&["shipping_fedex"]);
    w.workflow_def(json!({"name": "dyn1", "tasks": [
        {"name": "ship", "taskReferenceName": "ship", "type": "DYNAMIC", "dynamicTaskNameParam": "which",
         "inputParameters": {"which": "${workflow.input.carrier}"}}]}));
    let id = w.start("dyn1", json!({"carrier": "shipping_fedex"}));
    let t = w.task(&id, "ship");
    assert_eq!((t.task_type.as_str(), t.task_def_name.as_str()), ("shipping_fedex", "shipping_fedex"));
    w.complete(&id, "ship", json!({}));
    assert_eq!(w.status(&id), WorkflowStatus::Completed);
}

#[test]
fn wait_with_duration_completes_on_the_tick_after_it_and_human_waits_for_a_signal() {
    let mut w = World::new();
    w.workflow_def(json!({"name": "waits", "tasks": [
        {"name": "w", "taskReferenceName": "w", "type": "WAIT", "inputParameters": {"duration": "2 minutes"}},
        {"name": "h", "taskReferenceName": "h", "type": "HUMAN"}
    ]}));
    let id = w.start("waits", json!({}));
    assert_eq!(w.task(&id, "w").status, TaskStatus::InProgress);
    w.advance(60_000);
    w.tick(&id);
    assert_eq!(w.task(&id, "w").status, TaskStatus::InProgress);
    w.advance(60_000);
    w.tick(&id);
    assert_eq!(w.task(&id, "w").status, TaskStatus::Completed);
    assert_eq!(w.task(&id, "h").status, TaskStatus::InProgress);
    let update = crate::engine::ops::TaskUpdate {
        status: TaskStatus::Completed,
        output: super::obj(json!({"approved": true})),
        reason: None,
        callback_after_seconds: 0,
        worker_id: None,
        lease: None,
    };
    let r = w.run(crate::engine::Command::SignalTask { workflow_id: id.clone(), task_ref: "h".into(), update });
    assert_eq!(r, crate::engine::CommandResponse::Done);
    assert_eq!(w.status(&id), WorkflowStatus::Completed);
}

#[test]
fn start_delay_hides_a_task_from_workers_until_it_passes() {
    let mut w = World::new();
    w.simple_tasks(&["later"]);
    w.workflow_def(
        json!({"name": "delayed", "tasks": [{"name": "later", "taskReferenceName": "l", "startDelay": 30}]}),
    );
    let id = w.start("delayed", json!({}));
    assert_eq!(w.task(&id, "l").visible_from, w.now_ms + 30_000);
}

#[test]
fn wait_until_an_absolute_time_completes_on_the_first_tick_after_it() {
    let mut w = World::new();
    w.workflow_def(json!({"name": "until", "tasks": [
        {"name": "w", "taskReferenceName": "w", "type": "WAIT", "inputParameters": {"until": "2023-11-14 22:15 UTC"}}]}));
    // World's clock starts at 2023-11-14 22:13:20 UTC (1_700_000_000_000 ms).
    let id = w.start("until", json!({}));
    assert_eq!(w.task(&id, "w").visible_from, 1_700_000_100_000);
    w.advance(99_999);
    w.tick(&id);
    assert_eq!(w.status(&id), WorkflowStatus::Running);
    w.advance(1);
    w.tick(&id);
    assert_eq!(w.status(&id), WorkflowStatus::Completed);
}

#[test]
fn a_bad_wait_duration_fails_the_task() {
    let mut w = World::new();
    w.workflow_def(json!({"name": "badwait", "tasks": [
        {"name": "w", "taskReferenceName": "w", "type": "WAIT", "inputParameters": {"duration": "${workflow.input.d}"}}]}));
    let id = w.start("badwait", json!({"d": "soon"}));
    assert_eq!(w.task(&id, "w").status, TaskStatus::Failed);
    assert_eq!(w.status(&id), WorkflowStatus::Failed);
}

#[test]
fn sub_workflow_with_an_inline_definition_needs_nothing_registered() {
    let mut w = World::new();
    w.simple_tasks(&["inner"]);
    w.workflow_def(json!({"name": "parent_inline", "tasks": [
        {"name": "sub", "taskReferenceName": "sub", "type": "SUB_WORKFLOW",
         "subWorkflowParam": {"name": "adhoc", "workflowDefinition": {"name": "adhoc", "tasks": [
             {"name": "inner", "taskReferenceName": "inner"}]}}}]}));
    let id = w.start("parent_inline", json!({}));
    let child = w.task(&id, "sub").sub_workflow_id.clone().expect("child");
    assert_eq!(w.wf(&child).workflow_name, "adhoc");
    w.complete(&child, "inner", json!({"v": 1}));
    assert_eq!(w.status(&id), WorkflowStatus::Completed);
    assert_eq!(w.task(&id, "sub").output_data["v"], json!(1));
    assert_eq!(w.task(&id, "sub").output_data["subWorkflowId"], json!(child));
}

#[test]
fn a_failed_optional_task_in_a_fork_completes_the_join_with_errors() {
    let mut w = World::new();
    w.simple_tasks(&["a", "b"]);
    w.workflow_def(json!({"name": "fjopt", "tasks": [
        {"name": "fork", "taskReferenceName": "fork", "type": "FORK_JOIN", "forkTasks": [
            [{"name": "a", "taskReferenceName": "a", "optional": true}], [{"name": "b", "taskReferenceName": "b"}]]},
        {"name": "join", "taskReferenceName": "join", "type": "JOIN", "joinOn": ["a", "b"]}]}));
    let id = w.start("fjopt", json!({}));
    w.fail(&id, "a", "meh");
    w.complete(&id, "b", json!({"b": 1}));
    assert_eq!(w.task(&id, "join").status, TaskStatus::CompletedWithErrors);
    assert_eq!(w.status(&id), WorkflowStatus::Completed);
}
