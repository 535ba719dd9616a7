//! Every case the fuzzer (tests/fuzz.rs) found, minimised by hand from what it wrote under
//! `target/fuzz-findings/` and replayed through its driver: each test asserts that the case now keeps every
//! promise of "apply is total" (bounded time and heap per apply, no panic, the leader's chores accepted, an
//! identical replay). A finding whose fix is still open is `#[ignore]`d with its number and the reason; the fix
//! removes the attribute.
//!
//! The cases are played in this process, one at a time (the heap is measured for the whole process): a case that
//! still aborts or overflows its stack takes the test binary down with it, which is why open findings stay
//! ignored rather than expected to fail.

#[allow(dead_code)] // Shared with the fuzzer, which uses all of it.
#[path = "fuzz/case.rs"]
mod case;
#[allow(dead_code)] // Shared with the fuzzer, which uses all of it.
#[path = "fuzz/driver.rs"]
mod driver;

use std::sync::{Mutex, MutexGuard};

use serde_json::{json, Map, Value};

use baton::engine::definitions::{TaskDef, WorkflowDef};
use baton::engine::memory::MemoryState;
use baton::engine::ops::StartWorkflow;
use baton::engine::Command;

use case::{Act, Case, Step};

/// Counts the heap, so that the driver can hold each apply to its bound.
#[global_allocator]
static HEAP: peak_alloc::PeakAlloc = peak_alloc::PeakAlloc;

/// One test at a time: the heap counter is the whole process's, so a test building its case or dropping its
/// state would be counted in another's apply (or hide the driver's probe of the counter). Each test takes its turn
/// first, and holds it until everything it built is dropped.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Plays the case and asserts that it keeps every promise.
fn behaves(steps: Vec<Step>) {
    plays(steps);
}

/// Plays the case, asserts that it keeps every promise, and gives the state it ends in.
fn plays(steps: Vec<Step>) -> MemoryState {
    let case = Case { steps, forged_outcomes: Vec::new() };
    let mut evaluator = driver::SandboxEvaluator::new();
    match driver::play_to_end(&case, &mut evaluator, &mut |_| {}) {
        Ok((_, state)) => state,
        Err(failure) => panic!("{failure}"),
    }
}

fn task_defs(defs: Value) -> Step {
    let defs: Vec<TaskDef> = serde_json::from_value(defs).expect("task definitions parse");
    Step::Client(Command::RegisterTaskDefs { defs })
}

fn workflow_def(def: Value) -> Step {
    let def: WorkflowDef = serde_json::from_value(def).expect("a workflow definition parses");
    Step::Client(Command::UpdateWorkflowDefs { defs: vec![def] })
}

fn start(workflow_id: &str, name: &str, input: Value) -> Step {
    Step::Client(Command::StartWorkflow(StartWorkflow {
        workflow_id: workflow_id.to_string(),
        name: name.to_string(),
        version: None,
        definition: None,
        input: input.as_object().cloned().unwrap_or_default(),
        correlation_id: None,
        priority: 0,
        task_to_domain: Default::default(),
        idempotency_key: None,
        idempotency_strategy: Default::default(),
    }))
}

/// Finding 1 (`leader:tick-spins`, seed 1): a worker holds a task whose definition is then deleted. The workflow's
/// timer still counts the task's response timeout (`Exec::next_tick` in src/engine/ops/timeouts.rs takes
/// `effective_task_def`, which falls back to Conductor's default definition), but `op_tick` skips a task without
/// a registered or inline definition (`self.task_def(..).or_else(embedded_task_def)`), so the Tick changes
/// nothing and leaves the workflow due at once: the leader's timers propose a Tick for it in a loop, forever.
/// Fixed in d2ab02c: a Tick times out tasks by the same definition the timer used.
#[test]
fn a_deleted_task_definition_does_not_make_the_leader_tick_forever() {
    let _turn = turn();
    behaves(vec![
        task_defs(json!([{"name": "b", "retryCount": 0, "timeoutSeconds": 1, "responseTimeoutSeconds": 1}])),
        workflow_def(json!({"name": "w", "tasks": [{"name": "b", "taskReferenceName": "b"}]})),
        start("wf-1", "w", json!({})),
        Step::Client(Command::DeleteTaskDef { name: "b".into() }),
        Step::Act(Act::Poll { queue: 0, count: 1 }),
        Step::Advance(1000),
    ]);
}

/// Finding 2 (`bound:time:start_workflow`, seed 1): every task scheduled resolves its inputParameters against a
/// root document that `WorkflowRoots::root` builds by copying the workflow's whole input, output and variables
/// (`json!` in `roots::workflow_root`, src/engine/roots.rs; `task_root` likewise for `${ref.*}`), even for
/// `${workflow.input.x}`. A FORK_JOIN of 1,000 lanes scheduled in one decision
/// therefore copies the input 1,000 times: a start with a 1 MiB input (the API's default document limit) takes
/// seconds of CPU on every replica. The same copy is made for each SUB_WORKFLOW's `subWorkflowParam` name and
/// version (`start_child` resolves each with a resolver of its own): the fuzzer's case (seed 1006) spent 16 s of
/// CPU in one Tick batch starting a fork of 1,449 sub-workflows named `${workflow.input.name}`. Fixed: paths read
/// the members they name in place (`Roots::member`), and only a path over a whole root builds it, counted against
/// the resolution's cap.
#[test]
fn a_wide_fork_does_not_copy_the_workflow_input_once_per_lane() {
    let _turn = turn();
    let lanes: Vec<Value> = (0..1000)
        .map(|i| {
            json!([{"name": "a", "taskReferenceName": format!("l{i}"), "inputParameters": {"x": "${workflow.input.x}"}}])
        })
        .collect();
    let items: Vec<Value> = (0..20_000).map(|i| json!({"k": i})).collect();
    let mut input = Map::new();
    input.insert("x".into(), json!(1));
    input.insert("items".into(), Value::Array(items));
    behaves(vec![
        task_defs(json!([{"name": "a"}])),
        workflow_def(json!({"name": "wide", "tasks": [
            {"name": "f", "taskReferenceName": "f", "type": "FORK_JOIN", "forkTasks": lanes},
            {"name": "j", "taskReferenceName": "j", "type": "JOIN"}]})),
        start("wf-1", "wide", Value::Object(input)),
    ]);
}

/// Finding 3 (`bound:time:update_workflow_defs`, seed 1004): registering a definition checks that every
/// sub-workflow it names exists and that no chain of starts leads back to it. `references::check` looked up (and
/// copied) the named definition, then walked every definition reachable from it, once per step naming it: a
/// FORK_JOIN of 1,500 lanes each naming the same large definition took 1.7 s of CPU to register. Fixed in
/// src/engine/references.rs: each distinct name and version is looked up and walked once, and a walk skips the
/// definitions an earlier walk found not to lead back.
#[test]
fn registering_a_wide_fork_of_sub_workflows_walks_each_named_definition_once() {
    let _turn = turn();
    let big: Vec<Value> = (0..2000)
        .map(|i| {
            json!({"name": "a", "taskReferenceName": format!("a{i}"), "inputParameters": {"x": "${workflow.input.x}"}})
        })
        .collect();
    let lanes: Vec<Value> = (0..1500)
        .map(|i| {
            json!([{"name": "s", "taskReferenceName": format!("s{i}"), "type": "SUB_WORKFLOW",
                         "subWorkflowParam": {"name": "big"}}])
        })
        .collect();
    behaves(vec![
        task_defs(json!([{"name": "a"}])),
        workflow_def(json!({"name": "big", "tasks": big})),
        workflow_def(json!({"name": "wide", "tasks": [
            {"name": "f", "taskReferenceName": "f", "type": "FORK_JOIN", "forkTasks": lanes},
            {"name": "j", "taskReferenceName": "j", "type": "JOIN"}]})),
    ]);
}

/// Finding 4 (`leader:tick-spins` at first, seed 2010): a task definition may give any non-negative number of
/// seconds, and the engine multiplies them by 1,000 unchecked (`secs` in `next_tick` and `op_tick`,
/// src/engine/ops/timeouts.rs; `startDelay` in src/engine/schedule.rs; the retry delay added to `now` in
/// src/engine/decide.rs). `pollTimeoutSeconds: i64::MAX` wraps to -1,000 ms: the poll timeout, meant as "never",
/// fires on the first Tick, and the retry (its delay saturated to `u64::MAX` ms, then added to `now`) wraps to a
/// time in the past. In a debug build the multiplication panics inside apply. Fixed in d2ab02c: seconds to
/// milliseconds and times saturate.
#[test]
fn a_poll_timeout_of_i64_max_seconds_never_fires() {
    let _turn = turn();
    let steps = vec![
        task_defs(
            json!([{"name": "a", "retryCount": 1, "retryDelaySeconds": i64::MAX, "pollTimeoutSeconds": i64::MAX}]),
        ),
        workflow_def(json!({"name": "w", "tasks": [{"name": "a", "taskReferenceName": "a"}]})),
        start("wf-1", "w", json!({})),
        Step::Advance(60_000),
    ];
    let state = plays(steps);
    let wf = &state.workflows["wf-1"];
    let statuses: Vec<_> = wf.tasks.iter().map(|t| t.status.as_str()).collect();
    assert_eq!(statuses, ["SCHEDULED"], "{:?}", wf.reason_for_incompletion);
}

/// Finding 5 (`bound:time:start_workflow`, seeds 3024 and 3027, at moderate sizes): the byte limits bound each
/// workflow (a 5 MiB input, a 32 MiB record), but one command may start `maxStartsPerCommand` (256) workflows:
/// sub-workflows (here a chain named by `${workflow.input.name}`, which registration cannot see), START_WORKFLOW
/// children and failure workflows (whose input holds the failed workflow), each resolving hostile templates
/// (`{"k0": "${workflow.input}", ..., "k99": ...}`) against roots that copy whole documents. Nothing bounds what
/// one command builds in all: this minimised case (seed 3024; 34 KB) spends 1.8 s of CPU and 310 MiB in one start.
/// Fixed: one command's steps and tasks (`maxStepsPerCommand`) and the bytes it builds, copies included
/// (`maxBytesPerCommand`, 16 MiB), have budgets of their own; past them the decisions left go on in follow-up Ticks.
/// Its start now takes about 0.5 s, the chain of failure workflows going on in Ticks of 0.2 to 0.6 s each.
#[test]
fn one_start_does_not_build_a_chain_of_large_workflows() {
    let _turn = turn();
    let case: Case =
        serde_json::from_str(include_str!("fuzz/findings/5-one-start-builds-a-chain-of-large-workflows.json"))
            .expect("the recorded case parses");
    behaves(case.steps);
}

/// Findings 2 and 5 together (`crash:SIGXCPU`, seed 4006, at full sizes): a workflow whose FORK_JOIN of 842 lanes
/// each starts a SUB_WORKFLOW named `${workflow.input.name}` is started with its own name and a 97 KB input. Each
/// lane resolves its sub-workflow's name and version against a copy of the whole input (finding 2), and the start
/// cascades through `maxStartsPerCommand` (256) copies of the workflow (finding 5): one apply ran past the child's
/// 60 s CPU limit (that case is 4.7 MB; this reconstruction of it spent 2.2 s of CPU in one start, most of it
/// copying the 842-lane definition for each child: a command now reads each definition once and shares it).
#[test]
fn a_self_forking_start_stays_within_a_second() {
    let _turn = turn();
    let lanes: Vec<Value> = (0..842)
        .map(|i| {
            json!([{"name": "s", "taskReferenceName": format!("s{i}"), "type": "SUB_WORKFLOW",
                    "subWorkflowParam": {"name": "${workflow.input.name}", "version": "${workflow.input.version}"}}])
        })
        .collect();
    let big: Vec<Value> = (0..1000).map(|i| json!({"name": "a", "taskReferenceName": format!("d{i}")})).collect();
    behaves(vec![
        workflow_def(json!({"name": "self", "tasks": [
            {"name": "f", "taskReferenceName": "f", "type": "FORK_JOIN", "forkTasks": lanes},
            {"name": "j", "taskReferenceName": "j", "type": "JOIN"}]})),
        start("wf-1", "self", json!({"name": "self", "big": big})),
    ]);
}

/// Finding 6 (`bound:time:start_workflow`, seed 5001, and `bound:time:evaluated`, seed 5002, at full sizes): a
/// FORK_JOIN of 443 NOOP lanes (760 SET_VARIABLE lanes in the other) and its JOIN, started. The engine runs one
/// system task per decision step and looks at the JOIN after each, and the JOIN found each joined reference by a
/// scan of the workflow's tasks (`Workflow::latest_by_ref` in `progress_joins`, src/engine/system_tasks.rs): a
/// scan per lane per step, cubic in the width, 2.8 s of CPU in one start. Fixed: each look at the JOINs indexes the
/// tasks by reference once; the roots of a resolution look each reference up once too.
#[test]
fn a_wide_join_of_system_tasks_is_not_cubic_in_its_width() {
    let _turn = turn();
    let lanes: Vec<Value> = (0..1000)
        .map(|i| {
            json!([{"name": "v", "taskReferenceName": format!("v{i}"), "type": "SET_VARIABLE",
                    "inputParameters": {"last": i}}])
        })
        .collect();
    let state = plays(vec![
        workflow_def(json!({"name": "wide", "tasks": [
            {"name": "f", "taskReferenceName": "f", "type": "FORK_JOIN", "forkTasks": lanes},
            {"name": "j", "taskReferenceName": "j", "type": "JOIN"}]})),
        start("wf-1", "wide", json!({})),
    ]);
    let wf = &state.workflows["wf-1"];
    assert_eq!(wf.status.as_str(), "COMPLETED", "{:?}", wf.reason_for_incompletion);
    assert_eq!(wf.tasks.len(), 1002);
}
