//! The API every node serves: public gRPC services ([`grpc`], [`grpc_workflows`]; every call counted by
//! [`grpc_metrics`]), HTTP ([`http`]: status, health, Conductor's REST; [`http_tasks`]: its task endpoints;
//! [`search`]: its workflow search; [`http_cluster`]: every member's status in one call; [`http_ui`]: the web UI),
//! the operations they share ([`metadata`], [`status`]), query-string parsing as Conductor does it ([`query`]) and
//! the one error type with its wire mappings ([`error`]). Any node accepts any call; writes go through the
//! [`Proposer`](crate::raft::proposer::Proposer), which forwards to the leader.

pub mod error;
pub mod gateway;
pub mod grpc;
pub mod grpc_metrics;
pub mod grpc_workflows;
pub mod http;
pub mod http_cluster;
pub mod http_tasks;
pub mod http_ui;
pub mod metadata;
pub mod query;
pub mod search;
pub mod status;
pub mod workflows;
