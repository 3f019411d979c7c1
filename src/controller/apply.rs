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

async fn patch<K>(client: &kube::Client, namespace: &str, object: &K) -> Result<K, kube::Error>
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
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
}

async fn apply_one(
    client: &kube::Client,
    namespace: &str,
    child: &Child,
) -> Result<Option<StatefulSet>, kube::Error> {
    match &child.object {
        Object::ConfigMap(o) => patch::<ConfigMap>(client, namespace, o).await.map(|_| None),
        Object::Secret(o) => patch::<Secret>(client, namespace, o).await.map(|_| None),
        Object::Service(o) => patch::<Service>(client, namespace, o).await.map(|_| None),
        Object::StatefulSet(o) => patch::<StatefulSet>(client, namespace, o).await.map(Some),
        Object::NetworkPolicy(o) => patch::<NetworkPolicy>(client, namespace, o)
            .await
            .map(|_| None),
        Object::PodDisruptionBudget(o) => patch::<PodDisruptionBudget>(client, namespace, o)
            .await
            .map(|_| None),
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
        match apply_one(client, &namespace, child).await {
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
