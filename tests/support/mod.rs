//! Harness for the real-process tests: starts the built `baton` binary as separate processes on free ports, each
//! node with its own config file, data dir and log file under one temp dir, and talks to them over HTTP.
//!
//! Rules it keeps: ports come from binding `127.0.0.1:0`; readiness is always polled against a deadline
//! ([`wait_until`]), never slept for; a crash is SIGKILL ([`Node::kill`]). When a test fails (it panics, or it returns
//! `Err` before calling [`Cluster::pass`]) the cluster's `Drop` prints the tail of every node's log; it always kills
//! every process it started.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};

/// The binary under test, built by Cargo for integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_baton");

/// How often [`wait_until`] re-checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Lines of each node's log printed when a test fails.
pub const LOG_TAIL_LINES: usize = 60;

/// Marker the harness writes into a node's log before each start, so one run's output can be told from the last.
const START_MARKER: &str = "===== harness: start";

/// An instant `secs` seconds from now.
pub fn secs(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// An instant `ms` milliseconds from now.
pub fn millis(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

// ------------------------------------------------------------------------------------------------- polling

/// An error that polling cannot cure (a node process died, a response has the wrong shape): [`wait_until`] gives up
/// at once instead of waiting for its deadline.
#[derive(Debug)]
pub struct Fatal(pub String);

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// Builds a [`Fatal`] error.
pub fn fatal(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Fatal(msg.into()))
}

/// Calls `check` every [`POLL_INTERVAL`] until it returns `Ok`, and returns that value. `Err` means "not yet" (its
/// text is kept for the timeout message), unless it is [`Fatal`]. Fails once `deadline` has passed.
pub async fn wait_until<T, F, Fut>(deadline: Instant, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    loop {
        let last = match check().await {
            Ok(value) => return Ok(value),
            Err(e) if e.downcast_ref::<Fatal>().is_some() => {
                return Err(e.context(format!("gave up waiting for {what}")))
            }
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            bail!("timed out waiting for {what}; last observation: {last:#}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

// ------------------------------------------------------------------------------------------------- ports

/// Ports handed out by this test process, so two clusters in one test binary never get the same one.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// `n` distinct free ports: binds `127.0.0.1:0` for each (holding all listeners until all are picked, so the OS
/// cannot hand the same one out twice), reads the port and drops the listeners.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let mut handed_out = HANDED_OUT.lock().expect("port registry lock is never poisoned");
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        if handed_out.insert(port) {
            ports.push(port);
        }
        held.push(listener);
        if held.len() > n + 1000 {
            bail!("could not find {n} distinct free ports");
        }
    }
    Ok(ports)
}

// ------------------------------------------------------------------------------------------------- config

/// What a test may vary in the nodes' config; the rest is fixed by the harness.
#[derive(Clone, Debug)]
pub struct Options {
    pub cluster_id: String,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub logs_since_last: u64,
    /// Log entries kept behind the snapshot when purging.
    pub max_logs_kept: u64,
    pub forward_timeout_ms: u64,
    /// Writes a node may have waiting for Raft before it answers RESOURCE_EXHAUSTED / 429.
    pub max_in_flight_proposals: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cluster_id: "t1".to_string(),
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 100,
            election_timeout_max_ms: 200,
            logs_since_last: 5000,
            max_logs_kept: 1000,
            forward_timeout_ms: 5000,
            max_in_flight_proposals: 10_000,
        }
    }
}

/// One `[[members]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub grpc_addr: String,
    pub http_addr: String,
}

/// A TOML string literal (a JSON string is a valid TOML basic string).
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes")
}

/// The config file of node `node_id`, in the format `baton server --config` reads.
pub fn render_config(opts: &Options, node_id: u64, data_dir: &Path, members: &[Member]) -> String {
    let mut s = format!(
        "cluster_id = {}\nnode_id = {}\ndata_dir = {}\n",
        toml_str(&opts.cluster_id),
        node_id,
        toml_str(&data_dir.to_string_lossy()),
    );
    for m in members {
        s.push_str(&format!(
            "\n[[members]]\nid = {}\ngrpc_addr = {}\nhttp_addr = {}\n",
            m.id,
            toml_str(&m.grpc_addr),
            toml_str(&m.http_addr)
        ));
    }
    s.push_str(&format!(
        "\n[raft]\nheartbeat_interval_ms = {}\nelection_timeout_min_ms = {}\nelection_timeout_max_ms = {}\n",
        opts.heartbeat_interval_ms, opts.election_timeout_min_ms, opts.election_timeout_max_ms
    ));
    s.push_str(&format!(
        "\n[snapshot]\nlogs_since_last = {}\nmax_logs_kept = {}\n",
        opts.logs_since_last, opts.max_logs_kept
    ));
    s.push_str(&format!(
        "\n[api]\nforward_timeout_ms = {}\nmax_in_flight_proposals = {}\n",
        opts.forward_timeout_ms, opts.max_in_flight_proposals
    ));
    s
}

// ------------------------------------------------------------------------------------------------- status

/// The JSON of `GET /api/cluster/status`.
#[derive(Clone, Debug, Deserialize)]
pub struct Status {
    pub node_id: u64,
    pub pid: u32,
    pub role: String,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub last_log_index: u64,
    pub last_applied: u64,
    pub committed_index: u64,
    pub state_hash: String,
    pub snapshot_index: u64,
    pub purged_index: u64,
    pub cluster_id: String,
    pub members: Vec<Member>,
}

impl Status {
    /// One line for failure messages.
    pub fn line(&self) -> String {
        format!(
            "n{} {} term={} leader={:?} log={} applied={} committed={} snap={} purged={} hash={}",
            self.node_id,
            self.role,
            self.term,
            self.leader_id,
            self.last_log_index,
            self.last_applied,
            self.committed_index,
            self.snapshot_index,
            self.purged_index,
            &self.state_hash[..self.state_hash.len().min(12)]
        )
    }
}

/// Status lines of several nodes, for failure messages.
pub fn summary(statuses: &[Status]) -> String {
    statuses.iter().map(Status::line).collect::<Vec<_>>().join("; ")
}

// ------------------------------------------------------------------------------------------------- node

/// One `baton server` process (or the slot for one: it may be stopped and started again with the same config and
/// data dir).
pub struct Node {
    pub id: u64,
    pub grpc_addr: String,
    pub http_addr: String,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    /// stdout and stderr of every run of this node, each run preceded by a marker line.
    pub log_path: PathBuf,
    child: Mutex<Option<Child>>,
    starts: Mutex<u32>,
}

impl Node {
    /// `http://<http_addr>`.
    pub fn http_base(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Starts the process with the node's config file (and `extra` arguments). Does not wait for it.
    pub fn spawn(&self) -> Result<()> {
        self.spawn_with_args(&[])
    }

    /// Like [`Node::spawn`], appending `extra` to the command line.
    pub fn spawn_with_args(&self, extra: &[&str]) -> Result<()> {
        let mut child = self.child.lock().expect("child lock is never poisoned");
        if let Some(c) = child.as_mut() {
            if c.try_wait()?.is_none() {
                bail!("node {} is already running (pid {})", self.id, c.id());
            }
        }
        let start = {
            let mut starts = self.starts.lock().expect("starts lock is never poisoned");
            *starts += 1;
            *starts
        };
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        writeln!(
            log,
            "{START_MARKER} #{start} of node {}: {BIN} server --config {} {} =====",
            self.id,
            self.config_path.display(),
            extra.join(" ")
        )?;
        let mut cmd = Command::new(BIN);
        cmd.arg("server")
            .arg("--config")
            .arg(&self.config_path)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .env("RUST_BACKTRACE", "1");
        // BATON_* variables override the config file; the tests mean exactly what they wrote.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("BATON_") && key != "BATON_LOG" {
                cmd.env_remove(key);
            }
        }
        let spawned = cmd.spawn().with_context(|| format!("spawning {BIN} for node {}", self.id))?;
        *child = Some(spawned);
        Ok(())
    }

    /// The pid of the running process, if one was started and not yet reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().expect("child lock is never poisoned").as_ref().map(Child::id)
    }

    /// True if a process was started and has not been killed or reaped by the harness (it may have crashed).
    pub fn is_started(&self) -> bool {
        self.child.lock().expect("child lock is never poisoned").is_some()
    }

    /// `Fatal` if the node is not running, naming how it exited if it died on its own.
    pub fn check_running(&self) -> Result<()> {
        let mut child = self.child.lock().expect("child lock is never poisoned");
        match child.as_mut() {
            None => Err(fatal(format!("node {} is not running", self.id))),
            Some(c) => match c.try_wait()? {
                Some(status) => Err(fatal(format!("node {} exited unexpectedly: {status}", self.id))),
                None => Ok(()),
            },
        }
    }

    /// SIGKILL (what `Child::kill` sends on Unix) and reap. Fails if the process had already died on its own.
    pub fn kill(&self) -> Result<()> {
        let mut child = self.child.lock().expect("child lock is never poisoned");
        let Some(mut c) = child.take() else {
            bail!("node {} is not running", self.id);
        };
        if let Some(status) = c.try_wait()? {
            bail!("node {} had already exited ({status}) before the SIGKILL", self.id);
        }
        c.kill().with_context(|| format!("SIGKILL node {}", self.id))?;
        c.wait()?;
        self.log_note("SIGKILL sent by the harness");
        Ok(())
    }

    /// Sends SIGTERM (through `kill(1)`: the crate forbids unsafe code, so no `libc::kill`). Does not wait.
    pub fn terminate(&self) -> Result<()> {
        let pid = self.pid().with_context(|| format!("node {} is not running", self.id))?;
        self.log_note("SIGTERM sent by the harness");
        let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
        if !status.success() {
            bail!("kill -TERM {pid} failed: {status}");
        }
        Ok(())
    }

    /// Waits until the process exits (polling), reaps it and returns its exit status.
    pub async fn wait_exit(&self, deadline: Instant) -> Result<ExitStatus> {
        let what = format!("node {} to exit", self.id);
        wait_until(deadline, &what, || async {
            let mut child = self.child.lock().expect("child lock is never poisoned");
            let Some(c) = child.as_mut() else {
                return Err(fatal(format!("node {} is not running", self.id)));
            };
            match c.try_wait()? {
                Some(status) => {
                    *child = None;
                    Ok(status)
                }
                None => bail!("pid {} still running", c.id()),
            }
        })
        .await
    }

    /// Starts the process again with the same config and data dir and waits until `/health` answers.
    pub async fn restart(&self) -> Result<()> {
        self.spawn()?;
        self.wait_healthy(secs(15)).await
    }

    /// Waits until `GET /health` returns 200.
    pub async fn wait_healthy(&self, deadline: Instant) -> Result<()> {
        let what = format!("node {} /health", self.id);
        wait_until(deadline, &what, || async {
            self.check_running()?;
            let reply = get(self, "/health").await?;
            if reply.status == 200 {
                Ok(())
            } else {
                bail!("HTTP {}: {}", reply.status, reply.body)
            }
        })
        .await
    }

    /// `GET /api/cluster/status`. `Fatal` if the process is not running or the body has the wrong shape.
    pub async fn status(&self) -> Result<Status> {
        self.status_query(false).await
    }

    /// `GET /api/cluster/status?verify=true`: the node also recomputes its state hash from a full scan. `Fatal`
    /// when the node says its running hash disagrees with its contents.
    pub async fn verified_status(&self) -> Result<Status> {
        self.status_query(true).await
    }

    async fn status_query(&self, verify: bool) -> Result<Status> {
        self.check_running()?;
        let resp = client()
            .get(format!("{}/api/cluster/status?verify={verify}", self.http_base()))
            .timeout(Duration::from_millis(if verify { 10_000 } else { 1000 }))
            .send()
            .await
            .with_context(|| format!("node {}: GET /api/cluster/status", self.id))?;
        let code = resp.status().as_u16();
        let body = resp.text().await?;
        if code == 500 && body.contains("state digest") {
            return Err(fatal(format!("node {}: {body}", self.id)));
        }
        if code != 200 {
            bail!("node {}: /api/cluster/status HTTP {code}: {body}", self.id);
        }
        let status: Status = serde_json::from_str(&body).map_err(|e| {
            fatal(format!("node {}: /api/cluster/status body does not match the contract ({e}): {body}", self.id))
        })?;
        if status.node_id != self.id {
            return Err(fatal(format!("node {} reports node_id {}", self.id, status.node_id)));
        }
        Ok(status)
    }

    /// The whole log file.
    pub fn log(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The output of the most recent run only.
    pub fn current_run_log(&self) -> String {
        let log = self.log();
        match log.rfind(START_MARKER) {
            Some(i) => log[i..].split_once('\n').map(|(_, rest)| rest.to_string()).unwrap_or_default(),
            None => log,
        }
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn log_note(&self, note: &str) {
        if let Ok(mut log) = OpenOptions::new().append(true).open(&self.log_path) {
            let _ = writeln!(log, "===== harness: {note} =====");
        }
    }

    /// Kills and reaps the process if one is running; for clean-up, so it never fails.
    fn force_stop(&self) {
        if let Ok(mut child) = self.child.lock() {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.force_stop();
    }
}

// ------------------------------------------------------------------------------------------------- cluster

/// How many clusters of one test binary may run at once: `BATON_TEST_CLUSTERS`, default 1. The acceptance tests
/// assert failover times, and several three-node clusters on a two-core machine would measure the scheduler instead.
fn cluster_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let n = std::env::var("BATON_TEST_CLUSTERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
        tokio::sync::Semaphore::new(n)
    })
}

/// N nodes of one cluster, configured with each other as members, under one temp dir.
pub struct Cluster {
    pub opts: Options,
    /// When the first node was spawned by [`Cluster::start_with`].
    pub spawned_at: Instant,
    nodes: Vec<Node>,
    passed: bool,
    _slot: tokio::sync::SemaphorePermit<'static>,
    // Last, so it is removed after the processes are gone.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes with the default options and waits until each answers `/health`.
    pub async fn start(n: usize) -> Result<Cluster> {
        Self::start_with(n, Options::default()).await
    }

    /// Starts `n` nodes with `opts` and waits until each answers `/health`.
    pub async fn start_with(n: usize, opts: Options) -> Result<Cluster> {
        let mut cluster = Self::prepare(n, opts).await?;
        cluster.spawned_at = Instant::now();
        for node in &cluster.nodes {
            node.spawn()?;
        }
        for node in &cluster.nodes {
            node.wait_healthy(secs(15)).await?;
        }
        Ok(cluster)
    }

    /// Writes the config files of `n` nodes but starts none. Waits for a free cluster slot first.
    pub async fn prepare(n: usize, opts: Options) -> Result<Cluster> {
        let slot = cluster_slots().acquire().await.context("cluster slots closed")?;
        let dir = tempfile::Builder::new().prefix("baton-test-").tempdir()?;
        let ports = free_ports(2 * n)?;
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                id: i as u64 + 1,
                grpc_addr: format!("127.0.0.1:{}", ports[2 * i]),
                http_addr: format!("127.0.0.1:{}", ports[2 * i + 1]),
            })
            .collect();
        let mut nodes = Vec::new();
        for m in &members {
            let data_dir = dir.path().join(format!("node{}", m.id));
            let config_path = dir.path().join(format!("node{}.toml", m.id));
            fs::write(&config_path, render_config(&opts, m.id, &data_dir, &members))?;
            nodes.push(Node {
                id: m.id,
                grpc_addr: m.grpc_addr.clone(),
                http_addr: m.http_addr.clone(),
                config_path,
                data_dir,
                log_path: dir.path().join(format!("node{}.log", m.id)),
                child: Mutex::new(None),
                starts: Mutex::new(0),
            });
        }
        Ok(Cluster { opts, spawned_at: Instant::now(), nodes, passed: false, _slot: slot, dir })
    }

    /// The temp dir holding configs, data dirs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The node with this id (ids start at 1).
    pub fn node(&self, id: u64) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in a cluster of {}", self.nodes.len()))
    }

    /// Every node, started or not.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The nodes the harness has started and not stopped.
    pub fn live(&self) -> Vec<&Node> {
        self.nodes.iter().filter(|n| n.is_started()).collect()
    }

    /// The live nodes other than `id`.
    pub fn live_except(&self, id: u64) -> Vec<&Node> {
        self.live().into_iter().filter(|n| n.id != id).collect()
    }

    /// Status of every live node.
    pub async fn live_statuses(&self) -> Result<Vec<Status>> {
        let mut out = Vec::new();
        for node in self.live() {
            out.push(node.status().await?);
        }
        Ok(out)
    }

    /// [`Cluster::live_statuses`], each node's state hash checked against a full scan of its state.
    pub async fn verified_live_statuses(&self) -> Result<Vec<Status>> {
        let mut out = Vec::new();
        for node in self.live() {
            out.push(node.verified_status().await?);
        }
        Ok(out)
    }

    /// Waits (up to 10 s) until exactly one live node reports role leader and every live node names it as leader.
    pub async fn leader(&self) -> Result<u64> {
        self.leader_by(secs(10)).await
    }

    /// [`Cluster::leader`] with an explicit deadline.
    pub async fn leader_by(&self, deadline: Instant) -> Result<u64> {
        wait_until(deadline, "exactly one leader that every live node names", || async {
            let statuses = self.live_statuses().await?;
            let leaders: Vec<u64> = statuses.iter().filter(|s| s.role == "leader").map(|s| s.node_id).collect();
            let &[leader] = leaders.as_slice() else {
                bail!("{} leaders: {}", leaders.len(), summary(&statuses));
            };
            if statuses.iter().any(|s| s.leader_id != Some(leader)) {
                bail!("not everyone names n{leader}: {}", summary(&statuses));
            }
            Ok(leader)
        })
        .await
    }

    /// Waits (up to 30 s) until every live node has the same last_applied and state_hash (each checked by the node
    /// against a full scan of its state), and nothing any of them reports committed is unapplied. Returns the
    /// statuses.
    pub async fn wait_converged(&self) -> Result<Vec<Status>> {
        self.wait_converged_by(secs(30)).await
    }

    /// [`Cluster::wait_converged`] with an explicit deadline.
    pub async fn wait_converged_by(&self, deadline: Instant) -> Result<Vec<Status>> {
        wait_until(deadline, "all live nodes at equal last_applied and state_hash", || async {
            let statuses = self.verified_live_statuses().await?;
            let Some(first) = statuses.first() else {
                bail!("no live nodes");
            };
            let max_committed = statuses.iter().map(|s| s.committed_index).max().unwrap_or(0);
            let same_applied = statuses.iter().all(|s| s.last_applied == first.last_applied);
            if !same_applied || first.last_applied < max_committed {
                bail!("{}", summary(&statuses));
            }
            // Equal last_applied with different hashes is divergence, not lag: waiting will not fix it.
            if statuses.iter().any(|s| s.state_hash != first.state_hash) {
                return Err(fatal(format!("state_hash differs at equal last_applied: {}", summary(&statuses))));
            }
            Ok(statuses)
        })
        .await
    }

    /// Marks the test as passed, so `Drop` does not print the logs.
    pub fn pass(mut self) {
        self.passed = true;
    }

    /// The last `n` lines of every node's log.
    pub fn log_tails(&self, n: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push_str(&format!(
                "\n----- node {} (http {}, grpc {}) last {n} lines of {} -----\n{}\n",
                node.id,
                node.http_addr,
                node.grpc_addr,
                node.log_path.display(),
                node.log_tail(n)
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() || !self.passed {
            // Keep configs, data dirs and full logs for a post-mortem.
            self.dir.disable_cleanup(true);
            eprintln!(
                "test failed; cluster dir kept at {}:{}",
                self.dir.path().display(),
                self.log_tails(LOG_TAIL_LINES)
            );
        }
        for node in &self.nodes {
            node.force_stop();
        }
    }
}

// ------------------------------------------------------------------------------------------------- HTTP

/// Something with an HTTP base URL: a [`Node`], or a `http://host:port` string.
pub trait Endpoint {
    fn base(&self) -> String;
}

impl Endpoint for Node {
    fn base(&self) -> String {
        self.http_base()
    }
}

impl Endpoint for str {
    fn base(&self) -> String {
        self.to_string()
    }
}

impl Endpoint for String {
    fn base(&self) -> String {
        self.clone()
    }
}

/// A fresh client per call: no pooled connection outlives a killed node, and no client outlives a test's runtime.
/// Plain HTTP to loopback, so never through a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("a plain-HTTP client always builds")
}

/// Status code and body of a response.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("HTTP {} body is not JSON: {:?}", self.status, self.body))
    }

    /// `Ok(self)` on 200, else an error showing the reply.
    pub fn ok(self) -> Result<Reply> {
        if self.status == 200 {
            Ok(self)
        } else {
            bail!("HTTP {}: {}", self.status, self.body)
        }
    }
}

async fn reply(req: reqwest::RequestBuilder) -> Result<Reply> {
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let body = resp.text().await?;
    Ok(Reply { status, body })
}

/// `GET base+path`.
pub async fn get(target: &(impl Endpoint + ?Sized), path: &str) -> Result<Reply> {
    let url = format!("{}{path}", target.base());
    reply(client().get(&url)).await.with_context(|| format!("GET {url}"))
}

/// `POST base+path` with a JSON body.
pub async fn post_json(target: &(impl Endpoint + ?Sized), path: &str, body: &Value) -> Result<Reply> {
    post_raw(target, path, &body.to_string()).await
}

/// `POST base+path` with `body` sent as is, labelled `application/json`.
pub async fn post_raw(target: &(impl Endpoint + ?Sized), path: &str, body: &str) -> Result<Reply> {
    let url = format!("{}{path}", target.base());
    let req = client().post(&url).header("content-type", "application/json").body(body.to_string());
    reply(req).await.with_context(|| format!("POST {url}"))
}

/// `PUT base+path` with a JSON body.
pub async fn put_json(target: &(impl Endpoint + ?Sized), path: &str, body: &Value) -> Result<Reply> {
    let url = format!("{}{path}", target.base());
    let req = client().put(&url).header("content-type", "application/json").body(body.to_string());
    reply(req).await.with_context(|| format!("PUT {url}"))
}

/// `DELETE base+path`.
pub async fn delete(target: &(impl Endpoint + ?Sized), path: &str) -> Result<Reply> {
    let url = format!("{}{path}", target.base());
    reply(client().delete(&url)).await.with_context(|| format!("DELETE {url}"))
}

/// A Conductor TaskDef.
pub fn task_def(name: &str) -> Value {
    json!({"name": name, "retryCount": 3, "timeoutSeconds": 600, "responseTimeoutSeconds": 300})
}

/// A Conductor WorkflowDef with one SIMPLE task.
pub fn workflow_def(name: &str, version: u32, task_name: &str) -> Value {
    json!({
        "name": name,
        "version": version,
        "tasks": [{"name": task_name, "taskReferenceName": format!("{task_name}_ref"), "type": "SIMPLE"}]
    })
}

/// `POST /api/metadata/taskdefs` with one task def; returns the reply whatever its status.
pub async fn try_register_task_def(target: &(impl Endpoint + ?Sized), name: &str) -> Result<Reply> {
    post_json(target, "/api/metadata/taskdefs", &json!([task_def(name)])).await
}

/// Registers one task def; fails unless the reply is 200.
pub async fn register_task_def(target: &(impl Endpoint + ?Sized), name: &str) -> Result<()> {
    try_register_task_def(target, name).await?.ok().with_context(|| format!("registering task def {name}"))?;
    Ok(())
}

/// Registers one workflow def (`POST /api/metadata/workflow`); fails unless the reply is 200.
pub async fn register_workflow_def(
    target: &(impl Endpoint + ?Sized),
    name: &str,
    version: u32,
    task_name: &str,
) -> Result<()> {
    post_json(target, "/api/metadata/workflow", &workflow_def(name, version, task_name))
        .await?
        .ok()
        .with_context(|| format!("registering workflow def {name} v{version}"))?;
    Ok(())
}

/// How a read is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    Local,
    Linearizable,
}

impl Read {
    fn query(self) -> &'static str {
        match self {
            Read::Local => "",
            Read::Linearizable => "consistency=linearizable",
        }
    }
}

fn found(reply: Reply, what: &str) -> Result<Option<Value>> {
    match reply.status {
        200 => Ok(Some(reply.json()?)),
        404 => Ok(None),
        other => bail!("GET {what}: HTTP {other}: {}", reply.body),
    }
}

/// `GET /api/metadata/taskdefs/{name}`: `Some` on 200, `None` on 404, `Err` otherwise.
pub async fn get_task_def(target: &(impl Endpoint + ?Sized), name: &str, read: Read) -> Result<Option<Value>> {
    let q = read.query();
    let path = if q.is_empty() {
        format!("/api/metadata/taskdefs/{name}")
    } else {
        format!("/api/metadata/taskdefs/{name}?{q}")
    };
    found(get(target, &path).await?, &path)
}

/// `GET /api/metadata/workflow/{name}[?version=N]`: `Some` on 200, `None` on 404, `Err` otherwise.
pub async fn get_workflow_def(
    target: &(impl Endpoint + ?Sized),
    name: &str,
    version: Option<u32>,
    read: Read,
) -> Result<Option<Value>> {
    let mut params = Vec::new();
    if let Some(v) = version {
        params.push(format!("version={v}"));
    }
    if read == Read::Linearizable {
        params.push(read.query().to_string());
    }
    let path = if params.is_empty() {
        format!("/api/metadata/workflow/{name}")
    } else {
        format!("/api/metadata/workflow/{name}?{}", params.join("&"))
    };
    found(get(target, &path).await?, &path)
}

/// `GET /api/metadata/taskdefs` (local read): the names of every task def.
pub async fn list_task_def_names(target: &(impl Endpoint + ?Sized)) -> Result<BTreeSet<String>> {
    let reply = get(target, "/api/metadata/taskdefs").await?.ok()?;
    let defs = reply.json()?;
    let Some(defs) = defs.as_array() else {
        bail!("GET /api/metadata/taskdefs is not an array: {}", reply.body);
    };
    defs.iter()
        .map(|d| d["name"].as_str().map(str::to_string).with_context(|| format!("task def without a name: {d}")))
        .collect()
}

/// Asserts that every task def in `names` is readable locally on `node`, naming the missing ones.
pub async fn assert_task_defs_present(node: &Node, names: &[String]) -> Result<()> {
    let mut missing = Vec::new();
    for name in names {
        match get_task_def(node, name, Read::Local).await? {
            Some(def) if def["name"] == json!(name) => {}
            Some(def) => bail!("node {}: task def {name} reads back as {def}", node.id),
            None => missing.push(name.clone()),
        }
    }
    if !missing.is_empty() {
        bail!("node {}: {} of {} acknowledged task defs missing: {missing:?}", node.id, missing.len(), names.len());
    }
    Ok(())
}
