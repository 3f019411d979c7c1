//! Per-user second factors and certificate logins in `users.yaml`: a TOTP secret (RFC 6238)
//! and the client certificates that identify a user on FTPS, with their validation.

use std::fmt;

use serde::{Deserialize, Serialize};

/// TOTP hash function (RFC 6238 allows SHA-1, SHA-256 and SHA-512; authenticator apps mostly
/// only do SHA-1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum TotpAlgorithm {
    #[default]
    #[serde(rename = "SHA1")]
    Sha1,
    #[serde(rename = "SHA256")]
    Sha256,
    #[serde(rename = "SHA512")]
    Sha512,
}

/// A user's TOTP second factor. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TotpConfig {
    /// The shared secret, base32 (RFC 4648, upper or lower case, `=` padding optional), at
    /// least 128 bits.
    pub secret: String,
    /// Code length: 6 or 8.
    #[serde(default = "default_digits")]
    pub digits: u8,
    /// Seconds per time step: 15-300.
    #[serde(default = "default_period")]
    pub period: u64,
    #[serde(default)]
    pub algorithm: TotpAlgorithm,
}

fn default_digits() -> u8 {
    6
}

fn default_period() -> u64 {
    30
}

impl fmt::Debug for TotpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TotpConfig")
            .field("secret", &"<redacted>")
            .field("digits", &self.digits)
            .field("period", &self.period)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

impl TotpConfig {
    /// The decoded secret; `None` when it is not base32 (validation refuses that).
    pub fn secret_bytes(&self) -> Option<Vec<u8>> {
        decode_base32(&self.secret).ok()
    }
}

/// Decodes base32 (RFC 4648 alphabet), ignoring case and `=` padding.
pub fn decode_base32(text: &str) -> Result<Vec<u8>, String> {
    let upper = text.trim_end_matches('=').to_ascii_uppercase();
    // The message never quotes the secret, not even one character of it.
    if upper.chars().any(|c| !matches!(c, 'A'..='Z' | '2'..='7')) {
        return Err("is not base32 (allowed: A-Z, 2-7, = padding)".into());
    }
    let mut spec = data_encoding::BASE32_NOPAD.specification();
    spec.check_trailing_bits = false;
    let encoding = spec
        .encoding()
        .map_err(|e| format!("base32 decoder: {e}"))?;
    encoding
        .decode(upper.as_bytes())
        .map_err(|_| "is not base32 (its length cannot be decoded)".to_string())
}

/// Checks a TOTP setting; each error is `(field below totp, message)`.
pub fn validate_totp(totp: &TotpConfig) -> Vec<(&'static str, String)> {
    let mut errors = Vec::new();
    match decode_base32(&totp.secret) {
        Ok(bytes) if bytes.len() < 16 => errors.push((
            "secret",
            format!(
                "is {} bits; at least 128 bits (26 base32 characters) are required",
                bytes.len() * 8
            ),
        )),
        Ok(_) => {}
        Err(message) => errors.push(("secret", message)),
    }
    if !matches!(totp.digits, 6 | 8) {
        errors.push(("digits", format!("must be 6 or 8, got {}", totp.digits)));
    }
    if !(15..=300).contains(&totp.period) {
        errors.push((
            "period",
            format!("must be 15-300 seconds, got {}", totp.period),
        ));
    }
    errors
}

/// How a user logs in over FTPS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub enum FtpsAuth {
    /// `USER` and `PASS` (plus the TOTP code when `totp` is set).
    #[default]
    Password,
    /// A client certificate mapped to the user; no password (`232` after `USER`, or `PASS`
    /// carrying only the TOTP code when `totp` is set).
    Certificate,
    /// A client certificate mapped to the user and the password.
    CertificateAndPassword,
}

impl FtpsAuth {
    pub fn needs_certificate(self) -> bool {
        self != FtpsAuth::Password
    }

    pub fn needs_password(self) -> bool {
        self != FtpsAuth::Certificate
    }
}

/// One way to recognise a client certificate as this user's: exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientCertificate {
    /// The whole subject distinguished name, e.g. `CN=alice,O=Partner`: every attribute of
    /// the certificate's subject must be listed, in any order; values compare exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// A subject alternative name: DNS name, e-mail address (rfc822Name) or URI; compared
    /// ignoring ASCII case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub san: Option<String>,
    /// SHA-256 fingerprint of the DER certificate: 64 hex digits, `:` separators allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// A distinguished name as `(attribute type, value)` pairs, e.g. `CN=alice,O=Partner`.
/// Commas and `=` inside a value are escaped with a backslash.
pub fn parse_distinguished_name(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next) => {
                    current.push('\\');
                    current.push(next);
                }
                None => return Err("ends with a lone backslash".into()),
            },
            ',' | ';' => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    let mut attributes = Vec::new();
    for part in parts {
        let Some((kind, value)) = split_unescaped_equals(&part) else {
            return Err(format!(
                "{:?} is not TYPE=value (expected e.g. CN=alice,O=Partner)",
                part.trim()
            ));
        };
        let kind = kind.trim();
        let value = unescape(value.trim());
        if kind.is_empty()
            || !kind
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            return Err(format!("{kind:?} is not an attribute type such as CN or O"));
        }
        if value.is_empty() {
            return Err(format!("{kind} has an empty value"));
        }
        attributes.push((kind.to_ascii_uppercase(), value));
    }
    Ok(attributes)
}

fn split_unescaped_equals(part: &str) -> Option<(&str, &str)> {
    let mut escaped = false;
    for (index, c) in part.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '=' if !escaped => return Some((&part[..index], &part[index + 1..])),
            _ => escaped = false,
        }
    }
    None
}

fn unescape(value: &str) -> String {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Normalises a SHA-256 fingerprint to 64 lower-case hex digits.
pub fn normalize_fingerprint(text: &str) -> Result<String, String> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("must be 64 hex digits (the SHA-256 of the DER certificate)".into());
    }
    Ok(hex)
}

/// Checks one certificate mapping; errors name the field below `clientCertificates[j]`.
pub fn validate_client_certificate(entry: &ClientCertificate) -> Vec<(&'static str, String)> {
    let mut errors = Vec::new();
    let set = [
        entry.subject.is_some(),
        entry.san.is_some(),
        entry.sha256.is_some(),
    ]
    .iter()
    .filter(|set| **set)
    .count();
    if set != 1 {
        errors.push((
            "",
            format!("must set exactly one of subject, san, sha256 (found {set})"),
        ));
    }
    if let Some(subject) = &entry.subject
        && let Err(message) = parse_distinguished_name(subject)
    {
        errors.push(("subject", message));
    }
    if let Some(san) = &entry.san
        && (san.trim().is_empty() || san.len() > 1024 || san.chars().any(char::is_control))
    {
        errors.push((
            "san",
            "must be a non-empty name without control characters".into(),
        ));
    }
    if let Some(sha256) = &entry.sha256
        && let Err(message) = normalize_fingerprint(sha256)
    {
        errors.push(("sha256", message));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_secrets_decode_and_short_ones_are_refused() {
        // RFC 6238's SHA-1 test secret, "12345678901234567890".
        let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        assert_eq!(decode_base32(secret).unwrap(), b"12345678901234567890");
        assert_eq!(
            decode_base32(&secret.to_lowercase()).unwrap(),
            b"12345678901234567890"
        );
        assert_eq!(decode_base32("MZXW6===").unwrap(), b"foo");
        let ok = TotpConfig {
            secret: secret.into(),
            digits: 6,
            period: 30,
            algorithm: TotpAlgorithm::Sha1,
        };
        assert!(validate_totp(&ok).is_empty());
        let bad = TotpConfig {
            secret: "MZXW6===".into(),
            digits: 7,
            period: 1,
            ..ok.clone()
        };
        let fields: Vec<&str> = validate_totp(&bad).iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["secret", "digits", "period"]);
        let not_base32 = TotpConfig {
            secret: "not base32 at all 0189!".into(),
            ..ok.clone()
        };
        let errors = validate_totp(&not_base32);
        assert!(errors[0].1.contains("not base32"), "{errors:?}");
        assert!(!errors[0].1.contains('!'), "{errors:?}");
        assert!(!format!("{ok:?}").contains(secret));
    }

    #[test]
    fn distinguished_names_parse_with_escapes() {
        assert_eq!(
            parse_distinguished_name("CN=alice, o=Partner\\, Inc.").unwrap(),
            vec![
                ("CN".to_string(), "alice".to_string()),
                ("O".to_string(), "Partner, Inc.".to_string())
            ]
        );
        assert!(parse_distinguished_name("alice").is_err());
        assert!(parse_distinguished_name("CN=").is_err());
        assert!(parse_distinguished_name("C N=x").is_err());
    }

    #[test]
    fn certificate_entries_need_exactly_one_valid_field() {
        let none = ClientCertificate::default();
        assert_eq!(validate_client_certificate(&none).len(), 1);
        let two = ClientCertificate {
            san: Some("a.example".into()),
            sha256: Some("ab".repeat(32)),
            ..Default::default()
        };
        assert_eq!(validate_client_certificate(&two).len(), 1);
        let bad = ClientCertificate {
            sha256: Some("xyz".into()),
            ..Default::default()
        };
        assert_eq!(validate_client_certificate(&bad)[0].0, "sha256");
        let colons: Vec<String> = (0..32).map(|_| "AB".to_string()).collect();
        assert_eq!(
            normalize_fingerprint(&colons.join(":")).unwrap(),
            "ab".repeat(32)
        );
    }
}
