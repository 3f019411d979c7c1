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
    #[error("{0}")]
    ObjectStore(#[from] crate::objectfs::ObjectStoreError),
}

pub struct Snapshot {
    pub config: ServerConfig,
    pub data_root: PathBuf,
    /// The bucket the homes are in (`storage.objectStore`); `None`: homes under `data_root`.
    pub object_store: Option<Arc<crate::objectfs::ObjectStore>>,
    /// `scanning.quarantineDir`, resolved (when scanning is configured).
    pub quarantine_dir: Option<PathBuf>,
    pub users: HashMap<String, Arc<User>>,
    pub tls: Arc<rustls::ServerConfig>,
    /// Host keys and algorithms of the SFTP listener (when `listeners.sftp` is set).
    pub ssh: Option<Arc<SshMaterial>>,
    /// Parsed `sshAuthorizedKeys` per user name.
    pub ssh_keys: HashMap<String, Arc<Vec<PublicKey>>>,
    /// SHA-256 over every input file, to notice changes cheaply.
    pub digest: [u8; 32],
    /// SHA-256 (hex) of each users file loaded, by file name: `GET /loaded` on the health port
    /// tells the operator which users.yaml shards this process serves, so that a TransferUser
    /// is reported Ready only once the pods have loaded it.
    pub users_files: std::collections::BTreeMap<String, String>,
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

/// The users files: `usersFile` itself, or, when it names a directory, every `*.yaml` file in
/// it (sorted by name; hidden entries such as a Secret volume's `..data` are skipped). The
/// operator splits a large user list into shards (one Secret each, projected into one
/// directory) so that no Secret exceeds the API server's 1 MiB limit.
fn read_user_files(path: &Path) -> Result<Vec<(String, Vec<u8>)>, LoadError> {
    let read_dir_error = |source| LoadError::Read {
        path: name_of(path),
        source,
    };
    if !path.is_dir() {
        return Ok(vec![(name_of(path), read(path)?)]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_dir_error)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.') && n.ends_with(".yaml"))
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| Ok((name_of(&file), read(&file)?)))
        .collect()
}

/// One user list from every users file, with each user's file and index for error messages.
/// A username in two files is an error: the operator writes a user into exactly one shard, so
/// a duplicate means a shard change is half-way through, and the previous snapshot keeps
/// serving until the other shard catches up.
fn merge_user_files(
    files: &[(String, Vec<u8>)],
) -> Result<(UserList, Vec<(String, usize)>), LoadError> {
    let mut merged: Option<UserList> = None;
    let mut origins = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut errors = Vec::new();
    for (name, bytes) in files {
        let list = UserList::parse(name, &String::from_utf8_lossy(bytes))?;
        let target = merged.get_or_insert_with(|| UserList {
            users: Vec::new(),
            ..list.clone()
        });
        for (index, user) in list.users.into_iter().enumerate() {
            if let Some(other) = seen.insert(user.username.clone(), name.clone()) {
                errors.push(FieldError::new(
                    name,
                    format!("users[{index}].username"),
                    format!("{:?} is also defined in {other}", user.username),
                ));
                continue;
            }
            origins.push((name.clone(), index));
            target.users.push(user);
        }
    }
    if !errors.is_empty() {
        return Err(ConfigError::Invalid(errors).into());
    }
    // An empty shard directory is an empty user list (nobody can log in), not an error.
    let merged = merged.unwrap_or_else(|| UserList {
        api_version: sluice_config::API_VERSION.into(),
        kind: "UserList".into(),
        users: Vec::new(),
    });
    Ok((merged, origins))
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

    let user_files = read_user_files(&users_path)?;
    let cert_bytes = read(&cert_path)?;
    let key_bytes = read(&key_path)?;
    let ca_bytes = ca_path.as_deref().map(read).transpose()?;
    for (name, bytes) in &user_files {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    for bytes in [&cert_bytes, &key_bytes] {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    if let Some(ca) = &ca_bytes {
        hasher.update(ca);
    }
    let object_files = match &config.storage.object_store {
        Some(store) => Some(crate::objectfs::ObjectStoreFiles::read(store, |value| {
            resolve_relative(config_path, value)
        })?),
        None => None,
    };
    if let Some(files) = &object_files {
        for bytes in [&files.access_key_id, &files.secret_access_key] {
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        }
        if let Some(ca) = &files.ca {
            hasher.update(ca);
        }
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

    let users_files = user_files
        .iter()
        .map(|(name, bytes)| {
            let file = Path::new(name)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| name.clone());
            (file, hex::encode(Sha256::digest(bytes)))
        })
        .collect();
    let (users, origins) = merge_user_files(&user_files)?;
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
                    &origins[index].0,
                    format!("users[{}].sshAuthorizedKeys[{key_index}]", origins[index].1),
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
                    &origins[index].0,
                    format!("users[{}].passwordHash", origins[index].1),
                    e.to_string(),
                )
            })
        })
        .collect();
    if !hash_errors.is_empty() {
        return Err(ConfigError::Invalid(hash_errors).into());
    }
    if config.storage.object_store.is_some() {
        let unsupported = object_store_user_errors(&users.users, &origins);
        if !unsupported.is_empty() {
            return Err(ConfigError::Invalid(unsupported).into());
        }
    }
    let object_store = match (&config.storage.object_store, &object_files) {
        (Some(store), Some(files)) => {
            let ca_path = store
                .ca_file
                .as_deref()
                .map(|ca| resolve_relative(config_path, ca));
            Some(crate::objectfs::ObjectStore::shared(
                store,
                files,
                ca_path.as_deref(),
            )?)
        }
        _ => None,
    };

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
    let quarantine_dir = config
        .scanning
        .as_ref()
        .map(|s| resolve_relative(config_path, &s.quarantine_dir));
    if let Some(dir) = &quarantine_dir {
        // The config crate compares the fields as written; this compares them resolved (a
        // relative quarantineDir may still land inside an absolute dataRoot).
        if dir.starts_with(&data_root) || data_root.starts_with(dir) {
            return Err(LoadError::Config(ConfigError::Invalid(vec![
                FieldError::new(
                    &name_of(config_path),
                    "scanning.quarantineDir",
                    format!(
                        "{} must be outside dataRoot ({}): users could reach quarantined files",
                        dir.display(),
                        data_root.display()
                    ),
                ),
            ])));
        }
    }
    let users: HashMap<String, Arc<User>> = users
        .users
        .into_iter()
        .map(|u| (u.username.clone(), Arc::new(u)))
        .collect();
    let dummy_hash = crate::auth::dummy_hash_for(crate::auth::typical_params(
        users.values().filter_map(|u| u.password_hash.as_deref()),
    ));
    Ok(Snapshot {
        object_store,
        dummy_hash,
        config,
        data_root,
        quarantine_dir,
        users,
        tls,
        ssh,
        ssh_keys: parsed_keys,
        digest: [0; 32],
        users_files,
    })
}

/// Users whose settings object storage does not support yet: quotas and retention count and
/// delete files in the local home (docs/object-storage.md).
fn object_store_user_errors(users: &[User], origins: &[(String, usize)]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (user, (file, index)) in users.iter().zip(origins) {
        if user.quota.is_some() {
            errors.push(FieldError::new(
                file,
                format!("users[{index}].quota"),
                "is not supported with storage.objectStore yet (local storage only); remove it",
            ));
        }
        if !user.retention.is_empty() {
            errors.push(FieldError::new(
                file,
                format!("users[{index}].retention"),
                "is not supported with storage.objectStore yet (local storage only); remove it",
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(users: &[&str]) -> Vec<u8> {
        let mut text = String::from("apiVersion: sluice.dev/v1alpha1\nkind: UserList\nusers:\n");
        for user in users {
            text.push_str(&format!(
                "  - username: {user}\n    home: {user}\n    permissions: [list]\n    sshAuthorizedKeys: [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\"]\n"
            ));
        }
        if users.is_empty() {
            text = "apiVersion: sluice.dev/v1alpha1\nkind: UserList\nusers: []\n".into();
        }
        text.into_bytes()
    }

    #[test]
    fn quota_and_retention_are_refused_with_object_storage_naming_the_user() {
        let mut text = String::from_utf8(shard(&["a", "b"])).unwrap();
        text.push_str("    quota: {maxBytes: 10Mi}\n    retention: [{path: out/, maxAge: 30d}]\n");
        let list = UserList::parse("users.yaml", &text).unwrap();
        let origins = vec![("users.yaml".to_string(), 0), ("users.yaml".to_string(), 1)];
        let errors = object_store_user_errors(&list.users, &origins);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["users[1].quota", "users[1].retention"]);
        assert!(errors[0].message.contains("storage.objectStore"));
        assert!(object_store_user_errors(&list.users[..1], &origins).is_empty());
    }

    #[test]
    fn shards_in_a_directory_are_read_in_name_order_and_merged() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("users-01.yaml"), shard(&["carol"])).unwrap();
        std::fs::write(dir.path().join("users-00.yaml"), shard(&["alice", "bob"])).unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), b"not yaml: [").unwrap();
        std::fs::write(dir.path().join("README"), b"ignored").unwrap();
        let files = read_user_files(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        assert!(files[0].0.ends_with("users-00.yaml"), "{}", files[0].0);
        let (users, origins) = merge_user_files(&files).unwrap();
        let names: Vec<&str> = users.users.iter().map(|u| u.username.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "carol"]);
        assert!(origins[2].0.ends_with("users-01.yaml"));
        assert_eq!(origins[2].1, 0);
    }

    #[test]
    fn a_user_in_two_shards_is_refused_naming_both_files() {
        let files = vec![
            ("users-00.yaml".to_string(), shard(&["alice"])),
            ("users-01.yaml".to_string(), shard(&["bob", "alice"])),
        ];
        let Err(error) = merge_user_files(&files) else {
            panic!("a user in two shards must be refused");
        };
        let error = error.to_string();
        assert!(error.contains("users-01.yaml"), "{error}");
        assert!(error.contains("users[1].username"), "{error}");
        assert!(error.contains("users-00.yaml"), "{error}");
    }

    #[test]
    fn a_single_users_file_is_read_as_before_and_an_empty_directory_is_no_users() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("users.yaml");
        std::fs::write(&file, shard(&["alice"])).unwrap();
        assert_eq!(read_user_files(&file).unwrap().len(), 1);
        let empty = tempfile::tempdir().unwrap();
        let (users, _) = merge_user_files(&read_user_files(empty.path()).unwrap()).unwrap();
        assert!(users.users.is_empty());
    }
}
