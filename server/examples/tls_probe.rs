//! An explicit-FTPS client that offers exactly the TLS key-exchange groups it is told to, for
//! tests of the server's group negotiation (tests/server/test_pq_tls.py): the OpenSSL 3.0 that
//! Python and curl use here has no ML-KEM.
//!
//! `tls_probe --port PORT --cafile CA.pem --groups X25519MLKEM768[,X25519,...] [--tls12]`
//! connects to 127.0.0.1:PORT, sends `AUTH TLS`, completes the handshake, prints one JSON line
//! `{"version": ..., "kx_group": ..., "cipher": ...}`, sends `QUIT` and exits 0; a failed
//! handshake prints `{"error": ...}` and exits 1.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

fn group(name: &str) -> &'static dyn SupportedKxGroup {
    match name {
        "X25519MLKEM768" => rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768,
        "X25519" => rustls::crypto::aws_lc_rs::kx_group::X25519,
        "secp256r1" => rustls::crypto::aws_lc_rs::kx_group::SECP256R1,
        "secp384r1" => rustls::crypto::aws_lc_rs::kx_group::SECP384R1,
        other => panic!("unknown group {other}"),
    }
}

/// Accepts exactly the certificate in `--cafile` (pinned; the tests' certificates are
/// self-signed CA certificates, which WebPKI refuses as server certificates) and checks the
/// handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the pinned certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn reply(reader: &mut impl BufRead) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("connection closed; got {all:?}");
        }
        all.push_str(&line);
        if line.len() >= 4 && line.as_bytes()[3] == b' ' {
            return all;
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| panic!("{flag} is required"))
    };
    let port: u16 = value("--port").parse().unwrap();
    let ca = std::fs::read(value("--cafile")).unwrap();
    let groups: Vec<&'static dyn SupportedKxGroup> =
        value("--groups").split(',').map(group).collect();
    let tls12 = args.iter().any(|a| a == "--tls12");

    let cert = CertificateDer::pem_slice_iter(&ca).next().unwrap().unwrap();
    let provider = CryptoProvider {
        kx_groups: groups,
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let versions: &[&'static rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let pinned = Pinned {
        cert,
        algorithms: provider.signature_verification_algorithms,
    };
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(pinned))
        .with_no_client_auth();

    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut plain = BufReader::new(tcp.try_clone().unwrap());
    let greeting = reply(&mut plain);
    assert!(greeting.starts_with("220"), "{greeting}");
    (&tcp).write_all(b"AUTH TLS\r\n").unwrap();
    let auth = reply(&mut plain);
    assert!(auth.starts_with("234"), "{auth}");

    let name = ServerName::try_from("localhost").unwrap();
    let connection = ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tls = StreamOwned::new(connection, tcp);
    if let Err(error) = tls.conn.complete_io(&mut tls.sock) {
        println!("{}", serde_json::json!({"error": error.to_string()}));
        std::process::exit(1);
    }
    let summary = serde_json::json!({
        "version": tls.conn.protocol_version().map(|v| format!("{v:?}")),
        "kx_group": tls.conn.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name())),
        "cipher": tls.conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())),
    });
    tls.write_all(b"QUIT\r\n").unwrap();
    tls.flush().unwrap();
    let mut reader = BufReader::new(tls);
    let bye = reply(&mut reader);
    assert!(bye.starts_with("221"), "{bye}");
    println!("{summary}");
}
