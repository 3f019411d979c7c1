//! One immutable, validated view of everything the server serves with: `server.yaml`, the
//! users, and the TLS config built from the certificate files. Reload builds a new snapshot and
//! swaps it in whole, or keeps the old one when anything is invalid.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use sluice_config::{ConfigError, FieldError, ServerConfig, User, UserList};

use crate::auth;
use crate::tls::{self, TlsError, TlsMaterial};

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
}

pub struct Snapshot {
    pub config: ServerConfig,
    pub data_root: PathBuf,
    pub users: HashMap<String, Arc<User>>,
    pub tls: Arc<rustls::ServerConfig>,
    /// SHA-256 over every input file, to notice changes cheaply.
    pub digest: [u8; 32],
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

    let users_name = name_of(&users_path);
    let users = UserList::parse(&users_name, &String::from_utf8_lossy(&users_bytes))?;
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

    let data_root = resolve_relative(config_path, &config.data_root);
    let users = users
        .users
        .into_iter()
        .map(|u| (u.username.clone(), Arc::new(u)))
        .collect();
    Ok(Snapshot {
        config,
        data_root,
        users,
        tls,
        digest: [0; 32],
    })
}
