//! `scanning` in server.yaml: malware scanning of every upload by clamd before it is published
//! (hardening item H23). It lives in the contract crate because the operator renders it from
//! `spec.scanning` and because each default (fail closed, quarantine, the size limit) must be
//! stated once for both sides.
//!
//! Absent means no scanning. Scanning needs atomic uploads (`uploads.atomic: true`): a file
//! written under its final name is visible before it could be scanned, so that combination is
//! refused at load ([`crate::ServerConfig::validate`]).

use serde::{Deserialize, Serialize};

use crate::FieldError;

/// clamd's own default `StreamMaxLength` (25 MiB): the default `maxFileBytes`, so that the
/// defaults on both sides agree. Raise both together.
pub const DEFAULT_SCAN_MAX_FILE_BYTES: u64 = 25 << 20;
/// clamd cannot take a stream longer than 4 GiB (`StreamMaxLength` is a 32-bit size).
pub const MAX_SCAN_MAX_FILE_BYTES: u64 = (4 << 30) - 1;
/// Default limit on one scan (connect, stream, verdict).
pub const DEFAULT_SCAN_TIMEOUT_SECONDS: u64 = 120;

/// What happens to an upload clamd found infected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum OnInfected {
    /// Moved into `quarantineDir` (outside every home) for inspection.
    #[default]
    Quarantine,
    /// Removed at once.
    Delete,
}

/// What happens to an upload when clamd cannot give a verdict (unreachable, timeout, error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum OnScannerError {
    /// Fail closed: the upload is refused and the file kept in `quarantineDir`.
    #[default]
    Refuse,
    /// Publish it unscanned (an insecure opt-in, warned about at start-up).
    Allow,
}

/// What happens to an upload larger than `maxFileBytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum OnTooLarge {
    /// The upload is refused and the file deleted.
    #[default]
    Refuse,
    /// Published without a scan (an insecure opt-in, warned about at start-up).
    Skip,
}

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddress {
    /// `tcp://host:port`
    Tcp(String),
    /// `unix:/path` (or `unix:///path`)
    Unix(String),
}

impl ClamdAddress {
    /// Parses `tcp://host:port` or `unix:/absolute/path`; the error says which form is wanted.
    pub fn parse(text: &str) -> Result<ClamdAddress, String> {
        let wanted = || format!("{text:?} must be tcp://host:port or unix:/absolute/path");
        if let Some(rest) = text.strip_prefix("tcp://") {
            let (host, port) = rest.rsplit_once(':').ok_or_else(wanted)?;
            let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
            if host.is_empty() || !port_ok || rest.contains('/') {
                return Err(wanted());
            }
            return Ok(ClamdAddress::Tcp(rest.to_string()));
        }
        if let Some(rest) = text.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if !path.starts_with('/') || path.len() < 2 {
                return Err(wanted());
            }
            return Ok(ClamdAddress::Unix(path.to_string()));
        }
        Err(wanted())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScanningConfig {
    /// clamd's address: `tcp://host:port` or `unix:/path/to/clamd.sock`.
    pub clamd: String,
    /// Directory infected and unscanned refused uploads are moved to. Must not be inside
    /// `dataRoot`, so no user can reach it. Relative to server.yaml.
    pub quarantine_dir: String,
    #[serde(default)]
    pub on_infected: OnInfected,
    #[serde(default)]
    pub on_scanner_error: OnScannerError,
    /// Limit on one scan, from connecting to clamd to its verdict.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
    /// Uploads larger than this are not sent to clamd; `onTooLarge` decides. Keep clamd's
    /// `StreamMaxLength` at least this large.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    #[serde(default)]
    pub on_too_large: OnTooLarge,
}

fn default_timeout_seconds() -> u64 {
    DEFAULT_SCAN_TIMEOUT_SECONDS
}
fn default_max_file_bytes() -> u64 {
    DEFAULT_SCAN_MAX_FILE_BYTES
}

impl ScanningConfig {
    /// A section with every default, scanning through `clamd` into `quarantine_dir`.
    pub fn new(clamd: &str, quarantine_dir: &str) -> ScanningConfig {
        ScanningConfig {
            clamd: clamd.to_string(),
            quarantine_dir: quarantine_dir.to_string(),
            on_infected: OnInfected::default(),
            on_scanner_error: OnScannerError::default(),
            timeout_seconds: default_timeout_seconds(),
            max_file_bytes: default_max_file_bytes(),
            on_too_large: OnTooLarge::default(),
        }
    }

    /// The parsed `clamd` address (valid once [`ScanningConfig::validate`] found no error).
    pub fn address(&self) -> Result<ClamdAddress, String> {
        ClamdAddress::parse(&self.clamd)
    }

    /// Every invalid value under `scanning`, each naming its field. `data_root` is compared
    /// lexically: the quarantine must not be inside it.
    pub fn validate(&self, file: &str, data_root: &str, errors: &mut Vec<FieldError>) {
        let mut err = |field: &str, message: String| {
            errors.push(FieldError::new(file, field, message));
        };
        if let Err(message) = self.address() {
            err("scanning.clamd", message);
        }
        let quarantine = self.quarantine_dir.trim().trim_end_matches('/');
        if quarantine.is_empty() {
            err("scanning.quarantineDir", "must not be empty".into());
        } else {
            let root = data_root.trim().trim_end_matches('/');
            let inside = root.is_empty()
                || quarantine == root
                || quarantine.starts_with(&format!("{root}/"))
                || root.starts_with(&format!("{quarantine}/"));
            if inside || quarantine.split('/').any(|c| c == "..") {
                err(
                    "scanning.quarantineDir",
                    format!(
                        "must be outside dataRoot ({root}) and hold no '..': users could reach \
                         quarantined files"
                    ),
                );
            }
        }
        if !(1..=3600).contains(&self.timeout_seconds) {
            err(
                "scanning.timeoutSeconds",
                format!("must be between 1 and 3600, got {}", self.timeout_seconds),
            );
        }
        if !(1..=MAX_SCAN_MAX_FILE_BYTES).contains(&self.max_file_bytes) {
            err(
                "scanning.maxFileBytes",
                format!(
                    "must be between 1 and {MAX_SCAN_MAX_FILE_BYTES} (clamd's stream limit), got {}",
                    self.max_file_bytes
                ),
            );
        }
    }

    /// Settings weaker than the default, for the start-up warning.
    pub fn insecure_opt_ins(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.on_scanner_error == OnScannerError::Allow {
            warnings.push(
                "scanning.onScannerError is allow: uploads are published unscanned while clamd \
                 is unreachable or failing"
                    .to_string(),
            );
        }
        if self.on_too_large == OnTooLarge::Skip {
            warnings.push(format!(
                "scanning.onTooLarge is skip: uploads larger than scanning.maxFileBytes ({}) are \
                 published unscanned",
                self.max_file_bytes
            ));
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(config: &ScanningConfig, data_root: &str) -> Vec<String> {
        let mut errors = Vec::new();
        config.validate("server.yaml", data_root, &mut errors);
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn both_address_forms_parse_and_others_are_refused() {
        assert_eq!(
            ClamdAddress::parse("tcp://127.0.0.1:3310"),
            Ok(ClamdAddress::Tcp("127.0.0.1:3310".into()))
        );
        assert_eq!(
            ClamdAddress::parse("tcp://clamd.av.svc:3310"),
            Ok(ClamdAddress::Tcp("clamd.av.svc:3310".into()))
        );
        assert_eq!(
            ClamdAddress::parse("unix:/run/clamd/clamd.sock"),
            Ok(ClamdAddress::Unix("/run/clamd/clamd.sock".into()))
        );
        assert_eq!(
            ClamdAddress::parse("unix:///run/clamd.sock"),
            Ok(ClamdAddress::Unix("/run/clamd.sock".into()))
        );
        for bad in [
            "127.0.0.1:3310",
            "tcp://host",
            "tcp://host:0",
            "tcp://:3310",
            "tcp://host:3310/x",
            "unix:relative.sock",
            "unix:",
            "http://host:3310",
        ] {
            let error = ClamdAddress::parse(bad).unwrap_err();
            assert!(error.contains("tcp://host:port"), "{bad}: {error}");
        }
    }

    #[test]
    fn defaults_fail_closed_and_are_no_opt_in() {
        let config = ScanningConfig::new("tcp://127.0.0.1:3310", "/var/lib/sluice/quarantine");
        assert_eq!(config.on_infected, OnInfected::Quarantine);
        assert_eq!(config.on_scanner_error, OnScannerError::Refuse);
        assert_eq!(config.on_too_large, OnTooLarge::Refuse);
        assert!(fields(&config, "/data").is_empty());
        assert!(config.insecure_opt_ins().is_empty());
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut config = ScanningConfig::new("clamd:3310", "/data/quarantine");
        config.timeout_seconds = 0;
        config.max_file_bytes = 0;
        let named = fields(&config, "/data/");
        for want in [
            "scanning.clamd",
            "scanning.quarantineDir",
            "scanning.timeoutSeconds",
            "scanning.maxFileBytes",
        ] {
            assert!(named.contains(&want.to_string()), "{want}: {named:?}");
        }
    }

    #[test]
    fn the_quarantine_may_not_hold_or_be_inside_the_data_root() {
        let at = |dir: &str| fields(&ScanningConfig::new("tcp://h:1", dir), "/srv/data");
        assert!(at("/srv/quarantine").is_empty());
        assert!(at("/srv/data-quarantine").is_empty());
        assert_eq!(at("/srv/data"), vec!["scanning.quarantineDir"]);
        assert_eq!(at("/srv/data/q"), vec!["scanning.quarantineDir"]);
        assert_eq!(at("/srv"), vec!["scanning.quarantineDir"]);
        assert_eq!(at("/srv/data/../q"), vec!["scanning.quarantineDir"]);
        assert_eq!(at(""), vec!["scanning.quarantineDir"]);
    }

    #[test]
    fn opt_ins_are_named() {
        let mut config = ScanningConfig::new("tcp://h:1", "/q");
        config.on_scanner_error = OnScannerError::Allow;
        config.on_too_large = OnTooLarge::Skip;
        let warnings = config.insecure_opt_ins();
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].starts_with("scanning.onScannerError is allow"));
        assert!(warnings[1].starts_with("scanning.onTooLarge is skip"));
    }
}
