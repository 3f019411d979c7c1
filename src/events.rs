//! `spec.events` rendered into the pod: the `events` section of server.yaml and the volumes
//! it names. A module of its own so that [`crate::render`] only calls two pure functions and
//! the path conventions (where each Secret lands) are stated once, next to each other.
//!
//! The operator never reads the sinks' Secrets (CA, HMAC key, NATS credentials): they are
//! mounted as Secret volumes, so they need no `sluice.dev/referable` label, the operator's
//! RBAC does not widen, and a rotated Secret reaches the pod by the kubelet's atomic swap
//! (the server reads the HMAC key at every delivery, NATS credentials at every connection).
//!
//! The outbox lives on `spec.events.outboxClaim` (a sub-directory per pod, `subPathExpr`) or,
//! without one, on an emptyDir: that survives a crash of the server process (the container
//! restarts in the same pod) but not the pod's deletion. It is never on the data volume: a
//! user whose home is the data root could read or fill it there.

use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath, ObjectFieldSelector,
    PersistentVolumeClaimVolumeSource, SecretVolumeSource, Volume, VolumeMount,
};
use sluice_config as config;

use crate::crd::{EventFilters, EventsSpec, SecretKeyRef};

/// Where the outbox is mounted in the pod.
pub const OUTBOX_DIR: &str = "/var/lib/sluice/events";
/// Each sink's Secrets are mounted beneath `<SINKS_DIR>/<sink name>/`.
pub const SINKS_DIR: &str = "/etc/sluice/events";
/// The environment variable holding the pod's name (the outbox claim's sub-directory).
const POD_NAME_ENV: &str = "SLUICE_POD_NAME";

fn ca_file(sink: &str) -> String {
    format!("{SINKS_DIR}/{sink}/ca/ca.crt")
}

fn hmac_file(sink: &str) -> String {
    format!("{SINKS_DIR}/{sink}/hmac/secret")
}

fn credentials_dir(sink: &str) -> String {
    format!("{SINKS_DIR}/{sink}/credentials")
}

fn filters(spec: Option<&EventFilters>) -> (Vec<String>, Vec<String>) {
    spec.map(|f| (f.types.clone(), f.path_prefixes.clone()))
        .unwrap_or_default()
}

fn attempts(value: Option<i32>) -> u32 {
    value
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(config::DEFAULT_MAX_ATTEMPTS)
}

/// The `events` section of server.yaml (pure). Timings are the server's defaults.
pub fn server_events(spec: &EventsSpec) -> config::EventsConfig {
    config::EventsConfig {
        outbox_dir: OUTBOX_DIR.to_string(),
        max_outbox_bytes: spec
            .max_outbox_bytes
            .and_then(|b| u64::try_from(b).ok())
            .unwrap_or(config::DEFAULT_MAX_OUTBOX_BYTES),
        webhooks: spec
            .webhooks
            .iter()
            .map(|hook| {
                let (types, path_prefixes) = filters(hook.filters.as_ref());
                config::WebhookConfig {
                    name: hook.name.clone(),
                    url: hook.url.clone(),
                    ca_file: ca_file(&hook.name),
                    secret_file: hmac_file(&hook.name),
                    types,
                    path_prefixes,
                    max_attempts: attempts(hook.max_attempts),
                    initial_backoff_ms: config::DEFAULT_INITIAL_BACKOFF_MS,
                    max_backoff_ms: config::DEFAULT_MAX_BACKOFF_MS,
                    timeout_seconds: config::DEFAULT_TIMEOUT_SECONDS,
                }
            })
            .collect(),
        nats: spec
            .nats
            .iter()
            .map(|nats| {
                let (types, path_prefixes) = filters(nats.filters.as_ref());
                config::NatsConfig {
                    name: nats.name.clone(),
                    url: nats.url.clone(),
                    subject: nats.subject.clone(),
                    stream: nats.stream.clone(),
                    ca_file: nats.ca_secret_ref.as_ref().map(|_| ca_file(&nats.name)),
                    credentials_dir: nats
                        .credentials_secret_ref
                        .as_ref()
                        .map(|_| credentials_dir(&nats.name)),
                    types,
                    path_prefixes,
                    max_attempts: attempts(nats.max_attempts),
                    initial_backoff_ms: config::DEFAULT_INITIAL_BACKOFF_MS,
                    max_backoff_ms: config::DEFAULT_MAX_BACKOFF_MS,
                    timeout_seconds: config::DEFAULT_TIMEOUT_SECONDS,
                }
            })
            .collect(),
    }
}

fn secret_items(volume: String, secret: &SecretKeyRef, default_key: &str, path: &str) -> Volume {
    Volume {
        name: volume,
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.name.clone()),
            items: Some(vec![KeyToPath {
                key: secret
                    .key
                    .clone()
                    .unwrap_or_else(|| default_key.to_string()),
                path: path.to_string(),
                mode: None,
            }]),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: String) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path,
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// What the pod needs for `spec.events`: volumes, mounts and environment (pure).
pub fn pod_parts(spec: &EventsSpec) -> (Vec<Volume>, Vec<VolumeMount>, Vec<EnvVar>) {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut env = Vec::new();
    match &spec.outbox_claim {
        Some(claim) => {
            volumes.push(Volume {
                name: "events-outbox".to_string(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: Some(false),
                }),
                ..Volume::default()
            });
            mounts.push(VolumeMount {
                name: "events-outbox".to_string(),
                mount_path: OUTBOX_DIR.to_string(),
                sub_path_expr: Some(format!("$({POD_NAME_ENV})")),
                read_only: Some(false),
                ..VolumeMount::default()
            });
            env.push(EnvVar {
                name: POD_NAME_ENV.to_string(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.name".to_string(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        }
        None => {
            volumes.push(Volume {
                name: "events-outbox".to_string(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            });
            mounts.push(VolumeMount {
                name: "events-outbox".to_string(),
                mount_path: OUTBOX_DIR.to_string(),
                read_only: Some(false),
                ..VolumeMount::default()
            });
        }
    }
    for hook in &spec.webhooks {
        let ca = format!("ev-{}-ca", hook.name);
        volumes.push(secret_items(
            ca.clone(),
            &hook.ca_secret_ref,
            "ca.crt",
            "ca.crt",
        ));
        mounts.push(mount(&ca, format!("{SINKS_DIR}/{}/ca", hook.name)));
        let hmac = format!("ev-{}-hmac", hook.name);
        volumes.push(secret_items(
            hmac.clone(),
            &hook.secret_ref,
            "secret",
            "secret",
        ));
        mounts.push(mount(&hmac, format!("{SINKS_DIR}/{}/hmac", hook.name)));
    }
    for nats in &spec.nats {
        if let Some(secret) = &nats.ca_secret_ref {
            let ca = format!("ev-{}-ca", nats.name);
            volumes.push(secret_items(ca.clone(), secret, "ca.crt", "ca.crt"));
            mounts.push(mount(&ca, format!("{SINKS_DIR}/{}/ca", nats.name)));
        }
        if let Some(secret) = &nats.credentials_secret_ref {
            let creds = format!("ev-{}-creds", nats.name);
            volumes.push(Volume {
                name: creds.clone(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.name.clone()),
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(mount(&creds, credentials_dir(&nats.name)));
        }
    }
    (volumes, mounts, env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{NatsSinkSpec, SecretNameRef, WebhookSinkSpec};

    fn spec() -> EventsSpec {
        EventsSpec {
            max_outbox_bytes: None,
            outbox_claim: None,
            failing_after_seconds: None,
            webhooks: vec![WebhookSinkSpec {
                name: "ingest".into(),
                url: "https://ingest.example/hook".into(),
                ca_secret_ref: SecretKeyRef {
                    name: "ingest-ca".into(),
                    key: None,
                },
                secret_ref: SecretKeyRef {
                    name: "ingest-hmac".into(),
                    key: Some("key".into()),
                },
                filters: Some(EventFilters {
                    types: vec!["dev.sluice.file.uploaded".into()],
                    path_prefixes: vec!["/a/".into()],
                }),
                max_attempts: Some(5),
            }],
            nats: vec![NatsSinkSpec {
                name: "bus".into(),
                url: "nats://nats.default:4222".into(),
                subject: "sluice.events".into(),
                stream: Some("SLUICE".into()),
                ca_secret_ref: None,
                credentials_secret_ref: Some(SecretNameRef {
                    name: "nats-creds".into(),
                }),
                filters: None,
                max_attempts: None,
            }],
        }
    }

    #[test]
    fn server_yaml_names_the_mounted_files_and_is_valid() {
        let events = server_events(&spec());
        assert_eq!(events.outbox_dir, OUTBOX_DIR);
        assert_eq!(events.max_outbox_bytes, 64 << 20);
        let hook = &events.webhooks[0];
        assert_eq!(hook.ca_file, "/etc/sluice/events/ingest/ca/ca.crt");
        assert_eq!(hook.secret_file, "/etc/sluice/events/ingest/hmac/secret");
        assert_eq!(hook.types, vec!["dev.sluice.file.uploaded".to_string()]);
        assert_eq!(hook.max_attempts, 5);
        assert_eq!(hook.initial_backoff_ms, 1000);
        let nats = &events.nats[0];
        assert_eq!(nats.ca_file, None);
        assert_eq!(
            nats.credentials_dir.as_deref(),
            Some("/etc/sluice/events/bus/credentials")
        );
        assert_eq!(nats.max_attempts, 20);
        let mut errors = Vec::new();
        events.validate("server.yaml", "/data", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn every_named_file_is_mounted_from_its_secret() {
        let (volumes, mounts, env) = pod_parts(&spec());
        let events = server_events(&spec());
        let files = [
            events.webhooks[0].ca_file.clone(),
            events.webhooks[0].secret_file.clone(),
            events.nats[0].credentials_dir.clone().unwrap() + "/token",
        ];
        for file in files {
            assert!(
                mounts.iter().any(|m| file.starts_with(&m.mount_path)),
                "{file} is not under a mount"
            );
        }
        let hmac = volumes.iter().find(|v| v.name == "ev-ingest-hmac").unwrap();
        let source = hmac.secret.as_ref().unwrap();
        assert_eq!(source.secret_name.as_deref(), Some("ingest-hmac"));
        assert_eq!(source.items.as_ref().unwrap()[0].key, "key");
        assert_eq!(source.items.as_ref().unwrap()[0].path, "secret");
        let outbox = volumes.iter().find(|v| v.name == "events-outbox").unwrap();
        assert!(outbox.empty_dir.is_some());
        assert!(env.is_empty());
        assert!(volumes.iter().all(|v| v.name.len() <= 63));
    }

    #[test]
    fn an_outbox_claim_gives_each_pod_its_own_directory() {
        let mut with_claim = spec();
        with_claim.outbox_claim = Some("events-rwx".into());
        let (volumes, mounts, env) = pod_parts(&with_claim);
        let outbox = volumes.iter().find(|v| v.name == "events-outbox").unwrap();
        assert_eq!(
            outbox.persistent_volume_claim.as_ref().unwrap().claim_name,
            "events-rwx"
        );
        let mount = mounts.iter().find(|m| m.name == "events-outbox").unwrap();
        assert_eq!(mount.sub_path_expr.as_deref(), Some("$(SLUICE_POD_NAME)"));
        assert_eq!(env[0].name, "SLUICE_POD_NAME");
    }
}
