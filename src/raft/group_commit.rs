//! Group commit on the leader: commands proposed at the same time share one log entry.
//!
//! Every write the leader proposes (its own clients', forwarded ones, leases, timer firings) goes through one queue.
//! One entry is in flight at a time; while it is, new commands wait in the queue, and the next entry takes all of
//! them (up to [`MAX_BATCH_COMMANDS`] or [`MAX_BATCH_BYTES`]) as one `Command::Batch`. Under light load a command
//! is proposed alone, at once: batching adds no latency; under load the entries grow instead of their number, so
//! the fsyncs, the replication round trips and the apply WriteBatches are shared, and the next entry waits briefly
//! for the callers of the last one (see `run`). The engine applies a batch's commands in order and answers each
//! alone. One entry in flight measured best (docs/perf.md): with the CPU the limit, two overlapping entries halve
//! the batches and double the per-entry costs.

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot};

use super::{NodeId, Raft};
use crate::engine::{Command, CommandResponse, Proposal};
use crate::storage::codec;

/// Most commands in one entry.
pub const MAX_BATCH_COMMANDS: usize = 128;
/// A batch stops growing past this encoded size, bytes (a single larger command still goes alone).
pub const MAX_BATCH_BYTES: usize = 1 << 20;

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

/// A batch at least this large means the callers keep the leader busy: the next batch may wait for them.
const LINGER_FROM_BATCH: usize = 8;
/// Longest wait for the callers of the last batch to come back.
const MAX_LINGER: Duration = Duration::from_millis(1);

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<Queued>, clock: fn() -> u64) {
    // The last entry's size and how long it took from proposal to answer.
    let (mut last_len, mut last_took) = (0usize, Duration::ZERO);
    while let Some(first) = rx.recv().await {
        let mut batch = Batch { items: vec![first], bytes: None };
        batch.take_queued(&mut rx);
        if last_len >= LINGER_FROM_BATCH && !batch.full() {
            // Under load the callers answered by the last entry send their next command within moments: wait
            // for them (briefly), so one entry carries them all instead of the load splitting into two half-size
            // entries that alternate, each paying the whole per-entry cost (docs/perf.md).
            let expected = (last_len + batch.items.len()).min(MAX_BATCH_COMMANDS) * 9 / 10;
            let deadline = tokio::time::Instant::now() + MAX_LINGER.min(last_took / 2);
            while batch.items.len() < expected && !batch.full() {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(next)) => {
                        batch.push(next);
                        batch.take_queued(&mut rx);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        // One entry in flight: proposed and awaited here, in this task (no hand-off to another).
        let (len, started) = (batch.items.len(), std::time::Instant::now());
        commit(&raft, batch.items, clock()).await;
        (last_len, last_took) = (len, started.elapsed());
    }
}

/// The commands of the next entry.
struct Batch {
    items: Vec<Queued>,
    /// Their encoded size, measured from the second command on (a lone command is never bounded).
    bytes: Option<usize>,
}

impl Batch {
    fn full(&self) -> bool {
        self.items.len() >= MAX_BATCH_COMMANDS || self.bytes.is_some_and(|b| b >= MAX_BATCH_BYTES)
    }

    fn push(&mut self, next: Queued) {
        let items = &self.items;
        let total = self.bytes.get_or_insert_with(|| items.iter().map(|q| encoded_len(&q.command)).sum());
        *total += encoded_len(&next.command);
        self.items.push(next);
    }

    /// Adds whatever is queued now, within the batch bounds.
    fn take_queued(&mut self, rx: &mut mpsc::UnboundedReceiver<Queued>) {
        while !self.full() {
            let Ok(next) = rx.try_recv() else { break };
            self.push(next);
        }
    }
}

/// A command's encoded size, counted without encoding it into a buffer.
fn encoded_len(command: &Command) -> usize {
    codec::encoded_len(command).unwrap_or(0)
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
