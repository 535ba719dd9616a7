//! `baton up`: runs the local three-node cluster as three child processes of this binary (`baton server` with
//! config/node1.toml .. node3.toml), prefixes their output with the node's name, prints a status table once a
//! leader exists and again whenever the leader changes, and on Ctrl-C (or SIGTERM) stops all three cleanly.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::status;
use crate::config::{Config, Overrides};

/// How often the cluster's status is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How long the nodes get to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// What `baton up` runs.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// One config file per node.
    pub configs: Vec<PathBuf>,
    /// Parent of the nodes' data dirs (node N uses `<data_dir>/nodeN`).
    pub data_dir: PathBuf,
}

struct RunningNode {
    name: String,
    grpc_addr: String,
    child: Child,
    exited: Option<ExitStatus>,
}

fn forward_output(name: String, stream: impl AsyncRead + Unpin + Send + 'static, to_stderr: bool) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if to_stderr {
                eprintln!("[{name}] {line}");
            } else {
                println!("[{name}] {line}");
            }
        }
    });
}

fn spawn_node(exe: &Path, config_path: &Path, data_dir: &Path) -> anyhow::Result<RunningNode> {
    let config = Config::load(Some(config_path), std::env::vars(), &Overrides { data_dir: Some(data_dir.to_owned()) })
        .with_context(|| format!("config {}", config_path.display()))?;
    let name = format!("node{}", config.node_id);
    let mut child = Command::new(exe)
        .arg("server")
        .arg("--config")
        .arg(config_path)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    if let Some(out) = child.stdout.take() {
        forward_output(name.clone(), out, false);
    }
    if let Some(err) = child.stderr.take() {
        forward_output(name.clone(), err, true);
    }
    Ok(RunningNode { name, grpc_addr: config.me().grpc_addr.clone(), child, exited: None })
}

/// Runs the cluster until Ctrl-C or SIGTERM; fails if every node exits by itself.
pub async fn run(options: UpOptions) -> anyhow::Result<()> {
    if options.configs.is_empty() {
        bail!("no node configs given");
    }
    let exe = std::env::current_exe().context("locating the baton binary")?;
    let mut nodes = Vec::new();
    for (i, config) in options.configs.iter().enumerate() {
        let node_dir = options.data_dir.join(format!("node{}", i + 1));
        nodes.push(spawn_node(&exe, config, &node_dir)?);
    }
    let seeds: Vec<String> = nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    println!("[baton up] started {} nodes (data under {}); Ctrl-C stops them", nodes.len(), options.data_dir.display());

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    let mut shown_leader = None;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = ticker.tick() => {}
        }
        for node in nodes.iter_mut().filter(|n| n.exited.is_none()) {
            if let Ok(Some(status)) = node.child.try_wait() {
                println!("[baton up] {} exited: {status}", node.name);
                node.exited = Some(status);
            }
        }
        if nodes.iter().all(|n| n.exited.is_some()) {
            bail!("every node exited; see their output above");
        }
        let replies = status::fetch_all(&seeds, false).await;
        let leader = replies
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .find(|s| s.role == "leader")
            .map(|s| (s.node_id, s.term));
        if leader.is_some() && leader != shown_leader {
            if let Some((id, term)) = leader {
                println!("[baton up] leader: node {id} (term {term})\n{}", status::render(&replies));
            }
            shown_leader = leader;
        }
    }

    println!("[baton up] stopping the nodes");
    for node in nodes.iter().filter(|n| n.exited.is_none()) {
        if let Some(pid) = node.child.id() {
            let pid = i32::try_from(pid).context("child pid out of range")?;
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    for node in nodes.iter_mut().filter(|n| n.exited.is_none()) {
        match tokio::time::timeout(STOP_GRACE, node.child.wait()).await {
            Ok(Ok(status)) => println!("[baton up] {} stopped: {status}", node.name),
            _ => {
                println!("[baton up] {} did not stop within {STOP_GRACE:?}; killing it", node.name);
                let _ = node.child.kill().await;
            }
        }
    }
    Ok(())
}
