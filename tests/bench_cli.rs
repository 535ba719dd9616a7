//! `baton bench`: each subcommand, run as users run it (the real binary starting its own three-node cluster), prints
//! one JSON object whose figures agree with what was asked; `ClusterService.BenchWrite` replicates what it writes
//! and refuses a bad key by name. Sizes are small: this checks that the benchmarks work, not how fast the machine is.

mod support;

use std::process::Command;

use anyhow::{ensure, Context, Result};
use baton::pb::v1::cluster_service_client::ClusterServiceClient;
use baton::pb::v1::BenchWriteRequest;
use serde_json::Value;
use support::{Cluster, BIN};
use tonic::Code;

/// Runs `baton bench ARGS --json` and answers its JSON object.
fn bench(args: &[&str]) -> Result<Value> {
    let out = Command::new(BIN).arg("bench").args(args).arg("--json").output().context("running baton bench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "baton bench {args:?} failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().last().context("no output")?;
    serde_json::from_str(line).with_context(|| format!("not one JSON object: {line}"))
}

fn number(figures: &Value, key: &str) -> Result<f64> {
    figures[key].as_f64().with_context(|| format!("{key} missing or not a number in {figures}"))
}

#[test]
fn bench_raft_commits_every_write_and_reports_latency_and_node_usage() -> Result<()> {
    let figures = bench(&["raft", "--clients", "8", "--total", "400", "--size", "100"])?;
    ensure!(figures["writes"] == 400 && figures["errors"] == 0, "every write committed: {figures}");
    ensure!(number(&figures, "ops_per_s")? > 0.0, "{figures}");
    let (p50, p99) = (number(&figures, "p50_ms")?, number(&figures, "p99_ms")?);
    ensure!(0.0 < p50 && p50 <= p99, "p50 {p50} <= p99 {p99}");
    let nodes = figures["nodes"].as_array().context("nodes")?;
    ensure!(nodes.len() == 3, "three nodes measured: {figures}");
    for node in nodes {
        ensure!(number(node, "peak_rss_mib")? > 1.0, "a node's peak RSS: {node}");
    }
    Ok(())
}

#[test]
fn bench_workflow_at_a_fixed_rate_completes_what_it_starts() -> Result<()> {
    let figures = bench(&["workflow", "--rate", "40", "--duration", "2s", "--workers", "2"])?;
    let completed = number(&figures, "completed_per_s_at_rate")?;
    ensure!((30.0..=50.0).contains(&completed), "about 40 workflows/s completed: {figures}");
    // Three tasks per workflow.
    let tasks = number(&figures, "tasks_per_s")?;
    ensure!((2.5 * completed..=3.5 * completed).contains(&tasks), "three tasks per workflow: {figures}");
    for key in ["start_p50_ms", "start_p99_ms", "dispatch_p99_ms", "e2e_p99_ms"] {
        ensure!(number(&figures, key)? >= 0.0, "{key}: {figures}");
    }
    ensure!(number(&figures, "e2e_p99_ms")? >= number(&figures, "start_p50_ms")?, "a workflow outlasts its start");
    ensure!(figures["start_errors"] == 0, "{figures}");
    Ok(())
}

#[test]
fn bench_failover_kills_the_leader_and_times_the_next_dispatch() -> Result<()> {
    let figures = bench(&["failover", "--kills", "2", "--rate", "30", "--workers", "2"])?;
    ensure!(figures["kills"] == 2, "{figures}");
    let each = figures["each_ms"].as_array().context("each_ms")?;
    ensure!(each.len() == 2, "one figure per kill: {figures}");
    for ms in each {
        let ms = ms.as_f64().context("a number")?;
        // Above zero (the new leader needs an election), below the bench's own 30 s deadline.
        ensure!(0.0 < ms && ms < 30_000.0, "kill to dispatch {ms} ms");
    }
    ensure!(number(&figures, "workflows_done")? > 0.0, "work went on across the kills: {figures}");
    Ok(())
}

#[test]
fn bench_failover_refuses_a_cluster_it_did_not_start() -> Result<()> {
    let out = Command::new(BIN).args(["bench", "failover", "--addr", "127.0.0.1:1"]).output()?;
    ensure!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("leave out --addr"), "the error says why: {stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_writes_are_replicated_and_bad_keys_refused_by_name() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let follower = cluster.nodes().iter().find(|n| n.id != leader).context("a follower")?;
    let mut client = ClusterServiceClient::new(baton::raft::network::channel(&follower.grpc_addr)?);
    let write = |value: u8| {
        let mut client = client.clone();
        async move { client.bench_write(BenchWriteRequest { key: "k".into(), value: vec![value; 64] }).await }
    };
    let hash = |statuses: Vec<support::Status>| statuses[0].state_hash.clone();
    let first = write(7).await?.into_inner();
    let after_first = hash(cluster.wait_converged().await?);
    let second = write(8).await?.into_inner();
    ensure!(second.log_index > first.log_index, "each write is its own log entry: {first:?} {second:?}");
    let after_second = hash(cluster.wait_converged().await?);
    ensure!(after_second != after_first, "the overwrite changed every replica's state");
    write(7).await?;
    ensure!(hash(cluster.wait_converged().await?) == after_first, "the key holds the first value again");
    for key in [String::new(), "x".repeat(257)] {
        let refused = client.bench_write(BenchWriteRequest { key, value: Vec::new() }).await;
        let status = refused.err().context("a bad key is refused")?;
        ensure!(status.code() == Code::InvalidArgument, "{status:?}");
        ensure!(status.message().starts_with("key: "), "names the key: {}", status.message());
    }
    cluster.pass();
    Ok(())
}
