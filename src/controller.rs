//! The reconcilers: read what a FileTransferServer references → validate → build every child
//! with the pure builders → server-side apply (one field manager, owner references) → status
//! from what was applied. TransferUsers are resolved by their server's reconcile (so duplicate
//! usernames are decided in one place); a small second controller marks users whose server
//! does not exist.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use sluice_config as config;
use tracing::{debug, info, warn};

use crate::certs;
use crate::crd::{FileTransferServer, FileTransferServerStatus, TlsSource, TransferUser};
use crate::render::{self, Names};
use crate::users::{self, UserInputs};

pub const FIELD_MANAGER: &str = "sluice-operator";
const CA_LIFETIME_DAYS: i64 = 1095;
const DEFAULT_CERT_LIFETIME: &str = "2160h";

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Render(#[from] render::RenderError),
    #[error("certificate: {0}")]
    Cert(#[from] certs::CertError),
}

impl ControllerError {
    fn reason(&self) -> &'static str {
        match self {
            ControllerError::Kube(_) => "ApiError",
            ControllerError::Render(_) => "RenderError",
            ControllerError::Cert(_) => "CertificateError",
        }
    }
}

/// Shared state of the controllers.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<crate::metrics::OperatorMetrics>,
    pub recorder: Recorder,
    /// The clock, injectable for tests.
    pub now: fn() -> Timestamp,
}

/// An Api over every namespace, or over the one namespace the operator is limited to (its
/// chart's `rbacScope: namespace` grants a Role there and nothing cluster-wide).
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs both controllers until the stream ends (i.e. forever), over every namespace or only
/// `namespace`. Tests call this with their own client.
pub async fn run(
    client: Client,
    metrics: Arc<crate::metrics::OperatorMetrics>,
    namespace: Option<String>,
) {
    let ns = namespace.as_deref();
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        metrics,
        now: Timestamp::now,
    });
    let servers: Api<FileTransferServer> = scoped(&client, ns);
    let users: Api<TransferUser> = scoped(&client, ns);
    let secrets: Api<Secret> = scoped(&client, ns);
    let server_controller = Controller::new(servers, watcher::Config::default())
        .trigger_backoff(crate::backoff::watches());
    let store = server_controller.store();
    let secret_store = store.clone();
    let server_loop = server_controller
        .owns(
            scoped::<StatefulSet>(&client, ns),
            watcher::Config::default(),
        )
        .owns(scoped::<Service>(&client, ns), watcher::Config::default())
        .owns(scoped::<ConfigMap>(&client, ns), watcher::Config::default())
        .watches(
            users.clone(),
            watcher::Config::default(),
            |user: TransferUser| {
                user.namespace()
                    .map(|ns| ObjectRef::new(&user.spec.server_ref.name).within(&ns))
            },
        )
        // A user's password Secret changed: reconcile the servers of that namespace. Secrets
        // the operator writes itself are filtered out by label.
        .watches(
            secrets,
            watcher::Config::default(),
            move |secret: Secret| {
                let managed = secret
                    .labels()
                    .get("app.kubernetes.io/managed-by")
                    .is_some_and(|v| v == FIELD_MANAGER);
                let namespace = secret.namespace();
                secret_store
                    .state()
                    .into_iter()
                    .filter(|server| !managed && server.namespace() == namespace)
                    .map(|server| ObjectRef::from_obj(server.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(measured_reconcile_server, error_policy, context.clone())
        .for_each(|result| async move {
            match result {
                // A child or a Secret changed after its server was deleted: nothing to do.
                Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                    debug!(%object, "server no longer exists; skipping");
                }
                Err(error) => warn!(%error, "server reconcile failed"),
                Ok(_) => {}
            }
        });
    let user_controller = Controller::new(users, watcher::Config::default())
        .trigger_backoff(crate::backoff::watches());
    let user_store = user_controller.store();
    // A server that appears or goes changes the status of the users that reference it
    // (ServerNotFound), so users are also reconciled when their server changes.
    let user_loop = user_controller
        .watches(
            scoped::<FileTransferServer>(&client, ns),
            watcher::Config::default(),
            move |server: FileTransferServer| {
                let namespace = server.namespace();
                let name = server.name_any();
                user_store
                    .state()
                    .into_iter()
                    .filter(|user| {
                        user.namespace() == namespace && user.spec.server_ref.name == name
                    })
                    .map(|user| ObjectRef::from_obj(user.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile_user, user_error_policy, context.clone())
        .for_each(|result| async move {
            match result {
                Err(kube::runtime::controller::Error::ObjectNotFound(_)) | Ok(_) => {}
                Err(error) => warn!(%error, "user reconcile failed"),
            }
        });
    futures::join!(server_loop, user_loop);
}

async fn measured_reconcile_server(
    server: Arc<FileTransferServer>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let started = std::time::Instant::now();
    let result = reconcile_server(server, context.clone()).await;
    let kind = ("kind", "FileTransferServer".to_string());
    context
        .metrics
        .duration
        .get_or_create(&vec![kind.clone()])
        .observe(started.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "success" } else { "failure" };
    context
        .metrics
        .reconciles
        .get_or_create(&vec![kind, ("result", outcome.to_string())])
        .inc();
    if let Err(error) = &result {
        context
            .metrics
            .failures
            .get_or_create(&vec![("reason", error.reason().to_string())])
            .inc();
    }
    result
}

fn error_policy(
    server: Arc<FileTransferServer>,
    error: &ControllerError,
    _: Arc<Context>,
) -> Action {
    warn!(server = %server.name_any(), reason = error.reason(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(15))
}

fn user_error_policy(_: Arc<TransferUser>, _: &ControllerError, _: Arc<Context>) -> Action {
    Action::requeue(Duration::from_secs(30))
}

async fn apply<K>(api: &Api<K>, object: &K) -> Result<K, ControllerError>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(&name, &params, &Patch::Apply(object)).await?)
}

/// A condition that keeps its lastTransitionTime while its status does not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.chars().take(1024).collect(),
        observed_generation: generation,
        last_transition_time,
    }
}

fn is_true(conditions: &[Condition], type_: &str) -> Option<bool> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status == "True")
}

struct CertOutcome {
    ready: bool,
    reason: &'static str,
    message: String,
    info: Option<certs::CertInfo>,
    renew_at: Option<Timestamp>,
}

fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// DNS names and addresses the server certificate must carry.
pub fn certificate_names(server: &FileTransferServer, addresses: &[String]) -> Vec<String> {
    let name = server.name_any();
    let namespace = server.namespace().unwrap_or_default();
    let mut names = server.spec.tls.dns_names.clone();
    for candidate in [
        name.clone(),
        format!("{name}.{namespace}"),
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}.svc.cluster.local"),
    ] {
        if !names.contains(&candidate) {
            names.push(candidate);
        }
    }
    for ip in server
        .spec
        .tls
        .ip_addresses
        .iter()
        .map(String::as_str)
        .chain(server.spec.passive.advertised_address.as_deref())
        .chain(addresses.iter().map(String::as_str))
    {
        if !names.iter().any(|n| n == ip) {
            names.push(ip.to_string());
        }
    }
    names
}

async fn ensure_certificate(
    server: &FileTransferServer,
    names: &Names,
    addresses: &[String],
    context: &Context,
) -> Result<CertOutcome, ControllerError> {
    let namespace = names.namespace.clone();
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), &namespace);
    let now = (context.now)();
    let tls = &server.spec.tls;
    match tls.source {
        TlsSource::SecretRef => {
            let secret_name = tls.secret_name.clone().unwrap_or_default();
            let Some(secret) = secrets.get_opt(&secret_name).await? else {
                return Ok(CertOutcome {
                    ready: false,
                    reason: "SecretNotFound",
                    message: format!("spec.tls.secretName: Secret {secret_name} not found"),
                    info: None,
                    renew_at: None,
                });
            };
            let Some(pem) = secret_text(&secret, "tls.crt") else {
                return Ok(CertOutcome {
                    ready: false,
                    reason: "InvalidCertificate",
                    message: format!("Secret {secret_name} has no tls.crt"),
                    info: None,
                    renew_at: None,
                });
            };
            match certs::inspect(&format!("Secret {secret_name} tls.crt"), &pem) {
                Ok(info) if info.not_after <= now => Ok(CertOutcome {
                    ready: false,
                    reason: "Expired",
                    message: format!("certificate in Secret {secret_name} expired at {}", info.not_after),
                    info: Some(info),
                    renew_at: None,
                }),
                Ok(info) => {
                    let soon = info.not_after - SignedDuration::from_hours(24 * 30) <= now;
                    Ok(CertOutcome {
                        ready: true,
                        reason: if soon { "ExpiringSoon" } else { "Valid" },
                        message: format!("certificate from Secret {secret_name} valid until {}", info.not_after),
                        info: Some(info),
                        renew_at: None,
                    })
                }
                Err(error) => Ok(CertOutcome {
                    ready: false,
                    reason: "InvalidCertificate",
                    message: error.to_string(),
                    info: None,
                    renew_at: None,
                }),
            }
        }
        TlsSource::CertManager => Ok(CertOutcome {
            ready: false,
            reason: "CertManagerNotSupported",
            message: "spec.tls.source certManager is not supported by this operator version yet; use generated or secretRef".into(),
            info: None,
            renew_at: None,
        }),
        TlsSource::Generated => {
            let ca_lifetime = SignedDuration::from_hours(24 * CA_LIFETIME_DAYS);
            let ca_secret = secrets.get_opt(&names.ca_secret()).await?;
            let existing_ca = ca_secret.as_ref().and_then(|s| {
                Some(certs::Issued {
                    cert_pem: secret_text(s, "tls.crt")?,
                    key_pem: secret_text(s, "tls.key")?,
                    not_before: now,
                    not_after: now,
                })
            });
            let existing_ca_info = existing_ca
                .as_ref()
                .and_then(|ca| certs::inspect("CA", &ca.cert_pem).ok());
            let (ca, previous_ca, rotated_ca) = match (&existing_ca, &existing_ca_info) {
                (Some(ca), Some(info)) if !certs::needs_renewal(Some(info), &[], now, None) => {
                    let previous = ca_secret.as_ref().and_then(|s| secret_text(s, "previous.crt"));
                    (ca.clone(), previous, false)
                }
                _ => {
                    let fresh = certs::generate_ca(&format!("sluice CA {}/{}", names.namespace, names.server), now, ca_lifetime)?;
                    (fresh, existing_ca.as_ref().map(|c| c.cert_pem.clone()), true)
                }
            };
            if rotated_ca {
                let mut secret = render::tls_secret(server, names.ca_secret(), &ca.cert_pem, &ca.key_pem, &ca.cert_pem)?;
                if let (Some(previous), Some(data)) = (&previous_ca, secret.data.as_mut()) {
                    data.insert("previous.crt".into(), k8s_openapi::ByteString(previous.clone().into_bytes()));
                }
                apply(&secrets, &secret).await?;
                info!(server = %names.server, "issued a new CA");
            }
            let cert_names = certificate_names(server, addresses);
            let durations = certs::parse_duration(
                "spec.tls.duration",
                tls.duration.as_deref().unwrap_or(DEFAULT_CERT_LIFETIME),
            )
            .and_then(|lifetime| {
                let renew_before = tls
                    .renew_before
                    .as_deref()
                    .map(|text| certs::parse_duration("spec.tls.renewBefore", text))
                    .transpose()?;
                Ok((lifetime, renew_before))
            });
            let (lifetime, renew_before) = match durations {
                Ok(durations) => durations,
                Err(message) => {
                    return Ok(CertOutcome {
                        ready: false,
                        reason: "InvalidSpec",
                        message,
                        info: None,
                        renew_at: None,
                    });
                }
            };
            let current = secrets.get_opt(&names.tls_secret()).await?;
            let current_info = current
                .as_ref()
                .and_then(|s| secret_text(s, "tls.crt"))
                .and_then(|pem| certs::inspect("server certificate", &pem).ok());
            let info = if rotated_ca || certs::needs_renewal(current_info.as_ref(), &cert_names, now, renew_before) {
                let issued = certs::issue_server(&ca, &cert_names, now, lifetime)?;
                let bundle = certs::ca_bundle(&ca.cert_pem, previous_ca.as_deref(), now);
                let secret = render::tls_secret(server, names.tls_secret(), &issued.cert_pem, &issued.key_pem, &bundle)?;
                apply(&secrets, &secret).await?;
                info!(server = %names.server, not_after = %issued.not_after, "issued a server certificate");
                certs::inspect("server certificate", &issued.cert_pem)?
            } else {
                current_info.unwrap_or_else(|| unreachable_info(now))
            };
            let renew_at = certs::renewal_at(&info, renew_before);
            Ok(CertOutcome {
                ready: true,
                reason: "Issued",
                message: format!("certificate issued by the operator's CA, valid until {}", info.not_after),
                renew_at: Some(renew_at),
                info: Some(info),
            })
        }
    }
}

fn unreachable_info(now: Timestamp) -> certs::CertInfo {
    certs::CertInfo {
        not_before: now,
        not_after: now,
        sha256: String::new(),
        names: Vec::new(),
    }
}

fn service_address(service: &Service) -> Option<String> {
    let ingress = service
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .first()?
        .clone();
    ingress.ip.or(ingress.hostname)
}

async fn reconcile_server(
    server: Arc<FileTransferServer>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    if server.metadata.deletion_timestamp.is_some() {
        // Being deleted (finalizers of others, or its namespace going away): the garbage
        // collector removes the children; re-creating them would only fight it.
        return Ok(Action::await_change());
    }
    let names = Names::of(&server)?;
    let namespace = names.namespace.clone();
    let client = context.client.clone();
    let now = (context.now)();
    let generation = server.metadata.generation;
    let previous_conditions = server
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();

    // Read what the server references.
    let user_api: Api<TransferUser> = Api::namespaced(client.clone(), &namespace);
    let all_users = user_api.list(&ListParams::default()).await?;
    let users: Vec<TransferUser> = all_users
        .items
        .into_iter()
        .filter(|u| u.spec.server_ref.name == names.server)
        .collect();
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut secrets = BTreeMap::new();
    for user in &users {
        if let Some(reference) = &user.spec.auth.password_secret_ref
            && !secrets.contains_key(&reference.name)
            && let Some(secret) = secret_api.get_opt(&reference.name).await?
        {
            secrets.insert(reference.name.clone(), secret);
        }
    }
    let previous_users = secret_api
        .get_opt(&names.users_secret())
        .await?
        .and_then(|s| secret_text(&s, "users.yaml"))
        .and_then(|text| config::UserList::parse("users.yaml", &text).ok());
    let service_api: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let advertised = service_api
        .get_opt(&names.server)
        .await?
        .as_ref()
        .and_then(service_address);

    // Validate and build.
    let policy = server.spec.security.password_policy.clone();
    let resolved = tokio::task::spawn_blocking({
        let users = users.clone();
        move || {
            users::resolve(
                &UserInputs {
                    users: &users,
                    secrets: &secrets,
                    previous: previous_users.as_ref(),
                    policy: &policy,
                    now,
                },
                &|password| sluice_hash(password),
            )
        }
    })
    .await
    .map_err(|e| {
        ControllerError::Render(render::RenderError::Yaml {
            file: "users.yaml",
            message: e.to_string(),
        })
    })?;

    let mut per_pod_addresses = BTreeMap::new();
    if server.spec.exposure.per_pod_services {
        for ordinal in 0..server.spec.replicas {
            let pod = names.pod(ordinal);
            if let Some(address) = service_api
                .get_opt(&pod)
                .await?
                .as_ref()
                .and_then(service_address)
            {
                per_pod_addresses.insert(pod, address);
            }
        }
    }
    let addresses: Vec<String> = advertised
        .iter()
        .chain(per_pod_addresses.values())
        .cloned()
        .collect();
    let certificate = ensure_certificate(&server, &names, &addresses, &context).await?;
    let server_config = render::server_config(&server, advertised.as_deref(), &per_pod_addresses);
    let server_yaml = render::to_yaml("server.yaml", &server_config)?;
    let users_yaml = render::to_yaml("users.yaml", &resolved.list)?;
    let restart_digest = {
        use sha2::{Digest, Sha256};
        let listeners = render::to_yaml("server.yaml", &server_config.listeners)?;
        hex::encode(&Sha256::digest(listeners.as_bytes())[..8])
    };

    // The SSH host key is created once and never regenerated (clients pin it in known_hosts).
    if server
        .spec
        .protocols
        .contains(&crate::crd::ServedProtocol::Sftp)
        && secret_api
            .get_opt(&names.ssh_host_key_secret())
            .await?
            .is_none()
    {
        let key = generate_host_key()?;
        let secret = render::ssh_host_key_secret(&server, &key)?;
        secret_api
            .create(&kube::api::PostParams::default(), &secret)
            .await?;
        info!(server = %names.server, "created the SSH host key");
    }

    // Apply.
    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), &namespace),
        &render::config_map(&server, &server_yaml)?,
    )
    .await?;
    apply(&secret_api, &render::users_secret(&server, &users_yaml)?).await?;
    apply(&service_api, &render::headless_service(&server)?).await?;
    apply(&service_api, &render::client_service(&server, None)?).await?;
    let per_pod = server.spec.exposure.per_pod_services;
    if per_pod {
        for ordinal in 0..server.spec.replicas {
            apply(
                &service_api,
                &render::client_service(&server, Some(ordinal))?,
            )
            .await?;
        }
    }
    delete_unwanted_pod_services(&service_api, &server, &names, per_pod).await?;
    let stateful_set = apply(
        &Api::<StatefulSet>::namespaced(client.clone(), &namespace),
        &render::stateful_set(&server, &restart_digest)?,
    )
    .await?;
    apply(
        &Api::<NetworkPolicy>::namespaced(client.clone(), &namespace),
        &render::network_policy(&server)?,
    )
    .await?;
    apply(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace),
        &render::pod_disruption_budget(&server)?,
    )
    .await?;

    // Status of users.
    for user in &users {
        let Some(verdict) = resolved.verdicts.get(&user.name_any()) else {
            continue;
        };
        update_user_status(&user_api, user, verdict, now, &context).await?;
    }

    // Status of the server.
    let ready_replicas = stateful_set
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let endpoints_ready =
        ready_replicas >= server.spec.replicas.max(1) || server.spec.replicas == 0;
    let refused = resolved.verdicts.values().filter(|v| !v.ready).count();
    let conditions_without_ready = vec![
        condition(
            &previous_conditions,
            "CertificateReady",
            certificate.ready,
            certificate.reason,
            &certificate.message,
            generation,
            now,
        ),
        condition(
            &previous_conditions,
            "EndpointsReady",
            endpoints_ready,
            if endpoints_ready {
                "PodsReady"
            } else {
                "PodsNotReady"
            },
            &format!(
                "{ready_replicas}/{} pods ready; passive address {}",
                server.spec.replicas,
                advertised
                    .as_deref()
                    .or(server.spec.passive.advertised_address.as_deref())
                    .unwrap_or("the pod address")
            ),
            generation,
            now,
        ),
        condition(
            &previous_conditions,
            "UsersSynced",
            true,
            "Rendered",
            &format!(
                "{} users in users.yaml, {refused} refused (see their status)",
                resolved.list.users.len()
            ),
            generation,
            now,
        ),
    ];
    let all_ready = conditions_without_ready.iter().all(|c| c.status == "True");
    let blocking: Vec<String> = conditions_without_ready
        .iter()
        .filter(|c| c.status != "True")
        .map(|c| format!("{}: {}", c.type_, c.message))
        .collect();
    let mut conditions = vec![condition(
        &previous_conditions,
        "Ready",
        all_ready,
        if all_ready { "Ready" } else { "NotReady" },
        &if all_ready {
            "server is serving".to_string()
        } else {
            blocking.join("; ")
        },
        generation,
        now,
    )];
    conditions.extend(conditions_without_ready);
    if is_true(&previous_conditions, "Ready") != Some(all_ready) {
        publish(
            &context,
            server.as_ref(),
            if all_ready {
                EventType::Normal
            } else {
                EventType::Warning
            },
            if all_ready { "Ready" } else { "NotReady" },
            &conditions[0].message,
        )
        .await;
    }
    if let Some(info) = &certificate.info {
        context
            .metrics
            .certificate_expiry
            .get_or_create(&vec![
                ("namespace", namespace.clone()),
                ("server", names.server.clone()),
            ])
            .set(info.not_after.as_second());
    }
    let endpoint = {
        let host = advertised
            .clone()
            .unwrap_or_else(|| format!("{}.{}.svc", names.server, namespace));
        Some(format!("{host}:{}", server.spec.ports.ftps_explicit))
    };
    let status = FileTransferServerStatus {
        observed_generation: generation,
        conditions,
        endpoint,
        users: i32::try_from(resolved.list.users.len()).ok(),
        certificate_not_after: certificate.info.as_ref().map(|i| i.not_after.to_string()),
        certificate_renewal: certificate.renew_at.map(|t| t.to_string()),
        certificate_sha256: certificate.info.as_ref().map(|i| i.sha256.clone()),
    };
    if server.status.as_ref() != Some(&status) {
        let servers: Api<FileTransferServer> = Api::namespaced(client.clone(), &namespace);
        servers
            .patch_status(
                &names.server,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await?;
    }

    // Requeue at the renewal moment, or within the hour, or soon while pods start.
    let mut wait = Duration::from_secs(3600);
    if let Some(at) = certificate.renew_at {
        let seconds = (at.as_second() - now.as_second()).max(1);
        wait = wait.min(Duration::from_secs(seconds as u64));
    }
    if !endpoints_ready {
        wait = wait.min(Duration::from_secs(10));
    }
    Ok(Action::requeue(wait))
}

/// A new ed25519 host key in OpenSSH private key format.
fn generate_host_key() -> Result<String, ControllerError> {
    use russh::keys::ssh_key::LineEnding;
    use russh::keys::ssh_key::private::Ed25519Keypair;
    let seed: [u8; 32] = rand::random();
    let key = russh::keys::PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.to_openssh(LineEnding::LF)
        .map(|text| text.to_string())
        .map_err(|e| {
            ControllerError::Render(render::RenderError::Yaml {
                file: "ssh host key",
                message: e.to_string(),
            })
        })
}

fn sluice_hash(password: &str) -> Option<String> {
    use argon2::PasswordHasher;
    use argon2::password_hash::SaltString;
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .ok()
        .map(|h| h.to_string())
}

async fn delete_unwanted_pod_services(
    api: &Api<Service>,
    server: &FileTransferServer,
    names: &Names,
    per_pod: bool,
) -> Result<(), ControllerError> {
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/managed-by={FIELD_MANAGER}",
        names.server
    );
    let existing = api.list(&ListParams::default().labels(&selector)).await?;
    for service in existing.items {
        let name = service.name_any();
        let Some(ordinal) = name
            .strip_prefix(&format!("{}-", names.server))
            .and_then(|rest| rest.parse::<i32>().ok())
        else {
            continue;
        };
        if !per_pod || ordinal >= server.spec.replicas {
            info!(service = %name, "deleting a per-pod Service that is no longer wanted");
            api.delete(&name, &DeleteParams::default()).await?;
        }
    }
    Ok(())
}

async fn publish<K: Resource<DynamicType = ()>>(
    context: &Context,
    object: &K,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = context
        .recorder
        .publish(&event, &object.object_ref(&()))
        .await
    {
        warn!(%error, "cannot publish event");
    }
}

async fn update_user_status(
    api: &Api<TransferUser>,
    user: &TransferUser,
    verdict: &users::Verdict,
    now: Timestamp,
    context: &Context,
) -> Result<(), ControllerError> {
    let previous = user.status.clone().unwrap_or_default();
    let ready = condition(
        &previous.conditions,
        "Ready",
        verdict.ready,
        verdict.reason,
        &verdict.message,
        user.metadata.generation,
        now,
    );
    let changed_password = verdict.password_source_digest.is_some()
        && verdict.password_source_digest != previous.password_source_digest;
    let status = crate::crd::TransferUserStatus {
        observed_generation: user.metadata.generation,
        conditions: vec![ready.clone()],
        password_source_digest: verdict
            .password_source_digest
            .clone()
            .or(previous.password_source_digest.clone()),
        password_changed_at: if changed_password {
            Some(now.to_string())
        } else {
            previous.password_changed_at.clone()
        },
    };
    if user.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let previous_reason = previous
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.clone());
    if previous_reason.as_deref() != Some(verdict.reason) {
        let type_ = if verdict.ready {
            EventType::Normal
        } else {
            EventType::Warning
        };
        publish(context, user, type_, verdict.reason, &verdict.message).await;
    }
    api.patch_status(
        &user.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    Ok(())
}

async fn reconcile_user(
    user: Arc<TransferUser>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let Some(namespace) = user.namespace() else {
        return Ok(Action::await_change());
    };
    let servers: Api<FileTransferServer> = Api::namespaced(context.client.clone(), &namespace);
    if servers.get_opt(&user.spec.server_ref.name).await?.is_some() {
        // The server's reconcile owns this user's status.
        return Ok(Action::await_change());
    }
    let verdict = users::Verdict {
        ready: false,
        reason: "ServerNotFound",
        message: format!(
            "spec.serverRef: FileTransferServer {} not found in namespace {namespace}",
            user.spec.server_ref.name
        ),
        password_source_digest: None,
    };
    let api: Api<TransferUser> = Api::namespaced(context.client.clone(), &namespace);
    update_user_status(&api, &user, &verdict, (context.now)(), &context).await?;
    Ok(Action::requeue(Duration::from_secs(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_keeps_transition_time_while_status_is_unchanged() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        let first = condition(&[], "Ready", true, "Ready", "ok", Some(1), t0);
        let same = condition(
            std::slice::from_ref(&first),
            "Ready",
            true,
            "Ready",
            "ok",
            Some(2),
            t1,
        );
        assert_eq!(same.last_transition_time.0, t0);
        let flipped = condition(&[first], "Ready", false, "NotReady", "no", Some(2), t1);
        assert_eq!(flipped.last_transition_time.0, t1);
    }

    #[test]
    fn certificate_names_include_service_dns_and_advertised_address() {
        let server: FileTransferServer = serde_saphyr::from_str(
            "apiVersion: sluice.dev/v1alpha1\nkind: FileTransferServer\nmetadata:\n  name: partners\n  namespace: transfer\nspec:\n  protocols: [ftpsExplicit]\n  tls:\n    dnsNames: [ftp.example.com]\n",
        )
        .unwrap();
        let names = certificate_names(&server, &["198.51.100.7".to_string()]);
        assert_eq!(names[0], "ftp.example.com");
        assert!(names.contains(&"partners.transfer.svc".to_string()));
        assert!(names.contains(&"198.51.100.7".to_string()));
    }
}
