//! The reconcilers: read what a FileTransferServer references → validate → build every child
//! with the pure builders → server-side apply (one field manager, owner references) → status
//! from what was applied. TransferUsers are resolved by their server's reconcile (so duplicate
//! usernames are decided in one place); a small second controller marks users whose server
//! does not exist.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
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

use crate::crd::{FileTransferServer, FileTransferServerStatus, TlsSource, TransferUser};
use crate::lenient::{Invalid, Lenient};
use crate::render::{self, Names};
use crate::users::{self, UserInputs};
use crate::{certmanager, certs};

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
    #[error("ban sync: {0}")]
    BanSync(#[from] crate::ban_sync::BanSyncError),
}

impl ControllerError {
    fn reason(&self) -> &'static str {
        match self {
            ControllerError::Kube(_) => "ApiError",
            ControllerError::Render(_) => "RenderError",
            ControllerError::Cert(_) => "CertificateError",
            ControllerError::BanSync(_) => "BanSyncError",
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
    /// The last reason announced by an Event per object and condition, so that a reconcile
    /// that still sees the previous status in the cache (the status patch not yet watched
    /// back) does not announce the same transition again.
    pub announced: Announced,
}

/// The reasons last announced by Events, per `<object uid>/<condition>`.
#[derive(Default)]
pub struct Announced(std::sync::Mutex<HashMap<String, String>>);

impl Announced {
    /// Whether `reason` is news for `key` given the `stored` reason of the status the
    /// reconcile read: it differs from the stored one and from the one this process announced
    /// last. Records `reason` either way.
    pub fn is_news(&self, key: &str, stored: Option<&str>, reason: &str) -> bool {
        let mut announced = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let last = announced.insert(key.to_string(), reason.to_string());
        stored != Some(reason) && last.as_deref() != Some(reason)
    }
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
        announced: Announced::default(),
    });
    // Read leniently: one object the types reject must not stop the watch for every other.
    let servers: Api<Lenient<FileTransferServer>> = scoped(&client, ns);
    let users: Api<Lenient<TransferUser>> = scoped(&client, ns);
    let secrets: Api<Secret> = scoped(&client, ns);
    let server_controller = Controller::new(servers, watcher::Config::default())
        .trigger_backoff(crate::backoff::watches());
    let store = server_controller.store();
    let secret_store = store.clone();
    let ban_sync = crate::ban_sync::run(client.clone(), store.clone(), context.metrics.clone());
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
            |user: Lenient<TransferUser>| {
                let server = user.parsed.as_ref().ok()?.spec.server_ref.name.clone();
                user.namespace()
                    .map(|ns| ObjectRef::new(&server).within(&ns))
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
            scoped::<Lenient<FileTransferServer>>(&client, ns),
            watcher::Config::default(),
            move |server: Lenient<FileTransferServer>| {
                let namespace = server.namespace();
                let name = server.name_any();
                user_store
                    .state()
                    .into_iter()
                    .filter(|user| {
                        user.namespace() == namespace
                            && user
                                .parsed
                                .as_ref()
                                .is_ok_and(|u| u.spec.server_ref.name == name)
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
    futures::join!(server_loop, user_loop, ban_sync);
}

async fn measured_reconcile_server(
    object: Arc<Lenient<FileTransferServer>>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let started = std::time::Instant::now();
    let result = match &object.parsed {
        Ok(server) => match past_admission_check(server) {
            None => reconcile_server(Arc::new(server.clone()), context.clone()).await,
            Some(invalid) => report_invalid(&object, &invalid, &context).await,
        },
        Err(invalid) => report_invalid(&object, invalid, &context).await,
    };
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
    server: Arc<Lenient<FileTransferServer>>,
    error: &ControllerError,
    _: Arc<Context>,
) -> Action {
    warn!(server = %server.name_any(), reason = error.reason(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(15))
}

fn user_error_policy(
    _: Arc<Lenient<TransferUser>>,
    _: &ControllerError,
    _: Arc<Context>,
) -> Action {
    Action::requeue(Duration::from_secs(30))
}

/// What the CRD's schema and CEL rules should have refused but the operator cannot render
/// safely either (an object stored before the rules, a CRD installed without them): reported
/// like an object the types reject.
fn past_admission_check(server: &FileTransferServer) -> Option<Invalid> {
    let error = render::passive_ports(&server.spec.passive)
        .err()
        .or_else(|| render::security_settings(server).err())?;
    Some(Invalid {
        message: error.to_string(),
        conditions: server
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default(),
    })
}

/// An object the Rust types reject (see [`crate::lenient`]): `Ready=False` with reason
/// `InvalidSpec` and the serde error naming the field, a Warning Event once, and no requeue
/// until the object changes. Nothing else is touched: its children stay as they were.
async fn report_invalid<K>(
    object: &Lenient<K>,
    invalid: &Invalid,
    context: &Context,
) -> Result<Action, ControllerError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let (Some(name), Some(namespace)) = (object.metadata.name.clone(), object.namespace()) else {
        return Ok(Action::await_change());
    };
    let kind = K::kind(&()).to_string();
    let message = format!(
        "{}; the object does not match the {kind} schema of this operator: fix that field",
        invalid.message
    );
    let generation = object.metadata.generation;
    let ready = condition(
        &invalid.conditions,
        "Ready",
        false,
        "InvalidSpec",
        &message,
        generation,
        (context.now)(),
    );
    context
        .metrics
        .failures
        .get_or_create(&vec![("reason", "InvalidSpec".to_string())])
        .inc();
    let previous = invalid.conditions.iter().find(|c| c.type_ == "Ready");
    if previous.is_some_and(|p| {
        p.status == ready.status
            && p.reason == ready.reason
            && p.message == ready.message
            && p.observed_generation == generation
    }) {
        return Ok(Action::await_change());
    }
    warn!(%kind, %namespace, %name, error = %invalid.message, "cannot read the object; reported in its status");
    if previous.map(|p| p.reason.as_str()) != Some("InvalidSpec") {
        publish(context, object, EventType::Warning, "InvalidSpec", &message).await;
    }
    Api::<Lenient<K>>::namespaced(context.client.clone(), &namespace)
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"observedGeneration": generation, "conditions": [ready]}}),
            ),
        )
        .await?;
    Ok(Action::await_change())
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

struct CertOutcome {
    ready: bool,
    reason: &'static str,
    message: String,
    info: Option<certs::CertInfo>,
    /// The next renewal shown in the status (the operator's own or cert-manager's).
    renew_at: Option<Timestamp>,
    /// When to look again (a renewal, the start of the expiry warning, the expiry).
    recheck_at: Option<Timestamp>,
    /// Look again soon: waiting for something outside the operator (cert-manager).
    retry: Option<Duration>,
}

impl CertOutcome {
    fn not_ready(reason: &'static str, message: String) -> CertOutcome {
        CertOutcome {
            ready: false,
            reason,
            message,
            info: None,
            renew_at: None,
            recheck_at: None,
            retry: None,
        }
    }
}

/// The CertificateReady verdict on a certificate the operator does not issue itself, from
/// [`certs::assess`]: `source` says who provides it, `pending_reason` what a missing name means
/// (the user must fix the Secret; cert-manager will re-issue).
fn external_outcome(
    info: certs::CertInfo,
    assessment: certs::Assessment,
    source: &str,
    renewal: Option<Timestamp>,
    now: Timestamp,
) -> CertOutcome {
    let not_after = info.not_after;
    let (ready, reason, message) = match assessment {
        certs::Assessment::Valid => (
            true,
            "Valid",
            format!("certificate from {source} valid until {not_after}"),
        ),
        certs::Assessment::ExpiringSoon => (
            true,
            "CertificateExpiringSoon",
            match renewal {
                Some(at) => format!(
                    "certificate from {source} expires at {not_after} and was not renewed at {at}: check the cert-manager Certificate's status"
                ),
                None => format!(
                    "certificate from {source} expires at {not_after}, in less than 30 days: replace it"
                ),
            },
        ),
        certs::Assessment::Expired => (
            false,
            "Expired",
            format!("certificate from {source} expired at {not_after}"),
        ),
        certs::Assessment::NamesMissing(missing) => (
            false,
            if renewal.is_some() {
                "CertificatePending"
            } else {
                "NamesNotCovered"
            },
            format!(
                "certificate from {source} does not cover {}",
                missing.join(", ")
            ),
        ),
    };
    let recheck_at = [
        renewal.map(|at| at + certs::RENEWAL_GRACE),
        Some(not_after - certs::EXPIRY_WARNING),
        Some(not_after),
    ]
    .into_iter()
    .flatten()
    .filter(|at| *at > now)
    .min();
    CertOutcome {
        ready,
        reason,
        message,
        info: Some(info),
        renew_at: renewal,
        recheck_at,
        retry: None,
    }
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
    if tls.source != TlsSource::CertManager {
        remove_stale_certificate(server, names, context).await?;
    }
    match tls.source {
        TlsSource::SecretRef => {
            let secret_name = tls.secret_name.clone().unwrap_or_default();
            let Some(secret) = secrets.get_opt(&secret_name).await? else {
                return Ok(CertOutcome::not_ready(
                    "SecretNotFound",
                    format!("spec.tls.secretName: Secret {secret_name} not found"),
                ));
            };
            let Some(pem) = secret_text(&secret, "tls.crt") else {
                return Ok(CertOutcome::not_ready(
                    "InvalidCertificate",
                    format!("Secret {secret_name} has no tls.crt"),
                ));
            };
            match certs::inspect(&format!("Secret {secret_name} tls.crt"), &pem) {
                Ok(info) => {
                    // The names the spec asks for explicitly must be covered.
                    let required: Vec<String> = tls
                        .dns_names
                        .iter()
                        .chain(&tls.ip_addresses)
                        .cloned()
                        .collect();
                    let assessment = certs::assess(&info, &required, now, None);
                    Ok(external_outcome(
                        info,
                        assessment,
                        &format!("Secret {secret_name}"),
                        None,
                        now,
                    ))
                }
                Err(error) => Ok(CertOutcome::not_ready(
                    "InvalidCertificate",
                    error.to_string(),
                )),
            }
        }
        TlsSource::CertManager => {
            if !certmanager::installed(&context.client).await? {
                return Ok(CertOutcome {
                    retry: Some(Duration::from_secs(30)),
                    ..CertOutcome::not_ready(
                        "CertManagerMissing",
                        certmanager::MISSING_MESSAGE.into(),
                    )
                });
            }
            let cert_names = certificate_names(server, addresses);
            let certificate = certmanager::certificate(server, &cert_names)?;
            let api: Api<DynamicObject> = Api::namespaced_with(
                context.client.clone(),
                &namespace,
                &certmanager::api_resource(),
            );
            let applied = api
                .patch(
                    &names.server,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&certificate),
                )
                .await?;
            let issuer_status = certmanager::status(&applied);
            let secret_name = names.tls_secret();
            let source = format!(
                "cert-manager (Certificate {}, Secret {secret_name})",
                names.server
            );
            let pem = secrets
                .get_opt(&secret_name)
                .await?
                .and_then(|s| secret_text(&s, "tls.crt"));
            let Some(pem) = pem else {
                let detail = issuer_status
                    .not_ready_message
                    .map(|m| format!("; cert-manager says {m}"))
                    .unwrap_or_default();
                return Ok(CertOutcome {
                    retry: Some(Duration::from_secs(10)),
                    ..CertOutcome::not_ready(
                        "CertificatePending",
                        format!(
                            "waiting for cert-manager to issue Certificate {} into Secret {secret_name}{detail}",
                            names.server
                        ),
                    )
                });
            };
            match certs::inspect(&format!("Secret {secret_name} tls.crt"), &pem) {
                Ok(info) => {
                    let renew_before = tls
                        .renew_before
                        .as_deref()
                        .and_then(|text| certs::parse_duration("spec.tls.renewBefore", text).ok());
                    let renewal = issuer_status
                        .renewal_time
                        .unwrap_or_else(|| certs::renewal_at(&info, renew_before));
                    let assessment = certs::assess(&info, &cert_names, now, Some(renewal));
                    let mut outcome =
                        external_outcome(info, assessment, &source, Some(renewal), now);
                    if outcome.reason == "CertificatePending" {
                        outcome.retry = Some(Duration::from_secs(10));
                    }
                    Ok(outcome)
                }
                Err(error) => Ok(CertOutcome::not_ready(
                    "InvalidCertificate",
                    error.to_string(),
                )),
            }
        }
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
                    let previous = ca_secret
                        .as_ref()
                        .and_then(|s| secret_text(s, "previous.crt"));
                    (ca.clone(), previous, false)
                }
                _ => {
                    let fresh = certs::generate_ca(
                        &format!("sluice CA {}/{}", names.namespace, names.server),
                        now,
                        ca_lifetime,
                    )?;
                    (
                        fresh,
                        existing_ca.as_ref().map(|c| c.cert_pem.clone()),
                        true,
                    )
                }
            };
            if rotated_ca {
                let mut secret = render::tls_secret(
                    server,
                    names.ca_secret(),
                    &ca.cert_pem,
                    &ca.key_pem,
                    &ca.cert_pem,
                )?;
                if let (Some(previous), Some(data)) = (&previous_ca, secret.data.as_mut()) {
                    data.insert(
                        "previous.crt".into(),
                        k8s_openapi::ByteString(previous.clone().into_bytes()),
                    );
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
                Err(message) => return Ok(CertOutcome::not_ready("InvalidSpec", message)),
            };
            let current = secrets.get_opt(&names.tls_secret()).await?;
            let current_pem = current.as_ref().and_then(|s| secret_text(s, "tls.crt"));
            let current_info = current_pem
                .as_ref()
                .and_then(|pem| certs::inspect("server certificate", pem).ok());
            // A certificate someone else issued into the Secret (cert-manager, before the
            // source became `generated`) is replaced.
            let foreign = current_pem
                .as_ref()
                .is_some_and(|pem| !certs::issued_by(pem, &ca.cert_pem));
            let info = if rotated_ca
                || foreign
                || certs::needs_renewal(current_info.as_ref(), &cert_names, now, renew_before)
            {
                let issued = certs::issue_server(&ca, &cert_names, now, lifetime)?;
                let bundle = certs::ca_bundle(&ca.cert_pem, previous_ca.as_deref(), now);
                let secret = render::tls_secret(
                    server,
                    names.tls_secret(),
                    &issued.cert_pem,
                    &issued.key_pem,
                    &bundle,
                )?;
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
                message: format!(
                    "certificate issued by the operator's CA, valid until {}",
                    info.not_after
                ),
                renew_at: Some(renew_at),
                recheck_at: Some(renew_at),
                info: Some(info),
                retry: None,
            })
        }
    }
}

/// A server that no longer uses `certManager` must not keep its cert-manager Certificate:
/// cert-manager would go on writing the TLS Secret. Only the Certificate this server owns is
/// deleted (a user's own Certificate of the same name is left alone).
async fn remove_stale_certificate(
    server: &FileTransferServer,
    names: &Names,
    context: &Context,
) -> Result<(), ControllerError> {
    if !certmanager::installed(&context.client).await? {
        return Ok(());
    }
    let api: Api<DynamicObject> = Api::namespaced_with(
        context.client.clone(),
        &names.namespace,
        &certmanager::api_resource(),
    );
    let Some(certificate) = api.get_opt(&names.server).await? else {
        return Ok(());
    };
    let ours = certificate
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| Some(&o.uid) == server.metadata.uid.as_ref() && o.controller == Some(true));
    if ours {
        let params = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: certificate.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        api.delete(&names.server, &params).await?;
        info!(server = %names.server, "deleted the cert-manager Certificate: spec.tls.source is no longer certManager");
    }
    Ok(())
}

fn unreachable_info(now: Timestamp) -> certs::CertInfo {
    certs::CertInfo {
        not_before: now,
        not_after: now,
        sha256: String::new(),
        names: Vec::new(),
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
    // Users the types reject are left out here; their own reconcile reports them.
    let all_users = Api::<Lenient<TransferUser>>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await?;
    let users: Vec<TransferUser> = all_users
        .items
        .into_iter()
        .filter_map(|u| u.parsed.ok())
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
        if let Some(totp) = &user.spec.totp
            && !secrets.contains_key(&totp.secret_ref.name)
            && let Some(secret) = secret_api.get_opt(&totp.secret_ref.name).await?
        {
            secrets.insert(totp.secret_ref.name.clone(), secret);
        }
    }
    let previous_users = secret_api
        .get_opt(&names.users_secret())
        .await?
        .and_then(|s| secret_text(&s, "users.yaml"))
        .and_then(|text| config::UserList::parse("users.yaml", &text).ok());
    let service_api: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let client_address = service_address(service_api.get_opt(&names.server).await?.as_ref()).await;

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
            let service = service_api.get_opt(&pod).await?;
            per_pod_addresses.insert(pod, service_address(service.as_ref()).await);
        }
    }
    let passive = render::passive_addresses(&server, client_address.as_deref(), &per_pod_addresses);
    let advertised = passive.shared.clone();
    let addresses: Vec<String> = client_address
        .iter()
        .chain(passive.by_pod.values())
        .cloned()
        .collect();
    let certificate = ensure_certificate(&server, &names, &addresses, &context).await?;
    let server_config = render::server_config(&server, advertised.as_deref(), &passive.by_pod);
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

    crate::ban_sync::ensure_secret(&client, &server).await?;

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
    let endpoints = endpoints_verdict(ready_replicas, server.spec.replicas, &passive);
    let endpoints_ready = endpoints.0;
    // Users whose password expired stay in users.yaml (their key logins still work).
    let expired = resolved
        .verdicts
        .values()
        .filter(|v| v.reason == "PasswordExpired")
        .count();
    let refused = resolved.verdicts.values().filter(|v| !v.ready).count() - expired;
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
            endpoints.0,
            endpoints.1,
            &endpoints.2,
            generation,
            now,
        ),
        condition(
            &previous_conditions,
            "UsersSynced",
            true,
            "Rendered",
            &format!(
                "{} users in users.yaml{}, {refused} refused (see their status)",
                resolved.list.users.len(),
                if expired > 0 {
                    format!(" ({expired} with an expired password)")
                } else {
                    String::new()
                }
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
        &if all_ready && certificate.reason == "CertificateExpiringSoon" {
            format!(
                "server is serving; CertificateReady: {}",
                certificate.message
            )
        } else if all_ready {
            "server is serving".to_string()
        } else {
            blocking.join("; ")
        },
        generation,
        now,
    )];
    conditions.extend(conditions_without_ready);
    let uid = server.metadata.uid.clone().unwrap_or_default();
    let stored_ready = previous_conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.as_str());
    let ready_reason = if all_ready { "Ready" } else { "NotReady" };
    if context
        .announced
        .is_news(&format!("{uid}/Ready"), stored_ready, ready_reason)
    {
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
    let previous_certificate_reason = previous_conditions
        .iter()
        .find(|c| c.type_ == "CertificateReady")
        .map(|c| c.reason.as_str());
    let certificate_news = context.announced.is_news(
        &format!("{uid}/CertificateReady"),
        previous_certificate_reason,
        certificate.reason,
    );
    if certificate_news
        && certificate_warning(
            previous_certificate_reason,
            certificate.ready,
            certificate.reason,
        )
    {
        warn!(server = %names.server, reason = certificate.reason, message = %certificate.message, "certificate needs attention");
        publish(
            &context,
            server.as_ref(),
            EventType::Warning,
            certificate.reason,
            &certificate.message,
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
    if let Some(at) = certificate.recheck_at {
        let seconds = (at.as_second() - now.as_second()).max(1);
        wait = wait.min(Duration::from_secs(seconds as u64));
    }
    if let Some(retry) = certificate.retry {
        wait = wait.min(retry);
    }
    if !endpoints_ready {
        wait = wait.min(Duration::from_secs(10));
    }
    // ... and when a password enters its warning period or expires.
    if let Some(at) = resolved.next_change {
        let seconds = (at.as_second() - now.as_second()).max(1);
        wait = wait.min(Duration::from_secs(seconds as u64));
    }
    Ok(Action::requeue(wait))
}

/// Whether CertificateReady's new reason deserves a Warning Event: on the transition into
/// `CertificateExpiringSoon` or into a failure (not the routine wait for cert-manager), once,
/// not on every reconcile.
pub fn certificate_warning(previous_reason: Option<&str>, ready: bool, reason: &str) -> bool {
    previous_reason != Some(reason)
        && (reason == "CertificateExpiringSoon" || (!ready && reason != "CertificatePending"))
}

/// EndpointsReady: every pod ready and, for FTPS behind LoadBalancer Services, every passive
/// address known (otherwise PASV would advertise a pod address no client can reach). The
/// message names the advertised passive address(es).
pub fn endpoints_verdict(
    ready_replicas: i32,
    replicas: i32,
    passive: &render::PassiveAddresses,
) -> (bool, &'static str, String) {
    let pods_ready = ready_replicas >= replicas.max(1) || replicas == 0;
    let mut message = format!(
        "{ready_replicas}/{replicas} pods ready; passive address {}",
        passive.shared.as_deref().unwrap_or("the pod address")
    );
    if !passive.by_pod.is_empty() {
        let per_pod: Vec<String> = passive
            .by_pod
            .iter()
            .map(|(pod, address)| format!("{pod}={address}"))
            .collect();
        message.push_str(&format!("; per pod {}", per_pod.join(", ")));
    }
    if !passive.pending.is_empty() {
        message.push_str(&format!(
            "; waiting for the load balancer address (status.loadBalancer.ingress) of Service {}, or set spec.passive.advertisedAddress",
            passive.pending.join(", ")
        ));
        return (false, "LoadBalancerPending", message);
    }
    if pods_ready {
        (true, "PodsReady", message)
    } else {
        (false, "PodsNotReady", message)
    }
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

/// An argon2id PHC string of `password` with the parameters the server expects of the hashes
/// we issue ([`config::Argon2Params::ISSUED`], within the caps every server enforces).
fn sluice_hash(password: &str) -> Option<String> {
    use argon2::PasswordHasher;
    use argon2::password_hash::SaltString;
    let issued = config::Argon2Params::ISSUED;
    let params = argon2::Params::new(
        issued.memory_kib,
        issued.iterations,
        issued.parallelism,
        None,
    )
    .ok()?;
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
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
    let status = crate::crd::TransferUserStatus {
        observed_generation: user.metadata.generation,
        conditions: vec![ready.clone()],
        password_source_digest: verdict
            .password_source_digest
            .clone()
            .or(previous.password_source_digest.clone()),
        password_changed_at: verdict
            .password_changed_at
            .clone()
            .or(previous.password_changed_at.clone()),
        password_expires_at: verdict.password_expires_at.clone(),
        ftps_data_binding: verdict.ftps_data_binding,
    };
    if user.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let previous_reason = previous
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.clone());
    let key = format!("{}/Ready", user.metadata.uid.clone().unwrap_or_default());
    if context
        .announced
        .is_news(&key, previous_reason.as_deref(), verdict.reason)
    {
        // A Warning also for a ready user whose password expires soon: recorded once, when the
        // reason changes to it.
        let type_ = if verdict.ready && verdict.reason != "PasswordExpiresSoon" {
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
    object: Arc<Lenient<TransferUser>>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let user = match &object.parsed {
        Ok(user) => user,
        Err(invalid) => return report_invalid(&object, invalid, &context).await,
    };
    let Some(namespace) = user.namespace() else {
        return Ok(Action::await_change());
    };
    // A server the types reject still exists: its own reconcile reports it.
    let servers: Api<Lenient<FileTransferServer>> =
        Api::namespaced(context.client.clone(), &namespace);
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
        password_changed_at: None,
        password_expires_at: None,
        ftps_data_binding: None,
    };
    let api: Api<TransferUser> = Api::namespaced(context.client.clone(), &namespace);
    update_user_status(&api, user, &verdict, (context.now)(), &context).await?;
    Ok(Action::requeue(Duration::from_secs(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_with_a_passive_range_past_admission_is_invalid_spec_naming_the_field() {
        let server: FileTransferServer = serde_json::from_value(serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FileTransferServer",
            "metadata": {"name": "partners", "namespace": "transfer"},
            "spec": {"protocols": ["ftpsExplicit"], "passive": {"portStart": 1024, "portEnd": 65535}},
        }))
        .unwrap();
        let invalid = past_admission_check(&server).expect("refused");
        assert!(
            invalid
                .message
                .starts_with("spec.passive: ports 1024..65535"),
            "{}",
            invalid.message
        );
        let mut fine = server.clone();
        fine.spec.passive.port_end = 1123;
        assert!(past_admission_check(&fine).is_none());
    }

    #[test]
    fn a_server_with_budgets_past_admission_is_invalid_spec_naming_the_field() {
        let server: FileTransferServer = serde_json::from_value(serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FileTransferServer",
            "metadata": {"name": "partners", "namespace": "transfer"},
            "spec": {"protocols": ["sftp"], "security": {"budgets": {"maxFileWorkPerUser": 100}}},
        }))
        .unwrap();
        let invalid = past_admission_check(&server).expect("refused");
        assert!(
            invalid.message.starts_with(
                "spec.security.budgets.maxFileWorkPerUser: must not exceed maxFileWork (64)"
            ),
            "{}",
            invalid.message
        );
        let mut fine = server.clone();
        fine.spec.security.budgets = Some(crate::crd::BudgetsSpec {
            max_file_work_per_user: Some(8),
            ..Default::default()
        });
        assert!(past_admission_check(&fine).is_none());
    }

    #[test]
    fn the_operator_issues_hashes_within_the_argon2_caps() {
        let hash = sluice_hash("Orbit-Kettle-2026").expect("hashes");
        assert_eq!(
            config::argon2_params_of(&hash),
            Some(Ok(config::Argon2Params::ISSUED))
        );
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert_eq!(config::validate_password_hash(&hash), Ok(()));
        // And it verifies like any argon2id hash.
        use argon2::PasswordVerifier;
        let parsed = argon2::PasswordHash::new(&hash).unwrap();
        assert!(
            argon2::Argon2::default()
                .verify_password(b"Orbit-Kettle-2026", &parsed)
                .is_ok()
        );
    }

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
    fn endpoints_wait_for_every_load_balancer_address_and_name_them() {
        let mut passive = render::PassiveAddresses {
            shared: None,
            by_pod: BTreeMap::from([("ha-0".to_string(), "203.0.113.10".to_string())]),
            pending: vec!["ha-1".to_string()],
        };
        let (ok, reason, message) = endpoints_verdict(2, 2, &passive);
        assert!(!ok);
        assert_eq!(reason, "LoadBalancerPending");
        assert!(message.contains("ha-0=203.0.113.10"), "{message}");
        assert!(message.contains("Service ha-1"), "{message}");
        passive.pending.clear();
        passive
            .by_pod
            .insert("ha-1".to_string(), "203.0.113.11".to_string());
        let (ok, reason, message) = endpoints_verdict(2, 2, &passive);
        assert!(ok);
        assert_eq!(reason, "PodsReady");
        assert!(
            message.ends_with("per pod ha-0=203.0.113.10, ha-1=203.0.113.11"),
            "{message}"
        );
        assert_eq!(endpoints_verdict(1, 2, &passive).1, "PodsNotReady");
    }

    #[test]
    fn certificate_warnings_only_on_transitions() {
        assert!(certificate_warning(
            Some("Valid"),
            true,
            "CertificateExpiringSoon"
        ));
        assert!(!certificate_warning(
            Some("CertificateExpiringSoon"),
            true,
            "CertificateExpiringSoon"
        ));
        assert!(certificate_warning(None, false, "CertManagerMissing"));
        assert!(!certificate_warning(None, false, "CertificatePending"));
        assert!(!certificate_warning(
            Some("CertificatePending"),
            true,
            "Valid"
        ));
        assert!(certificate_warning(Some("Valid"), false, "Expired"));
    }

    #[test]
    fn external_certificates_recheck_at_the_warning_and_expiry() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let ca = certs::generate_ca("ca", now, SignedDuration::from_hours(24 * 1000)).unwrap();
        let names = vec!["ftp.example.com".to_string()];
        let cert =
            certs::issue_server(&ca, &names, now, SignedDuration::from_hours(24 * 90)).unwrap();
        let info = certs::inspect("tls.crt", &cert.cert_pem).unwrap();
        let outcome = external_outcome(
            info.clone(),
            certs::assess(&info, &names, now, None),
            "Secret s",
            None,
            now,
        );
        assert!(outcome.ready);
        assert_eq!(outcome.reason, "Valid");
        assert_eq!(
            outcome.recheck_at,
            Some(info.not_after - certs::EXPIRY_WARNING)
        );
        let later = now + SignedDuration::from_hours(24 * 80);
        let outcome = external_outcome(
            info.clone(),
            certs::assess(&info, &names, later, None),
            "Secret s",
            None,
            later,
        );
        assert!(outcome.ready, "an expiring certificate still serves");
        assert_eq!(outcome.reason, "CertificateExpiringSoon");
        assert_eq!(outcome.recheck_at, Some(info.not_after));
        let missing = vec!["other.example".to_string()];
        let renewal = Some(now + SignedDuration::from_hours(24 * 60));
        let pending = external_outcome(
            info.clone(),
            certs::assess(&info, &missing, now, renewal),
            "cert-manager",
            renewal,
            now,
        );
        assert_eq!(
            (pending.ready, pending.reason),
            (false, "CertificatePending")
        );
        let mismatch = external_outcome(
            info.clone(),
            certs::assess(&info, &missing, now, None),
            "Secret s",
            None,
            now,
        );
        assert_eq!(mismatch.reason, "NamesNotCovered");
        assert!(mismatch.message.contains("other.example"));
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

    #[test]
    fn a_transition_is_announced_once_even_when_the_cache_still_shows_the_old_status() {
        let announced = Announced::default();
        // The reconcile that sees the transition announces it...
        assert!(announced.is_news(
            "u/CertificateReady",
            Some("Issued"),
            "CertificateExpiringSoon"
        ));
        // ...the next one, reading a cache that lags behind the status patch, does not.
        assert!(!announced.is_news(
            "u/CertificateReady",
            Some("Issued"),
            "CertificateExpiringSoon"
        ));
        // Nor does one that sees the patched status, or a restarted operator that sees it.
        assert!(!announced.is_news(
            "u/CertificateReady",
            Some("CertificateExpiringSoon"),
            "CertificateExpiringSoon"
        ));
        assert!(!Announced::default().is_news(
            "u/CertificateReady",
            Some("CertificateExpiringSoon"),
            "CertificateExpiringSoon"
        ));
        // Leaving and coming back is a new transition; other objects are independent.
        assert!(announced.is_news(
            "u/CertificateReady",
            Some("CertificateExpiringSoon"),
            "Issued"
        ));
        assert!(announced.is_news(
            "u/CertificateReady",
            Some("Issued"),
            "CertificateExpiringSoon"
        ));
        assert!(announced.is_news("v/CertificateReady", None, "CertificateExpiringSoon"));
    }
}
