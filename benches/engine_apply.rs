//! The engine's apply cost per command (it bounds throughput: every replica applies every command in order).
//! `cargo bench --bench engine_apply` prints criterion's figures for: starting a 3-task workflow, completing a
//! task (which schedules the next), and completing the last task (which completes the workflow).

use std::collections::BTreeMap;

use baton::engine::definitions::{parse_json, TaskDef, WorkflowDef};
use baton::engine::model::{TaskStatus, Workflow};
use baton::engine::ops::{StartWorkflow, TaskUpdate};
use baton::engine::{apply, workflow_version, Command, CommandResponse, Mutation, Proposal, StateError, StateView};
use criterion::{criterion_group, criterion_main, Criterion};

#[derive(Default, Clone)]
struct Mem {
    task_defs: BTreeMap<String, TaskDef>,
    workflow_defs: BTreeMap<(String, u32), WorkflowDef>,
    workflows: BTreeMap<String, Workflow>,
}

impl StateView for Mem {
    fn task_def(&self, name: &str) -> Result<Option<TaskDef>, StateError> {
        Ok(self.task_defs.get(name).cloned())
    }
    fn workflow_def(&self, name: &str, version: u32) -> Result<Option<WorkflowDef>, StateError> {
        Ok(self.workflow_defs.get(&(name.to_string(), version)).cloned())
    }
    fn latest_workflow_def(&self, name: &str) -> Result<Option<WorkflowDef>, StateError> {
        Ok(self
            .workflow_defs
            .range((name.to_string(), 0)..=(name.to_string(), u32::MAX))
            .last()
            .map(|(_, d)| d.clone()))
    }
    fn workflow(&self, id: &str) -> Result<Option<Workflow>, StateError> {
        Ok(self.workflows.get(id).cloned())
    }
    fn idempotency_key(&self, _key: &str) -> Result<Option<String>, StateError> {
        Ok(None)
    }
}

impl Mem {
    fn run(&mut self, command: Command) -> CommandResponse {
        let applied = apply(self, &Proposal { at_ms: 1, command }).expect("in memory");
        for m in applied.mutations {
            match m {
                Mutation::PutTaskDef(d) => {
                    self.task_defs.insert(d.name.clone(), d);
                }
                Mutation::PutWorkflowDef(d) => {
                    self.workflow_defs.insert((d.name.clone(), workflow_version(&d)), d);
                }
                Mutation::PutWorkflow(w) => {
                    self.workflows.insert(w.workflow_id.clone(), *w);
                }
                Mutation::PutIdempotencyKey { .. } => {}
            }
        }
        applied.response
    }
}

fn setup() -> Mem {
    let mut m = Mem::default();
    let defs = ["a", "b", "c"]
        .iter()
        .map(|n| parse_json(&format!(r#"{{"name":"{n}","retryCount":0}}"#)).expect("def"))
        .collect();
    m.run(Command::RegisterTaskDefs { defs });
    let wf: WorkflowDef = parse_json(
        r#"{"name":"three","tasks":[
            {"name":"a","taskReferenceName":"a","inputParameters":{"x":"${workflow.input.x}"}},
            {"name":"b","taskReferenceName":"b","inputParameters":{"y":"${a.output.y}"}},
            {"name":"c","taskReferenceName":"c","inputParameters":{"z":"${b.output.z}"}}]}"#,
    )
    .expect("wf");
    m.run(Command::UpdateWorkflowDefs { defs: vec![wf] });
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
    started.run(start("w1"));
    let first = complete(&started, "w1", "a");
    c.bench_function("apply update_task (schedules next)", |b| {
        b.iter(|| apply(&started, &Proposal { at_ms: 2, command: first.clone() }).expect("applies"))
    });
    let mut last = started.clone();
    last.run(complete(&last, "w1", "a"));
    last.run(complete(&last, "w1", "b"));
    let final_update = complete(&last, "w1", "c");
    c.bench_function("apply update_task (completes workflow)", |b| {
        b.iter(|| apply(&last, &Proposal { at_ms: 3, command: final_update.clone() }).expect("applies"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
