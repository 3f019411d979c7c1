//! cert-manager as the TLS source (`spec.tls.source: certManager`): the pure builder of the
//! `Certificate` (`cert-manager.io/v1`) the operator applies for a FileTransferServer, what the
//! operator reads back from its status, and the discovery check whether cert-manager's API is
//! served at all. The Certificate is a `DynamicObject`: the object is small and its API is
//! stable, and a cert-manager crate would pin the operator to one cert-manager release.
//!
//! Discovery (`GET /apis/cert-manager.io/v1`) is readable by every authenticated client
//! (`system:discovery`), so finding out whether cert-manager is installed needs no RBAC rule on
//! CustomResourceDefinitions, and works the same for a namespace-scoped install.

use std::collections::BTreeMap;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Client, Resource};
use serde_json::json;

use crate::crd::FileTransferServer;
use crate::render::{Names, RenderError};

pub const GROUP: &str = "cert-manager.io";
pub const VERSION: &str = "v1";
pub const KIND: &str = "Certificate";
pub const PLURAL: &str = "certificates";

/// The `Certificate` resource of cert-manager.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), PLURAL)
}

/// Whether the API server serves cert-manager's `certificates` (cert-manager.io/v1).
pub async fn installed(client: &Client) -> Result<bool, kube::Error> {
    match client
        .list_api_group_resources(&format!("{GROUP}/{VERSION}"))
        .await
    {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == PLURAL)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(error) => Err(error),
    }
}

/// The message of the `CertManagerMissing` condition.
pub const MISSING_MESSAGE: &str = "spec.tls.source is certManager but the API server does not serve certificates.cert-manager.io/v1: install cert-manager (https://cert-manager.io/docs/installation/) and create the issuer named in spec.tls.issuerRef, or use spec.tls.source generated or secretRef";

/// The Certificate for `fts`: cert-manager writes `tls.crt`/`tls.key`/`ca.crt` into the TLS
/// Secret the StatefulSet mounts (`<name>-tls`). `names` are the DNS names and IP addresses the
/// certificate must carry (see `controller::certificate_names`); IP addresses go into
/// `ipAddresses`. The key is ECDSA P-256 like the operator's own certificates, rotated on every
/// renewal. Owned (controller reference) by the FileTransferServer.
pub fn certificate(
    fts: &FileTransferServer,
    names: &[String],
) -> Result<DynamicObject, RenderError> {
    let n = Names::of(fts)?;
    let tls = &fts.spec.tls;
    let issuer = tls.issuer_ref.as_ref().ok_or_else(|| RenderError::Yaml {
        file: "Certificate",
        message: "spec.tls.issuerRef is required when spec.tls.source is certManager".into(),
    })?;
    let (ips, dns): (Vec<&String>, Vec<&String>) = names
        .iter()
        .partition(|name| name.parse::<std::net::IpAddr>().is_ok());
    let mut spec = json!({
        "secretName": n.tls_secret(),
        "dnsNames": dns,
        "issuerRef": {
            "name": issuer.name,
            "kind": issuer.kind.as_deref().unwrap_or("Issuer"),
            "group": issuer.group.as_deref().unwrap_or(GROUP),
        },
        "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        "usages": ["digital signature", "server auth"],
        // The issued Secret carries the operator's label, so that it is among the Secrets the
        // operator watches as its own (metadata only) and nothing else needs marking.
        "secretTemplate": {"labels": {
            "app.kubernetes.io/name": "sluice-server",
            "app.kubernetes.io/instance": n.server,
            "app.kubernetes.io/managed-by": "sluice-operator",
        }},
    });
    if !ips.is_empty() {
        spec["ipAddresses"] = json!(ips);
    }
    if let Some(duration) = &tls.duration {
        spec["duration"] = json!(duration);
    }
    if let Some(renew_before) = &tls.renew_before {
        spec["renewBefore"] = json!(renew_before);
    }
    let mut object = DynamicObject::new(&n.server, &api_resource())
        .within(&n.namespace)
        .data(json!({ "spec": spec }));
    object.metadata.labels = Some(BTreeMap::from([
        ("app.kubernetes.io/name".into(), "sluice-server".into()),
        ("app.kubernetes.io/instance".into(), n.server.clone()),
        (
            "app.kubernetes.io/managed-by".into(),
            "sluice-operator".into(),
        ),
    ]));
    object.metadata.owner_references = fts.controller_owner_ref(&()).map(|o| vec![o]);
    Ok(object)
}

/// What the operator shows from a Certificate's status: cert-manager's planned renewal time and
/// the message of its `Ready` condition when that is not `True`.
#[derive(Debug, Default, PartialEq)]
pub struct CertificateStatus {
    pub renewal_time: Option<jiff::Timestamp>,
    pub not_ready_message: Option<String>,
}

pub fn status(object: &DynamicObject) -> CertificateStatus {
    let status = object.data.get("status");
    let renewal_time = status
        .and_then(|s| s.get("renewalTime"))
        .and_then(|t| t.as_str())
        .and_then(|t| t.parse().ok());
    let not_ready_message = status
        .and_then(|s| s.get("conditions"))
        .and_then(|c| c.as_array())
        .and_then(|conditions| {
            conditions
                .iter()
                .find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Ready"))
        })
        .filter(|c| c.get("status").and_then(|s| s.as_str()) != Some("True"))
        .map(|c| {
            let reason = c.get("reason").and_then(|r| r.as_str()).unwrap_or("");
            let message = c.get("message").and_then(|m| m.as_str()).unwrap_or("");
            format!("{reason}: {message}")
        });
    CertificateStatus {
        renewal_time,
        not_ready_message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(tls: &str) -> FileTransferServer {
        let mut fts: FileTransferServer = serde_saphyr::from_str(&format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: FileTransferServer\nmetadata:\n  name: partners\n  namespace: transfer\nspec:\n  protocols: [ftpsExplicit]\n  tls:\n{tls}"
        ))
        .unwrap();
        fts.metadata.uid = Some("0c6d5f3e-1111-2222-3333-444455556666".into());
        fts
    }

    #[test]
    fn certificate_targets_the_mounted_secret_with_names_issuer_and_durations() {
        let fts = server(
            "    source: certManager\n    issuerRef:\n      name: letsencrypt\n      kind: ClusterIssuer\n    duration: 720h\n    renewBefore: 240h\n",
        );
        let names = vec![
            "ftp.example.com".to_string(),
            "partners.transfer.svc".to_string(),
            "198.51.100.7".to_string(),
            "2001:db8::7".to_string(),
        ];
        let object = certificate(&fts, &names).unwrap();
        assert_eq!(object.metadata.name.as_deref(), Some("partners"));
        assert_eq!(object.metadata.namespace.as_deref(), Some("transfer"));
        let types = object.types.as_ref().unwrap();
        assert_eq!(types.api_version, "cert-manager.io/v1");
        assert_eq!(types.kind, "Certificate");
        let owner = &object.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "FileTransferServer");
        assert_eq!(owner.controller, Some(true));
        let spec = &object.data["spec"];
        assert_eq!(spec["secretName"], "partners-tls");
        assert_eq!(
            spec["dnsNames"],
            json!(["ftp.example.com", "partners.transfer.svc"])
        );
        assert_eq!(spec["ipAddresses"], json!(["198.51.100.7", "2001:db8::7"]));
        assert_eq!(
            spec["issuerRef"],
            json!({"name": "letsencrypt", "kind": "ClusterIssuer", "group": "cert-manager.io"})
        );
        assert_eq!(spec["duration"], "720h");
        assert_eq!(spec["renewBefore"], "240h");
        assert_eq!(spec["privateKey"]["algorithm"], "ECDSA");
        assert_eq!(spec["privateKey"]["size"], 256);
        // The Secret name is the one the StatefulSet mounts.
        let sts = crate::render::stateful_set(&fts, "d").unwrap();
        let volumes = sts.spec.unwrap().template.spec.unwrap().volumes.unwrap();
        let tls = volumes.iter().find(|v| v.name == "tls").unwrap();
        assert_eq!(
            tls.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("partners-tls")
        );
    }

    #[test]
    fn defaults_issuer_kind_and_group_and_leaves_out_unset_fields() {
        let fts = server(
            "    source: certManager\n    issuerRef:\n      name: internal-ca\n      group: awspca.cert-manager.io\n",
        );
        let object = certificate(&fts, &["partners.transfer.svc".to_string()]).unwrap();
        let spec = &object.data["spec"];
        assert_eq!(spec["issuerRef"]["kind"], "Issuer");
        assert_eq!(spec["issuerRef"]["group"], "awspca.cert-manager.io");
        assert!(spec.get("ipAddresses").is_none());
        assert!(spec.get("duration").is_none());
        assert!(spec.get("renewBefore").is_none());
        let missing = server("    source: certManager\n");
        assert!(
            certificate(&missing, &[])
                .unwrap_err()
                .to_string()
                .contains("spec.tls.issuerRef")
        );
    }

    #[test]
    fn status_reads_renewal_time_and_the_not_ready_message() {
        let mut object = DynamicObject::new("partners", &api_resource());
        object.data = json!({"status": {
            "renewalTime": "2026-03-01T00:00:00Z",
            "conditions": [{"type": "Ready", "status": "False", "reason": "Issuing",
                            "message": "issuing certificate as Secret does not exist"}]}});
        let s = status(&object);
        assert_eq!(
            s.renewal_time,
            Some("2026-03-01T00:00:00Z".parse().unwrap())
        );
        assert_eq!(
            s.not_ready_message.as_deref(),
            Some("Issuing: issuing certificate as Secret does not exist")
        );
        object.data["status"]["conditions"][0]["status"] = json!("True");
        assert_eq!(status(&object).not_ready_message, None);
        assert_eq!(
            status(&DynamicObject::new("x", &api_resource())),
            CertificateStatus::default()
        );
    }
}
