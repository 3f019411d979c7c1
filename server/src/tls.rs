//! rustls configuration: the hardened base config built from `server.yaml` and PEM files, and
//! the per-session clone whose private session cache and ticketer bind data connections to the
//! control connection (a data handshake can only resume a session this FTP session created).
//!
//! Crypto provider: `aws-lc-rs`, the one SSH uses too (russh's ChaCha20-Poly1305 and AES-GCM).
//! It was measured faster than `ring` at AES-GCM records and handshakes on this project's CPU
//! (docs/performance.md), and it has the post-quantum hybrid `X25519MLKEM768`, which rustls
//! offers first (`prefer-post-quantum`) with X25519, P-256 and P-384 after it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use rustls::crypto::CryptoProvider;
use rustls::server::{StoresServerSessions, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sluice_config::{ClientCertificateMode, TlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.certFile {path}: {message}")]
    Cert { path: String, message: String },
    #[error("tls.keyFile {path}: {message}")]
    Key { path: String, message: String },
    #[error("tls.clientCaFile {path}: {message}")]
    ClientCa { path: String, message: String },
    #[error("tls.cipherSuites: {0}")]
    Suites(String),
    #[error("tls: {0}")]
    Rustls(String),
}

/// PEM bytes of the files a TLS config is built from (read by the caller, so that reload can
/// compare contents and this module stays free of path handling).
pub struct TlsMaterial<'a> {
    pub cert_path: &'a str,
    pub cert_pem: &'a [u8],
    pub key_path: &'a str,
    pub key_pem: &'a [u8],
    pub client_ca: Option<(&'a str, &'a [u8])>,
}

pub fn provider_for(suite_names: &[String]) -> Result<CryptoProvider, TlsError> {
    let base = rustls::crypto::aws_lc_rs::default_provider();
    let mut suites = Vec::new();
    for name in suite_names {
        let suite = base
            .cipher_suites
            .iter()
            .find(|s| format!("{:?}", s.suite()) == *name)
            .ok_or_else(|| TlsError::Suites(format!("suite {name:?} is not available")))?;
        suites.push(*suite);
    }
    Ok(CryptoProvider {
        cipher_suites: suites,
        ..base
    })
}

/// The key-exchange group a handshake used, as the audit `tls` event names it
/// (`X25519MLKEM768`, `X25519`, `secp256r1`, ...); `None` when there was none (a TLS 1.2
/// resumption).
pub fn kx_group(connection: &rustls::ServerConnection) -> Option<String> {
    connection
        .negotiated_key_exchange_group()
        .map(|group| format!("{:?}", group.name()))
}

/// Builds the hardened base config: TLS 1.3 (and 1.2 when a 1.2 suite is listed), only the
/// configured AEAD/ECDHE suites, server preference order, optional or required client certs.
pub fn build_server_config(
    tls: &TlsConfig,
    material: &TlsMaterial<'_>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(material.cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: material.cert_path.into(),
            message: format!("not a PEM certificate chain: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: material.cert_path.into(),
            message: "contains no certificate".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(material.key_pem).map_err(|e| TlsError::Key {
        path: material.key_path.into(),
        message: format!("not a PEM private key: {e}"),
    })?;
    let provider = Arc::new(provider_for(&tls.cipher_suites)?);
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        if tls.cipher_suites.iter().any(|s| s.starts_with("TLS_ECDHE")) {
            vec![&rustls::version::TLS13, &rustls::version::TLS12]
        } else {
            vec![&rustls::version::TLS13]
        };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match (tls.client_certificates, material.client_ca) {
        (ClientCertificateMode::None, _) => builder.with_no_client_auth(),
        (mode, Some((ca_path, ca_pem))) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca_pem) {
                let cert = cert.map_err(|e| TlsError::ClientCa {
                    path: ca_path.into(),
                    message: format!("not PEM: {e}"),
                })?;
                roots.add(cert).map_err(|e| TlsError::ClientCa {
                    path: ca_path.into(),
                    message: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if mode == ClientCertificateMode::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| TlsError::ClientCa {
                path: ca_path.into(),
                message: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        (_, None) => {
            return Err(TlsError::ClientCa {
                path: String::new(),
                message: "missing".into(),
            });
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Key {
            path: material.key_path.into(),
            message: format!("does not match the certificate: {e}"),
        })?;
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// The TLS configs of one FTP session: both share a private session cache and ticket key, so
/// that a data connection can resume only a session of this very control connection.
pub struct SessionTls {
    pub control: Arc<ServerConfig>,
    /// Sends no TLS 1.3 session tickets: clients do not read the data connection during an
    /// upload, and unread tickets make their close a TCP reset that can cut the upload's tail.
    pub data: Arc<ServerConfig>,
}

/// Sessions one FTP session's cache keeps (oldest evicted first).
pub const SESSION_CACHE_ENTRIES: usize = 32;

pub fn per_session(base: &Arc<ServerConfig>) -> Result<SessionTls, TlsError> {
    let mut control = (**base).clone();
    control.session_storage = Arc::new(SessionCache::default());
    control.ticketer =
        rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut data = control.clone();
    data.send_tls13_tickets = 0;
    Ok(SessionTls {
        control: Arc::new(control),
        data: Arc::new(data),
    })
}

/// One FTP session's private server-side TLS session cache: at most
/// [`SESSION_CACHE_ENTRIES`] entries, oldest evicted first, like rustls'
/// `ServerSessionMemoryCache`, but allocating nothing until a session is stored. With the
/// ticketer enabled rustls stores sessions here only for TLS 1.2 clients without ticket
/// support, so most FTP sessions never use it; `ServerSessionMemoryCache::new(32)` reserved
/// ~3.9 KiB per FTP session up front (measured with heaptrack).
#[derive(Debug, Default)]
pub struct SessionCache {
    entries: Mutex<VecDeque<(Vec<u8>, Vec<u8>)>>,
}

impl SessionCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, VecDeque<(Vec<u8>, Vec<u8>)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut entries = self.entries();
        if let Some(entry) = entries.iter_mut().find(|(k, _)| *k == key) {
            entry.1 = value;
            return true;
        }
        if entries.len() >= SESSION_CACHE_ENTRIES {
            entries.pop_front();
        }
        entries.push_back((key, value));
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let entries = self.entries();
        entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut entries = self.entries();
        let index = entries.iter().position(|(k, _)| k == key)?;
        entries.remove(index).map(|(_, v)| v)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// SHA-256 (hex) of a DER certificate, as the audit log and client-certificate mapping use it.
pub fn fingerprint(cert: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(cert))
}

/// A self-signed ECDSA P-256 certificate for `names` (DNS names or IP addresses), PEM encoded:
/// used by `demo` and by tests.
pub fn self_signed(names: &[&str]) -> Result<(String, String), TlsError> {
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Rustls(e.to_string()))?;
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| TlsError::Rustls(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sluice demo");
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_config(suites: &[&str]) -> TlsConfig {
        TlsConfig {
            cert_file: "tls.crt".into(),
            key_file: "tls.key".into(),
            cipher_suites: suites.iter().map(|s| s.to_string()).collect(),
            client_certificates: ClientCertificateMode::None,
            client_ca_file: None,
            require_session_resumption: true,
        }
    }

    #[test]
    fn builds_from_generated_material_with_only_configured_suites() {
        let (cert, key) = self_signed(&["localhost", "127.0.0.1"]).unwrap();
        let material = TlsMaterial {
            cert_path: "tls.crt",
            cert_pem: cert.as_bytes(),
            key_path: "tls.key",
            key_pem: key.as_bytes(),
            client_ca: None,
        };
        let suites: Vec<&str> = sluice_config::DEFAULT_CIPHER_SUITES.to_vec();
        let config = build_server_config(&tls_config(&suites), &material).unwrap();
        let offered: Vec<String> = config
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(offered, suites);
        assert!(offered.iter().all(|s| !s.contains("128")));
        assert!(per_session(&config).is_ok());
    }

    #[test]
    fn session_cache_is_bounded_fifo_and_lazy() {
        let cache = SessionCache::default();
        assert_eq!(cache.entries().capacity(), 0);
        assert!(cache.can_cache());
        assert!(cache.get(b"a").is_none());
        for i in 0..SESSION_CACHE_ENTRIES + 3 {
            assert!(cache.put(vec![i as u8], vec![i as u8; 3]));
        }
        assert_eq!(cache.entries().len(), SESSION_CACHE_ENTRIES);
        // The three oldest were evicted.
        assert!((0..3u8).all(|i| cache.get(&[i]).is_none()));
        assert_eq!(cache.get(&[3]), Some(vec![3; 3]));
        // Replacing keeps one entry per key.
        assert!(cache.put(vec![3], vec![9]));
        assert_eq!(cache.get(&[3]), Some(vec![9]));
        assert_eq!(cache.entries().len(), SESSION_CACHE_ENTRIES);
        // take removes.
        assert_eq!(cache.take(&[4]), Some(vec![4; 3]));
        assert!(cache.take(&[4]).is_none());
        assert!(cache.get(&[4]).is_none());
    }

    #[test]
    fn per_session_configs_share_a_private_cache_and_ticketer() {
        let (cert, key) = self_signed(&["localhost"]).unwrap();
        let material = TlsMaterial {
            cert_path: "tls.crt",
            cert_pem: cert.as_bytes(),
            key_path: "tls.key",
            key_pem: key.as_bytes(),
            client_ca: None,
        };
        let base =
            build_server_config(&tls_config(&["TLS13_AES_256_GCM_SHA384"]), &material).unwrap();
        let one = per_session(&base).unwrap();
        let two = per_session(&base).unwrap();
        assert!(Arc::ptr_eq(
            &one.control.session_storage,
            &one.data.session_storage
        ));
        assert!(Arc::ptr_eq(&one.control.ticketer, &one.data.ticketer));
        assert!(!Arc::ptr_eq(
            &one.control.session_storage,
            &two.control.session_storage
        ));
        assert!(!Arc::ptr_eq(&one.control.ticketer, &two.control.ticketer));
        assert!(one.control.ticketer.enabled());
        assert_eq!(one.data.send_tls13_tickets, 0);
        one.control
            .session_storage
            .put(b"k".to_vec(), b"v".to_vec());
        assert_eq!(one.data.session_storage.get(b"k"), Some(b"v".to_vec()));
        assert!(two.data.session_storage.get(b"k").is_none());
    }

    /// Runs a handshake in memory; returns the server side.
    fn handshake(
        server: Arc<ServerConfig>,
        client: rustls::ClientConfig,
    ) -> Result<rustls::ServerConnection, rustls::Error> {
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut server = rustls::ServerConnection::new(server)?;
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(server);
            }
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut wire.as_slice()).unwrap();
            server.process_new_packets()?;
            wire.clear();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets()?;
        }
        panic!("handshake did not finish");
    }

    fn client_config(
        cert_pem: &str,
        groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> rustls::ClientConfig {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = CryptoProvider {
            kx_groups: groups,
            ..rustls::crypto::aws_lc_rs::default_provider()
        };
        rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
    }

    #[test]
    fn post_quantum_hybrid_is_negotiated_and_classical_clients_still_connect() {
        let (cert, key) = self_signed(&["localhost"]).unwrap();
        let material = TlsMaterial {
            cert_path: "tls.crt",
            cert_pem: cert.as_bytes(),
            key_path: "tls.key",
            key_pem: key.as_bytes(),
            client_ca: None,
        };
        let suites: Vec<&str> = sluice_config::DEFAULT_CIPHER_SUITES.to_vec();
        let base = build_server_config(&tls_config(&suites), &material).unwrap();
        let session = per_session(&base).unwrap();
        use rustls::crypto::aws_lc_rs::kx_group::{X25519, X25519MLKEM768};
        let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

        // A client that offers only the hybrid gets it.
        let pq_only = client_config(&cert, vec![X25519MLKEM768], tls13);
        let server = handshake(session.control.clone(), pq_only).unwrap();
        assert_eq!(kx_group(&server).as_deref(), Some("X25519MLKEM768"));

        // A client that offers the hybrid and X25519 (shares for both) gets the hybrid.
        let both = client_config(&cert, vec![X25519MLKEM768, X25519], tls13);
        let server = handshake(session.control.clone(), both).unwrap();
        assert_eq!(kx_group(&server).as_deref(), Some("X25519MLKEM768"));

        // A client without ML-KEM still connects with X25519, over TLS 1.3 and TLS 1.2.
        let classical = client_config(&cert, vec![X25519], tls13);
        let server = handshake(session.control.clone(), classical).unwrap();
        assert_eq!(kx_group(&server).as_deref(), Some("X25519"));
        if suites.iter().any(|s| s.starts_with("TLS_ECDHE")) {
            let tls12 = client_config(
                &cert,
                rustls::crypto::aws_lc_rs::default_provider().kx_groups,
                &[&rustls::version::TLS12],
            );
            let server = handshake(session.control.clone(), tls12).unwrap();
            assert_eq!(
                server.protocol_version(),
                Some(rustls::ProtocolVersion::TLSv1_2)
            );
            assert_eq!(kx_group(&server).as_deref(), Some("X25519"));
        }

        // The hybrid is TLS 1.3 only: a TLS 1.2 client offering only it finds no common group.
        let tls12_pq_only = client_config(&cert, vec![X25519MLKEM768], &[&rustls::version::TLS12]);
        assert!(handshake(session.control.clone(), tls12_pq_only).is_err());
    }

    #[test]
    fn garbage_key_names_the_file() {
        let (cert, _) = self_signed(&["localhost"]).unwrap();
        let material = TlsMaterial {
            cert_path: "tls.crt",
            cert_pem: cert.as_bytes(),
            key_path: "/secrets/tls.key",
            key_pem: b"garbage",
            client_ca: None,
        };
        let error = build_server_config(&tls_config(&["TLS13_AES_256_GCM_SHA384"]), &material)
            .unwrap_err()
            .to_string();
        assert!(error.contains("/secrets/tls.key"), "{error}");
    }
}
