//! Timers: while this node leads, proposes a `Tick` for every workflow whose `next_tick_ms` has passed (response
//! and task timeouts, poll timeouts, WAIT ends, workflow timeouts), batched into one log entry. A new leader picks
//! up where the old one stopped: the due times are part of the replicated state.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{leading, now_ms};
use crate::engine::Command;
use crate::raft::proposer::Proposer;
use crate::raft::Raft;
use crate::storage::StateReader;

/// Most workflows ticked in one log entry.
const MAX_TICKS_PER_ENTRY: usize = 256;
/// The longest the loop sleeps without looking again.
const IDLE_MS: u64 = 200;

/// Runs until `shutdown`.
pub async fn run(raft: Raft, proposer: Arc<Proposer>, reader: StateReader, shutdown: CancellationToken) {
    let pending = reader.pending().clone();
    let mut metrics = raft.metrics();
    loop {
        if !leading(&mut metrics, &shutdown).await {
            return;
        }
        let changed = pending.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let now = now_ms();
        let due = pending.with(|ix| ix.due(now, MAX_TICKS_PER_ENTRY));
        if !due.is_empty() {
            let ticks = due.into_iter().map(|workflow_id| Command::Tick { workflow_id }).collect();
            if let Err(e) = proposer.propose(Command::Batch(ticks)).await {
                tracing::debug!(error = %e, "tick batch not committed; will retry");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        }
        let next = pending.with(|ix| ix.next_timer()).unwrap_or(u64::MAX);
        let wait_ms = next.saturating_sub(now).clamp(1, IDLE_MS);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = &mut changed => {}
            _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
            _ = metrics.changed() => {}
        }
    }
}
