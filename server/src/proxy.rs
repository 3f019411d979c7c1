//! The PROXY protocol (HAProxy's v1 text and v2 binary headers) in front of every FTPS and SFTP
//! listener and the FTPS passive data ports, so that behind a TCP proxy or load balancer the
//! address every allowlist, ban, limit, audit event and data-connection check sees is the
//! client's, not the proxy's.
//!
//! Parsing is the `ppp` crate's (v1 and v2, TLVs included); this module only decides how many
//! bytes to read. It reads exactly the header and not one byte more, straight from the
//! `TcpStream` (no buffering reader), because the bytes after it belong to TLS or SSH and every
//! layer above takes the bare socket: a v2 header announces its length in its first 16 bytes,
//! a v1 header ends at its `\n` within 107 bytes. The read has a deadline
//! (`proxyProtocol.headerTimeoutMs`) and a size bound ([`MAX_V2_BYTES`]).
//!
//! Who may send a header: only `proxyProtocol.trustedProxies`, and with the protocol enabled
//! only they may connect at all (see `sluice_config::ProxyProtocolConfig`). A trusted proxy's
//! connection without a valid header is refused; a `LOCAL` (v2) or `UNKNOWN` (v1) header — the
//! proxy's own health checks — keeps the proxy's address, as the specification says.
//!
//! Rate and limits: the proxy's own address carries every client's connections, so it is not
//! counted against the per-source rate, the per-address session limit or bans — the client's
//! address from the header is, in `crate::admission::admit`, after the header is read. What a
//! proxy's connections can cost before that is bounded here instead: each has the header
//! timeout, and at most `limits.maxSessions` may be waiting for their header at once
//! ([`PendingHeaders`]); past that, new proxy connections are closed at once.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::context::Context;
use crate::metrics::Metrics;
use sluice_config::{ProxyProtocolConfig, canonical_ip};

/// The v2 signature: the first 12 bytes of every v2 header.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (the specification's bound).
pub const MAX_V1_BYTES: usize = 107;
/// Longest v2 header we read: the 16-byte preamble, addresses and TLVs. The specification asks
/// receivers to take at least 536 bytes; cloud load balancers add a few TLVs (AWS: the VPC
/// endpoint id, GCP: the PSC connection id), well within this.
pub const MAX_V2_BYTES: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no complete proxy header within {0} ms (proxyProtocol.headerTimeoutMs)")]
    Timeout(u64),
    #[error("the connection does not start with a proxy header")]
    Missing,
    #[error("proxy header longer than {0} bytes")]
    TooLong(usize),
    #[error("invalid proxy header: {0}")]
    Invalid(String),
    #[error("connection closed inside the proxy header")]
    Closed,
    #[error("proxy header i/o: {0}")]
    Io(io::Error),
    #[error("not a trusted proxy (proxyProtocol.trustedProxies)")]
    Untrusted,
}

/// What a header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// 1 or 2.
    pub version: u8,
    /// The client's address; `None` for a `LOCAL`/`UNKNOWN` header (or a UNIX-socket client):
    /// the proxy speaks for itself and its own address stands.
    pub source: Option<SocketAddr>,
}

/// Parses one complete header (exactly its bytes). Also the fuzz target's entry point.
pub fn parse(bytes: &[u8]) -> Result<ProxyHeader, ProxyError> {
    if bytes.starts_with(V2_SIGNATURE) {
        let header = ppp::v2::Header::try_from(bytes)
            .map_err(|e| ProxyError::Invalid(e.to_string().to_lowercase()))?;
        if header.header.len() != bytes.len() {
            return Err(ProxyError::Invalid("bytes after the header".into()));
        }
        if header.command == ppp::v2::Command::Local {
            return Ok(ProxyHeader {
                version: 2,
                source: None,
            });
        }
        if header.protocol == ppp::v2::Protocol::Datagram {
            return Err(ProxyError::Invalid("a datagram (UDP) header".into()));
        }
        let source = match header.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            ppp::v2::Addresses::IPv6(a) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            ppp::v2::Addresses::Unix(_) | ppp::v2::Addresses::Unspecified => None,
        };
        return Ok(ProxyHeader { version: 2, source });
    }
    if bytes.starts_with(b"PROXY ") {
        if !bytes.ends_with(b"\r\n") {
            return Err(ProxyError::Invalid("a v1 header must end with CRLF".into()));
        }
        let header = ppp::v1::Header::try_from(bytes)
            .map_err(|e| ProxyError::Invalid(e.to_string().to_lowercase()))?;
        if header.header.len() != bytes.len() {
            return Err(ProxyError::Invalid("bytes after the header".into()));
        }
        let source = match header.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            ppp::v1::Addresses::Unknown => None,
        };
        return Ok(ProxyHeader { version: 1, source });
    }
    Err(ProxyError::Missing)
}

async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buffer: &mut [u8]) -> Result<(), ProxyError> {
    match stream.read_exact(buffer).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ProxyError::Closed),
        Err(e) => Err(ProxyError::Io(e)),
    }
}

/// Reads exactly one header from the start of `stream`, within `limit`.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Result<ProxyHeader, ProxyError> {
    let millis = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    tokio::time::timeout(limit, read_header_bytes(stream))
        .await
        .map_err(|_| ProxyError::Timeout(millis))
        .and_then(|bytes| parse(&bytes?))
}

async fn read_header_bytes<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, ProxyError> {
    // Six bytes tell the versions apart and are shorter than the shortest header of either
    // ("PROXY UNKNOWN\r\n" is 15), so nothing past the header can be read here.
    let mut bytes = vec![0u8; 6];
    fill(stream, &mut bytes).await?;
    if bytes == V2_SIGNATURE[..6] {
        bytes.resize(16, 0);
        fill(stream, &mut bytes[6..]).await?;
        if bytes[..12] != V2_SIGNATURE[..] {
            return Err(ProxyError::Missing);
        }
        let length = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
        if 16 + length > MAX_V2_BYTES {
            return Err(ProxyError::TooLong(MAX_V2_BYTES));
        }
        bytes.resize(16 + length, 0);
        fill(stream, &mut bytes[16..]).await?;
        return Ok(bytes);
    }
    if bytes != b"PROXY " {
        return Err(ProxyError::Missing);
    }
    // A v1 header has no length field: read to its `\n`, a byte at a time so that nothing
    // after it is consumed (at most ~100 small reads, from a trusted proxy only).
    let mut byte = [0u8; 1];
    while bytes.last() != Some(&b'\n') {
        if bytes.len() >= MAX_V1_BYTES {
            return Err(ProxyError::TooLong(MAX_V1_BYTES));
        }
        fill(stream, &mut byte).await?;
        bytes.push(byte[0]);
    }
    Ok(bytes)
}

/// Where a connection comes from once its header (if any) has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The client: the header's source, or the TCP peer without the PROXY protocol.
    pub client: SocketAddr,
    /// The proxy that sent the header.
    pub proxy: Option<SocketAddr>,
}

impl Origin {
    pub fn direct(peer: SocketAddr) -> Origin {
        Origin {
            client: peer,
            proxy: None,
        }
    }

    /// `{"proxy": "a:p"}` for audit events, or nothing for a direct connection.
    pub fn audit_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut map = serde_json::Map::new();
        if let Some(proxy) = self.proxy {
            map.insert("proxy".into(), proxy.to_string().into());
        }
        map
    }
}

/// The PROXY protocol settings a listener or data port applies, parsed once per use.
#[derive(Debug, Clone)]
pub struct Policy {
    trusted: Vec<IpNet>,
    timeout: Duration,
}

impl Policy {
    /// `None` when the PROXY protocol is off.
    pub fn from_config(config: &ProxyProtocolConfig) -> Option<Arc<Policy>> {
        config.enabled.then(|| {
            Arc::new(Policy {
                trusted: config.trusted_networks(),
                timeout: Duration::from_millis(config.header_timeout_ms),
            })
        })
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The origin of a connection from `peer`: refused unless `peer` is a trusted proxy that
    /// sends a valid header in time.
    pub async fn origin<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        peer: SocketAddr,
    ) -> Result<(Origin, u8), ProxyError> {
        if !self.trusts(peer.ip()) {
            return Err(ProxyError::Untrusted);
        }
        let header = read_header(stream, self.timeout).await?;
        Ok((
            Origin {
                client: header.source.unwrap_or(peer),
                proxy: Some(peer),
            },
            header.version,
        ))
    }
}

/// Connections of trusted proxies still waiting for their header, capped.
#[derive(Default)]
pub struct PendingHeaders {
    count: Arc<AtomicUsize>,
}

pub struct PendingGuard {
    count: Arc<AtomicUsize>,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

impl PendingHeaders {
    pub fn enter(&self, max: usize) -> Option<PendingGuard> {
        let previous = self.count.fetch_add(1, Ordering::SeqCst);
        let guard = PendingGuard {
            count: self.count.clone(),
        };
        (previous < max).then_some(guard)
    }
}

/// Screens a connection accepted on `listener` when the PROXY protocol is on: a trusted
/// proxy's header is read (and the proxy's address left out of every per-source count); any
/// other source, a missing or invalid header and a timeout are refused, counted and audited
/// as `connection_refused` with the proxy's address as `ip`. `None` means refused: close.
pub async fn screen<S: AsyncRead + Unpin>(
    context: &Context,
    policy: &Policy,
    stream: &mut S,
    peer: SocketAddr,
    listener: &str,
) -> Option<Origin> {
    let peer_ip = canonical_ip(peer.ip());
    let refuse = |reason: &str, error: &ProxyError| {
        Metrics::inc(&context.metrics.sessions_refused, &[("reason", reason)]);
        context.audit.server_event(
            "connection_refused",
            json!({"ip": peer_ip.to_string(), "source": peer_ip.to_string(), "reason": error.to_string(),
                   "listener": listener, "proxy_protocol": reason}),
        );
    };
    if !policy.trusts(peer_ip) {
        // Not a proxy: throttle like any source so that a flood costs one audit line per run.
        let limits = context.snapshot.borrow().config.limits.clone();
        let key = crate::admission::source_key(peer_ip, limits.ipv6_prefix_length);
        let decision = context.connection_rate.check(
            key,
            limits.new_connections_per_second,
            limits.new_connection_burst,
            std::time::Instant::now(),
        );
        if let crate::admission::RateDecision::Refused { first: false } = decision {
            Metrics::inc(&context.metrics.sessions_refused, &[("reason", "rate")]);
        } else {
            refuse("untrusted_proxy", &ProxyError::Untrusted);
        }
        return None;
    }
    let max = context.snapshot.borrow().config.limits.max_sessions as usize;
    let Some(_pending) = context.proxy_pending.enter(max) else {
        Metrics::inc(
            &context.metrics.sessions_refused,
            &[("reason", "proxy_pending")],
        );
        tracing::warn!(listener, proxy = %peer, "too many proxy connections waiting for their header; closed");
        return None;
    };
    match policy.origin(stream, peer).await {
        Ok((origin, version)) => {
            tracing::debug!(listener, proxy = %peer, client = %origin.client, version, "proxy header");
            Some(origin)
        }
        Err(error) => {
            refuse("invalid_proxy_header", &error);
            None
        }
    }
}

/// The address a passive data connection from `peer` stands for: `peer` itself without the
/// PROXY protocol; with it, the source in the header a trusted proxy sends (any other source
/// is refused, like on the control listeners).
pub async fn data_source<S: AsyncRead + Unpin>(
    policy: Option<&Policy>,
    stream: &mut S,
    peer: SocketAddr,
) -> Result<Origin, ProxyError> {
    match policy {
        None => Ok(Origin::direct(peer)),
        Some(policy) => policy.origin(stream, peer).await.map(|(origin, _)| origin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.push(0x20 | command);
        bytes.push(family);
        let length = (addresses.len() + tlvs.len()) as u16;
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(addresses);
        bytes.extend_from_slice(tlvs);
        bytes
    }

    fn v4_addresses() -> Vec<u8> {
        // 127.0.0.5:40000 -> 127.0.0.2:2121
        let mut a = vec![127, 0, 0, 5, 127, 0, 0, 2];
        a.extend_from_slice(&40000u16.to_be_bytes());
        a.extend_from_slice(&2121u16.to_be_bytes());
        a
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let h = parse(b"PROXY TCP4 127.0.0.5 127.0.0.2 40000 2121\r\n").unwrap();
        assert_eq!(h.version, 1);
        assert_eq!(h.source, Some("127.0.0.5:40000".parse().unwrap()));
        let h = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 22\r\n").unwrap();
        assert_eq!(h.source, Some("[2001:db8::1]:40000".parse().unwrap()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap().source, None);
    }

    #[test]
    fn v1_garbage_is_refused() {
        for bad in [
            &b"PROXY TCP4 127.0.0.5 127.0.0.2 40000\r\n"[..],
            b"PROXY TCP4 999.0.0.5 127.0.0.2 40000 21\r\n",
            b"PROXY TCP4 127.0.0.5 127.0.0.2 70000 21\r\n",
            b"PROXY TCP9 127.0.0.5 127.0.0.2 4 21\r\n",
            b"PROXY TCP4 127.0.0.5 127.0.0.2 40000 2121\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyError::Invalid(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(parse(b"USER x\r\n"), Err(ProxyError::Missing)));
        assert!(matches!(parse(b"\x16\x03\x01"), Err(ProxyError::Missing)));
    }

    #[test]
    fn v2_proxy_local_ipv6_and_tlvs() {
        let h = parse(&v2(1, 0x11, &v4_addresses(), &[])).unwrap();
        assert_eq!(h.version, 2);
        assert_eq!(h.source, Some("127.0.0.5:40000".parse().unwrap()));
        // LOCAL: the proxy's own connection (health check).
        assert_eq!(parse(&v2(0, 0x00, &[], &[])).unwrap().source, None);
        let mut v6 = Vec::new();
        v6.extend_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        v6.extend_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        v6.extend_from_slice(&5555u16.to_be_bytes());
        v6.extend_from_slice(&22u16.to_be_bytes());
        let h = parse(&v2(1, 0x21, &v6, &[])).unwrap();
        assert_eq!(h.source, Some("[2001:db8::7]:5555".parse().unwrap()));
        // A TLV (NOOP, 2 bytes) is skipped.
        let h = parse(&v2(1, 0x11, &v4_addresses(), &[0x04, 0, 2, 1, 2])).unwrap();
        assert_eq!(h.source, Some("127.0.0.5:40000".parse().unwrap()));
    }

    #[test]
    fn v2_bad_version_command_family_and_datagram_are_refused() {
        let mut bad_version = v2(1, 0x11, &v4_addresses(), &[]);
        bad_version[12] = 0x11;
        assert!(matches!(parse(&bad_version), Err(ProxyError::Invalid(_))));
        let mut bad_command = v2(1, 0x11, &v4_addresses(), &[]);
        bad_command[12] = 0x2f;
        assert!(matches!(parse(&bad_command), Err(ProxyError::Invalid(_))));
        assert!(matches!(
            parse(&v2(1, 0x12, &v4_addresses(), &[])),
            Err(ProxyError::Invalid(_))
        ));
        // Too short for its family.
        assert!(matches!(
            parse(&v2(1, 0x11, &[127, 0, 0, 1], &[])),
            Err(ProxyError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn reading_stops_exactly_at_the_end_of_the_header() {
        for header in [
            b"PROXY TCP4 127.0.0.5 127.0.0.2 40000 2121\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2(1, 0x11, &v4_addresses(), &[0x04, 0, 1, 0]),
        ] {
            let mut input = header.clone();
            input.extend_from_slice(b"SSH-2.0-client\r\n");
            let mut reader = &input[..];
            read_header(&mut reader, Duration::from_secs(1))
                .await
                .unwrap();
            assert_eq!(reader, b"SSH-2.0-client\r\n");
        }
    }

    #[tokio::test]
    async fn bounds_missing_headers_and_timeouts() {
        let mut tls: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc";
        assert!(matches!(
            read_header(&mut tls, Duration::from_secs(1)).await,
            Err(ProxyError::Missing)
        ));
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert!(matches!(
            read_header(&mut long.as_bytes(), Duration::from_secs(1)).await,
            Err(ProxyError::TooLong(MAX_V1_BYTES))
        ));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(
            read_header(&mut &huge[..], Duration::from_secs(1)).await,
            Err(ProxyError::TooLong(MAX_V2_BYTES))
        ));
        assert!(matches!(
            read_header(&mut &b"PROXY TCP4 1.2"[..], Duration::from_secs(1)).await,
            Err(ProxyError::Closed)
        ));
        let (mut silent, _keep) = tokio::io::duplex(64);
        assert!(matches!(
            read_header(&mut silent, Duration::from_millis(50)).await,
            Err(ProxyError::Timeout(50))
        ));
    }

    #[tokio::test]
    async fn only_trusted_proxies_may_speak_and_local_keeps_the_proxy() {
        let config = ProxyProtocolConfig {
            enabled: true,
            trusted_proxies: vec!["10.0.0.0/8".into()],
            header_timeout_ms: 1000,
        };
        let policy = Policy::from_config(&config).unwrap();
        let header = b"PROXY TCP4 192.0.2.9 10.0.0.2 40000 21\r\n";
        let untrusted: SocketAddr = "192.0.2.50:1234".parse().unwrap();
        assert!(matches!(
            policy.origin(&mut &header[..], untrusted).await,
            Err(ProxyError::Untrusted)
        ));
        let proxy: SocketAddr = "[::ffff:10.1.1.1]:1234".parse().unwrap();
        let (origin, version) = policy.origin(&mut &header[..], proxy).await.unwrap();
        assert_eq!(version, 1);
        assert_eq!(origin.client, "192.0.2.9:40000".parse().unwrap());
        assert_eq!(origin.proxy, Some(proxy));
        let (origin, _) = policy
            .origin(&mut &v2(0, 0, &[], &[])[..], proxy)
            .await
            .unwrap();
        assert_eq!(origin.client, proxy);
        assert!(Policy::from_config(&ProxyProtocolConfig::default()).is_none());
    }

    #[test]
    fn pending_headers_are_capped_and_released() {
        let pending = PendingHeaders::default();
        let first = pending.enter(2).unwrap();
        let _second = pending.enter(2).unwrap();
        assert!(pending.enter(2).is_none());
        drop(first);
        assert!(pending.enter(2).is_some());
    }
}
