//! Directory listing formats, purely: `LIST` (ls -l style), `NLST` (names) and the RFC 3659
//! machine formats (`MLSD`/`MLST` facts), including the `perm` fact derived from permissions.

use std::time::SystemTime;

use sluice_config::{Permission, User};

use crate::userfs::{EntryInfo, EntryKind};

fn timestamp(time: Option<SystemTime>) -> jiff::Timestamp {
    time.and_then(|t| jiff::Timestamp::try_from(t).ok())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// `YYYYMMDDHHMMSS` in UTC, as MDTM and the `modify` fact want it.
pub fn mdtm(time: Option<SystemTime>) -> String {
    timestamp(time).strftime("%Y%m%d%H%M%S").to_string()
}

/// One `ls -l` style line. Dates older than ~6 months show the year, like ls.
pub fn list_line(entry: &EntryInfo, now: SystemTime) -> String {
    let (type_char, mode) = match entry.kind {
        EntryKind::Dir => ('d', "rwxr-xr-x"),
        EntryKind::Symlink => ('l', "rwxrwxrwx"),
        EntryKind::File => ('-', "rw-r--r--"),
    };
    let ts = timestamp(entry.modified);
    let age = timestamp(Some(now)).as_second() - ts.as_second();
    let date = if (0..180 * 86_400).contains(&age) {
        ts.strftime("%b %e %H:%M").to_string()
    } else {
        ts.strftime("%b %e  %Y").to_string()
    };
    format!(
        "{type_char}{mode} 1 ftp ftp {:>12} {date} {}\r\n",
        entry.size, entry.name
    )
}

/// The MLSx `perm` fact for an entry, from what the user may do.
pub fn perm_fact(kind: EntryKind, user: &User) -> String {
    let mut perm = String::new();
    let mut add = |flag: char, permission: Permission| {
        if user.has(permission) {
            perm.push(flag);
        }
    };
    match kind {
        EntryKind::Dir => {
            add('e', Permission::List);
            add('l', Permission::List);
            add('c', Permission::Upload);
            add('m', Permission::Mkdir);
            add('p', Permission::Delete);
            add('d', Permission::Rmdir);
            add('f', Permission::Rename);
        }
        EntryKind::File | EntryKind::Symlink => {
            add('r', Permission::Download);
            add('w', Permission::Overwrite);
            add('a', Permission::Overwrite);
            add('d', Permission::Delete);
            add('f', Permission::Rename);
        }
    }
    perm
}

/// MLSD/MLST facts followed by a space and the name (no CRLF).
pub fn mlsx_facts(entry: &EntryInfo, user: &User, type_override: Option<&str>) -> String {
    let kind = match (type_override, entry.kind) {
        (Some(t), _) => t,
        (None, EntryKind::Dir) => "dir",
        (None, EntryKind::Symlink) => "OS.unix=symlink",
        (None, EntryKind::File) => "file",
    };
    format!(
        "type={kind};size={};modify={};perm={}; {}",
        entry.size,
        mdtm(entry.modified),
        perm_fact(entry.kind, user),
        entry.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn user(permissions: Vec<Permission>) -> User {
        User {
            username: "u".into(),
            password_hash: None,
            ssh_authorized_keys: vec![],
            home: "u".into(),
            permissions,
            allowed_cidrs: vec![],
            protocols: vec![],
            expires_at: None,
            disabled: false,
            password_authentication: true,
            required_auth: vec![],
            totp: None,
            client_certificates: vec![],
            ftps_auth: Default::default(),
            login_windows: vec![],
            password_changed_at: None,
            ftps_data_binding: Default::default(),
            quota: None,
            retention: Vec::new(),
        }
    }

    fn file(name: &str, secs: u64) -> EntryInfo {
        EntryInfo {
            name: name.into(),
            kind: EntryKind::File,
            size: 42,
            modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
        }
    }

    #[test]
    fn mdtm_is_utc_digits() {
        assert_eq!(mdtm(file("a", 86_400 + 3_661).modified), "19700102010101");
    }

    #[test]
    fn list_line_looks_like_ls() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100_000);
        let line = list_line(&file("report.csv", 90_000), now);
        assert!(line.starts_with("-rw-r--r-- 1 ftp ftp"), "{line}");
        assert!(line.ends_with(" report.csv\r\n"), "{line}");
        assert!(line.contains("Jan  2 01:00"), "{line}");
    }

    #[test]
    fn perm_fact_follows_permissions() {
        let upload_only = user(vec![Permission::Upload]);
        assert_eq!(perm_fact(EntryKind::Dir, &upload_only), "c");
        assert_eq!(perm_fact(EntryKind::File, &upload_only), "");
        let reader = user(vec![Permission::List, Permission::Download]);
        assert_eq!(
            mlsx_facts(&file("x", 0), &reader, None),
            "type=file;size=42;modify=19700101000000;perm=r; x"
        );
    }
}
