//! A node whose storage fails does not limp on (issue 25, "a total, bounded apply"): a follower's data dir is a small
//! tmpfs that the test fills; the follower's next log append fails, openraft stops its Raft core, and the process
//! reports unhealthy, then exits with `baton::node::RAFT_FAILED_EXIT_CODE` by itself, its log naming the error. The
//! other two nodes keep serving writes and converge. Needs root (it mounts a tmpfs), and fails without it.

mod support;

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use baton::node::{FAILED_DRAIN_MS, FAILED_REPORT_MS, RAFT_FAILED_EXIT_CODE};
use serde_json::json;

use support::*;

/// The failing follower's disk, MiB: room for a fresh RocksDB, and smaller than the WAL preallocation RocksDB asks
/// for (1.1 times a memtable), so that no reserved space is left for the log to grow into once the disk is full.
const DISK_MIB: u64 = 32;

/// What RocksDB (through openraft's error) says when a write finds the disk full.
const NO_SPACE: &str = "No space left on device";

/// A tmpfs mounted on a directory, unmounted when dropped (also when the test panics).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_mib` MiB on `dir`, creating `dir` first.
    fn mount(dir: &Path, size_mib: u64) -> Result<Tmpfs> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .context("running mount(8)")?;
        ensure!(
            out.status.success(),
            "cannot mount a {size_mib} MiB tmpfs on {} ({}): this test needs root (CAP_SYS_ADMIN) to give a node a \
             small disk: {}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(Tmpfs { dir: dir.to_owned() })
    }

    /// Writes zeros into a file on the tmpfs until it has no space left; returns the bytes written.
    fn fill(&self) -> Result<u64> {
        let path = self.dir.join("filler");
        let mut file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut written = 0u64;
        // Large writes first, then page-sized ones for the last pages.
        for chunk in [1 << 20, 4096] {
            let zeros = vec![0u8; chunk];
            loop {
                match file.write(&zeros) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.kind() == ErrorKind::StorageFull => break,
                    Err(e) => return Err(e).with_context(|| format!("filling {}", path.display())),
                }
            }
        }
        let probe = fs::write(self.dir.join("probe"), b"x");
        ensure!(
            probe.as_ref().is_err_and(|e| e.kind() == ErrorKind::StorageFull),
            "{} still takes a byte after {written} bytes of filler: {probe:?}",
            self.dir.display()
        );
        Ok(written)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: after a failed assertion the node may still be running with files open on it (the cluster kills it
        // after this guard is dropped); the mount goes at once and its memory when the last file is closed.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// What node 3 answered on `/health` and `/ready` while it reported its failure.
struct Unhealthy {
    health: Reply,
    ready: Reply,
    seen_at: Instant,
}

/// A follower's data dir fills up: its next append fails, it answers 503 naming the error on `/health` and
/// `/ready`, and exits with code 3 within a few seconds, its log naming the error; the other two nodes keep taking
/// writes and converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_disk_fills_exits_with_code_3_and_the_others_carry_on() -> Result<()> {
    let cluster = Cluster::prepare(3, Options::default()).await?;
    let disk = Tmpfs::mount(&cluster.node(3).data_dir, DISK_MIB)?;
    let (n1, n2, n3) = (cluster.node(1), cluster.node(2), cluster.node(3));

    // Nodes 1 and 2 (a majority) form the cluster first, so node 3 joins as a follower: until it has caught up its
    // log is behind theirs, and neither of them would vote for it.
    n1.spawn()?;
    n2.spawn()?;
    n1.wait_healthy(secs(15)).await?;
    n2.wait_healthy(secs(15)).await?;
    cluster.leader().await?;
    n3.spawn()?;
    n3.wait_healthy(secs(15)).await?;
    let leader = cluster.leader().await?;
    ensure!(leader != 3, "node 3 (the node with the small disk) became the leader; this test needs it a follower");
    let (leader, other) = if leader == 1 { (n1, n2) } else { (n2, n1) };

    let mut written = vec!["encode".to_string()];
    register_task_def(leader, "encode").await?;
    register_workflow_def(other, "media", 1, "encode").await?;
    let started = post_json(other, "/api/workflow", &json!({"name": "media", "input": {"file": "a.mov"}})).await?;
    let workflow_id = started.ok()?.body;
    ensure!(!workflow_id.is_empty(), "a workflow start answers its id");
    cluster.wait_converged().await.context("all three nodes converge before the disk fills")?;

    let filler = disk.fill()?;
    let filled_at = Instant::now();
    eprintln!("node 3's disk is full ({filler} bytes of filler)");

    // Every write goes to node 3 as an append. Keep writing through the leader until node 3 has exited, and look
    // at its /health between writes: it answers 503 from the failure until it stops listening.
    let after_full = Mutex::new(Vec::new());
    let unhealthy: Mutex<Option<Unhealthy>> = Mutex::new(None);
    wait_until(secs(30), "node 3 to exit after its disk filled", || async {
        let name = format!("after_full_{}", after_full.lock().expect("not poisoned").len());
        register_task_def(leader, &name)
            .await
            .map_err(|e| fatal(format!("a write through the leader failed while node 3's disk was full: {e:#}")))?;
        after_full.lock().expect("not poisoned").push(name);
        if n3.check_running().is_err() {
            return Ok(());
        }
        if unhealthy.lock().expect("not poisoned").is_none() {
            if let Ok(health) = get(n3, "/health").await {
                if health.status != 200 {
                    let ready = get(n3, "/ready").await?;
                    *unhealthy.lock().expect("not poisoned") =
                        Some(Unhealthy { health, ready, seen_at: Instant::now() });
                }
            }
        }
        anyhow::bail!("node 3 is still running")
    })
    .await?;
    let exit = n3.wait_exit(secs(5)).await?;
    let exited_by = Instant::now();
    eprintln!("node 3 exited ({exit}) {:?} after its disk filled", exited_by - filled_at);

    ensure!(
        exit.code() == Some(i32::from(RAFT_FAILED_EXIT_CODE)),
        "node 3 should exit with code {RAFT_FAILED_EXIT_CODE} (raft failed), not {exit}"
    );
    let log = n3.current_run_log();
    ensure!(log.contains(NO_SPACE), "node 3's log does not name the storage error ({NO_SPACE:?})");
    ensure!(log.contains("raft stopped on a fatal error"), "node 3's log does not say that raft stopped");

    let Some(Unhealthy { health, ready, seen_at }) = unhealthy.into_inner().expect("not poisoned") else {
        anyhow::bail!("node 3 exited without /health ever answering anything but 200");
    };
    ensure!(health.status == 503, "/health of the failed node: HTTP {} {}", health.status, health.body);
    let body = health.json()?;
    ensure!(body["healthy"] == json!(false), "/health body: {body}");
    ensure!(body["reason"].as_str().is_some_and(|r| r.contains(NO_SPACE)), "/health names no reason: {body}");
    ensure!(ready.status == 503, "/ready of the failed node: HTTP {} {}", ready.status, ready.body);
    let body = ready.json()?;
    ensure!(body["ready"] == json!(false), "/ready body: {body}");
    ensure!(body["reason"].as_str().is_some_and(|r| r.contains(NO_SPACE)), "/ready names no reason: {body}");
    // From the first 503 seen: the report window, a bounded drain, Raft and RocksDB closed; and slack for a loaded
    // machine.
    let bound = Duration::from_millis(FAILED_REPORT_MS + FAILED_DRAIN_MS) + Duration::from_secs(3);
    ensure!(exited_by - seen_at <= bound, "node 3 took {:?} from reporting 503 to exiting", exited_by - seen_at);

    // The survivors take writes through either of them and agree.
    written.extend(after_full.into_inner().expect("not poisoned"));
    for (i, node) in [n1, n2].into_iter().enumerate() {
        let name = format!("after_exit_{i}");
        register_task_def(node, &name).await.with_context(|| format!("a write through node {}", node.id))?;
        written.push(name);
    }
    let statuses = cluster.wait_converged().await?;
    ensure!(statuses.len() == 2, "two live nodes: {}", summary(&statuses));
    for node in [n1, n2] {
        assert_task_defs_present(node, &written).await?;
        ensure!(get(node, &format!("/api/workflow/{workflow_id}")).await?.status == 200, "workflow lost");
    }

    drop(disk);
    cluster.pass();
    Ok(())
}
