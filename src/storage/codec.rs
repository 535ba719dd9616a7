//! Encoding of everything Baton persists or sends between peers: MessagePack (rmp-serde, named fields) behind a
//! one-byte format version.
//!
//! Named fields cost some bytes but let a newer version read an older record (added fields default). The version
//! byte makes an incompatible change detectable: a reader refuses a version it does not know instead of
//! misreading it. See docs/adr/0001-log-and-wire-format.md.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The current format version, the first byte of every encoded record.
pub const FORMAT_V1: u8 = 1;

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
    #[error("unknown format version {0} (this build reads version {FORMAT_V1})")]
    UnknownVersion(u8),
    /// An empty record.
    #[error("empty record")]
    Empty,
}

/// Encodes `value` as version byte + MessagePack.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_V1];
    rmp_serde::encode::write_named(&mut out, value)?;
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
        Some((&other, _)) => Err(CodecError::UnknownVersion(other)),
    }
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
}
