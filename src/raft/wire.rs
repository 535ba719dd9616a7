//! Packing openraft's and Baton's peer messages into the `RaftMessage` envelope of proto/raft.proto.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Status;

use crate::pb::raft::RaftMessage;
use crate::storage::codec;

/// `RaftMessage.format` for payloads encoded with [`codec`] version 1 (MessagePack).
pub const FORMAT_MSGPACK_V1: u32 = 1;

/// Wraps `value` for sending from a member of `cluster_id`.
pub fn pack<T: Serialize>(cluster_id: &str, value: &T) -> Result<RaftMessage, Status> {
    let payload = codec::encode(value).map_err(|e| Status::internal(format!("encode peer message: {e}")))?;
    Ok(RaftMessage { cluster_id: cluster_id.to_string(), format: FORMAT_MSGPACK_V1, payload })
}

/// Unwraps a message, refusing one from another cluster or in a format this build does not read.
pub fn unpack<T: DeserializeOwned>(cluster_id: &str, message: &RaftMessage) -> Result<T, Status> {
    if message.cluster_id != cluster_id {
        return Err(Status::permission_denied(format!(
            "peer belongs to cluster '{}', this node to '{cluster_id}'",
            message.cluster_id
        )));
    }
    if message.format != FORMAT_MSGPACK_V1 {
        return Err(Status::invalid_argument(format!(
            "peer message format {} is not understood (this build reads {FORMAT_MSGPACK_V1})",
            message.format
        )));
    }
    codec::decode(&message.payload).map_err(|e| Status::invalid_argument(format!("decode peer message: {e}")))
}
