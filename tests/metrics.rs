//! `GET /metrics` on a real three-process cluster: the figures follow what the cluster did (workflows started through
//! a follower, tasks polled and completed over HTTP, a task left waiting, a leader SIGKILLed).

mod support;

use std::collections::BTreeMap;

use anyhow::{ensure, Context, Result};
use serde_json::json;
use support::*;

/// One scrape: series (name plus sorted labels) -> value.
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    async fn of(node: &Node) -> Result<Scrape> {
        let reply = get(node, "/metrics").await?.ok()?;
        let mut series = BTreeMap::new();
        for line in reply.body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let (key, value) = line.rsplit_once(' ').with_context(|| format!("metric line {line:?}"))?;
            let value: f64 = value.parse().with_context(|| format!("metric value in {line:?}"))?;
            series.insert(normalise(key), value);
        }
        Ok(Scrape(series))
    }

    /// The value of `name{labels}` (labels in any order), or 0 when the series does not exist yet.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let key =
            if labels.is_empty() { name.to_string() } else { normalise(&format!("{name}{{{}}}", labels.join(","))) };
        self.0.get(&key).copied().unwrap_or(0.0)
    }
}

/// `name{b="1",a="2"}` -> `name{a="2",b="1"}`.
fn normalise(key: &str) -> String {
    match key.split_once('{') {
        Some((name, labels)) => {
            let mut parts: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
            parts.sort_unstable();
            format!("{name}{{{}}}", parts.join(","))
        }
        None => key.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_what_the_cluster_did() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader_id = cluster.leader().await?;
    let leader = cluster.node(leader_id);
    let follower = cluster.live_except(leader_id)[0];
    register_task_def(follower, "resize").await?;
    post_json(follower, "/api/metadata/workflow", &workflow_def("thumbs", 1, "resize")).await?.ok()?;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(post_json(follower, "/api/workflow/thumbs", &json!({"n": n})).await?.ok()?.body);
    }
    // Two of the three tasks are polled (through the follower) and completed; one stays in the queue.
    for _ in 0..2 {
        let task = wait_until(secs(10), "a task to poll", || async {
            let reply = get(follower, "/api/tasks/poll/resize?workerid=m1").await?;
            ensure!(reply.status == 200, "poll answered {}", reply.status);
            reply.json()
        })
        .await?;
        let result = json!({"workflowInstanceId": task["workflowInstanceId"], "taskId": task["taskId"],
                            "status": "COMPLETED", "outputData": {"ok": true}});
        post_json(follower, "/api/tasks", &result).await?.ok()?;
    }
    cluster.wait_converged().await?;

    for node in cluster.nodes() {
        let m = Scrape::of(node).await?;
        let is_leader = node.id == leader_id;
        ensure!(m.value("baton_raft_is_leader", &[]) == f64::from(u8::from(is_leader)), "n{}: is_leader", node.id);
        ensure!(m.value("baton_raft_term", &[]) >= 1.0, "n{}: term", node.id);
        let (applied, committed) = (m.value("baton_raft_applied_index", &[]), m.value("baton_raft_commit_index", &[]));
        ensure!(applied >= 6.0 && committed >= applied, "n{}: applied {applied}, committed {committed}", node.id);
        // Every replica applies the same transitions.
        let finished = m.value("baton_tasks_finished_total", &[("task_type", "resize"), ("status", "COMPLETED")]);
        ensure!(finished == 2.0, "n{}: tasks finished {finished}", node.id);
        ensure!(m.value("baton_workflows", &[("status", "COMPLETED")]) == 2.0, "n{}: completed workflows", node.id);
        ensure!(m.value("baton_workflows", &[("status", "RUNNING")]) == 1.0, "n{}: running workflows", node.id);
        ensure!(m.value("baton_workflows_started_total", &[]) == 3.0, "n{}: started", node.id);
        // Every replica appended entries, and an append is reported only after a WAL sync. (Not bounded by the
        // entry count: an election's entries may be appended, truncated and appended again.)
        let syncs = m.value("baton_wal_sync_duration_seconds_count", &[]);
        ensure!(syncs >= 1.0, "n{}: {syncs} WAL syncs", node.id);
        // Every replica times each entry it applies, each once: at most the entries up to the applied index (the
        // log starts at index 0).
        let applies = m.value("baton_apply_duration_seconds_count", &[]);
        ensure!(applies >= 6.0 && applies <= applied + 1.0, "n{}: {applies} applies, applied index {applied}", node.id);
    }
    let on_leader = Scrape::of(leader).await?;
    let dispatched = on_leader.value("baton_tasks_dispatched_total", &[("task_type", "resize")]);
    ensure!(dispatched == 2.0, "the leader dispatched {dispatched} tasks");
    ensure!(on_leader.value("baton_task_queue_depth", &[("queue", "resize")]) == 1.0, "queue depth on the leader");
    // The leader's group commit timed each command's wait and each entry's round trip: the 3 starts, 2 leases and 2
    // completions at least (forwarded from the follower), in at most as many entries as commands.
    let waits = on_leader.value("baton_group_commit_wait_seconds_count", &[]);
    let entries = on_leader.value("baton_entry_round_trip_seconds_count", &[]);
    ensure!(waits >= 7.0 && (1.0..=waits).contains(&entries), "leader: {waits} commands in {entries} entries");
    let on_follower = Scrape::of(follower).await?;
    let starts = on_follower
        .value("baton_http_requests_total", &[("method", "POST"), ("route", "/api/workflow/{id}"), ("status", "200")]);
    ensure!(starts == 3.0, "the follower counted {starts} starts");
    let proposals = on_follower.value("baton_proposal_duration_seconds_count", &[("kind", "start_workflow")]);
    ensure!(proposals == 3.0, "the follower timed {proposals} start proposals");
    let polls = on_follower.value("baton_poll_duration_seconds_count", &[("outcome", "tasks")]);
    ensure!(polls == 2.0, "the follower timed {polls} polls that got a task");
    // The follower forwarded its polls to the leader over gRPC, and the leader replicates to it.
    let forwarded =
        on_leader.value("baton_grpc_requests_total", &[("method", "/baton.raft.v1.RaftPeer/Poll"), ("code", "0")]);
    ensure!(forwarded >= 2.0, "the leader answered {forwarded} forwarded polls");
    let appends = on_follower
        .value("baton_grpc_requests_total", &[("method", "/baton.raft.v1.RaftPeer/AppendEntries"), ("code", "0")]);
    ensure!(appends >= 1.0, "the follower counted {appends} AppendEntries");

    // A leader SIGKILL shows as one more leader change on the survivors.
    let before = on_follower.value("baton_raft_leader_changes_total", &[]);
    leader.kill()?;
    let new_leader = cluster.leader_by(secs(10)).await?;
    ensure!(new_leader != leader_id, "the killed node is still the leader");
    wait_until(secs(5), "the leader change counted", || async {
        let after = Scrape::of(follower).await?.value("baton_raft_leader_changes_total", &[]);
        ensure!(after == before + 1.0, "leader changes {before} -> {after}");
        Ok(())
    })
    .await?;
    cluster.pass();
    Ok(())
}
