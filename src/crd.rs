//! The custom resources: `FileTransferServer` (`fts`) and `TransferUser` (`tu`) in
//! `sluice.dev/v1alpha1`. Doc comments become the CRD field descriptions; CEL rules
//! (`x-kubernetes-validations`) reject what the schema alone cannot express, at the API server.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use sluice_config::{Permission, Protocol};

/// Largest passive range a FileTransferServer may declare: each port becomes a ServicePort.
pub const MAX_PASSIVE_PORTS: i32 = 100;

/// A hardened FTPS/SFTP endpoint: a StatefulSet of sluice-server pods, its Services, TLS
/// material, NetworkPolicy and PodDisruptionBudget.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "FileTransferServer",
    namespaced,
    shortname = "fts",
    status = "FileTransferServerStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Users","type":"integer","jsonPath":".status.users"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    cel
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("size(self.protocols) > 0").message("spec.protocols: at least one protocol is required"),
    validation = Rule::new("self.replicas <= 1 || !self.protocols.exists(p, p != 'sftp') || self.exposure.perPodServices").message("spec.exposure.perPodServices must be true when spec.replicas > 1 and FTPS is served (a data connection must reach the pod holding its control connection)"),
    validation = Rule::new("self.replicas <= 1 || has(self.storage.existingClaim) || has(self.storage.objectStore)").message("spec.storage.existingClaim (a ReadWriteMany claim) or spec.storage.objectStore is required when spec.replicas > 1, otherwise each pod would show its users different files"),
    validation = Rule::new("self.exposure.serviceType != 'NodePort' || !self.protocols.exists(p, p != 'sftp') || (self.replicas <= 1 && !self.exposure.perPodServices)").message("spec.exposure.serviceType NodePort with FTPS needs spec.replicas <= 1 and perPodServices false: node ports are unique in the cluster and each passive port is exposed as the node port of the same number, which only one Service can hold"),
    validation = Rule::new("self.exposure.serviceType != 'NodePort' || !self.protocols.exists(p, p != 'sftp') || (self.passive.portStart >= 30000 && self.passive.portEnd <= 32767)").message("spec.passive: with spec.exposure.serviceType NodePort the passive range must lie in the node port range 30000-32767 (PASV advertises the port the client must reach on the node)"),
    validation = Rule::new("self.exposure.serviceType != 'NodePort' || !self.protocols.exists(p, p != 'sftp') || has(self.passive.advertisedAddress)").message("spec.passive.advertisedAddress is required with spec.exposure.serviceType NodePort and FTPS: the address of a node (or of the load balancer in front of the nodes) that PASV replies advertise"),
    validation = Rule::new(immutable_storage("size")).message("spec.storage.size is immutable (a StatefulSet's volumeClaimTemplates cannot change): expand the PersistentVolumeClaims data-<server>-<n> directly if the storage class allows it, or create a new FileTransferServer and move the data"),
    validation = Rule::new(immutable_storage("storageClassName")).message("spec.storage.storageClassName is immutable (a StatefulSet's volumeClaimTemplates cannot change): create a new FileTransferServer with the new class and move the data"),
    validation = Rule::new(OBJECT_STORE_KEPT).message("spec.storage.objectStore cannot be added or removed (the pods' data volume changes between a claim and a local spool): create a new FileTransferServer and move the data"),
    validation = Rule::new(immutable_storage("existingClaim")).message("spec.storage.existingClaim is immutable (switching between a claim template and an existing claim changes the StatefulSet's volumeClaimTemplates): create a new FileTransferServer and move the data")
)]
pub struct FileTransferServerSpec {
    /// Protocols served: `ftpsExplicit` (AUTH TLS, RFC 4217), `ftpsImplicit` (TLS from the first
    /// byte) and `sftp` (served once SFTP support lands). At least one.
    pub protocols: Vec<ServedProtocol>,
    /// Service ports (the same numbers are used inside the pod only for passive ports).
    #[serde(default)]
    pub ports: Ports,
    /// Passive FTP data ports; every port is exposed on the Services.
    #[serde(default)]
    pub passive: PassiveSpec,
    /// Number of server pods.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 20))]
    pub replicas: i32,
    /// Where user data lives.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Where the server certificate comes from.
    #[serde(default)]
    pub tls: TlsSpec,
    /// How the server is exposed outside the cluster.
    #[serde(default)]
    pub exposure: ExposureSpec,
    /// Source networks (CIDR) allowed to connect at all; empty allows every address. Compiled
    /// into `loadBalancerSourceRanges`, a NetworkPolicy, and enforced again by the server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("spec.allowedCidrs: every entry must be a CIDR such as 192.0.2.0/24"))]
    pub allowed_cidrs: Vec<String>,
    /// Timeouts, limits and password policy.
    #[serde(default)]
    pub security: SecuritySpec,
    /// Malware scanning of every upload by clamd before it is published (docs/scanning.md).
    /// Absent: uploads are not scanned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scanning: Option<ScanningSpec>,
    /// Server image; defaults to the operator's matching sluice-server image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Pod scheduling and resources.
    #[serde(default)]
    pub pod: PodSpecOverrides,
    /// File events (CloudEvents) delivered at least once to HTTPS webhooks and NATS
    /// JetStream (docs/events.md). Absent: no events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<EventsSpec>,
}

/// File events: an outbox on each pod and the sinks it delivers to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.webhooks) ? size(self.webhooks) : 0) + (has(self.nats) ? size(self.nats) : 0) > 0").message("spec.events: at least one sink (webhooks or nats) is required"))]
#[x_kube(validation = Rule::new("!has(self.webhooks) || !has(self.nats) || self.webhooks.all(w, !self.nats.exists(n, n.name == w.name))").message("spec.events: sink names must be unique across webhooks and nats"))]
pub struct EventsSpec {
    /// Bytes of undelivered events each pod may hold; at this size new uploads are refused
    /// until the sinks catch up. Default 64 MiB, at least 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1048576, max = 17179869184_i64))]
    #[x_kube(validation = Rule::new("self >= 1048576").message("spec.events.maxOutboxBytes must be at least 1048576 (1 MiB)"))]
    pub max_outbox_bytes: Option<i64>,
    /// An existing PersistentVolumeClaim for the outbox; each pod uses a sub-directory named
    /// after itself. Without it the outbox is an emptyDir: it survives a crash of the server
    /// (the container restarts in the same pod) but not the pod's deletion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub outbox_claim: Option<String>,
    /// How long a sink of a pod must have been failing before the server's `EventsDelivering`
    /// condition turns False (default 120). Shorter blips are what the outbox is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub failing_after_seconds: Option<i32>,
    /// HTTPS webhooks, each POST signed with HMAC-SHA256.
    #[serde(default)]
    #[schemars(length(max = 8))]
    #[x_kube(validation = Rule::new("self.all(w, self.exists_one(o, o.name == w.name))").message("spec.events.webhooks: names must be unique"))]
    pub webhooks: Vec<WebhookSinkSpec>,
    /// NATS JetStream subjects; each message carries `Nats-Msg-Id` = the event id.
    #[serde(default)]
    #[schemars(length(max = 8))]
    #[x_kube(validation = Rule::new("self.all(n, self.exists_one(o, o.name == n.name))").message("spec.events.nats: names must be unique"))]
    pub nats: Vec<NatsSinkSpec>,
}

/// Which events a sink receives; empty lists mean all.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventFilters {
    /// Event types, e.g. `dev.sluice.file.uploaded` (docs/events.md lists them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(t, t in ['dev.sluice.file.uploaded', 'dev.sluice.file.downloaded', 'dev.sluice.file.deleted', 'dev.sluice.file.renamed', 'dev.sluice.dir.created', 'dev.sluice.dir.removed', 'dev.sluice.upload.refused'])").message("spec.events: filters.types may only name the event types of docs/events.md"))]
    pub types: Vec<String>,
    /// Prefixes of the path as stored (beneath the data root, home included), e.g.
    /// `/partner-a/inbound/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 1024)))]
    #[x_kube(validation = Rule::new("self.all(p, p.startsWith('/'))").message("spec.events: every filters.pathPrefixes entry must start with /"))]
    pub path_prefixes: Vec<String>,
}

/// An HTTPS webhook sink.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSinkSpec {
    /// Names the sink in metrics and logs: 1-40 of a-z 0-9 -.
    #[schemars(length(min = 1, max = 40))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9-]{1,40}$')").message("spec.events: a sink name must be 1-40 of a-z 0-9 -"))]
    pub name: String,
    /// `https://host[:port]/path`.
    #[schemars(length(min = 9, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^https://[^/]')").message("spec.events.webhooks[].url must be https://host[:port]/path"))]
    pub url: String,
    /// The CA the receiver's certificate must chain to (key default `ca.crt`). Mounted into
    /// the pods, never read by the operator. Required: the server trusts no system roots.
    pub ca_secret_ref: SecretKeyRef,
    /// The HMAC-SHA256 signing key (key default `secret`). Mounted into the pods, never read
    /// by the operator; rotated keys take effect at the next delivery.
    pub secret_ref: SecretKeyRef,
    /// Which events this sink receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<EventFilters>,
    /// Attempts per event before it is dead-lettered (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.events: maxAttempts must be at least 1"))]
    pub max_attempts: Option<i32>,
}

/// A NATS JetStream sink.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.caSecretRef) || !self.url.contains('tls://')").message("spec.events.nats[].caSecretRef is required for tls:// (the server trusts no system roots)"))]
pub struct NatsSinkSpec {
    /// Names the sink in metrics and logs: 1-40 of a-z 0-9 -.
    #[schemars(length(min = 1, max = 40))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9-]{1,40}$')").message("spec.events: a sink name must be 1-40 of a-z 0-9 -"))]
    pub name: String,
    /// `nats://host:port` or `tls://host:port` (several separated by commas).
    #[schemars(length(min = 8, max = 512))]
    #[x_kube(validation = Rule::new("self.matches('^(nats|tls)://[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]{1,5})?(,(nats|tls)://[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]{1,5})?)*$')").message("spec.events.nats[].url must be nats://host:port or tls://host:port (several separated by commas)"))]
    pub url: String,
    /// Subject every event is published to; a JetStream stream must capture it.
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = Rule::new("size(self) <= 255 && self.matches('^[A-Za-z0-9_-]+([.][A-Za-z0-9_-]+)*$')").message("spec.events.nats[].subject must be at most 255 characters, dot-separated tokens of A-Z a-z 0-9 _ - (no spaces or wildcards)"))]
    pub subject: String,
    /// When set, only this stream may accept the events (`Nats-Expected-Stream`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = Rule::new("size(self) <= 255 && self.matches('^[A-Za-z0-9_-]+$')").message("spec.events.nats[].stream must be 1-255 of A-Z a-z 0-9 _ -"))]
    pub stream: Option<String>,
    /// The CA the NATS server's certificate must chain to (key default `ca.crt`); set means
    /// TLS is required. Without it events travel in clear text (the server warns at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// A Secret whose keys are the credentials: `token`, or `username` and `password`, or
    /// `nkey` (a seed), or `creds` (a .creds file). Mounted into the pods as a whole, never
    /// read by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretNameRef>,
    /// Which events this sink receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<EventFilters>,
    /// Attempts per event before it is dead-lettered (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.events: maxAttempts must be at least 1"))]
    pub max_attempts: Option<i32>,
}

/// A Secret of the same namespace, as a whole.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct SecretNameRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

fn one() -> i32 {
    1
}

/// A protocol a FileTransferServer serves.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ServedProtocol {
    FtpsExplicit,
    FtpsImplicit,
    Sftp,
}

/// Service ports for each protocol and the health/metrics port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.ftpsExplicit != self.ftpsImplicit && self.ftpsExplicit != self.sftp && self.ftpsImplicit != self.sftp").message("spec.ports: ftpsExplicit, ftpsImplicit and sftp must be distinct"))]
pub struct Ports {
    /// Explicit FTPS control port on the Service (container port 2121).
    #[serde(default = "port_21")]
    #[schemars(range(min = 1, max = 65535))]
    pub ftps_explicit: i32,
    /// Implicit FTPS port on the Service (container port 2990).
    #[serde(default = "port_990")]
    #[schemars(range(min = 1, max = 65535))]
    pub ftps_implicit: i32,
    /// SFTP port on the Service (container port 2222).
    #[serde(default = "port_22")]
    #[schemars(range(min = 1, max = 65535))]
    pub sftp: i32,
}

fn port_21() -> i32 {
    21
}
fn port_990() -> i32 {
    990
}
fn port_22() -> i32 {
    22
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            ftps_explicit: 21,
            ftps_implicit: 990,
            sftp: 22,
        }
    }
}

/// The passive port range and the address advertised in PASV/EPSV replies.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.portEnd >= self.portStart").message("spec.passive.portEnd must be >= spec.passive.portStart"),
    validation = Rule::new("self.portEnd - self.portStart < 100").message("spec.passive: the range may hold at most 100 ports")
)]
pub struct PassiveSpec {
    /// First passive port (inclusive).
    #[schemars(range(min = 1024, max = 65535))]
    pub port_start: i32,
    /// Last passive port (inclusive); at most 100 ports in the range.
    #[schemars(range(min = 1024, max = 65535))]
    pub port_end: i32,
    /// Address clients must connect to for data (the load balancer's). Defaults to the
    /// address in the Service's status. An IP address: PASV replies carry an address, not a
    /// name (a name would have to be resolved per reply and could change between the control
    /// and the data connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isIP(self)").message("spec.passive.advertisedAddress must be an IP address such as 203.0.113.10, not a host name: PASV replies carry an address; resolve the load balancer's name and give one of its stable addresses"))]
    pub advertised_address: Option<String>,
}

impl Default for PassiveSpec {
    fn default() -> Self {
        PassiveSpec {
            port_start: 30000,
            port_end: 30019,
            advertised_address: None,
        }
    }
}

/// A CEL transition rule: `spec.storage.<field>` keeps its value (absent stays absent).
fn immutable_storage(field: &str) -> String {
    let of = |object: &str| {
        format!(
            "(has({object}.storage) && has({object}.storage.{field}) ? {object}.storage.{field} : '')"
        )
    };
    format!("{} == {}", of("self"), of("oldSelf"))
}

/// A CEL transition rule: `spec.storage.objectStore` is present before and after, or absent
/// before and after (it decides whether the StatefulSet has a claim template).
const OBJECT_STORE_KEPT: &str = "(has(self.storage) && has(self.storage.objectStore)) == (has(oldSelf.storage) && has(oldSelf.storage.objectStore))";

/// Storage for user data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.objectStore) || (!has(self.existingClaim) && !has(self.storageClassName))").message("spec.storage.objectStore: existingClaim and storageClassName do not apply with an object store (each pod spools uploads on an emptyDir); remove them"))]
pub struct StorageSpec {
    /// Size of the per-pod volume claim (one replica), e.g. `10Gi`. Default `1Gi`. With
    /// `objectStore`: the size limit of each pod's upload spool (an `emptyDir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Storage class of the per-pod claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// An existing PersistentVolumeClaim to use instead (ReadWriteMany for replicas > 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_claim: Option<String>,
    /// Homes in an S3-compatible bucket (AWS S3, MinIO, SeaweedFS, Ceph RGW) instead of on a
    /// volume: any number of replicas serve the same homes without a ReadWriteMany claim, and
    /// each pod keeps only uploads in progress on a local `emptyDir` (docs/object-storage.md).
    /// Users with `quota` or `retention` are refused on such a server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_store: Option<ObjectStoreSpec>,
}

/// The bucket the homes live in (server.yaml `storage.objectStore`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.endpoint.startsWith('https://') || self.allowPlainHttp").message("spec.storage.objectStore.endpoint: a plain http:// endpoint needs spec.storage.objectStore.allowPlainHttp: true (file contents and signed requests would cross the network unencrypted)"),
    validation = Rule::new("!has(self.caSecretRef) || self.endpoint.startsWith('https://')").message("spec.storage.objectStore.caSecretRef is set but the endpoint is plain http://: use https:// or remove caSecretRef")
)]
pub struct ObjectStoreSpec {
    /// `https://host[:port]`, nothing else (no path: the bucket is `bucket`). `http://` only
    /// with `allowPlainHttp`.
    #[schemars(length(min = 8, max = 300))]
    #[x_kube(validation = Rule::new("self.matches('^https?://([A-Za-z0-9._~-]+|\\\\[[0-9A-Fa-f:.]+\\\\])(:[0-9]{1,5})?/?$')").message("spec.storage.objectStore.endpoint must be https://host[:port] (no path, query or user)"))]
    pub endpoint: String,
    /// Bucket name: 3-63 of a-z 0-9 . - starting and ending with a letter or digit. The bucket
    /// must exist; the operator does not create it.
    #[schemars(length(min = 3, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$')").message("spec.storage.objectStore.bucket must be 3-63 of a-z 0-9 . - starting and ending with a letter or digit"))]
    pub bucket: String,
    /// Key prefix every home is under (`tenants/prod`: a user's files are
    /// `tenants/prod/<home>/...`). Absent: the bucket's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.endsWith('/') && !self.contains('//') && !self.matches('(^|/)[.][.]?(/|$)') && !self.matches('\\\\p{Cc}')").message("spec.storage.objectStore.prefix must be relative, without a leading or trailing '/', and without empty, '.' or '..' components or control characters (write a/b)"))]
    pub prefix: Option<String>,
    /// Region the requests are signed for (default `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9._-]{1,64}$')").message("spec.storage.objectStore.region must be 1-64 of A-Z a-z 0-9 . _ - such as eu-central-1"))]
    pub region: Option<String>,
    /// A Secret (same namespace) with the keys `accessKeyId` and `secretAccessKey`. Mounted
    /// into the pods, never read by the operator; a rotated Secret is picked up by the pods
    /// without a restart.
    pub credentials_secret_ref: SecretNameRef,
    /// The CA the endpoint's certificate must chain to instead of the system roots (key
    /// default `ca.crt`). Mounted, never read by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Path-style requests (`https://host/bucket/key`), which MinIO, SeaweedFS and Ceph want
    /// (default); false: virtual-hosted style (`https://bucket.host/key`, AWS S3).
    #[serde(default = "yes")]
    pub path_style: bool,
    /// Part size of multipart uploads in bytes, 5 MiB to 5 GiB (default 8 MiB); uploads up to
    /// this size are one PUT. Each upload being published holds up to three parts in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 5242880, max = 5368709120_i64))]
    #[x_kube(validation = Rule::new("self >= 5242880 && self <= 5368709120").message("spec.storage.objectStore.partBytes must be between 5242880 (5 MiB) and 5368709120 (5 GiB)"))]
    pub part_bytes: Option<i64>,
    /// Accept a plain `http://` endpoint (a store on a trusted network). Insecure opt-in: file
    /// contents and signed requests cross the network unencrypted; every pod warns at start.
    #[serde(default)]
    pub allow_plain_http: bool,
}

fn yes() -> bool {
    true
}

/// Where the TLS certificate comes from.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum TlsSource {
    /// The operator's own CA issues and renews the certificate.
    #[default]
    Generated,
    /// A cert-manager `Certificate` is created (cert-manager must be installed) and the
    /// Secret cert-manager writes is used.
    CertManager,
    /// An existing `kubernetes.io/tls` Secret is used as is.
    SecretRef,
}

/// Client-certificate requirement.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum ClientCertificates {
    #[default]
    None,
    Optional,
    Required,
}

/// TLS settings of the server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.source != 'secretRef' || has(self.secretName)").message("spec.tls.secretName is required when spec.tls.source is secretRef"),
    validation = Rule::new("self.source != 'certManager' || has(self.issuerRef)").message("spec.tls.issuerRef is required when spec.tls.source is certManager"),
    validation = Rule::new("self.source != 'certManager' || (has(self.automaticNames) && self.automaticNames) || (has(self.dnsNames) && size(self.dnsNames) > 0) || (has(self.ipAddresses) && size(self.ipAddresses) > 0)").message("spec.tls.dnsNames: with spec.tls.source certManager list the names the certificate must carry (or set automaticNames: true for an issuer that signs in-cluster names)"),
    validation = Rule::new("self.clientCertificates == 'none' || has(self.clientCaSecret)").message("spec.tls.clientCaSecret is required when spec.tls.clientCertificates is optional or required"),
    validation = Rule::new("!has(self.renewBefore) || duration(self.renewBefore) < duration(has(self.duration) ? self.duration : '2160h')").message("spec.tls.renewBefore must be shorter than spec.tls.duration")
)]
pub struct TlsSpec {
    /// `generated` (default), `certManager` or `secretRef`.
    #[serde(default)]
    pub source: TlsSource,
    /// The TLS Secret to use (`secretRef`): `tls.crt` and `tls.key`. It must cover
    /// `dnsNames` and `ipAddresses`; a Warning Event `CertificateExpiringSoon` is published 30
    /// days before it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// cert-manager issuer (`certManager`): the operator creates a cert-manager `Certificate`
    /// named after the server whose Secret is the one the pods mount (`<name>-tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// Extra DNS names for the certificate (see `automaticNames`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    /// Whether the Service DNS names (`<name>.<namespace>.svc`...) and the load-balancer and
    /// advertised addresses are added to `dnsNames` and `ipAddresses`. Default: yes, except
    /// with `certManager`, where only the listed names are requested (an ACME issuer refuses
    /// in-cluster names and IP addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic_names: Option<bool>,
    /// Extra IP addresses for the certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    /// Lifetime of generated and cert-manager certificates as a Go duration (default
    /// `2160h`, 90 days). Between `1m` and `19800h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('19800h')").message("spec.tls.duration must be a duration between 1m and 19800h, such as 2160h"))]
    pub duration: Option<String>,
    /// Renew this long before expiry, as a Go duration (default: at 2/3 of the lifetime);
    /// passed on to cert-manager with `certManager`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("spec.tls.renewBefore must be a positive duration such as 360h"))]
    pub renew_before: Option<String>,
    /// TLS cipher suites in preference order (default AES-256-GCM and ChaCha20-Poly1305).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher_suites: Option<Vec<String>>,
    /// Whether clients must present certificates.
    #[serde(default)]
    pub client_certificates: ClientCertificates,
    /// Secret with `ca.crt` that client certificates must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_secret: Option<String>,
}

/// A cert-manager issuer reference, copied into the `Certificate`'s `spec.issuerRef`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the issuer (an `Issuer` in the server's namespace, or a `ClusterIssuer`).
    pub name: String,
    /// `Issuer` (default) or `ClusterIssuer`, or the kind of an external issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// API group of the issuer: `cert-manager.io` (default) or an external issuer's group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Service type for client Services.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// externalTrafficPolicy for exposed Services.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum TrafficPolicy {
    /// Keeps the client's source address (needed for allowlists); the default.
    #[default]
    Local,
    Cluster,
}

/// How the server is exposed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExposureSpec {
    /// Type of the client Service(s).
    #[serde(default)]
    pub service_type: ServiceType,
    /// One Service per pod (selector `statefulset.kubernetes.io/pod-name`); required for FTPS
    /// with more than one replica.
    #[serde(default)]
    pub per_pod_services: bool,
    /// externalTrafficPolicy of NodePort/LoadBalancer Services.
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
    /// Annotations for the client Service(s), e.g. for a cloud load balancer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// With `serviceType: NodePort`, the node ports of the control ports (default: chosen by
    /// the API server). Passive ports always use the node port of the same number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ports: Option<NodePorts>,
    /// PROXY protocol (v1 or v2) from a load balancer or TCP proxy that does not keep the
    /// client's address; off by default. Enable it on the load balancer too (docs/operations.md
    /// lists the Service annotations of common clouds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocolSpec>,
}

/// Node ports of the control ports (`serviceType: NodePort`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePorts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub ftps_explicit: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub ftps_implicit: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub sftp: Option<i32>,
}

/// The PROXY protocol on every listener and passive port (server.yaml `proxyProtocol`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.enabled || (has(self.trustedProxies) && size(self.trustedProxies) > 0)").message("spec.exposure.proxyProtocol.trustedProxies must list the proxies' addresses when enabled is true"))]
pub struct ProxyProtocolSpec {
    /// Every connection must come from `trustedProxies` and start with a PROXY header; the
    /// client's address in it is what allowlists, bans, limits and the audit log see.
    #[serde(default)]
    pub enabled: bool,
    /// Addresses the proxies connect from (CIDRs or single addresses, at most 32), e.g. the
    /// load balancer's subnets. The NetworkPolicy admits these instead of `allowedCidrs`,
    /// which the server then enforces on the address from the header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isIP(c) || (isCIDR(c) && cidr(c).prefixLength() > 0))").message("spec.exposure.proxyProtocol.trustedProxies: every entry must be an address or a CIDR such as 10.0.0.0/16 (not /0: anyone could then choose the address the server sees)"))]
    pub trusted_proxies: Vec<String>,
    /// How long a proxy has to send its header, in milliseconds (default 3000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 60000))]
    pub header_timeout_ms: Option<i64>,
}

/// Scanning of uploads by clamd (server.yaml `scanning`): each upload is scanned after its last
/// byte and before it is published under its name; infected files are quarantined (or
/// deleted), and when clamd gives no verdict the upload is refused (fail closed).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.clamd) != has(self.sidecar)").message("spec.scanning: set exactly one of clamd (the address of a clamd) or sidecar (a clamd container in each pod)"))]
pub struct ScanningSpec {
    /// Address of a clamd the pods reach: `tcp://host:port` (e.g. a clamd Service,
    /// `tcp://clamd.antivirus.svc:3310`) or `unix:/path` of a socket mounted into the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 300))]
    #[x_kube(validation = Rule::new("self.matches('^(tcp://[^/]+:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])|unix:/[^/].*)$')").message("spec.scanning.clamd must be tcp://host:port or unix:/absolute/path"))]
    pub clamd: Option<String>,
    /// A clamd container in every server pod, reached over a Unix socket on a shared
    /// `emptyDir` (`unix:/run/clamav/clamd.sock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<ClamdSidecarSpec>,
    /// `quarantine` (default): infected files are moved to the quarantine volume; `delete`.
    #[serde(default)]
    pub on_infected: sluice_config::OnInfected,
    /// `refuse` (default, fail closed): while clamd is unreachable, times out or fails, uploads
    /// are refused and kept in quarantine; `allow` publishes them unscanned (insecure opt-in).
    #[serde(default)]
    pub on_scanner_error: sluice_config::OnScannerError,
    /// Limit on one scan in seconds (default 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i32>,
    /// Uploads larger than this many bytes are not sent to clamd (default 26214400, clamd's own
    /// default `StreamMaxLength`; raise both together); `onTooLarge` decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967295_i64))]
    pub max_file_bytes: Option<i64>,
    /// `refuse` (default): larger uploads are refused and deleted; `skip` publishes them
    /// unscanned (insecure opt-in).
    #[serde(default)]
    pub on_too_large: sluice_config::OnTooLarge,
    /// An existing PersistentVolumeClaim for the quarantine, kept across pod restarts.
    /// Default: an `emptyDir` per pod, lost when the pod is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_claim: Option<String>,
}

/// The clamd sidecar container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClamdSidecarSpec {
    /// clamd image. It must run clamd as a non-root user with a signature database of its own
    /// (an image that runs freshclam, or one with the database built in) and listen on
    /// `LocalSocket /run/clamav/clamd.sock`.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Arguments of the container (the image's defaults when absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Resources of the clamd container (clamd with the full database needs ~1.5 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Security policy enforced by the operator and the server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecuritySpec {
    /// Password rules checked when a TransferUser is accepted.
    #[serde(default)]
    pub password_policy: PasswordPolicy,
    /// Session limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
    /// Timeouts in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsSpec>,
    /// Allow active mode (PORT/EPRT) to the client's own address. Insecure opt-in.
    #[serde(default)]
    pub active_mode: bool,
    /// Brute-force bans (defaults as in server.yaml `bans`); shared by every replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bans: Option<BansSpec>,
    /// What one connection or one user may take from a server process (open handles, file
    /// work, queued memory, listing size), so that no tenant degrades the others. Unset fields
    /// keep the server's defaults (server.yaml `budgets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budgets: Option<BudgetsSpec>,
}

/// Failed logins per source address (and per username) within a sliding window lead to a ban
/// whose duration doubles with each repeat. A ban made on one replica is spread to the others
/// by the operator within seconds (docs/bans.md). Unset fields keep the server's defaults.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.baseBanSeconds) || !has(self.maxBanSeconds) || self.maxBanSeconds >= self.baseBanSeconds").message("spec.security.bans.maxBanSeconds must be >= baseBanSeconds"))]
pub struct BansSpec {
    /// Turn bans off (insecure opt-in; the server warns at start-up). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Weighted failed logins within the window that ban an address (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub threshold: Option<i32>,
    /// Length of the sliding window in seconds (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub window_seconds: Option<i32>,
    /// First ban in seconds; each further ban of the same address doubles it (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub base_ban_seconds: Option<i32>,
    /// Longest ban in seconds (default 86400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub max_ban_seconds: Option<i32>,
    /// Networks (CIDR) never banned, e.g. a partner's NAT or a monitoring probe (at most 64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("spec.security.bans.safelist: every entry must be a CIDR such as 192.0.2.0/24"))]
    pub safelist: Vec<String>,
}

/// Password rules.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordPolicy {
    /// Minimum length (default 12).
    #[serde(default = "twelve")]
    #[schemars(range(min = 8, max = 128))]
    pub min_length: i32,
    /// How many of lower case, upper case, digits and symbols are required (default 3).
    #[serde(default = "three")]
    #[schemars(range(min = 0, max = 4))]
    pub min_character_classes: i32,
    /// Maximum password age in days: past it, password logins are refused with the audited
    /// reason `PasswordExpired` and the TransferUser gets `Ready=False`, reason
    /// `PasswordExpired`. Counted from the TransferUser's `status.passwordChangedAt`. Absent:
    /// passwords do not age. SSH key logins are not affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub max_age_days: Option<i32>,
    /// With `maxAgeDays`: a Warning Event `PasswordExpiresSoon` is recorded on the TransferUser
    /// this many days before its password expires (default 14; 0: no warning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 365))]
    pub warn_days_before: Option<i32>,
    /// Seconds a password that verified is accepted again without another argon2id run
    /// (the server keeps a keyed digest, never the password; a wrong password is always
    /// verified in full). Absent: 300. 0: every login runs argon2id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub verified_cache_seconds: Option<i32>,
}

fn twelve() -> i32 {
    12
}
fn three() -> i32 {
    3
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        PasswordPolicy {
            min_length: 12,
            min_character_classes: 3,
            max_age_days: None,
            warn_days_before: None,
            verified_cache_seconds: None,
        }
    }
}

/// Session limits (defaults as in server.yaml).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rules::connection_burst(),
    validation = rules::session_burst_per_user()
)]
pub struct LimitsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_sessions: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_sessions_per_ip: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_sessions_per_user: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 20))]
    pub max_auth_attempts: Option<i32>,
    /// New connections one source may open per second, sustained, checked before any TLS or
    /// SSH handshake; over it a connection is refused at once (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub new_connections_per_second: Option<i32>,
    /// New connections one source may open in a burst before the rate applies (default 30);
    /// at least `newConnectionsPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub new_connection_burst: Option<i32>,
    /// New logged-in sessions one user may start per second, sustained, over every protocol
    /// and address (default 10): past the burst a login waits its turn after its credentials
    /// were checked, and is refused when its turn is more than 5 s away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub new_sessions_per_user_per_second: Option<i32>,
    /// New sessions one user may start in a burst before the rate applies (default 30); at
    /// least `newSessionsPerUserPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub new_session_burst_per_user: Option<i32>,
    /// IPv6 clients count as one source per prefix of this length for per-address limits,
    /// the connection rate and bans (default 64: one host usually holds a whole /64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 32, max = 128))]
    pub ipv6_prefix_length: Option<i32>,
}

/// Per-connection and per-user resource budgets (defaults as in server.yaml `budgets`).
/// Exceeding one refuses or ends that session's request, never anything of another user.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rules::file_work_per_user(),
    validation = rules::handles_per_connection()
)]
pub struct BudgetsSpec {
    /// SFTP handles open at once on one SSH connection, over all its channels (default 64);
    /// at most `maxOpenHandlesPerUser`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_open_handles_per_connection: Option<i32>,
    /// SFTP handles open at once by all sessions of one user (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_open_handles_per_user: Option<i32>,
    /// Blocking file operations one user may have running at once (default 4); at most
    /// `maxFileWork`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_file_work_per_user: Option<i32>,
    /// Blocking file operations running at once in one server process (default 64, at most
    /// 256: reloads, logins and health need threads whatever users do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = sluice_config::MAX_FILE_WORK_CAP))]
    pub max_file_work: Option<i32>,
    /// Bytes of SFTP replies queued for one channel that the client has not read yet
    /// (default 4194304; at least 262144, one 255 KiB READ reply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = sluice_config::MIN_QUEUED_REPLY_BYTES, max = u32::MAX))]
    pub max_queued_reply_bytes: Option<i64>,
    /// Bytes of SFTP WRITE data accepted for one handle but not yet on disk (default 2097152;
    /// at least 262144).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = sluice_config::MIN_PENDING_WRITE_BYTES, max = u32::MAX))]
    pub max_pending_write_bytes: Option<i64>,
    /// Entries one directory listing may return; a larger directory is refused with a message
    /// naming this budget (default 100000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_listing_entries: Option<i32>,
    /// FTPS control lines held while a transfer runs; one more ends the session (default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_queued_control_lines: Option<i32>,
}

/// CEL rules whose numbers come from `sluice-config` (the defaults and the argon2 caps), so
/// the CRD cannot drift from what the server accepts.
mod rules {
    use kube::core::{Message, Rule};
    use sluice_config::{
        ARGON2_MAX_ITERATIONS, ARGON2_MAX_MEMORY_ITERATIONS, ARGON2_MAX_MEMORY_KIB,
        ARGON2_MAX_PARALLELISM, Budgets, Limits,
    };

    /// `self.<field>` when set, else the server's default.
    fn or_default(field: &str, default: u32) -> String {
        format!("(has(self.{field}) ? self.{field} : {default})")
    }

    pub fn connection_burst() -> Rule {
        let limits = Limits::default();
        Rule::new(format!(
            "{} >= {}",
            or_default("newConnectionBurst", limits.new_connection_burst),
            or_default("newConnectionsPerSecond", limits.new_connections_per_second),
        ))
        .message(Message::Message(format!(
            "spec.security.limits.newConnectionBurst must be >= newConnectionsPerSecond \
             (defaults {} and {})",
            limits.new_connection_burst, limits.new_connections_per_second
        )))
    }

    pub fn session_burst_per_user() -> Rule {
        let limits = Limits::default();
        Rule::new(format!(
            "{} >= {}",
            or_default("newSessionBurstPerUser", limits.new_session_burst_per_user),
            or_default(
                "newSessionsPerUserPerSecond",
                limits.new_sessions_per_user_per_second
            ),
        ))
        .message(Message::Message(format!(
            "spec.security.limits.newSessionBurstPerUser must be >= newSessionsPerUserPerSecond \
             (defaults {} and {})",
            limits.new_session_burst_per_user, limits.new_sessions_per_user_per_second
        )))
    }

    pub fn file_work_per_user() -> Rule {
        let budgets = Budgets::default();
        Rule::new(format!(
            "{} <= {}",
            or_default("maxFileWorkPerUser", budgets.max_file_work_per_user),
            or_default("maxFileWork", budgets.max_file_work),
        ))
        .message(Message::Message(format!(
            "spec.security.budgets.maxFileWorkPerUser must not exceed maxFileWork \
             (defaults {} and {}): one user could take all file work",
            budgets.max_file_work_per_user, budgets.max_file_work
        )))
    }

    pub fn handles_per_connection() -> Rule {
        let budgets = Budgets::default();
        Rule::new(format!(
            "{} <= {}",
            or_default(
                "maxOpenHandlesPerConnection",
                budgets.max_open_handles_per_connection
            ),
            or_default("maxOpenHandlesPerUser", budgets.max_open_handles_per_user),
        ))
        .message(Message::Message(format!(
            "spec.security.budgets.maxOpenHandlesPerConnection must not exceed \
             maxOpenHandlesPerUser (defaults {} and {})",
            budgets.max_open_handles_per_connection, budgets.max_open_handles_per_user
        )))
    }

    /// The decimal value of the argon2 parameter `key` of a PHC string (`$argon2id$v=19$m=..,
    /// t=..,p=..$salt$hash`: only the parameter segment holds `<letter>=` after `$` or `,`),
    /// with at most nine digits so that `int()` cannot overflow; a longer value fails the
    /// guard and so the rule.
    fn parameter_within(key: &str, cap: u64) -> String {
        format!(
            "!self.matches('[$,]{key}=[0-9]') || \
             (self.matches('[$,]{key}=[0-9]{{1,9}}([,$]|$)') && \
              int(self.find('[$,]{key}=[0-9]+').substring(3)) <= {cap})"
        )
    }

    pub fn argon2_memory() -> Rule {
        Rule::new(parameter_within("m", ARGON2_MAX_MEMORY_KIB.into())).message(Message::Message(format!(
            "spec.auth.passwordHash: argon2 memory m must be at most {ARGON2_MAX_MEMORY_KIB} KiB \
             (the server's cap; a larger m lets one login exhaust the server's memory)"
        )))
    }

    pub fn argon2_iterations() -> Rule {
        Rule::new(parameter_within("t", ARGON2_MAX_ITERATIONS.into())).message(Message::Message(format!(
            "spec.auth.passwordHash: argon2 iterations t must be at most {ARGON2_MAX_ITERATIONS} \
             (the server's cap)"
        )))
    }

    pub fn argon2_parallelism() -> Rule {
        Rule::new(parameter_within("p", ARGON2_MAX_PARALLELISM.into())).message(Message::Message(
            format!(
                "spec.auth.passwordHash: argon2 parallelism p must be at most \
             {ARGON2_MAX_PARALLELISM} (the server's cap)"
            ),
        ))
    }

    /// m x t within the cap, checked only when both are small enough for `int()`; the rules
    /// above refuse them otherwise.
    pub fn argon2_cost() -> Rule {
        let digits = |key: &str| format!("self.matches('[$,]{key}=[0-9]{{1,9}}([,$]|$)')");
        let value = |key: &str| format!("int(self.find('[$,]{key}=[0-9]+').substring(3))");
        Rule::new(format!(
            "!({} && {}) || {} * {} <= {ARGON2_MAX_MEMORY_ITERATIONS}",
            digits("m"),
            digits("t"),
            value("m"),
            value("t"),
        ))
        .message(Message::Message(format!(
            "spec.auth.passwordHash: argon2 cost m*t must be at most \
             {ARGON2_MAX_MEMORY_ITERATIONS} (the server's cap, e.g. m=65536,t=2 or m=19456,t=6)"
        )))
    }
}

/// Timeouts in seconds (defaults as in server.yaml).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub login_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub idle_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub data_connect_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub data_idle_seconds: Option<i32>,
}

/// Pod-level overrides.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecOverrides {
    /// Default: requests of 100m CPU and 128Mi memory (what a server with a few hundred
    /// sessions uses at rest; docs/performance.md), no limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Labels added to the pods (for example to keep FTP data ports out of a service mesh);
    /// the operator's own labels cannot be overridden.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('app.kubernetes.io/') && !k.startsWith('sluice.dev/') && k != 'statefulset.kubernetes.io/pod-name')").message("spec.pod.labels: keys under app.kubernetes.io/ and sluice.dev/ are the operator's"))]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the pods (for example `sidecar.istio.io/inject: "false"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('sluice.dev/'))").message("spec.pod.annotations: keys under sluice.dev/ are the operator's"))]
    pub annotations: BTreeMap<String, String>,
    /// Secrets for pulling the image from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Default with more than one replica: pods spread over nodes (best effort,
    /// `ScheduleAnyway`), so one node's loss leaves the others serving.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
}

/// Observed state of a FileTransferServer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileTransferServerStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `CertificateReady`, `EndpointsReady`, `UsersSynced`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Where clients connect (host:port of the explicit FTPS port, or SFTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Users in the rendered users.yaml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<i32>,
    /// Expiry of the serving certificate (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_not_after: Option<String>,
    /// When the operator renews the certificate next (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_renewal: Option<String>,
    /// SHA-256 fingerprint of the serving certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_sha256: Option<String>,
}

/// A login on a FileTransferServer, provisioned GitOps-style: credentials by Secret reference
/// or argon2id hash, never in plain text.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "TransferUser",
    namespaced,
    shortname = "tu",
    status = "TransferUserStatus",
    printcolumn = r#"{"name":"Username","type":"string","jsonPath":".spec.username"}"#,
    printcolumn = r#"{"name":"Server","type":"string","jsonPath":".spec.serverRef.name"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    cel
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.auth.passwordSecretRef) || !has(self.auth.passwordHash)").message("spec.auth: set passwordSecretRef or passwordHash, not both"),
    validation = Rule::new("has(self.auth.passwordSecretRef) || has(self.auth.passwordHash) || (has(self.auth.sshAuthorizedKeys) && size(self.auth.sshAuthorizedKeys) > 0) || (has(self.ftpsAuth) && self.ftpsAuth == 'certificate')").message("spec.auth: a password (secret or hash), at least one SSH key, or ftpsAuth certificate is required")
)]
pub struct TransferUserSpec {
    /// The FileTransferServer (same namespace) this user logs in to. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.serverRef is immutable"))]
    pub server_ref: ServerRef,
    /// Login name. Immutable.
    #[x_kube(
        validation = Rule::new("self == oldSelf").message("spec.username is immutable"),
        validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$')").message("spec.username must be 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit")
    )]
    pub username: String,
    /// Credentials.
    pub auth: UserAuth,
    /// Home directory relative to the server's data root (default: the username).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)') && !self.contains('//')").message("spec.home must be relative and must not contain '..'"))]
    pub home: Option<String>,
    /// What the user may do: list, download, upload, overwrite, delete, rename, mkdir, rmdir.
    pub permissions: Vec<Permission>,
    /// Source networks (CIDR) the user may log in from; empty allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_cidrs: Vec<String>,
    /// Protocols this user may use (default: all the server serves).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<Protocol>,
    /// RFC 3339 instant after which logins are refused and the user is left out of users.yaml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// A disabled user is left out of users.yaml; its sessions end.
    #[serde(default)]
    pub disabled: bool,
    /// TOTP (RFC 6238) second factor: FTPS clients send `PASS <password><code>`, SFTP clients
    /// answer a keyboard-interactive `Verification code:` prompt after their key or password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<UserTotp>,
    /// Client certificates that identify this user on FTPS (each entry sets exactly one of
    /// `subject`, `san`, `sha256`). A certificate listed here opens only the users that list it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_certificates: Vec<sluice_config::ClientCertificate>,
    /// FTPS login: `password` (default), `certificate` (a mapped certificate, no password) or
    /// `certificateAndPassword`. Needs the server's `tls.clientCertificates`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ftps_auth: Option<sluice_config::FtpsAuth>,
    /// When the user may log in (several windows allowed; none: always), e.g.
    /// `{days: [Mon, Tue, Wed, Thu, Fri], from: "08:00", to: "18:00", timeZone: Europe/Berlin}`.
    /// `to` at or before `from` crosses midnight. Logins outside are refused and open sessions
    /// end at the window's edge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub login_windows: Vec<sluice_config::LoginWindow>,
    /// What ties FTPS data connections to the control session: `tlsResumption` (default: the
    /// data connection resumes the control connection's TLS session) or `addressAndLease`, an
    /// audited opt-in for clients that cannot resume sessions (Apache Commons Net FTPSClient,
    /// Java TLS 1.3): same source address, the passive port leased to this session alone, the
    /// first connection within 5 seconds, the control connection's client certificate. Shown
    /// in `status.ftpsDataBinding` and logged as a warning by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ftps_data_binding: Option<sluice_config::FtpsDataBinding>,
    /// Limits on the bytes and files the user may store under its home, enforced during the
    /// write: the upload that would cross a limit stops there and is not published (FTPS 552,
    /// SFTP failure naming the quota). See docs/quotas-and-retention.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<UserQuota>,
    /// Retention rules per directory of the home, e.g.
    /// `{path: outbox/, maxAge: 30d}` or `{path: inbox/, afterDownload: true}`; deletions are
    /// audited and emitted as file events. At most 16 rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub retention: Vec<UserRetention>,
}

/// A byte count: a number of bytes or a Kubernetes quantity string (`10Gi`, `500M`).
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(transparent)]
pub struct ByteQuantity(pub String);

impl<'de> Deserialize<'de> for ByteQuantity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteQuantity;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of bytes or a quantity such as 10Gi")
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<ByteQuantity, E> {
                Ok(ByteQuantity(value.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<ByteQuantity, E> {
                Ok(ByteQuantity(value.to_string()))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ByteQuantity, E> {
                Ok(ByteQuantity(text.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn byte_quantity_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Bytes the home may hold: a number of bytes or a quantity such as 10Gi or 500M (binary Ki Mi Gi Ti Pi Ei, decimal k M G T P E; whole numbers only).",
        "x-kubernetes-int-or-string": true,
        "x-kubernetes-validations": [{
            "rule": "type(self) == int ? self > 0 : (self.matches('^[0-9]+(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$') && !self.matches('^0+[A-Za-z]*$'))",
            "message": "spec.quota.maxBytes must be a positive number of bytes or a quantity such as 10Gi"
        }]
    })
}

/// Quota of a TransferUser.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.maxBytes) || has(self.maxFiles)").message("spec.quota: set maxBytes, maxFiles or both"))]
pub struct UserQuota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "byte_quantity_schema")]
    pub max_bytes: Option<ByteQuantity>,
    /// Regular files the home may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("spec.quota.maxFiles must be greater than 0"))]
    pub max_files: Option<i64>,
    /// Percentage of either limit at which the server audits `quota_threshold` and logs a
    /// warning, and the operator records a `QuotaThreshold` Warning Event (1-100, default 80).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("spec.quota.warnAtPercent must be 1-100"))]
    pub warn_at_percent: Option<i32>,
}

/// One retention rule of a TransferUser.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.maxAge) || (has(self.afterDownload) && self.afterDownload)").message("spec.retention[]: set maxAge, afterDownload: true, or both"))]
pub struct UserRetention {
    /// Directory relative to the home (`outbox/`; `/` for the whole home).
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("!self.matches('(^|/)[.][.](/|$)')").message("spec.retention[].path must not contain '..'"))]
    pub path: String,
    /// Files older than this (by modification time) are deleted: `30d`, `12h`, `90m`, `2w`,
    /// `1d12h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+[smhdw])+$')").message("spec.retention[].maxAge must be an age such as 30d, 12h or 1d12h"))]
    pub max_age: Option<String>,
    /// Delete a file once a download of it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_download: Option<bool>,
}

/// A user's TOTP setting; the shared secret stays in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserTotp {
    /// Secret (same namespace) holding the base32 TOTP secret (>= 128 bits) under `key`
    /// (default `totp`).
    pub secret_ref: SecretKeyRef,
    /// Code length, 6 (default) or 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 6 || self == 8").message("spec.totp.digits must be 6 or 8"))]
    pub digits: Option<u8>,
    /// Seconds per code, 15-300 (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 15 && self <= 300").message("spec.totp.period must be 15-300 seconds"))]
    pub period: Option<u64>,
    /// `SHA1` (default; what authenticator apps support), `SHA256` or `SHA512`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<sluice_config::TotpAlgorithm>,
}

/// Reference to a FileTransferServer in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct ServerRef {
    pub name: String,
}

/// A key in a Secret of the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct SecretKeyRef {
    pub name: String,
    /// Key in the Secret's data (default `password`; `totp` for `spec.totp.secretRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// How a user authenticates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserAuth {
    /// Secret holding the plain password; the operator hashes it with argon2id and checks it
    /// against the server's password policy. The password never leaves the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// An argon2id PHC hash, for those who hash offline (`sluice-server hash-password`). Its
    /// cost parameters are capped as the server caps them: m <= 65536 KiB, t <= 10, p <= 4 and
    /// m*t <= 131072 (a larger m would let one failed login exhaust the server's memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[x_kube(
        validation = rules::argon2_memory(),
        validation = rules::argon2_iterations(),
        validation = rules::argon2_parallelism(),
        validation = rules::argon2_cost()
    )]
    pub password_hash: Option<String>,
    /// OpenSSH authorized_keys lines (SFTP).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
}

/// Observed state of a TransferUser.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferUserStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` with reasons such as `PasswordPolicyViolation`, `SecretNotFound`,
    /// `ServerNotFound`, `DuplicateUsername`, `Expired`, `Disabled`, `PasswordExpired`
    /// (`Ready=False`, the user stays in users.yaml for key logins) and `PasswordExpiresSoon`
    /// (`Ready=True`, recorded once as a Warning Event).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Identifies the password Secret version that was last hashed, or the
    /// `spec.auth.passwordHash` in use (a digest, never of the password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_source_digest: Option<String>,
    /// When the password last changed (RFC 3339): when the operator hashed a new version of
    /// the password Secret, or first saw a new `spec.auth.passwordHash`. Rendered into
    /// users.yaml; password aging (`spec.security.passwordPolicy.maxAgeDays` of the server)
    /// counts from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_changed_at: Option<String>,
    /// When the password expires under the server's `passwordPolicy.maxAgeDays` (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_expires_at: Option<String>,
    /// Set when users.yaml carries a binding weaker than the default for this user
    /// (`addressAndLease`: FTPS data connections without TLS session resumption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ftps_data_binding: Option<sluice_config::FtpsDataBinding>,
    /// Quota usage as the server pods report it (users with `spec.quota` only; the largest
    /// value any replica reports), refreshed about every 30 seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaStatus>,
}

/// A TransferUser's quota usage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaStatus {
    /// Bytes in the home (published files and uploads in flight).
    pub used_bytes: i64,
    /// Regular files in the home (including uploads in flight).
    pub used_files: i64,
    /// How full the fuller limit is, in whole percent.
    pub percent: i64,
}
