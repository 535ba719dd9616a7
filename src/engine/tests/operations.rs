//! Operations: retries and failure handling, terminate, pause/resume, retry, restart, rerun, skip, routing slips.

use serde_json::json;

use super::World;
use crate::engine::definitions::parse_json;
use crate::engine::model::{TaskStatus, WorkflowStatus};
use crate::engine::{Command, CommandResponse, RejectionKind};

fn rejected(r: CommandResponse) -> RejectionKind {
    match r {
        CommandResponse::Rejected(rej) => rej.kind,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn two_step(w: &mut World) {
    w.simple_tasks(&["a", "b"]);
    w.workflow_def(json!({"name": "two", "tasks": [
        {"name": "a", "taskReferenceName": "a"}, {"name": "b", "taskReferenceName": "b"}]}));
}

#[test]
fn a_failed_task_is_retried_after_its_delay_then_the_workflow_carries_on() {
    let mut w = World::new();
    w.task_def(json!({"name": "flaky", "retryCount": 2, "retryLogic": "FIXED", "retryDelaySeconds": 5}));
    w.workflow_def(json!({"name": "r", "tasks": [{"name": "flaky", "taskReferenceName": "f"}]}));
    let id = w.start("r", json!({}));
    let first = w.task(&id, "f").task_id.clone();
    w.fail(&id, "f", "transient");
    let retry = w.task(&id, "f").clone();
    assert_ne!(retry.task_id, first);
    assert_eq!(retry.retry_count, 1);
    assert_eq!(retry.retried_task_id.as_deref(), Some(first.as_str()));
    assert_eq!(retry.status, TaskStatus::Scheduled);
    assert_eq!(retry.visible_from, w.now_ms + 5000);
    assert!(w.wf(&id).task(&first).expect("kept").retried);
    w.complete(&id, "f", json!({"ok": true}));
    assert_eq!(w.status(&id), WorkflowStatus::Completed);
}

#[test]
fn retry_delays_follow_the_retry_logic() {
    use crate::engine::time::retry_delay_ms;
    let def = |logic: &str| {
        parse_json::<crate::engine::definitions::TaskDef>(&format!(
            r#"{{"name":"t","retryLogic":"{logic}","retryDelaySeconds":2,"backoffScaleFactor":3}}"#
        ))
        .expect("parses")
    };
    assert_eq!((0..3).map(|n| retry_delay_ms(&def("FIXED"), n)).collect::<Vec<_>>(), [2000, 2000, 2000]);
    assert_eq!((0..3).map(|n| retry_delay_ms(&def("EXPONENTIAL_BACKOFF"), n)).collect::<Vec<_>>(), [2000, 4000, 8000]);
    assert_eq!((0..3).map(|n| retry_delay_ms(&def("LINEAR_BACKOFF"), n)).collect::<Vec<_>>(), [6000, 12000, 18000]);
}

#[test]
fn exhausted_retries_fail_the_workflow_and_start_its_failure_workflow() {
    let mut w = World::new();
    w.task_def(json!({"name": "flaky", "retryCount": 1, "retryDelaySeconds": 0}));
    w.simple_tasks(&["cleanup"]);
    w.workflow_def(json!({"name": "on_fail", "tasks": [{"name": "cleanup", "taskReferenceName": "c"}]}));
    w.workflow_def(
        json!({"name": "r", "failureWorkflow": "on_fail", "tasks": [{"name": "flaky", "taskReferenceName": "f"}]}),
    );
    let id = w.start("r", json!({}));
    w.fail(&id, "f", "first");
    w.fail(&id, "f", "second");
    let wf = w.wf(&id).clone();
    assert_eq!(wf.status, WorkflowStatus::Failed);
    let failed_attempt = w.task(&id, "f").task_id.clone();
    assert_eq!(
        wf.reason_for_incompletion.as_deref(),
        Some(format!("Task {failed_attempt} failed with status: FAILED and reason: 'second'").as_str())
    );
    assert_eq!(wf.output["conductor.failure_workflow"], json!(wf.failure_workflow_id.clone().expect("id")));
    assert!(wf.failed_reference_task_names.contains("f"));
    let failure = wf.failure_workflow_id.expect("failure workflow started");
    let fw = w.wf(&failure);
    assert_eq!(fw.workflow_name, "on_fail");
    assert_eq!(fw.input["workflowId"], json!(id));
    assert_eq!(fw.input["reason"], json!(wf.reason_for_incompletion));
    assert_eq!(fw.input["failureStatus"], json!("FAILED"));
    assert_eq!(fw.input["failureTaskId"], json!(w.task(&id, "f").task_id));
}

#[test]
fn terminal_error_is_never_retried_and_optional_failures_do_not_stop_the_workflow() {
    let mut w = World::new();
    w.task_def(json!({"name": "flaky", "retryCount": 3}));
    w.simple_tasks(&["next"]);
    w.workflow_def(json!({"name": "opt", "tasks": [
        {"name": "flaky", "taskReferenceName": "f", "optional": true}, {"name": "next", "taskReferenceName": "n"}]}));
    let id = w.start("opt", json!({}));
    w.fail_terminally(&id, "f", "bad data");
    assert_eq!(w.wf(&id).tasks.iter().filter(|t| t.reference_task_name == "f").count(), 1, "no retry");
    assert_eq!(w.task(&id, "f").status, TaskStatus::CompletedWithErrors);
    assert_eq!(w.pending(&id), ["n"]);
}

#[test]
fn terminate_cancels_pending_tasks_and_refuses_a_completed_workflow() {
    let mut w = World::new();
    two_step(&mut w);
    let id = w.start("two", json!({}));
    let r = w.run(Command::Terminate { workflow_id: id.clone(), reason: "operator".into() });
    assert_eq!(r, CommandResponse::Done);
    assert_eq!(w.status(&id), WorkflowStatus::Terminated);
    assert_eq!(w.task(&id, "a").status, TaskStatus::Canceled);
    assert_eq!(w.wf(&id).reason_for_incompletion.as_deref(), Some("operator"));
    let again = w.run(Command::Terminate { workflow_id: id, reason: "again".into() });
    assert_eq!(again, CommandResponse::Done, "terminating a TERMINATED workflow is a no-op");
    let done = w.start("two", json!({}));
    w.complete(&done, "a", json!({}));
    w.complete(&done, "b", json!({}));
    let r = w.run(Command::Terminate { workflow_id: done, reason: String::new() });
    assert_eq!(rejected(r), RejectionKind::Conflict);
    let ghost = w.run(Command::Terminate { workflow_id: "nope".into(), reason: String::new() });
    assert_eq!(rejected(ghost), RejectionKind::NotFound);
}

#[test]
fn a_paused_workflow_records_completions_but_schedules_nothing_until_resumed() {
    let mut w = World::new();
    two_step(&mut w);
    let id = w.start("two", json!({}));
    assert_eq!(w.run(Command::Pause { workflow_id: id.clone() }), CommandResponse::Done);
    w.complete(&id, "a", json!({}));
    assert_eq!(w.status(&id), WorkflowStatus::Paused);
    assert!(w.pending(&id).is_empty(), "{}", w.dump(&id));
    assert_eq!(w.run(Command::Resume { workflow_id: id.clone() }), CommandResponse::Done);
    assert_eq!(w.pending(&id), ["b"]);
}

#[test]
fn retry_reschedules_the_failed_task_of_a_failed_workflow() {
    let mut w = World::new();
    two_step(&mut w);
    let id = w.start("two", json!({}));
    w.complete(&id, "a", json!({}));
    w.fail(&id, "b", "down");
    assert_eq!(w.status(&id), WorkflowStatus::Failed);
    assert_eq!(w.run(Command::Retry { workflow_id: id.clone() }), CommandResponse::Done);
    assert_eq!(w.status(&id), WorkflowStatus::Running);
    assert_eq!(w.pending(&id), ["b"]);
    w.complete(&id, "b", json!({}));
    assert_eq!(w.status(&id), WorkflowStatus::Completed);
    let running = w.start("two", json!({}));
    assert_eq!(rejected(w.run(Command::Retry { workflow_id: running })), RejectionKind::Conflict);
}

#[test]
fn restart_runs_a_finished_workflow_again_unless_it_is_not_restartable() {
    let mut w = World::new();
    two_step(&mut w);
    let id = w.start("two", json!({"k": 1}));
    w.complete(&id, "a", json!({}));
    w.complete(&id, "b", json!({}));
    let r = w.run(Command::Restart { workflow_id: id.clone(), use_latest_definition: false });
    assert_eq!(r, CommandResponse::Done);
    assert_eq!(w.status(&id), WorkflowStatus::Running);
    assert_eq!(w.pending(&id), ["a"]);
    assert_eq!(w.wf(&id).input["k"], json!(1));

    w.workflow_def(json!({"name": "once", "restartable": false, "tasks": [{"name": "a", "taskReferenceName": "a"}]}));
    let id = w.start("once", json!({}));
    w.complete(&id, "a", json!({}));
    let r = w.run(Command::Restart { workflow_id: id, use_latest_definition: false });
    assert_eq!(rejected(r), RejectionKind::Conflict);
}

#[test]
fn rerun_from_a_task_drops_it_and_what_followed_and_runs_it_with_new_input() {
    let mut w = World::new();
    two_step(&mut w);
    let id = w.start("two", json!({}));
    w.complete(&id, "a", json!({"v": 1}));
    w.complete(&id, "b", json!({}));
    let a = w.task(&id, "a").task_id.clone();
    let r = w.run(Command::Rerun {
        workflow_id: id.clone(),
        from_task_id: a,
        task_input: Some(super::obj(json!({"again": true}))),
        workflow_input: None,
    });
    assert_eq!(r, CommandResponse::Done);
    assert_eq!(w.pending(&id), ["a"]);
    assert_eq!(w.task(&id, "a").input_data["again"], json!(true));
    assert_eq!(w.wf(&id).tasks.len(), 1);
}

#[test]
fn rerun_without_a_task_runs_the_whole_workflow_again_with_the_new_input() {
    let mut w = World::new();
    two_step(&mut w);
    let id = w.start("two", json!({"v": 1}));
    w.complete(&id, "a", json!({}));
    w.complete(&id, "b", json!({}));
    assert_eq!(w.status(&id), WorkflowStatus::Completed);
    let r = w.run(Command::Rerun {
        workflow_id: id.clone(),
        from_task_id: String::new(),
        task_input: None,
        workflow_input: Some(super::obj(json!({"v": 2}))),
    });
    assert_eq!(r, CommandResponse::Done);
    assert_eq!(w.status(&id), WorkflowStatus::Running);
    assert_eq!(w.pending(&id), ["a"]);
    assert_eq!(w.wf(&id).tasks.len(), 1);
    assert_eq!(w.wf(&id).input["v"], json!(2));
}

#[test]
fn skip_passes_over_a_step_not_yet_scheduled_and_refuses_one_already_processed() {
    let mut w = World::new();
    two_step(&mut w);
    let id = w.start("two", json!({}));
    let r =
        w.run(Command::SkipTask { workflow_id: id.clone(), task_ref: "b".into(), output: super::obj(json!({"s": 1})) });
    assert_eq!(r, CommandResponse::Done);
    let again = w.run(Command::SkipTask { workflow_id: id.clone(), task_ref: "a".into(), output: Default::default() });
    assert_eq!(rejected(again), RejectionKind::Conflict);
    w.complete(&id, "a", json!({}));
    assert_eq!(w.task(&id, "b").status, TaskStatus::Skipped);
    assert_eq!(w.status(&id), WorkflowStatus::Completed, "{}", w.dump(&id));
    assert_eq!(w.wf(&id).output, super::obj(json!({"s": 1})), "the skipped step's output is the last task's");
}

#[test]
fn a_routing_slip_runs_an_inline_definition_without_registering_it() {
    let mut w = World::new();
    w.simple_tasks(&["x", "y"]);
    let mut req = w.start_request("", json!({}));
    req.definition = Some(
        parse_json(
            r#"{"name":"slip","tasks":[{"name":"y","taskReferenceName":"y"},{"name":"x","taskReferenceName":"x"}]}"#,
        )
        .expect("parses"),
    );
    let CommandResponse::WorkflowStarted { workflow_id } = w.run(Command::StartWorkflow(req)) else { panic!("start") };
    assert_eq!(w.pending(&workflow_id), ["y"]);
    assert!(w.state.workflow_defs.is_empty(), "nothing registered");
}

#[test]
fn starting_an_unknown_workflow_or_reusing_an_id_is_refused() {
    let mut w = World::new();
    let req = w.start_request("ghost", json!({}));
    assert_eq!(rejected(w.run(Command::StartWorkflow(req))), RejectionKind::NotFound);
    two_step(&mut w);
    let mut req = w.start_request("two", json!({}));
    req.workflow_id = "fixed".into();
    assert!(matches!(w.run(Command::StartWorkflow(req.clone())), CommandResponse::WorkflowStarted { .. }));
    assert_eq!(rejected(w.run(Command::StartWorkflow(req))), RejectionKind::Conflict);
}

#[test]
fn updates_to_finished_tasks_are_acknowledged_and_change_nothing() {
    let mut w = World::new();
    two_step(&mut w);
    let id = w.start("two", json!({}));
    w.complete(&id, "a", json!({"first": true}));
    let before = w.wf(&id).clone();
    let task_id = w.task(&id, "a").task_id.clone();
    let update = crate::engine::ops::TaskUpdate {
        status: TaskStatus::Completed,
        output: super::obj(json!({"second": true})),
        reason: None,
        callback_after_seconds: 0,
        worker_id: None,
        lease: None,
    };
    // Conductor acknowledges a repeated update of a finished task and changes nothing.
    let r = w.run(Command::UpdateTask { workflow_id: id.clone(), task_id, update });
    assert_eq!(r, CommandResponse::Done);
    assert_eq!(w.wf(&id), &before);
}

#[test]
fn retry_after_a_failed_fork_branch_reruns_the_branch_and_the_join() {
    let mut w = World::new();
    w.simple_tasks(&["a", "b", "end"]);
    w.workflow_def(json!({"name": "fj", "tasks": [
        {"name": "fork", "taskReferenceName": "fork", "type": "FORK_JOIN", "forkTasks": [
            [{"name": "a", "taskReferenceName": "a"}], [{"name": "b", "taskReferenceName": "b"}]]},
        {"name": "join", "taskReferenceName": "join", "type": "JOIN", "joinOn": ["a", "b"]},
        {"name": "end", "taskReferenceName": "end"}]}));
    let id = w.start("fj", json!({}));
    w.complete(&id, "a", json!({"a": 1}));
    w.fail(&id, "b", "down");
    assert_eq!(w.status(&id), WorkflowStatus::Failed);
    assert_eq!(w.task(&id, "join").status, TaskStatus::Canceled);
    assert_eq!(w.run(Command::Retry { workflow_id: id.clone() }), CommandResponse::Done);
    assert_eq!(w.pending(&id), ["b"], "{}", w.dump(&id));
    w.complete(&id, "b", json!({"b": 2}));
    assert_eq!(w.pending(&id), ["end"], "{}", w.dump(&id));
    assert_eq!(w.task(&id, "join").output_data, super::obj(json!({"a": {"a": 1}, "b": {"b": 2}})));
}

#[test]
fn restart_with_the_latest_definition_runs_the_new_steps() {
    let mut w = World::new();
    two_step(&mut w);
    let id = w.start("two", json!({}));
    w.complete(&id, "a", json!({}));
    w.complete(&id, "b", json!({}));
    w.workflow_def(json!({"name": "two", "version": 2, "tasks": [{"name": "b", "taskReferenceName": "b_first"}]}));
    let r = w.run(Command::Restart { workflow_id: id.clone(), use_latest_definition: true });
    assert_eq!(r, CommandResponse::Done);
    assert_eq!(w.pending(&id), ["b_first"]);
    assert_eq!(w.wf(&id).workflow_version, 2);
}

#[test]
fn terminating_a_workflow_by_operator_starts_no_failure_workflow() {
    let mut w = World::new();
    w.simple_tasks(&["a", "cleanup"]);
    w.workflow_def(json!({"name": "on_fail", "tasks": [{"name": "cleanup", "taskReferenceName": "c"}]}));
    w.workflow_def(
        json!({"name": "guarded", "failureWorkflow": "on_fail", "tasks": [{"name": "a", "taskReferenceName": "a"}]}),
    );
    let id = w.start("guarded", json!({}));
    assert_eq!(w.run(Command::Terminate { workflow_id: id.clone(), reason: "stop".into() }), CommandResponse::Done);
    assert_eq!(w.wf(&id).failure_workflow_id, None);
    assert_eq!(w.state.workflows.len(), 1);
}

#[test]
fn definitions_with_malformed_expressions_or_scripts_are_refused_with_their_paths() {
    let mut w = World::new();
    w.simple_tasks(&["a"]);
    let def: crate::engine::definitions::WorkflowDef = parse_json(
        &json!({"name": "bad", "tasks": [
            {"name": "a", "taskReferenceName": "a", "inputParameters": {"x": "${workflow.input.x", "ok": "${a.output}"}},
            {"name": "s", "taskReferenceName": "s", "type": "SWITCH", "evaluatorType": "javascript",
             "expression": "$.x ==== 1", "decisionCases": {"1": [{"name": "a", "taskReferenceName": "a2"}]}},
            {"name": "l", "taskReferenceName": "l", "type": "DO_WHILE", "loopOver": [{"name": "a", "taskReferenceName": "a3"}]},
            {"name": "t", "taskReferenceName": "t", "type": "TERMINATE", "inputParameters": {"terminationStatus": "DONE"}}
        ]})
        .to_string(),
    )
    .expect("parses");
    let command = Command::RegisterWorkflowDef { def, overwrite: false };
    // Code is compiled before the log only (never in apply): the API refuses the script with its path.
    let code_paths: Vec<_> = command.validate_code().into_iter().map(|e| e.path).collect();
    assert_eq!(code_paths, ["tasks[1].expression"]);
    let response = w.run(command);
    let CommandResponse::Rejected(rejection) = response else { panic!("expected a rejection") };
    let paths: Vec<_> = rejection.field_errors.iter().map(|e| e.path.as_str()).collect();
    for expected in
        ["tasks[0].inputParameters.x", "tasks[2].loopCondition", "tasks[3].inputParameters.terminationStatus"]
    {
        assert!(paths.contains(&expected), "{expected} not in {paths:?}");
    }
    assert!(w.state.workflow_defs.is_empty());
}

#[test]
fn a_start_repeated_with_the_same_idempotency_key_answers_the_same_workflow() {
    let mut w = World::new();
    two_step(&mut w);
    let mut first = w.start_request("two", json!({}));
    first.idempotency_key = Some("order-42".into());
    let mut retry = first.clone();
    retry.workflow_id = "another-id-drawn-by-the-retry".into();
    let CommandResponse::WorkflowStarted { workflow_id: a } = w.run(Command::StartWorkflow(first)) else { panic!() };
    let CommandResponse::WorkflowStarted { workflow_id: b } = w.run(Command::StartWorkflow(retry)) else { panic!() };
    assert_eq!(a, b);
    assert_eq!(w.state.workflows.len(), 1);
    // Within one batch too.
    let mut x = w.start_request("two", json!({}));
    x.idempotency_key = Some("k2".into());
    let mut y = x.clone();
    y.workflow_id = "y".into();
    let CommandResponse::Batch(answers) =
        w.run(Command::Batch(vec![Command::StartWorkflow(x), Command::StartWorkflow(y)]))
    else {
        panic!()
    };
    assert_eq!(answers[0], answers[1]);
}

#[test]
fn deleting_definitions_leaves_running_workflows_alone_and_unknown_ones_are_not_found() {
    let mut w = World::new();
    two_step(&mut w);
    w.workflow_def(json!({"name": "two", "version": 2, "tasks": [{"name": "a", "taskReferenceName": "a"}]}));
    let running = w.start("two", json!({}));
    assert_eq!(w.wf(&running).workflow_version, 2);

    let delete_v2 = Command::DeleteWorkflowDef { name: "two".into(), version: 2 };
    assert_eq!(w.run(delete_v2.clone()), CommandResponse::Done);
    assert_eq!(rejected(w.run(delete_v2)), RejectionKind::NotFound);
    assert_eq!(
        rejected(w.run(Command::DeleteWorkflowDef { name: "nope".into(), version: 1 })),
        RejectionKind::NotFound
    );
    assert_eq!(w.run(Command::DeleteTaskDef { name: "b".into() }), CommandResponse::Done);
    assert_eq!(rejected(w.run(Command::DeleteTaskDef { name: "b".into() })), RejectionKind::NotFound);
    assert!(!w.state.task_defs.contains_key("b") && w.state.task_defs.contains_key("a"));

    // The latest version is now 1; the workflow that started on version 2 runs to the end on its own copy.
    let next = w.start("two", json!({}));
    assert_eq!(w.wf(&next).workflow_version, 1);
    w.complete(&running, "a", json!({}));
    assert_eq!(w.status(&running), WorkflowStatus::Completed);
}

/// Version `version` of `two_step`'s workflow, with step "a" only.
fn two_version(version: u32) -> crate::engine::definitions::WorkflowDef {
    let json = json!({"name": "two", "version": version, "tasks": [{"name": "a", "taskReferenceName": "a"}]});
    parse_json(&json.to_string()).expect("parses")
}

#[test]
fn a_batch_sees_the_deletions_of_its_earlier_commands() {
    let mut w = World::new();
    two_step(&mut w);
    let v3 = two_version(3);
    let start = w.start_request("two", json!({}));
    let started = start.workflow_id.clone();
    let CommandResponse::Batch(answers) = w.run(Command::Batch(vec![
        Command::RegisterWorkflowDef { def: v3, overwrite: false },
        Command::DeleteWorkflowDef { name: "two".into(), version: 3 },
        Command::StartWorkflow(start),
        Command::DeleteTaskDef { name: "a".into() },
        Command::DeleteTaskDef { name: "a".into() },
        Command::DeleteWorkflowDef { name: "two".into(), version: 3 },
    ])) else {
        panic!("expected the batch's answers")
    };
    assert_eq!(answers[..2], [CommandResponse::Done, CommandResponse::Done]);
    assert_eq!(answers[2], CommandResponse::WorkflowStarted { workflow_id: started.clone() });
    assert_eq!(w.wf(&started).workflow_version, 1, "the start saw version 3 deleted");
    assert_eq!(answers[3], CommandResponse::Done);
    assert_eq!(rejected(answers[4].clone()), RejectionKind::NotFound);
    assert_eq!(rejected(answers[5].clone()), RejectionKind::NotFound);
    assert_eq!(w.state.workflow_defs.keys().map(|(_, v)| *v).collect::<Vec<_>>(), [1]);
}

#[test]
fn a_batch_starts_the_stored_latest_version_until_it_writes_a_newer_one() {
    let mut w = World::new();
    two_step(&mut w);
    let v2 = two_version(2);
    let (before, after) = (w.start_request("two", json!({})), w.start_request("two", json!({})));
    let (before_id, after_id) = (before.workflow_id.clone(), after.workflow_id.clone());
    let CommandResponse::Batch(answers) = w.run(Command::Batch(vec![
        Command::StartWorkflow(before),
        Command::RegisterWorkflowDef { def: v2, overwrite: false },
        Command::StartWorkflow(after),
    ])) else {
        panic!("expected the batch's answers")
    };
    assert_eq!(answers[1], CommandResponse::Done);
    assert_eq!(w.wf(&before_id).workflow_version, 1, "no version written yet: the stored latest");
    assert_eq!(w.wf(&after_id).workflow_version, 2, "the version the batch wrote");
}

#[test]
fn idempotency_strategies_fail_return_existing_or_fail_only_while_running() {
    use crate::engine::ops::IdempotencyStrategy;
    let mut w = World::new();
    two_step(&mut w);
    let start = |w: &mut World, strategy| {
        let mut req = w.start_request("two", json!({}));
        req.idempotency_key = Some("order-7".into());
        req.idempotency_strategy = strategy;
        w.run(Command::StartWorkflow(req))
    };
    let CommandResponse::WorkflowStarted { workflow_id: first } = start(&mut w, IdempotencyStrategy::Fail) else {
        panic!("the first start with a key starts")
    };
    assert_eq!(rejected(start(&mut w, IdempotencyStrategy::Fail)), RejectionKind::Conflict);
    assert_eq!(rejected(start(&mut w, IdempotencyStrategy::FailOnRunning)), RejectionKind::Conflict);
    let again = start(&mut w, IdempotencyStrategy::ReturnExisting);
    assert_eq!(again, CommandResponse::WorkflowStarted { workflow_id: first.clone() });

    // Once the first has ended, FAIL_ON_RUNNING starts a new workflow and the key now names it.
    w.complete(&first, "a", json!({}));
    w.complete(&first, "b", json!({}));
    assert_eq!(w.status(&first), WorkflowStatus::Completed);
    let CommandResponse::WorkflowStarted { workflow_id: second } = start(&mut w, IdempotencyStrategy::FailOnRunning)
    else {
        panic!("a new start once the first ended")
    };
    assert_ne!(second, first);
    let latest = start(&mut w, IdempotencyStrategy::ReturnExisting);
    assert_eq!(latest, CommandResponse::WorkflowStarted { workflow_id: second });
    assert_eq!(w.state.workflows.len(), 2);
}

#[test]
fn applied_commands_report_the_status_transitions_they_make() {
    use crate::engine::{apply, Proposal, Transitions};
    let mut w = World::new();
    two_step(&mut w);
    let run = |w: &mut World, command| -> Transitions {
        let applied = apply(&w.state, &Proposal { at_ms: w.now_ms, command }).expect("applies");
        w.state.write(applied.mutations);
        applied.transitions
    };
    let start = w.start_request("two", json!({}));
    let id = start.workflow_id.clone();
    let started = run(&mut w, Command::StartWorkflow(start));
    assert_eq!(started.workflows, [(None, WorkflowStatus::Running)]);
    assert!(started.tasks_ended.is_empty());

    let update = |w: &World, reference: &str, status| Command::UpdateTask {
        workflow_id: id.clone(),
        task_id: w.task(&id, reference).task_id.clone(),
        update: crate::engine::ops::TaskUpdate {
            status,
            output: Default::default(),
            reason: Some("boom".into()),
            callback_after_seconds: 0,
            worker_id: None,
            lease: None,
        },
    };
    let command = update(&w, "a", TaskStatus::Completed);
    let a_done = run(&mut w, command);
    assert_eq!(a_done.tasks_ended, [("a".to_string(), TaskStatus::Completed)]);
    assert!(a_done.workflows.is_empty(), "{a_done:?}");
    // A repeated report changes nothing and reports nothing.
    let command = update(&w, "a", TaskStatus::Completed);
    let again = run(&mut w, command);
    assert_eq!(again, Transitions::default());
    let command = update(&w, "b", TaskStatus::FailedWithTerminalError);
    let b_failed = run(&mut w, command);
    assert_eq!(b_failed.tasks_ended, [("b".to_string(), TaskStatus::FailedWithTerminalError)]);
    assert_eq!(b_failed.workflows, [(Some(WorkflowStatus::Running), WorkflowStatus::Failed)]);
}
