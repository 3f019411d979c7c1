//! One immutable, validated view of everything the server serves with: `server.yaml`, the
//! users, and the TLS config built from the certificate files. Reload builds a new snapshot and
//! swaps it in whole, or keeps the old one when anything is invalid.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use sluice_config::{ConfigError, FieldError, ServerConfig, User, UserList};

use crate::auth;
use crate::sftp::keys::{self as ssh_keys, HostKeyError, HostKeyFile, SshMaterial};
use crate::tls::{self, TlsError, TlsMaterial};
use russh::keys::PublicKey;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Ssh(#[from] HostKeyError),
}

pub struct Snapshot {
    pub config: ServerConfig,
    pub data_root: PathBuf,
    pub users: HashMap<String, Arc<User>>,
    pub tls: Arc<rustls::ServerConfig>,
    /// Host keys and algorithms of the SFTP listener (when `listeners.sftp` is set).
    pub ssh: Option<Arc<SshMaterial>>,
    /// Parsed `sshAuthorizedKeys` per user name.
    pub ssh_keys: HashMap<String, Arc<Vec<PublicKey>>>,
    /// SHA-256 over every input file, to notice changes cheaply.
    pub digest: [u8; 32],
    /// What unknown users (and users without a password) are verified against: a hash with the
    /// argon2 parameters most users have, so that no timing tells them apart.
    pub dummy_hash: Arc<str>,
}

impl Snapshot {
    pub fn user(&self, name: &str) -> Option<&Arc<User>> {
        self.users.get(name)
    }
}

/// Resolves `value` against the directory of the config file unless it is absolute.
pub fn resolve_relative(config_path: &Path, value: &str) -> PathBuf {
    let path = Path::new(value);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        config_path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(path)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn name_of(path: &Path) -> String {
    path.display().to_string()
}

/// Reads every input and builds a snapshot. Returns the digest of what was read even when the
/// build fails, so that a reload loop reports one broken version only once.
pub fn load(config_path: &Path) -> ([u8; 32], Result<Snapshot, LoadError>) {
    let mut hasher = Sha256::new();
    let result = load_into(config_path, &mut hasher);
    let digest: [u8; 32] = hasher.finalize().into();
    (
        digest,
        result.map(|mut s| {
            s.digest = digest;
            s
        }),
    )
}

fn load_into(config_path: &Path, hasher: &mut Sha256) -> Result<Snapshot, LoadError> {
    let config_bytes = read(config_path)?;
    hasher.update(&config_bytes);
    let config_name = name_of(config_path);
    let config_text = String::from_utf8_lossy(&config_bytes);
    let config = ServerConfig::parse(&config_name, &config_text)?;

    let users_path = resolve_relative(config_path, &config.users_file);
    let cert_path = resolve_relative(config_path, &config.tls.cert_file);
    let key_path = resolve_relative(config_path, &config.tls.key_file);
    let ca_path = config
        .tls
        .client_ca_file
        .as_deref()
        .map(|ca| resolve_relative(config_path, ca));

    let users_bytes = read(&users_path)?;
    let cert_bytes = read(&cert_path)?;
    let key_bytes = read(&key_path)?;
    let ca_bytes = ca_path.as_deref().map(read).transpose()?;
    for bytes in [&users_bytes, &cert_bytes, &key_bytes] {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    if let Some(ca) = &ca_bytes {
        hasher.update(ca);
    }

    let host_key_paths: Vec<PathBuf> = config
        .ssh
        .host_key_files
        .iter()
        .map(|file| resolve_relative(config_path, file))
        .collect();
    let mut host_key_bytes = Vec::new();
    if config.listeners.sftp.is_some() {
        for path in &host_key_paths {
            let bytes = read(path)?;
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
            host_key_bytes.push(bytes);
        }
    }

    let users_name = name_of(&users_path);
    let users = UserList::parse(&users_name, &String::from_utf8_lossy(&users_bytes))?;
    // Logged on every load (start, check-config, each reload), so an opt-in is never silent.
    for warning in users.insecure_opt_ins() {
        tracing::warn!(setting = %warning, "insecure opt-in enabled");
    }
    if config.tls.client_certificates == sluice_config::ClientCertificateMode::None {
        for user in users
            .users
            .iter()
            .filter(|u| u.ftps_auth.needs_certificate())
        {
            tracing::warn!(
                user = %user.username,
                "users.yaml: ftpsAuth needs a client certificate but server.yaml tls.clientCertificates is none; this user cannot log in over FTPS"
            );
        }
    }
    let mut key_errors = Vec::new();
    let mut parsed_keys = HashMap::new();
    for (index, user) in users.users.iter().enumerate() {
        let mut keys = Vec::new();
        for (key_index, line) in user.ssh_authorized_keys.iter().enumerate() {
            match ssh_keys::parse_authorized_key(line) {
                Ok(key) => keys.push(key),
                Err(message) => key_errors.push(FieldError::new(
                    &users_name,
                    format!("users[{index}].sshAuthorizedKeys[{key_index}]"),
                    message,
                )),
            }
        }
        parsed_keys.insert(user.username.clone(), Arc::new(keys));
    }
    if !key_errors.is_empty() {
        return Err(ConfigError::Invalid(key_errors).into());
    }
    let hash_errors: Vec<FieldError> = users
        .users
        .iter()
        .enumerate()
        .filter_map(|(index, user)| {
            let hash = user.password_hash.as_deref()?;
            auth::check_hash(hash).err().map(|e| {
                FieldError::new(
                    &users_name,
                    format!("users[{index}].passwordHash"),
                    e.to_string(),
                )
            })
        })
        .collect();
    if !hash_errors.is_empty() {
        return Err(ConfigError::Invalid(hash_errors).into());
    }

    let cert_name = name_of(&cert_path);
    let key_name = name_of(&key_path);
    let ca_name = ca_path.as_deref().map(name_of).unwrap_or_default();
    let tls = tls::build_server_config(
        &config.tls,
        &TlsMaterial {
            cert_path: &cert_name,
            cert_pem: &cert_bytes,
            key_path: &key_name,
            key_pem: &key_bytes,
            client_ca: ca_bytes.as_deref().map(|b| (ca_name.as_str(), b)),
        },
    )?;

    let ssh = if config.listeners.sftp.is_some() {
        let names: Vec<String> = host_key_paths.iter().map(|p| name_of(p)).collect();
        let files: Vec<HostKeyFile<'_>> = names
            .iter()
            .zip(&host_key_bytes)
            .map(|(path, bytes)| HostKeyFile { path, bytes })
            .collect();
        Some(Arc::new(ssh_keys::build(&config, &files)?))
    } else {
        None
    };

    let data_root = resolve_relative(config_path, &config.data_root);
    let users: HashMap<String, Arc<User>> = users
        .users
        .into_iter()
        .map(|u| (u.username.clone(), Arc::new(u)))
        .collect();
    let dummy_hash = crate::auth::dummy_hash_for(crate::auth::typical_params(
        users.values().filter_map(|u| u.password_hash.as_deref()),
    ));
    Ok(Snapshot {
        dummy_hash,
        config,
        data_root,
        users,
        tls,
        ssh,
        ssh_keys: parsed_keys,
        digest: [0; 32],
    })
}
