//! The current snapshot as a file beside the RocksDB files: `<data_dir>/snapshots/current.snap`.
//!
//! A snapshot is the whole state (tens of megabytes once workflows pile up), built every `logs_since_last` entries.
//! Kept as one RocksDB value it went through the WAL and the memtable and was compacted again and again; as a file
//! it is written once: to `current.snap.tmp`, fsynced, renamed over `current.snap`, and the directory fsynced, so
//! a crash leaves the old snapshot or the new one, never a torn one.
//!
//! Layout: the magic `BATONSNP`, a format byte (1), the metadata's length (u32, big-endian) and the metadata
//! (codec-encoded [`SnapshotMeta`]), the data's length (u64, big-endian) and the data. The lengths must account for
//! the whole file: a short or long file is refused as corrupt rather than half-read.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::codec;
use crate::raft::SnapshotMeta;

const MAGIC: &[u8; 8] = b"BATONSNP";
const FORMAT: u8 = 1;
/// The data is written and synced in slices of this many bytes.
const SYNC_EVERY_BYTES: usize = 4 << 20;

/// Why the snapshot file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The file is not a snapshot this build can read.
    #[error("{path}: not a readable snapshot: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The snapshot file of one data dir.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    dir: PathBuf,
}

impl SnapshotFile {
    /// The snapshot file under `data_dir`.
    pub fn in_data_dir(data_dir: &Path) -> SnapshotFile {
        SnapshotFile { dir: data_dir.join("snapshots") }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("current.snap")
    }

    /// Replaces the current snapshot with `meta` and `data`, durably and atomically.
    pub fn write(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), SnapshotFileError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SnapshotFileError::Io { path, source }
        };
        let meta_bytes = codec::encode(meta).map_err(|e| SnapshotFileError::Corrupt {
            path: self.path(),
            reason: format!("metadata does not encode: {e}"),
        })?;
        let meta_len = u32::try_from(meta_bytes.len()).map_err(|_| SnapshotFileError::Corrupt {
            path: self.path(),
            reason: format!("metadata of {} bytes", meta_bytes.len()),
        })?;
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let tmp = self.dir.join("current.snap.tmp");
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut header = Vec::with_capacity(MAGIC.len() + 1 + 4 + meta_bytes.len() + 8);
        header.extend_from_slice(MAGIC);
        header.push(FORMAT);
        header.extend_from_slice(&meta_len.to_be_bytes());
        header.extend_from_slice(&meta_bytes);
        header.extend_from_slice(&(data.len() as u64).to_be_bytes());
        file.write_all(&header).map_err(io_err(&tmp))?;
        // Synced a slice at a time: on ext4 (data=ordered) the WAL's next fsync waits for whatever file data is dirty
        // when it commits the journal, so tens of megabytes written at once and synced at the end could hold up the
        // log's syncs on the same disk for as long as they take to write.
        // The last slice is synced with the file's metadata below, not twice.
        let mut slices = data.chunks(SYNC_EVERY_BYTES).peekable();
        while let Some(slice) = slices.next() {
            file.write_all(slice).map_err(io_err(&tmp))?;
            if slices.peek().is_some() {
                file.sync_data().map_err(io_err(&tmp))?;
            }
        }
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        let path = self.path();
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))?;
        Ok(())
    }

    /// The current snapshot's metadata and data, or None when no snapshot was written yet.
    pub fn read(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, SnapshotFileError> {
        let path = self.path();
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(SnapshotFileError::Io { path, source }),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|source| SnapshotFileError::Io { path: path.clone(), source })?;
        let corrupt = |reason: String| SnapshotFileError::Corrupt { path: path.clone(), reason };
        let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(|| corrupt("no BATONSNP magic".into()))?;
        let (&format, rest) = rest.split_first().ok_or_else(|| corrupt("ends after the magic".into()))?;
        if format != FORMAT {
            return Err(corrupt(format!("format {format}, this build reads format {FORMAT}")));
        }
        let (meta_len, rest) = split_len::<4>(rest).ok_or_else(|| corrupt("ends inside the metadata length".into()))?;
        let meta_bytes = rest.get(..meta_len).ok_or_else(|| corrupt("ends inside the metadata".into()))?;
        let meta: SnapshotMeta = codec::decode(meta_bytes).map_err(|e| corrupt(format!("metadata: {e}")))?;
        let (data_len, data) =
            split_len::<8>(&rest[meta_len..]).ok_or_else(|| corrupt("ends inside the data length".into()))?;
        if data.len() != data_len {
            return Err(corrupt(format!("data is {} bytes, the header says {data_len}", data.len())));
        }
        let offset = bytes.len() - data_len;
        bytes.drain(..offset);
        Ok(Some((meta, bytes)))
    }
}

/// A big-endian length of N bytes at the start of `bytes`, and what follows it.
fn split_len<const N: usize>(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<N>()?;
    let mut wide = [0u8; 8];
    wide[8 - N..].copy_from_slice(head);
    Some((usize::try_from(u64::from_be_bytes(wide)).ok()?, rest))
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;
    use crate::raft::{LogId, StoredMembership};

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("2-{index}-0"),
        }
    }

    #[test]
    fn written_snapshot_reads_back_and_replaces_the_previous_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = SnapshotFile::in_data_dir(dir.path());
        assert!(file.read().expect("reads").is_none());
        file.write(&meta(10), b"first").expect("writes");
        file.write(&meta(20), b"second snapshot").expect("writes");
        let (read_meta, data) = file.read().expect("reads").expect("exists");
        assert_eq!(read_meta, meta(20));
        assert_eq!(data, b"second snapshot");
        assert!(!dir.path().join("snapshots/current.snap.tmp").exists());
    }

    #[test]
    fn data_written_in_several_synced_slices_reads_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = SnapshotFile::in_data_dir(dir.path());
        // Two whole slices and a part of a third, each byte telling its position.
        let data: Vec<u8> = (0..2 * SYNC_EVERY_BYTES + 12_345).map(|i| (i % 251) as u8).collect();
        file.write(&meta(30), &data).expect("writes");
        let (read_meta, read) = file.read().expect("reads").expect("exists");
        assert_eq!(read_meta, meta(30));
        assert!(read == data, "{} bytes read back, {} written, or different bytes", read.len(), data.len());
    }

    #[test]
    fn truncated_or_foreign_files_are_refused_as_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = SnapshotFile::in_data_dir(dir.path());
        file.write(&meta(10), b"some data").expect("writes");
        let path = dir.path().join("snapshots/current.snap");
        let whole = fs::read(&path).expect("reads");
        for cut in [3, 12, whole.len() - 1] {
            fs::write(&path, &whole[..cut]).expect("writes");
            let err = file.read().expect_err("a truncated file is refused");
            assert!(matches!(err, SnapshotFileError::Corrupt { .. }), "cut at {cut}: {err}");
        }
        fs::write(&path, b"PK\x03\x04 a zip file").expect("writes");
        assert!(file.read().expect_err("refused").to_string().contains("no BATONSNP magic"));
    }
}
