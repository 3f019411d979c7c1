//! SSH host keys and algorithm lists: from `server.yaml`'s `ssh` section and the host key files
//! to the `russh` server configuration, and users' `authorized_keys` lines to public keys.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::keys::ssh_key::{Algorithm, HashAlg, PublicKey};
use russh::{MethodKind, MethodSet, Preferred, SshId};
use sluice_config::ServerConfig;

/// Initial SSH channel window: large, so that a single SFTP stream is not limited by
/// round trips (OpenSSH uses 2 MiB; the design prototype matched `internal-sftp` with 8 MiB).
pub const WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// Largest SSH channel packet we accept from clients.
pub const MAX_CHANNEL_PACKET: u32 = 32 * 1024;
/// What we send as our software version.
/// Public keys a client may offer (without a signature) on one connection before it is cut
/// off. Above OpenSSH's default `MaxAuthTries` (6), so an agent with several keys gets through.
pub const MAX_KEY_OFFERS: u32 = 10;

pub const SERVER_ID: &str = "SSH-2.0-Sluice";

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("ssh.hostKeyFiles[{index}] {path}: {message}")]
    Key {
        index: usize,
        path: String,
        message: String,
    },
    #[error("ssh.hostKeyFiles: {0}")]
    Missing(String),
    #[error("{field}: {message}")]
    Algorithm { field: String, message: String },
}

/// A host key file as read by the snapshot loader.
pub struct HostKeyFile<'a> {
    pub path: &'a str,
    pub bytes: &'a [u8],
}

/// Everything the SSH listener needs from one snapshot.
pub struct SshMaterial {
    /// The russh configuration new connections are served with (host keys, algorithms,
    /// timeouts); rebuilt on every reload.
    pub config: Arc<russh::server::Config>,
    /// `SHA256:...` fingerprints of the host keys, in file order.
    pub fingerprints: Vec<String>,
    /// Whether password authentication is offered at all.
    pub password_authentication: bool,
}

/// `SHA256:<base64>`, as OpenSSH prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn parse_host_key(
    index: usize,
    file: &HostKeyFile<'_>,
    allow_rsa: bool,
) -> Result<PrivateKey, HostKeyError> {
    let fail = |message: String| HostKeyError::Key {
        index,
        path: file.path.to_string(),
        message,
    };
    let text = std::str::from_utf8(file.bytes)
        .map_err(|_| fail("is not an OpenSSH private key (not text)".into()))?;
    let key = PrivateKey::from_openssh(text.trim())
        .map_err(|e| fail(format!("is not an OpenSSH private key: {e}")))?;
    if key.is_encrypted() {
        return Err(fail("is encrypted; host keys must be stored without a passphrase (protect the file instead)".into()));
    }
    match key.algorithm() {
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } => Ok(key),
        Algorithm::Rsa { .. } if allow_rsa => Ok(key),
        Algorithm::Rsa { .. } => Err(fail(
            "is an RSA key; RSA host keys are refused unless ssh.allowRsaHostKeys is true (use ed25519)".into(),
        )),
        other => Err(fail(format!("key type {other} is not supported (use ed25519 or ECDSA)"))),
    }
}

fn names<T: Copy>(
    field: &str,
    list: &[String],
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, HostKeyError> {
    list.iter()
        .enumerate()
        .map(|(index, name)| {
            parse(name).ok_or_else(|| HostKeyError::Algorithm {
                field: format!("{field}[{index}]"),
                message: format!("{name:?} is not implemented by this build"),
            })
        })
        .collect()
}

/// The algorithm lists in effect, as russh wants them. Strict KEX and RFC 8308 extension
/// negotiation are always on; compression is always off.
pub fn preferred(config: &ServerConfig) -> Result<Preferred, HostKeyError> {
    let ssh = &config.ssh;
    let mut kex = names("ssh.kex", &ssh.effective_kex(), |n| {
        russh::kex::Name::try_from(n).ok()
    })?;
    kex.push(russh::kex::EXTENSION_SUPPORT_AS_SERVER);
    kex.push(russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER);
    let cipher = names("ssh.ciphers", &ssh.effective_ciphers(), |n| {
        russh::cipher::Name::try_from(n).ok()
    })?;
    let mac = names("ssh.macs", &ssh.effective_macs(), |n| {
        russh::mac::Name::try_from(n).ok()
    })?;
    let key: Vec<Algorithm> = ssh
        .effective_host_key_algorithms()
        .iter()
        .enumerate()
        .map(|(index, name)| {
            name.parse::<Algorithm>()
                .map_err(|e| HostKeyError::Algorithm {
                    field: format!("ssh.hostKeyAlgorithms[{index}]"),
                    message: format!("{name:?}: {e}"),
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(Preferred {
        kex: Cow::Owned(kex),
        key: Cow::Owned(key),
        host_key_certificates: Cow::Borrowed(&[]),
        cipher: Cow::Owned(cipher),
        mac: Cow::Owned(mac),
        compression: Cow::Owned(vec![russh::compression::NONE]),
    })
}

/// Builds the SSH material of a snapshot from the config and the host key files' contents.
pub fn build(
    config: &ServerConfig,
    files: &[HostKeyFile<'_>],
) -> Result<SshMaterial, HostKeyError> {
    let ssh = &config.ssh;
    let keys: Vec<PrivateKey> = files
        .iter()
        .enumerate()
        .map(|(index, file)| parse_host_key(index, file, ssh.allow_rsa_host_keys))
        .collect::<Result<_, _>>()?;
    if !keys.iter().any(|k| k.algorithm() == Algorithm::Ed25519) {
        return Err(HostKeyError::Missing(
            "an ed25519 host key is required (generate one with ssh-keygen -t ed25519 -N '' -f ssh_host_ed25519_key)".into(),
        ));
    }
    let preferred = preferred(config)?;
    let fingerprints = keys.iter().map(|k| fingerprint(k.public_key())).collect();
    let mut methods = vec![MethodKind::PublicKey];
    if ssh.password_authentication {
        methods.push(MethodKind::Password);
    }
    let limits = &config.limits;
    let russh_config = russh::server::Config {
        server_id: SshId::Standard(Cow::Borrowed(SERVER_ID)),
        methods: MethodSet::from(methods.as_slice()),
        // The handler delays every counted failure itself (`limits.authFailureDelayMs`, the
        // same for unknown users, wrong keys and passwords, refused accounts), so russh's own
        // delay is off: it also delayed each refused public-key offer, which costs the server
        // nothing and which clients with several keys send in a row.
        auth_rejection_time: Duration::ZERO,
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys,
        // russh counts every refused request, key offers included; the handler enforces the
        // real limits itself (failed logins: `limits.maxAuthAttempts`; key offers:
        // `MAX_KEY_OFFERS`), so russh's cap sits above both.
        max_auth_attempts: limits.max_auth_attempts as usize + MAX_KEY_OFFERS as usize + 2,
        inactivity_timeout: Some(Duration::from_secs(config.timeouts.idle_seconds)),
        window_size: WINDOW_BYTES,
        maximum_packet_size: MAX_CHANNEL_PACKET,
        channel_buffer_size: 64,
        event_buffer_size: 16,
        preferred,
        nodelay: true,
        ..Default::default()
    };
    Ok(SshMaterial {
        config: Arc::new(russh_config),
        fingerprints,
        password_authentication: ssh.password_authentication,
    })
}

/// Parses one `authorized_keys` line (no options; validation already refused them).
pub fn parse_authorized_key(line: &str) -> Result<PublicKey, String> {
    PublicKey::from_openssh(line.trim()).map_err(|e| format!("cannot parse the key: {e}"))
}
