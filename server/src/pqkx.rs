//! `X25519MLKEM768` (draft-ietf-tls-ecdhe-mlkem, IANA group 0x11ec) for rustls with the `ring`
//! provider: the post-quantum hybrid TLS 1.3 key exchange that browsers, OpenSSL 3.5 and
//! aws-lc-rs offer by default. `ring` has no ML-KEM, so the ML-KEM half comes from RustCrypto's
//! `ml-kem` (already in the build for SSH's `mlkem768x25519-sha256`) and the X25519 half is
//! rustls' own `ring` group. Keeping `ring` keeps its AES-GCM, which is what bulk FTPS data costs
//! (docs/performance.md compares it with aws-lc-rs).
//!
//! Wire layout (the hybrid draft, ML-KEM first for this group): the client's share is the
//! ML-KEM-768 encapsulation key (1184 bytes) followed by its X25519 public key (32 bytes); the
//! server's share is the ML-KEM ciphertext (1088 bytes) followed by its X25519 public key; the
//! shared secret is the ML-KEM shared key followed by the X25519 shared secret (64 bytes).
//! TLS 1.3 only.

use ml_kem::kem::{Decapsulate, Encapsulate};
use ml_kem::{Kem, KeyExport, MlKem768, TryKeyInit};
use rustls::crypto::{ActiveKeyExchange, CompletedKeyExchange, SharedSecret, SupportedKxGroup};
use rustls::{Error, NamedGroup, PeerMisbehaved, ProtocolVersion};

const ENCAPSULATION_KEY_LEN: usize = 1184;
const CIPHERTEXT_LEN: usize = 1088;
const X25519_LEN: usize = 32;

type EncapsulationKey = ml_kem::EncapsulationKey<MlKem768>;
type DecapsulationKey = ml_kem::DecapsulationKey<MlKem768>;
type Ciphertext = ml_kem::Ciphertext<MlKem768>;

/// The hybrid group, for [`rustls::crypto::CryptoProvider::kx_groups`].
pub static X25519MLKEM768: &dyn SupportedKxGroup = &X25519MlKem768;

/// The key-exchange groups the FTPS side offers, most preferred first: the hybrid, then the
/// classical groups of the `ring` provider for clients without ML-KEM (and for TLS 1.2).
pub fn kx_groups() -> Vec<&'static dyn SupportedKxGroup> {
    let mut groups = vec![X25519MLKEM768];
    groups.extend(rustls::crypto::ring::default_provider().kx_groups);
    groups
}

fn invalid_share() -> Error {
    Error::PeerMisbehaved(PeerMisbehaved::InvalidKeyShare)
}

#[derive(Debug)]
struct X25519MlKem768;

fn classical() -> &'static dyn SupportedKxGroup {
    rustls::crypto::ring::kx_group::X25519
}

impl SupportedKxGroup for X25519MlKem768 {
    /// The client side (used by tests and the benchmark's client).
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let classical = classical().start()?;
        let (decapsulation, encapsulation) = MlKem768::generate_keypair();
        let mut pub_key = Vec::with_capacity(ENCAPSULATION_KEY_LEN + X25519_LEN);
        pub_key.extend_from_slice(&encapsulation.to_bytes());
        pub_key.extend_from_slice(classical.pub_key());
        Ok(Box::new(Active {
            classical,
            decapsulation: Box::new(decapsulation),
            pub_key,
        }))
    }

    /// The server side: encapsulate to the client's key, and X25519 with its share.
    fn start_and_complete(&self, client_share: &[u8]) -> Result<CompletedKeyExchange, Error> {
        if client_share.len() != ENCAPSULATION_KEY_LEN + X25519_LEN {
            return Err(invalid_share());
        }
        let (key, x25519) = client_share.split_at(ENCAPSULATION_KEY_LEN);
        let encapsulation = EncapsulationKey::new_from_slice(key).map_err(|_| invalid_share())?;
        let (ciphertext, pq_secret) = encapsulation.encapsulate();
        let classical = classical().start_and_complete(x25519)?;
        let mut pub_key = Vec::with_capacity(CIPHERTEXT_LEN + X25519_LEN);
        pub_key.extend_from_slice(ciphertext.as_slice());
        pub_key.extend_from_slice(&classical.pub_key);
        let mut secret = Vec::with_capacity(64);
        secret.extend_from_slice(pq_secret.as_slice());
        secret.extend_from_slice(classical.secret.secret_bytes());
        Ok(CompletedKeyExchange {
            group: NamedGroup::X25519MLKEM768,
            pub_key,
            secret: SharedSecret::from(secret),
        })
    }

    fn ffdhe_group(&self) -> Option<rustls::ffdhe_groups::FfdheGroup<'static>> {
        None
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }

    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        version == ProtocolVersion::TLSv1_3
    }
}

/// A client's key exchange in progress.
struct Active {
    classical: Box<dyn ActiveKeyExchange>,
    decapsulation: Box<DecapsulationKey>,
    pub_key: Vec<u8>,
}

impl ActiveKeyExchange for Active {
    fn complete(self: Box<Self>, server_share: &[u8]) -> Result<SharedSecret, Error> {
        if server_share.len() != CIPHERTEXT_LEN + X25519_LEN {
            return Err(invalid_share());
        }
        let (ciphertext, x25519) = server_share.split_at(CIPHERTEXT_LEN);
        let ciphertext = Ciphertext::try_from(ciphertext).map_err(|_| invalid_share())?;
        let pq_secret = self.decapsulation.decapsulate(&ciphertext);
        let classical = self.classical.complete(x25519)?;
        let mut secret = Vec::with_capacity(64);
        secret.extend_from_slice(pq_secret.as_slice());
        secret.extend_from_slice(classical.secret_bytes());
        Ok(SharedSecret::from(secret))
    }

    /// Lets a client send an X25519 share alongside the hybrid one, which a server without
    /// ML-KEM can pick without a HelloRetryRequest.
    fn hybrid_component(&self) -> Option<(NamedGroup, &[u8])> {
        Some((self.classical.group(), self.classical.pub_key()))
    }

    fn complete_hybrid_component(
        self: Box<Self>,
        server_share: &[u8],
    ) -> Result<SharedSecret, Error> {
        self.classical.complete(server_share)
    }

    fn pub_key(&self) -> &[u8] {
        &self.pub_key
    }

    fn ffdhe_group(&self) -> Option<rustls::ffdhe_groups::FfdheGroup<'static>> {
        None
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_and_server_halves_agree_on_a_64_byte_secret() {
        let client = X25519MLKEM768.start().unwrap();
        assert_eq!(client.pub_key().len(), ENCAPSULATION_KEY_LEN + X25519_LEN);
        let server = X25519MLKEM768.start_and_complete(client.pub_key()).unwrap();
        assert_eq!(server.group, NamedGroup::X25519MLKEM768);
        assert_eq!(server.pub_key.len(), CIPHERTEXT_LEN + X25519_LEN);
        let client_secret = client.complete(&server.pub_key).unwrap();
        assert_eq!(client_secret.secret_bytes().len(), 64);
        assert_eq!(client_secret.secret_bytes(), server.secret.secret_bytes());
    }

    #[test]
    fn malformed_shares_are_refused() {
        assert!(X25519MLKEM768.start_and_complete(&[0u8; 31]).is_err());
        assert!(
            X25519MLKEM768
                .start_and_complete(&[0u8; ENCAPSULATION_KEY_LEN + X25519_LEN + 1])
                .is_err()
        );
        let client = X25519MLKEM768.start().unwrap();
        assert!(client.complete(&[0u8; CIPHERTEXT_LEN]).is_err());
    }

    #[test]
    fn a_tampered_ciphertext_gives_a_different_secret() {
        let client = X25519MLKEM768.start().unwrap();
        let server = X25519MLKEM768.start_and_complete(client.pub_key()).unwrap();
        let mut share = server.pub_key.clone();
        share[7] ^= 1;
        let client_secret = client.complete(&share).unwrap();
        assert_ne!(client_secret.secret_bytes(), server.secret.secret_bytes());
    }
}
