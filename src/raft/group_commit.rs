//! Group commit on the leader: commands proposed at the same time share one log entry.
//!
//! Every write the leader proposes (its own clients', forwarded ones, leases, timer firings) goes through one queue.
//! A few entries may be in flight at once ([`MAX_ENTRIES_IN_FLIGHT`]); while they are, new commands wait in the
//! queue, and the next free slot takes all of them (up to [`MAX_BATCH_COMMANDS`] or [`MAX_BATCH_BYTES`]) as one
//! `Command::Batch` entry. Under light load a command is proposed alone, at once: batching adds no latency; under
//! load the entries grow instead of their number, so the fsyncs, the replication round trips and the apply
//! WriteBatches are shared. The engine applies a batch's commands in order and answers each alone.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{NodeId, Raft};
use crate::engine::{Command, CommandResponse, Proposal};
use crate::storage::codec;

/// Most commands in one entry.
pub const MAX_BATCH_COMMANDS: usize = 128;
/// A batch stops growing past this encoded size, bytes (a single larger command still goes alone).
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// Entries this leader commits at once; further commands queue and go together in the next.
pub const MAX_ENTRIES_IN_FLIGHT: usize = 2;

/// How one command's write ended on the leader.
#[derive(Debug)]
pub enum WriteOutcome {
    /// Applied at this log index, with this answer.
    Applied(CommandResponse, u64),
    /// This node is not the leader (any more); nothing was applied.
    NotLeader,
    /// The outcome is unknown (the leader lost leadership mid-way, or storage failed).
    Unknown(String),
    /// Raft has stopped.
    Fatal,
}

struct Queued {
    command: Command,
    reply: oneshot::Sender<WriteOutcome>,
}

/// The queue in front of `Raft::client_write`.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    queue: mpsc::UnboundedSender<Queued>,
}

impl GroupCommit {
    /// Starts the committer task for `raft`. The queue is bounded by the proposer's admission semaphore
    /// (`api.max_in_flight_proposals`), not here.
    pub fn start(raft: Raft, clock: fn() -> u64) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx, clock));
        GroupCommit { queue }
    }

    /// Proposes `command` (batched with whatever else is waiting) and waits for its outcome.
    pub async fn write(&self, command: Command) -> WriteOutcome {
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Queued { command, reply }).is_err() {
            return WriteOutcome::Fatal;
        }
        answer.await.unwrap_or(WriteOutcome::Fatal)
    }
}

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<Queued>, clock: fn() -> u64) {
    let slots = Arc::new(Semaphore::new(MAX_ENTRIES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let batch = take_batch(first, &mut rx);
        let raft = raft.clone();
        tokio::spawn(async move {
            commit(&raft, batch, clock()).await;
            drop(slot);
        });
    }
}

/// `first` and whatever else is queued now, within the batch bounds.
fn take_batch(first: Queued, rx: &mut mpsc::UnboundedReceiver<Queued>) -> Vec<Queued> {
    let mut batch = vec![first];
    let mut bytes = None;
    while batch.len() < MAX_BATCH_COMMANDS {
        let Ok(next) = rx.try_recv() else { break };
        // Sizes are measured only when there is a batch to bound.
        let total = bytes.get_or_insert_with(|| encoded_len(&batch[0].command));
        *total += encoded_len(&next.command);
        batch.push(next);
        if *total >= MAX_BATCH_BYTES {
            break;
        }
    }
    batch
}

fn encoded_len(command: &Command) -> usize {
    codec::encode(command).map_or(0, |b| b.len())
}

async fn commit(raft: &Raft, batch: Vec<Queued>, at_ms: u64) {
    let (mut commands, replies): (Vec<Command>, Vec<_>) = batch.into_iter().map(|q| (q.command, q.reply)).unzip();
    let n = commands.len();
    let command = if n == 1 { commands.pop().expect("one command") } else { Command::Batch(commands) };
    let result = raft.client_write(Proposal { at_ms, command }).await;
    let outcomes: Vec<WriteOutcome> = match result {
        Ok(written) => {
            let index = written.log_id.index;
            match (n, written.data) {
                (1, response) => vec![WriteOutcome::Applied(response, index)],
                (_, CommandResponse::Batch(responses)) if responses.len() == n => {
                    responses.into_iter().map(|r| WriteOutcome::Applied(r, index)).collect()
                }
                (_, other) => {
                    let why = format!("a batch of {n} was answered {other:?}");
                    (0..n).map(|_| WriteOutcome::Unknown(why.clone())).collect()
                }
            }
        }
        Err(e) => (0..n).map(|_| failure(&e)).collect(),
    };
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        // The caller may have given up (its deadline passed); the outcome is then only in the log.
        let _ = reply.send(outcome);
    }
}

fn failure(e: &RaftError<NodeId, ClientWriteError<NodeId, super::NodeInfo>>) -> WriteOutcome {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => WriteOutcome::NotLeader,
        RaftError::APIError(e) => WriteOutcome::Unknown(e.to_string()),
        RaftError::Fatal(_) => WriteOutcome::Fatal,
    }
}
