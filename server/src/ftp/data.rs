//! Data connections: the passive accept task (only the control connection's address, and a TLS
//! handshake that must resume the control connection's session), active connects, and the
//! pumps that move bytes between the network and the disk workers.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::HandshakeKind;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::audit::{Audit, SessionTag};
use crate::metrics::Metrics;
use crate::userfs::{CHUNK_BYTES, FsError, UploadSink};
use sluice_config::canonical_ip;

use super::passive::PassiveLease;

pub type DataStream = TlsStream<TcpStream>;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("no data connection within {0} seconds")]
    Timeout(u64),
    #[error("TLS session of the data connection did not resume the control connection's session")]
    NotResumed,
    #[error("TLS handshake on the data connection failed: {0}")]
    Handshake(String),
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("data connection i/o: {0}")]
    Io(#[from] io::Error),
}

/// Everything the data side needs from its session, cloned so tasks can own it.
#[derive(Clone)]
pub struct DataContext {
    pub tls: Arc<rustls::ServerConfig>,
    pub client_ip: IpAddr,
    pub require_resumption: bool,
    pub connect_timeout: Duration,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
    pub tag: SessionTag,
    /// The PROXY protocol, when on: passive data connections come through the proxy too, each
    /// with its own header, whose source must be the control connection's client.
    pub proxy: Option<Arc<crate::proxy::Policy>>,
}

impl DataContext {
    async fn handshake(&self, socket: TcpStream) -> Result<DataStream, DataError> {
        let acceptor = TlsAcceptor::from(self.tls.clone());
        let stream = match timeout(self.connect_timeout, acceptor.accept(socket)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                Metrics::inc(&self.metrics.tls_failures, &[("channel", "data")]);
                return Err(DataError::Handshake(e.to_string()));
            }
            Err(_) => return Err(DataError::Timeout(self.connect_timeout.as_secs())),
        };
        let connection = stream.get_ref().1;
        let resumed = connection.handshake_kind() == Some(HandshakeKind::Resumed);
        self.audit.event(
            &self.tag,
            "tls",
            json!({
                "channel": "data",
                "version": connection.protocol_version().map(|v| format!("{v:?}")),
                "cipher": connection.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())),
                "resumed": resumed,
            }),
        );
        if self.require_resumption && !resumed {
            Metrics::inc(&self.metrics.data_rejected, &[("reason", "not_resumed")]);
            self.audit.event(
                &self.tag,
                "data_rejected",
                json!({"reason": "tls session not resumed"}),
            );
            return Err(DataError::NotResumed);
        }
        Ok(stream)
    }

    /// Waits on a passive port for the client's connection. Connections from any other address
    /// are closed, logged and ignored (the legitimate client may still come).
    pub async fn accept_passive(self, lease: PassiveLease) -> Result<DataStream, DataError> {
        let deadline = Instant::now() + self.connect_timeout;
        let socket = loop {
            let (mut socket, tcp_peer) = match timeout_at(deadline, lease.listener.accept()).await {
                Ok(Ok(accepted)) => accepted,
                Ok(Err(e)) => return Err(DataError::Io(e)),
                Err(_) => return Err(DataError::Timeout(self.connect_timeout.as_secs())),
            };
            let source = crate::proxy::data_source(self.proxy.as_deref(), &mut socket, tcp_peer);
            let peer = match timeout_at(deadline, source).await {
                Ok(Ok(origin)) => origin.client,
                Ok(Err(error)) => {
                    Metrics::inc(&self.metrics.data_rejected, &[("reason", "proxy_header")]);
                    self.audit.event(
                        &self.tag,
                        "data_rejected",
                        json!({"reason": error.to_string(), "peer": tcp_peer.to_string(), "port": lease.port}),
                    );
                    continue;
                }
                Err(_) => return Err(DataError::Timeout(self.connect_timeout.as_secs())),
            };
            if canonical_ip(peer.ip()) == self.client_ip {
                break socket;
            }
            Metrics::inc(
                &self.metrics.data_rejected,
                &[("reason", "foreign_address")],
            );
            self.audit.event(
                &self.tag,
                "data_rejected",
                json!({
                    "reason": "data connection from another address",
                    "peer": peer.to_string(),
                    "port": lease.port,
                }),
            );
            drop(socket);
        };
        drop(lease);
        let _ = socket.set_nodelay(true);
        self.handshake(socket).await
    }

    /// Active mode: connect to the client (already checked to be the client's own address).
    pub async fn connect_active(&self, target: SocketAddr) -> Result<DataStream, DataError> {
        let socket = match timeout(self.connect_timeout, TcpStream::connect(target)).await {
            Ok(Ok(socket)) => socket,
            Ok(Err(e)) => return Err(DataError::Connect(target, e.to_string())),
            Err(_) => return Err(DataError::Timeout(self.connect_timeout.as_secs())),
        };
        self.handshake(socket).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("data connection idle for more than {0} seconds")]
    Idle(u64),
    #[error("data connection failed: {0}")]
    Network(io::Error),
    #[error("{0}")]
    Storage(FsError),
    #[error("storage writer stopped")]
    WriterStopped,
}

async fn with_idle<T>(
    idle: Duration,
    future: impl Future<Output = io::Result<T>>,
) -> Result<T, TransferError> {
    match timeout(idle, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(TransferError::Network(e)),
        Err(_) => Err(TransferError::Idle(idle.as_secs())),
    }
}

/// Sends chunks from a read-ahead worker; ends with a TLS close_notify.
pub async fn pump_download(
    stream: &mut DataStream,
    mut chunks: mpsc::Receiver<Result<Vec<u8>, FsError>>,
    progress: &AtomicU64,
    idle: Duration,
) -> Result<(), TransferError> {
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk.map_err(TransferError::Storage)?;
        with_idle(idle, stream.write_all(&chunk)).await?;
        progress.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    with_idle(idle, stream.shutdown()).await?;
    Ok(())
}

/// Sends an in-memory payload (listings); ends with a TLS close_notify.
pub async fn send_bytes(
    stream: &mut DataStream,
    bytes: &[u8],
    progress: &AtomicU64,
    idle: Duration,
) -> Result<(), TransferError> {
    with_idle(idle, stream.write_all(bytes)).await?;
    progress.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    with_idle(idle, stream.shutdown()).await?;
    Ok(())
}

/// Receives an upload into `sink` in large chunks. Returns whether the client ended the TLS
/// stream cleanly (close_notify) rather than just closing TCP.
pub async fn pump_upload(
    stream: &mut DataStream,
    sink: &mut UploadSink,
    progress: &AtomicU64,
    idle: Duration,
) -> Result<bool, TransferError> {
    loop {
        let mut buffer = vec![0u8; CHUNK_BYTES];
        let mut filled = 0;
        let mut end: Option<bool> = None;
        while filled < CHUNK_BYTES {
            match timeout(idle, stream.read(&mut buffer[filled..])).await {
                Ok(Ok(0)) => {
                    end = Some(true);
                    break;
                }
                Ok(Ok(n)) => filled += n,
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    end = Some(false);
                    break;
                }
                Ok(Err(e)) => return Err(TransferError::Network(e)),
                Err(_) => return Err(TransferError::Idle(idle.as_secs())),
            }
        }
        if filled > 0 {
            buffer.truncate(filled);
            progress.fetch_add(filled as u64, Ordering::Relaxed);
            if !sink.write(buffer).await {
                return Err(TransferError::WriterStopped);
            }
        }
        if let Some(clean) = end {
            return Ok(clean);
        }
    }
}
