//! Graceful shutdown on SIGTERM: readiness turns false (Kubernetes stops routing), new
//! connections are refused (FTPS `421`, SFTP closed), idle sessions are told `421` / disconnected,
//! and running transfers get `timeouts.shutdownGraceSeconds` to finish before the process exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::context::Context;

/// The `disconnect` reason of sessions ended by the drain.
pub const REASON: &str = "server shutting down";
/// Reply text for FTPS sessions and refused connections.
pub const FTPS_MESSAGE: &str = "server shutting down; try again later";
/// SSH disconnect message for SFTP sessions.
pub const SFTP_MESSAGE: &str = "server shutting down; try again later";

/// Resolves once the drain has started.
pub async fn started(drain: &mut watch::Receiver<bool>) {
    let _ = drain.wait_for(|draining| *draining).await;
}

/// Answers a connection accepted during the drain: `421` on the explicit listener (an implicit
/// FTPS client expects TLS first, so it is simply closed).
pub fn refuse_ftps(mut stream: TcpStream, explicit: bool) {
    if !explicit {
        return;
    }
    tokio::spawn(async move {
        let message = format!("421 {FTPS_MESSAGE}\r\n");
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(message.as_bytes()))
            .await;
    });
}

/// Starts the drain and waits until every session has ended or the grace period is over.
/// Returns the number of sessions still open at the end.
pub async fn run(context: &Context, ready: &AtomicBool) -> i64 {
    ready.store(false, Ordering::Relaxed);
    context.drain.send_replace(true);
    let grace = context
        .snapshot
        .borrow()
        .config
        .timeouts
        .shutdown_grace_seconds;
    let open = context.metrics.sessions_active.get();
    tracing::info!(
        sessions = open,
        grace_seconds = grace,
        "draining: new sessions refused, running transfers may finish"
    );
    context.audit.server_event(
        "drain_start",
        json!({"sessions": open, "grace_seconds": grace}),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(grace);
    loop {
        let open = context.metrics.sessions_active.get();
        if open <= 0 || tokio::time::Instant::now() >= deadline {
            return open.max(0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
