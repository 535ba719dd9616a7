//! Leases: each dispatch carries a lease number; a completion under an old lease is refused and changes nothing,
//! the same completion repeated under the lease that made it is acknowledged without a second change.

use serde_json::json;

use super::{obj, World};
use crate::engine::model::{LeaseRef, TaskStatus, WorkflowStatus};
use crate::engine::ops::{TaskRef, TaskUpdate};
use crate::engine::{Command, CommandResponse, RejectionKind};

fn lease(w: &mut World, id: &str, reference: &str, worker: &str) -> (String, u64) {
    let task_id = w.task(id, reference).task_id.clone();
    let r = w.run(Command::LeaseTasks {
        worker_id: worker.into(),
        poll_id: None,
        tasks: vec![TaskRef { workflow_id: id.into(), task_id: task_id.clone() }],
    });
    let CommandResponse::Leased { granted } = r else { panic!("lease answered {r:?}") };
    assert_eq!(granted.len(), 1, "lease of {reference} not granted: {}", w.dump(id));
    (task_id, granted[0].lease_seq)
}

fn report(w: &mut World, id: &str, task_id: &str, lease_seq: u64, status: TaskStatus, cb: u64) -> CommandResponse {
    let update = TaskUpdate {
        status,
        output: obj(json!({"by": lease_seq})),
        reason: Some("r".into()),
        callback_after_seconds: cb,
        worker_id: None,
        lease: Some(LeaseRef { lease_seq }),
    };
    w.run(Command::UpdateTask { workflow_id: id.into(), task_id: task_id.into(), update })
}

fn stale(r: CommandResponse) -> bool {
    matches!(r, CommandResponse::Rejected(rej) if rej.kind == RejectionKind::StaleLease)
}

fn one_task(w: &mut World, response_timeout: u64) -> String {
    w.task_def(
        json!({"name": "job", "retryCount": 1, "retryDelaySeconds": 0, "responseTimeoutSeconds": response_timeout}),
    );
    w.workflow_def(json!({"name": "one", "tasks": [{"name": "job", "taskReferenceName": "job"}]}));
    w.start("one", json!({}))
}

#[test]
fn a_repeated_completion_is_acknowledged_once_and_a_wrong_lease_is_refused() {
    let mut w = World::new();
    let id = one_task(&mut w, 60);
    let (task_id, seq) = lease(&mut w, &id, "job", "w1");
    assert_eq!(seq, 1);
    assert!(stale(report(&mut w, &id, &task_id, 7, TaskStatus::Completed, 0)), "unknown lease refused");
    assert_eq!(w.task(&id, "job").status, TaskStatus::InProgress);
    assert_eq!(report(&mut w, &id, &task_id, seq, TaskStatus::Completed, 0), CommandResponse::Done);
    let done = w.wf(&id).clone();
    assert_eq!(done.status, WorkflowStatus::Completed);
    assert_eq!(
        report(&mut w, &id, &task_id, seq, TaskStatus::Completed, 0),
        CommandResponse::Done,
        "repeat acknowledged"
    );
    assert_eq!(w.wf(&id), &done, "and applied once");
    // Whatever else the finishing lease holder says afterwards changes nothing either.
    assert_eq!(report(&mut w, &id, &task_id, seq, TaskStatus::Failed, 0), CommandResponse::Done);
    assert_eq!(w.wf(&id), &done);
}

#[test]
fn a_late_completion_after_a_response_timeout_is_refused_and_the_retry_carries_on() {
    let mut w = World::new();
    let id = one_task(&mut w, 10);
    let (old_task, old_seq) = lease(&mut w, &id, "job", "dead-worker");
    w.advance(10_000);
    w.tick(&id);
    assert_eq!(w.wf(&id).task(&old_task).expect("kept").status, TaskStatus::TimedOut);
    let (new_task, new_seq) = lease(&mut w, &id, "job", "live-worker");
    assert_ne!(new_task, old_task);
    let before = w.wf(&id).clone();
    assert!(stale(report(&mut w, &id, &old_task, old_seq, TaskStatus::Completed, 0)), "late completion refused");
    assert_eq!(w.wf(&id), &before, "and changed nothing");
    assert_eq!(report(&mut w, &id, &new_task, new_seq, TaskStatus::Completed, 0), CommandResponse::Done);
    assert_eq!(w.status(&id), WorkflowStatus::Completed);
}

#[test]
fn a_task_handed_out_again_after_a_callback_refuses_its_previous_holder() {
    let mut w = World::new();
    let id = one_task(&mut w, 60);
    let (task_id, first) = lease(&mut w, &id, "job", "w1");
    assert_eq!(report(&mut w, &id, &task_id, first, TaskStatus::InProgress, 5), CommandResponse::Done);
    assert_eq!(w.task(&id, "job").status, TaskStatus::Scheduled);
    let refused = w.run(Command::LeaseTasks {
        worker_id: "w2".into(),
        poll_id: None,
        tasks: vec![TaskRef { workflow_id: id.clone(), task_id: task_id.clone() }],
    });
    assert_eq!(refused, CommandResponse::Leased { granted: vec![] }, "not visible before the callback");
    w.advance(5_000);
    let (same, second) = lease(&mut w, &id, "job", "w2");
    assert_eq!((same.as_str(), second), (task_id.as_str(), 2));
    assert!(stale(report(&mut w, &id, &task_id, first, TaskStatus::Completed, 0)));
    assert_eq!(report(&mut w, &id, &task_id, second, TaskStatus::Completed, 0), CommandResponse::Done);
}

#[test]
fn heartbeats_keep_a_long_task_alive() {
    let mut w = World::new();
    let id = one_task(&mut w, 10);
    let (task_id, seq) = lease(&mut w, &id, "job", "w1");
    for _ in 0..5 {
        w.advance(8_000);
        let r = w.run(Command::ExtendLease {
            workflow_id: id.clone(),
            task_id: task_id.clone(),
            lease: LeaseRef { lease_seq: seq },
        });
        assert_eq!(r, CommandResponse::Done);
        w.tick(&id);
        assert_eq!(w.task(&id, "job").status, TaskStatus::InProgress);
    }
    assert_eq!(w.wf(&id).next_tick_ms, w.now_ms + 10_000, "the next tick is the response deadline");
}

#[test]
fn a_batch_applies_its_commands_in_order_each_seeing_the_previous() {
    let mut w = World::new();
    let id = one_task(&mut w, 60);
    let task_id = w.task(&id, "job").task_id.clone();
    let r = w.run(Command::Batch(vec![
        Command::LeaseTasks {
            worker_id: "w".into(),
            poll_id: None,
            tasks: vec![TaskRef { workflow_id: id.clone(), task_id: task_id.clone() }],
        },
        Command::LeaseTasks {
            worker_id: "w2".into(),
            poll_id: None,
            tasks: vec![TaskRef { workflow_id: id.clone(), task_id }],
        },
        Command::Terminate { workflow_id: "missing".into(), reason: String::new() },
    ]));
    let CommandResponse::Batch(answers) = r else { panic!("batch answered {r:?}") };
    assert!(matches!(&answers[0], CommandResponse::Leased { granted } if granted.len() == 1));
    assert_eq!(answers[1], CommandResponse::Leased { granted: vec![] }, "the second lease sees the first");
    assert!(matches!(&answers[2], CommandResponse::Rejected(r) if r.kind == RejectionKind::NotFound));
}

#[test]
fn concurrent_exec_limit_holds_back_leases_until_an_attempt_finishes() {
    let mut w = World::new();
    w.task_def(json!({"name": "scarce", "retryCount": 0, "concurrentExecLimit": 2}));
    w.workflow_def(json!({"name": "s", "tasks": [{"name": "scarce", "taskReferenceName": "x"}]}));
    let ids: Vec<String> = (0..3).map(|_| w.start("s", json!({}))).collect();
    let refs: Vec<TaskRef> =
        ids.iter().map(|id| TaskRef { workflow_id: id.clone(), task_id: w.task(id, "x").task_id.clone() }).collect();
    let CommandResponse::Leased { granted } =
        w.run(Command::LeaseTasks { worker_id: "w".into(), poll_id: None, tasks: refs.clone() })
    else {
        panic!()
    };
    assert_eq!(granted.len(), 2, "two at most in progress");
    assert_eq!(w.state.type_stats["scarce"].in_progress, 2);
    let (first, lease_seq) = (&granted[0], granted[0].lease_seq);
    assert_eq!(
        report(&mut w, &first.workflow_id.clone(), &first.task_id.clone(), lease_seq, TaskStatus::Completed, 0),
        CommandResponse::Done
    );
    assert_eq!(w.state.type_stats["scarce"].in_progress, 1);
    let CommandResponse::Leased { granted } =
        w.run(Command::LeaseTasks { worker_id: "w".into(), poll_id: None, tasks: refs })
    else {
        panic!()
    };
    assert_eq!(granted.len(), 1, "the third now fits");
}

#[test]
fn rate_limit_allows_so_many_dispatches_per_window() {
    let mut w = World::new();
    w.task_def(
        json!({"name": "metered", "retryCount": 0, "rateLimitPerFrequency": 2, "rateLimitFrequencyInSeconds": 10}),
    );
    w.workflow_def(json!({"name": "m", "tasks": [{"name": "metered", "taskReferenceName": "x"}]}));
    let ids: Vec<String> = (0..3).map(|_| w.start("m", json!({}))).collect();
    let refs: Vec<TaskRef> =
        ids.iter().map(|id| TaskRef { workflow_id: id.clone(), task_id: w.task(id, "x").task_id.clone() }).collect();
    let lease_all = |w: &mut World| match w.run(Command::LeaseTasks {
        worker_id: "w".into(),
        poll_id: None,
        tasks: refs.clone(),
    }) {
        CommandResponse::Leased { granted } => granted.len(),
        other => panic!("{other:?}"),
    };
    assert_eq!(lease_all(&mut w), 2);
    w.advance(9_999);
    assert_eq!(lease_all(&mut w), 0, "the window is spent");
    w.advance(1);
    assert_eq!(lease_all(&mut w), 1, "a new window");
}

#[test]
fn the_index_answers_which_in_progress_tasks_a_poll_leased_until_they_finish() {
    use crate::engine::pending::PendingIndex;
    let mut w = World::new();
    let id = one_task(&mut w, 30);
    let task_id = w.task(&id, "job").task_id.clone();
    let r = w.run(Command::LeaseTasks {
        worker_id: "w".into(),
        poll_id: Some("poll-7".into()),
        tasks: vec![TaskRef { workflow_id: id.clone(), task_id: task_id.clone() }],
    });
    let CommandResponse::Leased { granted } = r else { panic!("lease answered {r:?}") };
    let mut index = PendingIndex::default();
    index.update(w.wf(&id));
    assert_eq!(index.leased_by("poll-7"), vec![(id.clone(), task_id.clone())]);
    assert!(index.leased_by("poll-8").is_empty());

    assert_eq!(report(&mut w, &id, &task_id, granted[0].lease_seq, TaskStatus::Completed, 0), CommandResponse::Done);
    index.update(w.wf(&id));
    assert!(index.leased_by("poll-7").is_empty(), "a finished task is no longer the poll's to answer");
}
