//! `storage` in server.yaml: where the users' homes live. Absent (or empty): on the local file
//! system under `dataRoot`, as always. `storage.objectStore`: in an S3-compatible bucket, each
//! user confined to `<prefix>/<home>/`; `dataRoot` then holds only the local spool of uploads
//! in progress (docs/object-storage.md). In the contract crate because the operator will render
//! it from `spec.storage.objectStore`.

use serde::{Deserialize, Serialize};

use crate::FieldError;

/// Smallest part of a multipart upload S3 accepts (except the last part).
pub const MIN_PART_BYTES: u64 = 5 << 20;
/// Largest part S3 accepts.
pub const MAX_PART_BYTES: u64 = 5 << 30;
/// Default part size: uploads up to this size are one PUT, larger ones a multipart upload.
pub const DEFAULT_PART_BYTES: u64 = 8 << 20;
/// Region requests are signed for when none is given.
pub const DEFAULT_REGION: &str = "us-east-1";

/// `storage` in server.yaml.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StorageConfig {
    /// Homes in an S3-compatible bucket instead of under `dataRoot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_store: Option<ObjectStoreConfig>,
}

impl StorageConfig {
    pub fn is_default(&self) -> bool {
        self == &StorageConfig::default()
    }
}

/// `storage.objectStore`: the bucket, where in it the homes are, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectStoreConfig {
    /// `https://host[:port]` (or `http://` for a store on a trusted network: warned at start).
    pub endpoint: String,
    pub bucket: String,
    /// Key prefix every home is under (`tenants/prod`); empty: the bucket's root.
    #[serde(default)]
    pub prefix: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// File holding the access key id (a Secret volume); relative to server.yaml.
    pub access_key_id_file: String,
    /// File holding the secret access key; relative to server.yaml.
    pub secret_access_key_file: String,
    /// PEM bundle the endpoint's certificate is verified against instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Path-style requests (`https://host/bucket/key`), which MinIO, SeaweedFS and Ceph want;
    /// false: virtual-hosted style (`https://bucket.host/key`).
    #[serde(default = "yes")]
    pub path_style: bool,
    /// Part size of multipart uploads; smaller uploads are a single PUT.
    #[serde(default = "default_part_bytes")]
    pub part_bytes: u64,
}

fn default_region() -> String {
    DEFAULT_REGION.to_string()
}

fn yes() -> bool {
    true
}

fn default_part_bytes() -> u64 {
    DEFAULT_PART_BYTES
}

/// Why `endpoint` is not `http(s)://host[:port]`, if it is not.
fn endpoint_problem(endpoint: &str) -> Option<String> {
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"));
    let Some(rest) = rest else {
        return Some(format!("{endpoint:?} must start with https:// or http://"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Some(format!("{endpoint:?} has no host"));
    }
    if authority.contains(['/', '?', '#', '@']) || authority.chars().any(char::is_whitespace) {
        return Some(format!(
            "{endpoint:?} must be scheme://host[:port] only (no path, query or user)"
        ));
    }
    None
}

/// Why `bucket` is not a valid S3 bucket name (3-63 of a-z, 0-9, `.`, `-`, starting and ending
/// with a letter or digit), if it is not.
fn bucket_problem(bucket: &str) -> Option<String> {
    let valid_chars = bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    let ends_ok = bucket
        .chars()
        .next()
        .zip(bucket.chars().last())
        .is_some_and(|(a, z)| a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric());
    if !(3..=63).contains(&bucket.len()) || !valid_chars || !ends_ok {
        return Some(format!(
            "{bucket:?} is not a bucket name (3-63 characters of a-z, 0-9, '.' and '-', \
             starting and ending with a letter or digit)"
        ));
    }
    None
}

/// Why `prefix` is not a clean relative key prefix, if it is not: no leading or trailing `/`,
/// no empty, `.` or `..` component, no control character.
fn prefix_problem(prefix: &str) -> Option<String> {
    if prefix.is_empty() {
        return None;
    }
    if prefix.chars().any(char::is_control) {
        return Some("must not contain control characters".into());
    }
    if prefix.starts_with('/') || prefix.ends_with('/') {
        return Some(format!(
            "{prefix:?} must not start or end with '/' (write a/b, not /a/b/)"
        ));
    }
    if prefix
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Some(format!(
            "{prefix:?} must not contain empty, '.' or '..' components"
        ));
    }
    None
}

impl ObjectStoreConfig {
    /// Every invalid value, each naming its field under `storage.objectStore`.
    pub fn validate(&self, file: &str, errors: &mut Vec<FieldError>) {
        let mut err = |field: &str, message: String| {
            errors.push(FieldError::new(
                file,
                format!("storage.objectStore.{field}"),
                message,
            ));
        };
        if let Some(problem) = endpoint_problem(&self.endpoint) {
            err("endpoint", problem);
        }
        if let Some(problem) = bucket_problem(&self.bucket) {
            err("bucket", problem);
        }
        if let Some(problem) = prefix_problem(&self.prefix) {
            err("prefix", problem);
        }
        if self.region.trim().is_empty() {
            err("region", "must not be empty".into());
        }
        if self.access_key_id_file.trim().is_empty() {
            err("accessKeyIdFile", "must not be empty".into());
        }
        if self.secret_access_key_file.trim().is_empty() {
            err("secretAccessKeyFile", "must not be empty".into());
        }
        if let Some(ca) = &self.ca_file {
            if ca.trim().is_empty() {
                err("caFile", "must not be empty when set".into());
            } else if self.endpoint.starts_with("http://") {
                err(
                    "caFile",
                    "is set but the endpoint is plain http://: use https:// or remove caFile"
                        .into(),
                );
            }
        }
        if !(MIN_PART_BYTES..=MAX_PART_BYTES).contains(&self.part_bytes) {
            err(
                "partBytes",
                format!(
                    "{} is not between {MIN_PART_BYTES} (5 MiB) and {MAX_PART_BYTES} (5 GiB)",
                    self.part_bytes
                ),
            );
        }
    }

    /// Settings weaker than the hardened default, for a warning at start-up.
    pub fn insecure_opt_ins(&self) -> Vec<String> {
        if self.endpoint.starts_with("http://") {
            vec![format!(
                "storage.objectStore.endpoint {} is plain http: file contents and signed \
                 requests cross the network unencrypted",
                self.endpoint
            )]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> ObjectStoreConfig {
        ObjectStoreConfig {
            endpoint: "https://s3.example.net:9000".into(),
            bucket: "partner-files".into(),
            prefix: "tenants/prod".into(),
            region: default_region(),
            access_key_id_file: "/etc/sluice/s3/access-key-id".into(),
            secret_access_key_file: "/etc/sluice/s3/secret-access-key".into(),
            ca_file: None,
            path_style: true,
            part_bytes: DEFAULT_PART_BYTES,
        }
    }

    fn fields(config: &ObjectStoreConfig) -> Vec<String> {
        let mut errors = Vec::new();
        config.validate("server.yaml", &mut errors);
        errors.into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn a_valid_section_has_no_errors() {
        assert!(fields(&valid()).is_empty(), "{:?}", fields(&valid()));
        let root = ObjectStoreConfig {
            prefix: String::new(),
            ..valid()
        };
        assert!(fields(&root).is_empty());
    }

    #[test]
    fn each_invalid_value_is_named_by_its_field() {
        let cases: Vec<(ObjectStoreConfig, &str)> = vec![
            (
                ObjectStoreConfig {
                    endpoint: "s3.example.net".into(),
                    ..valid()
                },
                "storage.objectStore.endpoint: \"s3.example.net\" must start with https://",
            ),
            (
                ObjectStoreConfig {
                    endpoint: "https://host/bucket".into(),
                    ..valid()
                },
                "storage.objectStore.endpoint: \"https://host/bucket\" must be scheme://host[:port] only",
            ),
            (
                ObjectStoreConfig {
                    bucket: "Partner_Files".into(),
                    ..valid()
                },
                "storage.objectStore.bucket: \"Partner_Files\" is not a bucket name",
            ),
            (
                ObjectStoreConfig {
                    prefix: "/tenants/".into(),
                    ..valid()
                },
                "storage.objectStore.prefix: \"/tenants/\" must not start or end with '/'",
            ),
            (
                ObjectStoreConfig {
                    prefix: "tenants/../other".into(),
                    ..valid()
                },
                "storage.objectStore.prefix: \"tenants/../other\" must not contain empty, '.' or '..'",
            ),
            (
                ObjectStoreConfig {
                    prefix: "a//b".into(),
                    ..valid()
                },
                "storage.objectStore.prefix: \"a//b\" must not contain empty",
            ),
            (
                ObjectStoreConfig {
                    secret_access_key_file: " ".into(),
                    ..valid()
                },
                "storage.objectStore.secretAccessKeyFile: must not be empty",
            ),
            (
                ObjectStoreConfig {
                    endpoint: "http://10.0.0.5:8333".into(),
                    ca_file: Some("ca.pem".into()),
                    ..valid()
                },
                "storage.objectStore.caFile: is set but the endpoint is plain http://",
            ),
            (
                ObjectStoreConfig {
                    part_bytes: 1 << 20,
                    ..valid()
                },
                "storage.objectStore.partBytes: 1048576 is not between",
            ),
        ];
        for (config, wanted) in cases {
            let found = fields(&config);
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(
                found[0].starts_with(&format!("server.yaml: {wanted}")),
                "{found:?} does not start with {wanted:?}"
            );
        }
    }

    #[test]
    fn plain_http_is_allowed_but_warned_about() {
        let plain = ObjectStoreConfig {
            endpoint: "http://127.0.0.1:8333".into(),
            ..valid()
        };
        assert!(fields(&plain).is_empty());
        assert_eq!(plain.insecure_opt_ins().len(), 1);
        assert!(valid().insecure_opt_ins().is_empty());
    }
}
