//! A user's confined view of the data root: every operation is resolved beneath the user's home
//! by cap-std (`openat2(RESOLVE_BENEATH)` on Linux), so `..`, absolute symlinks and symlinks
//! swapped in by another process mid-session cannot escape. Blocking calls run on tokio's
//! blocking pool; bulk data moves in large chunks through dedicated blocking workers.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::SystemTime;

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::filework::UserWork;
use crate::objectfs::{ObjectCursor, ObjectHome, ObjectStore};
use crate::quota::{Charge, Quota, QuotaError};
use crate::vpath::VirtualPath;

/// Size of the chunks moved between disk and network.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Chunks an FTPS upload's write-behind worker hashes and writes in one blocking call (1 MiB).
pub const UPLOAD_BATCH_CHUNKS: usize = 4;
/// Chunks an FTPS upload may queue while a batch is being written: the network side keeps
/// reading during the write. In flight per upload at most (batch + queue + the chunk being
/// read) x 256 KiB = 2.25 MiB.
const UPLOAD_QUEUE_CHUNKS: usize = UPLOAD_BATCH_CHUNKS;

/// SHA-256 of uploads as they are written, on the blocking thread that writes them: the
/// `sha2` crate, which uses the CPU's SHA extensions when it has them (detected at run time).
/// `ring`'s digest (BoringSSL's SHA-NI assembly) measured the same on this CPU (0.62 vs 0.61
/// CPU s/GiB), so there is no second SHA-256 in the build; `sluice-server hash-speed` prints
/// the cost (docs/performance.md).
#[derive(Default)]
pub struct UploadHasher(Sha256);

impl UploadHasher {
    pub fn new() -> Self {
        UploadHasher(Sha256::new())
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Lowercase hex, as the audit `transfer` event carries it.
    pub fn finalize_hex(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// CPU cost of SHA-256 on this machine: `bytes` hashed in [`CHUNK_BYTES`] chunks by
/// [`UploadHasher`], measured as this thread's CPU time. For `sluice-server hash-speed` and the
/// benchmarks.
pub fn hash_speed(bytes: u64) -> serde_json::Value {
    fn cpu_now() -> f64 {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    }
    let chunk: Vec<u8> = (0..CHUNK_BYTES).map(|i| (i * 7 + 3) as u8).collect();
    let rounds = bytes.div_ceil(CHUNK_BYTES as u64).max(1);
    let hashed = rounds * CHUNK_BYTES as u64;
    let mut hasher = UploadHasher::new();
    let start = cpu_now();
    for _ in 0..rounds {
        hasher.update(&chunk);
    }
    let digest = hasher.finalize_hex();
    let spent = (cpu_now() - start).max(1e-9);
    std::hint::black_box(digest);
    serde_json::json!({
        "implementation": "sha2 0.10",
        "bytes": hashed,
        "cpu_s_per_gib": spent / (hashed as f64 / (1u64 << 30) as f64),
        "mb_per_s": hashed as f64 / spent / 1e6,
        "cpu_has_sha_extensions": sha_extensions(),
    })
}

#[cfg(target_arch = "x86_64")]
fn sha_extensions() -> bool {
    std::arch::is_x86_feature_detected!("sha")
}

#[cfg(not(target_arch = "x86_64"))]
fn sha_extensions() -> bool {
    false
}

/// Reads the next chunk of up to [`CHUNK_BYTES`] (blocking), filling it whole unless the file
/// ends, so that the network side sees few, large writes; empty at the end of the file.
pub fn read_chunk(file: &mut std::fs::File) -> io::Result<Vec<u8>> {
    read_chunk_into(file, Vec::new())
}

/// `reused` (a chunk that came back, or an empty `Vec`) made [`CHUNK_BYTES`] long to read into:
/// a new buffer comes zeroed from the allocator (`vec!`, fresh pages already are), a reused
/// one keeps its old bytes, which the read overwrites.
pub fn chunk_buffer(mut reused: Vec<u8>) -> Vec<u8> {
    if reused.capacity() == 0 {
        return vec![0; CHUNK_BYTES];
    }
    reused.resize(CHUNK_BYTES, 0);
    reused
}

/// [`read_chunk`] into `buffer`, a chunk already sent that came back: its old contents are
/// overwritten, and only a new buffer (or the part past a short chunk) is zeroed first.
pub fn read_chunk_into(file: &mut std::fs::File, buffer: Vec<u8>) -> io::Result<Vec<u8>> {
    let mut buffer = chunk_buffer(buffer);
    let mut filled = 0;
    while filled < CHUNK_BYTES {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buffer.truncate(filled);
    Ok(buffer)
}

/// A download's chunks from its file reader, and the way back for the chunks the network side
/// has sent: the reader reads into them again. A new buffer must be zeroed first (`read`
/// needs initialized memory, and the code base has no `unsafe`), 256 KiB per chunk.
pub struct DownloadChunks {
    chunks: mpsc::Receiver<Result<Vec<u8>, FsError>>,
    /// `None` for object storage, whose chunks are the HTTP client's own.
    spent: Option<mpsc::UnboundedSender<Vec<u8>>>,
}

impl DownloadChunks {
    /// Chunks whose buffers are not read into again.
    pub fn once(chunks: mpsc::Receiver<Result<Vec<u8>, FsError>>) -> Self {
        DownloadChunks {
            chunks,
            spent: None,
        }
    }

    /// The next chunk; `None` after the last one.
    pub async fn recv(&mut self) -> Option<Result<Vec<u8>, FsError>> {
        self.chunks.recv().await
    }

    /// Gives a sent chunk back to the reader.
    pub fn give_back(&self, chunk: Vec<u8>) {
        if let Some(spent) = &self.spent {
            let _ = spent.send(chunk);
        }
    }
}

/// Prefix of atomic-upload temporary files; hidden from listings.
pub const TEMP_PREFIX: &str = ".sluice-upload-";

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory: {0}")]
    NotFound(String),
    #[error("access denied: {0}")]
    Denied(String),
    #[error("already exists: {0}")]
    Exists(String),
    #[error("directory not empty: {0}")]
    NotEmpty(String),
    #[error("not a directory: {0}")]
    NotADirectory(String),
    #[error("is a directory: {0}")]
    IsADirectory(String),
    #[error("insufficient storage space writing {0}")]
    NoSpace(String),
    #[error("{source} (writing {path})")]
    Quota { path: String, source: QuotaError },
    #[error("i/o error on {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(
        "listing of {path} has more than budgets.maxListingEntries ({limit}) entries; list a subdirectory"
    )]
    ListingTooLarge { path: String, limit: u32 },
    /// What the storage backend cannot do (object storage: writes in place, links, a rename
    /// of a large prefix); the message says what and why.
    #[error("{0}")]
    Unsupported(String),
}

impl FsError {
    pub fn from_io(path: &VirtualPath, error: io::Error) -> Self {
        let path = path.to_string();
        match error.kind() {
            io::ErrorKind::NotFound => FsError::NotFound(path),
            io::ErrorKind::PermissionDenied => FsError::Denied(path),
            io::ErrorKind::AlreadyExists => FsError::Exists(path),
            io::ErrorKind::DirectoryNotEmpty => FsError::NotEmpty(path),
            io::ErrorKind::NotADirectory => FsError::NotADirectory(path),
            io::ErrorKind::IsADirectory => FsError::IsADirectory(path),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => FsError::NoSpace(path),
            _ if error.raw_os_error() == Some(40) => FsError::Denied(path), // ELOOP
            _ if error.raw_os_error() == Some(18) => FsError::Denied(path), // EXDEV
            _ => FsError::Io {
                path,
                source: error,
            },
        }
    }
}

/// What listings and SIZE/MDTM need to know about a file.
#[derive(Debug, Clone)]
pub struct EntryInfo {
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// How an upload opens its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// STOR: replace or create; atomic when configured.
    Replace,
    /// APPE: append to the end (created if missing).
    Append,
    /// REST n + STOR: write from offset n of the existing file.
    At(u64),
}

/// Home directories currently open, by (device, inode): the sessions of one user share one
/// descriptor instead of holding one each (10,000 sessions of 500 users hold 500 home
/// descriptors, not 10,000). Sharing is safe: every operation is an `*at` call relative to the
/// descriptor, and listings open a fresh descriptor (cap-std never reads through the shared one).
/// Keyed by inode, so a home deleted and recreated on disk gets a new descriptor.
#[derive(Default)]
struct OpenHomes {
    homes: HashMap<(u64, u64), Weak<Dir>>,
    /// Dead entries are pruned when the map reaches this size (amortised O(1) per login).
    prune_at: usize,
}

static OPEN_HOMES: LazyLock<Mutex<OpenHomes>> = LazyLock::new(Mutex::default);

/// The shared descriptor for `dir`'s directory if one is open, else `dir` itself, registered.
fn share_home(dir: Dir) -> io::Result<Arc<Dir>> {
    use cap_std::fs::MetadataExt;
    let meta = dir.dir_metadata()?;
    let key = (meta.dev(), meta.ino());
    let mut open = OPEN_HOMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(shared) = open.homes.get(&key).and_then(Weak::upgrade) {
        return Ok(shared);
    }
    if open.homes.len() >= open.prune_at {
        open.homes.retain(|_, weak| weak.strong_count() > 0);
        open.prune_at = (2 * open.homes.len()).max(64);
    }
    let dir = Arc::new(dir);
    open.homes.insert(key, Arc::downgrade(&dir));
    Ok(dir)
}

/// The confined home of one logged-in user, and the user's file-work budget that every
/// blocking call on it takes a slot of.
///
/// Two backends behind one set of calls: the local file system (`home` is the home), and an
/// S3-compatible bucket (`objects`; `home` is then the local directory uploads are spooled in
/// before they are published, see `crate::objectfs`). The protocols never know which.
#[derive(Clone)]
pub struct UserFs {
    home: Arc<Dir>,
    /// The home in object storage, when `storage.objectStore` is configured.
    objects: Option<Arc<ObjectHome>>,
    work: UserWork,
    /// The home relative to dataRoot (`partners/acme`), as quota and retention name it.
    home_key: Arc<str>,
    /// The user's quota, when it has one (see `crate::quota`).
    quota: Option<Arc<Quota>>,
}

/// Shared by an upload's network side and its write-behind worker: the worker charges each
/// chunk, the sink publishes or discards what was charged.
type SharedCharge = Arc<Mutex<Option<Charge>>>;

fn quota_error(path: &VirtualPath, source: QuotaError) -> FsError {
    FsError::Quota {
        path: path.to_string(),
        source,
    }
}

/// Charges `bytes` more to an upload's quota account (if it has one).
fn charge_growth(charge: &SharedCharge, path: &VirtualPath, bytes: u64) -> Result<(), FsError> {
    let mut slot = charge.lock().unwrap_or_else(|p| p.into_inner());
    match slot.as_mut() {
        Some(charge) => charge.grow(bytes).map_err(|e| quota_error(path, e)),
        None => Ok(()),
    }
}

fn take_charge(charge: &SharedCharge) -> Option<Charge> {
    charge.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Runs `f` on the blocking pool outside any user's budget: only for the home open at login,
/// which must never wait for user file work.
async fn unbudgeted<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FsError> + Send + 'static,
) -> Result<T, FsError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) => Err(cancelled(join.to_string())),
    }
}

fn cancelled(message: String) -> FsError {
    FsError::Io {
        path: String::new(),
        source: io::Error::other(message),
    }
}

/// Runs `f` under `work`'s budget.
async fn budgeted<T: Send + 'static>(
    work: &UserWork,
    f: impl FnOnce() -> Result<T, FsError> + Send + 'static,
) -> Result<T, FsError> {
    match work.run(f).await {
        Ok(result) => result,
        Err(error) => Err(cancelled(error.to_string())),
    }
}

fn kind_of(meta: &cap_std::fs::Metadata) -> EntryKind {
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        EntryKind::Symlink
    } else if file_type.is_dir() {
        EntryKind::Dir
    } else {
        EntryKind::File
    }
}

/// What a listing shows of an entry read through a [`DirCursor`].
pub fn entry_info(name: String, stat: &FileStat) -> EntryInfo {
    EntryInfo {
        name,
        kind: stat.kind,
        size: stat.size,
        modified: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(stat.mtime)),
    }
}

fn info_from(name: String, meta: &cap_std::fs::Metadata) -> EntryInfo {
    let kind = kind_of(meta);
    EntryInfo {
        name,
        kind,
        size: meta.len(),
        modified: meta.modified().ok().map(|t| t.into_std()),
    }
}

impl UserFs {
    /// Opens (creating if needed) `home` beneath `data_root`. `home` was validated as relative
    /// without `..`; cap-std still refuses any escape, e.g. a symlinked home.
    pub async fn open(data_root: String, home: String, work: UserWork) -> Result<UserFs, FsError> {
        unbudgeted(move || {
            let home_path = VirtualPath::root()
                .resolve(&home)
                .map_err(|e| FsError::Denied(e.to_string()))?;
            let root = Dir::open_ambient_dir(&data_root, ambient_authority())
                .map_err(|e| FsError::from_io(&VirtualPath::root(), e))?;
            root.create_dir_all(home_path.relative())
                .map_err(|e| FsError::from_io(&home_path, e))?;
            let dir = root
                .open_dir(home_path.relative())
                .map_err(|e| FsError::from_io(&home_path, e))?;
            Ok(UserFs {
                home: share_home(dir).map_err(|e| FsError::from_io(&home_path, e))?,
                objects: None,
                work,
                home_key: Arc::from(home_path.relative().as_str()),
                quota: None,
            })
        })
        .await
    }

    /// This view with its home in `store` (when object storage is configured): the local
    /// home opened by [`UserFs::open`] becomes the spool of its uploads.
    pub fn with_object_store(mut self, store: Option<&ObjectStore>) -> UserFs {
        self.objects = store.map(|store| Arc::new(store.home(&self.home_key)));
        self
    }

    /// Whether the home is in object storage.
    pub fn is_object_store(&self) -> bool {
        self.objects.is_some()
    }

    /// The user's file-work budget (shared by all the user's sessions).
    pub fn work(&self) -> &UserWork {
        &self.work
    }

    /// This view with `quota` enforced; its usage is scanned now if it is not known yet. A
    /// failed scan is logged and refuses writes (fail closed) until a later scan succeeds;
    /// reading and deleting still work.
    pub async fn with_quota(mut self, quota: Option<Arc<Quota>>) -> UserFs {
        if self.objects.is_some() {
            // Refused at load (crate::snapshot): quotas count the local home's files.
            return self;
        }
        if let Some(quota) = &quota {
            let _ = quota.refresh(&self.home, &self.work, false).await;
        }
        self.quota = quota;
        self
    }

    /// The home relative to dataRoot.
    pub fn home_key(&self) -> &str {
        &self.home_key
    }

    pub fn quota(&self) -> Option<&Arc<Quota>> {
        self.quota.as_ref()
    }

    /// Rescans the home's usage if it is older than `quotas.rescanSeconds`.
    async fn fresh_quota(&self) -> Result<(), FsError> {
        if let Some(quota) = &self.quota {
            quota
                .refresh(&self.home, &self.work, false)
                .await
                .map_err(|e| quota_error(&VirtualPath::root(), e))?;
        }
        Ok(())
    }

    /// `stat` following symlinks (that stay inside).
    pub async fn metadata(&self, path: &VirtualPath) -> Result<EntryInfo, FsError> {
        if let Some(objects) = &self.objects {
            return objects.metadata(path).await;
        }
        let home = self.home.clone();
        let path = path.clone();
        budgeted(&self.work, move || {
            let meta = home
                .metadata(path.relative())
                .map_err(|e| FsError::from_io(&path, e))?;
            Ok(info_from(
                path.file_name().unwrap_or("/").to_string(),
                &meta,
            ))
        })
        .await
    }

    pub async fn exists(&self, path: &VirtualPath) -> Result<bool, FsError> {
        match self.metadata(path).await {
            Ok(_) => Ok(true),
            Err(FsError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Entries of a directory (sorted by name), or the single entry when `path` is a file.
    /// A directory with more than `max_entries` entries is refused rather than held in memory.
    pub async fn list(
        &self,
        path: &VirtualPath,
        max_entries: u32,
    ) -> Result<Vec<EntryInfo>, FsError> {
        if let Some(objects) = &self.objects {
            return objects.list(path, max_entries).await;
        }
        let home = self.home.clone();
        let path = path.clone();
        budgeted(&self.work, move || {
            let meta = home
                .metadata(path.relative())
                .map_err(|e| FsError::from_io(&path, e))?;
            if !meta.is_dir() {
                return Ok(vec![info_from(
                    path.file_name().unwrap_or("/").to_string(),
                    &meta,
                )]);
            }
            let mut entries = Vec::new();
            let dir = home
                .open_dir(path.relative())
                .map_err(|e| FsError::from_io(&path, e))?;
            for entry in dir.entries().map_err(|e| FsError::from_io(&path, e))? {
                let entry = entry.map_err(|e| FsError::from_io(&path, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_reserved_name(&name) {
                    continue;
                }
                if entries.len() >= max_entries as usize {
                    return Err(FsError::ListingTooLarge {
                        path: path.to_string(),
                        limit: max_entries,
                    });
                }
                if let Ok(meta) = entry.metadata() {
                    entries.push(info_from(name, &meta));
                }
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(entries)
        })
        .await
    }

    pub async fn create_dir(&self, path: &VirtualPath) -> Result<(), FsError> {
        if let Some(objects) = &self.objects {
            return objects.create_dir(path).await;
        }
        self.simple(path, |home, rel| home.create_dir(rel)).await
    }

    pub async fn remove_dir(&self, path: &VirtualPath) -> Result<(), FsError> {
        if path.is_root() {
            return Err(FsError::Denied(path.to_string()));
        }
        if let Some(objects) = &self.objects {
            return objects.remove_dir(path).await;
        }
        self.simple(path, |home, rel| home.remove_dir(rel)).await
    }

    pub async fn remove_file(&self, path: &VirtualPath) -> Result<(), FsError> {
        if let Some(objects) = &self.objects {
            return objects.remove_file(path).await;
        }
        let home = self.home.clone();
        let path = path.clone();
        let quota = self.quota.clone();
        budgeted(&self.work, move || {
            let meta = home
                .symlink_metadata(path.relative())
                .map_err(|e| FsError::from_io(&path, e))?;
            if meta.is_dir() {
                return Err(FsError::IsADirectory(path.to_string()));
            }
            home.remove_file(path.relative())
                .map_err(|e| FsError::from_io(&path, e))?;
            if meta.is_file()
                && let Some(quota) = &quota
            {
                quota.removed(meta.len());
            }
            Ok(())
        })
        .await
    }

    pub async fn rename(
        &self,
        from: &VirtualPath,
        to: &VirtualPath,
        replace: Replace,
    ) -> Result<(), FsError> {
        if from.is_root() || to.is_root() {
            return Err(FsError::Denied(from.to_string()));
        }
        if let Some(objects) = &self.objects {
            return objects.rename(from, to, replace).await;
        }
        let home = self.home.clone();
        let quota = self.quota.clone();
        let (from, to) = (from.clone(), to.clone());
        budgeted(&self.work, move || {
            // A rename over a regular file frees the file it replaces.
            let replaced = match (&quota, replace) {
                (Some(_), Replace::Allowed) if from != to => home
                    .symlink_metadata(to.relative())
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|m| m.len()),
                _ => None,
            };
            rename_within(&home, &from.relative(), &to.relative(), replace)
                .map_err(|e| FsError::from_io(&to, e))?;
            if let (Some(quota), Some(size)) = (&quota, replaced) {
                quota.removed(size);
            }
            Ok(())
        })
        .await
    }

    async fn simple(
        &self,
        path: &VirtualPath,
        op: impl FnOnce(&Dir, String) -> io::Result<()> + Send + 'static,
    ) -> Result<(), FsError> {
        let home = self.home.clone();
        let path = path.clone();
        budgeted(&self.work, move || {
            op(&home, path.relative()).map_err(|e| FsError::from_io(&path, e))
        })
        .await
    }

    /// SHA-256 of a file, read in large chunks on the blocking pool.
    pub async fn sha256(&self, path: &VirtualPath) -> Result<(String, u64), FsError> {
        if let Some(objects) = &self.objects {
            return objects.sha256(path).await;
        }
        let home = self.home.clone();
        let path = path.clone();
        budgeted(&self.work, move || {
            let file = open_regular_file(&home, &path)?;
            sha256_of_file(&file).map_err(|e| FsError::from_io(&path, e))
        })
        .await
    }

    /// Starts a read-ahead worker that streams `path` from `offset` in [`CHUNK_BYTES`] chunks.
    /// The receiver yields `Err` once on a read error; a dropped receiver stops the worker.
    pub async fn read_stream(
        &self,
        path: &VirtualPath,
        offset: u64,
    ) -> Result<(DownloadChunks, u64), FsError> {
        if let Some(objects) = &self.objects {
            let (chunks, size) = objects.read_stream(path, offset).await?;
            return Ok((DownloadChunks::once(chunks), size));
        }
        let home = self.home.clone();
        let path = path.clone();
        let (file, size) = budgeted(&self.work, {
            let path = path.clone();
            move || {
                let mut file = open_regular_file(&home, &path)?;
                let size = file
                    .metadata()
                    .map_err(|e| FsError::from_io(&path, e))?
                    .len();
                if offset > size {
                    return Err(FsError::Io {
                        path: path.to_string(),
                        source: io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("restart offset {offset} is beyond the file size {size}"),
                        ),
                    });
                }
                file.seek(SeekFrom::Start(offset))
                    .map_err(|e| FsError::from_io(&path, e))?;
                Ok((file, size))
            }
        })
        .await?;
        let (tx, rx) = mpsc::channel(4);
        let (spent, mut reader_spent) = mpsc::unbounded_channel();
        let work = self.work.clone();
        // An async task that takes a file-work slot per chunk: a client that stops reading
        // parks this task, never a blocking thread.
        tokio::spawn(async move {
            let mut file = file;
            loop {
                let buffer = reader_spent.try_recv().unwrap_or_default();
                let read = work
                    .run(move || {
                        let chunk = read_chunk_into(&mut file, buffer);
                        (file, chunk)
                    })
                    .await;
                let buffer = match read {
                    Ok((returned, Ok(buffer))) => {
                        file = returned;
                        buffer
                    }
                    Ok((_, Err(e))) => {
                        let _ = tx.send(Err(FsError::from_io(&path, e))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(cancelled(e.to_string()))).await;
                        return;
                    }
                };
                if buffer.is_empty() || tx.send(Ok(buffer)).await.is_err() {
                    return;
                }
            }
        });
        let chunks = DownloadChunks {
            chunks: rx,
            spent: Some(spent),
        };
        Ok((chunks, size))
    }

    /// Opens an upload target and starts its write-behind worker.
    pub async fn write_stream(
        &self,
        path: &VirtualPath,
        mode: WriteMode,
        atomic: bool,
        replace: Replace,
    ) -> Result<UploadSink, FsError> {
        self.fresh_quota().await?;
        let home = self.home.clone();
        let path = path.clone();
        let quota = self.quota.clone();
        let (file, temp_name, existed, charge) = match &self.objects {
            Some(objects) => self.open_spool(objects, &path, mode, replace).await?,
            None => {
                budgeted(&self.work, {
                    let home = home.clone();
                    let path = path.clone();
                    move || open_upload_target(&home, &path, mode, atomic, replace, quota.as_ref())
                })
                .await?
            }
        };
        let charge: SharedCharge = Arc::new(Mutex::new(charge));
        let worker_charge = charge.clone();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(UPLOAD_QUEUE_CHUNKS);
        // Written chunks go back to the sink for the next reads: an upload allocates (and
        // zeroes) at most UPLOAD_BATCH_CHUNKS + UPLOAD_QUEUE_CHUNKS + 1 buffers, not one per
        // chunk.
        let (free_tx, free_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let worker_path = path.clone();
        let work = self.work.clone();
        // An async task that takes a file-work slot per batch of queued chunks: an upload that
        // stalls parks this task, never a blocking thread.
        let worker = tokio::spawn(async move {
            let path = worker_path;
            let mut state = (file, UploadHasher::new(), 0u64);
            while let Some(first) = rx.recv().await {
                // Wait for a whole batch (or the end of the upload) before taking a blocking
                // thread: each hop to the blocking pool and back costs two thread wake-ups,
                // which took ~15% of the upload CPU at one hop per 256 KiB chunk.
                let mut batch = Vec::with_capacity(UPLOAD_BATCH_CHUNKS);
                batch.push(first);
                while batch.len() < UPLOAD_BATCH_CHUNKS {
                    match rx.recv().await {
                        Some(more) => batch.push(more),
                        None => break,
                    }
                }
                let (file, mut hasher, mut written) = state;
                let path = path.clone();
                let charge = worker_charge.clone();
                let outcome = work
                    .run(move || {
                        let mut file = file;
                        for chunk in &batch {
                            // Charged before it is written: the chunk that would cross the
                            // quota is never on disk.
                            charge_growth(&charge, &path, chunk.len() as u64)?;
                            hasher.update(chunk);
                            if let Err(e) = file.write_all(chunk) {
                                return Err(FsError::from_io(&path, e));
                            }
                            written += chunk.len() as u64;
                        }
                        Ok((file, hasher, written, batch))
                    })
                    .await
                    .map_err(|e| cancelled(e.to_string()))??;
                let (file, hasher, written, batch) = outcome;
                for buffer in batch {
                    let _ = free_tx.send(buffer);
                }
                state = (file, hasher, written);
            }
            let (file, hasher, written) = state;
            let path = path.clone();
            work.run(move || file.sync_all().map_err(|e| FsError::from_io(&path, e)))
                .await
                .map_err(|e| cancelled(e.to_string()))??;
            Ok((hasher.finalize_hex(), written))
        });
        Ok(UploadSink {
            free: free_rx,
            charge,
            home,
            objects: self.objects.clone(),
            work: self.work.clone(),
            replace,
            target: path,
            temp_name,
            created: !existed,
            mode,
            tx: Some(tx),
            worker,
        })
    }
}

impl UserFs {
    /// An FTPS upload to object storage: a spool file in the local home (a reserved name),
    /// started with the object's first bytes for APPE (all of them) and REST + STOR (up to
    /// the offset); published by [`Finished::publish`].
    async fn open_spool(
        &self,
        objects: &ObjectHome,
        path: &VirtualPath,
        mode: WriteMode,
        replace: Replace,
    ) -> Result<OpenedUpload, FsError> {
        let check = match mode {
            WriteMode::At(_) => Replace::Allowed,
            _ => replace,
        };
        let existing = objects.upload_target(path, check).await?;
        let (file, temp) = self.create_spool(path).await?;
        let keep = match mode {
            WriteMode::Replace => 0,
            WriteMode::Append => existing.unwrap_or(0),
            WriteMode::At(offset) => {
                let size = existing.unwrap_or(0);
                if offset > size {
                    self.remove_temp(temp).await;
                    return Err(FsError::Io {
                        path: path.to_string(),
                        source: io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("restart offset {offset} is beyond the file size {size}"),
                        ),
                    });
                }
                offset
            }
        };
        let file = if keep > 0 {
            match objects.download_into(path, file, Some(keep)).await {
                Ok((file, _)) => file,
                Err(error) => {
                    self.remove_temp(temp).await;
                    return Err(error);
                }
            }
        } else {
            file
        };
        Ok((file, Some(temp), existing.is_some(), None))
    }

    /// A new spool file (readable and writable) directly in the local home.
    async fn create_spool(&self, path: &VirtualPath) -> Result<(std::fs::File, String), FsError> {
        let home = self.home.clone();
        let path = path.clone();
        budgeted(&self.work, move || {
            let temp = crate::leftovers::temp_file_name();
            let mut options = OpenOptions::new();
            options.read(true).write(true).create_new(true);
            let file = home
                .open_with(&temp, &options)
                .map_err(|e| FsError::from_io(&path, e))?;
            Ok((file.into_std(), temp))
        })
        .await
    }
}

/// Whether a rename or publish may replace an existing file. `Never` is one atomic
/// `renameat2(RENAME_NOREPLACE)`: a "does it exist" check followed by a rename let two sessions
/// without the `overwrite` permission race and replace each other's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Replace {
    #[default]
    Allowed,
    Never,
}

/// Moves `temp` (relative to `home`) to `dir/name`, copying across file systems.
fn move_out(home: &Dir, temp: &str, dir: &std::path::Path, name: &str) -> io::Result<()> {
    // Created here too: a reload may have added scanning after start-up.
    crate::scan::create_quarantine_dir(dir)?;
    let target = Dir::open_ambient_dir(dir, ambient_authority())?;
    match home.rename(temp, &target, name) {
        Err(e) if e.raw_os_error() == Some(18) => {} // EXDEV: another file system
        other => return other,
    }
    let mut from = home.open(temp)?;
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    let mut to = target.open_with(name, &options)?;
    io::copy(&mut from, &mut to)?;
    to.sync_all()
}

/// Renames `from` to `to` (both relative to `home`); with [`Replace::Never`] fails with
/// `AlreadyExists` instead of replacing. The no-replace rename works on the two parent
/// directories opened through cap-std (so confined like every other call) and single names.
fn rename_within(home: &Dir, from: &str, to: &str, replace: Replace) -> io::Result<()> {
    if replace == Replace::Allowed {
        return home.rename(from, home, to);
    }
    let split = |path: &str| -> io::Result<(Dir, String)> {
        let (parent, name) = match path.rsplit_once('/') {
            Some((parent, name)) => (parent.to_string(), name.to_string()),
            None => (".".to_string(), path.to_string()),
        };
        if name.is_empty() || name == "." || name == ".." {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        Ok((home.open_dir(parent)?, name))
    };
    let (from_dir, from_name) = split(from)?;
    let (to_dir, to_name) = split(to)?;
    rustix::fs::renameat_with(
        &from_dir,
        from_name.as_str(),
        &to_dir,
        to_name.as_str(),
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(io::Error::from)
}

/// Renames an atomic upload's temporary over its target and settles its quota account: the file
/// the rename replaced (if any) is freed. A failed rename removes the temporary.
fn publish_temp(
    home: &Dir,
    temp: &str,
    target: &VirtualPath,
    replace: Replace,
    charge: Option<Charge>,
) -> Result<(), FsError> {
    let replaced = match &charge {
        Some(_) => match home.symlink_metadata(target.relative()) {
            Ok(meta) if meta.is_file() => Some(meta.len()),
            _ => None,
        },
        None => None,
    };
    rename_within(home, temp, &target.relative(), replace).map_err(|e| {
        let _ = home.remove_file(temp);
        FsError::from_io(target, e)
    })?;
    if let Some(charge) = charge {
        charge.publish(replaced);
    }
    Ok(())
}

/// Uploads a complete spool file (relative to `home`) as the object `target`, then removes it
/// (also when the upload failed: nothing partial stays anywhere).
async fn publish_spool(
    home: &Arc<Dir>,
    work: &UserWork,
    objects: &ObjectHome,
    temp: &str,
    target: &VirtualPath,
    replace: Replace,
) -> Result<(), FsError> {
    let opened = {
        let home = home.clone();
        let temp = temp.to_string();
        let target = target.clone();
        budgeted(work, move || {
            home.open(&temp)
                .map(|f| f.into_std())
                .map_err(|e| FsError::from_io(&target, e))
        })
        .await
    };
    let published = match opened {
        Ok(file) => objects.publish(file, target, replace).await,
        Err(error) => Err(error),
    };
    let home = home.clone();
    let temp = temp.to_string();
    let _ = budgeted(work, move || {
        home.remove_file(&temp).ok();
        Ok(())
    })
    .await;
    published
}

fn open_regular_file(home: &Dir, path: &VirtualPath) -> Result<std::fs::File, FsError> {
    let file = home
        .open(path.relative())
        .map_err(|e| FsError::from_io(path, e))?;
    let meta = file.metadata().map_err(|e| FsError::from_io(path, e))?;
    if meta.is_dir() {
        return Err(FsError::IsADirectory(path.to_string()));
    }
    Ok(file.into_std())
}

fn temp_name_for(path: &VirtualPath) -> String {
    let parent = path.parent();
    let name = crate::leftovers::temp_file_name();
    if parent.is_root() {
        name
    } else {
        format!("{}/{name}", parent.relative())
    }
}

/// An upload target opened: the file, its atomic temporary name, whether the target existed,
/// and its quota account.
type OpenedUpload = (std::fs::File, Option<String>, bool, Option<Charge>);

fn open_upload_target(
    home: &Dir,
    path: &VirtualPath,
    mode: WriteMode,
    atomic: bool,
    replace: Replace,
    quota: Option<&Arc<Quota>>,
) -> Result<OpenedUpload, FsError> {
    if path.is_root() {
        return Err(FsError::IsADirectory(path.to_string()));
    }
    let existing_len = match home.metadata(path.relative()) {
        Ok(meta) if meta.is_dir() => return Err(FsError::IsADirectory(path.to_string())),
        Ok(meta) => Some(meta.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(FsError::from_io(path, e)),
    };
    let existed = existing_len.is_some();
    let staged = mode == WriteMode::Replace && atomic;
    let charge = match quota {
        Some(quota) => Some(
            quota
                .begin(&path.to_string(), staged, existing_len, !existed)
                .map_err(|e| quota_error(path, e))?,
        ),
        None => None,
    };
    let mut options = OpenOptions::new();
    match mode {
        WriteMode::Replace if atomic => {
            let temp = temp_name_for(path);
            options.write(true).create_new(true);
            let file = home
                .open_with(&temp, &options)
                .map_err(|e| FsError::from_io(path, e))?;
            return Ok((file.into_std(), Some(temp), existed, charge));
        }
        WriteMode::Replace if replace == Replace::Never => {
            options.write(true).create_new(true);
        }
        WriteMode::Replace => {
            options.write(true).create(true).truncate(true);
        }
        WriteMode::Append if replace == Replace::Never => {
            options.append(true).create_new(true);
        }
        WriteMode::Append => {
            options.append(true).create(true);
        }
        WriteMode::At(_) => {
            options.write(true).create(true);
        }
    }
    let file = match home.open_with(path.relative(), &options) {
        Ok(file) => file,
        Err(e) => {
            if let Some(charge) = charge {
                charge.discard(true);
            }
            return Err(FsError::from_io(path, e));
        }
    };
    let mut file = file.into_std();
    // What the open cut off an existing file is free again.
    let kept = match mode {
        WriteMode::Replace => 0,
        WriteMode::Append => existing_len.unwrap_or(0),
        WriteMode::At(offset) => offset.min(existing_len.unwrap_or(0)),
    };
    if let Some(quota) = quota {
        quota.truncated(existing_len.unwrap_or(0).saturating_sub(kept));
    }
    if let WriteMode::At(offset) = mode {
        let size = file
            .metadata()
            .map_err(|e| FsError::from_io(path, e))?
            .len();
        if offset > size {
            return Err(FsError::Io {
                path: path.to_string(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("restart offset {offset} is beyond the file size {size}"),
                ),
            });
        }
        file.set_len(offset)
            .map_err(|e| FsError::from_io(path, e))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| FsError::from_io(path, e))?;
    }
    Ok((file, None, existed, charge))
}

/// An upload in progress: chunks go to a write-behind worker that hashes and writes them.
pub struct UploadSink {
    /// The upload's quota account (shared with the worker that charges it).
    charge: SharedCharge,
    home: Arc<Dir>,
    objects: Option<Arc<ObjectHome>>,
    work: UserWork,
    replace: Replace,
    target: VirtualPath,
    temp_name: Option<String>,
    created: bool,
    mode: WriteMode,
    tx: Option<mpsc::Sender<Vec<u8>>>,
    /// Buffers the worker has written, for reuse.
    free: mpsc::UnboundedReceiver<Vec<u8>>,
    worker: tokio::task::JoinHandle<Result<(String, u64), FsError>>,
}

impl UploadSink {
    /// A buffer of [`CHUNK_BYTES`] to read the next chunk into: one the worker has written
    /// and given back when there is one (its old contents are overwritten, not zeroed), a new
    /// one otherwise. Give it to [`UploadSink::write`] truncated to what was read.
    pub fn buffer(&mut self) -> Vec<u8> {
        let mut buffer = self
            .free
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK_BYTES));
        // Full chunks come back at full length, so this zeroes only a new buffer or the tail
        // of a short last chunk.
        buffer.resize(CHUNK_BYTES, 0);
        buffer
    }

    /// Queues a chunk; fails when the worker has stopped (write error, e.g. disk full).
    pub async fn write(&mut self, chunk: Vec<u8>) -> bool {
        match &self.tx {
            Some(tx) => tx.send(chunk).await.is_ok(),
            None => false,
        }
    }

    /// Finishes a complete upload: waits for the writes and fsync, then renames an atomic
    /// temporary file over the final name. Returns (sha256 hex, bytes written).
    pub async fn commit(self) -> Result<(String, u64), FsError> {
        self.finish().await?.publish().await
    }

    /// Waits for the writes and the fsync of a complete upload without publishing it: the
    /// scanner reads the temporary file between this and [`Finished::publish`]. A failed
    /// upload is cleaned up as by [`UploadSink::abort`].
    pub async fn finish(mut self) -> Result<Finished, FsError> {
        self.tx = None;
        let result = match (&mut self.worker).await {
            Ok(result) => result,
            Err(join) => Err(FsError::Io {
                path: self.target.to_string(),
                source: io::Error::other(join.to_string()),
            }),
        };
        match result {
            Ok((sha256, written)) => Ok(Finished {
                home: self.home.clone(),
                objects: self.objects.clone(),
                work: self.work.clone(),
                replace: self.replace,
                target: self.target.clone(),
                temp_name: self.temp_name.take(),
                charge: take_charge(&self.charge),
                sha256,
                written,
            }),
            Err(error) => {
                self.cleanup().await;
                Err(error)
            }
        }
    }

    /// Abandons a broken upload: an atomic temporary file is removed, and so is a new file
    /// that a non-atomic upload created, so no truncated file is left under the final name.
    pub async fn abort(mut self) -> Option<FsError> {
        self.tx = None;
        let error = match (&mut self.worker).await {
            Ok(Err(error)) => Some(error),
            _ => None,
        };
        self.cleanup().await;
        error
    }

    async fn cleanup(&mut self) {
        let home = self.home.clone();
        let remove = match self.temp_name.take() {
            Some(temp) => Some(temp),
            None if self.created && self.mode == WriteMode::Replace => Some(self.target.relative()),
            None => None,
        };
        let removed = remove.is_some();
        if let Some(name) = remove {
            let _ = budgeted(&self.work, move || {
                home.remove_file(&name).ok();
                Ok(())
            })
            .await;
        }
        if let Some(charge) = take_charge(&self.charge) {
            charge.discard(removed);
        }
    }
}

/// A complete upload, written and fsync'd, not yet published under its final name (an atomic
/// upload still has its temporary name).
pub struct Finished {
    home: Arc<Dir>,
    /// Object storage: the temporary file is a spool published by an upload to the bucket.
    objects: Option<Arc<ObjectHome>>,
    work: UserWork,
    replace: Replace,
    target: VirtualPath,
    temp_name: Option<String>,
    /// The upload's quota account: settled by [`Finished::publish`]; a refused upload drops
    /// it (or calls [`Finished::discard`]) and what it reserved is given back.
    charge: Option<Charge>,
    pub sha256: String,
    pub written: u64,
}

impl Finished {
    /// The temporary name (relative to the home) of an atomic upload.
    pub fn temp_name(&self) -> Option<&str> {
        self.temp_name.as_deref()
    }

    /// Renames an atomic temporary file over the final name. Returns (sha256 hex, bytes
    /// written).
    pub async fn publish(self) -> Result<(String, u64), FsError> {
        let charge = self.charge;
        if let (Some(objects), Some(temp)) = (&self.objects, &self.temp_name) {
            publish_spool(
                &self.home,
                &self.work,
                objects,
                temp,
                &self.target,
                self.replace,
            )
            .await?;
            return Ok((self.sha256, self.written));
        }
        if let Some(temp) = self.temp_name {
            let home = self.home.clone();
            let target = self.target.clone();
            let replace = self.replace;
            budgeted(&self.work, move || {
                publish_temp(&home, &temp, &target, replace, charge)
            })
            .await?;
        } else if let Some(charge) = charge {
            charge.publish(None);
        }
        Ok((self.sha256, self.written))
    }

    /// Gives back what a refused upload reserved against the quota. The caller has already
    /// removed or quarantined the temporary file (quarantine is outside the home), so nothing
    /// of the upload stays in the home.
    pub fn discard(mut self) {
        if let Some(charge) = self.charge.take() {
            charge.discard(true);
        }
    }
}

/// Attributes an SFTP client sees (ownership is deliberately not exposed).
#[derive(Debug, Clone, Copy)]
pub struct FileStat {
    pub kind: EntryKind,
    pub size: u64,
    /// Permission bits (`0o7777` part of `st_mode`).
    pub permissions: u32,
    pub atime: u64,
    pub mtime: u64,
}

fn stat_from(meta: &cap_std::fs::Metadata) -> FileStat {
    use cap_std::fs::MetadataExt;
    let kind = kind_of(meta);
    FileStat {
        kind,
        size: meta.len(),
        permissions: meta.mode() & 0o7777,
        atime: u64::try_from(meta.atime()).unwrap_or(0),
        mtime: u64::try_from(meta.mtime()).unwrap_or(0),
    }
}

/// Converts `std` metadata (of an open file) to [`FileStat`].
pub fn stat_of_std(meta: &std::fs::Metadata) -> FileStat {
    use std::os::unix::fs::MetadataExt;
    let kind = if meta.is_dir() {
        EntryKind::Dir
    } else {
        EntryKind::File
    };
    FileStat {
        kind,
        size: meta.len(),
        permissions: meta.mode() & 0o7777,
        atime: u64::try_from(meta.atime()).unwrap_or(0),
        mtime: u64::try_from(meta.mtime()).unwrap_or(0),
    }
}

/// How an SFTP write handle opens its file.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenForWrite {
    pub create: bool,
    pub truncate: bool,
    pub exclusive: bool,
    pub append: bool,
    /// Write to a temporary name and rename on close (only with create + truncate).
    pub atomic: bool,
    /// `Never` when the user may not overwrite: the file is created exclusively, or the
    /// atomic temporary is published without replacing.
    pub replace: Replace,
}

/// What an SFTP read handle reads.
pub enum Download {
    File(std::fs::File),
    /// An object and its attributes at open.
    Object {
        home: Arc<ObjectHome>,
        path: VirtualPath,
        stat: FileStat,
    },
}

/// An open directory being read in batches.
pub struct DirCursor {
    path: VirtualPath,
    /// `None` once the end was reached (or a read failed).
    entries: Option<cap_std::fs::ReadDir>,
    /// Object storage: the listing read when the cursor was opened.
    objects: Option<ObjectCursor>,
}

/// Whether `name` is reserved for the server's own files (atomic-upload temporaries): hidden
/// from listings and refused in every verb, so that no user can create, rename, delete or
/// open one (a user with `rename` but not `delete` could otherwise hide a file as a temporary
/// and have the next start delete it).
pub fn is_reserved_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// The first component of `path` with a reserved name, if any.
pub fn reserved_component(path: &VirtualPath) -> Option<String> {
    path.relative()
        .split('/')
        .find(|component| is_reserved_name(component))
        .map(str::to_string)
}

/// A file opened for writing: the file, whether it existed, and the atomic temporary name.
pub struct OpenedForWrite {
    pub file: std::fs::File,
    pub existed: bool,
    pub temp_name: Option<String>,
    /// The upload's quota account, charged by the write-behind worker as the file grows.
    pub charge: Option<Charge>,
}

impl UserFs {
    /// `stat` (following symlinks that stay inside) or `lstat`, with permission bits.
    pub async fn stat(&self, path: &VirtualPath, follow: bool) -> Result<FileStat, FsError> {
        if let Some(objects) = &self.objects {
            return objects.stat(path).await;
        }
        let home = self.home.clone();
        let path = path.clone();
        budgeted(&self.work, move || {
            let meta = if follow {
                home.metadata(path.relative())
            } else {
                home.symlink_metadata(path.relative())
            };
            meta.map(|m| stat_from(&m))
                .map_err(|e| FsError::from_io(&path, e))
        })
        .await
    }

    /// Opens a directory for reading in batches ([`UserFs::next_entries`]): an SFTP directory
    /// handle holds this cursor, not the directory's entries, so 64 handles on a directory of a
    /// million files cost 64 descriptors, not 64 copies of its listing.
    pub async fn open_dir_cursor(&self, path: &VirtualPath) -> Result<DirCursor, FsError> {
        if let Some(objects) = &self.objects {
            return Ok(DirCursor {
                path: path.clone(),
                entries: None,
                objects: Some(objects.open_cursor(path).await?),
            });
        }
        let home = self.home.clone();
        let path = path.clone();
        budgeted(&self.work, move || {
            let dir = home
                .open_dir(path.relative())
                .map_err(|e| FsError::from_io(&path, e))?;
            let entries = dir.entries().map_err(|e| FsError::from_io(&path, e))?;
            Ok(DirCursor {
                path,
                entries: Some(entries),
                objects: None,
            })
        })
        .await
    }

    /// Up to `count` further entries (with attributes, not following symlinks, without
    /// atomic-upload temporary files); empty at the end of the directory.
    pub async fn next_entries(
        &self,
        cursor: &mut DirCursor,
        count: usize,
    ) -> Result<Vec<(String, FileStat)>, FsError> {
        if let (Some(objects), Some(listing)) = (&self.objects, cursor.objects.as_mut()) {
            return Ok(objects.next_entries(listing, count));
        }
        let Some(mut entries) = cursor.entries.take() else {
            return Ok(Vec::new());
        };
        let path = cursor.path.clone();
        let (entries, batch) = budgeted(&self.work, move || {
            let mut batch = Vec::new();
            while batch.len() < count {
                let Some(entry) = entries.next() else {
                    return Ok((None, batch));
                };
                let entry = entry.map_err(|e| FsError::from_io(&path, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_reserved_name(&name) {
                    continue;
                }
                if let Ok(meta) = entry.metadata() {
                    batch.push((name, stat_from(&meta)));
                }
            }
            Ok((Some(entries), batch))
        })
        .await?;
        cursor.entries = entries;
        Ok(batch)
    }

    /// Opens a regular file for reading (shared by the read-ahead worker).
    /// (Local storage; object storage reads through [`UserFs::open_download`].)
    pub async fn open_read(&self, path: &VirtualPath) -> Result<std::fs::File, FsError> {
        if self.objects.is_some() {
            return Err(FsError::Unsupported(format!(
                "{path}: object storage is read through ranged requests, not a local file"
            )));
        }
        let home = self.home.clone();
        let path = path.clone();
        budgeted(&self.work, move || open_regular_file(&home, &path)).await
    }

    /// Opens a file for an SFTP read handle: the local file, or the object (read from each
    /// handle's offset with a ranged GET, see `crate::sftp::files::ReadAhead`). With its size.
    pub async fn open_download(&self, path: &VirtualPath) -> Result<(Download, u64), FsError> {
        if let Some(objects) = &self.objects {
            let stat = objects.stat(path).await?;
            if stat.kind == EntryKind::Dir {
                return Err(FsError::IsADirectory(path.to_string()));
            }
            let download = Download::Object {
                home: objects.clone(),
                path: path.clone(),
                stat,
            };
            return Ok((download, stat.size));
        }
        let file = self.open_read(path).await?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        Ok((Download::File(file), size))
    }

    /// Opens a file for an SFTP write handle.
    pub async fn open_write(
        &self,
        path: &VirtualPath,
        how: OpenForWrite,
    ) -> Result<OpenedForWrite, FsError> {
        if path.is_root() {
            return Err(FsError::IsADirectory(path.to_string()));
        }
        if let Some(objects) = &self.objects {
            return self.open_write_spool(objects, path, how).await;
        }
        self.fresh_quota().await?;
        let home = self.home.clone();
        let path = path.clone();
        let quota = self.quota.clone();
        budgeted(&self.work, move || {
            let existing_len = match home.metadata(path.relative()) {
                Ok(meta) if meta.is_dir() => return Err(FsError::IsADirectory(path.to_string())),
                Ok(meta) => Some(meta.len()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(FsError::from_io(&path, e)),
            };
            let existed = existing_len.is_some();
            if existed && (how.exclusive || how.replace == Replace::Never) {
                return Err(FsError::Exists(path.to_string()));
            }
            if !existed && !how.create {
                return Err(FsError::NotFound(path.to_string()));
            }
            let staged = how.atomic && how.truncate && how.create && !how.append;
            let charge = match &quota {
                Some(quota) => Some(
                    quota
                        .begin(&path.to_string(), staged, existing_len, !existed)
                        .map_err(|e| quota_error(&path, e))?,
                ),
                None => None,
            };
            // Always readable by the worker: it hashes the final file when writes were not
            // sequential. Whether the client may READ is decided by the handle.
            let mut options = OpenOptions::new();
            options.read(true);
            if staged {
                let temp = temp_name_for(&path);
                options.write(true).create_new(true);
                let file = home
                    .open_with(&temp, &options)
                    .map_err(|e| FsError::from_io(&path, e))?;
                return Ok(OpenedForWrite {
                    file: file.into_std(),
                    existed,
                    temp_name: Some(temp),
                    charge,
                });
            }
            if how.append {
                options.append(true);
            } else {
                options.write(true);
            }
            if how.exclusive || how.replace == Replace::Never {
                options.create_new(true);
            } else if how.create {
                options.create(true);
            }
            if how.truncate {
                options.truncate(true);
            }
            let file = match home.open_with(path.relative(), &options) {
                Ok(file) => file.into_std(),
                Err(e) => {
                    if let Some(charge) = charge {
                        charge.discard(true);
                    }
                    return Err(FsError::from_io(&path, e));
                }
            };
            if file
                .metadata()
                .map_err(|e| FsError::from_io(&path, e))?
                .is_dir()
            {
                return Err(FsError::IsADirectory(path.to_string()));
            }
            if how.truncate
                && let Some(quota) = &quota
            {
                quota.truncated(existing_len.unwrap_or(0));
            }
            Ok(OpenedForWrite {
                file,
                existed,
                temp_name: None,
                charge,
            })
        })
        .await
    }

    /// An SFTP write handle on object storage: always a spool file (a copy of the object when
    /// it is opened without truncation), published at close by [`UserFs::commit_temp`].
    async fn open_write_spool(
        &self,
        objects: &ObjectHome,
        path: &VirtualPath,
        how: OpenForWrite,
    ) -> Result<OpenedForWrite, FsError> {
        let check = if how.exclusive {
            Replace::Never
        } else {
            how.replace
        };
        let existing = objects.upload_target(path, check).await?;
        if existing.is_none() && !how.create {
            return Err(FsError::NotFound(path.to_string()));
        }
        let (file, temp) = self.create_spool(path).await?;
        let file = match existing {
            Some(size) if size > 0 && !how.truncate => {
                match objects.download_into(path, file, None).await {
                    Ok((file, _)) => file,
                    Err(error) => {
                        self.remove_temp(temp).await;
                        return Err(error);
                    }
                }
            }
            _ => file,
        };
        if how.append {
            // As O_APPEND on disk: every WRITE lands at the end, whatever its offset.
            rustix::fs::fcntl_setfl(&file, rustix::fs::OFlags::APPEND)
                .map_err(|e| FsError::from_io(path, io::Error::from(e)))?;
        }
        Ok(OpenedForWrite {
            file,
            existed: existing.is_some(),
            temp_name: Some(temp),
            charge: None,
        })
    }

    /// Renames an atomic upload's temporary file over its target (object storage: uploads it
    /// as the target object and removes it).
    pub async fn commit_temp(
        &self,
        temp: String,
        target: &VirtualPath,
        replace: Replace,
        charge: Option<Charge>,
    ) -> Result<(), FsError> {
        if let Some(objects) = &self.objects {
            return publish_spool(&self.home, &self.work, objects, &temp, target, replace).await;
        }
        let home = self.home.clone();
        let target = target.clone();
        budgeted(&self.work, move || {
            publish_temp(&home, &temp, &target, replace, charge)
        })
        .await
    }

    /// Opens an atomic upload's temporary file (relative to the home) for reading: the
    /// scanner streams it to clamd before it is published.
    pub async fn open_temp(&self, temp: &str) -> Result<std::fs::File, FsError> {
        let home = self.home.clone();
        let temp = temp.to_string();
        budgeted(&self.work, move || {
            home.open(&temp)
                .map(|f| f.into_std())
                .map_err(|e| FsError::Io {
                    path: temp.clone(),
                    source: e,
                })
        })
        .await
    }

    /// Moves a refused upload's temporary file into the quarantine directory `dir` (outside
    /// every home) as `name`: a rename when both are on one file system, else a copy, fsync
    /// and delete. On failure the temporary file is removed, so it is never published.
    pub async fn quarantine_temp(
        &self,
        temp: String,
        dir: std::path::PathBuf,
        name: String,
    ) -> Result<(), FsError> {
        let home = self.home.clone();
        budgeted(&self.work, move || {
            let moved = move_out(&home, &temp, &dir, &name);
            let _ = home.remove_file(&temp);
            moved.map_err(|source| FsError::Io {
                path: dir.join(&name).display().to_string(),
                source,
            })
        })
        .await
    }

    /// Removes a temporary file (a broken atomic upload).
    pub async fn remove_temp(&self, temp: String) {
        let home = self.home.clone();
        let _ = budgeted(&self.work, move || {
            home.remove_file(&temp).ok();
            Ok(())
        })
        .await;
    }

    /// Sets access and modification times (seconds since the epoch) of a file or directory.
    pub async fn set_times(
        &self,
        path: &VirtualPath,
        atime: u64,
        mtime: u64,
    ) -> Result<(), FsError> {
        if let Some(objects) = &self.objects {
            // Objects keep the time they were written; setting times is accepted and ignored
            // (clients such as `sftp put -p` send it after every upload).
            return objects.stat(path).await.map(|_| ());
        }
        let home = self.home.clone();
        let path = path.clone();
        budgeted(&self.work, move || {
            let meta = home
                .metadata(path.relative())
                .map_err(|e| FsError::from_io(&path, e))?;
            let file = if meta.is_dir() {
                home.open_dir(path.relative())
                    .map_err(|e| FsError::from_io(&path, e))?
                    .into_std_file()
            } else {
                home.open(path.relative())
                    .map_err(|e| FsError::from_io(&path, e))?
                    .into_std()
            };
            set_file_times(&file, atime, mtime).map_err(|e| FsError::from_io(&path, e))
        })
        .await
    }

    /// Truncates or extends a regular file.
    pub async fn set_len(&self, path: &VirtualPath, len: u64) -> Result<(), FsError> {
        if self.objects.is_some() {
            return Err(FsError::Unsupported(format!(
                "changing the size of {path} in place is not supported on object storage"
            )));
        }
        self.fresh_quota().await?;
        let home = self.home.clone();
        let path = path.clone();
        let quota = self.quota.clone();
        budgeted(&self.work, move || {
            let mut options = OpenOptions::new();
            options.write(true);
            let file = home
                .open_with(path.relative(), &options)
                .map_err(|e| FsError::from_io(&path, e))?;
            let old = file
                .metadata()
                .map_err(|e| FsError::from_io(&path, e))?
                .len();
            if let Some(quota) = &quota
                && len > old
            {
                quota
                    .grow_in_place(&path.to_string(), len - old)
                    .map_err(|e| quota_error(&path, e))?;
            }
            file.set_len(len).map_err(|e| FsError::from_io(&path, e))?;
            if let Some(quota) = &quota
                && len < old
            {
                quota.truncated(old - len);
            }
            Ok(())
        })
        .await
    }

    /// The text of a symlink.
    pub async fn read_link(&self, path: &VirtualPath) -> Result<String, FsError> {
        if self.objects.is_some() {
            return Err(FsError::Unsupported(format!(
                "{path}: object storage has no symbolic links"
            )));
        }
        let home = self.home.clone();
        let path = path.clone();
        budgeted(&self.work, move || {
            home.read_link_contents(path.relative())
                .map(|target| target.to_string_lossy().into_owned())
                .map_err(|e| FsError::from_io(&path, e))
        })
        .await
    }

    /// File system statistics of the volume holding the home directory.
    pub async fn statvfs(&self) -> Result<rustix::fs::StatVfs, FsError> {
        let home = self.home.clone();
        budgeted(&self.work, move || {
            rustix::fs::fstatvfs(&*home).map_err(|e| {
                FsError::from_io(
                    &VirtualPath::root(),
                    io::Error::from_raw_os_error(e.raw_os_error()),
                )
            })
        })
        .await
    }
}

/// Sets the times of an open file.
pub fn set_file_times(file: &std::fs::File, atime: u64, mtime: u64) -> io::Result<()> {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(atime);
    let mt = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
    file.set_times(std::fs::FileTimes::new().set_accessed(at).set_modified(mt))
}

/// How much longer than its stored bytes a file may be and still be hashed. A file with holes
/// (a write far beyond its end, a `setstat` size, `REST` beyond the end) costs nothing to make
/// but hashing it reads every zero of the holes: one SFTP WRITE at offset 2^62 and a reopen
/// would keep a core busy for years (found by fuzzing). Such files are not hashed.
const HOLE_SLACK_BYTES: u64 = 1 << 20;

/// SHA-256 of an open file from its start, read in large chunks (blocking).
pub fn sha256_of_file(file: &std::fs::File) -> io::Result<(String, u64)> {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let meta = file.metadata()?;
    let allocated = meta.blocks().saturating_mul(512);
    if meta.len() > allocated.saturating_add(HOLE_SLACK_BYTES) {
        return Err(io::Error::other(format!(
            "not hashed: the file has holes ({} bytes long, {allocated} bytes stored)",
            meta.len()
        )));
    }
    let mut hasher = UploadHasher::new();
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut offset = 0u64;
    loop {
        let n = match file.read_at(&mut buffer, offset) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        offset += n as u64;
    }
    Ok((hasher.finalize_hex(), offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_hasher_is_sha256_across_chunk_boundaries() {
        let data: Vec<u8> = (0..3 * CHUNK_BYTES + 5)
            .map(|i| (i * 31 + 7) as u8)
            .collect();
        for size in [
            0,
            1,
            63,
            64,
            65,
            CHUNK_BYTES - 1,
            CHUNK_BYTES,
            3 * CHUNK_BYTES + 5,
        ] {
            let mut hasher = UploadHasher::new();
            // fed in uneven pieces, as chunks and WRITEs arrive
            for piece in data[..size].chunks(CHUNK_BYTES / 3 + 1) {
                hasher.update(piece);
            }
            assert_eq!(
                hasher.finalize_hex(),
                hex::encode(Sha256::digest(&data[..size])),
                "size {size}"
            );
        }
    }

    /// Found in review: "no overwrite" was a check followed by a rename, so two sessions
    /// racing to publish one name replaced each other's file. The no-replace rename refuses.
    #[test]
    fn a_no_replace_rename_never_replaces_even_in_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        let home = Dir::open_ambient_dir(dir.path(), ambient_authority()).unwrap();
        home.create_dir("sub").unwrap();
        home.write("sub/a", b"first").unwrap();
        home.write("sub/b", b"second").unwrap();
        let error = rename_within(&home, "sub/a", "sub/b", Replace::Never).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(home.read("sub/b").unwrap(), b"second");
        rename_within(&home, "sub/a", "c", Replace::Never).unwrap();
        assert_eq!(home.read("c").unwrap(), b"first");
        rename_within(&home, "sub/b", "c", Replace::Allowed).unwrap();
        assert_eq!(home.read("c").unwrap(), b"second");
        // Still confined: a parent outside the home is refused by cap-std.
        assert!(rename_within(&home, "c", "../escaped", Replace::Never).is_err());
        assert!(!dir.path().parent().unwrap().join("escaped").exists());
    }

    /// A user file system with the home `h` in a new temporary data root.
    async fn home_h() -> (tempfile::TempDir, UserFs) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_string_lossy().into_owned();
        let fs = UserFs::open(root, "h".into(), UserWork::unshared(8))
            .await
            .unwrap();
        (dir, fs)
    }

    /// A download reads into the chunks it has sent: from every start, each chunk and the
    /// short last one must still be the file's own bytes, with nothing stale past the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_download_reads_into_sent_chunks_and_sees_only_the_file() {
        let (dir, fs) = home_h().await;
        let size = 5 * CHUNK_BYTES + 77;
        let content: Vec<u8> = (0..size)
            .map(|i| (i % 253) as u8 ^ (i / CHUNK_BYTES) as u8)
            .collect();
        std::fs::write(dir.path().join("h/down.bin"), &content).unwrap();
        let path = VirtualPath::root().resolve("/down.bin").unwrap();
        for offset in [
            0,
            1,
            CHUNK_BYTES - 1,
            CHUNK_BYTES,
            5 * CHUNK_BYTES + 76,
            size,
        ] {
            let (mut chunks, reported) = fs.read_stream(&path, offset as u64).await.unwrap();
            assert_eq!(reported, size as u64);
            let mut received = Vec::new();
            while let Some(chunk) = chunks.recv().await {
                let chunk = chunk.unwrap();
                received.extend_from_slice(&chunk);
                chunks.give_back(chunk);
            }
            assert_eq!(received.len(), size - offset, "from {offset}");
            assert!(received == content[offset..], "from {offset}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_is_stored_whole_at_every_batch_boundary() {
        let (dir, fs) = home_h().await;
        let batch = UPLOAD_BATCH_CHUNKS;
        // Chunk counts around one batch and past the batch plus the queue in flight; the last
        // chunk is short, as the last read of an upload is.
        for chunks in [1, batch - 1, batch, batch + 1, 2 * batch + 1, 3 * batch + 1] {
            let target = VirtualPath::root()
                .resolve(&format!("/up-{chunks}.bin"))
                .unwrap();
            let mut sink = fs
                .write_stream(&target, WriteMode::Replace, true, Replace::Allowed)
                .await
                .unwrap();
            let mut sent = Vec::new();
            for index in 0..chunks {
                let mut buffer = sink.buffer();
                let length = if index + 1 == chunks {
                    1000
                } else {
                    CHUNK_BYTES
                };
                buffer.truncate(length);
                // Every byte names its chunk and place: a reused buffer's stale bytes or a
                // chunk out of order would show.
                for (place, byte) in buffer.iter_mut().enumerate() {
                    *byte = (index * 7 + place * 13) as u8;
                }
                sent.extend_from_slice(&buffer);
                assert!(sink.write(buffer).await);
            }
            let (sha256, written) = sink.commit().await.unwrap();
            assert_eq!(written, sent.len() as u64, "{chunks} chunks");
            assert_eq!(
                sha256,
                hex::encode(Sha256::digest(&sent)),
                "{chunks} chunks"
            );
            let stored = std::fs::read(dir.path().join(format!("h/up-{chunks}.bin"))).unwrap();
            assert!(stored == sent, "{chunks} chunks: stored bytes differ");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_uploads_without_overwrite_publish_exactly_one() {
        let (dir, fs) = home_h().await;
        let target = VirtualPath::root().resolve("/race.bin").unwrap();
        let mut sinks = Vec::new();
        for index in 0..8u8 {
            let mut sink = fs
                .write_stream(&target, WriteMode::Replace, true, Replace::Never)
                .await
                .unwrap();
            assert!(sink.write(vec![index; 1000]).await);
            sinks.push((index, sink));
        }
        let mut published = Vec::new();
        for (index, sink) in sinks {
            if sink.commit().await.is_ok() {
                published.push(index);
            }
        }
        assert_eq!(published.len(), 1, "{published:?}");
        let content = std::fs::read(dir.path().join("h/race.bin")).unwrap();
        assert_eq!(content, vec![published[0]; 1000]);
        // No temporaries are left behind by the refused ones.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("h")).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn files_with_holes_are_not_hashed_and_dense_ones_are() {
        let dir = tempfile::tempdir().unwrap();
        let dense = dir.path().join("dense");
        std::fs::write(&dense, b"hello").unwrap();
        let (digest, size) = sha256_of_file(&std::fs::File::open(&dense).unwrap()).unwrap();
        assert_eq!(digest, hex::encode(Sha256::digest(b"hello")));
        assert_eq!(size, 5);
        let sparse = dir.path().join("sparse");
        std::fs::File::create(&sparse)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        let error = sha256_of_file(&std::fs::File::open(&sparse).unwrap()).unwrap_err();
        assert!(error.to_string().contains("holes"), "{error}");
    }

    #[tokio::test]
    async fn sessions_of_one_home_share_a_descriptor() {
        let root = std::env::temp_dir().join(format!("sluice-userfs-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&root).unwrap();
        let data_root = root.to_string_lossy().to_string();
        let a = UserFs::open(data_root.clone(), "alice".into(), UserWork::unshared(2))
            .await
            .unwrap();
        let b = UserFs::open(data_root.clone(), "alice".into(), UserWork::unshared(2))
            .await
            .unwrap();
        let other = UserFs::open(data_root.clone(), "bob".into(), UserWork::unshared(2))
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&a.home, &b.home));
        assert!(!Arc::ptr_eq(&a.home, &other.home));
        // A home deleted and recreated while a session holds the old one is a new directory.
        std::fs::remove_dir(root.join("alice")).unwrap();
        let c = UserFs::open(data_root.clone(), "alice".into(), UserWork::unshared(2))
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&a.home, &c.home));
        assert!(c.metadata(&VirtualPath::root()).await.is_ok());
        drop((a, b, c, other));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
