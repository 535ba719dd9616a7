//! Conductor's workflow search (`GET /api/workflow/search`) on a real three-node cluster: its query clauses, free
//! text, sorting and paging over running, completed and terminated workflows, the WorkflowSummary shape (ISO-8601
//! times, input and output as JSON text), and bad queries answered 400 with Conductor's error body naming the clause.

mod support;

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use support::*;

/// `GET /api/workflow/search?<query>` on `node`; the SearchResult on 200.
async fn search(node: &Node, query: &[(&str, &str)]) -> Result<Value> {
    let url = format!("{}/api/workflow/search", node.http_base());
    let resp = client().get(&url).query(query).send().await.with_context(|| format!("GET {url}"))?;
    let status = resp.status().as_u16();
    let body = resp.text().await?;
    ensure!(status == 200, "search {query:?}: HTTP {status}: {body}");
    Ok(serde_json::from_str(&body)?)
}

/// The error body of a search that must be refused with 400.
async fn refused(node: &Node, query: &[(&str, &str)]) -> Result<Value> {
    let url = format!("{}/api/workflow/search", node.http_base());
    let resp = client().get(&url).query(query).send().await?;
    let status = resp.status().as_u16();
    let body: Value = serde_json::from_str(&resp.text().await?)?;
    ensure!(status == 400 && body["status"] == 400, "search {query:?} answered {status}: {body}");
    Ok(body)
}

fn ids(result: &Value) -> Result<Vec<String>> {
    result["results"]
        .as_array()
        .context("results")?
        .iter()
        .map(|w| w["workflowId"].as_str().map(str::to_string).context("workflowId"))
        .collect()
}

/// Conductor's `yyyy-MM-dd'T'HH:mm:ss.SSS'Z'`.
fn is_iso_utc(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    let b = s.as_bytes();
    b.len() == 24
        && (b[4], b[7], b[10], b[13], b[16], b[19], b[23]) == (b'-', b'-', b'T', b':', b':', b'.', b'Z')
        && s.chars().enumerate().all(|(i, c)| [4, 7, 10, 13, 16, 19, 23].contains(&i) || c.is_ascii_digit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_filters_sorts_pages_and_names_a_bad_clause() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let leader = cluster.leader().await?;
    let followers: Vec<&Node> = cluster.nodes().iter().filter(|n| n.id != leader).collect();
    let (a, b) = (followers[0], followers[1]);
    register_task_def(a, "search_step").await?;
    register_workflow_def(a, "search_waits", 1, "search_step").await?;
    let inline = json!({"name": "search_done", "version": 1, "tasks": [{"name": "calc", "taskReferenceName": "calc",
        "type": "INLINE", "inputParameters": {"evaluatorType": "javascript", "expression": "1 + 1"}}]});
    post_json(a, "/api/metadata/workflow", &inline).await?.ok()?;

    // Three that wait for a worker (one then terminated), two that complete on their own.
    let mut waiting = Vec::new();
    for i in 1..=3 {
        let path = format!("/api/workflow/search_waits?correlationId=order-{i}");
        waiting.push(post_json(a, &path, &json!({"n": i})).await?.ok()?.body);
    }
    let mut done = Vec::new();
    for _ in 0..2 {
        let path = "/api/workflow/search_done?correlationId=batch";
        done.push(post_json(a, path, &json!({"colour": "Teal"})).await?.ok()?.body);
    }
    let url = format!("{}/api/workflow/{}?reason=enough", a.http_base(), waiting[2]);
    let code = client().delete(&url).send().await?.status().as_u16();
    ensure!(code == 200, "terminate answered {code}");

    // The other follower searches its own applied state: wait until it has applied all of that.
    let all = wait_until(secs(10), "five workflows, two completed and one terminated, on b", || async {
        let all = search(b, &[]).await?;
        let statuses: Vec<&str> =
            all["results"].as_array().context("results")?.iter().filter_map(|w| w["status"].as_str()).collect();
        let count = |s: &str| statuses.iter().filter(|x| **x == s).count();
        ensure!(all["totalHits"] == 5 && count("COMPLETED") == 2 && count("TERMINATED") == 1, "{all}");
        Ok(all)
    })
    .await?;

    // Newest first by default.
    let starts: Vec<&str> =
        all["results"].as_array().context("results")?.iter().filter_map(|w| w["startTime"].as_str()).collect();
    ensure!(starts.len() == 5 && starts.windows(2).all(|p| p[0] >= p[1]), "not newest first: {starts:?}");

    // The summary shape.
    let results = all["results"].as_array().context("results")?;
    let summary = |id: &str| results.iter().find(|w| w["workflowId"] == id).cloned().context("summary");
    let running = summary(&waiting[0])?;
    ensure!(running["workflowType"] == "search_waits" && running["version"] == 1, "{running}");
    ensure!(running["status"] == "RUNNING" && running["correlationId"] == "order-1", "{running}");
    ensure!(is_iso_utc(&running["startTime"]) && is_iso_utc(&running["updateTime"]), "{running}");
    ensure!(running.get("endTime").is_none() && running["executionTime"] == 0, "{running}");
    ensure!(
        serde_json::from_str::<Value>(running["input"].as_str().context("input")?)? == json!({"n": 1}),
        "{running}"
    );
    ensure!(running["output"] == "{}" && running["failedReferenceTaskNames"] == "", "{running}");
    ensure!(running["priority"] == 0 && running["taskToDomain"] == json!({}), "{running}");
    let completed = summary(&done[0])?;
    ensure!(completed["status"] == "COMPLETED" && is_iso_utc(&completed["endTime"]), "{completed}");
    ensure!(completed["executionTime"].as_u64().is_some(), "{completed}");
    let terminated = summary(&waiting[2])?;
    ensure!(terminated["status"] == "TERMINATED" && terminated["reasonForIncompletion"] == "enough", "{terminated}");

    // Query clauses, joined by AND.
    let hits = |r: &Value| -> Result<BTreeSet<String>> { Ok(ids(r)?.into_iter().collect()) };
    let set = |v: &[&String]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let r = search(b, &[("query", "workflowType = 'search_waits' AND status = RUNNING")]).await?;
    ensure!(r["totalHits"] == 2 && hits(&r)? == set(&[&waiting[0], &waiting[1]]), "{r}");
    let r = search(b, &[("query", "status IN (COMPLETED,TERMINATED)")]).await?;
    ensure!(hits(&r)? == set(&[&done[0], &done[1], &waiting[2]]), "{r}");
    let r = search(b, &[("query", "workflowType IN (search_done, nothing) and correlationId = \"batch\"")]).await?;
    ensure!(hits(&r)? == set(&[&done[0], &done[1]]), "{r}");
    let r = search(b, &[("query", &format!("workflowId = '{}'", waiting[1]))]).await?;
    ensure!(ids(&r)? == vec![waiting[1].clone()], "{r}");
    let r = search(b, &[("query", "startTime > 0 AND startTime < 4102444800000")]).await?;
    ensure!(r["totalHits"] == 5, "{r}");
    let r = search(b, &[("query", "startTime > 4102444800000")]).await?;
    ensure!(r["totalHits"] == 0 && r["results"] == json!([]), "{r}");

    // Free text: id, type, correlation id, input and output, case-insensitively; `*` is everything.
    let r = search(b, &[("freeText", "teal")]).await?;
    ensure!(hits(&r)? == set(&[&done[0], &done[1]]), "{r}");
    let r = search(b, &[("freeText", "ORDER-2")]).await?;
    ensure!(ids(&r)? == vec![waiting[1].clone()], "{r}");
    let r = search(b, &[("freeText", "*"), ("query", "status = RUNNING")]).await?;
    ensure!(r["totalHits"] == 2, "{r}");

    // Paging covers the whole list once; sorting by type puts search_done first.
    let mut paged = Vec::new();
    for start in ["0", "2", "4"] {
        let page = search(b, &[("start", start), ("size", "2")]).await?;
        ensure!(page["totalHits"] == 5, "{page}");
        paged.extend(ids(&page)?);
    }
    ensure!(paged == ids(&all)?, "pages {paged:?} differ from the whole {:?}", ids(&all)?);
    let r = search(b, &[("sort", "workflowType:ASC"), ("size", "5000")]).await?;
    let types: Vec<&str> =
        r["results"].as_array().context("results")?.iter().filter_map(|w| w["workflowType"].as_str()).collect();
    ensure!(types == ["search_done", "search_done", "search_waits", "search_waits", "search_waits"], "{types:?}");

    // What it cannot parse is refused with Conductor's error body, naming the clause.
    let e = refused(b, &[("query", "status = RUNNING AND colour = red")]).await?;
    let message = e["message"].as_str().context("message")?;
    ensure!(message.contains("'colour = red'") && message.contains("unknown field"), "{e}");
    let e = refused(b, &[("query", "status = SLEEPING")]).await?;
    ensure!(e["message"].as_str().is_some_and(|m| m.contains("SLEEPING")), "{e}");
    refused(b, &[("size", "-1")]).await?;
    refused(b, &[("start", "-5")]).await?;
    refused(b, &[("sort", "colour:ASC")]).await?;

    cluster.pass();
    Ok(())
}
