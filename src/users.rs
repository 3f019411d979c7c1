//! Turning the TransferUsers of one server into `users.yaml`, purely: credentials resolved from
//! Secrets (hashed with argon2id, re-hashed only when the Secret changes), the password policy,
//! duplicate usernames (the older user wins), and expired or disabled users left out. Each user
//! gets a verdict that becomes its status. A user whose password is past the server's
//! `maxAgeDays` stays in `users.yaml` (so the server refuses its password logins with the
//! audited reason `PasswordExpired` while its key logins keep working) and gets
//! `Ready=False`, reason `PasswordExpired`; see [`crate::aging`].

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use sha2::Sha256;
use sluice_config as config;

use crate::conditions::Reason;
use crate::crd::{PasswordPolicy, TransferUser};
use crate::{aging, policy};

/// Why a user is or is not in `users.yaml`; becomes its `Ready` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ready: bool,
    pub reason: Reason,
    pub message: String,
    /// Digest of the password Secret version that was hashed, or of `spec.auth.passwordHash`
    /// (never of the password).
    pub password_source_digest: Option<String>,
    /// When the password last changed (RFC 3339), for users with a password.
    pub password_changed_at: Option<String>,
    /// When the password expires under the server's `maxAgeDays` (RFC 3339).
    pub password_expires_at: Option<String>,
    /// The user's binding in users.yaml when it is weaker than the default (an audited opt-in).
    pub ftps_data_binding: Option<config::FtpsDataBinding>,
}

impl Verdict {
    pub fn refused(reason: Reason, message: impl Into<String>) -> Verdict {
        Verdict {
            ready: false,
            reason,
            message: message.into(),
            password_source_digest: None,
            password_changed_at: None,
            password_expires_at: None,
            ftps_data_binding: None,
        }
    }
}

pub struct Resolved {
    pub list: config::UserList,
    /// Keyed by TransferUser object name.
    pub verdicts: BTreeMap<String, Verdict>,
    /// The next instant a password enters its warning period or expires (requeue then).
    pub next_change: Option<jiff::Timestamp>,
}

/// The inputs the controller read for one server.
pub struct UserInputs<'a> {
    pub users: &'a [TransferUser],
    /// The Secrets of the namespace marked for Sluice, by name (the only ones the operator
    /// reads).
    pub secrets: &'a BTreeMap<String, Secret>,
    /// Names of Secrets that exist but are not marked: refused without reading them.
    pub unmarked: &'a std::collections::BTreeSet<String>,
    /// The server's key for password version digests (see [`secret_version_digest`]).
    pub digest_key: &'a [u8],
    /// The currently deployed users.yaml (to reuse hashes).
    pub previous: Option<&'a config::UserList>,
    pub policy: &'a PasswordPolicy,
    /// The server keeps homes in a bucket (`spec.storage.objectStore`): users with a quota or
    /// retention rules are refused, as the server would refuse the whole users.yaml.
    pub object_storage: bool,
    pub now: jiff::Timestamp,
}

/// Identifies a password version by its content, so that a label or annotation written by a
/// GitOps tool does not restart the aging clock, without revealing anything about it: an
/// HMAC-SHA-256 under a random key of the server (in an operator-owned Secret), so that
/// someone who reads a TransferUser's status cannot test guesses against the digest offline.
pub fn secret_version_digest(digest_key: &[u8], key: &str, value: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(digest_key) else {
        return String::new();
    };
    for part in [key.as_bytes(), b"\0", value] {
        mac.update(part);
    }
    hex::encode(&mac.finalize().into_bytes()[..16])
}

fn creation_order(user: &TransferUser) -> (i64, String) {
    let created = user
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(i64::MAX);
    (created, user.name_any())
}

/// Resolves every user; `hash` turns a plain password into an argon2id PHC string.
pub fn resolve(inputs: &UserInputs<'_>, hash: &dyn Fn(&str) -> Option<String>) -> Resolved {
    // Hashes of the deployed users.yaml by username: looked up once per user.
    let previous: HashMap<&str, &str> = inputs
        .previous
        .map(|p| {
            p.users
                .iter()
                .filter_map(|u| Some((u.username.as_str(), u.password_hash.as_deref()?)))
                .collect()
        })
        .unwrap_or_default();
    let mut ordered: Vec<&TransferUser> = inputs.users.iter().collect();
    ordered.sort_by_key(|u| creation_order(u));
    let mut owners: HashMap<String, String> = HashMap::new();
    let mut verdicts = BTreeMap::new();
    let mut list = Vec::new();
    let mut next_change: Option<jiff::Timestamp> = None;
    for user in ordered {
        let object = user.name_any();
        let spec = &user.spec;
        let key = spec.username.to_ascii_lowercase();
        if let Some(winner) = owners.get(&key) {
            verdicts.insert(
                object,
                Verdict::refused(
                    Reason::DuplicateUsername,
                    format!("spec.username {:?} is already used by TransferUser {winner}, which is older", spec.username),
                ),
            );
            continue;
        }
        owners.insert(key, object.clone());
        match resolve_one(user, inputs, &previous, hash) {
            Ok((entry, digest)) => {
                let state = entry
                    .password_changed_at
                    .as_deref()
                    .and_then(|t| t.parse().ok())
                    .map(|changed| aging::aging(changed, inputs.policy, inputs.now))
                    .unwrap_or(aging::Aging::Ageless);
                if let Some(at) = state.next_change() {
                    next_change = Some(next_change.map_or(at, |n| n.min(at)));
                }
                let expires_at = state.expires_at().map(aging::format);
                let (ready, reason, message) = match state {
                    aging::Aging::Expired { expires_at } => (
                        false,
                        Reason::PasswordExpired,
                        format!(
                            "the password expired at {} (passwordPolicy.maxAgeDays of the server); password logins are refused until it is changed, key logins still work",
                            aging::format(expires_at)
                        ),
                    ),
                    aging::Aging::ExpiresSoon { expires_at } => (
                        true,
                        Reason::PasswordExpiresSoon,
                        format!(
                            "user is in the server's users.yaml; the password expires at {}",
                            aging::format(expires_at)
                        ),
                    ),
                    _ => (
                        true,
                        Reason::Provisioned,
                        "user is in the server's users.yaml".to_string(),
                    ),
                };
                let changed_at = entry.password_changed_at.clone();
                let binding = Some(entry.ftps_data_binding).filter(|b| b.allows_unresumed());
                list.push(entry);
                verdicts.insert(
                    object,
                    Verdict {
                        ready,
                        reason,
                        message,
                        password_source_digest: digest,
                        password_changed_at: changed_at,
                        password_expires_at: expires_at,
                        ftps_data_binding: binding,
                    },
                );
            }
            Err(verdict) => {
                verdicts.insert(object, verdict);
            }
        }
    }
    Resolved {
        list: config::UserList {
            api_version: config::API_VERSION.into(),
            kind: "UserList".into(),
            users: list,
        },
        verdicts,
        next_change,
    }
}

fn resolve_one(
    user: &TransferUser,
    inputs: &UserInputs<'_>,
    previous: &HashMap<&str, &str>,
    hash: &dyn Fn(&str) -> Option<String>,
) -> Result<(config::User, Option<String>), Verdict> {
    let spec = &user.spec;
    if spec.disabled {
        return Err(Verdict::refused(
            Reason::Disabled,
            "spec.disabled is true; the user cannot log in",
        ));
    }
    if let Some(expiry) = &spec.expires_at {
        match expiry.parse::<jiff::Timestamp>() {
            Ok(at) if inputs.now >= at => {
                return Err(Verdict::refused(
                    Reason::Expired,
                    format!("spec.expiresAt {expiry} has passed"),
                ));
            }
            Ok(_) => {}
            Err(_) => {
                return Err(Verdict::refused(
                    Reason::InvalidSpec,
                    format!("spec.expiresAt {expiry:?} is not an RFC 3339 time"),
                ));
            }
        }
    }
    if inputs.object_storage {
        let unsupported: Vec<&str> = [
            spec.quota.as_ref().map(|_| "spec.quota"),
            (!spec.retention.is_empty()).then_some("spec.retention"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !unsupported.is_empty() {
            return Err(Verdict::refused(
                Reason::NotSupportedOnObjectStorage,
                format!(
                    "{} {} not supported on a server with spec.storage.objectStore yet \
                     (local storage only, docs/object-storage.md); remove {}",
                    unsupported.join(" and "),
                    if unsupported.len() == 1 { "is" } else { "are" },
                    if unsupported.len() == 1 { "it" } else { "them" },
                ),
            ));
        }
    }
    let mut digest = None;
    let password_hash = match (&spec.auth.password_secret_ref, &spec.auth.password_hash) {
        (Some(reference), _) => {
            let (key, bytes) =
                secret_value(inputs, reference, "password", "spec.auth.passwordSecretRef")?;
            let Ok(password) = String::from_utf8(bytes) else {
                return Err(Verdict::refused(
                    Reason::PasswordPolicyViolation,
                    format!("password in Secret {} is not valid UTF-8", reference.name),
                ));
            };
            let password = password.trim_end_matches(['\r', '\n']);
            let problems = policy::violations(password, &spec.username, inputs.policy);
            if !problems.is_empty() {
                return Err(Verdict::refused(
                    Reason::PasswordPolicyViolation,
                    format!(
                        "password in Secret {}: {}",
                        reference.name,
                        problems.join("; ")
                    ),
                ));
            }
            let version = secret_version_digest(inputs.digest_key, &key, password.as_bytes());
            let reusable = user
                .status
                .as_ref()
                .and_then(|s| s.password_source_digest.as_deref())
                == Some(version.as_str());
            let previous = previous
                .get(spec.username.as_str())
                .map(|h| h.to_string())
                // A hash the server would refuse now (a users.yaml written before the argon2
                // caps) is issued again rather than carried over.
                .filter(|h| reusable && config::validate_password_hash(h).is_ok());
            digest = Some(version);
            match previous {
                Some(hash) => Some(hash),
                None => Some(hash(password).ok_or_else(|| {
                    Verdict::refused(Reason::HashingFailed, "hashing the password failed")
                })?),
            }
        }
        (None, Some(phc)) => {
            if let Err(message) = config::validate_password_hash(phc) {
                return Err(Verdict::refused(
                    Reason::InvalidSpec,
                    format!("spec.auth.passwordHash: {message}"),
                ));
            }
            digest = Some(aging::hash_digest(phc));
            Some(phc.clone())
        }
        (None, None) => None,
    };
    let status = user.status.as_ref();
    let password_changed_at = password_hash.as_ref().map(|_| {
        aging::format(aging::changed_at(
            digest.as_deref(),
            status.and_then(|s| s.password_source_digest.as_deref()),
            status.and_then(|s| s.password_changed_at.as_deref()),
            inputs.now,
        ))
    });
    let entry = config::User {
        username: spec.username.clone(),
        password_hash,
        ssh_authorized_keys: spec.auth.ssh_authorized_keys.clone(),
        home: spec.home.clone().unwrap_or_else(|| spec.username.clone()),
        permissions: spec.permissions.clone(),
        allowed_cidrs: spec.allowed_cidrs.clone(),
        protocols: spec.protocols.clone(),
        expires_at: spec.expires_at.clone(),
        disabled: false,
        password_authentication: true,
        required_auth: Vec::new(),
        totp: resolve_totp(spec, inputs)?,
        client_certificates: spec.client_certificates.clone(),
        ftps_auth: spec.ftps_auth.unwrap_or_default(),
        login_windows: spec.login_windows.clone(),
        password_changed_at,
        ftps_data_binding: spec.ftps_data_binding.unwrap_or_default(),
        quota: resolve_quota(spec)?,
        retention: spec
            .retention
            .iter()
            .map(|rule| config::RetentionRule {
                path: rule.path.clone(),
                max_age: rule.max_age.clone(),
                after_download: rule.after_download.unwrap_or(false),
            })
            .collect(),
    };
    // Field-level validation with the server's own rules, so the server never rejects a file
    // the operator wrote.
    let single = config::UserList {
        api_version: config::API_VERSION.into(),
        kind: "UserList".into(),
        users: vec![entry.clone()],
    };
    let errors = single.validate("users.yaml");
    if let Some(error) = errors.first() {
        let field = error.field.trim_start_matches("users[0].");
        return Err(Verdict::refused(
            Reason::InvalidSpec,
            format!("spec.{field}: {}", error.message),
        ));
    }
    Ok((entry, digest))
}

/// The bytes under `reference`'s key (`default_key` when it names none) of a marked Secret of
/// the namespace, with the key; a refusal naming `field` when the Secret is missing, not
/// marked for Sluice (nothing of it was read, so the message says nothing of its content) or
/// lacks the key.
fn secret_value(
    inputs: &UserInputs<'_>,
    reference: &crate::crd::SecretKeyRef,
    default_key: &str,
    field: &str,
) -> Result<(String, Vec<u8>), Verdict> {
    let key = reference.key.clone().unwrap_or_else(|| default_key.into());
    let Some(secret) = inputs.secrets.get(&reference.name) else {
        if inputs.unmarked.contains(&reference.name) {
            return Err(Verdict::refused(
                Reason::SecretNotMarked,
                format!(
                    "{field}: Secret {} is not marked for Sluice; the operator reads only Secrets labelled {}=true",
                    reference.name,
                    crate::controller::REFERABLE_LABEL
                ),
            ));
        }
        return Err(Verdict::refused(
            Reason::SecretNotFound,
            format!("{field}: Secret {} not found", reference.name),
        ));
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&key))
                .map(|s| s.clone().into_bytes())
        });
    let Some(bytes) = bytes else {
        return Err(Verdict::refused(
            Reason::SecretKeyMissing,
            format!("{field}: Secret {} has no key {key:?}", reference.name),
        ));
    };
    Ok((key, bytes))
}

/// `spec.quota` as users.yaml carries it: `maxBytes` parsed into bytes with the server's own
/// quantity parser, so the two can never disagree.
fn resolve_quota(spec: &crate::crd::TransferUserSpec) -> Result<Option<config::Quota>, Verdict> {
    let Some(quota) = &spec.quota else {
        return Ok(None);
    };
    let max_bytes = match &quota.max_bytes {
        Some(text) => Some(config::ByteSize(
            config::parse_byte_quantity(&text.0).map_err(|message| {
                Verdict::refused(
                    Reason::InvalidSpec,
                    format!("spec.quota.maxBytes: {message}"),
                )
            })?,
        )),
        None => None,
    };
    let max_files = match quota.max_files {
        Some(files) => Some(u64::try_from(files).map_err(|_| {
            Verdict::refused(
                Reason::InvalidSpec,
                format!("spec.quota.maxFiles: {files} is negative"),
            )
        })?),
        None => None,
    };
    let warn_at_percent = match quota.warn_at_percent {
        Some(percent) => u8::try_from(percent).map_err(|_| {
            Verdict::refused(
                Reason::InvalidSpec,
                format!("spec.quota.warnAtPercent: {percent} is not 1-100"),
            )
        })?,
        None => config::DEFAULT_QUOTA_WARN_PERCENT,
    };
    Ok(Some(config::Quota {
        max_bytes,
        max_files,
        warn_at_percent,
    }))
}

/// The user's TOTP setting with the base32 secret read from `spec.totp.secretRef`.
fn resolve_totp(
    spec: &crate::crd::TransferUserSpec,
    inputs: &UserInputs<'_>,
) -> Result<Option<config::TotpConfig>, Verdict> {
    let Some(totp) = &spec.totp else {
        return Ok(None);
    };
    let (_, bytes) = secret_value(inputs, &totp.secret_ref, "totp", "spec.totp.secretRef")?;
    // Authenticator apps show secrets in groups ("JBSW Y3DP ..."): spaces are dropped.
    let secret_text: String = String::from_utf8_lossy(&bytes)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    Ok(Some(config::TotpConfig {
        secret: secret_text,
        digits: totp.digits.unwrap_or(6),
        period: totp.period.unwrap_or(30),
        algorithm: totp.algorithm.unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn user(name: &str, username: &str, created: i64, extra: &str) -> TransferUser {
        let mut user: TransferUser = serde_saphyr::from_str(&format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: TransferUser\nmetadata:\n  name: {name}\n  namespace: n\nspec:\n  serverRef: {{name: s}}\n  username: {username}\n  auth:\n    passwordSecretRef: {{name: {name}-pw}}\n  permissions: [list, download]\n{extra}"
        ))
        .unwrap();
        user.metadata.creation_timestamp =
            Some(Time(jiff::Timestamp::from_second(created).unwrap()));
        user
    }

    fn secret(name: &str, password: &str, version: &str) -> (String, Secret) {
        let mut secret = Secret::default();
        secret.metadata.name = Some(name.into());
        secret.metadata.uid = Some(format!("uid-{name}"));
        secret.metadata.resource_version = Some(version.into());
        secret.data = Some(BTreeMap::from([(
            "password".to_string(),
            ByteString(password.as_bytes().to_vec()),
        )]));
        (name.to_string(), secret)
    }

    fn fake_hash(password: &str) -> Option<String> {
        Some(format!(
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ${}",
            password.len()
        ))
    }

    fn run(
        users: &[TransferUser],
        secrets: &BTreeMap<String, Secret>,
        previous: Option<&config::UserList>,
    ) -> Resolved {
        run_with(
            users,
            secrets,
            previous,
            &PasswordPolicy::default(),
            "2026-06-01T00:00:00Z",
        )
    }

    fn run_with(
        users: &[TransferUser],
        secrets: &BTreeMap<String, Secret>,
        previous: Option<&config::UserList>,
        policy: &PasswordPolicy,
        now: &str,
    ) -> Resolved {
        let policy = policy.clone();
        resolve(
            &UserInputs {
                users,
                secrets,
                unmarked: &std::collections::BTreeSet::from(["unmarked-pw".to_string()]),
                digest_key: b"test key",
                previous,
                policy: &policy,
                object_storage: false,
                now: now.parse().unwrap(),
            },
            &fake_hash,
        )
    }

    #[test]
    fn on_object_storage_users_with_quota_or_retention_are_refused_naming_the_fields() {
        let users = [
            user("alice", "alice", 1, "  quota: {maxFiles: 5}\n"),
            user(
                "bob",
                "bob",
                2,
                "  quota: {maxFiles: 5}\n  retention: [{path: outbox/, maxAge: 30d}]\n",
            ),
            user("carol", "carol", 3, ""),
        ];
        let secrets = BTreeMap::from([
            secret("alice-pw", "Orbit-Kettle-2026", "1"),
            secret("bob-pw", "Orbit-Kettle-2026", "1"),
            secret("carol-pw", "Orbit-Kettle-2026", "1"),
        ]);
        let policy = PasswordPolicy::default();
        let resolved = resolve(
            &UserInputs {
                users: &users,
                secrets: &secrets,
                unmarked: &std::collections::BTreeSet::new(),
                digest_key: b"test key",
                previous: None,
                policy: &policy,
                object_storage: true,
                now: "2026-06-01T00:00:00Z".parse().unwrap(),
            },
            &fake_hash,
        );
        let alice = &resolved.verdicts["alice"];
        assert_eq!(alice.reason, Reason::NotSupportedOnObjectStorage);
        assert!(
            alice.message.starts_with(
                "spec.quota is not supported on a server with spec.storage.objectStore"
            ),
            "{}",
            alice.message
        );
        assert!(
            resolved.verdicts["bob"]
                .message
                .starts_with("spec.quota and spec.retention are not supported"),
            "{}",
            resolved.verdicts["bob"].message
        );
        // Left out of users.yaml, so the server never refuses the whole file; others stay.
        let names: Vec<&str> = resolved
            .list
            .users
            .iter()
            .map(|u| u.username.as_str())
            .collect();
        assert_eq!(names, ["carol"]);
        assert!(resolved.verdicts["carol"].ready);
        // The same users on local storage are fine.
        let local = run(&users, &secrets, None);
        assert!(local.verdicts["alice"].ready && local.verdicts["bob"].ready);
    }

    #[test]
    fn valid_user_is_rendered_with_a_hash_and_never_the_password() {
        let users = [user("alice", "alice", 1, "")];
        let secrets = BTreeMap::from([secret("alice-pw", "Orbit-Kettle-2026", "1")]);
        let resolved = run(&users, &secrets, None);
        assert!(resolved.verdicts["alice"].ready);
        let entry = resolved.list.find("alice").unwrap();
        assert!(
            entry
                .password_hash
                .as_ref()
                .unwrap()
                .starts_with("$argon2id$")
        );
        let yaml = serde_saphyr::to_string(&resolved.list).unwrap();
        assert!(!yaml.contains("Orbit-Kettle-2026"));
        assert!(config::UserList::parse("users.yaml", &yaml).is_ok());
    }

    #[test]
    fn ftps_data_binding_is_rendered_and_reported_only_when_weaker() {
        let legacy = user(
            "legacy",
            "legacy",
            1,
            "  ftpsDataBinding: addressAndLease\n",
        );
        let modern = user("modern", "modern", 2, "");
        let secrets = BTreeMap::from([
            secret("legacy-pw", "Orbit-Kettle-2026", "1"),
            secret("modern-pw", "Orbit-Kettle-2026", "1"),
        ]);
        let resolved = run(&[legacy, modern], &secrets, None);
        assert_eq!(
            resolved.list.find("legacy").unwrap().ftps_data_binding,
            config::FtpsDataBinding::AddressAndLease
        );
        assert_eq!(
            resolved.verdicts["legacy"].ftps_data_binding,
            Some(config::FtpsDataBinding::AddressAndLease)
        );
        assert_eq!(resolved.verdicts["modern"].ftps_data_binding, None);
        let yaml = serde_saphyr::to_string(&resolved.list).unwrap();
        assert_eq!(
            yaml.matches("ftpsDataBinding: addressAndLease").count(),
            1,
            "{yaml}"
        );
        let parsed = config::UserList::parse("users.yaml", &yaml).unwrap();
        assert_eq!(parsed.insecure_opt_ins().len(), 1);
    }

    #[test]
    fn quota_and_retention_are_rendered_in_bytes_and_invalid_ones_refused() {
        let extra = "  quota: {maxBytes: 10Gi, maxFiles: 500}\n  retention:\n    - {path: outbox/, maxAge: 30d}\n    - {path: inbox, afterDownload: true}\n";
        let integer = "  quota: {maxBytes: 1048576, warnAtPercent: 90}\n";
        let bad = "  quota: {maxBytes: 1.5Gi}\n";
        let bad_rule = "  retention: [{path: ../up, maxAge: 3 days}]\n";
        let users = [
            user("alice", "alice", 1, extra),
            user("bob", "bob", 2, integer),
            user("carol", "carol", 3, bad),
            user("dave", "dave", 4, bad_rule),
        ];
        let secrets = BTreeMap::from([
            secret("alice-pw", "Orbit-Kettle-2026", "1"),
            secret("bob-pw", "Orbit-Kettle-2026", "1"),
            secret("carol-pw", "Orbit-Kettle-2026", "1"),
            secret("dave-pw", "Orbit-Kettle-2026", "1"),
        ]);
        let resolved = run(&users, &secrets, None);
        let alice = resolved.list.find("alice").unwrap();
        let quota = alice.quota.as_ref().unwrap();
        assert_eq!(quota.max_bytes, Some(config::ByteSize(10 << 30)));
        assert_eq!((quota.max_files, quota.warn_at_percent), (Some(500), 80));
        assert_eq!(alice.retention.len(), 2);
        assert!(alice.retention[1].after_download);
        let bob = resolved.list.find("bob").unwrap().quota.clone().unwrap();
        assert_eq!(
            (bob.max_bytes, bob.warn_at_percent),
            (Some(config::ByteSize(1 << 20)), 90)
        );
        assert!(resolved.list.find("carol").is_none());
        assert!(
            resolved.verdicts["carol"]
                .message
                .contains("spec.quota.maxBytes"),
            "{}",
            resolved.verdicts["carol"].message
        );
        assert!(resolved.list.find("dave").is_none());
        assert!(
            resolved.verdicts["dave"]
                .message
                .contains("spec.retention[0]."),
            "{}",
            resolved.verdicts["dave"].message
        );
        // What the operator renders, the server parses back unchanged.
        let yaml = serde_saphyr::to_string(&resolved.list).unwrap();
        assert!(yaml.contains("maxBytes: 10737418240"), "{yaml}");
        let parsed = config::UserList::parse("users.yaml", &yaml).unwrap();
        assert_eq!(parsed.find("alice"), Some(alice));
    }

    #[test]
    fn totp_secret_and_client_certificates_are_rendered() {
        let extra = "  totp:\n    secretRef: {name: alice-totp}\n    digits: 8\n  clientCertificates:\n    - subject: CN=alice,O=Partner\n    - sha256: '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff'\n  ftpsAuth: certificateAndPassword\n";
        let users = [user("alice", "alice", 1, extra)];
        let totp_secret = |value: &[u8]| Secret {
            data: Some(BTreeMap::from([(
                "totp".to_string(),
                ByteString(value.to_vec()),
            )])),
            ..Default::default()
        };
        let mut secrets = BTreeMap::from([secret("alice-pw", "Orbit-Kettle-2026", "1")]);
        secrets.insert(
            "alice-totp".into(),
            totp_secret(b"GEZD GNBV GY3T QOJQ GEZD GNBV GY3T QOJQ\n"),
        );
        let resolved = run(&users, &secrets, None);
        assert!(resolved.verdicts["alice"].ready, "{:?}", resolved.verdicts);
        let entry = resolved.list.find("alice").unwrap();
        let totp = entry.totp.as_ref().unwrap();
        assert_eq!(totp.secret, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!((totp.digits, totp.period), (8, 30));
        assert_eq!(entry.ftps_auth, config::FtpsAuth::CertificateAndPassword);
        assert_eq!(entry.client_certificates.len(), 2);
        let yaml = serde_saphyr::to_string(&resolved.list).unwrap();
        let parsed = config::UserList::parse("users.yaml", &yaml).unwrap();
        assert_eq!(parsed.find("alice"), Some(entry));

        // A missing TOTP Secret, a short secret and a bad mapping are named.
        secrets.remove("alice-totp");
        let resolved = run(&users, &secrets, None);
        let verdict = &resolved.verdicts["alice"];
        assert_eq!(verdict.reason, "SecretNotFound");
        assert!(
            verdict.message.contains("spec.totp.secretRef"),
            "{verdict:?}"
        );
        secrets.insert("alice-totp".into(), totp_secret(b"MZXW6==="));
        let verdict = &run(&users, &secrets, None).verdicts["alice"];
        assert_eq!(verdict.reason, "InvalidSpec");
        assert!(
            verdict.message.starts_with("spec.totp.secret:"),
            "{verdict:?}"
        );
        assert!(!verdict.message.contains("MZXW6"), "{verdict:?}");
        let users = [user(
            "bob",
            "bob",
            1,
            "  clientCertificates: [{san: bob.example, sha256: '00'}]\n",
        )];
        let secrets = BTreeMap::from([secret("bob-pw", "Orbit-Kettle-2026", "1")]);
        let verdict = &run(&users, &secrets, None).verdicts["bob"];
        assert!(
            verdict.message.starts_with("spec.clientCertificates[0]"),
            "{verdict:?}"
        );
    }

    #[test]
    fn weak_password_missing_secret_and_duplicates_get_reasons() {
        let users = [
            user("weak", "weak", 1, ""),
            user("nosecret", "nosecret", 2, ""),
            user("first", "shared", 3, ""),
            user("second", "Shared", 4, ""),
        ];
        let secrets = BTreeMap::from([
            secret("weak-pw", "password1", "1"),
            secret("first-pw", "Orbit-Kettle-2026", "1"),
            secret("second-pw", "Orbit-Kettle-2026", "1"),
        ]);
        let resolved = run(&users, &secrets, None);
        let weak = &resolved.verdicts["weak"];
        assert_eq!(weak.reason, "PasswordPolicyViolation");
        assert!(!weak.message.contains("password1"));
        assert_eq!(resolved.verdicts["nosecret"].reason, "SecretNotFound");
        assert!(resolved.verdicts["first"].ready);
        assert_eq!(resolved.verdicts["second"].reason, "DuplicateUsername");
        assert_eq!(resolved.list.users.len(), 1);
    }

    #[test]
    fn expired_and_disabled_users_are_left_out() {
        let users = [
            user("old", "old", 1, "  expiresAt: 2026-01-01T00:00:00Z\n"),
            user("off", "off", 2, "  disabled: true\n"),
        ];
        let secrets = BTreeMap::from([
            secret("old-pw", "Orbit-Kettle-2026", "1"),
            secret("off-pw", "Orbit-Kettle-2026", "1"),
        ]);
        let resolved = run(&users, &secrets, None);
        assert_eq!(resolved.verdicts["old"].reason, "Expired");
        assert_eq!(resolved.verdicts["off"].reason, "Disabled");
        assert!(resolved.list.users.is_empty());
    }

    #[test]
    fn hash_is_reused_until_the_secret_changes() {
        let mut alice = user("alice", "alice", 1, "");
        let secrets = BTreeMap::from([secret("alice-pw", "Orbit-Kettle-2026", "7")]);
        let first = run(std::slice::from_ref(&alice), &secrets, None);
        let mut previous = first.list.clone();
        previous.users[0].password_hash =
            Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$previous".into());
        alice.status = Some(crate::crd::TransferUserStatus {
            password_source_digest: first.verdicts["alice"].password_source_digest.clone(),
            ..Default::default()
        });
        let second = run(std::slice::from_ref(&alice), &secrets, Some(&previous));
        assert!(
            second.list.users[0]
                .password_hash
                .as_ref()
                .unwrap()
                .ends_with("$previous")
        );
        let rotated = BTreeMap::from([secret("alice-pw", "Orbit-Kettle-2027", "8")]);
        let third = run(std::slice::from_ref(&alice), &rotated, Some(&previous));
        assert!(
            !third.list.users[0]
                .password_hash
                .as_ref()
                .unwrap()
                .ends_with("$previous")
        );
    }

    #[test]
    fn password_change_time_aging_and_warning() {
        let policy = PasswordPolicy {
            max_age_days: Some(30),
            warn_days_before: Some(5),
            ..PasswordPolicy::default()
        };
        let mut alice = user("alice", "alice", 1, "");
        let secrets = BTreeMap::from([secret("alice-pw", "Orbit-Kettle-2026", "7")]);
        // First sight: changed now, rendered into users.yaml, next change is the warning.
        let first = run_with(
            std::slice::from_ref(&alice),
            &secrets,
            None,
            &policy,
            "2026-06-01T00:00:00Z",
        );
        let verdict = &first.verdicts["alice"];
        assert_eq!(verdict.reason, "Provisioned");
        assert_eq!(
            verdict.password_changed_at.as_deref(),
            Some("2026-06-01T00:00:00Z")
        );
        assert_eq!(
            verdict.password_expires_at.as_deref(),
            Some("2026-07-01T00:00:00Z")
        );
        assert_eq!(
            first.list.users[0].password_changed_at.as_deref(),
            Some("2026-06-01T00:00:00Z")
        );
        assert_eq!(
            first.next_change,
            Some("2026-06-26T00:00:00Z".parse().unwrap())
        );
        alice.status = Some(crate::crd::TransferUserStatus {
            password_source_digest: verdict.password_source_digest.clone(),
            password_changed_at: verdict.password_changed_at.clone(),
            ..Default::default()
        });
        // The same Secret later: the change time is kept; inside the warning period.
        let warned = run_with(
            std::slice::from_ref(&alice),
            &secrets,
            Some(&first.list),
            &policy,
            "2026-06-27T00:00:00Z",
        );
        let verdict = &warned.verdicts["alice"];
        assert!(verdict.ready);
        assert_eq!(verdict.reason, "PasswordExpiresSoon");
        assert_eq!(
            verdict.password_changed_at.as_deref(),
            Some("2026-06-01T00:00:00Z")
        );
        assert_eq!(
            warned.next_change,
            Some("2026-07-01T00:00:00Z".parse().unwrap())
        );
        // Past the maximum age: not ready, but still in users.yaml with its change time, so the
        // server refuses password logins with the audited reason and keys keep working.
        let expired = run_with(
            std::slice::from_ref(&alice),
            &secrets,
            Some(&first.list),
            &policy,
            "2026-07-01T00:00:00Z",
        );
        let verdict = &expired.verdicts["alice"];
        assert!(!verdict.ready);
        assert_eq!(verdict.reason, "PasswordExpired");
        assert_eq!(expired.list.users.len(), 1);
        assert_eq!(
            expired.list.users[0].password_changed_at.as_deref(),
            Some("2026-06-01T00:00:00Z")
        );
        assert_eq!(expired.next_change, None);
        // A new Secret version resets the clock.
        let rotated = BTreeMap::from([secret("alice-pw", "Orbit-Kettle-2027", "8")]);
        let renewed = run_with(
            std::slice::from_ref(&alice),
            &rotated,
            Some(&first.list),
            &policy,
            "2026-07-02T00:00:00Z",
        );
        assert_eq!(renewed.verdicts["alice"].reason, "Provisioned");
        assert_eq!(
            renewed.verdicts["alice"].password_changed_at.as_deref(),
            Some("2026-07-02T00:00:00Z")
        );
        // Keys only: no password, no aging.
        let keys = user(
            "bob",
            "bob",
            2,
            "  loginWindows: [{days: [Mon], from: '08:00', to: '09:00', timeZone: Europe/Berlin}]\n",
        );
        let mut keys = keys;
        keys.spec.auth = crate::crd::UserAuth {
            ssh_authorized_keys: vec![
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
                    .into(),
            ],
            ..Default::default()
        };
        let resolved = run_with(&[keys], &secrets, None, &policy, "2027-01-01T00:00:00Z");
        assert_eq!(resolved.verdicts["bob"].reason, "Provisioned");
        assert_eq!(resolved.list.users[0].password_changed_at, None);
        assert_eq!(resolved.list.users[0].login_windows.len(), 1);
    }

    #[test]
    fn a_password_hash_over_the_argon2_caps_is_left_out_naming_the_field_and_the_cap() {
        let salt_and_hash = "c2FsdHNhbHQ$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo";
        let with_hash = |name: &str, created: i64, params: &str| {
            let mut user = user(name, name, created, "");
            user.spec.auth = crate::crd::UserAuth {
                password_hash: Some(format!("$argon2id$v=19${params}${salt_and_hash}")),
                ..Default::default()
            };
            user
        };
        let users = [
            with_hash("hostile", 1, "m=4294967295,t=1,p=1"),
            with_hash("slow", 2, "m=19456,t=4294967295,p=1"),
            with_hash("wide", 3, "m=19456,t=2,p=255"),
            with_hash("costly", 4, "m=65536,t=3,p=1"),
            with_hash("fine", 5, "m=19456,t=2,p=1"),
        ];
        let resolved = run(&users, &BTreeMap::new(), None);
        for (name, cap) in [
            ("hostile", "65536 KiB"),
            ("slow", "1-10"),
            ("wide", "1-4"),
            ("costly", "131072"),
        ] {
            let verdict = &resolved.verdicts[name];
            assert!(!verdict.ready, "{name}: {verdict:?}");
            assert_eq!(verdict.reason, "InvalidSpec", "{name}");
            assert!(
                verdict.message.starts_with("spec.auth.passwordHash: "),
                "{name}: {verdict:?}"
            );
            assert!(verdict.message.contains(cap), "{name}: {verdict:?}");
            assert!(resolved.list.find(name).is_none(), "{name} was rendered");
        }
        // The others are still written.
        assert!(resolved.verdicts["fine"].ready);
        assert_eq!(resolved.list.users.len(), 1);
        assert!(resolved.list.find("fine").is_some());
        assert!(resolved.list.validate("users.yaml").is_empty());
    }

    #[test]
    fn a_previous_hash_over_the_caps_is_issued_again_not_carried_over() {
        let mut alice = user("alice", "alice", 1, "");
        let secrets = BTreeMap::from([secret("alice-pw", "Orbit-Kettle-2026", "7")]);
        let first = run(std::slice::from_ref(&alice), &secrets, None);
        let mut previous = first.list.clone();
        previous.users[0].password_hash =
            Some("$argon2id$v=19$m=4294967295,t=1,p=1$c2FsdHNhbHQ$previous".into());
        alice.status = Some(crate::crd::TransferUserStatus {
            password_source_digest: first.verdicts["alice"].password_source_digest.clone(),
            ..Default::default()
        });
        let second = run(std::slice::from_ref(&alice), &secrets, Some(&previous));
        assert!(second.verdicts["alice"].ready, "{:?}", second.verdicts);
        let hash = second.list.users[0].password_hash.as_deref().unwrap();
        assert!(!hash.ends_with("$previous"), "{hash}");
        assert_eq!(config::validate_password_hash(hash), Ok(()));
    }

    #[test]
    fn a_changed_password_hash_resets_the_change_time() {
        let hash_a = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let hash_b = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
        let mut carol = user("carol", "carol", 1, "");
        carol.spec.auth = crate::crd::UserAuth {
            password_hash: Some(hash_a.into()),
            ..Default::default()
        };
        let secrets = BTreeMap::new();
        let policy = PasswordPolicy::default();
        let first = run_with(
            std::slice::from_ref(&carol),
            &secrets,
            None,
            &policy,
            "2026-01-01T00:00:00Z",
        );
        carol.status = Some(crate::crd::TransferUserStatus {
            password_source_digest: first.verdicts["carol"].password_source_digest.clone(),
            password_changed_at: first.verdicts["carol"].password_changed_at.clone(),
            ..Default::default()
        });
        let same = run_with(
            std::slice::from_ref(&carol),
            &secrets,
            None,
            &policy,
            "2026-02-01T00:00:00Z",
        );
        assert_eq!(
            same.verdicts["carol"].password_changed_at.as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        carol.spec.auth.password_hash = Some(hash_b.into());
        let changed = run_with(
            std::slice::from_ref(&carol),
            &secrets,
            None,
            &policy,
            "2026-02-01T00:00:00Z",
        );
        assert_eq!(
            changed.verdicts["carol"].password_changed_at.as_deref(),
            Some("2026-02-01T00:00:00Z")
        );
    }

    #[test]
    fn an_unmarked_secret_is_refused_without_reading_it() {
        let mut bob = user("bob", "bob", 1, "");
        bob.spec.auth.password_secret_ref = Some(crate::crd::SecretKeyRef {
            name: "unmarked-pw".into(),
            key: None,
        });
        let resolved = run(std::slice::from_ref(&bob), &BTreeMap::new(), None);
        let verdict = &resolved.verdicts["bob"];
        assert!(!verdict.ready);
        assert_eq!(verdict.reason, "SecretNotMarked");
        assert!(
            verdict.message.contains("sluice.dev/referable=true"),
            "{}",
            verdict.message
        );
        assert!(resolved.list.users.is_empty());
    }

    #[test]
    fn a_label_only_write_keeps_the_digest_and_a_new_value_changes_it() {
        let alice = user("alice", "alice", 1, "");
        let (_, mut labelled) = secret("alice-pw", "Orbit-Kettle-2026", "7");
        let first = run(
            std::slice::from_ref(&alice),
            &BTreeMap::from([("alice-pw".to_string(), labelled.clone())]),
            None,
        );
        // Argo CD adds a label: new resourceVersion, same value.
        labelled.metadata.resource_version = Some("8".into());
        labelled.metadata.labels = Some(BTreeMap::from([("argocd".into(), "x".into())]));
        let second = run(
            std::slice::from_ref(&alice),
            &BTreeMap::from([("alice-pw".to_string(), labelled)]),
            None,
        );
        let digest = |r: &Resolved| r.verdicts["alice"].password_source_digest.clone().unwrap();
        assert_eq!(digest(&first), digest(&second));
        let changed = run(
            std::slice::from_ref(&alice),
            &BTreeMap::from([secret("alice-pw", "Orbit-Kettle-2027", "9")]),
            None,
        );
        assert_ne!(digest(&first), digest(&changed));
        // Keyed: the same value under another server's key gives another digest.
        assert_ne!(
            secret_version_digest(b"k1", "password", b"Orbit-Kettle-2026"),
            secret_version_digest(b"k2", "password", b"Orbit-Kettle-2026")
        );
    }

    /// The render benchmark of docs/performance.md (`bench/operator/render.sh`): 50,000 users
    /// with an ed25519 key each resolved and split into users.yaml shards. Run in release mode.
    #[test]
    #[ignore = "benchmark: cargo test --release -p sluice-operator render_50000 -- --ignored --nocapture"]
    fn render_50000_users_under_two_seconds() {
        let users: Vec<TransferUser> = (0..50_000)
            .map(|i| {
                let mut u = user(&format!("u{i}"), &format!("user{i:05}"), i, "");
                u.spec.auth.password_secret_ref = None;
                u.spec.auth.ssh_authorized_keys = vec![
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
                        .into(),
                ];
                u
            })
            .collect();
        let started = std::time::Instant::now();
        let resolved = run(&users, &BTreeMap::new(), None);
        let resolved_in = started.elapsed();
        let shards = crate::shards::render(&resolved.list, 1).unwrap();
        let took = started.elapsed();
        println!(
            "render of 50000 users: resolve {:.3}s, total {:.3}s, {} shards, {} bytes",
            resolved_in.as_secs_f64(),
            took.as_secs_f64(),
            shards.count(),
            shards.files.iter().map(String::len).sum::<usize>()
        );
        assert_eq!(resolved.list.users.len(), 50_000);
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    }
}
