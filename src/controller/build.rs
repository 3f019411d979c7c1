//! Step 4: every child object of a server, purely, from the references and verdicts of the
//! earlier steps. Nothing here talks to the API server, so the whole desired state of a server
//! is testable without a cluster. users.yaml is split into shards ([`crate::shards`]); a shard
//! whose content equals the deployed one is left out (one user's change rewrites one shard).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use sha2::{Digest, Sha256};

use super::resolve::References;
use super::validate::Validated;
use crate::conditions::ChildKind;
use crate::crd::{FileTransferServer, ServedProtocol};
use crate::render;
use crate::shards;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Render(#[from] render::RenderError),
    #[error("{0}")]
    Shards(#[from] shards::ShardError),
}

/// A child object, typed.
#[derive(Debug, Clone)]
pub enum Object {
    ConfigMap(Box<ConfigMap>),
    Secret(Box<Secret>),
    Service(Box<Service>),
    StatefulSet(Box<StatefulSet>),
    NetworkPolicy(Box<NetworkPolicy>),
    PodDisruptionBudget(Box<PodDisruptionBudget>),
}

#[derive(Debug, Clone)]
pub struct Child {
    pub kind: ChildKind,
    pub name: String,
    pub object: Object,
    /// The shard index of a users.yaml Secret.
    pub shard: Option<usize>,
}

/// The desired state of one server, ready to apply. Only [`super::apply`] turns it into an
/// [`super::apply::Applied`], from which the status is written.
#[derive(Debug)]
pub struct Prepared {
    /// In apply order: the ConfigMap, the users.yaml shards (highest index first, so a user
    /// that moves to a new shard is written there before it leaves the old one; the server
    /// refuses a user in two shards and keeps serving the previous snapshot meanwhile), shards
    /// past a reduced count emptied, Services, the StatefulSet, the NetworkPolicy, the
    /// PodDisruptionBudget.
    pub children: Vec<Child>,
    /// Username (lower case) → its shard index.
    pub shard_of_user: BTreeMap<String, usize>,
    /// Shard index → SHA-256 (hex) of its rendered users.yaml, as the pods' `GET /loaded`
    /// reports the files they serve.
    pub shard_digests: BTreeMap<usize, String>,
    pub shard_count: usize,
    /// Shards that are already deployed as rendered (not applied again).
    pub unchanged_shards: Vec<usize>,
    /// Per-pod Services wanted (the others are deleted).
    pub per_pod_services: Option<i32>,
    /// The SSH host key Secret must be created (it never is replaced).
    pub create_ssh_host_key: bool,
    pub passive: render::PassiveAddresses,
}

pub fn build(
    server: &FileTransferServer,
    references: &References,
    validated: &Validated,
) -> Result<Prepared, BuildError> {
    let names = &references.names;
    let passive = references.passive.clone();
    let server_config = render::server_config(server, passive.shared.as_deref(), &passive.by_pod);
    let server_yaml = render::to_yaml("server.yaml", &server_config)?;
    let restart_digest = {
        let listeners = render::to_yaml("server.yaml", &server_config.listeners)?;
        hex::encode(&Sha256::digest(listeners.as_bytes())[..8])
    };
    let list = &validated.users.list;
    let rendered = shards::render(list, references.shard_count)?;
    let count = rendered.count();
    let shard_of_user = list
        .users
        .iter()
        .map(|u| {
            (
                u.username.to_ascii_lowercase(),
                shards::shard_of(&u.username, count),
            )
        })
        .collect();

    let shard_digests = rendered
        .files
        .iter()
        .enumerate()
        .map(|(index, text)| (index, hex::encode(Sha256::digest(text.as_bytes()))))
        .collect();
    let mut children = vec![Child {
        kind: ChildKind::ConfigMap,
        name: names.config_map(),
        object: Object::ConfigMap(Box::new(render::config_map(server, &server_yaml)?)),
        shard: None,
    }];
    let mut unchanged_shards = Vec::new();
    for (index, text) in rendered.files.iter().enumerate().rev() {
        // Shard 0 also carries the count: rewritten when the count changes.
        let same_count = index != 0 || count == references.shard_count;
        if same_count && references.shards.get(&index) == Some(text) {
            unchanged_shards.push(index);
            continue;
        }
        children.push(Child {
            kind: ChildKind::UsersSecret,
            name: names.users_shard(index),
            object: Object::Secret(Box::new(render::users_shard_secret(
                server, index, count, text,
            )?)),
            shard: Some(index),
        });
    }
    // Shards past a reduced count are emptied rather than deleted (the operator has no
    // delete right on Secrets); the garbage collector removes them with the server.
    for (index, text) in references.shards.range(count..).rev() {
        if text.as_str() == shards::EMPTY {
            continue;
        }
        children.push(Child {
            kind: ChildKind::UsersSecret,
            name: names.users_shard(*index),
            object: Object::Secret(Box::new(render::users_shard_secret(
                server,
                *index,
                count,
                shards::EMPTY,
            )?)),
            shard: None,
        });
    }
    let service = |object: Service| Child {
        kind: ChildKind::Service,
        name: object.metadata.name.clone().unwrap_or_default(),
        object: Object::Service(Box::new(object)),
        shard: None,
    };
    children.push(service(render::headless_service(server)?));
    children.push(service(render::client_service(server, None)?));
    let per_pod = server.spec.exposure.per_pod_services;
    if per_pod {
        for ordinal in 0..server.spec.replicas {
            children.push(service(render::client_service(server, Some(ordinal))?));
        }
    }
    children.push(Child {
        kind: ChildKind::StatefulSet,
        name: names.server.clone(),
        object: Object::StatefulSet(Box::new(render::stateful_set(server, &restart_digest)?)),
        shard: None,
    });
    children.push(Child {
        kind: ChildKind::NetworkPolicy,
        name: names.server.clone(),
        object: Object::NetworkPolicy(Box::new(render::network_policy(server)?)),
        shard: None,
    });
    children.push(Child {
        kind: ChildKind::PodDisruptionBudget,
        name: names.server.clone(),
        object: Object::PodDisruptionBudget(Box::new(render::pod_disruption_budget(server)?)),
        shard: None,
    });
    Ok(Prepared {
        children,
        shard_of_user,
        shard_digests,
        shard_count: count,
        unchanged_shards,
        per_pod_services: per_pod.then_some(server.spec.replicas),
        create_ssh_host_key: server.spec.protocols.contains(&ServedProtocol::Sftp)
            && !references.ssh_host_key_exists,
        passive,
    })
}
