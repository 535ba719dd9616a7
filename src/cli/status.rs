//! `baton cluster status`: every member's role, term, leader, log and apply indexes, as a table.

use std::time::Duration;

use comfy_table::{presets, Table};

use crate::api::status::{self, NodeStatus};

/// How long one node may take to answer a status request.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one node may take to answer a status request that scans its whole state.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);

/// One node's status, or why it could not be had.
pub type Reply = Result<NodeStatus, String>;

/// Asks the node at `grpc_addr` for its status; with `verify`, the node also recomputes its state hash from a full
/// scan and answers an error if it disagrees with the running one.
pub async fn fetch(grpc_addr: &str, verify: bool) -> Reply {
    status::fetch(grpc_addr, verify, if verify { VERIFY_TIMEOUT } else { STATUS_TIMEOUT }).await
}

/// Asks every member: the members listed by the first of `seeds` that answers, else the seeds themselves.
pub async fn fetch_all(seeds: &[String], verify: bool) -> Vec<(String, Reply)> {
    let mut members = None;
    for seed in seeds {
        if let Ok(status) = fetch(seed, false).await {
            members = Some(status.members.into_iter().map(|m| m.grpc_addr).collect::<Vec<_>>());
            break;
        }
    }
    let addrs = members.unwrap_or_else(|| seeds.to_vec());
    let replies = futures::future::join_all(addrs.iter().map(|a| fetch(a, verify))).await;
    addrs.into_iter().zip(replies).collect()
}

/// Renders replies as a table for people.
pub fn render(replies: &[(String, Reply)]) -> String {
    let mut table = Table::new();
    table.load_preset(presets::UTF8_BORDERS_ONLY);
    table.set_header([
        "node",
        "role",
        "term",
        "leader",
        "last log",
        "committed",
        "applied",
        "state hash",
        "gRPC",
        "HTTP",
    ]);
    for (addr, reply) in replies {
        match reply {
            Ok(s) => {
                let http = s.members.iter().find(|m| m.id == s.node_id).map_or("", |m| m.http_addr.as_str());
                table.add_row([
                    s.node_id.to_string(),
                    s.role.clone(),
                    s.term.to_string(),
                    s.leader_id.map_or("-".to_string(), |l| l.to_string()),
                    s.last_log_index.to_string(),
                    s.committed_index.to_string(),
                    s.last_applied.to_string(),
                    s.state_hash.chars().take(12).collect(),
                    addr.clone(),
                    http.to_string(),
                ]);
            }
            Err(e) => {
                table.add_row(["?", e.as_str(), "", "", "", "", "", "", addr.as_str(), ""]);
            }
        }
    }
    table.to_string()
}
