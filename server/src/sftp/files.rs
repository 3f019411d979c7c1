//! Open SFTP file handles without a thread-pool hop per request: downloads are served from a
//! read-ahead worker that streams large chunks ahead of the client's (pipelined, in-order)
//! READ requests; uploads go to a write-behind worker that writes at the requested offsets and
//! hashes with SHA-256 while the writes are sequential.

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::Mutex;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::filework::UserWork;
use crate::objectfs::ObjectHome;
use crate::quota::{Charge, QuotaError};
use crate::userfs::{self, CHUNK_BYTES, Download, FileStat, UploadHasher};
use crate::vpath::VirtualPath;

/// Chunks the read-ahead worker may hold ready (so at most ~1.25 MiB ahead per handle).
const READ_AHEAD_CHUNKS: usize = 4;
/// Commands applied in one blocking call at most (a burst of pipelined WRITEs).
const WRITE_BATCH: usize = 64;
/// A READ this far beyond what was read ahead restarts the worker instead of skipping to it.
const SKIP_LIMIT: u64 = 4 * CHUNK_BYTES as u64;

type Chunk = io::Result<(u64, Vec<u8>)>;

/// Reads start at most here: Linux offsets are signed 64-bit, and a chunk read from further on
/// would pass the largest `off_t` (EINVAL). No file has data there.
const MAX_OFFSET: u64 = i64::MAX as u64 - CHUNK_BYTES as u64;

/// Where a download's chunks come from.
enum Source {
    /// A local file, read at offsets on the blocking pool.
    File(Arc<std::fs::File>),
    /// An object, streamed from the wanted offset by one ranged GET per (re)start.
    Object {
        home: Arc<ObjectHome>,
        path: VirtualPath,
        stat: FileStat,
    },
}

/// A download: serves READ requests from chunks read ahead.
pub struct ReadAhead {
    source: Source,
    rx: Option<mpsc::Receiver<Chunk>>,
    /// Offset of the next chunk the worker will send.
    next: u64,
    /// True when the worker has sent its last chunk.
    finished: bool,
    chunks: VecDeque<(u64, Vec<u8>)>,
    /// Chunks served whole go back to the file reader for its next reads (see [`spawn_reader`]).
    spent: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// Bytes sent to the client (for the audit event).
    pub bytes: u64,
    work: UserWork,
}

/// Streams `file` from `start` in chunks of [`CHUNK_BYTES`]. It reads into the buffers that
/// come back on `spent` when there are any: a new buffer is zeroed first (`read_at` needs
/// initialized memory and the code base has no `unsafe`), which cost 5 % of a download's CPU
/// at one new buffer per chunk.
fn spawn_reader(
    file: Arc<std::fs::File>,
    start: u64,
    work: UserWork,
    mut spent: mpsc::UnboundedReceiver<Vec<u8>>,
) -> mpsc::Receiver<Chunk> {
    let (tx, rx) = mpsc::channel(READ_AHEAD_CHUNKS);
    // An async task taking one file-work slot per chunk: a client that stops reading parks
    // this task on `send`, never a blocking thread (512 parked handles froze the server).
    tokio::spawn(async move {
        let mut position = start;
        loop {
            let file = file.clone();
            let reused = spent.try_recv().unwrap_or_default();
            let read = work
                .run(move || {
                    let mut buffer = userfs::chunk_buffer(reused);
                    let mut filled = 0;
                    while filled < CHUNK_BYTES {
                        match file.read_at(&mut buffer[filled..], position + filled as u64) {
                            Ok(0) => break,
                            Ok(n) => filled += n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => return Err(e),
                        }
                    }
                    buffer.truncate(filled);
                    Ok(buffer)
                })
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
            let buffer = match read {
                Ok(buffer) => buffer,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let filled = buffer.len();
            let last = filled < CHUNK_BYTES;
            if tx.send(Ok((position, buffer))).await.is_err() || last {
                return;
            }
            position += filled as u64;
        }
    });
    rx
}

/// Streams `path` of `home` from `start` as chunks of [`CHUNK_BYTES`] (the last one shorter,
/// possibly empty), each with its offset.
fn spawn_object_reader(
    home: Arc<ObjectHome>,
    path: VirtualPath,
    size: u64,
    start: u64,
) -> mpsc::Receiver<Chunk> {
    let (tx, rx) = mpsc::channel(READ_AHEAD_CHUNKS);
    tokio::spawn(async move {
        if start >= size {
            let _ = tx.send(Ok((start, Vec::new()))).await;
            return;
        }
        let mut chunks = match home.read_stream(&path, start).await {
            Ok((chunks, _)) => chunks,
            Err(error) => {
                let _ = tx.send(Err(io::Error::other(error.to_string()))).await;
                return;
            }
        };
        let mut position = start;
        while let Some(chunk) = chunks.recv().await {
            match chunk {
                Ok(data) => {
                    let filled = data.len();
                    if tx.send(Ok((position, data))).await.is_err() || filled < CHUNK_BYTES {
                        return;
                    }
                    position += filled as u64;
                }
                Err(error) => {
                    let _ = tx.send(Err(io::Error::other(error.to_string()))).await;
                    return;
                }
            }
        }
        // Ended on a chunk boundary: an empty chunk says so.
        let _ = tx.send(Ok((position, Vec::new()))).await;
    });
    rx
}

impl ReadAhead {
    pub fn new(file: std::fs::File, work: UserWork) -> Self {
        Self::from_download(Download::File(file), work)
    }

    pub fn from_download(download: Download, work: UserWork) -> Self {
        let source = match download {
            Download::File(file) => Source::File(Arc::new(file)),
            Download::Object { home, path, stat } => Source::Object { home, path, stat },
        };
        ReadAhead {
            source,
            work,
            rx: None,
            next: 0,
            finished: false,
            chunks: VecDeque::new(),
            spent: None,
            bytes: 0,
        }
    }

    /// Attributes of what is being read (FSTAT).
    pub async fn stat(&self) -> io::Result<FileStat> {
        match &self.source {
            Source::File(file) => {
                let file = file.clone();
                tokio::task::spawn_blocking(move || file.metadata())
                    .await
                    .map_err(io::Error::other)?
                    .map(|meta| userfs::stat_of_std(&meta))
            }
            Source::Object { stat, .. } => Ok(*stat),
        }
    }

    fn restart(&mut self, offset: u64) {
        self.chunks.clear();
        let (spent, reader_spent) = mpsc::unbounded_channel();
        self.spent = Some(spent);
        self.rx = Some(match &self.source {
            Source::File(file) => {
                spawn_reader(file.clone(), offset, self.work.clone(), reader_spent)
            }
            Source::Object { home, path, stat } => {
                spawn_object_reader(home.clone(), path.clone(), stat.size, offset)
            }
        });
        self.next = offset;
        self.finished = false;
    }

    /// Up to `len` bytes at `offset`; an empty result means end of file.
    #[cfg(test)]
    pub async fn read(&mut self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len.min(CHUNK_BYTES * 2));
        self.read_into(offset, len, &mut out).await?;
        Ok(out)
    }

    /// Appends up to `len` bytes at `offset` to `out` (a reply being built, so that file data
    /// is copied once on its way to the client); returns how many, 0 at end of file.
    pub async fn read_into(
        &mut self,
        offset: u64,
        len: usize,
        out: &mut Vec<u8>,
    ) -> io::Result<usize> {
        // No file reaches past the largest `off_t`; answering such offsets with end of file
        // also keeps every offset sum below overflow (a READ at 2^64 - 253 overflowed
        // `next + SKIP_LIMIT`; found by fuzzing).
        if offset > MAX_OFFSET {
            return Ok(0);
        }
        if self.rx.is_none() && !self.finished {
            self.restart(offset);
        }
        let buffered_start = self.chunks.front().map(|c| c.0).unwrap_or(self.next);
        if offset < buffered_start || offset > self.next + SKIP_LIMIT {
            self.restart(offset);
        }
        let mut got = 0;
        loop {
            // Drop chunks that end before the wanted position; whole ones are read into again.
            let want = offset + got as u64;
            while let Some((start, data)) = self.chunks.front() {
                if start + data.len() as u64 <= want && !(data.is_empty()) {
                    if let Some((_, spent)) = self.chunks.pop_front()
                        && spent.len() == CHUNK_BYTES
                        && let Some(back) = &self.spent
                    {
                        let _ = back.send(spent);
                    }
                } else {
                    break;
                }
            }
            // Copy from contiguous chunks.
            for (start, data) in &self.chunks {
                let want = offset + got as u64;
                if *start > want || got >= len {
                    break;
                }
                let from = (want - start) as usize;
                if from >= data.len() {
                    continue;
                }
                let take = (data.len() - from).min(len - got);
                out.extend_from_slice(&data[from..from + take]);
                got += take;
            }
            if got >= len || self.finished {
                break;
            }
            let Some(rx) = self.rx.as_mut() else { break };
            match rx.recv().await {
                Some(Ok((start, data))) => {
                    self.next = start + data.len() as u64;
                    if data.len() < CHUNK_BYTES {
                        self.finished = true;
                    }
                    self.chunks.push_back((start, data));
                }
                Some(Err(e)) => {
                    self.rx = None;
                    return Err(e);
                }
                None => {
                    self.finished = true;
                }
            }
        }
        self.bytes += got as u64;
        Ok(got)
    }
}

enum WriteCommand {
    Write {
        offset: u64,
        data: Vec<u8>,
        /// This write's share of `budgets.maxPendingWriteBytes`, released once it is on disk.
        _pending: OwnedSemaphorePermit,
    },
    Fsync(oneshot::Sender<io::Result<()>>),
    Stat(oneshot::Sender<io::Result<FileStat>>),
    SetLen(u64, oneshot::Sender<io::Result<()>>),
    SetTimes(u64, u64, oneshot::Sender<io::Result<()>>),
    Read {
        offset: u64,
        len: usize,
        reply: oneshot::Sender<io::Result<Vec<u8>>>,
    },
}

/// What a finished write worker reports.
pub struct WriteOutcome {
    /// SHA-256 of the whole file, hex (streamed when the writes were sequential from 0,
    /// otherwise computed from the file at close).
    pub sha256: Option<String>,
    /// Bytes written by this handle.
    pub written: u64,
    /// Size of the file at close.
    pub size: u64,
    pub error: Option<io::Error>,
    /// The quota refused a request of this upload (then `error` says so too).
    pub quota_refused: bool,
    /// The upload's quota account, to publish or discard with the file.
    pub charge: Option<Charge>,
}

/// Whether a file whose writes were not sequential is hashed at close. Not when it grew by
/// more than this handle wrote: it then has holes (a WRITE far beyond the end, a SETSTAT size)
/// or another handle's data, and reading it back could cost far more than the upload did (one
/// WRITE at offset 2^40 made the server read a terabyte of zeros; found by fuzzing).
pub fn hash_at_close(size_at_open: u64, written: u64, size: u64) -> bool {
    size <= size_at_open.saturating_add(written)
}

/// The state of an upload between batches: moved onto the blocking pool for each batch of
/// commands and back, so no thread is held while the client is quiet.
struct WriterState {
    file: std::fs::File,
    hasher: UploadHasher,
    sequential: bool,
    next: u64,
    written: u64,
    size_at_open: u64,
    error: Option<io::Error>,
    failed: Arc<Mutex<Option<String>>>,
}

impl WriterState {
    fn fail(&mut self, error: io::Error) {
        if let Ok(mut slot) = self.failed.lock() {
            *slot = Some(error.to_string());
        }
        self.error = Some(error);
    }

    fn apply(&mut self, command: WriteCommand) {
        match command {
            WriteCommand::Write { offset, data, .. } => {
                if self.error.is_some() {
                    return;
                }
                if let Err(e) = self.file.write_all_at(&data, offset) {
                    self.fail(e);
                    return;
                }
                if self.sequential && offset == self.next {
                    self.hasher.update(&data);
                    self.next += data.len() as u64;
                } else {
                    self.sequential = false;
                }
                self.written += data.len() as u64;
            }
            WriteCommand::Fsync(reply) => {
                let _ = reply.send(self.file.sync_all());
            }
            WriteCommand::Stat(reply) => {
                let _ = reply.send(self.file.metadata().map(|m| userfs::stat_of_std(&m)));
            }
            WriteCommand::SetLen(len, reply) => {
                self.sequential = false;
                let _ = reply.send(self.file.set_len(len));
            }
            WriteCommand::SetTimes(atime, mtime, reply) => {
                let _ = reply.send(userfs::set_file_times(&self.file, atime, mtime));
            }
            WriteCommand::Read { offset, len, reply } => {
                let mut buffer = vec![0u8; len];
                let result = self.file.read_at(&mut buffer, offset).map(|n| {
                    buffer.truncate(n);
                    buffer
                });
                let _ = reply.send(result);
            }
        }
    }

    fn finish(mut self) -> WriteOutcome {
        if self.error.is_none()
            && let Err(e) = self.file.sync_all()
        {
            self.error = Some(e);
        }
        let size = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        let sha256 = if self.error.is_some() {
            None
        } else if self.sequential && self.next == size {
            Some(self.hasher.finalize_hex())
        } else if hash_at_close(self.size_at_open, self.written, size) {
            userfs::sha256_of_file(&self.file)
                .ok()
                .map(|(hash, _)| hash)
        } else {
            None
        };
        WriteOutcome {
            sha256,
            written: self.written,
            size,
            error: self.error,
            quota_refused: false,
            charge: None,
        }
    }
}

fn stopped(error: impl std::fmt::Display) -> WriteOutcome {
    WriteOutcome {
        sha256: None,
        written: 0,
        size: 0,
        error: Some(io::Error::other(error.to_string())),
        quota_refused: false,
        charge: None,
    }
}

/// An upload: writes are applied in batches on the blocking pool under the user's file-work
/// budget; data not yet on disk is bounded by `budgets.maxPendingWriteBytes` (a WRITE beyond
/// it waits, which stops the session reading further requests: backpressure, not memory).
pub struct WriteBehind {
    tx: Option<mpsc::UnboundedSender<WriteCommand>>,
    worker: tokio::task::JoinHandle<WriteOutcome>,
    /// First write error, shared so that later WRITE replies report it at once.
    failed: Arc<Mutex<Option<String>>>,
    pending: Arc<Semaphore>,
    pending_limit: u32,
    pub first_offset: Option<u64>,
    /// The upload's quota account, charged as requests make the file longer.
    charge: Option<Charge>,
    /// The file's length as far as the quota knows.
    end: u64,
    /// The quota refused a request of this upload.
    refused: Option<QuotaError>,
}

impl WriteBehind {
    pub fn new(
        file: std::fs::File,
        work: UserWork,
        max_pending_bytes: u32,
        charge: Option<Charge>,
    ) -> Self {
        // Where the file ends as far as the quota knows: a WRITE or SETSTAT past it is charged
        // here, when the request arrives, so that the reply to the WRITE that would cross the
        // quota is the failure (clients such as paramiko ignore errors at CLOSE).
        let end = file.metadata().map(|m| m.len()).unwrap_or(0);
        let (tx, mut rx) = mpsc::unbounded_channel::<WriteCommand>();
        let failed = Arc::new(Mutex::new(None));
        let worker_failed = failed.clone();
        let worker = tokio::spawn(async move {
            let mut state = match work
                .run(move || {
                    let size_at_open = file.metadata().map(|m| m.len()).unwrap_or(0);
                    WriterState {
                        file,
                        hasher: UploadHasher::new(),
                        sequential: true,
                        next: 0,
                        written: 0,
                        size_at_open,
                        error: None,
                        failed: worker_failed,
                    }
                })
                .await
            {
                Ok(state) => state,
                Err(error) => return stopped(error),
            };
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < WRITE_BATCH
                    && let Ok(more) = rx.try_recv()
                {
                    batch.push(more);
                }
                state = match work
                    .run(move || {
                        for command in batch {
                            state.apply(command);
                        }
                        state
                    })
                    .await
                {
                    Ok(state) => state,
                    Err(error) => return stopped(error),
                };
            }
            work.run(move || state.finish())
                .await
                .unwrap_or_else(stopped)
        });
        let pending_limit = max_pending_bytes.max(CHUNK_BYTES as u32);
        WriteBehind {
            tx: Some(tx),
            worker,
            failed,
            pending: Arc::new(Semaphore::new(pending_limit as usize)),
            pending_limit,
            first_offset: None,
            charge,
            end,
            refused: None,
        }
    }

    /// Charges the file's growth to `new_end` to the quota (nothing without a quota).
    /// A refusal fails the whole upload: later WRITEs and the CLOSE report it, and the file is
    /// not published.
    pub fn charge_to(&mut self, new_end: u64) -> Result<(), QuotaError> {
        if new_end > self.end {
            if let Some(charge) = self.charge.as_mut()
                && let Err(error) = charge.grow(new_end - self.end)
            {
                if let Ok(mut slot) = self.failed.lock() {
                    slot.get_or_insert_with(|| error.to_string());
                }
                self.refused = Some(error.clone());
                return Err(error);
            }
            self.end = new_end;
        }
        Ok(())
    }

    /// The first write error, if any.
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().ok().and_then(|slot| slot.clone())
    }

    /// Queues a write once its bytes fit in the pending-write budget; false when the worker
    /// is gone.
    pub async fn write(&mut self, offset: u64, data: Vec<u8>) -> bool {
        if self.first_offset.is_none() {
            self.first_offset = Some(offset);
        }
        let bytes = u32::try_from(data.len())
            .unwrap_or(u32::MAX)
            .min(self.pending_limit);
        let Ok(pending) = self.pending.clone().acquire_many_owned(bytes).await else {
            return false;
        };
        match &self.tx {
            Some(tx) => tx
                .send(WriteCommand::Write {
                    offset,
                    data,
                    _pending: pending,
                })
                .is_ok(),
            None => false,
        }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<io::Result<T>>) -> WriteCommand,
    ) -> io::Result<T> {
        let (reply, answer) = oneshot::channel();
        let gone = || io::Error::other("file worker stopped");
        let Some(tx) = &self.tx else {
            return Err(gone());
        };
        tx.send(make(reply)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    pub async fn fsync(&self) -> io::Result<()> {
        self.ask(WriteCommand::Fsync).await
    }

    pub async fn stat(&self) -> io::Result<FileStat> {
        self.ask(WriteCommand::Stat).await
    }

    pub async fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.charge_to(len).map_err(io::Error::other)?;
        self.ask(|reply| WriteCommand::SetLen(len, reply)).await?;
        if len < self.end {
            if let Some(charge) = self.charge.as_mut() {
                charge.shrink(self.end - len);
            }
            self.end = len;
        }
        Ok(())
    }

    pub async fn set_times(&self, atime: u64, mtime: u64) -> io::Result<()> {
        self.ask(|reply| WriteCommand::SetTimes(atime, mtime, reply))
            .await
    }

    pub async fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.ask(|reply| WriteCommand::Read { offset, len, reply })
            .await
    }

    /// Waits for every queued write and the final fsync.
    pub async fn finish(mut self) -> WriteOutcome {
        self.tx = None;
        let charge = self.charge.take();
        let refused = self.refused.take();
        match (&mut self.worker).await {
            Ok(mut outcome) => {
                outcome.quota_refused = refused.is_some();
                if let Some(error) = refused
                    && outcome.error.is_none()
                {
                    outcome.error = Some(io::Error::other(error));
                }
                WriteOutcome { charge, ..outcome }
            }
            Err(join) => WriteOutcome {
                sha256: None,
                written: 0,
                size: 0,
                error: Some(io::Error::other(join.to_string())),
                quota_refused: false,
                charge: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    async fn upload(writes: &[(u64, &[u8])]) -> (WriteOutcome, std::time::Duration) {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("up.bin"))
            .unwrap();
        let mut worker = WriteBehind::new(file, UserWork::unshared(4), 2 << 20, None);
        for (offset, data) in writes {
            assert!(worker.write(*offset, data.to_vec()).await);
        }
        let started = std::time::Instant::now();
        let outcome = worker.finish().await;
        (outcome, started.elapsed())
    }

    /// Found by fuzzing (fuzz/ sftp_packets): WRITE "hello world" at offset 0x77_0000_0000
    /// (510 GiB) made the close hash 510 GiB of zeros, pinning a core for minutes.
    #[tokio::test]
    async fn a_write_far_beyond_the_end_is_not_hashed_back_at_close() {
        let (outcome, took) = upload(&[(0x77_0000_0000, b"hello world"), (11, b"!")]).await;
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        assert_eq!(outcome.size, 0x77_0000_0000 + 11);
        assert_eq!(outcome.written, 12);
        assert_eq!(outcome.sha256, None);
        assert!(
            took < std::time::Duration::from_secs(5),
            "close took {took:?}"
        );
    }

    /// Found by a one-hour fuzz run (fuzz/ sftp_packets): a file made sparse first (a SETSTAT
    /// size, or an earlier handle's far WRITE), then reopened and written a few bytes, passed
    /// the grew-by-more-than-written check and was hashed back in full at close.
    #[tokio::test]
    async fn a_file_with_holes_from_before_the_open_is_not_hashed_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.bin");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(0x7d_0000_0000)
            .unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        let mut worker = WriteBehind::new(file, UserWork::unshared(4), 2 << 20, None);
        assert!(worker.write(3, b"new".to_vec()).await);
        let started = std::time::Instant::now();
        let outcome = worker.finish().await;
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        assert_eq!(outcome.sha256, None);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "close took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn out_of_order_writes_without_holes_are_hashed_at_close() {
        let (outcome, _) = upload(&[(5, b" world"), (0, b"hello")]).await;
        assert_eq!(outcome.size, 11);
        assert_eq!(
            outcome.sha256.as_deref(),
            Some(hex::encode(Sha256::digest(b"hello world")).as_str())
        );
    }

    /// Found by fuzzing (fuzz/ sftp_packets): READ at offset 0xffff_ffff_ffff_ff03 overflowed
    /// `next + SKIP_LIMIT` (a panic with overflow checks) after a first READ there.
    #[tokio::test]
    async fn reads_at_offsets_beyond_any_file_are_end_of_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"hello").unwrap();
        let file = std::fs::File::open(dir.path().join("f")).unwrap();
        let mut ahead = ReadAhead::new(file, UserWork::unshared(4));
        for offset in [0xffff_ffff_ffff_ff03, u64::MAX, MAX_OFFSET + 1] {
            assert!(ahead.read(offset, 32768).await.unwrap().is_empty());
        }
        assert!(ahead.read(MAX_OFFSET, 32768).await.unwrap().is_empty());
        assert_eq!(ahead.read(0, 32768).await.unwrap(), b"hello");
        assert_eq!(ahead.read(1, 2).await.unwrap(), b"el");
    }

    /// The read-ahead reads into buffers it served before: every READ, in order, after a jump
    /// back (a new reader) and across the short last chunk, must still see the file's own
    /// bytes, appended after what the reply already holds.
    #[tokio::test]
    async fn reads_into_a_reply_see_the_file_through_reused_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let size = 6 * CHUNK_BYTES + 12_345;
        // Every byte names its place, so a byte from another chunk or a stale buffer shows.
        let content: Vec<u8> = (0..size)
            .map(|i| (i % 251) as u8 ^ (i / CHUNK_BYTES) as u8)
            .collect();
        std::fs::write(dir.path().join("f"), &content).unwrap();
        let file = std::fs::File::open(dir.path().join("f")).unwrap();
        let mut ahead = ReadAhead::new(file, UserWork::unshared(4));
        let read = async |ahead: &mut ReadAhead, offset: usize, len: usize| {
            let mut reply = b"head".to_vec();
            let got = ahead
                .read_into(offset as u64, len, &mut reply)
                .await
                .unwrap();
            assert_eq!(&reply[..4], b"head");
            assert_eq!(reply.len(), 4 + got);
            let end = (offset + len).min(size);
            assert_eq!(
                &reply[4..],
                &content[offset.min(size)..end],
                "at {offset}+{len}"
            );
            got
        };
        let mut offset = 0;
        while read(&mut ahead, offset, 65_536).await > 0 {
            offset += 65_536;
        }
        assert!(offset >= size);
        // Back to the start (a new reader), then odd sizes across chunk boundaries.
        let mut offset = 0;
        for len in (1..).map(|i| 1 + (i * 40_009) % 100_000) {
            if read(&mut ahead, offset, len).await == 0 {
                break;
            }
            offset += len;
        }
        assert_eq!(read(&mut ahead, CHUNK_BYTES - 3, 7).await, 7);
        assert_eq!(read(&mut ahead, size - 1, 100).await, 1);
        assert_eq!(read(&mut ahead, size, 100).await, 0);
        assert_eq!(ahead.bytes, 2 * size as u64 + 8);
    }

    #[test]
    fn files_that_grew_by_more_than_was_written_are_not_hashed() {
        assert!(hash_at_close(0, 11, 11));
        assert!(hash_at_close(1 << 30, 10, (1 << 30) + 10));
        assert!(hash_at_close(100, 0, 50));
        assert!(!hash_at_close(0, 11, 0x77_0000_000b));
        assert!(hash_at_close(u64::MAX, 1, u64::MAX));
    }
}
