//! `baton chaos`: runs a local three-node cluster of this binary under a steady workflow load, injects faults at an
//! interval (leader and follower kills, a paused leader, double kills, whole-cluster restarts, a wiped follower,
//! killed workers), then checks what Baton promises (DESIGN.md, "Guarantees") and reports the figures.
//!
//! - [`crate::local_cluster`]: the node processes (configs, ports, SIGKILL / SIGSTOP / restart / wipe, readiness).
//! - [`load`]: definitions of six workflow shapes, in-process workers pinned to each node, the start generator.
//! - [`faults`]: the fault kinds and the fault -> first dispatch measurement.
//! - [`checks`]: the invariants and the leader-per-term sampler.
//! - [`report`]: the figures, as a table and as JSON.
//!
//! It is a tool, outside the server: it talks to the nodes only through the public gRPC API and the SDK.

pub mod checks;
pub mod faults;
pub mod load;
pub mod report;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::checks::Violation;
use self::faults::{FaultKind, Target};
use self::load::{LoadTally, Tally, Workers};
use self::report::{Report, TaskFigures, WorkflowFigures};
use crate::client::Client;
use crate::local_cluster::{Cluster, Tuning};

/// Longest wait for the fresh cluster to elect its first leader.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// Longest wait, after the load stops, for every acknowledged workflow to end.
const DRAIN_DEADLINE: Duration = Duration::from_secs(120);
/// Longest wait for the replicas to agree at the end.
const CONVERGENCE_DEADLINE: Duration = Duration::from_secs(60);

/// What `baton chaos` runs.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// How long load and faults go on (the drain and checks come after).
    pub duration: Duration,
    /// Pause between the end of one fault's recovery and the next fault.
    pub fault_interval: Duration,
    /// The fault kinds, injected in turn.
    pub faults: Vec<FaultKind>,
    /// Workflow starts per second.
    pub rate: f64,
    /// Where the JSON report goes (default: `chaos-report.json` in the run's directory).
    pub report: Option<PathBuf>,
    /// Keep the nodes' data dirs and logs even after a clean run.
    pub keep_dir: bool,
    /// Run each node in its own network namespace (root only), which the partition fault needs.
    pub namespaces: bool,
}

/// Parses a duration such as `90s`, `5m`, `500ms`, `1h` or `1m30s` (humantime's syntax).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("bad duration '{text}': {e}; expected a number with a unit, e.g. 90s, 5m, 500ms"))
}

/// A fresh directory for this run under the system's temp dir.
fn fresh_dir() -> anyhow::Result<PathBuf> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("baton-chaos-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn elapsed_s(since: Instant) -> String {
    format!("{:7.1}s", since.elapsed().as_secs_f64())
}

/// Injects the configured faults in turn, one every `fault_interval` after the last one's recovery, until the run's
/// duration is up or the cluster fails to recover.
async fn inject_faults(
    options: &ChaosOptions,
    cluster: &mut Cluster,
    workers: &mut Workers,
    tally: &Tally,
    run_start: Instant,
    violations: &mut Vec<Violation>,
) -> Vec<faults::FaultRecord> {
    let mut fault_log = Vec::new();
    for kind in options.faults.iter().cycle() {
        let next = Instant::now() + options.fault_interval;
        if next >= run_start + options.duration {
            break;
        }
        tokio::time::sleep_until(next.into()).await;
        let target = Target { cluster: &mut *cluster, workers: &mut *workers, tally, run_start };
        match faults::inject(*kind, target, violations).await {
            Ok(record) => {
                let dispatch = record.dispatch_ms.map_or("none".to_string(), |ms| format!("{ms:.0} ms"));
                println!(
                    "[chaos] {} {kind}: {}; n{} -> n{}; first dispatch after {dispatch}",
                    elapsed_s(run_start),
                    record.what,
                    record.leader_before,
                    record.leader_after
                );
                fault_log.push(record);
            }
            Err(e) => {
                println!("[chaos] {} {kind}: the cluster did not recover: {e:#}", elapsed_s(run_start));
                violations.push(Violation::new("recovery", format!("{kind}: {e:#}")));
                break;
            }
        }
        violations.extend(cluster.reap_crashed().into_iter().map(|c| Violation::new("node-crashed", c)));
    }
    fault_log
}

/// Runs the chaos scenario and answers its report (also written as JSON). `Err` only when the cluster could not be
/// set up; everything the cluster does wrong afterwards is a violation in the report. The nodes are SIGKILLed
/// when this returns, fails, panics, or is dropped (Ctrl-C).
pub async fn run(options: &ChaosOptions) -> anyhow::Result<Report> {
    if options.faults.contains(&FaultKind::PartitionLeader) && !options.namespaces {
        anyhow::bail!("the partition-leader fault needs the nodes in network namespaces: add --network netns (root)");
    }
    let dir = fresh_dir()?;
    println!("[chaos] directory {}", dir.display());
    let mut cluster = Cluster::start(&dir, options.namespaces, Tuning::Chaos)?;
    let leader = cluster.wait_leader(Instant::now() + STARTUP_DEADLINE).await.context("the fresh cluster")?;
    println!("[chaos] three nodes up, n{leader} leads");
    let client = Arc::new(Client::new(cluster.grpc_addrs())?);
    load::register_definitions(&client).await?;

    // Leader sampling, workers, load, each in a JoinSet: dropping one (Ctrl-C, an error) aborts its tasks.
    let mut sampler = JoinSet::new();
    let stop_sampling = CancellationToken::new();
    let leaders = checks::LeaderIds::default();
    sampler.spawn(checks::sample_leaders(cluster.channels(), leaders.clone(), stop_sampling.clone()));
    let tally = Arc::new(Tally::default());
    let mut workers = Workers::start(cluster.channels(), tally.clone());
    let mut load = JoinSet::new();
    let stop_load = CancellationToken::new();
    let load_tally = Arc::new(LoadTally::default());
    load.spawn(load::generate(client.clone(), options.rate, stop_load.clone(), load_tally.clone()));

    let run_start = Instant::now();
    let mut violations = Vec::new();
    println!(
        "[chaos] load at {}/s for {:?}; a fault every {:?}",
        options.rate, options.duration, options.fault_interval
    );
    let fault_log = inject_faults(options, &mut cluster, &mut workers, &tally, run_start, &mut violations).await;
    tokio::time::sleep_until((run_start + options.duration).into()).await;
    stop_load.cancel();
    println!("[chaos] {} load stopped; draining", elapsed_s(run_start));
    // The generator returns once its starts in flight are answered (each has its own deadline).
    while load.join_next().await.is_some() {}
    let started = load_tally.started.lock().unwrap_or_else(|e| e.into_inner()).clone();
    violations.extend(
        load_tally
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| Violation::new("start-refused", r.clone())),
    );

    let (done, drain_violations) = checks::drain(&client, &started, Instant::now() + DRAIN_DEADLINE).await;
    violations.extend(drain_violations);
    println!(
        "[chaos] {} {} of {} acknowledged workflows ended; checking",
        elapsed_s(run_start),
        done.len(),
        started.len()
    );
    workers.stop();
    stop_sampling.cancel();
    while sampler.join_next().await.is_some() {}
    let converged = match checks::check_convergence(&cluster, Instant::now() + CONVERGENCE_DEADLINE).await {
        Ok(statuses) => statuses.first().map_or(0, |s| s.last_applied),
        Err(v) => {
            violations.push(v);
            0
        }
    };
    for s in &started {
        if let Some(wf) = done.get(&s.workflow_id) {
            violations.extend(checks::check_workflow(&client, s, wf).await);
        }
    }
    violations.extend(checks::check_listing(&client).await);
    let leaders = leaders.lock().unwrap_or_else(|e| e.into_inner()).clone();
    violations.extend(cluster.reap_crashed().into_iter().map(|c| Violation::new("node-crashed", c)));

    let completed: Vec<_> =
        done.values().filter(|wf| wf.status == crate::engine::model::WorkflowStatus::Completed).collect();
    let first_start = completed.iter().map(|wf| wf.start_time).min().unwrap_or(0);
    let last_end = completed.iter().map(|wf| wf.end_time).max().unwrap_or(0);
    let span_s = (last_end.saturating_sub(first_start) as f64 / 1e3).max(1e-3);
    let report = Report {
        dir: dir.display().to_string(),
        duration_s: options.duration.as_secs_f64(),
        rate: options.rate,
        fault_interval_s: options.fault_interval.as_secs_f64(),
        faults: report::fault_figures(&options.faults, &fault_log),
        fault_log,
        workflows: WorkflowFigures {
            acknowledged: started.len(),
            unacknowledged: load_tally.unacknowledged.load(Ordering::Relaxed),
            completed: completed.len(),
            completed_per_s: if completed.is_empty() { 0.0 } else { completed.len() as f64 / span_s },
        },
        tasks: TaskFigures {
            completed: tally.completed.load(Ordering::Relaxed),
            refused_stale_lease: tally.refused.load(Ordering::Relaxed),
            duplicate_deliveries: tally.duplicate_deliveries(),
            abandoned_by_killed_workers: tally.abandoned.load(Ordering::Relaxed),
        },
        terms_with_a_leader: leaders.iter().map(|(term, _)| term).collect::<std::collections::BTreeSet<_>>().len(),
        leaders_elected: leaders.len(),
        converged_at_index: converged,
        violations,
    };
    cluster.stop_all();

    let report_path = options.report.clone().unwrap_or_else(|| dir.join("chaos-report.json"));
    let json = serde_json::to_string_pretty(&report).context("encoding the report")?;
    std::fs::write(&report_path, json).with_context(|| format!("writing {}", report_path.display()))?;
    println!("{}", report.render());
    println!("[chaos] report written to {}", report_path.display());
    if !report.violations.is_empty() {
        eprintln!(
            "[chaos] {} violation(s); node logs kept under {}:\n{}",
            report.violations.len(),
            dir.display(),
            cluster.log_tails()
        );
    } else if !options.keep_dir {
        cluster.remove_files();
        // Empty unless the report was written there.
        let _ = std::fs::remove_dir(&dir);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "10", "s", "-1s", "five minutes"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn fault_kinds_parse_by_name() {
        for kind in FaultKind::ALL {
            assert_eq!(kind.name().parse::<FaultKind>(), Ok(kind));
        }
        let refusal = "partition".parse::<FaultKind>().expect_err("partition alone is not a fault kind");
        assert!(refusal.contains("kill-leader"), "{refusal}");
    }
}
