//! The `ssh` section of `server.yaml`: host keys, algorithm lists and server-wide SSH
//! authentication settings of the SFTP listener.
//!
//! Algorithm names are checked against closed lists: anything with SHA-1, CBC, 3DES, arcfour or
//! the 1024/2048-bit SHA-1 Diffie-Hellman groups cannot even be named (a validation error naming
//! the field), and only algorithms the server implements are accepted.

use serde::{Deserialize, Serialize};

use crate::FieldError;

/// Key exchange methods that can be configured.
pub const SUPPORTED_KEX: &[&str] = &[
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
];
/// Ciphers that can be configured.
pub const SUPPORTED_CIPHERS: &[&str] = &[
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
];
/// MACs that can be configured (used only with the non-AEAD `-ctr` ciphers).
pub const SUPPORTED_MACS: &[&str] = &[
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
];
/// Host key (signature) algorithms that can be configured.
pub const SUPPORTED_HOST_KEY_ALGORITHMS: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
];

/// The hardened default profile.
pub const DEFAULT_KEX: &[&str] = &[
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
];
pub const DEFAULT_CIPHERS: &[&str] = &[
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
];
pub const DEFAULT_MACS: &[&str] = &[
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
];
pub const DEFAULT_HOST_KEY_ALGORITHMS: &[&str] =
    &["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384"];
/// The `postQuantum` profile's key exchange: hybrid ML-KEM only, for endpoints that must show no
/// classical-only key exchange (e.g. an `ssh-audit` report without warnings). Clients need
/// OpenSSH 9.9 or later (or another client with `mlkem768x25519-sha256`).
pub const POST_QUANTUM_KEX: &[&str] = &["mlkem768x25519-sha256"];
/// What the `compatibility` profile adds for old clients (libssh2 before 1.11: no AEAD ciphers,
/// no ETM MACs).
pub const COMPATIBILITY_EXTRA_CIPHERS: &[&str] = &["aes256-ctr", "aes128-ctr"];
pub const COMPATIBILITY_EXTRA_MACS: &[&str] = &["hmac-sha2-256", "hmac-sha2-512"];

/// Fragments of algorithm names that can never be configured, with the reason.
const FORBIDDEN: &[(&str, &str)] = &[
    ("sha1", "SHA-1 is broken"),
    ("-cbc", "CBC mode ciphers are forbidden"),
    ("3des", "3DES is forbidden"),
    ("arcfour", "arcfour (RC4) is forbidden"),
    ("rc4", "RC4 is forbidden"),
    ("md5", "MD5 is forbidden"),
    ("group1-", "the 1024-bit group1 is forbidden"),
    ("group14-", "group14 (2048-bit) is forbidden"),
    (
        "group-exchange",
        "Diffie-Hellman group exchange is not offered",
    ),
    ("ssh-rsa", "ssh-rsa signs with SHA-1"),
    ("ssh-dss", "DSA is forbidden"),
    ("none", "\"none\" is forbidden"),
    ("zlib", "compression is not offered"),
];

/// A named set of algorithm lists; explicit lists override it field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum SshProfile {
    /// AEAD ciphers and ETM MACs only (recommended).
    #[default]
    Default,
    /// Also `aes256-ctr`/`aes128-ctr` and non-ETM `hmac-sha2-256`/`-512`, for clients such as
    /// libssh2 < 1.11 (e.g. curl on Debian 12).
    Compatibility,
    /// The default lists, but key exchange with `mlkem768x25519-sha256` only: no key exchange
    /// without post-quantum protection. Needs clients with ML-KEM (OpenSSH 9.9 or later).
    PostQuantum,
}

/// How a user may or must authenticate over SSH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum SshAuthMethod {
    Publickey,
    Password,
}

impl SshAuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SshAuthMethod::Publickey => "publickey",
            SshAuthMethod::Password => "password",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SshConfig {
    /// OpenSSH private key files (unencrypted), relative to this file. At least one ed25519 key
    /// is required when `listeners.sftp` is set; ECDSA keys are optional; RSA keys only with
    /// `allowRsaHostKeys`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_key_files: Vec<String>,
    /// Accept RSA host keys (offered as rsa-sha2-512/256 only). Off by default.
    #[serde(default)]
    pub allow_rsa_host_keys: bool,
    /// `default`, `compatibility` or `postQuantum`; the explicit lists below override it.
    #[serde(default)]
    pub profile: SshProfile,
    /// Key exchange methods in preference order; see [`SUPPORTED_KEX`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kex: Option<Vec<String>>,
    /// Ciphers in preference order; see [`SUPPORTED_CIPHERS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ciphers: Option<Vec<String>>,
    /// MACs in preference order (used with non-AEAD ciphers); see [`SUPPORTED_MACS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macs: Option<Vec<String>>,
    /// Host key algorithms in preference order; see [`SUPPORTED_HOST_KEY_ALGORITHMS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_algorithms: Option<Vec<String>>,
    /// Password authentication over SSH. `false` turns it off for every user.
    #[serde(default = "yes")]
    pub password_authentication: bool,
}

impl Default for SshConfig {
    fn default() -> Self {
        Self {
            host_key_files: Vec::new(),
            allow_rsa_host_keys: false,
            profile: SshProfile::Default,
            kex: None,
            ciphers: None,
            macs: None,
            host_key_algorithms: None,
            password_authentication: true,
        }
    }
}

/// A configured list with its field name and the names it may contain.
type AlgorithmList<'a> = (&'a str, &'a Option<Vec<String>>, &'a [&'static str]);

fn yes() -> bool {
    true
}

fn owned(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

impl SshConfig {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The key exchange list in effect.
    pub fn effective_kex(&self) -> Vec<String> {
        self.kex.clone().unwrap_or_else(|| match self.profile {
            SshProfile::PostQuantum => owned(POST_QUANTUM_KEX),
            SshProfile::Default | SshProfile::Compatibility => owned(DEFAULT_KEX),
        })
    }

    pub fn effective_ciphers(&self) -> Vec<String> {
        self.ciphers.clone().unwrap_or_else(|| {
            let mut list = owned(DEFAULT_CIPHERS);
            if self.profile == SshProfile::Compatibility {
                list.extend(owned(COMPATIBILITY_EXTRA_CIPHERS));
            }
            list
        })
    }

    pub fn effective_macs(&self) -> Vec<String> {
        self.macs.clone().unwrap_or_else(|| {
            let mut list = owned(DEFAULT_MACS);
            if self.profile == SshProfile::Compatibility {
                list.extend(owned(COMPATIBILITY_EXTRA_MACS));
            }
            list
        })
    }

    pub fn effective_host_key_algorithms(&self) -> Vec<String> {
        self.host_key_algorithms.clone().unwrap_or_else(|| {
            let mut list = owned(DEFAULT_HOST_KEY_ALGORITHMS);
            if self.allow_rsa_host_keys {
                list.extend(owned(&["rsa-sha2-512", "rsa-sha2-256"]));
            }
            list
        })
    }

    /// Field errors of this section; `sftp_enabled` says whether `listeners.sftp` is set.
    pub fn validate(&self, file: &str, sftp_enabled: bool, errors: &mut Vec<FieldError>) {
        let mut err = |field: &str, message: String| {
            errors.push(FieldError::new(file, field, message));
        };
        if sftp_enabled && self.host_key_files.is_empty() {
            err(
                "ssh.hostKeyFiles",
                "must name at least one host key file (an ed25519 key is required) when \
                 listeners.sftp is set"
                    .into(),
            );
        }
        for (index, path) in self.host_key_files.iter().enumerate() {
            if path.trim().is_empty() {
                err(
                    &format!("ssh.hostKeyFiles[{index}]"),
                    "must not be empty".into(),
                );
            }
        }
        let lists: [AlgorithmList<'_>; 4] = [
            ("ssh.kex", &self.kex, SUPPORTED_KEX),
            ("ssh.ciphers", &self.ciphers, SUPPORTED_CIPHERS),
            ("ssh.macs", &self.macs, SUPPORTED_MACS),
            (
                "ssh.hostKeyAlgorithms",
                &self.host_key_algorithms,
                SUPPORTED_HOST_KEY_ALGORITHMS,
            ),
        ];
        for (field, list, supported) in lists {
            let Some(list) = list else { continue };
            if list.is_empty() {
                err(field, "must name at least one algorithm".into());
            }
            for (index, name) in list.iter().enumerate() {
                if let Err(message) = check_algorithm(name, supported) {
                    err(&format!("{field}[{index}]"), message);
                }
            }
            if list.iter().enumerate().any(|(i, a)| list[..i].contains(a)) {
                err(field, "lists an algorithm twice".into());
            }
        }
        if let Some(algorithms) = &self.host_key_algorithms
            && !self.allow_rsa_host_keys
            && let Some(index) = algorithms.iter().position(|a| a.starts_with("rsa-"))
        {
            err(
                &format!("ssh.hostKeyAlgorithms[{index}]"),
                "RSA host key algorithms need ssh.allowRsaHostKeys: true".into(),
            );
        }
        if let Some(algorithms) = &self.host_key_algorithms
            && !algorithms.iter().any(|a| a == "ssh-ed25519")
        {
            err(
                "ssh.hostKeyAlgorithms",
                "must include ssh-ed25519 (the required host key type)".into(),
            );
        }
    }

    /// Settings weaker than the hardened default.
    pub fn insecure_opt_ins(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.profile == SshProfile::Compatibility {
            warnings.push(
                "ssh.profile is compatibility: aes-ctr ciphers and non-ETM MACs are offered"
                    .to_string(),
            );
        }
        if self.allow_rsa_host_keys {
            warnings.push("ssh.allowRsaHostKeys is true".to_string());
        }
        warnings
    }
}

/// Checks one algorithm name: never a forbidden one, and one the server implements.
pub fn check_algorithm(name: &str, supported: &[&str]) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    for (fragment, reason) in FORBIDDEN {
        if lower.contains(fragment) {
            return Err(format!("{name:?} is forbidden: {reason}"));
        }
    }
    if !supported.contains(&name) {
        return Err(format!(
            "unsupported algorithm {name:?}; supported: {}",
            supported.join(", ")
        ));
    }
    Ok(())
}
