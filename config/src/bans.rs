//! `bans` in server.yaml: brute-force protection shared by FTPS and SFTP.

use serde::{Deserialize, Serialize};

use crate::FieldError;
use crate::users::parse_cidr;

/// Failed logins per source address and per username within a sliding window lead to a ban
/// whose duration doubles with each repeat, up to a maximum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BanConfig {
    /// Turn the ban engine off (insecure opt-in).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Failures (weighted) within the window that trigger a ban.
    #[serde(default = "default_threshold")]
    pub threshold: u32,
    /// Length of the sliding window in seconds.
    #[serde(default = "default_window")]
    pub window_seconds: u64,
    /// First ban duration in seconds; each further ban of the same address doubles it.
    #[serde(default = "default_base")]
    pub base_ban_seconds: u64,
    /// Longest ban in seconds.
    #[serde(default = "default_max")]
    pub max_ban_seconds: u64,
    /// Addresses (CIDR) that are never banned, e.g. a partner's NAT or a monitoring probe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub safelist: Vec<String>,
    /// Usernames attackers try first; a failure on one of them counts `wellKnownWeight` times.
    #[serde(default = "default_well_known")]
    pub well_known_usernames: Vec<String>,
    /// Weight of a failure on a well-known username.
    #[serde(default = "default_weight")]
    pub well_known_weight: u32,
    /// Sharing IP bans between the replicas of one server (set by the operator).
    #[serde(default, skip_serializing_if = "BanSyncConfig::is_default")]
    pub sync: BanSyncConfig,
}

/// `bans.sync`: the `/bans` endpoints on the health listener through which the operator reads
/// this pod's IP bans and hands it those of the other replicas. Off unless `tokenFile` is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BanSyncConfig {
    /// File holding the bearer token that callers of `/bans` must present (a mounted Secret).
    /// Relative to server.yaml. The endpoints answer 404 when it is not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

impl BanSyncConfig {
    pub fn is_default(&self) -> bool {
        self == &BanSyncConfig::default()
    }
}

impl Default for BanConfig {
    fn default() -> Self {
        BanConfig {
            enabled: true,
            threshold: default_threshold(),
            window_seconds: default_window(),
            base_ban_seconds: default_base(),
            max_ban_seconds: default_max(),
            safelist: Vec::new(),
            well_known_usernames: default_well_known(),
            well_known_weight: default_weight(),
            sync: BanSyncConfig::default(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_threshold() -> u32 {
    10
}
fn default_window() -> u64 {
    600
}
fn default_base() -> u64 {
    300
}
fn default_max() -> u64 {
    86_400
}
fn default_weight() -> u32 {
    3
}
fn default_well_known() -> Vec<String> {
    [
        "root",
        "admin",
        "administrator",
        "test",
        "guest",
        "ftp",
        "anonymous",
        "user",
        "oracle",
        "ubuntu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl BanConfig {
    /// Field errors, with `prefix` (e.g. `bans`) before each field name.
    pub fn validate(&self, file: &str, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut err = |field: &str, message: String| {
            errors.push(FieldError::new(file, format!("{prefix}.{field}"), message));
        };
        if self.threshold == 0 {
            err("threshold", "must be at least 1".into());
        }
        if !(1..=86_400).contains(&self.window_seconds) {
            err("windowSeconds", "must be between 1 and 86400".into());
        }
        if self.base_ban_seconds == 0 {
            err("baseBanSeconds", "must be at least 1".into());
        }
        if self.max_ban_seconds < self.base_ban_seconds {
            err("maxBanSeconds", "must be >= baseBanSeconds".into());
        }
        if self.well_known_weight == 0 {
            err("wellKnownWeight", "must be at least 1".into());
        }
        if self
            .sync
            .token_file
            .as_deref()
            .is_some_and(|f| f.trim().is_empty())
        {
            err("sync.tokenFile", "must not be empty".into());
        }
        for (index, cidr) in self.safelist.iter().enumerate() {
            if let Err(message) = parse_cidr(cidr) {
                err(&format!("safelist[{index}]"), message);
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_errors_name_fields() {
        assert!(
            BanConfig::default()
                .validate("server.yaml", "bans")
                .is_empty()
        );
        let bad = BanConfig {
            threshold: 0,
            max_ban_seconds: 1,
            safelist: vec!["nope".into()],
            sync: BanSyncConfig {
                token_file: Some(" ".into()),
            },
            ..BanConfig::default()
        };
        let fields: Vec<String> = bad
            .validate("server.yaml", "bans")
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "bans.threshold",
                "bans.maxBanSeconds",
                "bans.sync.tokenFile",
                "bans.safelist[0]"
            ]
        );
    }
}
