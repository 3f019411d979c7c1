//! Step 6: the status, from what was applied. The server's conditions (`Ready`,
//! `CertificateReady`, `EndpointsReady`, `UsersSynced`, and kstatus' `Stalled` and
//! `Reconciling`), each user's `Ready` (a user whose shard was not applied is not ready),
//! Events on transitions and rotations, the certificate-expiry metric, and the requeue time.
//! The status is written whole: a field that became empty is sent as `null`, so it is removed
//! instead of lingering from an earlier reconcile.

use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::warn;

use super::Context;
use super::apply::Applied;
use super::certificate::{self, CertOutcome};
use super::events::publish;
use super::validate::Validated;
use crate::conditions::{self, Reason, condition, stored_reason};
use crate::crd::{FileTransferServer, FileTransferServerStatus, ServedProtocol, TransferUser};
use crate::lenient::{Invalid, Lenient};
use crate::metrics::OperatorMetrics;
use crate::render;
use crate::users;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("writing the status: {0}")]
    Kube(#[from] kube::Error),
}

/// Status patches of users in flight at once (a server with many users changes many at once).
const USER_STATUS_CONCURRENCY: usize = 16;

/// `value` with every key of `fields` that it lacks set to `null`: a JSON merge patch then
/// removes the field instead of leaving the previous value.
pub fn clearing(mut value: Value, fields: &[&str]) -> Value {
    if let Value::Object(map) = &mut value {
        for field in fields {
            map.entry(field.to_string()).or_insert(Value::Null);
        }
    }
    value
}

const SERVER_STATUS_FIELDS: &[&str] = &[
    "observedGeneration",
    "conditions",
    "endpoint",
    "users",
    "certificateNotAfter",
    "certificateRenewal",
    "certificateSha256",
];
const USER_STATUS_FIELDS: &[&str] = &[
    "observedGeneration",
    "conditions",
    "passwordSourceDigest",
    "passwordChangedAt",
    "passwordExpiresAt",
];

/// Where clients connect: the advertised (or in-cluster) host and the port of the first
/// protocol served (explicit FTPS, implicit FTPS, then SFTP).
pub fn endpoint(server: &FileTransferServer, advertised: Option<&str>) -> String {
    let names = (server.name_any(), server.namespace().unwrap_or_default());
    let host = advertised
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}.{}.svc", names.0, names.1));
    let protocols = &server.spec.protocols;
    let ports = &server.spec.ports;
    let port = if protocols.contains(&ServedProtocol::FtpsExplicit) {
        ports.ftps_explicit
    } else if protocols.contains(&ServedProtocol::FtpsImplicit) {
        ports.ftps_implicit
    } else {
        ports.sftp
    };
    format!("{host}:{port}")
}

/// EndpointsReady: every pod ready and, for FTPS behind LoadBalancer Services, every passive
/// address known (otherwise PASV would advertise a pod address no client can reach). The
/// message names the advertised passive address(es).
pub fn endpoints_verdict(
    ready_replicas: i32,
    replicas: i32,
    passive: &render::PassiveAddresses,
) -> (bool, Reason, String) {
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
        return (false, Reason::LoadBalancerPending, message);
    }
    if pods_ready {
        (true, Reason::PodsReady, message)
    } else {
        (false, Reason::PodsNotReady, message)
    }
}

/// The server's conditions from what was applied. Pure.
pub fn server_conditions(
    server: &FileTransferServer,
    validated: &Validated,
    certificate: &CertOutcome,
    applied: &Applied,
    now: Timestamp,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let previous = server
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let generation = server.metadata.generation;
    let ready_replicas = applied
        .stateful_set()
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let (endpoints_ok, endpoints_reason, endpoints_message) =
        endpoints_verdict(ready_replicas, server.spec.replicas, applied.passive());
    let verdicts = &validated.users.verdicts;
    let expired = verdicts
        .values()
        .filter(|v| v.reason == Reason::PasswordExpired)
        .count();
    let refused = verdicts.values().filter(|v| !v.ready).count() - expired;
    let shard_failures: Vec<&super::apply::Failure> = applied
        .failures()
        .iter()
        .filter(|f| f.kind == conditions::ChildKind::UsersSecret)
        .collect();
    let users_synced = if shard_failures.is_empty() {
        condition(
            &previous,
            "UsersSynced",
            true,
            Reason::Rendered,
            &format!(
                "{} users in users.yaml ({} shards){}, {refused} refused (see their status)",
                validated.users.list.users.len(),
                applied.shard_count(),
                if expired > 0 {
                    format!(", {expired} with an expired password")
                } else {
                    String::new()
                }
            ),
            generation,
            now,
        )
    } else {
        let detail: Vec<String> = shard_failures
            .iter()
            .map(|f| format!("Secret {}: {}", f.name, f.message))
            .collect();
        condition(
            &previous,
            "UsersSynced",
            false,
            Reason::NotApplied(conditions::ChildKind::UsersSecret),
            &format!(
                "{} of {} users.yaml shards not applied; their users are not provisioned: {}",
                shard_failures.len(),
                applied.shard_count(),
                detail.join("; ")
            ),
            generation,
            now,
        )
    };
    let parts = vec![
        condition(
            &previous,
            "CertificateReady",
            certificate.ready,
            certificate.reason,
            &certificate.message,
            generation,
            now,
        ),
        condition(
            &previous,
            "EndpointsReady",
            endpoints_ok,
            endpoints_reason,
            &endpoints_message,
            generation,
            now,
        ),
        users_synced,
    ];
    let first_failure = applied.failures().first();
    let storage_missing = &validated.storage_missing;
    let all_ready = first_failure.is_none()
        && storage_missing.is_empty()
        && parts.iter().all(|c| c.status == "True");
    let (ready_reason, ready_message) = match first_failure {
        Some(failure) => (
            Reason::NotApplied(failure.kind),
            applied
                .failures()
                .iter()
                .map(|f| format!("{} {} not applied: {}", f.kind.as_str(), f.name, f.message))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        // Named before the pods that wait for it: the cause, not the symptom. Not stalled:
        // creating the Secret is enough, the pods then start without the operator.
        None if !storage_missing.is_empty() => (
            Reason::ObjectStoreSecretNotFound,
            storage_missing.join("; "),
        ),
        None if all_ready => (
            Reason::Ready,
            if certificate.reason == Reason::CertificateExpiringSoon {
                format!(
                    "server is serving; CertificateReady: {}",
                    certificate.message
                )
            } else {
                "server is serving".to_string()
            },
        ),
        None => (
            Reason::NotReady,
            parts
                .iter()
                .filter(|c| c.status != "True")
                .map(|c| format!("{}: {}", c.type_, c.message))
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    let ready = condition(
        &previous,
        "Ready",
        all_ready,
        ready_reason,
        &ready_message,
        generation,
        now,
    );
    let stalled = first_failure
        .map(|_| (ready_reason, ready_message.as_str()))
        .or_else(|| {
            (!certificate.ready && certificate.retry.is_none())
                .then_some((certificate.reason, certificate.message.as_str()))
        });
    let reconciling = (!all_ready).then_some((Reason::Progressing, ready_message.as_str()));
    let kstatus = conditions::kstatus(&previous, stalled, reconciling, generation, now);
    let mut all = vec![ready];
    all.extend(parts);
    all.extend(kstatus);
    all
}

pub async fn update(
    server: &FileTransferServer,
    validated: &Validated,
    certificate: &CertOutcome,
    applied: &Applied,
    sinks: Option<crate::sink_health::Verdict>,
    context: &Context,
) -> Result<Action, super::ControllerError> {
    let now = (context.now)();
    let names = render::Names::of(server).map_err(super::build::BuildError::from)?;
    let namespace = names.namespace.clone();
    let uid = server.metadata.uid.clone().unwrap_or_default();
    context.announced.forget(&format!("{uid}/ReconcileError"));
    let previous = server
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();

    // Users: their verdicts, unless their shard was not applied or a ready pod does not
    // serve it yet.
    let loaded = if validated.users.verdicts.iter().any(|(_, v)| v.ready) {
        super::loaded::observe(&context.client, server)
            .await
            .unwrap_or_else(|error| {
                warn!(server = %names.server, %error, "cannot list the server's pods");
                super::loaded::Loaded::default()
            })
    } else {
        super::loaded::Loaded::default()
    };
    let mut waiting_for_pods = false;
    let user_api: Api<TransferUser> = Api::namespaced(context.client.clone(), &namespace);
    let updates = validated
        .users
        .verdicts
        .iter()
        .filter_map(|(object, verdict)| {
            let user = validated_user(validated, object)?;
            let username = &user.spec.username;
            let verdict = if verdict.ready && !applied.user_applied(username) {
                users::Verdict::refused(
                    Reason::UsersNotApplied,
                    "the users.yaml shard of this user could not be applied; see the server's UsersSynced condition",
                )
            } else if verdict.ready
                && let Some((file, digest)) = applied.shard_of(username)
                && let Err(why) = super::loaded::served(&loaded, &file, digest)
            {
                waiting_for_pods = true;
                users::Verdict {
                    ready: false,
                    reason: Reason::WaitingForPods,
                    message: why,
                    ..verdict.clone()
                }
            } else {
                verdict.clone()
            };
            Some((user.clone(), verdict))
        })
        .collect::<Vec<_>>();
    let results: Vec<Result<(), StatusError>> = futures::stream::iter(updates)
        .map(|(user, verdict)| {
            let api = user_api.clone();
            async move { update_user_status(&api, &user, &verdict, now, context).await }
        })
        .buffer_unordered(USER_STATUS_CONCURRENCY)
        .collect()
        .await;
    if let Some(Err(error)) = results.into_iter().find(Result::is_err) {
        warn!(server = %names.server, %error, "cannot write a user's status");
    }

    let mut conditions = server_conditions(server, validated, certificate, applied, now);
    if let Some(sinks) = &sinks {
        let delivering = events_delivering(&previous, sinks, server.metadata.generation, now);
        if delivering.status == "False"
            && context.announced.is_news(
                &format!("{uid}/EventsDelivering"),
                stored_reason(&previous, "EventsDelivering"),
                &delivering.reason,
            )
        {
            warn!(server = %names.server, message = %delivering.message, "an event sink is failing");
            publish(
                context,
                server,
                EventType::Warning,
                sinks.reason,
                &delivering.message,
            )
            .await;
        }
        conditions.push(delivering);
    }
    let ready = &conditions[0];
    let ready_reason = ready.reason.clone();
    if context.announced.is_news(
        &format!("{uid}/Ready"),
        stored_reason(&previous, "Ready"),
        &ready_reason,
    ) {
        let type_ = if ready.status == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        };
        let reason = reason_of(applied, validated, ready.status == "True");
        publish(context, server, type_, reason, &ready.message).await;
    }
    let previous_certificate_reason = stored_reason(&previous, "CertificateReady");
    let certificate_news = context.announced.is_news(
        &format!("{uid}/CertificateReady"),
        previous_certificate_reason,
        certificate.reason.as_str(),
    );
    if certificate_news
        && certificate::certificate_warning(
            previous_certificate_reason,
            certificate.ready,
            certificate.reason,
        )
    {
        warn!(server = %names.server, reason = %certificate.reason, message = %certificate.message, "certificate needs attention");
        publish(
            context,
            server,
            EventType::Warning,
            certificate.reason,
            &certificate.message,
        )
        .await;
    }
    if certificate.rotated_ca {
        publish(
            context,
            server,
            EventType::Warning,
            Reason::CaRotated,
            "the operator issued a new CA (the previous one stays in ca.crt until it expires); clients that pinned the CA must add the new one",
        )
        .await;
    }
    if certificate.issued {
        let not_after = certificate
            .info
            .as_ref()
            .map(|i| i.not_after.to_string())
            .unwrap_or_default();
        publish(
            context,
            server,
            EventType::Normal,
            Reason::CertificateIssued,
            &format!("issued a new server certificate, valid until {not_after}"),
        )
        .await;
    }
    if let Some(info) = &certificate.info {
        context
            .metrics
            .certificate_expiry
            .get_or_create(&OperatorMetrics::certificate_labels(
                &namespace,
                &names.server,
            ))
            .set(info.not_after.as_second());
    }

    let status = FileTransferServerStatus {
        observed_generation: server.metadata.generation,
        conditions,
        endpoint: Some(endpoint(server, applied.passive().shared.as_deref())),
        users: i32::try_from(validated.users.list.users.len()).ok(),
        certificate_not_after: certificate.info.as_ref().map(|i| i.not_after.to_string()),
        certificate_renewal: certificate.renew_at.map(|t| t.to_string()),
        certificate_sha256: certificate.info.as_ref().map(|i| i.sha256.clone()),
    };
    if server.status.as_ref() != Some(&status) {
        let servers: Api<FileTransferServer> = Api::namespaced(context.client.clone(), &namespace);
        let body = clearing(json!(status), SERVER_STATUS_FIELDS);
        servers
            .patch_status(
                &names.server,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": body })),
            )
            .await
            .map_err(StatusError::from)?;
    }
    let mut after = requeue(
        certificate,
        validated,
        applied,
        status.conditions[2].status == "True",
        now,
    );
    // Nothing announces that a pod loaded a shard: look again soon. With no ready pod, a pod
    // becoming ready changes the StatefulSet's status, which starts a reconcile anyway.
    if waiting_for_pods && !loaded.pods.is_empty() {
        after = after.min(super::loaded::RECHECK);
    }
    if sinks.is_some() {
        after = after.min(crate::sink_health::recheck(server));
    }
    Ok(Action::requeue(after))
}

/// `EventsDelivering` from the pods' report on their sinks (pure); Unknown keeps its own
/// transition time like the other statuses.
pub fn events_delivering(
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    sinks: &crate::sink_health::Verdict,
    generation: Option<i64>,
    now: Timestamp,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let status = match sinks.delivering {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == "EventsDelivering" && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: "EventsDelivering".into(),
        status: status.into(),
        reason: sinks.reason.as_str().into(),
        message: sinks.message.chars().take(1024).collect(),
        observed_generation: generation,
        last_transition_time,
    }
}

fn reason_of(applied: &Applied, validated: &Validated, ready: bool) -> Reason {
    match applied.failures().first() {
        Some(failure) => Reason::NotApplied(failure.kind),
        None if !validated.storage_missing.is_empty() => Reason::ObjectStoreSecretNotFound,
        None if ready => Reason::Ready,
        None => Reason::NotReady,
    }
}

fn validated_user<'a>(validated: &'a Validated, object: &str) -> Option<&'a TransferUser> {
    validated.objects.get(object)
}

/// Requeue at the renewal moment, or within the hour, or soon while pods start or a child
/// failed, and when a password enters its warning period or expires.
fn requeue(
    certificate: &CertOutcome,
    validated: &Validated,
    applied: &Applied,
    endpoints_ready: bool,
    now: Timestamp,
) -> Duration {
    let until =
        |at: Timestamp| Duration::from_secs((at.as_second() - now.as_second()).max(1) as u64);
    let mut wait = Duration::from_secs(3600);
    if let Some(at) = certificate.recheck_at {
        wait = wait.min(until(at));
    }
    if let Some(retry) = certificate.retry {
        wait = wait.min(retry);
    }
    if !endpoints_ready {
        wait = wait.min(Duration::from_secs(10));
    }
    if !applied.failures().is_empty() {
        wait = wait.min(Duration::from_secs(30));
    }
    if let Some(at) = validated.users.next_change {
        wait = wait.min(until(at));
    }
    wait
}

/// Removes what the operator keeps about a server that is gone (its metric series).
pub fn forget(context: &Context, namespace: Option<&str>, name: &str) {
    let labels = OperatorMetrics::certificate_labels(namespace.unwrap_or_default(), name);
    context.metrics.certificate_expiry.remove(&labels);
}

/// Why `Stalled` or `Reconciling` is `True`, when it is.
pub type KstatusCause<'a> = Option<(Reason, &'a str)>;

/// kstatus for a user (Flux and `kubectl wait` read `Stalled`/`Reconciling`, not `Ready=False`):
/// a refusal only a change to the object, its Secret or the server fixes is `Stalled`; a state
/// that resolves itself (a Secret or server still to come, pods still loading) is
/// `Reconciling`. `Disabled` is neither: a deliberate state, not a failure or a step.
pub fn user_kstatus(verdict: &users::Verdict) -> (KstatusCause<'_>, KstatusCause<'_>) {
    if verdict.ready {
        return (None, None);
    }
    let this = Some((verdict.reason, verdict.message.as_str()));
    match verdict.reason {
        Reason::SecretNotFound
        | Reason::ServerNotFound
        | Reason::HashingFailed
        | Reason::WaitingForPods => (None, this),
        Reason::Disabled => (None, None),
        _ => (this, None),
    }
}

pub async fn update_user_status(
    api: &Api<TransferUser>,
    user: &TransferUser,
    verdict: &users::Verdict,
    now: Timestamp,
    context: &Context,
) -> Result<(), StatusError> {
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
    let (stalled, reconciling) = user_kstatus(verdict);
    let [stalled, reconciling] = crate::conditions::kstatus(
        &previous.conditions,
        stalled,
        reconciling,
        user.metadata.generation,
        now,
    );
    let status = crate::crd::TransferUserStatus {
        observed_generation: user.metadata.generation,
        conditions: vec![ready.clone(), stalled, reconciling],
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
        // Written by `crate::quota_status`, never by this patch (not in USER_STATUS_FIELDS).
        quota: previous.quota.clone(),
    };
    if user.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let key = format!("{}/Ready", user.metadata.uid.clone().unwrap_or_default());
    // Waiting for the pods is a normal step of every change, not worth an Event.
    if verdict.reason != Reason::WaitingForPods
        && context.announced.is_news(
            &key,
            stored_reason(&previous.conditions, "Ready"),
            verdict.reason.as_str(),
        )
    {
        // A Warning also for a ready user whose password expires soon.
        let type_ = if verdict.ready && verdict.reason != Reason::PasswordExpiresSoon {
            EventType::Normal
        } else {
            EventType::Warning
        };
        publish(context, user, type_, verdict.reason, &verdict.message).await;
    }
    api.patch_status(
        &user.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": clearing(json!(status), USER_STATUS_FIELDS) })),
    )
    .await?;
    Ok(())
}

/// An object the Rust types reject (see [`crate::lenient`]): `Ready=False` with reason
/// `InvalidSpec` and the serde error naming the field, `Stalled=True`, a Warning Event once,
/// and no requeue until the object changes. Nothing else is touched.
pub async fn report_invalid<K>(
    object: &Lenient<K>,
    invalid: &Invalid,
    context: &Context,
) -> Result<Action, StatusError>
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
    let now = (context.now)();
    let ready = condition(
        &invalid.conditions,
        "Ready",
        false,
        Reason::InvalidSpec,
        &message,
        generation,
        now,
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
        publish(
            context,
            object,
            EventType::Warning,
            Reason::InvalidSpec,
            &message,
        )
        .await;
    }
    let mut conditions = vec![ready];
    if kind == "FileTransferServer" {
        conditions.extend(conditions::kstatus(
            &invalid.conditions,
            Some((Reason::InvalidSpec, &message)),
            None,
            generation,
            now,
        ));
    }
    Api::<Lenient<K>>::namespaced(context.client.clone(), &namespace)
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"observedGeneration": generation, "conditions": conditions}}),
            ),
        )
        .await?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn server(protocols: &str) -> FileTransferServer {
        serde_saphyr::from_str(&format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: FileTransferServer\nmetadata:\n  name: partners\n  namespace: transfer\n  generation: 2\nspec:\n  protocols: {protocols}\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_refused_user_is_stalled_and_a_pending_one_reconciling() {
        let refused = users::Verdict::refused(Reason::PasswordPolicyViolation, "too short");
        let (stalled, reconciling) = user_kstatus(&refused);
        assert_eq!(stalled.map(|s| s.0), Some(Reason::PasswordPolicyViolation));
        assert!(reconciling.is_none());
        let waiting = users::Verdict::refused(Reason::WaitingForPods, "files-0");
        assert_eq!(
            user_kstatus(&waiting),
            (None, Some((Reason::WaitingForPods, "files-0")))
        );
        let disabled = users::Verdict::refused(Reason::Disabled, "spec.disabled");
        assert_eq!(user_kstatus(&disabled), (None, None));
    }

    #[test]
    fn the_endpoint_uses_the_port_of_a_served_protocol() {
        assert_eq!(
            endpoint(&server("[sftp]"), None),
            "partners.transfer.svc:22"
        );
        assert_eq!(
            endpoint(&server("[ftpsImplicit, sftp]"), Some("203.0.113.7")),
            "203.0.113.7:990"
        );
        assert_eq!(
            endpoint(&server("[ftpsExplicit, sftp]"), None),
            "partners.transfer.svc:21"
        );
    }

    #[test]
    fn an_empty_field_is_sent_as_null_so_that_it_is_removed() {
        let status = FileTransferServerStatus {
            observed_generation: Some(3),
            ..Default::default()
        };
        let body = clearing(json!(status), SERVER_STATUS_FIELDS);
        assert_eq!(body["observedGeneration"], 3);
        assert!(body["certificateSha256"].is_null());
        assert!(body.as_object().unwrap().contains_key("certificateSha256"));
        assert!(body.as_object().unwrap().contains_key("endpoint"));
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
        assert_eq!(reason, Reason::LoadBalancerPending);
        assert!(message.contains("ha-0=203.0.113.10"), "{message}");
        assert!(message.contains("Service ha-1"), "{message}");
        passive.pending.clear();
        passive
            .by_pod
            .insert("ha-1".to_string(), "203.0.113.11".to_string());
        let (ok, reason, message) = endpoints_verdict(2, 2, &passive);
        assert!(ok);
        assert_eq!(reason, Reason::PodsReady);
        assert!(
            message.ends_with("per pod ha-0=203.0.113.10, ha-1=203.0.113.11"),
            "{message}"
        );
        assert_eq!(endpoints_verdict(1, 2, &passive).1, Reason::PodsNotReady);
    }

    fn prepared() -> super::super::build::Prepared {
        super::super::build::Prepared {
            children: Vec::new(),
            shard_of_user: BTreeMap::from([("alice".to_string(), 0)]),
            shard_digests: BTreeMap::new(),
            shard_count: 2,
            unchanged_shards: Vec::new(),
            per_pod_services: None,
            create_ssh_host_key: false,
            passive: render::PassiveAddresses::default(),
        }
    }

    fn validated() -> Validated {
        Validated {
            users: users::Resolved {
                list: sluice_config::UserList {
                    api_version: sluice_config::API_VERSION.into(),
                    kind: "UserList".into(),
                    users: Vec::new(),
                },
                verdicts: BTreeMap::new(),
                next_change: None,
            },
            objects: BTreeMap::new(),
            storage_missing: Vec::new(),
        }
    }

    fn issued() -> CertOutcome {
        CertOutcome {
            ready: true,
            reason: Reason::Issued,
            message: "issued".into(),
            info: None,
            renew_at: None,
            recheck_at: None,
            retry: None,
            rotated_ca: false,
            issued: false,
        }
    }

    fn by_type(
        conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    ) -> BTreeMap<String, (String, String, String)> {
        conditions
            .iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    (c.status.clone(), c.reason.clone(), c.message.clone()),
                )
            })
            .collect()
    }

    #[test]
    fn a_refused_child_is_named_in_ready_and_stalls_the_server() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let applied = Applied::for_test(
            prepared(),
            vec![super::super::apply::Failure {
                kind: conditions::ChildKind::PodDisruptionBudget,
                name: "partners".into(),
                message: "exceeded quota".into(),
            }],
            Default::default(),
        );
        let all = by_type(&server_conditions(
            &server("[sftp]"),
            &validated(),
            &issued(),
            &applied,
            now,
        ));
        assert_eq!(all["Ready"].0, "False");
        assert_eq!(all["Ready"].1, "PodDisruptionBudgetNotApplied");
        assert!(
            all["Ready"]
                .2
                .contains("PodDisruptionBudget partners not applied: exceeded quota")
        );
        assert_eq!(
            (all["Stalled"].0.as_str(), all["Stalled"].1.as_str()),
            ("True", "PodDisruptionBudgetNotApplied")
        );
        assert_eq!(all["Reconciling"].0, "False");
    }

    #[test]
    fn a_failed_shard_unsyncs_users_and_its_users_are_not_applied() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let applied = Applied::for_test(
            prepared(),
            vec![super::super::apply::Failure {
                kind: conditions::ChildKind::UsersSecret,
                name: "partners-users".into(),
                message: "too large".into(),
            }],
            std::collections::BTreeSet::from([0]),
        );
        assert!(!applied.user_applied("Alice"));
        let all = by_type(&server_conditions(
            &server("[sftp]"),
            &validated(),
            &issued(),
            &applied,
            now,
        ));
        assert_eq!(all["UsersSynced"].0, "False");
        assert!(
            all["UsersSynced"]
                .2
                .contains("Secret partners-users: too large"),
            "{}",
            all["UsersSynced"].2
        );
    }

    #[test]
    fn a_missing_object_store_secret_is_named_in_ready_and_reconciling_not_stalled() {
        let server = server("[sftp]");
        let mut validated = validated();
        validated.storage_missing = vec![
            "spec.storage.objectStore.credentialsSecretRef: Secret \"s3\" not found in namespace n; the pods wait for it".into(),
        ];
        let applied = Applied::for_test(prepared(), Vec::new(), Default::default());
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let conditions = by_type(&server_conditions(
            &server,
            &validated,
            &issued(),
            &applied,
            now,
        ));
        let (status, reason, message) = &conditions["Ready"];
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "ObjectStoreSecretNotFound")
        );
        assert!(
            message.starts_with("spec.storage.objectStore.credentialsSecretRef: Secret \"s3\""),
            "{message}"
        );
        assert_eq!(conditions["Stalled"].0, "False");
        assert_eq!(conditions["Reconciling"].0, "True");
        assert_eq!(
            reason_of(&applied, &validated, false),
            Reason::ObjectStoreSecretNotFound
        );
    }

    #[test]
    fn pods_starting_is_reconciling_not_stalled() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let applied = Applied::for_test(prepared(), Vec::new(), Default::default());
        assert!(applied.user_applied("alice"));
        let all = by_type(&server_conditions(
            &server("[sftp]"),
            &validated(),
            &issued(),
            &applied,
            now,
        ));
        assert_eq!(all["Ready"].0, "False");
        assert_eq!(all["EndpointsReady"].1, "PodsNotReady");
        assert_eq!(all["Reconciling"].0, "True");
        assert_eq!(all["Stalled"].0, "False");
    }
}
