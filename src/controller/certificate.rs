//! Step 3: the serving certificate. With `generated` the operator's own CA issues and renews
//! it (the CA and TLS Secrets are written here, before the other children, because the
//! certificate must name the addresses resolved in step 1); with `certManager` it applies the
//! cert-manager `Certificate`; with `secretRef` it inspects a Secret the user marked for Sluice.
//! The outcome becomes `CertificateReady`; rotations become Events in step 6.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use tracing::info;

use super::resolve::References;
use super::{Context, FIELD_MANAGER};
use crate::conditions::Reason;
use crate::crd::{FileTransferServer, TlsSource};
use crate::render::{self, Names};
use crate::{certmanager, certs};

const CA_LIFETIME_DAYS: i64 = 1095;
const DEFAULT_CERT_LIFETIME: &str = "2160h";

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Render(#[from] render::RenderError),
    #[error("{0}")]
    Cert(#[from] certs::CertError),
}

pub struct CertOutcome {
    pub ready: bool,
    pub reason: Reason,
    pub message: String,
    pub info: Option<certs::CertInfo>,
    /// The next renewal shown in the status (the operator's own or cert-manager's).
    pub renew_at: Option<Timestamp>,
    /// When to look again (a renewal, the start of the expiry warning, the expiry).
    pub recheck_at: Option<Timestamp>,
    /// Look again soon: waiting for something outside the operator (cert-manager).
    pub retry: Option<Duration>,
    /// The operator replaced the server's CA in this reconcile (partners that pinned the CA
    /// must add the new one).
    pub rotated_ca: bool,
    /// The operator issued a new server certificate in this reconcile.
    pub issued: bool,
}

impl CertOutcome {
    fn not_ready(reason: Reason, message: String) -> CertOutcome {
        CertOutcome {
            ready: false,
            reason,
            message,
            info: None,
            renew_at: None,
            recheck_at: None,
            retry: None,
            rotated_ca: false,
            issued: false,
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
            Reason::Valid,
            format!("certificate from {source} valid until {not_after}"),
        ),
        certs::Assessment::ExpiringSoon => (
            true,
            Reason::CertificateExpiringSoon,
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
            Reason::Expired,
            format!("certificate from {source} expired at {not_after}"),
        ),
        certs::Assessment::NamesMissing(missing) => (
            false,
            if renewal.is_some() {
                Reason::CertificatePending
            } else {
                Reason::NamesNotCovered
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
        rotated_ca: false,
        issued: false,
    }
}

pub fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// DNS names and addresses the server certificate must carry.
pub fn certificate_names(server: &FileTransferServer, addresses: &[String]) -> Vec<String> {
    let tls = &server.spec.tls;
    let automatic = tls
        .automatic_names
        .unwrap_or(tls.source != TlsSource::CertManager);
    if !automatic {
        let mut names = tls.dns_names.clone();
        for ip in &tls.ip_addresses {
            if !names.contains(ip) {
                names.push(ip.clone());
            }
        }
        return names;
    }
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

pub async fn ensure(
    server: &FileTransferServer,
    references: &References,
    context: &Context,
) -> Result<CertOutcome, CertificateError> {
    let names = &references.names;
    let addresses = &references.addresses();
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
            let Some(secret) = references.secrets.get(&secret_name) else {
                if references.unmarked.contains(&secret_name) {
                    return Ok(CertOutcome::not_ready(
                        Reason::SecretNotMarked,
                        format!(
                            "spec.tls.secretName: Secret {secret_name} is not marked for Sluice; the operator reads only Secrets labelled {}=true",
                            super::REFERABLE_LABEL
                        ),
                    ));
                }
                return Ok(CertOutcome::not_ready(
                    Reason::SecretNotFound,
                    format!("spec.tls.secretName: Secret {secret_name} not found"),
                ));
            };
            let Some(pem) = secret_text(secret, "tls.crt") else {
                return Ok(CertOutcome::not_ready(
                    Reason::InvalidCertificate,
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
                    Reason::InvalidCertificate,
                    error.to_string(),
                )),
            }
        }
        TlsSource::CertManager => {
            if !certmanager::installed(&context.client).await? {
                return Ok(CertOutcome {
                    retry: Some(Duration::from_secs(30)),
                    ..CertOutcome::not_ready(
                        Reason::CertManagerMissing,
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
                        Reason::CertificatePending,
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
                    if outcome.reason == Reason::CertificatePending {
                        outcome.retry = Some(Duration::from_secs(10));
                    }
                    Ok(outcome)
                }
                Err(error) => Ok(CertOutcome::not_ready(
                    Reason::InvalidCertificate,
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
                Err(message) => return Ok(CertOutcome::not_ready(Reason::InvalidSpec, message)),
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
            let mut issued_new = false;
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
                issued_new = true;
                certs::inspect("server certificate", &issued.cert_pem)?
            } else {
                current_info.unwrap_or_else(|| unreachable_info(now))
            };
            let renew_at = certs::renewal_at(&info, renew_before);
            Ok(CertOutcome {
                ready: true,
                reason: Reason::Issued,
                message: format!(
                    "certificate issued by the operator's CA, valid until {}",
                    info.not_after
                ),
                renew_at: Some(renew_at),
                recheck_at: Some(renew_at),
                info: Some(info),
                retry: None,
                // The first CA of a server is no rotation: nobody pinned anything yet.
                rotated_ca: rotated_ca && previous_ca.is_some(),
                issued: issued_new,
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
) -> Result<(), CertificateError> {
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

/// Whether CertificateReady's new reason deserves a Warning Event: on the transition into
/// `CertificateExpiringSoon` or into a failure (not the routine wait for cert-manager), once,
/// not on every reconcile.
pub fn certificate_warning(previous_reason: Option<&str>, ready: bool, reason: Reason) -> bool {
    previous_reason != Some(reason.as_str())
        && (reason == Reason::CertificateExpiringSoon
            || (!ready && reason != Reason::CertificatePending))
}

/// Server-side apply of a Secret the operator owns (CA, TLS).
async fn apply(api: &Api<Secret>, object: &Secret) -> Result<Secret, CertificateError> {
    let name = object.meta().name.clone().unwrap_or_default();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(&name, &params, &Patch::Apply(object)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_warnings_only_on_transitions() {
        assert!(certificate_warning(
            Some("Valid"),
            true,
            Reason::CertificateExpiringSoon
        ));
        assert!(!certificate_warning(
            Some("CertificateExpiringSoon"),
            true,
            Reason::CertificateExpiringSoon
        ));
        assert!(certificate_warning(None, false, Reason::CertManagerMissing));
        assert!(!certificate_warning(
            None,
            false,
            Reason::CertificatePending
        ));
        assert!(!certificate_warning(
            Some("CertificatePending"),
            true,
            Reason::Valid
        ));
        assert!(certificate_warning(Some("Valid"), false, Reason::Expired));
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
            (false, Reason::CertificatePending)
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
    fn cert_manager_requests_only_the_listed_names_unless_told_otherwise() {
        let yaml = "apiVersion: sluice.dev/v1alpha1\nkind: FileTransferServer\nmetadata:\n  name: partners\n  namespace: transfer\nspec:\n  protocols: [ftpsExplicit]\n  tls:\n    source: certManager\n    issuerRef: {name: letsencrypt}\n    dnsNames: [ftp.example.com]\n";
        let mut server: FileTransferServer = serde_saphyr::from_str(yaml).unwrap();
        let names = certificate_names(&server, &["198.51.100.7".to_string()]);
        assert_eq!(names, vec!["ftp.example.com".to_string()]);
        server.spec.tls.automatic_names = Some(true);
        let names = certificate_names(&server, &["198.51.100.7".to_string()]);
        assert!(names.contains(&"partners.transfer.svc".to_string()));
        assert!(names.contains(&"198.51.100.7".to_string()));
    }

    #[test]
    fn generated_certificates_can_leave_the_automatic_names_out() {
        let yaml = "apiVersion: sluice.dev/v1alpha1\nkind: FileTransferServer\nmetadata:\n  name: partners\n  namespace: transfer\nspec:\n  protocols: [ftpsExplicit]\n  tls:\n    automaticNames: false\n    dnsNames: [ftp.example.com]\n    ipAddresses: [192.0.2.4]\n";
        let server: FileTransferServer = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(
            certificate_names(&server, &["198.51.100.7".to_string()]),
            vec!["ftp.example.com".to_string(), "192.0.2.4".to_string()]
        );
    }
}
