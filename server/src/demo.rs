//! `sluice-server demo`: a complete local server in one command, for a first look. Generates a
//! temporary data root, a self-signed certificate, an ed25519 SSH host key and a demo user with a random password, and
//! prints client commands that work against it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rand::Rng;

use crate::{auth, tls};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

pub struct DemoPorts {
    pub explicit: u16,
    pub implicit: u16,
    pub health: u16,
    pub passive_start: u16,
    pub sftp: u16,
}

/// A new ed25519 host key in OpenSSH format, and its `SHA256:` fingerprint.
pub fn generate_host_key() -> Result<(String, String), DemoError> {
    use russh::keys::ssh_key::LineEnding;
    use russh::keys::ssh_key::private::Ed25519Keypair;
    let seed: [u8; 32] = rand::random();
    let key = russh::keys::PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    Ok((
        text.to_string(),
        crate::sftp::keys::fingerprint(key.public_key()),
    ))
}

pub struct Demo {
    pub config_path: PathBuf,
    pub instructions: String,
}

fn write(path: &Path, contents: &str) -> Result<(), DemoError> {
    std::fs::write(path, contents).map_err(|source| DemoError::Write {
        path: path.display().to_string(),
        source,
    })
}

fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..20)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Writes the demo's files into `dir` and returns the config path and what to print.
pub fn prepare(dir: &Path, ports: &DemoPorts) -> Result<Demo, DemoError> {
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("demo")).map_err(|source| DemoError::Write {
        path: data.display().to_string(),
        source,
    })?;
    write(
        &data.join("demo").join("welcome.txt"),
        "Welcome to Sluice. Upload, download, rename and delete files here.\n",
    )?;
    let (cert, key) = tls::self_signed(&["localhost", "127.0.0.1"])
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    let cert_path = dir.join("tls.crt");
    write(&cert_path, &cert)?;
    write(&dir.join("tls.key"), &key)?;
    let (host_key, fingerprint) = generate_host_key()?;
    let host_key_path = dir.join("ssh_host_ed25519_key");
    write(&host_key_path, &host_key)?;
    let known_hosts = dir.join("known_hosts");
    let public = russh::keys::PrivateKey::from_openssh(&host_key)
        .map_err(|e| DemoError::Setup(e.to_string()))?
        .public_key()
        .to_openssh()
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    write(
        &known_hosts,
        &format!("[127.0.0.1]:{} {public}\n", ports.sftp),
    )?;
    let password = random_password();
    let hash = auth::hash_password(&password).map_err(|e| DemoError::Setup(e.to_string()))?;
    write(
        &dir.join("users.yaml"),
        &format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: UserList\nusers:\n  - username: demo\n    passwordHash: \"{hash}\"\n    home: demo\n    permissions: [list, download, upload, overwrite, delete, rename, mkdir, rmdir]\n"
        ),
    )?;
    let passive_end = ports.passive_start.saturating_add(19);
    let config_path = dir.join("server.yaml");
    write(
        &config_path,
        &format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: ServerConfig\ndataRoot: data\nusersFile: users.yaml\nlisteners:\n  ftpsExplicit: 127.0.0.1:{}\n  ftpsImplicit: 127.0.0.1:{}\n  health: 127.0.0.1:{}\n  sftp: 127.0.0.1:{}\ntls:\n  certFile: tls.crt\n  keyFile: tls.key\npassive:\n  portStart: {}\n  portEnd: {}\nssh:\n  hostKeyFiles: [ssh_host_ed25519_key]\n",
            ports.explicit,
            ports.implicit,
            ports.health,
            ports.sftp,
            ports.passive_start,
            passive_end
        ),
    )?;
    let ca = cert_path.display();
    let (e, i, h) = (ports.explicit, ports.implicit, ports.health);
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Sluice demo is starting (files in {}).",
        dir.display()
    );
    let _ = writeln!(text, "  user:     demo");
    let _ = writeln!(text, "  password: {password}   (shown once)");
    let _ = writeln!(
        text,
        "  explicit FTPS: 127.0.0.1:{e}   implicit FTPS: 127.0.0.1:{i}"
    );
    let _ = writeln!(
        text,
        "  SFTP: 127.0.0.1:{}   host key {fingerprint}",
        ports.sftp
    );
    let _ = writeln!(text, "  health and metrics: http://127.0.0.1:{h}/metrics");
    let _ = writeln!(text, "Try:");
    let _ = writeln!(
        text,
        "  curl --ssl-reqd --cacert {ca} ftp://demo:{password}@127.0.0.1:{e}/"
    );
    let _ = writeln!(
        text,
        "  curl --ssl-reqd --cacert {ca} ftp://demo:{password}@127.0.0.1:{e}/welcome.txt"
    );
    let _ = writeln!(
        text,
        "  curl --ssl-reqd --cacert {ca} -T /etc/hostname ftp://demo:{password}@127.0.0.1:{e}/"
    );
    let _ = writeln!(
        text,
        "  curl --cacert {ca} ftps://demo:{password}@127.0.0.1:{i}/"
    );
    let _ = writeln!(
        text,
        "  lftp -u demo,{password} -p {e} -e 'set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:ca-file {ca}; ls; bye' 127.0.0.1"
    );
    let _ = writeln!(
        text,
        "  sftp -P {} -o UserKnownHostsFile={} demo@127.0.0.1   (password above)",
        ports.sftp,
        known_hosts.display()
    );
    let _ = writeln!(
        text,
        "Audit events follow as JSON lines on stdout. Ctrl-C stops the demo."
    );
    Ok(Demo {
        config_path,
        instructions: text,
    })
}
