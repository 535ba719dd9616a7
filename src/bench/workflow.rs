//! `baton bench workflow`: a three-task sequential workflow with workers over gRPC, sustained.
//!
//! Without `--rate`, two phases of `duration` each, after a warm-up: closed loop with `in_flight` workflows at all
//! times (the highest rate the cluster sustains: workflows_per_s, tasks_per_s), then open loop at half that rate
//! (the latencies a cluster at half load gives: start, dispatch, end to end). With `--rate`, only the second phase,
//! at that rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::load::{self, Tally, Window};
use super::{own_cpu_seconds, round, Figures, Target};
use crate::client::Client;

/// Load before each measurement window.
const WARMUP: Duration = Duration::from_secs(2);
/// Longest wait for the workflows in flight to end between phases.
const DRAIN: Duration = Duration::from_secs(30);
/// Clients the starts spread over.
const START_CLIENTS: usize = 4;

/// What `baton bench workflow` runs.
#[derive(Debug, Clone)]
pub struct WorkflowOptions {
    /// Each measurement window.
    pub duration: Duration,
    /// Workers (each polls the three task types).
    pub workers: usize,
    /// Workflows in flight in the closed-loop phase.
    pub in_flight: usize,
    /// Starts per second for an open-loop run only.
    pub rate: Option<f64>,
}

/// Runs the load and answers the figures.
pub async fn run(target: &Target, options: &WorkflowOptions) -> anyhow::Result<Figures> {
    if options.workers == 0 || options.in_flight == 0 || options.duration.is_zero() {
        bail!("--workers, --in-flight and --duration must be above zero");
    }
    let addrs = target.addrs().to_vec();
    load::register(&Client::new(addrs.clone())?).await?;
    let clients = load::start_clients(&addrs, START_CLIENTS)?;
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let permits = Arc::new(Semaphore::new(0));
    let workers = load::workers(&addrs, options.workers, tally.clone(), Some(permits.clone()), stop.clone())?;

    let mut figures = Figures::default();
    figures.set("bench", "workflow");
    figures.set("workers", options.workers);
    let rate = match options.rate {
        Some(rate) => rate,
        None => {
            figures.set("in_flight", options.in_flight);
            let closed = ClosedLoop { clients: &clients, tally: &tally, permits: &permits, stop: &stop };
            let (max, nodes, client_cpu) = closed.run(target, options.in_flight, options.duration).await;
            let workflows_per_s = max.workflows_done as f64 / max.seconds;
            figures.set("workflows_per_s", round(workflows_per_s, 0));
            figures.set("tasks_per_s", round(max.tasks_done as f64 / max.seconds, 0));
            add_latencies(&mut figures, "_at_max", max);
            figures.set("nodes_at_max", nodes);
            figures.set("client_cpu_s_at_max", client_cpu);
            workflows_per_s / 2.0
        }
    };
    if rate <= 0.0 {
        bail!("no workflow completed in the closed-loop phase, so there is no rate to halve");
    }
    let phase = stop.child_token();
    let starter = load::open_loop(&clients, rate, tally.clone(), phase.clone());
    let (half, nodes, client_cpu) = measure(target, &tally, options.duration).await;
    phase.cancel();
    let _ = starter.await;
    drain(&tally).await;
    figures.set("rate", round(rate, 1));
    figures.set("completed_per_s_at_rate", round(half.workflows_done as f64 / half.seconds, 1));
    if options.rate.is_some() {
        figures.set("workflows_per_s", round(half.workflows_done as f64 / half.seconds, 0));
        figures.set("tasks_per_s", round(half.tasks_done as f64 / half.seconds, 0));
    }
    add_latencies(&mut figures, "", half);
    figures.set("nodes", nodes);
    figures.set("client_cpu_s", client_cpu);
    stop.cancel();
    for w in workers {
        let _ = w.await;
    }
    Ok(figures)
}

/// A closed-loop phase: what it shares with the rest of the run.
pub(super) struct ClosedLoop<'a> {
    pub clients: &'a [Arc<Client>],
    pub tally: &'a Arc<Tally>,
    pub permits: &'a Arc<Semaphore>,
    pub stop: &'a CancellationToken,
}

impl ClosedLoop<'_> {
    /// Keeps `in_flight` workflows going, measures them for `duration` after the warm-up, then stops starting and
    /// lets the ones in flight end: the window, the nodes' figures and the bench's own CPU over it.
    pub async fn run(&self, target: &Target, in_flight: usize, duration: Duration) -> (Window, serde_json::Value, f64) {
        let phase = self.stop.child_token();
        self.permits.add_permits(in_flight);
        let starters =
            load::closed_loop(self.clients, in_flight.min(64), self.permits.clone(), self.tally.clone(), phase.clone());
        let measured = measure(target, self.tally, duration).await;
        phase.cancel();
        for s in starters {
            let _ = s.await;
        }
        drain(self.tally).await;
        measured
    }
}

/// Warms up, then measures for `duration`: the window, the nodes' figures and the bench's own CPU over it.
async fn measure(target: &Target, tally: &Tally, duration: Duration) -> (Window, serde_json::Value, f64) {
    tokio::time::sleep(WARMUP).await;
    let (cpu_before, own_before) = (target.cpu_seconds(), own_cpu_seconds());
    tally.open_window();
    tokio::time::sleep(duration).await;
    let window = tally.close_window();
    (window, target.node_figures(&cpu_before), round(own_cpu_seconds() - own_before, 2))
}

/// Waits (bounded) until every workflow started has ended, so the next phase starts from an idle cluster.
async fn drain(tally: &Tally) {
    let deadline = Instant::now() + DRAIN;
    while tally.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn add_latencies(figures: &mut Figures, suffix: &str, mut w: Window) {
    figures.set(&format!("start_p50_ms{suffix}"), w.start.percentile_ms(50.0));
    figures.set(&format!("start_p99_ms{suffix}"), w.start.percentile_ms(99.0));
    figures.set(&format!("dispatch_p50_ms{suffix}"), w.dispatch.percentile_ms(50.0));
    figures.set(&format!("dispatch_p99_ms{suffix}"), w.dispatch.percentile_ms(99.0));
    figures.set(&format!("e2e_p50_ms{suffix}"), w.e2e.percentile_ms(50.0));
    figures.set(&format!("e2e_p99_ms{suffix}"), w.e2e.percentile_ms(99.0));
    figures.set(&format!("start_errors{suffix}"), w.start_errors);
    figures.set(&format!("update_errors{suffix}"), w.update_errors);
}
