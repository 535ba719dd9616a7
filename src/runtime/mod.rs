//! The runtime that turns the replicated state into action: handing ready tasks to workers under leases
//! ([`dispatch`]) and firing timers as `Tick` commands ([`timers`]).
//!
//! It changes state only by proposing commands through the [`Proposer`](crate::raft::proposer::Proposer); the
//! engine decides what they do. Timers and dispatch run on the leader: a poll that reaches a follower is forwarded
//! to the leader (peer RPC `Poll`), which serves it from its ready index, the first to know a task is ready. Every
//! node keeps the index current by applying the log, so a new leader dispatches at once; the lease is a committed
//! command, so a task already taken is never granted again, whichever node asked.

pub mod dispatch;
pub mod evaluate;
pub mod timers;

use std::time::{SystemTime, UNIX_EPOCH};

use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use crate::raft::RaftMetrics;

/// Wall-clock now, ms since the Unix epoch (the runtime's view; the engine only sees times inside commands).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Waits until this node leads. True once it does (at once if it already does); false when `shutdown` is
/// cancelled or Raft has stopped, and the caller's loop should end. The leader-only loops (timers, the evaluator)
/// call it at the top of each round.
pub async fn leading(metrics: &mut tokio::sync::watch::Receiver<RaftMetrics>, shutdown: &CancellationToken) -> bool {
    loop {
        if shutdown.is_cancelled() {
            return false;
        }
        if metrics.borrow().state == ServerState::Leader {
            return true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            changed = metrics.changed() => if changed.is_err() { return false },
        }
    }
}
