//! Workflows through the cluster: started on a follower, driven through task updates sent to other nodes, read
//! back identical (same state_hash) from every node; bad definitions and inputs refused with the field's path.

mod support;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use support::*;

/// Completes the pending worker task with this reference name through `via`; returns its task id. `via` reads its
/// local state, which may lag the node the previous step went through by an entry: poll until the task shows.
async fn complete(via: &Node, workflow_id: &str, reference: &str, output: Value) -> Result<String> {
    let task_id = wait_until(secs(10), "the task to be scheduled on this node", || async {
        let wf = get(via, &format!("/api/workflow/{workflow_id}")).await?.ok()?.json()?;
        let task = wf["tasks"]
            .as_array()
            .context("tasks")?
            .iter()
            .rev()
            .find(|t| t["referenceTaskName"] == reference && t["status"] == "SCHEDULED")
            .with_context(|| format!("no scheduled task {reference} in {wf}"))?;
        Ok(task["taskId"].as_str().context("taskId")?.to_string())
    })
    .await?;
    let result =
        json!({"workflowInstanceId": workflow_id, "taskId": task_id, "status": "COMPLETED", "outputData": output});
    let reply = post_json(via, "/api/tasks", &result).await?.ok()?;
    ensure!(reply.body == task_id, "POST /api/tasks answered {:?}", reply.body);
    Ok(task_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_started_on_a_follower_completes_and_reads_the_same_on_every_node() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let followers: Vec<&Node> = cluster.nodes().iter().filter(|n| n.id != leader).collect();
    let (a, b) = (followers[0], followers[1]);
    for name in ["fetch", "resize", "thumb", "publish"] {
        register_task_def(a, name).await?;
    }
    let def = json!({
        "name": "media", "version": 1,
        "tasks": [
            {"name": "fetch", "taskReferenceName": "fetch", "inputParameters": {"url": "${workflow.input.url}"}},
            {"name": "fork", "taskReferenceName": "fork", "type": "FORK_JOIN", "forkTasks": [
                [{"name": "resize", "taskReferenceName": "resize", "inputParameters": {"src": "${fetch.output.path}"}}],
                [{"name": "thumb", "taskReferenceName": "thumb"}]]},
            {"name": "join", "taskReferenceName": "join", "type": "JOIN", "joinOn": ["resize", "thumb"]},
            {"name": "route", "taskReferenceName": "route", "type": "SWITCH", "evaluatorType": "value-param",
             "expression": "mode", "inputParameters": {"mode": "${workflow.input.mode}"},
             "decisionCases": {"publish": [{"name": "publish", "taskReferenceName": "publish"}]}}
        ],
        "outputParameters": {"resized": "${resize.output.path}", "published": "${publish.output.at}"}
    });
    post_json(b, "/api/metadata/workflow", &def).await?.ok()?;

    let started =
        post_json(a, "/api/workflow", &json!({"name": "media", "input": {"url": "s3://in.mov", "mode": "publish"}}))
            .await?
            .ok()?;
    let id = started.body.clone();
    ensure!(uuid_like(&id), "start answered {id:?}");

    // Drive the workflow through different nodes.
    complete(b, &id, "fetch", json!({"path": "/tmp/in.mov"})).await?;
    // Node a may lag b by an entry: poll its local state until the fork shows.
    let resize = wait_until(secs(10), "resize scheduled on node a", || async {
        let wf = get(a, &format!("/api/workflow/{id}")).await?.ok()?.json()?;
        wf["tasks"]
            .as_array()
            .context("tasks")?
            .iter()
            .find(|t| t["referenceTaskName"] == "resize")
            .cloned()
            .context("resize not scheduled yet")
    })
    .await?;
    ensure!(resize["inputData"]["src"] == "/tmp/in.mov", "resize input not wired: {resize}");
    complete(cluster.node(leader), &id, "thumb", json!({"thumb": "t.png"})).await?;
    complete(a, &id, "resize", json!({"path": "/out/r.mp4"})).await?;
    complete(b, &id, "publish", json!({"at": "https://cdn/r.mp4"})).await?;

    let statuses = cluster.wait_converged().await?;
    for node in cluster.nodes() {
        let wf = get(node, &format!("/api/workflow/{id}")).await?.ok()?.json()?;
        ensure!(wf["status"] == "COMPLETED", "n{}: {}", node.id, wf["status"]);
        ensure!(
            wf["output"] == json!({"resized": "/out/r.mp4", "published": "https://cdn/r.mp4"}),
            "n{} output {}",
            node.id,
            wf["output"]
        );
    }
    ensure!(statuses.iter().all(|s| s.state_hash == statuses[0].state_hash));
    // includeTasks=false leaves the tasks out.
    let bare = get(a, &format!("/api/workflow/{id}?includeTasks=false")).await?.ok()?.json()?;
    ensure!(bare["tasks"].as_array().is_some_and(Vec::is_empty), "{bare}");
    cluster.pass();
    Ok(())
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_slips_bad_definitions_and_operations_through_the_cluster() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let via = cluster.nodes().iter().find(|n| n.id != leader).context("follower")?;
    register_task_def(via, "step").await?;

    // A routing slip: the steps come with the request, nothing is registered.
    let slip = json!({"name": "slip", "input": {"n": 1}, "workflowDef": {"name": "slip", "tasks": [
        {"name": "step", "taskReferenceName": "only"}]}});
    let id = post_json(via, "/api/workflow", &slip).await?.ok()?.body;
    let reply = get(via, "/api/metadata/workflow/slip").await?;
    ensure!(reply.status == 404, "an inline definition must not be registered: {}", reply.status);

    // Conductor's status summary; output and variables only when asked for.
    let summary = get(via, &format!("/api/workflow/{id}/status")).await?.ok()?.json()?;
    ensure!(summary["workflowId"] == id.as_str() && summary["status"] == "RUNNING", "{summary}");
    ensure!(summary.get("output").is_none() && summary.get("variables").is_none(), "{summary}");
    let summary = get(via, &format!("/api/workflow/{id}/status?includeOutput=true&includeVariables=True")).await?;
    let summary = summary.ok()?.json()?;
    ensure!(summary["output"].is_object() && summary["variables"].is_object(), "{summary}");
    let reply = get(via, "/api/workflow/no-such-id/status").await?;
    ensure!(reply.status == 404 && reply.json()?["message"].is_string(), "{}: {}", reply.status, reply.body);
    let reply = get(via, &format!("/api/workflow/{id}/status?includeOutput=perhaps")).await?;
    let body = reply.json()?;
    ensure!(body["status"] == 400 && body["message"].as_str().is_some_and(|m| m.contains("perhaps")), "{body}");

    // Idempotency keys: RETURN_EXISTING (the default) answers the same id, FAIL answers 409, FAIL_ON_RUNNING too
    // while that workflow runs; an unknown strategy is 400.
    let keyed = json!({"name": "slip", "idempotencyKey": "order-1", "workflowDef": slip["workflowDef"]});
    let first = post_json(via, "/api/workflow", &keyed).await?.ok()?.body;
    let again = post_json(via, "/api/workflow", &keyed).await?.ok()?.body;
    ensure!(first == again, "RETURN_EXISTING: {first} then {again}");
    for strategy in ["FAIL", "FAIL_ON_RUNNING"] {
        let mut req = keyed.clone();
        req["idempotencyStrategy"] = json!(strategy);
        let reply = post_json(via, "/api/workflow", &req).await?;
        ensure!(reply.status == 409 && reply.body.contains(&first), "{strategy}: {} {}", reply.status, reply.body);
    }
    let mut req = keyed.clone();
    req["idempotencyStrategy"] = json!("SOMETIMES");
    let reply = post_json(via, "/api/workflow", &req).await?;
    ensure!(reply.status == 400 && reply.body.contains("idempotencyStrategy"), "{} {}", reply.status, reply.body);

    // Pause, resume, terminate.
    let put = client().put(format!("{}/api/workflow/{id}/pause", via.http_base())).send().await?;
    ensure!(put.status() == 200, "pause: {}", put.status());
    let wf = get(via, &format!("/api/workflow/{id}")).await?.ok()?.json()?;
    ensure!(wf["status"] == "PAUSED", "{}", wf["status"]);
    let put = client().put(format!("{}/api/workflow/{id}/resume", via.http_base())).send().await?;
    ensure!(put.status() == 200);
    let del = client().delete(format!("{}/api/workflow/{id}?reason=enough", via.http_base())).send().await?;
    ensure!(del.status() == 200, "terminate: {}", del.status());
    let wf = get(via, &format!("/api/workflow/{id}")).await?.ok()?.json()?;
    ensure!(wf["status"] == "TERMINATED" && wf["reasonForIncompletion"] == "enough", "{wf}");

    // Bad definitions name the path; nothing is stored.
    let before = cluster.node(leader).status().await?;
    let bad = json!({"name": "bad", "tasks": [
        {"name": "step", "taskReferenceName": "a"},
        {"name": "f", "taskReferenceName": "f", "type": "FORK_JOIN", "forkTasks": [[{"name": "step", "taskReferenceName": "a"}]]},
        {"name": "j", "taskReferenceName": "j", "type": "JOIN", "joinOn": ["nope"]}]});
    let reply = post_json(via, "/api/metadata/workflow", &bad).await?;
    ensure!(reply.status == 400, "bad def: {} {}", reply.status, reply.body);
    let body = reply.json()?;
    let paths: Vec<&str> = body["validationErrors"]
        .as_array()
        .context("validationErrors")?
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    ensure!(paths.contains(&"tasks[1].forkTasks[0][0].taskReferenceName"), "{body}");
    ensure!(paths.contains(&"tasks[2].joinOn[0]"), "{body}");
    let unknown_task = json!({"name": "bad2", "tasks": [{"name": "never_registered", "taskReferenceName": "x"}]});
    let reply = post_json(via, "/api/metadata/workflow", &unknown_task).await?;
    ensure!(reply.status == 400 && reply.body.contains("tasks[0].name"), "{} {}", reply.status, reply.body);
    let reply = post_json(via, "/api/workflow", &json!({"name": "no_such_workflow"})).await?;
    ensure!(reply.status == 404, "unknown workflow: {} {}", reply.status, reply.body);
    let reply =
        post_json(via, "/api/workflow", &json!({"name": "x", "workflowDef": {"name": "x", "tasks": []}})).await?;
    ensure!(reply.status == 400 && reply.body.contains("workflowDef.tasks"), "{} {}", reply.status, reply.body);
    let after = cluster.node(leader).status().await?;
    ensure!(after.last_log_index >= before.last_log_index);
    for name in ["bad", "bad2"] {
        ensure!(get(via, &format!("/api/metadata/workflow/{name}")).await?.status == 404, "{name} was stored");
    }
    cluster.pass();
    Ok(())
}

/// Each workflow endpoint's refusals, as Conductor answers them: an unknown id is 404, an operation the workflow's
/// state does not allow is 409, a body that is not JSON is 400; always with Conductor's error body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_endpoints_refuse_unknown_ids_wrong_states_and_malformed_bodies() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let via = cluster.nodes().iter().find(|n| n.id != leader).context("follower")?;
    register_task_def(via, "step").await?;
    post_json(via, "/api/metadata/workflow", &workflow_def("one", 1, "step")).await?.ok()?;
    let running = post_json(via, "/api/workflow/one", &json!({})).await?.ok()?.body;
    let ended = post_json(via, "/api/workflow/one", &json!({})).await?.ok()?.body;
    let del = client().delete(format!("{}/api/workflow/{ended}?reason=done", via.http_base())).send().await?;
    ensure!(del.status() == 200, "terminate: {}", del.status());

    let base = via.http_base();
    let cases: Vec<(reqwest::Method, String, &str, u16)> = vec![
        // Unknown ids.
        (reqwest::Method::GET, "/api/workflow/no-such-id".into(), "", 404),
        (reqwest::Method::DELETE, "/api/workflow/no-such-id".into(), "", 404),
        (reqwest::Method::PUT, "/api/workflow/no-such-id/pause".into(), "", 404),
        (reqwest::Method::PUT, "/api/workflow/no-such-id/resume".into(), "", 404),
        (reqwest::Method::POST, "/api/workflow/no-such-id/retry".into(), "", 404),
        (reqwest::Method::POST, "/api/workflow/no-such-id/restart".into(), "", 404),
        (reqwest::Method::POST, "/api/workflow/no-such-id/rerun".into(), "{}", 404),
        (reqwest::Method::PUT, "/api/workflow/no-such-id/skiptask/step_ref".into(), "", 404),
        (reqwest::Method::POST, "/api/workflow/no-such-definition".into(), "{}", 404),
        // States that do not allow the operation.
        (reqwest::Method::PUT, format!("/api/workflow/{running}/resume"), "", 409),
        (reqwest::Method::POST, format!("/api/workflow/{running}/restart"), "", 409),
        (reqwest::Method::POST, format!("/api/workflow/{running}/rerun"), "{}", 409),
        (reqwest::Method::PUT, format!("/api/workflow/{ended}/pause"), "", 409),
        (reqwest::Method::PUT, format!("/api/workflow/{ended}/skiptask/step_ref"), "", 409),
        // Bodies that are not JSON.
        (reqwest::Method::POST, "/api/workflow".into(), "{\"name\": ", 400),
        (reqwest::Method::POST, "/api/workflow/one".into(), "[1, 2", 400),
        (reqwest::Method::POST, format!("/api/workflow/{ended}/rerun"), "{oops}", 400),
    ];
    for (method, path, body, expected) in cases {
        let reply = client()
            .request(method.clone(), format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let status = reply.status().as_u16();
        let text = reply.text().await?;
        let error: Value = serde_json::from_str(&text).with_context(|| format!("{method} {path}: body {text:?}"))?;
        ensure!(
            status == expected
                && error["status"] == expected
                && error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{method} {path}: expected {expected}, got {status} {text}"
        );
    }
    // Nothing above changed either workflow.
    let wf = get(via, &format!("/api/workflow/{running}")).await?.ok()?.json()?;
    ensure!(wf["status"] == "RUNNING" && wf["tasks"].as_array().map(Vec::len) == Some(1), "{wf}");
    let wf = get(via, &format!("/api/workflow/{ended}")).await?.ok()?.json()?;
    ensure!(wf["status"] == "TERMINATED", "{}", wf["status"]);
    cluster.pass();
    Ok(())
}
