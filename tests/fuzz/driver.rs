//! The driver: plays a [`Case`] against the engine the way a leader and its replicas do, and checks what "apply
//! is total" promises (docs/adr/0010-total-apply.md).
//!
//! Each command is proposed at the leader's clock, carried through the log's encoding (what replicas apply is
//! what they decode), applied to a [`MemoryState`] with its CPU time and heap measured, and its mutations are
//! written the way storage writes them, after checking that each record reads back from its stored bytes as it was.
//! After every step the driver does the leader's chores: it evaluates the code of tasks waiting for it (in the
//! real sandbox, `baton sandbox` children, or with the case's forged outcomes) and commits the outcomes as
//! `Command::Evaluated`, and it fires due timers as one batch of `Tick`s, as `runtime::timers` does.
//!
//! Checks, each a [`Failure`] when broken: every apply stays within [`BOUNDS`]; the log entry decodes to the
//! proposal; every stored record decodes to what was written; the leader's own chores are accepted (an
//! evaluation outcome for a task the pending index lists is applied; a Tick changes its workflow or leaves it not
//! due at once: otherwise the leader would propose the same command forever); and replaying the recorded log
//! (evaluation outcomes included) on an empty state gives byte-identical state and the same answers. A panic, an
//! abort or a stack overflow is caught by the harness around the process that plays the case.
//!
//! The heap is measured with `peak_alloc::PeakAlloc`, which the test binary must install as its global allocator
//! ([`Driver::new`] checks that it counts). Memory is measured for the whole process, so cases are played one at a
//! time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::time::TimeVal;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use baton::engine::definitions::{TaskDef, WorkflowDef};
use baton::engine::evaluation::{request_for, EvalOutcome, EvalRequest};
use baton::engine::exec::is_system_type;
use baton::engine::memory::MemoryState;
use baton::engine::model::{LeaseRef, Task, TaskStatus, Workflow};
use baton::engine::ops::{TaskRef, TaskUpdate};
use baton::engine::pending::PendingIndex;
use baton::engine::{apply, Applied, Command, CommandResponse, Mutation, Proposal};
use baton::sandbox::{Sandbox, SandboxLimits};
use baton::storage::codec;

use super::case::{Act, Case, Operation, Step};

/// What one apply may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// CPU time of the thread applying, for one apply. CPU time rather than wall time: the fuzzer runs at nice 19
    /// on a shared 2-core machine, where a niced process's wall time measures its neighbours (measured: a 10 ms
    /// apply took over a second of wall time beside a benchmark). Apply does no I/O and never waits, so its CPU
    /// time is its wall time on an idle core.
    pub apply_cpu: Duration,
    /// Heap allocated at the peak of one apply, above what was allocated before it, bytes.
    pub apply_heap_bytes: usize,
}

/// The bounds every apply is held to. Legitimate cases measure far below them (see docs/fuzzing.md for the
/// measurements): the ordinary applies take microseconds and kilobytes, the heaviest legitimate ones tens of
/// milliseconds and tens of MiB. A second and 512 MiB leave room for a slower machine while still catching
/// anything that grows with a user-chosen number.
pub const BOUNDS: Bounds = Bounds { apply_cpu: Duration::from_secs(1), apply_heap_bytes: 512 << 20 };

/// Evaluations one case may commit: bounds the fuzzer's time per case, not the engine.
const MAX_EVALUATIONS: usize = 160;
/// Of those, evaluations run in the sandbox (a hostile one takes up to its 2 s wall-clock limit).
const MAX_SANDBOX_EVALUATIONS: usize = 40;
/// Chores (evaluations, tick batches) done after one step.
const MAX_CHORES_PER_STEP: usize = 24;
/// Most workflows ticked in one log entry, as `runtime::timers` batches them.
const MAX_TICKS_PER_ENTRY: usize = 256;
/// When the first command of a case is proposed, ms since the Unix epoch.
pub const START_MS: u64 = 1_700_000_000_000;

/// Runs user code for the driver: the leader's evaluator.
pub trait Evaluator {
    /// The outcome of one request.
    fn evaluate(&mut self, request: &EvalRequest) -> EvalOutcome;
}

/// The real sandbox: `baton sandbox` children of the built binary, with the node's default limits.
pub struct SandboxEvaluator {
    runtime: tokio::runtime::Runtime,
    sandbox: Sandbox,
}

impl SandboxEvaluator {
    /// A pool of one child of the `baton` binary this test target was built with.
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        let limits = SandboxLimits { workers: 1, ..SandboxLimits::default() };
        let sandbox = Sandbox::with_program(limits, env!("CARGO_BIN_EXE_baton").into());
        SandboxEvaluator { runtime, sandbox }
    }
}

impl Evaluator for SandboxEvaluator {
    fn evaluate(&mut self, request: &EvalRequest) -> EvalOutcome {
        // A sandbox that cannot start a child says nothing about the case: the harness must be fixed.
        self.runtime.block_on(self.sandbox.evaluate(request)).expect("the sandbox starts its children")
    }
}

/// A broken promise: what the harness reports, minimises and records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// What broke, stable across cases that break it the same way (`bound:heap:start_workflow`,
    /// `panic:src/engine/exec.rs:812`): minimising keeps a candidate only while its signature stays the same.
    pub signature: String,
    /// The details, for people.
    pub detail: String,
}

impl Failure {
    fn new(signature: impl Into<String>, detail: impl Into<String>) -> Self {
        Failure { signature: signature.into(), detail: detail.into() }
    }

    fn at_step(mut self, step: usize) -> Self {
        self.detail = format!("step {step}: {}", self.detail);
        self
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.signature, self.detail)
    }
}

/// What playing a case measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Log entries applied.
    pub proposals: usize,
    /// Commands refused before the log: by the gateway's checks, or for their size.
    pub refused_by_gateway: usize,
    /// Evaluation outcomes committed (sandbox and forged).
    pub evaluations: usize,
    /// Of those, run in the sandbox.
    pub sandbox_evaluations: usize,
    /// The slowest apply's CPU time, µs, and the command kind.
    pub slowest_apply_us: (u64, String),
    /// The largest heap peak of one apply, bytes, and the command kind.
    pub heaviest_apply_bytes: (usize, String),
}

impl Report {
    /// Keeps the larger measurements of two reports (one campaign's summary).
    pub fn absorb(&mut self, other: &Report) {
        self.proposals += other.proposals;
        self.refused_by_gateway += other.refused_by_gateway;
        self.evaluations += other.evaluations;
        self.sandbox_evaluations += other.sandbox_evaluations;
        if other.slowest_apply_us.0 > self.slowest_apply_us.0 {
            self.slowest_apply_us = other.slowest_apply_us.clone();
        }
        if other.heaviest_apply_bytes.0 > self.heaviest_apply_bytes.0 {
            self.heaviest_apply_bytes = other.heaviest_apply_bytes.clone();
        }
    }
}

/// Largest command the driver proposes, encoded. The API refuses documents over `api.max_payload_bytes` (1 MiB
/// by default, which an operator may raise) and gRPC messages over 64 MiB; this allows a few documents at a
/// raised limit. Apply's cost grows with the size of its command, so a bound on time needs one on size.
pub const MAX_COMMAND_BYTES: usize = 8 << 20;

/// Whether the API would propose the command: within [`MAX_COMMAND_BYTES`], and through
/// `api::gateway::Gateway::write`'s checks.
pub fn gateway_accepts(command: &Command) -> bool {
    fits(command) && command.validate().is_empty() && command.validate_code().is_empty()
}

/// Whether the command is within [`MAX_COMMAND_BYTES`].
fn fits(command: &Command) -> bool {
    codec::encoded_len(command).is_ok_and(|n| n <= MAX_COMMAND_BYTES)
}

/// Plays a case from an empty state; `progress` is called before each step (the harness's sign of life).
pub fn play(case: &Case, evaluator: &mut dyn Evaluator, progress: &mut dyn FnMut(usize)) -> Result<Report, Failure> {
    play_to_end(case, evaluator, progress).map(|(report, _)| report)
}

/// [`play`], also giving the state the case ends in.
pub fn play_to_end(
    case: &Case,
    evaluator: &mut dyn Evaluator,
    progress: &mut dyn FnMut(usize),
) -> Result<(Report, MemoryState), Failure> {
    let mut driver = Driver::new(evaluator, &case.forged_outcomes);
    for (i, step) in case.steps.iter().enumerate() {
        progress(i);
        driver.step(step).map_err(|f| f.at_step(i))?;
    }
    progress(case.steps.len());
    driver.check_replay()?;
    Ok((driver.report, driver.state))
}

/// A leader and its state, playing one case.
pub struct Driver<'e> {
    state: MemoryState,
    /// What the leader's chores read: tasks to evaluate, timers (kept from every workflow written, as storage does).
    pending: PendingIndex,
    now_ms: u64,
    /// Every entry applied, as decoded from the log, with its answer.
    log: Vec<(Proposal, CommandResponse)>,
    evaluator: &'e mut dyn Evaluator,
    forged: &'e [Option<EvalOutcome>],
    polls: u64,
    report: Report,
}

impl<'e> Driver<'e> {
    /// A leader over an empty state.
    pub fn new(evaluator: &'e mut dyn Evaluator, forged: &'e [Option<EvalOutcome>]) -> Self {
        assert_heap_is_counted();
        Driver {
            state: MemoryState::default(),
            pending: PendingIndex::default(),
            now_ms: START_MS,
            log: Vec::new(),
            evaluator,
            forged,
            polls: 0,
            report: Report::default(),
        }
    }

    /// Plays one step, then the leader's chores.
    pub fn step(&mut self, step: &Step) -> Result<(), Failure> {
        match step {
            Step::Client(command) => {
                if gateway_accepts(command) {
                    self.propose(command.clone())?;
                } else {
                    self.report.refused_by_gateway += 1;
                }
            }
            Step::Raw(command) => {
                if fits(command) {
                    self.propose(command.clone())?;
                } else {
                    self.report.refused_by_gateway += 1;
                }
            }
            Step::Batch(commands) => {
                let accepted: Vec<Command> = commands.iter().filter(|c| gateway_accepts(c)).cloned().collect();
                self.report.refused_by_gateway += commands.len() - accepted.len();
                if !accepted.is_empty() {
                    self.propose(Command::Batch(accepted))?;
                }
            }
            Step::Act(act) => match self.command_for(act) {
                Some(command) if gateway_accepts(&command) => {
                    self.propose(command)?;
                }
                Some(_) => self.report.refused_by_gateway += 1,
                None => {}
            },
            Step::Advance(ms) => self.now_ms = self.now_ms.saturating_add_signed(*ms),
        }
        self.chores()
    }

    /// Proposes a command at the leader's clock: through the log's encoding, applied within the bounds, written.
    fn propose(&mut self, command: Command) -> Result<CommandResponse, Failure> {
        let kind = command.kind();
        let proposal = Proposal { at_ms: self.now_ms, command };
        let entry = codec::encode(&proposal)
            .map_err(|e| Failure::new(format!("log:encode:{kind}"), format!("the log cannot encode a {kind}: {e}")))?;
        let decoded: Proposal = codec::decode(&entry).map_err(|e| {
            Failure::new(format!("log:decode:{kind}"), format!("replicas cannot decode a {kind} entry: {e}"))
        })?;
        if decoded != proposal {
            return Err(Failure::new(format!("log:changed:{kind}"), format!("a {kind} entry decodes differently")));
        }
        let applied = self.measured_apply(&decoded)?;
        let response = applied.response.clone();
        self.write(applied.mutations)?;
        self.log.push((decoded, response.clone()));
        self.report.proposals += 1;
        Ok(response)
    }

    /// Applies a proposal to the state, holding it to [`BOUNDS`].
    fn measured_apply(&mut self, proposal: &Proposal) -> Result<Applied, Failure> {
        let kind = proposal.command.kind();
        let (applied, cpu, heap) = apply_once(&self.state, proposal);
        if std::env::var_os("FUZZ_TRACE").is_some() {
            eprintln!("fuzz: apply {kind}: {} µs of CPU, {} KiB of heap", cpu.as_micros(), heap >> 10);
        }
        if cpu > BOUNDS.apply_cpu {
            return Err(Failure::new(
                format!("bound:time:{kind}"),
                format!(
                    "a {kind} took {} ms of CPU to apply (bound {} ms)",
                    cpu.as_millis(),
                    BOUNDS.apply_cpu.as_millis()
                ),
            ));
        }
        if heap > BOUNDS.apply_heap_bytes {
            return Err(Failure::new(
                format!("bound:heap:{kind}"),
                format!(
                    "a {kind} allocated {} MiB at its peak (bound {} MiB)",
                    heap >> 20,
                    BOUNDS.apply_heap_bytes >> 20
                ),
            ));
        }
        let cpu_us = u64::try_from(cpu.as_micros()).unwrap_or(u64::MAX);
        if cpu_us > self.report.slowest_apply_us.0 {
            self.report.slowest_apply_us = (cpu_us, kind.to_string());
        }
        if heap > self.report.heaviest_apply_bytes.0 {
            self.report.heaviest_apply_bytes = (heap, kind.to_string());
        }
        Ok(applied)
    }

    /// Writes mutations as storage does, after checking that each record reads back from its bytes unchanged (a
    /// replica that restarted, or evicted a workflow from memory, decodes it).
    fn write(&mut self, mutations: Vec<Mutation>) -> Result<(), Failure> {
        for m in &mutations {
            match m {
                Mutation::PutWorkflow(wf) => {
                    let bytes = codec::encode_compressed(wf.as_ref()).map_err(|e| {
                        Failure::new("store:encode:workflow", format!("a workflow does not encode: {e}"))
                    })?;
                    let read: Workflow = codec::decode(&bytes).map_err(|e| {
                        Failure::new(
                            "store:decode:workflow",
                            format!("workflow {} cannot be read back: {e}", wf.workflow_id),
                        )
                    })?;
                    if read != **wf {
                        return Err(Failure::new(
                            "store:changed:workflow",
                            format!("workflow {} reads back differently", wf.workflow_id),
                        ));
                    }
                    self.pending.update(wf);
                }
                Mutation::PutTaskDef(def) => round_trip::<TaskDef>("task_def", &def.name, def)?,
                Mutation::PutWorkflowDef(def) => round_trip::<WorkflowDef>("workflow_def", &def.name, def)?,
                _ => {}
            }
        }
        self.state.write(mutations);
        Ok(())
    }

    /// The leader's chores after a step: evaluate waiting code, fire due timers.
    fn chores(&mut self) -> Result<(), Failure> {
        for _ in 0..MAX_CHORES_PER_STEP {
            if self.report.evaluations < MAX_EVALUATIONS {
                if let Some((workflow_id, task_id, round)) = self.pending.evaluations(1, &BTreeSet::new()).pop() {
                    self.evaluate(workflow_id, task_id, round)?;
                    continue;
                }
            }
            let due = self.pending.due(self.now_ms, MAX_TICKS_PER_ENTRY);
            if due.is_empty() {
                break;
            }
            let before: Vec<Option<Workflow>> = due.iter().map(|id| self.state.workflows.get(id).cloned()).collect();
            let ticks = due.iter().map(|id| Command::Tick { workflow_id: id.clone() }).collect();
            self.propose(Command::Batch(ticks))?;
            for (id, before) in due.into_iter().zip(before) {
                let Some(wf) = self.state.workflows.get(&id) else { continue };
                let still_due = wf.next_tick_ms != 0 && wf.next_tick_ms <= self.now_ms && !wf.decision_pending;
                if still_due && before.as_ref() == Some(wf) {
                    return Err(Failure::new(
                        "leader:tick-spins",
                        format!(
                            "a Tick changed nothing in workflow {id} and left it due at once (next_tick_ms {} <= \
                             now {}): the leader's timers would propose Ticks for it forever",
                            wf.next_tick_ms, self.now_ms
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Evaluates one waiting task and commits the outcome, as `runtime::evaluate` does.
    fn evaluate(&mut self, workflow_id: String, task_id: String, round: u32) -> Result<(), Failure> {
        let request = self
            .state
            .workflows
            .get(&workflow_id)
            .and_then(|wf| wf.task(&task_id))
            .filter(|t| t.awaiting_evaluation == round)
            .and_then(|t| request_for(t, self.now_ms));
        let Some(request) = request else {
            return Err(Failure::new(
                "leader:evaluation-unbuildable",
                format!(
                    "the pending index lists task {task_id} of {workflow_id} for evaluation, but it has no request"
                ),
            ));
        };
        let forged = self.forged.get(self.report.evaluations).cloned().flatten();
        let outcome = match forged {
            Some(outcome) => outcome,
            None if self.report.sandbox_evaluations < MAX_SANDBOX_EVALUATIONS => {
                self.report.sandbox_evaluations += 1;
                self.evaluator.evaluate(&request)
            }
            None => EvalOutcome::Failed { message: "fuzz: evaluation budget spent".into(), terminal: false },
        };
        self.report.evaluations += 1;
        let command = Command::Evaluated { workflow_id: workflow_id.clone(), task_id: task_id.clone(), round, outcome };
        match self.propose(command)? {
            CommandResponse::Done => Ok(()),
            other => Err(Failure::new(
                "leader:evaluation-refused",
                format!(
                    "the outcome for task {task_id} of {workflow_id}, round {round}, which the pending index lists, \
                     was refused ({other:?}): the leader would evaluate it again forever"
                ),
            )),
        }
    }

    /// Replays the recorded log on an empty state: the same answers and byte-identical state. The leader's state
    /// is kept only as a digest meanwhile (a case may build a few GiB of state, which the child's address space
    /// limit would not hold twice); the replica takes its place.
    fn check_replay(&mut self) -> Result<(), Failure> {
        let expected = digest(&self.state);
        self.state = MemoryState::default();
        let mut replica = MemoryState::default();
        for (i, (proposal, response)) in self.log.iter().enumerate() {
            let applied = apply(&replica, proposal).expect("the memory state never fails");
            if applied.response != *response {
                return Err(Failure::new(
                    format!("replay:answer:{}", proposal.command.kind()),
                    format!("entry {i} answers {:?} on replay, {:?} the first time", applied.response, response),
                ));
            }
            replica.write(applied.mutations);
        }
        if digest(&replica) != expected {
            return Err(Failure::new("replay:state", "replaying the log gives a different state"));
        }
        self.state = replica;
        Ok(())
    }

    /// The command an action makes against the state as it is now; `None` when it has no target.
    fn command_for(&mut self, act: &Act) -> Option<Command> {
        let wf = |i: &usize| pick(self.state.workflows.values(), *i);
        Some(match act {
            Act::Poll { queue, count } => {
                let queues: Vec<String> = self.pending.depths().into_keys().collect();
                let queue = pick(queues.iter(), *queue)?;
                let ready = self.pending.ready(queue, self.now_ms, (*count).clamp(1, 32), &BTreeSet::new());
                if ready.is_empty() {
                    return None;
                }
                self.polls += 1;
                Command::LeaseTasks {
                    worker_id: "worker".into(),
                    poll_id: Some(format!("poll-{}", self.polls)),
                    tasks: ready
                        .into_iter()
                        .map(|r| TaskRef { workflow_id: r.workflow_id, task_id: r.task_id })
                        .collect(),
                }
            }
            Act::Report { workflow, task, status, output, callback_after_seconds, with_lease } => {
                let wf = wf(workflow)?;
                let open = wf.tasks.iter().filter(|t| !t.status.is_terminal() && !is_system_type(&t.task_type));
                let t = pick(open, *task)?;
                let update = TaskUpdate {
                    status: *status,
                    output: output.clone(),
                    reason: (*status != TaskStatus::Completed).then(|| "the worker says no".to_string()),
                    callback_after_seconds: *callback_after_seconds,
                    worker_id: Some("worker".into()),
                    lease: (*with_lease && t.lease_seq > 0).then_some(LeaseRef { lease_seq: t.lease_seq }),
                };
                update_of(wf, t, update)
            }
            Act::Redeliver { workflow, task, completed, lease_seq } => {
                let wf = wf(workflow)?;
                let t = pick(wf.tasks.iter(), *task)?;
                let update = TaskUpdate {
                    status: if *completed { TaskStatus::Completed } else { TaskStatus::Failed },
                    output: serde_json::Map::new(),
                    reason: Some("late".into()),
                    callback_after_seconds: 0,
                    worker_id: Some("late-worker".into()),
                    lease: lease_seq.map(|lease_seq| LeaseRef { lease_seq }),
                };
                update_of(wf, t, update)
            }
            Act::StartTask { workflow, task } => {
                let wf = wf(workflow)?;
                let t = pick(wf.tasks.iter(), *task)?;
                Command::StartTask {
                    workflow_id: wf.workflow_id.clone(),
                    task_id: t.task_id.clone(),
                    worker_id: "worker".into(),
                }
            }
            Act::Signal { workflow, task, status, output } => {
                let wf = wf(workflow)?;
                let t = pick(wf.tasks.iter(), *task)?;
                Command::SignalTask {
                    workflow_id: wf.workflow_id.clone(),
                    task_ref: t.reference_task_name.clone(),
                    update: TaskUpdate {
                        status: *status,
                        output: output.clone(),
                        reason: None,
                        callback_after_seconds: 0,
                        worker_id: None,
                        lease: None,
                    },
                }
            }
            Act::ExtendLease { workflow, task, offset } => {
                let wf = wf(workflow)?;
                let t = pick(wf.tasks.iter(), *task)?;
                Command::ExtendLease {
                    workflow_id: wf.workflow_id.clone(),
                    task_id: t.task_id.clone(),
                    lease: LeaseRef { lease_seq: t.lease_seq.wrapping_add(*offset) },
                }
            }
            Act::AppendLog { workflow, task, line } => {
                let wf = wf(workflow)?;
                let t = pick(wf.tasks.iter(), *task)?;
                Command::AppendTaskLog {
                    workflow_id: wf.workflow_id.clone(),
                    task_id: t.task_id.clone(),
                    log: line.clone(),
                }
            }
            Act::LateEvaluation { workflow, task, round, outcome } => {
                let wf = wf(workflow)?;
                let t = pick(wf.tasks.iter(), *task)?;
                Command::Evaluated {
                    workflow_id: wf.workflow_id.clone(),
                    task_id: t.task_id.clone(),
                    round: *round,
                    outcome: outcome.clone(),
                }
            }
            Act::Operate { workflow, operation } => operation_on(wf(workflow)?, operation)?,
        })
    }
}

/// An operator's command on `wf`.
fn operation_on(wf: &Workflow, operation: &Operation) -> Option<Command> {
    let workflow_id = wf.workflow_id.clone();
    Some(match operation {
        Operation::Terminate { reason } => Command::Terminate { workflow_id, reason: reason.clone() },
        Operation::Pause => Command::Pause { workflow_id },
        Operation::Resume => Command::Resume { workflow_id },
        Operation::Retry => Command::Retry { workflow_id },
        Operation::Restart { use_latest_definition } => {
            Command::Restart { workflow_id, use_latest_definition: *use_latest_definition }
        }
        Operation::Rerun { task, task_input, workflow_input } => {
            let from_task_id = match task {
                Some(i) => pick(wf.tasks.iter(), *i)?.task_id.clone(),
                None => String::new(),
            };
            Command::Rerun {
                workflow_id,
                from_task_id,
                task_input: task_input.clone(),
                workflow_input: workflow_input.clone(),
            }
        }
        Operation::Skip { reference, output } => {
            let mut references = Vec::new();
            let mut stack: Vec<_> = wf.workflow_definition.tasks.iter().collect();
            while let Some(step) = stack.pop() {
                references.push(step.task_reference_name.clone());
                stack.extend(step.children().map(|(_, child)| child));
            }
            references.sort();
            let task_ref = pick(references.iter(), *reference)?.clone();
            Command::SkipTask { workflow_id, task_ref, output: output.clone() }
        }
        Operation::Tick => Command::Tick { workflow_id },
    })
}

fn update_of(wf: &Workflow, t: &Task, update: TaskUpdate) -> Command {
    Command::UpdateTask { workflow_id: wf.workflow_id.clone(), task_id: t.task_id.clone(), update }
}

/// The `i`-th item (modulo their number), if there is any.
fn pick<T>(items: impl Iterator<Item = T> + Clone, i: usize) -> Option<T> {
    let n = items.clone().count();
    if n == 0 {
        return None;
    }
    items.into_iter().nth(i % n)
}

/// One apply: its result, the CPU time of the thread applying, and the heap peak above what was allocated before.
fn apply_once(state: &MemoryState, proposal: &Proposal) -> (Applied, Duration, usize) {
    let heap = peak_alloc::PeakAlloc;
    let before = heap.current_usage();
    heap.reset_peak_usage();
    let started = thread_cpu_time();
    let applied = apply(state, proposal).expect("the memory state never fails");
    let cpu = thread_cpu_time().saturating_sub(started);
    (applied, cpu, heap.peak_usage().saturating_sub(before))
}

/// CPU time (user and system) this thread has used.
fn thread_cpu_time() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage of this thread");
    let micros =
        |t: TimeVal| Duration::from_secs(t.tv_sec().unsigned_abs()) + Duration::from_micros(t.tv_usec().unsigned_abs());
    micros(usage.user_time()) + micros(usage.system_time())
}

/// Checks that a definition reads back from its stored bytes unchanged.
fn round_trip<T>(what: &str, name: &str, value: &T) -> Result<(), Failure>
where
    T: Serialize + serde::de::DeserializeOwned + PartialEq,
{
    let bytes =
        codec::encode(value).map_err(|e| Failure::new(format!("store:encode:{what}"), format!("{name}: {e}")))?;
    let read: T = codec::decode(&bytes)
        .map_err(|e| Failure::new(format!("store:decode:{what}"), format!("{what} {name} cannot be read back: {e}")))?;
    if read != *value {
        return Err(Failure::new(format!("store:changed:{what}"), format!("{what} {name} reads back differently")));
    }
    Ok(())
}

/// A digest of the whole state's bytes, record by record (as storage keeps them): what two replicas must agree
/// on. Encoded one record at a time, so that a large state is never encoded whole.
pub fn digest(state: &MemoryState) -> [u8; 32] {
    fn add<K: Serialize, V: Serialize>(hasher: &mut Sha256, records: &BTreeMap<K, V>) {
        hasher.update(records.len().to_le_bytes());
        for record in records {
            let bytes = codec::encode(&record).expect("a record encodes");
            hasher.update(bytes.len().to_le_bytes());
            hasher.update(bytes);
        }
    }
    let mut hasher = Sha256::new();
    add(&mut hasher, &state.task_defs);
    add(&mut hasher, &state.workflow_defs);
    add(&mut hasher, &state.workflows);
    add(&mut hasher, &state.idempotency_keys);
    add(&mut hasher, &state.type_stats);
    add(&mut hasher, &state.task_index);
    add(&mut hasher, &state.bench_values);
    hasher.update(codec::encode(&state.limits).expect("the limits encode"));
    hasher.finalize().into()
}

/// Fails loudly when the binary forgot to install the counting allocator: every heap bound would pass unmeasured.
/// Another thread freeing memory at the same moment can hide one probe (the counter is the process's), so a few
/// are tried: an allocator that counts nothing fails them all.
fn assert_heap_is_counted() {
    let heap = peak_alloc::PeakAlloc;
    let counted = (0..5).any(|_| {
        let before = heap.current_usage();
        let probe = std::hint::black_box(vec![1u8; 1 << 20]);
        let during = heap.current_usage();
        drop(probe);
        during >= before + (1 << 20)
    });
    assert!(
        counted,
        "the fuzz binary must install peak_alloc::PeakAlloc as its #[global_allocator] (heap not counted)"
    );
}
