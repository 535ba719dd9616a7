//! Code generated from proto/ by build.rs: the public API (`baton.v1`) and the internal peer protocol
//! (`baton.raft.v1`).
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// The public API, `proto/baton.proto`.
pub mod v1 {
    tonic::include_proto!("baton.v1");
}

/// The internal Raft peer protocol, `proto/raft.proto`.
pub mod raft {
    tonic::include_proto!("baton.raft.v1");
}

/// Descriptors of every service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("baton_descriptor");
