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
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::audit::Audit;
use crate::limits::SessionLimits;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use passive::PassivePool;
use sluice_config::canonical_ip;

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

/// State shared by every session of the process.
pub struct Context {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
    pub limits: SessionLimits,
    passive: Mutex<Arc<PassivePool>>,
    pub session_counter: AtomicU64,
    pub session_prefix: String,
    /// This host's name, to pick a per-host advertised passive address.
    pub host_name: String,
    /// The argon2id verification pool.
    pub verifier: crate::auth::Verifier,
    /// Failed-login bans shared by every listener.
    pub bans: crate::bans::BanEngine,
    /// The last accepted TOTP step per user, shared by FTPS and SFTP (no replay).
    pub totp: crate::totp::ReplayGuard,
    /// `true` once SIGTERM started the drain (see `crate::drain`).
    pub drain: watch::Sender<bool>,
}

impl Context {
    pub fn new(
        snapshot: watch::Receiver<Arc<Snapshot>>,
        audit: Audit,
        metrics: Arc<Metrics>,
    ) -> Arc<Context> {
        let (start, end) = {
            let current = snapshot.borrow();
            (
                current.config.passive.port_start,
                current.config.passive.port_end,
            )
        };
        Arc::new(Context {
            snapshot,
            audit,
            metrics,
            limits: SessionLimits::default(),
            passive: Mutex::new(PassivePool::new(start, end)),
            session_counter: AtomicU64::new(1),
            session_prefix: format!("{:08x}", rand::random::<u32>()),
            host_name: host_name(),
            bans: crate::bans::BanEngine::default(),
            totp: crate::totp::ReplayGuard::default(),
            drain: watch::channel(false).0,
            verifier: crate::auth::Verifier::start(
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
                    .min(4),
            ),
        })
    }

    /// The pool for the configured range; replaced when a reload changes the range (leases
    /// of the old pool stay valid until they end).
    pub fn passive_pool(&self, start: u16, end: u16) -> Arc<PassivePool> {
        let mut pool = self.passive.lock().unwrap_or_else(|p| p.into_inner());
        if pool.range() != (start, end) {
            *pool = PassivePool::new(start, end);
        }
        pool.clone()
    }
}

pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_default()
}

/// Admits a new connection of any protocol against the total and per-address session limits,
/// counting and auditing a refusal. Shared by the FTPS and SFTP accept loops.
pub fn admit(
    context: &Context,
    ip: std::net::IpAddr,
    listener: &str,
) -> Result<crate::limits::ConnectionGuard, crate::limits::LimitError> {
    let ip = canonical_ip(ip);
    let snapshot = context.snapshot.borrow();
    let (limits, bans) = (&snapshot.config.limits, &snapshot.config.bans);
    let now = std::time::Instant::now();
    if let Some(remaining) = context.bans.ip_banned(bans, ip, now) {
        Metrics::inc(&context.metrics.sessions_refused, &[("reason", "banned")]);
        if context.bans.log_refusal(bans, ip, now) {
            context.audit.server_event(
                "connection_refused",
                json!({"ip": ip.to_string(), "reason": "banned", "listener": listener,
                       "ban_remaining_seconds": remaining.as_secs()}),
            );
        }
        return Err(crate::limits::LimitError::Banned);
    }
    context
        .limits
        .connect(ip, limits.max_sessions, limits.max_sessions_per_ip)
        .inspect_err(|refused| {
            Metrics::inc(
                &context.metrics.sessions_refused,
                &[("reason", &format!("{refused:?}").to_lowercase())],
            );
            context.audit.server_event(
                "connection_refused",
                json!({"ip": ip.to_string(), "reason": refused.to_string(), "listener": listener}),
            );
        })
}

/// Counts a failed login for the ban engine; new bans are audited and counted. Shared by FTPS
/// and SFTP.
pub fn record_login_failure(context: &Context, ip: std::net::IpAddr, user: Option<&str>) {
    let now = std::time::Instant::now();
    let bans = context
        .bans
        .record_failure(&context.snapshot.borrow().config.bans, ip, user, now);
    for ban in bans {
        Metrics::inc(&context.metrics.bans, &[("scope", ban.scope)]);
        context.audit.server_event(
            "ban",
            json!({"scope": ban.scope, "key": ban.key, "duration_seconds": ban.duration.as_secs(),
                   "count": ban.count, "ip": canonical_ip(ip).to_string(), "origin": "local"}),
        );
        tracing::warn!(scope = ban.scope, key = %ban.key, seconds = ban.duration.as_secs(), "banned after repeated failed logins");
    }
    update_ban_gauges(context, now);
}

/// Whether `user` is banned for logins from `ip` (safelisted addresses never are).
pub fn user_banned(context: &Context, user: &str, ip: std::net::IpAddr) -> bool {
    context
        .bans
        .user_banned(
            &context.snapshot.borrow().config.bans,
            user,
            ip,
            std::time::Instant::now(),
        )
        .is_some()
}

pub fn update_ban_gauges(context: &Context, now: std::time::Instant) {
    let active = context.bans.active(now);
    for scope in ["ip", "user", "peer_ip", "peer_user"] {
        let count = active.iter().filter(|(s, _, _)| *s == scope).count();
        context
            .metrics
            .bans_active
            .get_or_create(&vec![("scope", scope.to_string())])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

/// Accepts control connections forever, enforcing the total and per-address session limits
/// before anything else is said. Accept errors (e.g. EMFILE) are logged and retried, never fatal.
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
        let guard = match admit(&context, peer.ip(), kind.as_str()) {
            Ok(guard) => guard,
            Err(refused) => {
                if kind == ListenerKind::Explicit {
                    tokio::spawn(async move {
                        let message = format!("421 {refused}; try again later\r\n");
                        let _ = tokio::time::timeout(
                            std::time::Duration::from_secs(2),
                            stream.write_all(message.as_bytes()),
                        )
                        .await;
                    });
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let context = context.clone();
        tokio::spawn(session::run(context, stream, peer, local, kind, guard));
    }
}
