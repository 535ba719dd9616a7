//! The top-level docker-compose.yml, for real: three nodes in three containers on a compose network, the example
//! workers of examples/encode_and_deploy in two more, the definitions registered by the compose file's own
//! `definitions` service. Faults are Docker's: `docker kill` of the leader's container, and a partition made by
//! `docker network disconnect` of the next leader's container.
//!
//! The image is built first from the binary under test (`scripts/docker-image.sh --binary`), under a tag of this
//! run's own, so the test always runs the code it was built from and never replaces a user's `baton:local`. The
//! compose project name and the published host ports are this run's own too, so a user's running compose is left
//! alone. `docker compose down -v` and the image's removal happen in a `Drop` guard, on failure as well.
//!
//! Skipped, with the reason printed, where there is no Docker CLI, no reachable daemon or no Compose (v2 plugin or
//! v1 `docker-compose`), or when `SKIP_DOCKER_TESTS=1`. Where Docker is there, a failure to build the image fails
//! the test: CI on a Docker machine must not pass by skipping.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;

use support::*;

/// Repository root: the compose file, its config/ and examples/ mounts, and scripts/docker-image.sh live there.
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The node services of docker-compose.yml, by Raft node id (1-based).
const NODES: [&str; 3] = ["node1", "node2", "node3"];

/// A pass/fail line per phase and the timings, printed at the end (run with `--nocapture` to see them).
struct Timings(Vec<String>);

impl Timings {
    fn note(&mut self, line: String) {
        eprintln!("compose test: {line}");
        self.0.push(line);
    }
}

/// Runs `cmd`, returning its output; an error if it could not start.
fn run(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))
}

/// Runs `cmd` and fails unless it exits 0; returns its stdout, trimmed.
fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} exited with {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn docker(args: &[&str]) -> Command {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    cmd
}

/// Why this machine cannot run the test, or the Compose command to use (`docker compose` or `docker-compose`).
fn compose_command() -> std::result::Result<Vec<String>, String> {
    if std::env::var("SKIP_DOCKER_TESTS").is_ok_and(|v| v == "1") {
        return Err("SKIP_DOCKER_TESTS=1".into());
    }
    match run(&mut docker(&["version", "--format", "{{.Server.Version}}"])) {
        Err(e) => return Err(format!("no docker command ({e:#})")),
        Ok(out) if !out.status.success() => {
            return Err(format!("the Docker daemon is not reachable: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
        Ok(_) => {}
    }
    let plugin = run(&mut docker(&["compose", "version"]));
    if plugin.is_ok_and(|o| o.status.success()) {
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    let v1 = run(Command::new("docker-compose").arg("version"));
    if v1.is_ok_and(|o| o.status.success()) {
        return Ok(vec!["docker-compose".into()]);
    }
    Err("neither `docker compose` nor `docker-compose` is installed".into())
}

/// The host ports one node's container ports are published on.
#[derive(Clone, Copy, Debug)]
struct HostPorts {
    grpc: u16,
    http: u16,
}

/// One compose project started from docker-compose.yml. Dropping it prints the containers' logs if the test did
/// not [`Project::pass`], then takes the project down with its volumes and removes the test's image.
struct Project {
    compose: Vec<String>,
    name: String,
    image: String,
    ports: [HostPorts; 3],
    passed: bool,
}

impl Project {
    /// A `docker compose -p NAME -f docker-compose.yml ARGS` command with this project's image and ports.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..])
            .args(["-p", &self.name, "-f", "docker-compose.yml", "--project-directory", "."])
            .args(args)
            .current_dir(REPO)
            .env("DOCKER_BATON_IMAGE", &self.image);
        for (n, p) in self.ports.iter().enumerate() {
            cmd.env(format!("DOCKER_BATON_NODE{}_GRPC", n + 1), p.grpc.to_string());
            cmd.env(format!("DOCKER_BATON_NODE{}_HTTP", n + 1), p.http.to_string());
        }
        cmd
    }

    /// Base URL of node `id`'s HTTP API on the host.
    fn http(&self, id: u64) -> String {
        format!("http://127.0.0.1:{}", self.ports[id as usize - 1].http)
    }

    /// The container id of node `id`.
    fn container(&self, id: u64) -> Result<String> {
        let service = NODES[id as usize - 1];
        let out = run_ok(&mut self.command(&["ps", "-q", service]))?;
        let container = out.lines().next().unwrap_or("").trim().to_string();
        ensure!(!container.is_empty(), "compose has no container for {service}");
        Ok(container)
    }

    /// The compose network a container is attached to (`<project>_default`).
    fn network(&self, container: &str) -> Result<String> {
        let format = "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}\n{{end}}";
        let out = run_ok(&mut docker(&["inspect", "--format", format, container]))?;
        let networks: Vec<&str> = out.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        match networks.as_slice() {
            [one] => Ok(one.to_string()),
            other => bail!("expected the container on one network, found {other:?}"),
        }
    }

    /// Node `id`'s status over its published HTTP port.
    async fn status(&self, id: u64) -> Result<Status> {
        let reply = get(&self.http(id), "/api/cluster/status").await?.ok()?;
        serde_json::from_str(&reply.body).with_context(|| format!("status of n{id}: {}", reply.body))
    }

    /// Polls nodes `ids` until they all name the same leader, one of `ids`, which says it is the leader, in a
    /// term above `min_term`. Returns the leader's status.
    async fn agreed_leader(&self, ids: &[u64], min_term: u64, deadline: Instant) -> Result<Status> {
        wait_until(deadline, &format!("nodes {ids:?} to agree on a leader among them"), || async {
            let mut statuses = Vec::new();
            for &id in ids {
                statuses.push(self.status(id).await?);
            }
            let leader = statuses[0].leader_id.context("no leader known yet")?;
            ensure!(statuses.iter().all(|s| s.leader_id == Some(leader)), "not agreed: {}", summary(&statuses));
            let status = statuses
                .iter()
                .find(|s| s.node_id == leader)
                .with_context(|| format!("the leader n{leader} is not one of {ids:?}: {}", summary(&statuses)))?;
            ensure!(status.role == "leader", "n{leader} does not say it leads yet: {}", summary(&statuses));
            ensure!(status.term > min_term, "still the old term: {}", summary(&statuses));
            Ok(status.clone())
        })
        .await
    }

    /// Starts an `encode_and_deploy` workflow through node `via` and waits until it is COMPLETED with the output
    /// the two example scripts compute, which the compose workers must have run. Says how long the start and the
    /// whole took.
    async fn complete_workflow(&self, via: u64, file: &str, deadline: Instant) -> Result<String> {
        let started = Instant::now();
        let node = self.http(via);
        let id = wait_until(deadline, &format!("n{via} to start a workflow"), || async {
            let reply = post_json(&node, "/api/workflow/encode_and_deploy", &json!({"fileLocation": file})).await?;
            Ok(reply.ok()?.body.trim().trim_matches('"').to_string())
        })
        .await?;
        let start_took = started.elapsed();
        let expected = format!("https://cdn.example.com/{}.encoded.mp4", file.rsplit('/').next().unwrap_or(file));
        wait_until(deadline, &format!("workflow {id} to complete"), || async {
            let wf = get(&node, &format!("/api/workflow/{id}?includeTasks=false")).await?.ok()?.json()?;
            match wf["status"].as_str() {
                Some("COMPLETED") => {
                    let url = wf["output"]["cdn_url"].as_str().unwrap_or_default();
                    if url == expected {
                        Ok(())
                    } else {
                        Err(fatal(format!(
                            "workflow {id} completed with {}, expected cdn_url {expected}",
                            wf["output"]
                        )))
                    }
                }
                Some("RUNNING") | Some("PAUSED") => bail!("still {}", wf["status"]),
                other => Err(fatal(format!("workflow {id} ended {other:?}: {wf}"))),
            }
        })
        .await?;
        Ok(format!("{:.1?} (started in {start_took:.1?})", started.elapsed()))
    }

    /// Polls nodes `ids` until they report the same `last_applied` and `state_hash`.
    async fn converged(&self, ids: &[u64], deadline: Instant) -> Result<Vec<Status>> {
        wait_until(deadline, &format!("nodes {ids:?} to converge"), || async {
            let mut statuses = Vec::new();
            for &id in ids {
                statuses.push(self.status(id).await?);
            }
            let first = &statuses[0];
            ensure!(
                statuses.iter().all(|s| s.last_applied == first.last_applied && s.state_hash == first.state_hash),
                "not converged: {}",
                summary(&statuses)
            );
            Ok(statuses)
        })
        .await
    }

    fn pass(mut self) {
        self.passed = true;
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if !self.passed {
            if let Ok(out) = run(&mut self.command(&["logs", "--no-color", "--tail", "60"])) {
                eprintln!("compose test failed; the containers' last log lines:");
                eprintln!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            }
        }
        match run(&mut self.command(&["down", "-v", "--remove-orphans", "-t", "5"])) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("compose down failed: {}", String::from_utf8_lossy(&out.stderr)),
            Err(e) => eprintln!("compose down failed: {e:#}"),
        }
        let _ = run(&mut docker(&["image", "rm", "--force", &self.image]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_cluster_survives_leader_kill_and_partition() -> Result<()> {
    let compose = match compose_command() {
        Ok(compose) => compose,
        Err(reason) => {
            eprintln!("SKIPPED compose_cluster_survives_leader_kill_and_partition: {reason}");
            return Ok(());
        }
    };
    let mut timings = Timings(Vec::new());

    // Names of this run's own: a compose project name is lower-case letters and digits here.
    let unique = format!(
        "{}{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() % 1_000_000
    );
    let name = format!("batontest{unique}");
    let image = format!("baton-compose-test:{unique}");
    let ports = free_ports(6)?;
    let ports = [0, 1, 2].map(|n| HostPorts { grpc: ports[2 * n], http: ports[2 * n + 1] });

    let t = Instant::now();
    run_ok(Command::new("bash").current_dir(REPO).args(["scripts/docker-image.sh", "--binary", BIN, "--tag", &image]))
        .context("building the test image (Docker is available, so this is a failure, not a skip)")?;
    timings.note(format!("image {image} built in {:.1?}", t.elapsed()));

    let project = Project { compose, name, image, ports, passed: false };
    let t = Instant::now();
    run_ok(&mut project.command(&["up", "-d", "--no-build"])).context("compose up")?;
    let all = [1, 2, 3];
    let first = project.agreed_leader(&all, 0, secs(90)).await?;
    timings.note(format!("compose up to an agreed leader (n{}): {:.1?}", first.node_id, t.elapsed()));

    // The compose file's `definitions` service registers the example; wait for it rather than register it here.
    wait_until(secs(90), "the definitions service to register encode_and_deploy", || async {
        get(&project.http(first.node_id), "/api/metadata/workflow/encode_and_deploy").await?.ok()
    })
    .await?;
    let took = project.complete_workflow(1, "s3://in/first.mov", secs(60)).await?;
    timings.note(format!("first workflow completed by the compose workers in {took}"));

    // 1. Kill the leader's container.
    let killed = first.node_id;
    let killed_container = project.container(killed)?;
    let survivors: Vec<u64> = all.iter().copied().filter(|&id| id != killed).collect();
    let t = Instant::now();
    run_ok(&mut docker(&["kill", &killed_container]))?;
    let command_took = t.elapsed();
    let second = project.agreed_leader(&survivors, first.term, secs(30)).await?;
    timings.note(format!(
        "docker kill n{killed} -> n{} leads (term {}) {:.2?} after the kill began (the command took {command_took:.2?})",
        second.node_id,
        second.term,
        t.elapsed()
    ));
    let took = project.complete_workflow(survivors[0], "s3://in/after-kill.mov", secs(60)).await?;
    timings.note(format!("workflow after the kill completed in {took}"));

    // Bring the killed node back (a partition of the next leader needs its vote for a majority) and let it catch up.
    run_ok(&mut docker(&["start", &killed_container]))?;
    let t = Instant::now();
    project.agreed_leader(&all, first.term, secs(60)).await?;
    project.converged(&all, secs(60)).await?;
    timings.note(format!("n{killed} restarted and caught up in {:.1?}", t.elapsed()));

    // 2. Partition the current leader: disconnect its container from the compose network.
    let current = project.agreed_leader(&all, 0, secs(30)).await?;
    let isolated = current.node_id;
    let isolated_container = project.container(isolated)?;
    let network = project.network(&isolated_container)?;
    let majority: Vec<u64> = all.iter().copied().filter(|&id| id != isolated).collect();
    let t = Instant::now();
    run_ok(&mut docker(&["network", "disconnect", &network, &isolated_container]))?;
    let command_took = t.elapsed();
    let third = project.agreed_leader(&majority, current.term, secs(30)).await?;
    timings.note(format!(
        "network disconnect of n{isolated} -> n{} leads (term {}) {:.2?} after the disconnect began (the command \
         took {command_took:.2?})",
        third.node_id,
        third.term,
        t.elapsed()
    ));
    let took = project.complete_workflow(majority[0], "s3://in/during-partition.mov", secs(60)).await?;
    timings.note(format!("workflow during the partition completed in {took}"));
    let took = project.complete_workflow(majority[1], "s3://in/during-partition-2.mov", secs(60)).await?;
    timings.note(format!("second workflow during the partition completed in {took}"));

    // 3. Heal: reconnect under its service name, so the others' DNS lookups of it resolve again.
    let service = NODES[isolated as usize - 1];
    run_ok(&mut docker(&["network", "connect", "--alias", service, &network, &isolated_container]))?;
    let t = Instant::now();
    project.agreed_leader(&all, 0, secs(60)).await?;
    let statuses = project.converged(&all, secs(60)).await?;
    timings.note(format!(
        "network connect of n{isolated} -> all three converged in {:.1?}: {}",
        t.elapsed(),
        summary(&statuses)
    ));
    let took = project.complete_workflow(isolated, "s3://in/after-heal.mov", secs(60)).await?;
    timings.note(format!("workflow through the healed n{isolated} completed in {took}"));

    eprintln!("compose test timings:\n  {}", timings.0.join("\n  "));
    project.pass();
    Ok(())
}
