//! Time: response timeouts, task timeouts with each policy, poll timeouts, workflow timeouts, callbackAfterSeconds.

use serde_json::json;

use super::World;
use crate::engine::model::{TaskStatus, WorkflowStatus};
use crate::engine::ops::TaskUpdate;
use crate::engine::{Command, CommandResponse};

#[test]
fn no_update_within_the_response_timeout_times_the_attempt_out_and_retries_it() {
    let mut w = World::new();
    w.task_def(json!({"name": "slow", "retryCount": 1, "retryDelaySeconds": 0, "responseTimeoutSeconds": 10}));
    w.workflow_def(json!({"name": "rt", "tasks": [{"name": "slow", "taskReferenceName": "s"}]}));
    let id = w.start("rt", json!({}));
    let task_id = w.task(&id, "s").task_id.clone();
    w.run(Command::StartTask { workflow_id: id.clone(), task_id: task_id.clone(), worker_id: "w".into() });
    w.advance(9_999);
    w.tick(&id);
    assert_eq!(w.task(&id, "s").status, TaskStatus::InProgress);
    w.advance(1);
    w.tick(&id);
    let first = w.wf(&id).task(&task_id).expect("kept").clone();
    assert_eq!(first.status, TaskStatus::TimedOut);
    assert_eq!(
        first.reason_for_incompletion.as_deref(),
        Some(format!("responseTimeout: 10 exceeded for the taskId: {task_id} with Task Definition: slow").as_str())
    );
    assert_eq!(w.task(&id, "s").status, TaskStatus::Scheduled, "retried");
    assert_eq!(w.task(&id, "s").retry_count, 1);
}

#[test]
fn in_progress_with_callback_after_seconds_postpones_the_task_and_resets_the_response_clock() {
    let mut w = World::new();
    w.task_def(json!({"name": "long", "retryCount": 0, "responseTimeoutSeconds": 10}));
    w.workflow_def(json!({"name": "cb", "tasks": [{"name": "long", "taskReferenceName": "l"}]}));
    let id = w.start("cb", json!({}));
    let task_id = w.task(&id, "l").task_id.clone();
    w.run(Command::StartTask { workflow_id: id.clone(), task_id: task_id.clone(), worker_id: "w".into() });
    w.advance(8_000);
    let update = TaskUpdate {
        status: TaskStatus::InProgress,
        output: super::obj(json!({"progress": 50})),
        reason: None,
        callback_after_seconds: 30,
        worker_id: None,
        lease: None,
    };
    assert_eq!(w.run(Command::UpdateTask { workflow_id: id.clone(), task_id, update }), CommandResponse::Done);
    let t = w.task(&id, "l");
    assert_eq!(t.status, TaskStatus::Scheduled, "back in the queue until the callback");
    assert_eq!(t.visible_from, w.now_ms + 30_000);
    assert_eq!(t.output_data["progress"], json!(50));
    w.advance(20_000);
    w.tick(&id);
    assert_eq!(w.task(&id, "l").status, TaskStatus::Scheduled, "no response timeout while waiting for the callback");
}

#[test]
fn task_timeout_policies_retry_fail_the_workflow_or_only_alert() {
    for (policy, wf_status, task_status) in [
        ("TIME_OUT_WF", WorkflowStatus::TimedOut, TaskStatus::TimedOut),
        ("ALERT_ONLY", WorkflowStatus::Running, TaskStatus::Scheduled),
    ] {
        let mut w = World::new();
        w.task_def(json!({"name": "t", "retryCount": 0, "timeoutSeconds": 60, "responseTimeoutSeconds": 60,
                          "timeoutPolicy": policy}));
        w.workflow_def(json!({"name": "to", "tasks": [{"name": "t", "taskReferenceName": "t"}]}));
        let id = w.start("to", json!({}));
        let task_id = w.task(&id, "t").task_id.clone();
        w.run(Command::StartTask { workflow_id: id.clone(), task_id: task_id.clone(), worker_id: "w".into() });
        // Keep the response clock fresh so only timeoutSeconds can fire.
        w.advance(50_000);
        let update = TaskUpdate {
            status: TaskStatus::InProgress,
            output: Default::default(),
            reason: None,
            callback_after_seconds: 0,
            worker_id: None,
            lease: None,
        };
        w.run(Command::UpdateTask { workflow_id: id.clone(), task_id, update });
        w.advance(10_000);
        w.tick(&id);
        assert_eq!(w.status(&id), wf_status, "{policy}: {}", w.dump(&id));
        assert_eq!(w.task(&id, "t").status, task_status, "{policy}");
    }
}

#[test]
fn poll_timeout_times_out_a_task_nobody_picked_up() {
    let mut w = World::new();
    w.task_def(json!({"name": "lonely", "retryCount": 0, "pollTimeoutSeconds": 30}));
    w.workflow_def(json!({"name": "pt", "tasks": [{"name": "lonely", "taskReferenceName": "l"}]}));
    let id = w.start("pt", json!({}));
    w.advance(30_000);
    w.tick(&id);
    assert_eq!(w.task(&id, "l").status, TaskStatus::TimedOut);
    assert_eq!(w.status(&id), WorkflowStatus::TimedOut);
}

#[test]
fn workflow_timeout_times_out_the_workflow_and_cancels_its_tasks() {
    let mut w = World::new();
    w.simple_tasks(&["a"]);
    w.workflow_def(json!({"name": "wt", "timeoutSeconds": 100, "timeoutPolicy": "TIME_OUT_WF",
                          "tasks": [{"name": "a", "taskReferenceName": "a"}]}));
    let id = w.start("wt", json!({}));
    w.advance(99_999);
    w.tick(&id);
    assert_eq!(w.status(&id), WorkflowStatus::Running);
    w.advance(1);
    w.tick(&id);
    assert_eq!(w.status(&id), WorkflowStatus::TimedOut);
    assert_eq!(w.task(&id, "a").status, TaskStatus::Canceled);
}
