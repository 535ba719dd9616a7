//! A local three-node cluster of this binary's `baton server` processes, for `baton chaos` and `baton bench`: config
//! files, data dirs and log files under one directory, ports picked by binding `127.0.0.1:0`, and the process control
//! faults need (SIGKILL, SIGSTOP/SIGCONT, restart, wiping a data dir). Readiness is polled through the gRPC `ClusterService.Status`, never slept for.
//! Dropping a [`Cluster`] SIGKILLs every node it started, so no error, panic or Ctrl-C leaves processes behind.

pub mod netns;

use self::netns::Namespaces;
use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tonic::transport::Channel;

use crate::api::status::NodeStatus;
use crate::pb::v1::cluster_service_client::ClusterServiceClient;
use crate::pb::v1::StatusRequest;

/// Longest a status request may take; a SIGSTOPped node never answers, so this bounds every probe.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a node may take to answer a status request that recomputes its state hash from a full scan.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often [`poll_until`] re-checks.
const PROBE_INTERVAL: Duration = Duration::from_millis(25);
/// Lines of each node's log shown when a run fails.
pub const LOG_TAIL_LINES: usize = 40;

/// One node: its addresses and files, and its process while it runs.
#[derive(Debug)]
pub struct NodeProcess {
    /// Raft node id, 1..=3.
    pub id: u64,
    /// gRPC `host:port` (also what the `x-baton-leader` reply metadata names).
    pub grpc_addr: String,
    /// The node's TOML config.
    pub config_path: PathBuf,
    /// Its RocksDB directory.
    pub data_dir: PathBuf,
    /// stdout and stderr of every run of the node, each run preceded by a marker line.
    pub log_path: PathBuf,
    channel: Channel,
    child: Option<Child>,
}

/// How the nodes are configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    /// A small snapshot threshold, so that a wiped node rejoins through a snapshot install rather than by replaying
    /// the log (what `baton chaos` wants to exercise).
    Chaos,
    /// The shipped defaults (config/node*.toml), what `baton bench` measures.
    Defaults,
}

/// A local three-node cluster run from this very binary.
#[derive(Debug)]
pub struct Cluster {
    exe: PathBuf,
    nodes: Vec<NodeProcess>,
    /// With `--network netns`: the namespaces the nodes run in (dropped after the nodes are stopped).
    network: Option<Namespaces>,
}

/// `n` distinct free loopback ports (all listeners held until all are picked, so none is handed out twice).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to find a free port"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// A TOML string literal (a JSON string is a valid TOML basic string).
fn toml_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The config file of node `id`: the shipped election timing, and the snapshot threshold `tuning` asks for.
fn render_config(id: u64, data_dir: &Path, members: &[(u64, String, String)], tuning: Tuning) -> String {
    let cluster_id = match tuning {
        Tuning::Chaos => "chaos",
        Tuning::Defaults => "bench",
    };
    let mut s = format!(
        "cluster_id = \"{cluster_id}\"\nnode_id = {id}\ndata_dir = {}\n",
        toml_str(&data_dir.to_string_lossy())
    );
    for (member, grpc, http) in members {
        s.push_str(&format!(
            "\n[[members]]\nid = {member}\ngrpc_addr = {}\nhttp_addr = {}\n",
            toml_str(grpc),
            toml_str(http)
        ));
    }
    s.push_str("\n[raft]\nheartbeat_interval_ms = 50\nelection_timeout_min_ms = 100\nelection_timeout_max_ms = 200\n");
    if tuning == Tuning::Chaos {
        s.push_str("\n[snapshot]\nlogs_since_last = 500\nmax_logs_kept = 200\n");
    }
    s.push_str("\n[api]\nforward_timeout_ms = 5000\n");
    s
}

impl Cluster {
    /// Writes the three nodes' configs under `dir` and starts the nodes (without waiting for them): on loopback
    /// ports, or each in its own network namespace when `namespaces` is set.
    pub fn start(dir: &Path, namespaces: bool, tuning: Tuning) -> anyhow::Result<Cluster> {
        let exe = std::env::current_exe().context("locating the baton binary")?;
        let ids = [1u64, 2, 3];
        let network = if namespaces { Some(Namespaces::create(&ids)?) } else { None };
        let members: Vec<(u64, String, String)> = match &network {
            Some(ns) => ids
                .iter()
                .map(|&id| (id, format!("{}:7001", ns.node_ip(id)), format!("{}:8081", ns.node_ip(id))))
                .collect(),
            None => {
                let ports = free_ports(6)?;
                ids.iter()
                    .zip(ports.chunks(2))
                    .map(|(&id, p)| (id, format!("127.0.0.1:{}", p[0]), format!("127.0.0.1:{}", p[1])))
                    .collect()
            }
        };
        let mut nodes = Vec::new();
        for (id, grpc_addr, _) in &members {
            let data_dir = dir.join(format!("node{id}"));
            let config_path = dir.join(format!("node{id}.toml"));
            fs::write(&config_path, render_config(*id, &data_dir, &members, tuning))
                .with_context(|| format!("writing {}", config_path.display()))?;
            let channel = crate::raft::network::channel(grpc_addr)
                .with_context(|| format!("a gRPC channel to node {id} at {grpc_addr}"))?;
            nodes.push(NodeProcess {
                id: *id,
                grpc_addr: grpc_addr.clone(),
                config_path,
                data_dir,
                log_path: dir.join(format!("node{id}.log")),
                channel,
                child: None,
            });
        }
        let mut cluster = Cluster { exe, nodes, network };
        for id in cluster.ids() {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// Every node id.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Every node's gRPC address, in id order.
    pub fn grpc_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.grpc_addr.clone()).collect()
    }

    /// Every node's gRPC channel (lazily connected; reconnects after a restart), in id order.
    pub fn channels(&self) -> Vec<Channel> {
        self.nodes.iter().map(|n| n.channel.clone()).collect()
    }

    /// The node with this id.
    pub fn node(&self, id: u64) -> anyhow::Result<&NodeProcess> {
        self.nodes.iter().find(|n| n.id == id).with_context(|| format!("no node {id} in the cluster"))
    }

    fn node_mut(&mut self, id: u64) -> anyhow::Result<&mut NodeProcess> {
        self.nodes.iter_mut().find(|n| n.id == id).with_context(|| format!("no node {id} in the cluster"))
    }

    /// The ids of the nodes this runner has started and not killed.
    pub fn live(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.id).collect()
    }

    /// Starts node `id` with its config (and whatever its data dir holds). Does not wait for it.
    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let exe = self.exe.clone();
        let mut command = match &self.network {
            // `ip netns exec` execs the node in place: the child's pid is the node's, for the signals.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.namespace(id)]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let node = self.node_mut(id)?;
        if node.child.is_some() {
            bail!("node {id} is already running");
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .with_context(|| format!("opening {}", node.log_path.display()))?;
        writeln!(log, "===== starting node {id}: {} server --config {}", exe.display(), node.config_path.display())?;
        command
            .arg("server")
            .arg("--config")
            .arg(&node.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        // BATON_* variables would override the generated config; only the log filter may pass.
        // The nodes size their runtimes for this machine, whatever the runner's own runtime was told.
        command.env_remove("TOKIO_WORKER_THREADS");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("BATON_") && key != "BATON_LOG" {
                command.env_remove(key);
            }
        }
        node.child = Some(command.spawn().with_context(|| format!("starting node {id} ({})", exe.display()))?);
        Ok(())
    }

    /// Notes `what` in node `id`'s log, so a post-mortem shows where the faults fell.
    fn note(&self, id: u64, what: &str) {
        if let Ok(node) = self.node(id) {
            if let Ok(mut log) = OpenOptions::new().append(true).open(&node.log_path) {
                let _ = writeln!(log, "===== {what}");
            }
        }
    }

    /// The process id of node `id`, while it runs.
    pub fn process_id(&self, id: u64) -> Option<u32> {
        self.node(id).ok()?.child.as_ref().map(Child::id)
    }

    fn pid(&self, id: u64) -> anyhow::Result<Pid> {
        let child = self.node(id)?.child.as_ref().with_context(|| format!("node {id} is not running"))?;
        Ok(Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?))
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node_mut(id)?;
        let mut child = node.child.take().with_context(|| format!("node {id} is not running"))?;
        child.kill().with_context(|| format!("SIGKILL to node {id}"))?;
        child.wait().with_context(|| format!("reaping node {id}"))?;
        self.note(id, "SIGKILL");
        Ok(())
    }

    /// SIGSTOPs node `id`: it neither runs nor answers until [`Cluster::resume`].
    pub fn pause(&self, id: u64) -> anyhow::Result<()> {
        self.note(id, "SIGSTOP");
        kill(self.pid(id)?, Signal::SIGSTOP).with_context(|| format!("SIGSTOP to node {id}"))
    }

    /// SIGCONTs node `id`.
    pub fn resume(&self, id: u64) -> anyhow::Result<()> {
        kill(self.pid(id)?, Signal::SIGCONT).with_context(|| format!("SIGCONT to node {id}"))?;
        self.note(id, "SIGCONT");
        Ok(())
    }

    /// Cuts node `id` off from the other nodes (not from this runner); needs `--network netns`.
    pub fn partition(&self, id: u64) -> anyhow::Result<()> {
        let ns =
            self.network.as_ref().context("a partition needs the nodes in network namespaces (--network netns)")?;
        ns.cut_off(id).with_context(|| format!("cutting node {id} off"))?;
        self.note(id, "cut off from the other nodes");
        Ok(())
    }

    /// Ends node `id`'s partition.
    pub fn heal(&self, id: u64) -> anyhow::Result<()> {
        let ns = self.network.as_ref().context("no network namespaces")?;
        ns.heal(id).with_context(|| format!("healing node {id}'s partition"))?;
        self.note(id, "partition healed");
        Ok(())
    }

    /// Deletes node `id`'s data dir; the node must be stopped.
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.node(id)?;
        if node.child.is_some() {
            bail!("node {id} must be stopped before its data dir is wiped");
        }
        fs::remove_dir_all(&node.data_dir).with_context(|| format!("deleting {}", node.data_dir.display()))?;
        self.note(id, "data dir wiped");
        Ok(())
    }

    /// Nodes that exited by themselves (crashed), with how they exited; they count as stopped from then on.
    pub fn reap_crashed(&mut self) -> Vec<String> {
        let mut crashed = Vec::new();
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    crashed.push(format!(
                        "node {} exited by itself ({status}); see {}",
                        node.id,
                        node.log_path.display()
                    ));
                    node.child = None;
                }
            }
        }
        crashed
    }

    /// Deletes every node's data dir and log (the cluster must be stopped).
    pub fn remove_files(&self) {
        for node in &self.nodes {
            let _ = fs::remove_dir_all(&node.data_dir);
            let _ = fs::remove_file(&node.log_path);
            let _ = fs::remove_file(&node.config_path);
        }
    }

    /// Stops every node (SIGKILL: the run is over, nothing is left to check).
    pub fn stop_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Node `id`'s status, or why it could not be had.
    pub async fn status(&self, id: u64) -> Result<NodeStatus, String> {
        let node = self.node(id).map_err(|e| e.to_string())?;
        status_of(node.channel.clone(), false).await
    }

    /// Node `id`'s status with its state hash checked against a full scan of its state.
    pub async fn verified_status(&self, id: u64) -> Result<NodeStatus, String> {
        let node = self.node(id).map_err(|e| e.to_string())?;
        status_of(node.channel.clone(), true).await
    }

    /// Waits until node `id` answers status requests.
    pub async fn wait_up(&self, id: u64, deadline: Instant) -> anyhow::Result<()> {
        poll_until(deadline, || self.status(id)).await.map(drop).with_context(|| format!("node {id} is not up"))
    }

    /// Waits until exactly one live node is leader and every live node names it; answers its id.
    pub async fn wait_leader(&self, deadline: Instant) -> anyhow::Result<u64> {
        self.wait_leader_among(&self.live(), deadline).await
    }

    /// [`Cluster::wait_leader`] among the nodes `ids` only (the side of a partition).
    pub async fn wait_leader_among(&self, ids: &[u64], deadline: Instant) -> anyhow::Result<u64> {
        poll_until(deadline, || async {
            let statuses = futures::future::join_all(ids.iter().map(|id| self.status(*id))).await;
            let leaders: Vec<u64> =
                statuses.iter().flatten().filter(|s| s.role == "leader").map(|s| s.node_id).collect();
            match leaders[..] {
                [leader] if statuses.iter().all(|s| s.as_ref().is_ok_and(|s| s.leader_id == Some(leader))) => {
                    Ok(leader)
                }
                _ => Err(format!("no leader that every live node names: {}", summary(&statuses))),
            }
        })
        .await
    }

    /// Waits until every live node has applied at least what `leader` had committed when the wait began, so the
    /// next fault meets a cluster with every replica in place.
    pub async fn wait_caught_up(&self, leader: u64, deadline: Instant) -> anyhow::Result<()> {
        let target = poll_until(deadline, || async { self.status(leader).await.map(|s| s.committed_index) }).await?;
        poll_until(deadline, || async {
            let statuses = self.live_statuses().await;
            if statuses.iter().all(|s| s.as_ref().is_ok_and(|s| s.last_applied >= target)) {
                Ok(())
            } else {
                Err(format!("not every node applied index {target}: {}", summary(&statuses)))
            }
        })
        .await
    }

    /// Every live node's status (or why it could not be had), in id order.
    pub async fn live_statuses(&self) -> Vec<Result<NodeStatus, String>> {
        futures::future::join_all(self.live().into_iter().map(|id| self.status(id))).await
    }

    /// The last [`LOG_TAIL_LINES`] lines of every node's log.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let log = fs::read(&node.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
            out.push_str(&format!(
                "----- node {} ({}), last lines of {} -----\n{tail}\n",
                node.id,
                node.grpc_addr,
                node.log_path.display()
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Calls `check` every [`PROBE_INTERVAL`] until it answers `Ok`; past `deadline`, fails with its last refusal.
pub async fn poll_until<T, Fut>(deadline: Instant, mut check: impl FnMut() -> Fut) -> anyhow::Result<T>
where
    Fut: Future<Output = Result<T, String>>,
{
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => bail!("timed out: {last}"),
            Err(_) => tokio::time::sleep(PROBE_INTERVAL).await,
        }
    }
}

/// The status answered on `channel`, within [`STATUS_TIMEOUT`] (or [`VERIFY_TIMEOUT`] with `verify`, when the node
/// recomputes its state hash from a full scan).
pub async fn status_of(channel: Channel, verify: bool) -> Result<NodeStatus, String> {
    let timeout = if verify { VERIFY_TIMEOUT } else { STATUS_TIMEOUT };
    let mut request = tonic::Request::new(StatusRequest { verify });
    request.set_timeout(timeout);
    match tokio::time::timeout(timeout, ClusterServiceClient::new(channel).status(request)).await {
        Ok(Ok(reply)) => Ok(reply.into_inner().into()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// One line per status, for error messages.
pub fn summary(statuses: &[Result<NodeStatus, String>]) -> String {
    let lines: Vec<String> = statuses
        .iter()
        .map(|s| match s {
            Ok(s) => format!(
                "n{} {} term={} leader={:?} applied={} committed={} hash={}",
                s.node_id,
                s.role,
                s.term,
                s.leader_id,
                s.last_applied,
                s.committed_index,
                s.state_hash.get(..12).unwrap_or(&s.state_hash)
            ),
            Err(e) => format!("?: {e}"),
        })
        .collect();
    lines.join("; ")
}
