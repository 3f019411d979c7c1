//! Homes in an S3-compatible bucket (`storage.objectStore`): its own module because objects are
//! not files (no directories, no rename, no writes in place), and every translation between
//! the two (keys from virtual paths, `dir/` markers, copy + delete, spooled publication) is
//! made here, once, behind the same `UserFs` calls the protocols make for the local file system.
//!
//! Confinement: a key is always `<home>/` followed by a [`VirtualPath`] (already normalised:
//! no `.`, `..` or empty component), under the bucket's `prefix` (OpenDAL's root); no client
//! argument can name a key outside the user's `<prefix>/<home>/`. Semantics per verb, limits
//! and what is not supported: docs/object-storage.md.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use opendal::{EntryMode, ErrorKind, Metadata, Operator};
use sluice_config::ObjectStoreConfig;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::userfs::{CHUNK_BYTES, EntryInfo, EntryKind, FileStat, FsError, Replace, UploadHasher};
use crate::vpath::VirtualPath;

/// A directory rename copies every object under it, then deletes them: refused above this many
/// objects (it is neither atomic nor cheap; move such trees with the store's own tools).
pub const MAX_RENAME_OBJECTS: usize = 1000;
/// Entries an SFTP directory handle (or an MLSD/NLST cursor) holds on an object store: the
/// listing is read (paginated, 1000 keys per request) when the handle is opened.
pub const MAX_CURSOR_ENTRIES: usize = 100_000;
/// Permission bits shown for objects and prefixes (objects have none).
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// Setting up the client from `storage.objectStore`.
#[derive(Debug, thiserror::Error)]
pub enum ObjectStoreError {
    #[error("storage.objectStore.{field}: cannot read {path}: {source}")]
    Read {
        field: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("storage.objectStore.{field}: {path} is empty")]
    Empty { field: &'static str, path: String },
    #[error("storage.objectStore.caFile: {path}: {message}")]
    Ca { path: String, message: String },
    #[error("storage.objectStore: cannot set up the client: {0}")]
    Client(String),
}

/// The bucket, as one configuration snapshot uses it.
pub struct ObjectStore {
    op: Operator,
    part_bytes: usize,
    /// `endpoint/bucket/prefix`, for logs.
    pub location: String,
}

/// The inputs of [`ObjectStore::from_config`] read from files: they go into the snapshot's
/// digest so that a rotated credential reloads the configuration.
pub struct ObjectStoreFiles {
    pub access_key_id: Vec<u8>,
    pub secret_access_key: Vec<u8>,
    pub ca: Option<Vec<u8>>,
}

impl ObjectStoreFiles {
    /// Reads the credential (and CA) files, each resolved by `resolve` (relative to
    /// server.yaml).
    pub fn read(
        config: &ObjectStoreConfig,
        resolve: impl Fn(&str) -> std::path::PathBuf,
    ) -> Result<ObjectStoreFiles, ObjectStoreError> {
        let read = |field: &'static str, value: &str| {
            let path = resolve(value);
            let bytes = std::fs::read(&path).map_err(|source| ObjectStoreError::Read {
                field,
                path: path.display().to_string(),
                source,
            })?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Err(ObjectStoreError::Empty {
                    field,
                    path: path.display().to_string(),
                });
            }
            Ok(bytes)
        };
        Ok(ObjectStoreFiles {
            access_key_id: read("accessKeyIdFile", &config.access_key_id_file)?,
            secret_access_key: read("secretAccessKeyFile", &config.secret_access_key_file)?,
            ca: config
                .ca_file
                .as_deref()
                .map(|ca| read("caFile", ca))
                .transpose()?,
        })
    }
}

/// OpenDAL's root for `prefix`: `/` or `/a/b/`.
pub fn root_for(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        format!("/{trimmed}/")
    }
}

/// The store the last snapshot built, with what it was built from: a reload (every
/// `reload.intervalMs`, whether anything changed or not) reuses it, and with it its pool of
/// HTTP connections, unless the section or a credential file changed.
type Built = (ObjectStoreConfig, [u8; 32], Arc<ObjectStore>);
static LAST_BUILT: Mutex<Option<Built>> = Mutex::new(None);

fn files_digest(files: &ObjectStoreFiles, ca_path: Option<&Path>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in [&files.access_key_id, &files.secret_access_key] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    if let Some(ca) = &files.ca {
        hasher.update(ca);
    }
    if let Some(path) = ca_path {
        hasher.update(path.as_os_str().as_encoded_bytes());
    }
    hasher.finalize().into()
}

impl ObjectStore {
    /// [`ObjectStore::from_config`], or the store built last time from the same inputs.
    pub fn shared(
        config: &ObjectStoreConfig,
        files: &ObjectStoreFiles,
        ca_path: Option<&Path>,
    ) -> Result<Arc<ObjectStore>, ObjectStoreError> {
        let digest = files_digest(files, ca_path);
        let mut last = LAST_BUILT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((built_config, built_digest, store)) = last.as_ref()
            && built_config == config
            && *built_digest == digest
        {
            return Ok(store.clone());
        }
        let store = Arc::new(ObjectStore::from_config(config, files, ca_path)?);
        *last = Some((config.clone(), digest, store.clone()));
        Ok(store)
    }

    pub fn from_config(
        config: &ObjectStoreConfig,
        files: &ObjectStoreFiles,
        ca_path: Option<&Path>,
    ) -> Result<ObjectStore, ObjectStoreError> {
        // reqwest is built with rustls but no bundled crypto: aws-lc-rs, as for FTPS and SSH.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .pool_idle_timeout(std::time::Duration::from_secs(60));
        if let Some(ca) = &files.ca {
            let path = ca_path.map(|p| p.display().to_string()).unwrap_or_default();
            let certs =
                reqwest::Certificate::from_pem_bundle(ca).map_err(|e| ObjectStoreError::Ca {
                    path: path.clone(),
                    message: format!("not a PEM bundle: {e}"),
                })?;
            if certs.is_empty() {
                return Err(ObjectStoreError::Ca {
                    path,
                    message: "no certificate in the file".into(),
                });
            }
            client = client.tls_certs_only(certs);
        }
        let client = client
            .build()
            .map_err(|e| ObjectStoreError::Client(e.to_string()))?;
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_string();
        let mut builder = opendal::services::S3::default()
            .root(&root_for(&config.prefix))
            .bucket(&config.bucket)
            .endpoint(config.endpoint.trim_end_matches('/'))
            .region(&config.region)
            .access_key_id(&text(&files.access_key_id))
            .secret_access_key(&text(&files.secret_access_key))
            .disable_config_load()
            .disable_ec2_metadata();
        if !config.path_style {
            builder = builder.enable_virtual_host_style();
        }
        let op = Operator::new(builder).map_err(|e| ObjectStoreError::Client(e.to_string()))?;
        let transport = opendal::HttpTransporter::new(
            opendal_http_transport_reqwest::ReqwestTransport::new(client),
        );
        let context = op.base_context().with_http_transport(transport);
        let op = op
            .with_context(context)
            .layer(opendal::layers::RetryLayer::new().with_max_times(3));
        Ok(ObjectStore {
            op,
            part_bytes: usize::try_from(config.part_bytes).unwrap_or(usize::MAX),
            location: format!(
                "{}/{}{}",
                config.endpoint.trim_end_matches('/'),
                config.bucket,
                root_for(&config.prefix)
            ),
        })
    }

    /// The view of one home (`partners/acme`, relative and normalised).
    pub fn home(&self, home: &str) -> ObjectHome {
        ObjectHome {
            op: self.op.clone(),
            part_bytes: self.part_bytes,
            base: home_base(home),
        }
    }
}

/// `partners/acme` -> `partners/acme/` (the home's key prefix, below the store's root).
pub fn home_base(home: &str) -> String {
    let home = VirtualPath::root()
        .resolve(home)
        .map(|p| p.relative())
        .unwrap_or_default();
    if home == "." || home.is_empty() {
        String::new()
    } else {
        format!("{home}/")
    }
}

/// The key of the object `path` names in the home `base`.
pub fn file_key(base: &str, path: &VirtualPath) -> String {
    if path.is_root() {
        base.to_string()
    } else {
        format!("{base}{}", path.relative())
    }
}

/// The key prefix (and marker object) of the directory `path` names in the home `base`.
pub fn dir_key(base: &str, path: &VirtualPath) -> String {
    if path.is_root() {
        base.to_string()
    } else {
        format!("{base}{}/", path.relative())
    }
}

/// The name of a listed entry relative to the listed directory `dir` (`a/b/`): `c` for both
/// `a/b/c` and `a/b/c/`; `None` for the directory's own marker or anything not directly in it.
pub fn child_name(dir: &str, entry: &str) -> Option<String> {
    let rest = entry.strip_prefix(dir)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains('/') {
        None
    } else {
        Some(rest.to_string())
    }
}

/// The first name in `path` with a backslash: some S3-compatible stores (SeaweedFS, MinIO on
/// Windows) read `\` as `/`, which would make `..\x` a parent reference the virtual path
/// never saw. Refused rather than trusted to each store.
pub fn misread_name(path: &VirtualPath) -> Option<String> {
    path.relative()
        .split('/')
        .find(|name| name.contains('\\'))
        .map(str::to_string)
}

/// Where a directory rename sends `key` (under `from`, both directory keys ending in `/`).
pub fn renamed_key(key: &str, from: &str, to: &str) -> Option<String> {
    key.strip_prefix(from).map(|rest| format!("{to}{rest}"))
}

/// Maps a store error to what the protocols report. The store's own message (bucket, keys,
/// endpoint) is logged, never sent to the client.
fn fs_error(path: &VirtualPath, error: opendal::Error) -> FsError {
    let path_text = path.to_string();
    match error.kind() {
        ErrorKind::NotFound => FsError::NotFound(path_text),
        ErrorKind::PermissionDenied => FsError::Denied(path_text),
        ErrorKind::AlreadyExists | ErrorKind::ConditionNotMatch => FsError::Exists(path_text),
        ErrorKind::IsADirectory => FsError::IsADirectory(path_text),
        ErrorKind::NotADirectory => FsError::NotADirectory(path_text),
        kind => {
            tracing::warn!(path = %path, %error, "object storage request failed");
            FsError::Io {
                path: path_text,
                source: io::Error::other(format!("object storage: {kind}")),
            }
        }
    }
}

fn io_error(path: &VirtualPath, error: io::Error) -> FsError {
    FsError::from_io(path, error)
}

/// What a path names in a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    File { size: u64, modified: Option<u64> },
    Dir,
}

fn seconds(meta: &Metadata) -> Option<u64> {
    meta.last_modified().and_then(|t| {
        SystemTime::from(t)
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    })
}

fn stat_of(found: Found) -> FileStat {
    match found {
        Found::File { size, modified } => FileStat {
            kind: EntryKind::File,
            size,
            permissions: FILE_MODE,
            atime: modified.unwrap_or(0),
            mtime: modified.unwrap_or(0),
        },
        Found::Dir => FileStat {
            kind: EntryKind::Dir,
            size: 0,
            permissions: DIR_MODE,
            atime: 0,
            mtime: 0,
        },
    }
}

/// A directory listing read when the cursor was opened.
pub struct ObjectCursor {
    entries: std::collections::VecDeque<(String, FileStat)>,
}

/// One user's home in the bucket.
#[derive(Clone)]
pub struct ObjectHome {
    op: Operator,
    part_bytes: usize,
    /// The home's key prefix below the store's root: `partners/acme/`.
    base: String,
}

impl ObjectHome {
    fn file_key(&self, path: &VirtualPath) -> String {
        file_key(&self.base, path)
    }

    fn dir_key(&self, path: &VirtualPath) -> String {
        dir_key(&self.base, path)
    }

    /// Whether the directory `path` exists: its marker, or any key under it.
    async fn dir_exists(&self, path: &VirtualPath) -> Result<bool, FsError> {
        if path.is_root() {
            return Ok(true);
        }
        let key = self.dir_key(path);
        match self.op.stat(&key).await {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(fs_error(path, e)),
        }
        let mut lister = self
            .op
            .lister_with(&key)
            .limit(2)
            .await
            .map_err(|e| fs_error(path, e))?;
        Ok(lister
            .try_next()
            .await
            .map_err(|e| fs_error(path, e))?
            .is_some())
    }

    /// The file, else the directory, `path` names. Every verb asks this first, so it is also
    /// where names a store could misread are refused ([`misread_name`]).
    async fn find(&self, path: &VirtualPath) -> Result<Found, FsError> {
        if path.is_root() {
            return Ok(Found::Dir);
        }
        if let Some(name) = misread_name(path) {
            return Err(FsError::Denied(format!(
                "{path}: the name {name:?} contains a backslash, which some S3-compatible \
                 stores read as a separator; not allowed on object storage"
            )));
        }
        match self.op.stat(&self.file_key(path)).await {
            Ok(meta) if meta.mode() == EntryMode::FILE => {
                return Ok(Found::File {
                    size: meta.content_length(),
                    modified: seconds(&meta),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(fs_error(path, e)),
        }
        if self.dir_exists(path).await? {
            Ok(Found::Dir)
        } else {
            Err(FsError::NotFound(path.to_string()))
        }
    }

    /// The size of the file `path` (a directory is `IsADirectory`).
    async fn file_size(&self, path: &VirtualPath) -> Result<u64, FsError> {
        match self.find(path).await? {
            Found::File { size, .. } => Ok(size),
            Found::Dir => Err(FsError::IsADirectory(path.to_string())),
        }
    }

    /// A parent that does not exist is `NotFound`, as on a file system.
    async fn require_parent(&self, path: &VirtualPath) -> Result<(), FsError> {
        let parent = path.parent();
        if self.dir_exists(&parent).await? {
            Ok(())
        } else {
            Err(FsError::NotFound(parent.to_string()))
        }
    }

    pub async fn metadata(&self, path: &VirtualPath) -> Result<EntryInfo, FsError> {
        let stat = stat_of(self.find(path).await?);
        Ok(crate::userfs::entry_info(
            path.file_name().unwrap_or("/").to_string(),
            &stat,
        ))
    }

    pub async fn stat(&self, path: &VirtualPath) -> Result<FileStat, FsError> {
        Ok(stat_of(self.find(path).await?))
    }

    /// Up to `max` entries directly under the directory `path` (sorted by name), paginated by
    /// the store; `Err(limit)` when there are more.
    async fn entries(
        &self,
        path: &VirtualPath,
        max: usize,
    ) -> Result<Result<Vec<(String, FileStat)>, usize>, FsError> {
        let dir = self.dir_key(path);
        let mut lister = self
            .op
            .lister_with(&dir)
            .await
            .map_err(|e| fs_error(path, e))?;
        let mut entries = Vec::new();
        while let Some(entry) = lister.try_next().await.map_err(|e| fs_error(path, e))? {
            let Some(name) = child_name(&dir, entry.path()) else {
                continue;
            };
            if crate::userfs::is_reserved_name(&name) {
                continue;
            }
            if entries.len() >= max {
                return Ok(Err(max));
            }
            let meta = entry.metadata();
            let found = if meta.mode() == EntryMode::DIR || entry.path().ends_with('/') {
                Found::Dir
            } else {
                Found::File {
                    size: meta.content_length(),
                    modified: seconds(meta),
                }
            };
            entries.push((name, stat_of(found)));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        // A file and a directory of one name (`x` and `x/...`) can both exist in a bucket:
        // shown once, as the directory.
        entries.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                if later.1.kind == EntryKind::Dir {
                    earlier.1 = later.1;
                }
                true
            } else {
                false
            }
        });
        Ok(Ok(entries))
    }

    pub async fn list(&self, path: &VirtualPath, max: u32) -> Result<Vec<EntryInfo>, FsError> {
        match self.find(path).await? {
            Found::File { .. } => Ok(vec![self.metadata(path).await?]),
            Found::Dir => match self.entries(path, max as usize).await? {
                Ok(entries) => Ok(entries
                    .into_iter()
                    .map(|(name, stat)| crate::userfs::entry_info(name, &stat))
                    .collect()),
                Err(limit) => Err(FsError::ListingTooLarge {
                    path: path.to_string(),
                    limit: u32::try_from(limit).unwrap_or(u32::MAX),
                }),
            },
        }
    }

    pub async fn open_cursor(&self, path: &VirtualPath) -> Result<ObjectCursor, FsError> {
        if let Found::File { .. } = self.find(path).await? {
            return Err(FsError::NotADirectory(path.to_string()));
        }
        match self.entries(path, MAX_CURSOR_ENTRIES).await? {
            Ok(entries) => Ok(ObjectCursor {
                entries: entries.into(),
            }),
            Err(limit) => Err(FsError::ListingTooLarge {
                path: path.to_string(),
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
            }),
        }
    }

    pub fn next_entries(&self, cursor: &mut ObjectCursor, count: usize) -> Vec<(String, FileStat)> {
        let take = count.min(cursor.entries.len());
        cursor.entries.drain(..take).collect()
    }

    pub async fn create_dir(&self, path: &VirtualPath) -> Result<(), FsError> {
        if path.is_root() {
            return Err(FsError::Exists(path.to_string()));
        }
        match self.find(path).await {
            Ok(_) => return Err(FsError::Exists(path.to_string())),
            Err(FsError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        self.require_parent(path).await?;
        self.op
            .create_dir(&self.dir_key(path))
            .await
            .map_err(|e| fs_error(path, e))
    }

    pub async fn remove_dir(&self, path: &VirtualPath) -> Result<(), FsError> {
        if path.is_root() {
            return Err(FsError::Denied(path.to_string()));
        }
        if let Found::File { .. } = self.find(path).await? {
            return Err(FsError::NotADirectory(path.to_string()));
        }
        let dir = self.dir_key(path);
        let mut lister = self
            .op
            .lister_with(&dir)
            .limit(2)
            .await
            .map_err(|e| fs_error(path, e))?;
        while let Some(entry) = lister.try_next().await.map_err(|e| fs_error(path, e))? {
            if entry.path() != dir {
                return Err(FsError::NotEmpty(path.to_string()));
            }
        }
        self.op.delete(&dir).await.map_err(|e| fs_error(path, e))
    }

    pub async fn remove_file(&self, path: &VirtualPath) -> Result<(), FsError> {
        self.file_size(path).await?;
        self.op
            .delete(&self.file_key(path))
            .await
            .map_err(|e| fs_error(path, e))
    }

    /// Copy + delete: a file, or a directory of at most [`MAX_RENAME_OBJECTS`] objects.
    pub async fn rename(
        &self,
        from: &VirtualPath,
        to: &VirtualPath,
        replace: Replace,
    ) -> Result<(), FsError> {
        if from.is_root() || to.is_root() {
            return Err(FsError::Denied(from.to_string()));
        }
        if from == to {
            return self.find(from).await.map(|_| ());
        }
        let source = self.find(from).await?;
        let target = match self.find(to).await {
            Ok(found) => Some(found),
            Err(FsError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        self.require_parent(to).await?;
        match (source, target) {
            (_, Some(Found::Dir)) => return Err(FsError::Exists(to.to_string())),
            (Found::Dir, Some(Found::File { .. })) => {
                return Err(FsError::NotADirectory(to.to_string()));
            }
            (Found::File { .. }, Some(Found::File { .. })) if replace == Replace::Never => {
                return Err(FsError::Exists(to.to_string()));
            }
            _ => {}
        }
        match source {
            Found::File { .. } => {
                let (from_key, to_key) = (self.file_key(from), self.file_key(to));
                self.op
                    .copy(&from_key, &to_key)
                    .await
                    .map_err(|e| fs_error(to, e))?;
                self.op
                    .delete(&from_key)
                    .await
                    .map_err(|e| fs_error(from, e))
            }
            Found::Dir => self.rename_dir(from, to).await,
        }
    }

    async fn rename_dir(&self, from: &VirtualPath, to: &VirtualPath) -> Result<(), FsError> {
        let (from_dir, to_dir) = (self.dir_key(from), self.dir_key(to));
        if to_dir.starts_with(&from_dir) {
            return Err(FsError::Denied(format!("{to} is inside {from}")));
        }
        let mut keys = Vec::new();
        let mut lister = self
            .op
            .lister_with(&from_dir)
            .recursive(true)
            .await
            .map_err(|e| fs_error(from, e))?;
        while let Some(entry) = lister.try_next().await.map_err(|e| fs_error(from, e))? {
            if keys.len() >= MAX_RENAME_OBJECTS {
                return Err(FsError::Unsupported(format!(
                    "renaming {from} would copy more than {MAX_RENAME_OBJECTS} objects on object \
                     storage; move its contents in smaller parts"
                )));
            }
            keys.push(entry.path().to_string());
        }
        // Copies first (markers recreated), deletes after: a failure half-way leaves both
        // names, never neither.
        self.op
            .create_dir(&to_dir)
            .await
            .map_err(|e| fs_error(to, e))?;
        for key in &keys {
            let Some(target) = renamed_key(key, &from_dir, &to_dir) else {
                continue;
            };
            let copied = if key.ends_with('/') {
                self.op.create_dir(&target).await
            } else {
                self.op.copy(key, &target).await.map(|_| ())
            };
            copied.map_err(|e| fs_error(to, e))?;
        }
        for key in keys.iter().rev() {
            self.op.delete(key).await.map_err(|e| fs_error(from, e))?;
        }
        match self.op.delete(&from_dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(fs_error(from, e)),
        }
    }

    /// SHA-256 of an object, streamed.
    pub async fn sha256(&self, path: &VirtualPath) -> Result<(String, u64), FsError> {
        self.file_size(path).await?;
        let reader = self
            .op
            .reader(&self.file_key(path))
            .await
            .map_err(|e| fs_error(path, e))?;
        let mut stream = reader
            .into_bytes_stream(..)
            .await
            .map_err(|e| fs_error(path, e))?;
        let mut hasher = UploadHasher::new();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| io_error(path, e))?;
            total += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok((hasher.finalize_hex(), total))
    }

    /// Streams the object from `offset` (one ranged GET) in [`CHUNK_BYTES`] chunks.
    pub async fn read_stream(
        &self,
        path: &VirtualPath,
        offset: u64,
    ) -> Result<(mpsc::Receiver<Result<Vec<u8>, FsError>>, u64), FsError> {
        let size = self.file_size(path).await?;
        if offset > size {
            return Err(FsError::Io {
                path: path.to_string(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("restart offset {offset} is beyond the file size {size}"),
                ),
            });
        }
        let (tx, rx) = mpsc::channel(4);
        if offset == size {
            return Ok((rx, size));
        }
        let reader = self
            .op
            .reader(&self.file_key(path))
            .await
            .map_err(|e| fs_error(path, e))?;
        let mut stream = reader
            .into_bytes_stream(offset..size)
            .await
            .map_err(|e| fs_error(path, e))?;
        let path = path.clone();
        tokio::spawn(async move {
            let mut pending: Vec<u8> = Vec::with_capacity(CHUNK_BYTES);
            while let Some(piece) = stream.next().await {
                let piece: Bytes = match piece {
                    Ok(piece) => piece,
                    Err(e) => {
                        let _ = tx.send(Err(io_error(&path, e))).await;
                        return;
                    }
                };
                let mut rest = &piece[..];
                while !rest.is_empty() {
                    let take = (CHUNK_BYTES - pending.len()).min(rest.len());
                    pending.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if pending.len() == CHUNK_BYTES {
                        let full = std::mem::replace(&mut pending, Vec::with_capacity(CHUNK_BYTES));
                        if tx.send(Ok(full)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if !pending.is_empty() {
                let _ = tx.send(Ok(pending)).await;
            }
        });
        Ok((rx, size))
    }

    /// Writes the first `len` bytes of the object `path` (all of it when `None`) into `file`
    /// from its current position: SFTP reads are served from this local copy, and a resumed or
    /// appended upload starts its spool with it.
    pub async fn download_into(
        &self,
        path: &VirtualPath,
        file: std::fs::File,
        len: Option<u64>,
    ) -> Result<(std::fs::File, u64), FsError> {
        let size = self.file_size(path).await?;
        let end = len.map_or(size, |len| len.min(size));
        let mut out = tokio::fs::File::from_std(file);
        if end > 0 {
            let reader = self
                .op
                .reader(&self.file_key(path))
                .await
                .map_err(|e| fs_error(path, e))?;
            let mut stream = reader
                .into_bytes_stream(0..end)
                .await
                .map_err(|e| fs_error(path, e))?;
            while let Some(piece) = stream.next().await {
                let piece = piece.map_err(|e| io_error(path, e))?;
                out.write_all(&piece).await.map_err(|e| io_error(path, e))?;
            }
        }
        out.flush().await.map_err(|e| io_error(path, e))?;
        Ok((out.into_std().await, end))
    }

    /// Checks that an upload to `path` may start: its parent exists, it is not a directory,
    /// and, with [`Replace::Never`] or `exclusive`, it does not exist. The existing size.
    pub async fn upload_target(
        &self,
        path: &VirtualPath,
        replace: Replace,
    ) -> Result<Option<u64>, FsError> {
        if path.is_root() {
            return Err(FsError::IsADirectory(path.to_string()));
        }
        self.require_parent(path).await?;
        match self.find(path).await {
            Ok(Found::Dir) => Err(FsError::IsADirectory(path.to_string())),
            Ok(Found::File { .. }) if replace == Replace::Never => {
                Err(FsError::Exists(path.to_string()))
            }
            Ok(Found::File { size, .. }) => Ok(Some(size)),
            Err(FsError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Publishes a complete spool file as the object `target`: one PUT up to `partBytes`, a
    /// multipart upload above (aborted on failure), so nothing partial is ever visible.
    /// With [`Replace::Never`], an existing object is not replaced (checked just before the
    /// upload; a concurrent upload of the same name from another pod can still win the race).
    pub async fn publish(
        &self,
        spool: std::fs::File,
        target: &VirtualPath,
        replace: Replace,
    ) -> Result<(), FsError> {
        self.upload_target(target, replace).await?;
        let key = self.file_key(target);
        let mut writer = self
            .op
            .writer_with(&key)
            .chunk(self.part_bytes)
            .concurrent(2)
            .await
            .map_err(|e| fs_error(target, e))?;
        let mut file = tokio::fs::File::from_std(spool);
        let sent = async {
            file.seek(io::SeekFrom::Start(0))
                .await
                .map_err(|e| io_error(target, e))?;
            loop {
                let mut part = vec![0u8; self.part_bytes.min(64 << 20)];
                let mut filled = 0;
                while filled < part.len() {
                    let n = file
                        .read(&mut part[filled..])
                        .await
                        .map_err(|e| io_error(target, e))?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    break;
                }
                part.truncate(filled);
                writer.write(part).await.map_err(|e| fs_error(target, e))?;
            }
            writer.close().await.map_err(|e| fs_error(target, e))?;
            Ok::<(), FsError>(())
        }
        .await;
        if sent.is_err() {
            let _ = writer.abort().await;
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> VirtualPath {
        VirtualPath::root().resolve(text).unwrap()
    }

    #[test]
    fn keys_stay_under_the_home_whatever_the_client_sent() {
        let base = home_base("partners/acme");
        assert_eq!(base, "partners/acme/");
        for (argument, key) in [
            ("/a.csv", "partners/acme/a.csv"),
            ("../../../bob/secret", "partners/acme/bob/secret"),
            ("/../..//etc/passwd", "partners/acme/etc/passwd"),
            ("sub/./../x", "partners/acme/x"),
            ("..%2F..%2Fbob", "partners/acme/..%2F..%2Fbob"),
            ("a\\..\\..\\bob", "partners/acme/a\\..\\..\\bob"),
        ] {
            assert_eq!(file_key(&base, &path(argument)), key, "{argument}");
            assert!(file_key(&base, &path(argument)).starts_with(&base));
        }
        assert_eq!(dir_key(&base, &path("/")), "partners/acme/");
        assert_eq!(dir_key(&base, &path("/in/")), "partners/acme/in/");
        // Homes are normalised the same way: no home can reach above the prefix.
        assert_eq!(home_base("../x/./y"), "x/y/");
        assert_eq!(home_base("alice"), "alice/");
    }

    #[test]
    fn a_home_is_never_the_prefix_of_another() {
        // `alice/` does not match keys of `alice2`: the separator is always part of the base.
        let alice = home_base("alice");
        assert!(!file_key(&home_base("alice2"), &path("/f")).starts_with(&alice));
    }

    #[test]
    fn names_with_backslashes_are_found_wherever_they_are() {
        assert_eq!(misread_name(&path("/a/b.txt")), None);
        assert_eq!(
            misread_name(&path("/ok/..\\bob\\x")),
            Some("..\\bob\\x".into())
        );
        assert_eq!(misread_name(&path("a\\b")), Some("a\\b".into()));
    }

    #[test]
    fn listing_names_are_direct_children_only() {
        assert_eq!(child_name("a/", "a/b"), Some("b".into()));
        assert_eq!(child_name("a/", "a/b/"), Some("b".into()));
        assert_eq!(child_name("a/", "a/"), None);
        assert_eq!(child_name("a/", "a/b/c"), None);
        assert_eq!(child_name("a/", "ab/c"), None);
        assert_eq!(child_name("", "x"), Some("x".into()));
    }

    #[test]
    fn directory_renames_map_every_key_below() {
        assert_eq!(
            renamed_key("h/a/x/y", "h/a/", "h/b/"),
            Some("h/b/x/y".into())
        );
        assert_eq!(renamed_key("h/a/", "h/a/", "h/b/"), Some("h/b/".into()));
        assert_eq!(renamed_key("h/ab/x", "h/a/", "h/b/"), None);
    }

    /// A home over OpenDAL's in-memory service: the logic above the S3 protocol (chunking,
    /// offsets, markers, checks before an upload); the S3 side is tested against SeaweedFS by
    /// tests/server/test_object_storage.py.
    fn memory_home() -> ObjectHome {
        ObjectHome {
            op: Operator::new(opendal::services::Memory::default()).unwrap(),
            part_bytes: MIN_PART,
            base: home_base("alice"),
        }
    }
    const MIN_PART: usize = 5 << 20;

    async fn collect(home: &ObjectHome, name: &str, offset: u64) -> Result<Vec<Vec<u8>>, FsError> {
        let (mut chunks, _) = home.read_stream(&path(name), offset).await?;
        let mut out = Vec::new();
        while let Some(chunk) = chunks.recv().await {
            out.push(chunk?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn streams_read_from_any_offset_in_whole_chunks() {
        let home = memory_home();
        let data: Vec<u8> = (0..3 * CHUNK_BYTES + 5)
            .map(|i| (i * 7 + 1) as u8)
            .collect();
        home.op.write("alice/big.bin", data.clone()).await.unwrap();
        for offset in [0, 1, CHUNK_BYTES as u64, 3 * CHUNK_BYTES as u64 + 5] {
            let chunks = collect(&home, "/big.bin", offset).await.unwrap();
            let (last, full) = chunks
                .split_last()
                .map_or((None, &[][..]), |(l, f)| (Some(l), f));
            assert!(
                full.iter().all(|c| c.len() == CHUNK_BYTES),
                "offset {offset}"
            );
            assert!(last.is_none_or(|l| !l.is_empty() && l.len() <= CHUNK_BYTES));
            assert_eq!(chunks.concat(), data[offset as usize..], "offset {offset}");
        }
        let beyond = collect(&home, "/big.bin", data.len() as u64 + 1).await;
        assert!(matches!(beyond, Err(FsError::Io { .. })), "{beyond:?}");
        let (digest, size) = home.sha256(&path("/big.bin")).await.unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(
            digest,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data))
        );
    }

    #[tokio::test]
    async fn uploads_need_an_existing_parent_and_never_replace_a_directory() {
        let home = memory_home();
        home.create_dir(&path("/in")).await.unwrap();
        assert!(matches!(
            home.create_dir(&path("/in")).await,
            Err(FsError::Exists(_))
        ));
        assert!(matches!(
            home.create_dir(&path("/missing/child")).await,
            Err(FsError::NotFound(_))
        ));
        assert!(matches!(
            home.upload_target(&path("/missing/f"), Replace::Allowed)
                .await,
            Err(FsError::NotFound(_))
        ));
        assert!(matches!(
            home.upload_target(&path("/in"), Replace::Allowed).await,
            Err(FsError::IsADirectory(_))
        ));
        assert_eq!(
            home.upload_target(&path("/in/f"), Replace::Allowed)
                .await
                .unwrap(),
            None
        );
        assert_eq!(home.stat(&path("/in")).await.unwrap().kind, EntryKind::Dir);
    }

    #[tokio::test]
    async fn a_published_spool_is_the_object_and_never_replaces_when_told() {
        let home = memory_home();
        let dir = tempfile::tempdir().unwrap();
        let spool = |name: &str, data: &[u8]| {
            let file = dir.path().join(name);
            std::fs::write(&file, data).unwrap();
            std::fs::File::open(&file).unwrap()
        };
        home.publish(spool("a", b"first"), &path("/f.txt"), Replace::Allowed)
            .await
            .unwrap();
        assert_eq!(
            home.op.read("alice/f.txt").await.unwrap().to_vec(),
            b"first"
        );
        let refused = home
            .publish(spool("b", b"second"), &path("/f.txt"), Replace::Never)
            .await;
        assert!(matches!(refused, Err(FsError::Exists(_))), "{refused:?}");
        assert_eq!(
            home.op.read("alice/f.txt").await.unwrap().to_vec(),
            b"first"
        );
        home.publish(spool("c", b"third"), &path("/f.txt"), Replace::Allowed)
            .await
            .unwrap();
        assert_eq!(home.file_size(&path("/f.txt")).await.unwrap(), 5);
        assert_eq!(
            home.op.read("alice/f.txt").await.unwrap().to_vec(),
            b"third"
        );
        // Nothing outside the home was written.
        let all: Vec<String> = home
            .op
            .list_with("")
            .recursive(true)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.path().to_string())
            .filter(|p| !p.ends_with('/'))
            .collect();
        assert_eq!(all, ["alice/f.txt"]);
    }

    #[test]
    fn the_root_is_the_prefix_with_slashes() {
        assert_eq!(root_for(""), "/");
        assert_eq!(root_for("tenants/prod"), "/tenants/prod/");
    }
}
