//! The FTPS protocol engine: listeners, sessions and data connections.
//!
//! Our own engine rather than libunftp: it lacks implicit FTPS, enforcement of TLS session
//! resumption on the data channel, per-IP limits and EPRT, and moves 4 KiB at a time (see the
//! design brief, §2).

pub mod command;
pub mod control;
pub mod data;
pub mod listing;
pub mod passive;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::admission::admit;
use crate::context::Context;
use crate::proxy::{Origin, Policy};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Explicit,
    Implicit,
}

impl ListenerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Explicit => "explicit",
            ListenerKind::Implicit => "implicit",
        }
    }
}

/// Accepts control connections forever, enforcing the total and per-address session limits
/// before anything else is said. Accept errors (e.g. EMFILE) are logged and retried, never fatal.
/// With the PROXY protocol on, each connection's header is read in its own task (it may take
/// up to `proxyProtocol.headerTimeoutMs`) and admission uses the client's address from it.
pub async fn serve(listener: TcpListener, kind: ListenerKind, context: Arc<Context>) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(listener = kind.as_str(), %error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        if *context.drain.borrow() {
            crate::drain::refuse_ftps(stream, kind == ListenerKind::Explicit);
            continue;
        }
        let policy = Policy::from_config(&context.snapshot.borrow().config.proxy_protocol);
        match policy {
            None => start(&context, stream, Origin::direct(peer), local, kind),
            Some(policy) => {
                let context = context.clone();
                tokio::spawn(async move {
                    let origin =
                        crate::proxy::screen(&context, &policy, &mut stream, peer, kind.as_str())
                            .await;
                    if let Some(origin) = origin {
                        start(&context, stream, origin, local, kind);
                    }
                });
            }
        }
    }
}

/// Admits a connection from `origin` and starts its session, or answers the refusal.
fn start(
    context: &Arc<Context>,
    mut stream: TcpStream,
    origin: Origin,
    local: SocketAddr,
    kind: ListenerKind,
) {
    let guard = match admit(context, &origin, kind.as_str()) {
        Ok(guard) => guard,
        Err(refused) => {
            if kind == ListenerKind::Explicit {
                tokio::spawn(async move {
                    let message = match refused {
                        crate::limits::LimitError::NotAllowed => format!("421 {refused}\r\n"),
                        _ => format!("421 {refused}; try again later\r\n"),
                    };
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        stream.write_all(message.as_bytes()),
                    )
                    .await;
                });
            }
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    tokio::spawn(session::run(
        context.clone(),
        stream,
        origin,
        local,
        kind,
        guard,
    ));
}
