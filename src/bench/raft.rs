//! `baton bench raft`: replicated writes per second through the full write path, with their latency.
//!
//! Each write is a `ClusterService.BenchWrite` of a `size`-byte value: the gRPC call, the proposer (forwarded when
//! the receiver follows), group commit, the leader's fsynced append, replication to a majority that fsyncs it too,
//! and the apply (one RocksDB write of the key, the running state digest and the applied index). Shaped like
//! `../shared/bench/etcd/kvbench put`, so the two print comparable figures: `clients` concurrent callers, each
//! with one write outstanding, sharing at most 16 connections; a fresh key per write (`keyspace` 0) or keys
//! cycling over `keyspace`; a warm-up of 100 writes that is not timed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};

use super::{own_cpu_seconds, round, Figures, Samples, Target};
use crate::pb::v1::cluster_service_client::ClusterServiceClient;
use crate::pb::v1::BenchWriteRequest;

/// Connections the clients share, at most (kvbench's default).
const MAX_CONNECTIONS: usize = 16;
/// Untimed writes before the measurement.
const WARMUP_WRITES: usize = 100;

/// Where the writes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Destination {
    /// Every client writes to the leader.
    Leader,
    /// Clients spread over every node (followers forward to the leader).
    All,
}

/// What `baton bench raft` runs.
#[derive(Debug, Clone)]
pub struct RaftOptions {
    /// Concurrent callers.
    pub clients: usize,
    /// Writes in all.
    pub total: usize,
    /// Value size, bytes.
    pub size: usize,
    /// 0: a fresh key per write; K: keys cycle over K.
    pub keyspace: usize,
    /// Where the writes go.
    pub destination: Destination,
}

/// Runs the writes and answers the figures.
pub async fn run(target: &Target, options: &RaftOptions) -> anyhow::Result<Figures> {
    if options.clients == 0 || options.total == 0 {
        bail!("--clients and --total must be at least 1");
    }
    let addrs = match options.destination {
        Destination::Leader => vec![target.leader_addr().await?],
        Destination::All => target.addrs().to_vec(),
    };
    let connections = options.clients.min(MAX_CONNECTIONS).max(addrs.len());
    let clients: Vec<ClusterServiceClient<_>> = (0..connections)
        .map(|i| {
            let addr = &addrs[i % addrs.len()];
            // One HTTP/2 connection per channel: channels are never shared between connections.
            crate::raft::network::channel(addr)
                .map(ClusterServiceClient::new)
                .with_context(|| format!("a channel to {addr}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let value: Vec<u8> = (0..options.size).map(|i| b'a' + (i % 26) as u8).collect();
    let keyspace = options.keyspace;
    let key = move |i: usize| {
        let k = if keyspace > 0 { i % keyspace } else { i };
        format!("bench/{k:010}")
    };

    let mut warm = clients[0].clone();
    for i in 0..WARMUP_WRITES.min(options.total) {
        warm.bench_write(BenchWriteRequest { key: format!("warmup/{i}"), value: value.clone() })
            .await
            .context("a warm-up write failed")?;
    }

    let next = Arc::new(AtomicUsize::new(0));
    let total = options.total;
    let (cpu_before, own_before, log_before) = (target.cpu_seconds(), own_cpu_seconds(), target.last_log_index().await);
    let started = Instant::now();
    let callers: Vec<_> = (0..options.clients)
        .map(|c| {
            let (mut client, next, value) = (clients[c % connections].clone(), next.clone(), value.clone());
            tokio::spawn(async move {
                let (mut samples, mut errors, mut first_error) = (Samples::default(), 0usize, None);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let sent = Instant::now();
                    match client.bench_write(BenchWriteRequest { key: key(i), value: value.clone() }).await {
                        Ok(_) => samples.push(sent.elapsed()),
                        Err(status) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| status.to_string());
                        }
                    }
                }
                (samples, errors, first_error)
            })
        })
        .collect();
    let (mut samples, mut errors, mut first_error) = (Samples::default(), 0, None);
    for caller in callers {
        let (s, e, f) = caller.await.context("a client task panicked")?;
        samples.extend(s);
        errors += e;
        first_error = first_error.or(f);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let entries = target.last_log_index().await.saturating_sub(log_before);
    let mut figures = Figures::default();
    figures.set("bench", "raft");
    figures.set("clients", options.clients);
    figures.set("connections", connections);
    figures.set("target", if options.destination == Destination::Leader { "leader" } else { "all" });
    figures.set("value_bytes", options.size);
    figures.set("writes", samples.len());
    figures.set("errors", errors);
    if let Some(e) = first_error {
        figures.set("first_error", e);
    }
    figures.set("ops_per_s", round(samples.len() as f64 / elapsed, 0));
    figures.set("p50_ms", samples.percentile_ms(50.0));
    figures.set("p90_ms", samples.percentile_ms(90.0));
    figures.set("p99_ms", samples.percentile_ms(99.0));
    figures.set("max_ms", samples.percentile_ms(100.0));
    figures.set("seconds", round(elapsed, 2));
    // Group commit: how many writes shared each log entry (entries include the odd heartbeat-free no-op).
    figures.set("log_entries", entries);
    figures.set("writes_per_entry", round(samples.len() as f64 / entries.max(1) as f64, 1));
    figures.set("nodes", target.node_figures(&cpu_before));
    figures.set("client_cpu_s", round(own_cpu_seconds() - own_before, 2));
    Ok(figures)
}
