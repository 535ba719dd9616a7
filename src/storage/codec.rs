//! Encoding of everything Baton persists or sends between peers: MessagePack (rmp-serde, named fields) behind a
//! one-byte format version.
//!
//! Named fields cost some bytes but let a newer version read an older record (added fields default). The version
//! byte makes an incompatible change detectable: a reader refuses a version it does not know instead of
//! misreading it. See docs/adr/0001-log-and-wire-format.md.
//!
//! Workflow records, rewritten whole on every command that changes the workflow, are stored compressed
//! ([`encode_compressed`], format [`FORMAT_V1_LZ4`]): the same MessagePack, LZ4-compressed, so the names that make
//! up about half of a task's bytes are written (to the WAL, the memtable, flushes and snapshots) about once per
//! record. [`decode`] reads both formats.
//!
//! Bytes from the network go through [`decode_plain`] instead: only the plain format, nested no deeper than the
//! caller says, so that a peer's message can neither make this node decompress nor recurse until the stack ends.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The current format version, the first byte of every encoded record.
pub const FORMAT_V1: u8 = 1;
/// Format version 1's MessagePack, LZ4-compressed (block format, the decompressed length first, 32-bit LE).
pub const FORMAT_V1_LZ4: u8 = 2;

/// Largest decompressed record [`decode`] accepts: a corrupt length cannot make it allocate more.
pub const MAX_DECOMPRESSED_BYTES: usize = 1 << 30;

/// Most bytes one byte of an LZ4 block decompresses to: a match's length grows by at most 255 per byte of input
/// (its length extension bytes). A record declaring more than this many times its compressed length is corrupt,
/// so a few bytes cannot make [`decode`] allocate a gigabyte.
const LZ4_MAX_RATIO: usize = 255;

/// Decoding failed: unknown version, truncated or corrupt bytes.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Serialisation failed (a bug: every persisted type must be serialisable).
    #[error("encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The bytes do not decode as the expected type.
    #[error("decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// The record was written by a format this version does not know.
    #[error("unknown format version {0} (this build reads versions {FORMAT_V1} and {FORMAT_V1_LZ4})")]
    UnknownVersion(u8),
    /// A record too large to be stored compressed (its length must fit in 32 bits).
    #[error("a record of {0} bytes is too large to store")]
    TooLarge(usize),
    /// A compressed record does not decompress.
    #[error("decompress: {0}")]
    Decompress(String),
    /// An empty record.
    #[error("empty record")]
    Empty,
    /// [`decode_plain`] met another format than [`FORMAT_V1`].
    #[error("format version {0} is not accepted here (only {FORMAT_V1}, uncompressed)")]
    NotPlain(u8),
    /// [`decode_plain`] met arrays, maps or extensions nested deeper than it allows.
    #[error("nested deeper than {0} levels")]
    TooDeep(usize),
}

/// Encodes `value` as version byte + MessagePack.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_V1];
    rmp_serde::encode::write_named(&mut out, value)?;
    Ok(out)
}

/// Encodes `value` as [`FORMAT_V1_LZ4`]: [`encode`]'s MessagePack, compressed. Deterministic: the same value gives
/// the same bytes (the compressor is pinned), as every replica must store the same bytes.
pub fn encode_compressed<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut plain = Vec::with_capacity(1024);
    rmp_serde::encode::write_named(&mut plain, value)?;
    let length = u32::try_from(plain.len()).map_err(|_| CodecError::TooLarge(plain.len()))?;
    // Compressed straight into the record, after the version byte and the length.
    let mut out = vec![0; 1 + 4 + lz4_flex::block::get_maximum_output_size(plain.len())];
    out[0] = FORMAT_V1_LZ4;
    out[1..5].copy_from_slice(&length.to_le_bytes());
    let written = lz4_flex::block::compress_into(&plain, &mut out[5..])
        .expect("the output has room for LZ4's largest output for this input");
    out.truncate(5 + written);
    Ok(out)
}

/// The length of [`encode`]'s output for `value`, counted without keeping the bytes.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, CodecError> {
    let mut counter = ByteCounter(1);
    rmp_serde::encode::write_named(&mut counter, value)?;
    Ok(counter.0)
}

/// A writer that only counts what is written to it.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decodes what [`encode`] wrote.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_V1, rest)) => Ok(rmp_serde::from_slice(rest)?),
        Some((&FORMAT_V1_LZ4, rest)) => Ok(rmp_serde::from_slice(&decompress(rest)?)?),
        Some((&other, _)) => Err(CodecError::UnknownVersion(other)),
    }
}

/// Decodes [`encode`]'s output from a source that is not trusted (a peer's message): only [`FORMAT_V1`], and
/// arrays, maps and MessagePack extensions nested at most `max_depth` levels deep. rmp-serde recurses once per
/// level (1024 levels by default, more than a 2 MiB stack holds for some of Baton's types), so the caller picks a
/// depth whose recursion fits the thread it decodes on.
pub fn decode_plain<T: DeserializeOwned>(bytes: &[u8], max_depth: usize) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_V1, rest)) => {
            let mut deserializer = rmp_serde::Deserializer::from_read_ref(rest);
            // rmp-serde counts the outermost level too and refuses on reaching its limit.
            deserializer.set_max_depth(max_depth.saturating_add(1));
            T::deserialize(&mut deserializer).map_err(|e| match e {
                rmp_serde::decode::Error::DepthLimitExceeded => CodecError::TooDeep(max_depth),
                e => CodecError::Decode(e),
            })
        }
        Some((&other, _)) => Err(CodecError::NotPlain(other)),
    }
}

/// The length of the record `bytes` uncompressed (as [`encode`] would have written it), without decoding it.
pub fn plain_len(bytes: &[u8]) -> usize {
    match bytes.split_first() {
        Some((&FORMAT_V1_LZ4, rest)) if rest.len() >= 4 => {
            1 + u32::from_le_bytes(rest[..4].try_into().expect("four bytes")) as usize
        }
        _ => bytes.len(),
    }
}

/// The MessagePack inside a [`FORMAT_V1_LZ4`] record (after its version byte).
fn decompress(compressed: &[u8]) -> Result<Vec<u8>, CodecError> {
    let length = compressed.get(..4).ok_or_else(|| CodecError::Decompress("no length".into()))?;
    let length = u32::from_le_bytes(length.try_into().expect("four bytes")) as usize;
    let most = MAX_DECOMPRESSED_BYTES.min(compressed.len().saturating_sub(4).saturating_mul(LZ4_MAX_RATIO));
    if length > most {
        return Err(CodecError::Decompress(format!(
            "a decompressed length of {length} bytes from {} compressed (at most {most} accepted)",
            compressed.len() - 4
        )));
    }
    lz4_flex::decompress_size_prepended(compressed).map_err(|e| CodecError::Decompress(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_versions() {
        let value = serde_json::json!({"a": [1, 2, {"b": null}], "c": "text"});
        let bytes = encode(&value).expect("encodes");
        assert_eq!(decode::<serde_json::Value>(&bytes).expect("decodes"), value);
        let mut future = bytes.clone();
        future[0] = 9;
        assert!(matches!(decode::<serde_json::Value>(&future), Err(CodecError::UnknownVersion(9))));
        assert!(matches!(decode::<serde_json::Value>(&[]), Err(CodecError::Empty)));
        assert_eq!(encoded_len(&value).expect("counts"), bytes.len());
    }

    #[test]
    fn compressed_records_decode_like_plain_ones_and_shrink_repeated_names() {
        let task = serde_json::json!({"referenceTaskName": "a", "workflowInstanceId": "wf-1", "scheduledTime": 17});
        let value = serde_json::json!({"tasks": vec![task; 12], "input": {"n": 1}});
        let plain = encode(&value).expect("encodes");
        let compressed = encode_compressed(&value).expect("encodes");
        assert_eq!(compressed[0], FORMAT_V1_LZ4);
        assert_eq!(compressed[1..], lz4_flex::compress_prepend_size(&plain[1..]), "LZ4's size-prepended block format");
        assert!(compressed.len() * 3 < plain.len(), "{} bytes compressed, {} plain", compressed.len(), plain.len());
        assert_eq!(decode::<serde_json::Value>(&compressed).expect("decodes"), value);
        assert_eq!(encode_compressed(&value).expect("encodes"), compressed, "the same value, the same bytes");
        assert_eq!(plain_len(&compressed), plain.len());
        assert_eq!(plain_len(&plain), plain.len());
        // An empty value compresses too (LZ4 stores short input literally).
        let empty = encode_compressed(&serde_json::json!({})).expect("encodes");
        assert_eq!(decode::<serde_json::Value>(&empty).expect("decodes"), serde_json::json!({}));
    }

    #[test]
    fn corrupt_compressed_records_are_refused_not_misread() {
        let value = serde_json::json!({"name": "x".repeat(300)});
        let good = encode_compressed(&value).expect("encodes");
        let mut huge = good.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            matches!(decode::<serde_json::Value>(&huge), Err(CodecError::Decompress(why)) if why.contains("at most"))
        );
        let truncated = &good[..good.len() - 3];
        assert!(decode::<serde_json::Value>(truncated).is_err());
        assert!(matches!(decode::<serde_json::Value>(&[FORMAT_V1_LZ4, 1]), Err(CodecError::Decompress(_))));
        let mut short = good.clone();
        short[1..5].copy_from_slice(&2u32.to_le_bytes());
        assert!(decode::<serde_json::Value>(&short).is_err(), "a wrong length is an error, not a short record");
    }

    #[test]
    fn a_declared_length_beyond_lz4s_ratio_is_refused_before_allocating() {
        // Six bytes declaring 1 GiB: refused by the ratio, without a gigabyte allocated to find out.
        let gib = [FORMAT_V1_LZ4, 0, 0, 0, 0x40, 0x00];
        let err = decode::<serde_json::Value>(&gib).expect_err("refused");
        assert!(err.to_string().contains("1073741824 bytes from 1 compressed (at most 255 accepted)"), "{err}");
        // A record that really compresses 255 to 1 still decodes: the bound is LZ4's, not a guess.
        let zeros = serde_json::json!({"z": "0".repeat(1 << 20)});
        let compressed = encode_compressed(&zeros).expect("encodes");
        assert!(compressed.len() * 200 < plain_len(&compressed), "{} bytes compressed", compressed.len());
        assert_eq!(decode::<serde_json::Value>(&compressed).expect("decodes"), zeros);
    }

    /// `depth` arrays, one inside the other, around an empty one, encoded.
    fn nested_arrays(depth: usize) -> Vec<u8> {
        let mut bytes = vec![FORMAT_V1];
        bytes.extend(std::iter::repeat_n(0x91, depth - 1)); // fixarray of one element
        bytes.push(0x90); // fixarray of none
        bytes
    }

    #[test]
    fn plain_decoding_bounds_nesting_and_refuses_compressed_records() {
        assert!(decode_plain::<serde_json::Value>(&nested_arrays(64), 64).is_ok());
        assert!(matches!(decode_plain::<serde_json::Value>(&nested_arrays(65), 64), Err(CodecError::TooDeep(64))));
        // 100,000 levels: refused at the limit, not followed until the stack ends.
        let err = decode_plain::<serde_json::Value>(&nested_arrays(100_000), 64).expect_err("refused");
        assert_eq!(err.to_string(), "nested deeper than 64 levels");
        let compressed = encode_compressed(&serde_json::json!({"a": 1})).expect("encodes");
        assert!(matches!(decode_plain::<serde_json::Value>(&compressed, 64), Err(CodecError::NotPlain(FORMAT_V1_LZ4))));
        assert!(matches!(decode_plain::<serde_json::Value>(&[], 64), Err(CodecError::Empty)));
        let value = serde_json::json!({"a": [1, {"b": "c"}]});
        assert_eq!(decode_plain::<serde_json::Value>(&encode(&value).expect("encodes"), 64).expect("decodes"), value);
    }
}
