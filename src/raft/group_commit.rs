//! Group commit on the leader: commands proposed at the same time share one log entry.
//!
//! Every write the leader proposes (its own clients', forwarded ones, leases, timer firings) goes through one queue.
//! One entry is in flight at a time; while it is, new commands wait in the queue, and the next entry takes all of
//! them (up to [`MAX_BATCH_COMMANDS`] or [`MAX_BATCH_BYTES`]) as one `Command::Batch`. Under light load a command
//! is proposed alone, at once: batching adds no latency; under load the entries grow instead of their number, so
//! the fsyncs, the replication round trips and the apply WriteBatches are shared, and the next entry waits a little
//! for more commands (see `run` and [`Pacer`]). The engine applies a batch's commands in order and answers each
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
    /// When it joined the queue.
    queued: std::time::Instant,
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
        if self.queue.send(Queued { command, reply, queued: std::time::Instant::now() }).is_err() {
            return WriteOutcome::Fatal;
        }
        answer.await.unwrap_or(WriteOutcome::Fatal)
    }
}

/// A batch at least this large means the callers keep the leader busy: the next batch may wait for them.
const LINGER_FROM_BATCH: usize = 8;
/// How the load arrives, as the committer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// Commands keep arriving on their own, spread over the cycle (workflow starts at a rate, mixed with workers).
    Open,
    /// The callers wait for their answers and send again right after (a fixed number of clients, `bench raft`).
    Closed,
}

impl Load {
    /// Under load, an entry leaves no sooner than this share (percent) of the recent proposal-to-answer time after
    /// the last one left.
    fn pace_percent(self) -> u32 {
        match self {
            Load::Open => 150,
            Load::Closed => 250,
        }
    }

    /// Longest wait for more commands, from the moment a batch could leave.
    fn max_linger(self) -> Duration {
        match self {
            Load::Open => Duration::from_millis(3),
            Load::Closed => Duration::from_millis(5),
        }
    }

    /// Reads the load from the last entry: how many commands it carried, and how many arrived while it was in
    /// flight (counted before its callers were answered). When fewer than an eighth of its count arrived in the
    /// meantime, nearly all the callers were waiting in that entry, and they come back in a burst right after the
    /// answer: a closed loop, whose next entry is worth a longer wait. An open loop's commands arrive during the
    /// flight at the rate they arrive at all: at the open pace (150%), about two thirds of an entry's count. The
    /// workflow engine's own callers (workers polling and completing) are closed loops too, but mixed with starts
    /// they read as open (docs/perf.md, change 21).
    fn read(arrived_in_flight: usize, last_len: usize) -> Load {
        if arrived_in_flight * 8 < last_len {
            Load::Closed
        } else {
            Load::Open
        }
    }
}

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<Queued>, clock: fn() -> u64) {
    let mut pacer = Pacer::default();
    // The last entry's size.
    let mut last_len = 0usize;
    // Commands that arrived while the last entry was in flight.
    let mut next = Batch::default();
    loop {
        let mut batch = std::mem::take(&mut next);
        let arrived_in_flight = batch.items.len();
        if batch.items.is_empty() {
            let Some(first) = rx.recv().await else { break };
            batch.push(first);
        }
        batch.take_queued(&mut rx);
        if last_len >= LINGER_FROM_BATCH && !batch.full() {
            // Under load, wait for more commands, so that one entry carries them all instead of the load splitting
            // into more, smaller entries, each paying the whole per-entry cost (docs/perf.md). Callers that all
            // came back (a closed loop: the last entry's callers sending their next command) end the wait early;
            // commands that keep arriving on their own (an open loop) wait until the pace allows the entry out.
            let expected = (last_len + batch.items.len()).min(MAX_BATCH_COMMANDS) * 9 / 10;
            let load = Load::read(arrived_in_flight, last_len);
            let deadline = tokio::time::Instant::from_std(pacer.deadline(std::time::Instant::now(), load));
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
        let (len, departed) = (batch.items.len(), std::time::Instant::now());
        pacer.departed(departed);
        let metrics = crate::metrics::metrics();
        for item in &batch.items {
            metrics.group_commit_wait_seconds.observe(departed.duration_since(item.queued).as_secs_f64());
        }
        let (replies, outcomes) = commit(&raft, batch.items, clock()).await;
        let took = departed.elapsed();
        pacer.answered(took);
        metrics.entry_round_trip_seconds.observe(took.as_secs_f64());
        last_len = len;
        // What arrived during the flight is counted before the answers let this entry's callers send again.
        next.take_queued(&mut rx);
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // The caller may have given up (its deadline passed); the outcome is then only in the log.
            let _ = reply.send(outcome);
        }
    }
}

/// When the next entry may leave while the load keeps the leader busy.
///
/// Entries leave at a steady pace: a share of the average proposal-to-answer time after the last one left
/// ([`Load::pace_percent`]). Without it, CPU left idle turns into more, smaller entries, each paying the fixed
/// per-entry work on three nodes (an fsync on two, two AppendEntries per follower, ~14 thread wake-ups per node),
/// until the cores are busy again (docs/perf.md, change 19). The pace is a trade: a longer one frees more CPU and
/// fills closed-loop entries better, and costs an open loop's starts up to the pace in latency. 250% and at most
/// 5 ms freed 12% of the nodes' CPU on a slow machine, but on a fast one (a ~2.5 ms cycle) it added 1-3 ms to the
/// start p50 at half load; 150% and at most 3 ms keeps the start p50 of no pacing there (change 20). A closed loop
/// keeps the longer pace: its callers' next commands wait for the entry anyway, and fuller entries gave `bench
/// raft` 13-19% more writes per second (change 21). The pace follows the average, not the last entry, so that a
/// slow entry is followed by an early one rather than by a longer wait.
#[derive(Debug, Default)]
struct Pacer {
    /// Moving average of the proposal-to-answer time (the newest entry weighs 1/8).
    took: Option<Duration>,
    last_departure: Option<std::time::Instant>,
}

impl Pacer {
    fn departed(&mut self, at: std::time::Instant) {
        self.last_departure = Some(at);
    }

    fn answered(&mut self, took: Duration) {
        self.took = Some(self.took.map_or(took, |average| (average * 7 + took) / 8));
    }

    /// How long a growing batch may wait, given that it could leave `now`: until `load`'s pace allows the next
    /// entry out, and at most its longest linger. Before any entry, at once.
    fn deadline(&self, now: std::time::Instant, load: Load) -> std::time::Instant {
        let (Some(took), Some(last)) = (self.took, self.last_departure) else { return now };
        (last + took * load.pace_percent() / 100).clamp(now, now + load.max_linger())
    }
}

/// The commands of the next entry.
#[derive(Default)]
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
        if self.items.is_empty() {
            self.items.push(next);
            return;
        }
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

async fn commit(
    raft: &Raft,
    batch: Vec<Queued>,
    at_ms: u64,
) -> (Vec<oneshot::Sender<WriteOutcome>>, Vec<WriteOutcome>) {
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
    (replies, outcomes)
}

fn failure(e: &RaftError<NodeId, ClientWriteError<NodeId, super::NodeInfo>>) -> WriteOutcome {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => WriteOutcome::NotLeader,
        RaftError::APIError(e) => WriteOutcome::Unknown(e.to_string()),
        RaftError::Fatal(_) => WriteOutcome::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const MS: Duration = Duration::from_millis(1);

    fn pacer(took: Duration, departed: Instant) -> Pacer {
        let mut pacer = Pacer::default();
        pacer.departed(departed);
        pacer.answered(took);
        pacer
    }

    #[test]
    fn before_any_entry_a_batch_leaves_at_once() {
        let now = Instant::now();
        assert_eq!(Pacer::default().deadline(now, Load::Open), now);
    }

    #[test]
    fn under_steady_load_an_entry_leaves_one_and_a_half_cycles_after_the_last() {
        let t0 = Instant::now();
        let pacer = pacer(2 * MS, t0);
        assert_eq!(pacer.deadline(t0 + 2 * MS, Load::Open), t0 + 3 * MS);
    }

    #[test]
    fn after_a_slow_entry_the_next_leaves_at_once() {
        let t0 = Instant::now();
        let pacer = pacer(2 * MS, t0);
        let now = t0 + 4 * MS;
        assert_eq!(pacer.deadline(now, Load::Open), now);
    }

    #[test]
    fn the_wait_is_bounded_whatever_the_average() {
        let t0 = Instant::now();
        let pacer = pacer(40 * MS, t0);
        let now = t0 + 5 * MS;
        assert_eq!(pacer.deadline(now, Load::Open), now + Load::Open.max_linger());
    }

    #[test]
    fn a_closed_loop_waits_two_and_a_half_cycles_after_the_last_entry_left() {
        let t0 = Instant::now();
        let pacer = pacer(2 * MS, t0);
        assert_eq!(pacer.deadline(t0 + 2 * MS, Load::Closed), t0 + 5 * MS);
    }

    #[test]
    fn a_closed_loop_waits_at_most_five_milliseconds() {
        let t0 = Instant::now();
        let pacer = pacer(40 * MS, t0);
        let now = t0 + 5 * MS;
        assert_eq!(pacer.deadline(now, Load::Closed), now + 5 * MS);
    }

    #[test]
    fn callers_that_all_waited_in_the_last_entry_read_as_a_closed_loop() {
        assert_eq!(Load::read(0, 64), Load::Closed);
        assert_eq!(Load::read(7, 64), Load::Closed);
        assert_eq!(Load::read(8, 64), Load::Open);
        // An open loop at the open pace: about two thirds of an entry's count arrive while it is in flight.
        assert_eq!(Load::read(20, 30), Load::Open);
        assert_eq!(Load::read(0, 0), Load::Open);
    }

    fn queued(value_bytes: usize) -> (Queued, oneshot::Receiver<WriteOutcome>) {
        let (reply, answer) = oneshot::channel();
        let command = Command::BenchWrite { key: "k".into(), value: vec![7; value_bytes] };
        (Queued { command, reply, queued: std::time::Instant::now() }, answer)
    }

    #[test]
    fn a_lone_command_is_not_measured_and_a_large_one_still_goes() {
        let mut batch = Batch::default();
        let (big, _answer) = queued(MAX_BATCH_BYTES + 1);
        batch.push(big);
        assert_eq!(batch.bytes, None);
        assert!(!batch.full());
        let (small, _answer) = queued(16);
        batch.push(small);
        assert!(batch.bytes.is_some_and(|b| b > MAX_BATCH_BYTES));
        assert!(batch.full());
    }

    #[test]
    fn the_average_moves_an_eighth_of_the_way_to_each_new_entry() {
        let mut pacer = pacer(8 * MS, Instant::now());
        pacer.answered(16 * MS);
        assert_eq!(pacer.took, Some(9 * MS));
        pacer.answered(Duration::ZERO);
        assert_eq!(pacer.took, Some(9 * MS * 7 / 8));
    }
}
