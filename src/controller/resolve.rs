//! Step 1: read everything a FileTransferServer references, and nothing else. Users and marked
//! Secrets come from the watch caches (one watch each, no list per reconcile); a referenced
//! Secret that is not in the cache is looked up as metadata only, to tell "not marked" from
//! "not found" without reading its data. The operator's own Secrets (users.yaml shards, the
//! digest key) are read by name or by their label.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::Context;
use crate::crd::{FileTransferServer, TransferUser};
use crate::render::{self, Names};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("reading references: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Render(#[from] render::RenderError),
    #[error("the {0} cache stopped before it was filled (the operator is shutting down)")]
    CacheClosed(&'static str),
}

/// What one server references, as read at the start of a reconcile.
pub struct References {
    pub names: Names,
    /// The server's TransferUsers (those the types reject are left out; their own reconcile
    /// reports them).
    pub users: Vec<TransferUser>,
    /// Referenced Secrets marked for Sluice, by name.
    pub secrets: BTreeMap<String, Secret>,
    /// Referenced Secrets that exist without the mark (never read).
    pub unmarked: BTreeSet<String>,
    /// The deployed users.yaml shards by index.
    pub shards: BTreeMap<usize, String>,
    /// The deployed shard count (1 when nothing is deployed yet).
    pub shard_count: usize,
    /// The server's key for password version digests.
    pub digest_key: Vec<u8>,
    /// Whether the SSH host key Secret exists (it is created once, never regenerated).
    pub ssh_host_key_exists: bool,
    pub passive: render::PassiveAddresses,
    /// The client Service's load-balancer address.
    pub client_address: Option<String>,
    /// The Secrets `spec.storage.objectStore` names that do not exist, each
    /// `<field>: Secret "<name>" not found ...` (looked up as metadata only).
    pub object_store_missing: Vec<String>,
}

impl References {
    /// Addresses the certificate must name: the client Service's and each pod's.
    pub fn addresses(&self) -> Vec<String> {
        self.client_address
            .iter()
            .chain(self.passive.by_pod.values())
            .cloned()
            .collect()
    }
}

/// Label of a users.yaml shard Secret: the server it belongs to.
pub const SHARD_OF_LABEL: &str = "sluice.dev/users-of";
/// Label of a users.yaml shard Secret: its index.
pub const SHARD_INDEX_LABEL: &str = "sluice.dev/users-shard";

pub async fn resolve(
    server: &FileTransferServer,
    context: &Context,
) -> Result<References, ResolveError> {
    let names = Names::of(server)?;
    // Until the first list of users and Secrets has arrived, the caches look empty: a shard
    // rendered then would drop every user (an operator restart would lock them all out).
    context.users_filled.wait("TransferUser").await?;
    context.secrets_filled.wait("Secret").await?;
    let namespace = names.namespace.clone();
    let client = context.client.clone();
    let users: Vec<TransferUser> = context
        .users
        .state()
        .iter()
        .filter(|u| u.namespace().as_deref() == Some(namespace.as_str()))
        .filter_map(|u| u.parsed.as_ref().ok())
        .filter(|u| u.spec.server_ref.name == names.server)
        .cloned()
        .collect();
    let marked: BTreeMap<String, std::sync::Arc<Secret>> = context
        .secrets
        .state()
        .into_iter()
        .filter(|s| s.namespace().as_deref() == Some(namespace.as_str()))
        .map(|s| (s.name_any(), s))
        .collect();
    let referenced: BTreeSet<String> = users
        .iter()
        .flat_map(|u| {
            u.spec
                .auth
                .password_secret_ref
                .iter()
                .map(|r| r.name.clone())
                .chain(u.spec.totp.iter().map(|t| t.secret_ref.name.clone()))
        })
        .chain(server.spec.tls.secret_name.clone())
        .collect();
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut secrets = BTreeMap::new();
    let mut unmarked = BTreeSet::new();
    for name in referenced {
        match marked.get(&name) {
            Some(secret) => {
                secrets.insert(name, secret.as_ref().clone());
            }
            None => {
                if secret_api.get_metadata_opt(&name).await?.is_some() {
                    unmarked.insert(name);
                }
            }
        }
    }

    // Mounted, never read: whether they exist is all the operator asks (as metadata), so a
    // missing one is reported instead of pods that wait for it without a word.
    let mut object_store_missing = Vec::new();
    if let Some(store) = &server.spec.storage.object_store {
        for (field, name) in crate::object_store::referenced_secrets(store) {
            if !marked.contains_key(&name) && secret_api.get_metadata_opt(&name).await?.is_none() {
                object_store_missing.push(format!(
                    "{field}: Secret {name:?} not found in namespace {namespace}; the pods wait for it"
                ));
            }
        }
    }

    let (shards, shard_count) = deployed_shards(&secret_api, &names).await?;
    let digest_key = digest_key(&secret_api, server, &names).await?;
    let ssh_host_key_exists = secret_api
        .get_metadata_opt(&names.ssh_host_key_secret())
        .await?
        .is_some();

    let service_api: Api<Service> = Api::namespaced(client, &namespace);
    let client_address = service_address(service_api.get_opt(&names.server).await?.as_ref()).await;
    let mut per_pod_addresses = BTreeMap::new();
    if server.spec.exposure.per_pod_services {
        for ordinal in 0..server.spec.replicas {
            let pod = names.pod(ordinal);
            let service = service_api.get_opt(&pod).await?;
            per_pod_addresses.insert(pod, service_address(service.as_ref()).await);
        }
    }
    let passive = render::passive_addresses(server, client_address.as_deref(), &per_pod_addresses);
    Ok(References {
        names,
        users,
        secrets,
        unmarked,
        shards,
        shard_count,
        digest_key,
        ssh_host_key_exists,
        passive,
        client_address,
        object_store_missing,
    })
}

/// The users.yaml shards deployed now, by index, and their count. Shard 0 is the Secret
/// `<server>-users`, which also records the count (annotation), so that a shard count is
/// never guessed from a half-finished change.
async fn deployed_shards(
    api: &Api<Secret>,
    names: &Names,
) -> Result<(BTreeMap<usize, String>, usize), ResolveError> {
    let list = api
        .list(&ListParams::default().labels(&format!("{SHARD_OF_LABEL}={}", names.server)))
        .await?;
    let mut shards = BTreeMap::new();
    let mut count = 1;
    for secret in list.items {
        let Some(index) = secret
            .labels()
            .get(SHARD_INDEX_LABEL)
            .and_then(|i| i.parse::<usize>().ok())
        else {
            continue;
        };
        if index == 0 {
            count = secret
                .annotations()
                .get(render::SHARD_COUNT_ANNOTATION)
                .and_then(|c| c.parse().ok())
                .unwrap_or(1);
        }
        if let Some(text) = secret
            .data
            .as_ref()
            .and_then(|d| d.get(render::USERS_KEY))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
        {
            shards.insert(index, text);
        }
    }
    // A users Secret written before shards existed (no labels) still holds hashes to reuse.
    if shards.is_empty()
        && let Some(text) = api
            .get_opt(&names.users_secret())
            .await?
            .and_then(|s| s.data?.remove(render::USERS_KEY))
            .and_then(|b| String::from_utf8(b.0).ok())
    {
        shards.insert(0, text);
    }
    Ok((shards, count))
}

/// The server's password-digest key, created on first use (32 random bytes).
async fn digest_key(
    api: &Api<Secret>,
    server: &FileTransferServer,
    names: &Names,
) -> Result<Vec<u8>, ResolveError> {
    let name = names.digest_key_secret();
    if let Some(key) = api
        .get_opt(&name)
        .await?
        .and_then(|s| s.data?.remove(render::DIGEST_KEY))
    {
        return Ok(key.0);
    }
    let key: [u8; 32] = rand::random();
    match api
        .create(
            &PostParams::default(),
            &render::digest_key_secret(server, &key)?,
        )
        .await
    {
        Ok(_) => {
            info!(server = %names.server, "created the password digest key");
            Ok(key.to_vec())
        }
        // Created meanwhile: use that one.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(api
            .get(&name)
            .await?
            .data
            .and_then(|mut d| d.remove(render::DIGEST_KEY))
            .map(|b| b.0)
            .unwrap_or_default()),
        Err(e) => Err(e.into()),
    }
}

/// The load balancer address of a Service, with a hostname resolved to an address (IPv4
/// first: PASV replies carry IPv4 only). A hostname that does not resolve counts as no address.
async fn service_address(service: Option<&Service>) -> Option<String> {
    match render::ingress_address(service?)? {
        render::IngressAddress::Ip(ip) => Some(ip.to_string()),
        render::IngressAddress::Hostname(host) => {
            let resolved: Vec<std::net::SocketAddr> = match tokio::net::lookup_host((
                host.as_str(),
                0,
            ))
            .await
            {
                Ok(addresses) => addresses.collect(),
                Err(error) => {
                    warn!(%host, %error, "cannot resolve the load balancer hostname of a Service");
                    return None;
                }
            };
            resolved
                .iter()
                .find(|a| a.is_ipv4())
                .or(resolved.first())
                .map(|a| a.ip().to_string())
        }
    }
}
