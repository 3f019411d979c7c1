//! Tenant isolation (hardening item H20): what one connection, one user or one user definition
//! may take from the process, so that no tenant can degrade another. Every budget has a safe
//! default here, once; `server.yaml` may change them (`budgets:` and the new-connection rate in
//! `limits:`), and the operator renders them from the CRD.

use serde::{Deserialize, Serialize};

use crate::FieldError;

/// Per-connection and per-user resource budgets (`server.yaml` `budgets:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Budgets {
    /// SFTP handles (files and directories) open at once on one SSH connection, over all of
    /// its channels (a client cannot multiply it by opening more channels).
    #[serde(default = "default_max_open_handles_per_connection")]
    pub max_open_handles_per_connection: u32,
    /// SFTP handles open at once by all sessions of one user.
    #[serde(default = "default_max_open_handles_per_user")]
    pub max_open_handles_per_user: u32,
    /// Blocking file operations (a chunk read or written, a stat, a listing batch) one user may
    /// have running at once; further ones wait their turn without holding a thread.
    #[serde(default = "default_max_file_work_per_user")]
    pub max_file_work_per_user: u32,
    /// Blocking file operations running at once in the whole process. Kept well below tokio's
    /// blocking pool (512 threads) so that reloads, logins and health never wait for file work.
    #[serde(default = "default_max_file_work")]
    pub max_file_work: u32,
    /// Bytes of SFTP replies queued for one channel that the client has not read yet.
    #[serde(default = "default_max_queued_reply_bytes")]
    pub max_queued_reply_bytes: u32,
    /// Bytes of SFTP WRITE data accepted for one handle but not yet on disk.
    #[serde(default = "default_max_pending_write_bytes")]
    pub max_pending_write_bytes: u32,
    /// Entries one directory listing (FTPS LIST/NLST/MLSD, SFTP READDIR) may return; a larger
    /// directory is refused with a message naming this budget rather than held in memory.
    #[serde(default = "default_max_listing_entries")]
    pub max_listing_entries: u32,
    /// FTPS control lines received while a transfer runs and held until it ends (ABOR and STAT
    /// are answered at once). One more ends the session.
    #[serde(default = "default_max_queued_control_lines")]
    pub max_queued_control_lines: u32,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            max_open_handles_per_connection: default_max_open_handles_per_connection(),
            max_open_handles_per_user: default_max_open_handles_per_user(),
            max_file_work_per_user: default_max_file_work_per_user(),
            max_file_work: default_max_file_work(),
            max_queued_reply_bytes: default_max_queued_reply_bytes(),
            max_pending_write_bytes: default_max_pending_write_bytes(),
            max_listing_entries: default_max_listing_entries(),
            max_queued_control_lines: default_max_queued_control_lines(),
        }
    }
}

fn default_max_open_handles_per_connection() -> u32 {
    64
}
fn default_max_open_handles_per_user() -> u32 {
    256
}
fn default_max_file_work_per_user() -> u32 {
    4
}
fn default_max_file_work() -> u32 {
    64
}
fn default_max_queued_reply_bytes() -> u32 {
    8 * 1024 * 1024
}
fn default_max_pending_write_bytes() -> u32 {
    2 * 1024 * 1024
}
fn default_max_listing_entries() -> u32 {
    100_000
}
fn default_max_queued_control_lines() -> u32 {
    16
}

/// The largest `max_file_work`: tokio's blocking pool has 512 threads, and reload, login
/// (home open) and health need some of them whatever users do.
pub const MAX_FILE_WORK_CAP: u32 = 256;
/// The largest SFTP READ the server answers (shorter reads are allowed by the protocol).
pub const MAX_SFTP_READ: u32 = 64 * 1024;
/// OpenSSH keeps 64 READs outstanding; their replies (plus headers) must all fit in the reply
/// queue, or the request loop stops reading while the client waits for replies (a deadlock
/// with russh's bounded channel queue).
pub const MIN_QUEUED_REPLY_BYTES: u32 = 64 * (MAX_SFTP_READ + 1024) + 256 * 1024;
/// One SFTP WRITE can carry 255 KiB: a pending-write budget smaller than this could not hold one.
pub const MIN_PENDING_WRITE_BYTES: u32 = 256 * 1024;

impl Budgets {
    /// Every out-of-range budget, each naming its field under `budgets.`.
    pub fn validate(&self, file: &str, errors: &mut Vec<FieldError>) {
        let mut err = |field: &str, message: String| {
            errors.push(FieldError::new(file, format!("budgets.{field}"), message));
        };
        let at_least_one = [
            (
                "maxOpenHandlesPerConnection",
                self.max_open_handles_per_connection,
            ),
            ("maxOpenHandlesPerUser", self.max_open_handles_per_user),
            ("maxFileWorkPerUser", self.max_file_work_per_user),
            ("maxListingEntries", self.max_listing_entries),
            ("maxQueuedControlLines", self.max_queued_control_lines),
        ];
        for (field, value) in at_least_one {
            if value == 0 {
                err(field, "must be at least 1".into());
            }
        }
        if !(1..=MAX_FILE_WORK_CAP).contains(&self.max_file_work) {
            err(
                "maxFileWork",
                format!(
                    "must be 1-{MAX_FILE_WORK_CAP} (blocking threads are shared with reloads, logins and health)"
                ),
            );
        }
        if self.max_file_work_per_user > self.max_file_work {
            err(
                "maxFileWorkPerUser",
                format!(
                    "must not exceed maxFileWork ({}): one user could take all file work",
                    self.max_file_work
                ),
            );
        }
        if self.max_open_handles_per_connection > self.max_open_handles_per_user {
            err(
                "maxOpenHandlesPerConnection",
                format!(
                    "must not exceed maxOpenHandlesPerUser ({})",
                    self.max_open_handles_per_user
                ),
            );
        }
        if self.max_queued_reply_bytes < MIN_QUEUED_REPLY_BYTES {
            err(
                "maxQueuedReplyBytes",
                format!(
                    "must be at least {MIN_QUEUED_REPLY_BYTES} (the replies to 64 outstanding {MAX_SFTP_READ}-byte READs)"
                ),
            );
        }
        if self.max_pending_write_bytes < MIN_PENDING_WRITE_BYTES {
            err(
                "maxPendingWriteBytes",
                format!("must be at least {MIN_PENDING_WRITE_BYTES} (one 255 KiB WRITE)"),
            );
        }
    }
}

/// Caps on the argon2id parameters a stored hash may ask for. argon2 sizes its working memory
/// and time from the hash itself, so without caps one user definition (`passwordHash:
/// $argon2id$v=19$m=4294967295,...`) makes a single failed login allocate 4 TiB.
/// The caps allow every parameter set OWASP recommends (m=47104 t=1 ... m=7168 t=5, and
/// m=19456 t=2 p=1, the default we issue) with room to spare.
pub const ARGON2_MAX_MEMORY_KIB: u32 = 65_536;
pub const ARGON2_MAX_ITERATIONS: u32 = 10;
pub const ARGON2_MAX_PARALLELISM: u32 = 4;
/// Memory x iterations: what one verification costs, whichever way it is split.
pub const ARGON2_MAX_MEMORY_ITERATIONS: u64 = 2 * 65_536;

/// The cost parameters of an argon2id hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Argon2Params {
    /// What `sluice-server hash-password` and the operator issue (argon2's default, OWASP's
    /// first recommendation).
    pub const ISSUED: Argon2Params = Argon2Params {
        memory_kib: 19_456,
        iterations: 2,
        parallelism: 1,
    };

    /// The `m=..,t=..,p=..` segment of a PHC string, checked against the caps. The error names
    /// the parameter and its cap.
    pub fn parse_capped(segment: &str) -> Result<Argon2Params, String> {
        let (mut memory, mut iterations, mut parallelism) = (None, None, None);
        for pair in segment.split(',') {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("parameter {pair:?} is not key=value"))?;
            let value: u32 = value
                .parse()
                .map_err(|_| format!("parameter {key} value {value:?} is not a number"))?;
            let slot = match key {
                "m" => &mut memory,
                "t" => &mut iterations,
                "p" => &mut parallelism,
                "keyid" | "data" => continue,
                other => return Err(format!("unknown parameter {other:?}")),
            };
            if slot.replace(value).is_some() {
                return Err(format!("parameter {key} is given twice"));
            }
        }
        let (Some(memory_kib), Some(iterations), Some(parallelism)) =
            (memory, iterations, parallelism)
        else {
            return Err("parameters must give m, t and p".into());
        };
        let params = Argon2Params {
            memory_kib,
            iterations,
            parallelism,
        };
        params.check()?;
        Ok(params)
    }

    fn check(&self) -> Result<(), String> {
        if !(1..=ARGON2_MAX_PARALLELISM).contains(&self.parallelism) {
            return Err(format!(
                "parallelism p={} is outside 1-{ARGON2_MAX_PARALLELISM}",
                self.parallelism
            ));
        }
        if !(1..=ARGON2_MAX_ITERATIONS).contains(&self.iterations) {
            return Err(format!(
                "iterations t={} is outside 1-{ARGON2_MAX_ITERATIONS}",
                self.iterations
            ));
        }
        let min_memory = 8 * self.parallelism;
        if !(min_memory..=ARGON2_MAX_MEMORY_KIB).contains(&self.memory_kib) {
            return Err(format!(
                "memory m={} KiB is outside {min_memory}-{ARGON2_MAX_MEMORY_KIB} KiB",
                self.memory_kib
            ));
        }
        let cost = u64::from(self.memory_kib) * u64::from(self.iterations);
        if cost > ARGON2_MAX_MEMORY_ITERATIONS {
            return Err(format!(
                "cost m*t={cost} exceeds {ARGON2_MAX_MEMORY_ITERATIONS} (e.g. m=65536,t=2 or m=19456,t=6)"
            ));
        }
        Ok(())
    }
}

/// The parameters of a PHC string, capped; `None` when it is not an argon2 PHC string at all
/// (other validation reports that).
pub fn argon2_params_of(hash: &str) -> Option<Result<Argon2Params, String>> {
    let parts: Vec<&str> = hash.split('$').collect();
    if parts.len() != 6 || !parts[1].starts_with("argon2") {
        return None;
    }
    Some(Argon2Params::parse_capped(parts[3]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recommended_parameters_pass_the_caps() {
        for segment in [
            "m=19456,t=2,p=1",
            "m=47104,t=1,p=1",
            "m=12288,t=3,p=1",
            "m=9216,t=4,p=1",
            "m=7168,t=5,p=1",
            "m=65536,t=2,p=4",
        ] {
            Argon2Params::parse_capped(segment).unwrap();
        }
    }

    #[test]
    fn hostile_parameters_are_refused_naming_the_cap() {
        for (segment, needle) in [
            ("m=4294967295,t=1,p=1", "memory m=4294967295"),
            ("m=65537,t=1,p=1", "65536 KiB"),
            ("m=19456,t=4294967295,p=1", "iterations t=4294967295"),
            ("m=19456,t=2,p=255", "parallelism p=255"),
            ("m=65536,t=3,p=1", "cost m*t=196608"),
            ("m=4,t=1,p=1", "outside 8-65536"),
            ("m=19456,t=2", "must give m, t and p"),
            ("m=19456,m=1,t=2,p=1", "given twice"),
            ("m=x,t=2,p=1", "not a number"),
            ("m=19456,t=2,p=1,z=3", "unknown parameter"),
        ] {
            let error = Argon2Params::parse_capped(segment).unwrap_err();
            assert!(error.contains(needle), "{segment}: {error}");
        }
    }

    #[test]
    fn budgets_defaults_are_valid_and_nonsense_is_named() {
        let mut errors = Vec::new();
        Budgets::default().validate("server.yaml", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let bad = Budgets {
            max_file_work: 10_000,
            max_file_work_per_user: 0,
            max_queued_reply_bytes: 1024,
            max_open_handles_per_connection: 1000,
            ..Budgets::default()
        };
        bad.validate("server.yaml", &mut errors);
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        for field in [
            "budgets.maxFileWork",
            "budgets.maxFileWorkPerUser",
            "budgets.maxQueuedReplyBytes",
            "budgets.maxOpenHandlesPerConnection",
        ] {
            assert!(text.iter().any(|t| t.contains(field)), "{field}: {text:?}");
        }
    }
}
