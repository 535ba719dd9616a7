//! `baton bench`: throughput and latency of a three-node cluster, measured from outside through the public gRPC API.
//!
//! Unless given `--addr`, a run starts its own local cluster of this binary ([`crate::local_cluster`], the shipped
//! defaults: every append fsynced) in a fresh directory, and deletes it afterwards.
//!
//! - [`raft`]: replicated writes (`ClusterService.BenchWrite`) from C clients; the figure to put next to etcd's puts.
//! - [`workflow`]: a three-task sequential workflow with workers over gRPC, at the highest sustained rate and then at
//!   half of it.
//! - [`failover`]: leader SIGKILLs under half of the highest load, kill to the first task the new leader dispatches.
//! - [`load`]: what the last two share: the workers, the starts, the samples.
//!
//! Every run prints a table, or one JSON object with `--json`.

pub mod failover;
pub mod load;
pub mod raft;
pub mod workflow;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

use crate::api::status::fetch as fetch_status;
use crate::local_cluster::{Cluster, Tuning};

/// Longest wait for one node's status.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest wait for a fresh cluster's first leader.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// Linux reports a process's CPU times in `/proc/<pid>/stat` in USER_HZ ticks, 100 per second on every
/// architecture the kernel exposes to user space.
const USER_HZ: f64 = 100.0;

/// The cluster a bench runs against: one it started (and can kill and measure), or one given by address.
#[derive(Debug)]
pub struct Target {
    cluster: Option<Cluster>,
    dir: Option<PathBuf>,
    addrs: Vec<String>,
}

impl Target {
    /// The cluster at `addrs`, or, when empty, a fresh local one (waits for its leader).
    pub async fn open(addrs: Vec<String>) -> anyhow::Result<Target> {
        if !addrs.is_empty() {
            return Ok(Target { cluster: None, dir: None, addrs });
        }
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("baton-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cluster = Cluster::start(&dir, false, Tuning::Defaults)?;
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let leader = cluster.wait_leader(deadline).await;
        let addrs = cluster.grpc_addrs();
        let target = Target { cluster: Some(cluster), dir: Some(dir), addrs };
        if let Err(e) = leader {
            let tails = target.cluster.as_ref().map(Cluster::log_tails).unwrap_or_default();
            bail!("the local cluster did not elect a leader: {e}\n{tails}");
        }
        Ok(target)
    }

    /// Every node's gRPC address.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// The cluster this run started, for faults and process figures.
    pub fn local(&mut self) -> Option<&mut Cluster> {
        self.cluster.as_mut()
    }

    /// The gRPC address of the node that says it leads.
    pub async fn leader_addr(&self) -> anyhow::Result<String> {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            for addr in &self.addrs {
                if fetch_status(addr, false, STATUS_TIMEOUT).await.is_ok_and(|s| s.role == "leader") {
                    return Ok(addr.clone());
                }
            }
            if Instant::now() >= deadline {
                bail!("no node of {:?} says it leads", self.addrs);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The highest last log index any node reports (0 when none answers): log entries written so far.
    pub async fn last_log_index(&self) -> u64 {
        let mut highest = 0;
        for addr in &self.addrs {
            if let Ok(status) = fetch_status(addr, false, STATUS_TIMEOUT).await {
                highest = highest.max(status.last_log_index);
            }
        }
        highest
    }

    /// CPU time used so far by each node this run started, by node id (empty for a cluster given by address).
    pub fn cpu_seconds(&self) -> Vec<(u64, f64)> {
        let Some(cluster) = &self.cluster else { return Vec::new() };
        cluster.ids().into_iter().filter_map(|id| Some((id, process_cpu_seconds(cluster.process_id(id)?)?))).collect()
    }

    /// Per node this run started: CPU seconds used since `before` (from [`Target::cpu_seconds`]) and peak resident
    /// memory so far, as a JSON list.
    pub fn node_figures(&self, before: &[(u64, f64)]) -> Value {
        let Some(cluster) = &self.cluster else { return Value::Null };
        let nodes: Vec<Value> = self
            .cpu_seconds()
            .into_iter()
            .map(|(id, now)| {
                let since = before.iter().find(|(b, _)| *b == id).map_or(0.0, |(_, s)| *s);
                let rss = cluster.process_id(id).and_then(process_peak_rss_mib);
                json!({"node": id, "cpu_s": round(now - since, 2), "peak_rss_mib": rss.map(|r| round(r, 1))})
            })
            .collect();
        Value::Array(nodes)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut cluster) = self.cluster.take() {
            cluster.stop_all();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / USER_HZ)
}

/// Peak resident set size of a process (VmHWM), MiB.
fn process_peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU seconds this process (the bench's own clients and workers) has used.
pub fn own_cpu_seconds() -> f64 {
    process_cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// `value` rounded to `digits` decimals (figures print without noise).
pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// Latency samples.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<Duration>);

impl Samples {
    /// Adds one.
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// Adds all of `other`'s.
    pub fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `p`-th percentile (nearest rank), ms; None without samples.
    pub fn percentile_ms(&mut self, p: f64) -> Option<f64> {
        if self.0.is_empty() {
            return None;
        }
        self.0.sort_unstable();
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        let d = self.0[rank.clamp(1, self.0.len()) - 1];
        Some(round(d.as_secs_f64() * 1e3, 3))
    }
}

/// A run's figures, in the order they were added.
#[derive(Debug, Default)]
pub struct Figures(Vec<(String, Value)>);

impl Figures {
    /// Adds a figure.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.0.push((key.to_string(), value.into()));
    }

    /// One JSON object.
    pub fn to_json(&self) -> Value {
        let map: Map<String, Value> = self.0.iter().cloned().collect();
        Value::Object(map)
    }

    /// A two-column table.
    pub fn to_table(&self) -> String {
        let mut table = comfy_table::Table::new();
        table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED).set_header(["figure", "value"]);
        for (key, value) in &self.0 {
            let shown = match value {
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                other => other.to_string(),
            };
            table.add_row([key.clone(), shown]);
        }
        table.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut s = Samples::default();
        assert_eq!(s.percentile_ms(50.0), None);
        for ms in (1..=100).rev() {
            s.push(Duration::from_millis(ms));
        }
        assert_eq!(s.percentile_ms(50.0), Some(50.0));
        assert_eq!(s.percentile_ms(99.0), Some(99.0));
        assert_eq!(s.percentile_ms(100.0), Some(100.0));
        assert_eq!(s.percentile_ms(0.0), Some(1.0));
    }

    #[test]
    fn this_process_uses_cpu_and_memory() {
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(own_cpu_seconds() > 0.0, "50 ms of spinning shows in /proc/self/stat");
        assert!(process_peak_rss_mib(std::process::id()).is_some_and(|m| m > 1.0));
    }
}
