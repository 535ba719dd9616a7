//! The runtime that turns the replicated state into action: handing ready tasks to workers under leases
//! ([`dispatch`]) and firing timers as `Tick` commands ([`timers`]).
//!
//! It changes state only by proposing commands through the [`Proposer`](crate::raft::proposer::Proposer); the
//! engine decides what they do. Timers run only on the leader. Polls are served by any node from its own copy of
//! the ready index (kept current by applying the log); the lease it proposes is committed by the leader, which
//! arbitrates between nodes: a task already taken is simply not granted again.

pub mod dispatch;
pub mod timers;

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock now, ms since the Unix epoch (the runtime's view; the engine only sees times inside commands).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
