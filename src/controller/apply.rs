//! Step 5: apply each child on its own with server-side apply (one field manager, owner
//! references). A child the API server refuses (a 422 on the StatefulSet's immutable
//! volumeClaimTemplates, a users shard over the size limit) is recorded and the others are
//! still applied, so a tightened NetworkPolicy is never held back by an unrelated failure.
//! The result, [`Applied`], can only be made here: the status is computed from what was
//! applied, never from what was merely rendered.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::build::{Child, Object, Prepared};
use super::{Context, FIELD_MANAGER};
use crate::conditions::ChildKind;
use crate::crd::FileTransferServer;
use crate::render;

/// A child the API server did not accept.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub kind: ChildKind,
    pub name: String,
    pub message: String,
}

/// What was applied of a [`Prepared`].
#[derive(Debug)]
pub struct Applied {
    failures: Vec<Failure>,
    stateful_set: Option<StatefulSet>,
    failed_shards: BTreeSet<usize>,
    prepared: Prepared,
}

impl Applied {
    pub fn failures(&self) -> &[Failure] {
        &self.failures
    }
    /// The StatefulSet as the API server returned it (with its status), when it was applied.
    pub fn stateful_set(&self) -> Option<&StatefulSet> {
        self.stateful_set.as_ref()
    }
    /// Whether the shard holding `username` is deployed as rendered.
    pub fn user_applied(&self, username: &str) -> bool {
        self.prepared
            .shard_of_user
            .get(&username.to_ascii_lowercase())
            .is_some_and(|shard| !self.failed_shards.contains(shard))
    }
    /// The file name and rendered digest of the shard holding `username`.
    pub fn shard_of(&self, username: &str) -> Option<(String, &str)> {
        let shard = *self
            .prepared
            .shard_of_user
            .get(&username.to_ascii_lowercase())?;
        let digest = self.prepared.shard_digests.get(&shard)?;
        Some((super::loaded::shard_file(shard), digest.as_str()))
    }
    pub fn shard_count(&self) -> usize {
        self.prepared.shard_count
    }
    pub fn passive(&self) -> &render::PassiveAddresses {
        &self.prepared.passive
    }
    /// For tests of the status step: an [`Applied`] with the given failures.
    #[cfg(test)]
    pub fn for_test(
        prepared: Prepared,
        failures: Vec<Failure>,
        failed_shards: BTreeSet<usize>,
    ) -> Applied {
        Applied {
            failures,
            stateful_set: None,
            failed_shards,
            prepared,
        }
    }
}

/// Why an existing object named like a child is not this server's to change, if it is not:
/// another server's child (names can collide: the per-pod Service `a-1` of server `a` and the
/// client Service of server `a-1`) or an object somebody else made. Server-side apply would
/// otherwise take it over, selector and all.
pub fn foreign_owner(existing: &ObjectMeta, server: &FileTransferServer) -> Option<String> {
    let uid = server.metadata.uid.as_deref().unwrap_or_default();
    let owners = existing.owner_references.as_deref().unwrap_or_default();
    if owners.iter().any(|o| o.uid == uid) {
        return None;
    }
    if let Some(owner) = owners.iter().find(|o| o.controller == Some(true)) {
        return Some(format!("it belongs to {} {}", owner.kind, owner.name));
    }
    let labels = existing.labels.clone().unwrap_or_default();
    let ours = labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        == Some(FIELD_MANAGER)
        && labels.get("app.kubernetes.io/instance") == server.metadata.name.as_ref();
    (!ours).then(|| "it exists and was not made by the operator for this server".to_string())
}

async fn patch<K>(
    client: &kube::Client,
    server: &FileTransferServer,
    namespace: &str,
    object: &K,
) -> Result<K, kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = object.meta().name.clone().unwrap_or_default();
    if let Some(existing) = api.get_metadata_opt(&name).await?
        && let Some(why) = foreign_owner(&existing.metadata, server)
    {
        return Err(kube::Error::Api(Box::new(kube::core::Status {
            code: 409,
            reason: "NameConflict".to_string(),
            message: format!(
                "{why}; rename this FileTransferServer (its children are named <name>, <name>-<ordinal>, <name>-headless, <name>-config, <name>-users[-<n>], <name>-tls ...)"
            ),
            ..kube::core::Status::default()
        })));
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
}

async fn apply_one(
    client: &kube::Client,
    server: &FileTransferServer,
    namespace: &str,
    child: &Child,
) -> Result<Option<StatefulSet>, kube::Error> {
    match &child.object {
        Object::ConfigMap(o) => patch::<ConfigMap>(client, server, namespace, o)
            .await
            .map(|_| None),
        Object::Secret(o) => patch::<Secret>(client, server, namespace, o)
            .await
            .map(|_| None),
        Object::Service(o) => patch::<Service>(client, server, namespace, o)
            .await
            .map(|_| None),
        Object::StatefulSet(o) => patch::<StatefulSet>(client, server, namespace, o)
            .await
            .map(Some),
        Object::NetworkPolicy(o) => patch::<NetworkPolicy>(client, server, namespace, o)
            .await
            .map(|_| None),
        Object::PodDisruptionBudget(o) => {
            patch::<PodDisruptionBudget>(client, server, namespace, o)
                .await
                .map(|_| None)
        }
    }
}

fn message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

pub async fn apply(server: &FileTransferServer, prepared: Prepared, context: &Context) -> Applied {
    let namespace = server.namespace().unwrap_or_default();
    let client = &context.client;
    let mut failures = Vec::new();
    let mut failed_shards = BTreeSet::new();
    let mut stateful_set = None;
    let mut record = |kind: ChildKind, name: &str, error: &kube::Error| {
        warn!(server = %server.name_any(), child = %name, kind = kind.as_str(), %error, "cannot apply a child");
        failures.push(Failure {
            kind,
            name: name.to_string(),
            message: message(error),
        });
    };

    // Created once, never replaced: clients pin the host key, the pods hold the token.
    if prepared.create_ssh_host_key
        && let Err(error) = create_ssh_host_key(server, client, &namespace).await
    {
        record(ChildKind::SshHostKey, "ssh host key", &error);
    }
    if let Err(error) = crate::ban_sync::ensure_secret(client, server).await {
        warn!(server = %server.name_any(), %error, "cannot create the ban-sync Secret");
    }

    for child in &prepared.children {
        match apply_one(client, server, &namespace, child).await {
            Ok(Some(applied)) => stateful_set = Some(applied),
            Ok(None) => {}
            Err(error) => {
                if let Some(shard) = child.shard {
                    failed_shards.insert(shard);
                }
                record(child.kind, &child.name, &error);
            }
        }
    }
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    if let Err(error) =
        delete_unwanted_pod_services(&services, server, prepared.per_pod_services).await
    {
        record(ChildKind::Service, "per-pod Services", &error);
    }
    Applied {
        failures,
        stateful_set,
        failed_shards,
        prepared,
    }
}

async fn create_ssh_host_key(
    server: &FileTransferServer,
    client: &kube::Client,
    namespace: &str,
) -> Result<(), kube::Error> {
    let key = generate_host_key();
    let secret = render::ssh_host_key_secret(server, &key)
        .map_err(|e| kube::Error::Service(Box::new(std::io::Error::other(e.to_string()))))?;
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(server = %server.name_any(), "created the SSH host key");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// A new ed25519 host key in OpenSSH private key format.
fn generate_host_key() -> String {
    use russh::keys::ssh_key::LineEnding;
    use russh::keys::ssh_key::private::Ed25519Keypair;
    let seed: [u8; 32] = rand::random();
    let key = russh::keys::PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.to_openssh(LineEnding::LF)
        .map(|text| text.to_string())
        .unwrap_or_default()
}

async fn delete_unwanted_pod_services(
    api: &Api<Service>,
    server: &FileTransferServer,
    wanted: Option<i32>,
) -> Result<(), kube::Error> {
    let name = server.name_any();
    let selector =
        format!("app.kubernetes.io/instance={name},app.kubernetes.io/managed-by={FIELD_MANAGER}");
    let existing = api.list(&ListParams::default().labels(&selector)).await?;
    for service in existing.items {
        let service_name = service.name_any();
        let Some(ordinal) = service_name
            .strip_prefix(&format!("{name}-"))
            .and_then(|rest| rest.parse::<i32>().ok())
        else {
            continue;
        };
        if wanted.is_none_or(|replicas| ordinal >= replicas) {
            info!(service = %service_name, "deleting a per-pod Service that is no longer wanted");
            api.delete(&service_name, &DeleteParams::default()).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn server(name: &str, uid: &str) -> FileTransferServer {
        let mut server: FileTransferServer = serde_saphyr::from_str(&format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: FileTransferServer\nmetadata:\n  name: {name}\n  namespace: t\nspec:\n  protocols: [sftp]\n"
        ))
        .unwrap();
        server.metadata.uid = Some(uid.to_string());
        server
    }

    fn owned_by(kind: &str, name: &str, uid: &str) -> ObjectMeta {
        ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                kind: kind.to_string(),
                name: name.to_string(),
                uid: uid.to_string(),
                controller: Some(true),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_child_name_held_by_another_server_or_by_somebody_else_is_not_taken_over() {
        let a = server("a", "uid-a");
        // The client Service of server `a-1` where server `a` wants its per-pod Service `a-1`.
        let why = foreign_owner(&owned_by("FileTransferServer", "a-1", "uid-a-1"), &a).unwrap();
        assert!(why.contains("FileTransferServer a-1"), "{why}");
        let why = foreign_owner(&ObjectMeta::default(), &a).unwrap();
        assert!(why.contains("not made by the operator"), "{why}");
        // Its own child, and one an earlier version made without an owner reference.
        assert_eq!(
            foreign_owner(&owned_by("FileTransferServer", "a", "uid-a"), &a),
            None
        );
        let labelled = ObjectMeta {
            labels: Some(
                [
                    ("app.kubernetes.io/managed-by", FIELD_MANAGER),
                    ("app.kubernetes.io/instance", "a"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            ..ObjectMeta::default()
        };
        assert_eq!(foreign_owner(&labelled, &a), None);
    }

    #[test]
    fn a_generated_host_key_is_an_openssh_ed25519_key() {
        let key = generate_host_key();
        assert!(
            key.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"),
            "{key}"
        );
        assert_ne!(key, generate_host_key());
    }
}
