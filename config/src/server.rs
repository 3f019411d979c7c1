//! `server.yaml`: listeners, TLS, passive ports, limits, timeouts, uploads, audit, reload.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{
    BanConfig, ConfigError, FieldError, PasswordsConfig, SshConfig, check_header, parse_yaml,
};

/// Largest passive range we accept: every port becomes a Kubernetes ServicePort, and a Service
/// with thousands of ports is slow to program into kube-proxy.
pub const MAX_PASSIVE_PORTS: u32 = 1000;

/// TLS cipher suites Sluice can offer. Anything not in this list (CBC, RSA key exchange, SHA-1
/// MACs) cannot even be named.
pub const SUPPORTED_CIPHER_SUITES: &[&str] = &[
    "TLS13_AES_256_GCM_SHA384",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS13_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
];

/// The hardened default: AES-256-GCM and ChaCha20-Poly1305 only, TLS 1.3 and 1.2, ECDHE only.
pub const DEFAULT_CIPHER_SUITES: &[&str] = &[
    "TLS13_AES_256_GCM_SHA384",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// The whole of `server.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerConfig {
    /// Must be `sluice.dev/v1alpha1`.
    pub api_version: String,
    /// Must be `ServerConfig`.
    pub kind: String,
    /// Directory that holds every user's home; users can never leave it.
    pub data_root: String,
    /// Path of `users.yaml`; relative paths are resolved against this file's directory.
    pub users_file: String,
    pub listeners: Listeners,
    pub tls: TlsConfig,
    #[serde(default)]
    pub passive: PassiveConfig,
    #[serde(default)]
    pub active_mode: ActiveModeConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub uploads: Uploads,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub reload: ReloadConfig,
    /// SSH settings of the SFTP listener; see [`SshConfig`].
    #[serde(default, skip_serializing_if = "SshConfig::is_default")]
    pub ssh: SshConfig,
    /// Brute-force protection shared by FTPS and SFTP.
    #[serde(default)]
    pub bans: BanConfig,
    /// Password aging; see [`PasswordsConfig`].
    #[serde(default, skip_serializing_if = "PasswordsConfig::is_default")]
    pub passwords: PasswordsConfig,
    /// Per-connection and per-user resource budgets; see [`crate::Budgets`].
    #[serde(default)]
    pub budgets: crate::Budgets,
    /// Server-wide source allowlist (CIDRs or bare addresses), checked when a connection is
    /// admitted, before any TLS or SSH byte; empty allows every address. Behind a PROXY
    /// protocol proxy it applies to the client's address from the header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_cidrs: Vec<String>,
    /// PROXY protocol v1/v2 from trusted proxies; see [`crate::ProxyProtocolConfig`].
    #[serde(
        default,
        skip_serializing_if = "crate::ProxyProtocolConfig::is_default"
    )]
    pub proxy_protocol: crate::ProxyProtocolConfig,
    /// File events and their delivery; see [`crate::EventsConfig`]. Absent: no events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<crate::EventsConfig>,
    /// Malware scanning of uploads before they are published; see [`crate::ScanningConfig`].
    /// Absent: no scanning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scanning: Option<crate::ScanningConfig>,
    /// How long quota usage is trusted before a rescan; see [`crate::QuotaConfig`].
    #[serde(default, skip_serializing_if = "crate::QuotaConfig::is_default")]
    pub quotas: crate::QuotaConfig,
    /// When and where retention runs; see [`crate::RetentionConfig`].
    #[serde(default, skip_serializing_if = "crate::RetentionConfig::is_default")]
    pub retention: crate::RetentionConfig,
    /// Where the homes live; see [`crate::StorageConfig`]. Absent: under `dataRoot`.
    #[serde(default, skip_serializing_if = "crate::StorageConfig::is_default")]
    pub storage: crate::StorageConfig,
}

/// Which sockets to open. At least one of the FTPS listeners must be set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Listeners {
    /// Explicit FTPS (`AUTH TLS` on the control port, RFC 4217), e.g. `0.0.0.0:2121`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ftps_explicit: Option<String>,
    /// Implicit FTPS (TLS from the first byte), e.g. `0.0.0.0:2990`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ftps_implicit: Option<String>,
    /// Health, readiness and Prometheus metrics over plain HTTP, e.g. `0.0.0.0:8080`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// SFTP over SSH, e.g. `0.0.0.0:2222`; needs `ssh.hostKeyFiles`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sftp: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum ClientCertificateMode {
    /// No client certificate is requested.
    #[default]
    None,
    /// A certificate is requested and, when sent, must chain to `clientCaFile`.
    Optional,
    /// Every connection must present a certificate that chains to `clientCaFile`.
    Required,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsConfig {
    /// PEM certificate chain (`tls.crt` of a Kubernetes TLS Secret). Relative to this file.
    pub cert_file: String,
    /// PEM private key (`tls.key`). Relative to this file.
    pub key_file: String,
    /// Cipher suites in preference order; see [`SUPPORTED_CIPHER_SUITES`].
    #[serde(default = "default_cipher_suites")]
    pub cipher_suites: Vec<String>,
    /// Whether clients must present a certificate.
    #[serde(default)]
    pub client_certificates: ClientCertificateMode,
    /// PEM CA bundle that client certificates must chain to; required unless mode is `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<String>,
    /// Data connections must resume the control connection's TLS session (binds the data
    /// channel to the authenticated client). Turning it off is an insecure opt-in.
    #[serde(default = "yes")]
    pub require_session_resumption: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PassiveConfig {
    /// First port of the passive range (inclusive).
    pub port_start: u16,
    /// Last port of the passive range (inclusive); at most [`MAX_PASSIVE_PORTS`] ports.
    pub port_end: u16,
    /// Address put in `227`/`229` replies; defaults to the control connection's local address.
    /// On Kubernetes this is the Service's external address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_address: Option<IpAddr>,
    /// Per-host overrides of `advertisedAddress`, keyed by host name: with several replicas
    /// behind per-pod Services, each pod advertises its own Service's address.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub advertised_address_by_host: BTreeMap<String, IpAddr>,
}

impl PassiveConfig {
    /// The address a server running on `host` puts in PASV/EPSV replies, if configured.
    pub fn advertised_for(&self, host: &str) -> Option<IpAddr> {
        self.advertised_address_by_host
            .get(host)
            .copied()
            .or(self.advertised_address)
    }
}

impl Default for PassiveConfig {
    fn default() -> Self {
        Self {
            port_start: 50000,
            port_end: 50099,
            advertised_address: None,
            advertised_address_by_host: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ActiveModeConfig {
    /// `PORT`/`EPRT`; off by default. When on, only to the client's own address.
    #[serde(default)]
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Concurrent sessions in total.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u32,
    /// Concurrent sessions from one source address.
    #[serde(default = "default_max_sessions_per_ip")]
    pub max_sessions_per_ip: u32,
    /// Concurrent logged-in sessions of one user.
    #[serde(default = "default_max_sessions_per_user")]
    pub max_sessions_per_user: u32,
    /// Failed `PASS` attempts before the connection is closed.
    #[serde(default = "default_max_auth_attempts")]
    pub max_auth_attempts: u32,
    /// Delay after every failed login, in milliseconds (slows guessing).
    #[serde(default = "default_auth_failure_delay_ms")]
    pub auth_failure_delay_ms: u64,
    /// Longest accepted command line in bytes, CRLF included.
    #[serde(default = "default_max_command_length")]
    pub max_command_length: u32,
    /// New connections one source may open per second, sustained (token bucket), checked
    /// before any TLS or SSH handshake. Over it a connection is refused at once.
    #[serde(default = "default_new_connections_per_second")]
    pub new_connections_per_second: u32,
    /// New connections one source may open in a burst before the rate applies.
    #[serde(default = "default_new_connection_burst")]
    pub new_connection_burst: u32,
    /// IPv6 clients are one source per prefix of this length for per-address limits, the
    /// connection rate and bans: one host usually holds a whole /64 and can rotate addresses.
    #[serde(default = "default_ipv6_prefix_length")]
    pub ipv6_prefix_length: u8,
    /// New logged-in sessions one user may start per second, sustained, over every protocol
    /// and source address (one tenant's session churn, each a handshake and a login, must not
    /// take the server from the others). Past the burst a login waits its turn after the
    /// credentials were checked, and is refused when its turn is more than
    /// `MAX_SESSION_PACING_WAIT_SECONDS` away.
    #[serde(default = "default_new_sessions_per_user_per_second")]
    pub new_sessions_per_user_per_second: u32,
    /// New sessions one user may start in a burst before the rate applies.
    #[serde(default = "default_new_session_burst_per_user")]
    pub new_session_burst_per_user: u32,
}

/// The longest a login waits for its user's turn (`limits.newSessionsPerUserPerSecond`) before
/// it is refused instead: well under the shortest login timeout clients use (10 s).
pub const MAX_SESSION_PACING_WAIT_SECONDS: u64 = 5;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: default_max_sessions(),
            max_sessions_per_ip: default_max_sessions_per_ip(),
            max_sessions_per_user: default_max_sessions_per_user(),
            max_auth_attempts: default_max_auth_attempts(),
            auth_failure_delay_ms: default_auth_failure_delay_ms(),
            max_command_length: default_max_command_length(),
            new_connections_per_second: default_new_connections_per_second(),
            new_connection_burst: default_new_connection_burst(),
            ipv6_prefix_length: default_ipv6_prefix_length(),
            new_sessions_per_user_per_second: default_new_sessions_per_user_per_second(),
            new_session_burst_per_user: default_new_session_burst_per_user(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    /// From connect to successful login.
    #[serde(default = "default_login_seconds")]
    pub login_seconds: u64,
    /// Idle control connection (no command) after login.
    #[serde(default = "default_idle_seconds")]
    pub idle_seconds: u64,
    /// From `PASV`/`EPSV` to the client's data connection (and its TLS handshake).
    #[serde(default = "default_data_connect_seconds")]
    pub data_connect_seconds: u64,
    /// No byte moved on an open data connection.
    #[serde(default = "default_data_idle_seconds")]
    pub data_idle_seconds: u64,
    /// On SIGTERM: how long running transfers may take to finish before the process exits
    /// (new logins are refused and idle sessions closed at once). Keep it below the pod's
    /// `terminationGracePeriodSeconds`.
    #[serde(default = "default_shutdown_grace_seconds")]
    pub shutdown_grace_seconds: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            login_seconds: default_login_seconds(),
            idle_seconds: default_idle_seconds(),
            data_connect_seconds: default_data_connect_seconds(),
            data_idle_seconds: default_data_idle_seconds(),
            shutdown_grace_seconds: default_shutdown_grace_seconds(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Uploads {
    /// Write to a temporary name, fsync, and rename over the final name only on success.
    #[serde(default = "yes")]
    pub atomic: bool,
}

impl Default for Uploads {
    fn default() -> Self {
        Self { atomic: true }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditConfig {
    /// Audit events as JSON lines on stdout.
    #[serde(default = "yes")]
    pub stdout: bool,
    /// Also append them to this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            stdout: true,
            file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReloadConfig {
    /// How often the config, users and certificate files are checked for changes.
    #[serde(default = "default_reload_interval_ms")]
    pub interval_ms: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            interval_ms: default_reload_interval_ms(),
        }
    }
}

fn err_push(errors: &mut Vec<FieldError>, file: &str, field: &str, message: String) {
    errors.push(FieldError::new(file, field, message));
}

fn yes() -> bool {
    true
}
fn default_cipher_suites() -> Vec<String> {
    DEFAULT_CIPHER_SUITES
        .iter()
        .map(|s| s.to_string())
        .collect()
}
fn default_max_sessions() -> u32 {
    2000
}
fn default_max_sessions_per_ip() -> u32 {
    50
}
fn default_max_sessions_per_user() -> u32 {
    20
}
fn default_max_auth_attempts() -> u32 {
    3
}
fn default_auth_failure_delay_ms() -> u64 {
    1000
}
fn default_max_command_length() -> u32 {
    4096
}
fn default_new_connections_per_second() -> u32 {
    10
}
fn default_new_connection_burst() -> u32 {
    30
}
fn default_new_sessions_per_user_per_second() -> u32 {
    10
}
fn default_new_session_burst_per_user() -> u32 {
    30
}
fn default_ipv6_prefix_length() -> u8 {
    64
}
fn default_login_seconds() -> u64 {
    30
}
fn default_idle_seconds() -> u64 {
    300
}
fn default_data_connect_seconds() -> u64 {
    30
}
fn default_shutdown_grace_seconds() -> u64 {
    45
}
fn default_data_idle_seconds() -> u64 {
    60
}
fn default_reload_interval_ms() -> u64 {
    1000
}

impl ServerConfig {
    /// Parses and validates `server.yaml`; `file` is the name used in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let config: ServerConfig = parse_yaml(file, text)?;
        let errors = config.validate(file);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// Every invalid value, each naming its field. Empty when the config is valid.
    pub fn validate(&self, file: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        check_header(
            &mut errors,
            file,
            &self.api_version,
            &self.kind,
            "ServerConfig",
        );
        let mut err = |field: &str, message: String| {
            errors.push(FieldError::new(file, field, message));
        };
        if self.data_root.trim().is_empty() {
            err("dataRoot", "must not be empty".into());
        }
        if self.users_file.trim().is_empty() {
            err("usersFile", "must not be empty".into());
        }
        let listeners = [
            ("listeners.ftpsExplicit", &self.listeners.ftps_explicit),
            ("listeners.ftpsImplicit", &self.listeners.ftps_implicit),
            ("listeners.health", &self.listeners.health),
            ("listeners.sftp", &self.listeners.sftp),
        ];
        let mut seen: Vec<SocketAddr> = Vec::new();
        for (field, value) in listeners {
            if let Some(text) = value {
                match text.parse::<SocketAddr>() {
                    Ok(addr) if addr.port() == 0 => err(field, "port must be 1-65535".into()),
                    Ok(addr) => {
                        if seen.iter().any(|other| other.port() == addr.port()) {
                            err(field, format!("port {} is used twice", addr.port()));
                        }
                        seen.push(addr);
                    }
                    Err(_) => err(
                        field,
                        format!("{text:?} is not an address:port such as 0.0.0.0:2121"),
                    ),
                }
            }
        }
        if self.listeners.ftps_explicit.is_none()
            && self.listeners.ftps_implicit.is_none()
            && self.listeners.sftp.is_none()
        {
            err(
                "listeners",
                "at least one of ftpsExplicit, ftpsImplicit or sftp must be set".into(),
            );
        }
        if self.tls.cert_file.trim().is_empty() {
            err("tls.certFile", "must not be empty".into());
        }
        if self.tls.key_file.trim().is_empty() {
            err("tls.keyFile", "must not be empty".into());
        }
        if self.tls.cipher_suites.is_empty() {
            err("tls.cipherSuites", "must name at least one suite".into());
        }
        for (index, suite) in self.tls.cipher_suites.iter().enumerate() {
            if !SUPPORTED_CIPHER_SUITES.contains(&suite.as_str()) {
                err(
                    &format!("tls.cipherSuites[{index}]"),
                    format!(
                        "unsupported suite {suite:?}; supported: {}",
                        SUPPORTED_CIPHER_SUITES.join(", ")
                    ),
                );
            }
        }
        let has_tls13 = self
            .tls
            .cipher_suites
            .iter()
            .any(|s| s.starts_with("TLS13_"));
        if !has_tls13 && !self.tls.cipher_suites.is_empty() {
            err(
                "tls.cipherSuites",
                "must include at least one TLS 1.3 suite".into(),
            );
        }
        if self.tls.client_certificates != ClientCertificateMode::None
            && self.tls.client_ca_file.is_none()
        {
            err(
                "tls.clientCaFile",
                "is required when clientCertificates is optional or required".into(),
            );
        }
        let passive = &self.passive;
        if passive.port_start == 0 {
            err("passive.portStart", "must be 1-65535".into());
        }
        if passive.port_end < passive.port_start {
            err(
                "passive.portEnd",
                format!(
                    "must be >= passive.portStart ({}), got {}",
                    passive.port_start, passive.port_end
                ),
            );
        } else if u32::from(passive.port_end - passive.port_start) + 1 > MAX_PASSIVE_PORTS {
            err(
                "passive.portEnd",
                format!("the passive range may hold at most {MAX_PASSIVE_PORTS} ports"),
            );
        }
        for addr in &seen {
            if (passive.port_start..=passive.port_end).contains(&addr.port()) {
                err(
                    "passive",
                    format!("range overlaps listener port {}", addr.port()),
                );
            }
        }
        if let Some(ip) = passive.advertised_address
            && ip.is_unspecified()
        {
            err(
                "passive.advertisedAddress",
                "must be a concrete address, not 0.0.0.0 or ::".into(),
            );
        }
        for (host, ip) in &passive.advertised_address_by_host {
            if ip.is_unspecified() {
                err(
                    &format!("passive.advertisedAddressByHost.{host}"),
                    "must be a concrete address, not 0.0.0.0 or ::".into(),
                );
            }
        }
        let limits = &self.limits;
        for (field, value) in [
            ("limits.maxSessions", limits.max_sessions),
            ("limits.maxSessionsPerIp", limits.max_sessions_per_ip),
            ("limits.maxSessionsPerUser", limits.max_sessions_per_user),
            ("limits.maxAuthAttempts", limits.max_auth_attempts),
        ] {
            if value == 0 {
                err(field, "must be at least 1".into());
            }
        }
        if limits.max_sessions_per_ip > limits.max_sessions {
            err(
                "limits.maxSessionsPerIp",
                "must not exceed limits.maxSessions".into(),
            );
        }
        if limits.auth_failure_delay_ms > 60_000 {
            err(
                "limits.authFailureDelayMs",
                "must be at most 60000 (a minute)".into(),
            );
        }
        if !(512..=65536).contains(&limits.max_command_length) {
            err(
                "limits.maxCommandLength",
                "must be between 512 and 65536 bytes".into(),
            );
        }
        // Token-bucket pairs: a rate of at least 1 and a burst of at least the rate.
        for ((rate_field, rate), (burst_field, burst)) in [
            (
                ("newConnectionsPerSecond", limits.new_connections_per_second),
                ("newConnectionBurst", limits.new_connection_burst),
            ),
            (
                (
                    "newSessionsPerUserPerSecond",
                    limits.new_sessions_per_user_per_second,
                ),
                ("newSessionBurstPerUser", limits.new_session_burst_per_user),
            ),
        ] {
            if rate == 0 {
                err(&format!("limits.{rate_field}"), "must be at least 1".into());
            }
            if burst < rate {
                err(
                    &format!("limits.{burst_field}"),
                    format!("must be at least limits.{rate_field}"),
                );
            }
        }
        // The pacing's interval is a Duration: a finer one than a microsecond rounds it away.
        for (field, value) in [
            (
                "limits.newSessionsPerUserPerSecond",
                limits.new_sessions_per_user_per_second,
            ),
            (
                "limits.newSessionBurstPerUser",
                limits.new_session_burst_per_user,
            ),
        ] {
            if value > 1_000_000 {
                err(field, "must be at most 1000000".into());
            }
        }
        if !(32..=128).contains(&limits.ipv6_prefix_length) {
            err(
                "limits.ipv6PrefixLength",
                format!(
                    "must be between 32 and 128, got {}",
                    limits.ipv6_prefix_length
                ),
            );
        }
        let timeouts = &self.timeouts;
        for (field, value) in [
            ("timeouts.loginSeconds", timeouts.login_seconds),
            ("timeouts.idleSeconds", timeouts.idle_seconds),
            ("timeouts.dataConnectSeconds", timeouts.data_connect_seconds),
            ("timeouts.dataIdleSeconds", timeouts.data_idle_seconds),
        ] {
            if !(1..=86_400).contains(&value) {
                err(field, format!("must be between 1 and 86400, got {value}"));
            }
        }
        if timeouts.shutdown_grace_seconds > 3600 {
            err(
                "timeouts.shutdownGraceSeconds",
                format!(
                    "must be between 0 and 3600, got {}",
                    timeouts.shutdown_grace_seconds
                ),
            );
        }
        if !(100..=600_000).contains(&self.reload.interval_ms) {
            err("reload.intervalMs", "must be between 100 and 600000".into());
        }
        if let Some(file_path) = &self.audit.file
            && file_path.trim().is_empty()
        {
            err("audit.file", "must not be empty when set".into());
        }
        self.ssh
            .validate(file, self.listeners.sftp.is_some(), &mut errors);
        errors.extend(self.bans.validate(file, "bans"));
        self.budgets.validate(file, &mut errors);
        crate::proxy::validate_allowed_cidrs(file, &self.allowed_cidrs, &mut errors);
        self.proxy_protocol.validate(file, &mut errors);
        if let Some(events) = &self.events {
            events.validate(file, &self.data_root, &mut errors);
        }
        if let Some(scanning) = &self.scanning {
            scanning.validate(file, &self.data_root, &mut errors);
            if !self.uploads.atomic {
                errors.push(FieldError::new(
                    file,
                    "uploads.atomic",
                    "must be true when scanning is set: a non-atomic upload is visible under \
                     its name before it could be scanned (remove scanning or set \
                     uploads.atomic: true)",
                ));
            }
        }
        if !(1..=86_400).contains(&self.retention.interval_seconds) {
            err_push(
                &mut errors,
                file,
                "retention.intervalSeconds",
                format!("{} is not 1-86400", self.retention.interval_seconds),
            );
        }
        if !(5..=86_400).contains(&self.quotas.rescan_seconds) {
            err_push(
                &mut errors,
                file,
                "quotas.rescanSeconds",
                format!("{} is not 5-86400", self.quotas.rescan_seconds),
            );
        }
        if let Some(store) = &self.storage.object_store {
            store.validate(file, &mut errors);
        }
        if self
            .passwords
            .verified_cache_seconds
            .is_some_and(|seconds| seconds > crate::windows::MAX_VERIFIED_CACHE_SECONDS)
        {
            errors.push(FieldError::new(
                file,
                "passwords.verifiedCacheSeconds",
                format!(
                    "must be at most {} (one day); 0 turns the cache off",
                    crate::windows::MAX_VERIFIED_CACHE_SECONDS
                ),
            ));
        }
        if self.passwords.max_age_days == Some(0) {
            errors.push(FieldError::new(
                file,
                "passwords.maxAgeDays",
                "must be at least 1 (leave it out for passwords that do not age)",
            ));
        }
        errors
    }

    /// Settings weaker than the hardened default, for a warning at start-up.
    pub fn insecure_opt_ins(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.tls.require_session_resumption {
            warnings.push(
                "tls.requireSessionResumption is false: data connections are not bound to the \
                 control connection's TLS session"
                    .to_string(),
            );
        }
        if self.active_mode.enabled {
            warnings.push(
                "activeMode.enabled is true: the server opens connections to clients (PORT/EPRT)"
                    .to_string(),
            );
        }
        if self.tls.cipher_suites.iter().any(|s| s.contains("AES_128")) {
            warnings.push("tls.cipherSuites includes AES-128-GCM suites".to_string());
        }
        warnings.extend(self.ssh.insecure_opt_ins());
        if !self.bans.enabled {
            warnings.push(
                "bans.enabled is false: repeated failed logins never ban an address".to_string(),
            );
        }
        if !self.uploads.atomic {
            warnings.push(
                "uploads.atomic is false: a broken upload can leave a truncated file".to_string(),
            );
        }
        if let Some(scanning) = &self.scanning {
            warnings.extend(scanning.insecure_opt_ins());
        }
        if let Some(events) = &self.events {
            warnings.extend(events.insecure_opt_ins());
        }
        if let Some(store) = &self.storage.object_store {
            warnings.extend(store.insecure_opt_ins());
        }
        warnings
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{DEFAULT_CIPHERS, DEFAULT_KEX};

    /// The smallest valid server.yaml; other modules' tests append to it.
    pub(crate) const MINIMAL: &str = "apiVersion: sluice.dev/v1alpha1
kind: ServerConfig
dataRoot: /data
usersFile: users.yaml
listeners:
  ftpsExplicit: 127.0.0.1:2121
tls:
  certFile: tls.crt
  keyFile: tls.key
";

    #[test]
    fn minimal_config_gets_hardened_defaults() {
        let config = ServerConfig::parse("server.yaml", MINIMAL).unwrap();
        assert!(config.tls.require_session_resumption);
        assert!(!config.active_mode.enabled);
        assert!(config.uploads.atomic);
        assert_eq!(config.tls.cipher_suites.len(), DEFAULT_CIPHER_SUITES.len());
        assert!(config.insecure_opt_ins().is_empty());
    }

    #[test]
    fn unknown_field_is_rejected_and_named() {
        let text = format!("{MINIMAL}bogusField: 1\n");
        let error = ServerConfig::parse("server.yaml", &text).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("server.yaml"), "{message}");
        assert!(message.contains("bogusField"), "{message}");
    }

    /// The fields a refused server.yaml names.
    fn refused_fields(text: &str) -> Vec<String> {
        let error = ServerConfig::parse("server.yaml", text).unwrap_err();
        error
            .field_errors()
            .iter()
            .map(|e| e.field.clone())
            .collect()
    }

    #[test]
    fn invalid_values_are_named_by_field() {
        let text = MINIMAL.replace("kind: ServerConfig", "kind: Nope")
            + "passive:\n  portStart: 3000\n  portEnd: 2000\nlimits:\n  maxSessions: 0\n";
        let fields = refused_fields(&text);
        assert!(fields.contains(&"kind".to_string()), "{fields:?}");
        assert!(
            fields.contains(&"passive.portEnd".to_string()),
            "{fields:?}"
        );
        assert!(
            fields.contains(&"limits.maxSessions".to_string()),
            "{fields:?}"
        );
    }

    #[test]
    fn user_session_pacing_defaults_and_its_burst_is_checked_against_the_rate() {
        let plain = ServerConfig::parse("server.yaml", MINIMAL).unwrap();
        assert_eq!(
            (
                plain.limits.new_sessions_per_user_per_second,
                plain.limits.new_session_burst_per_user
            ),
            (10, 30)
        );
        for (limits, field) in [
            (
                "  newSessionsPerUserPerSecond: 0\n",
                "limits.newSessionsPerUserPerSecond",
            ),
            (
                "  newSessionsPerUserPerSecond: 40\n",
                "limits.newSessionBurstPerUser",
            ),
            (
                "  newSessionsPerUserPerSecond: 2000000\n  newSessionBurstPerUser: 2000000\n",
                "limits.newSessionsPerUserPerSecond",
            ),
        ] {
            let fields = refused_fields(&format!("{MINIMAL}limits:\n{limits}"));
            assert!(fields.contains(&field.to_string()), "{limits}: {fields:?}");
        }
    }

    #[test]
    fn weak_cipher_suite_cannot_be_named() {
        let text = format!(
            "{MINIMAL}  cipherSuites: [TLS13_AES_256_GCM_SHA384, TLS_RSA_WITH_AES_128_CBC_SHA]\n"
        );
        let error = ServerConfig::parse("server.yaml", &text).unwrap_err();
        assert_eq!(error.field_errors()[0].field, "tls.cipherSuites[1]");
    }

    #[test]
    fn passive_range_is_capped() {
        let text = format!("{MINIMAL}passive:\n  portStart: 10000\n  portEnd: 20000\n");
        let error = ServerConfig::parse("server.yaml", &text).unwrap_err();
        assert_eq!(error.field_errors()[0].field, "passive.portEnd");
    }

    #[test]
    fn client_certificates_need_a_ca() {
        let text = format!("{MINIMAL}  clientCertificates: required\n");
        let error = ServerConfig::parse("server.yaml", &text).unwrap_err();
        assert_eq!(error.field_errors()[0].field, "tls.clientCaFile");
    }

    #[test]
    fn per_host_advertised_address_wins() {
        let text = format!(
            "{MINIMAL}passive:\n  portStart: 30000\n  portEnd: 30009\n  advertisedAddress: 192.0.2.1\n  advertisedAddressByHost:\n    sftp-1: 192.0.2.2\n"
        );
        let config = ServerConfig::parse("server.yaml", &text).unwrap();
        assert_eq!(
            config.passive.advertised_for("sftp-1").unwrap().to_string(),
            "192.0.2.2"
        );
        assert_eq!(
            config.passive.advertised_for("sftp-0").unwrap().to_string(),
            "192.0.2.1"
        );
    }

    #[test]
    fn opt_ins_are_reported() {
        let text =
            format!("{MINIMAL}  requireSessionResumption: false\nactiveMode:\n  enabled: true\n");
        let config = ServerConfig::parse("server.yaml", &text).unwrap();
        assert_eq!(config.insecure_opt_ins().len(), 2);
    }

    #[test]
    fn verified_password_cache_defaults_to_five_minutes_and_is_capped() {
        let config = ServerConfig::parse("server.yaml", MINIMAL).unwrap();
        assert_eq!(
            config.passwords.verified_cache(),
            std::time::Duration::from_secs(300)
        );
        let off = format!("{MINIMAL}passwords:\n  verifiedCacheSeconds: 0\n");
        let off = ServerConfig::parse("server.yaml", &off).unwrap();
        assert!(off.passwords.verified_cache().is_zero());
        let long = format!("{MINIMAL}passwords:\n  verifiedCacheSeconds: 86401\n");
        let error = ServerConfig::parse("server.yaml", &long).unwrap_err();
        assert_eq!(
            error.field_errors()[0].field,
            "passwords.verifiedCacheSeconds",
            "{error}"
        );
    }

    #[test]
    fn storage_object_store_is_parsed_with_defaults_and_validated() {
        let section = "storage:\n  objectStore:\n    endpoint: http://127.0.0.1:8333\n    bucket: homes\n    accessKeyIdFile: s3/id\n    secretAccessKeyFile: s3/secret\n";
        let config = ServerConfig::parse("server.yaml", &format!("{MINIMAL}{section}")).unwrap();
        let store = config.storage.object_store.as_ref().unwrap();
        assert_eq!(store.region, "us-east-1");
        assert!(store.path_style);
        assert_eq!(store.prefix, "");
        assert_eq!(store.part_bytes, crate::DEFAULT_PART_BYTES);
        assert_eq!(config.insecure_opt_ins().len(), 1, "plain http is warned");
        let text = format!("{MINIMAL}{section}    prefix: ../up\n");
        let error = ServerConfig::parse("server.yaml", &text).unwrap_err();
        assert_eq!(
            error.field_errors()[0].field,
            "storage.objectStore.prefix",
            "{error}"
        );
        let text = format!("{MINIMAL}{section}    endpointUrl: x\n");
        assert!(ServerConfig::parse("server.yaml", &text).is_err());
        // Absent: local storage, and nothing is written back.
        let local = ServerConfig::parse("server.yaml", MINIMAL).unwrap();
        assert!(local.storage.is_default());
    }

    #[test]
    fn scanning_is_parsed_and_refused_with_non_atomic_uploads() {
        let section = "scanning:\n  clamd: tcp://127.0.0.1:3310\n  quarantineDir: /q\n";
        let config = ServerConfig::parse("server.yaml", &format!("{MINIMAL}{section}")).unwrap();
        let scanning = config.scanning.unwrap();
        assert_eq!(scanning.on_infected, crate::OnInfected::Quarantine);
        assert_eq!(scanning.max_file_bytes, crate::DEFAULT_SCAN_MAX_FILE_BYTES);
        let text = format!("{MINIMAL}{section}uploads:\n  atomic: false\n");
        let error = ServerConfig::parse("server.yaml", &text).unwrap_err();
        assert_eq!(error.field_errors()[0].field, "uploads.atomic");
        assert!(error.to_string().contains("scanning"), "{error}");
        let text = format!("{MINIMAL}{section}  onScannerError: allow\n");
        let config = ServerConfig::parse("server.yaml", &text).unwrap();
        assert_eq!(config.insecure_opt_ins().len(), 1);
        let text = format!("{MINIMAL}{section}  onInfected: keep\n");
        assert!(ServerConfig::parse("server.yaml", &text).is_err());
    }

    #[test]
    fn sftp_listener_needs_host_keys() {
        let text = MINIMAL.replace(
            "  ftpsExplicit: 127.0.0.1:2121\n",
            "  ftpsExplicit: 127.0.0.1:2121\n  sftp: 127.0.0.1:2222\n",
        );
        let error = ServerConfig::parse("server.yaml", &text).unwrap_err();
        assert_eq!(error.field_errors()[0].field, "ssh.hostKeyFiles");
        let text = format!("{text}ssh:\n  hostKeyFiles: [ssh/host_ed25519]\n");
        let config = ServerConfig::parse("server.yaml", &text).unwrap();
        assert_eq!(config.listeners.sftp.as_deref(), Some("127.0.0.1:2222"));
        assert!(config.ssh.password_authentication);
        assert_eq!(config.ssh.effective_ciphers(), DEFAULT_CIPHERS);
        assert_eq!(config.ssh.effective_kex(), DEFAULT_KEX);
        assert!(config.insecure_opt_ins().is_empty());
    }

    #[test]
    fn sftp_port_clash_is_named() {
        let text = MINIMAL.replace(
            "  ftpsExplicit: 127.0.0.1:2121\n",
            "  ftpsExplicit: 127.0.0.1:2121\n  sftp: 127.0.0.1:2121\n",
        ) + "ssh:\n  hostKeyFiles: [k]\n";
        let error = ServerConfig::parse("server.yaml", &text).unwrap_err();
        assert_eq!(error.field_errors()[0].field, "listeners.sftp");
    }

    #[test]
    fn weak_ssh_algorithms_can_never_be_named() {
        for (field, value) in [
            ("ciphers", "aes128-cbc"),
            ("ciphers", "3des-cbc"),
            ("ciphers", "arcfour256"),
            ("macs", "hmac-sha1"),
            ("macs", "hmac-sha1-etm@openssh.com"),
            ("kex", "diffie-hellman-group1-sha1"),
            ("kex", "diffie-hellman-group14-sha1"),
            ("hostKeyAlgorithms", "ssh-rsa"),
        ] {
            let text =
                format!("{MINIMAL}ssh:\n  {field}: [chacha20-poly1305@openssh.com, {value}]\n");
            let error = ServerConfig::parse("server.yaml", &text).unwrap_err();
            let fields: Vec<_> = error
                .field_errors()
                .iter()
                .map(|e| e.field.clone())
                .collect();
            assert!(
                fields.contains(&format!("ssh.{field}[1]")),
                "{value}: {fields:?}"
            );
            assert!(error.to_string().contains("forbidden"), "{error}");
        }
        let text = format!("{MINIMAL}ssh:\n  ciphers: [rot13]\n");
        let error = ServerConfig::parse("server.yaml", &text).unwrap_err();
        assert_eq!(error.field_errors()[0].field, "ssh.ciphers[0]");
        assert!(error.to_string().contains("unsupported"));
    }

    #[test]
    fn compatibility_profile_adds_ctr_and_non_etm() {
        let text = format!("{MINIMAL}ssh:\n  profile: compatibility\n");
        let config = ServerConfig::parse("server.yaml", &text).unwrap();
        let ciphers = config.ssh.effective_ciphers();
        assert!(ciphers.contains(&"aes256-ctr".to_string()));
        assert!(
            config
                .ssh
                .effective_macs()
                .contains(&"hmac-sha2-256".to_string())
        );
        assert_eq!(config.insecure_opt_ins().len(), 1);
        let text = format!("{MINIMAL}ssh:\n  profile: weak\n");
        assert!(ServerConfig::parse("server.yaml", &text).is_err());
    }

    #[test]
    fn post_quantum_profile_offers_only_ml_kem_and_is_no_opt_in() {
        let text = format!("{MINIMAL}ssh:\n  profile: postQuantum\n");
        let config = ServerConfig::parse("server.yaml", &text).unwrap();
        assert_eq!(config.ssh.effective_kex(), vec!["mlkem768x25519-sha256"]);
        assert_eq!(
            config.ssh.effective_ciphers(),
            ServerConfig::parse("server.yaml", MINIMAL)
                .unwrap()
                .ssh
                .effective_ciphers()
        );
        assert!(config.insecure_opt_ins().is_empty());
    }

    #[test]
    fn rsa_host_key_algorithms_need_opt_in() {
        let text = format!("{MINIMAL}ssh:\n  hostKeyAlgorithms: [ssh-ed25519, rsa-sha2-256]\n");
        let error = ServerConfig::parse("server.yaml", &text).unwrap_err();
        assert_eq!(error.field_errors()[0].field, "ssh.hostKeyAlgorithms[1]");
        let text = format!(
            "{MINIMAL}ssh:\n  allowRsaHostKeys: true\n  hostKeyAlgorithms: [ssh-ed25519, rsa-sha2-256]\n"
        );
        assert!(ServerConfig::parse("server.yaml", &text).is_ok());
    }
}
