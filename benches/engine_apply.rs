//! The engine's apply cost per command (it bounds throughput: every replica applies every command in order).
//! `cargo bench --bench engine_apply` prints criterion's figures for: starting a 3-task workflow, completing a
//! task (which schedules the next), and completing the last task (which completes the workflow).

use std::collections::BTreeMap;

use baton::engine::definitions::{parse_json, WorkflowDef};
use baton::engine::memory::MemoryState;
use baton::engine::model::TaskStatus;
use baton::engine::ops::{StartWorkflow, TaskUpdate};
use baton::engine::{apply, Command, CommandResponse, Proposal};
use criterion::{criterion_group, criterion_main, Criterion};

type Mem = MemoryState;

fn run(m: &mut Mem, command: Command) -> CommandResponse {
    let applied = apply(m, &Proposal { at_ms: 1, command }).expect("in memory");
    let response = applied.response.clone();
    m.write(applied.mutations);
    response
}

fn setup() -> Mem {
    let mut m = Mem::default();
    let defs = ["a", "b", "c"]
        .iter()
        .map(|n| parse_json(&format!(r#"{{"name":"{n}","retryCount":0}}"#)).expect("def"))
        .collect();
    run(&mut m, Command::RegisterTaskDefs { defs });
    let wf: WorkflowDef = parse_json(
        r#"{"name":"three","tasks":[
            {"name":"a","taskReferenceName":"a","inputParameters":{"x":"${workflow.input.x}"}},
            {"name":"b","taskReferenceName":"b","inputParameters":{"y":"${a.output.y}"}},
            {"name":"c","taskReferenceName":"c","inputParameters":{"z":"${b.output.z}"}}]}"#,
    )
    .expect("wf");
    run(&mut m, Command::UpdateWorkflowDefs { defs: vec![wf] });
    m
}

fn start(id: &str) -> Command {
    Command::StartWorkflow(StartWorkflow {
        workflow_id: id.to_string(),
        name: "three".into(),
        version: None,
        definition: None,
        input: serde_json::from_str(r#"{"x": 1, "payload": "abcdefghijklmnopqrstuvwxyz"}"#).expect("input"),
        correlation_id: None,
        priority: 0,
        task_to_domain: BTreeMap::new(),
        idempotency_key: None,
        idempotency_strategy: Default::default(),
    })
}

fn complete(m: &Mem, id: &str, reference: &str) -> Command {
    let task_id = m.workflows[id].latest_by_ref(reference).expect("task").task_id.clone();
    let update = TaskUpdate {
        status: TaskStatus::Completed,
        output: serde_json::from_str(r#"{"y": 2, "z": 3}"#).expect("output"),
        reason: None,
        callback_after_seconds: 0,
        worker_id: Some("w".into()),
        lease: None,
    };
    Command::UpdateTask { workflow_id: id.to_string(), task_id, update }
}

fn bench(c: &mut Criterion) {
    let base = setup();
    c.bench_function("apply start_workflow (3 tasks)", |b| {
        b.iter(|| apply(&base, &Proposal { at_ms: 1, command: start("w1") }).expect("applies"))
    });
    let mut started = base.clone();
    run(&mut started, start("w1"));
    let first = complete(&started, "w1", "a");
    c.bench_function("apply update_task (schedules next)", |b| {
        b.iter(|| apply(&started, &Proposal { at_ms: 2, command: first.clone() }).expect("applies"))
    });
    let mut last = started.clone();
    let a = complete(&last, "w1", "a");
    run(&mut last, a);
    let b = complete(&last, "w1", "b");
    run(&mut last, b);
    let final_update = complete(&last, "w1", "c");
    c.bench_function("apply update_task (completes workflow)", |b| {
        b.iter(|| apply(&last, &Proposal { at_ms: 3, command: final_update.clone() }).expect("applies"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
