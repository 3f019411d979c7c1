//! Storage hygiene (H24): per-user quotas and retention rules in `users.yaml`, and the
//! server-wide retention schedule in `server.yaml`.
//!
//! A drop zone that keeps files forever fails data-minimisation reviews, and one partner that
//! fills a shared volume is an availability incident for every other partner. The shapes live
//! here, in the contract crate, so that the operator renders exactly what the server parses;
//! the parsers for sizes (`10Gi`, `500M`, `1048576`) and ages (`30d`, `12h`) are pure and shared
//! by both sides so that a TransferUser and `users.yaml` can never disagree on what a value means.

use serde::{Deserialize, Deserializer, Serialize};

/// Default `warnAtPercent`: the threshold event fires when 80 % of a limit is used.
pub const DEFAULT_QUOTA_WARN_PERCENT: u8 = 80;
/// Default `retention.intervalSeconds` in server.yaml: one retention pass every 5 minutes.
pub const DEFAULT_RETENTION_INTERVAL_SECONDS: u64 = 300;
/// Default `quotaRescanSeconds` in server.yaml: a home's usage is recomputed from the disk when
/// it is older than this at the next upload (how long another replica's writes can go unseen).
pub const DEFAULT_QUOTA_RESCAN_SECONDS: u64 = 60;
/// Retention rules per user at most (each is a walk of a directory tree per pass).
pub const MAX_RETENTION_RULES: usize = 16;

/// A byte count written as a number of bytes or a Kubernetes quantity (`10Gi`, `500M`, `1k`).
/// Serialised as a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of bytes or a quantity such as 10Gi or 500M")
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(value))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<ByteSize, E> {
                u64::try_from(value)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{value} is negative")))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ByteSize, E> {
                parse_byte_quantity(text).map(ByteSize).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Parses a byte count: digits, optionally followed by a Kubernetes quantity suffix (binary
/// `Ki Mi Gi Ti Pi Ei`, decimal `k M G T P E`). Fractions and exponents are refused: a byte
/// count is whole.
pub fn parse_byte_quantity(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "{text:?} is not a byte count such as 1048576, 500M or 10Gi"
        ));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is too large"))?;
    let factor: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        other => {
            return Err(format!(
                "{text:?}: unknown suffix {other:?}; use Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P or E"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses an age such as `30d`, `12h`, `90m`, `45s`, `2w` or `1d12h` into seconds.
pub fn parse_age(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not an age such as 30d, 12h, 90m or 1d12h");
    let mut total: u64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let split = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if split == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..split].parse().map_err(|_| bad())?;
        let unit = rest[split..].chars().next().ok_or_else(bad)?;
        let seconds = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        total = number
            .checked_mul(seconds)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("{text:?} is too long"))?;
        rest = &rest[split + unit.len_utf8()..];
    }
    if total == 0 {
        return Err(format!("{text:?} must be longer than zero"));
    }
    Ok(total)
}

/// Limits on what one user may store under its home: bytes and regular files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Quota {
    /// Bytes the home may hold (sizes of its regular files), as bytes or a quantity (`10Gi`).
    /// An upload that would cross it stops there and is not published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<ByteSize>,
    /// Regular files the home may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_files: Option<u64>,
    /// Percentage of either limit at which a `quota_threshold` audit event and a warning are
    /// written (1-100, default 80).
    #[serde(default = "default_warn_percent")]
    pub warn_at_percent: u8,
}

fn default_warn_percent() -> u8 {
    DEFAULT_QUOTA_WARN_PERCENT
}

impl Quota {
    /// Field errors as (field below `quota`, message).
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.max_bytes.is_none() && self.max_files.is_none() {
            errors.push(("", "set maxBytes, maxFiles or both".to_string()));
        }
        if self.max_bytes == Some(ByteSize(0)) {
            errors.push(("maxBytes", "must be greater than 0".to_string()));
        }
        if self.max_files == Some(0) {
            errors.push(("maxFiles", "must be greater than 0".to_string()));
        }
        if !(1..=100).contains(&self.warn_at_percent) {
            errors.push((
                "warnAtPercent",
                format!("{} is not 1-100", self.warn_at_percent),
            ));
        }
        errors
    }
}

/// One retention rule: files under `path` (relative to the home) older than `maxAge`, and/or
/// once downloaded completely, are deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetentionRule {
    /// Directory relative to the home (`outbox/`, `/` or `.` for the whole home).
    pub path: String,
    /// Files whose modification time is older than this are deleted (`30d`, `12h`, `1d12h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// Delete a file under `path` once a download of it completed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub after_download: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl RetentionRule {
    /// `maxAge` in seconds (validated at load).
    pub fn max_age_seconds(&self) -> Option<u64> {
        self.max_age.as_deref().and_then(|t| parse_age(t).ok())
    }

    /// The rule's directory as a relative path without leading or trailing `/` (`""` is the
    /// home itself).
    pub fn relative_dir(&self) -> &str {
        let trimmed = self.path.trim_matches('/');
        if trimmed == "." { "" } else { trimmed }
    }

    /// Whether `relative` (a file's path relative to the home, no leading `/`) is under the rule.
    pub fn covers(&self, relative: &str) -> bool {
        let dir = self.relative_dir();
        dir.is_empty()
            || relative
                .strip_prefix(dir)
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Field errors as (field below `retention[i]`, message).
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        let dir = self.relative_dir();
        if self.path.contains('\0') {
            errors.push(("path", "must not contain a NUL byte".to_string()));
        } else if dir
            .split('/')
            .any(|c| c == ".." || (!dir.is_empty() && (c.is_empty() || c == ".")))
        {
            errors.push((
                "path",
                format!(
                    "{:?} must be a directory below the home without '..' or empty components",
                    self.path
                ),
            ));
        }
        if let Some(age) = &self.max_age
            && let Err(message) = parse_age(age)
        {
            errors.push(("maxAge", message));
        }
        if self.max_age.is_none() && !self.after_download {
            errors.push(("", "set maxAge, afterDownload: true, or both".to_string()));
        }
        errors
    }
}

/// server.yaml `quotas`: how long a home's usage is trusted before it is recomputed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QuotaConfig {
    /// A home's usage older than this is recomputed from the disk at the next upload (5-86400,
    /// default 60): the longest time another replica's writes to a shared volume go unseen.
    #[serde(default = "default_rescan_seconds")]
    pub rescan_seconds: u64,
}

fn default_rescan_seconds() -> u64 {
    DEFAULT_QUOTA_RESCAN_SECONDS
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            rescan_seconds: DEFAULT_QUOTA_RESCAN_SECONDS,
        }
    }
}

impl QuotaConfig {
    pub fn is_default(&self) -> bool {
        *self == QuotaConfig::default()
    }
}

/// Which replica runs retention (server.yaml `retention.replica`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RetentionReplica {
    /// Every process runs it (one server, or replicas that do not share a volume).
    #[default]
    Any,
    /// Only the process whose host name (`HOSTNAME`, the pod name of a StatefulSet) ends in
    /// `-0`: with several replicas on one shared volume, one of them deletes.
    OrdinalZero,
}

/// server.yaml `retention`: when the retention pass runs and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetentionConfig {
    /// Seconds between two passes over every user's retention rules (1-86400, default 300).
    #[serde(default = "default_retention_interval")]
    pub interval_seconds: u64,
    /// `any` (default) or `ordinalZero`; the operator sets `ordinalZero`.
    #[serde(default)]
    pub replica: RetentionReplica,
}

fn default_retention_interval() -> u64 {
    DEFAULT_RETENTION_INTERVAL_SECONDS
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            interval_seconds: DEFAULT_RETENTION_INTERVAL_SECONDS,
            replica: RetentionReplica::Any,
        }
    }
}

impl RetentionConfig {
    pub fn is_default(&self) -> bool {
        *self == RetentionConfig::default()
    }

    /// Whether the process named `host` runs retention under this setting.
    pub fn runs_on(&self, host: &str) -> bool {
        match self.replica {
            RetentionReplica::Any => true,
            RetentionReplica::OrdinalZero => host.ends_with("-0"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse_byte_quantity("1048576"), Ok(1 << 20));
        assert_eq!(parse_byte_quantity("10Gi"), Ok(10 << 30));
        assert_eq!(parse_byte_quantity("500M"), Ok(500_000_000));
        assert_eq!(parse_byte_quantity("1k"), Ok(1000));
        for bad in ["", "Gi", "1.5Gi", "1e9", "10GB", "-1", "99999999999Ei"] {
            assert!(parse_byte_quantity(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ages_parse_in_units_and_sums() {
        assert_eq!(parse_age("30d"), Ok(30 * 86_400));
        assert_eq!(parse_age("1d12h"), Ok(36 * 3_600));
        assert_eq!(parse_age("90m"), Ok(5_400));
        assert_eq!(parse_age("2w"), Ok(14 * 86_400));
        for bad in ["", "30", "d", "0s", "1y", "1.5h", "-1d", "30 d"] {
            assert!(parse_age(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn byte_size_reads_numbers_and_quantities() {
        #[derive(Deserialize)]
        struct Holder {
            size: ByteSize,
        }
        let h: Holder = serde_saphyr::from_str("size: 10Mi").unwrap();
        assert_eq!(h.size, ByteSize(10 << 20));
        let h: Holder = serde_saphyr::from_str("size: 4096").unwrap();
        assert_eq!(h.size, ByteSize(4096));
        assert!(serde_saphyr::from_str::<Holder>("size: 10 parsecs").is_err());
    }

    #[test]
    fn rules_cover_their_directory_only() {
        let rule = RetentionRule {
            path: "outbox/".into(),
            max_age: Some("30d".into()),
            after_download: false,
        };
        assert!(rule.covers("outbox/a.csv"));
        assert!(rule.covers("outbox/sub/a.csv"));
        assert!(!rule.covers("outbox"));
        assert!(!rule.covers("outboxes/a.csv"));
        assert!(!rule.covers("inbox/a.csv"));
        let whole = RetentionRule {
            path: "/".into(),
            ..rule.clone()
        };
        assert!(whole.covers("anything/at/all"));
        assert_eq!(rule.max_age_seconds(), Some(30 * 86_400));
    }

    #[test]
    fn invalid_rules_and_quotas_name_their_fields() {
        let rule = RetentionRule {
            path: "../etc".into(),
            max_age: Some("forever".into()),
            after_download: false,
        };
        let fields: Vec<_> = rule.validate().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["path", "maxAge"]);
        let rule = RetentionRule {
            path: "out".into(),
            max_age: None,
            after_download: false,
        };
        assert_eq!(rule.validate().len(), 1);
        let quota = Quota {
            max_bytes: Some(ByteSize(0)),
            max_files: None,
            warn_at_percent: 0,
        };
        let fields: Vec<_> = quota.validate().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["maxBytes", "warnAtPercent"]);
    }

    #[test]
    fn only_ordinal_zero_runs_retention_when_asked() {
        let config = RetentionConfig {
            replica: RetentionReplica::OrdinalZero,
            ..RetentionConfig::default()
        };
        assert!(config.runs_on("sftp-0"));
        assert!(!config.runs_on("sftp-1"));
        assert!(!config.runs_on("sftp-10"));
        assert!(RetentionConfig::default().runs_on("anything"));
    }
}
