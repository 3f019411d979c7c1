//! The HTTPS webhook sink: POSTs each CloudEvent (structured mode) to a receiver, in outbox
//! order (the loop, retries and dead letters are [`super::sink`]), signed so that the receiver
//! can tell it came from this server and is not a replay.
//!
//! `Sluice-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`: the
//! timestamp is inside the MAC, so a receiver that rejects old timestamps and remembers event
//! ids within that window is replay-safe (docs/events.md shows the check in Python and Go).
//!
//! TLS is verified against the configured CA only (no system roots: a partner-facing server
//! should trust exactly the receiver it was told about). An event is retried with exponential
//! backoff and jitter; after `maxAttempts` it is counted as dead-lettered and skipped, so one
//! poisoned event cannot stop the stream. The connection is kept alive between events (one
//! new TLS handshake per event capped a sink at ~25-30 events/s): a kept connection the
//! receiver has closed in the meantime is replaced once, at once, before the attempt counts as
//! failed. A request that fails after it was sent may reach the receiver twice; that is the
//! at-least-once contract, and the event id tells duplicates apart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use sha2::Sha256;

use super::EventsError;
use super::sink::{Filter, Retry};

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("tls: {0}")]
    Tls(std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("receiver answered {0}")]
    Status(u16),
    #[error("secretFile: {0}")]
    Secret(std::io::Error),
}

pub struct Webhook {
    uri: hyper::Uri,
    host: String,
    port: u16,
    tls: tokio_rustls::TlsConnector,
    secret_file: PathBuf,
    /// The kept-alive connection, if any (the sink sends one event at a time).
    connection: tokio::sync::Mutex<Option<Connection>>,
}

/// An HTTP/1.1 connection to the receiver and the task that drives it.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A TLS client configuration that trusts exactly the CAs in the PEM file `ca_path` (no
/// system roots); shared by the webhook and NATS sinks.
pub fn client_tls(ca_path: &Path) -> Result<rustls::ClientConfig, String> {
    let pem =
        std::fs::read(ca_path).map_err(|e| format!("cannot read {}: {e}", ca_path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{}: {e}", ca_path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca_path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no certificate", ca_path.display()));
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// `Sluice-Signature` for `body` sent at `timestamp` (unix seconds).
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length: this cannot fail, but an empty signature (which every
    // receiver rejects) is the safe answer if it ever did.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

impl Webhook {
    /// The webhook and its filter and retry policy.
    pub fn new(
        index: usize,
        config: &sluice_config::WebhookConfig,
        config_path: &Path,
    ) -> Result<(Webhook, Filter, Retry), EventsError> {
        let url_err = |message: String| EventsError::Url { index, message };
        let uri: hyper::Uri = config
            .url
            .parse()
            .map_err(|e| url_err(format!("{:?} is not a URL: {e}", config.url)))?;
        let host = uri
            .host()
            .ok_or_else(|| url_err("has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let ca_path = crate::snapshot::resolve_relative(config_path, &config.ca_file);
        let tls = client_tls(&ca_path).map_err(|message| EventsError::CaFile { index, message })?;
        let secret_file = crate::snapshot::resolve_relative(config_path, &config.secret_file);
        read_secret(&secret_file).map_err(|source| EventsError::SecretFile {
            index,
            path: secret_file.clone(),
            source,
        })?;
        let webhook = Webhook {
            uri,
            host,
            port,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            secret_file,
            connection: tokio::sync::Mutex::new(None),
        };
        let filter = Filter {
            types: config.types.clone(),
            path_prefixes: config.path_prefixes.clone(),
        };
        let retry = Retry {
            max_attempts: config.max_attempts,
            initial_backoff: std::time::Duration::from_millis(config.initial_backoff_ms),
            max_backoff: std::time::Duration::from_millis(config.max_backoff_ms),
            timeout: std::time::Duration::from_secs(config.timeout_seconds),
        };
        Ok((webhook, filter, retry))
    }

    /// One signed POST; `Ok` once the receiver answered 2xx.
    pub async fn send(&self, body: &Bytes) -> Result<(), DeliveryError> {
        let secret = tokio::fs::read_to_string(&self.secret_file)
            .await
            .map_err(DeliveryError::Secret)?;
        let timestamp = jiff::Timestamp::now().as_second().max(0) as u64;
        let signature = signature(secret.trim().as_bytes(), timestamp, body);
        let mut kept = self.connection.lock().await;
        let reused = kept.take().filter(|c| !c.sender.is_closed());
        let was_reused = reused.is_some();
        let mut connection = match reused {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        let status = match self.post(&mut connection, body, &signature).await {
            Ok(status) => status,
            // The receiver closed an idle kept connection: one fresh connection, at once.
            Err(_) if was_reused => {
                connection = self.connect().await?;
                self.post(&mut connection, body, &signature).await?
            }
            Err(error) => return Err(error),
        };
        *kept = Some(connection);
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status(status.as_u16()))
        }
    }

    async fn connect(&self) -> Result<Connection, DeliveryError> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(DeliveryError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let server_name = ServerName::try_from(self.host.clone())
            .map_err(|e| DeliveryError::Tls(std::io::Error::other(e)))?;
        let tls = self
            .tls
            .connect(server_name, tcp)
            .await
            .map_err(DeliveryError::Tls)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { sender, driver })
    }

    async fn post(
        &self,
        connection: &mut Connection,
        body: &Bytes,
        signature: &str,
    ) -> Result<hyper::StatusCode, DeliveryError> {
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let authority = match self.uri.port_u16() {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        };
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(
                hyper::header::CONTENT_TYPE,
                "application/cloudevents+json; charset=utf-8",
            )
            .header(hyper::header::USER_AGENT, "sluice-server")
            .header("sluice-signature", signature)
            .body(Full::new(body.clone()))?;
        connection.sender.ready().await?;
        let response = connection.sender.send_request(request).await?;
        let status = response.status();
        // The whole answer is read so that the connection can carry the next request.
        response.into_body().collect().await?;
        Ok(status)
    }
}

fn read_secret(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    if text.trim().is_empty() {
        return Err(std::io::Error::other("the secret is empty"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_timestamp_and_body() {
        // The value a receiver computes: HMAC-SHA256("secret", "1700000000.{}").
        let sig = signature(b"secret", 1_700_000_000, b"{}");
        assert!(sig.starts_with("t=1700000000,v1="), "{sig}");
        assert_eq!(sig.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(sig, signature(b"secret", 1_700_000_001, b"{}"));
        assert_ne!(sig, signature(b"secret", 1_700_000_000, b"{ }"));
        assert_ne!(sig, signature(b"other", 1_700_000_000, b"{}"));
    }
}
