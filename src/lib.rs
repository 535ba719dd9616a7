//! Baton: a highly available workflow orchestrator. Several replicas keep the workflow state in a Raft log
//! (openraft) stored in RocksDB; the elected leader commits every change; any node serves any call.
//!
//! # Map of the modules
//!
//! - [`engine`]: the business semantics as a pure, deterministic function `apply(state, proposal)`. No I/O, no
//!   clock, no randomness: every replica applying the same log reaches the same state.
//! - [`storage`]: RocksDB: column families and keys, the Raft log store, the state machine (which calls the
//!   engine), snapshots, the read side.
//! - [`raft`]: openraft glue: type configuration, the peer network over gRPC (client and server), and the
//!   [`Proposer`](raft::proposer::Proposer) that gets a command committed from any node.
//! - [`runtime`]: hands ready tasks to workers under leases, fires timers, and evaluates user code, by proposing
//!   commands.
//! - [`sandbox`]: child processes of this binary that run user code (JavaScript, jq) under OS-enforced limits,
//!   for the leader's evaluator; apply never runs user code.
//! - [`api`]: what clients see: gRPC services, HTTP (status, health, Conductor REST), error mapping.
//! - [`config`]: the configuration tree, its layers and validation.
//! - [`node`]: the composition root: starts and stops one node.
//! - [`client`]: the Rust SDK (a `Client` and a `Worker` runner) over the public gRPC API.
//! - [`cli`]: the `baton` command's subcommands other than `server` (`up`, `cluster status`).
//! - [`chaos`]: `baton chaos`, a fault-injecting runner for a local three-node cluster, with invariant checks; a
//!   tool outside the server that uses only the public API.
//! - [`local_cluster`]: three `baton server` processes of this binary on one machine, for `chaos` and `bench`.
//! - [`bench`]: `baton bench`: replicated writes, workflow throughput and failover, measured from outside.
//! - [`metrics`]: the Prometheus metrics every layer records into, served at `/metrics`.
//! - [`pb`]: code generated from proto/.
//!
//! The dependency rule: everything points inward, toward the engine. The engine imports nothing of the others;
//! storage knows the engine but not Raft roles; raft knows storage's types but not business rules; api and cli
//! sit outside; only `node` wires them all.

pub mod api;
pub mod bench;
pub mod chaos;
pub mod cli;
pub mod client;
pub mod config;
pub mod engine;
pub mod local_cluster;
pub mod metrics;
pub mod node;
pub mod pb;
pub mod raft;
pub mod runtime;
pub mod sandbox;
pub mod storage;
