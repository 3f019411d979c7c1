//! Per-user quotas enforced during the write (H24).
//!
//! A quota that is checked only when an upload starts lets a user with one byte left upload a
//! terabyte; this module is consulted for every chunk that makes a file longer, so the upload
//! that crosses `quota.maxBytes` stops at the chunk that would cross it and is not published.
//!
//! Design, and what it promises:
//! - **The disk is the truth.** A home's usage (sizes and count of its regular files, atomic
//!   upload temporaries left out) is computed by a scan of the home at the first login after a
//!   start and again whenever it is older than `quotas.rescanSeconds` when an upload starts.
//!   Nothing is persisted, so a restart can never load a stale count: files uploaded before a
//!   restart count because they are on disk.
//! - **Between scans, deltas.** Each home has one [`HomeUsage`] shared by all sessions of the
//!   process: a publish adds the new file and frees the one it replaced, a delete or a rename
//!   over a file frees, a truncation frees. In-flight atomic uploads hold *reservations* (bytes
//!   written to their temporary so far, and one file) that count against the quota until they
//!   are published or discarded. Writes in place (appends, resumes, non-atomic mode) are
//!   charged as they grow the file.
//! - **Cost stays with the user.** The usage lock is a plain mutex held for arithmetic only,
//!   never across I/O, and per home, so no user waits for another. Scans run as the user's own
//!   file work (`budgets.maxFileWorkPerUser`) in batches of [`SCAN_BATCH`] entries, so a home of
//!   a million files slows only its owner, and one scan per home runs at a time.
//! - **Overwrites are credited.** An atomic upload over an existing file may use the old file's
//!   size as well as the free space: the old file is freed when the new one is published. For
//!   the duration of such an upload the volume holds both.
//!
//! Consistency bounds (docs/quotas-and-retention.md):
//! - One replica: exact, except that a rescan that races with a write in place can miss or
//!   double-count the batch being written (at most a few MiB) until the next rescan.
//! - Several replicas on a shared volume: each replica sees the other replicas' published files
//!   only at its next rescan. Within `quotas.rescanSeconds`, each of N replicas may admit up to
//!   the free space it last saw, so a user writing through all replicas at once can exceed the
//!   quota by at most (N - 1) x the free space at the last scan; the next rescan sees the excess
//!   and refuses every further upload until the user is below the quota again.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use cap_std::fs::Dir;
use serde_json::json;

use crate::audit::{Audit, SessionTag};
use crate::filework::UserWork;
use crate::metrics::Metrics;

/// Directory entries a scan reads in one blocking call before it gives its slot back.
pub const SCAN_BATCH: usize = 4096;

/// Why a write was refused by a quota; the message names the limit, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error(
        "quota exceeded: quota.maxBytes is {limit} bytes and {used} bytes are in use; this write needs {needed} more"
    )]
    Bytes { limit: u64, used: u64, needed: u64 },
    #[error("quota exceeded: quota.maxFiles is {limit} files and all are in use")]
    Files { limit: u64 },
    #[error("quota usage of home {home} is unknown (scan failed: {message}); writes are refused")]
    Unknown { home: String, message: String },
}

impl QuotaError {
    /// The limit's field name, for audit events and metrics.
    pub fn limit_name(&self) -> &'static str {
        match self {
            QuotaError::Bytes { .. } => "maxBytes",
            QuotaError::Files { .. } => "maxFiles",
            QuotaError::Unknown { .. } => "unknown",
        }
    }
}

/// A user's limits, from `users.yaml` `quota`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: Option<u64>,
    pub max_files: Option<u64>,
    pub warn_at_percent: u8,
}

impl Limits {
    pub fn from_config(quota: &sluice_config::Quota) -> Limits {
        Limits {
            max_bytes: quota.max_bytes.map(|b| b.0),
            max_files: quota.max_files,
            warn_at_percent: quota.warn_at_percent,
        }
    }
}

/// What a home holds: published files, and reservations of uploads in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
    pub reserved_bytes: u64,
    pub reserved_files: u64,
}

impl Usage {
    pub fn total_bytes(&self) -> u64 {
        self.bytes.saturating_add(self.reserved_bytes)
    }

    pub fn total_files(&self) -> u64 {
        self.files.saturating_add(self.reserved_files)
    }
}

/// May `extra` more bytes be stored, by a write that frees `credit` bytes when it publishes?
pub fn check_bytes(
    usage: &Usage,
    limits: &Limits,
    extra: u64,
    credit: u64,
) -> Result<(), QuotaError> {
    match limits.max_bytes {
        Some(limit) if usage.total_bytes().saturating_add(extra) > limit.saturating_add(credit) => {
            Err(QuotaError::Bytes {
                limit,
                used: usage.total_bytes().saturating_sub(credit),
                needed: extra,
            })
        }
        _ => Ok(()),
    }
}

/// May one more file be created?
pub fn check_new_file(usage: &Usage, limits: &Limits) -> Result<(), QuotaError> {
    match limits.max_files {
        Some(limit) if usage.total_files() >= limit => Err(QuotaError::Files { limit }),
        _ => Ok(()),
    }
}

/// How full the fuller of the two limits is, in whole percent (reservations count).
pub fn fill_percent(usage: &Usage, limits: &Limits) -> u64 {
    let percent = |used: u64, limit: Option<u64>| match limit {
        Some(limit) if limit > 0 => (u128::from(used) * 100 / u128::from(limit)) as u64,
        _ => 0,
    };
    percent(usage.total_bytes(), limits.max_bytes)
        .max(percent(usage.total_files(), limits.max_files))
}

/// What a change of usage means for the threshold warning: it fires once when the usage
/// reaches `warnAtPercent` and is re-armed when the usage falls below it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    Unchanged,
    Crossed(u64),
    Rearmed,
}

pub fn threshold_transition(warned: bool, percent: u64, warn_at_percent: u8) -> Threshold {
    let over = percent >= u64::from(warn_at_percent);
    match (warned, over) {
        (false, true) => Threshold::Crossed(percent),
        (true, false) => Threshold::Rearmed,
        _ => Threshold::Unchanged,
    }
}

/// The usage of one home, shared by every session of the process that uses it.
pub struct HomeUsage {
    home: String,
    state: Mutex<HomeState>,
    /// One scan per home at a time; others wait for its result instead of scanning again.
    scanning: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct HomeState {
    usage: Usage,
    scanned_at: Option<Instant>,
    scan_error: Option<String>,
    warned: bool,
}

static HOMES: LazyLock<Mutex<HashMap<String, Arc<HomeUsage>>>> = LazyLock::new(Mutex::default);

/// The process's usage record of `home` (relative to dataRoot), created unscanned.
pub fn home_usage(home: &str) -> Arc<HomeUsage> {
    let mut homes = HOMES.lock().unwrap_or_else(|p| p.into_inner());
    homes
        .entry(home.to_string())
        .or_insert_with(|| {
            Arc::new(HomeUsage {
                home: home.to_string(),
                state: Mutex::new(HomeState::default()),
                scanning: tokio::sync::Mutex::new(()),
            })
        })
        .clone()
}

/// The usage of `home` if this process tracks it (for retention's accounting of deletions).
pub fn tracked(home: &str) -> Option<Arc<HomeUsage>> {
    HOMES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(home)
        .cloned()
}

impl HomeUsage {
    fn lock(&self) -> std::sync::MutexGuard<'_, HomeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn usage(&self) -> Usage {
        self.lock().usage
    }

    /// A file of `size` bytes left the home (deleted, replaced by a rename, expired).
    pub fn freed(&self, size: u64, files: u64) {
        let mut state = self.lock();
        state.usage.bytes = state.usage.bytes.saturating_sub(size);
        state.usage.files = state.usage.files.saturating_sub(files);
    }

    fn is_fresh(&self, max_age: Duration) -> bool {
        let state = self.lock();
        state.scan_error.is_none() && state.scanned_at.is_some_and(|at| at.elapsed() < max_age)
    }
}

/// Sends what the quota has to say (threshold, refusals) to the audit log, the server log and
/// the metrics, tagged with the session that caused it.
#[derive(Clone)]
pub struct Reporter {
    pub audit: Audit,
    pub tag: SessionTag,
    pub metrics: Arc<Metrics>,
}

/// One session's view of its user's quota.
pub struct Quota {
    usage: Arc<HomeUsage>,
    limits: Limits,
    user: String,
    rescan: Duration,
    reporter: Reporter,
}

impl Quota {
    pub fn new(
        home: &str,
        user: &str,
        limits: Limits,
        rescan: Duration,
        reporter: Reporter,
    ) -> Arc<Quota> {
        Arc::new(Quota {
            usage: home_usage(home),
            limits,
            user: user.to_string(),
            rescan,
            reporter,
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn usage(&self) -> Usage {
        self.usage.usage()
    }

    pub fn home_usage(&self) -> &Arc<HomeUsage> {
        &self.usage
    }

    /// Scans the home when its usage is older than `quotas.rescanSeconds` (or was never
    /// scanned); `force` scans in any case.
    pub async fn refresh(
        &self,
        home: &Arc<Dir>,
        work: &UserWork,
        force: bool,
    ) -> Result<(), QuotaError> {
        if !force && self.usage.is_fresh(self.rescan) {
            return Ok(());
        }
        let _scan = self.usage.scanning.lock().await;
        if !force && self.usage.is_fresh(self.rescan) {
            return Ok(());
        }
        let result = scan_home(home.clone(), work).await;
        {
            let mut state = self.usage.lock();
            match &result {
                Ok((bytes, files)) => {
                    state.usage.bytes = *bytes;
                    state.usage.files = *files;
                    state.scan_error = None;
                }
                Err(error) => state.scan_error = Some(error.to_string()),
            }
            state.scanned_at = Some(Instant::now());
        }
        self.settled();
        match result {
            Ok(_) => Ok(()),
            Err(error) => {
                tracing::error!(user = %self.user, home = %self.usage.home, %error, "quota scan failed");
                Err(QuotaError::Unknown {
                    home: self.usage.home.clone(),
                    message: error.to_string(),
                })
            }
        }
    }

    fn known(&self, state: &HomeState) -> Result<(), QuotaError> {
        match &state.scan_error {
            Some(message) => Err(QuotaError::Unknown {
                home: self.usage.home.clone(),
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Starts charging an upload. `staged`: written to a temporary name and published by a
    /// rename (reserved until then), crediting `replaces` (the size of the file it will
    /// replace, if any). Otherwise written in place: `created` says whether it creates the file
    /// and `truncated` how many bytes the open cut off an existing file.
    pub fn begin(
        self: &Arc<Self>,
        path: &str,
        staged: bool,
        replaces: Option<u64>,
        created: bool,
    ) -> Result<Charge, QuotaError> {
        let mut state = self.usage.lock();
        self.known(&state)?;
        let new_file = if staged { replaces.is_none() } else { created };
        if new_file && let Err(error) = check_new_file(&state.usage, &self.limits) {
            drop(state);
            self.refused(path, &error);
            return Err(error);
        }
        if new_file {
            if staged {
                state.usage.reserved_files += 1;
            } else {
                state.usage.files += 1;
            }
        }
        drop(state);
        self.settled();
        Ok(Charge {
            quota: self.clone(),
            path: path.to_string(),
            staged,
            credit: if staged { replaces.unwrap_or(0) } else { 0 },
            reserved_file: staged && new_file,
            created_in_place: !staged && created,
            charged: 0,
            settled: false,
        })
    }

    /// Bytes cut off a file in place (a truncating open, REST, SETSTAT size).
    pub fn truncated(&self, bytes: u64) {
        if bytes > 0 {
            self.usage.freed(bytes, 0);
            self.settled();
        }
    }

    /// A file left the home.
    pub fn removed(&self, size: u64) {
        self.usage.freed(size, 1);
        self.settled();
    }

    /// Grows a file in place outside any upload (SETSTAT size of a path).
    pub fn grow_in_place(&self, path: &str, bytes: u64) -> Result<(), QuotaError> {
        let mut state = self.usage.lock();
        self.known(&state)?;
        if let Err(error) = check_bytes(&state.usage, &self.limits, bytes, 0) {
            drop(state);
            self.refused(path, &error);
            return Err(error);
        }
        state.usage.bytes += bytes;
        drop(state);
        self.settled();
        Ok(())
    }

    fn refused(&self, path: &str, error: &QuotaError) {
        let usage = self.usage();
        tracing::warn!(user = %self.user, path, %error, "upload refused by quota");
        Metrics::inc(
            &self.reporter.metrics.quota_refusals,
            &[("limit", error.limit_name())],
        );
        self.reporter.audit.event(
            &self.reporter.tag,
            "quota_exceeded",
            json!({
                "path": path,
                "limit": error.limit_name(),
                "reason": error.to_string(),
                "used_bytes": usage.total_bytes(),
                "max_bytes": self.limits.max_bytes,
                "used_files": usage.total_files(),
                "max_files": self.limits.max_files,
            }),
        );
    }

    /// After every change: the metric, and the threshold warning when it is crossed.
    fn settled(&self) {
        let (usage, transition) = {
            let mut state = self.usage.lock();
            let percent = fill_percent(&state.usage, &self.limits);
            let transition =
                threshold_transition(state.warned, percent, self.limits.warn_at_percent);
            match transition {
                Threshold::Crossed(_) => state.warned = true,
                Threshold::Rearmed => state.warned = false,
                Threshold::Unchanged => {}
            }
            (state.usage, transition)
        };
        let labels = vec![("user", self.user.clone())];
        let metrics = &self.reporter.metrics;
        metrics
            .quota_used_bytes
            .get_or_create(&labels)
            .set(i64::try_from(usage.total_bytes()).unwrap_or(i64::MAX));
        metrics
            .quota_used_files
            .get_or_create(&labels)
            .set(i64::try_from(usage.total_files()).unwrap_or(i64::MAX));
        if let Some(max) = self.limits.max_bytes {
            metrics
                .quota_max_bytes
                .get_or_create(&labels)
                .set(i64::try_from(max).unwrap_or(i64::MAX));
        }
        if let Threshold::Crossed(percent) = transition {
            tracing::warn!(
                user = %self.user,
                percent,
                used_bytes = usage.total_bytes(),
                max_bytes = ?self.limits.max_bytes,
                used_files = usage.total_files(),
                max_files = ?self.limits.max_files,
                "quota threshold reached"
            );
            self.reporter.audit.event(
                &self.reporter.tag,
                "quota_threshold",
                json!({
                    "percent": percent,
                    "warn_at_percent": self.limits.warn_at_percent,
                    "used_bytes": usage.total_bytes(),
                    "max_bytes": self.limits.max_bytes,
                    "used_files": usage.total_files(),
                    "max_files": self.limits.max_files,
                }),
            );
        }
    }
}

/// Attaches `user`'s quota (if it has one) to a session's freshly opened home.
pub async fn attach(
    context: &crate::context::Context,
    user: &sluice_config::User,
    tag: &SessionTag,
    fs: crate::userfs::UserFs,
) -> crate::userfs::UserFs {
    let Some(config) = &user.quota else {
        return fs;
    };
    let rescan = context.snapshot.borrow().config.quotas.rescan_seconds;
    let mut tag = tag.clone();
    tag.user = Some(user.username.clone());
    let quota = Quota::new(
        fs.home_key(),
        &user.username,
        Limits::from_config(config),
        Duration::from_secs(rescan),
        Reporter {
            audit: context.audit.clone(),
            tag,
            metrics: context.metrics.clone(),
        },
    );
    fs.with_quota(Some(quota)).await
}

/// One upload's account with the quota. Dropped without [`Charge::publish`], what it reserved
/// is given back (as [`Charge::discard`] without removal).
pub struct Charge {
    quota: Arc<Quota>,
    path: String,
    staged: bool,
    credit: u64,
    reserved_file: bool,
    created_in_place: bool,
    charged: u64,
    settled: bool,
}

impl Charge {
    /// Admits `bytes` more (the file grows by that much); refused when it would cross the quota.
    pub fn grow(&mut self, bytes: u64) -> Result<(), QuotaError> {
        if bytes == 0 {
            return Ok(());
        }
        let quota = &self.quota;
        let mut state = quota.usage.lock();
        if let Err(error) = check_bytes(&state.usage, &quota.limits, bytes, self.credit) {
            drop(state);
            quota.refused(&self.path, &error);
            return Err(error);
        }
        if self.staged {
            state.usage.reserved_bytes += bytes;
        } else {
            state.usage.bytes += bytes;
        }
        self.charged += bytes;
        drop(state);
        quota.settled();
        Ok(())
    }

    /// The file shrank by `bytes` (SETSTAT size, ftruncate on a write handle).
    pub fn shrink(&mut self, bytes: u64) {
        let bytes = bytes.min(self.charged);
        {
            let mut state = self.quota.usage.lock();
            if self.staged {
                state.usage.reserved_bytes = state.usage.reserved_bytes.saturating_sub(bytes);
            } else {
                state.usage.bytes = state.usage.bytes.saturating_sub(bytes);
            }
        }
        self.charged -= bytes;
        self.quota.settled();
    }

    /// The upload was published. For a staged upload, `replaced` is the size of the file its
    /// rename replaced (None: it created the name).
    pub fn publish(mut self, replaced: Option<u64>) {
        self.settled = true;
        if !self.staged {
            return;
        }
        {
            let mut state = self.quota.usage.lock();
            state.usage.reserved_bytes = state.usage.reserved_bytes.saturating_sub(self.charged);
            if self.reserved_file {
                state.usage.reserved_files = state.usage.reserved_files.saturating_sub(1);
            }
            state.usage.bytes = state.usage.bytes.saturating_add(self.charged);
            match replaced {
                Some(old) => state.usage.bytes = state.usage.bytes.saturating_sub(old),
                None => state.usage.files += 1,
            }
        }
        self.quota.settled();
    }

    /// The upload was abandoned; `removed` says whether a file created in place was deleted.
    pub fn discard(mut self, removed: bool) {
        self.release(removed);
    }

    fn release(&mut self, removed: bool) {
        if self.settled {
            return;
        }
        self.settled = true;
        {
            let mut state = self.quota.usage.lock();
            if self.staged {
                state.usage.reserved_bytes =
                    state.usage.reserved_bytes.saturating_sub(self.charged);
                if self.reserved_file {
                    state.usage.reserved_files = state.usage.reserved_files.saturating_sub(1);
                }
            } else if removed && self.created_in_place {
                state.usage.bytes = state.usage.bytes.saturating_sub(self.charged);
                state.usage.files = state.usage.files.saturating_sub(1);
            }
        }
        self.quota.settled();
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.release(false);
    }
}

/// A home's regular files: (bytes, files), atomic-upload temporaries left out, symlinks not
/// followed. Runs as the user's file work, [`SCAN_BATCH`] entries per blocking call.
pub async fn scan_home(home: Arc<Dir>, work: &UserWork) -> io::Result<(u64, u64)> {
    let mut state = ScanState {
        pending: vec![home.try_clone()?],
        current: None,
        bytes: 0,
        files: 0,
    };
    loop {
        let (next, done) = work
            .run(move || {
                let done = state.step(SCAN_BATCH);
                (state, done)
            })
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        state = next;
        match done {
            Ok(true) => return Ok((state.bytes, state.files)),
            Ok(false) => {}
            Err(error) => return Err(error),
        }
    }
}

struct ScanState {
    pending: Vec<Dir>,
    current: Option<cap_std::fs::ReadDir>,
    bytes: u64,
    files: u64,
}

impl ScanState {
    /// Reads up to `budget` entries; true when the whole tree was read.
    fn step(&mut self, budget: usize) -> io::Result<bool> {
        let mut seen = 0;
        while seen < budget {
            let Some(entries) = self.current.as_mut() else {
                match self.pending.pop() {
                    Some(dir) => {
                        self.current = Some(dir.entries()?);
                        continue;
                    }
                    None => return Ok(true),
                }
            };
            let Some(entry) = entries.next() else {
                self.current = None;
                continue;
            };
            seen += 1;
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let name = entry.file_name();
            if crate::userfs::is_reserved_name(&name.to_string_lossy()) {
                continue;
            }
            let file_type = match entry.file_type() {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if file_type.is_dir() {
                match entry.open_dir() {
                    Ok(dir) => self.pending.push(dir),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            } else if file_type.is_file() {
                match entry.metadata() {
                    Ok(meta) => {
                        self.bytes = self.bytes.saturating_add(meta.len());
                        self.files += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(bytes: Option<u64>, files: Option<u64>) -> Limits {
        Limits {
            max_bytes: bytes,
            max_files: files,
            warn_at_percent: 80,
        }
    }

    #[test]
    fn bytes_are_admitted_up_to_the_limit_and_not_one_more() {
        let l = limits(Some(100), None);
        let usage = Usage {
            bytes: 60,
            reserved_bytes: 30,
            ..Usage::default()
        };
        assert_eq!(check_bytes(&usage, &l, 10, 0), Ok(()));
        assert_eq!(
            check_bytes(&usage, &l, 11, 0),
            Err(QuotaError::Bytes {
                limit: 100,
                used: 90,
                needed: 11
            })
        );
        // An overwrite may use the size of the file it replaces.
        assert_eq!(check_bytes(&usage, &l, 50, 40), Ok(()));
        assert!(check_bytes(&usage, &l, 51, 40).is_err());
        assert_eq!(
            check_bytes(&usage, &limits(None, Some(1)), u64::MAX, 0),
            Ok(())
        );
        assert!(
            check_bytes(&usage, &l, u64::MAX, 0)
                .unwrap_err()
                .to_string()
                .contains("quota.maxBytes")
        );
    }

    #[test]
    fn files_count_reservations() {
        let l = limits(None, Some(3));
        let mut usage = Usage {
            files: 2,
            ..Usage::default()
        };
        assert_eq!(check_new_file(&usage, &l), Ok(()));
        usage.reserved_files = 1;
        assert_eq!(
            check_new_file(&usage, &l),
            Err(QuotaError::Files { limit: 3 })
        );
    }

    #[test]
    fn threshold_fires_once_and_rearms_below() {
        let l = limits(Some(1000), Some(10));
        let usage = Usage {
            bytes: 100,
            files: 8,
            ..Usage::default()
        };
        assert_eq!(fill_percent(&usage, &l), 80);
        assert_eq!(threshold_transition(false, 80, 80), Threshold::Crossed(80));
        assert_eq!(threshold_transition(true, 95, 80), Threshold::Unchanged);
        assert_eq!(threshold_transition(true, 79, 80), Threshold::Rearmed);
        assert_eq!(threshold_transition(false, 79, 80), Threshold::Unchanged);
    }

    fn reporter() -> Reporter {
        Reporter {
            audit: Audit::start(false, None),
            tag: SessionTag::default(),
            metrics: Metrics::new(),
        }
    }

    #[test]
    fn staged_uploads_reserve_then_publish_or_give_back() {
        let home = format!("test-{}", rand::random::<u64>());
        let quota = Quota::new(
            &home,
            "u",
            limits(Some(100), Some(2)),
            Duration::from_secs(60),
            reporter(),
        );
        let mut a = quota.begin("/a", true, None, true).unwrap();
        a.grow(60).unwrap();
        assert_eq!(
            quota.usage(),
            Usage {
                bytes: 0,
                files: 0,
                reserved_bytes: 60,
                reserved_files: 1
            }
        );
        let mut b = quota.begin("/b", true, None, true).unwrap();
        assert!(b.grow(41).is_err());
        b.grow(40).unwrap();
        // Both file slots are reserved: a third new file is refused.
        assert!(matches!(
            quota.begin("/c", true, None, true),
            Err(QuotaError::Files { limit: 2 })
        ));
        a.publish(None);
        drop(b); // a broken upload gives its reservation back
        assert_eq!(
            quota.usage(),
            Usage {
                bytes: 60,
                files: 1,
                reserved_bytes: 0,
                reserved_files: 0
            }
        );
        // Overwriting /a (60 bytes) with 100 bytes fits: the old file is credited.
        let mut over = quota.begin("/a", true, Some(60), false).unwrap();
        over.grow(100).unwrap();
        over.publish(Some(60));
        assert_eq!(
            quota.usage(),
            Usage {
                bytes: 100,
                files: 1,
                reserved_bytes: 0,
                reserved_files: 0
            }
        );
        quota.removed(100);
        assert_eq!(quota.usage(), Usage::default());
    }

    #[test]
    fn in_place_writes_count_at_once_and_removal_of_a_new_file_frees_it() {
        let home = format!("test-{}", rand::random::<u64>());
        let quota = Quota::new(
            &home,
            "u",
            limits(Some(100), None),
            Duration::from_secs(60),
            reporter(),
        );
        let mut new = quota.begin("/n", false, None, true).unwrap();
        new.grow(30).unwrap();
        assert_eq!(
            quota.usage(),
            Usage {
                bytes: 30,
                files: 1,
                ..Usage::default()
            }
        );
        new.discard(true);
        assert_eq!(quota.usage(), Usage::default());
        let mut append = quota.begin("/n", false, None, true).unwrap();
        append.grow(70).unwrap();
        append.shrink(20);
        append.publish(None);
        assert_eq!(
            quota.usage(),
            Usage {
                bytes: 50,
                files: 1,
                ..Usage::default()
            }
        );
        quota.truncated(50);
        assert_eq!(quota.usage().bytes, 0);
    }

    #[tokio::test]
    async fn a_scan_counts_regular_files_below_the_home_but_not_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("top"), vec![0u8; 10]).unwrap();
        std::fs::write(dir.path().join("a/b/deep"), vec![0u8; 5]).unwrap();
        std::fs::write(dir.path().join("a/.sluice-upload-x"), vec![0u8; 1000]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        for i in 0..(SCAN_BATCH + 3) {
            std::fs::write(dir.path().join(format!("a/f{i}")), b"x").unwrap();
        }
        let home =
            Arc::new(Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority()).unwrap());
        let (bytes, files) = scan_home(home, &UserWork::unshared(1)).await.unwrap();
        assert_eq!(files, 2 + SCAN_BATCH as u64 + 3);
        assert_eq!(bytes, 15 + SCAN_BATCH as u64 + 3);
    }
}
