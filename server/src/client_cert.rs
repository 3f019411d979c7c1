//! Client-certificate logins (FTPS): what a verified client certificate says (SHA-256
//! fingerprint, subject attributes, subject alternative names) and whether it maps to the user
//! who logs in. The TLS layer (`tls.rs`) has already checked the chain against
//! `tls.clientCaFile`; this module only decides which account a certificate may open.

use sluice_config::{ClientCertificate, User, normalize_fingerprint, parse_distinguished_name};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The parts of a presented certificate that mappings and the audit log use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// SHA-256 of the DER certificate, lower-case hex.
    pub sha256: String,
    /// The subject as x509-parser prints it (`CN=alice, O=Partner`), for the audit log.
    pub subject: String,
    /// Subject attributes as (upper-case type, value), sorted.
    attributes: Vec<(String, String)>,
    /// DNS names, e-mail addresses and URIs from the subject alternative names.
    sans: Vec<String>,
}

/// Attribute type names that mean the same attribute.
fn canonical_type(kind: &str) -> String {
    let upper = kind.to_ascii_uppercase();
    match upper.as_str() {
        "EMAILADDRESS" | "E" => "EMAIL".to_string(),
        _ => upper,
    }
}

impl PeerCertificate {
    /// Reads a DER certificate. A certificate x509-parser cannot read still has its
    /// fingerprint (and then only `sha256` mappings can match it).
    pub fn from_der(der: &[u8]) -> PeerCertificate {
        let sha256 = crate::tls::fingerprint(der);
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            return PeerCertificate {
                sha256,
                subject: String::new(),
                attributes: Vec::new(),
                sans: Vec::new(),
            };
        };
        let registry = x509_parser::objects::oid_registry();
        // A subject with an attribute that is not a string cannot be matched by `subject`
        // (leaving the attribute out would let a shorter mapping match it).
        let mut attributes: Vec<(String, String)> = cert
            .subject()
            .iter_attributes()
            .map(|attribute| {
                let kind = x509_parser::objects::oid2abbrev(attribute.attr_type(), registry)
                    .map(str::to_string)
                    .unwrap_or_else(|_| attribute.attr_type().to_id_string());
                let value = attribute.as_str().ok()?;
                Some((canonical_type(&kind), value.to_string()))
            })
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        attributes.sort();
        let sans = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|extension| {
                extension
                    .value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        GeneralName::DNSName(name)
                        | GeneralName::RFC822Name(name)
                        | GeneralName::URI(name) => Some(name.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        PeerCertificate {
            sha256,
            subject: cert.subject().to_string(),
            attributes,
            sans,
        }
    }

    fn matches(&self, entry: &ClientCertificate) -> bool {
        if let Some(fingerprint) = &entry.sha256 {
            return normalize_fingerprint(fingerprint).is_ok_and(|f| f == self.sha256);
        }
        if let Some(san) = &entry.san {
            return self.sans.iter().any(|name| name.eq_ignore_ascii_case(san));
        }
        if let Some(subject) = &entry.subject {
            let Ok(wanted) = parse_distinguished_name(subject) else {
                return false;
            };
            let mut wanted: Vec<(String, String)> = wanted
                .into_iter()
                .map(|(kind, value)| (canonical_type(&kind), value))
                .collect();
            wanted.sort();
            return !self.attributes.is_empty() && wanted == self.attributes;
        }
        false
    }

    /// Whether one of `user`'s `clientCertificates` entries names this certificate.
    pub fn maps_to(&self, user: &User) -> bool {
        user.client_certificates.iter().any(|e| self.matches(e))
    }
}

/// Why the client certificate (or its absence) refuses a login as `user`; `None` if it does
/// not. A certificate mapped to some account opens only the accounts it is mapped to, whatever
/// their `ftpsAuth`; `certificate` modes need a certificate mapped to the user.
pub fn refusal<'a>(
    user: &User,
    cert: Option<&PeerCertificate>,
    mut users: impl Iterator<Item = &'a User>,
) -> Option<&'static str> {
    match cert {
        None if user.ftps_auth.needs_certificate() => Some("client certificate required"),
        None => None,
        Some(cert) if cert.maps_to(user) => None,
        Some(cert) if user.ftps_auth.needs_certificate() || users.any(|u| cert.maps_to(u)) => {
            Some("client certificate not mapped")
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::FtpsAuth;

    fn cert(cn: &str, san: &str) -> (Vec<u8>, PeerCertificate) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Partner");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.subject_alt_names = vec![rcgen::SanType::Rfc822Name(san.try_into().unwrap())];
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let parsed = PeerCertificate::from_der(&der);
        (der, parsed)
    }

    fn user(name: &str, mode: FtpsAuth, entries: Vec<ClientCertificate>) -> User {
        let text = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: UserList\nusers:\n  - username: {name}\n    home: {name}\n    permissions: [list]\n"
        );
        let mut user = sluice_config::UserList::parse("users.yaml", &text)
            .unwrap()
            .users
            .remove(0);
        user.ftps_auth = mode;
        user.client_certificates = entries;
        user
    }

    fn subject(text: &str) -> ClientCertificate {
        ClientCertificate {
            subject: Some(text.into()),
            ..Default::default()
        }
    }

    #[test]
    fn subject_san_and_fingerprint_mappings() {
        let (_, alice) = cert("alice", "alice@partner.example");
        assert!(alice.subject.contains("CN=alice"), "{}", alice.subject);
        // Any order, type case-insensitive; values exact; every attribute needed.
        assert!(alice.matches(&subject("CN=alice,O=Partner")));
        assert!(alice.matches(&subject("o=Partner, cn=alice")));
        assert!(!alice.matches(&subject("CN=alice")));
        assert!(!alice.matches(&subject("CN=Alice,O=Partner")));
        assert!(!alice.matches(&subject("CN=alice,O=Partner,OU=x")));
        let san = |s: &str| ClientCertificate {
            san: Some(s.into()),
            ..Default::default()
        };
        assert!(alice.matches(&san("ALICE@partner.example")));
        assert!(!alice.matches(&san("bob@partner.example")));
        let sha = |s: &str| ClientCertificate {
            sha256: Some(s.into()),
            ..Default::default()
        };
        assert!(alice.matches(&sha(&alice.sha256.to_uppercase())));
        assert!(!alice.matches(&sha(&"0".repeat(64))));
    }

    #[test]
    fn a_certificate_opens_only_the_accounts_it_is_mapped_to() {
        let (_, alice_cert) = cert("alice", "alice@partner.example");
        let (_, stranger) = cert("mallory", "mallory@elsewhere.example");
        let alice = user(
            "alice",
            FtpsAuth::Certificate,
            vec![subject("CN=alice,O=Partner")],
        );
        let bob = user(
            "bob",
            FtpsAuth::Certificate,
            vec![subject("CN=bob,O=Partner")],
        );
        let carol = user("carol", FtpsAuth::Password, vec![]);
        let all = [alice.clone(), bob.clone(), carol.clone()];
        assert_eq!(refusal(&alice, Some(&alice_cert), all.iter()), None);
        assert_eq!(
            refusal(&bob, Some(&alice_cert), all.iter()),
            Some("client certificate not mapped")
        );
        assert_eq!(
            refusal(&bob, None, all.iter()),
            Some("client certificate required")
        );
        // A password user: no certificate or an unmapped one is fine, someone else's is not.
        assert_eq!(refusal(&carol, None, all.iter()), None);
        assert_eq!(refusal(&carol, Some(&stranger), all.iter()), None);
        assert_eq!(
            refusal(&carol, Some(&alice_cert), all.iter()),
            Some("client certificate not mapped")
        );
    }

    #[test]
    fn garbage_is_only_a_fingerprint() {
        let parsed = PeerCertificate::from_der(b"not a certificate");
        assert_eq!(parsed.sha256.len(), 64);
        assert!(!parsed.matches(&subject("CN=alice")));
    }
}
