//! `spec.storage.objectStore` rendered into the pod: server.yaml's `storage.objectStore`, the
//! Secret volumes its file fields name, and the local spool that replaces the data claim. A
//! module of its own, like [`crate::events`], so that the paths where each Secret lands are
//! stated once, next to the section that names them.
//!
//! The operator never reads the credentials or the CA: both are mounted as Secret volumes, so
//! they need no `sluice.dev/referable` label and the operator's RBAC does not widen. The server
//! reads the files at every reload and counts them in its configuration digest, so a rotated
//! Secret reaches every pod by the kubelet's atomic `..data` swap, without a restart (as the
//! TLS Secret does). Whether the Secrets exist is looked up as metadata only
//! ([`crate::controller::resolve`]).
//!
//! The data volume becomes an `emptyDir` per pod: with object storage `dataRoot` holds only
//! uploads in progress. An upload in progress does not survive its pod anyway (the client
//! resumes against the published object, which any replica serves), so a per-pod claim would
//! only pin pods to a zone and leave claims behind after a scale-down; an `emptyDir` lets the
//! pods move freely. `spec.storage.size`, when set, becomes its size limit.

use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, KeyToPath, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use sluice_config as config;

use crate::crd::{ObjectStoreSpec, StorageSpec};

/// Where the credentials Secret is mounted.
pub const CREDENTIALS_DIR: &str = "/etc/sluice/object-store/credentials";
/// Where the CA Secret is mounted.
pub const CA_DIR: &str = "/etc/sluice/object-store/ca";
/// Key of the access key id in the credentials Secret (also its file name).
pub const ACCESS_KEY_ID: &str = "accessKeyId";
/// Key of the secret access key in the credentials Secret (also its file name).
pub const SECRET_ACCESS_KEY: &str = "secretAccessKey";
/// Default key of the PEM bundle in the CA Secret.
pub const CA_KEY: &str = "ca.crt";

#[derive(Debug, thiserror::Error)]
pub enum ObjectStoreError {
    /// Values the server would refuse, each `spec.storage.objectStore.<field>: <why>`.
    #[error("{}", fields.join("; "))]
    Invalid { fields: Vec<String> },
}

/// server.yaml `storage` from `spec.storage` (pure): the default (local homes) without
/// `objectStore`.
pub fn server_storage(storage: &StorageSpec) -> config::StorageConfig {
    config::StorageConfig {
        object_store: storage.object_store.as_ref().map(server_object_store),
    }
}

fn server_object_store(spec: &ObjectStoreSpec) -> config::ObjectStoreConfig {
    config::ObjectStoreConfig {
        endpoint: spec.endpoint.clone(),
        bucket: spec.bucket.clone(),
        prefix: spec.prefix.clone().unwrap_or_default(),
        region: spec
            .region
            .clone()
            .unwrap_or_else(|| config::DEFAULT_REGION.to_string()),
        access_key_id_file: format!("{CREDENTIALS_DIR}/{ACCESS_KEY_ID}"),
        secret_access_key_file: format!("{CREDENTIALS_DIR}/{SECRET_ACCESS_KEY}"),
        ca_file: spec
            .ca_secret_ref
            .as_ref()
            .map(|_| format!("{CA_DIR}/{CA_KEY}")),
        path_style: spec.path_style,
        // A negative number (only past admission) is reported by `check`, not silently
        // replaced: u64::MAX fails the server's range check.
        part_bytes: spec
            .part_bytes
            .map(|b| u64::try_from(b).unwrap_or(u64::MAX))
            .unwrap_or(config::DEFAULT_PART_BYTES),
    }
}

/// `spec.storage.objectStore` checked with the server's own rules
/// ([`config::ObjectStoreConfig::validate`]) plus the CRD's plain-http opt-in: the CRD's CEL
/// rules refuse the same values at admission, but an object stored before them must not give
/// the pods a server.yaml they refuse at start (a crash loop). Every error names its field
/// under `spec.storage.objectStore`.
pub fn check(storage: &StorageSpec) -> Result<(), ObjectStoreError> {
    let Some(spec) = &storage.object_store else {
        return Ok(());
    };
    let mut errors = Vec::new();
    server_object_store(spec).validate("server.yaml", &mut errors);
    let mut fields: Vec<String> = errors
        .into_iter()
        .map(|e| {
            let field = e
                .field
                .strip_prefix("storage.objectStore.")
                .unwrap_or(&e.field);
            // The file fields are the operator's own paths; a CA file is `caSecretRef` here,
            // in the field and in the advice.
            match field {
                "caFile" => format!(
                    "spec.storage.objectStore.caSecretRef: {}",
                    e.message.replace("caFile", "caSecretRef")
                ),
                other => format!("spec.storage.objectStore.{other}: {}", e.message),
            }
        })
        .collect();
    if spec.endpoint.starts_with("http://") && !spec.allow_plain_http {
        fields.push(
            "spec.storage.objectStore.endpoint: a plain http:// endpoint needs \
             spec.storage.objectStore.allowPlainHttp: true"
                .to_string(),
        );
    }
    if storage.existing_claim.is_some() {
        fields.push(
            "spec.storage.existingClaim: does not apply with spec.storage.objectStore; remove it"
                .to_string(),
        );
    }
    if fields.is_empty() {
        Ok(())
    } else {
        Err(ObjectStoreError::Invalid { fields })
    }
}

/// The Secrets the pods mount for `spec.storage.objectStore`, as `(field, Secret name)`.
pub fn referenced_secrets(spec: &ObjectStoreSpec) -> Vec<(&'static str, String)> {
    std::iter::once((
        "spec.storage.objectStore.credentialsSecretRef",
        spec.credentials_secret_ref.name.clone(),
    ))
    .chain(
        spec.ca_secret_ref
            .as_ref()
            .map(|ca| ("spec.storage.objectStore.caSecretRef", ca.name.clone())),
    )
    .collect()
}

fn secret_items(volume: &str, secret: &str, items: Vec<KeyToPath>) -> Volume {
    Volume {
        name: volume.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_string()),
            // Listed keys: a Secret without one keeps the pod in ContainerCreating with the
            // kubelet naming the key, instead of a server that starts and exits.
            items: Some(items),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn key(key: &str, path: &str) -> KeyToPath {
    KeyToPath {
        key: key.to_string(),
        path: path.to_string(),
        mode: None,
    }
}

fn read_only(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// The Secret volumes of `spec` and their mounts (pure).
pub fn pod_parts(spec: &ObjectStoreSpec) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![secret_items(
        "object-store-credentials",
        &spec.credentials_secret_ref.name,
        vec![
            key(ACCESS_KEY_ID, ACCESS_KEY_ID),
            key(SECRET_ACCESS_KEY, SECRET_ACCESS_KEY),
        ],
    )];
    let mut mounts = vec![read_only("object-store-credentials", CREDENTIALS_DIR)];
    if let Some(ca) = &spec.ca_secret_ref {
        volumes.push(secret_items(
            "object-store-ca",
            &ca.name,
            vec![key(ca.key.as_deref().unwrap_or(CA_KEY), CA_KEY)],
        ));
        mounts.push(read_only("object-store-ca", CA_DIR));
    }
    (volumes, mounts)
}

/// The data volume of a pod whose homes are in a bucket: an `emptyDir` spool (see the module
/// doc), limited to `spec.storage.size` when set.
pub fn spool_volume(storage: &StorageSpec) -> Volume {
    Volume {
        name: "data".to_string(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: storage.size.clone().map(Quantity),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(yaml: &str) -> StorageSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const VALID: &str = "objectStore:\n  endpoint: https://s3.example.net:9000\n  bucket: partner-files\n  prefix: tenants/prod\n  credentialsSecretRef: {name: s3-credentials}\n";

    #[test]
    fn the_section_points_at_the_mounted_files_and_keeps_the_servers_defaults() {
        let rendered = server_storage(&storage(VALID)).object_store.unwrap();
        assert_eq!(
            rendered.access_key_id_file,
            "/etc/sluice/object-store/credentials/accessKeyId"
        );
        assert_eq!(
            rendered.secret_access_key_file,
            "/etc/sluice/object-store/credentials/secretAccessKey"
        );
        assert_eq!(rendered.ca_file, None);
        assert_eq!(rendered.prefix, "tenants/prod");
        assert_eq!(rendered.region, "us-east-1");
        assert!(rendered.path_style);
        assert_eq!(rendered.part_bytes, config::DEFAULT_PART_BYTES);
        assert!(server_storage(&StorageSpec::default()).is_default());
        assert!(check(&storage(VALID)).is_ok());
    }

    #[test]
    fn the_credentials_and_ca_are_mounted_by_key_never_read() {
        let spec = storage(&format!(
            "{VALID}  caSecretRef: {{name: s3-ca, key: bundle.pem}}\n  pathStyle: false\n  partBytes: 16777216\n"
        ))
        .object_store
        .unwrap();
        let (volumes, mounts) = pod_parts(&spec);
        let credentials = volumes[0].secret.as_ref().unwrap();
        assert_eq!(credentials.secret_name.as_deref(), Some("s3-credentials"));
        let keys: Vec<&str> = credentials
            .items
            .as_ref()
            .unwrap()
            .iter()
            .map(|i| i.key.as_str())
            .collect();
        assert_eq!(keys, ["accessKeyId", "secretAccessKey"]);
        let ca = volumes[1].secret.as_ref().unwrap();
        assert_eq!(ca.items.as_ref().unwrap()[0].key, "bundle.pem");
        assert_eq!(ca.items.as_ref().unwrap()[0].path, "ca.crt");
        assert!(mounts.iter().all(|m| m.read_only == Some(true)));
        assert_eq!(mounts[1].mount_path, CA_DIR);
        let rendered = server_object_store(&spec);
        assert_eq!(
            rendered.ca_file.as_deref(),
            Some("/etc/sluice/object-store/ca/ca.crt")
        );
        assert!(!rendered.path_style);
        assert_eq!(rendered.part_bytes, 16 << 20);
    }

    #[test]
    fn values_past_admission_are_refused_naming_the_crd_field() {
        let bad = storage(
            "objectStore:\n  endpoint: http://s3.example.net/bucket\n  bucket: Partner_Files\n  prefix: /tenants/\n  credentialsSecretRef: {name: s3}\n  caSecretRef: {name: ca}\n  partBytes: 1024\n",
        );
        let message = check(&bad).unwrap_err().to_string();
        for field in [
            "spec.storage.objectStore.endpoint: \"http://s3.example.net/bucket\" must be scheme://host[:port] only",
            "spec.storage.objectStore.bucket: \"Partner_Files\" is not a bucket name",
            "spec.storage.objectStore.prefix: \"/tenants/\" must not start or end with '/'",
            "spec.storage.objectStore.caSecretRef: is set but the endpoint is plain http://",
            "spec.storage.objectStore.partBytes: 1024 is not between",
            "spec.storage.objectStore.endpoint: a plain http:// endpoint needs spec.storage.objectStore.allowPlainHttp: true",
        ] {
            assert!(message.contains(field), "{field}: {message}");
        }
        // Only CRD fields are named, never server.yaml's file fields.
        assert!(
            !message.contains("caFile") && !message.contains("KeyFile"),
            "{message}"
        );
    }

    #[test]
    fn plain_http_is_accepted_only_as_an_opt_in() {
        let plain = VALID.replace("https://", "http://");
        assert!(check(&storage(&plain)).is_err());
        let opted_in = format!("{plain}  allowPlainHttp: true\n");
        assert!(check(&storage(&opted_in)).is_ok());
        let rendered = server_storage(&storage(&opted_in)).object_store.unwrap();
        assert_eq!(rendered.insecure_opt_ins().len(), 1);
    }

    #[test]
    fn the_spool_is_an_empty_dir_limited_by_the_size() {
        let spool = spool_volume(&storage(&format!("size: 20Gi\n{VALID}")));
        assert_eq!(spool.name, "data");
        assert_eq!(
            spool.empty_dir.unwrap().size_limit,
            Some(Quantity("20Gi".into()))
        );
        assert!(
            spool_volume(&storage(VALID))
                .empty_dir
                .unwrap()
                .size_limit
                .is_none()
        );
    }
}
