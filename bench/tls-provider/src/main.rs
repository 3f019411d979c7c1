//! See Cargo.toml. Prints a table; every number is server-side CPU time of this thread
//! (`CLOCK_THREAD_CPUTIME_ID`), so other load on the machine inflates it less than wall time.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

#[path = "../../../server/src/pqkx.rs"]
#[allow(dead_code)]
mod pqkx;

fn cpu() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

struct Material {
    cert_pem: String,
    key_pem: String,
}

fn material() -> Material {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    Material { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}

fn aes256(provider: &CryptoProvider) -> Vec<rustls::SupportedCipherSuite> {
    provider
        .cipher_suites
        .iter()
        .filter(|s| format!("{:?}", s.suite()) == "TLS13_AES_256_GCM_SHA384")
        .copied()
        .collect()
}

fn server_config(m: &Material, base: CryptoProvider, groups: Vec<&'static dyn SupportedKxGroup>) -> Arc<ServerConfig> {
    let provider = CryptoProvider { cipher_suites: aes256(&base), kx_groups: groups, ..base };
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(m.cert_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(m.key_pem.as_bytes()).unwrap();
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

fn client_config(m: &Material, base: CryptoProvider, groups: Vec<&'static dyn SupportedKxGroup>) -> Arc<ClientConfig> {
    let provider = CryptoProvider { cipher_suites: aes256(&base), kx_groups: groups, ..base };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(m.cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A full handshake in memory; returns (server CPU seconds, negotiated group).
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> (f64, String, ServerConnection, ClientConnection) {
    let mut c = ClientConnection::new(client.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut spent = 0.0;
    let t = cpu();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    spent += cpu() - t;
    let mut wire = Vec::new();
    while c.is_handshaking() || s.is_handshaking() {
        wire.clear();
        c.write_tls(&mut wire).unwrap();
        let t = cpu();
        s.read_tls(&mut wire.as_slice()).unwrap();
        s.process_new_packets().unwrap();
        wire.clear();
        s.write_tls(&mut wire).unwrap();
        spent += cpu() - t;
        c.read_tls(&mut wire.as_slice()).unwrap();
        c.process_new_packets().unwrap();
    }
    let group = format!("{:?}", s.negotiated_key_exchange_group().unwrap().name());
    (spent, group, s, c)
}

/// Server CPU s/GiB to decrypt (client -> server, an upload) and encrypt (a download).
fn bulk(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>, bytes: usize) -> (f64, f64) {
    let (_, _, mut s, mut c) = handshake(server, client);
    s.set_buffer_limit(None);
    c.set_buffer_limit(None);
    let chunk = vec![0x5au8; 256 * 1024];
    let mut sink = vec![0u8; 256 * 1024];
    let mut wire = Vec::with_capacity(512 * 1024);
    let (mut decrypt, mut encrypt) = (0.0, 0.0);
    let mut moved = 0;
    while moved < bytes {
        c.writer().write_all(&chunk).unwrap();
        wire.clear();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        let t = cpu();
        let mut input = wire.as_slice();
        let mut got = 0;
        while !input.is_empty() {
            s.read_tls(&mut input).unwrap();
            s.process_new_packets().unwrap();
            while let Ok(n) = s.reader().read(&mut sink) {
                if n == 0 {
                    break;
                }
                got += n;
            }
        }
        decrypt += cpu() - t;
        assert_eq!(got, chunk.len());
        // The same bytes back, as a download.
        let t = cpu();
        s.writer().write_all(&chunk).unwrap();
        wire.clear();
        while s.wants_write() {
            s.write_tls(&mut wire).unwrap();
        }
        encrypt += cpu() - t;
        let mut input = wire.as_slice();
        while !input.is_empty() {
            c.read_tls(&mut input).unwrap();
            c.process_new_packets().unwrap();
            while let Ok(n) = c.reader().read(&mut sink) {
                if n == 0 {
                    break;
                }
            }
        }
        moved += chunk.len();
    }
    let gib = bytes as f64 / (1u64 << 30) as f64;
    (decrypt / gib, encrypt / gib)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let handshakes: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(300);
    let gib: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    let m = material();
    let ring = rustls::crypto::ring::default_provider;
    let aws = rustls::crypto::aws_lc_rs::default_provider;
    let ring_x25519 = rustls::crypto::ring::kx_group::X25519;
    let aws_x25519 = rustls::crypto::aws_lc_rs::kx_group::X25519;
    let aws_hybrid = rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768;
    let ours = pqkx::X25519MLKEM768;

    // Interop: sluice's hybrid against aws-lc-rs's, both directions, with application data.
    for (label, server, client) in [
        ("sluice server <- aws-lc-rs client", server_config(&m, ring(), vec![ours]), client_config(&m, aws(), vec![aws_hybrid])),
        ("aws-lc-rs server <- sluice client", server_config(&m, aws(), vec![aws_hybrid]), client_config(&m, ring(), vec![ours])),
    ] {
        let (_, group, mut s, mut c) = handshake(&server, &client);
        assert_eq!(group, "X25519MLKEM768");
        c.writer().write_all(b"interop").unwrap();
        let mut wire = Vec::new();
        c.write_tls(&mut wire).unwrap();
        s.read_tls(&mut wire.as_slice()).unwrap();
        s.process_new_packets().unwrap();
        let mut got = [0u8; 7];
        s.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"interop");
        println!("interop ok: {label}: {group}, application data passed");
    }

    println!();
    println!("full TLS 1.3 handshakes (ECDSA P-256 certificate, AES-256-GCM), server CPU, median of 5 x {handshakes}:");
    println!("{:<44} {:>12} {:>16}", "server provider + group", "ms/handshake", "handshakes/s/core");
    let cases: Vec<(&str, Arc<ServerConfig>, Arc<ClientConfig>)> = vec![
        ("ring, X25519 (before)", server_config(&m, ring(), vec![ring_x25519]), client_config(&m, ring(), vec![ring_x25519])),
        ("ring + ml-kem, X25519MLKEM768 (sluice now)", server_config(&m, ring(), pqkx::kx_groups()), client_config(&m, ring(), vec![ours])),
        ("aws-lc-rs, X25519", server_config(&m, aws(), vec![aws_x25519]), client_config(&m, aws(), vec![aws_x25519])),
        ("aws-lc-rs, X25519MLKEM768", server_config(&m, aws(), vec![aws_hybrid, aws_x25519]), client_config(&m, aws(), vec![aws_hybrid])),
    ];
    for (label, server, client) in &cases {
        let mut rounds = Vec::new();
        for _ in 0..5 {
            let mut total = 0.0;
            for _ in 0..handshakes {
                total += handshake(server, client).0;
            }
            rounds.push(total / handshakes as f64);
        }
        let per = median(rounds);
        println!("{:<44} {:>12.3} {:>16.0}", label, per * 1e3, 1.0 / per);
    }

    println!();
    println!("TLS 1.3 AES-256-GCM records, server CPU s/GiB, median of 3 x {gib} GiB:");
    println!("{:<12} {:>22} {:>22}", "provider", "decrypt (upload)", "encrypt (download)");
    for (label, server, client) in [
        ("ring", server_config(&m, ring(), vec![ring_x25519]), client_config(&m, ring(), vec![ring_x25519])),
        ("aws-lc-rs", server_config(&m, aws(), vec![aws_x25519]), client_config(&m, aws(), vec![aws_x25519])),
    ] {
        let (mut d, mut e) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let (dd, ee) = bulk(&server, &client, gib << 30);
            d.push(dd);
            e.push(ee);
        }
        println!("{:<12} {:>22.3} {:>22.3}", label, median(d), median(e));
    }
}
