//! Pure builders of every child object of a FileTransferServer: the rendered `server.yaml`
//! and `users.yaml`, ConfigMap, Secrets, StatefulSet, Services, NetworkPolicy and
//! PodDisruptionBudget. No I/O: the controller feeds them what it read and applies the result.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, HTTPGetAction, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, Secret, SecretProjection,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sluice_config as config;

use crate::crd::{FileTransferServer, ServedProtocol, ServiceType, TlsSource};

/// Ports inside the pod: unprivileged, so the server runs as non-root.
pub const CONTAINER_EXPLICIT: i32 = 2121;
pub const CONTAINER_IMPLICIT: i32 = 2990;
pub const CONTAINER_SFTP: i32 = 2222;
pub const CONTAINER_HEALTH: i32 = 8080;
/// Numeric non-root UID/GID of the server image.
pub const SERVER_UID: i64 = 10001;
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/sluice-dev/sluice-server:",
    env!("CARGO_PKG_VERSION")
);

const CONFIG_DIR: &str = "/etc/sluice/config";
const USERS_DIR: &str = "/etc/sluice/users";
const TLS_DIR: &str = "/etc/sluice/tls";
const DATA_DIR: &str = "/data";
const SSH_DIR: &str = "/etc/sluice/ssh";
const BAN_SYNC_DIR: &str = "/etc/sluice/ban-sync";
/// The quarantine of refused uploads: its own volume, outside dataRoot (no user reaches it).
pub const QUARANTINE_DIR: &str = "/var/lib/sluice/quarantine";
/// Where the clamd sidecar and the server share clamd's socket (an `emptyDir`).
const CLAMD_SOCKET_DIR: &str = "/run/clamav";
/// The clamd sidecar's socket, as the server's `scanning.clamd` names it.
pub const CLAMD_SIDECAR_ADDRESS: &str = "unix:/run/clamav/clamd.sock";
/// Key of the bearer token in the ban-sync Secret (bans across replicas, docs/bans.md).
pub const BAN_SYNC_TOKEN: &str = "token";
/// Key of a users.yaml shard in its Secret.
pub const USERS_KEY: &str = "users.yaml";
/// Annotation of shard 0: how many users.yaml shards the server has.
pub const SHARD_COUNT_ANNOTATION: &str = "sluice.dev/users-shards";
/// Key of the password digest key in its Secret.
pub const DIGEST_KEY: &str = "key";
/// Key of the ed25519 host key in the SSH host key Secret.
pub const SSH_HOST_KEY: &str = "ssh_host_ed25519_key";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("metadata.name or metadata.namespace is missing")]
    MissingMetadata,
    #[error("cannot render {file}: {message}")]
    Yaml { file: &'static str, message: String },
    #[error("{field}: {message}")]
    InvalidField {
        field: &'static str,
        message: String,
    },
    /// Budgets or limits the server would refuse, each `spec.security.<field>: <why>`.
    #[error("{}", fields.join("; "))]
    InvalidSecurity { fields: Vec<String> },
}

/// Most passive ports one server may pin (the CRD's CEL rule says the same).
pub const MAX_PASSIVE_PORTS: i32 = 100;

/// The passive port range, checked again here although the CRD's schema and CEL rules already
/// refuse a bad one: every port becomes a container and a Service port, so a range that got past
/// admission (a CRD installed without its rules, an object stored before them) must not make
/// the operator build millions of ports (found by the `operator_specs` fuzz target).
pub fn passive_ports(
    passive: &crate::crd::PassiveSpec,
) -> Result<std::ops::RangeInclusive<i32>, RenderError> {
    let (start, end) = (passive.port_start, passive.port_end);
    let within = |port: i32| (1024..=65535).contains(&port);
    if !within(start) || !within(end) || end < start || end - start >= MAX_PASSIVE_PORTS {
        return Err(RenderError::InvalidField {
            field: "spec.passive",
            message: format!(
                "ports {start}..{end} must lie within 1024..65535, end >= start, \
                 and hold at most {MAX_PASSIVE_PORTS} ports"
            ),
        });
    }
    Ok(start..=end)
}

/// Names of the children of one server.
pub struct Names {
    pub server: String,
    pub namespace: String,
}

impl Names {
    pub fn of(fts: &FileTransferServer) -> Result<Names, RenderError> {
        Ok(Names {
            server: fts
                .metadata
                .name
                .clone()
                .ok_or(RenderError::MissingMetadata)?,
            namespace: fts
                .metadata
                .namespace
                .clone()
                .ok_or(RenderError::MissingMetadata)?,
        })
    }
    pub fn config_map(&self) -> String {
        format!("{}-config", self.server)
    }
    pub fn users_secret(&self) -> String {
        format!("{}-users", self.server)
    }
    /// The Secret of users.yaml shard `index`: shard 0 keeps the name of the single users
    /// Secret of earlier versions.
    pub fn users_shard(&self, index: usize) -> String {
        match index {
            0 => self.users_secret(),
            _ => format!("{}-users-{index}", self.server),
        }
    }
    pub fn digest_key_secret(&self) -> String {
        format!("{}-digest-key", self.server)
    }
    pub fn tls_secret(&self) -> String {
        format!("{}-tls", self.server)
    }
    pub fn ca_secret(&self) -> String {
        format!("{}-ca", self.server)
    }
    pub fn ssh_host_key_secret(&self) -> String {
        format!("{}-ssh-host-keys", self.server)
    }
    pub fn ban_sync_secret(&self) -> String {
        format!("{}-ban-sync", self.server)
    }
    pub fn headless(&self) -> String {
        format!("{}-headless", self.server)
    }
    pub fn pod(&self, ordinal: i32) -> String {
        format!("{}-{ordinal}", self.server)
    }
}

pub fn selector_labels(fts: &FileTransferServer) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "sluice-server".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), fts.name_any()),
    ])
}

fn labels(fts: &FileTransferServer) -> BTreeMap<String, String> {
    let mut labels = selector_labels(fts);
    labels.insert(
        "app.kubernetes.io/managed-by".to_string(),
        "sluice-operator".to_string(),
    );
    labels
}

fn owner(fts: &FileTransferServer) -> Vec<OwnerReference> {
    fts.controller_owner_ref(&()).into_iter().collect()
}

fn meta(fts: &FileTransferServer, names: &Names, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels(fts)),
        owner_references: Some(owner(fts)),
        ..ObjectMeta::default()
    }
}

fn serves(fts: &FileTransferServer, protocol: ServedProtocol) -> bool {
    fts.spec.protocols.contains(&protocol)
}

fn serves_ftps(fts: &FileTransferServer) -> bool {
    serves(fts, ServedProtocol::FtpsExplicit) || serves(fts, ServedProtocol::FtpsImplicit)
}

/// Overrides `target` with a CRD value that fits its type; one that does not (a negative
/// number, only possible past admission: the schema's minimums refuse it) keeps the default.
fn set<T: TryFrom<V>, V: Copy>(target: &mut T, value: Option<V>) {
    if let Some(v) = value.and_then(|v| T::try_from(v).ok()) {
        *target = v;
    }
}

/// The budgets and connection limits of `spec.security`, checked with the server's own rules:
/// the CRD's schema and CEL rules refuse bad values, but an object stored before them (or a
/// CRD installed without them) must not give the pods a server.yaml they refuse at start.
/// Every error names its field under `spec.security`.
pub fn security_settings(fts: &FileTransferServer) -> Result<(), RenderError> {
    let rendered = server_config(fts, None, &BTreeMap::new());
    let fields: Vec<String> = rendered
        .validate("server.yaml")
        .into_iter()
        .filter(|e| {
            ["budgets.", "limits.", "scanning."]
                .iter()
                .any(|prefix| e.field.starts_with(prefix))
        })
        .map(|e| match e.field.strip_prefix("scanning.") {
            Some(field) => format!("spec.scanning.{field}: {}", e.message),
            None => format!("spec.security.{}: {}", e.field, e.message),
        })
        .collect();
    if fields.is_empty() {
        Ok(())
    } else {
        Err(RenderError::InvalidSecurity { fields })
    }
}

/// The server.yaml the pods run with.
pub fn server_config(
    fts: &FileTransferServer,
    advertised: Option<&str>,
    per_pod: &BTreeMap<String, String>,
) -> config::ServerConfig {
    let spec = &fts.spec;
    let mut limits = config::Limits::default();
    if let Some(l) = &spec.security.limits {
        set(&mut limits.max_sessions, l.max_sessions);
        set(&mut limits.max_sessions_per_ip, l.max_sessions_per_ip);
        set(&mut limits.max_sessions_per_user, l.max_sessions_per_user);
        set(&mut limits.max_auth_attempts, l.max_auth_attempts);
        set(
            &mut limits.new_connections_per_second,
            l.new_connections_per_second,
        );
        set(&mut limits.new_connection_burst, l.new_connection_burst);
        set(
            &mut limits.new_sessions_per_user_per_second,
            l.new_sessions_per_user_per_second,
        );
        set(
            &mut limits.new_session_burst_per_user,
            l.new_session_burst_per_user,
        );
        set(&mut limits.ipv6_prefix_length, l.ipv6_prefix_length);
    }
    let mut budgets = config::Budgets::default();
    if let Some(b) = &spec.security.budgets {
        set(
            &mut budgets.max_open_handles_per_connection,
            b.max_open_handles_per_connection,
        );
        set(
            &mut budgets.max_open_handles_per_user,
            b.max_open_handles_per_user,
        );
        set(
            &mut budgets.max_file_work_per_user,
            b.max_file_work_per_user,
        );
        set(&mut budgets.max_file_work, b.max_file_work);
        set(
            &mut budgets.max_queued_reply_bytes,
            b.max_queued_reply_bytes,
        );
        set(
            &mut budgets.max_pending_write_bytes,
            b.max_pending_write_bytes,
        );
        set(&mut budgets.max_listing_entries, b.max_listing_entries);
        set(
            &mut budgets.max_queued_control_lines,
            b.max_queued_control_lines,
        );
    }
    let mut timeouts = config::Timeouts::default();
    if let Some(t) = &spec.security.timeouts {
        set(&mut timeouts.login_seconds, t.login_seconds);
        set(&mut timeouts.idle_seconds, t.idle_seconds);
        set(&mut timeouts.data_connect_seconds, t.data_connect_seconds);
        set(&mut timeouts.data_idle_seconds, t.data_idle_seconds);
    }
    let cipher_suites = spec.tls.cipher_suites.clone().unwrap_or_else(|| {
        config::DEFAULT_CIPHER_SUITES
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    config::ServerConfig {
        api_version: config::API_VERSION.to_string(),
        kind: "ServerConfig".to_string(),
        data_root: DATA_DIR.to_string(),
        // A directory: every users.yaml shard projected into it (see `crate::shards`).
        users_file: USERS_DIR.to_string(),
        listeners: config::Listeners {
            ftps_explicit: serves(fts, ServedProtocol::FtpsExplicit)
                .then(|| format!("0.0.0.0:{CONTAINER_EXPLICIT}")),
            ftps_implicit: serves(fts, ServedProtocol::FtpsImplicit)
                .then(|| format!("0.0.0.0:{CONTAINER_IMPLICIT}")),
            health: Some(format!("0.0.0.0:{CONTAINER_HEALTH}")),
            sftp: serves(fts, ServedProtocol::Sftp).then(|| format!("0.0.0.0:{CONTAINER_SFTP}")),
        },
        tls: config::TlsConfig {
            cert_file: format!("{TLS_DIR}/tls.crt"),
            key_file: format!("{TLS_DIR}/tls.key"),
            cipher_suites,
            client_certificates: match spec.tls.client_certificates {
                crate::crd::ClientCertificates::None => config::ClientCertificateMode::None,
                crate::crd::ClientCertificates::Optional => config::ClientCertificateMode::Optional,
                crate::crd::ClientCertificates::Required => config::ClientCertificateMode::Required,
            },
            client_ca_file: spec
                .tls
                .client_ca_secret
                .as_ref()
                .map(|_| "/etc/sluice/client-ca/ca.crt".to_string()),
            require_session_resumption: true,
        },
        passive: config::PassiveConfig {
            port_start: u16::try_from(spec.passive.port_start).unwrap_or(30000),
            port_end: u16::try_from(spec.passive.port_end).unwrap_or(30019),
            advertised_address: spec
                .passive
                .advertised_address
                .as_deref()
                .or(advertised)
                .and_then(|a| a.parse().ok()),
            advertised_address_by_host: per_pod
                .iter()
                .filter_map(|(pod, address)| Some((pod.clone(), address.parse().ok()?)))
                .collect(),
        },
        active_mode: config::ActiveModeConfig {
            enabled: spec.security.active_mode,
        },
        limits,
        timeouts,
        uploads: config::Uploads::default(),
        audit: config::AuditConfig::default(),
        reload: config::ReloadConfig::default(),
        bans: ban_config(fts),
        // Pods of the StatefulSet are <name>-0, <name>-1, ...: only the first runs retention,
        // so replicas on a shared volume never race to delete the same files.
        quotas: config::QuotaConfig::default(),
        storage: crate::object_store::server_storage(&spec.storage),
        retention: config::RetentionConfig {
            replica: config::RetentionReplica::OrdinalZero,
            ..config::RetentionConfig::default()
        },
        passwords: config::PasswordsConfig {
            max_age_days: spec
                .security
                .password_policy
                .max_age_days
                .and_then(|days| u32::try_from(days).ok()),
            verified_cache_seconds: spec
                .security
                .password_policy
                .verified_cache_seconds
                .and_then(|seconds| u32::try_from(seconds).ok()),
        },
        budgets,
        ssh: config::SshConfig {
            host_key_files: if serves(fts, ServedProtocol::Sftp) {
                vec![format!("{SSH_DIR}/{SSH_HOST_KEY}")]
            } else {
                Vec::new()
            },
            ..config::SshConfig::default()
        },
        // The server enforces the allowlist again (after a PROXY header, on the client's
        // address), so it holds where the NetworkPolicy cannot see the client.
        allowed_cidrs: spec.allowed_cidrs.clone(),
        proxy_protocol: spec
            .exposure
            .proxy_protocol
            .as_ref()
            .map(|p| config::ProxyProtocolConfig {
                enabled: p.enabled,
                trusted_proxies: p.trusted_proxies.clone(),
                header_timeout_ms: p
                    .header_timeout_ms
                    .and_then(|ms| u64::try_from(ms).ok())
                    .unwrap_or(config::DEFAULT_PROXY_HEADER_TIMEOUT_MS),
            })
            .unwrap_or_default(),
        events: spec.events.as_ref().map(crate::events::server_events),
        scanning: spec.scanning.as_ref().map(scanning_config),
    }
}

/// server.yaml `scanning` from `spec.scanning`: the sidecar's socket or the given address, the
/// quarantine volume, and the policy fields (unset ones keep the server's defaults).
fn scanning_config(scanning: &crate::crd::ScanningSpec) -> config::ScanningConfig {
    let clamd = match (&scanning.clamd, &scanning.sidecar) {
        (Some(address), _) => address.clone(),
        (None, _) => CLAMD_SIDECAR_ADDRESS.to_string(),
    };
    let mut rendered = config::ScanningConfig::new(&clamd, QUARANTINE_DIR);
    rendered.on_infected = scanning.on_infected;
    rendered.on_scanner_error = scanning.on_scanner_error;
    rendered.on_too_large = scanning.on_too_large;
    set(&mut rendered.timeout_seconds, scanning.timeout_seconds);
    set(&mut rendered.max_file_bytes, scanning.max_file_bytes);
    rendered
}

/// A container's share of restricted Pod Security: non-root, no privilege escalation, every
/// capability dropped, the runtime's default seccomp profile.
fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

/// The quarantine volume and, with a sidecar, clamd's container and socket volume: what
/// `spec.scanning` adds to the pod. The server container gets `mounts`.
fn scanning_pod_parts(
    scanning: &crate::crd::ScanningSpec,
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<VolumeMount>,
) -> Option<Container> {
    volumes.push(match &scanning.quarantine_claim {
        Some(claim) => Volume {
            name: "quarantine".to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(false),
            }),
            ..Volume::default()
        },
        None => Volume {
            name: "quarantine".to_string(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    });
    mounts.push(mount("quarantine", QUARANTINE_DIR, false));
    let sidecar = scanning.sidecar.as_ref()?;
    volumes.push(Volume {
        name: "clamd-socket".to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    mounts.push(mount("clamd-socket", CLAMD_SOCKET_DIR, false));
    Some(Container {
        name: "clamd".to_string(),
        image: Some(sidecar.image.clone()),
        args: (!sidecar.args.is_empty()).then(|| sidecar.args.clone()),
        volume_mounts: Some(vec![mount("clamd-socket", CLAMD_SOCKET_DIR, false)]),
        resources: sidecar.resources.clone(),
        // Restricted Pod Security like the server, except the root file system: clamd and
        // freshclam write their database and temporary files into the image, whose user
        // (non-root) the image chooses.
        security_context: Some(restricted_security_context()),
        ..Container::default()
    })
}

/// An address from a Service's `status.loadBalancer.ingress`.
#[derive(Debug, Clone, PartialEq)]
pub enum IngressAddress {
    Ip(std::net::IpAddr),
    /// Load balancers known by name only (e.g. AWS): resolved by the controller.
    Hostname(String),
}

/// The address a load balancer reports for `service`: the first ingress IP, else the first
/// ingress hostname.
pub fn ingress_address(service: &Service) -> Option<IngressAddress> {
    let ingress = service
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?;
    ingress
        .iter()
        .find_map(|i| i.ip.as_deref()?.parse().ok().map(IngressAddress::Ip))
        .or_else(|| {
            ingress
                .iter()
                .find_map(|i| i.hostname.clone().map(IngressAddress::Hostname))
        })
}

/// The passive addresses pods advertise, and the Services whose address is still missing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PassiveAddresses {
    /// `passive.advertisedAddress`: the spec's, else the client Service's load balancer.
    pub shared: Option<String>,
    /// `passive.advertisedAddressByHost`: each pod's own Service's load balancer address.
    pub by_pod: BTreeMap<String, String>,
    /// LoadBalancer Services without an address yet (FTPS would advertise the pod's address).
    pub pending: Vec<String>,
}

/// Picks the passive addresses from the spec and the Services' load balancer addresses:
/// `client` is the client Service's, `per_pod` each pod's Service's (pod name → address).
/// An address in the spec wins for every pod; otherwise with per-pod Services each pod
/// advertises its own Service's address. A LoadBalancer Service that has no address yet is
/// pending when FTPS is served (SFTP needs no passive address).
pub fn passive_addresses(
    fts: &FileTransferServer,
    client: Option<&str>,
    per_pod: &BTreeMap<String, Option<String>>,
) -> PassiveAddresses {
    let spec = &fts.spec;
    if let Some(address) = &spec.passive.advertised_address {
        return PassiveAddresses {
            shared: Some(address.clone()),
            ..PassiveAddresses::default()
        };
    }
    let waits = serves_ftps(fts) && spec.exposure.service_type == ServiceType::LoadBalancer;
    let mut addresses = PassiveAddresses {
        shared: client.map(str::to_string),
        ..PassiveAddresses::default()
    };
    if spec.exposure.per_pod_services {
        for (pod, address) in per_pod {
            match address {
                Some(address) => {
                    addresses.by_pod.insert(pod.clone(), address.clone());
                }
                None if waits => addresses.pending.push(pod.clone()),
                None => {}
            }
        }
    } else if waits && client.is_none() {
        addresses.pending.push(fts.name_any());
    }
    addresses
}

/// Whether the server bans at all (and so shares bans between replicas).
pub fn bans_enabled(fts: &FileTransferServer) -> bool {
    fts.spec
        .security
        .bans
        .as_ref()
        .and_then(|b| b.enabled)
        .unwrap_or(true)
}

/// `bans` of server.yaml: the spec's settings over the server's defaults, and the token file
/// of the `/bans` endpoints through which the operator shares bans between replicas.
fn ban_config(fts: &FileTransferServer) -> config::BanConfig {
    let mut bans = config::BanConfig::default();
    if let Some(spec) = &fts.spec.security.bans {
        let seconds = |value: Option<i32>, default: u64| {
            value.and_then(|v| u64::try_from(v).ok()).unwrap_or(default)
        };
        bans.enabled = spec.enabled.unwrap_or(true);
        bans.threshold = spec
            .threshold
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(bans.threshold);
        bans.window_seconds = seconds(spec.window_seconds, bans.window_seconds);
        bans.base_ban_seconds = seconds(spec.base_ban_seconds, bans.base_ban_seconds);
        bans.max_ban_seconds = seconds(spec.max_ban_seconds, bans.max_ban_seconds);
        bans.safelist = spec.safelist.clone();
    }
    if bans.enabled {
        bans.sync.token_file = Some(format!("{BAN_SYNC_DIR}/{BAN_SYNC_TOKEN}"));
    }
    bans
}

pub fn to_yaml<T: serde::Serialize>(file: &'static str, value: &T) -> Result<String, RenderError> {
    serde_saphyr::to_string(value).map_err(|e| RenderError::Yaml {
        file,
        message: e.to_string(),
    })
}

pub fn config_map(fts: &FileTransferServer, server_yaml: &str) -> Result<ConfigMap, RenderError> {
    let names = Names::of(fts)?;
    Ok(ConfigMap {
        metadata: meta(fts, &names, names.config_map()),
        data: Some(BTreeMap::from([(
            "server.yaml".to_string(),
            server_yaml.to_string(),
        )])),
        ..ConfigMap::default()
    })
}

/// The Secret of users.yaml shard `index` of `count` (argon2id hashes and public keys only,
/// never passwords). Shard 0 also records the count.
pub fn users_shard_secret(
    fts: &FileTransferServer,
    index: usize,
    count: usize,
    users_yaml: &str,
) -> Result<Secret, RenderError> {
    let names = Names::of(fts)?;
    let mut metadata = meta(fts, &names, names.users_shard(index));
    let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert("sluice.dev/users-of".into(), names.server.clone());
    labels.insert("sluice.dev/users-shard".into(), index.to_string());
    if index == 0 {
        metadata.annotations = Some(BTreeMap::from([(
            SHARD_COUNT_ANNOTATION.to_string(),
            count.to_string(),
        )]));
    }
    Ok(Secret {
        metadata,
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            USERS_KEY.to_string(),
            ByteString(users_yaml.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    })
}

/// The Secret with the server's key for password version digests (never mounted).
pub fn digest_key_secret(fts: &FileTransferServer, key: &[u8]) -> Result<Secret, RenderError> {
    let names = Names::of(fts)?;
    Ok(Secret {
        metadata: meta(fts, &names, names.digest_key_secret()),
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            DIGEST_KEY.to_string(),
            ByteString(key.to_vec()),
        )])),
        ..Secret::default()
    })
}

/// Every users.yaml shard Secret projected into one directory as `users-ii.yaml`: shard 0 is
/// required, the others optional, so that the shard count changes without a new pod template
/// (and without a restart); the kubelet updates the directory as Secrets come and go.
fn users_volume(names: &Names) -> Volume {
    let sources = (0..crate::shards::MAX_SHARDS)
        .map(|index| k8s_openapi::api::core::v1::VolumeProjection {
            secret: Some(SecretProjection {
                name: names.users_shard(index),
                optional: (index > 0).then_some(true),
                items: Some(vec![KeyToPath {
                    key: USERS_KEY.to_string(),
                    path: format!("users-{index:02}.yaml"),
                    mode: None,
                }]),
            }),
            ..Default::default()
        })
        .collect();
    Volume {
        name: "users".to_string(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            default_mode: Some(0o440),
        }),
        ..Volume::default()
    }
}

/// A `kubernetes.io/tls` Secret (cert-manager compatible keys).
pub fn tls_secret(
    fts: &FileTransferServer,
    name: String,
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<Secret, RenderError> {
    let names = Names::of(fts)?;
    Ok(Secret {
        metadata: meta(fts, &names, name),
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_string(),
                ByteString(cert_pem.as_bytes().to_vec()),
            ),
            (
                "tls.key".to_string(),
                ByteString(key_pem.as_bytes().to_vec()),
            ),
            ("ca.crt".to_string(), ByteString(ca_pem.as_bytes().to_vec())),
        ])),
        ..Secret::default()
    })
}

/// The SSH host key Secret. The controller creates it once and never regenerates it, so clients'
/// known_hosts entries stay valid for the life of the server.
pub fn ssh_host_key_secret(
    fts: &FileTransferServer,
    private_key_openssh: &str,
) -> Result<Secret, RenderError> {
    let names = Names::of(fts)?;
    Ok(Secret {
        metadata: meta(fts, &names, names.ssh_host_key_secret()),
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            SSH_HOST_KEY.to_string(),
            ByteString(private_key_openssh.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    })
}

/// The Secret with the bearer token of the pods' `/bans` endpoints. Created once with a random
/// token; the operator reads it back to call the pods.
pub fn ban_sync_secret(fts: &FileTransferServer, token: &str) -> Result<Secret, RenderError> {
    let names = Names::of(fts)?;
    Ok(Secret {
        metadata: meta(fts, &names, names.ban_sync_secret()),
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            BAN_SYNC_TOKEN.to_string(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    })
}

fn secret_volume(name: &str, secret: String) -> Volume {
    Volume {
        name: name.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: port,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

fn http_probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(CONTAINER_HEALTH),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// The StatefulSet of server pods, restricted Pod Security throughout. `config_digest` is put
/// on the pod template only for changes the server cannot hot-reload (listeners).
pub fn stateful_set(
    fts: &FileTransferServer,
    restart_digest: &str,
) -> Result<StatefulSet, RenderError> {
    let names = Names::of(fts)?;
    let spec = &fts.spec;
    let tls_secret = match spec.tls.source {
        TlsSource::SecretRef => spec
            .tls
            .secret_name
            .clone()
            .unwrap_or_else(|| names.tls_secret()),
        _ => names.tls_secret(),
    };
    let mut ports = Vec::new();
    if serves(fts, ServedProtocol::FtpsExplicit) {
        ports.push(container_port("ftps", CONTAINER_EXPLICIT));
    }
    if serves(fts, ServedProtocol::FtpsImplicit) {
        ports.push(container_port("ftps-implicit", CONTAINER_IMPLICIT));
    }
    if serves(fts, ServedProtocol::Sftp) {
        ports.push(container_port("sftp", CONTAINER_SFTP));
    }
    ports.push(container_port("health", CONTAINER_HEALTH));
    if serves_ftps(fts) {
        for port in passive_ports(&spec.passive)? {
            ports.push(container_port(&format!("pasv-{port}"), port));
        }
    }
    let mut volumes = vec![
        Volume {
            name: "config".to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.config_map(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        users_volume(&names),
        secret_volume("tls", tls_secret),
    ];
    let mut mounts = vec![
        mount("config", CONFIG_DIR, true),
        mount("users", USERS_DIR, true),
        mount("tls", TLS_DIR, true),
        mount("data", DATA_DIR, false),
    ];
    if serves(fts, ServedProtocol::Sftp) {
        volumes.push(secret_volume("ssh", names.ssh_host_key_secret()));
        mounts.push(mount("ssh", SSH_DIR, true));
    }
    if bans_enabled(fts) {
        volumes.push(secret_volume("ban-sync", names.ban_sync_secret()));
        mounts.push(mount("ban-sync", BAN_SYNC_DIR, true));
    }
    if let Some(ca) = &spec.tls.client_ca_secret {
        volumes.push(secret_volume("client-ca", ca.clone()));
        mounts.push(mount("client-ca", "/etc/sluice/client-ca", true));
    }
    let clamd = spec
        .scanning
        .as_ref()
        .and_then(|scanning| scanning_pod_parts(scanning, &mut volumes, &mut mounts));
    let mut env = vec![EnvVar {
        name: "SLUICE_LOG_FORMAT".to_string(),
        value: Some("json".to_string()),
        ..EnvVar::default()
    }];
    if let Some(events) = &spec.events {
        let (more_volumes, more_mounts, more_env) = crate::events::pod_parts(events);
        volumes.extend(more_volumes);
        mounts.extend(more_mounts);
        env.extend(more_env);
    }
    if let Some(object_store) = &spec.storage.object_store {
        let (more_volumes, more_mounts) = crate::object_store::pod_parts(object_store);
        volumes.extend(more_volumes);
        mounts.extend(more_mounts);
    }
    let mut claim_templates = None;
    match &spec.storage.existing_claim {
        // Homes in a bucket: the data volume is only a per-pod spool (see
        // `crate::object_store`), so any number of replicas need no shared claim.
        _ if spec.storage.object_store.is_some() => {
            volumes.push(crate::object_store::spool_volume(&spec.storage));
        }
        Some(claim) => volumes.push(Volume {
            name: "data".to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(false),
            }),
            ..Volume::default()
        }),
        None => {
            claim_templates = Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".to_string()),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".to_string()]),
                    storage_class_name: spec.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            Quantity(spec.storage.size.clone().unwrap_or_else(|| "1Gi".into())),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]);
        }
    }
    let container = Container {
        name: "sluice-server".to_string(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| DEFAULT_IMAGE.to_string()),
        ),
        args: Some(vec![
            "run".to_string(),
            "--config".to_string(),
            format!("{CONFIG_DIR}/server.yaml"),
        ]),
        env: Some(env),
        ports: Some(ports),
        volume_mounts: Some(mounts),
        readiness_probe: Some(http_probe("/readyz", 5)),
        liveness_probe: Some(http_probe("/healthz", 10)),
        resources: Some(spec.pod.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(SecurityContext {
            run_as_user: Some(SERVER_UID),
            run_as_group: Some(SERVER_UID),
            read_only_root_filesystem: Some(true),
            ..restricted_security_context()
        }),
        ..Container::default()
    };
    // The operator's own keys are inserted last: the spec cannot override them (CEL refuses
    // them too).
    let mut template_annotations = spec.pod.annotations.clone();
    template_annotations.insert(
        "sluice.dev/restart-digest".to_string(),
        restart_digest.to_string(),
    );
    let mut pod_labels = spec.pod.labels.clone();
    pod_labels.extend(labels(fts));
    Ok(StatefulSet {
        metadata: meta(fts, &names, names.server.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(names.headless()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(fts)),
                ..LabelSelector::default()
            },
            pod_management_policy: Some("Parallel".to_string()),
            volume_claim_templates: claim_templates,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(template_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    containers: std::iter::once(container).chain(clamd).collect(),
                    volumes: Some(volumes),
                    node_selector: (!spec.pod.node_selector.is_empty())
                        .then(|| spec.pod.node_selector.clone()),
                    tolerations: (!spec.pod.tolerations.is_empty())
                        .then(|| spec.pod.tolerations.clone()),
                    affinity: spec.pod.affinity.clone(),
                    image_pull_secrets: (!spec.pod.image_pull_secrets.is_empty())
                        .then(|| spec.pod.image_pull_secrets.clone()),
                    priority_class_name: spec.pod.priority_class_name.clone(),
                    topology_spread_constraints: topology_spread(fts),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(SERVER_UID),
                        run_as_group: Some(SERVER_UID),
                        fs_group: Some(SERVER_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_string(),
                            localhost_profile: None,
                        }),
                        ..PodSecurityContext::default()
                    }),
                    termination_grace_period_seconds: Some(60),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    })
}

/// Requests without limits: enough for the scheduler to place the pod sensibly; a limit
/// would kill a server in the middle of transfers, and the server bounds itself (budgets).
fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".to_string())),
            ("memory".to_string(), Quantity("128Mi".to_string())),
        ])),
        ..ResourceRequirements::default()
    }
}

/// The spec's constraints, else with several replicas a best-effort spread over nodes.
fn topology_spread(fts: &FileTransferServer) -> Option<Vec<TopologySpreadConstraint>> {
    let spec = &fts.spec;
    if !spec.pod.topology_spread_constraints.is_empty() {
        return Some(spec.pod.topology_spread_constraints.clone());
    }
    (spec.replicas > 1).then(|| {
        vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "kubernetes.io/hostname".to_string(),
            when_unsatisfiable: "ScheduleAnyway".to_string(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(fts)),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        }]
    })
}

fn service_port(name: &str, port: i32, target: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(IntOrString::Int(target)),
        protocol: Some("TCP".to_string()),
        ..ServicePort::default()
    }
}

fn client_ports(fts: &FileTransferServer) -> Result<Vec<ServicePort>, RenderError> {
    let spec = &fts.spec;
    let mut ports = Vec::new();
    let node_port = spec.exposure.service_type == ServiceType::NodePort;
    let fixed = spec.exposure.node_ports.clone().unwrap_or_default();
    let control = |name: &str, port: i32, target: i32, fixed: Option<i32>| ServicePort {
        node_port: fixed.filter(|_| node_port),
        ..service_port(name, port, target)
    };
    if serves(fts, ServedProtocol::FtpsExplicit) {
        ports.push(control(
            "ftps",
            spec.ports.ftps_explicit,
            CONTAINER_EXPLICIT,
            fixed.ftps_explicit,
        ));
    }
    if serves(fts, ServedProtocol::FtpsImplicit) {
        ports.push(control(
            "ftps-implicit",
            spec.ports.ftps_implicit,
            CONTAINER_IMPLICIT,
            fixed.ftps_implicit,
        ));
    }
    if serves(fts, ServedProtocol::Sftp) {
        ports.push(control("sftp", spec.ports.sftp, CONTAINER_SFTP, fixed.sftp));
    }
    if serves_ftps(fts) {
        // Passive ports keep the same number outside and inside: the server advertises the
        // number it listens on, so behind a NodePort Service the node port is that number too.
        for port in passive_ports(&spec.passive)? {
            ports.push(ServicePort {
                node_port: node_port.then_some(port),
                ..service_port(&format!("pasv-{port}"), port, port)
            });
        }
    }
    Ok(ports)
}

/// The client Service (all pods) or, with `pod_ordinal`, the Service of one pod.
pub fn client_service(
    fts: &FileTransferServer,
    pod_ordinal: Option<i32>,
) -> Result<Service, RenderError> {
    let names = Names::of(fts)?;
    let spec = &fts.spec;
    let mut selector = selector_labels(fts);
    let name = match pod_ordinal {
        Some(ordinal) => {
            selector.insert(
                "statefulset.kubernetes.io/pod-name".to_string(),
                names.pod(ordinal),
            );
            names.pod(ordinal)
        }
        None => names.server.clone(),
    };
    let exposed = spec.exposure.service_type != ServiceType::ClusterIP;
    let mut metadata = meta(fts, &names, name);
    if !spec.exposure.annotations.is_empty() {
        metadata.annotations = Some(spec.exposure.annotations.clone());
    }
    let service_type = match spec.exposure.service_type {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    Ok(Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(service_type.to_string()),
            selector: Some(selector),
            ports: Some(client_ports(fts)?),
            external_traffic_policy: exposed
                .then(|| format!("{:?}", spec.exposure.external_traffic_policy)),
            load_balancer_source_ranges: (spec.exposure.service_type == ServiceType::LoadBalancer
                && !spec.allowed_cidrs.is_empty())
            .then(|| spec.allowed_cidrs.clone()),
            session_affinity: Some(if pod_ordinal.is_none() && spec.replicas > 1 {
                "ClientIP".to_string()
            } else {
                "None".to_string()
            }),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The headless Service that gives the StatefulSet's pods stable DNS names.
pub fn headless_service(fts: &FileTransferServer) -> Result<Service, RenderError> {
    let names = Names::of(fts)?;
    Ok(Service {
        metadata: meta(fts, &names, names.headless()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(selector_labels(fts)),
            ports: Some(vec![service_port(
                "health",
                CONTAINER_HEALTH,
                CONTAINER_HEALTH,
            )]),
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// Ingress only on the served ports, only from the allowlist (every address when empty); the
/// health port from anywhere in the cluster for probes and metrics.
pub fn network_policy(fts: &FileTransferServer) -> Result<NetworkPolicy, RenderError> {
    let names = Names::of(fts)?;
    let spec = &fts.spec;
    // Behind the PROXY protocol the pods see only the proxies' addresses (and accept nothing
    // else); the server checks allowedCidrs on the client's address from the header.
    let proxies = spec
        .exposure
        .proxy_protocol
        .as_ref()
        .filter(|p| p.enabled)
        .map(|p| {
            p.trusted_proxies
                .iter()
                .filter_map(|c| config::parse_cidr(c).ok())
                .map(|net| net.to_string())
                .collect::<Vec<_>>()
        });
    let cidrs: Vec<String> = if let Some(proxies) = proxies {
        proxies
    } else if spec.allowed_cidrs.is_empty() {
        vec!["0.0.0.0/0".to_string(), "::/0".to_string()]
    } else {
        spec.allowed_cidrs.clone()
    };
    let tcp = |port: i32, end: Option<i32>| NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        end_port: end,
        protocol: Some("TCP".to_string()),
    };
    let mut ports = Vec::new();
    if serves(fts, ServedProtocol::FtpsExplicit) {
        ports.push(tcp(CONTAINER_EXPLICIT, None));
    }
    if serves(fts, ServedProtocol::FtpsImplicit) {
        ports.push(tcp(CONTAINER_IMPLICIT, None));
    }
    if serves(fts, ServedProtocol::Sftp) {
        ports.push(tcp(CONTAINER_SFTP, None));
    }
    if serves_ftps(fts) {
        let passive = passive_ports(&spec.passive)?;
        ports.push(tcp(*passive.start(), Some(*passive.end())));
    }
    let client_rule = NetworkPolicyIngressRule {
        from: Some(
            cidrs
                .into_iter()
                .map(|cidr| NetworkPolicyPeer {
                    ip_block: Some(IPBlock { cidr, except: None }),
                    ..NetworkPolicyPeer::default()
                })
                .collect(),
        ),
        ports: Some(ports),
    };
    let health_rule = NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector::default()),
            ..NetworkPolicyPeer::default()
        }]),
        ports: Some(vec![tcp(CONTAINER_HEALTH, None)]),
    };
    Ok(NetworkPolicy {
        metadata: meta(fts, &names, names.server.clone()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(fts)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(vec![client_rule, health_rule]),
            ..NetworkPolicySpec::default()
        }),
    })
}

/// At most one pod down at a time for voluntary disruptions.
pub fn pod_disruption_budget(fts: &FileTransferServer) -> Result<PodDisruptionBudget, RenderError> {
    let names = Names::of(fts)?;
    Ok(PodDisruptionBudget {
        metadata: meta(fts, &names, names.server.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(fts)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn fixture(yaml: &str) -> FileTransferServer {
        let mut fts: FileTransferServer = serde_saphyr::from_str(yaml).expect("fixture parses");
        fts.metadata.uid = Some("0c6d5f3e-1111-2222-3333-444455556666".to_string());
        fts
    }

    const BASIC: &str = "apiVersion: sluice.dev/v1alpha1
kind: FileTransferServer
metadata:
  name: partners
  namespace: transfer
spec:
  protocols: [ftpsExplicit, ftpsImplicit]
  passive:
    portStart: 30000
    portEnd: 30004
  allowedCidrs: [203.0.113.0/24]
  exposure:
    serviceType: LoadBalancer
";

    #[test]
    fn object_storage_renders_the_section_mounts_the_secret_and_needs_no_claim() {
        let fts = fixture(&format!(
            "{BASIC}  replicas: 2\n  storage:\n    size: 4Gi\n    objectStore:\n      endpoint: https://s3.example.net\n      bucket: partner-files\n      prefix: tenants/prod\n      credentialsSecretRef: {{name: s3-credentials}}\n      caSecretRef: {{name: s3-ca}}\n"
        ));
        let rendered =
            to_yaml("server.yaml", &server_config(&fts, None, &BTreeMap::new())).unwrap();
        let parsed = config::ServerConfig::parse("server.yaml", &rendered).unwrap();
        let store = parsed
            .storage
            .object_store
            .as_ref()
            .expect("objectStore rendered");
        assert_eq!(
            (store.bucket.as_str(), store.prefix.as_str()),
            ("partner-files", "tenants/prod")
        );
        assert!(parsed.insecure_opt_ins().is_empty());
        let sts = stateful_set(&fts, "d").unwrap();
        let spec = sts.spec.unwrap();
        // No claim template: a second replica needs no ReadWriteMany claim.
        assert!(spec.volume_claim_templates.is_none());
        let pod = spec.template.spec.unwrap();
        let volumes = pod.volumes.unwrap();
        let data = volumes.iter().find(|v| v.name == "data").unwrap();
        assert_eq!(
            data.empty_dir.as_ref().unwrap().size_limit,
            Some(Quantity("4Gi".into()))
        );
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        // Every file server.yaml names lies in a mounted Secret volume.
        for file in [
            &store.access_key_id_file,
            &store.secret_access_key_file,
            store.ca_file.as_ref().unwrap(),
        ] {
            let (dir, name) = file.rsplit_once('/').unwrap();
            let mount = mounts.iter().find(|m| m.mount_path == dir).expect(dir);
            assert_eq!(mount.read_only, Some(true));
            let volume = volumes.iter().find(|v| v.name == mount.name).unwrap();
            let items = volume.secret.as_ref().unwrap().items.as_ref().unwrap();
            assert!(items.iter().any(|i| i.path == name), "{file}");
        }
        // Local storage keeps its claim template and renders no storage section.
        let local = fixture(BASIC);
        assert!(
            stateful_set(&local, "d")
                .unwrap()
                .spec
                .unwrap()
                .volume_claim_templates
                .is_some()
        );
        assert!(
            server_config(&local, None, &BTreeMap::new())
                .storage
                .is_default()
        );
    }

    #[test]
    fn the_verified_password_cache_is_rendered_only_when_set() {
        let set = fixture(&format!(
            "{BASIC}  security:\n    passwordPolicy:\n      verifiedCacheSeconds: 0\n"
        ));
        let rendered =
            to_yaml("server.yaml", &server_config(&set, None, &BTreeMap::new())).unwrap();
        let parsed = config::ServerConfig::parse("server.yaml", &rendered).unwrap();
        assert_eq!(parsed.passwords.verified_cache_seconds, Some(0));
        assert!(parsed.passwords.verified_cache().is_zero());
        let unset = server_config(&fixture(BASIC), None, &BTreeMap::new());
        assert_eq!(unset.passwords.verified_cache_seconds, None);
        assert!(!unset.passwords.verified_cache().is_zero());
    }

    #[test]
    fn every_users_shard_is_projected_into_the_directory_the_server_reads() {
        let fts = fixture(BASIC);
        let set = stateful_set(&fts, "d").unwrap();
        let pod = set.spec.unwrap().template.spec.unwrap();
        let users = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "users")
            .unwrap();
        let sources = users.projected.unwrap().sources.unwrap();
        assert_eq!(sources.len(), crate::shards::MAX_SHARDS);
        let first = sources[0].secret.as_ref().unwrap();
        assert_eq!(first.name, "partners-users");
        assert_eq!(first.optional, None, "shard 0 is required");
        let third = sources[2].secret.as_ref().unwrap();
        assert_eq!(third.name, "partners-users-2");
        assert_eq!(third.optional, Some(true));
        assert_eq!(third.items.as_ref().unwrap()[0].path, "users-02.yaml");
        assert_eq!(
            server_config(&fts, None, &BTreeMap::new()).users_file,
            USERS_DIR
        );
        let shard = users_shard_secret(&fts, 0, 4, "x").unwrap();
        assert_eq!(
            shard.metadata.annotations.unwrap()[SHARD_COUNT_ANNOTATION],
            "4"
        );
        assert_eq!(
            shard.metadata.labels.unwrap()["sluice.dev/users-of"],
            "partners"
        );
    }

    #[test]
    fn pod_settings_are_rendered_and_cannot_replace_the_operators_labels() {
        let fts = fixture(&format!(
            "{BASIC}    perPodServices: true\n  replicas: 2\n  storage: {{existingClaim: shared}}\n  pod:\n    labels: {{mesh: 'off', app.kubernetes.io/instance: other}}\n    annotations: {{sidecar.istio.io/inject: 'false'}}\n    imagePullSecrets: [{{name: registry}}]\n    priorityClassName: transfer-critical\n"
        ));
        let set = stateful_set(&fts, "d").unwrap();
        let template = set.spec.unwrap().template;
        let meta = template.metadata.unwrap();
        let labels = meta.labels.unwrap();
        assert_eq!(labels["mesh"], "off");
        assert_eq!(labels["app.kubernetes.io/instance"], "partners");
        let annotations = meta.annotations.unwrap();
        assert_eq!(annotations["sidecar.istio.io/inject"], "false");
        assert!(annotations.contains_key("sluice.dev/restart-digest"));
        let pod = template.spec.unwrap();
        assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "registry");
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("transfer-critical")
        );
        let spread = pod.topology_spread_constraints.unwrap();
        assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
        assert_eq!(spread[0].when_unsatisfiable, "ScheduleAnyway");
        let requests = pod.containers[0]
            .resources
            .clone()
            .unwrap()
            .requests
            .unwrap();
        assert_eq!(requests["memory"].0, "128Mi");
        // One replica: no spread constraint.
        let single = stateful_set(&fixture(BASIC), "d").unwrap();
        let pod = single.spec.unwrap().template.spec.unwrap();
        assert!(pod.topology_spread_constraints.is_none());
    }

    #[test]
    fn node_port_services_expose_each_passive_port_on_the_node_port_of_its_number() {
        let fts = fixture(&BASIC.replace(
            "serviceType: LoadBalancer",
            "serviceType: NodePort\n    nodePorts: {ftpsExplicit: 30021}",
        ));
        let service = client_service(&fts, None).unwrap();
        let ports = service.spec.unwrap().ports.unwrap();
        let by_name: BTreeMap<_, _> = ports
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.node_port))
            .collect();
        assert_eq!(by_name["ftps"], Some(30021));
        assert_eq!(by_name["ftps-implicit"], None, "chosen by the API server");
        assert_eq!(by_name["pasv-30000"], Some(30000));
        assert_eq!(by_name["pasv-30004"], Some(30004));
        let mut advertised = fts.clone();
        advertised.spec.passive.advertised_address = Some("192.0.2.10".into());
        let config = server_config(&advertised, None, &BTreeMap::new());
        assert_eq!(
            config.passive.advertised_address,
            Some("192.0.2.10".parse().unwrap())
        );
        // Not a NodePort Service: no node ports.
        let ports = client_service(&fixture(BASIC), None)
            .unwrap()
            .spec
            .unwrap()
            .ports
            .unwrap();
        assert!(ports.iter().all(|p| p.node_port.is_none()));
    }

    #[test]
    fn scanning_through_an_address_renders_the_section_and_a_quarantine_volume() {
        let fts = fixture(&format!(
            "{BASIC}  scanning:\n    clamd: tcp://clamd.antivirus.svc:3310\n    onScannerError: allow\n    maxFileBytes: 104857600\n    timeoutSeconds: 30\n"
        ));
        let rendered =
            to_yaml("server.yaml", &server_config(&fts, None, &BTreeMap::new())).unwrap();
        let parsed = config::ServerConfig::parse("server.yaml", &rendered).unwrap();
        let scanning = parsed.scanning.clone().unwrap();
        assert_eq!(scanning.clamd, "tcp://clamd.antivirus.svc:3310");
        assert_eq!(scanning.quarantine_dir, QUARANTINE_DIR);
        assert_eq!(scanning.on_scanner_error, config::OnScannerError::Allow);
        assert_eq!(scanning.on_infected, config::OnInfected::Quarantine);
        assert_eq!(scanning.max_file_bytes, 104_857_600);
        assert_eq!(scanning.timeout_seconds, 30);
        assert!(parsed.uploads.atomic, "scanning needs atomic uploads");
        assert_eq!(parsed.insecure_opt_ins().len(), 1);
        let pod = stateful_set(&fts, "d")
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert_eq!(
            pod.containers.len(),
            1,
            "no sidecar without spec.scanning.sidecar"
        );
        let quarantine = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "quarantine")
            .unwrap();
        assert!(quarantine.empty_dir.is_some());
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.mount_path == QUARANTINE_DIR && m.read_only == Some(false))
        );
        assert!(security_settings(&fts).is_ok());
        // No scanning: no section, no volume.
        assert!(
            server_config(&fixture(BASIC), None, &BTreeMap::new())
                .scanning
                .is_none()
        );
    }

    #[test]
    fn a_clamd_sidecar_shares_its_socket_and_a_claim_keeps_the_quarantine() {
        let fts = fixture(&format!(
            "{BASIC}  scanning:\n    sidecar:\n      image: registry.example/clamd:1.4\n    onInfected: delete\n    quarantineClaim: quarantine-pvc\n"
        ));
        let scanning = server_config(&fts, None, &BTreeMap::new())
            .scanning
            .unwrap();
        assert_eq!(scanning.clamd, CLAMD_SIDECAR_ADDRESS);
        assert_eq!(scanning.on_infected, config::OnInfected::Delete);
        let pod = stateful_set(&fts, "d")
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert_eq!(pod.containers.len(), 2);
        let clamd = &pod.containers[1];
        assert_eq!(clamd.image.as_deref(), Some("registry.example/clamd:1.4"));
        let context = clamd.security_context.as_ref().unwrap();
        assert_eq!(context.run_as_non_root, Some(true));
        assert_eq!(context.allow_privilege_escalation, Some(false));
        let shared = |c: &Container| {
            c.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.name == "clamd-socket" && m.mount_path == "/run/clamav")
        };
        assert!(shared(&pod.containers[0]) && shared(clamd));
        let volumes = pod.volumes.unwrap();
        let quarantine = volumes.iter().find(|v| v.name == "quarantine").unwrap();
        assert_eq!(
            quarantine
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "quarantine-pvc"
        );
        assert!(
            volumes
                .iter()
                .any(|v| v.name == "clamd-socket" && v.empty_dir.is_some())
        );
    }

    #[test]
    fn a_bad_clamd_address_past_admission_is_named() {
        let fts = fixture(&format!("{BASIC}  scanning:\n    clamd: clamd:3310\n"));
        let message = security_settings(&fts).unwrap_err().to_string();
        assert!(message.contains("spec.scanning.clamd"), "{message}");
    }

    #[test]
    fn a_passive_range_past_admission_is_refused_not_expanded() {
        // The fuzz input that timed out: millions of ports, each a container and Service port.
        let huge = fixture(&BASIC.replace("portEnd: 30004", "portEnd: 2230019"));
        for result in [
            stateful_set(&huge, "d").map(|_| ()),
            client_service(&huge, None).map(|_| ()),
            network_policy(&huge).map(|_| ()),
        ] {
            let message = result.unwrap_err().to_string();
            assert!(
                message.starts_with("spec.passive: ports 30000..2230019"),
                "{message}"
            );
        }
        for (start, end) in [(30000, 30100), (30010, 30000), (80, 90), (65535, 65536)] {
            let mut passive = fixture(BASIC).spec.passive;
            (passive.port_start, passive.port_end) = (start, end);
            assert!(passive_ports(&passive).is_err(), "{start}..{end}");
        }
        let mut passive = fixture(BASIC).spec.passive;
        (passive.port_start, passive.port_end) = (65436, 65535);
        assert_eq!(passive_ports(&passive).unwrap().count(), 100);
        let ports = client_service(&fixture(BASIC), None)
            .unwrap()
            .spec
            .unwrap()
            .ports
            .unwrap();
        assert_eq!(
            ports
                .iter()
                .filter(|p| p.name.as_deref().unwrap_or("").starts_with("pasv-"))
                .count(),
            5
        );
    }

    #[test]
    fn sftp_server_gets_its_listener_host_key_and_port() {
        let fts = fixture(&BASIC.replace("[ftpsExplicit, ftpsImplicit]", "[ftpsExplicit, sftp]"));
        let rendered =
            to_yaml("server.yaml", &server_config(&fts, None, &BTreeMap::new())).unwrap();
        let parsed = config::ServerConfig::parse("server.yaml", &rendered).unwrap();
        assert_eq!(parsed.listeners.sftp.as_deref(), Some("0.0.0.0:2222"));
        assert_eq!(
            parsed.ssh.host_key_files,
            ["/etc/sluice/ssh/ssh_host_ed25519_key"]
        );
        let sts = stateful_set(&fts, "d").unwrap();
        let pod = sts.spec.unwrap().template.spec.unwrap();
        assert!(
            pod.containers[0]
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.mount_path == "/etc/sluice/ssh" && m.read_only == Some(true))
        );
        let ports = client_service(&fts, None)
            .unwrap()
            .spec
            .unwrap()
            .ports
            .unwrap();
        assert!(
            ports
                .iter()
                .any(|p| p.port == 22 && p.target_port == Some(IntOrString::Int(2222)))
        );
        let key = ssh_host_key_secret(&fts, "KEY").unwrap();
        assert_eq!(key.metadata.name.as_deref(), Some("partners-ssh-host-keys"));
        assert!(key.metadata.owner_references.is_some());
        let ftps_only = fixture(BASIC);
        let parsed = config::ServerConfig::parse(
            "server.yaml",
            &to_yaml(
                "server.yaml",
                &server_config(&ftps_only, None, &BTreeMap::new()),
            )
            .unwrap(),
        )
        .unwrap();
        assert!(parsed.listeners.sftp.is_none());
    }

    #[test]
    fn budgets_and_connection_limits_are_rendered_into_server_yaml() {
        let fts = fixture(&format!(
            "{BASIC}  security:\n    limits:\n      maxSessions: 500\n      newConnectionsPerSecond: 4\n      newConnectionBurst: 12\n      ipv6PrefixLength: 56\n      newSessionsPerUserPerSecond: 3\n      newSessionBurstPerUser: 9\n    budgets:\n      maxOpenHandlesPerConnection: 16\n      maxOpenHandlesPerUser: 48\n      maxFileWorkPerUser: 2\n      maxFileWork: 32\n      maxQueuedReplyBytes: 9437184\n      maxPendingWriteBytes: 524288\n      maxListingEntries: 5000\n      maxQueuedControlLines: 8\n"
        ));
        let rendered =
            to_yaml("server.yaml", &server_config(&fts, None, &BTreeMap::new())).unwrap();
        assert!(
            rendered.contains("maxOpenHandlesPerConnection: 16"),
            "{rendered}"
        );
        let parsed = config::ServerConfig::parse("server.yaml", &rendered).unwrap();
        assert_eq!(
            parsed.budgets,
            config::Budgets {
                max_open_handles_per_connection: 16,
                max_open_handles_per_user: 48,
                max_file_work_per_user: 2,
                max_file_work: 32,
                max_queued_reply_bytes: 9_437_184,
                max_pending_write_bytes: 524_288,
                max_listing_entries: 5000,
                max_queued_control_lines: 8,
            }
        );
        assert_eq!(parsed.limits.max_sessions, 500);
        assert_eq!(
            (
                parsed.limits.new_connections_per_second,
                parsed.limits.new_connection_burst,
                parsed.limits.ipv6_prefix_length
            ),
            (4, 12, 56)
        );
        assert_eq!(
            (
                parsed.limits.new_sessions_per_user_per_second,
                parsed.limits.new_session_burst_per_user
            ),
            (3, 9)
        );
        assert!(security_settings(&fts).is_ok());

        // Unset: the server's defaults, and a partial override keeps the others.
        let plain = server_config(&fixture(BASIC), None, &BTreeMap::new());
        assert_eq!(plain.budgets, config::Budgets::default());
        assert_eq!(plain.limits, config::Limits::default());
        let partial = fixture(&format!(
            "{BASIC}  security:\n    budgets:\n      maxListingEntries: 10\n"
        ));
        let partial = server_config(&partial, None, &BTreeMap::new()).budgets;
        assert_eq!(
            partial,
            config::Budgets {
                max_listing_entries: 10,
                ..config::Budgets::default()
            }
        );
    }

    #[test]
    fn budgets_past_admission_are_refused_naming_the_crd_field() {
        let fts = fixture(&format!(
            "{BASIC}  security:\n    limits:\n      newConnectionsPerSecond: 50\n      ipv6PrefixLength: 8\n    budgets:\n      maxFileWork: 1000\n      maxQueuedControlLines: 0\n"
        ));
        let message = security_settings(&fts).unwrap_err().to_string();
        for field in [
            "spec.security.budgets.maxFileWork: must be 1-256",
            "spec.security.budgets.maxQueuedControlLines: must be at least 1",
            "spec.security.limits.newConnectionBurst: must be at least",
            "spec.security.limits.ipv6PrefixLength: must be between 32 and 128",
        ] {
            assert!(message.contains(field), "{field}: {message}");
        }
        assert!(security_settings(&fixture(BASIC)).is_ok());
    }

    #[test]
    fn server_yaml_round_trips_through_the_servers_parser() {
        let fts = fixture(BASIC);
        let rendered = to_yaml(
            "server.yaml",
            &server_config(
                &fts,
                Some("198.51.100.7"),
                &BTreeMap::from([("partners-1".to_string(), "198.51.100.9".to_string())]),
            ),
        )
        .unwrap();
        let parsed = config::ServerConfig::parse("server.yaml", &rendered).unwrap();
        assert_eq!(parsed.passive.port_start, 30000);
        assert_eq!(
            parsed.passive.advertised_address.unwrap().to_string(),
            "198.51.100.7"
        );
        assert_eq!(
            parsed.listeners.ftps_explicit.as_deref(),
            Some("0.0.0.0:2121")
        );
        assert!(parsed.tls.require_session_resumption);
        assert!(parsed.insecure_opt_ins().is_empty());
        // Pods are <name>-0, <name>-1, ...: retention runs on the first only.
        assert_eq!(
            parsed.retention.replica,
            config::RetentionReplica::OrdinalZero
        );
        assert!(parsed.retention.runs_on("partners-0"));
        assert!(!parsed.retention.runs_on("partners-1"));
    }

    #[test]
    fn statefulset_is_restricted_and_mounts_directories() {
        let fts = fixture(BASIC);
        let sts = stateful_set(&fts, "d").unwrap();
        let pod = sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let container = &pod.containers[0];
        let sc = container.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let mounts = container.volume_mounts.as_ref().unwrap();
        assert!(mounts.iter().all(|m| m.sub_path.is_none()));
        assert!(mounts.iter().any(|m| m.mount_path == "/etc/sluice/tls"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let owner = &sts.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "FileTransferServer");
        assert_eq!(owner.controller, Some(true));
        assert!(sts.spec.as_ref().unwrap().volume_claim_templates.is_some());
    }

    #[test]
    fn services_carry_every_passive_port_with_the_same_number() {
        let fts = fixture(BASIC);
        let service = client_service(&fts, None).unwrap();
        let spec = service.spec.unwrap();
        let ports = spec.ports.unwrap();
        for port in 30000..=30004 {
            assert!(
                ports
                    .iter()
                    .any(|p| p.port == port && p.target_port == Some(IntOrString::Int(port)))
            );
        }
        assert!(
            ports
                .iter()
                .any(|p| p.port == 21 && p.target_port == Some(IntOrString::Int(2121)))
        );
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(
            spec.load_balancer_source_ranges,
            Some(vec!["203.0.113.0/24".to_string()])
        );
        let per_pod = client_service(&fts, Some(1)).unwrap();
        assert_eq!(
            per_pod.spec.unwrap().selector.unwrap()["statefulset.kubernetes.io/pod-name"],
            "partners-1"
        );
    }

    #[test]
    fn per_pod_load_balancer_addresses_are_advertised_per_pod() {
        use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
        let with_ingress = |ingress: Vec<LoadBalancerIngress>| Service {
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(ingress),
                }),
                ..ServiceStatus::default()
            }),
            ..Service::default()
        };
        let ip = |ip: &str| LoadBalancerIngress {
            ip: Some(ip.into()),
            ..LoadBalancerIngress::default()
        };
        let host = |h: &str| LoadBalancerIngress {
            hostname: Some(h.into()),
            ..LoadBalancerIngress::default()
        };
        assert_eq!(
            ingress_address(&with_ingress(vec![host("lb.example"), ip("203.0.113.5")])),
            Some(IngressAddress::Ip("203.0.113.5".parse().unwrap()))
        );
        assert_eq!(
            ingress_address(&with_ingress(vec![host("lb.example")])),
            Some(IngressAddress::Hostname("lb.example".into()))
        );
        assert_eq!(ingress_address(&Service::default()), None);

        let mut fts = fixture(BASIC);
        fts.spec.replicas = 2;
        fts.spec.exposure.per_pod_services = true;
        let per_pod = BTreeMap::from([
            ("partners-0".to_string(), Some("203.0.113.10".to_string())),
            ("partners-1".to_string(), None),
        ]);
        let picked = passive_addresses(&fts, None, &per_pod);
        assert_eq!(picked.shared, None);
        assert_eq!(
            picked.by_pod,
            BTreeMap::from([("partners-0".to_string(), "203.0.113.10".to_string())])
        );
        assert_eq!(picked.pending, vec!["partners-1".to_string()]);
        let rendered = server_config(&fts, picked.shared.as_deref(), &picked.by_pod);
        assert_eq!(
            rendered.passive.advertised_for("partners-0"),
            Some("203.0.113.10".parse().unwrap())
        );
        // The spec's address wins for every pod, and nothing is pending.
        fts.spec.passive.advertised_address = Some("198.51.100.1".into());
        let picked = passive_addresses(&fts, Some("203.0.113.99"), &per_pod);
        assert_eq!(picked.shared.as_deref(), Some("198.51.100.1"));
        assert!(picked.by_pod.is_empty() && picked.pending.is_empty());
        // ClusterIP: nothing to wait for.
        fts.spec.passive.advertised_address = None;
        fts.spec.exposure.service_type = ServiceType::ClusterIP;
        assert!(passive_addresses(&fts, None, &per_pod).pending.is_empty());
        // One LoadBalancer Service for all pods, no address yet.
        let single = fixture(BASIC);
        assert_eq!(
            passive_addresses(&single, None, &BTreeMap::new()).pending,
            vec!["partners".to_string()]
        );
    }

    #[test]
    fn network_policy_allows_only_listed_cidrs_on_served_ports() {
        let fts = fixture(BASIC);
        let policy = network_policy(&fts).unwrap();
        let rules = policy.spec.unwrap().ingress.unwrap();
        let peers = rules[0].from.as_ref().unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].ip_block.as_ref().unwrap().cidr, "203.0.113.0/24");
        let ports = rules[0].ports.as_ref().unwrap();
        assert!(
            ports
                .iter()
                .any(|p| p.port == Some(IntOrString::Int(30000)) && p.end_port == Some(30004))
        );
        assert!(!ports.iter().any(|p| p.port == Some(IntOrString::Int(2222))));
    }

    #[test]
    fn allowlist_and_proxy_protocol_reach_server_yaml_and_the_network_policy() {
        let plain = fixture(BASIC);
        let config = server_config(&plain, None, &BTreeMap::new());
        assert_eq!(config.allowed_cidrs, vec!["203.0.113.0/24"]);
        assert!(!config.proxy_protocol.enabled);

        let proxied = fixture(&format!(
            "{BASIC}    proxyProtocol:\n      enabled: true\n      trustedProxies: [10.0.0.0/16, 10.1.0.7]\n      headerTimeoutMs: 1500\n"
        ));
        let config = server_config(&proxied, None, &BTreeMap::new());
        assert!(config.proxy_protocol.enabled);
        assert_eq!(
            config.proxy_protocol.trusted_proxies,
            vec!["10.0.0.0/16", "10.1.0.7"]
        );
        assert_eq!(config.proxy_protocol.header_timeout_ms, 1500);
        // The server still enforces the allowlist, on the address from the header.
        assert_eq!(config.allowed_cidrs, vec!["203.0.113.0/24"]);
        let yaml = to_yaml("server.yaml", &config).unwrap();
        sluice_config::ServerConfig::parse("server.yaml", &yaml).unwrap();
        // The pods see the proxies, so the NetworkPolicy admits them (bare addresses as /32).
        let policy = network_policy(&proxied).unwrap();
        let rules = policy.spec.unwrap().ingress.unwrap();
        let cidrs: Vec<_> = rules[0]
            .from
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.ip_block.as_ref().unwrap().cidr.clone())
            .collect();
        assert_eq!(cidrs, vec!["10.0.0.0/16", "10.1.0.7/32"]);
        // The load balancer still filters clients by allowedCidrs.
        let service = client_service(&proxied, None).unwrap();
        assert_eq!(
            service.spec.unwrap().load_balancer_source_ranges,
            Some(vec!["203.0.113.0/24".to_string()])
        );
    }
}
