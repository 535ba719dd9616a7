//! Packing openraft's and Baton's peer messages into the `RaftMessage` envelope of proto/raft.proto, and reading
//! what else a peer's call carries (its `grpc-timeout`).
//!
//! Everything here reads bytes from the network, so every bound is enforced, not assumed: a payload is decoded
//! only in the plain format and only to a fixed nesting depth ([`MAX_DEPTH`]), and a timeout only as gRPC spells
//! it (at most 8 digits). A message that breaks one is refused with `INVALID_ARGUMENT` saying which.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Status;

use crate::pb::raft::RaftMessage;
use crate::storage::codec;

/// `RaftMessage.format` for payloads encoded with [`codec`] version 1 (MessagePack).
pub const FORMAT_MSGPACK_V1: u32 = 1;

/// Deepest nesting (arrays and maps) a peer message's payload may have. rmp-serde recurses once per level, and a
/// few kilobytes of stack each for some types (a batch of commands in a batch...): its own default of 1024 levels
/// overflowed a 2 MiB Tokio worker's stack, which aborts the process. Legitimate messages nest far less: their
/// documents arrive as JSON, which serde_json refuses beyond 128 levels, inside a few levels of envelope.
pub const MAX_DEPTH: usize = 256;

/// Deepest nesting a forwarded command or poll may have: less than [`MAX_DEPTH`] by more than the envelope the
/// leader puts around a command (an entry of an AppendEntries request, a group commit's batch), so that whatever
/// the leader accepts into its log every follower can decode.
pub const MAX_FORWARDED_DEPTH: usize = 192;

/// Wraps `value` for sending from a member of `cluster_id`.
pub fn pack<T: Serialize>(cluster_id: &str, value: &T) -> Result<RaftMessage, Status> {
    let payload = codec::encode(value).map_err(|e| Status::internal(format!("encode peer message: {e}")))?;
    Ok(RaftMessage { cluster_id: cluster_id.to_string(), format: FORMAT_MSGPACK_V1, payload })
}

/// Unwraps a message, refusing one from another cluster, in a format this build does not read, nested deeper than
/// [`MAX_DEPTH`], or not of the type the method expects.
pub fn unpack<T: DeserializeOwned>(cluster_id: &str, message: &RaftMessage) -> Result<T, Status> {
    unpack_at_most(cluster_id, message, MAX_DEPTH)
}

/// [`unpack`] with another depth bound ([`MAX_FORWARDED_DEPTH`]).
pub fn unpack_at_most<T: DeserializeOwned>(
    cluster_id: &str,
    message: &RaftMessage,
    max_depth: usize,
) -> Result<T, Status> {
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
    codec::decode_plain(&message.payload, max_depth).map_err(|e| {
        Status::invalid_argument(format!("peer message payload does not decode as {}: {e}", short_type_name::<T>()))
    })
}

/// `T`'s name without its module path, for error messages (`AppendEntriesRequest<TypeConfig>`).
fn short_type_name<T>() -> String {
    let full = std::any::type_name::<T>();
    let mut out = String::with_capacity(full.len());
    for piece in full.split_inclusive(['<', '>', ',', ' ']) {
        out.push_str(piece.rsplit("::").next().unwrap_or(piece));
    }
    out
}

/// Longest `grpc-timeout` value gRPC allows: "TimeoutValue → {positive integer as ASCII string of at most 8
/// digits}" (PROTOCOL-HTTP2.md); so even hours cannot overflow.
const MAX_TIMEOUT_DIGITS: usize = 8;

/// Parses a `grpc-timeout` header value ("250m", "5S", ...) as gRPC defines it: 1 to 8 digits and a unit (H, M,
/// S, m, u, n). Err says what is wrong with it.
pub fn parse_grpc_timeout(value: &str) -> Result<Duration, String> {
    let Some(unit) = value.chars().last() else { return Err("empty".into()) };
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > MAX_TIMEOUT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{value:?} is not 1 to {MAX_TIMEOUT_DIGITS} digits and a unit"));
    }
    let n: u64 = digits.parse().map_err(|e| format!("{value:?}: {e}"))?;
    Ok(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return Err(format!("{value:?} has no unit H, M, S, m, u or n")),
    })
}

#[cfg(test)]
mod tests {
    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    use openraft::{CommittedLeaderId, EntryPayload, Vote};

    use super::*;
    use crate::engine::{Command, Proposal};
    use crate::raft::{Entry, LogId, TypeConfig};

    const CLUSTER: &str = "c";

    /// An AppendEntries request carrying one entry, `command`.
    fn append(command: Command) -> AppendEntriesRequest<TypeConfig> {
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 5),
            payload: EntryPayload::Normal(Proposal { at_ms: 1, command }),
        };
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: vec![entry],
            leader_commit: None,
        }
    }

    /// A batch in a batch ... `levels` deep: `levels` levels of nesting.
    fn nested_batch(levels: usize) -> Command {
        (1..levels).fold(Command::Batch(Vec::new()), |inner, _| Command::Batch(vec![inner]))
    }

    /// An AppendEntries request whose command is `levels` batches deep, as a message, built from bytes: a value that
    /// deep could not even be dropped without recursing as deep.
    fn append_nested_bytes(levels: usize) -> RaftMessage {
        let mut message = pack(CLUSTER, &append(Command::Batch(Vec::new()))).expect("packs");
        let empty = rmp_serde::to_vec_named(&Command::Batch(Vec::new())).expect("encodes");
        let (variant, _) = empty.split_at(empty.len() - 1);
        let mut deep = Vec::new();
        for _ in 1..levels {
            deep.extend_from_slice(variant);
            deep.push(0x91); // an array of one command
        }
        deep.extend_from_slice(&empty);
        let at = message.payload.windows(empty.len()).position(|w| w == empty).expect("the empty batch is there");
        message.payload.splice(at..at + empty.len(), deep);
        message
    }

    /// Runs `f` on a thread with half a Tokio worker's stack (2 MiB) in an optimised build, where the bound must
    /// hold with room to spare; debug builds use several times more stack per level.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let stack_bytes = if cfg!(debug_assertions) { 16 << 20 } else { 1 << 20 };
        let thread = std::thread::Builder::new().stack_size(stack_bytes).spawn(f).expect("spawns");
        thread.join().expect("decodes without panicking")
    }

    #[test]
    fn messages_nested_to_the_bound_decode_on_a_small_stack_and_deeper_ones_are_refused() {
        // An AppendEntries request, its entries, an entry and its proposal: four levels around the command.
        let deepest = append_nested_bytes(MAX_DEPTH - 4);
        let decoded = on_small_stack(move || unpack::<AppendEntriesRequest<TypeConfig>>(CLUSTER, &deepest));
        assert!(decoded.is_ok(), "{decoded:?}");
        for levels in [MAX_DEPTH - 3, 100_000] {
            let message = append_nested_bytes(levels);
            let status = on_small_stack(move || unpack::<AppendEntriesRequest<TypeConfig>>(CLUSTER, &message))
                .expect_err("too deep");
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().ends_with(&format!("nested deeper than {MAX_DEPTH} levels")), "{status:?}");
        }
    }

    #[test]
    fn whatever_a_leader_accepts_from_a_forward_its_followers_decode() {
        let forwarded = pack(CLUSTER, &nested_batch(MAX_FORWARDED_DEPTH)).expect("packs");
        let command: Command = unpack_at_most(CLUSTER, &forwarded, MAX_FORWARDED_DEPTH).expect("accepted");
        // The leader's group commit puts it in a batch, in an entry of an AppendEntries request.
        let replicated = pack(CLUSTER, &append(Command::Batch(vec![command]))).expect("packs");
        assert!(unpack::<AppendEntriesRequest<TypeConfig>>(CLUSTER, &replicated).is_ok());
        let deeper = pack(CLUSTER, &nested_batch(MAX_FORWARDED_DEPTH + 1)).expect("packs");
        assert!(unpack_at_most::<Command>(CLUSTER, &deeper, MAX_FORWARDED_DEPTH).is_err());
    }

    #[test]
    fn a_payload_of_another_type_or_format_is_an_invalid_argument_naming_the_type() {
        let vote = VoteRequest::<u64>::new(Vote::new(3, 2), None);
        let message = pack(CLUSTER, &vote).expect("packs");
        let status = unpack::<AppendEntriesRequest<TypeConfig>>(CLUSTER, &message).expect_err("not an append");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("does not decode as AppendEntriesRequest<TypeConfig>"), "{status:?}");
        // LZ4 declaring 1 GiB: peers never compress, so it is refused before any decompression.
        let lz4 = RaftMessage { payload: vec![codec::FORMAT_V1_LZ4, 0, 0, 0, 0x40, 0], ..message.clone() };
        let status = unpack::<Command>(CLUSTER, &lz4).expect_err("compressed");
        assert!(status.message().contains("format version 2 is not accepted here"), "{status:?}");
        let empty = RaftMessage { payload: Vec::new(), ..message.clone() };
        assert_eq!(unpack::<Command>(CLUSTER, &empty).expect_err("empty").code(), tonic::Code::InvalidArgument);
        let other = RaftMessage { cluster_id: "other".into(), ..message };
        assert_eq!(unpack::<Command>(CLUSTER, &other).expect_err("foreign").code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn grpc_timeouts_parse_as_grpc_spells_them_and_nothing_else() {
        assert_eq!(parse_grpc_timeout("250m"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("5S"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("99999999H"), Ok(Duration::from_secs(99_999_999 * 3600)));
        // 20 and 19 digits (the second used to overflow the deadline and panic), signs, no unit, non-ASCII.
        for bad in
            ["99999999999999999999S", "9999999999999999999S", "123456789n", "-5S", "+5S", "5", "S", "", "5s", "5é"]
        {
            assert!(parse_grpc_timeout(bad).is_err(), "{bad:?}");
        }
    }
}
