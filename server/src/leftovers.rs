//! Atomic-upload temporary names and the start-up sweep of the ones a killed process left.
//!
//! A temporary file is named `.sluice-upload-<host>-<process instance>-<random>`. When the
//! process is killed (SIGKILL, OOM, node loss) mid-upload the final name is untouched, but the
//! temporary file stays. At start-up, every temporary file with this host's tag and another
//! process instance is dead and is removed (the sweep runs in the background while this
//! process's own uploads begin); so is any temporary file (of any host) not modified for
//! [`STALE_AFTER`]. Other hosts' recent files are left alone: replicas that share
//! a ReadWriteMany volume may be writing them. Temporary files are never listed to users.
//! A StatefulSet pod keeps its host name across restarts, so it cleans its own leftovers.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::userfs::TEMP_PREFIX;

/// Age after which any host's temporary file is considered dead (longer than any upload can
/// stay silent: `timeouts.dataIdleSeconds` is at most one day).
pub const STALE_AFTER: Duration = Duration::from_secs(7 * 86_400);

/// `.sluice-upload-<host>-`, with the host name reduced to `[A-Za-z0-9-]` (at most 40).
fn host_prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| format!("{TEMP_PREFIX}{}-", host_tag(&crate::context::host_name())))
}

/// This process's random instance tag (8 hex digits).
fn instance() -> &'static str {
    static INSTANCE: OnceLock<String> = OnceLock::new();
    INSTANCE.get_or_init(|| format!("{:08x}", rand::random::<u32>()))
}

/// A new temporary file name (without directory) for an atomic upload of this process.
pub fn temp_file_name() -> String {
    format!(
        "{}{}-{:016x}",
        host_prefix(),
        instance(),
        rand::random::<u64>()
    )
}

fn host_tag(host: &str) -> String {
    let tag: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    if tag.is_empty() { "host".into() } else { tag }
}

/// Whether `name` is a temporary file that no live upload can own: this host's from another
/// (earlier) process instance, or anyone's older than [`STALE_AFTER`].
fn is_dead(name: &str, host_prefix: &str, instance: &str, age: Option<Duration>) -> bool {
    if !name.starts_with(TEMP_PREFIX) {
        return false;
    }
    let hex = |s: &str, len: usize| s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit());
    let earlier = name
        .strip_prefix(host_prefix)
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(tag, random)| hex(tag, 8) && hex(random, 16) && tag != instance);
    earlier || age.is_some_and(|age| age > STALE_AFTER)
}

/// Removes dead temporary files below `root` (never following symlinks). Returns how many.
pub fn sweep(root: &Path) -> usize {
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let Ok(entry) = entry else { continue };
        if !entry.file_type().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy();
        if !name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let age = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|modified| now.duration_since(modified).ok());
        if is_dead(&name, host_prefix(), instance(), age)
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_tags_are_safe_file_name_parts() {
        assert_eq!(host_tag("sftp-0.sluice.ns.svc"), "sftp-0sluicenssvc");
        assert_eq!(host_tag("../x/"), "x");
        assert_eq!(host_tag(""), "host");
    }

    #[test]
    fn only_earlier_instances_or_stale_temporary_files_are_dead() {
        let host = ".sluice-upload-web-1-";
        let me = "aaaaaaaa";
        let fresh = Some(Duration::from_secs(5));
        let old = Some(STALE_AFTER + Duration::from_secs(1));
        let dead = |name: &str, age| is_dead(name, host, me, age);
        // An earlier process of this host.
        assert!(dead(
            ".sluice-upload-web-1-bbbbbbbb-0123456789abcdef",
            fresh
        ));
        // This process's own upload in progress is not touched.
        assert!(!dead(
            ".sluice-upload-web-1-aaaaaaaa-0123456789abcdef",
            fresh
        ));
        // Another replica's upload in progress (web-10, or a bare tag) is not touched.
        assert!(!dead(
            ".sluice-upload-web-10-bbbbbbbb-0123456789abcdef",
            fresh
        ));
        assert!(!dead(
            ".sluice-upload-web-1-bbbbbbbb-0123456789abcdef.x",
            fresh
        ));
        assert!(!dead(".sluice-upload-0123456789abcdef", fresh));
        assert!(dead(".sluice-upload-0123456789abcdef", old));
        assert!(!dead("report.csv", old));
    }

    #[test]
    fn sweep_removes_dead_files_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("alice/in");
        std::fs::create_dir_all(&sub).unwrap();
        let other = if instance() == "00000000" {
            "00000001"
        } else {
            "00000000"
        };
        let earlier = sub.join(format!("{}{other}-0123456789abcdef", host_prefix()));
        let live = sub.join(temp_file_name());
        let theirs = sub.join(".sluice-upload-other-host-bbbbbbbb-0123456789abcdef");
        let data = sub.join("data.bin");
        for path in [&earlier, &live, &theirs, &data] {
            std::fs::write(path, b"x").unwrap();
        }
        assert_eq!(sweep(dir.path()), 1);
        assert!(!earlier.exists());
        assert!(live.exists() && theirs.exists() && data.exists());
    }
}
