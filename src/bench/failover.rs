//! `baton bench failover`: leader SIGKILLs under half of the highest load, and how long each took to get work
//! moving again: from the SIGKILL to the first task that a worker received from the new leader.
//!
//! The highest load is measured first (a short closed-loop run, as `bench workflow` does) unless `--rate` gives the
//! rate. After each kill the killed node is restarted and every node catches up before the next one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::load::{self, Tally};
use super::workflow::ClosedLoop;
use super::{round, Figures, Samples, Target};
use crate::client::Client;

/// Closed-loop run that finds the highest rate.
const PROBE: Duration = Duration::from_secs(5);
/// Workflows in flight while probing.
const PROBE_IN_FLIGHT: usize = 256;
/// Load before each kill.
const STEADY: Duration = Duration::from_secs(2);
/// Longest wait for the new leader's first dispatch, or for a restarted node to catch up.
const DEADLINE: Duration = Duration::from_secs(30);

/// What `baton bench failover` runs.
#[derive(Debug, Clone)]
pub struct FailoverOptions {
    /// Leader kills.
    pub kills: usize,
    /// Workers.
    pub workers: usize,
    /// Starts per second (default: half of the highest rate, measured first).
    pub rate: Option<f64>,
}

/// Runs the kills and answers the figures.
pub async fn run(target: &mut Target, options: &FailoverOptions) -> anyhow::Result<Figures> {
    if target.local().is_none() {
        bail!("bench failover kills nodes, so it needs the cluster it starts itself (leave out --addr)");
    }
    if options.kills == 0 || options.workers == 0 {
        bail!("--kills and --workers must be at least 1");
    }
    let addrs = target.addrs().to_vec();
    load::register(&Client::new(addrs.clone())?).await?;
    let clients = load::start_clients(&addrs, 4)?;
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let permits = Arc::new(Semaphore::new(0));
    let _workers = load::workers(&addrs, options.workers, tally.clone(), Some(permits.clone()), stop.clone())?;

    let rate = match options.rate {
        Some(rate) => rate,
        None => {
            let closed = ClosedLoop { clients: &clients, tally: &tally, permits: &permits, stop: &stop };
            let (window, _, _) = closed.run(target, PROBE_IN_FLIGHT, PROBE).await;
            window.workflows_done as f64 / window.seconds / 2.0
        }
    };
    if rate <= 0.0 {
        bail!("no workflow completed while probing for the highest rate");
    }
    let starter = load::open_loop(&clients, rate, tally.clone(), stop.clone());
    let mut samples = Samples::default();
    let mut each = Vec::new();
    tally.open_window();
    for round_no in 0..options.kills {
        tokio::time::sleep(STEADY).await;
        let cluster = target.local().context("the local cluster")?;
        let leader = cluster.wait_leader(Instant::now() + DEADLINE).await?;
        let killed_addr = cluster.node(leader)?.grpc_addr.clone();
        tally.watch_kill(&killed_addr);
        cluster.kill(leader)?;
        let deadline = Instant::now() + DEADLINE;
        let took = loop {
            if let Some(took) = tally.kill_to_dispatch() {
                break took;
            }
            if Instant::now() >= deadline {
                bail!("kill {round_no}: no task dispatched by a new leader within {DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        samples.push(took);
        each.push(round(took.as_secs_f64() * 1e3, 1));
        cluster.spawn(leader)?;
        let new_leader = cluster.wait_leader(Instant::now() + DEADLINE).await?;
        cluster.wait_caught_up(new_leader, Instant::now() + DEADLINE).await?;
    }
    let window = tally.close_window();
    stop.cancel();
    let _ = starter.await;

    let mut figures = Figures::default();
    figures.set("bench", "failover");
    figures.set("kills", options.kills);
    figures.set("rate", round(rate, 1));
    figures.set("p50_ms", samples.percentile_ms(50.0));
    figures.set("p99_ms", samples.percentile_ms(99.0));
    figures.set("max_ms", samples.percentile_ms(100.0));
    figures.set("each_ms", each);
    figures.set("started", window.started);
    figures.set("start_errors", window.start_errors);
    figures.set("workflows_done", window.workflows_done);
    figures.set("update_errors", window.update_errors);
    Ok(figures)
}
