//! The faults a chaos run injects, and how long the cluster takes to hand out work again after each.
//!
//! Every fault ends with the cluster whole again: restarted nodes answering, one leader that every node names, and
//! every replica caught up with what that leader had committed (so the next fault never meets a cluster already
//! short of a replica, which Raft does not promise to survive). The figure measured is the time from the fault
//! (the SIGKILL, SIGSTOP or worker abort) to the first poll reply carrying tasks that names, in its
//! `x-baton-leader` metadata, the leader the cluster settled on afterwards: for a leader fault that is the new
//! leader's first dispatch; for a follower or worker fault, simply the next dispatch.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::checks::Violation;
use super::load::{Tally, Workers};
use crate::local_cluster::Cluster;

/// How long killed followers (and the nodes of a whole-cluster kill) stay down before they are restarted. A killed
/// leader stays down until another node leads: restarted sooner, openraft lets it resume as leader of its old term
/// (its vote is committed), and no failover would happen.
const RESTART_PAUSE: Duration = Duration::from_millis(300);
/// How long a paused leader stays stopped. A follower with a committed vote waits openraft's leader lease
/// (election_timeout_max_ms, 200 in the generated configs) plus an election timeout (100-200 ms) after the last
/// heartbeat before it stands, so twice that worst case (2 x 400 ms) is what reliably deposes the paused leader;
/// twice election_timeout_max alone (400 ms) mostly lets it carry on.
const PAUSE_FOR: Duration = Duration::from_millis(800);
/// Longest wait for the cluster to be whole again after a fault.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);
/// Longest wait for the first dispatch after a fault.
const DISPATCH_DEADLINE: Duration = Duration::from_secs(20);
/// How soon, after a leader is killed, the two survivors must agree on a new one.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(5);
/// How long the cut-off leader stays cut off once the others have elected a new leader.
const PARTITION_FOR: Duration = Duration::from_secs(2);
/// How long a doomed worker may wait for a task to die holding.
const HOLD_DEADLINE: Duration = Duration::from_secs(10);

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL the leader; restart it after a short pause.
    KillLeader,
    /// SIGKILL a follower; restart it.
    KillFollower,
    /// SIGSTOP the leader for twice the maximum election timeout, then SIGCONT: it must step down, not act.
    PauseLeader,
    /// SIGKILL the leader, then the next leader, then restart both.
    DoubleKill,
    /// SIGKILL all three nodes; restart all three.
    RestartAll,
    /// SIGKILL a follower, delete its data dir, restart it: it rejoins through a snapshot.
    WipeFollower,
    /// Abort an in-process worker while it holds tasks; start a replacement.
    KillWorker,
    /// Cut the leader off from the other nodes (they elect another and carry on), then heal the partition: the
    /// old leader must step down and catch up. Needs `--network netns`.
    PartitionLeader,
}

impl FaultKind {
    /// Every kind, in the default cycle's order.
    pub const ALL: [FaultKind; 8] = [
        FaultKind::KillLeader,
        FaultKind::KillFollower,
        FaultKind::PauseLeader,
        FaultKind::DoubleKill,
        FaultKind::RestartAll,
        FaultKind::WipeFollower,
        FaultKind::KillWorker,
        FaultKind::PartitionLeader,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillFollower => "kill-follower",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::DoubleKill => "double-kill",
            FaultKind::RestartAll => "restart-all",
            FaultKind::WipeFollower => "wipe-follower",
            FaultKind::KillWorker => "kill-worker",
            FaultKind::PartitionLeader => "partition-leader",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FaultKind::ALL.into_iter().find(|k| k.name() == s.trim()).ok_or_else(|| {
            let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown fault '{s}'; the kinds are {}", names.join(", "))
        })
    }
}

/// A random number in `0..n` (`n` > 0), for the choice of victims.
pub fn random_below(n: usize) -> usize {
    (uuid::Uuid::new_v4().as_u128() % n.max(1) as u128) as usize
}

/// One injected fault.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// Which kind.
    pub kind: FaultKind,
    /// When, seconds since the run started.
    pub at_s: f64,
    /// What was done, to which node or worker.
    pub what: String,
    /// The leader when the fault began.
    pub leader_before: u64,
    /// The leader the cluster settled on afterwards.
    pub leader_after: u64,
    /// Fault -> first task dispatched under `leader_after`, ms; `None` when none came within the deadline.
    pub dispatch_ms: Option<f64>,
}

/// What a fault acts on.
pub struct Target<'a> {
    /// The nodes.
    pub cluster: &'a mut Cluster,
    /// The in-process workers.
    pub workers: &'a mut Workers,
    /// What the workers saw.
    pub tally: &'a Tally,
    /// When the run started.
    pub run_start: Instant,
}

/// Waits until the survivors of `killed` agree on a new leader; a violation if they do not within
/// [`FAILOVER_DEADLINE`].
async fn failover(cluster: &Cluster, killed: u64, violations: &mut Vec<Violation>) -> Option<u64> {
    match cluster.wait_leader(Instant::now() + FAILOVER_DEADLINE).await {
        Ok(next) => Some(next),
        Err(e) => {
            let detail = format!("no new leader within {FAILOVER_DEADLINE:?} of killing leader n{killed}: {e:#}");
            violations.push(Violation::new("leader-election", detail));
            None
        }
    }
}

/// Injects one fault of `kind` and waits until the cluster is whole again. Violations seen on the way (a crashed
/// node, no dispatch after the fault) are added to `violations`; `Err` means the cluster did not recover, and the
/// run should stop injecting.
pub async fn inject(kind: FaultKind, t: Target<'_>, violations: &mut Vec<Violation>) -> anyhow::Result<FaultRecord> {
    let Target { cluster, workers, tally, run_start } = t;
    let leader = cluster.wait_leader(Instant::now() + RECOVERY_DEADLINE).await?;
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != leader).collect();
    let follower = followers[random_below(followers.len())];
    let begun = Instant::now();
    tally.forget_dispatches_before(begun);
    let mut restarted = Vec::new();
    let (at, what) = match kind {
        FaultKind::KillLeader => {
            cluster.kill(leader)?;
            let at = Instant::now();
            let next = failover(cluster, leader, violations).await;
            cluster.spawn(leader)?;
            restarted.push(leader);
            (at, format!("n{leader} killed, restarted once n{} led", next.map_or("?".to_string(), |n| n.to_string())))
        }
        FaultKind::KillFollower | FaultKind::WipeFollower => {
            cluster.kill(follower)?;
            let at = Instant::now();
            if kind == FaultKind::WipeFollower {
                cluster.wipe(follower)?;
            }
            tokio::time::sleep(RESTART_PAUSE).await;
            cluster.spawn(follower)?;
            restarted.push(follower);
            (at, format!("n{follower} killed{}", if kind == FaultKind::WipeFollower { ", data wiped" } else { "" }))
        }
        FaultKind::PauseLeader => {
            cluster.pause(leader)?;
            let at = Instant::now();
            tokio::time::sleep(PAUSE_FOR).await;
            cluster.resume(leader)?;
            (at, format!("n{leader} stopped for {} ms", PAUSE_FOR.as_millis()))
        }
        FaultKind::DoubleKill => {
            cluster.kill(leader)?;
            let second = failover(cluster, leader, violations).await;
            if let Some(second) = second {
                cluster.kill(second)?;
            }
            let at = Instant::now();
            tokio::time::sleep(RESTART_PAUSE).await;
            restarted.push(leader);
            restarted.extend(second);
            for id in &restarted {
                cluster.spawn(*id)?;
            }
            (at, format!("n{leader} killed, then n{}", second.map_or("?".to_string(), |s| s.to_string())))
        }
        FaultKind::RestartAll => {
            for id in cluster.ids() {
                cluster.kill(id)?;
            }
            let at = Instant::now();
            tokio::time::sleep(RESTART_PAUSE).await;
            for id in cluster.ids() {
                cluster.spawn(id)?;
                restarted.push(id);
            }
            (at, "all nodes killed".to_string())
        }
        FaultKind::PartitionLeader => {
            cluster.partition(leader)?;
            let at = Instant::now();
            let others: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != leader).collect();
            let next = match cluster.wait_leader_among(&others, at + FAILOVER_DEADLINE).await {
                Ok(next) => Some(next),
                Err(e) => {
                    let detail = format!(
                        "the majority elected no leader within {FAILOVER_DEADLINE:?} of cutting off n{leader}: {e:#}"
                    );
                    violations.push(Violation::new("leader-election", detail));
                    None
                }
            };
            tokio::time::sleep(PARTITION_FOR).await;
            cluster.heal(leader)?;
            let next = next.map_or("?".to_string(), |n| n.to_string());
            (
                at,
                format!(
                    "n{leader} cut off for {} ms after n{next} was elected, then healed",
                    PARTITION_FOR.as_millis()
                ),
            )
        }
        FaultKind::KillWorker => {
            let (worker, held) = workers.kill_one_holding(Instant::now() + HOLD_DEADLINE).await;
            let what = match held {
                Some(tasks) => format!("{worker} aborted holding {} task(s)", tasks.len()),
                None => format!("{worker} aborted (it got no task within {HOLD_DEADLINE:?})"),
            };
            (Instant::now(), what)
        }
    };

    let deadline = Instant::now() + RECOVERY_DEADLINE;
    for id in &restarted {
        cluster.wait_up(*id, deadline).await.with_context(|| format!("after {kind}: n{id} restarted"))?;
    }
    let leader_after = cluster.wait_leader(deadline).await.with_context(|| format!("after {kind}"))?;
    let leader_addr = cluster.node(leader_after)?.grpc_addr.clone();
    let dispatched = loop {
        if let Some(when) = tally.first_dispatch_by(&leader_addr, at) {
            break Some(when);
        }
        if at.elapsed() >= DISPATCH_DEADLINE {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let dispatch_ms = dispatched.map(|d| d.saturating_duration_since(at).as_secs_f64() * 1e3);
    if dispatch_ms.is_none() {
        violations.push(Violation::new(
            "dispatch-after-fault",
            format!("{kind} ({what}): no task dispatched under n{leader_after} within {DISPATCH_DEADLINE:?}"),
        ));
    }
    cluster
        .wait_caught_up(leader_after, Instant::now() + RECOVERY_DEADLINE)
        .await
        .with_context(|| format!("after {kind}"))?;
    let what = if kind == FaultKind::WipeFollower {
        match cluster.status(follower).await {
            Ok(status) => format!("{what}; rejoined with snapshot index {}", status.snapshot_index),
            Err(_) => format!("{what}; rejoined"),
        }
    } else {
        what
    };
    Ok(FaultRecord {
        kind,
        at_s: begun.duration_since(run_start).as_secs_f64(),
        what,
        leader_before: leader,
        leader_after,
        dispatch_ms,
    })
}
