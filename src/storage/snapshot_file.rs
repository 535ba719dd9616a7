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
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::codec;
use crate::raft::SnapshotMeta;

const MAGIC: &[u8; 8] = b"BATONSNP";
const FORMAT: u8 = 1;
/// The data is written and synced in slices of this many bytes.
const SYNC_EVERY_BYTES: usize = 1 << 20;
/// The producer's writes reach the file in pieces of this size.
const WRITE_BUFFER_BYTES: usize = 256 << 10;

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
        self.write_with(meta, |out| out.write_all(data))
    }

    /// Replaces the current snapshot with `meta` and the data `produce` writes, durably and atomically. The data
    /// goes to the file as it is produced, through a small buffer: a snapshot is never held whole in memory to be
    /// written. If `produce` fails, the current snapshot stays as it was.
    pub fn write_with(
        &self,
        meta: &SnapshotMeta,
        produce: impl FnOnce(&mut SnapshotWriter) -> io::Result<()>,
    ) -> Result<(), SnapshotFileError> {
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
        // The data's length, known once it is written.
        let data_len_at = header.len() as u64;
        header.extend_from_slice(&0u64.to_be_bytes());
        file.write_all(&header).map_err(io_err(&tmp))?;
        let data_at = header.len() as u64;
        let mut writer = SnapshotWriter {
            out: io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
            written: 0,
            unsynced: 0,
            patches: Vec::new(),
        };
        produce(&mut writer).map_err(io_err(&tmp))?;
        let SnapshotWriter { out, written, patches, .. } = writer;
        let mut file = out.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        let patches = std::iter::once((data_len_at, written.to_be_bytes().to_vec()))
            .chain(patches.into_iter().map(|(at, bytes)| (data_at + at, bytes)));
        for (at, bytes) in patches {
            file.seek(SeekFrom::Start(at)).and_then(|_| file.write_all(&bytes)).map_err(io_err(&tmp))?;
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

/// Where [`SnapshotFile::write_with`]'s producer writes the data: buffered, synced a slice at a time, counted.
///
/// Synced a slice at a time because on ext4 (data=ordered) the WAL's next fsync waits for whatever file data is dirty
/// when it commits the journal, so tens of megabytes written at once and synced at the end could hold up the log's
/// syncs on the same disk for as long as they take to write. The last slice is synced with the file's metadata, not
/// twice.
pub struct SnapshotWriter {
    out: io::BufWriter<File>,
    /// Data bytes written so far.
    written: u64,
    /// Data bytes written since the last sync.
    unsynced: usize,
    /// Bytes to overwrite once all data is written: (data offset, bytes).
    patches: Vec<(u64, Vec<u8>)>,
}

impl SnapshotWriter {
    /// The data bytes written so far: the offset of the next one.
    pub fn position(&self) -> u64 {
        self.written
    }

    /// Overwrites the data at offset `at` with `bytes` once the producer is done (a count known only at the end).
    pub fn patch_at_end(&mut self, at: u64, bytes: Vec<u8>) {
        self.patches.push((at, bytes));
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.unsynced >= SYNC_EVERY_BYTES {
            // More data follows a whole slice: the slice goes to disk now.
            self.out.flush()?;
            self.out.get_ref().sync_data()?;
            self.unsynced = 0;
        }
        // At most the rest of the slice, so that one large write is synced in slices too.
        let room = SYNC_EVERY_BYTES - self.unsynced;
        let n = self.out.write(&buf[..buf.len().min(room)])?;
        self.written += n as u64;
        self.unsynced += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
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
    fn streamed_data_is_synced_in_slices_patched_and_read_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = SnapshotFile::in_data_dir(dir.path());
        // Two and a half slices in uneven writes, a placeholder at offset 3 filled in at the end.
        let data: Vec<u8> = (0..5 * SYNC_EVERY_BYTES / 2).map(|i| (i % 251) as u8).collect();
        file.write_with(&meta(40), |out| {
            for piece in data.chunks(100_003) {
                out.write_all(piece)?;
            }
            out.patch_at_end(3, b"XYZ".to_vec());
            assert_eq!(out.position(), data.len() as u64);
            Ok(())
        })
        .expect("writes");
        let mut expected = data.clone();
        expected[3..6].copy_from_slice(b"XYZ");
        let (read_meta, read) = file.read().expect("reads").expect("exists");
        assert_eq!(read_meta, meta(40));
        assert!(read == expected, "{} bytes read back, {} written, or different bytes", read.len(), expected.len());
    }

    #[test]
    fn a_failed_producer_leaves_the_current_snapshot_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = SnapshotFile::in_data_dir(dir.path());
        file.write(&meta(10), b"the current one").expect("writes");
        let err = file
            .write_with(&meta(20), |out| {
                out.write_all(b"half a snapshot")?;
                Err(io::Error::other("disk on fire"))
            })
            .expect_err("fails");
        assert!(err.to_string().contains("disk on fire"), "{err}");
        let (read_meta, data) = file.read().expect("reads").expect("still there");
        assert_eq!((read_meta, data.as_slice()), (meta(10), b"the current one".as_slice()));
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
