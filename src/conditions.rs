//! Condition reasons as one enum, so a reason is matched by the compiler and not by string
//! compares, and the condition builder that keeps `lastTransitionTime` while a status holds.
//! kstatus (Flux, `kubectl wait`) reads `Ready`, `Reconciling` and `Stalled`: the helpers here
//! decide those from the same verdicts as `Ready`.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The kinds of children a server owns, as named in reasons and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChildKind {
    ConfigMap,
    UsersSecret,
    SshHostKey,
    Service,
    StatefulSet,
    NetworkPolicy,
    PodDisruptionBudget,
}

impl ChildKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChildKind::ConfigMap => "ConfigMap",
            ChildKind::UsersSecret => "UsersSecret",
            ChildKind::SshHostKey => "SshHostKey",
            ChildKind::Service => "Service",
            ChildKind::StatefulSet => "StatefulSet",
            ChildKind::NetworkPolicy => "NetworkPolicy",
            ChildKind::PodDisruptionBudget => "PodDisruptionBudget",
        }
    }
}

/// Every reason a condition or Event of Sluice carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Ready,
    NotReady,
    InvalidSpec,
    // TransferUser
    Provisioned,
    PasswordExpiresSoon,
    /// A user's quota usage reached `spec.quota.warnAtPercent` (a Warning Event).
    QuotaThreshold,
    PasswordExpired,
    PasswordPolicyViolation,
    SecretNotFound,
    SecretNotMarked,
    SecretKeyMissing,
    DuplicateUsername,
    Disabled,
    Expired,
    HashingFailed,
    /// A user with a feature the server does not offer with object storage (quota, retention).
    NotSupportedOnObjectStorage,
    ServerNotFound,
    /// The user's users.yaml shard could not be applied.
    UsersNotApplied,
    /// The shard is applied but not every ready pod serves it yet.
    WaitingForPods,
    // Certificates
    Issued,
    Valid,
    CertificateExpiringSoon,
    CertificatePending,
    CertManagerMissing,
    InvalidCertificate,
    NamesNotCovered,
    CaRotated,
    CertificateIssued,
    /// A Secret `spec.storage.objectStore` names does not exist: the pods wait for it.
    ObjectStoreSecretNotFound,
    // Endpoints and users
    PodsReady,
    PodsNotReady,
    LoadBalancerPending,
    Rendered,
    // Apply and kstatus
    NotApplied(ChildKind),
    Applied,
    Progressing,
    Reconciled,
    ReconcileError,
    // File events (EventsDelivering)
    SinksDelivering,
    SinkFailing,
    SinkHealthUnknown,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ready => "Ready",
            Reason::NotReady => "NotReady",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::Provisioned => "Provisioned",
            Reason::PasswordExpiresSoon => "PasswordExpiresSoon",
            Reason::QuotaThreshold => "QuotaThreshold",
            Reason::PasswordExpired => "PasswordExpired",
            Reason::PasswordPolicyViolation => "PasswordPolicyViolation",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::SecretNotMarked => "SecretNotMarked",
            Reason::SecretKeyMissing => "SecretKeyMissing",
            Reason::DuplicateUsername => "DuplicateUsername",
            Reason::Disabled => "Disabled",
            Reason::Expired => "Expired",
            Reason::HashingFailed => "HashingFailed",
            Reason::NotSupportedOnObjectStorage => "NotSupportedOnObjectStorage",
            Reason::ObjectStoreSecretNotFound => "ObjectStoreSecretNotFound",
            Reason::ServerNotFound => "ServerNotFound",
            Reason::UsersNotApplied => "UsersNotApplied",
            Reason::WaitingForPods => "WaitingForPods",
            Reason::Issued => "Issued",
            Reason::Valid => "Valid",
            Reason::CertificateExpiringSoon => "CertificateExpiringSoon",
            Reason::CertificatePending => "CertificatePending",
            Reason::CertManagerMissing => "CertManagerMissing",
            Reason::InvalidCertificate => "InvalidCertificate",
            Reason::NamesNotCovered => "NamesNotCovered",
            Reason::CaRotated => "CARotated",
            Reason::CertificateIssued => "CertificateIssued",
            Reason::PodsReady => "PodsReady",
            Reason::PodsNotReady => "PodsNotReady",
            Reason::LoadBalancerPending => "LoadBalancerPending",
            Reason::Rendered => "Rendered",
            Reason::NotApplied(ChildKind::ConfigMap) => "ConfigMapNotApplied",
            Reason::NotApplied(ChildKind::UsersSecret) => "UsersSecretNotApplied",
            Reason::NotApplied(ChildKind::SshHostKey) => "SshHostKeyNotApplied",
            Reason::NotApplied(ChildKind::Service) => "ServiceNotApplied",
            Reason::NotApplied(ChildKind::StatefulSet) => "StatefulSetNotApplied",
            Reason::NotApplied(ChildKind::NetworkPolicy) => "NetworkPolicyNotApplied",
            Reason::NotApplied(ChildKind::PodDisruptionBudget) => "PodDisruptionBudgetNotApplied",
            Reason::Applied => "Applied",
            Reason::Progressing => "Progressing",
            Reason::Reconciled => "Reconciled",
            Reason::ReconcileError => "ReconcileError",
            Reason::SinksDelivering => "SinksDelivering",
            Reason::SinkFailing => "SinkFailing",
            Reason::SinkHealthUnknown => "SinkHealthUnknown",
        }
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A condition that keeps its lastTransitionTime while its status does not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: Reason,
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
        reason: reason.as_str().into(),
        message: message.chars().take(1024).collect(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// The reason stored in `conditions` for `type_`, if any.
pub fn stored_reason<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.as_str())
}

/// kstatus: `Stalled=True` when the operator cannot make progress without a change (an invalid
/// spec, a child the API server refuses), `Reconciling=True` while it still works toward the
/// spec (pods starting, a certificate pending). Both `False` once ready. Flux and
/// `kstatus`-based tools count only these, not `Ready=False`, as unhealthy or in progress.
pub fn kstatus(
    previous: &[Condition],
    stalled: Option<(Reason, &str)>,
    reconciling: Option<(Reason, &str)>,
    generation: Option<i64>,
    now: Timestamp,
) -> [Condition; 2] {
    let stalled_condition = match stalled {
        Some((reason, message)) => {
            // kstatus conditions are "abnormal-true": `True` is what needs attention.
            condition(previous, "Stalled", true, reason, message, generation, now)
        }
        None => condition(
            previous,
            "Stalled",
            false,
            Reason::Reconciled,
            "",
            generation,
            now,
        ),
    };
    let reconciling_condition = match (stalled, reconciling) {
        (None, Some((reason, message))) => condition(
            previous,
            "Reconciling",
            true,
            reason,
            message,
            generation,
            now,
        ),
        _ => condition(
            previous,
            "Reconciling",
            false,
            Reason::Reconciled,
            "",
            generation,
            now,
        ),
    };
    [stalled_condition, reconciling_condition]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_keeps_transition_time_while_status_is_unchanged() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        let first = condition(&[], "Ready", true, Reason::Ready, "ok", Some(1), t0);
        let same = condition(
            std::slice::from_ref(&first),
            "Ready",
            true,
            Reason::Ready,
            "ok",
            Some(2),
            t1,
        );
        assert_eq!(same.last_transition_time.0, t0);
        let flipped = condition(
            &[first],
            "Ready",
            false,
            Reason::NotReady,
            "no",
            Some(2),
            t1,
        );
        assert_eq!(flipped.last_transition_time.0, t1);
    }

    #[test]
    fn kstatus_is_stalled_or_reconciling_never_both() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let [stalled, reconciling] = kstatus(
            &[],
            Some((
                Reason::NotApplied(ChildKind::StatefulSet),
                "StatefulSet a: 422",
            )),
            Some((Reason::Progressing, "pods starting")),
            Some(3),
            now,
        );
        assert_eq!(
            (stalled.type_.as_str(), stalled.status.as_str()),
            ("Stalled", "True")
        );
        assert_eq!(stalled.reason, "StatefulSetNotApplied");
        assert_eq!(reconciling.status, "False");
        let [stalled, reconciling] =
            kstatus(&[], None, Some((Reason::Progressing, "pods")), Some(3), now);
        assert_eq!(stalled.status, "False");
        assert_eq!(reconciling.status, "True");
        let [stalled, reconciling] = kstatus(&[], None, None, Some(3), now);
        assert_eq!(
            (stalled.status.as_str(), reconciling.status.as_str()),
            ("False", "False")
        );
    }
}
