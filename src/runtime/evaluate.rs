//! The leader's evaluator: runs the code of tasks waiting for an evaluation (INLINE, JSON_JQ_TRANSFORM, a SWITCH's
//! or DECISION's JavaScript, a DO_WHILE's condition) in the [`Sandbox`] and proposes each outcome as a
//! `Command::Evaluated`. Followers run nothing of it: they apply the committed outcome.
//!
//! A new leader picks up where the old one stopped: which tasks wait is part of the replicated state (the pending
//! index lists them). An outcome the old leader proposed late is refused by apply (the task no longer waits for
//! that round), so each evaluation round is applied at most once.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{leading, now_ms};
use crate::engine::evaluation::request_for;
use crate::engine::Command;
use crate::raft::proposer::Proposer;
use crate::raft::Raft;
use crate::sandbox::Sandbox;
use crate::storage::StateReader;

/// Most evaluations taken on at once (running or waiting for a sandbox child).
const MAX_IN_FLIGHT: usize = 64;
/// The longest the loop sleeps without looking again.
const IDLE_MS: u64 = 200;
/// Pause after the sandbox could not start a child.
const UNAVAILABLE_PAUSE_MS: u64 = 500;

type InFlight = Arc<Mutex<BTreeSet<(String, String)>>>;

/// Runs until `shutdown`.
pub async fn run(
    raft: Raft,
    proposer: Arc<Proposer>,
    reader: StateReader,
    sandbox: Arc<Sandbox>,
    shutdown: CancellationToken,
) {
    let pending = reader.pending().clone();
    let mut metrics = raft.metrics();
    let in_flight: InFlight = Arc::default();
    loop {
        if !leading(&mut metrics, &shutdown).await {
            return;
        }
        let changed = pending.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let taken = lock(&in_flight).clone();
        let room = MAX_IN_FLIGHT.saturating_sub(taken.len());
        let work = if room == 0 { Vec::new() } else { pending.with(|ix| ix.evaluations(room, &taken)) };
        for (workflow_id, task_id, round) in work {
            lock(&in_flight).insert((workflow_id.clone(), task_id.clone()));
            let job = Job {
                proposer: Arc::clone(&proposer),
                reader: reader.clone(),
                sandbox: Arc::clone(&sandbox),
                in_flight: Arc::clone(&in_flight),
            };
            tokio::spawn(job.run(workflow_id, task_id, round));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = &mut changed => {}
            _ = tokio::time::sleep(Duration::from_millis(IDLE_MS)) => {}
            _ = metrics.changed() => {}
        }
    }
}

fn lock(in_flight: &InFlight) -> std::sync::MutexGuard<'_, BTreeSet<(String, String)>> {
    in_flight.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One evaluation: read the task, evaluate in the sandbox, propose the outcome.
struct Job {
    proposer: Arc<Proposer>,
    reader: StateReader,
    sandbox: Arc<Sandbox>,
    in_flight: InFlight,
}

impl Job {
    async fn run(self, workflow_id: String, task_id: String, round: u32) {
        self.evaluate(&workflow_id, &task_id, round).await;
        lock(&self.in_flight).remove(&(workflow_id, task_id));
    }

    async fn evaluate(&self, workflow_id: &str, task_id: &str, round: u32) {
        let request = match self.reader.workflow(workflow_id) {
            Ok(Some(wf)) => {
                wf.task(task_id).filter(|t| t.awaiting_evaluation == round).and_then(|t| request_for(t, now_ms()))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, workflow_id, "evaluator could not read the workflow");
                None
            }
        };
        let Some(request) = request else { return };
        let started = std::time::Instant::now();
        let outcome = match self.sandbox.evaluate(&request).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(error = %e, "evaluation postponed");
                tokio::time::sleep(Duration::from_millis(UNAVAILABLE_PAUSE_MS)).await;
                return;
            }
        };
        tracing::debug!(workflow_id, task_id, round, elapsed_us = started.elapsed().as_micros() as u64, "evaluated");
        let command =
            Command::Evaluated { workflow_id: workflow_id.to_string(), task_id: task_id.to_string(), round, outcome };
        if let Err(e) = self.proposer.propose(command).await {
            tracing::debug!(error = %e, workflow_id, task_id, "evaluation outcome not committed; the leader will retry");
        }
    }
}
