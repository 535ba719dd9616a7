//! The seed workflow end to end through the CLI: `baton def put`, `baton worker exec` workers on two nodes running
//! the example shell scripts, `baton workflow start --wait --json` through a follower; a routing slip over HTTP;
//! `baton workflow list`.

mod support;

use std::process::Stdio;

use anyhow::{ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use support::*;

fn example(path: &str) -> String {
    format!("{}/examples/{path}", env!("CARGO_MANIFEST_DIR"))
}

async fn baton(args: &[&str]) -> Result<std::process::Output> {
    tokio::process::Command::new(BIN).args(args).env_remove("BATON_ADDR").output().await.context("running baton")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_workflow_runs_end_to_end_through_the_cli_with_script_workers() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let others: Vec<&Node> = cluster.nodes().iter().filter(|n| n.id != leader).collect();
    let (a, b) = (others[0], others[1]);

    let out = baton(&["def", "put", &example("encode_and_deploy/definitions.json"), "--addr", &a.grpc_addr]).await?;
    ensure!(out.status.success(), "def put: {}", String::from_utf8_lossy(&out.stderr));
    ensure!(String::from_utf8_lossy(&out.stdout).contains("registered 2 task definition(s)"));

    let spawn_worker = |task: &str, addr: &str, script: &str| {
        tokio::process::Command::new(BIN)
            .args(["worker", "exec", "--task", task, "--addr", addr, "--", "sh", &example(script)])
            .env_remove("BATON_ADDR")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
    };
    let encode = spawn_worker("encode", &b.grpc_addr, "encode_and_deploy/encode.sh")?;
    let deploy = spawn_worker("deploy", &cluster.node(leader).grpc_addr, "encode_and_deploy/deploy.sh")?;

    let out = baton(&[
        "workflow",
        "start",
        "encode_and_deploy",
        "--input",
        r#"{"fileLocation":"s3://in/movie.mov"}"#,
        "--wait",
        "--timeout",
        "60",
        "--json",
        "--addr",
        &format!("{},{}", a.grpc_addr, b.grpc_addr),
    ])
    .await?;
    ensure!(
        out.status.success(),
        "workflow start: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let wf: Value = serde_json::from_slice(&out.stdout).context("--json prints the workflow")?;
    ensure!(wf["status"] == "COMPLETED", "{wf}");
    ensure!(wf["output"]["cdn_url"] == "https://cdn.example.com/movie.mov.encoded.mp4", "{}", wf["output"]);
    let id = wf["workflowId"].as_str().context("workflowId")?.to_string();

    // A routing slip: the steps come with the request.
    let slip: Value = serde_json::from_str(&std::fs::read_to_string(example("routing_slip/encode_twice.json"))?)?;
    let slip_id = post_json(a, "/api/workflow", &slip).await?.ok()?.body;
    wait_until(secs(30), "the routing slip to complete", || async {
        let wf = get(b, &format!("/api/workflow/{slip_id}")).await?.ok()?.json()?;
        ensure!(wf["status"] == "COMPLETED", "{}", wf["status"]);
        Ok(wf)
    })
    .await
    .and_then(|wf| {
        ensure!(
            wf["output"]["cdn_url"] == "https://cdn.example.com/raw.mov.encoded.mp4.encoded.mp4",
            "{}",
            wf["output"]
        );
        Ok(())
    })?;

    let out = baton(&["workflow", "list", "--json", "--status", "COMPLETED", "--addr", &b.grpc_addr]).await?;
    let list: Value = serde_json::from_slice(&out.stdout)?;
    let ids: Vec<&str> = list.as_array().context("a list")?.iter().filter_map(|w| w["workflowId"].as_str()).collect();
    ensure!(ids.contains(&id.as_str()) && ids.contains(&slip_id.as_str()), "{list}");

    // Bad input gets a clear error and a meaningful exit code.
    let out = baton(&["workflow", "start", "no_such_flow", "--addr", &a.grpc_addr]).await?;
    ensure!(out.status.code() == Some(1), "unknown workflow: {:?}", out.status);
    ensure!(String::from_utf8_lossy(&out.stderr).contains("no_such_flow"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = baton(&["workflow", "start", "encode_and_deploy", "--input", "[1,2]", "--addr", &a.grpc_addr]).await?;
    ensure!(out.status.code() == Some(2), "bad input: {:?}", out.status);

    for worker in [&encode, &deploy] {
        if let Some(pid) = worker.id() {
            kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGINT)?;
        }
    }
    for mut worker in [encode, deploy] {
        let status = tokio::time::timeout(std::time::Duration::from_secs(10), worker.wait()).await??;
        ensure!(status.success(), "worker exited with {status}");
    }
    cluster.pass();
    Ok(())
}
