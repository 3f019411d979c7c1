//! Retention (H24): files under a user's retention rules are deleted once they are older than
//! the rule's `maxAge`, or once they were downloaded completely (`afterDownload`), so that a
//! drop zone does not keep partner files forever and nobody has to script a cron job for it.
//!
//! - **Which files.** [`due`] and [`rule_for`] are pure: the most specific rule covering a file
//!   decides; a file is due when its modification time is older than `maxAge` at the server's
//!   clock (`crate::windows::now`, which tests shift with the test-only clock offset).
//! - **Never a file in use.** Every transfer holds an [`InUse`] guard on its stored path for as
//!   long as it reads or writes; the pass skips such files, and a file's age is read again
//!   right before it is deleted, so a file rewritten since the walk is kept. Atomic-upload
//!   temporaries are never candidates (reserved names).
//! - **One replica.** With `retention.replica: ordinalZero` (what the operator renders), only
//!   the process whose host name ends in `-0` runs the pass. A transfer on another replica is
//!   invisible to this process's guards: a file being *written* there has a fresh modification
//!   time and is not due; a file being *read* there keeps being readable to its end (an
//!   unlinked file lives until its last descriptor closes) but disappears from listings.
//!   `afterDownload` deletions happen on the replica that served the download.
//! - **Cost stays with the user.** Each user's walk runs as that user's file work
//!   (`budgets.maxFileWorkPerUser`), in batches, so a home with millions of files delays only
//!   its own retention.
//! - **Recorded.** Every deletion is an audit event `retention_deleted`, a file event
//!   `dev.sluice.file.expired`, and a count in `sluice_retention_deleted_total`.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use serde_json::json;
use sluice_config::{RetentionRule, User};

use crate::audit::{Audit, SessionTag};
use crate::context::Context;
use crate::events::{Detail, Events, Kind};
use crate::filework::UserWork;
use crate::metrics::Metrics;
use crate::userfs::{UserFs, is_reserved_name};
use crate::vpath::VirtualPath;

/// Candidates a pass deletes per user at most (the rest waits for the next pass).
pub const MAX_DELETIONS_PER_PASS: usize = 10_000;
/// Directory entries read per blocking call of a walk.
const WALK_BATCH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("retention: cannot open home {home}: {source}")]
    Home { home: String, source: io::Error },
    #[error("retention: walking {path}: {source}")]
    Walk { path: String, source: io::Error },
    #[error("retention: file work cancelled: {0}")]
    Cancelled(String),
}

/// Files open for a transfer, by stored path (`home/relative`), counted.
static OPEN: LazyLock<Mutex<HashMap<String, usize>>> = LazyLock::new(Mutex::default);

fn key(home: &str, relative: &str) -> String {
    format!(
        "{}/{}",
        home.trim_matches('/'),
        relative.trim_start_matches('/')
    )
}

/// A transfer's claim on a file: retention leaves it alone while the guard lives.
pub struct InUse(String);

impl InUse {
    pub fn hold(home: &str, path: &VirtualPath) -> InUse {
        let key = key(home, &path.relative());
        *OPEN
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default() += 1;
        InUse(key)
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.0) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.0);
            }
        }
    }
}

pub fn in_use(home: &str, relative: &str) -> bool {
    OPEN.lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains_key(&key(home, relative))
}

/// The rule that decides for `relative` (a path below the home, no leading `/`): the covering
/// rule with the longest directory.
pub fn rule_for<'a>(rules: &'a [RetentionRule], relative: &str) -> Option<&'a RetentionRule> {
    rules
        .iter()
        .filter(|rule| rule.covers(relative))
        .max_by_key(|rule| rule.relative_dir().len())
}

/// Whether a file last modified at `mtime` (Unix seconds) is due under `rule` at `now`.
pub fn due(rule: &RetentionRule, mtime: i64, now: i64) -> bool {
    match rule.max_age_seconds() {
        Some(max_age) => now.saturating_sub(mtime) > i64::try_from(max_age).unwrap_or(i64::MAX),
        None => false,
    }
}

/// A file the walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub relative: String,
    pub mtime: i64,
    pub size: u64,
}

/// The candidates that are due and not in use, oldest first, at most `limit`.
pub fn select(
    rules: &[RetentionRule],
    candidates: Vec<Candidate>,
    now: i64,
    busy: impl Fn(&str) -> bool,
    limit: usize,
) -> Vec<Candidate> {
    let mut due_now: Vec<Candidate> = candidates
        .into_iter()
        .filter(|c| rule_for(rules, &c.relative).is_some_and(|rule| due(rule, c.mtime, now)))
        .filter(|c| !busy(&c.relative))
        .collect();
    due_now.sort_by_key(|c| c.mtime);
    due_now.truncate(limit);
    due_now
}

fn now_seconds() -> i64 {
    crate::windows::now().as_second()
}

/// Runs a retention pass every `retention.intervalSeconds` while the process lives (on the
/// replica `retention.replica` names).
pub async fn run(context: Arc<Context>) {
    loop {
        let (interval, runs_here) = {
            let snapshot = context.snapshot.borrow();
            let retention = &snapshot.config.retention;
            (
                Duration::from_secs(retention.interval_seconds),
                retention.runs_on(&context.host_name),
            )
        };
        // The first pass waits one interval: a restart does not delete before clients are back.
        tokio::time::sleep(interval).await;
        if runs_here {
            pass(&context).await;
        }
    }
}

/// One pass over every user with `maxAge` rules.
pub async fn pass(context: &Arc<Context>) {
    let (users, data_root) = {
        let snapshot = context.snapshot.borrow();
        let users: Vec<Arc<User>> = snapshot
            .users
            .values()
            .filter(|u| u.retention.iter().any(|r| r.max_age.is_some()))
            .cloned()
            .collect();
        (users, snapshot.data_root.clone())
    };
    if users.is_empty() {
        return;
    }
    let started = std::time::Instant::now();
    let mut deleted = 0;
    let mut failed = 0;
    for user in &users {
        let work = context.user_work(&user.username);
        match expire_user(context, user, &data_root, work).await {
            Ok(count) => deleted += count,
            Err(error) => {
                failed += 1;
                tracing::warn!(user = %user.username, %error, "retention pass failed");
            }
        }
    }
    context.audit.server_event(
        "retention_pass",
        json!({
            "users": users.len(),
            "deleted": deleted,
            "failed_users": failed,
            "duration_ms": started.elapsed().as_millis() as u64,
        }),
    );
}

async fn expire_user(
    context: &Arc<Context>,
    user: &Arc<User>,
    data_root: &std::path::Path,
    work: UserWork,
) -> Result<usize, RetentionError> {
    let home_path = VirtualPath::root()
        .resolve(&user.home)
        .map_err(|e| RetentionError::Home {
            home: user.home.clone(),
            source: io::Error::other(e.to_string()),
        })?;
    let home_key = home_path.relative();
    let root = data_root.to_path_buf();
    let rel = home_key.clone();
    let home = work
        .run(move || {
            let root = Dir::open_ambient_dir(&root, ambient_authority())?;
            root.open_dir(&rel)
        })
        .await
        .map_err(|e| RetentionError::Cancelled(e.to_string()))?;
    let home = match home {
        Ok(home) => Arc::new(home),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(RetentionError::Home {
                home: user.home.clone(),
                source,
            });
        }
    };
    let mut candidates = Vec::new();
    for rule in user.retention.iter().filter(|r| r.max_age.is_some()) {
        candidates.extend(walk(&home, rule.relative_dir(), &work).await?);
    }
    candidates.sort_by(|a, b| a.relative.cmp(&b.relative));
    candidates.dedup_by(|a, b| a.relative == b.relative);
    let now = now_seconds();
    let chosen = select(
        &user.retention,
        candidates,
        now,
        |relative| in_use(&home_key, relative),
        MAX_DELETIONS_PER_PASS,
    );
    let mut deleted_count = 0;
    for candidate in chosen {
        let Some(rule) = rule_for(&user.retention, &candidate.relative) else {
            continue;
        };
        let rule = rule.clone();
        let dir = home.clone();
        let relative = candidate.relative.clone();
        // Checked again right before the unlink: the file may have been rewritten (or opened
        // by a transfer) since the walk.
        let home_for_check = home_key.clone();
        let deleted = work
            .run(move || -> io::Result<Option<(u64, i64)>> {
                if in_use(&home_for_check, &relative) {
                    return Ok(None);
                }
                let meta = match dir.symlink_metadata(&relative) {
                    Ok(meta) => meta,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                };
                let mtime = mtime_of(&meta);
                if !meta.is_file() || !due(&rule, mtime, now_seconds()) {
                    return Ok(None);
                }
                dir.remove_file(&relative)?;
                Ok(Some((meta.len(), mtime)))
            })
            .await
            .map_err(|e| RetentionError::Cancelled(e.to_string()))?;
        match deleted {
            Ok(Some((size, mtime))) => {
                deleted_count += 1;
                let path = VirtualPath::root()
                    .resolve(&candidate.relative)
                    .unwrap_or_else(|_| VirtualPath::root());
                if let Some(usage) = crate::quota::tracked(&home_key) {
                    usage.freed(size, 1);
                }
                let tag = SessionTag {
                    user: Some(user.username.clone()),
                    ..SessionTag::default()
                };
                let sinks = Sinks {
                    audit: &context.audit,
                    metrics: &context.metrics,
                    events: &context.events,
                };
                let max_age =
                    rule_for(&user.retention, &candidate.relative).and_then(|r| r.max_age.clone());
                sinks
                    .record(
                        &tag,
                        &home_key,
                        &path,
                        size,
                        "max_age",
                        json!({"age_seconds": now - mtime, "max_age": max_age}),
                    )
                    .await;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(user = %user.username, path = %candidate.relative, %error, "retention could not delete a file");
            }
        }
    }
    Ok(deleted_count)
}

fn mtime_of(meta: &cap_std::fs::Metadata) -> i64 {
    use cap_std::fs::MetadataExt;
    meta.mtime()
}

/// The regular files below `start` (relative to the home; `""` is the home), temporaries left
/// out, symlinks not followed.
async fn walk(
    home: &Arc<Dir>,
    start: &str,
    work: &UserWork,
) -> Result<Vec<Candidate>, RetentionError> {
    let home = home.clone();
    let start = start.to_string();
    let mut state = WalkState {
        pending: vec![start.clone()],
        current: None,
        found: Vec::new(),
    };
    loop {
        let dir = home.clone();
        let (next, done) = work
            .run(move || {
                let done = state.step(&dir, WALK_BATCH);
                (state, done)
            })
            .await
            .map_err(|e| RetentionError::Cancelled(e.to_string()))?;
        state = next;
        match done {
            Ok(true) => return Ok(state.found),
            Ok(false) => {}
            Err(source) => {
                return Err(RetentionError::Walk {
                    path: format!("/{start}"),
                    source,
                });
            }
        }
    }
}

struct WalkState {
    /// Directories still to read, relative to the home.
    pending: Vec<String>,
    current: Option<(String, cap_std::fs::ReadDir)>,
    found: Vec<Candidate>,
}

impl WalkState {
    fn step(&mut self, home: &Dir, budget: usize) -> io::Result<bool> {
        let mut seen = 0;
        while seen < budget {
            let Some((dir_path, entries)) = self.current.as_mut() else {
                let Some(next) = self.pending.pop() else {
                    return Ok(true);
                };
                let opened = if next.is_empty() {
                    home.try_clone()
                } else {
                    home.open_dir(&next)
                };
                match opened.and_then(|d| d.entries()) {
                    Ok(entries) => self.current = Some((next, entries)),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                        ) => {}
                    Err(e) => return Err(e),
                }
                continue;
            };
            let Some(entry) = entries.next() else {
                self.current = None;
                continue;
            };
            seen += 1;
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_reserved_name(&name) {
                continue;
            }
            let relative = if dir_path.is_empty() {
                name
            } else {
                format!("{dir_path}/{name}")
            };
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if file_type.is_dir() {
                self.pending.push(relative);
            } else if file_type.is_file()
                && let Ok(meta) = entry.metadata()
            {
                self.found.push(Candidate {
                    relative,
                    mtime: mtime_of(&meta),
                    size: meta.len(),
                });
            }
        }
        Ok(false)
    }
}

/// Where a deletion is recorded: the audit log, the metrics and the file events.
pub struct Sinks<'a> {
    pub audit: &'a Audit,
    pub metrics: &'a Metrics,
    pub events: &'a Events,
}

impl Sinks<'_> {
    /// Audit event, file event and metric of one deletion.
    async fn record(
        &self,
        tag: &SessionTag,
        home: &str,
        path: &VirtualPath,
        size: u64,
        reason: &'static str,
        extra: serde_json::Value,
    ) {
        let mut fields = json!({"path": path.to_string(), "size": size, "reason": reason});
        if let (Some(target), serde_json::Value::Object(extra)) = (fields.as_object_mut(), extra) {
            target.extend(extra);
        }
        tracing::info!(user = ?tag.user, path = %path, size, reason, "retention deleted a file");
        self.audit.event(tag, "retention_deleted", fields);
        Metrics::inc(&self.metrics.retention_deleted, &[("reason", reason)]);
        let detail = Detail {
            size: Some(size),
            reason: Some(reason),
            ..Detail::default()
        };
        self.events
            .emit(Kind::Expired, tag, home, path, detail)
            .await;
    }
}

/// After a download: when it read the whole file and an `afterDownload` rule covers it, the
/// file is deleted (unless another transfer of this process still has it open). The caller
/// drops its own [`InUse`] first.
pub async fn after_download(
    sinks: Sinks<'_>,
    tag: &SessionTag,
    user: &User,
    fs: &UserFs,
    path: &VirtualPath,
    complete: bool,
) {
    if !complete || user.retention.is_empty() {
        return;
    }
    let relative = path.relative();
    if !rule_for(&user.retention, &relative).is_some_and(|rule| rule.after_download) {
        return;
    }
    if in_use(fs.home_key(), &relative) {
        return;
    }
    let size = fs.metadata(path).await.map(|m| m.size).unwrap_or(0);
    match fs.remove_file(path).await {
        Ok(()) => {
            sinks
                .record(tag, fs.home_key(), path, size, "after_download", json!({}))
                .await;
        }
        Err(error) => {
            tracing::warn!(user = %user.username, path = %path, %error, "retention could not delete a downloaded file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(path: &str, age: Option<&str>, after: bool) -> RetentionRule {
        RetentionRule {
            path: path.into(),
            max_age: age.map(str::to_string),
            after_download: after,
        }
    }

    #[test]
    fn the_most_specific_rule_decides() {
        let rules = vec![
            rule("/", Some("30d"), false),
            rule("outbox/fast", Some("1h"), true),
        ];
        assert_eq!(
            rule_for(&rules, "outbox/fast/a")
                .unwrap()
                .max_age
                .as_deref(),
            Some("1h")
        );
        assert_eq!(
            rule_for(&rules, "outbox/a").unwrap().max_age.as_deref(),
            Some("30d")
        );
        assert!(rule_for(&rules[1..], "inbox/a").is_none());
    }

    #[test]
    fn files_older_than_max_age_are_selected_oldest_first_unless_busy() {
        let rules = vec![rule("outbox", Some("1h"), false), rule("keep", None, true)];
        let now = 100_000;
        let c = |relative: &str, age: i64| Candidate {
            relative: relative.into(),
            mtime: now - age,
            size: 1,
        };
        let chosen = select(
            &rules,
            vec![
                c("outbox/new", 3_599),
                c("outbox/exact", 3_600),
                c("outbox/old", 3_601),
                c("outbox/older", 7_200),
                c("outbox/busy", 9_000),
                c("keep/ancient", 999_999),
                c("elsewhere", 999_999),
            ],
            now,
            |relative| relative == "outbox/busy",
            10,
        );
        let names: Vec<_> = chosen.iter().map(|c| c.relative.as_str()).collect();
        assert_eq!(names, ["outbox/older", "outbox/old"]);
        let limited = select(
            &rules,
            vec![c("outbox/a", 5_000), c("outbox/b", 6_000)],
            now,
            |_| false,
            1,
        );
        assert_eq!(limited[0].relative, "outbox/b");
    }

    #[test]
    fn in_use_guards_count_and_release() {
        let home = format!("h{}", rand::random::<u32>());
        let path = VirtualPath::root().resolve("/out/a.csv").unwrap();
        let first = InUse::hold(&home, &path);
        let second = InUse::hold(&home, &path);
        assert!(in_use(&home, "out/a.csv"));
        drop(first);
        assert!(in_use(&home, "out/a.csv"));
        drop(second);
        assert!(!in_use(&home, "out/a.csv"));
    }

    #[tokio::test]
    async fn the_walk_finds_nested_files_but_not_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("out/sub")).unwrap();
        std::fs::write(dir.path().join("out/a"), b"1").unwrap();
        std::fs::write(dir.path().join("out/sub/b"), b"22").unwrap();
        std::fs::write(dir.path().join("out/.sluice-upload-x"), b"333").unwrap();
        std::fs::write(dir.path().join("top"), b"4444").unwrap();
        let home = Arc::new(Dir::open_ambient_dir(dir.path(), ambient_authority()).unwrap());
        let mut found = walk(&home, "out", &UserWork::unshared(1)).await.unwrap();
        found.sort_by(|a, b| a.relative.cmp(&b.relative));
        let names: Vec<_> = found
            .iter()
            .map(|c| (c.relative.as_str(), c.size))
            .collect();
        assert_eq!(names, [("out/a", 1), ("out/sub/b", 2)]);
        assert!(
            walk(&home, "missing", &UserWork::unshared(1))
                .await
                .unwrap()
                .is_empty()
        );
    }
}
