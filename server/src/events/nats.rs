//! The NATS JetStream sink: publishes each CloudEvent to a subject a stream captures, and
//! counts it delivered only when JetStream acknowledged storing it (the publish ack), so the
//! outbox never lets go of an event that exists only in a socket buffer.
//!
//! Every message carries `Nats-Msg-Id: <event id>`: an event published again after a crash
//! or a lost ack is dropped by JetStream's duplicate window (the ack then says `duplicate`),
//! and a consumer that outlives the window can still deduplicate on the same id. With
//! `stream` set, `Nats-Expected-Stream` makes a publish captured by another stream (or none)
//! an error instead of a silent success elsewhere.
//!
//! Credentials are files in one directory, named like the keys of the Kubernetes Secret that
//! is mounted there (`token`, `username` + `password`, `nkey`, `creds`): the operator mounts
//! the Secret without reading it, and the server finds out which kind it holds. They are
//! read at every new connection, so a rotated Secret takes effect at the next reconnect.
//! TLS trusts exactly the CA in `caFile`, as the webhook does.
//!
//! The connection is made lazily by the first delivery attempt and kept; the client
//! reconnects by itself, and a sink whose client is disconnected when an attempt fails starts
//! over with a new connection (and freshly read credentials) on the next attempt.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;

use super::EventsError;
use super::outbox::Entry;
use super::sink::{Filter, Retry};

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("connect: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("publish: {0}")]
    Publish(#[from] jetstream::context::PublishError),
    #[error("the event has no id")]
    NoId,
}

/// What a `credentialsDir` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    None,
    Token(String),
    UserPassword(String, String),
    NkeySeed(String),
    CredsFile(PathBuf),
}

/// Reads the credentials in `dir` (pure apart from reading files): exactly one kind of
/// `token`, `username` + `password`, `nkey`, `creds`; surrounding whitespace is trimmed.
pub fn read_credentials(dir: Option<&Path>) -> Result<Credentials, String> {
    let Some(dir) = dir else {
        return Ok(Credentials::None);
    };
    let read = |name: &str| -> Result<Option<String>, String> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) if text.trim().is_empty() => Err(format!("{} is empty", path.display())),
            Ok(text) => Ok(Some(text.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    };
    let token = read("token")?;
    let user = read("username")?;
    let password = read("password")?;
    let nkey = read("nkey")?;
    let creds = dir.join("creds");
    let creds = creds.is_file().then_some(creds);
    let kinds = [
        token.is_some(),
        user.is_some() || password.is_some(),
        nkey.is_some(),
        creds.is_some(),
    ];
    match kinds.iter().filter(|k| **k).count() {
        0 => Err(format!(
            "{} holds none of token, username + password, nkey, creds",
            dir.display()
        )),
        1 => Ok(match (token, user, password, nkey, creds) {
            (Some(token), ..) => Credentials::Token(token),
            (_, Some(user), Some(password), ..) => Credentials::UserPassword(user, password),
            (_, Some(_), None, ..) | (_, None, Some(_), ..) => {
                return Err(format!(
                    "{}: username and password go together",
                    dir.display()
                ));
            }
            (.., Some(seed), _) => Credentials::NkeySeed(seed),
            (.., Some(path)) => Credentials::CredsFile(path),
            _ => Credentials::None,
        }),
        _ => Err(format!(
            "{} holds more than one kind of credentials (token, username + password, nkey, creds)",
            dir.display()
        )),
    }
}

pub struct Nats {
    servers: Vec<String>,
    subject: String,
    stream: Option<String>,
    ca_file: Option<PathBuf>,
    credentials_dir: Option<PathBuf>,
    timeout: Duration,
    name: String,
    connection: Option<(async_nats::Client, jetstream::Context)>,
}

impl Nats {
    /// The sink and its filter and retry policy; checks the CA and credentials files now, so
    /// that a mistake stops the server at start rather than at the first event.
    pub fn new(
        index: usize,
        config: &sluice_config::NatsConfig,
        config_path: &Path,
    ) -> Result<(Nats, Filter, Retry), EventsError> {
        let ca_file = config
            .ca_file
            .as_ref()
            .map(|f| crate::snapshot::resolve_relative(config_path, f));
        if let Some(ca) = &ca_file {
            super::webhook::client_tls(ca)
                .map_err(|message| EventsError::NatsCaFile { index, message })?;
        }
        let credentials_dir = config
            .credentials_dir
            .as_ref()
            .map(|d| crate::snapshot::resolve_relative(config_path, d));
        read_credentials(credentials_dir.as_deref())
            .map_err(|message| EventsError::NatsCredentials { index, message })?;
        let servers: Vec<String> = config
            .url
            .split(',')
            .map(|s| s.trim().to_string())
            .collect();
        for server in &servers {
            server
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| EventsError::NatsUrl {
                    index,
                    message: format!("{server:?}: {e}"),
                })?;
        }
        let timeout = Duration::from_secs(config.timeout_seconds);
        let nats = Nats {
            servers,
            subject: config.subject.clone(),
            stream: config.stream.clone(),
            ca_file,
            credentials_dir,
            timeout,
            name: format!("sluice-server {}", crate::context::host_name()),
            connection: None,
        };
        let filter = Filter {
            types: config.types.clone(),
            path_prefixes: config.path_prefixes.clone(),
        };
        let retry = Retry {
            max_attempts: config.max_attempts,
            initial_backoff: Duration::from_millis(config.initial_backoff_ms),
            max_backoff: Duration::from_millis(config.max_backoff_ms),
            timeout,
        };
        Ok((nats, filter, retry))
    }

    async fn connect(&self) -> Result<(async_nats::Client, jetstream::Context), NatsError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(&self.name)
            .connection_timeout(self.timeout)
            .request_timeout(Some(self.timeout));
        if let Some(ca) = &self.ca_file {
            options = options
                .require_tls(true)
                .tls_client_config(super::webhook::client_tls(ca).map_err(NatsError::Tls)?);
        }
        options = match read_credentials(self.credentials_dir.as_deref())
            .map_err(NatsError::Credentials)?
        {
            Credentials::None => options,
            Credentials::Token(token) => options.token(token),
            Credentials::UserPassword(user, password) => options.user_and_password(user, password),
            Credentials::NkeySeed(seed) => options.nkey(seed),
            Credentials::CredsFile(path) => options
                .credentials_file(&path)
                .await
                .map_err(|e| NatsError::Credentials(format!("{}: {e}", path.display())))?,
        };
        let client = options.connect(self.servers.as_slice()).await?;
        let mut context = jetstream::new(client.clone());
        context.set_timeout(self.timeout);
        Ok((client, context))
    }

    /// One publish; `Ok` once JetStream acknowledged storing the event (or recognised it as
    /// a duplicate of one it stored).
    pub async fn send(&mut self, entry: &Entry) -> Result<(), NatsError> {
        let id = entry.id.as_deref().ok_or(NatsError::NoId)?;
        // Client and context are handles (cheap clones) onto one connection.
        let (client, context) = match &self.connection {
            Some((client, context)) => (client.clone(), context.clone()),
            None => {
                let (client, context) = self.connect().await?;
                self.connection = Some((client.clone(), context.clone()));
                (client, context)
            }
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        if let Some(stream) = &self.stream {
            headers.insert(async_nats::header::NATS_EXPECTED_STREAM, stream.as_str());
        }
        let published = async {
            context
                .publish_with_headers(self.subject.clone(), headers, entry.body.clone())
                .await?
                .await
        }
        .await;
        match published {
            Ok(ack) => {
                if ack.duplicate {
                    tracing::debug!(id, stream = %ack.stream, "events: JetStream had this event already");
                }
                Ok(())
            }
            Err(error) => {
                if client.connection_state() != async_nats::connection::State::Connected {
                    self.connection = None;
                }
                Err(error.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn credentials_are_found_by_file_name() {
        assert_eq!(read_credentials(None).unwrap(), Credentials::None);
        let token = dir_with(&[("token", "s3cret\n")]);
        assert_eq!(
            read_credentials(Some(token.path())).unwrap(),
            Credentials::Token("s3cret".into())
        );
        let user = dir_with(&[("username", "sluice"), ("password", " pw \n")]);
        assert_eq!(
            read_credentials(Some(user.path())).unwrap(),
            Credentials::UserPassword("sluice".into(), "pw".into())
        );
        let nkey = dir_with(&[("nkey", "SUAEXAMPLE")]);
        assert_eq!(
            read_credentials(Some(nkey.path())).unwrap(),
            Credentials::NkeySeed("SUAEXAMPLE".into())
        );
        let creds = dir_with(&[("creds", "-----BEGIN NATS USER JWT-----")]);
        assert_eq!(
            read_credentials(Some(creds.path())).unwrap(),
            Credentials::CredsFile(creds.path().join("creds"))
        );
    }

    #[test]
    fn ambiguous_half_or_empty_credentials_are_refused() {
        for files in [
            &[][..],
            &[("token", "a"), ("nkey", "b")][..],
            &[("username", "a")][..],
            &[("password", "a")][..],
            &[("token", "  \n")][..],
        ] {
            let dir = dir_with(files);
            assert!(read_credentials(Some(dir.path())).is_err(), "{files:?}");
        }
    }
}
