//! Start-up refusals of the real binary (issue 2, acceptance 6): bad config (exit 2, every problem named), a port in
//! use, a data dir of another cluster or locked by a running node (exit 1, the problem named), and nothing written.

mod support;

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};

use support::*;

/// What a process that was expected to exit left behind.
struct Exited {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `baton` with `args`, output captured in files under `dir`, and waits (polling) for it to exit.
async fn run_to_exit(dir: &Path, label: &str, args: &[&str], deadline: Instant) -> Result<Exited> {
    let out_path = dir.join(format!("{label}.stdout"));
    let err_path = dir.join(format!("{label}.stderr"));
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(fs::File::create(&out_path)?))
        .stderr(Stdio::from(fs::File::create(&err_path)?));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BATON_") && key != "BATON_LOG" {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd.spawn().with_context(|| format!("spawning {BIN}"))?;
    let read = |p: &Path| fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let waited = wait_until(deadline, &format!("`baton {}` to exit", args.join(" ")), || {
        let polled = child.try_wait();
        async move {
            match polled? {
                Some(status) => Ok(status),
                None => bail!("still running"),
            }
        }
    })
    .await;
    match waited {
        Ok(status) => Ok(Exited { status, stdout: read(&out_path), stderr: read(&err_path) }),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e.context(format!("stdout:\n{}\nstderr:\n{}", read(&out_path), read(&err_path))))
        }
    }
}

fn describe(e: &Exited) -> String {
    format!("exit {}\n--- stderr ---\n{}\n--- stdout ---\n{}", e.status, e.stderr, e.stdout)
}

/// Writes `text` as a config file in the cluster's dir and runs `baton server --config` on it.
async fn run_config(cluster: &Cluster, label: &str, text: &str) -> Result<Exited> {
    let path = cluster.dir().join(format!("{label}.toml"));
    fs::write(&path, text)?;
    let path = path.to_string_lossy().into_owned();
    run_to_exit(cluster.dir(), label, &["server", "--config", &path], secs(15)).await
}

fn members_of(cluster: &Cluster) -> Vec<Member> {
    cluster
        .nodes()
        .iter()
        .map(|n| Member { id: n.id, grpc_addr: n.grpc_addr.clone(), http_addr: n.http_addr.clone() })
        .collect()
}

/// An unknown key and an invalid value in one file: exit 2, both keys named on stderr, no data dir created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_exits_2_naming_every_problem() -> Result<()> {
    let cluster = Cluster::prepare(3, Options::default()).await?;
    let node = cluster.node(1);
    // A heartbeat longer than the election timeout is invalid (the followers would keep electing).
    let opts = Options { heartbeat_interval_ms: 1000, ..Options::default() };
    let text = render_config(&opts, 1, &node.data_dir, &members_of(&cluster))
        .replace("[raft]\n", "[raft]\nbogus_timeout_ms = 5\n");
    let exited = run_config(&cluster, "bad", &text).await?;
    ensure!(exited.status.code() == Some(2), "expected exit code 2: {}", describe(&exited));
    ensure!(exited.stderr.contains("bogus_timeout_ms"), "stderr does not name the unknown key: {}", describe(&exited));
    ensure!(
        exited.stderr.contains("heartbeat_interval_ms"),
        "stderr does not name the invalid value's key: {}",
        describe(&exited)
    );
    ensure!(!node.data_dir.exists(), "a refused config still created {}", node.data_dir.display());
    cluster.pass();
    Ok(())
}

/// A value of the wrong type: exit 2, the key named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_value_of_wrong_type_exits_2_naming_the_key() -> Result<()> {
    let cluster = Cluster::prepare(3, Options::default()).await?;
    let node = cluster.node(1);
    let text = render_config(&Options::default(), 1, &node.data_dir, &members_of(&cluster))
        .replace("node_id = 1\n", "node_id = \"one\"\n");
    let exited = run_config(&cluster, "wrong_type", &text).await?;
    ensure!(exited.status.code() == Some(2), "expected exit code 2: {}", describe(&exited));
    ensure!(exited.stderr.contains("node_id"), "stderr does not name node_id: {}", describe(&exited));
    cluster.pass();
    Ok(())
}

/// A missing config file is a start-up failure with a message, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_config_file_fails_with_a_message() -> Result<()> {
    let cluster = Cluster::prepare(1, Options::default()).await?;
    let path = cluster.dir().join("does-not-exist.toml").to_string_lossy().into_owned();
    let exited = run_to_exit(cluster.dir(), "missing", &["server", "--config", &path], secs(15)).await?;
    ensure!(!exited.status.success(), "started without a config file: {}", describe(&exited));
    ensure!(exited.stderr.contains("does-not-exist.toml"), "stderr does not name the file: {}", describe(&exited));
    ensure!(!exited.stderr.contains("panicked"), "panicked: {}", describe(&exited));
    cluster.pass();
    Ok(())
}

/// Starts node 1 of a one-node cluster while `addr` is held by another socket: exit 1 naming the address.
async fn refused_when_port_in_use(which: &str) -> Result<()> {
    let cluster = Cluster::prepare(1, Options::default()).await?;
    let node = cluster.node(1);
    let addr = if which == "http" { node.http_addr.clone() } else { node.grpc_addr.clone() };
    let _held = TcpListener::bind(&addr).with_context(|| format!("holding {addr}"))?;
    node.spawn()?;
    let status =
        node.wait_exit(secs(15)).await.with_context(|| format!("node kept running with its {which} port taken"))?;
    let log = node.current_run_log();
    ensure!(status.code() == Some(1), "expected exit code 1 with {which} {addr} taken, got {status}:\n{log}");
    ensure!(log.contains(&addr), "output does not name {addr}:\n{log}");
    ensure!(!log.contains("panicked"), "panicked:\n{log}");
    cluster.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_port_in_use_exits_1_naming_the_address() -> Result<()> {
    refused_when_port_in_use("http").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_port_in_use_exits_1_naming_the_address() -> Result<()> {
    refused_when_port_in_use("grpc").await
}

/// A data dir written by cluster "alpha-7" is refused by a node configured for "beta-9", and left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_of_another_cluster_is_refused_and_left_intact() -> Result<()> {
    let alpha = Options { cluster_id: "alpha-7".to_string(), ..Options::default() };
    let cluster = Cluster::prepare(1, alpha.clone()).await?;
    let node = cluster.node(1);
    node.spawn()?;
    node.wait_healthy(secs(15)).await?;
    wait_until(secs(10), "the one-node cluster to be ready", || async {
        let reply = get(node, "/ready").await?;
        ensure!(reply.status == 200, "HTTP {}: {}", reply.status, reply.body);
        Ok(())
    })
    .await?;
    register_task_def(node, "alpha-def").await?;
    node.terminate()?;
    ensure!(node.wait_exit(secs(10)).await?.success(), "alpha node did not exit 0 on SIGTERM");

    let members = members_of(&cluster);
    let beta = Options { cluster_id: "beta-9".to_string(), ..Options::default() };
    fs::write(&node.config_path, render_config(&beta, 1, &node.data_dir, &members))?;
    node.spawn()?;
    let status = node.wait_exit(secs(15)).await.context("a beta-9 node kept running on alpha-7's data dir")?;
    let log = node.current_run_log();
    ensure!(status.code() == Some(1), "expected exit code 1, got {status}:\n{log}");
    ensure!(log.contains("alpha-7"), "output does not name the cluster that owns the data dir:\n{log}");
    ensure!(!log.contains("panicked"), "panicked:\n{log}");

    // Refused without damage: alpha's node starts again on it with its data.
    fs::write(&node.config_path, render_config(&alpha, 1, &node.data_dir, &members))?;
    node.restart().await?;
    ensure!(get_task_def(node, "alpha-def", Read::Local).await?.is_some(), "alpha's data lost after the refusal");
    cluster.pass();
    Ok(())
}

/// A second process on a data dir that a running node holds is refused, and the running node is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_locked_by_a_running_node_is_refused() -> Result<()> {
    let cluster = Cluster::prepare(1, Options::default()).await?;
    let node = cluster.node(1);
    node.spawn()?;
    node.wait_healthy(secs(15)).await?;

    // Same node and data dir, other ports: only the data dir clashes.
    let ports = free_ports(2)?;
    let other = vec![Member {
        id: 1,
        grpc_addr: format!("127.0.0.1:{}", ports[0]),
        http_addr: format!("127.0.0.1:{}", ports[1]),
    }];
    let exited = run_config(&cluster, "second", &render_config(&Options::default(), 1, &node.data_dir, &other)).await?;
    ensure!(exited.status.code() == Some(1), "expected exit code 1: {}", describe(&exited));
    let stderr = exited.stderr.to_lowercase();
    ensure!(
        stderr.contains("lock") || stderr.contains("in use"),
        "stderr does not say the data dir is locked: {}",
        describe(&exited)
    );
    ensure!(!exited.stderr.contains("panicked"), "panicked: {}", describe(&exited));
    node.check_running().context("the first node died when a second one tried its data dir")?;
    ensure!(get(node, "/health").await?.status == 200, "first node unhealthy");
    cluster.pass();
    Ok(())
}
