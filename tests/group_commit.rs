//! Group commit and backpressure against the real binary: concurrent writes share log entries; beyond the
//! configured bound of writes in flight a node answers RESOURCE_EXHAUSTED (HTTP 429) and writes nothing for them,
//! keeps every write it acknowledged, and keeps serving.

mod support;

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use baton::pb::v1::workflow_service_client::WorkflowServiceClient;
use baton::pb::v1::{ListWorkflowsRequest, StartWorkflowRequest};
use serde_json::json;
use support::*;

async fn define(via: &Node) -> Result<()> {
    register_task_def(via, "step").await?;
    post_json(via, "/api/metadata/workflow", &workflow_def("burst", 1, "step")).await?.ok()?;
    Ok(())
}

/// Fires `n` starts at once at `node`; returns the gRPC outcome of each.
async fn burst(node: &Node, n: usize) -> Result<Vec<Result<String, tonic::Status>>> {
    let channel = baton::raft::network::channel(&node.grpc_addr)?;
    let calls = (0..n).map(|i| {
        let mut client = WorkflowServiceClient::new(channel.clone());
        async move {
            let req = StartWorkflowRequest {
                name: "burst".into(),
                input_json: json!({"i": i}).to_string(),
                ..Default::default()
            };
            client.start(req).await.map(|r| r.into_inner().workflow_id)
        }
    });
    Ok(futures::future::join_all(calls).await)
}

/// Every workflow of the `burst` definition, as `node` lists them.
async fn stored_ids(node: &Node) -> Result<BTreeSet<String>> {
    let mut client = WorkflowServiceClient::new(baton::raft::network::channel(&node.grpc_addr)?);
    let mut ids = BTreeSet::new();
    loop {
        let page = client
            .list(ListWorkflowsRequest {
                name: "burst".into(),
                limit: 100,
                offset: u32::try_from(ids.len())?,
                ..Default::default()
            })
            .await?
            .into_inner()
            .workflows;
        if page.is_empty() {
            return Ok(ids);
        }
        ids.extend(page.into_iter().map(|w| w.workflow_id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_share_log_entries() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let node = cluster.node(leader);
    define(node).await?;
    let before = cluster.wait_converged().await?[0].last_log_index;

    const N: usize = 300;
    let outcomes = burst(node, N).await?;
    let acknowledged: BTreeSet<String> = outcomes.into_iter().collect::<Result<_, _>>()?;
    ensure!(acknowledged.len() == N, "{} distinct ids for {N} starts", acknowledged.len());

    let statuses = cluster.wait_converged().await?;
    let entries = statuses[0].last_log_index - before;
    println!("{N} concurrent starts were committed in {entries} log entries");
    ensure!(entries * 2 <= N as u64, "{N} concurrent starts took {entries} entries: not batched");
    for n in cluster.nodes() {
        ensure!(stored_ids(n).await? == acknowledged, "node {} does not hold exactly the acknowledged starts", n.id);
    }
    cluster.pass();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_beyond_the_in_flight_bound_are_refused_and_the_rest_kept() -> Result<()> {
    let opts = Options { max_in_flight_proposals: 4, ..Options::default() };
    let cluster = Cluster::start_with(3, opts).await?;
    let leader = cluster.leader().await?;
    let follower = cluster.nodes().iter().find(|n| n.id != leader).context("a follower")?;
    define(follower).await?;

    let outcomes = burst(follower, 200).await?;
    let mut acknowledged = BTreeSet::new();
    let mut refused = 0;
    for outcome in outcomes {
        match outcome {
            Ok(id) => {
                acknowledged.insert(id);
            }
            Err(status) => {
                ensure!(
                    status.code() == tonic::Code::ResourceExhausted && status.message().contains("overloaded"),
                    "a refusal must say the node is overloaded: {status:?}"
                );
                refused += 1;
            }
        }
    }
    println!("bound 4: {} starts acknowledged, {refused} refused with RESOURCE_EXHAUSTED", acknowledged.len());
    ensure!(refused > 0, "200 concurrent starts against a bound of 4 were all admitted");
    ensure!(!acknowledged.is_empty(), "nothing was admitted");

    // Still serving: a start after the burst goes through, over HTTP too.
    let reply = post_json(follower, "/api/workflow/burst", &json!({})).await?.ok()?;
    acknowledged.insert(reply.body.clone());
    cluster.wait_converged().await?;
    for n in cluster.nodes() {
        ensure!(stored_ids(n).await? == acknowledged, "node {} does not hold exactly the acknowledged starts", n.id);
    }
    cluster.pass();
    Ok(())
}
