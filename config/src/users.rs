//! `users.yaml`: accounts with argon2id hashes, keys, homes, permissions, CIDRs and expiry.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::second_factor::{self, ClientCertificate, FtpsAuth, TotpConfig};
use crate::{
    ConfigError, FieldError, LoginWindow, SshAuthMethod, check_header, parse_yaml, validate_window,
};
use crate::{FtpsDataBinding, MAX_RETENTION_RULES, Quota, RetentionRule};

/// What a user may do. Each FTP/SFTP verb needs exactly one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum Permission {
    /// LIST, NLST, MLSD, MLST, STAT of a path, SIZE, MDTM.
    List,
    /// RETR, HASH/XSHA256.
    Download,
    /// STOR/APPE of a new file.
    Upload,
    /// STOR over, APPE to or REST+STOR into an existing file.
    Overwrite,
    /// DELE.
    Delete,
    /// RNFR/RNTO.
    Rename,
    /// MKD.
    Mkdir,
    /// RMD.
    Rmdir,
}

impl Permission {
    pub const ALL: [Permission; 8] = [
        Permission::List,
        Permission::Download,
        Permission::Upload,
        Permission::Overwrite,
        Permission::Delete,
        Permission::Rename,
        Permission::Mkdir,
        Permission::Rmdir,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::List => "list",
            Permission::Download => "download",
            Permission::Upload => "upload",
            Permission::Overwrite => "overwrite",
            Permission::Delete => "delete",
            Permission::Rename => "rename",
            Permission::Mkdir => "mkdir",
            Permission::Rmdir => "rmdir",
        }
    }
}

/// A file-transfer protocol a user may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum Protocol {
    Ftps,
    Sftp,
}

/// The whole of `users.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UserList {
    /// Must be `sluice.dev/v1alpha1`.
    pub api_version: String,
    /// Must be `UserList`.
    pub kind: String,
    #[serde(default)]
    pub users: Vec<User>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct User {
    /// Login name: 1-64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
    pub username: String,
    /// argon2id PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`). Absent: no password
    /// login for this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// OpenSSH `authorized_keys` lines (used by SFTP).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    /// Home directory relative to the server's `dataRoot`; created on first login.
    pub home: String,
    /// What the user may do; see [`Permission`].
    pub permissions: Vec<Permission>,
    /// Source networks (CIDR) the user may log in from; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_cidrs: Vec<String>,
    /// Protocols the user may use; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<Protocol>,
    /// RFC 3339 instant after which logins are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// A disabled user cannot log in and its open sessions end.
    #[serde(default)]
    pub disabled: bool,
    /// Password authentication over SSH for this user (also needs the server-wide
    /// `ssh.passwordAuthentication`). Default true; FTPS logins are not affected.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub password_authentication: bool,
    /// SSH methods that must all succeed, e.g. `[publickey, password]`. Empty: any one method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_auth: Vec<SshAuthMethod>,
    // Second factor and certificate logins (see `second_factor`).
    /// TOTP (RFC 6238) second factor: FTPS `PASS <password><code>`, SSH keyboard-interactive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<TotpConfig>,
    /// Client certificates that identify this user on FTPS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_certificates: Vec<ClientCertificate>,
    /// `password` (default), `certificate` or `certificateAndPassword`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub ftps_auth: FtpsAuth,
    /// When the user may log in; empty means always. See [`LoginWindow`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub login_windows: Vec<LoginWindow>,
    /// RFC 3339 instant the password was last set; with `passwords.maxAgeDays` in server.yaml,
    /// password logins are refused once it is older than that. Absent: the password never ages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_changed_at: Option<String>,
    /// What ties FTPS data connections to the control session: `tlsResumption` (default) or
    /// `addressAndLease` for clients that cannot resume TLS sessions; see [`FtpsDataBinding`].
    #[serde(default, skip_serializing_if = "is_default")]
    pub ftps_data_binding: FtpsDataBinding,
    /// Limits on the bytes and files under the home; see [`Quota`]. Absent: no quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    /// Retention rules per directory of the home; see [`RetentionRule`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retention: Vec<RetentionRule>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

impl User {
    pub fn has(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    pub fn allows_protocol(&self, protocol: Protocol) -> bool {
        self.protocols.is_empty() || self.protocols.contains(&protocol)
    }

    /// The parsed allowlist; entries that do not parse were rejected by validation.
    pub fn allowed_networks(&self) -> Vec<IpNet> {
        self.allowed_cidrs
            .iter()
            .filter_map(|text| parse_cidr(text).ok())
            .collect()
    }

    /// Whether `ip` may log in as this user (an empty allowlist allows every address).
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.allowed_cidrs.is_empty() || self.allowed_networks().iter().any(|n| n.contains(&ip))
    }

    /// Why a user whose credentials were verified may still not log in over `protocol` from
    /// `ip` at `now`; `None` when the login is allowed. Shared by FTPS and SFTP.
    pub fn login_refusal(
        &self,
        protocol: Protocol,
        ip: IpAddr,
        now: jiff::Timestamp,
    ) -> Option<&'static str> {
        if self.disabled {
            Some("account disabled")
        } else if self.is_expired_at(now) {
            Some("account expired")
        } else if !self.allows_protocol(protocol) {
            Some(match protocol {
                Protocol::Ftps => "FTPS is not allowed for this account",
                Protocol::Sftp => "SFTP is not allowed for this account",
            })
        } else if !self.allows_ip(ip) {
            Some("your address is not allowed for this account")
        } else {
            None
        }
    }

    pub fn expiry(&self) -> Option<jiff::Timestamp> {
        self.expires_at.as_deref().and_then(|t| t.parse().ok())
    }

    pub fn is_expired_at(&self, now: jiff::Timestamp) -> bool {
        self.expiry().is_some_and(|expiry| now >= expiry)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, seen on dual-stack sockets) compare as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// A CIDR (`10.0.0.0/8`) or a bare address (a /32 or /128).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is not a CIDR such as 192.0.2.0/24"))
}

/// Checks a login name: 1-64 of `A-Z a-z 0-9 . _ -`, first character alphanumeric.
pub fn validate_username(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1-64 characters".into());
    }
    if !name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return Err("must start with a letter or digit".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("contains {bad:?}; allowed are A-Z a-z 0-9 . _ -"));
    }
    Ok(())
}

/// Checks a home directory: relative, no `..`, no NUL, no empty or overlong components.
pub fn validate_home(home: &str) -> Result<(), String> {
    if home.is_empty() {
        return Err("must not be empty".into());
    }
    if home.starts_with('/') || home.starts_with('\\') {
        return Err("must be relative to dataRoot, not absolute".into());
    }
    if home.contains('\0') {
        return Err("must not contain a NUL byte".into());
    }
    if home.len() > 1024 {
        return Err("must be at most 1024 bytes".into());
    }
    for component in home.split('/') {
        match component {
            ".." => return Err("must not contain '..'".into()),
            "" | "." => return Err("must not contain empty or '.' components".into()),
            c if c.len() > 255 => return Err("a component is longer than 255 bytes".into()),
            _ => {}
        }
    }
    Ok(())
}

/// Checks the shape of an argon2id PHC string; the server also parses it fully.
pub fn validate_password_hash(hash: &str) -> Result<(), String> {
    let parts: Vec<&str> = hash.split('$').collect();
    if parts.len() != 6 || !parts[0].is_empty() {
        return Err("must be a PHC string like $argon2id$v=19$m=19456,t=2,p=1$salt$hash".into());
    }
    if parts[1] != "argon2id" {
        return Err(format!(
            "algorithm must be argon2id, got {:?} (plain text or other hashes are refused)",
            parts[1]
        ));
    }
    if parts[2] != "v=19" {
        return Err("version must be v=19".into());
    }
    crate::Argon2Params::parse_capped(parts[3])?;
    Ok(())
}

const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
];

/// Checks that an `authorized_keys` line names a known key type followed by base64 data.
/// Options (`from=...`) are not supported yet and are rejected rather than ignored.
pub fn validate_authorized_key(line: &str) -> Result<(), String> {
    let mut words = line.split_whitespace();
    let Some(kind) = words.next() else {
        return Err("is empty".into());
    };
    if !SSH_KEY_TYPES.contains(&kind) {
        return Err(format!(
            "key type {kind:?} is not supported (options such as from= are not supported yet); \
             supported: {}",
            SSH_KEY_TYPES.join(", ")
        ));
    }
    let Some(data) = words.next() else {
        return Err("has no key data after the key type".into());
    };
    if data.len() < 16
        || !data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    {
        return Err("key data is not base64".into());
    }
    Ok(())
}

/// TOTP, client certificates and the FTPS login mode of one user.
fn validate_second_factor(user: &User, err: &mut impl FnMut(&str, String)) {
    if let Some(totp) = &user.totp {
        for (field, message) in second_factor::validate_totp(totp) {
            err(&format!("totp.{field}"), message);
        }
    }
    for (index, entry) in user.client_certificates.iter().enumerate() {
        for (field, message) in second_factor::validate_client_certificate(entry) {
            let path = if field.is_empty() {
                format!("clientCertificates[{index}]")
            } else {
                format!("clientCertificates[{index}].{field}")
            };
            err(&path, message);
        }
    }
    if user.ftps_auth.needs_certificate() && user.client_certificates.is_empty() {
        err(
            "ftpsAuth",
            "certificate logins need at least one clientCertificates entry".into(),
        );
    }
    if user.ftps_auth == FtpsAuth::CertificateAndPassword && user.password_hash.is_none() {
        err(
            "ftpsAuth",
            "certificateAndPassword needs a passwordHash".into(),
        );
    }
}

impl UserList {
    /// Parses and validates `users.yaml`; `file` is the name used in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let list: UserList = parse_yaml(file, text)?;
        let errors = list.validate(file);
        if errors.is_empty() {
            Ok(list)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    pub fn validate(&self, file: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        check_header(&mut errors, file, &self.api_version, &self.kind, "UserList");
        let mut names = HashSet::new();
        for (index, user) in self.users.iter().enumerate() {
            let mut err = |field: &str, message: String| {
                errors.push(FieldError::new(
                    file,
                    format!("users[{index}].{field}"),
                    message,
                ));
            };
            if let Err(message) = validate_username(&user.username) {
                err("username", message);
            }
            if !names.insert(user.username.to_ascii_lowercase()) {
                err(
                    "username",
                    format!("{:?} appears more than once", user.username),
                );
            }
            if let Err(message) = validate_home(&user.home) {
                err("home", message);
            }
            if let Some(hash) = &user.password_hash
                && let Err(message) = validate_password_hash(hash)
            {
                err("passwordHash", message);
            }
            for (key_index, key) in user.ssh_authorized_keys.iter().enumerate() {
                if let Err(message) = validate_authorized_key(key) {
                    err(&format!("sshAuthorizedKeys[{key_index}]"), message);
                }
            }
            for (cidr_index, cidr) in user.allowed_cidrs.iter().enumerate() {
                if let Err(message) = parse_cidr(cidr) {
                    err(&format!("allowedCidrs[{cidr_index}]"), message);
                }
            }
            if let Some(expiry) = &user.expires_at
                && expiry.parse::<jiff::Timestamp>().is_err()
            {
                err(
                    "expiresAt",
                    format!("{expiry:?} is not an RFC 3339 time such as 2027-01-31T00:00:00Z"),
                );
            }
            for (window_index, window) in user.login_windows.iter().enumerate() {
                for (field, message) in validate_window(window) {
                    err(&format!("loginWindows[{window_index}].{field}"), message);
                }
            }
            if let Some(changed) = &user.password_changed_at
                && changed.parse::<jiff::Timestamp>().is_err()
            {
                err(
                    "passwordChangedAt",
                    format!("{changed:?} is not an RFC 3339 time such as 2026-01-31T00:00:00Z"),
                );
            }
            let mut methods = HashSet::new();
            for method in &user.required_auth {
                if !methods.insert(method) {
                    err(
                        "requiredAuth",
                        format!("{} is listed twice", method.as_str()),
                    );
                }
            }
            if user.required_auth.contains(&SshAuthMethod::Password) {
                if !user.password_authentication {
                    err(
                        "requiredAuth",
                        "requires password but passwordAuthentication is false".into(),
                    );
                }
                if user.password_hash.is_none() {
                    err(
                        "requiredAuth",
                        "requires password but the user has no passwordHash".into(),
                    );
                }
            }
            if user.required_auth.contains(&SshAuthMethod::Publickey)
                && user.ssh_authorized_keys.is_empty()
            {
                err(
                    "requiredAuth",
                    "requires publickey but the user has no sshAuthorizedKeys".into(),
                );
            }
            validate_second_factor(user, &mut err);
            if let Some(quota) = &user.quota {
                for (field, message) in quota.validate() {
                    let path = if field.is_empty() {
                        "quota".to_string()
                    } else {
                        format!("quota.{field}")
                    };
                    err(&path, message);
                }
            }
            if user.retention.len() > MAX_RETENTION_RULES {
                err(
                    "retention",
                    format!(
                        "has {} rules; at most {MAX_RETENTION_RULES}",
                        user.retention.len()
                    ),
                );
            }
            for (rule_index, rule) in user.retention.iter().enumerate() {
                for (field, message) in rule.validate() {
                    let path = if field.is_empty() {
                        format!("retention[{rule_index}]")
                    } else {
                        format!("retention[{rule_index}].{field}")
                    };
                    err(&path, message);
                }
            }
            let mut seen = HashSet::new();
            for permission in &user.permissions {
                if !seen.insert(permission) {
                    err(
                        "permissions",
                        format!("{} is listed twice", permission.as_str()),
                    );
                }
            }
        }
        errors
    }

    pub fn find(&self, username: &str) -> Option<&User> {
        self.users.iter().find(|u| u.username == username)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo";

    fn list(users: &str) -> String {
        format!("apiVersion: sluice.dev/v1alpha1\nkind: UserList\nusers:\n{users}")
    }

    #[test]
    fn valid_user_parses() {
        let text = list(&format!(
            "  - username: alice\n    passwordHash: '{HASH}'\n    home: alice\n    permissions: [list, download]\n    allowedCidrs: [127.0.0.1/32, 10.0.0.0/8]\n    expiresAt: 2099-01-01T00:00:00Z\n"
        ));
        let users = UserList::parse("users.yaml", &text).unwrap();
        let alice = users.find("alice").unwrap();
        assert!(alice.has(Permission::List));
        assert!(!alice.has(Permission::Upload));
        assert!(alice.allows_ip("127.0.0.1".parse().unwrap()));
        assert!(alice.allows_ip("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!alice.allows_ip("127.0.0.2".parse().unwrap()));
        assert!(!alice.is_expired_at(jiff::Timestamp::now()));
        let now = jiff::Timestamp::now();
        assert_eq!(
            alice.login_refusal(Protocol::Ftps, "127.0.0.1".parse().unwrap(), now),
            None
        );
        assert_eq!(
            alice.login_refusal(Protocol::Ftps, "127.0.0.2".parse().unwrap(), now),
            Some("your address is not allowed for this account")
        );
        let past: jiff::Timestamp = "2100-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            alice.login_refusal(Protocol::Sftp, "127.0.0.1".parse().unwrap(), past),
            Some("account expired")
        );
    }

    #[test]
    fn hostile_homes_are_rejected() {
        for home in ["/etc", "../x", "a/../../b", "a//b", "a\0b", ""] {
            assert!(validate_home(home).is_err(), "{home:?} accepted");
        }
        assert!(validate_home("partners/acme").is_ok());
    }

    #[test]
    fn every_bad_field_is_named() {
        let text = list(
            "  - username: '-bad'\n    passwordHash: plaintext\n    home: /abs\n    permissions: [list, list]\n    allowedCidrs: [300.1.1.1/8]\n    expiresAt: tomorrow\n    sshAuthorizedKeys: ['ssh-dss AAAA']\n",
        );
        let error = UserList::parse("users.yaml", &text).unwrap_err();
        let fields: Vec<_> = error
            .field_errors()
            .iter()
            .map(|e| e.field.as_str())
            .collect();
        for want in [
            "users[0].username",
            "users[0].passwordHash",
            "users[0].home",
            "users[0].permissions",
            "users[0].allowedCidrs[0]",
            "users[0].expiresAt",
            "users[0].sshAuthorizedKeys[0]",
        ] {
            assert!(fields.contains(&want), "{want} missing from {fields:?}");
        }
        assert!(error.to_string().contains("users.yaml: users[0].home"));
    }

    #[test]
    fn duplicate_usernames_are_rejected() {
        let user = "  - username: bob\n    home: bob\n    permissions: [list]\n";
        let error = UserList::parse("users.yaml", &list(&format!("{user}{user}"))).unwrap_err();
        assert!(error.to_string().contains("more than once"));
    }

    #[test]
    fn unknown_permission_is_a_syntax_error_naming_it() {
        let text = list("  - username: bob\n    home: bob\n    permissions: [fly]\n");
        let error = UserList::parse("users.yaml", &text).unwrap_err();
        assert!(error.to_string().contains("fly"), "{error}");
    }

    #[test]
    fn ssh_auth_fields_default_and_validate() {
        let text = list("  - username: bob\n    home: bob\n    permissions: [list]\n");
        let users = UserList::parse("users.yaml", &text).unwrap();
        assert!(users.users[0].password_authentication);
        assert!(users.users[0].required_auth.is_empty());
        let text = list(
            "  - username: bob\n    home: bob\n    permissions: [list]\n    passwordAuthentication: false\n    requiredAuth: [publickey, password, password]\n",
        );
        let error = UserList::parse("users.yaml", &text).unwrap_err();
        let messages: Vec<String> = error
            .field_errors()
            .iter()
            .filter(|e| e.field == "users[0].requiredAuth")
            .map(|e| e.message.clone())
            .collect();
        assert!(messages.iter().any(|m| m.contains("twice")), "{messages:?}");
        assert!(
            messages
                .iter()
                .any(|m| m.contains("passwordAuthentication"))
        );
        assert!(messages.iter().any(|m| m.contains("no passwordHash")));
        assert!(messages.iter().any(|m| m.contains("no sshAuthorizedKeys")));
        let text = list(
            "  - username: bob\n    home: bob\n    permissions: [list]\n    requiredAuth: [otp]\n",
        );
        assert!(UserList::parse("users.yaml", &text).is_err());
    }

    #[test]
    fn second_factor_fields_parse_and_errors_name_them() {
        let text = list(
            "  - username: bob\n    home: bob\n    permissions: [list]\n    totp: {secret: GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ}\n    clientCertificates: [{subject: 'CN=bob,O=Partner'}, {san: bob@partner.example}]\n    ftpsAuth: certificate\n",
        );
        let users = UserList::parse("users.yaml", &text).unwrap();
        let bob = &users.users[0];
        let totp = bob.totp.as_ref().unwrap();
        assert_eq!((totp.digits, totp.period), (6, 30));
        assert_eq!(totp.algorithm, crate::TotpAlgorithm::Sha1);
        assert_eq!(bob.ftps_auth, FtpsAuth::Certificate);
        assert_eq!(bob.client_certificates.len(), 2);
        let text = list(
            "  - username: bob\n    home: bob\n    permissions: [list]\n    totp: {secret: 'MZXW6===', digits: 7, algorithm: SHA256}\n    clientCertificates: [{subject: 'CN=bob', sha256: '00'}]\n    ftpsAuth: certificateAndPassword\n",
        );
        let error = UserList::parse("users.yaml", &text).unwrap_err();
        let fields: Vec<_> = error
            .field_errors()
            .iter()
            .map(|e| e.field.as_str())
            .collect();
        for want in [
            "users[0].totp.secret",
            "users[0].totp.digits",
            "users[0].clientCertificates[0]",
            "users[0].clientCertificates[0].sha256",
            "users[0].ftpsAuth",
        ] {
            assert!(fields.contains(&want), "{want} missing from {fields:?}");
        }
        assert!(!error.to_string().contains("MZXW6"), "{error}");
        let text = list(
            "  - username: bob\n    home: bob\n    permissions: [list]\n    ftpsAuth: certificate\n",
        );
        let error = UserList::parse("users.yaml", &text).unwrap_err();
        assert!(error.to_string().contains("users[0].ftpsAuth"), "{error}");
    }

    #[test]
    fn login_windows_and_password_age_parse_and_validate() {
        let text = list(
            "  - username: bob\n    home: bob\n    permissions: [list]\n    passwordChangedAt: 2026-01-01T00:00:00Z\n    loginWindows:\n      - {days: [Mon, Fri], from: '08:00', to: '18:00', timeZone: Europe/Berlin}\n      - {from: '22:00', to: '02:00'}\n",
        );
        let users = UserList::parse("users.yaml", &text).unwrap();
        assert_eq!(users.users[0].login_windows.len(), 2);
        assert_eq!(users.users[0].login_windows[1].time_zone, "UTC");
        let text = list(
            "  - username: bob\n    home: bob\n    permissions: [list]\n    passwordChangedAt: yesterday\n    loginWindows:\n      - {days: [Mon], from: '25:00', to: '18:00', timeZone: Nowhere/City}\n",
        );
        let error = UserList::parse("users.yaml", &text).unwrap_err();
        let fields: Vec<_> = error
            .field_errors()
            .iter()
            .map(|e| e.field.as_str())
            .collect();
        assert_eq!(
            fields,
            [
                "users[0].loginWindows[0].from",
                "users[0].loginWindows[0].timeZone",
                "users[0].passwordChangedAt"
            ]
        );
        let text = list(
            "  - username: bob\n    home: bob\n    permissions: [list]\n    loginWindows: [{days: [Monday], from: '08:00', to: '09:00'}]\n",
        );
        let error = UserList::parse("users.yaml", &text).unwrap_err();
        assert!(error.to_string().contains("Monday"), "{error}");
    }

    #[test]
    fn quota_and_retention_parse_and_errors_name_them() {
        let text = list(
            "  - username: bob\n    home: bob\n    permissions: [list]\n    quota: {maxBytes: 10Mi, maxFiles: 100}\n    retention: [{path: outbox/, maxAge: 30d}, {path: inbox, afterDownload: true}]\n",
        );
        let users = UserList::parse("users.yaml", &text).unwrap();
        let bob = &users.users[0];
        let quota = bob.quota.as_ref().unwrap();
        assert_eq!(quota.max_bytes, Some(crate::ByteSize(10 << 20)));
        assert_eq!((quota.max_files, quota.warn_at_percent), (Some(100), 80));
        assert_eq!(bob.retention.len(), 2);
        let text = list(
            "  - username: bob\n    home: bob\n    permissions: [list]\n    quota: {maxBytes: 0, warnAtPercent: 101}\n    retention: [{path: ../x, maxAge: soon}, {path: y}]\n",
        );
        let error = UserList::parse("users.yaml", &text).unwrap_err();
        let fields: Vec<_> = error
            .field_errors()
            .iter()
            .map(|e| e.field.as_str())
            .collect();
        assert_eq!(
            fields,
            [
                "users[0].quota.maxBytes",
                "users[0].quota.warnAtPercent",
                "users[0].retention[0].path",
                "users[0].retention[0].maxAge",
                "users[0].retention[1]"
            ]
        );
        let text = list(
            "  - username: bob\n    home: bob\n    permissions: [list]\n    quota: {maxBytes: 10 apples}\n",
        );
        let error = UserList::parse("users.yaml", &text).unwrap_err();
        assert!(error.to_string().contains("10 apples"), "{error}");
    }

    #[test]
    fn expiry_in_the_past_expires() {
        let text = list(
            "  - username: bob\n    home: bob\n    permissions: [list]\n    expiresAt: 2001-01-01T00:00:00Z\n",
        );
        let users = UserList::parse("users.yaml", &text).unwrap();
        assert!(users.users[0].is_expired_at(jiff::Timestamp::now()));
    }
}
