//! Certificates issued by the operator's own CA (cert-manager style): CA and server certificate
//! generation with rcgen, inspection of existing PEM, and the renewal decision — all pure, with
//! the clock passed in so renewal timing and CA overlap are testable.

use jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("{what} is not a valid PEM certificate: {message}")]
    Parse { what: String, message: String },
}

/// A certificate and its key, PEM encoded, with its validity.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

/// What the operator needs to know about an existing certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct CertInfo {
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub sha256: String,
    pub names: Vec<String>,
}

fn to_time(ts: Timestamp) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(ts.as_second())
        .map_err(|e| CertError::Generate(e.to_string()))
}

fn generate(e: impl std::fmt::Display) -> CertError {
    CertError::Generate(e.to_string())
}

/// A new self-signed CA valid from `now` (minus a minute of clock skew) for `lifetime`.
pub fn generate_ca(
    common_name: &str,
    now: Timestamp,
    lifetime: SignedDuration,
) -> Result<Issued, CertError> {
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "sluice-operator");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let not_before = now - SignedDuration::from_secs(60);
    let not_after = now + lifetime;
    params.not_before = to_time(not_before)?;
    params.not_after = to_time(not_after)?;
    let cert = params.self_signed(&key).map_err(generate)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_before,
        not_after,
    })
}

/// A server certificate for `names` (DNS names or IP addresses) signed by `ca`.
pub fn issue_server(
    ca: &Issued,
    names: &[String],
    now: Timestamp,
    lifetime: SignedDuration,
) -> Result<Issued, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(generate)?;
    let ca_params = CertificateParams::from_ca_cert_pem(&ca.cert_pem).map_err(generate)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(generate)?;
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name = dn;
    params.subject_alt_names = names
        .iter()
        .map(|name| match name.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => name
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(generate),
        })
        .collect::<Result<_, _>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let not_before = now - SignedDuration::from_secs(60);
    let not_after = now + lifetime;
    params.not_before = to_time(not_before)?;
    params.not_after = to_time(not_after)?;
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .map_err(generate)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_before,
        not_after,
    })
}

/// Parses a Go-style duration as cert-manager and the CRD's CEL rules use them (`2160h`, `90s`,
/// `1h30m`); `field` names the offending field in the error.
pub fn parse_duration(field: &str, text: &str) -> Result<SignedDuration, String> {
    let duration: SignedDuration = text
        .parse()
        .map_err(|_| format!("{field} {text:?} is not a duration such as 2160h or 90m"))?;
    if duration <= SignedDuration::ZERO {
        return Err(format!("{field} {text:?} must be positive"));
    }
    Ok(duration)
}

/// Reads validity, fingerprint and SANs of the first certificate in `pem`.
pub fn inspect(what: &str, pem: &str) -> Result<CertInfo, CertError> {
    let parse_error = |message: String| CertError::Parse {
        what: what.to_string(),
        message,
    };
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| parse_error(e.to_string()))?;
    let cert = block.parse_x509().map_err(|e| parse_error(e.to_string()))?;
    let validity = cert.validity();
    let to_ts = |t: x509_parser::time::ASN1Time| {
        Timestamp::from_second(t.timestamp()).map_err(|e| parse_error(e.to_string()))
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => names.push(dns.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
                    ),
                    16 => {
                        let mut octets = [0u8; 16];
                        octets.copy_from_slice(bytes);
                        names.push(std::net::Ipv6Addr::from(octets).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        not_before: to_ts(validity.not_before)?,
        not_after: to_ts(validity.not_after)?,
        sha256: hex::encode(Sha256::digest(&block.contents)),
        names,
    })
}

/// Whether the first certificate in `cert_pem` is signed by the CA in `ca_pem`.
pub fn issued_by(cert_pem: &str, ca_pem: &str) -> bool {
    let parse = |pem: &str| {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .ok()
            .map(|(_, p)| p)
    };
    let (Some(cert), Some(ca)) = (parse(cert_pem), parse(ca_pem)) else {
        return false;
    };
    let (Ok(cert), Ok(ca)) = (cert.parse_x509(), ca.parse_x509()) else {
        return false;
    };
    cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// When to renew: `renew_before` ahead of expiry, or at 2/3 of the lifetime by default.
pub fn renewal_at(info: &CertInfo, renew_before: Option<SignedDuration>) -> Timestamp {
    match renew_before {
        Some(before) => info.not_after - before,
        None => {
            let lifetime = info.not_after.as_second() - info.not_before.as_second();
            info.not_before + SignedDuration::from_secs(lifetime * 2 / 3)
        }
    }
}

/// Whether an existing certificate can stay: it must cover `names` and not be due.
pub fn needs_renewal(
    existing: Option<&CertInfo>,
    names: &[String],
    now: Timestamp,
    renew_before: Option<SignedDuration>,
) -> bool {
    match existing {
        None => true,
        Some(info) => {
            names.iter().any(|n| !info.names.contains(n)) || now >= renewal_at(info, renew_before)
        }
    }
}

/// How long before expiry a certificate the operator does not renew itself is reported
/// (`CertificateExpiringSoon`: a Warning Event and the `CertificateReady` reason).
pub const EXPIRY_WARNING: SignedDuration = SignedDuration::from_hours(24 * 30);

/// How late a renewer (cert-manager) may be before an expiring certificate is reported.
pub const RENEWAL_GRACE: SignedDuration = SignedDuration::from_mins(10);

/// Whether a certificate with the SANs `cert_names` is valid for `name` (a DNS name or an IP
/// address): exact match, case-insensitive for DNS names, or a `*.` wildcard standing for
/// exactly one leftmost label (RFC 6125).
pub fn covers(cert_names: &[String], name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return cert_names.iter().any(|n| n == name);
    }
    let name = name.to_ascii_lowercase();
    cert_names.iter().any(|cert_name| {
        let cert_name = cert_name.to_ascii_lowercase();
        match cert_name.strip_prefix("*.") {
            Some(parent) => name
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => cert_name == name,
        }
    })
}

/// The state of a certificate the operator does not issue itself (`secretRef`, `certManager`).
#[derive(Debug, Clone, PartialEq)]
pub enum Assessment {
    Valid,
    /// Within [`EXPIRY_WARNING`] of `notAfter`, and nobody renewed it on time.
    ExpiringSoon,
    Expired,
    /// Names the certificate must carry but does not.
    NamesMissing(Vec<String>),
}

/// Assesses `info` at `now`. `required` are names the certificate must cover. `renewal` is when
/// a renewer (cert-manager) plans to replace it; the expiry warning then waits until that
/// renewal is overdue by [`RENEWAL_GRACE`], so a certificate that is routinely renewed 30 days
/// before its expiry does not warn. Without a renewer (`secretRef`) it warns 30 days before.
pub fn assess(
    info: &CertInfo,
    required: &[String],
    now: Timestamp,
    renewal: Option<Timestamp>,
) -> Assessment {
    if info.not_after <= now {
        return Assessment::Expired;
    }
    let missing: Vec<String> = required
        .iter()
        .filter(|name| !covers(&info.names, name))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Assessment::NamesMissing(missing);
    }
    let within_window = info.not_after - EXPIRY_WARNING <= now;
    let renewal_overdue = renewal.is_none_or(|at| now >= at + RENEWAL_GRACE);
    if within_window && renewal_overdue {
        Assessment::ExpiringSoon
    } else {
        Assessment::Valid
    }
}

/// `ca.crt` content: the current CA, plus the previous one while it is still valid, so that
/// clients pinned to either keep working during a CA rotation.
pub fn ca_bundle(current: &str, previous: Option<&str>, now: Timestamp) -> String {
    let mut bundle = current.trim_end().to_string();
    bundle.push('\n');
    if let Some(previous) = previous
        && inspect("previous CA", previous).is_ok_and(|info| info.not_after > now)
    {
        bundle.push_str(previous.trim_end());
        bundle.push('\n');
    }
    bundle
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days(n: i64) -> SignedDuration {
        SignedDuration::from_hours(24 * n)
    }

    #[test]
    fn issued_certificate_has_names_validity_and_chains_to_the_ca() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let ca = generate_ca("sluice test CA", now, days(1000)).unwrap();
        let names = vec!["ftp.example.com".to_string(), "192.0.2.10".to_string()];
        let server = issue_server(&ca, &names, now, days(90)).unwrap();
        let info = inspect("tls.crt", &server.cert_pem).unwrap();
        assert_eq!(info.names, names);
        assert_eq!(info.not_after, now + days(90));
        assert_eq!(info.sha256.len(), 64);
        // The issuer is the CA: verify the chain with rustls' webpki through x509-parser.
        let (_, ca_block) = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes()).unwrap();
        let ca_cert = ca_block.parse_x509().unwrap();
        let (_, leaf_block) = x509_parser::pem::parse_x509_pem(server.cert_pem.as_bytes()).unwrap();
        let leaf = leaf_block.parse_x509().unwrap();
        assert_eq!(leaf.issuer(), ca_cert.subject());
        assert!(leaf.verify_signature(Some(ca_cert.public_key())).is_ok());
        assert!(issued_by(&server.cert_pem, &ca.cert_pem));
        let other = generate_ca("sluice test CA", now, days(1000)).unwrap();
        assert!(
            !issued_by(&server.cert_pem, &other.cert_pem),
            "same name, other key"
        );
        assert!(!issued_by("garbage", &ca.cert_pem));
    }

    #[test]
    fn renewal_happens_at_two_thirds_or_renew_before() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let ca = generate_ca("ca", now, days(1000)).unwrap();
        let names = vec!["a.example".to_string()];
        let cert = issue_server(&ca, &names, now, days(90)).unwrap();
        let info = inspect("tls.crt", &cert.cert_pem).unwrap();
        let at = renewal_at(&info, None);
        let expected = info.not_before
            + SignedDuration::from_secs(
                (info.not_after.as_second() - info.not_before.as_second()) * 2 / 3,
            );
        assert_eq!(at, expected);
        assert!(!needs_renewal(Some(&info), &names, now + days(59), None));
        assert!(needs_renewal(Some(&info), &names, now + days(61), None));
        assert!(needs_renewal(
            Some(&info),
            &names,
            now + days(80),
            Some(days(15))
        ));
        assert!(!needs_renewal(
            Some(&info),
            &names,
            now + days(70),
            Some(days(15))
        ));
        assert!(needs_renewal(
            Some(&info),
            &["b.example".to_string()],
            now,
            None
        ));
        assert!(needs_renewal(None, &names, now, None));
    }

    #[test]
    fn ca_bundle_keeps_the_previous_ca_until_it_expires() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let old = generate_ca("old", now - days(900), days(1000)).unwrap();
        let new = generate_ca("new", now, days(1000)).unwrap();
        let bundle = ca_bundle(&new.cert_pem, Some(&old.cert_pem), now);
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
        let later = ca_bundle(&new.cert_pem, Some(&old.cert_pem), now + days(200));
        assert_eq!(later.matches("BEGIN CERTIFICATE").count(), 1);
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("d", "2160h").unwrap(), days(90));
        assert_eq!(
            parse_duration("d", "90s").unwrap(),
            SignedDuration::from_secs(90)
        );
        assert_eq!(
            parse_duration("d", "1h30m").unwrap(),
            SignedDuration::from_secs(5400)
        );
        let error = parse_duration("spec.tls.duration", "soon").unwrap_err();
        assert!(error.contains("spec.tls.duration"), "{error}");
        assert!(parse_duration("d", "0s").is_err());
    }

    #[test]
    fn wildcards_cover_one_label_and_ips_match_exactly() {
        let names = vec!["*.Example.com".to_string(), "192.0.2.10".to_string()];
        assert!(covers(&names, "ftp.example.com"));
        assert!(!covers(&names, "example.com"));
        assert!(!covers(&names, "a.ftp.example.com"));
        assert!(covers(&names, "192.0.2.10"));
        assert!(!covers(&names, "192.0.2.11"));
        assert!(!covers(&["*.0.2.10".to_string()], "192.0.2.10"));
    }

    #[test]
    fn expiry_is_reported_thirty_days_ahead_with_an_injected_clock() {
        let issued: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let ca = generate_ca("ca", issued, days(1000)).unwrap();
        let names = vec!["ftp.example.com".to_string()];
        let cert = issue_server(&ca, &names, issued, days(90)).unwrap();
        let info = inspect("tls.crt", &cert.cert_pem).unwrap();
        // secretRef: nobody renews it; 30 days before expiry it is reported.
        assert_eq!(
            assess(&info, &names, issued + days(59), None),
            Assessment::Valid
        );
        assert_eq!(
            assess(&info, &names, issued + days(61), None),
            Assessment::ExpiringSoon
        );
        assert_eq!(
            assess(&info, &names, issued + days(90), None),
            Assessment::Expired
        );
        // certManager: renewal planned at day 60; reported only once that is overdue.
        let renewal = Some(issued + days(60));
        assert_eq!(
            assess(
                &info,
                &names,
                issued + days(60) + SignedDuration::from_mins(5),
                renewal
            ),
            Assessment::Valid
        );
        assert_eq!(
            assess(&info, &names, issued + days(61), renewal),
            Assessment::ExpiringSoon
        );
        // A renewal planned later than the warning window (long-lived certificate).
        assert_eq!(
            assess(&info, &names, issued + days(62), Some(issued + days(80))),
            Assessment::Valid
        );
        assert_eq!(
            assess(&info, &["other.example.com".to_string()], issued, None),
            Assessment::NamesMissing(vec!["other.example.com".to_string()])
        );
    }

    #[test]
    fn garbage_pem_is_a_named_error() {
        let error = inspect("secret partners-tls tls.crt", "garbage").unwrap_err();
        assert!(error.to_string().contains("partners-tls"));
    }
}
