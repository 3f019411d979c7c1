//! Data connections: the passive accept task (only the control connection's address, and a TLS
//! handshake that must resume the control connection's session), active connects, and the
//! pumps that move bytes between the network and the disk workers.
//!
//! A user with `ftpsDataBinding: addressAndLease` (clients that cannot resume TLS sessions,
//! `sluice_config::FtpsDataBinding`) may skip resumption on passive connections only: the
//! address check and the port leased to this session alone stay, the window shrinks to
//! `UNRESUMED_DATA_WINDOW_SECONDS`, and the client certificate must be the control
//! connection's. Every data handshake's audit event names the binding that admitted it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::HandshakeKind;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::audit::{Audit, SessionTag};
use crate::metrics::Metrics;
use crate::userfs::{DownloadChunks, FsError, UploadSink};
use sluice_config::{FtpsDataBinding, UNRESUMED_DATA_WINDOW_SECONDS, canonical_ip};

use super::passive::PassiveLease;

/// A data connection: TLS over a read buffer of [`DATA_READ_BUFFER`]. rustls reads the socket
/// at most 4 KiB at a time (`read_tls`), i.e. ~4 `recvfrom` calls (and tokio readiness checks)
/// per 16 KiB record, 262,144 per GiB uploaded; the buffer turns them into one `recvfrom` per
/// up to 128 KiB and memory copies.
pub type DataStream = TlsStream<BufReader<TcpStream>>;

/// Bytes read from a data socket at once (docs/performance.md, "FTPS uploads").
pub const DATA_READ_BUFFER: usize = 128 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("no data connection within {0} seconds")]
    Timeout(u64),
    #[error("TLS session of the data connection did not resume the control connection's session")]
    NotResumed,
    #[error("client certificate of the data connection is not the control connection's")]
    CertificateMismatch,
    #[error("TLS handshake on the data connection failed: {0}")]
    Handshake(String),
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("data connection i/o: {0}")]
    Io(#[from] io::Error),
}

/// What admitted a data connection's TLS handshake: the `binding` field of its audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// It resumed the control connection's session.
    Resumption,
    /// The user's `ftpsDataBinding: addressAndLease`, on a leased passive port.
    AddressAndLease,
    /// Neither, with the server-wide `tls.requireSessionResumption: false`.
    Unbound,
}

impl Admission {
    /// `resumed` from rustls; `passive` whether the connection came to a leased passive port.
    /// `None`: refused (`425`).
    fn of(
        resumed: bool,
        passive: bool,
        binding: FtpsDataBinding,
        require_resumption: bool,
    ) -> Option<Admission> {
        if resumed {
            Some(Admission::Resumption)
        } else if passive && binding.allows_unresumed() {
            Some(Admission::AddressAndLease)
        } else if !require_resumption {
            Some(Admission::Unbound)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Admission::Resumption => FtpsDataBinding::TlsResumption.name(),
            Admission::AddressAndLease => FtpsDataBinding::AddressAndLease.name(),
            Admission::Unbound => "none",
        }
    }
}

/// Everything the data side needs from its session, cloned so tasks can own it.
#[derive(Clone)]
pub struct DataContext {
    pub tls: Arc<rustls::ServerConfig>,
    pub client_ip: IpAddr,
    pub require_resumption: bool,
    /// The logged-in user's `ftpsDataBinding` (the default before login).
    pub binding: FtpsDataBinding,
    /// SHA-256 of the control connection's client certificate, when it presented one.
    pub control_cert_sha256: Option<String>,
    pub connect_timeout: Duration,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
    pub tag: SessionTag,
    /// The PROXY protocol, when on: passive data connections come through the proxy too, each
    /// with its own header, whose source must be the control connection's client.
    pub proxy: Option<Arc<crate::proxy::Policy>>,
}

impl DataContext {
    async fn handshake(&self, socket: TcpStream, passive: bool) -> Result<DataStream, DataError> {
        let acceptor = TlsAcceptor::from(self.tls.clone());
        let socket = BufReader::with_capacity(DATA_READ_BUFFER, socket);
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
        let admission = Admission::of(resumed, passive, self.binding, self.require_resumption);
        let client_cert_sha256 = connection
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| crate::client_cert::PeerCertificate::from_der(cert).sha256);
        self.audit.event(
            &self.tag,
            "tls",
            json!({
                "channel": "data",
                "version": connection.protocol_version().map(|v| format!("{v:?}")),
                "cipher": connection.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())),
                "kx_group": crate::tls::kx_group(connection),
                "resumed": resumed,
                "binding": admission.map(Admission::name),
                "client_cert_sha256": client_cert_sha256,
            }),
        );
        if admission == Some(Admission::AddressAndLease)
            && client_cert_sha256 != self.control_cert_sha256
        {
            Metrics::inc(
                &self.metrics.data_rejected,
                &[("reason", "certificate_mismatch")],
            );
            self.audit.event(
                &self.tag,
                "data_rejected",
                json!({"reason": "client certificate differs from the control connection's"}),
            );
            return Err(DataError::CertificateMismatch);
        }
        if admission.is_none() {
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
        let window = if self.binding.allows_unresumed() {
            self.connect_timeout
                .min(Duration::from_secs(UNRESUMED_DATA_WINDOW_SECONDS))
        } else {
            self.connect_timeout
        };
        let deadline = Instant::now() + window;
        let socket = loop {
            let (mut socket, tcp_peer) = match timeout_at(deadline, lease.listener.accept()).await {
                Ok(Ok(accepted)) => accepted,
                Ok(Err(e)) => return Err(DataError::Io(e)),
                Err(_) => return Err(DataError::Timeout(window.as_secs())),
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
        self.handshake(socket, true).await
    }

    /// Active mode: connect to the client (already checked to be the client's own address).
    pub async fn connect_active(&self, target: SocketAddr) -> Result<DataStream, DataError> {
        let socket = match timeout(self.connect_timeout, TcpStream::connect(target)).await {
            Ok(Ok(socket)) => socket,
            Ok(Err(e)) => return Err(DataError::Connect(target, e.to_string())),
            Err(_) => return Err(DataError::Timeout(self.connect_timeout.as_secs())),
        };
        self.handshake(socket, false).await
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

/// Sends chunks from a read-ahead worker, giving each back once sent; ends with a TLS
/// close_notify.
pub async fn pump_download(
    stream: &mut DataStream,
    mut chunks: DownloadChunks,
    progress: &AtomicU64,
    idle: Duration,
) -> Result<(), TransferError> {
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk.map_err(TransferError::Storage)?;
        with_idle(idle, stream.write_all(&chunk)).await?;
        progress.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        chunks.give_back(chunk);
    }
    with_idle(idle, stream.shutdown()).await?;
    Ok(())
}

/// Sends one part of a longer answer (a streamed listing); [`finish_send`] ends it.
pub async fn send_part(
    stream: &mut DataStream,
    bytes: &[u8],
    progress: &AtomicU64,
    idle: Duration,
) -> Result<(), TransferError> {
    with_idle(idle, stream.write_all(bytes)).await?;
    progress.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// Ends a data connection after [`send_part`]s (TLS close_notify, then FIN).
pub async fn finish_send(stream: &mut DataStream, idle: Duration) -> Result<(), TransferError> {
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
        let mut buffer = sink.buffer();
        let mut filled = 0;
        let mut end: Option<bool> = None;
        while filled < buffer.len() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_passive_connection_of_an_opted_in_user_skips_resumption() {
        use FtpsDataBinding::{AddressAndLease, TlsResumption};
        let of = Admission::of;
        // Resumed: always admitted by resumption.
        assert_eq!(
            of(true, true, TlsResumption, true),
            Some(Admission::Resumption)
        );
        assert_eq!(
            of(true, false, AddressAndLease, true),
            Some(Admission::Resumption)
        );
        // Not resumed: the default refuses, the opt-in admits passive connections only.
        assert_eq!(of(false, true, TlsResumption, true), None);
        assert_eq!(
            of(false, true, AddressAndLease, true),
            Some(Admission::AddressAndLease)
        );
        assert_eq!(of(false, false, AddressAndLease, true), None);
        // The server-wide opt-out admits anything, and says so.
        assert_eq!(
            of(false, false, TlsResumption, false),
            Some(Admission::Unbound)
        );
        assert_eq!(Admission::Unbound.name(), "none");
    }
}
