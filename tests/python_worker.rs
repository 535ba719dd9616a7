//! A worker written in Python from proto/baton.proto alone (examples/python/worker.py, grpcio) serves tasks of a
//! cluster of the real binary. scripts/setup-tests.sh installs grpcio and grpcio-tools.

mod support;

use std::process::Stdio;

use anyhow::{ensure, Context, Result};
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_worker_completes_tasks() -> Result<()> {
    let probe = std::process::Command::new("python3").args(["-c", "import grpc, grpc_tools"]).status();
    ensure!(
        probe.is_ok_and(|s| s.success()),
        "python3 with grpcio and grpcio-tools is required (scripts/setup-tests.sh installs them)"
    );
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let follower = cluster.nodes().iter().find(|n| n.id != leader).context("follower")?;
    post_json(
        follower,
        "/api/metadata/taskdefs",
        &json!([{"name": "encode", "retryCount": 1, "responseTimeoutSeconds": 30}]),
    )
    .await?
    .ok()?;
    let wf = json!({"name": "py", "tasks": [{"name": "encode", "taskReferenceName": "encode",
        "inputParameters": {"fileLocation": "${workflow.input.f}"}}]});
    post_json(follower, "/api/metadata/workflow", &wf).await?.ok()?;

    let addrs: Vec<String> = cluster.nodes().iter().map(|n| n.grpc_addr.clone()).collect();
    let script = format!("{}/examples/python/worker.py", env!("CARGO_MANIFEST_DIR"));
    let mut worker = tokio::process::Command::new("python3")
        .args([script.as_str(), "--addr", &addrs.join(","), "--task", "encode", "--max-tasks", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;

    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            post_json(follower, "/api/workflow", &json!({"name": "py", "input": {"f": format!("s3://in/{i}.mov")}}))
                .await?
                .ok()?
                .body,
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let wf = wait_until(secs(60), "the python worker's task", || async {
            let wf = get(follower, &format!("/api/workflow/{id}")).await?.ok()?.json()?;
            ensure!(wf["status"] == "COMPLETED", "{}", wf["status"]);
            Ok(wf)
        })
        .await?;
        ensure!(wf["output"]["encodeLocation"] == format!("s3://in/{i}.mov.encoded.mp4"), "{}", wf["output"]);
        ensure!(wf["output"]["worker"] == "python", "{}", wf["output"]);
    }
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), worker.wait()).await??;
    ensure!(status.success(), "the python worker exited with {status}");
    cluster.pass();
    Ok(())
}
