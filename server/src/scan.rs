//! Malware scanning before publication (hardening item H23). A partner's file is untrusted
//! input: with `scanning` in server.yaml, every complete upload is streamed to clamd after its
//! last byte was fsync'd under its reserved temporary name and *before* the rename that
//! publishes it. Nothing under the final name ever held an unscanned byte, so no reader and
//! no file event can see an infected file. Both protocols call [`gate`] at that one point.
//!
//! The rules, fail closed: an infected file is moved to the quarantine directory (outside
//! every home) or deleted; when clamd gives no verdict (unreachable, timeout, error reply) the
//! upload is refused and the file kept in quarantine unless `onScannerError: allow`; a file
//! above `maxFileBytes` is refused (deleted) unless `onTooLarge: skip`.
//!
//! The INSTREAM framing is the `clamav-client` crate's (maintained, tokio support). What is
//! ours: feeding it the file in 256 KiB chunks read through the user's file-work budget
//! ([`crate::filework`]), so a scan holds no tokio worker, never loads the file into memory and
//! takes its turn with the user's other file work; one scan slot per file-work slot of the
//! user, so one user's uploads cannot occupy clamd's threads for everyone; the timeout; and
//! reading the verdict ourselves ([`parse_reply`]): the crate's `clean()` treats any reply
//! containing "OK" as clean, which a signature name could contain.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::json;
use sluice_config::{ClamdAddress, OnInfected, OnScannerError, OnTooLarge, ScanningConfig};
use tokio::sync::mpsc;

use crate::userfs::{CHUNK_BYTES, UserFs};
use crate::vpath::VirtualPath;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("scanning.clamd: {0}")]
    Address(String),
    #[error("cannot reach clamd at {address}: {source}")]
    Connect { address: String, source: io::Error },
    #[error("clamd gave no verdict within scanning.timeoutSeconds ({0} s)")]
    Timeout(u64),
    #[error("clamd error: {0}")]
    Clamd(String),
    #[error("cannot read the upload for scanning: {0}")]
    Read(String),
}

/// clamd's answer to one INSTREAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Infected(String),
}

/// Reads clamd's reply (`stream: OK`, `stream: <signature> FOUND`, `... ERROR`), NUL- or
/// newline-terminated. Anything else is an error: only an explicit `OK` is clean.
pub fn parse_reply(reply: &[u8]) -> Result<Verdict, ScanError> {
    let text = String::from_utf8_lossy(reply);
    let text = text.trim_end_matches(['\0', '\n', '\r']).trim();
    let body = text.strip_prefix("stream:").map(str::trim).unwrap_or(text);
    if body == "OK" {
        return Ok(Verdict::Clean);
    }
    if let Some(signature) = body.strip_suffix(" FOUND") {
        let signature = signature.trim();
        if !signature.is_empty() {
            return Ok(Verdict::Infected(signature.chars().take(200).collect()));
        }
    }
    let shown: String = text.chars().take(200).collect();
    if shown.is_empty() {
        return Err(ScanError::Clamd("empty reply".into()));
    }
    Err(ScanError::Clamd(shown))
}

/// Why a published upload was let through, for the `transfer` audit event's `scan` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanNote {
    Clean,
    /// Larger than `maxFileBytes` with `onTooLarge: skip`.
    SkippedTooLarge,
    /// clamd failed with `onScannerError: allow`.
    ScannerErrorAllowed,
}

impl ScanNote {
    pub fn as_str(self) -> &'static str {
        match self {
            ScanNote::Clean => "clean",
            ScanNote::SkippedTooLarge => "skipped_too_large",
            ScanNote::ScannerErrorAllowed => "scanner_error_allowed",
        }
    }
}

/// Why an upload was refused; the `reason` of the audit event and the file event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalReason {
    Infected { signature: String },
    ScannerUnavailable { error: String },
    TooLarge { size: u64, limit: u64 },
}

impl RefusalReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            RefusalReason::Infected { .. } => "infected",
            RefusalReason::ScannerUnavailable { .. } => "scanner_unavailable",
            RefusalReason::TooLarge { .. } => "too_large",
        }
    }
}

/// What became of a refused upload's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposal {
    /// Moved into the quarantine directory under this name.
    Quarantined(String),
    Deleted,
    /// Quarantine was wanted but failed; the file was deleted instead (never published).
    QuarantineFailed(String),
}

/// A refused upload: never published under its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub disposal: Disposal,
    pub scan_ms: u64,
}

impl Refusal {
    /// The text the client sees (FTPS reply text, SFTP status message).
    pub fn client_message(&self) -> String {
        match &self.reason {
            RefusalReason::Infected { signature } => {
                format!("upload refused: infected: {signature}")
            }
            RefusalReason::ScannerUnavailable { .. } => {
                "upload refused: virus scanner unavailable, try again later".to_string()
            }
            RefusalReason::TooLarge { size, limit } => format!(
                "upload refused: too large to scan ({size} bytes, scanning.maxFileBytes is {limit})"
            ),
        }
    }

    /// FTPS reply code: 451 (transient, try again) when the scanner failed, else 550.
    pub fn ftp_code(&self) -> u16 {
        match self.reason {
            RefusalReason::ScannerUnavailable { .. } => 451,
            _ => 550,
        }
    }

    /// The `upload_rejected` audit event's fields.
    pub fn audit_fields(
        &self,
        path: &VirtualPath,
        size: u64,
        sha256: Option<&str>,
    ) -> serde_json::Value {
        let mut fields = json!({
            "path": path.to_string(),
            "reason": self.reason.as_str(),
            "size": size,
            "sha256": sha256,
            "scan_ms": self.scan_ms,
        });
        match &self.reason {
            RefusalReason::Infected { signature } => fields["signature"] = signature.clone().into(),
            RefusalReason::ScannerUnavailable { error } => fields["error"] = error.clone().into(),
            RefusalReason::TooLarge { limit, .. } => fields["limit"] = (*limit).into(),
        }
        match &self.disposal {
            Disposal::Quarantined(name) => {
                fields["disposition"] = "quarantined".into();
                fields["quarantine_file"] = name.clone().into();
            }
            Disposal::Deleted => fields["disposition"] = "deleted".into(),
            Disposal::QuarantineFailed(error) => {
                fields["disposition"] = "deleted".into();
                fields["quarantine_error"] = error.clone().into();
            }
        }
        fields
    }

    pub fn signature(&self) -> Option<&str> {
        match &self.reason {
            RefusalReason::Infected { signature } => Some(signature),
            _ => None,
        }
    }
}

/// What [`decide`] says before the bytes are disposed of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Publish(ScanNote),
    /// Refuse; `quarantine` says whether the bytes go to quarantine (else deleted).
    Refuse {
        reason: RefusalReason,
        quarantine: bool,
    },
}

/// The policy, pure: what to do with an upload of `size` bytes given clamd's outcome (`None`
/// when it was not scanned because it is too large).
pub fn decide(
    config: &ScanningConfig,
    size: u64,
    outcome: Option<&Result<Verdict, ScanError>>,
) -> Decision {
    match outcome {
        None => match config.on_too_large {
            OnTooLarge::Skip => Decision::Publish(ScanNote::SkippedTooLarge),
            OnTooLarge::Refuse => Decision::Refuse {
                reason: RefusalReason::TooLarge {
                    size,
                    limit: config.max_file_bytes,
                },
                quarantine: false,
            },
        },
        Some(Ok(Verdict::Clean)) => Decision::Publish(ScanNote::Clean),
        Some(Ok(Verdict::Infected(signature))) => Decision::Refuse {
            reason: RefusalReason::Infected {
                signature: signature.clone(),
            },
            quarantine: config.on_infected == OnInfected::Quarantine,
        },
        Some(Err(error)) => match config.on_scanner_error {
            OnScannerError::Allow => Decision::Publish(ScanNote::ScannerErrorAllowed),
            OnScannerError::Refuse => Decision::Refuse {
                reason: RefusalReason::ScannerUnavailable {
                    error: error.to_string(),
                },
                quarantine: true,
            },
        },
    }
}

/// The file name a refused upload gets in the quarantine directory: when, a random part, the
/// user and the file's own name, reduced to `[A-Za-z0-9._-]` (so it is one safe component).
pub fn quarantine_name(
    now: jiff::Timestamp,
    random: u32,
    user: &str,
    path: &VirtualPath,
) -> String {
    let clean = |text: &str, max: usize| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .take(max)
            .collect()
    };
    let base = path.relative();
    let base = base.rsplit('/').next().unwrap_or("upload");
    format!(
        "{}-{random:08x}-{}-{}",
        now.strftime("%Y%m%dT%H%M%SZ"),
        clean(user, 64),
        clean(base, 120).trim_start_matches('.')
    )
}

/// Creates the quarantine directory (and parents), readable by the server's user only.
pub fn create_quarantine_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Scan metrics, registered with the server's others.
pub struct ScanMetrics {
    pub scans: Family<Vec<(&'static str, String)>, Counter>,
    pub duration: Histogram,
}

impl Default for ScanMetrics {
    fn default() -> Self {
        ScanMetrics {
            scans: Family::default(),
            duration: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
        }
    }
}

impl ScanMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "scans",
            "Upload scans by result (clean, infected, scanner_error, too_large)",
            self.scans.clone(),
        );
        registry.register(
            "scan_duration_seconds",
            "Time clamd took for one upload (connect, stream, verdict)",
            self.duration.clone(),
        );
        for result in ["clean", "infected", "scanner_error", "too_large"] {
            let _ = self
                .scans
                .get_or_create(&vec![("result", result.to_string())]);
        }
    }

    fn count(&self, result: &str) {
        self.scans
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }
}

/// Streams the temporary file `temp` (relative to the user's home) to clamd and returns its
/// verdict, within `timeout`.
pub async fn scan_temp(
    address: &ClamdAddress,
    fs: &UserFs,
    temp: &str,
    timeout: Duration,
) -> Result<Verdict, ScanError> {
    let file = fs
        .open_temp(temp)
        .await
        .map_err(|e| ScanError::Read(e.to_string()))?;
    // Chunks are read by file work of the user (never a tokio worker), two ahead of clamd.
    let (tx, rx) = mpsc::channel::<io::Result<bytes::Bytes>>(2);
    let work = fs.work().clone();
    let feeder = tokio::spawn(async move {
        let mut file = file;
        loop {
            let read = work
                .run(move || {
                    let chunk = crate::userfs::read_chunk(&mut file);
                    (file, chunk)
                })
                .await;
            let (back, chunk) = match read {
                Ok(done) => done,
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            file = back;
            match chunk {
                Ok(chunk) if chunk.is_empty() => return,
                Ok(chunk) => {
                    if tx.send(Ok(bytes::Bytes::from(chunk))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    let input = tokio_stream::wrappers::ReceiverStream::new(rx);
    let label = match address {
        ClamdAddress::Tcp(host) => format!("tcp://{host}"),
        ClamdAddress::Unix(path) => format!("unix:{path}"),
    };
    let scan = async {
        match address {
            ClamdAddress::Tcp(host) => {
                let connection = clamav_client::tokio::Tcp {
                    host_address: host.as_str(),
                };
                clamav_client::tokio::scan_stream(input, connection, Some(CHUNK_BYTES)).await
            }
            ClamdAddress::Unix(path) => {
                let connection = clamav_client::tokio::Socket {
                    socket_path: Path::new(path),
                };
                clamav_client::tokio::scan_stream(input, connection, Some(CHUNK_BYTES)).await
            }
        }
    };
    let reply = tokio::time::timeout(timeout, scan).await;
    feeder.abort();
    match reply {
        Err(_) => Err(ScanError::Timeout(timeout.as_secs())),
        Ok(Err(source)) => Err(ScanError::Connect {
            address: label,
            source,
        }),
        Ok(Ok(reply)) => parse_reply(&reply),
    }
}

/// A complete upload, not yet published: its temporary file (`temp`, relative to the home of
/// `fs`) of `size` bytes, to be renamed to `path`.
pub struct Upload<'a> {
    pub fs: &'a UserFs,
    pub temp: &'a str,
    pub size: u64,
    pub user: &'a str,
    pub path: &'a VirtualPath,
}

/// The publish gate both protocols call: `scanning` of the configuration in force, its
/// quarantine directory resolved, and the metrics.
pub struct Scanner<'a> {
    pub config: &'a ScanningConfig,
    pub quarantine_dir: &'a Path,
    pub metrics: &'a ScanMetrics,
}

impl Scanner<'_> {
    /// Decides on `upload` before it is renamed to its name. `Ok` means publish; `Err` means
    /// the file is already quarantined or deleted and the upload must be refused.
    pub async fn gate(&self, upload: Upload<'_>) -> Result<ScanNote, Refusal> {
        let Scanner {
            config,
            quarantine_dir,
            metrics,
        } = self;
        let Upload {
            fs,
            temp,
            size,
            user,
            path,
        } = upload;
        let started = Instant::now();
        let outcome = if size > config.max_file_bytes {
            metrics.count("too_large");
            None
        } else {
            let result = match config.address() {
                Ok(address) => {
                    // One scan per file-work slot of the user: the user's other scans wait here.
                    let _slot = fs.work().scan_slot().await;
                    let timeout = Duration::from_secs(config.timeout_seconds);
                    scan_temp(&address, fs, temp, timeout).await
                }
                Err(message) => Err(ScanError::Address(message)),
            };
            metrics.duration.observe(started.elapsed().as_secs_f64());
            metrics.count(match &result {
                Ok(Verdict::Clean) => "clean",
                Ok(Verdict::Infected(_)) => "infected",
                Err(_) => "scanner_error",
            });
            Some(result)
        };
        if let Some(Err(error)) = &outcome {
            let allowed = config.on_scanner_error == OnScannerError::Allow;
            tracing::warn!(%error, path = %path, user, allowed, "upload scan failed");
        }
        let decision = decide(config, size, outcome.as_ref());
        let scan_ms = started.elapsed().as_millis() as u64;
        let (reason, quarantine) = match decision {
            Decision::Publish(note) => return Ok(note),
            Decision::Refuse { reason, quarantine } => (reason, quarantine),
        };
        let disposal = if quarantine {
            let name = quarantine_name(jiff::Timestamp::now(), rand::random(), user, path);
            match fs
                .quarantine_temp(temp.to_string(), quarantine_dir.to_path_buf(), name.clone())
                .await
            {
                Ok(()) => Disposal::Quarantined(name),
                Err(error) => {
                    tracing::error!(%error, path = %path, user, "cannot quarantine a refused upload; deleted it");
                    Disposal::QuarantineFailed(error.to_string())
                }
            }
        } else {
            fs.remove_temp(temp.to_string()).await;
            Disposal::Deleted
        };
        Err(Refusal {
            reason,
            disposal,
            scan_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ScanningConfig {
        ScanningConfig::new("tcp://127.0.0.1:3310", "/q")
    }

    #[test]
    fn only_an_explicit_ok_is_clean() {
        assert_eq!(parse_reply(b"stream: OK\0").unwrap(), Verdict::Clean);
        assert_eq!(
            parse_reply(b"stream: Eicar-Test-Signature FOUND\0").unwrap(),
            Verdict::Infected("Eicar-Test-Signature".into())
        );
        assert_eq!(
            parse_reply(b"stream: OK.Looking FOUND\n").unwrap(),
            Verdict::Infected("OK.Looking".into())
        );
        for bad in [
            &b"INSTREAM size limit exceeded. ERROR\0"[..],
            b"",
            b"\0",
            b"stream:  FOUND\0",
            b"stream: OKAY\0",
            b"UNKNOWN COMMAND\0",
        ] {
            assert!(
                parse_reply(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_defaults_fail_closed() {
        let config = config();
        let infected = Ok(Verdict::Infected("X".into()));
        assert_eq!(
            decide(&config, 10, Some(&infected)),
            Decision::Refuse {
                reason: RefusalReason::Infected {
                    signature: "X".into()
                },
                quarantine: true
            }
        );
        let failed = Err(ScanError::Timeout(3));
        match decide(&config, 10, Some(&failed)) {
            Decision::Refuse {
                reason: RefusalReason::ScannerUnavailable { error },
                quarantine: true,
            } => assert!(error.contains("timeoutSeconds"), "{error}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(&config, 1 << 40, None),
            Decision::Refuse {
                reason: RefusalReason::TooLarge {
                    size: 1 << 40,
                    limit: config.max_file_bytes
                },
                quarantine: false
            }
        );
        assert_eq!(
            decide(&config, 10, Some(&Ok(Verdict::Clean))),
            Decision::Publish(ScanNote::Clean)
        );
    }

    #[test]
    fn the_opt_ins_publish_and_delete_is_honoured() {
        let mut config = config();
        config.on_scanner_error = OnScannerError::Allow;
        config.on_too_large = OnTooLarge::Skip;
        config.on_infected = OnInfected::Delete;
        let failed = Err(ScanError::Clamd("x".into()));
        assert_eq!(
            decide(&config, 10, Some(&failed)),
            Decision::Publish(ScanNote::ScannerErrorAllowed)
        );
        assert_eq!(
            decide(&config, 10, None),
            Decision::Publish(ScanNote::SkippedTooLarge)
        );
        let infected = Ok(Verdict::Infected("X".into()));
        assert!(matches!(
            decide(&config, 10, Some(&infected)),
            Decision::Refuse {
                quarantine: false,
                ..
            }
        ));
    }

    #[test]
    fn quarantine_names_are_one_safe_component() {
        let now: jiff::Timestamp = "2026-12-06T22:30:00Z".parse().unwrap();
        let path = VirtualPath::root()
            .resolve("/in/../in/a b$/..evil name.exe")
            .unwrap();
        let name = quarantine_name(now, 0xabc, "al/ice", &path);
        assert_eq!(name, "20261206T223000Z-00000abc-al_ice-evil_name.exe");
        assert!(!name.contains('/'));
    }

    #[test]
    fn the_client_hears_the_reason() {
        let refusal = Refusal {
            reason: RefusalReason::Infected {
                signature: "Sluice-Test-EICAR".into(),
            },
            disposal: Disposal::Quarantined("q".into()),
            scan_ms: 3,
        };
        assert_eq!(
            refusal.client_message(),
            "upload refused: infected: Sluice-Test-EICAR"
        );
        assert_eq!(refusal.ftp_code(), 550);
        let path = VirtualPath::root().resolve("/x").unwrap();
        let fields = refusal.audit_fields(&path, 68, Some("ab"));
        assert_eq!(fields["reason"], "infected");
        assert_eq!(fields["signature"], "Sluice-Test-EICAR");
        assert_eq!(fields["disposition"], "quarantined");
        assert_eq!(fields["quarantine_file"], "q");
        let unavailable = Refusal {
            reason: RefusalReason::ScannerUnavailable { error: "e".into() },
            disposal: Disposal::Quarantined("q".into()),
            scan_ms: 3,
        };
        assert_eq!(unavailable.ftp_code(), 451);
    }
}
