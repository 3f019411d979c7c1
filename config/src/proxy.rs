//! `server.yaml` `proxyProtocol` and `allowedCidrs`: who may connect at all, and which
//! addresses may tell the server who a client really is.
//!
//! Behind a TCP proxy or a load balancer that does not keep the client's address, every
//! connection comes from the proxy; the PROXY protocol (v1 text or v2 binary) prepends the
//! client's address. Only the proxies listed in `trustedProxies` may send it, because whoever
//! sends the header chooses the address that every allowlist, ban and limit then sees. With
//! `enabled: true` the listeners accept connections only from those proxies, each starting with
//! a header (a listener that took both would have to guess, on explicit FTPS where the server
//! speaks first, whether a header is coming).

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{FieldError, canonical_ip, parse_cidr};

/// Longest wait for a proxy's header, by default (milliseconds).
pub const DEFAULT_PROXY_HEADER_TIMEOUT_MS: u64 = 3000;

/// The PROXY protocol on every FTPS and SFTP listener (and the FTPS passive data ports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyProtocolConfig {
    /// Off by default: connections are taken at their TCP source address.
    #[serde(default)]
    pub enabled: bool,
    /// CIDRs (or bare addresses) of the proxies that may connect and must send a header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// How long a trusted proxy has to send its whole header, in milliseconds.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
}

impl Default for ProxyProtocolConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            trusted_proxies: Vec::new(),
            header_timeout_ms: DEFAULT_PROXY_HEADER_TIMEOUT_MS,
        }
    }
}

fn default_header_timeout_ms() -> u64 {
    DEFAULT_PROXY_HEADER_TIMEOUT_MS
}

impl ProxyProtocolConfig {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The parsed `trustedProxies`; entries that do not parse were rejected by validation.
    pub fn trusted_networks(&self) -> Vec<IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|text| parse_cidr(text).ok())
            .collect()
    }

    /// Whether a connection from `ip` is a trusted proxy's.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.trusted_networks().iter().any(|n| n.contains(&ip))
    }

    pub(crate) fn validate(&self, file: &str, errors: &mut Vec<FieldError>) {
        for (index, cidr) in self.trusted_proxies.iter().enumerate() {
            let field = format!("proxyProtocol.trustedProxies[{index}]");
            match parse_cidr(cidr) {
                Err(message) => errors.push(FieldError::new(file, field, message)),
                Ok(net) if net.prefix_len() == 0 => errors.push(FieldError::new(
                    file,
                    field,
                    format!("{cidr:?} trusts every address: anyone could choose the address the server sees"),
                )),
                Ok(_) => {}
            }
        }
        if self.enabled && self.trusted_proxies.is_empty() {
            errors.push(FieldError::new(
                file,
                "proxyProtocol.trustedProxies",
                "must list at least one proxy address when proxyProtocol.enabled is true",
            ));
        }
        if !(100..=60_000).contains(&self.header_timeout_ms) {
            errors.push(FieldError::new(
                file,
                "proxyProtocol.headerTimeoutMs",
                format!(
                    "must be between 100 and 60000, got {}",
                    self.header_timeout_ms
                ),
            ));
        }
    }
}

/// Checks the server-wide `allowedCidrs` (empty allows every address).
pub(crate) fn validate_allowed_cidrs(file: &str, cidrs: &[String], errors: &mut Vec<FieldError>) {
    for (index, cidr) in cidrs.iter().enumerate() {
        if let Err(message) = parse_cidr(cidr) {
            errors.push(FieldError::new(
                file,
                format!("allowedCidrs[{index}]"),
                message,
            ));
        }
    }
}

impl crate::ServerConfig {
    /// Whether the server-wide `allowedCidrs` let `ip` connect (empty allows every address).
    pub fn allows_source(&self, ip: std::net::IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.allowed_cidrs.is_empty()
            || self
                .allowed_cidrs
                .iter()
                .filter_map(|text| parse_cidr(text).ok())
                .any(|net| net.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use crate::ServerConfig;
    use crate::server::tests::MINIMAL;

    fn fields(text: &str) -> Vec<String> {
        ServerConfig::parse("server.yaml", text)
            .unwrap_err()
            .field_errors()
            .iter()
            .map(|e| e.field.clone())
            .collect()
    }

    #[test]
    fn off_by_default_and_every_address_allowed() {
        let config = ServerConfig::parse("server.yaml", MINIMAL).unwrap();
        assert!(!config.proxy_protocol.enabled);
        assert!(config.allowed_cidrs.is_empty());
        assert!(config.allows_source("203.0.113.9".parse().unwrap()));
        // Nothing new is rendered for the defaults.
        let yaml = serde_saphyr::to_string(&config).unwrap();
        assert!(!yaml.contains("proxyProtocol"), "{yaml}");
        assert!(!yaml.contains("allowedCidrs"), "{yaml}");
    }

    #[test]
    fn trusted_proxies_are_parsed_and_matched_with_mapped_addresses() {
        let text = format!(
            "{MINIMAL}proxyProtocol:\n  enabled: true\n  trustedProxies: [10.0.0.0/8, 192.0.2.7]\n"
        );
        let config = ServerConfig::parse("server.yaml", &text).unwrap();
        let proxy = &config.proxy_protocol;
        assert!(proxy.trusts("10.1.2.3".parse().unwrap()));
        assert!(proxy.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(proxy.trusts("192.0.2.7".parse().unwrap()));
        assert!(!proxy.trusts("192.0.2.8".parse().unwrap()));
        assert_eq!(proxy.header_timeout_ms, 3000);
    }

    #[test]
    fn enabled_without_proxies_is_named() {
        let text = format!("{MINIMAL}proxyProtocol:\n  enabled: true\n");
        assert_eq!(fields(&text), vec!["proxyProtocol.trustedProxies"]);
    }

    #[test]
    fn bad_entries_and_trust_in_everyone_are_named() {
        let text = format!(
            "{MINIMAL}proxyProtocol:\n  enabled: true\n  trustedProxies: [10.0.0.1, nope, 0.0.0.0/0, ::/0]\n  headerTimeoutMs: 10\n"
        );
        let fields = fields(&text);
        for field in [
            "proxyProtocol.trustedProxies[1]",
            "proxyProtocol.trustedProxies[2]",
            "proxyProtocol.trustedProxies[3]",
            "proxyProtocol.headerTimeoutMs",
        ] {
            assert!(fields.contains(&field.to_string()), "{field}: {fields:?}");
        }
        assert!(!fields.contains(&"proxyProtocol.trustedProxies[0]".to_string()));
    }

    #[test]
    fn unknown_proxy_field_is_refused() {
        let text = format!("{MINIMAL}proxyProtocol:\n  enabled: true\n  trusted: [10.0.0.1]\n");
        let error = ServerConfig::parse("server.yaml", &text).unwrap_err();
        assert!(error.to_string().contains("trusted"), "{error}");
    }

    #[test]
    fn server_allowlist_is_validated_and_enforced() {
        let text = format!("{MINIMAL}allowedCidrs: [198.51.100.0/24, bogus]\n");
        assert_eq!(fields(&text), vec!["allowedCidrs[1]"]);
        let text = format!("{MINIMAL}allowedCidrs: [198.51.100.0/24, 2001:db8::/32]\n");
        let config = ServerConfig::parse("server.yaml", &text).unwrap();
        assert!(config.allows_source("198.51.100.20".parse().unwrap()));
        assert!(config.allows_source("::ffff:198.51.100.20".parse().unwrap()));
        assert!(config.allows_source("2001:db8::1".parse().unwrap()));
        assert!(!config.allows_source("198.51.101.1".parse().unwrap()));
    }
}
