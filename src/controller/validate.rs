//! Step 2: decide what may be rendered. A server that got past admission with values the CRD
//! should have refused is reported as `InvalidSpec`; each user gets a verdict (policy,
//! duplicates, marking of its Secrets, aging), and passwords whose content changed are hashed
//! (argon2id, on the blocking pool; an unchanged password keeps its deployed hash).

use jiff::Timestamp;
use sluice_config as config;

use super::resolve::References;
use crate::crd::FileTransferServer;
use crate::lenient::Invalid;
use crate::render;
use crate::users::{self, UserInputs};

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("hashing passwords: the worker stopped: {0}")]
    Worker(String),
}

/// The verdicts of one server's users and the user list to render.
pub struct Validated {
    pub users: users::Resolved,
    /// The TransferUsers by object name (their verdicts are keyed so).
    pub objects: std::collections::BTreeMap<String, crate::crd::TransferUser>,
    /// Why the pods cannot start yet: Secrets of `spec.storage.objectStore` that do not exist.
    pub storage_missing: Vec<String>,
}

/// What the CRD's schema and CEL rules should have refused but the operator cannot render
/// safely either (an object stored before the rules, a CRD installed without them): reported
/// like an object the types reject.
pub fn past_admission_check(server: &FileTransferServer) -> Option<Invalid> {
    let message = render::passive_ports(&server.spec.passive)
        .err()
        .or_else(|| render::security_settings(server).err())
        .map(|e| e.to_string())
        .or_else(|| {
            crate::object_store::check(&server.spec.storage)
                .err()
                .map(|e| e.to_string())
        })?;
    Some(Invalid {
        message,
        conditions: server
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default(),
    })
}

pub async fn validate(
    server: &FileTransferServer,
    references: &References,
    now: Timestamp,
) -> Result<Validated, ValidateError> {
    let previous = previous_users(references);
    let policy = server.spec.security.password_policy.clone();
    let users = references.users.clone();
    let secrets = references.secrets.clone();
    let unmarked = references.unmarked.clone();
    let digest_key = references.digest_key.clone();
    let object_storage = server.spec.storage.object_store.is_some();
    let resolved = tokio::task::spawn_blocking(move || {
        users::resolve(
            &UserInputs {
                users: &users,
                secrets: &secrets,
                unmarked: &unmarked,
                digest_key: &digest_key,
                previous: Some(&previous),
                policy: &policy,
                object_storage,
                now,
            },
            &sluice_hash,
        )
    })
    .await
    .map_err(|e| ValidateError::Worker(e.to_string()))?;
    let objects = references
        .users
        .iter()
        .map(|u| (kube::ResourceExt::name_any(u), u.clone()))
        .collect();
    Ok(Validated {
        users: resolved,
        objects,
        storage_missing: references.object_store_missing.clone(),
    })
}

/// Every user of the deployed shards (a shard that does not parse contributes nothing: its
/// users are hashed again).
fn previous_users(references: &References) -> config::UserList {
    let mut list = config::UserList {
        api_version: config::API_VERSION.into(),
        kind: "UserList".into(),
        users: Vec::new(),
    };
    // Only password hashes are reused: without a password Secret there is nothing to parse.
    if !references
        .users
        .iter()
        .any(|u| u.spec.auth.password_secret_ref.is_some())
    {
        return list;
    }
    for text in references.shards.values() {
        if let Ok(shard) = config::UserList::parse("users.yaml", text) {
            list.users.extend(shard.users);
        }
    }
    list
}

/// An argon2id PHC string of `password` with the parameters the server expects of the hashes
/// we issue ([`config::Argon2Params::ISSUED`], within the caps every server enforces).
pub fn sluice_hash(password: &str) -> Option<String> {
    use argon2::PasswordHasher;
    use argon2::password_hash::SaltString;
    let issued = config::Argon2Params::ISSUED;
    let params = argon2::Params::new(
        issued.memory_kib,
        issued.iterations,
        issued.parallelism,
        None,
    )
    .ok()?;
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .ok()
        .map(|h| h.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_with_a_passive_range_past_admission_is_invalid_spec_naming_the_field() {
        let server: FileTransferServer = serde_json::from_value(serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FileTransferServer",
            "metadata": {"name": "partners", "namespace": "transfer"},
            "spec": {"protocols": ["ftpsExplicit"], "passive": {"portStart": 1024, "portEnd": 65535}},
        }))
        .unwrap();
        let invalid = past_admission_check(&server).expect("refused");
        assert!(
            invalid
                .message
                .starts_with("spec.passive: ports 1024..65535"),
            "{}",
            invalid.message
        );
        let mut fine = server.clone();
        fine.spec.passive.port_end = 1123;
        assert!(past_admission_check(&fine).is_none());
    }

    #[test]
    fn a_server_with_budgets_past_admission_is_invalid_spec_naming_the_field() {
        let server: FileTransferServer = serde_json::from_value(serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FileTransferServer",
            "metadata": {"name": "partners", "namespace": "transfer"},
            "spec": {"protocols": ["sftp"], "security": {"budgets": {"maxFileWorkPerUser": 100}}},
        }))
        .unwrap();
        let invalid = past_admission_check(&server).expect("refused");
        assert!(
            invalid.message.starts_with(
                "spec.security.budgets.maxFileWorkPerUser: must not exceed maxFileWork (64)"
            ),
            "{}",
            invalid.message
        );
        let mut fine = server.clone();
        fine.spec.security.budgets = Some(crate::crd::BudgetsSpec {
            max_file_work_per_user: Some(8),
            ..Default::default()
        });
        assert!(past_admission_check(&fine).is_none());
    }

    #[test]
    fn an_object_store_past_admission_is_invalid_spec_naming_the_field() {
        let server: FileTransferServer = serde_json::from_value(serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FileTransferServer",
            "metadata": {"name": "partners", "namespace": "transfer"},
            "spec": {"protocols": ["sftp"], "replicas": 2, "storage": {"objectStore": {
                "endpoint": "https://s3.example.net", "bucket": "Partner_Files",
                "prefix": "a/../b", "credentialsSecretRef": {"name": "s3"}}}},
        }))
        .unwrap();
        let invalid = past_admission_check(&server).expect("refused");
        assert!(
            invalid.message.starts_with(
                "spec.storage.objectStore.bucket: \"Partner_Files\" is not a bucket name"
            ),
            "{}",
            invalid.message
        );
        assert!(
            invalid
                .message
                .contains("; spec.storage.objectStore.prefix: \"a/../b\" must not contain"),
            "{}",
            invalid.message
        );
        let mut fine = server.clone();
        let store = fine.spec.storage.object_store.as_mut().unwrap();
        store.bucket = "partner-files".into();
        store.prefix = Some("a/b".into());
        assert!(past_admission_check(&fine).is_none());
    }

    #[test]
    fn the_operator_issues_hashes_within_the_argon2_caps() {
        let hash = sluice_hash("Orbit-Kettle-2026").expect("hashes");
        assert_eq!(
            config::argon2_params_of(&hash),
            Some(Ok(config::Argon2Params::ISSUED))
        );
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert_eq!(config::validate_password_hash(&hash), Ok(()));
        use argon2::PasswordVerifier;
        let parsed = argon2::PasswordHash::new(&hash).unwrap();
        assert!(
            argon2::Argon2::default()
                .verify_password(b"Orbit-Kettle-2026", &parsed)
                .is_ok()
        );
    }
}
